"""templates/tests/client-test-pod.yaml: `helm test` runs the client: status, then one prediction over gRPC
and one over REST, checked for shape and class names (files/helm-test/check.py). The rendered command runs
here against the local TF Serving stand-in (serving/model_server) serving a model that follows the trainer's
export contract."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from serving.client.__main__ import build_parser
from tests.deploy.rendering import NAMESPACE, ROOT, containers, render, render_values, restricted_violations

TEMPLATE = "tests/client-test-pod.yaml"


def test_should_ask_the_served_model_for_its_status_when_the_test_only_asks_for_status() -> None:
    rendered = render_values({"client": {"test": {"predict": False}}})
    pod = rendered.one(TEMPLATE)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    container = containers(pod)[0]
    service = rendered.one("serving-service.yaml")["metadata"]["name"]
    args = build_parser().parse_args(container["args"])  # the client's own CLI accepts them
    assert args.command == "status"
    assert args.target == f"{service}.{NAMESPACE}.svc.cluster.local:8500"
    assert args.model == "digits"
    assert container["image"] == "tfstack-client:0.1.0"


def _check_args(rendered) -> dict[str, str]:
    container = containers(rendered.one(TEMPLATE))[0]
    assert container["command"] == ["python", "/etc/tfstack-test/check.py"]
    return dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])


def test_should_predict_through_the_service_over_grpc_and_rest_when_helm_test_runs() -> None:
    rendered = render_values({"model": {"name": "flowers"}, "serving": {"service": {"ports": {"grpc": 9000}}}})
    args = _check_args(rendered)
    host = f"{rendered.one('serving-service.yaml')['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert (args["grpc"], args["rest"]) == (f"{host}:9000", f"http://{host}:8501")
    assert args["model"] == "flowers" and args["classes"] == "0,1,2,3,4,5,6,7,8,9"


def test_should_run_restricted_when_helm_test_runs() -> None:
    assert restricted_violations(render("defaults").one(TEMPLATE)["spec"]) == []


# -- the rendered check against a real server ---------------------------------------------------------------

@pytest.fixture(scope="module")
def contract_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The local stand-in serving "digits" (a contract model whose classes are "dark" and "light") on free
    loopback ports."""
    from serving.model_server import ModelServer, parse_flags
    from tests.serving.model_server.conftest import START_TIMEOUT, build_contract_model, free_port

    base = tmp_path_factory.mktemp("models") / "digits"
    build_contract_model(base / "1")
    flags = ["--port=0", f"--rest_api_port={free_port()}", "--model_name=digits", f"--model_base_path={base}"]
    server = ModelServer(replace(parse_flags(flags), host="127.0.0.1", grace_period_seconds=5.0))
    server.start(timeout=START_TIMEOUT)
    yield server
    server.stop(grace=5.0)


def _run_check(server: Any, tmp_path: Path, classes: list[str]) -> subprocess.CompletedProcess[str]:
    """The test pod's command, with its ConfigMap's files written out and the Service's names pointed at
    the local server."""
    rendered = render_values({"client": {"test": {"classNames": classes}}})
    config_map = rendered.one("tests/client-test-configmap.yaml")
    (tmp_path / "check.py").write_text(config_map["data"]["check.py"])
    (tmp_path / "digit-3.png").write_bytes(base64.b64decode(config_map["binaryData"]["digit-3.png"]))
    container = containers(rendered.one(TEMPLATE))[0]
    args = _check_args(rendered)
    args.update(grpc=f"127.0.0.1:{server.grpc_port}", rest=f"http://127.0.0.1:{server.rest_port}",
                image=str(tmp_path / "digit-3.png"))
    command = [sys.executable, container["command"][1].replace("/etc/tfstack-test", str(tmp_path)),
               *(f"--{key}={value}" for key, value in args.items())]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_should_pass_when_the_served_model_answers_with_its_classes_over_both_transports(
    contract_server: Any, tmp_path: Path
) -> None:
    done = _run_check(contract_server, tmp_path, ["light", "dark"])
    assert done.returncode == 0, done.stderr
    assert "gRPC: 2 classes" in done.stdout and "REST: 2 classes" in done.stdout
    assert "digits version 1: AVAILABLE" in done.stdout


@pytest.mark.slow
def test_should_fail_with_the_classes_it_got_when_the_model_answers_with_other_classes(
    contract_server: Any, tmp_path: Path
) -> None:
    done = _run_check(contract_server, tmp_path, ["0", "1", "2"])
    assert done.returncode == 1
    assert "Expected 3 probabilities (one per class) over gRPC. Received 2" in done.stderr


@pytest.mark.slow
def test_should_fail_when_the_model_names_its_top_class_otherwise(contract_server: Any, tmp_path: Path) -> None:
    done = _run_check(contract_server, tmp_path, ["cat", "dog"])
    assert done.returncode == 1
    assert "Expected the top class to be one of ['cat', 'dog'], at its index. Received: [('dark'" in done.stderr
