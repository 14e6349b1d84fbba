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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from trainer import distribute, pipeline, plots, preemption, prepared, run_record, scan, scan_manifest
from trainer.accelerator import xla_on
from trainer.atomic import write_atomic
from trainer.cluster import Cluster
from trainer.config import SearchConfig
from trainer.errors import ConfigError, SearchError, TrainerError
from trainer.export import ExportedModel, stage_export
from trainer.hypermodel import (
    BACKBONE_SPECS,
    ModelSpec,
    TransferHyperModel,
    find_backbone,
    prepare_backbones,
)
from trainer.progress import ProgressCallback, SearchMetrics
from trainer.publish import Decision, gate_and_publish
from trainer.search_space import (
    BATCH_SIZE,
    MIN_EPOCH_STEPS,
    auto_batch_size,
    auto_epochs,
    balanced_class_weights,
    early_stopping,
    model_spec,
)
from trainer.steps import steps_per_epoch
from trainer.tuner import OBJECTIVE, make_tuner, seed_scratch_from_shared, trial_rows
from trainer.watchdog import StallWatchdog

__all__ = [
    "Evaluation",
    "SearchOutcome",
    "SearchPlan",
    "SearchResult",
    "evaluate_best",
    "held_out_warnings",
    "plan_search",
    "publish",
    "run_search",
    "scan_data",
    "search_trials",
]

log = logging.getLogger(__name__)


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


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """What every worker searches with: the data, the strategy, the fixed search space and the datasets."""

    root: Path
    splits: scan.DataSplits
    accelerator: distribute.Accelerator
    strategy: tf.distribute.Strategy
    spec: ModelSpec
    epochs: int
    global_batch: int
    train: tf.data.Dataset | tf.distribute.DistributedDataset
    """One pipeline per worker over its shard (`trainer.pipeline.distributed_dataset`); a plain Dataset in one process.
    Repeated: ``spec.steps_per_epoch`` steps make an epoch."""
    val: tf.data.Dataset | tf.distribute.DistributedDataset


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
    held_out: tuple[scan.ImageFile, ...]
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
    root, splits = scan_data(config, cluster)
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


def scan_data(config: SearchConfig, cluster: Cluster | None = None) -> tuple[Path, scan.DataSplits]:
    """Stage 1: the image folder (or the embedded digits), scanned and split; unreadable files reported.

    Scanned once: the process that publishes (`cluster` None: this one) scans and shares the result through
    a manifest in the prepared store; every other worker reads it (`trainer.scan_manifest`).
    """
    root = config.data if config.data is not None else scan.ensure_digits(config.run_dir / "embedded-digits")
    splits = scan_manifest.shared_scan(
        root, config.prepared_store, scans=cluster is None or cluster.publishes, timeout=config.prepare_timeout,
        val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed,
        strict=config.strict_data,
    )
    log.info(
        "data %s: %d classes, %d train / %d val / %d test images, %d skipped",
        root, len(splits.class_names), len(splits.train), len(splits.val), len(splits.test), len(splits.skipped),
    )
    return root, splits


