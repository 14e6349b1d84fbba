"""How one trial runs on many workers: accelerator choice, the tf.distribute strategy, and worker agreement.

Every trial of the search is one synchronous data-parallel job over all workers with
``tf.distribute.MultiWorkerMirroredStrategy`` (MWMS). All workers run the same tuner code with the
same seed, so they propose the same trials; `assert_workers_agree` proves it before each trial.

Pieces, in the order the search uses them:

- `choose_accelerator` (pure, unit-testable) and `apply`: memory growth, dtype policy, XLA.
  Under a mixed policy the model's *last* layer must stay float32 (the hypermodel builds its
  output ``Dense`` with ``dtype="float32"``) so that the softmax and the loss are computed in
  float32.
- `make_strategy`: MWMS for more than one worker (NCCL on GPUs, ring on CPUs), built from the
  `Cluster` object through a ``SimpleClusterResolver``, so TensorFlow needs no TF_CONFIG in the
  environment; otherwise a mirrored, one-device or the default strategy.
- `install_keras_mwms_shim`: the one version-guarded fix that lets Keras 3 ``model.fit`` run under
  MWMS (https://github.com/keras-team/keras/issues/20585). Remove it when upstream is fixed.
- `assert_workers_agree`: all-gathers a 63-bit hash of a payload and raises `DivergenceError`.
- `backup_and_restore`: Keras 3 ``BackupAndRestore`` that every worker restores from and only the
  chief writes.
- `worker_dirs`: the chief writes shared paths; other workers write to a private scratch dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

from trainer.errors import ConfigError, DivergenceError
from trainer.rendezvous import form_group

if TYPE_CHECKING:
    from trainer.cluster import Cluster

__all__ = [
    "MIXED_PRECISION_CHOICES",
    "Accelerator",
    "TrialBackup",
    "WorkerDirs",
    "apply",
    "assert_workers_agree",
    "backup_and_restore",
    "choose_accelerator",
    "install_keras_mwms_shim",
    "make_strategy",
    "payload_hash",
    "worker_dirs",
]

log = logging.getLogger(__name__)

MIXED_PRECISION_CHOICES = ("auto", "off", "mixed_float16", "mixed_bfloat16")


# --------------------------------------------------------------------------------------------- accelerator


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """What this process trains on and how: the result of `choose_accelerator`."""

    kind: str
    """``"gpu"`` or ``"cpu"``."""
    devices: int
    """Number of local GPUs (0 on CPU)."""
    policy: str
    """Keras dtype policy: ``float32``, ``mixed_float16`` or ``mixed_bfloat16``."""
    communication: str
    """Collective implementation for MWMS: ``NCCL`` (GPUs) or ``RING`` (CPUs)."""
    memory_growth: bool
    """Allocate GPU memory on demand instead of all of it up front."""
    jit_compile: bool
    """Compile train steps with XLA (pass to ``model.compile(jit_compile=...)``)."""

    def describe(self) -> str:
        """One log line."""
        where = f"{self.devices} GPU(s)" if self.kind == "gpu" else "CPU"
        growth = ", memory growth" if self.memory_growth else ""
        xla = "on" if self.jit_compile else "off"
        return f"{where}: policy {self.policy}, {self.communication} all-reduce, XLA {xla}{growth}"


def _device_type(device: Any) -> str:
    kind = getattr(device, "device_type", device)
    return str(kind).upper()


def choose_accelerator(
    devices: Sequence[Any], *, mixed_precision: str | None = "auto", xla: bool = False
) -> Accelerator:
    """Pick dtype policy, collectives and memory settings for the visible `devices`.

    Args:
        devices: the visible physical devices (``tf.config.list_physical_devices()``), or anything
            with a ``device_type`` attribute, or plain type strings such as ``"GPU"``.
        mixed_precision: ``"auto"`` (or None): ``mixed_float16`` on GPUs, ``float32`` on CPUs;
            ``"off"``: always float32; ``"mixed_float16"`` / ``"mixed_bfloat16"``: that policy.
        xla: compile train steps with XLA.

    Raises:
        ConfigError: `mixed_precision` is not one of `MIXED_PRECISION_CHOICES`.
    """
    choice = "auto" if mixed_precision is None else mixed_precision
    if choice not in MIXED_PRECISION_CHOICES:
        raise ConfigError(
            f"Expected mixed_precision in {list(MIXED_PRECISION_CHOICES)}. Received: mixed_precision={choice!r}"
        )
    gpus = sum(1 for device in devices if _device_type(device) == "GPU")
    if gpus:
        policy = "mixed_float16" if choice == "auto" else choice
        return Accelerator("gpu", gpus, "float32" if policy == "off" else policy, "NCCL", True, bool(xla))
    policy = "float32" if choice in ("auto", "off") else choice
    return Accelerator("cpu", 0, policy, "RING", False, bool(xla))


def apply(accelerator: Accelerator, devices: Sequence[Any] | None = None) -> None:
    """Set GPU memory growth and XLA auto-clustering.

    The dtype policy is not set globally here: ``keras.backend.clear_session()`` would reset it.
    It travels in ``ModelSpec.dtype_policy`` and is applied where each model is built
    (`trainer.hypermodel.build_model`). Call it before the strategy is created and before any tensor
    is made: TensorFlow refuses to change memory growth once the GPUs are initialized (logged, not
    raised).
    """
    if accelerator.memory_growth:
        gpus = [d for d in (devices if devices is not None else tf.config.list_physical_devices("GPU"))
                if _device_type(d) == "GPU"]
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not turn on memory growth for %s: %s", getattr(gpu, "name", gpu), exc)
    if accelerator.jit_compile:
        tf.config.optimizer.set_jit(True)
    log.info("accelerator: %s", accelerator.describe())


# --------------------------------------------------------------------------------------------- strategy


def make_strategy(
    cluster: Cluster, *, accelerator: Accelerator, formation_timeout: float = 900.0
) -> tf.distribute.Strategy:
    """The strategy for this process: MWMS over the cluster's workers, else a local one.

    More than one worker: first `trainer.rendezvous.form_group` waits up to `formation_timeout`
    seconds for every worker to connect (TensorFlow alone would wait forever) and raises
    `ClusterFormationError` naming the missing peers; then ``MultiWorkerMirroredStrategy`` with a
    ``SimpleClusterResolver`` built from ``cluster.tf_config()`` (TF_CONFIG in the environment is not
    needed) and NCCL or RING collectives, and `install_keras_mwms_shim` is applied. One worker:
    ``MirroredStrategy`` over several local GPUs, a ``OneDeviceStrategy`` on one GPU, else TensorFlow's
    default strategy.
    """
    if cluster.num_workers > 1:
        tf_config = cluster.tf_config()
        assert tf_config is not None  # more than one worker always has peers
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(tf_config["cluster"]),
            task_type=tf_config["task"]["type"],
            task_id=tf_config["task"]["index"],
            rpc_layer="grpc",
        )
        implementation = (
            tf.distribute.experimental.CommunicationImplementation.NCCL
            if accelerator.communication == "NCCL"
            else tf.distribute.experimental.CommunicationImplementation.RING
        )
        install_keras_mwms_shim()
        form_group(cluster, formation_timeout)
        strategy: tf.distribute.Strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver,
            communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation),
        )
        log.info(
            "strategy: MultiWorkerMirroredStrategy over %d workers (%s), %d replicas in sync",
            cluster.num_workers, accelerator.communication, strategy.num_replicas_in_sync,
        )
        return strategy
    if accelerator.kind == "gpu" and accelerator.devices > 1:
        strategy = tf.distribute.MirroredStrategy()
    elif accelerator.kind == "gpu":
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0")
    else:
        strategy = tf.distribute.get_strategy()
    log.info("strategy: %s, %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


# --------------------------------------------------------------------------------------------- Keras shim

# Keras releases known to break under MWMS (keras-team/keras#20585): [first, end). Widen `end` only
# after the two-process test in tests/trainer/test_distribute.py passes on the new release.
_SHIM_VERSIONS = ((3, 0), (3, 16))
_shim_installed = False


def _shim_applies(version: str) -> bool:
    first, end = _SHIM_VERSIONS
    match = re.match(r"(\d+)\.(\d+)", version)
    return match is not None and first <= (int(match[1]), int(match[2])) < end


def install_keras_mwms_shim(version: str | None = None) -> bool:
    """Make Keras 3 ``model.fit``/``evaluate`` work under multi-worker MWMS (keras-team/keras#20585).

    Upstream breaks in two places once the strategy spans several workers:

    1. ``TensorFlowTrainer._maybe_symbolic_build`` calls ``strategy.reduce("MEAN", batch, axis=None)``
       on the first PerReplica input batch, which MWMS cannot do eagerly (conversion error). The
       build needs only shapes and dtypes, so the shim builds from this worker's local batch.
    2. ``reduce_per_replica`` reduces the step's logs with ``strategy.reduce("MEAN", v, axis=0)``,
       which fails on scalar losses and metrics. The shim reduces with ``axis=None``: the mean
       across replicas, as the single-worker path does, and identical on every worker.

    Both replacements defer to the originals unless the strategy runs collectives across workers.
    Idempotent; patches only Keras versions in ``_SHIM_VERSIONS`` whose patched attributes exist,
    and is a no-op otherwise. Remove it when the issue is fixed.

    Args:
        version: the Keras version to judge (default: the installed ``keras.__version__``).

    Returns:
        True when the shim is (now or already) installed, False when it does not apply.
    """
    global _shim_installed
    version = keras.__version__ if version is None else version
    if not _shim_applies(version):
        log.debug("Keras MWMS shim not needed for keras %s", version)
        return False
    if _shim_installed:
        return True
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError:
        log.warning("Keras MWMS shim not installed: keras %s has no TensorFlow trainer module", version)
        return False
    needed = ("reduce_per_replica", "_collective_all_reduce_multi_worker", "TensorFlowTrainer")
    if not all(hasattr(tf_trainer, name) for name in needed) or not hasattr(
        tf_trainer.TensorFlowTrainer, "_maybe_symbolic_build"
    ):
        log.warning("Keras MWMS shim not installed: keras %s lacks the patched functions", version)
        return False

    multi_worker = tf_trainer._collective_all_reduce_multi_worker
    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    def _maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or not multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            data_batch = tf.nest.map_structure(
                lambda x: strategy.experimental_local_results(x)[0]
                if isinstance(x, tf.distribute.DistributedValues)
                else x,
                next(it),
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and multi_worker(strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    _shim_installed = True
    log.info("installed the Keras %s MWMS shim (https://github.com/keras-team/keras/issues/20585)", version)
    return True


# --------------------------------------------------------------------------------------------- agreement


def payload_hash(payload: bytes | str) -> int:
    """A stable non-negative 63-bit hash of `payload` (the same in every process and run)."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") >> 1


