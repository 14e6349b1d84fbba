"""The search space: backbone x classification head x unfreeze depth, and its two-phase training.

A model maps pixels ``[batch, H, W, 3]`` in 0..255 to logits. Its ``Input`` is float32: the uint8
batches of the training pipeline are converted by Keras to the Input's dtype inside the compiled
step (tests/trainer/test_data.py checks that training on uint8 and on float32 batches gives the same
weights), and the export's ``predict_pixels`` signature takes float32. Everything a backbone needs
(scaling, channel order, mean subtraction) happens inside the model, so serving sends raw pixels or
encoded images and never preprocesses. The backbone is called with ``training=False``, so its
BatchNormalization layers stay in inference mode (moving statistics frozen) even when fine-tuned,
and `set_unfreeze_depth` never makes a BatchNormalization layer trainable.

Training a trial has two phases (`TransferHyperModel.fit`):

1. the head on a frozen backbone at ``learning_rate``;
2. when ``unfreeze_depth > 0``, the top ``unfreeze_depth`` of the backbone is made trainable and
   training continues at ``learning_rate * fine_tune_factor``.

Unfreeze depth is a fraction of the backbone's *weighted* layers (convolutions and dense layers;
BatchNormalization is never unfrozen and not counted), counted from the top: 0.25 is the top 13 of
MobileNetV2's 52 and the top 3 of VGG16's 13, so a depth means the same share of every backbone.

Backbones trained from scratch (``small_cnn``, or ``weights="none"``) have no phase 2: they are
fully trainable from the start and ``unfreeze_depth`` is not searched. keras.applications models
use BatchNormalization momentum 0.99-0.999, so trained from scratch for a few hundred steps their
moving statistics stay near their initial values and the model in inference mode predicts one
class: built from random weights, their BatchNormalization momentum is set to
`SCRATCH_BN_MOMENTUM` (and synchronized across replicas where the per-replica batch is small, as in
small_cnn: `ModelSpec.sync_batchnorm`, the rule in `trainer.steps`).

Each backbone runs at its own input size (`ModelSpec.backbone_sizes`): the model takes
``image_size`` pixels and resizes inside the graph when its backbone's size differs, so a search
over small_cnn and mobilenet_v2 does not train small_cnn at 224 px.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from trainer import augment, loss_scale
from trainer.errors import ConfigError
from trainer.steps import AverageBatchNormStatistics

log = logging.getLogger(__name__)

__all__ = [
    "BACKBONE_SPECS",
    "FLATTEN_HEAD_MAX_FEATURES",
    "SCRATCH_BN_MOMENTUM",
    "BackboneSpec",
    "ModelSpec",
    "TransferHyperModel",
    "build_model",
    "dtype_policy",
    "feature_map_shape",
    "find_backbone",
    "fitting_heads",
    "prepare_backbones",
    "set_unfreeze_depth",
    "unfrozen_layer_count",
]

SCRATCH_BN_MOMENTUM = 0.9
"""BatchNormalization momentum of keras.applications backbones built from random weights: the moving
statistics then follow the training within a few dozen steps (0.99-0.999 needs thousands)."""

FLATTEN_HEAD_MAX_FEATURES = 4096
"""The flatten head is offered only on feature maps of at most this many values (H x W x C): its dense
layer then has at most ~1M weights at 256 units (7x7x1280 from MobileNetV2 at 224 px would give 16M).
On larger maps it also overfits where objects move: a flatten head ties each feature to a place."""


def _caffe(x: Any) -> Any:
    """VGG16's "caffe" preprocessing: RGB -> BGR, minus the ImageNet channel means."""
    bgr = keras.ops.flip(x, axis=-1)
    return bgr - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and feed it pixels in 0..255."""

    name: str
    default_size: int
    min_size: int
    factory: Callable[..., keras.Model] | None
    """The keras.applications constructor; None for the from-scratch CNN."""
    scale: float | None
    """x * scale + offset before the backbone; None when the backbone needs `preprocess` instead."""
    offset: float = 0.0
    preprocess: Callable[[Any], Any] | None = None
    weighted_layers: int = 4
    """Convolution and dense layers (BatchNormalization excluded): what unfreeze fractions count."""


BACKBONE_SPECS: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("small_cnn", 32, 8, None, 1 / 255.0),
        BackboneSpec("mobilenet_v2", 224, 32, keras.applications.MobileNetV2, 1 / 127.5, -1.0, weighted_layers=52),
        # EfficientNet rescales and normalises inside the application model: feed 0..255 as is.
        BackboneSpec("efficientnet_b0", 224, 32, keras.applications.EfficientNetB0, 1.0, weighted_layers=81),
        BackboneSpec("resnet50_v2", 224, 32, keras.applications.ResNet50V2, 1 / 127.5, -1.0, weighted_layers=53),
        BackboneSpec("vgg16", 224, 32, keras.applications.VGG16, None, preprocess=_caffe, weighted_layers=13),
        BackboneSpec("inception_v3", 299, 75, keras.applications.InceptionV3, 1 / 127.5, -1.0, weighted_layers=94),
    )
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What does not vary between trials: the data's shape and the search's fixed choices."""

    num_classes: int
    image_size: int
    backbones: tuple[str, ...] = ("small_cnn",)
    weights: str = "none"
    heads: tuple[str, ...] = ("gap_dense", "gap_dense_dropout", "flatten_dense_dropout")
    unfreeze_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    """Fractions of a backbone's weighted layers to fine-tune (see `set_unfreeze_depth`)."""
    head_epochs: int = 4
    augmentation: tuple[tuple[str, Any], ...] = ()
    """(layer, argument) pairs: ("flip", "horizontal"), ("rotation", 0.05), ("zoom", 0.1)."""
    learning_rate_scale: float = 1.0
    seed: int = 42
    jit_compile: bool | str = "auto"
    """Passed to ``model.compile``: the search sets True or False (`trainer.accelerator.xla_on`), never Keras's
    "auto", which is off under any distribution strategy. Every layer built here compiles (the augmentation
    resamples with `trainer.affine`)."""
    sync_batchnorm: bool = True
    """Synchronize from-scratch BatchNormalization across replicas (`trainer.steps.sync_batchnorm`)."""
    steps_per_execution: int = 1
    """Train steps per call of the compiled function (`trainer.steps.steps_per_execution`)."""
    steps_per_epoch: int | None = None
    """``fit``'s steps per epoch when the training set repeats (`trainer.steps.steps_per_epoch`); None: one
    pass of a finite set."""
    dtype_policy: str = "float32"
    """Keras dtype policy every model is built under (``mixed_float16`` / ``mixed_bfloat16`` / ``float32``)."""
    backbone_sizes: tuple[tuple[str, int], ...] = ()
    """(backbone, size) pairs: the size each backbone runs at (at most ``image_size``); others use
    ``image_size``."""

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ConfigError(f"Expected at least 2 classes. Received: num_classes={self.num_classes}")
        for name in self.backbones:
            spec = BACKBONE_SPECS.get(name)
            if spec is None:
                raise ConfigError(f"Expected a backbone among {', '.join(BACKBONE_SPECS)}. Received: backbone={name!r}")
            size = self.size_of(name)
            if size < spec.min_size or size > self.image_size:
                raise ConfigError(
                    f"Expected image_size >= {spec.min_size} for {name} (and at most the input size "
                    f"{self.image_size}). Received: image_size={size}"
                )
        if any(not 0.0 <= d <= 1.0 for d in self.unfreeze_depths):
            raise ConfigError(f"Expected unfreeze depths in [0, 1]. Received: unfreeze_depths={self.unfreeze_depths}")
        if self.pretrained:
            for name in self.fine_tuned_backbones:
                counts = [unfrozen_layer_count(d, BACKBONE_SPECS[name].weighted_layers) for d in self.unfreeze_depths]
                if len(set(counts)) < len(counts):
                    raise ConfigError(
                        f"Expected unfreeze depths that unfreeze different numbers of {name}'s "
                        f"{BACKBONE_SPECS[name].weighted_layers} weighted layers. Received: "
                        f"unfreeze_depths={self.unfreeze_depths} -> {counts} layers"
                    )
        if self.weights not in ("imagenet", "none") and not Path(self.weights).is_file():
            raise ConfigError(
                f"Expected weights 'imagenet', 'none' or an existing weights file. Received: weights={self.weights!r}"
            )

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"

    @property
    def fine_tuned_backbones(self) -> tuple[str, ...]:
        """Backbones trained in two phases (pretrained keras.applications models)."""
        if not self.pretrained:
            return ()
        return tuple(b for b in self.backbones if BACKBONE_SPECS[b].factory is not None)

    def size_of(self, backbone: str) -> int:
        """The input size `backbone` runs at."""
        return dict(self.backbone_sizes).get(backbone, self.image_size)


