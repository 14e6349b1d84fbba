"""templates/tensorboard-deployment.yaml: TensorBoard over the trainer's logs, read-only."""

from __future__ import annotations

from tests.deploy.rendering import containers, pod_spec, render, render_values, restricted_violations

TEMPLATE = "tensorboard-deployment.yaml"


def test_should_read_the_trainers_run_directory_read_only_when_enabled() -> None:
    rendered = render("monitoring")
    deployment = rendered.one(TEMPLATE)
    (container,) = containers(deployment)
    trainer = containers(rendered.one("trainer-job.yaml"))[0]
    run_dir = {e["name"]: e["value"] for e in trainer["env"] if "value" in e}["TFSTACK_RUN_DIR"]
    assert container["command"] == ["tensorboard"] and f"--logdir={run_dir}" in container["args"]
    assert container["image"] == trainer["image"]  # TensorFlow's tensorboard package comes with it
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    assert restricted_violations(pod_spec(deployment)) == []


def test_should_render_no_tensorboard_by_default() -> None:
    assert render_values({}).by_template(TEMPLATE) == []
