"""A local stand-in for ``tensorflow_model_server``: same flags, config files, gRPC services and REST API.

Run it with ``python -m serving.model_server --port=8500 --rest_api_port=8501 --model_name=digits
--model_base_path=$PWD/models/digits`` (or ``--model_config_file=serving/config/models.config``), or embed
it::

    from serving.model_server import ModelServer, parse_flags
    with ModelServer(parse_flags(["--port=0", "--model_base_path=/models/digits"])) as server:
        ...

Importing the package is cheap; ``ModelServer`` (and TensorFlow with it) is imported on first use, so the
CLI rejects bad flags in a fraction of a second. The server loads SavedModels with ``tf.saved_model.load``
(a TF1 export it refuses runs in a ``tf.compat.v1`` session, as TF Serving runs every model) and speaks
through the official ``tensorflow_serving.apis`` messages and servicers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.model_server.errors import ConfigError, FlagError, ModelServerError
from serving.model_server.flags import ServerOptions, parse_flags

if TYPE_CHECKING:
    from serving.model_server.server import READY_MESSAGE, ModelServer

__all__ = [
    "READY_MESSAGE",
    "ConfigError",
    "FlagError",
    "ModelServer",
    "ModelServerError",
    "ServerOptions",
    "parse_flags",
]


def __getattr__(name: str) -> Any:
    if name in ("ModelServer", "READY_MESSAGE"):
        from serving.model_server import server

        return getattr(server, name)
    raise AttributeError(f"module 'serving.model_server' has no attribute {name!r}")