def unfrozen_layer_count(depth: float, weighted_layers: int) -> int:
    """How many of `weighted_layers` a fractional unfreeze depth makes trainable (at least 1 when > 0)."""
    if depth <= 0:
        return 0
    return max(1, min(weighted_layers, math.ceil(depth * weighted_layers - 1e-9)))


@functools.lru_cache(maxsize=32)
def feature_map_shape(backbone: str, image_size: int) -> tuple[int, int, int]:
    """(H, W, C) of `backbone`'s output at `image_size` (built once with random weights, then cached)."""
    spec = BACKBONE_SPECS[backbone]
    model = _backbone(spec, image_size, "none", seed=0)
    height, width, channels = model.output_shape[1:]
    return int(height), int(width), int(channels)


def fitting_heads(heads: tuple[str, ...], backbones: tuple[str, ...], sizes: dict[str, int]) -> tuple[str, ...]:
    """`heads` less the flatten head when some backbone's feature map exceeds `FLATTEN_HEAD_MAX_FEATURES`."""
    if "flatten_dense_dropout" not in heads:
        return heads
    for name in backbones:
        height, width, channels = feature_map_shape(name, sizes[name])
        if height * width * channels > FLATTEN_HEAD_MAX_FEATURES:
            return tuple(h for h in heads if h != "flatten_dense_dropout")
    return heads


