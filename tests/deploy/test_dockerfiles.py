"""docker/*.Dockerfile: hadolint clean, and the contracts of each image (base pins, non-root user,
entrypoints, the serving command line of serving/config/command.txt). checkov: test_checkov.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from serving.config import CONTAINER_CONFIG_DIR, command_line
from tests.deploy.rendering import ROOT
from tests.deploy.tools import hadolint

DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _last(path: Path, instruction: str) -> str:
    return [args for name, args in _instructions(path) if name == instruction][-1]


def test_should_find_the_three_images_when_docker_dir_is_listed() -> None:
    assert [p.name for p in DOCKERFILES] == ["client.Dockerfile", "serving.Dockerfile", "trainer.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_should_lint_clean_with_hadolint_when_dockerfile_is_checked(dockerfile: Path) -> None:
    result = subprocess.run([str(hadolint()), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_should_run_as_a_numeric_non_root_user_when_the_image_starts(dockerfile: Path) -> None:
    user = _last(dockerfile, "USER")
    assert user == "${UID}:${UID}"
    assert re.search(r"^ARG UID=(\d+)$", dockerfile.read_text(), re.M)[1] == "10001"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_should_pin_every_base_image_when_from_is_read(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S*)$", text, re.M))
    for _, base in [i for i in _instructions(dockerfile) if i[0] == "FROM"]:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base.split()[0])
        _, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.match(r"^\d", tag), image
        # A digest build argument ends every base reference: empty (the tag) or "@sha256:<64 hex>".
        (digest_arg,) = re.findall(r"\$\{(\w+_DIGEST)\}$", base.split()[0])
        assert re.fullmatch(r"(@sha256:[0-9a-f]{64})?", args[digest_arg]), digest_arg


def test_should_build_a_cpu_trainer_from_the_same_dockerfile_when_tf_variant_is_empty() -> None:
    text = (DOCKER / "trainer.Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S*)$", text, re.M))
    bases = [args_ for name, args_ in _instructions(DOCKER / "trainer.Dockerfile") if name == "FROM"]
    for variant, expected in (("-gpu", "tensorflow/tensorflow:2.21.0-gpu"), ("", "tensorflow/tensorflow:2.21.0")):
        resolved = {**args, "TF_VARIANT": variant}
        images = {re.sub(r"\$\{(\w+)\}", lambda m, r=resolved: r[m[1]], b.split()[0]) for b in bases}
        assert images == {expected}
    assert args["TF_VARIANT"] == "-gpu"  # the default stays the CUDA image


def test_should_start_the_trainer_with_python_m_trainer_when_the_trainer_image_runs() -> None:
    dockerfile = DOCKER / "trainer.Dockerfile"
    assert json.loads(_last(dockerfile, "ENTRYPOINT")) == ["python", "-m", "trainer"]
    assert json.loads(_last(dockerfile, "CMD")) == ["search"]
    text = dockerfile.read_text()
    assert "FROM tensorflow/tensorflow:${TF_VERSION}${TF_VARIANT}${TF_DIGEST}" in text
    assert '"${wheel}[trainer]"' in text
    assert "ARG BAKE_WEIGHTS=" in text and "bake_weights.py ${BAKE_WEIGHTS}" in text


def test_should_run_serving_config_command_line_when_the_serving_image_starts() -> None:
    dockerfile = DOCKER / "serving.Dockerfile"
    assert json.loads(_last(dockerfile, "ENTRYPOINT")) == command_line()
    copied = _last(dockerfile, "COPY").split()
    assert copied[-1] == CONTAINER_CONFIG_DIR + "/"
    assert sorted(Path(p).name for p in copied[:-1]) == ["batching.config", "models.config", "monitoring.config"]
    assert all((ROOT / p).is_file() for p in copied[:-1])


def test_should_check_health_by_model_metadata_when_the_serving_image_runs() -> None:
    healthcheck = _last(DOCKER / "serving.Dockerfile", "HEALTHCHECK")
    assert "/v1/models/%s/metadata" in healthcheck and "8501" in healthcheck


def test_should_start_the_client_without_tensorflow_when_the_client_image_runs() -> None:
    dockerfile = DOCKER / "client.Dockerfile"
    assert json.loads(_last(dockerfile, "ENTRYPOINT")) == ["python", "-m", "serving.client"]
    text = dockerfile.read_text()
    assert '".[client]"' in text and '"tfstack[client]"' in text
    assert "tensorflow" not in text.lower().replace("tensorflow serving", "").replace("no tensorflow", "")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_should_copy_only_what_dockerignore_lets_through_when_building(dockerfile: Path) -> None:
    allowed = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for name, args in _instructions(dockerfile):
        if name != "COPY" or "--from=" in args:
            continue
        for source in args.split()[:-1]:
            source = source.rstrip("/")
            assert any(_let_through(source, pattern) for pattern in allowed), source
            assert (ROOT / source).exists(), source


def _let_through(source: str, pattern: str) -> bool:
    if pattern.endswith("/**"):
        return source == pattern[:-3] or source.startswith(pattern[:-2])
    return source == pattern


def test_should_bake_only_known_backbones_when_bake_weights_runs() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bake_weights", DOCKER / "bake_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["resnet9000"]) == 2
    assert module.main(["small_cnn"]) == 0  # trained from scratch: nothing to download