def plan_search(config: SearchConfig, cluster: Cluster, root: Path, splits: scan.DataSplits) -> SearchPlan:
    """Stage 2: accelerator, strategy (the group forms here), search space, epochs and datasets."""
    accelerator = distribute.choose_accelerator(
        tf.config.list_physical_devices(), mixed_precision=config.mixed_precision, xla=config.xla
    )
    distribute.apply(accelerator)
    strategy = distribute.make_strategy(cluster, accelerator=accelerator,
                                        formation_timeout=config.cluster_formation_timeout)
    replicas = strategy.num_replicas_in_sync
    per_replica = auto_batch_size(config.batch_size, len(splits.train), replicas)
    if config.batch_size is None and per_replica != BATCH_SIZE:
        log.info("batch size: %d a replica, not %d: %d training images would make fewer than %d steps an epoch "
                 "(--batch-size sets it)", per_replica, BATCH_SIZE, len(splits.train), MIN_EPOCH_STEPS)
    config = dataclasses.replace(config, batch_size=per_replica)  # the batch in use, for the spec and the run record
    global_batch = pipeline.global_batch_size(per_replica, replicas)
    train_steps = steps_per_epoch(len(splits.train), global_batch)
    val_steps = steps_per_epoch(len(splits.val), global_batch)
    spec = model_spec(config, len(splits.class_names), replicas, accelerator.policy,
                      median_side=scan.median_image_side(splits.train), steps=(train_steps, val_steps),
                      workers=cluster.num_workers, xla=xla_on(accelerator, cluster.num_workers),
                      smallest_class=min(splits.counts("train").values()))
    log.info("step: %d per execution, BatchNormalization %s, XLA %s", spec.steps_per_execution,
             "synchronized across replicas" if spec.sync_batchnorm else "per replica",
             "on (jit_compile=True)" if spec.jit_compile is True else "off")
    log.info("search space: backbones %s at %s px, heads %s%s; augmentation %s", ",".join(spec.backbones),
             dict(spec.backbone_sizes), ",".join(spec.heads),
             f", unfreeze depths {list(spec.unfreeze_depths)} (fractions of the backbone)"
             if spec.fine_tuned_backbones else "", dict(spec.augmentation) or "off")
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
    run_record.check_resumable(config, splits, spec, cluster, epochs,
                     recorded={"replicas": replicas, "global_batch_size": global_batch})
    prepare_backbones(spec)
    size = (spec.image_size, spec.image_size)
    cache = _choose_cache(config, cluster, splits, size, global_batch)
    # Each worker reads and decodes only its shard (trainer.pipeline.distributed_dataset). Several workers must
    # each run the same number of steps: the lists are padded to full global batches (weight 0). Training
    # repeats, with fit's steps_per_epoch: one iterator per fit, no per-step end-of-data all-reduce. Validation
    # stays one finite pass: Keras opens a new iterator per pass anyway, and a pass cut at validation_steps
    # would never complete its memory cache (decoding the split again every epoch).
    padded = cluster.num_workers > 1
    if config.prepare:  # every worker reads its block of the prepared records (trainer.prepared): no decoding
        records = prepared.for_search(splits, size, config.prepared_store, writes=cluster.publishes,
                                      seed=config.seed, timeout=config.prepare_timeout)
        train = prepared.distributed_dataset(strategy, records, "train", global_batch, training=True,
                                             seed=config.seed, cache=cache, pad_to_full_batches=padded,
                                             class_weights=class_weights, repeat=True)
        val = prepared.distributed_dataset(strategy, records, "val", global_batch, training=False, seed=config.seed,
                                           cache=cache, pad_to_full_batches=padded)
        return SearchPlan(root, splits, accelerator, strategy, spec, epochs, global_batch, train, val)
    train = pipeline.distributed_dataset(strategy, splits.train, size, global_batch, training=True, seed=config.seed,
                                     cache=cache, pad_to_full_batches=padded, class_weights=class_weights,
                                     name="train", fingerprint=splits.fingerprint, repeat=True)
    val = pipeline.distributed_dataset(strategy, splits.val, size, global_batch, training=False, seed=config.seed,
                                   cache=cache, pad_to_full_batches=padded, name="val", fingerprint=splits.fingerprint)
    return SearchPlan(root, splits, accelerator, strategy, spec, epochs, global_batch, train, val)


