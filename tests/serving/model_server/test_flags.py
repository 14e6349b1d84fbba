"""Flags: tensorflow_model_server's names and gflags syntax; unsupported and unknown flags rejected."""

from __future__ import annotations

import subprocess
import sys

import pytest

from serving.model_server.errors import FlagError
from serving.model_server.flags import FLAG_NAMES, UNSUPPORTED_UPSTREAM_FLAGS, ServerOptions, parse_flags

from .conftest import REPO


def test_both_gflags_value_syntaxes_parse_to_the_same_options() -> None:
    equals = parse_flags(["--port=8600", "--rest_api_port=8601", "--model_name=digits", "--model_base_path=/m/d"])
    spaced = parse_flags(["--port", "8600", "-rest_api_port", "8601", "--model_name", "digits",
                          "--model_base_path", "/m/d"])
    assert equals == spaced
    assert (equals.port, equals.rest_api_port, equals.model_name, equals.model_base_path) == (8600, 8601, "digits",
                                                                                              "/m/d")


def test_defaults_are_tensorflow_model_servers() -> None:
    options = parse_flags(["--model_base_path=/m"])
    assert options.port == 8500
    assert options.rest_api_port == 0  # REST off unless asked for, as upstream
    assert options.rest_api_timeout_in_ms == 30000
    assert options.file_system_poll_wait_seconds == 1
    assert options.model_config_file_poll_wait_seconds == 0
    assert options.model_name == "default"
    assert options.enable_model_warmup is True


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--enable_model_warmup"], True),
        (["--enable_model_warmup=false"], False),
        (["--noenable_model_warmup"], False),
        (["--enable_model_warmup=true"], True),
    ],
    ids=["bare", "equals-false", "no-prefix", "equals-true"],
)
def test_boolean_flags_take_gflags_forms(argv: list[str], expected: bool) -> None:
    assert parse_flags(["--model_base_path=/m", *argv]).enable_model_warmup is expected


def test_the_flags_of_the_brief_are_supported() -> None:
    options = parse_flags([
        "--port=1", "--rest_api_port=2", "--model_config_file=/c", "--file_system_poll_wait_seconds=5",
        "--monitoring_config_file=/mon", "--rest_api_timeout_in_ms=100", "--grpc_max_threads=3",
        "--model_config_file_poll_wait_seconds=7",
    ])
    assert (options.rest_api_timeout_in_ms, options.grpc_max_threads, options.model_config_file_poll_wait_seconds,
            options.file_system_poll_wait_seconds) == (100, 3, 7, 5)


@pytest.mark.parametrize("flag", [*sorted(UNSUPPORTED_UPSTREAM_FLAGS)[:5], "grpc_socket_path"])
def test_an_unsupported_upstream_flag_is_rejected_saying_so(flag: str) -> None:
    with pytest.raises(FlagError, match=f"--{flag} is a tensorflow_model_server flag that serving.model_server "
                                        "does not support"):
        parse_flags(["--model_base_path=/m", f"--{flag}=1"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model_base_path=/m", "--bogus=1"], "Unknown flag --bogus"),
        (["--model_base_path=/m", "--port=abc"], "Expected an integer for --port"),
        (["--model_base_path=/m", "--port"], "Expected a value after --port"),
        (["--model_base_path=/m", "stray"], "Expected only --flag=value arguments"),
        (["--port=1"], "Expected --model_config_file or --model_base_path"),
        (["--model_base_path=/m", "--port=9", "--rest_api_port=9"], "different from --port"),
        (["--model_base_path=/m", "--enable_model_warmup=maybe"], "Expected true or false"),
        (["--model_base_path=/m", "--host=0.0.0.0"], "Unknown flag --host"),
    ],
    ids=["unknown", "bad-int", "missing-value", "positional", "no-model", "same-ports", "bad-bool", "not-a-flag"],
)
def test_bad_command_lines_raise_flag_error(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError, match=message):
        parse_flags(argv)


def test_every_flag_name_is_an_options_field_and_no_flag_is_both_supported_and_unsupported() -> None:
    fields = set(ServerOptions.__dataclass_fields__)
    assert set(FLAG_NAMES) <= fields
    assert not set(FLAG_NAMES) & UNSUPPORTED_UPSTREAM_FLAGS


def test_cli_rejects_an_unsupported_flag_with_exit_status_2_and_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serving.model_server", "--model_base_path=/m", "--use_alts_credentials=true"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--use_alts_credentials is a tensorflow_model_server flag that serving.model_server does not support" in (
        lines[0])


def test_cli_version_and_help_exit_0() -> None:
    version = subprocess.run([sys.executable, "-m", "serving.model_server", "--version"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0
    assert "TensorFlow ModelServer" in version.stdout
    help_ = subprocess.run([sys.executable, "-m", "serving.model_server", "--help"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0
    assert "--model_config_file_poll_wait_seconds" in help_.stdout


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("grpc.max_connection_age_ms=20000,grpc.max_connection_age_grace_ms=10000",
         [("grpc.max_connection_age_ms", 20000), ("grpc.max_connection_age_grace_ms", 10000)]),
        ("grpc.primary_user_agent=tfstack", [("grpc.primary_user_agent", "tfstack")]),
        ("grpc.x=2147483648", [("grpc.x", "2147483648")]),  # past int32: SimpleAtoi fails, so a string
        ("grpc.x=1_000", [("grpc.x", "1_000")]),  # SimpleAtoi takes no underscores (Python's int() would)
        ("", []),
    ],
    ids=["ageing", "string", "past-int32", "underscore", "empty"],
)
def test_grpc_channel_arguments_parse_as_tensorflow_model_server_passes_them(value: str, expected: list) -> None:
    """model_servers/server.cc (tensorflow/serving@9d981c5c), parseGrpcChannelArgs + absl::SimpleAtoi into int32."""
    from serving.model_server.flags import grpc_channel_arguments

    assert grpc_channel_arguments(value) == expected
    assert parse_flags(["--model_base_path=/m", f"--grpc_channel_arguments={value}"]).grpc_channel_arguments == value


def test_a_grpc_channel_argument_without_a_value_is_a_flag_error() -> None:
    with pytest.raises(FlagError, match="key=value"):
        parse_flags(["--model_base_path=/m", "--grpc_channel_arguments=grpc.max_connection_age_ms"])
