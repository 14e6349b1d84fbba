"""The hyperparameter search: data, tuner, distributed trials, report and export, end to end.

`run_search` is what ``python -m trainer search`` runs in every worker, as five named stages, each
callable alone: `scan_data` -> `plan_search` (strategy, search space, datasets) -> `search_trials`
-> `evaluate_best` -> `publish` (the last two on the chief). All workers run the same oracle with
the same seed and train every trial together under the strategy from `trainer.distribute`; before
each trial they check that they agree on its data, steps, restored epochs and hyperparameters. Only
the chief writes shared state (the tuner directory, checkpoints, TensorBoard logs, the report and
the export); other workers keep their tuner state in private scratch space, seeded from the
chief's so that a restarted worker resumes at the same trial.

A rerun with the same run directory resumes the search: finished trials are not repeated and a
trial that was running is retried, resuming in its phase from its last epoch backup
(`trainer.distribute.TrialBackup`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from trainer import data, distribute, plots, preemption
from trainer.cluster import Cluster
from trainer.config import HEADS, SearchConfig
from trainer.errors import ConfigError, PeerLostError, SearchError, TrainerError
from trainer.export import ExportedModel, stage_export
from trainer.hypermodel import (
    BACKBONE_SPECS,
    ModelSpec,
    TransferHyperModel,
    find_backbone,
    fitting_heads,
    prepare_backbones,
    xla_blockers,
)
from trainer.progress import ProgressCallback, SearchMetrics
from trainer.publish import Decision, gate_and_publish
from trainer.steps import steps_per_epoch, steps_per_execution, sync_batchnorm
from trainer.watchdog import StallWatchdog

__all__ = [
    "Evaluation",
    "SearchOutcome",
    "SearchPlan",
    "SearchResult",
    "auto_epochs",
    "auto_image_size",
    "balanced_class_weights",
    "evaluate_best",
    "held_out_warnings",
    "make_tuner",
    "model_spec",
    "patience_epochs",
    "plan_search",
    "publish",
    "run_search",
    "scan_data",
    "search_trials",
    "weights_digest",
]

log = logging.getLogger(__name__)
OBJECTIVE = "val_accuracy"
_HISTORY_FILE = "history.json"


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What a finished search produced (the export only on the chief)."""

    best_hyperparameters: dict[str, Any]
    best_val_accuracy: float
    test_accuracy: float | None
    test_images: int
    trials: int
    export: ExportedModel | None
    report_dir: Path | None
    model: keras.Model | None = None
    """The exported model (best epoch of the best trial), on the chief."""
    held_out_recall: dict[str, float] = dataclasses.field(default_factory=dict)
    decision: Decision | None = None
    """The publish gate's decision (on the chief)."""


def auto_image_size(backbone: str, median_side: int | None) -> int:
    """The input size a backbone runs at without ``--image-size``, from the data's median image side.

    small_cnn: 32 for images up to 40 px (digits, icons), else 64 (enough for shapes and textures at the
    scale of the image; 4x the compute of 32). keras.applications: their own size (224, 299), or for
    small images the median side rounded up to a multiple of 32, at least 96 (upscaling a 28 px image to
    224 px costs 60x the compute and adds no information).
    """
    spec = BACKBONE_SPECS[backbone]
    if spec.factory is None:
        return 32 if median_side is None or median_side <= 40 else 64
    if median_side is None:
        return spec.default_size
    return max(spec.min_size, min(spec.default_size, max(96, 32 * math.ceil(median_side / 32))))


