"""Batching: concurrent calls merge into one run, answers split back, a bad request fails alone."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from serving.model_server.batching import Batcher
from serving.model_server.config_protos import BatchingParameters

from .conftest import http, wait_until


def _batcher(text: str = "max_batch_size { value: 32 } num_batch_threads { value: 1 }") -> Batcher:
    return Batcher(text_format.Parse(text, BatchingParameters()))


class HalfPlusTwo:
    """y = 0.5 x + 2 that records each batch it runs; the first run waits until released."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.release = threading.Event()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.batches:
            self.batches.append(len(inputs["x"]))
            self.release.wait(timeout=60)
        else:
            self.batches.append(len(inputs["x"]))
        if (inputs["x"] < 0).any():
            raise ValueError("negative input")
        return {"y": inputs["x"] * 0.5 + 2}


def test_concurrent_requests_run_as_one_batch_and_get_their_own_rows() -> None:
    batcher, model = _batcher(), HalfPlusTwo()
    with ThreadPoolExecutor(9) as pool:
        first = pool.submit(batcher.run, "k", {"x": np.array([0.0])}, model)
        wait_until(lambda: model.batches)  # the first request is running
        rest = [pool.submit(batcher.run, "k", {"x": np.array([float(i), float(i)])}, model) for i in range(1, 9)]
        wait_until(lambda: batcher.queued("k") == 8)
        model.release.set()
        assert first.result()["y"].tolist() == [2.0]
        for i, future in enumerate(rest, start=1):
            assert future.result()["y"].tolist() == [0.5 * i + 2] * 2
    assert model.batches == [1, 16]


def test_a_failing_batch_fails_every_request_in_it_and_nothing_is_run_again() -> None:
    """batching_session.cc ProcessBatch: the batch's status goes to each of its tasks (no N+1 re-runs)."""
    batcher, model = _batcher(), HalfPlusTwo()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.run, "k", {"x": np.array([1.0])}, model)
        wait_until(lambda: model.batches)
        good = pool.submit(batcher.run, "k", {"x": np.array([2.0])}, model)
        bad = pool.submit(batcher.run, "k", {"x": np.array([-1.0])}, model)
        wait_until(lambda: batcher.queued("k") == 2)
        model.release.set()
        assert first.result()["y"].tolist() == [2.5]
        for future in (good, bad):
            with pytest.raises(ValueError, match="negative input"):
                future.result()
    assert model.batches == [1, 2]


def test_a_full_queue_answers_unavailable_at_once() -> None:
    """shared_batch_scheduler.h Schedule: beyond max_enqueued_batches batches waiting, UNAVAILABLE."""
    from serving.model_server.errors import Unavailable

    batcher = _batcher("max_batch_size { value: 2 } max_enqueued_batches { value: 2 } num_batch_threads { value: 1 }")
    model = HalfPlusTwo()
    with ThreadPoolExecutor(6) as pool:
        running = pool.submit(batcher.run, "k", {"x": np.array([1.0])}, model)
        wait_until(lambda: model.batches)
        queued = [pool.submit(batcher.run, "k", {"x": np.array([2.0])}, model) for _ in range(4)]
        wait_until(lambda: batcher.queued("k") == 4)  # two batches of two rows wait
        with pytest.raises(Unavailable) as error:
            batcher.run("k", {"x": np.array([3.0])}, model)
        assert error.value.message == "The batch scheduling queue to which this task was submitted is full"
        model.release.set()
        assert running.result()["y"].tolist() == [2.5]
        assert [f.result()["y"].tolist() for f in queued] == [[3.0]] * 4
    assert batcher.run("k", {"x": np.array([4.0])}, model)["y"].tolist() == [4.0]  # room again


def test_a_request_whose_deadline_passed_in_the_queue_is_dropped_not_run() -> None:
    import time

    from serving.model_server.errors import DeadlineExceeded

    batcher, model = _batcher(), HalfPlusTwo()
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(batcher.run, "k", {"x": np.array([1.0])}, model)
        wait_until(lambda: model.batches)
        deadline = time.monotonic() + 0.05
        expired = pool.submit(batcher.run, "k", {"x": np.array([9.0])}, model, deadline)
        alive = pool.submit(batcher.run, "k", {"x": np.array([2.0])}, model, time.monotonic() + 60)
        wait_until(lambda: batcher.queued("k") == 2)
        wait_until(lambda: time.monotonic() > deadline)  # the deadline passes while it waits
        model.release.set()
        with pytest.raises(DeadlineExceeded):
            expired.result()
        assert alive.result()["y"].tolist() == [3.0]
        assert running.result()["y"].tolist() == [2.5]
    assert model.batches == [1, 1]  # the expired request's row was never run


