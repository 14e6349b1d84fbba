"""Reading TF Serving's config files with TF Serving's own messages, as ``tensorflow_model_server`` does.

``--model_config_file`` is a ``ModelServerConfig`` text proto (tensorflow-serving-api's
``model_server_config_pb2``); ``--monitoring_config_file`` a ``MonitoringConfig``,
``--batching_parameters_file`` a ``BatchingParameters`` and ``--ssl_config_file`` an ``SSLConfig`` (declared
in :mod:`serving.model_server.config_protos`: no installed package ships them). Each is parsed with
``google.protobuf.text_format``; problems raise :class:`ConfigError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from google.protobuf import message, text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server.config_protos import BatchingParameters, MonitoringConfig, SSLConfig
from serving.model_server.errors import ConfigError

__all__ = [
    "DEFAULT_PROMETHEUS_PATH",
    "SSLConfig",
    "read_batching_parameters",
    "read_model_server_config",
    "read_monitoring_config",
    "read_ssl_config",
    "single_model_config",
    "validate_model_server_config",
]

#: ``PrometheusExporter::kPrometheusPath`` in TF Serving.
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"

_M = TypeVar("_M", bound=message.Message)




def _read_text_proto(path: str | Path, proto: _M) -> _M:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"Expected a readable config file. Received: path={str(path)!r} ({exc})", str(path)) from exc
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise ConfigError(
            f"Error parsing text-format {proto.DESCRIPTOR.full_name}: {exc} (path={str(path)!r})", str(path)
        ) from exc
    return proto


def validate_model_server_config(config: model_server_config_pb2.ModelServerConfig, source: str = "<config>") -> None:
    """Check what TF Serving checks before serving a ``ModelServerConfig``; raise :class:`ConfigError`."""
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigError(
            f"Expected a model_config_list. Received: {config.WhichOneof('config') or 'an empty config'} in {source}",
            source,
        )
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ConfigError(f"Expected every model config to have a name. Received: {model} in {source}", source)
        if model.name in seen:
            raise ConfigError(f"Expected unique model names. Received: name={model.name!r} twice in {source}", source)
        seen.add(model.name)
        if not model.base_path:
            raise ConfigError(f"Expected a base_path for model {model.name!r}. Received: none in {source}", source)
        if not model.model_platform:  # ServerCore's GetPlatform
            raise ConfigError(
                "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                f"ModelServerConfig::model_platform, model name is {model.name}",
                source,
            )
        if model.model_platform != "tensorflow":
            raise ConfigError(
                f"Expected model_platform 'tensorflow' for model {model.name!r}. "
                f"Received: model_platform={model.model_platform!r} in {source}",
                source,
            )
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") == "specific" and not policy.specific.versions:
            raise ConfigError(
                f"Expected at least one version in the specific policy of model {model.name!r}. Received: none",
                source,
            )
        if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 0:
            raise ConfigError(
                f"Expected latest.num_versions >= 0 for model {model.name!r}. "
                f"Received: num_versions={policy.latest.num_versions}",
                source,
            )


def read_model_server_config(path: str | Path) -> model_server_config_pb2.ModelServerConfig:
    """Parse and validate a ``--model_config_file``."""
    config = _read_text_proto(path, model_server_config_pb2.ModelServerConfig())
    validate_model_server_config(config, str(path))
    return config


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """The config ``--model_name`` / ``--model_base_path`` stand for (latest version, TF platform)."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    validate_model_server_config(config, "--model_name/--model_base_path")
    return config


def read_monitoring_config(path: str | Path) -> MonitoringConfig:
    """Parse a ``--monitoring_config_file``; an enabled endpoint without a path gets TF Serving's default."""
    config = _read_text_proto(path, MonitoringConfig())
    prometheus = config.prometheus_config
    if prometheus.enable and not prometheus.path:
        prometheus.path = DEFAULT_PROMETHEUS_PATH
    if prometheus.path and not prometheus.path.startswith("/"):
        raise ConfigError(
            f"Expected prometheus_config.path to start with '/'. Received: path={prometheus.path!r} in {path}",
            str(path),
        )
    return config


def read_ssl_config(path: str | Path) -> message.Message:
    """Parse a ``--ssl_config_file`` (``SSLConfig`` text proto); a server key and certificate are required."""
    config = _read_text_proto(path, SSLConfig())
    if not config.server_key or not config.server_cert:  # type: ignore[attr-defined]
        raise ConfigError(f"Expected server_key and server_cert in the SSLConfig. Received: path={str(path)!r}",
                          str(path))
    if config.client_verify and not config.custom_ca:  # type: ignore[attr-defined]
        raise ConfigError(f"Expected custom_ca with client_verify: true. Received: path={str(path)!r}", str(path))
    return config


def read_batching_parameters(path: str | Path) -> BatchingParameters:
    """Parse a ``--batching_parameters_file`` and check the invariants TF Serving's batcher enforces."""
    params = _read_text_proto(path, BatchingParameters())
    max_batch = params.max_batch_size.value if params.HasField("max_batch_size") else 1000
    sizes = list(params.allowed_batch_sizes)
    if sizes:
        if sizes != sorted(set(sizes)) or sizes[0] <= 0:
            raise ConfigError(
                f"Expected allowed_batch_sizes to be positive and strictly increasing. Received: {sizes} in {path}",
                str(path),
            )
        if sizes[-1] != max_batch:
            raise ConfigError(
                "Expected the last allowed_batch_sizes entry to equal max_batch_size. "
                f"Received: allowed_batch_sizes={sizes}, max_batch_size={max_batch} in {path}",
                str(path),
            )
    return params
