"""The exporter: signatures that match the Keras model, metadata and warm-up, atomic versioned writes."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import prediction_log_pb2

from tests.trainer.images import pattern
from trainer.errors import ExportError
from trainer.export import METADATA_FILE, WARMUP_FILE, existing_versions, export_model, next_version
from trainer.hypermodel import ModelSpec, build_model

SIZE = 16
CLASSES = ("circle", "square", "stripe")


@pytest.fixture(scope="module")
def model() -> keras.Model:
    spec = ModelSpec(num_classes=len(CLASSES), image_size=SIZE)
    built = build_model(spec, backbone="small_cnn", head="flatten_dense_dropout", units=16, dropout=0.1)
    built.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(1)
    built.fit(rng.uniform(0, 255, (8, SIZE, SIZE, 3)), rng.integers(0, 3, 8), epochs=1, verbose=0)
    return built


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _export(model: keras.Model, base: Path, **kwargs: object):
    defaults: dict = {"export_base": base, "model_name": "toy", "class_names": CLASSES, "image_size": SIZE,
                      "metadata": {"hyperparameters": {"head": "flatten_dense_dropout"}}}
    defaults.update(kwargs)
    return export_model(model, **defaults)


def test_serving_default_on_png_bytes_matches_the_keras_model(model: keras.Model, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    images = np.stack([pattern(k % 3, SIZE, rng) for k in range(5)])
    exported = _export(model, tmp_path, warmup_images=[_png(images[0]), _png(images[1])])
    assert exported.version == 1 and exported.path == tmp_path / "toy" / "1"

    loaded = tf.saved_model.load(str(exported.path))
    assert set(loaded.signatures) == {"serving_default", "predict_pixels"}
    served = loaded.signatures["serving_default"](images=tf.constant([_png(a) for a in images]))
    expected = tf.nn.softmax(model(images.astype("float32"), training=False)).numpy()
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-4)
    np.testing.assert_array_equal(served["class_id"].numpy(), expected.argmax(-1))
    assert [n.decode() for n in served["class_name"].numpy()] == [CLASSES[i] for i in expected.argmax(-1)]

    pixels = loaded.signatures["predict_pixels"](pixels=tf.constant(images, tf.float32))
    np.testing.assert_allclose(pixels["probabilities"].numpy(), expected, atol=1e-4)
    assert served["class_id"].dtype == tf.int64 and served["class_name"].dtype == tf.string


def test_metadata_and_warmup_requests_travel_with_the_model(model: keras.Model, tmp_path: Path) -> None:
    png = _png(pattern(0, SIZE, np.random.default_rng(3)))
    exported = _export(model, tmp_path, warmup_images=[png, png, png])
    metadata = json.loads((exported.path / "assets.extra" / METADATA_FILE).read_text())
    assert metadata["class_names"] == list(CLASSES) and metadata["image_size"] == SIZE
    assert metadata["hyperparameters"] == {"head": "flatten_dense_dropout"}
    records = list(tf.data.TFRecordDataset(str(exported.path / "assets.extra" / WARMUP_FILE)).as_numpy_iterator())
    assert len(records) == 3  # two single-image requests and one batch
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in records]
    assert all(log.predict_log.request.model_spec.name == "toy" for log in logs)
    assert [log.predict_log.request.inputs["images"].tensor_shape.dim[0].size for log in logs] == [1, 1, 3]
    assert logs[0].predict_log.request.inputs["images"].string_val[0] == png


def test_versions_increase_and_are_never_rewritten(model: keras.Model, tmp_path: Path) -> None:
    (tmp_path / "toy" / "7").mkdir(parents=True)
    (tmp_path / "toy" / "7" / "saved_model.pb").write_bytes(b"older")
    (tmp_path / "toy" / "notes").mkdir()
    assert next_version(tmp_path / "toy") == 8
    first = _export(model, tmp_path)
    second = _export(model, tmp_path)
    assert (first.version, second.version) == (8, 9)
    assert (tmp_path / "toy" / "7" / "saved_model.pb").read_bytes() == b"older"
    assert existing_versions(tmp_path / "toy") == [7, 8, 9]
    assert not [p for p in (tmp_path / "toy").iterdir() if p.name.startswith(".")], "staging left behind"


def test_a_failed_export_leaves_nothing_behind(model: keras.Model, tmp_path: Path) -> None:
    with pytest.raises(ExportError):
        _export(model, tmp_path, image_size=SIZE + 3)  # the model cannot take this shape: tracing fails
    assert list((tmp_path / "toy").iterdir()) == []
    with pytest.raises(ExportError, match="at least 2 class names"):
        _export(model, tmp_path, class_names=("only",))


def test_a_poller_never_sees_a_partial_version(model: keras.Model, tmp_path: Path) -> None:
    """List the model directory in a tight loop (as TF Serving polls it) while exports run."""
    model_dir = tmp_path / "toy"
    model_dir.mkdir()
    done = threading.Event()
    seen: set[str] = set()
    partial: list[str] = []

    def poll() -> None:
        while True:
            finished = done.is_set()  # read before listing: the last pass sees every version already renamed
            for entry in os.listdir(model_dir):
                if entry.isdigit() and entry not in seen:
                    version = model_dir / entry
                    complete = (version / "saved_model.pb").is_file() and (
                        version / "variables" / "variables.index"
                    ).is_file() and (version / "assets.extra" / METADATA_FILE).is_file()
                    if not complete:
                        partial.append(entry)
                    seen.add(entry)
            if finished:
                return

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        for _ in range(3):
            _export(model, tmp_path)
    finally:
        done.set()
        poller.join()
    assert seen == {"1", "2", "3"}
    assert partial == []


def test_a_mixed_precision_model_exports_float32_signatures(tmp_path: Path) -> None:
    spec = ModelSpec(num_classes=len(CLASSES), image_size=SIZE, dtype_policy="mixed_bfloat16")
    mixed = build_model(spec, backbone="small_cnn", head="gap_dense")
    assert mixed.compute_dtype == "bfloat16"
    exported = _export(mixed, tmp_path)
    loaded = tf.saved_model.load(str(exported.path))
    pixels = loaded.signatures["predict_pixels"]
    assert pixels.structured_input_signature[1]["pixels"].dtype == tf.float32
    assert loaded.signatures["serving_default"].structured_input_signature[1]["images"].dtype == tf.string
    for signature in (pixels, loaded.signatures["serving_default"]):
        assert signature.structured_outputs["probabilities"].dtype == tf.float32
    served = pixels(pixels=tf.zeros((2, SIZE, SIZE, 3)))["probabilities"].numpy()
    np.testing.assert_allclose(served.sum(axis=-1), 1.0, atol=1e-5)


_EXPORT_WITHOUT_TF_SERVING = """
import sys
from pathlib import Path

