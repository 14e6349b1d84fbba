"""templates/tests/client-test-configmap.yaml: the helm test's check and image, as a test hook. The check
itself runs against a real server in tests/deploy/chart/test_tests_client_test_pod.py."""

from __future__ import annotations

import base64

from tests.deploy.rendering import CHART_DIR, render, render_values

TEMPLATE = "tests/client-test-configmap.yaml"


def test_should_ship_the_check_and_the_image_before_the_test_pod_when_helm_test_runs() -> None:
    rendered = render("defaults")
    config_map = rendered.one(TEMPLATE)
    annotations = config_map["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test" and int(annotations["helm.sh/hook-weight"]) < 0  # pod: weight 0
    files = CHART_DIR / "files" / "helm-test"
    assert config_map["data"]["check.py"] == (files / "check.py").read_text()
    assert base64.b64decode(config_map["binaryData"]["digit-3.png"]) == (files / "digit-3.png").read_bytes()
    volumes = rendered.one("tests/client-test-pod.yaml")["spec"]["volumes"]
    assert {"name": "check", "configMap": {"name": config_map["metadata"]["name"]}} in volumes


def test_should_render_no_check_when_the_test_only_asks_for_status() -> None:
    assert render_values({"client": {"test": {"predict": False}}}).by_template(TEMPLATE) == []