def model_spec(
    config: SearchConfig, num_classes: int, replicas: int = 1, policy: str = "float32", *,
    median_side: int | None = None, steps: tuple[int, int] | None = None, workers: int = 1,
) -> ModelSpec:
    """The fixed part of the search space for `config` and a data set of `num_classes`.

    `median_side` (the data's median image side in pixels) picks each backbone's input size when
    ``config.image_size`` is not set (`auto_image_size`); the model input is the largest of them.
    `steps` (training, validation steps per epoch) sets the steps per execution with one worker process
    (`trainer.steps.steps_per_execution`; 1 with several `workers`: see there); BatchNormalization is
    synchronized by `trainer.steps.sync_batchnorm`.
    XLA (``--xla``) is on only where the model compiles (`xla_blockers`), and then explicitly
    (``jit_compile=True``): Keras's "auto" is off under any distribution strategy.
    """
    backbones = config.backbones
    sizes = {b: config.image_size or auto_image_size(b, median_side) for b in backbones}
    image_size = max(sizes.values())
    heads = config.heads
    if set(heads) == set(HEADS):  # the default: only the heads that fit every backbone's feature map
        heads = fitting_heads(heads, backbones, sizes)
    augmentation: list[tuple[str, Any]] = []
    if config.flip != "none":
        augmentation.append(("flip", config.flip))
    if config.rotation > 0:
        augmentation.append(("rotation", config.rotation))
    if config.zoom > 0:
        augmentation.append(("zoom", config.zoom))
    uses_pretrained = any(BACKBONE_SPECS[b].factory is not None for b in backbones)
    blockers = xla_blockers(tuple(augmentation))
    if config.xla and blockers:
        log.warning("XLA off although --xla was given: augmentation %s does not compile (pass --rotation 0 "
                    "--zoom 0, or keep flips only, to train with XLA)", ", ".join(blockers))
    return ModelSpec(
        num_classes=num_classes,
        image_size=image_size,
        backbones=backbones,
        weights=config.weights if uses_pretrained else "none",
        heads=heads,
        unfreeze_depths=config.unfreeze_depths,
        head_epochs=config.head_epochs,
        augmentation=tuple(augmentation),
        learning_rate_scale=float(replicas) if config.scale_learning_rate else 1.0,
        seed=config.seed,
        jit_compile=bool(config.xla and not blockers),
        dtype_policy=policy,
        backbone_sizes=tuple(sorted(sizes.items())),
        sync_batchnorm=sync_batchnorm(config.batch_size, replicas),
        steps_per_execution=steps_per_execution(*steps, workers=workers) if steps else 1,
        steps_per_epoch=steps[0] if steps else None,
    )


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
            trial_dir = self.tfstack_history_root / f"trial_{trial.trial_id}"
            trial_dir.mkdir(parents=True, exist_ok=True)
            (trial_dir / _HISTORY_FILE).write_text(json.dumps(merged))
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


