"""The trainer's exception tree: every error the trainer raises on purpose, and its exit code.

    TrainerError                               exit 1 unless a subclass says otherwise
    ├── ConfigError (ValueError)               exit 2: a flag, env variable or config file value is wrong
    │   └── ClusterError                       exit 2: TF_CONFIG / Indexed-Job settings are invalid
    ├── DataError (ValueError)                 exit 2: the image folder cannot be used
    ├── SearchError (RuntimeError)             exit 1: the search cannot go on
    │   ├── DivergenceError                    exit 2: workers see different data, steps or hyperparameters
    │   └── PeerLostError                      exit 4: a peer was lost or stuck: restart the whole group
    │       └── ClusterFormationError          exit 4: the group did not form in time (names the missing peers)
    ├── ExportError (RuntimeError)             exit 1: a SavedModel could not be written
    └── NotPublishedError (RuntimeError)       exit 3: the search finished but the model was not published
                                               (the publish gate, trainer.publish, returns a refusing
                                               Decision and the CLI exits 3; code that must stop raises this)

Each subclass also inherits the natural builtin, so callers can catch either. Messages read
"Expected X. Received: name=value". `exit_code` maps an exception to the trainer's exit-code
contract (docs/distributed.md), which the Helm chart and the local launcher act on:

    0  EXIT_OK            done
    1  EXIT_CRASH         anything unexpected: retry
    2  EXIT_BAD_INPUT     bad input or configuration (usage, ConfigError, DataError, ClusterError,
                          DivergenceError): do not retry
    3  EXIT_NOT_PUBLISHED finished, but the model was not published
    4  EXIT_PEER_LOST     a peer was lost or the group could not form: restart the whole group
"""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CRASH",
    "EXIT_NOT_PUBLISHED",
    "EXIT_OK",
    "EXIT_PEER_LOST",
    "ClusterError",
    "ClusterFormationError",
    "ConfigError",
    "DataError",
    "DivergenceError",
    "ExportError",
    "NotPublishedError",
    "PeerLostError",
    "SearchError",
    "TrainerError",
    "exit_code",
    "is_peer_error",
]

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_PUBLISHED = 3
EXIT_PEER_LOST = 4

# TensorFlow errors a collective raises when a peer died, restarted, or did not answer in time
# (tensorflow/python/framework/errors_impl.py class names; matched by name so this module needs no TF).
_PEER_ERROR_NAMES = frozenset({"UnavailableError", "AbortedError", "CancelledError", "DeadlineExceededError"})


class TrainerError(Exception):
    """Base class of every error the trainer raises deliberately."""

    exit_code = EXIT_CRASH


class ConfigError(TrainerError, ValueError):
    """A configuration value (flag, environment variable, config file) is invalid."""

    exit_code = EXIT_BAD_INPUT


class ClusterError(ConfigError):
    """The cluster settings (TF_CONFIG or the Indexed-Job variables) are invalid."""


class DataError(TrainerError, ValueError):
    """The image folder is missing, empty, or unusable."""

    exit_code = EXIT_BAD_INPUT


class SearchError(TrainerError, RuntimeError):
    """The hyperparameter search cannot continue."""


class DivergenceError(SearchError):
    """Workers disagree on what they train (data, steps per epoch, restored epoch, hyperparameters).

    A restart would meet the same difference (e.g. a file unreadable on one node): do not retry.
    """

    exit_code = EXIT_BAD_INPUT


class PeerLostError(SearchError):
    """A peer died, restarted or got stuck: MultiWorkerMirroredStrategy needs the whole group restarted."""

    exit_code = EXIT_PEER_LOST


class ClusterFormationError(PeerLostError):
    """Not every peer connected within the cluster-formation timeout."""

    def __init__(self, message: str, *, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing


class ExportError(TrainerError, RuntimeError):
    """The model could not be exported."""


class NotPublishedError(TrainerError, RuntimeError):
    """The search finished, but its model was not published (e.g. it failed a quality gate)."""

    exit_code = EXIT_NOT_PUBLISHED


def is_peer_error(exc: BaseException) -> bool:
    """A TensorFlow error that means a peer was lost, restarted or did not answer in time."""
    return any(cls.__name__ in _PEER_ERROR_NAMES and cls.__module__.startswith("tensorflow")
               for cls in type(exc).__mro__)


def exit_code(exc: BaseException) -> int:
    """The exit code of ``python -m trainer search`` for an exception that ended it."""
    if isinstance(exc, TrainerError):
        return exc.exit_code
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else EXIT_CRASH
    if is_peer_error(exc):
        return EXIT_PEER_LOST
    return EXIT_CRASH
