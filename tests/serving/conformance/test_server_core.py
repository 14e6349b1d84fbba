"""ServerCore behaviour: start-up order, version labels, config reload, version lifecycle.

Expectations from tensorflow_serving/model_servers/server_core.cc/.h (WaitUntilModelsAvailable,
UpdateModelVersionLabelMap, ReloadConfig), server_core_test.cc, model_servers/server.cc (BuildAndStart builds
ServerCore before any port), core/loader_harness.cc (load retries keep the version LOADING),
core/availability_preserving_policy.cc and get_model_status_impl_test.cc (states).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server.loader import ModelManager
from tests.serving.model_server.conftest import REPO, add_broken_version, add_version, available_versions

from .conftest import free_port, http, upstream_model, wait_until, write_config

State = get_model_status_pb2.ModelVersionStatus.State
HALF_PLUS_TWO_123 = "saved_model_half_plus_two_cpu"


# ------------------------------------------------------------------------------------------ start-up


class ServerProcess:
    """``python -m serving.model_server`` with its stderr collected line by line (for polling, not sleeping)."""

    def __init__(self, *flags: str) -> None:
        self.grpc_port, self.rest_port = free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.model_server", f"--port={self.grpc_port}",
             f"--rest_api_port={self.rest_port}", *flags],
            stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self._reader.join(timeout=10)


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(timeout=30)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_no_port_opens_until_every_model_has_an_available_version(processes: list[ServerProcess],
                                                                  tmp_path: Path) -> None:
    """server.cc: ServerCore::Create (which waits, with an infinite timeout, in WaitUntilModelsAvailable) runs
    before the gRPC server is built and the HTTP server started: an empty base path keeps both ports closed."""
    base = tmp_path / "models" / "half_plus_two"
    base.mkdir(parents=True)
    server = ServerProcess("--model_name=half_plus_two", f"--model_base_path={base}",
                           "--file_system_poll_wait_seconds=1")
    processes.append(server)
    wait_until(lambda: server.logged("no versions found under base path"), timeout=120)
    assert server.proc.poll() is None
    assert not _port_open(server.grpc_port) and not _port_open(server.rest_port)
    assert not server.logged("serving.model_server ready")
    add_version(base, 123, upstream_model(tmp_path, HALF_PLUS_TWO_123) / "00000123")
    wait_until(lambda: server.logged("serving.model_server ready"), timeout=120)
    # The first answer the REST port ever gives already shows the version AVAILABLE (never a 404).
    assert available_versions(server.rest_port, "half_plus_two") == {123}
    assert server.stop() == 0


def test_a_model_whose_versions_all_fail_stops_start_up(processes: list[ServerProcess], tmp_path: Path) -> None:
    """server_core.cc WaitUntilModelsAvailable: when the awaited version ends in error (after its retries), the
    wait returns and start-up fails with 'N model(s) did not become available: {...}'; the binary exits."""
    base = tmp_path / "models" / "broken"
    base.mkdir(parents=True)
    add_broken_version(base, 1)
    server = ServerProcess("--model_name=broken", f"--model_base_path={base}", "--max_num_load_retries=1",
                           "--load_retry_interval_micros=100000")
    processes.append(server)
    assert server.proc.wait(timeout=120) == 1
    server._reader.join(timeout=10)
    text = "".join(server.lines)
    assert "Failed to start server. Error: 1 model(s) did not become available: {{{name: broken version: 1} due to " \
           "error: DATA_LOSS: " in text
    assert not server.logged("serving.model_server ready")


def test_sigterm_while_waiting_for_models_exits_cleanly(processes: list[ServerProcess], tmp_path: Path) -> None:
    base = tmp_path / "models" / "empty"
    base.mkdir(parents=True)
    server = ServerProcess("--model_name=empty", f"--model_base_path={base}")
    processes.append(server)
    wait_until(lambda: server.logged("no versions found under base path"), timeout=120)
    assert server.stop() == 0


def test_embedded_start_times_out_without_opening_ports(tmp_path: Path) -> None:
    """The embedding API blocks like the binary; a timeout (ours, for tests and embedding) bounds it."""
    from dataclasses import replace

    from serving.model_server import ModelServer, parse_flags

    base = tmp_path / "empty"
    base.mkdir()
    port = free_port()
    options = replace(parse_flags([f"--port={port}", f"--model_base_path={base}"]), host="127.0.0.1")
    server = ModelServer(options)
    with pytest.raises(TimeoutError, match="still waiting for default"):
        server.start(timeout=0.5)
    assert not _port_open(port)
    server.stop(grace=1.0)


# ------------------------------------------------------------------------------------------ labels and reload


def _reload(server: Any, models: dict[str, Path], labels: dict[str, dict[str, int]] | None = None) -> Any:
    request = model_management_pb2.ReloadConfigRequest()
    for name, base in models.items():
        model = request.config.model_config_list.config.add(name=name, base_path=str(base),
                                                           model_platform="tensorflow")
        model.model_version_policy.all.SetInParent()
        for label, version in (labels or {}).get(name, {}).items():
            model.version_labels[label] = version
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)


def test_label_on_an_unavailable_version_is_refused(start_server: Any, tmp_path: Path) -> None:
    """server_core.cc UpdateModelVersionLabelMap (server_core_test.cc AssignLabelToUnavailableVersion...):
    FAILED_PRECONDITION 'Request to assign label to version 7 of model m, which is not currently available for
    inference'; a label on an AVAILABLE version is accepted."""
    base = upstream_model(tmp_path, HALF_PLUS_TWO_123)
    server = start_server("--model_name=m", f"--model_base_path={base}")
    with pytest.raises(grpc.RpcError) as info:
        _reload(server, {"m": base}, {"m": {"stable": 7}})
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == ("Request to assign label to version 7 of model m, which is not currently "
                                    "available for inference")
    _reload(server, {"m": base}, {"m": {"stable": 123}})
    assert server.manager.resolve("m", label="stable").version == 123