def _seed_scratch_from_shared(shared: Path, scratch: Path, project: str, *, checkpoints: bool = False) -> None:
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


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """What every worker searches with: the data, the strategy, the fixed search space and the datasets."""

    root: Path
    splits: data.DataSplits
    accelerator: distribute.Accelerator
    strategy: tf.distribute.Strategy
    spec: ModelSpec
    epochs: int
    global_batch: int
    train: tf.data.Dataset | tf.distribute.DistributedDataset
    """One pipeline per worker over its shard (`trainer.data.distributed_dataset`); a plain Dataset in one process.
    Repeated: ``spec.steps_per_epoch`` steps make an epoch."""
    val: tf.data.Dataset | tf.distribute.DistributedDataset

    @property
    def train_counts(self) -> dict[str, int]:
        return {name: sum(f.label == i for f in self.splits.train) for i, name in enumerate(self.splits.class_names)}


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
    """The tuner's verdict, the same on every worker."""

    best: kt.engine.trial.Trial
    checkpoint: Path
    """KerasTuner's best-epoch weights of the best trial (on the chief's shared tuner dir)."""
    trials: list[plots.TrialRow]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The best model measured on the held-out split (the chief only)."""

    model: keras.Model
    held_out: tuple[data.ImageFile, ...]
    split_name: str
    labels: np.ndarray
    matrix: np.ndarray
    accuracy: float
    balanced: float
    recall: dict[str, float]


def run_search(
    config: SearchConfig,
    cluster: Cluster,
    *,
    metrics: SearchMetrics | None = None,
) -> SearchResult:
    """Scan -> plan -> search -> evaluate -> publish; the last two on the chief only."""
    started = dt.datetime.now(dt.timezone.utc)
    metrics = metrics or SearchMetrics()
    metrics.workers.set(cluster.num_workers)
    metrics.trials_planned.set(config.max_trials)
    if cluster.groups > 1 and config.tuner == "hyperband":
        raise ConfigError(
            "Expected --tuner bayesian or random with parallel trial groups. Received: --tuner hyperband with "
            f"{cluster.groups} groups (a Hyperband trial continues another trial from its checkpoint, which "
            "another group's workers cannot read; run Hyperband with one group)"
        )
    root, splits = scan_data(config)
    plan = plan_search(config, cluster, root, splits)
    outcome: SearchOutcome | None
    if cluster.is_oracle:
        outcome = serve_search(config, cluster, plan, metrics)
    else:
        outcome = search_trials(config, cluster, plan, metrics)
    if outcome is None or not cluster.publishes:  # a worker: the oracle or the chief publishes
        best = outcome.best if outcome is not None else None
        return SearchResult(dict(best.hyperparameters.values) if best else {}, float(best.score) if best else math.nan,
                            None, len(splits.test), len(outcome.trials) if outcome else 0, None, None)
    evaluation = evaluate_best(config, plan, outcome)
    return publish(config, cluster, plan, outcome, evaluation, started=started, metrics=metrics)


def scan_data(config: SearchConfig) -> tuple[Path, data.DataSplits]:
    """Stage 1: the image folder (or the embedded digits), scanned and split; unreadable files reported."""
    root = config.data if config.data is not None else data.ensure_digits(config.run_dir / "embedded-digits")
    splits = data.scan(
        root, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed,
        strict=config.strict_data,
    )
    log.info(
        "data %s: %d classes, %d train / %d val / %d test images, %d skipped",
        root, len(splits.class_names), len(splits.train), len(splits.val), len(splits.test), len(splits.skipped),
    )
    return root, splits


def plan_search(config: SearchConfig, cluster: Cluster, root: Path, splits: data.DataSplits) -> SearchPlan:
    """Stage 2: accelerator, strategy (the group forms here), search space, epochs and datasets."""
    accelerator = distribute.choose_accelerator(
        tf.config.list_physical_devices(), mixed_precision=config.mixed_precision, xla=config.xla
    )
    distribute.apply(accelerator)
    strategy = distribute.make_strategy(cluster, accelerator=accelerator,
                                        formation_timeout=config.cluster_formation_timeout)
    replicas = strategy.num_replicas_in_sync
    global_batch = data.global_batch_size(config.batch_size, replicas)
    train_steps = steps_per_epoch(len(splits.train), global_batch)
    val_steps = steps_per_epoch(len(splits.val), global_batch)
    spec = model_spec(config, len(splits.class_names), replicas, accelerator.policy,
                      median_side=data.median_image_side(splits.train), steps=(train_steps, val_steps),
                      workers=cluster.num_workers)
    log.info("step: %d per execution, BatchNormalization %s, XLA %s", spec.steps_per_execution,
             "synchronized across replicas" if spec.sync_batchnorm else "per replica",
             "on (jit_compile=True)" if spec.jit_compile is True else "off")
    log.info("search space: backbones %s at %s px, heads %s%s", ",".join(spec.backbones),
             dict(spec.backbone_sizes), ",".join(spec.heads),
             f", unfreeze depths {list(spec.unfreeze_depths)} (fractions of the backbone)"
             if spec.fine_tuned_backbones else "")
    epochs = config.epochs or auto_epochs(len(splits.train), global_batch)
    if config.epochs is None:
        log.info("epochs per trial: %d (%d optimizer steps at %d per epoch; --epochs sets it)", epochs,
                 epochs * train_steps, train_steps)
    class_weights = balanced_class_weights(splits)
    if class_weights is not None:
        log.info("classes are imbalanced: weighting the loss by class %s",
                 {name: round(w, 2) for name, w in zip(splits.class_names, class_weights, strict=True)})
    if spec.weights == "none" and any(BACKBONE_SPECS[b].factory is not None for b in spec.backbones):
        log.warning("training ImageNet architectures from random weights needs far more data and epochs than "
                    "fine-tuning; with %d training images prefer pretrained weights or the small_cnn backbone",
                    len(splits.train))
    _check_resumable(config, splits, spec, cluster, epochs,
                     recorded={"replicas": replicas, "global_batch_size": global_batch})
    prepare_backbones(spec)
    size = (spec.image_size, spec.image_size)
    cache = _choose_cache(config, cluster, splits, size, global_batch)
    # Each worker reads and decodes only its shard (trainer.data.distributed_dataset). Several workers must
    # each run the same number of steps: the lists are padded to full global batches (weight 0). Training
    # repeats, with fit's steps_per_epoch: one iterator per fit, no per-step end-of-data all-reduce. Validation
    # stays one finite pass: Keras opens a new iterator per pass anyway, and a pass cut at validation_steps
    # would never complete its memory cache (decoding the split again every epoch).
    padded = cluster.num_workers > 1
    train = data.distributed_dataset(strategy, splits.train, size, global_batch, training=True, seed=config.seed,
                                     cache=cache, pad_to_full_batches=padded, class_weights=class_weights,
                                     name="train", fingerprint=splits.fingerprint, repeat=True)
    val = data.distributed_dataset(strategy, splits.val, size, global_batch, training=False, seed=config.seed,
                                   cache=cache, pad_to_full_batches=padded, name="val", fingerprint=splits.fingerprint)
    return SearchPlan(root, splits, accelerator, strategy, spec, epochs, global_batch, train, val)


def _choose_cache(config: SearchConfig, cluster: Cluster, splits: data.DataSplits, size: tuple[int, int],
                  global_batch: int) -> str:
    """``--cache`` resolved for this worker's shards of train and val (logged with the numbers behind it)."""
    workers = cluster.num_workers
    images = sum(math.ceil(len(files) / global_batch) * global_batch // workers if workers > 1 else len(files)
                 for files in (splits.train, splits.val))
    needed = data.decoded_bytes(images, size)
    available = data.available_memory() if config.cache == "auto" else None
    cache = data.choose_cache(config.cache, needed, available)
    gib = 1 << 30
    if config.cache == "auto":
        budget = data.memory_cache_budget(available)
        log.info("cache: %s (auto): this worker's %d decoded images take %.2f GiB; memory budget %.2f GiB = "
                 "min(%.0f GiB, %.0f%% of %s available)%s", cache, images, needed / gib, budget / gib,
                 data.MEMORY_CACHE_CAP_BYTES / gib, 100 * data.MEMORY_CACHE_FRACTION,
                 "unknown" if available is None else f"{available / gib:.1f} GiB",
                 "" if cache == "memory" else "; images are decoded every epoch: pass --cache DIR (a local SSD "
                 "with room for them) to cache on disk")
    else:
        log.info("cache: %s (--cache): this worker's %d decoded images take %.2f GiB", cache, images, needed / gib)
    return cache


