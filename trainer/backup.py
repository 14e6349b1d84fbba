"""Epoch backups that survive a lost worker: shared by all workers, written by the chief, per trial phase."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import keras

__all__ = ["TrialBackup", "backup_and_restore"]


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
