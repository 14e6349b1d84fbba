"""Our rebuilds of TF Serving's test models match upstream's: SignatureDefs and computed values.

``tests/fixtures/make_upstream_models.py`` writes the models; these tests pin what they must be. When
TF Serving's own files are present under ``<repo>/../shared/upstream/tensorflow_serving/servables/tensorflow/
testdata/`` (placed there by the steering side, never committed here), every signature is compared with
upstream's field by field, and the values computed by both are compared where TensorFlow 2 can load
upstream's file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorflow.core.example import example_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from tests.fixtures.make_upstream_models import MODELS

from .conftest import UPSTREAM_MODELS

REPO = Path(__file__).resolve().parents[3]
UPSTREAM_TESTDATA = REPO.parent / "shared" / "upstream" / "tensorflow_serving" / "servables" / "tensorflow" / "testdata"

#: (model, signature) -> (method_name, {input: (dtype, dims or None for unknown rank or "absent")}, outputs...)
#: as upstream's saved_model.pb files declare them (read from tensorflow/serving's testdata).
F, S = 1, 7
COLUMN = [-1, 1]
TF1_SIGNATURES: dict[str, Any] = {
    "serving_default": ("tensorflow/serving/predict", {"x": (F, COLUMN)}, {"y": (F, COLUMN)}),
    "classify_x_to_y": ("tensorflow/serving/classify", {"inputs": (S, None)}, {"scores": (F, COLUMN)}),
    "regress_x_to_y": ("tensorflow/serving/regress", {"inputs": (S, None)}, {"outputs": (F, COLUMN)}),
    "regress_x_to_y2": ("tensorflow/serving/regress", {"inputs": (S, None)}, {"outputs": (F, COLUMN)}),
    "regress_x2_to_y3": ("tensorflow/serving/regress", {"inputs": (F, COLUMN)}, {"outputs": (F, COLUMN)}),
}
EXPECTED: dict[str, dict[str, Any]] = {
    "saved_model_half_plus_two_cpu": TF1_SIGNATURES,
    "saved_model_half_plus_two_2_versions": {
        **TF1_SIGNATURES,
        "classify_x2_to_y3": ("tensorflow/serving/classify", {"inputs": (F, COLUMN)}, {"scores": (F, COLUMN)}),
    },
    "saved_model_half_plus_three": {
        "serving_default": ("tensorflow/serving/predict", {"x": (F, "absent")}, {"y": (F, "absent")}),
        "tensorflow/serving/regress": ("tensorflow/serving/regress", {"inputs": (F, "absent")},
                                       {"outputs": (F, "absent")}),
    },
    "saved_model_half_plus_two_tf2_cpu": {
        "serving_default": ("tensorflow/serving/predict", {"x": (F, [1])}, {"y": (F, [1])}),
        "classify_x_to_y": ("tensorflow/serving/predict", {"inputs": (S, [-1])}, {"scores": (F, COLUMN)}),
        "classify_x2_to_y3": ("tensorflow/serving/predict", {"inputs": (F, [1])}, {"scores": (F, [1])}),
        "regress_x_to_y": ("tensorflow/serving/predict", {"inputs": (S, [-1])}, {"outputs": (F, COLUMN)}),
        "regress_x_to_y2": ("tensorflow/serving/predict", {"inputs": (S, [-1])}, {"outputs": (F, COLUMN)}),
        "regress_x2_to_y3": ("tensorflow/serving/predict", {"inputs": (F, [1])}, {"outputs": (F, [1])}),
        "__saved_model_init_op": ("", {}, {"__saved_model_init_op": (0, None)}),
    },
}


def _meta_graph(version_dir: Path) -> meta_graph_pb2.MetaGraphDef:
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    assert len(saved_model.meta_graphs) == 1
    assert list(saved_model.meta_graphs[0].meta_info_def.tags) == ["serve"]
    return saved_model.meta_graphs[0]


def _shape(info: meta_graph_pb2.TensorInfo) -> Any:
    if not info.HasField("tensor_shape"):
        return "absent"
    if info.tensor_shape.unknown_rank:
        return None
    return [d.size for d in info.tensor_shape.dim]


def signature_table(version_dir: Path) -> dict[str, Any]:
    """Method name, and dtype and shape per input and output key, of every signature of a version."""
    return {
        name: (
            signature.method_name,
            {key: (info.dtype, _shape(info)) for key, info in signature.inputs.items()},
            {key: (info.dtype, _shape(info)) for key, info in signature.outputs.items()},
        )
        for name, signature in _meta_graph(version_dir).signature_def.items()
    }


def _versions() -> list[tuple[str, str]]:
    return [(name, version) for name, versions in MODELS.items() for version in versions]


@pytest.mark.parametrize(("model", "version"), _versions(), ids=lambda v: v)
def test_our_models_have_upstreams_signatures(model: str, version: str) -> None:
    assert signature_table(UPSTREAM_MODELS / model / version) == EXPECTED[model]


def _example(x: float) -> bytes:
    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(x)
    return example.SerializeToString()


def computed_values(version_dir: Path) -> dict[str, list[Any]]:
    """Every signature run once through the local server's Servable: float inputs 1.0 and 2.0 (or x = 2.0 for
    a fixed-size input), serialized Examples with x = 1.0 and 2.0 for string inputs."""
    from serving.model_server.servable import Servable

    servable = Servable.load("m", 1, version_dir)
    values = {}
    for name, info in sorted(servable.signatures.items()):
        inputs = {}
        for alias, (dtype, shape) in info.inputs.items():
            if dtype.kind == "O":
                inputs[alias] = np.array([_example(1.0), _example(2.0)], dtype=object)
            elif shape.rank == 1 and shape[0] == 1:
                inputs[alias] = np.array([2.0], np.float32)
            else:
                inputs[alias] = np.array([[1.0], [2.0]], np.float32)
        values[name] = {k: v.numpy().tolist() for k, v in info.call(inputs).items()}
    return values


EXPECTED_VALUES = {
    "saved_model_half_plus_two_cpu": {
        "classify_x_to_y": {"scores": [[2.5], [3.0]]}, "regress_x2_to_y3": {"outputs": [[3.5], [4.0]]},
        "regress_x_to_y": {"outputs": [[2.5], [3.0]]}, "regress_x_to_y2": {"outputs": [[3.5], [4.0]]},
        "serving_default": {"y": [[2.5], [3.0]]},
    },
    "saved_model_half_plus_three": {
        "serving_default": {"y": [[3.5], [4.0]]}, "tensorflow/serving/regress": {"outputs": [[3.5], [4.0]]},
    },
    "saved_model_half_plus_two_tf2_cpu": {
        "classify_x2_to_y3": {"scores": [4.0]}, "classify_x_to_y": {"scores": [[2.5], [3.0]]},
        "regress_x2_to_y3": {"outputs": [4.0]}, "regress_x_to_y": {"outputs": [[2.5], [3.0]]},
        "regress_x_to_y2": {"outputs": [[3.5], [4.0]]}, "serving_default": {"y": [3.0]},
    },
}


@pytest.mark.parametrize("model", sorted(EXPECTED_VALUES))
def test_our_models_compute_upstreams_values(model: str) -> None:
    assert computed_values(UPSTREAM_MODELS / model / MODELS[model][0]) == EXPECTED_VALUES[model]


@pytest.mark.skipif(not UPSTREAM_TESTDATA.is_dir(), reason=f"upstream testdata not present at {UPSTREAM_TESTDATA}")
@pytest.mark.parametrize(("model", "version"), _versions(), ids=lambda v: v)
def test_against_upstreams_own_files(model: str, version: str) -> None:
    """Field by field against TF Serving's committed saved_model.pb, and values where TensorFlow 2 loads it
    (upstream's saved_model_half_plus_three, written by TensorFlow 1.0, has a placeholder whose empty shape
    meant 'unknown' then and 'scalar' now: TensorFlow 2's loader refuses it, TF Serving's C++ session does not)."""
    theirs = UPSTREAM_TESTDATA / model / version
    if not (theirs / "saved_model.pb").exists():
        pytest.skip(f"{theirs} not present")
    ours = UPSTREAM_MODELS / model / version
    assert signature_table(ours) == signature_table(theirs)
    if model != "saved_model_half_plus_three":
        assert computed_values(ours) == computed_values(theirs)