def search_trials(
    config: SearchConfig, cluster: Cluster, plan: SearchPlan, metrics: SearchMetrics
) -> SearchOutcome | None:
    """Stage 3: the KerasTuner search, every trial a synchronous job over all workers of this group.

    With parallel groups the trials come from the oracle process (`trainer.trials`), which alone knows
    the outcome: a group's workers return None.
    """
    run_root = config.model_run_dir
    if config.overwrite and cluster.publishes:
        _clear_run(run_root)
    # With peers, a worker that makes no progress for --collective-timeout exits 4 (trainer.watchdog).
    watchdog = StallWatchdog(config.collective_timeout if cluster.num_workers > 1 else 0)
    with distribute.worker_dirs(run_root, cluster) as dirs:
        tuner = _search_tuner(config, cluster, plan, metrics, dirs, watchdog)
        callbacks: list[keras.callbacks.Callback] = [
            # val_loss moves smoothly where val_accuracy jumps by whole images on small validation sets.
            _early_stopping(config, math.ceil(len(plan.splits.train) / plan.global_batch)),
            ProgressCallback(metrics, plan.global_batch),
            keras.callbacks.TensorBoard(log_dir=str(dirs.logs_dir), write_graph=False, profile_batch=0),
            watchdog.callback(),
        ]
        try:
            # SIGTERM while the search runs: every worker saves the trial at one step and exits 4.
            with watchdog.armed("the search"), preemption.training():
                tuner.search(plan.train, validation_data=plan.val, epochs=plan.epochs, callbacks=callbacks,
                             verbose=2)
        except kt.errors.FatalError as exc:
            if isinstance(exc.__cause__, TrainerError):
                raise exc.__cause__ from exc.__cause__.__cause__
            raise SearchError(f"The search stopped: {exc}") from exc
        finally:
            watchdog.close()
        return None if cluster.groups > 1 else _outcome(tuner)


def serve_search(config: SearchConfig, cluster: Cluster, plan: SearchPlan, metrics: SearchMetrics) -> SearchOutcome:
    """Stage 3 on the oracle of parallel groups: hand out every trial (`trainer.trials.serve_trials`), then judge."""
    from trainer.trials import serve_trials

    run_root = config.model_run_dir
    if config.overwrite:
        _clear_run(run_root)  # before the port opens: no group writes before it has a trial
    tuner = make_tuner(config, TransferHyperModel(plan.spec), directory=run_root / "tuner", epochs=plan.epochs)
    already = sum(1 for t in tuner.oracle.trials.values() if t.status == "COMPLETED")
    if already:
        log.info("resuming the search in %s: %d trials already completed", run_root / "tuner", already)
    serve_trials(tuner.oracle, cluster, on_trial_end=lambda: _note_trial_end(tuner.oracle, metrics))
    return _outcome(tuner)


