"""The KerasTuner side of a search: the tuner class with tfstack's per-trial hooks, and its directories.

`make_tuner` builds the configured KerasTuner tuner with `_SearchHooks` mixed in: before each trial
the workers check they agree on its data, steps, restored epochs and hyperparameters; each trial
trains with a phase-aware backup (`trainer.distribute.TrialBackup`); a lost peer stops the search
without marking the trial failed, so a restarted group retries it; histories and progress lines
are recorded per trial.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from trainer import distribute, plots, run_record
from trainer.cluster import Cluster
from trainer.config import SearchConfig
from trainer.errors import PeerLostError, TrainerError
from trainer.progress import SearchMetrics
from trainer.watchdog import StallWatchdog

__all__ = ["OBJECTIVE", "make_tuner", "seed_scratch_from_shared", "trial_rows", "weights_digest"]

log = logging.getLogger(__name__)

OBJECTIVE = "val_accuracy"



class _SearchHooks:
    """Mixed into a KerasTuner tuner: agreement check, per-trial backups, histories, progress lines."""

    # Prefixed: KerasTuner's tuners already own attributes such as `metrics`.
    tfstack_cluster: Cluster
    tfstack_strategy: tf.distribute.Strategy
    tfstack_metrics: SearchMetrics
    tfstack_backup_root: Path
    tfstack_history_root: Path | None
    tfstack_shared_project: Path
    """The chief's tuner project dir on the shared volume (a non-chief's own tuner dir is scratch)."""
    tfstack_watchdog: StallWatchdog

    tfstack_agreement: dict[str, Any]
    """What every worker must share before each trial besides its hyperparameters (data, steps)."""

    def _tfstack_trial_backup(self, trial: kt.engine.trial.Trial) -> distribute.TrialBackup:
        return distribute.TrialBackup(self.tfstack_backup_root / f"trial_{trial.trial_id}",
                                      writer=self.tfstack_cluster.is_chief,
                                      multi_worker=self.tfstack_cluster.num_workers > 1,
                                      steps_per_epoch=self.tfstack_agreement["train_steps_per_epoch"])

    def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
        self.tfstack_watchdog.beat(f"trial {trial.trial_id}")
        super().on_trial_begin(trial)  # type: ignore[misc]
        if self.tfstack_cluster.is_chief:
            group = f" on group {self.tfstack_cluster.group}" if self.tfstack_cluster.groups > 1 else ""
            log.info("trial %s started%s", trial.trial_id, group)
        if self.tfstack_cluster.num_workers > 1:
            # One all-gather: a file unreadable on one node changes its fingerprint and steps per epoch,
            # and a worker that cannot see the chief's backups would restore another epoch.
            distribute.assert_workers_agree(self.tfstack_strategy, {
                **self.tfstack_agreement,
                "hyperparameters": dict(trial.hyperparameters.values),
                "restored_epochs": self._tfstack_trial_backup(trial).restored_epochs(),
            }, f"trial {trial.trial_id}")
        self.tfstack_metrics.trial.set(_trial_number(trial))
        self.tfstack_metrics.epoch.set(0)

    def _build_hypermodel(self, hp: kt.HyperParameters) -> keras.Model:
        # A Hyperband trial that continues an earlier one loads that trial's best-epoch checkpoint from this
        # worker's own tuner dir (keras_tuner/src/tuners/hyperband.py, _build_hypermodel). KerasTuner's
        # SaveBestEpoch writes it on the chief only (a non-chief's copy goes to a temp dir it deletes:
        # keras_tuner/src/engine/tuner_utils.py), so a non-chief copies the chief's first. It is complete:
        # the chief wrote it before the collective of this trial's agreement check in on_trial_begin.
        earlier = hp.values.get("tuner/trial_id")
        if earlier and not self.tfstack_cluster.is_chief:
            mine = Path(self._get_checkpoint_fname(earlier))  # type: ignore[attr-defined]
            chiefs = self.tfstack_shared_project / mine.relative_to(self.project_dir)  # type: ignore[attr-defined]
            if chiefs.is_file() and not mine.is_file():
                mine.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(chiefs, mine)
        return super()._build_hypermodel(hp)  # type: ignore[misc]

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> Any:
        kwargs["backup"] = self._tfstack_trial_backup(trial)
        try:
            results = super().run_trial(trial, *args, **kwargs)  # type: ignore[misc]
        except _PEER_ERRORS as exc:
            # KerasTuner would record the trial as failed and move on, and the restarted job would never
            # retry it. Stop instead: the trial stays RUNNING in the tuner state, and a restarted job
            # (the launcher's --max-restarts, or Kubernetes) retries it from its last epoch backup.
            lost = PeerLostError(
                f"Lost contact with another worker during trial {trial.trial_id}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}. Restart the whole group to resume this trial."
            )
            lost.__cause__ = exc
            raise _TrialInterrupted(str(lost)) from lost
        except TrainerError as exc:  # our own errors (bad weights file, ...) are not trial failures
            raise _TrialInterrupted(str(exc)) from exc
        trained = getattr(self.hypermodel, "last_model", None)  # type: ignore[attr-defined]
        if trained is not None:
            # Workers must end every trial with identical weights; this line lets anyone check it.
            log.info("trial %s weights: %s", trial.trial_id, weights_digest(trained))
        if self.tfstack_history_root is not None:
            histories = results if isinstance(results, list) else [results]
            merged: dict[str, list[float]] = {}
            for history in histories:
                for key, values in getattr(history, "history", {}).items():
                    merged.setdefault(key, []).extend(float(v) for v in values)
            run_record.write_history(self.tfstack_history_root, trial.trial_id, merged)
        return results

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_end(trial)  # type: ignore[misc]
        if self.tfstack_cluster.is_chief:
            shutil.rmtree(self.tfstack_backup_root / f"trial_{trial.trial_id}", ignore_errors=True)
        self.tfstack_metrics.trials_done.inc()
        best = [t for t in self.oracle.get_best_trials(1) if t.score is not None]  # type: ignore[attr-defined]
        if best:
            self.tfstack_metrics.best.set(best[0].score)
        score = "n/a" if trial.score is None else f"{trial.score:.4f}"
        best_score = f"{best[0].score:.4f}" if best else "n/a"
        shown = ", ".join(f"{k}={_short(v)}" for k, v in sorted(trial.hyperparameters.values.items()))
        log.info("trial %s %s: %s=%s (best %s) %s", trial.trial_id, trial.status, OBJECTIVE, score, best_score, shown)



_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
    tf.errors.DeadlineExceededError,
)



class _TrialInterrupted(kt.errors.FatalError):
    """Stops the search without marking the running trial failed (KerasTuner re-raises FatalError)."""



def _trial_number(trial: kt.engine.trial.Trial) -> int:
    """1 for the first trial: KerasTuner numbers trials from 0 in the order the oracle created them."""
    try:
        return int(trial.trial_id) + 1
    except (TypeError, ValueError):
        return 0



def weights_digest(model: keras.Model) -> str:
    """``l2=<float> sha256=<hex>`` over all of a model's weights: equal on workers that trained in step."""
    import hashlib

    digest = hashlib.sha256()
    total = 0.0
    for weight in model.weights:
        array = np.asarray(keras.ops.convert_to_numpy(weight.value), dtype=np.float32)
        digest.update(array.tobytes())
        total += float(np.sum(np.square(array, dtype=np.float64)))
    return f"l2={math.sqrt(total):.12e} sha256={digest.hexdigest()[:16]}"