# The expectations below are those of TF Serving's batching session: batching_util.h
# (ComputeTensorBatchSize) and tensorflow's SharedBatchScheduler (input_batch_size_limit).


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": np.zeros(5)}, "Task size 5 is larger than maximum input batch size 4"),
        ({"x": np.float32(1.0)}, "Batching Run() input tensors must have at least one dimension"),
        ({"x": np.zeros(2), "y": np.zeros(3)}, "Batching Run() input tensors must have equal 0th-dimension size"),
        ({}, "Batching Run() must have at least one input tensor"),
    ],
    ids=["over-max-batch-size", "scalar", "unequal-first-dimensions", "no-inputs"],
)
def test_requests_the_batching_session_refuses(inputs: dict[str, np.ndarray], message: str) -> None:
    from serving.model_server.errors import InvalidArgument

    batcher, model = _batcher("max_batch_size { value: 4 } num_batch_threads { value: 1 }"), HalfPlusTwo()
    model.release.set()
    with pytest.raises(InvalidArgument) as error:
        batcher.run("k", inputs, model)
    assert error.value.message == message
    assert model.batches == []


def test_large_batch_splitting_runs_a_request_in_pieces_of_the_execution_batch_size() -> None:
    batcher, model = _batcher(
        "max_batch_size { value: 8 } enable_large_batch_splitting { value: true } "
        "max_execution_batch_size { value: 3 } num_batch_threads { value: 1 }"
    ), HalfPlusTwo()
    model.release.set()
    assert batcher.run("k", {"x": np.arange(7.0)}, model)["y"].tolist() == [0.5 * i + 2 for i in range(7)]
    assert model.batches == [3, 3, 1]
    with pytest.raises(ValueError, match="Task size 9 is larger than maximum input batch size 8"):
        batcher.run("k", {"x": np.zeros(9)}, model)


def test_server_with_the_shipped_batching_config_answers_correctly(start_server: Any, model_base: Path) -> None:
    from serving.config import CONFIG_DIR

    server = start_server("--model_name=hp2", f"--model_base_path={model_base}", "--enable_batching",
                          f"--batching_parameters_file={CONFIG_DIR / 'batching.config'}")
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/hp2:predict"
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: http("POST", url, f'{{"instances": [{i}.0, 1.0]}}'), range(40)))
    assert answers == [(200, {"predictions": [0.5 * i + 2, 2.5]}) for i in range(40)]


def test_classify_and_regress_are_batched_on_the_server(
    start_server: Any, model_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upstream batches classify and regress too (their signatures run through the batching session)."""
    sizes: list[int] = []
    original = Batcher._execute

    def record(batch: list[Any]) -> None:
        sizes.append(len(batch))
        original(batch)

    monkeypatch.setattr(Batcher, "_execute", staticmethod(record))
    config = model_base.parent / "batching.config"
    config.write_text("max_batch_size { value: 64 } batch_timeout_micros { value: 200000 } "
                      "num_batch_threads { value: 1 }")
    server = start_server("--model_name=hp2", f"--model_base_path={model_base}", "--enable_batching",
                          f"--batching_parameters_file={config}")
    base = f"http://127.0.0.1:{server.rest_port}/v1/models/hp2"
    for api, signature in (("regress", "regress_x_to_y"), ("classify", "classify_x_to_y")):
        sizes.clear()
        bodies = [f'{{"signature_name": "{signature}", "examples": [{{"x": {i}.0}}]}}' for i in range(6)]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(http, ["POST"] * 6, [f"{base}:{api}"] * 6, bodies))
        expected = [[0.5 * i + 2] if api == "regress" else [[["", 0.5 * i + 2]]] for i in range(6)]
        assert answers == [(200, {"results": e}) for e in expected]
        assert sum(sizes) == 6 and max(sizes) > 1, sizes  # at least one merged batch