def _note_trial_end(oracle: kt.Oracle, metrics: SearchMetrics) -> None:
    metrics.trials_done.inc()
    best = [t for t in oracle.get_best_trials(1) if t.score is not None]
    if best:
        metrics.best.set(best[0].score)


def _clear_run(run_root: Path) -> None:
    """What --overwrite removes besides the tuner state: histories, backups and the published record."""
    for stale in ("histories", "backup"):
        shutil.rmtree(run_root / stale, ignore_errors=True)
    (run_root / _PUBLISHED).unlink(missing_ok=True)


def _outcome(tuner: kt.Tuner) -> SearchOutcome:
    """The best trial and its best-epoch weights, from a tuner holding the search's own oracle."""
    best_trials = tuner.oracle.get_best_trials(1)
    if not best_trials or best_trials[0].score is None:
        raise SearchError(
            f"Expected at least one trial with a {OBJECTIVE}. "
            f"Received: {len(tuner.oracle.trials)} trials, none scored"
        )
    best = best_trials[0]
    checkpoint = Path(tuner._get_checkpoint_fname(best.trial_id))  # KerasTuner's own best-epoch weights
    return SearchOutcome(best, checkpoint, _trial_rows(tuner))


def _search_tuner(config: SearchConfig, cluster: Cluster, plan: SearchPlan, metrics: SearchMetrics,
                  dirs: distribute.WorkerDirs, watchdog: StallWatchdog) -> kt.Tuner:
    """The tuner with this worker's directories and the hooks `_SearchHooks` reads."""
    run_root = config.model_run_dir
    grouped = cluster.groups > 1
    if not cluster.is_chief and not config.overwrite and not grouped:
        _seed_scratch_from_shared(run_root / "tuner", dirs.tuner_dir, config.model_name,
                                  checkpoints=config.tuner == "hyperband")
    if grouped:
        # KerasTuner's tuners become clients of the oracle process when these are set (BaseTuner.__init__);
        # only the oracle may overwrite the shared tuner directory.
        os.environ.update(cluster.kerastuner_env())
        config = dataclasses.replace(config, overwrite=False)
    tuner = make_tuner(config, TransferHyperModel(plan.spec), directory=dirs.tuner_dir, strategy=plan.strategy,
                       epochs=plan.epochs)
    if grouped:
        from trainer.trials import GroupOracleClient

        tuner.oracle = GroupOracleClient(tuner.oracle._oracle, cluster=cluster, strategy=plan.strategy,
                                         timeout=config.cluster_formation_timeout)
    tuner.tfstack_cluster = cluster
    tuner.tfstack_strategy = plan.strategy
    tuner.tfstack_metrics = metrics
    tuner.tfstack_backup_root = dirs.backup_dir
    tuner.tfstack_history_root = (run_root / "histories") if cluster.is_chief else None
    tuner.tfstack_watchdog = watchdog
    tuner.tfstack_shared_project = run_root / "tuner" / config.model_name
    tuner.tfstack_agreement = {
        "data_fingerprint": plan.splits.fingerprint,
        "train_steps_per_epoch": math.ceil(len(plan.splits.train) / plan.global_batch),
        "val_steps": math.ceil(len(plan.splits.val) / plan.global_batch),
        # Each worker picks its policy from its own GPUs: a group on mixed GPU generations must not mix them.
        "dtype_policy": plan.spec.dtype_policy,
    }
    if not grouped:
        already = sum(1 for t in tuner.oracle.trials.values() if t.status == "COMPLETED")
        if already:
            log.info("resuming the search in %s: %d trials already completed", dirs.tuner_dir, already)
    return tuner


