"""Model versions: polling base paths, version policies and labels, loading and unloading servables.

Like TF Serving's file-system source and availability-preserving manager:

- every all-digit directory under a model's ``base_path`` is a version (others are ignored);
- the version policy picks the aspired versions: ``latest { num_versions: N }`` (default N=1), ``all``,
  or ``specific { versions: [...] }``;
- aspired versions are loaded (LOADING, then AVAILABLE); only when every aspired version is AVAILABLE are
  the versions no longer aspired unloaded, so a switch never leaves a gap, and a version that fails to load
  (reported in status with its error, retried ``max_num_load_retries`` times) leaves the old one serving;
- requests resolve ``(name, version | label | latest)`` to a :class:`~serving.model_server.servable.Servable`
  under a lock; a request that holds one finishes on it even if it is unloaded meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server.errors import InvalidArgument, NotFound
from serving.model_server.servable import Servable

__all__ = ["ModelManager", "VersionRecord", "aspired_versions", "list_versions"]

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
Loader = Callable[[str, int, Path], Servable]


@dataclass
class VersionRecord:
    """What GetModelStatus reports for one version, and the servable once AVAILABLE."""

    version: int
    path: Path
    state: int = State.START
    error_code: int = error_codes_pb2.OK
    error_message: str = ""
    servable: Servable | None = None
    failures: int = 0
    next_retry: float = 0.0


@dataclass
class _Model:
    config: model_server_config_pb2.ModelConfig
    versions: dict[int, VersionRecord] = field(default_factory=dict)


def list_versions(base_path: str | Path) -> dict[int, Path]:
    """All-digit subdirectories of ``base_path`` by version number (others are ignored, as TF Serving does)."""
    base = Path(base_path)
    found: dict[int, Path] = {}
    try:
        entries = list(base.iterdir())
    except OSError:
        return found
    for entry in entries:
        if entry.name.isdigit() and entry.name.isascii() and entry.is_dir():
            version = int(entry.name)
            if version not in found or entry.name < found[version].name:
                found[version] = entry
    return found


def aspired_versions(config: model_server_config_pb2.ModelConfig, available: Iterable[int]) -> set[int]:
    """The versions the model's policy wants served, out of those on disk."""
    versions = sorted(set(available))
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(versions)
    if choice == "specific":
        return set(versions) & set(policy.specific.versions)
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return set(versions[-count:])


def _error_code(exc: BaseException) -> int:
    if isinstance(exc, FileNotFoundError):
        return error_codes_pb2.NOT_FOUND
    if isinstance(exc, (ValueError, TypeError)):
        return error_codes_pb2.INVALID_ARGUMENT
    return error_codes_pb2.UNKNOWN