def find_backbone(model: keras.Model) -> keras.Model:
    """The backbone sub-model of a model built by `build_model`."""
    for layer in model.layers:
        if layer.name.startswith("backbone_"):
            return layer
    raise ValueError(f"Expected a layer named backbone_*. Received: {[layer.name for layer in model.layers]}")


def set_unfreeze_depth(backbone: keras.Model, depth: float) -> list[str]:
    """Make the top `depth` (a fraction in [0, 1]) of `backbone`'s weighted layers trainable, the rest frozen.

    Weighted layers are those with weights other than BatchNormalization, in `backbone.layers` order;
    the top ``unfrozen_layer_count(depth, n)`` of them become trainable. BatchNormalization layers
    always stay frozen. Returns the names of the layers made trainable.
    """
    if not 0.0 <= depth <= 1.0:
        raise ConfigError(f"Expected an unfreeze depth in [0, 1]. Received: depth={depth}")
    # Normalization (EfficientNet's input statistics) has weights but nothing to train.
    weighted = [layer for layer in backbone.layers if layer.weights
                and not isinstance(layer, (keras.layers.BatchNormalization, keras.layers.Normalization))]
    count = unfrozen_layer_count(depth, len(weighted))
    top = {id(layer) for layer in weighted[len(weighted) - count :]} if count else set()
    backbone.trainable = count > 0
    unfrozen: list[str] = []
    for layer in backbone.layers:
        make_trainable = id(layer) in top
        layer.trainable = make_trainable
        if make_trainable:
            unfrozen.append(layer.name)
    return unfrozen


def prepare_backbones(spec: ModelSpec) -> None:
    """Build each pretrained backbone once, so that unavailable weights fail before the first trial.

    Keras caches downloaded ImageNet weights (``~/.keras/models``), so trials then load them locally.
    """
    if not spec.pretrained:
        return
    for name in spec.backbones:
        backbone = BACKBONE_SPECS[name]
        if backbone.factory is not None:
            _backbone(backbone, spec.image_size, spec.weights, spec.seed)
    keras.backend.clear_session()


