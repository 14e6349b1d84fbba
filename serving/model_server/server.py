"""The model server: configuration, the model manager and its pollers, the gRPC and REST frontends.

:class:`ModelServer` is what ``python -m serving.model_server`` runs, and what tests embed::

    server = ModelServer(options)   # reads the config files (ConfigError if invalid)
    server.start()                  # first load pass, then both ports open; logs the "ready" line
    ...
    server.stop()                   # graceful: stop accepting, finish in-flight requests, unload

Start-up order is TF Serving's: models are loaded before the ports open, so once :meth:`start` returns
(and the ready line is logged) every loadable aspired version is AVAILABLE.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server import config as config_files
from serving.model_server._proto import session_bundle_config_pb2
from serving.model_server.batching import Batcher
from serving.model_server.errors import ConfigError, InvalidArgument
from serving.model_server.flags import ServerOptions
from serving.model_server.grpc_service import ModelService, PredictionService, add_services
from serving.model_server.loader import ModelManager
from serving.model_server.metrics import ServerMetrics
from serving.model_server.rest_api import RestApi, RestServer
from serving.model_server.servable import Servable

__all__ = ["READY_MESSAGE", "ModelServer"]

log = logging.getLogger(__name__)

#: The line logged once both ports serve (followed by the ports); tests and the demo wait for it.
READY_MESSAGE = "serving.model_server ready"

_MAX_MESSAGE_BYTES = 2**31 - 1  # TF Serving sets gRPC max message sizes to INT_MAX


class ModelServer:
    """One server instance; see the module docstring."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        if options.model_config_file:
            self._config = config_files.read_model_server_config(options.model_config_file)
        else:
            self._config = config_files.single_model_config(options.model_name, options.model_base_path)
        self._config_text = self._read_config_text()
        self.prometheus_path: str | None = None
        if options.monitoring_config_file:
            monitoring = config_files.read_monitoring_config(options.monitoring_config_file)
            if monitoring.prometheus_config.enable:
                self.prometheus_path = monitoring.prometheus_config.path
        self.batcher: Batcher | None = None
        if options.batching_parameters_file:
            parameters = config_files.read_batching_parameters(options.batching_parameters_file)
        else:
            parameters = session_bundle_config_pb2.BatchingParameters()
        if options.enable_batching:
            self.batcher = Batcher(parameters)
        _configure_tensorflow_threads(options)
        self.metrics = ServerMetrics()
        self.manager = ModelManager(
            self._load,
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval_seconds=options.load_retry_interval_micros / 1e6,
            on_change=self._on_change,
        )
        self.manager.apply_config(self._config)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._grpc: grpc.Server | None = None
        self._rest: RestServer | None = None
        self.grpc_port = 0
        self.rest_port = 0

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load models, open the ports, start the pollers; log the ready line."""
        options = self.options
        self.manager.poll()
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=options.grpc_max_threads, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        add_services(
            self._grpc, PredictionService(self.manager, self.metrics),
            ModelService(self.manager, self.metrics, self.reload_config),
        )
        address = f"[::]:{options.port}" if options.host in ("0.0.0.0", "::") else f"{options.host}:{options.port}"
        try:
            self.grpc_port = self._grpc.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"Expected to bind the gRPC port. Received: {address} is not available ({exc})") from exc
        if options.rest_api_port:
            api = RestApi(self.manager, self.metrics, self.prometheus_path)
            self._rest = RestServer(
                api, options.host, options.rest_api_port, metrics=self.metrics,
                num_threads=options.rest_api_num_threads, timeout_ms=options.rest_api_timeout_in_ms,
                max_request_bytes=options.max_request_bytes, enable_cors=options.rest_api_enable_cors_support,
            )
            self.rest_port = self._rest.port
            self._rest.start()
        self._grpc.start()
        if options.file_system_poll_wait_seconds > 0:
            self._spawn("version-poller", options.file_system_poll_wait_seconds, self._poll_versions)
        if options.model_config_file and options.model_config_file_poll_wait_seconds > 0:
            self._spawn("config-poller", options.model_config_file_poll_wait_seconds, self._poll_config_file)
        log.info("%s: gRPC on port %d, REST on port %s, models %s", READY_MESSAGE, self.grpc_port,
                 self.rest_port or "(disabled)", ", ".join(self.manager.model_names()))

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: no new requests, in-flight ones finish (up to ``grace`` seconds), models unload."""
        grace = self.options.grace_period_seconds if grace is None else grace
        self._stop.set()
        done = self._grpc.stop(grace) if self._grpc is not None else None
        if self._rest is not None:
            self._rest.stop(grace)
        if done is not None:
            done.wait(grace)
        for thread in self._threads:
            thread.join(timeout=grace)
        self.manager.unload_all()
        log.info("serving.model_server stopped")

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from another thread or a signal handler)."""
        self._stop.wait()

    def __enter__(self) -> ModelServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ config

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """HandleReloadConfigRequest: validate, apply, and load the new models before returning."""
        try:
            config_files.validate_model_server_config(config, "ReloadConfigRequest")
        except ConfigError as exc:
            raise InvalidArgument(str(exc)) from exc
        self._config = config
        self.manager.apply_config(config)
        self.manager.poll()

    def _read_config_text(self) -> str | None:
        if not self.options.model_config_file:
            return None
        try:
            return Path(self.options.model_config_file).read_text()
        except OSError:
            return None

    def _poll_config_file(self) -> None:
        text = self._read_config_text()
        if text is None or text == self._config_text:
            return
        try:
            config = config_files.read_model_server_config(self.options.model_config_file)
        except ConfigError as exc:
            log.error("keeping the previous model config: %s", exc)
            return
        self._config_text = text
        names = ", ".join(m.name for m in config.model_config_list.config)
        log.info("model config file changed; now serving %s", names)
        self.reload_config(config)

    # ------------------------------------------------------------------------------------ internals

    def _load(self, name: str, version: int, path: Path) -> Servable:
        tags = [t.strip() for t in self.options.saved_model_tags.split(",") if t.strip()]
        try:
            servable = Servable.load(name, version, path, tags)
            servable.batcher = self.batcher
            if self.options.enable_model_warmup:
                servable.warm_up(self.options.num_request_iterations_for_warmup)
        except Exception:
            self.metrics.load_failures.labels(name).inc()
            raise
        return servable

    def _on_change(self, manager: ModelManager) -> None:
        self.metrics.set_models(manager.model_names())
        self.metrics.set_version_counts(manager.version_counts())

    def _poll_versions(self) -> None:
        self.manager.poll()

    def _spawn(self, name: str, interval: float, action: Any) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    action()
                except Exception:
                    log.exception("%s failed; will retry in %ss", name, interval)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)


def _configure_tensorflow_threads(options: ServerOptions) -> None:
    """Apply --tensorflow_{intra,inter}_op_parallelism (TensorFlow accepts them only before it initializes)."""
    import tensorflow as tf

    wanted = {
        "intra": options.tensorflow_intra_op_parallelism,
        "inter": options.tensorflow_inter_op_parallelism,
    }
    current = {
        "intra": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter": tf.config.threading.get_inter_op_parallelism_threads(),
    }
    for kind, value in wanted.items():
        if not value or value == current[kind]:
            continue
        setter = getattr(tf.config.threading, f"set_{kind}_op_parallelism_threads")
        try:
            setter(value)
        except RuntimeError as exc:  # already initialized: another server in this process came first
            log.warning("--tensorflow_%s_op_parallelism=%d not applied: %s", kind, value, exc)