def assert_workers_agree(
    strategy: tf.distribute.Strategy, payload: bytes | str | Mapping[str, Any], what: str
) -> None:
    """Raise `DivergenceError` unless every worker passes the same `payload`.

    A collective: every worker must call it at the same point. `payload` is one value, or named
    values (``{"data_fingerprint": ..., "steps_per_epoch": ..., "restored_epoch": ...}``) compared
    in one all-gather of their 63-bit `payload_hash` es; all workers see the same table and so all
    raise, or none does. The error names the values that differ and this worker's value of each.
    """
    fields = {what: payload} if isinstance(payload, (bytes, str)) else dict(sorted(payload.items()))
    texts = {name: v if isinstance(v, (bytes, str)) else json.dumps(v, sort_keys=True, default=str)
             for name, v in fields.items()}
    local = tf.constant([[payload_hash(t) for t in texts.values()]], dtype=tf.int64)

    def gather() -> tf.Tensor:
        return tf.distribute.get_replica_context().all_gather(local, axis=0)

    table = strategy.experimental_local_results(strategy.run(gather))[0].numpy()  # [replicas, fields]
    differ = [(i, name) for i, name in enumerate(texts) if len({int(h) for h in table[:, i]}) > 1]
    if differ:
        details = "; ".join(
            f"{name}: hashes by replica={[f'{int(h):016x}' for h in table[:, i]]}, this worker's "
            f"{_shorten(texts[name])!s} ({payload_hash(texts[name]):016x})"
            for i, name in differ
        )
        raise DivergenceError(
            f"Expected every worker to agree on {what}. Received differences in "
            f"{', '.join(name for _, name in differ)}: {details}"
        )
    log.debug("%d replicas agree on %s", table.shape[0], what)


