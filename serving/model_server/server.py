"""The model server: configuration, the model manager and its pollers, the gRPC and REST frontends.

:class:`ModelServer` is what ``python -m serving.model_server`` runs, and what tests embed::

    server = ModelServer(options)   # reads the config files (ConfigError if invalid)
    server.start()                  # waits until every model has an AVAILABLE version, then opens the ports
    ...
    server.drain()                  # SIGTERM: health NOT_SERVING, new requests UNAVAILABLE, in-flight finish
    server.stop()                   # graceful: stop accepting, finish in-flight requests, unload

Start-up order is TF Serving's (``server.cc`` builds ``ServerCore`` first, and
``ServerCore::WaitUntilModelsAvailable`` waits with an infinite timeout): no port is open until every
configured model has an AVAILABLE version. A model with no version on disk keeps the server waiting
(polling its base path every ``--file_system_poll_wait_seconds``); a model whose versions were all tried
and failed (after their load retries) stops start-up with "N model(s) did not become available"
(:class:`StartupError`), as ``tensorflow_model_server`` exits with that error. ``start(timeout=...)`` bounds
the wait for tests and embedding; the CLI waits forever, like upstream.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server import config as config_files
from serving.model_server.batching import Batcher
from serving.model_server.budget import MemoryBudget, default_budget_bytes
from serving.model_server.config_protos import BatchingParameters
from serving.model_server.errors import (
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    StartupError,
    Unknown,
)
from serving.model_server.flags import ServerOptions, grpc_channel_arguments
from serving.model_server.grpc_service import Admission, ModelService, PredictionService, add_services
from serving.model_server.health import NOT_SERVING, HealthService
from serving.model_server.loader import ModelManager
from serving.model_server.metrics import ServerMetrics
from serving.model_server.rest_api import RestApi, RestServer
from serving.model_server.servable import WARMUP_FILE, Servable, WarmupDataLoss

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
            parameters = BatchingParameters()
        self.metrics = ServerMetrics()
        if options.enable_batching:
            self.batcher = Batcher(parameters, metrics=self.metrics)
        self._ssl_config = config_files.read_ssl_config(options.ssl_config_file) if options.ssl_config_file else None
        _configure_tensorflow_threads(options)
        self.budget = MemoryBudget(options.request_memory_budget_bytes or default_budget_bytes())
        self.admission = Admission(self.budget, options.max_decoded_request_bytes)
        self._stop = threading.Event()
        self.manager = ModelManager(
            self._load,
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval_seconds=options.load_retry_interval_micros / 1e6,
            on_change=self._on_change,
            allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models,
            stop=self._stop,
        )
        try:  # ServerCore::ReloadConfig checks labels before loading anything: at start-up none is AVAILABLE
            self.manager.apply_config(self._config)
        except FailedPrecondition as exc:
            raise ConfigError(exc.message, options.model_config_file or None) from exc
        self._threads: list[threading.Thread] = []
        self._grpc: grpc.Server | None = None
        self._rest: RestServer | None = None
        self.health: HealthService | None = None
        self.grpc_port = 0
        self.rest_port = 0

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self, timeout: float | None = None) -> None:
        """Wait until every configured model has an AVAILABLE version, open the ports, start the pollers.

        Blocks like ``tensorflow_model_server`` (forever with ``timeout=None``). Raises
        :class:`StartupError` when a model's versions all failed to load, ``TimeoutError`` after
        ``timeout`` seconds, and ``OSError`` when a port cannot be bound. Logs the ready line last.
        """
        options = self.options
        deadline = None if timeout is None else time.monotonic() + timeout
        self.manager.poll()
        try:
            self.wait_for_models(self.manager.model_names(), deadline)
        except Unknown as exc:
            raise StartupError(f"Failed to start server. Error: {exc.message}") from exc
        except DeadlineExceeded as exc:
            raise TimeoutError(exc.message) from exc
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=options.grpc_max_threads, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                *grpc_channel_arguments(options.grpc_channel_arguments),  # e.g. connection ageing (the chart)
            ],
        )
        add_services(
            self._grpc, PredictionService(self.manager, self.metrics, self.admission),
            ModelService(self.manager, self.metrics, self.admission, self.reload_config),
        )
        if options.enable_grpc_healthcheck_service:
            self.health = HealthService()
            self._grpc.add_generic_rpc_handlers((self.health.handler(),))
        address = f"[::]:{options.port}" if options.host in ("0.0.0.0", "::") else f"{options.host}:{options.port}"
        try:
            if self._ssl_config is not None:
                self.grpc_port = self._grpc.add_secure_port(address, _server_credentials(self._ssl_config))
            else:
                self.grpc_port = self._grpc.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"Expected to bind the gRPC port. Received: {address} is not available ({exc})") from exc
        if options.rest_api_port:
            api = RestApi(self.manager, self.metrics, self.prometheus_path, self.budget)
            self._rest = RestServer(
                api, options.host, options.rest_api_port, metrics=self.metrics, admission=self.admission,
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

    def drain(self, timeout: float | None = None) -> bool:
        """Begin a shutdown the way a rolling restart needs it (SIGTERM; ``--drain_timeout_seconds``).

        At once: gRPC health answers NOT_SERVING for every service, and every new request is refused with
        UNAVAILABLE (HTTP 503) while the ports stay open, so load balancers and clients move to another
        replica. Then waits up to ``timeout`` seconds for the requests in flight to finish; returns whether
        they all did. :meth:`stop` follows.
        """
        timeout = self.options.drain_timeout_seconds if timeout is None else timeout
        self.admission.draining = True
        if self.health is not None:
            for service in self.health.services():
                self.health.set_status(service, NOT_SERVING)
        log.info("draining: new requests are refused with UNAVAILABLE; waiting up to %ss for in-flight ones",
                 timeout)
        deadline = time.monotonic() + timeout
        while self.requests_in_flight() > 0:
            if time.monotonic() >= deadline:
                log.warning("drain timeout: %d request(s) still in flight", self.requests_in_flight())
                return False
            time.sleep(0.02)  # polling the in-flight gauge
        return True

    def requests_in_flight(self) -> int:
        """Requests being processed now, over gRPC and REST (refused ones excluded once they are answered)."""
        grpc_calls = int(self.metrics.in_flight.labels("grpc")._value.get())
        return grpc_calls + (self._rest.in_flight if self._rest is not None else 0)

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

    def wait_for_models(self, names: list[str], deadline: float | None = None) -> None:
        """ServerCore::WaitUntilModelsAvailable: wait until each model has an AVAILABLE version or ended.

        Raises :class:`Unknown` ("N model(s) did not become available: {...}") when models ended without
        an AVAILABLE version, :class:`DeadlineExceeded` past ``deadline`` (``time.monotonic()``), and
        :class:`StartupError` when the server is stopped meanwhile. Base paths are polled every
        ``--file_system_poll_wait_seconds`` (never when it is <= 0) while a model waits.
        """
        interval = self.options.file_system_poll_wait_seconds
        next_poll = time.monotonic() + interval
        while True:
            waiting, failed = self.manager.unavailable(names)
            if not waiting:
                if failed:
                    raise Unknown(f"{len(failed)} model(s) did not become available: {{"
                                  + "".join(f"{{{f}}}, " for f in failed) + "}")
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise DeadlineExceeded(
                    "Expected every configured model to have an AVAILABLE version. Received: still waiting for "
                    + ", ".join(waiting)
                )
            if self._stop.is_set():
                raise StartupError("Stopped while waiting for models to become available: " + ", ".join(waiting))
            if interval > 0 and now >= next_poll:
                self.manager.poll()
                next_poll = time.monotonic() + interval
                continue
            step = 0.1 if deadline is None else max(min(0.1, deadline - now), 0.0)
            self._stop.wait(step)

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig, deadline: float | None = None) -> None:
        """ServerCore::ReloadConfig: validate, check labels, apply, and wait for the new models.

        InvalidArgument for an invalid config, FailedPrecondition for a label on a version that is not
        AVAILABLE, Unknown ("N model(s) did not become available") when a new model's versions failed.
        """
        try:
            config_files.validate_model_server_config(config, "ReloadConfigRequest")
        except ConfigError as exc:
            raise InvalidArgument(str(exc)) from exc
        new = self.manager.apply_config(config)
        self._config = config
        self.manager.poll()
        self.wait_for_models(sorted(new), deadline)

    def _read_config_text(self) -> str | None:
        if not self.options.model_config_file:
            return None
        try:
            return Path(self.options.model_config_file).read_text()
        except OSError:
            return None

    def _poll_config_file(self) -> None:
        """Re-apply the whole file on every poll, as TF Serving does (labels set by a reload are reverted)."""
        text = self._read_config_text()
        try:
            config = config_files.read_model_server_config(self.options.model_config_file)
        except ConfigError as exc:
            log.error("keeping the previous model config: %s", exc)
            return
        if text != self._config_text:
            names = ", ".join(m.name for m in config.model_config_list.config)
            log.info("model config file changed; now serving %s", names)
        self._config_text = text
        try:
            self.reload_config(config)
        except (InvalidArgument, FailedPrecondition, Unknown) as exc:
            log.error("ReloadConfig failed: %s", exc.message)

    # ------------------------------------------------------------------------------------ internals

    def _load(self, name: str, version: int, path: Path) -> Servable:
        """One load attempt: the SavedModel (``load_attempt_count``, as loader.cc counts LoadSavedModel),
        then the warm-up replay (``model_warmup_latency``, as saved_model_warmup_util.cc records it)."""
        tags = [t.strip() for t in self.options.saved_model_tags.split(",") if t.strip()]
        start = time.perf_counter()
        try:
            servable = Servable.load(name, version, path, tags)
        except Exception:
            self.metrics.load_attempt(str(path), False, time.perf_counter() - start)
            raise
        self.metrics.load_attempt(str(path), True, time.perf_counter() - start)
        servable.batcher = self.batcher
        servable.metrics = self.metrics
        servable.method_name_check = self.options.enable_signature_method_name_check
        if self.options.enable_model_warmup:
            self._warm_up(servable)
        return servable

    def _warm_up(self, servable: Servable) -> None:
        """RunSavedModelWarmup: recorded only when the file exists; a failing request returns before the
        metric is recorded (upstream's single-threaded path), a file that is not TFRecords records DATA_LOSS."""
        if not (servable.path / WARMUP_FILE).exists():
            return
        iterations = max(self.options.num_request_iterations_for_warmup, 1)
        start = time.perf_counter()
        try:
            count = servable.warm_up(iterations)
        except WarmupDataLoss as exc:
            self.metrics.warmup(str(servable.path), f"DATA_LOSS: {exc}", time.perf_counter() - start, 0)
            raise
        self.metrics.warmup(str(servable.path), "OK", time.perf_counter() - start, count // iterations)

    def _on_change(self, manager: ModelManager) -> None:
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


def _server_credentials(ssl_config: Any) -> grpc.ServerCredentials:
    """gRPC TLS from an SSLConfig, as server.cc builds it (client_verify: require and verify client certs)."""
    return grpc.ssl_server_credentials(
        [(ssl_config.server_key.encode(), ssl_config.server_cert.encode())],
        root_certificates=ssl_config.custom_ca.encode() if ssl_config.custom_ca else None,
        require_client_auth=bool(ssl_config.client_verify),
    )


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
