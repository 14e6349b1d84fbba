"""Epoch backups that survive a lost worker: shared by all workers, written by the chief, per trial phase."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from trainer import preemption
from trainer.atomic import write_atomic

__all__ = ["TrialBackup", "backup_and_restore"]

log = logging.getLogger(__name__)


class _SharedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras 3 ``BackupAndRestore`` for MWMS: all workers restore from one dir, one writer writes it.

    Keras 3's callback (unlike tf.keras's) knows nothing about workers: it saves an h5 file and a
    JSON epoch record at each epoch end, and deletes the dir at the end of fit. Under MWMS every
    worker holds the same weights after each synchronous step, so the chief's copy serves all, and
    a restarted worker (with a fresh scratch dir) resumes at the chief's epoch. Writes are atomic
    (temp file + rename), so a worker killed mid-save leaves the previous backup intact.
    """

    def __init__(self, backup_dir: str, *, writer: bool, delete_checkpoint: bool = True, multi_worker: bool = False,
                 steps_per_epoch: int | None = None) -> None:
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=delete_checkpoint)
        self.writer = writer
        self.multi_worker = multi_worker
        self.steps_per_epoch = steps_per_epoch
        self._epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, steps of it done before a SIGTERM save)
        self._cut = False

    # --- SIGTERM: save at the step every worker agreed on, resume there (trainer.preemption) -------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)  # restores the weights and the epoch to resume at
        record = _read_json(Path(self._training_metadata_path))
        done = int(record.get("batch", 0)) if isinstance(record, dict) else 0
        self._resume = (int(record["epoch"]), done) if done > 0 else None
        if self._resume is not None:
            log.info("resuming epoch %d at step %d (saved on SIGTERM)", self._resume[0] + 1, done)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._cut = False

    def _steps_done_before(self) -> int:
        """Steps of the current epoch trained before a SIGTERM save that this fit resumed from."""
        return self._resume[1] if self._resume is not None and self._resume[0] == self._epoch else 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        done = self._steps_done_before() + batch + 1
        # A collective: every worker asks at every batch end, so all see the same answer at the same step.
        if preemption.agreed(self.model.distribute_strategy, multi_worker=self.multi_worker):
            self._current_epoch, self._last_batch_seen = self._epoch, done
            self._save_model()
            raise preemption.preempted(f"saved at epoch {self._epoch + 1} step {done}" if self.writer
                                       else f"epoch {self._epoch + 1} step {done}, saved by the chief")
        steps = self.params.get("steps") or self.steps_per_epoch
        if self._steps_done_before() and steps and done >= steps:
            # The resumed epoch ends after its remaining steps; Keras then validates and ends the epoch.
            self.model.stop_training = True
            self._cut = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._cut:  # not a request to stop the fit (this callback runs before EarlyStopping)
            self.model.stop_training = False
            self._cut = False
            self._resume = None
        super().on_epoch_end(epoch, logs)

    def _save_model(self) -> None:
        if not self.writer:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        weights_tmp = os.path.join(self.backup_dir, "incoming.weights.h5")
        self.model.save_weights(filepath=weights_tmp, overwrite=True)
        os.replace(weights_tmp, self._weights_path)
        write_atomic(self._training_metadata_path, json.dumps({"epoch": self._current_epoch,
                                                               "batch": self._last_batch_seen}))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.writer:
            super().on_train_end(logs)


def backup_and_restore(
    backup_dir: Path | str, *, writer: bool = True, delete_checkpoint: bool = True, multi_worker: bool = False,
    steps_per_epoch: int | None = None,
) -> keras.callbacks.BackupAndRestore:
    """A ``BackupAndRestore`` callback (epoch backups, deleted when fit ends) safe under MWMS.

    Pass the *shared* backup dir on every worker and ``writer=cluster.is_chief``: every worker
    restores from it at the start of fit, only the writer saves (atomically) and deletes it
    (unless ``delete_checkpoint=False``). The directory must be private to one ``fit`` call (one
    trial and phase).

    SIGTERM (`trainer.preemption`): at every batch end all workers agree whether any of them got it
    (``multi_worker``: an all-reduce); if so the writer saves at that step (``{"epoch": e, "batch":
    steps done}``) and every worker raises `Preempted` (exit 4). The next fit restores those weights
    and runs only the remaining ``steps_per_epoch - steps done`` steps of epoch e (over a fresh shuffle:
    tf.data cannot put a reshuffled iterator back at a position), then validates and goes on. Keep
    this callback before EarlyStopping: it ends that shortened epoch with ``stop_training``.
    """
    return _SharedBackupAndRestore(str(backup_dir), writer=writer, delete_checkpoint=delete_checkpoint,
                                   multi_worker=multi_worker, steps_per_epoch=steps_per_epoch)


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
        write_atomic(self.path, json.dumps(recorded))


class _ReplayEarlyStopping(keras.callbacks.Callback):
    """Feeds EarlyStopping the epochs of this phase trained before a restart, so its patience goes on.

    Keras's ``EarlyStopping.on_train_begin`` starts from scratch (wait 0, best inf); this callback acts at
    the first ``on_epoch_begin``, after every ``on_train_begin``, and passes each earlier epoch's logs
    (from the trial's epoch log) to ``on_epoch_end``: ``wait``, ``best`` and ``best_epoch`` end as they
    were. If patience had already run out, ``stop_training`` stays set and the fit stops after one step.
    """

    def __init__(self, targets: list[keras.callbacks.EarlyStopping], logs: dict[int, dict[str, float]],
                 first_epoch: int) -> None:
        super().__init__()
        self.targets = targets
        self.logs = logs
        self.first_epoch = first_epoch
        self._done = False

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._done:
            return
        self._done = True
        earlier = sorted(e for e in self.logs if self.first_epoch <= e < epoch)
        for target in self.targets:
            for e in earlier:
                target.on_epoch_end(e, dict(self.logs[e]))
        if earlier and self.targets:
            log.info("early stopping resumed after %d epoch(s) of this phase: wait %d, best %s at epoch %d",
                     len(earlier), self.targets[0].wait, self.targets[0].best, self.targets[0].best_epoch + 1)


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
    multi_worker: bool = False
    steps_per_epoch: int | None = None

    def callbacks(self, phase: str, *, others: Sequence[keras.callbacks.Callback] = (),
                  first_epoch: int = 0) -> list[keras.callbacks.Callback]:
        """The callbacks one phase's ``fit`` needs: restore/save its backup, log its epochs.

        `others`: the fit's other callbacks; an ``EarlyStopping`` among them is given the epochs of
        this phase (from `first_epoch` on) trained before a restart.
        """
        # The epoch log first: it is never behind the weights backup (a re-run epoch overwrites its entry).
        stopping = [c for c in others if isinstance(c, keras.callbacks.EarlyStopping)]
        return [_EpochLog(self.root / "epochs.json", writer=self.writer),
                backup_and_restore(self.root / phase, writer=self.writer, delete_checkpoint=False,
                                   multi_worker=self.multi_worker, steps_per_epoch=self.steps_per_epoch),
                _ReplayEarlyStopping(stopping, self.epoch_logs(), first_epoch)]

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