def evaluate_best(config: SearchConfig, plan: SearchPlan, outcome: SearchOutcome) -> Evaluation:
    """Stage 4 (chief): rebuild the best model outside the strategy, restore its best epoch, measure it."""
    keras.backend.clear_session()
    spec = dataclasses.replace(plan.spec, learning_rate_scale=1.0)
    model = TransferHyperModel(spec).build(outcome.best.hyperparameters)
    try:
        model.load_weights(outcome.checkpoint)
    except (ValueError, OSError) as exc:
        raise SearchError(f"Could not restore the best trial's weights from {outcome.checkpoint}: {exc}") from exc
    splits = plan.splits
    held_out = splits.test or splits.val
    size = (spec.image_size, spec.image_size)
    labels, predictions = _predict(model, held_out, size, config.batch_size, spec.binary)
    accuracy = float(np.mean(labels == predictions)) if len(labels) else math.nan
    split_name = "test" if splits.test else "validation"
    matrix = plots.confusion_matrix(labels, predictions, len(splits.class_names))
    recall = {name: float(matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else math.nan
              for i, name in enumerate(splits.class_names)}
    balanced = float(np.nanmean(list(recall.values()))) if recall else math.nan
    score = float(outcome.best.score)
    log.info("best trial %s: %s=%.4f; %s accuracy %.4f (balanced %.4f) on %d held-out images",
             outcome.best.trial_id, OBJECTIVE, score, split_name, accuracy, balanced, len(labels))
    for warning in held_out_warnings(labels, accuracy, recall, score):
        log.warning("%s", warning)
    return Evaluation(model, held_out, split_name, labels, matrix, accuracy, balanced, recall)


def publish(config: SearchConfig, cluster: Cluster, plan: SearchPlan, outcome: SearchOutcome,
            evaluation: Evaluation, *, started: dt.datetime, metrics: SearchMetrics) -> SearchResult:
    """Stage 5 (chief): the report, then the export through the publish gate (`trainer.publish`).

    A finished search that is run again publishes nothing new: `_published_before` finds the version
    this very search (same best trial, same trial count) already published.
    """
    run_root = config.model_run_dir
    report_dir = run_root / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    plots.write_trials_table(outcome.trials, report_dir)
    plots.write_curves(_load_histories(run_root / "histories"), report_dir / "curves.png")
    plots.write_confusion_matrix(evaluation.matrix, plan.splits.class_names, report_dir / "confusion_matrix.png",
                                 f"{config.model_name}: {evaluation.split_name} accuracy {evaluation.accuracy:.4f}")
    metadata = _metadata(config, cluster, plan, outcome, evaluation, started)
    best, held_out = outcome.best, evaluation.held_out
    decision: Decision | None = None
    exported = _published_before(run_root, best.trial_id, len(outcome.trials))
    if exported is not None:
        log.info("the search was already finished and published as version %d (%s): not exporting it again",
                 exported.version, exported.path)
    else:
        staging = stage_export(
            evaluation.model, export_base=config.export_base, model_name=config.model_name,
            class_names=plan.splits.class_names, image_size=plan.spec.image_size, metadata=metadata,
            warmup_images=[f.path.read_bytes() for f in held_out[:8]],
        )
        decision, exported = gate_and_publish(
            staging, held_out=[(f.path, f.label) for f in held_out], class_names=plan.splits.class_names,
            fingerprint=plan.splits.fingerprint, policy=config.publish, tolerance=config.publish_tolerance,
        )
        _record_decision(decision, metrics, report_dir)
        if exported is not None:
            _record_published(run_root, exported, best.trial_id, len(outcome.trials))
    (report_dir / "held_out.json").write_text(json.dumps(
        [{"path": str(f.path.resolve()), "label": f.label} for f in held_out], indent=1) + "\n")
    (report_dir / "summary.json").write_text(json.dumps(
        {**metadata, "export": str(exported.path) if exported else None,
         "publish": decision.to_dict() if decision else None}, indent=2, default=str) + "\n")
    return SearchResult(dict(best.hyperparameters.values), float(best.score), evaluation.accuracy,
                        len(evaluation.labels), len(outcome.trials), exported, report_dir, evaluation.model,
                        evaluation.recall, decision)


def _metadata(config: SearchConfig, cluster: Cluster, plan: SearchPlan, outcome: SearchOutcome,
              evaluation: Evaluation, started: dt.datetime) -> dict[str, Any]:
    """The export's and the report's record of what was trained, on what, and how well."""
    splits, split_name, model = plan.splits, evaluation.split_name, evaluation.model
    return {
        "model_name": config.model_name,
        "class_names": list(splits.class_names),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "search_started_at": started.isoformat(),
        "hyperparameters": dict(outcome.best.hyperparameters.values),
        "metrics": {OBJECTIVE: float(outcome.best.score), f"{split_name}_accuracy": evaluation.accuracy,
                    f"{split_name}_balanced_accuracy": evaluation.balanced,
                    f"{split_name}_recall_by_class": evaluation.recall, f"{split_name}_images": len(evaluation.labels)},
        "data": {"root": str(plan.root), "fingerprint": splits.fingerprint, "train_class_counts": plan.train_counts,
                 "train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
                 "skipped": [str(p) for p, _ in splits.skipped]},
        "training": {**_training_shape(config, cluster, plan), "accelerator": dataclasses.asdict(plan.accelerator),
                     "trials": len(outcome.trials), "tuner": config.tuner,
                     # What the model was really built under (the policy is applied per build: see hypermodel).
                     "dtype_policy": model.dtype_policy.name,
                     "compute_dtype": find_backbone(model).dtype_policy.compute_dtype},
        "config": config.to_dict(),
        "versions": _library_versions(),
    }
def _training_shape(config: SearchConfig, cluster: Cluster, plan: SearchPlan) -> dict[str, Any]:
    """Groups, workers, replicas and global batch of the trials: on the oracle, as group 0's chief recorded them."""
    if not cluster.is_oracle:
        return {"groups": 1, "workers": cluster.num_workers, "replicas": plan.strategy.num_replicas_in_sync,
                "global_batch_size": plan.global_batch}
    try:
        recorded = json.loads((config.model_run_dir / _SEARCH_IDENTITY).read_text())
    except (OSError, ValueError):
        recorded = {}
    return {"groups": cluster.groups, "workers": None, "replicas": recorded.get("replicas"),
            "global_batch_size": recorded.get("global_batch_size")}


def _record_decision(decision: Decision, metrics: SearchMetrics, report_dir: Path) -> None:
    """The publish gate's decision as metrics and as ``report/publish.json``."""
    metrics.published.set(1 if decision.publish else 0)
    for name, score in (("candidate", decision.candidate), ("current", decision.current)):
        if score is not None:
            metrics.held_out.labels(name).set(score.balanced_accuracy)
    (report_dir / "publish.json").write_text(json.dumps(decision.to_dict(), indent=2) + "\n")


def held_out_warnings(labels: np.ndarray, accuracy: float, recall: Mapping[str, float], val: float) -> list[str]:
    """What a reader of the final accuracy should not miss."""
    warnings = []
    if 0 < len(labels) < 50:
        warnings.append(f"only {len(labels)} held-out images: one image moves the accuracy by "
                        f"{100 / len(labels):.1f} points")
    never = [name for name, value in recall.items() if value == 0.0]
    if never:
        warnings.append(f"classes never predicted correctly on the held-out images: {', '.join(never)}")
    if recall and accuracy <= 1.0 / len(recall):
        warnings.append(f"held-out accuracy {accuracy:.3f} is no better than chance (1/{len(recall)})")
    if val - accuracy > 0.15:
        warnings.append(f"val_accuracy {val:.3f} is far above the held-out accuracy {accuracy:.3f}: the validation "
                        "split is small or unrepresentative")
    return warnings


def auto_epochs(train_images: int, global_batch: int, steps: int = 600) -> int:
    """Epochs for about `steps` optimizer steps, within [10, 200]: small data sets need more epochs.

    The cap was 60: a 120-image folder (3 steps an epoch) then trained 180 steps at most; 200 epochs of
    a few dozen images cost seconds on a CPU (docs/trainer.md, "Small folders").
    """
    steps_per_epoch = max(1, math.ceil(train_images / global_batch))
    return int(min(200, max(10, math.ceil(steps / steps_per_epoch))))


def _early_stopping(config: SearchConfig, steps_per_epoch: int) -> keras.callbacks.EarlyStopping:
    """Stop on val_loss, counted in optimizer steps: not before ``--min-steps``, after ``--patience-steps``."""
    start = math.ceil(config.min_steps / max(1, steps_per_epoch))
    patience = patience_epochs(config.patience, config.patience_steps, steps_per_epoch)
    log.info("early stopping: from epoch %d, patience %d epochs (%d optimizer steps an epoch)", start, patience,
             steps_per_epoch)
    return keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=patience, start_from_epoch=start)