def _choose_cache(config: SearchConfig, cluster: Cluster, splits: scan.DataSplits, size: tuple[int, int],
                  global_batch: int) -> str:
    """``--cache`` resolved for this worker's shards of train and val (logged with the numbers behind it)."""
    workers = cluster.num_workers
    images = sum(math.ceil(len(files) / global_batch) * global_batch // workers if workers > 1 else len(files)
                 for files in (splits.train, splits.val))
    needed = pipeline.decoded_bytes(images, size)
    available = pipeline.available_memory() if config.cache == "auto" else None
    cache = pipeline.choose_cache(config.cache, needed, available)
    gib = 1 << 30
    if config.cache == "auto":
        budget = pipeline.memory_cache_budget(available)
        log.info("cache: %s (auto): this worker's %d decoded images take %.2f GiB; memory budget %.2f GiB = "
                 "min(%.0f GiB, %.0f%% of %s available)%s", cache, images, needed / gib, budget / gib,
                 pipeline.MEMORY_CACHE_CAP_BYTES / gib, 100 * pipeline.MEMORY_CACHE_FRACTION,
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
        run_record.clear_run(run_root)
    # With peers, a worker that makes no progress for --collective-timeout exits 4 (trainer.watchdog).
    watchdog = StallWatchdog(config.collective_timeout if cluster.num_workers > 1 else 0)
    with distribute.worker_dirs(run_root, cluster) as dirs:
        tuner = _search_tuner(config, cluster, plan, metrics, dirs, watchdog)
        callbacks: list[keras.callbacks.Callback] = [
            # val_loss moves smoothly where val_accuracy jumps by whole images on small validation sets.
            early_stopping(config, math.ceil(len(plan.splits.train) / plan.global_batch)),
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
        run_record.clear_run(run_root)  # before the port opens: no group writes before it has a trial
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
    return SearchOutcome(best, checkpoint, trial_rows(tuner))


def _search_tuner(config: SearchConfig, cluster: Cluster, plan: SearchPlan, metrics: SearchMetrics,
                  dirs: distribute.WorkerDirs, watchdog: StallWatchdog) -> kt.Tuner:
    """The tuner with this worker's directories and the hooks `_SearchHooks` reads."""
    run_root = config.model_run_dir
    grouped = cluster.groups > 1
    if not cluster.is_chief and not config.overwrite and not grouped:
        seed_scratch_from_shared(run_root / "tuner", dirs.tuner_dir, config.model_name,
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
    labels, predictions = _predict(model, held_out, size, plan.global_batch, spec.binary)
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

    A finished search that is run again publishes nothing new: `published_before` finds the version
    this very search (same best trial, same trial count) already published.
    """
    run_root = config.model_run_dir
    report_dir = run_root / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    plots.write_trials_table(outcome.trials, report_dir)
    plots.write_curves(run_record.load_histories(run_root / "histories"), report_dir / "curves.png")
    plots.write_confusion_matrix(evaluation.matrix, plan.splits.class_names, report_dir / "confusion_matrix.png",
                                 f"{config.model_name}: {evaluation.split_name} accuracy {evaluation.accuracy:.4f}")
    metadata = _metadata(config, cluster, plan, outcome, evaluation, started)
    best, held_out = outcome.best, evaluation.held_out
    decision: Decision | None = None
    exported = run_record.published_before(run_root, best.trial_id, len(outcome.trials))
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
            run_record.record_published(run_root, exported, best.trial_id, len(outcome.trials))
    write_atomic(report_dir / "held_out.json", json.dumps(
        [{"path": str(f.path.resolve()), "label": f.label} for f in held_out], indent=1) + "\n")
    write_atomic(report_dir / "summary.json", json.dumps(
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
        "data": {"root": str(plan.root), "fingerprint": splits.fingerprint,
                 "train_class_counts": splits.counts("train"),
                 "train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
                 "skipped": [str(p) for p, _ in splits.skipped]},
        "training": {**_training_shape(config, cluster, plan), "accelerator": dataclasses.asdict(plan.accelerator),
                     "trials": len(outcome.trials), "tuner": config.tuner,
                     # What the model was really built under (the policy is applied per build: see hypermodel).
                     "dtype_policy": model.dtype_policy.name,
                     "compute_dtype": find_backbone(model).dtype_policy.compute_dtype},
        "config": config.to_dict(),
        "versions": run_record.library_versions(),
    }
def _training_shape(config: SearchConfig, cluster: Cluster, plan: SearchPlan) -> dict[str, Any]:
    """Groups, workers, replicas and global batch of the trials: on the oracle, as group 0's chief recorded them."""
    if not cluster.is_oracle:
        return {"groups": 1, "workers": cluster.num_workers, "replicas": plan.strategy.num_replicas_in_sync,
                "global_batch_size": plan.global_batch}
    recorded = run_record.read_identity(config.model_run_dir)
    return {"groups": cluster.groups, "workers": None, "replicas": recorded.get("replicas"),
            "global_batch_size": recorded.get("global_batch_size")}


def _record_decision(decision: Decision, metrics: SearchMetrics, report_dir: Path) -> None:
    """The publish gate's decision as metrics and as ``report/publish.json``."""
    metrics.published.set(1 if decision.publish else 0)
    for name, score in (("candidate", decision.candidate), ("current", decision.current)):
        if score is not None:
            metrics.held_out.labels(name).set(score.balanced_accuracy)
    write_atomic(report_dir / "publish.json", json.dumps(decision.to_dict(), indent=2) + "\n")


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


def _predict(
    model: keras.Model, files: tuple[scan.ImageFile, ...], size: tuple[int, int], batch: int, binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    if not files:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dataset = pipeline.make_dataset(files, size, batch, training=False, seed=0, cache="none")  # one pass: no cache
    logits = model.predict(dataset, verbose=0)
    predictions = (logits[:, 0] > 0).astype(np.int64) if binary else np.argmax(logits, axis=-1)
    labels = np.array([f.label for f in files], dtype=np.int64)
    return labels, predictions


