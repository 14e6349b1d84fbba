"""Fixtures for the conformance suite: TF Serving's own test expectations, run against the local server.

Every test here cites the upstream file (and test) of tensorflow/serving its expectation comes from, and
runs on upstream's own test models (``saved_model_half_plus_two_cpu``, ``saved_model_half_plus_three``, ...,
unchanged in shared/upstream, found through tests/upstream.py), copied per test. Where upstream's tests use
a model of their own that testdata does not hold, the test builds one and says so (:func:`build_probe_model`).
Servers run in this process on real loopback ports (``start_server``) or as ``python -m serving.model_server``
subprocesses; readiness is polled.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.serving.model_server.conftest import (  # noqa: F401 - fixtures re-exported for this directory
    free_port,
    http,
    start_server,
    wait_until,
)
from tests.upstream import tf_serving_testdata


def upstream_model(tmp_path: Path, name: str, versions: tuple[str, ...] | None = None) -> Path:
    """A copy of one of upstream's test models (all versions, or ``versions``) under ``tmp_path``."""
    source = tf_serving_testdata(name)
    target = tmp_path / "models" / name
    target.mkdir(parents=True)
    for version in sorted(p.name for p in source.iterdir()):
        if versions is None or version in versions:
            shutil.copytree(source / version, target / version)
    return target


@pytest.fixture
def half_plus_two(tmp_path: Path) -> Path:
    """Base path of ``saved_model_half_plus_two_cpu`` (version 123), as upstream's tests use it."""
    return upstream_model(tmp_path, "saved_model_half_plus_two_cpu")


@pytest.fixture
def default_server(start_server, half_plus_two: Path):  # type: ignore[no-untyped-def]  # noqa: F811
    """``--model_name=default --model_base_path=<saved_model_half_plus_two_cpu>``: RunServer('default', ...)."""
    return start_server("--model_name=default", f"--model_base_path={half_plus_two}")


def write_config(path: Path, models: dict[str, Path], extra: str = "") -> Path:
    """A ModelServerConfig text proto serving ``models`` (name -> base path), platform tensorflow."""
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" {extra} }}\n'
        for name, base in models.items()
    )
    staging = path.with_suffix(".staging")
    staging.write_text("model_config_list {\n" + entries + "}\n")
    staging.rename(path)  # replace atomically: a poller never reads half a file
    return path


def build_probe_model(target: Path) -> Path:
    """A model of ours with one signature per behaviour the upstream tests probe on models of their own:

    - ``slow``: ``micros`` int64 ``[None]`` -> ``slept`` (sleeps ``micros[0]`` microseconds inside the graph)
    - ``echo_text``: ``text`` string -> ``text`` (a string output whose alias does not end in ``_bytes``)
    - ``half``, ``bfloat16``, ``uint16``, ``complex64``: ``x`` of that dtype -> ``y`` (identity)
    - ``int_feature``: ``inputs`` serialized tf.Example with int64 feature ``b`` -> ``outputs`` float ``[-1, 1]``
    """
    import tensorflow as tf
    from tensorflow.python.data.experimental.ops import testing

    def identity(dtype: tf.DType) -> object:
        @tf.function(input_signature=[tf.TensorSpec([None], dtype, name="x")])
        def call(x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.identity(x)}

        return call

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="micros")])
    def slow(micros: tf.Tensor) -> dict[str, tf.Tensor]:
        dataset = tf.data.Dataset.from_tensors(micros[0]).apply(testing.sleep(micros[0]))
        return {"slept": tf.reshape(dataset.reduce(tf.constant(0, tf.int64), lambda a, b: a + b), [1])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def echo_text(text: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"text": tf.identity(text)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def int_feature(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(inputs, {"b": tf.io.FixedLenFeature([1], tf.int64)})
        return {"outputs": tf.cast(parsed["b"], tf.float32)}

    module = tf.Module()
    signatures = {"slow": slow, "echo_text": echo_text, "int_feature": int_feature, "half": identity(tf.float16),
                  "bfloat16": identity(tf.bfloat16), "uint16": identity(tf.uint16),
                  "complex64": identity(tf.complex64)}
    tf.saved_model.save(module, str(target), signatures=signatures)
    return target


@pytest.fixture(scope="session")
def probe_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One version directory of :func:`build_probe_model`, built once per session."""
    return build_probe_model(tmp_path_factory.mktemp("probe") / "1")


@pytest.fixture
def probe_server(start_server, probe_version: Path):  # type: ignore[no-untyped-def]  # noqa: F811
    """A server with model ``probe`` (version 1) and a REST timeout of 1 s."""
    return start_server("--model_name=probe", f"--model_base_path={probe_version.parent}",
                        "--rest_api_timeout_in_ms=1000")
