"""Binary classification end to end: a 2-class folder -> search -> export -> local model server -> client.

A binary model has one logit (sigmoid); the export turns it into two probabilities so that clients see
the same outputs as for C classes. Here the served answers are checked against an independent
computation: the in-process Keras model's logit through a numpy sigmoid, and the file's true class.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from serving.client import Client
from tests.trainer.images import write_folder
from trainer.cluster import Cluster
from trainer.config import load
from trainer.pipeline import decode_image
from trainer.search import SearchResult, run_search

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLASSES = ("class_0", "class_1")  # horizontal vs vertical stripes (tests/trainer/images.py)


@dataclass
class Served:
    result: SearchResult
    server: Any
    images: list[bytes]
    labels: np.ndarray


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from serving.model_server import ModelServer, parse_flags

    root = tmp_path_factory.mktemp("binary")
    folder = write_folder(root / "stripes", classes=2, per_class=40, size=24)
    # The defaults a user gets offline: --backbone auto (small_cnn from scratch), the default heads.
    config = load({"data": str(folder), "weights": "none", "run_dir": str(root / "runs"),
                   "export_base": str(root / "models"), "max_trials": "1", "epochs": "30", "tuner": "random"}, {})
    result = run_search(config, Cluster(peers=(), rank=0, source="single"))
    assert result.export is not None and result.report_dir is not None
    held_out = json.loads((result.report_dir / "held_out.json").read_text())
    flags = ["--port=0", f"--rest_api_port={_free_port()}", "--model_name=stripes",
             f"--model_base_path={root / 'models' / 'stripes'}", "--file_system_poll_wait_seconds=1"]
    server = ModelServer(replace(parse_flags(flags), host="127.0.0.1", grace_period_seconds=5.0))
    server.start()
    try:
        with Client(f"127.0.0.1:{server.grpc_port}", model="stripes", timeout=10) as client:
            deadline = time.monotonic() + 60
            while not client.ready():  # a version must be AVAILABLE
                assert time.monotonic() < deadline, "no version became AVAILABLE"
                time.sleep(0.1)
        yield Served(result, server, [Path(item["path"]).read_bytes() for item in held_out],
                     np.array([item["label"] for item in held_out]))
    finally:
        server.stop(grace=5.0)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_binary_model_serves_two_probabilities_from_image_bytes(served: Served, transport: str) -> None:
    target = (f"127.0.0.1:{served.server.grpc_port}" if transport == "grpc"
              else f"http://127.0.0.1:{served.server.rest_port}")
    with Client(target, model="stripes", timeout=10) as client:
        out = client.predict({"images": served.images})
    model = served.result.model
    assert model is not None and model.output_shape == (None, 1), "a binary model has one logit"
    pixels = tf.stack([decode_image(tf.constant(image), (32, 32)) for image in served.images])
    logit = np.asarray(model(pixels, training=False))[:, 0].astype(np.float64)
    positive = 1.0 / (1.0 + np.exp(-logit))

    probabilities = np.asarray(out["probabilities"])
    assert probabilities.shape == (len(served.images), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probabilities[:, 1], positive, atol=1e-4)
    np.testing.assert_array_equal(out["class_id"], (positive > 0.5).astype(np.int64))
    assert [name.decode() for name in out["class_name"]] == [CLASSES[i] for i in out["class_id"]]
    accuracy = float(np.mean(out["class_id"] == served.labels))
    assert accuracy >= 0.8, f"stripes are easy; served held-out accuracy {accuracy:.2f} (chance 0.5)"
    assert set(out["class_id"]) == {0, 1}, "both classes are predicted"
