"""templates/serving-deployment.yaml: TF Serving on the shared volume (read-only) with our config."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import helm_python as helm
import pytest

from serving.config import CONTAINER_CONFIG_DIR, command_line
from serving.model_server.flags import parse_flags
from tests.deploy.rendering import ROOT, containers, pod_spec, render, render_values, restricted_violations

TEMPLATE = "serving-deployment.yaml"
SERVING_SETS = ["defaults", "tfjob", "gpus", "existing_claim", "monitoring", "serving_only"]


AGEING_FLAG = "--grpc_channel_arguments="


def _grpc_channel_arguments(args: list[str]) -> dict[str, int | str]:
    """The --grpc_channel_arguments value as TF Serving reads it (model_servers/server.cc at
    tensorflow/serving@9d981c5c, parseGrpcChannelArgs: split on ",", each on "=" into key and value; a value
    absl::SimpleAtoi parses into an int32 is passed to gRPC as an integer, else as a string)."""
    (flag,) = [arg for arg in args if arg.startswith(AGEING_FLAG)]
    parsed: dict[str, int | str] = {}
    for argument in flag.removeprefix(AGEING_FLAG).split(","):
        key, value = argument.split("=")
        parsed[key] = int(value) if re.fullmatch(r"[+-]?\d+", value) and -2**31 <= int(value) < 2**31 else value
    return parsed


def _server_args(container: dict) -> list[str]:
    """The arguments less connection ageing, which the chart adds to serving/config/command.txt's command line
    (the compose stack runs one replica, so its command line does not age connections)."""
    return [arg for arg in container["args"] if not arg.startswith(AGEING_FLAG)]


def test_should_run_the_command_line_of_serving_config_when_defaults_are_used() -> None:
    container = containers(render("defaults").one(TEMPLATE))[0]
    assert container["command"] + _server_args(container) == command_line()


@pytest.mark.parametrize("value_set", SERVING_SETS)
def test_should_pass_valid_model_server_flags_when_value_set_is_rendered(value_set: str) -> None:
    container = containers(render(value_set).one(TEMPLATE))[0]
    assert container["command"] == ["tensorflow_model_server"]
    options = parse_flags(container["args"])  # tensorflow_model_server's flags, as the local stand-in reads them
    assert options.model_config_file == f"{CONTAINER_CONFIG_DIR}/models.config"
    assert options.monitoring_config_file == f"{CONTAINER_CONFIG_DIR}/monitoring.config"
    assert (options.port, options.rest_api_port) == (8500, 8501)


def test_should_drop_the_batching_file_when_batching_is_off() -> None:
    args = containers(render("serving_only").one(TEMPLATE))[0]["args"]
    assert "--enable_batching=false" in args
    assert not any(arg.startswith("--batching_parameters_file") for arg in args)


@pytest.mark.parametrize("value_set", SERVING_SETS)
def test_should_mount_models_read_only_and_config_from_the_configmap_when_rendered(value_set: str) -> None:
    rendered = render(value_set)
    deployment = rendered.one(TEMPLATE)
    mounts = {m["name"]: m for m in containers(deployment)[0]["volumeMounts"]}
    assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
    assert mounts["config"]["mountPath"] == CONTAINER_CONFIG_DIR and mounts["config"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    assert volumes["config"]["configMap"]["name"] == rendered.one("serving-configmap.yaml")["metadata"]["name"]
    if rendered.values["storage"]["mode"] == "pvc":
        claim = rendered.one("storage-pvc.yaml")["metadata"]["name"]
    else:
        claim = rendered.values["storage"]["existingClaim"]
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim


def test_should_be_ready_only_when_a_version_is_available() -> None:
    """GET /v1/models/NAME/metadata needs a servable handle (GetModelMetadataImpl -> GetServableHandle) and
    answers 404 until a version is AVAILABLE; GET /v1/models/NAME answers 200 while it is LOADING."""
    container = containers(render("defaults").one(TEMPLATE))[0]
    probe = container["readinessProbe"]
    assert probe["httpGet"] == {"path": "/v1/models/digits/metadata", "port": "http"}
    http = next(p for p in container["ports"] if p["name"] == "http")
    assert http["containerPort"] == 8501


@pytest.mark.parametrize("value_set", SERVING_SETS)
def test_should_never_kill_the_server_while_it_waits_for_its_first_model_when_rendered(value_set: str) -> None:
    """tensorflow_model_server opens no port until a version is AVAILABLE. Kubernetes runs no liveness
    probe before the startup probe has succeeded (docs, "Configure Liveness, Readiness and Startup
    Probes"), and no probe at all while an init container runs: the server starts only once a version
    exists, and then the startup probe gives loading an explicit budget."""
    deployment = render(value_set).one(TEMPLATE)
    container = containers(deployment)[0]
    assert "livenessProbe" not in container or "startupProbe" in container
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == container["readinessProbe"]["httpGet"]["path"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 300, "loading and warming up a large SavedModel takes minutes"
    (init,) = pod_spec(deployment)["initContainers"]
    assert init["name"] == "wait-for-model"
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in init["volumeMounts"]


def _wait_command(values: dict | None = None) -> list[str]:
    (init,) = pod_spec(render_values(values or {}).one(TEMPLATE))["initContainers"]
    return init["command"]


def test_should_wait_for_an_all_digit_version_directory_when_the_init_container_runs(tmp_path: Path) -> None:
    """The init container's own command, run by sh here: it keeps waiting while the model directory is
    missing, empty or holds only non-version entries (a trainer's staging directory), and ends as soon
    as a version appears (TF Serving loads all-digit directory names only)."""
    command = _wait_command({"serving": {"waitForModel": {"intervalSeconds": 1}}})
    assert command[-2] == "/models/digits"
    base = tmp_path / "models" / "digits"
    process = subprocess.Popen([*command[:-2], str(base), command[-1]], stdout=subprocess.PIPE, text=True)
    try:
        for step in (lambda: None, lambda: base.mkdir(parents=True),
                     lambda: (base / ".staging-7").mkdir(), lambda: (base / "7.tmp").mkdir()):
            step()
            with pytest.raises(subprocess.TimeoutExpired):
                process.wait(timeout=1.5)  # more than one interval: it looked again and kept waiting
        (base / ".staging-7").rename(base / "00000007")
        assert process.wait(timeout=10) == 0
        assert "found version 00000007" in process.stdout.read()
    finally:
        process.kill()
        process.wait()


def test_should_start_the_server_at_once_when_waiting_for_the_model_is_disabled() -> None:
    spec = pod_spec(render_values({"serving": {"waitForModel": {"enabled": False}}}).one(TEMPLATE))
    assert "initContainers" not in spec


def test_should_request_gpus_when_serving_gpus_is_set() -> None:
    deployment = render("gpus").one(TEMPLATE)
    container = containers(deployment)[0]
    assert container["image"].endswith(":2.21.0-gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    spec = pod_spec(deployment)
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert "nvidia.com/gpu" not in containers(render("defaults").one(TEMPLATE))[0]["resources"].get("limits", {})


def test_should_probe_the_named_model_when_model_name_is_set() -> None:
    rendered = render_values({"model": {"name": "flowers"}})
    probe = containers(rendered.one(TEMPLATE))[0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/v1/models/flowers/metadata"


def test_should_leave_replicas_to_the_hpa_when_autoscaling_is_enabled() -> None:
    assert "replicas" not in render("monitoring").one(TEMPLATE)["spec"]
    assert render("defaults").one(TEMPLATE)["spec"]["replicas"] == 2


@pytest.mark.parametrize("value_set", SERVING_SETS)
def test_should_run_restricted_when_security_contexts_are_default(value_set: str) -> None:
    assert restricted_violations(pod_spec(render(value_set).one(TEMPLATE))) == []


def test_should_roll_pods_when_the_config_changes() -> None:
    before = render("defaults").one(TEMPLATE)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    after = render_values({"model": {"versionsToServe": 2}}).one(TEMPLATE)
    assert after["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != before


def test_should_pin_serving_and_trainer_tensorflow_together_when_images_are_chosen() -> None:
    """The trainer's TensorFlow must not be newer than the server's: same minor everywhere."""
    tag = render("defaults").values["serving"]["image"]["tag"]
    minor = re.match(r"^(\d+\.\d+)\.", str(tag))[1]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"tensorflow>={minor},<' in pyproject
    assert f"ARG TF_VERSION={minor}." in (ROOT / "docker" / "trainer.Dockerfile").read_text()
    assert f"ARG TF_SERVING_TAG={tag}" in (ROOT / "docker" / "serving.Dockerfile").read_text()


def test_should_use_the_digest_when_serving_image_digest_is_set() -> None:
    image = containers(render("monitoring").one(TEMPLATE))[0]["image"]
    assert image == "docker.io/tensorflow/serving@sha256:" + "ab" * 32


# -- rollouts, scale-downs and drains ---------------------------------------------------------------------

@pytest.mark.parametrize("value_set", SERVING_SETS)
def test_should_pause_before_sigterm_for_less_than_the_grace_period_when_rendered(value_set: str) -> None:
    """tensorflow_model_server ignores SIGTERM (tensorflow/serving#1853): the kubelet runs preStop, then
    SIGTERM, and SIGKILLs at terminationGracePeriodSeconds counted from the start, pause included."""
    deployment = render(value_set).one(TEMPLATE)
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    command = containers(deployment)[0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and 0 < int(command[1]) < grace


def test_should_outlive_every_aged_connection_during_the_pause_when_defaults_are_used() -> None:
    """With the defaults, a connection opened just before the pod started terminating gets its GOAWAY within
    1.1 x max_connection_age (gRPC core adds up to +10% jitter) and its calls then have
    max_connection_age_grace to finish: all of that fits in the preStop pause."""
    container = containers(render("defaults").one(TEMPLATE))[0]
    arguments = _grpc_channel_arguments(container["args"])
    assert set(arguments) == {"grpc.max_connection_age_ms", "grpc.max_connection_age_grace_ms"}
    age, grace = arguments["grpc.max_connection_age_ms"], arguments["grpc.max_connection_age_grace_ms"]
    assert isinstance(age, int) and isinstance(grace, int), "server.cc would pass them to gRPC as strings"
    pause_ms = int(container["lifecycle"]["preStop"]["exec"]["command"][1]) * 1000
    assert 1.1 * age + grace <= pause_ms


def test_should_refuse_to_render_when_the_pause_is_not_shorter_than_the_grace_period() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"preStopPauseSeconds \(45\) must be shorter than "
                       r"serving.terminationGracePeriodSeconds \(45\)"):
        render_values({"serving": {"preStopPauseSeconds": 45, "terminationGracePeriodSeconds": 45}})
    spec = pod_spec(render_values({"serving": {"preStopPauseSeconds": 0, "terminationGracePeriodSeconds": 5}})
                    .one(TEMPLATE))
    assert "lifecycle" not in spec["containers"][0] and spec["terminationGracePeriodSeconds"] == 5


def test_should_not_age_connections_when_connection_ageing_is_off() -> None:
    args = containers(render_values({"serving": {"connectionAgeing": {"enabled": False}}}).one(TEMPLATE))[0]["args"]
    assert not any(arg.startswith(AGEING_FLAG) for arg in args)


@pytest.mark.parametrize("value_set", SERVING_SETS)
def test_should_never_lower_capacity_during_a_rollout_when_rendered(value_set: str) -> None:
    strategy = render(value_set).one(TEMPLATE)["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0 and strategy["rollingUpdate"]["maxSurge"] >= 1


def test_should_prefer_other_nodes_and_zones_for_replicas_when_placement_is_not_set() -> None:
    """Soft rules only (preferred anti-affinity, ScheduleAnyway): a one-node cluster still runs every
    replica; their selector is the Deployment's own, so they count exactly its replicas."""
    deployment = render("defaults").one(TEMPLATE)
    spec, selector = pod_spec(deployment), deployment["spec"]["selector"]
    (preferred,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert preferred["podAffinityTerm"]["labelSelector"] == selector
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in spec["affinity"]["podAntiAffinity"]
    (spread,) = spec["topologySpreadConstraints"]
    assert (spread["topologyKey"], spread["whenUnsatisfiable"]) == ("topology.kubernetes.io/zone", "ScheduleAnyway")
    assert spread["labelSelector"] == selector
    gpus = pod_spec(render("gpus").one(TEMPLATE))  # the user's own spread wins
    assert gpus["topologySpreadConstraints"] == render("gpus").values["serving"]["topologySpreadConstraints"]
    off = pod_spec(render_values({"serving": {"spreadReplicas": False}}).one(TEMPLATE))
    assert "affinity" not in off and "topologySpreadConstraints" not in off


def test_should_add_extra_env_and_volumes_when_they_are_set() -> None:
    values = {"serving": {"extraEnv": [{"name": "TF_CPP_VMODULE", "value": "http_server=1"}],
                          "extraVolumes": [{"name": "ssl", "secret": {"secretName": "tfserving-ssl"}}],
                          "extraVolumeMounts": [{"name": "ssl", "mountPath": "/etc/ssl/tfserving", "readOnly": True}]}}
    deployment = render_values(values).one(TEMPLATE)
    container = containers(deployment)[0]
    assert container["env"] == values["serving"]["extraEnv"]
    assert values["serving"]["extraVolumeMounts"][0] in container["volumeMounts"]
    volumes = pod_spec(deployment)["volumes"]
    assert values["serving"]["extraVolumes"][0] in volumes and len({v["name"] for v in volumes}) == len(volumes)