def patience_epochs(patience: int, patience_steps: int, steps_per_epoch: int) -> int:
    """Early-stopping patience in epochs: `patience`, or more epochs when they hold fewer than `patience_steps` steps.

    Counted in epochs only, a 120-image folder (3 steps an epoch) stopped after 5 epochs, 15 steps: before
    its BatchNormalization statistics and its logits had left their start (issue 26).
    """
    return max(patience, math.ceil(patience_steps / max(1, steps_per_epoch)))


def balanced_class_weights(splits: data.DataSplits, threshold: float = 2.0) -> list[float] | None:
    """Per-class loss weights n / (C * n_c) when the largest class has over `threshold` times the smallest."""
    counts = [sum(f.label == i for f in splits.train) for i in range(len(splits.class_names))]
    if min(counts) == 0 or max(counts) <= threshold * min(counts):
        return None
    total = sum(counts)
    return [total / (len(counts) * count) for count in counts]


_SEARCH_IDENTITY = "search.json"


def _check_resumable(
    config: SearchConfig, splits: data.DataSplits, spec: ModelSpec, cluster: Cluster, epochs: int,
    *, recorded: Mapping[str, Any],
) -> None:
    """Refuse to resume a search that was run over other data, another search space or schedule.

    The record is written by the chief of group 0 (the one chief without groups); `recorded` values are
    kept for the oracle's report, not compared. The oracle checks nothing: it trains nothing, and its
    epochs (one replica) are not the groups'.
    """
    if cluster.is_oracle:
        return
    identity = {
        "epochs": epochs,
        "head_epochs": config.head_epochs,
        "batch_size": config.batch_size,
        "data_fingerprint": splits.fingerprint,
        "class_names": list(splits.class_names),
        "image_size": spec.image_size,
        "backbones": list(spec.backbones),
        "weights": spec.weights,
        "heads": list(spec.heads),
        "unfreeze_depths": list(spec.unfreeze_depths),
        "backbone_sizes": [list(pair) for pair in spec.backbone_sizes],
        "tuner": config.tuner,
    }
    path = config.model_run_dir / _SEARCH_IDENTITY
    if path.is_file() and not config.overwrite:
        previous = json.loads(path.read_text())
        changed = sorted(key for key in identity if previous.get(key) != identity[key])
        if changed:
            raise ConfigError(  # bad input (exit 2): a restart would meet the same run directory
                f"Expected {config.model_run_dir} to hold a search over the same data and search space, so that it "
                f"can resume. Received differences in: {', '.join(changed)}. Pass --overwrite to start afresh, or "
                f"another --model-name or --run-dir"
            )
    elif cluster.is_chief and cluster.group == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({**identity, **recorded}, indent=1) + "\n")
        temporary.replace(path)


