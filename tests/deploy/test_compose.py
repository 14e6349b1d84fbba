"""docker/compose.yaml: Docker Compose's own parser accepts it (`docker compose config`, which needs no
engine), and, as data: two workers wired by TF_CONFIG that the trainer's resolver accepts, the chart's
env names, TF Serving on the shared volume, Prometheus scraping it, Grafana provisioned with the dashboard."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.config import CONFIG_DIR
from serving.model_server.config import read_monitoring_config
from tests.deploy.rendering import ROOT, containers, env_of, render, trainer_workload
from tests.deploy.trainer_contract import SAVE_DEADLINE_VARIABLE, load_config
from trainer.cluster import resolve

DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
TRAINERS = ["trainer-0", "trainer-1"]


@pytest.mark.parametrize("profiles", [[], ["dashboards"]], ids=["default", "dashboards"])
def test_should_be_accepted_by_docker_compose_when_config_is_run(compose_path: Path, profiles: list[str]) -> None:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = subprocess.run(
        [str(compose_path), "-f", str(DOCKER / "compose.yaml"), *flags, "config", "--format", "json"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    expected = {"trainer-0", "trainer-1", "serving", "prometheus"} | ({"grafana"} if profiles else set())
    assert set(model["services"]) == expected
    # the YAML anchors merged as meant: both workers carry the shared env plus their own TF_CONFIG
    for index, name in enumerate(TRAINERS):
        env = model["services"][name]["environment"]
        assert env["TFSTACK_EXPORT_BASE"] == "/models"
        assert json.loads(env["TF_CONFIG"])["task"] == {"type": "worker", "index": index}
    assert model["services"]["serving"]["volumes"][0]["read_only"] is True


def test_should_reserve_a_gpu_per_trainer_unless_the_cpu_override_is_used(compose_path: Path) -> None:
    def model(*files: str) -> dict[str, Any]:
        flags = [arg for name in files for arg in ("-f", str(DOCKER / name))]
        result = subprocess.run([str(compose_path), *flags, "config", "--format", "json"],
                                capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    gpu, cpu = model("compose.yaml"), model("compose.yaml", "compose.cpu.yaml")
    for name in TRAINERS:
        (device,) = gpu["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]
        assert "deploy" not in cpu["services"][name]
        assert cpu["services"][name]["environment"] == gpu["services"][name]["environment"]
        # The CPU image: trainer.Dockerfile without the CUDA base, the rest of the build unchanged.
        assert cpu["services"][name]["build"]["args"] == {"TF_VARIANT": ""}
        assert cpu["services"][name]["build"]["dockerfile"] == gpu["services"][name]["build"]["dockerfile"]
        assert cpu["services"][name]["image"].endswith("-cpu") and not gpu["services"][name]["image"].endswith("-cpu")
    assert "deploy" not in gpu["services"]["serving"]


def test_should_be_rejected_by_docker_compose_when_a_key_is_misspelt(compose_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text((DOCKER / "compose.yaml").read_text().replace("read_only: true", "readonly: true", 1))
    result = subprocess.run([str(compose_path), "-f", str(broken), "config", "--quiet"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "readonly" in result.stderr


def _env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in SERVICES[service]["environment"].items()}


def test_should_run_workers_serving_and_prometheus_when_compose_is_up() -> None:
    assert set(SERVICES) == {"trainer-0", "trainer-1", "serving", "prometheus", "grafana"}
    assert SERVICES["grafana"]["profiles"] == ["dashboards"]  # opt-in
    assert {"models", "keras", "prometheus"} <= set(COMPOSE["volumes"])


@pytest.mark.parametrize("service", TRAINERS)
def test_should_resolve_each_worker_from_tf_config_when_compose_wires_two_workers(service: str) -> None:
    cluster = resolve(_env(service))
    assert cluster.source == "tf_config"
    assert cluster.peers == ("trainer-0:2222", "trainer-1:2222")
    assert cluster.rank == TRAINERS.index(service)
    assert cluster.is_chief == (service == "trainer-0")
    for peer in cluster.peers:
        host = peer.split(":")[0]
        assert SERVICES[host]["hostname"] == host  # reachable by that name on the compose network


@pytest.mark.parametrize("service", TRAINERS)
def test_should_use_the_chart_env_names_when_compose_configures_the_trainer(service: str) -> None:
    env = _env(service)
    load_config(env)  # unknown TFSTACK_* names would fail here
    grace = int(SERVICES[service]["stop_grace_period"].removesuffix("s"))
    assert 0 < int(env[SAVE_DEADLINE_VARIABLE]) < grace  # saved before `docker compose stop` kills it
    chart_names = set(env_of(containers(trainer_workload(render("defaults")))[0]))
    ours = {name for name in env if name.startswith("TFSTACK_")}
    assert ours <= chart_names, sorted(ours - chart_names)
    assert ours == {n for n in chart_names if not n.startswith("TFSTACK_CLUSTER_")}


@pytest.mark.parametrize("service", TRAINERS)
def test_should_harden_the_trainers_when_compose_runs_them(service: str) -> None:
    spec = SERVICES[service]
    assert spec["user"] == "10001:10001" and spec["read_only"] is True
    assert spec["cap_drop"] == ["ALL"] and "no-new-privileges:true" in spec["security_opt"]
    assert "models:/models" in spec["volumes"] and "keras:/opt/keras" in spec["volumes"]
    assert spec["build"]["dockerfile"] == "docker/trainer.Dockerfile"
    assert (DOCKER / spec["build"]["context"] / spec["build"]["dockerfile"]).resolve().is_file()


def test_should_serve_the_shared_volume_read_only_when_tf_serving_runs() -> None:
    serving = SERVICES["serving"]
    assert "models:/models:ro" in serving["volumes"]
    assert {"8500:8500", "8501:8501"} <= set(serving["ports"])
    assert serving["build"]["dockerfile"] == "docker/serving.Dockerfile"
    assert serving["environment"]["MODEL_NAME"] == _env("trainer-0")["TFSTACK_MODEL_NAME"]
    assert serving["read_only"] is True and serving["user"] == "10001:10001"


def test_should_scrape_tf_serving_and_the_chief_when_prometheus_runs() -> None:
    mount = next(v for v in SERVICES["prometheus"]["volumes"] if v.endswith("/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((DOCKER / mount.split(":")[0]).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    serving = jobs["tf-serving"]
    assert serving["metrics_path"] == read_monitoring_config(CONFIG_DIR / "monitoring.config").prometheus_config.path
    assert serving["static_configs"][0]["targets"] == ["serving:8501"]
    trainer = jobs["tfstack-trainer"]
    port = _env("trainer-0")["TFSTACK_METRICS_PORT"]
    assert trainer["static_configs"][0]["targets"] == [f"trainer-0:{port}"]


def test_should_provision_the_dashboard_when_grafana_runs() -> None:
    volumes = dict(v.rsplit(":", 1)[0].split(":", 1) for v in SERVICES["grafana"]["volumes"])
    assert volumes["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = DOCKER / "grafana" / "provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "tfstack.yaml").read_text())["providers"][0]
    assert volumes["./grafana/dashboards"] == provider["options"]["path"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert list((DOCKER / "grafana" / "dashboards").glob("*.json"))