def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)



_TUNERS = {"hyperband": kt.Hyperband, "bayesian": kt.BayesianOptimization, "random": kt.RandomSearch}



def make_tuner(
    config: SearchConfig,
    hypermodel: kt.HyperModel,
    *,
    directory: Path,
    strategy: tf.distribute.Strategy | None = None,
    epochs: int = 10,
) -> kt.Tuner:
    """The configured KerasTuner tuner (resuming from `directory` unless ``config.overwrite``)."""
    base = _TUNERS[config.tuner]
    common: dict[str, Any] = {
        "hypermodel": hypermodel,
        "objective": kt.Objective(OBJECTIVE, direction="max"),
        "seed": config.seed,
        "directory": str(directory),
        "project_name": config.model_name,
        "overwrite": config.overwrite,
        "distribution_strategy": strategy,
    }
    if config.tuner == "hyperband":
        common.update(max_epochs=config.epochs or epochs, factor=3, hyperband_iterations=1)
    elif config.tuner == "bayesian":
        # KerasTuner's default (3 x the number of hyperparameters, 21 for 7) would make any small budget random.
        common.update(max_trials=config.max_trials, num_initial_points=config.bayesian_initial_trials)
    else:
        common.update(max_trials=config.max_trials)
    tuner_class = type(f"Tfstack{base.__name__}", (_SearchHooks, base), {})
    return tuner_class(**common)



def seed_scratch_from_shared(shared: Path, scratch: Path, project: str, *, checkpoints: bool = False) -> None:
    """Copy the chief's tuner state into a worker's scratch dir, so a restarted worker resumes in step.

    ``checkpoints=True`` (Hyperband) copies the trials' best-epoch weights too: a Hyperband trial
    continues an earlier one by loading its checkpoint in ``Hyperband._build_hypermodel``
    (keras_tuner/src/tuners/hyperband.py), on every worker, from that worker's own tuner directory.
    Without them a restarted worker fails the continued trial while the chief trains it.
    """
    source = shared / project
    if source.is_dir() and not (scratch / project).exists():
        skipped = ("*.tmp",) if checkpoints else ("*.h5", "checkpoint*", "*.tmp")
        shutil.copytree(source, scratch / project, ignore=shutil.ignore_patterns(*skipped))



def trial_rows(tuner: kt.Tuner) -> list[plots.TrialRow]:
    return [
        {"trial_id": t.trial_id, "status": t.status, "score": t.score,
         "hyperparameters": dict(t.hyperparameters.values)}
        for t in tuner.oracle.trials.values()
    ]

