"""The whole stack: the trainer exports the digits model, the model server serves it, the thin client asks.

The export directory is the only thing the two halves share; the server is a real process on real
ports, and the client talks to it over gRPC and REST exactly as a user's code would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from serving.client import Client
from trainer.cluster import Cluster
from trainer.config import load
from trainer.export import export_model
from trainer.launch import free_ports
from trainer.pipeline import decode_image
from trainer.search import SearchResult, run_search

pytestmark = pytest.mark.e2e


@dataclass
class Served:
    result: SearchResult
    export_base: Path
    grpc: str
    rest: str
    images: list[bytes]
    labels: np.ndarray


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("stack")
    config = load({"run_dir": str(root / "runs"), "export_base": str(root / "models"), "max_trials": "1",
                   "epochs": "4", "tuner": "random"}, {})
    result = run_search(config, Cluster(peers=(), rank=0, source="single"))
    assert result.export is not None and result.report_dir is not None
    held_out = json.loads((result.report_dir / "held_out.json").read_text())[:24]

    grpc_port, rest_port = free_ports(2)
    server = subprocess.Popen(
        [sys.executable, "-m", "serving.model_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--model_name=digits", f"--model_base_path={root / 'models' / 'digits'}",
         "--file_system_poll_wait_seconds=1"],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    try:
        with Client(f"127.0.0.1:{grpc_port}", model="digits", timeout=5) as client:
            deadline = time.monotonic() + 120
            while not client.ready():  # readiness polled: a version must be AVAILABLE
                assert server.poll() is None, "the model server exited"
                assert time.monotonic() < deadline, "no version became AVAILABLE"
                time.sleep(0.2)
        yield Served(result, root / "models", f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}",
                     [Path(item["path"]).read_bytes() for item in held_out],
                     np.array([item["label"] for item in held_out]))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def _keras_probabilities(served: Served) -> np.ndarray:
    model = served.result.model
    assert model is not None
    pixels = tf.stack([decode_image(tf.constant(image), (32, 32)) for image in served.images])
    return tf.nn.softmax(model(pixels, training=False)).numpy()


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_served_predictions_match_the_in_process_keras_model(served: Served, transport: str) -> None:
    expected = _keras_probabilities(served)
    target = served.grpc if transport == "grpc" else served.rest
    with Client(target, model="digits") as client:
        out = client.predict({"images": served.images})
        metadata = client.metadata()
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-4)
    np.testing.assert_array_equal(out["class_id"], expected.argmax(-1))
    assert [name.decode() for name in out["class_name"]] == [str(i) for i in expected.argmax(-1)]
    assert np.mean(out["class_id"] == served.labels) >= 0.8, "the demo model should mostly be right"
    assert {"serving_default", "predict_pixels"} <= set(metadata.signatures)


def test_a_new_version_is_picked_up_while_clients_keep_calling(served: Served) -> None:
    """A second export appears during a client loop: the loop sees it, and no request fails."""
    model = served.result.model
    assert model is not None
    names = tuple(reversed([str(i) for i in range(10)]))  # v2 answers with other class names: observable
    errors: list[BaseException] = []
    answers: list[tuple[str, ...]] = []
    stop = threading.Event()

    def loop() -> None:
        with Client(served.grpc, model="digits", timeout=10) as client:
            while not stop.is_set():
                try:
                    out = client.predict({"images": served.images[:4]})
                    answers.append(tuple(name.decode() for name in out["class_name"]))
                except BaseException as exc:  # every failure counts, whatever its type
                    errors.append(exc)

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        while not answers:
            assert worker.is_alive()
            time.sleep(0.05)
        first = answers[-1]
        exported = export_model(model, export_base=served.export_base, model_name="digits", class_names=names,
                                image_size=32, metadata={"note": "second export"})
        renamed = tuple(names[int(name)] for name in first)
        deadline = time.monotonic() + 90
        while renamed not in answers[-3:]:
            assert time.monotonic() < deadline, f"version {exported.version} never served"
            assert worker.is_alive()
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert errors == [], f"{len(errors)} requests failed during the switch: {errors[:3]}"
    with Client(served.grpc, model="digits") as client:
        assert client.status().available_versions == (exported.version,)
    switch = answers.index(renamed)
    assert all(answer == first for answer in answers[:switch]), "answers before the switch come from v1"
    assert all(answer == renamed for answer in answers[switch:]), "once v2 answers, v1 never answers again"
