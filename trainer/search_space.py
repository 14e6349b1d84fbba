"""The fixed part of the search space and the schedule a search derives from its config and data.

Input size per backbone (`auto_image_size`), default augmentation and batch size by data size
(`auto_augmentation`, `auto_batch_size`),
the `ModelSpec` every trial builds from (`model_spec`),
epochs (`auto_epochs`), early stopping counted in optimizer steps (`early_stopping`,
`patience_epochs`) and class weights for imbalanced data (`balanced_class_weights`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras

from trainer import scan
from trainer.config import HEADS, SearchConfig
from trainer.hypermodel import BACKBONE_SPECS, ModelSpec, fitting_heads
from trainer.steps import steps_per_execution, sync_batchnorm

__all__ = ["AUGMENT_MIN_CLASS_IMAGES", "BATCH_SIZE", "MIN_EPOCH_STEPS", "auto_augmentation", "auto_batch_size",
           "auto_epochs", "auto_image_size",
           "balanced_class_weights", "early_stopping", "model_spec", "patience_epochs"]

log = logging.getLogger(__name__)


def auto_image_size(backbone: str, median_side: int | None) -> int:
    """The input size a backbone runs at without ``--image-size``, from the data's median image side.

    small_cnn: 32 for images up to 40 px (digits, icons), else 64 (enough for shapes and textures at the
    scale of the image; 4x the compute of 32). keras.applications: their own size (224, 299), or for
    small images the median side rounded up to a multiple of 32, at least 96 (upscaling a 28 px image to
    224 px costs 60x the compute and adds no information).
    """
    spec = BACKBONE_SPECS[backbone]
    if spec.factory is None:
        return 32 if median_side is None or median_side <= 40 else 64
    if median_side is None:
        return spec.default_size
    return max(spec.min_size, min(spec.default_size, max(96, 32 * math.ceil(median_side / 32))))



AUGMENT_MIN_CLASS_IMAGES = 25
"""Rotation and zoom are off by default when the smallest class has fewer training images than this."""


def auto_augmentation(rotation: float | None, zoom: float | None, smallest_class: int | None) -> tuple[float, float]:
    """(rotation, zoom): as given, else 0.05 and 0.1, or 0 and 0 below `AUGMENT_MIN_CLASS_IMAGES` a class.

    On shapes-3-small (21 training images a class) the default search scored 0.47 on held-out renderings
    with rotation 0.05 and zoom 0.1 (3 seeds), 0.34 with 0.1 and 0.2 (2 seeds) and 0.60 with neither (3
    seeds; bench/quality.py, docs/trainer.md "Small folders"). At 28 a class it was a wash (letters-3
    0.68 with, 0.70 without; textures-2 0.62 with, 0.59 without), so from 25 up the defaults stay on.
    """
    tiny = smallest_class is not None and smallest_class < AUGMENT_MIN_CLASS_IMAGES
    return (rotation if rotation is not None else 0.0 if tiny else 0.05,
            zoom if zoom is not None else 0.0 if tiny else 0.1)


BATCH_SIZE = 32
"""The per-replica batch without ``--batch-size`` on a folder large enough for it (`auto_batch_size`)."""

MIN_EPOCH_STEPS = 8
"""Below this many optimizer steps an epoch at `BATCH_SIZE`, the default batch shrinks (`auto_batch_size`)."""


def auto_batch_size(batch_size: int | None, train_images: int, replicas: int = 1) -> int:
    """The per-replica batch: as given, else 32, or 16 or 8 when an epoch would hold fewer than 8 steps.

    On shapes-3-small (63 training images: 2 steps an epoch at 32) the default search scored 0.54 on
    held-out renderings at batch 32, one seed of five at chance; 0.66 at 16 and 0.75 at 8, every seed
    above 0.6 (5 seeds; bench/quality.py, docs/trainer.md "Small folders"). More, noisier steps on the
    same images: validation is checked every few steps rather than every 2, and BatchNormalization's
    moving statistics have far more updates to settle. Keyed on the global batch, so the rule holds
    under MultiWorkerMirroredStrategy; 8 a replica is the floor, the smallest batch measured.
    """
    if batch_size is not None:
        return batch_size
    for per_replica in (BATCH_SIZE, BATCH_SIZE // 2):
        if train_images >= per_replica * replicas * MIN_EPOCH_STEPS:
            return per_replica
    return BATCH_SIZE // 4


def model_spec(
    config: SearchConfig, num_classes: int, replicas: int = 1, policy: str = "float32", *,
    median_side: int | None = None, steps: tuple[int, int] | None = None, workers: int = 1, xla: bool = False,
    smallest_class: int | None = None,
) -> ModelSpec:
    """The fixed part of the search space for `config` and a data set of `num_classes`.

    `median_side` (the data's median image side in pixels) picks each backbone's input size when
    ``config.image_size`` is not set (`auto_image_size`); the model input is the largest of them.
    `steps` (training, validation steps per epoch) sets the steps per execution with one worker process
    (`trainer.steps.steps_per_execution`; 1 with several `workers`: see there); BatchNormalization is
    synchronized by `trainer.steps.sync_batchnorm` at the per-replica ``config.batch_size`` (resolved by
    `auto_batch_size` in `trainer.search.plan_search`). `smallest_class` (training images of the smallest
    class) sets the default rotation and zoom (`auto_augmentation`).
    `xla` (`trainer.accelerator.xla_on`: requested and compilable here) becomes ``jit_compile``, True or
    False, never Keras's "auto", which is off under any distribution strategy.
    """
    backbones = config.backbones
    sizes = {b: config.image_size or auto_image_size(b, median_side) for b in backbones}
    image_size = max(sizes.values())
    heads = config.heads
    if set(heads) == set(HEADS):  # the default: only the heads that fit every backbone's feature map
        heads = fitting_heads(heads, backbones, sizes)
    augmentation: list[tuple[str, Any]] = []
    if config.flip != "none":
        augmentation.append(("flip", config.flip))
    rotation, zoom = auto_augmentation(config.rotation, config.zoom, smallest_class)
    if rotation > 0:
        augmentation.append(("rotation", rotation))
    if zoom > 0:
        augmentation.append(("zoom", zoom))
    uses_pretrained = any(BACKBONE_SPECS[b].factory is not None for b in backbones)
    return ModelSpec(
        num_classes=num_classes,
        image_size=image_size,
        backbones=backbones,
        weights=config.weights if uses_pretrained else "none",
        heads=heads,
        unfreeze_depths=config.unfreeze_depths,
        head_epochs=config.head_epochs,
        augmentation=tuple(augmentation),
        learning_rate_scale=float(replicas) if config.scale_learning_rate else 1.0,
        seed=config.seed,
        jit_compile=bool(xla),
        dtype_policy=policy,
        backbone_sizes=tuple(sorted(sizes.items())),
        sync_batchnorm=sync_batchnorm(config.batch_size or BATCH_SIZE, replicas),
        steps_per_execution=steps_per_execution(*steps, workers=workers) if steps else 1,
        steps_per_epoch=steps[0] if steps else None,
    )



def auto_epochs(train_images: int, global_batch: int, steps: int = 600) -> int:
    """Epochs for about `steps` optimizer steps, within [10, 200]: small data sets need more epochs.

    The cap was 60: a 120-image folder (3 steps an epoch) then trained 180 steps at most; 200 epochs of
    a few dozen images cost seconds on a CPU (docs/trainer.md, "Small folders").
    """
    steps_per_epoch = max(1, math.ceil(train_images / global_batch))
    return int(min(200, max(10, math.ceil(steps / steps_per_epoch))))



def early_stopping(config: SearchConfig, steps_per_epoch: int) -> keras.callbacks.EarlyStopping:
    """Stop on val_loss, counted in optimizer steps: not before ``--min-steps``, after ``--patience-steps``."""
    start = math.ceil(config.min_steps / max(1, steps_per_epoch))
    patience = patience_epochs(config.patience, config.patience_steps, steps_per_epoch)
    log.info("early stopping: from epoch %d, patience %d epochs (%d optimizer steps an epoch)", start, patience,
             steps_per_epoch)
    return keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=patience, start_from_epoch=start)



def patience_epochs(patience: int, patience_steps: int, steps_per_epoch: int) -> int:
    """Early-stopping patience in epochs: `patience`, or more epochs when they hold fewer than `patience_steps` steps.

    Counted in epochs only, a 120-image folder (3 steps an epoch) stopped after 5 epochs, 15 steps: before
    its BatchNormalization statistics and its logits had left their start (issue 26).
    """
    return max(patience, math.ceil(patience_steps / max(1, steps_per_epoch)))



def balanced_class_weights(splits: scan.DataSplits, threshold: float = 2.0) -> list[float] | None:
    """Per-class loss weights n / (C * n_c) when the largest class has over `threshold` times the smallest."""
    counts = list(splits.counts("train").values())
    if min(counts) == 0 or max(counts) <= threshold * min(counts):
        return None
    total = sum(counts)
    return [total / (len(counts) * count) for count in counts]

