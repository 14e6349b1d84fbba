"""The trainer's exception tree: every error the trainer raises on purpose.

    TrainerError
    ├── ConfigError (ValueError)        a flag, env variable or config file value is wrong
    │   └── ClusterError                TF_CONFIG / Indexed-Job settings are invalid
    ├── DataError (ValueError)          the image folder cannot be used
    ├── SearchError (RuntimeError)      the search cannot go on
    │   └── DivergenceError             workers disagree on a trial's hyperparameters
    └── ExportError (RuntimeError)      a SavedModel could not be written

Each subclass also inherits the natural builtin, so callers can catch either.
Messages read "Expected X. Received: name=value".
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "ConfigError",
    "DataError",
    "DivergenceError",
    "ExportError",
    "SearchError",
    "TrainerError",
]


class TrainerError(Exception):
    """Base class of every error the trainer raises deliberately."""


class ConfigError(TrainerError, ValueError):
    """A configuration value (flag, environment variable, config file) is invalid."""


class ClusterError(ConfigError):
    """The cluster settings (TF_CONFIG or the Indexed-Job variables) are invalid."""


class DataError(TrainerError, ValueError):
    """The image folder is missing, empty, or unusable."""


class SearchError(TrainerError, RuntimeError):
    """The hyperparameter search cannot continue."""


class DivergenceError(SearchError):
    """Workers disagree on the hyperparameters of a trial; the job would train garbage."""


class ExportError(TrainerError, RuntimeError):
    """The model could not be exported."""