def _small_cnn(image_size: int, seed: int, synchronized: bool = True) -> keras.Model:
    """A VGG-style CNN for training from scratch: it trains in seconds on a CPU and converges on small data.

    Convolution -> BatchNormalization (momentum `SCRATCH_BN_MOMENTUM`, so the moving statistics used at
    inference follow training within a few dozen steps; synchronized when `synchronized` (small
    per-replica batches, `trainer.steps.sync_batchnorm`), so that under
    MultiWorkerMirroredStrategy every worker normalises with the global batch's statistics and keeps
    identical moving statistics) -> ReLU. Without normalisation the same network
    sits on the chance-level loss plateau for many epochs on small folders, and early stopping ends the
    trial there.
    """
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    # Blocks that each halve the map down to 4x4 and end at 128 filters, doubling block by block
    # (32-64-128 at 32 px, 16-32-64-128 at 64 px): the cost per image grows slowly with the input size.
    blocks = max(1, round(math.log2(max(image_size, 8) / 4)))
    for block in range(blocks):
        filters = max(16, 128 >> (blocks - 1 - block))
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=init)(x)
        x = keras.layers.BatchNormalization(momentum=SCRATCH_BN_MOMENTUM, synchronized=synchronized)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x) if x.shape[1] >= 2 else x
    return keras.Model(inputs, x, name="backbone_small_cnn")


def _backbone(spec: BackboneSpec, image_size: int, weights: str, seed: int, synchronized: bool = True) -> keras.Model:
    if spec.factory is None:
        return _small_cnn(image_size, seed, synchronized)
    keras_weights = None if weights == "none" else weights
    try:
        model = spec.factory(include_top=False, weights=keras_weights, input_shape=(image_size, image_size, 3))
    except Exception as exc:  # download failures surface as many types (URLError, OSError, ValueError)
        hint = " (no internet? pass --weights none or --weights PATH to a local file)" if weights == "imagenet" else ""
        raise ConfigError(f"Could not build {spec.name} with weights={weights!r}: {exc}{hint}") from exc
    model.name = f"backbone_{spec.name}"
    if keras_weights is None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
                layer.synchronized = synchronized
    return model


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build layers under the Keras dtype policy `name`, then restore the previous global policy.

    The policy must be set where each model is built: ``keras.backend.clear_session()`` resets the
    global policy to float32 (keras/src/backend/common/global_state.py clears it with the rest of
    the global state), and KerasTuner calls it before every trial build
    (keras_tuner/src/engine/tuner.py, ``_try_build``), as does `prepare_backbones`. A layer keeps
    the policy it was created under.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_model(
    spec: ModelSpec,
    *,
    backbone: str,
    head: str,
    units: int | None = None,
    dropout: float | None = None,
) -> keras.Model:
    """One candidate model: pixels 0..255 -> augmentation -> preprocessing -> backbone -> head -> logits.

    Every layer is built under ``spec.dtype_policy`` except the float32 logits; inputs and logits are
    float32 whatever the policy.
    """
    with dtype_policy(spec.dtype_policy):
        return _build_model(spec, backbone=backbone, head=head, units=units, dropout=dropout)


def _build_model(spec: ModelSpec, *, backbone: str, head: str, units: int | None, dropout: float | None) -> keras.Model:
    keras.utils.set_random_seed(spec.seed)
    bspec = BACKBONE_SPECS[backbone]
    inputs = keras.Input((spec.image_size, spec.image_size, 3), name="pixels", dtype="float32")
    x = inputs
    for kind, argument in spec.augmentation:
        x = augment.layer(kind, argument, seed=spec.seed, xla=spec.jit_compile is True)(x)
    size = spec.size_of(backbone)
    if size != spec.image_size:
        x = keras.layers.Resizing(size, size, interpolation="bilinear", antialias=True, name="resize_to_backbone")(x)
    if bspec.scale is not None:
        x = keras.layers.Rescaling(bspec.scale, bspec.offset, name="preprocess")(x)
    elif bspec.preprocess is not None:
        x = keras.layers.Lambda(bspec.preprocess, name="preprocess")(x)

    base = _backbone(bspec, size, spec.weights, spec.seed, spec.sync_batchnorm)
    from_scratch = bspec.factory is None or not spec.pretrained
    base.trainable = from_scratch
    x = base(x, training=False if not from_scratch else None)

    init = keras.initializers.GlorotUniform(seed=spec.seed)
    if head == "gap_dense":
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    elif head == "gap_dense_dropout":
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
        x = keras.layers.Dropout(dropout if dropout is not None else 0.2, seed=spec.seed, name="head_dropout")(x)
    elif head == "flatten_dense_dropout":
        x = keras.layers.Flatten(name="head_flatten")(x)
        x = keras.layers.Dense(units or 128, activation="relu", kernel_initializer=init, name="head_dense")(x)
        x = keras.layers.Dropout(dropout if dropout is not None else 0.2, seed=spec.seed, name="head_dropout")(x)
    else:
        raise ConfigError(f"Expected a head among {', '.join(ModelSpec.heads)}. Received: head={head!r}")
    # float32 logits even under a mixed-precision policy, so the loss is computed stably.
    outputs = keras.layers.Dense(
        1 if spec.binary else spec.num_classes, dtype="float32", kernel_initializer=init, name="logits"
    )(x)
    return keras.Model(inputs, outputs, name=f"{backbone}_{head}")


