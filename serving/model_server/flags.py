"""Command-line flags, spelled and meaning what ``tensorflow_model_server``'s flags do (``main.cc``).

gflags syntax is accepted: ``--flag=value``, ``--flag value``, a single leading dash, and for booleans
a bare ``--flag``, ``--noflag`` or ``--flag=true|false``. A flag that ``tensorflow_model_server`` has but
this stand-in does not implement is rejected with a message saying so (never silently ignored), and a
flag neither knows is rejected as unknown; both raise :class:`FlagError` (the CLI exits 2).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

from serving.model_server.errors import FlagError

__all__ = ["OUR_FLAGS", "UNSUPPORTED_UPSTREAM_FLAGS", "ServerOptions", "grpc_channel_arguments", "parse_flags", "usage"]

_CPUS = os.cpu_count() or 1


@dataclass(frozen=True)
class ServerOptions:
    """Everything the server is configured with; field names are the flag names.

    The last fields (``host``, ``max_request_bytes``, ``grace_period_seconds`` (:meth:`ModelServer.stop`'s
    bound), ``max_decoded_request_bytes``) are not flags:
    ``tensorflow_model_server`` has no such options, so they are set only by code (tests, embedding).
    ``max_decoded_request_bytes`` bounds the memory one request's decoded tensors may take (see
    ``docs/model_server.md``, "Memory"). ``request_memory_budget_bytes`` and ``drain_timeout_seconds``
    are flags of ours (upstream has neither): the server-wide budget (0: derived from the container's
    memory limit) and the SIGTERM drain bound.
    """

    port: int = 8500
    rest_api_port: int = 0
    rest_api_num_threads: int = 4 * _CPUS
    rest_api_timeout_in_ms: int = 30000
    rest_api_enable_cors_support: bool = False
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    monitoring_config_file: str = ""
    grpc_max_threads: int = 4 * _CPUS
    enable_batching: bool = False
    batching_parameters_file: str = ""
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    saved_model_tags: str = "serve"
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    version: bool = False
    allow_version_labels_for_unavailable_models: bool = False
    enable_signature_method_name_check: bool = False
    ssl_config_file: str = ""
    enable_grpc_healthcheck_service: bool = False
    grpc_channel_arguments: str = ""
    # Flags of ours (tensorflow_model_server has no such flags).
    request_memory_budget_bytes: int = 0
    drain_timeout_seconds: int = 30
    # Not flags (see the class docstring).
    host: str = "0.0.0.0"
    max_request_bytes: int = 64 * 1024 * 1024
    grace_period_seconds: float = 30.0
    max_decoded_request_bytes: int = 256 * 1024 * 1024


_HELP: dict[str, str] = {
    "port": "Port to listen on for gRPC API (0 picks a free port here).",
    "rest_api_port": "Port to listen on for HTTP/REST API. If set to zero HTTP/REST API will not be exported.",
    "rest_api_num_threads": "Number of threads for HTTP/REST API processing (concurrent REST requests).",
    "rest_api_timeout_in_ms": "Timeout for HTTP/REST API calls.",
    "rest_api_enable_cors_support": "Enable CORS headers in response.",
    "model_name": "Name of model (ignored if --model_config_file flag is set).",
    "model_base_path": "Path to export (ignored if --model_config_file flag is set, otherwise required).",
    "model_config_file": "Path to a ModelServerConfig text proto (model_config_list).",
    "model_config_file_poll_wait_seconds": "Seconds between polls of --model_config_file; 0 polls once.",
    "file_system_poll_wait_seconds": "Seconds between polls of the base paths for new versions; 0 polls once, "
    "negative never.",
    "monitoring_config_file": "Path to a MonitoringConfig text proto (Prometheus endpoint on the REST port).",
    "grpc_max_threads": "Max grpc server threads to handle grpc messages.",
    "enable_batching": "Enable batching: concurrent predict calls on one signature run as one batch.",
    "batching_parameters_file": "Path to a BatchingParameters text proto.",
    "enable_model_warmup": "Replay assets.extra/tf_serving_warmup_requests when a version loads.",
    "num_request_iterations_for_warmup": "Times each warm-up request is replayed (0 or 1: once).",
    "max_num_load_retries": "Maximum number of times a failed version load is retried.",
    "load_retry_interval_micros": "Microseconds between retries of a failed version load.",
    "saved_model_tags": "Comma-separated set of tags of the meta graph def to load from SavedModel.",
    "tensorflow_intra_op_parallelism": "Threads TensorFlow uses within one op; 0 lets TensorFlow choose.",
    "tensorflow_inter_op_parallelism": "Threads TensorFlow runs independent ops on; 0 lets TensorFlow choose.",
    "version": "Display version and exit.",
    "allow_version_labels_for_unavailable_models": "If true, allows assigning unused version labels to models "
    "that are not available yet.",
    "enable_signature_method_name_check": "Enable method_name check for SignatureDef. Disable this if serving "
    "native TF2 regression/classification models.",
    "ssl_config_file": "If non-empty, read an ascii SSLConfig protobuf from the supplied file name and set up a "
    "secure gRPC channel.",
    "enable_grpc_healthcheck_service": "Enable the standard gRPC health checking service (grpc.health.v1).",
    "grpc_channel_arguments": "A comma separated list of arguments to be passed to the grpc server. "
    "(e.g. grpc.max_connection_age_ms=2000)",
    "request_memory_budget_bytes": "(ours; not a tensorflow_model_server flag) Bytes that the decoded data of "
    "all requests in flight may take together; a request beyond it is RESOURCE_EXHAUSTED (HTTP 429). "
    "0: 10% of the container's memory limit (cgroup memory.max), else of the machine's memory.",
    "drain_timeout_seconds": "(ours; not a tensorflow_model_server flag) On SIGTERM: health NOT_SERVING, new "
    "requests UNAVAILABLE (HTTP 503), in-flight ones get up to this many seconds to finish, then exit 0.",
}

FLAG_NAMES: tuple[str, ...] = tuple(_HELP)

#: Flags of ours: tensorflow_model_server has no such flag (its help says "(ours; ...)" too).
OUR_FLAGS: frozenset[str] = frozenset({"request_memory_budget_bytes", "drain_timeout_seconds"})

#: tensorflow_model_server flags (main.cc, TF Serving 2.21) that this stand-in does not implement.
UNSUPPORTED_UPSTREAM_FLAGS: frozenset[str] = frozenset(
    {
        "enable_per_model_batching_parameters",
        "enable_profiler",
        "enable_serialization_as_tensor_content",
        "flush_filesystem_caches",
        "grpc_socket_path",
        "mixed_precision",
        "num_load_threads",
        "num_tflite_interpreters_per_pool",
        "num_tflite_pools",
        "num_unload_threads",
        "per_process_gpu_memory_fraction",
        "platform_config_file",
        "prefer_tflite_model",
        "remove_unused_fields_from_bundle_metagraph",
        "skip_initialize_tpu",
        "tensorflow_session_config_file",
        "tensorflow_session_parallelism",
        "thread_pool_factory_config_file",
        "use_alts_credentials",
        "xla_cpu_compilation_enabled",
        "xla_gpu_compilation_enabled",
    }
)

_TYPES = {f.name: f.type for f in fields(ServerOptions)}
_NOT_FLAGS = frozenset({"host", "max_request_bytes", "grace_period_seconds", "max_decoded_request_bytes"})
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def usage() -> str:
    """The help text: one line per supported flag with its default."""
    defaults = ServerOptions()
    lines = ["usage: python -m serving.model_server [--flag=value ...]", "", "Flags (tensorflow_model_server's):"]
    for name in FLAG_NAMES:
        lines.append(f"  --{name}={getattr(defaults, name)!s:<12} {_HELP[name]}")
    lines.append("")
    lines.append("Not supported here: " + " ".join(f"--{n}" for n in sorted(UNSUPPORTED_UPSTREAM_FLAGS)))
    return "\n".join(lines)


def _convert(name: str, raw: str) -> int | bool | str:
    kind = _TYPES[name]
    if kind == "bool":
        lowered = raw.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise FlagError(f"Expected true or false for --{name}. Received: --{name}={raw!r}")
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise FlagError(f"Expected an integer for --{name}. Received: --{name}={raw!r}") from None
    return raw


def _reject_unknown(name: str) -> None:
    if name in UNSUPPORTED_UPSTREAM_FLAGS or (name.startswith("no") and name[2:] in UNSUPPORTED_UPSTREAM_FLAGS):
        raise FlagError(
            f"Flag --{name} is a tensorflow_model_server flag that serving.model_server does not support. "
            "Expected one of: " + ", ".join(f"--{n}" for n in FLAG_NAMES)
        )
    raise FlagError(
        f"Unknown flag --{name}. Expected one of tensorflow_model_server's flags: "
        + ", ".join(f"--{n}" for n in FLAG_NAMES)
    )


def parse_flags(argv: Sequence[str], base: ServerOptions | None = None) -> ServerOptions:
    """Parse gflags-style ``argv`` (without the program name) into :class:`ServerOptions`.

    Raises :class:`FlagError` for an unknown or unsupported flag, a missing or bad value, a positional
    argument, or a combination the server cannot start with (no model at all).
    """
    values: dict[str, int | bool | str] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg in {"-", "--"}:
            raise FlagError(f"Expected only --flag=value arguments. Received: {arg!r}")
        body = arg.lstrip("-")
        name, has_value, raw = body.partition("=")
        if name not in _TYPES or name in _NOT_FLAGS:
            if not has_value and name.startswith("no") and _TYPES.get(name[2:]) == "bool":
                values[name[2:]] = False
                continue
            _reject_unknown(name)
        if not has_value:
            if _TYPES[name] == "bool":
                values[name] = True
                continue
            if i >= len(args):
                raise FlagError(f"Expected a value after --{name}. Received: nothing")
            raw = args[i]
            i += 1
        values[name] = _convert(name, raw)
    options = replace(base or ServerOptions(), **values)  # type: ignore[arg-type]
    if options.version:
        return options
    if not options.model_config_file and not options.model_base_path:
        raise FlagError(
            "Expected --model_config_file or --model_base_path (with --model_name). Received: neither"
        )
    if options.rest_api_port and options.rest_api_port == options.port:
        raise FlagError(
            "Expected --rest_api_port different from --port. "
            f"Received: --port={options.port} --rest_api_port={options.rest_api_port}"
        )
    for name in ("port", "rest_api_port"):
        if not 0 <= getattr(options, name) <= 65535:
            raise FlagError(f"Expected --{name} in 0..65535. Received: --{name}={getattr(options, name)}")
    if options.batching_parameters_file and not options.enable_batching:
        raise FlagError(  # upstream: Server::BuildAndStart fails with this InvalidArgument
            "server_options.batching_parameters_file is set without setting server_options.enable_batching to true."
        )
    for name in ("request_memory_budget_bytes", "drain_timeout_seconds"):
        if getattr(options, name) < 0:
            raise FlagError(f"Expected --{name} >= 0. Received: --{name}={getattr(options, name)}")
    if options.grpc_max_threads < 1:
        raise FlagError(f"Expected --grpc_max_threads >= 1. Received: --grpc_max_threads={options.grpc_max_threads}")
    grpc_channel_arguments(options.grpc_channel_arguments)  # a malformed list is a usage error, not a crash
    return options


def grpc_channel_arguments(value: str) -> list[tuple[str, int | str]]:
    """``--grpc_channel_arguments`` as ``tensorflow_model_server`` passes it to gRPC (``model_servers/server.cc``
    at tensorflow/serving@9d981c5c, ``parseGrpcChannelArgs``): split on ",", each on "=" into key and value;
    a value that ``absl::SimpleAtoi`` reads as an int32 goes in as an integer, anything else as a string.
    Upstream indexes past the end on an entry without "=": here that is a :class:`FlagError`."""
    arguments: list[tuple[str, int | str]] = []
    for entry in value.split(",") if value else []:
        key, sep, raw = entry.partition("=")
        if not key or not sep:
            raise FlagError(f"Expected --grpc_channel_arguments as key=value[,key=value...]. Received: {value!r}")
        number = int(raw) if re.fullmatch(r"\s*[+-]?\d+\s*", raw) else None
        arguments.append((key, number) if number is not None and -(2**31) <= number < 2**31 else (key, raw))
    return arguments
