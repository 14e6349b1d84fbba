"""templates/serving-configmap.yaml: TF Serving's config files, parsed with TF Serving's own protos and
kept identical to serving/config/ (the chart's copies live in k8s/chart/files/)."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import pytest

from serving.config import CONFIG_DIR
from serving.model_server.config import read_batching_parameters, read_model_server_config, read_monitoring_config
from tests.deploy.rendering import CHART_DIR, containers, env_of, render, render_values, trainer_workload

TEMPLATE = "serving-configmap.yaml"


def test_should_ship_an_identical_copy_when_chart_files_are_compared() -> None:
    name = "monitoring.config"
    assert (CHART_DIR / "files" / name).read_bytes() == (CONFIG_DIR / name).read_bytes()


def _write(tmp_path: Path, data: dict[str, str]) -> dict[str, Path]:
    paths = {}
    for name, text in data.items():
        paths[name] = tmp_path / name
        paths[name].write_text(text)
    return paths


def test_should_parse_every_file_with_tf_serving_protos_when_defaults_are_rendered(tmp_path: Path) -> None:
    paths = _write(tmp_path, render("defaults").one(TEMPLATE)["data"])
    assert set(paths) == {"models.config", "monitoring.config", "batching.config"}
    ours = read_model_server_config(paths["models.config"])
    assert ours == read_model_server_config(CONFIG_DIR / "models.config")
    assert read_monitoring_config(paths["monitoring.config"]).prometheus_config.enable is True
    batching = read_batching_parameters(paths["batching.config"])
    assert batching == read_batching_parameters(CONFIG_DIR / "batching.config")


def test_should_render_the_batching_values_when_they_are_set(tmp_path: Path) -> None:
    batching = {"maxBatchSize": 64, "allowedBatchSizes": [8, 64], "numBatchThreads": 8,
                "enableLargeBatchSplitting": True, "maxExecutionBatchSize": 64}
    data = render_values({"serving": {"batchingParameters": batching}}).one(TEMPLATE)["data"]
    params = read_batching_parameters(_write(tmp_path, data)["batching.config"])  # TF Serving's proto + invariants
    assert params.max_batch_size.value == 64 and list(params.allowed_batch_sizes) == [8, 64]
    assert params.num_batch_threads.value == 8 and params.enable_large_batch_splitting.value is True
    assert params.max_execution_batch_size.value == 64 and params.batch_timeout_micros.value == 2000


def test_should_refuse_allowed_batch_sizes_that_do_not_end_at_the_largest_batch() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"allowedBatchSizes must end with 64"):
        render_values({"serving": {"batchingParameters": {"maxBatchSize": 64}}})


def test_should_serve_the_named_model_from_the_mount_when_model_values_are_set(tmp_path: Path) -> None:
    data = render_values({"model": {"name": "flowers", "versionsToServe": 2},
                          "storage": {"mountPath": "/export"}}).one(TEMPLATE)["data"]
    (config,) = read_model_server_config(_write(tmp_path, data)["models.config"]).model_config_list.config
    assert config.name == "flowers"
    assert config.base_path == "/export/flowers"
    assert config.model_platform == "tensorflow"
    assert config.model_version_policy.latest.num_versions == 2


def test_should_put_the_model_under_the_export_base_when_trainer_and_serving_share_the_volume() -> None:
    rendered = render("defaults")
    data = rendered.one(TEMPLATE)["data"]["models.config"]
    env = env_of(containers(trainer_workload(rendered))[0])
    assert f'base_path: "{env["TFSTACK_EXPORT_BASE"]}/{env["TFSTACK_MODEL_NAME"]}"' in data


def test_should_serve_exactly_the_listed_versions_with_labels_when_rolling_back(tmp_path: Path) -> None:
    """A rollback: model.servedVersions pins versions (model_version_policy specific) and
    model.versionLabels names them; parsed with TF Serving's own ModelServerConfig proto."""
    values = {"model": {"servedVersions": [3, 4], "versionLabels": {"stable": 3, "canary": 4}}}
    data = render_values(values).one(TEMPLATE)["data"]
    (config,) = read_model_server_config(_write(tmp_path, data)["models.config"]).model_config_list.config
    assert list(config.model_version_policy.specific.versions) == [3, 4]
    assert dict(config.version_labels) == {"stable": 3, "canary": 4}


@pytest.mark.parametrize("values", [{"servedVersions": [3], "versionLabels": {"stable": 5}},
                                    {"versionLabels": {"stable": 5}}], ids=["not-served", "latest-policy"])
def test_should_refuse_a_label_on_a_version_not_served_when_rendering(values: dict) -> None:
    """TF Serving refuses a label on a version that is not AVAILABLE (unless
    --allow_version_labels_for_unavailable_models) and would reject the whole config file."""
    with pytest.raises(helm.HelmRenderError, match=r"model\.versionLabels\.stable: version 5"):
        render_values({"model": values})