def _compile(model: keras.Model, spec: ModelSpec, learning_rate: float, initial_scale: float | None = None) -> None:
    if spec.binary:
        loss: keras.losses.Loss = keras.losses.BinaryCrossentropy(from_logits=True)
        metrics: list[Any] = [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(
        # Under mixed_float16 every replica agrees whether a step overflowed (trainer.loss_scale).
        optimizer=loss_scale.for_policy(keras.optimizers.Adam(learning_rate * spec.learning_rate_scale),
                                        model.dtype_policy, initial_scale),
        loss=loss,
        # Keras 3 applies sample weights only to `weighted_metrics` (keras/src/trainers/compile_utils.py,
        # CompileMetrics): padded copies carry weight 0 and must not count in val_accuracy.
        weighted_metrics=metrics,
        jit_compile=spec.jit_compile,
        steps_per_execution=spec.steps_per_execution,
    )


class TransferHyperModel(kt.HyperModel):
    """KerasTuner hypermodel over `ModelSpec`'s choices, trained in two phases (see module docstring)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(name="tfstack_transfer", tunable=True)
        self.spec = spec
        self.last_model: keras.Model | None = None

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        spec = self.spec
        backbone = hp.Choice("backbone", list(spec.backbones))
        head = hp.Choice("head", list(spec.heads))
        units = dropout = None
        with hp.conditional_scope("head", ["flatten_dense_dropout"]):
            if head == "flatten_dense_dropout":
                units = hp.Choice("units", [64, 128, 256])
        with hp.conditional_scope("head", ["gap_dense_dropout", "flatten_dense_dropout"]):
            if head in ("gap_dense_dropout", "flatten_dense_dropout"):
                dropout = hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.2)
        hp.Float("learning_rate", 3e-4, 2e-3, sampling="log", default=1e-3)
        if spec.fine_tuned_backbones:
            # Only pretrained keras.applications backbones have a second phase (small_cnn trains from scratch).
            with hp.conditional_scope("backbone", list(spec.fine_tuned_backbones)):
                if backbone in spec.fine_tuned_backbones:
                    depth = hp.Choice("unfreeze_depth", list(spec.unfreeze_depths))
                    fine_tuned = [d for d in spec.unfreeze_depths if d > 0]
                    if fine_tuned:
                        with hp.conditional_scope("unfreeze_depth", fine_tuned):
                            if depth > 0:
                                hp.Choice("fine_tune_factor", [0.1, 0.01], default=0.1)
        model = build_model(spec, backbone=backbone, head=head, units=units, dropout=dropout)
        log.debug("built %s under dtype policy %s", model.name, model.dtype_policy.name)
        _compile(model, spec, hp.get("learning_rate"))
        return model

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args: Any, **kwargs: Any) -> keras.callbacks.History:
        """Phase 1 on the head, then phase 2 fine-tuning; returns one History over both phases.

        ``backup=`` (a `trainer.distribute.TrialBackup`, passed by the search) makes the trial
        resumable: each phase restores its own backup, so a restart in phase 2 runs no phase-1
        epoch and resumes phase 2 at its last epoch; the History also holds the epochs trained
        before the restart, and KerasTuner's best-epoch checkpoint keeps their best value.
        """
        epochs = int(kwargs.pop("epochs", 1))
        initial_epoch = int(kwargs.pop("initial_epoch", 0))
        backup = kwargs.pop("backup", None)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if self.spec.steps_per_epoch:  # the search's training set repeats: an epoch is this many steps
            kwargs.setdefault("steps_per_epoch", self.spec.steps_per_epoch)
        if not self.spec.sync_batchnorm and model.distribute_strategy.num_replicas_in_sync > 1:
            callbacks.append(AverageBatchNormStatistics())  # per-replica BN: equal statistics before validation
        before = backup.epoch_logs() if backup is not None else {}
        if before:
            _continue_best_epoch(callbacks, before)

        def with_backup(phase: str, first_epoch: int) -> list[keras.callbacks.Callback]:
            # The backup first: a resumed epoch it shortens must end before EarlyStopping reads stop_training.
            if backup is None:
                return callbacks
            return [*backup.callbacks(phase, others=callbacks, first_epoch=first_epoch), *callbacks]

        depth = hp.values.get("unfreeze_depth", 0) if self.spec.pretrained else 0
        head_epochs = min(self.spec.head_epochs, epochs) if depth else epochs
        by_epoch: dict[int, dict[str, float]] = {}

        def record(history: keras.callbacks.History) -> None:
            for i, epoch in enumerate(history.epoch):
                by_epoch[epoch] = {key: values[i] for key, values in history.history.items()}

        if initial_epoch < head_epochs:
            record(model.fit(*args, epochs=head_epochs, initial_epoch=initial_epoch,
                             callbacks=with_backup("phase1", 0), **kwargs))
            # KerasTuner adds TensorBoard's hparams KerasCallback next to a TensorBoard callback
            # (keras_tuner/src/engine/tuner.py, _configure_tensorboard_dir); it is valid for one fit only
            # (tensorboard/plugins/hparams/_keras.py raises "cannot be reused across training sessions").
            callbacks = [c for c in callbacks if type(c).__module__ != "tensorboard.plugins.hparams._keras"]
        if depth and epochs > head_epochs:
            set_unfreeze_depth(find_backbone(model), depth)
            # A new optimizer (Adam's state cannot carry over: module docstring); the loss scale does.
            scale = loss_scale.current_scale(model.optimizer)
            with model.distribute_strategy.scope():
                _compile(model, self.spec, hp.get("learning_rate") * hp.get("fine_tune_factor"), scale)
            record(model.fit(*args, epochs=epochs, initial_epoch=max(head_epochs, initial_epoch),
                             callbacks=with_backup("phase2", head_epochs), **kwargs))
        first_run = min(by_epoch, default=epochs)
        epochs_logged = {**{e: logs for e, logs in before.items() if initial_epoch <= e < first_run}, **by_epoch}
        merged = keras.callbacks.History()
        merged.set_model(model)
        merged.epoch = sorted(epochs_logged)
        merged.history = {}
        for epoch in merged.epoch:
            for key, value in epochs_logged[epoch].items():
                merged.history.setdefault(key, []).append(value)
        self.last_model = model  # for the search's per-trial weights digest
        return merged


def _continue_best_epoch(callbacks: list[keras.callbacks.Callback], before: dict[int, dict[str, float]]) -> None:
    """Start KerasTuner's best-epoch checkpointing from the best epoch trained before a restart.

    ``SaveBestEpoch`` (keras_tuner/src/engine/tuner_utils.py) keeps its best value in memory and
    saves whenever an epoch beats it: restarted at -inf, it would overwrite a better checkpoint from
    before the restart with the first epoch after it.
    """
    from keras_tuner.src.engine.tuner_utils import SaveBestEpoch

    for callback in callbacks:
        if isinstance(callback, SaveBestEpoch):
            values = [logs for logs in before.values() if callback.objective.has_value(logs)]
            for logs in values:
                value = callback.objective.get_value(logs)
                if callback.objective.better_than(value, callback.best_value):
                    callback.best_value = value