def _shorten(text: bytes | str, limit: int = 200) -> str:
    shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return shown if len(shown) <= limit else shown[:limit] + "..."


# --------------------------------------------------------------------------------------------- fault tolerance


class _SharedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras 3 ``BackupAndRestore`` for MWMS: all workers restore from one dir, one writer writes it.

    Keras 3's callback (unlike tf.keras's) knows nothing about workers: it saves an h5 file and a
    JSON epoch record at each epoch end, and deletes the dir at the end of fit. Under MWMS every
    worker holds the same weights after each synchronous step, so the chief's copy serves all, and
    a restarted worker (with a fresh scratch dir) resumes at the chief's epoch. Writes are atomic
    (temp file + rename), so a worker killed mid-save leaves the previous backup intact.
    """

    def __init__(self, backup_dir: str, *, writer: bool, delete_checkpoint: bool = True) -> None:
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=delete_checkpoint)
        self.writer = writer

    def _save_model(self) -> None:
        if not self.writer:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        weights_tmp = os.path.join(self.backup_dir, "incoming.weights.h5")
        self.model.save_weights(filepath=weights_tmp, overwrite=True)
        meta_tmp = f"{self._training_metadata_path}.incoming"
        with open(meta_tmp, "w") as f:
            f.write(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
        os.replace(weights_tmp, self._weights_path)
        os.replace(meta_tmp, self._training_metadata_path)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.writer:
            super().on_train_end(logs)


def backup_and_restore(
    backup_dir: Path | str, *, writer: bool = True, delete_checkpoint: bool = True
) -> keras.callbacks.BackupAndRestore:
    """A ``BackupAndRestore`` callback (epoch backups, deleted when fit ends) safe under MWMS.

    Pass the *shared* backup dir on every worker and ``writer=cluster.is_chief``: every worker
    restores from it at the start of fit, only the writer saves (atomically) and deletes it
    (unless ``delete_checkpoint=False``). The directory must be private to one ``fit`` call (one
    trial and phase).
    """
    return _SharedBackupAndRestore(str(backup_dir), writer=writer, delete_checkpoint=delete_checkpoint)


class _EpochLog(keras.callbacks.Callback):
    """Records each epoch's logs by global epoch index in one JSON file (writer only, atomically)."""

    def __init__(self, path: Path, *, writer: bool) -> None:
        super().__init__()
        self.path = path
        self.writer = writer

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self.writer:
            return
        recorded = _read_json(self.path) or {}
        recorded[str(epoch)] = {k: float(v) for k, v in (logs or {}).items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        incoming = self.path.with_suffix(".incoming")
        incoming.write_text(json.dumps(recorded))
        os.replace(incoming, self.path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class TrialBackup:
    """The epoch backups of one trial under ``root`` (shared: every worker reads, the writer writes).

    One `backup_and_restore` dir per training phase, kept until the trial ends (the search deletes
    ``root`` then), so a restart in phase 2 restores phase 1's final weights, runs no phase-1 epoch,
    and resumes phase 2 at its last completed epoch; plus an epoch log, so that the restarted trial
    still reports (and KerasTuner scores) the epochs trained before the restart.
    """

    root: Path
    writer: bool

    def callbacks(self, phase: str) -> list[keras.callbacks.Callback]:
        """The callbacks one phase's ``fit`` needs: restore/save its backup, log its epochs."""
        # The epoch log first: it is never behind the weights backup (a re-run epoch overwrites its entry).
        return [_EpochLog(self.root / "epochs.json", writer=self.writer),
                backup_and_restore(self.root / phase, writer=self.writer, delete_checkpoint=False)]

    def epoch_logs(self) -> dict[int, dict[str, float]]:
        """Logs of the epochs completed so far, by global epoch index (empty for a fresh trial)."""
        recorded = _read_json(self.root / "epochs.json") or {}
        return {int(epoch): logs for epoch, logs in recorded.items()}

    def restored_epochs(self) -> dict[str, int]:
        """The epoch each phase's backup would resume at (``{"phase2": 5}``); empty for a fresh trial."""
        restored = {}
        for meta in sorted(self.root.glob("*/training_metadata.json")):
            record = _read_json(meta)
            if isinstance(record, dict) and "epoch" in record:
                restored[meta.parent.name] = int(record["epoch"])
        return restored


# --------------------------------------------------------------------------------------------- directories


@dataclasses.dataclass(frozen=True)
class WorkerDirs:
    """Where this process writes. The chief's paths are shared; other workers' are private."""

    tuner_dir: Path
    backup_dir: Path
    """The shared backup root on every worker (read by all, written by the chief; see `backup_and_restore`)."""
    logs_dir: Path
    scratch: Path | None
    """The private temp dir of a non-chief worker (removed on exit), None on the chief."""


@contextlib.contextmanager
def worker_dirs(shared_root: Path, cluster: Cluster) -> Iterator[WorkerDirs]:
    """Yield this process's directories; a non-chief's scratch dir is removed when the block ends."""
    shared_root = Path(shared_root)
    backup_dir = shared_root / "backup"
    if cluster.is_chief:
        dirs = WorkerDirs(shared_root / "tuner", backup_dir, shared_root / "logs", None)
        for path in (dirs.tuner_dir, dirs.logs_dir):
            path.mkdir(parents=True, exist_ok=True)
        yield dirs
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"tfstack-worker{cluster.rank}-"))
    try:
        dirs = WorkerDirs(scratch / "tuner", backup_dir, scratch / "logs", scratch)
        for path in (dirs.tuner_dir, dirs.logs_dir):
            path.mkdir(parents=True, exist_ok=True)
        log.info("worker %d writes to private scratch %s", cluster.rank, scratch)
        yield dirs
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