_PUBLISHED = "published.json"


def _published_before(run_root: Path, best_trial: str, trials: int) -> ExportedModel | None:
    """The version a previous run of this very search exported (same best trial and trial count), if any."""
    try:
        record = json.loads((run_root / _PUBLISHED).read_text())
    except (OSError, ValueError):
        return None
    path = Path(record.get("path", ""))
    if record.get("best_trial") != best_trial or record.get("trials") != trials or not path.is_dir():
        return None
    return ExportedModel(int(record["version"]), path)


def _record_published(run_root: Path, exported: ExportedModel, best_trial: str, trials: int) -> None:
    temporary = run_root / f"{_PUBLISHED}.tmp"
    temporary.write_text(json.dumps({"version": exported.version, "path": str(exported.path),
                                     "best_trial": best_trial, "trials": trials}) + "\n")
    temporary.replace(run_root / _PUBLISHED)


def _predict(
    model: keras.Model, files: tuple[data.ImageFile, ...], size: tuple[int, int], batch: int, binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    if not files:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dataset = data.make_dataset(files, size, batch, training=False, seed=0, cache="none")  # one pass: no cache
    logits = model.predict(dataset, verbose=0)
    predictions = (logits[:, 0] > 0).astype(np.int64) if binary else np.argmax(logits, axis=-1)
    labels = np.array([f.label for f in files], dtype=np.int64)
    return labels, predictions


def _trial_rows(tuner: kt.Tuner) -> list[plots.TrialRow]:
    return [
        {"trial_id": t.trial_id, "status": t.status, "score": t.score,
         "hyperparameters": dict(t.hyperparameters.values)}
        for t in tuner.oracle.trials.values()
    ]


def _load_histories(root: Path) -> dict[str, Mapping[str, list[float]]]:
    histories: dict[str, Mapping[str, list[float]]] = {}
    if root.is_dir():
        for path in sorted(root.glob(f"trial_*/{_HISTORY_FILE}")):
            histories[path.parent.name] = json.loads(path.read_text())
    return histories


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "keras_tuner": kt.__version__}
    try:
        versions["tfstack"] = version("tfstack")
    except PackageNotFoundError:
        versions["tfstack"] = "unknown"
    return versions