def test_labels_at_start_up_need_the_flag(start_server: Any, tmp_path: Path) -> None:
    """At start-up ReloadConfig checks labels before anything loads: without
    --allow_version_labels_for_unavailable_models a labelled config cannot start; with it, it can."""
    from serving.model_server import ConfigError

    base = upstream_model(tmp_path, HALF_PLUS_TWO_123)
    config = write_config(tmp_path / "models.config", {"m": base}, 'version_labels { key: "stable" value: 123 }')
    with pytest.raises(ConfigError, match="which is not currently available for inference"):
        start_server(f"--model_config_file={config}")
    server = start_server(f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models")
    assert server.manager.resolve("m", label="stable").version == 123


def test_allow_flag_does_not_move_an_existing_label_to_an_unavailable_version(start_server: Any,
                                                                              tmp_path: Path) -> None:
    """UpdateModelVersionLabelMap with allow_version_labels_for_unavailable_models: a new label (or one keeping
    its version) may name an unavailable version; moving an existing label there is refused."""
    base = upstream_model(tmp_path, HALF_PLUS_TWO_123)
    server = start_server("--model_name=m", f"--model_base_path={base}",
                          "--allow_version_labels_for_unavailable_models")
    _reload(server, {"m": base}, {"m": {"canary": 999, "stable": 123}})
    with pytest.raises(grpc.RpcError) as info:
        _reload(server, {"m": base}, {"m": {"stable": 999}})
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_reload_reports_new_models_that_did_not_become_available(start_server: Any, tmp_path: Path) -> None:
    """ReloadConfig -> WaitUntilModelsAvailable(new models): UNKNOWN '1 model(s) did not become available'
    (model_service_impl.cc returns the status as the RPC's)."""
    base = upstream_model(tmp_path, HALF_PLUS_TWO_123)
    broken = tmp_path / "models" / "broken"
    broken.mkdir(parents=True)
    add_broken_version(broken, 1)
    server = start_server("--model_name=m", f"--model_base_path={base}", "--max_num_load_retries=0")
    with pytest.raises(grpc.RpcError) as info:
        _reload(server, {"m": base, "broken": broken})
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert info.value.details().startswith(
        "1 model(s) did not become available: {{{name: broken version: 1} due to error: DATA_LOSS: ")
    assert server.manager.resolve("m").version == 123  # the existing model is untouched


def test_config_file_poll_reapplies_the_file_and_reverts_reloaded_labels(start_server: Any, tmp_path: Path) -> None:
    """server.cc PollFilesystemAndReloadConfig calls ReloadConfig with the file's contents on every poll: a label
    added by HandleReloadConfigRequest disappears at the next poll even though the file did not change."""
    base = upstream_model(tmp_path, HALF_PLUS_TWO_123)
    config = write_config(tmp_path / "models.config", {"m": base})
    server = start_server(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1")
    _reload(server, {"m": base}, {"m": {"stable": 123}})

    def reverted() -> bool:
        status, body = http("POST", f"http://127.0.0.1:{server.rest_port}/v1/models/m/labels/stable:predict",
                            '{"instances": [1.0]}')
        return status == 400 and body["error"] == "Unrecognized servable version label: stable"

    wait_until(reverted)


def test_empty_model_platform_is_refused_by_reload(start_server: Any, tmp_path: Path) -> None:
    """server_core.cc GetPlatform: neither model_type nor model_platform is INVALID_ARGUMENT."""
    base = upstream_model(tmp_path, HALF_PLUS_TWO_123)
    server = start_server("--model_name=m", f"--model_base_path={base}")
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.add(name="m", base_path=str(base))
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel, pytest.raises(grpc.RpcError) as info:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Illegal setting neither ModelServerConfig::model_type (deprecated) nor " \
           "ModelServerConfig::model_platform, model name is m" in info.value.details()


# ------------------------------------------------------------------------------------------ version lifecycle


def _status(server: Any, name: str) -> dict[str, dict[str, Any]]:
    _, body = http("GET", f"http://127.0.0.1:{server.rest_port}/v1/models/{name}")
    return {v["version"]: v for v in body.get("model_version_status", [])} if isinstance(body, dict) else {}


def test_a_version_stays_loading_through_its_retries_then_ends_with_the_error(start_server: Any,
                                                                             tmp_path: Path) -> None:
    """loader_harness.cc: retries happen inside the load (state kLoading); only after the last one does the
    version reach kEnd with its error (get_model_status_impl: END + the load error's code)."""
    base = upstream_model(tmp_path, HALF_PLUS_TWO_123)
    server = start_server("--model_name=m", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1",
                          "--max_num_load_retries=1", "--load_retry_interval_micros=2000000")
    add_broken_version(base, 200)
    seen: set[str] = set()

    def ended() -> dict[str, Any] | None:
        entry = _status(server, "m").get("200")
        if entry:
            seen.add(entry["state"])
        return entry if entry and entry["state"] == "END" else None

    entry = wait_until(ended)
    assert "LOADING" in seen  # during the 2 s between the attempts
    assert entry["status"]["error_code"] == "DATA_LOSS"
    assert "Failed to load version 200 of model m" in entry["status"]["error_message"]
    assert available_versions(server.rest_port, "m") == {123}  # the old version keeps serving


def test_load_retries_happen_without_polling() -> None:
    """Retries belong to the load itself (LoaderHarness), not to the file-system poller."""
    attempts: list[int] = []

    def loader(name: str, version: int, path: Path) -> Any:
        attempts.append(version)
        if len(attempts) < 3:
            raise OSError("transient")
        return object()

    base = Path(__file__).parent / "_no_such_dir"
    manager = ModelManager(loader, max_num_load_retries=2, load_retry_interval_seconds=0.0)
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name="m", base_path=str(base), model_platform="tensorflow")
    manager.apply_config(config)
    manager._poll_model = _one_version_poll(manager, 5)  # type: ignore[method-assign]
    manager.poll()
    assert attempts == [5, 5, 5]
    record = manager.status("m")[0]
    assert (record.state, record.error_code) == (State.AVAILABLE, error_codes_pb2.OK)


def _one_version_poll(manager: ModelManager, version: int) -> Any:
    from serving.model_server.loader import VersionRecord

    def poll_model(name: str, model: Any) -> None:
        record = model.versions.setdefault(version, VersionRecord(version, Path("/nowhere")))
        record.state = State.LOADING
        manager._load(name, model, record)

    return poll_model


def test_an_emptied_base_path_unloads_its_versions(start_server: Any, tmp_path: Path) -> None:
    """ServerCore::Options.servable_versions_always_present is false: when polling finds no version any more,
    the versions are unloaded (AvailabilityPreservingPolicy unloads when nothing is aspired)."""
    base = upstream_model(tmp_path, HALF_PLUS_TWO_123)
    server = start_server("--model_name=m", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1")
    shutil.move(str(base / "00000123"), str(tmp_path / "moved-away"))
    wait_until(lambda: _status(server, "m").get("123", {}).get("state") == "END")
    status, body = http("POST", f"http://127.0.0.1:{server.rest_port}/v1/models/m:predict", '{"instances": [1.0]}')
    assert status == 404 and "Servable not found for request: Latest(m)" in body["error"]


def test_changing_base_path_serves_the_old_versions_until_the_new_ones_load(tmp_path: Path) -> None:
    """ServerCore reconfigures the source without tearing the model down: the old version serves while the new
    path's version loads, and is unloaded once it is AVAILABLE (AvailabilityPreservingPolicy)."""
    release = threading.Event()

    def loader(name: str, version: int, path: Path) -> Any:
        if version == 2:
            assert release.wait(60)
        return (name, version)

    old, new = tmp_path / "old", tmp_path / "new"
    (old / "1").mkdir(parents=True)
    (new / "2").mkdir(parents=True)
    manager = ModelManager(loader)
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name="m", base_path=str(old), model_platform="tensorflow")
    manager.apply_config(config)
    manager.poll()
    model.base_path = str(new)
    manager.apply_config(config)
    polling = threading.Thread(target=manager.poll)
    polling.start()
    wait_until(lambda: any(r.state == State.LOADING for r in manager.status("m")))
    assert manager.resolve("m") == ("m", 1)  # still served while version 2 loads
    release.set()
    polling.join(timeout=60)
    assert manager.resolve("m") == ("m", 2)
    assert {r.version: r.state for r in manager.status("m")} == {2: State.AVAILABLE, 1: State.END}


@pytest.mark.parametrize(
    ("content", "code"),
    [(None, "NOT_FOUND"), (b"not a SavedModel", "DATA_LOSS")],
    ids=["no-saved-model", "corrupt-saved-model"],
)
def test_load_errors_carry_tensorflows_codes(content: bytes | None, code: str, tmp_path: Path) -> None:
    """TensorFlow's SavedModel loader: a missing saved_model.pb is NOT_FOUND, an unparsable one DATA_LOSS
    ("Can't parse ... as binary proto"); GetModelStatus reports that code."""
    from serving.model_server.servable import Servable

    def loader(name: str, version: int, path: Path) -> Any:
        return Servable.load(name, version, path)

    base = tmp_path / "m"
    (base / "1").mkdir(parents=True)
    if content is not None:
        (base / "1" / "saved_model.pb").write_bytes(content)
    manager = ModelManager(loader, max_num_load_retries=0)
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name="m", base_path=str(base), model_platform="tensorflow")
    manager.apply_config(config)
    manager.poll()
    record = manager.status("m")[0]
    assert record.state == State.END
    assert error_codes_pb2.Code.Name(record.error_code) == code