class ModelManager:
    """Holds every model's versions; :meth:`poll` brings them in line with the disk and the config."""

    def __init__(
        self,
        loader: Loader,
        *,
        max_num_load_retries: int = 5,
        load_retry_interval_seconds: float = 60.0,
        on_change: Callable[[ModelManager], None] | None = None,
    ) -> None:
        self._loader = loader
        self._max_retries = max_num_load_retries
        self._retry_interval = load_retry_interval_seconds
        self._on_change = on_change
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()  # one poll (load/unload pass) at a time
        self._models: dict[str, _Model] = {}

    # ------------------------------------------------------------------------------------ configuration

    def apply_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Serve exactly the models in ``config``: new ones are added, removed ones unloaded (at next poll)."""
        wanted = {m.name: m for m in config.model_config_list.config}
        with self._lock:
            for name in list(self._models):
                if name not in wanted:
                    log.info("model %s: removed from config, unloading", name)
                    del self._models[name]
            for name, model_config in wanted.items():
                current = self._models.get(name)
                copy = model_server_config_pb2.ModelConfig()
                copy.CopyFrom(model_config)
                if current is None or current.config.base_path != model_config.base_path:
                    self._models[name] = _Model(copy)
                else:
                    current.config = copy
        self._changed()

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    # ------------------------------------------------------------------------------------ polling

    def poll(self) -> None:
        """One pass: load aspired versions, then unload versions no longer aspired once that is safe."""
        with self._poll_lock:
            with self._lock:
                models = dict(self._models)
            for name, model in models.items():
                self._poll_model(name, model)
            self._changed()

    def _poll_model(self, name: str, model: _Model) -> None:
        on_disk = list_versions(model.config.base_path)
        if not on_disk and not Path(model.config.base_path).is_dir():
            log.warning("model %s: base path %s does not exist or is not a directory", name, model.config.base_path)
        aspired = aspired_versions(model.config, on_disk)
        now = time.monotonic()
        for version in sorted(aspired):
            with self._lock:
                record = model.versions.get(version)
                if record is None:
                    record = model.versions[version] = VersionRecord(version, on_disk[version])
                if record.state == State.AVAILABLE:
                    continue
                if record.failures and (record.failures > self._max_retries or now < record.next_retry):
                    continue
                record.state = State.LOADING
            try:
                servable = self._loader(name, version, on_disk[version])
            except Exception as exc:
                with self._lock:
                    record.failures += 1
                    record.next_retry = time.monotonic() + self._retry_interval
                    record.state = State.END
                    record.error_code = _error_code(exc)
                    record.error_message = f"Failed to load version {version} of model {name} from {record.path}: {exc}"
                log.error("%s (attempt %d of %d)", record.error_message, record.failures, self._max_retries + 1)
                continue
            with self._lock:
                if self._models.get(name) is not model:
                    return  # the model was removed or re-pointed while loading
                record.servable = servable
                record.state = State.AVAILABLE
                record.error_code = error_codes_pb2.OK
                record.error_message = ""
                record.failures = 0
            log.info("model %s: version %d is AVAILABLE (%s)", name, version, record.path)
            self._changed()
        with self._lock:
            if not aspired:
                return  # nothing on disk (yet, or any more): keep serving what is loaded
            all_available = all(
                version in model.versions and model.versions[version].state == State.AVAILABLE for version in aspired
            )
            for version, record in list(model.versions.items()):
                if version in aspired:
                    continue
                if record.state == State.AVAILABLE and all_available:
                    record.state = State.END
                    record.servable = None
                    log.info("model %s: version %d unloaded", name, version)
                elif record.state != State.AVAILABLE and version not in on_disk:
                    del model.versions[version]  # a failed version whose directory is gone

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)

    # ------------------------------------------------------------------------------------ requests

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request names: a version, a label, or the latest AVAILABLE version."""
        if version is not None and label:
            raise InvalidArgument(
                f"Both model version ({version}) and model version label ({label}) cannot be supplied."
            )
        with self._lock:
            model = self._models.get(name)
            if model is None:
                raise NotFound(f"Servable not found for request: Latest({name}). Expected one of: "
                               f"{', '.join(sorted(self._models)) or '<no models>'}")
            if label:
                labels = model.config.version_labels
                if label not in labels:
                    raise InvalidArgument(f"Unrecognized servable version label: {label}")
                version = int(labels[label])
            if version is not None:
                record = model.versions.get(version)
                if record is None or record.servable is None:
                    raise NotFound(f"Servable not found for request: Specific({name}, {version})")
                return record.servable
            available = [r for r in model.versions.values() if r.servable is not None]
            if not available:
                raise NotFound(f"Servable not found for request: Latest({name})")
            return max(available, key=lambda r: r.version).servable  # type: ignore[return-value]

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionRecord]:
        """Version records for GetModelStatus (a copy), newest first; NotFound like TF Serving."""
        with self._lock:
            model = self._models.get(name)
            if model is None or not model.versions:
                raise NotFound(f"Could not find any versions of model {name}")
            if label:
                if label not in model.config.version_labels:
                    raise InvalidArgument(f"Unrecognized servable version label: {label}")
                version = int(model.config.version_labels[label])
            records = sorted(model.versions.values(), key=lambda r: -r.version)
            if version is not None:
                records = [r for r in records if r.version == version]
                if not records:
                    raise NotFound(f"Could not find version {version} of model {name}")
            return [VersionRecord(**{k: getattr(r, k) for k in VersionRecord.__dataclass_fields__}) for r in records]

    def version_counts(self) -> dict[str, dict[int, int]]:
        """``{model: {state: count}}`` for the metrics gauge."""
        with self._lock:
            counts: dict[str, dict[int, int]] = {}
            for name, model in self._models.items():
                per_state = counts.setdefault(name, {})
                for record in model.versions.values():
                    per_state[record.state] = per_state.get(record.state, 0) + 1
            return counts

    def unload_all(self) -> None:
        with self._lock:
            for model in self._models.values():
                for record in model.versions.values():
                    if record.servable is not None:
                        record.servable = None
                        record.state = State.END
