"""Config files: the shipped ones parse with TF Serving's own protos; bad ones fail with the file named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.config import CONFIG_DIR, CONTAINER_CONFIG_DIR, command_line
from serving.model_server import config
from serving.model_server.config_protos import BatchingParameters, MonitoringConfig, SSLConfig
from serving.model_server.errors import ConfigError
from serving.model_server.flags import FLAG_NAMES, UNSUPPORTED_UPSTREAM_FLAGS, parse_flags


def test_models_config_serves_digits_from_the_container_mount_with_latest_1() -> None:
    parsed = text_format.Parse((CONFIG_DIR / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    (model,) = parsed.model_config_list.config
    assert model.name == "digits"
    assert model.base_path == "/models/digits"
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 1
    assert config.read_model_server_config(CONFIG_DIR / "models.config") == parsed


def test_monitoring_config_enables_prometheus_at_tf_servings_default_path() -> None:
    parsed = text_format.Parse((CONFIG_DIR / "monitoring.config").read_text(), MonitoringConfig())
    assert parsed.prometheus_config.enable
    assert parsed.prometheus_config.path == config.DEFAULT_PROMETHEUS_PATH == "/monitoring/prometheus/metrics"


def test_batching_config_parses_as_batching_parameters_and_is_consistent() -> None:
    text = (CONFIG_DIR / "batching.config").read_text()
    parsed = text_format.Parse(text, BatchingParameters())
    assert parsed.max_batch_size.value == 32
    assert list(parsed.allowed_batch_sizes)[-1] == parsed.max_batch_size.value
    assert parsed.batch_timeout_micros.value > 0
    assert config.read_batching_parameters(CONFIG_DIR / "batching.config") == parsed


def test_declared_config_messages_parse_tf_servings_documented_text_when_read() -> None:
    """g3doc/serving_config.md's monitoring and batching examples and ssl_config.proto's fields, by upstream's names."""
    monitoring = text_format.Parse('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }',
                                   MonitoringConfig())
    assert monitoring.prometheus_config.enable
    assert monitoring.DESCRIPTOR.full_name == "tensorflow.serving.MonitoringConfig"
    batching = text_format.Parse(
        "max_batch_size { value: 128 } batch_timeout_micros { value: 0 } max_enqueued_batches { value: 1000000 } "
        "num_batch_threads { value: 8 } allowed_batch_sizes: 64 allowed_batch_sizes: 128 "
        "pad_variable_length_inputs: true enable_large_batch_splitting { value: true } "
        "max_execution_batch_size { value: 64 } thread_pool_name { value: 'p' }", BatchingParameters())
    assert (batching.max_enqueued_batches.value, list(batching.allowed_batch_sizes)) == (1000000, [64, 128])
    assert batching.HasField("enable_large_batch_splitting") and not BatchingParameters().HasField("max_batch_size")
    numbers = {f.name: f.number for f in BatchingParameters.DESCRIPTOR.fields}
    assert numbers["max_execution_batch_size"] == 9 and numbers["pad_variable_length_inputs"] == 7
    ssl = text_format.Parse('server_key: "k" server_cert: "c" custom_ca: "a" client_verify: true', SSLConfig())
    assert (ssl.server_key, ssl.client_verify) == ("k", True)


def test_command_line_is_tensorflow_model_server_with_known_flags_and_our_files() -> None:
    argv = command_line()
    assert argv[0] == "tensorflow_model_server"
    names = {arg.lstrip("-").split("=", 1)[0] for arg in argv[1:]}
    assert names <= set(FLAG_NAMES) | UNSUPPORTED_UPSTREAM_FLAGS
    for name in ("models.config", "monitoring.config", "batching.config"):
        assert any(arg.endswith(f"={CONTAINER_CONFIG_DIR}/{name}") for arg in argv)
        assert (CONFIG_DIR / name).is_file()


def test_the_local_server_accepts_the_container_command_line() -> None:
    argv = [arg.replace(CONTAINER_CONFIG_DIR, str(CONFIG_DIR)) for arg in command_line()[1:]]
    options = parse_flags(argv)
    assert (options.port, options.rest_api_port) == (8500, 8501)
    assert options.enable_batching
    assert Path(options.model_config_file) == CONFIG_DIR / "models.config"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_config_list { config { name: 'a' base_path: '/a' model_platform: 'tensorflow' } "
         "config { name: 'a' base_path: '/b' model_platform: 'tensorflow' } }",
         "unique model names"),
        ("model_config_list { config { name: 'a' } }", "base_path"),
        ("model_config_list { config { base_path: '/a' } }", "name"),
        ("model_config_list { config { name: 'a' base_path: '/a' model_platform: 'pytorch' } }", "model_platform"),
        ("model_config_list { config { name: 'a' base_path: '/a' model_platform: 'tensorflow' "
         "model_version_policy { specific { } } } }",
         "at least one version"),
        ("", "model_config_list"),
        ("model_config_list { nonsense: 1 }", "Error parsing text-format tensorflow.serving.ModelServerConfig"),
        # server_core.cc GetPlatform: an empty model_platform is refused.
        ("model_config_list { config { name: 'a' base_path: '/a' } }",
         "Illegal setting neither ModelServerConfig::model_type \\(deprecated\\) nor "
         "ModelServerConfig::model_platform, model name is a"),
    ],
    ids=["duplicate", "no-base-path", "no-name", "platform", "empty-specific", "empty", "syntax", "no-platform"],
)
def test_invalid_model_configs_raise_config_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "models.config"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        config.read_model_server_config(path)
    assert info.value.path == str(path)


def test_missing_config_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="readable config file"):
        config.read_monitoring_config(tmp_path / "absent.config")


def test_monitoring_config_without_path_gets_the_default(tmp_path: Path) -> None:
    path = tmp_path / "monitoring.config"
    path.write_text("prometheus_config { enable: true }")
    assert config.read_monitoring_config(path).prometheus_config.path == "/monitoring/prometheus/metrics"


def test_inconsistent_batch_sizes_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 16 } allowed_batch_sizes: 4 allowed_batch_sizes: 8")
    with pytest.raises(ConfigError, match="equal max_batch_size"):
        config.read_batching_parameters(path)


def test_the_local_server_runs_the_container_command_on_the_shipped_files(
    start_server: Any, tmp_path: Path, contract_version: Path
) -> None:
    """The container's argv and config files, with only the mount paths rewritten, drive the local server."""
    import base64
    import json

    from .conftest import http, png

    models = tmp_path / "models.config"
    shipped = (CONFIG_DIR / "models.config").read_text()
    models.write_text(shipped.replace("/models/digits", str(contract_version.parent)))
    argv = []
    for arg in command_line()[1:]:
        if arg.startswith(("--port=", "--rest_api_port=")):
            continue  # free ports instead of 8500/8501
        argv.append(arg.replace(f"{CONTAINER_CONFIG_DIR}/models.config", str(models)).replace(
            CONTAINER_CONFIG_DIR, str(CONFIG_DIR)))
    server = start_server(*argv)
    base = f"http://127.0.0.1:{server.rest_port}"
    image = {"b64": base64.b64encode(png(240)).decode()}
    status, body = http("POST", f"{base}/v1/models/digits:predict", json.dumps({"instances": [image]}))
    assert (status, body["predictions"][0]["class_name"]) == (200, "light")
    status, page = http("GET", f"{base}/monitoring/prometheus/metrics")
    assert status == 200
    assert 'tfstack_model_server_model_versions{model="digits",state="AVAILABLE"} 1.0' in page
    assert server.batcher is not None and server.batcher.max_batch_size == 32