sys.modules["tensorflow_serving"] = None  # any `import tensorflow_serving...` now raises ImportError
import io
import keras
import numpy as np
from PIL import Image
from trainer.export import export_model
from trainer.hypermodel import ModelSpec, build_model

spec = ModelSpec(num_classes=2, image_size=8)
model = build_model(spec, backbone="small_cnn", head="gap_dense")
buffer = io.BytesIO()
Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="PNG")
exported = export_model(model, export_base=Path(sys.argv[1]), model_name="toy", class_names=["a", "b"],
                        image_size=8, metadata={}, warmup_images=[buffer.getvalue()] * 3)
print(exported.path)
"""


def test_the_trainer_extra_alone_exports_warmup_records(tmp_path: Path) -> None:
    """The trainer image installs only the trainer extra: no tensorflow-serving-api. With tensorflow_serving
    unimportable the export still writes warm-up records, and TF Serving's own PredictionLog reads them."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", _EXPORT_WITHOUT_TF_SERVING, str(tmp_path)], capture_output=True, text=True,
        timeout=300, cwd=root, env={**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    version = Path(result.stdout.strip().splitlines()[-1])
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
               for r in tf.data.TFRecordDataset(str(version / "assets.extra" / WARMUP_FILE))]
    assert [len(r.predict_log.request.inputs["images"].string_val) for r in records] == [1, 1, 3]
    assert {r.predict_log.request.model_spec.signature_name for r in records} == {"serving_default"}
