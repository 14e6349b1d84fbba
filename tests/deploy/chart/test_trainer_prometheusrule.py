"""templates/trainer-prometheusrule.yaml: a running search that trains on nothing, replayed by promtool on
the trainer's own counter (trainer/progress.py: tfstack_trainer_training_images_total) with the labels the
PodMonitor's targets get (namespace, pod)."""

from __future__ import annotations

from pathlib import Path

from tests.deploy.prometheus_rules import alert_case, check_and_test, series
from tests.deploy.rendering import NAMESPACE, render, render_values
from trainer.progress import SearchMetrics

TEMPLATE = "trainer-prometheusrule.yaml"


def _images(pod: str, values: str) -> list[dict[str, str]]:
    # The exposed name, from the trainer's own registry (prometheus_client adds "_total" to a Counter).
    names = {sample.name for metric in SearchMetrics().registry.collect() for sample in metric.samples}
    (name,) = [n for n in names if n.startswith("tfstack_trainer_training_images") and n.endswith("_total")]
    return [series(name, {"namespace": NAMESPACE, "pod": pod}, values)]


def test_should_fire_when_a_running_search_trains_on_nothing(promtool_path: Path, tmp_path: Path) -> None:
    rendered = render("monitoring")
    rule = rendered.one(TEMPLATE)
    chief = f"{rendered.one('trainer-job.yaml')['metadata']['name']}-0-abcde"
    cases = [
        alert_case(_images(chief, "0+640x10 6400x40"), "TFStackTrainerStalled", "45m", [{}], rule),  # stuck at 10m
        alert_case(_images(chief, "0+640x50"), "TFStackTrainerStalled", "45m", [], rule),  # training
        alert_case(_images(chief, "0+640x10 6400x40"), "TFStackTrainerStalled", "35m", [], rule),  # 25 min < 30
        alert_case(_images("other-release-trainer-0", "0x50"), "TFStackTrainerStalled", "45m", [], rule),
    ]
    result = check_and_test(promtool_path, rule, cases, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_should_render_no_trainer_rule_when_rules_are_off() -> None:
    assert render_values({}).by_template(TEMPLATE) == []
