"""What a restarted trial keeps besides its weights: early stopping's patience and best epoch (trainer.backup)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from trainer.backup import TrialBackup


class _Epochs(keras.callbacks.Callback):
    def __init__(self, die_at: int | None = None) -> None:
        super().__init__()
        self.die_at = die_at
        self.trained: list[int] = []

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        if epoch == self.die_at:
            raise RuntimeError("killed")
        self.trained.append(epoch)


def _fit(backup: TrialBackup, *extra: keras.callbacks.Callback) -> tuple[list[int], keras.callbacks.EarlyStopping]:
    """One phase's fit as the hypermodel runs it: the backup's callbacks first, given the fit's others."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    # Learning rate 0: val_loss is the same every epoch, so only epoch 0 is ever an improvement.
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    model.build((None, 4))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype("float32"), rng.integers(0, 2, 16)
    stopping = keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=3)
    epochs = _Epochs()
    others = [stopping, epochs, *extra]
    model.fit(x, y, validation_data=(x, y), batch_size=8, epochs=10, verbose=0,
              callbacks=[*backup.callbacks("phase1", others=others, first_epoch=0), *others])
    return epochs.trained, stopping


def test_early_stopping_patience_and_best_epoch_survive_a_restart(tmp_path: Path) -> None:
    uninterrupted, reference = _fit(TrialBackup(tmp_path / "reference", writer=True))
    assert uninterrupted == [0, 1, 2, 3], "patience 3 after the best epoch 0"

    backup = TrialBackup(tmp_path / "trial", writer=True)
    with pytest.raises(RuntimeError, match="killed"):
        _fit(backup, _Epochs(die_at=2))
    assert backup.restored_epochs() == {"phase1": 2}
    resumed, stopping = _fit(backup)
    assert resumed == [2, 3], "the restart counted its patience from 0 again (it would run epochs 2-5)"
    assert (stopping.best_epoch, stopping.best, stopping.stopped_epoch) == (
        reference.best_epoch, reference.best, reference.stopped_epoch)
