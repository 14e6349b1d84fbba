"""templates/tests/client-test-pod.yaml: `helm test` runs the client."""

from __future__ import annotations

from serving.client.__main__ import build_parser
from tests.deploy.rendering import NAMESPACE, containers, render, render_values, restricted_violations

TEMPLATE = "tests/client-test-pod.yaml"


def test_should_ask_the_served_model_for_its_status_when_helm_test_runs() -> None:
    rendered = render("defaults")
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


def test_should_follow_the_model_and_port_when_they_are_set() -> None:
    rendered = render_values({"model": {"name": "flowers"}, "serving": {"service": {"ports": {"grpc": 9000}}}})
    args = build_parser().parse_args(containers(rendered.one(TEMPLATE))[0]["args"])
    assert args.model == "flowers" and args.target.endswith(":9000")


def test_should_run_restricted_when_helm_test_runs() -> None:
    assert restricted_violations(render("defaults").one(TEMPLATE)["spec"]) == []
