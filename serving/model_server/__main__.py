"""``python -m serving.model_server``: the command line of the local TF Serving stand-in.

Flags are ``tensorflow_model_server``'s (see :mod:`serving.model_server.flags`). Exit status: 0 after a
clean shutdown (SIGTERM or SIGINT: gRPC health turns NOT_SERVING, new requests are refused with UNAVAILABLE
/ HTTP 503, requests in flight get up to ``--drain_timeout_seconds`` to finish), 1 when the server cannot start
(unreadable config, port in use), 2 for bad flags. Errors are one line on stderr; ``--verbose`` (ours,
not TF Serving's) adds tracebacks and debug logs.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

__all__ = ["main"]

_VERSION = "TensorFlow ModelServer: tfstack serving.model_server (local stand-in for tensorflow_model_server 2.21)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args
    args = [a for a in args if a != "--verbose"]
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in args):
        from serving.model_server.flags import usage

        print(usage())
        return 0
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from serving.model_server.errors import ConfigError, FlagError, StartupError
    from serving.model_server.flags import parse_flags

    try:
        options = parse_flags(args)
    except FlagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if options.version:
        print(_VERSION)
        return 0

    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines drown the server's
    from serving.model_server.server import ModelServer  # imports TensorFlow: after the cheap checks

    server = None
    requested = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("received %s; shutting down gracefully", signal.Signals(signum).name)
        requested.set()
        if server is not None:
            server._stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = ModelServer(options)
        if requested.is_set():
            server._stop.set()
        server.start()  # waits, like tensorflow_model_server, until every model has an AVAILABLE version
    except (ConfigError, StartupError, OSError) as exc:
        if verbose:
            logging.exception("start-up failed")
        print(f"error: {exc}", file=sys.stderr)
        if server is not None and server._stop.is_set():
            server.stop()
            return 0  # stopped by a signal while waiting for the models
        return 1

    server.wait()
    server.drain()  # health NOT_SERVING, new requests UNAVAILABLE, in-flight ones finish (--drain_timeout_seconds)
    server.stop(grace=1.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
