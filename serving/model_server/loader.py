"""Model versions: polling base paths, version policies and labels, loading and unloading servables.

Like TF Serving's file-system source and availability-preserving manager:

- every all-digit directory under a model's ``base_path`` is a version (others are ignored);
- the version policy picks the aspired versions: ``latest { num_versions: N }`` (default N=1), ``all``,
  or ``specific { versions: [...] }``;
- aspired versions are loaded (LOADING, then AVAILABLE); versions no longer aspired are unloaded once an
  aspired version is AVAILABLE (or when none is aspired any more: an emptied base path unloads), so a
  switch never leaves a gap; a version that fails to load stays LOADING through its retries, then shows
  END with its error, and the old version keeps serving;
- version labels may name AVAILABLE versions only (FAILED_PRECONDITION otherwise), unless
  ``--allow_version_labels_for_unavailable_models`` (then only a label that is new or keeps its version);
- requests resolve ``(name, version | label | latest)`` to a :class:`~serving.model_server.servable.Servable`
  under a lock; a request that holds one finishes on it even if it is unloaded meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server.errors import FailedPrecondition, InvalidArgument, ModelServerError, NotFound
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
    """The canonical code TF Serving reports for a failed load (TensorFlow's own, where it has one)."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    if isinstance(exc, tf.errors.OpError):
        return int(exc.error_code)
    if isinstance(exc, ModelServerError):
        return int(exc.code.value[0])
    if isinstance(exc, FileNotFoundError):
        return error_codes_pb2.NOT_FOUND
    if isinstance(exc, DecodeError):  # TensorFlow: "Can't parse saved_model.pb as binary proto" (DATA_LOSS)
        return error_codes_pb2.DATA_LOSS
    if isinstance(exc, (ValueError, TypeError)):
        return error_codes_pb2.INVALID_ARGUMENT
    return error_codes_pb2.UNKNOWN


class ModelManager:
    """Holds every model's versions; :meth:`poll` brings them in line with the disk and the config.

    A version load is tried once and retried up to ``max_num_load_retries`` times,
    ``load_retry_interval_seconds`` apart, within the same load (as TF Serving's ``LoaderHarness`` does,
    whether or not the file system is polled): the version stays LOADING through its retries and ends
    in END with the last error. A version that ended in error is not tried again while it stays on disk.
    """

    def __init__(
        self,
        loader: Loader,
        *,
        max_num_load_retries: int = 5,
        load_retry_interval_seconds: float = 60.0,
        on_change: Callable[[ModelManager], None] | None = None,
        allow_version_labels_for_unavailable_models: bool = False,
        stop: threading.Event | None = None,
    ) -> None:
        self._loader = loader
        self._max_retries = max(max_num_load_retries, 0)
        self._retry_interval = load_retry_interval_seconds
        self._on_change = on_change
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._stop = stop or threading.Event()
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()  # one poll (load/unload pass) at a time
        self._models: dict[str, _Model] = {}
        self._labels: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------------------------ configuration

    def _check_labels(self, config: model_server_config_pb2.ModelServerConfig) -> dict[str, dict[str, int]]:
        """ServerCore::UpdateModelVersionLabelMap: labels may name AVAILABLE versions only, unless allowed."""
        labels: dict[str, dict[str, int]] = {}
        for model_config in config.model_config_list.config:
            model = self._models.get(model_config.name)
            for label, version in model_config.version_labels.items():
                allowed = False
                if self._allow_unavailable_labels:
                    existing = self._labels.get(model_config.name, {}).get(label)
                    allowed = existing is None or existing == version
                record = model.versions.get(version) if model is not None else None
                if not allowed and (record is None or record.state != State.AVAILABLE):
                    raise FailedPrecondition(
                        f"Request to assign label to version {version} of model {model_config.name}, which is not "
                        "currently available for inference"
                    )
                labels.setdefault(model_config.name, {})[label] = version
        return labels

    def apply_config(self, config: model_server_config_pb2.ModelServerConfig) -> set[str]:
        """Serve exactly the models in ``config``; returns the names of models that are new.

        Labels are checked first (FailedPrecondition, nothing changes). Removed models are dropped; a
        model whose ``base_path`` changed keeps its loaded versions until the new path's versions are
        AVAILABLE (the next :meth:`poll` loads them and unloads the old ones).
        """
        wanted = {m.name: m for m in config.model_config_list.config}
        with self._lock:
            labels = self._check_labels(config)
            new = set(wanted) - set(self._models)
            for name in list(self._models):
                if name not in wanted:
                    log.info("model %s: removed from config, unloading", name)
                    del self._models[name]
            for name, model_config in wanted.items():
                copy = model_server_config_pb2.ModelConfig()
                copy.CopyFrom(model_config)
                current = self._models.get(name)
                if current is None:
                    self._models[name] = _Model(copy)
                else:
                    current.config = copy
            self._labels = labels
        self._changed()
        return new

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
                if self._stop.is_set():
                    return
                self._poll_model(name, model)
            self._changed()

    def _load(self, name: str, model: _Model, record: VersionRecord) -> None:
        """Load one version with its retries; the record stays LOADING until it is AVAILABLE or END."""
        attempts = self._max_retries + 1
        for attempt in range(1, attempts + 1):
            with self._lock:
                if self._models.get(name) is not model:
                    return  # removed from the config meanwhile
            try:
                servable = self._loader(name, record.version, record.path)
            except Exception as exc:
                code = _error_code(exc)
                message = f"Failed to load version {record.version} of model {name} from {record.path}: {exc}"
                log.error("%s (attempt %d of %d)", message, attempt, attempts)
                with self._lock:
                    record.failures = attempt
                if attempt < attempts and not self._stop.wait(self._retry_interval):
                    continue
                with self._lock:
                    record.state = State.END
                    record.error_code = code
                    record.error_message = message
                self._changed()
                return
            with self._lock:
                if self._models.get(name) is not model:
                    return
                record.servable = servable
                record.state = State.AVAILABLE
                record.error_code = error_codes_pb2.OK
                record.error_message = ""
            log.info("model %s: version %d is AVAILABLE (%s)", name, record.version, record.path)
            self._changed()
            return

    def _poll_model(self, name: str, model: _Model) -> None:
        if not Path(model.config.base_path).is_dir():
            # FileSystemStoragePathSource: a missing (or transiently unavailable) base path is an error, and no
            # aspired-versions update is emitted, so what is loaded keeps serving.
            log.error("Could not find base path %s for servable %s", model.config.base_path, name)
            return
        on_disk = list_versions(model.config.base_path)
        if not on_disk:
            log.warning("model %s: no versions found under base path %s", name, model.config.base_path)
        aspired = aspired_versions(model.config, on_disk)
        for version in sorted(aspired, reverse=True):  # newest first, as TF Serving's source emits them
            with self._lock:
                record = model.versions.get(version)
                if record is None or (record.state == State.END and record.servable is None
                                      and record.error_code == error_codes_pb2.OK):
                    record = model.versions[version] = VersionRecord(version, on_disk[version])
                if record.state != State.START:
                    continue  # AVAILABLE, or failed for good (END with its error)
                record.state = State.LOADING
            self._changed()
            self._load(name, model, record)
            if self._stop.is_set():
                return
        with self._lock:
            # AvailabilityPreservingPolicy: unload what is no longer aspired once an aspired version serves,
            # or when nothing is aspired any more (servable_versions_always_present is false: an emptied base
            # path unloads its versions).
            serving = any(model.versions[v].state == State.AVAILABLE for v in aspired if v in model.versions)
            for version, record in list(model.versions.items()):
                if version in aspired:
                    continue
                if record.state == State.AVAILABLE and (serving or not aspired):
                    record.state = State.END
                    record.servable = None
                    log.info("model %s: version %d unloaded", name, version)
                elif record.state != State.AVAILABLE and record.error_code != error_codes_pb2.OK \
                        and version not in on_disk:
                    del model.versions[version]  # a failed version whose directory is gone

    def unavailable(self, names: Iterable[str]) -> tuple[list[str], list[str]]:
        """For WaitUntilModelsAvailable: (models still waiting, failure descriptions of models that ended).

        A model is done when a version is AVAILABLE, or when versions were tried and every one of them
        ended in error; a model with no version on disk yet keeps waiting (TF Serving waits forever).
        """
        waiting, failed = [], []
        with self._lock:
            for name in names:
                model = self._models.get(name)
                if model is None:
                    continue
                records = list(model.versions.values())
                if any(r.state == State.AVAILABLE for r in records):
                    continue
                errors = [r for r in records if r.state == State.END and r.error_code != error_codes_pb2.OK]
                if records and len(errors) == len(records):
                    latest = max(errors, key=lambda r: r.version)
                    code = error_codes_pb2.Code.Name(latest.error_code)
                    failed.append(f"{{name: {name} version: {latest.version}}} due to error: {code}: "
                                  f"{latest.error_message}")
                else:
                    waiting.append(name)
        return waiting, failed

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)

    # ------------------------------------------------------------------------------------ requests

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request names: a version, a label, or the latest AVAILABLE version."""
        if not name:  # ServerCore::ServableRequestFromModelSpec (model_servers/server_core.cc)
            raise InvalidArgument("ModelSpec has no name specified.")
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
                labels = self._labels.get(name, {})
                if label not in labels:
                    raise InvalidArgument(f"Unrecognized servable version label: {label}")
                version = labels[label]
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
                labels = self._labels.get(name, {})
                if label not in labels:
                    raise InvalidArgument(f"Unrecognized servable version label: {label}")
                version = labels[label]
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
