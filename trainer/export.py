"""Writing a trained model as a versioned TF Serving SavedModel, atomically.

Layout (the only contract between training and serving)::

    <export_base>/<model_name>/<version>/
        saved_model.pb  variables/  assets/
        assets.extra/tfstack_metadata.json        class names, hyperparameters, metrics, versions
        assets.extra/tf_serving_warmup_requests    PredictionLogs TF Serving replays at load time

Signatures: ``serving_default`` takes ``images`` (tf.string ``[None]``, encoded JPEG/PNG/BMP/GIF) and
decodes and resizes in the graph exactly as the training pipeline does (`trainer.pipeline.decode_image`);
``predict_pixels`` takes ``pixels`` (float32 ``[None, H, W, 3]``, 0..255). Both return
``probabilities`` (float32 ``[None, C]``), ``class_id`` (int64 ``[None]``) and ``class_name``
(tf.string ``[None]``).

TF Serving loads any all-digit directory it sees under ``<export_base>/<model_name>``, so a version
is written into a hidden temporary directory next to it and renamed into place (atomic on one
filesystem); an existing version is never rewritten.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from serving.wire import WARMUP_FILE, predict_log
from trainer.errors import ExportError
from trainer.pipeline import decode_image

__all__ = [
    "INPUT_IMAGES",
    "INPUT_PIXELS",
    "METADATA_FILE",
    "OUTPUTS",
    "WARMUP_FILE",
    "ExportedModel",
    "discard_staged",
    "existing_versions",
    "export_model",
    "next_version",
    "publish_staged",
    "stage_export",
]

log = logging.getLogger(__name__)

INPUT_IMAGES = "images"
INPUT_PIXELS = "pixels"
OUTPUTS = ("probabilities", "class_id", "class_name")
METADATA_FILE = "tfstack_metadata.json"
_VERSION = re.compile(r"^\d+$")


@dataclass(frozen=True)
class ExportedModel:
    """Where a version landed."""

    version: int
    path: Path


def existing_versions(model_dir: Path) -> list[int]:
    """All-digit version directories under `model_dir`, ascending (what TF Serving would load)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and _VERSION.match(p.name))


def next_version(model_dir: Path) -> int:
    """One above the highest existing version (1 for a new model)."""
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def _outputs(model: keras.Model, pixels: tf.Tensor, class_names: tf.Tensor) -> dict[str, tf.Tensor]:
    logits = tf.cast(model(pixels, training=False), tf.float32)
    if logits.shape[-1] == 1:  # binary: one logit -> two probabilities, so clients see one format
        positive = tf.sigmoid(logits)
        probabilities = tf.concat([1.0 - positive, positive], axis=-1)
    else:
        probabilities = tf.nn.softmax(logits, axis=-1)
    class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
    return {
        "probabilities": probabilities,
        "class_id": class_id,
        "class_name": tf.gather(class_names, class_id),
    }


def _warmup_records(model_name: str, images: Sequence[bytes]) -> list[bytes]:
    """Serialized PredictionLog records for TF Serving's warm-up (one request per image, then a batch).

    Built with the project's own wire-compatible protos (`serving.wire`), so the trainer needs only its
    extra, not tensorflow-serving-api."""
    batches = [[image] for image in images[:2]] + ([list(images[:8])] if len(images) > 1 else [])
    return [
        predict_log(model_name, {INPUT_IMAGES: np.array(batch, dtype=object)}, "serving_default")
        for batch in batches
    ]


def stage_export(
    model: keras.Model,
    *,
    export_base: Path,
    model_name: str,
    class_names: Sequence[str],
    image_size: int,
    metadata: dict[str, Any],
    warmup_images: Sequence[bytes] = (),
) -> Path:
    """Write `model` into a hidden staging directory next to the versions of `model_name`; returns it.

    TF Serving loads only all-digit directory names, so the staged export is invisible to it until
    `publish_staged` renames it. The publish gate (`trainer.publish`) checks it in between.

    Raises:
        ExportError: the model could not be written; nothing is left behind.
    """
    if len(class_names) < 2:
        raise ExportError(f"Expected at least 2 class names. Received: {list(class_names)}")
    model_dir = Path(export_base) / model_name
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"Expected a writable export directory. Received: {model_dir} ({exc.strerror})") from exc
    staging = model_dir / f".staging-{uuid.uuid4().hex}"
    try:
        _write_saved_model(model, staging, class_names, image_size)
        extra = staging / "assets.extra"
        extra.mkdir(parents=True, exist_ok=True)
        record = {**metadata, "class_names": list(class_names), "image_size": image_size,
                  "signatures": {"serving_default": {"inputs": [INPUT_IMAGES], "outputs": list(OUTPUTS)},
                                 "predict_pixels": {"inputs": [INPUT_PIXELS], "outputs": list(OUTPUTS)}}}
        (extra / METADATA_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        if warmup_images:
            with tf.io.TFRecordWriter(str(extra / WARMUP_FILE)) as writer:
                for serialized in _warmup_records(model_name, warmup_images):
                    writer.write(serialized)
        _fsync_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def publish_staged(staging: Path) -> ExportedModel:
    """Make a staged export the next version of its model (an atomic rename); returns where it landed."""
    return _publish(staging, staging.parent)


def discard_staged(staging: Path) -> None:
    """Remove a staged export that will not be published."""
    shutil.rmtree(staging, ignore_errors=True)


def export_model(model: keras.Model, **options: Any) -> ExportedModel:
    """`stage_export` (same keyword arguments) then `publish_staged`, without the publish gate: the next
    version of the model, or ExportError with nothing left under the model directory."""
    staging = stage_export(model, **options)
    try:
        return publish_staged(staging)
    except BaseException:
        discard_staged(staging)
        raise


def _write_saved_model(model: keras.Model, path: Path, class_names: Sequence[str], image_size: int) -> None:
    names = tf.constant(list(class_names), dtype=tf.string)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_IMAGES)])
    def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(
            lambda data: decode_image(data, (image_size, image_size)),
            images,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
        )
        return _outputs(model, pixels, names)

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT_PIXELS)])
    def serve_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return _outputs(model, pixels, names)

    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve_images)  # traces: shape mismatches surface here
        archive.add_endpoint("predict_pixels", serve_pixels)
        archive.write_out(str(path), verbose=False)
    except (ValueError, TypeError, OSError, tf.errors.OpError) as exc:
        raise ExportError(f"Could not write the SavedModel for {model.name} to {path}: {exc}") from exc


def _fsync_tree(root: Path) -> None:
    """Flush every file so that a rename never publishes a directory whose contents are still in flight."""
    for directory, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                os.fsync(handle.fileno())


def _publish(staging: Path, model_dir: Path) -> ExportedModel:
    """Rename `staging` to the next free version; retry if another writer took that number first."""
    for _attempt in range(100):
        version = next_version(model_dir)
        target = model_dir / str(version)
        try:
            # os.rename onto an existing non-empty directory fails instead of overwriting it.
            os.rename(staging, target)
        except OSError:
            if target.exists():
                continue
            raise
        dir_fd = os.open(model_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        log.info("exported %s version %d to %s", model_dir.name, version, target)
        return ExportedModel(version=version, path=target)
    raise ExportError(f"Could not claim a version number under {model_dir} after 100 attempts")
