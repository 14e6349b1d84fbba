"""Versions: policies, polling the base path, labels, failed loads, warm-up, switching without failures."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server.loader import aspired_versions, list_versions
from serving.model_server.servable import Servable

from .conftest import HALF_PLUS_TWO, add_broken_version, add_version, available_versions, http, wait_until


def _model_config(policy: str) -> model_server_config_pb2.ModelConfig:
    return text_format.Parse(f"name: 'm' base_path: '/m' {policy}", model_server_config_pb2.ModelConfig())


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", {7}),
        ("model_version_policy { latest { num_versions: 2 } }", {5, 7}),
        ("model_version_policy { all { } }", {1, 5, 7}),
        ("model_version_policy { specific { versions: 1 versions: 9 } }", {1}),
    ],
    ids=["default-latest-1", "latest-2", "all", "specific"],
)
def test_version_policies_pick_aspired_versions(policy: str, expected: set[int]) -> None:
    assert aspired_versions(_model_config(policy), [1, 5, 7]) == expected


def test_only_all_digit_directories_are_versions(tmp_path: Path) -> None:
    # The last name is a fullwidth 7: a digit to str.isdigit, but not an ASCII digit as TF Serving wants.
    for name in ("1", "0002", "3a", "tmp-4", ".5", "v6", "\uff17"):
        (tmp_path / name).mkdir()
    (tmp_path / "8").write_text("a file, not a directory")
    assert list_versions(tmp_path) == {1: tmp_path / "1", 2: tmp_path / "0002"}
    assert list_versions(tmp_path / "absent") == {}


def test_new_version_is_served_and_the_old_one_unloaded(start_server: Any, model_base: Path) -> None:
    server = start_server("--model_name=hp2", f"--model_base_path={model_base}", "--file_system_poll_wait_seconds=1")
    assert available_versions(server.rest_port, "hp2") == {1}
    (model_base / "tmp-7").mkdir()  # not all digits: ignored
    add_version(model_base, 2)
    wait_until(lambda: available_versions(server.rest_port, "hp2") == {2})
    _, body = http("GET", f"http://127.0.0.1:{server.rest_port}/v1/models/hp2")
    states = {v["version"]: v["state"] for v in body["model_version_status"]}
    assert states == {"2": "AVAILABLE", "1": "END"}
    assert server.manager.resolve("hp2").version == 2


def test_broken_version_reports_its_error_and_the_old_one_keeps_serving(start_server: Any, model_base: Path) -> None:
    server = start_server("--model_name=hp2", f"--model_base_path={model_base}", "--file_system_poll_wait_seconds=1",
                          "--max_num_load_retries=0")
    add_broken_version(model_base, 2)

    def failed() -> dict[str, Any] | None:
        _, body = http("GET", f"http://127.0.0.1:{server.rest_port}/v1/models/hp2/versions/2")
        entries = body.get("model_version_status", []) if isinstance(body, dict) else []
        return entries[0] if entries and entries[0]["status"]["error_code"] != "OK" else None

    entry = wait_until(failed)
    assert entry["state"] == "END"
    assert "Failed to load version 2 of model hp2" in entry["status"]["error_message"]
    assert available_versions(server.rest_port, "hp2") == {1}
    status, body = http("POST", f"http://127.0.0.1:{server.rest_port}/v1/models/hp2:predict", '{"instances": [2.0]}')
    assert (status, body) == (200, {"predictions": [3.0]})
    _, page = http("GET", f"http://127.0.0.1:{server.rest_port}/v1/models/hp2")
    assert len(page["model_version_status"]) == 2


def test_latest_two_serves_both_and_labels_pick_one(start_server: Any, model_base: Path, tmp_path: Path) -> None:
    add_version(model_base, 2)
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "hp2" base_path: "{model_base}" model_platform: "tensorflow" '
        "model_version_policy { latest { num_versions: 2 } } "
        'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } } }'
    )
    server = start_server(f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models")
    assert available_versions(server.rest_port, "hp2") == {1, 2}
    assert server.manager.resolve("hp2").version == 2  # no version: the latest
    assert server.manager.resolve("hp2", label="stable").version == 1
    assert server.manager.resolve("hp2", label="canary").version == 2


def test_model_config_file_is_polled(start_server: Any, model_base: Path, tmp_path: Path,
                                     contract_version: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "hp2" base_path: "{model_base}" model_platform: "tensorflow" }} }}'
    )
    server = start_server(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1")
    staged = tmp_path / "models.config.new"
    staged.write_text(
        f'model_config_list {{ config {{ name: "digits" base_path: "{contract_version.parent}" '
        'model_platform: "tensorflow" } }'
    )
    staged.rename(config)
    wait_until(lambda: available_versions(server.rest_port, "digits") == {1})
    status, _ = http("GET", f"http://127.0.0.1:{server.rest_port}/v1/models/hp2")
    assert status == 404  # removed from the config: unloaded


def test_warmup_requests_are_replayed_and_a_bad_warmup_fails_the_load(contract_version: Path, tmp_path: Path) -> None:
    servable = Servable.load("digits", 1, contract_version)
    assert servable.warm_up() == 1
    broken = tmp_path / "1"
    shutil.copytree(contract_version, broken)
    (broken / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="TFRecord"):
        Servable.load("digits", 1, broken).warm_up()


def test_no_request_fails_while_versions_switch(start_server: Any, model_base: Path) -> None:
    server = start_server("--model_name=hp2", f"--model_base_path={model_base}", "--file_system_poll_wait_seconds=1")
    seen: set[int] = set()
    failures: list[str] = []
    stop = threading.Event()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hp2"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([2.0], dtype=np.float32)))

    def client_loop() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                try:
                    response = stub.Predict(request, timeout=30)
                    seen.add(response.model_spec.version.value)
                    if list(response.outputs["y"].float_val) != [3.0]:
                        failures.append(f"wrong answer {response.outputs['y']}")
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")
                status, body = http("POST", f"http://127.0.0.1:{server.rest_port}/v1/models/hp2:predict",
                                    json.dumps({"instances": [2.0]}))
                if status != 200:
                    failures.append(f"REST {status}: {body}")

    thread = threading.Thread(target=client_loop)
    thread.start()
    try:
        wait_until(lambda: 1 in seen)
        add_version(model_base, 2)
        wait_until(lambda: 2 in seen)
        add_version(model_base, 3, HALF_PLUS_TWO)
        wait_until(lambda: 3 in seen and available_versions(server.rest_port, "hp2") == {3})
    finally:
        stop.set()
        thread.join(timeout=60)
    assert failures == []
    assert seen == {1, 2, 3}
