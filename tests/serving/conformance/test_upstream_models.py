"""TF Serving's own test models, as the local server loads them: their SignatureDefs and computed values.

The models are upstream's files, unchanged (shared/upstream/tensorflow_serving/servables/tensorflow/testdata,
tensorflow/serving 9d981c5c; tests/upstream.py). The tables below are what the conformance tests rely on;
the values are what upstream's tests expect (y = 0.5 x + 2, + 3 for half_plus_three, x2 -> 0.5 x + 3).
``saved_model_half_plus_three`` (TensorFlow 1.0 era) is refused by ``tf.saved_model.load`` and served
from a ``tf.compat.v1`` session, as TF Serving's SavedModelBundle serves every model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorflow.core.example import example_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from tests.upstream import tf_serving_testdata

#: Upstream's test models and their versions.
MODELS: dict[str, tuple[str, ...]] = {
    "saved_model_half_plus_two_cpu": ("00000123",),
    "saved_model_half_plus_two_2_versions": ("00000123", "00000124"),
    "saved_model_half_plus_three": ("00000123",),
    "saved_model_half_plus_two_tf2_cpu": ("00000123",),
}

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
def test_upstreams_models_have_the_signatures_the_conformance_tests_rely_on(model: str, version: str) -> None:
    assert signature_table(tf_serving_testdata(model, version)) == EXPECTED[model]


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
        values[name] = {k: np.asarray(v).tolist() for k, v in info.call(inputs).items()}
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
def test_local_server_computes_upstreams_values_when_it_loads_upstreams_models(model: str) -> None:
    assert computed_values(tf_serving_testdata(model, MODELS[model][0])) == EXPECTED_VALUES[model]


def test_should_serve_half_plus_three_from_a_session_when_the_tf2_loader_refuses_it() -> None:
    """The reason for the session path, checked against TensorFlow itself: ``tf.saved_model.load`` fails on
    upstream's half_plus_three (its regress signature's ParseExample re-traces with a scalar input), and the
    servable loads it as a session bundle; a TF1 export the TF2 loader takes stays on the TF2 path."""
    import tensorflow as tf

    from serving.model_server.servable import Servable

    half_plus_three = tf_serving_testdata("saved_model_half_plus_three", "00000123")
    with pytest.raises(ValueError, match="rank"):
        tf.saved_model.load(str(half_plus_three))
    assert Servable.load("half_plus_three", 123, half_plus_three).session_style
    half_plus_two = tf_serving_testdata("saved_model_half_plus_two_cpu", "00000123")
    assert not Servable.load("half_plus_two", 123, half_plus_two).session_style


def test_should_refuse_a_session_style_export_when_its_variables_are_missing(tmp_path: Path) -> None:
    """A TF1 export that neither loader can load fails with the session loader's error (the TF2 loader's one
    chained to it), so the version ends in error instead of serving nothing."""
    import shutil

    from serving.model_server.servable import Servable

    version = tmp_path / "1"
    shutil.copytree(tf_serving_testdata("saved_model_half_plus_three", "00000123"), version)
    shutil.rmtree(version / "variables")
    with pytest.raises(ValueError, match="not a valid checkpoint") as info:
        Servable.load("half_plus_three", 1, version)
    assert info.value.__context__ is not None  # the TF2 loader's failure came first
