"""The hyperparameter search: data, tuner, distributed trials, report and export, end to end.

`run_search` is what ``python -m trainer search`` runs in every worker. All workers run the same
oracle with the same seed and train every trial together under the strategy from
`trainer.distribute`; before each trial they check that they agree on its hyperparameters. Only
the chief writes shared state (the tuner directory, checkpoints, TensorBoard logs, the report and
the export); other workers keep their tuner state in private scratch space, seeded from the
chief's so that a restarted worker resumes at the same trial.

A rerun with the same run directory resumes the search: finished trials are not repeated and a
trial that was running is retried, resuming from its last epoch checkpoint (``BackupAndRestore``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from trainer import data, distribute, plots
from trainer.cluster import Cluster
from trainer.config import HEADS, SearchConfig
from trainer.errors import SearchError, TrainerError
from trainer.export import ExportedModel, export_model
from trainer.hypermodel import BACKBONE_SPECS, ModelSpec, TransferHyperModel, fitting_heads, prepare_backbones
from trainer.progress import ProgressCallback, SearchMetrics

__all__ = [
    "SearchResult",
    "auto_epochs",
    "auto_image_size",
    "balanced_class_weights",
    "held_out_warnings",
    "make_tuner",
    "model_spec",
    "run_search",
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
    config: SearchConfig, num_classes: int, replicas: int = 1, *, median_side: int | None = None
) -> ModelSpec:
    """The fixed part of the search space for `config` and a data set of `num_classes`.

    `median_side` (the data's median image side in pixels) picks each backbone's input size when
    ``config.image_size`` is not set (`auto_image_size`); the model input is the largest of them.
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
        jit_compile=True if config.xla else "auto",
        backbone_sizes=tuple(sorted(sizes.items())),
    )


class _SearchHooks:
    """Mixed into a KerasTuner tuner: agreement check, per-trial backups, histories, progress lines."""

    # Prefixed: KerasTuner's tuners already own attributes such as `metrics`.
    tfstack_cluster: Cluster
    tfstack_strategy: tf.distribute.Strategy
    tfstack_metrics: SearchMetrics
    tfstack_backup_root: Path
    tfstack_history_root: Path | None

    def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_begin(trial)  # type: ignore[misc]
        values = json.dumps(trial.hyperparameters.values, sort_keys=True, default=str)
        if self.tfstack_cluster.num_workers > 1:
            distribute.assert_workers_agree(self.tfstack_strategy, values, f"trial {trial.trial_id} hyperparameters")
        self.tfstack_metrics.trial.set(len(self.oracle.trials))  # type: ignore[attr-defined]
        self.tfstack_metrics.epoch.set(0)

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> Any:
        trial_backup = self.tfstack_backup_root / f"trial_{trial.trial_id}"
        kwargs["backup"] = lambda phase: distribute.backup_and_restore(trial_backup / phase,
                                                                        writer=self.tfstack_cluster.is_chief)
        try:
            results = super().run_trial(trial, *args, **kwargs)  # type: ignore[misc]
        except _PEER_ERRORS as exc:
            # KerasTuner would record the trial as failed and move on, and the restarted job would never
            # retry it. Stop instead: the trial stays RUNNING in the tuner state, and a restarted job
            # (the launcher's --max-restarts, or Kubernetes) retries it from its last epoch backup.
            raise _TrialInterrupted(
                f"Lost contact with another worker during trial {trial.trial_id}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}. Restart the job to resume this trial."
            ) from exc
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


def _seed_scratch_from_shared(shared: Path, scratch: Path, project: str) -> None:
    """Copy the chief's tuner state into a worker's scratch dir, so a restarted worker resumes in step."""
    source = shared / project
    if source.is_dir() and not (scratch / project).exists():
        shutil.copytree(source, scratch / project, ignore=shutil.ignore_patterns("*.h5", "checkpoint*", "*.tmp"))


def run_search(
    config: SearchConfig,
    cluster: Cluster,
    *,
    metrics: SearchMetrics | None = None,
) -> SearchResult:
    """Scan the data, search, and (on the chief) write the report and export the best model."""
    started = dt.datetime.now(dt.timezone.utc)
    metrics = metrics or SearchMetrics()
    metrics.workers.set(cluster.num_workers)
    metrics.trials_planned.set(config.max_trials)

    root = config.data if config.data is not None else data.ensure_digits(config.run_dir / "embedded-digits")
    splits = data.scan(
        root, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed,
        strict=config.strict_data,
    )
    counts = {name: sum(f.label == i for f in splits.train) for i, name in enumerate(splits.class_names)}
    log.info(
        "data %s: %d classes, %d train / %d val / %d test images, %d skipped",
        root, len(splits.class_names), len(splits.train), len(splits.val), len(splits.test), len(splits.skipped),
    )

    accelerator = distribute.choose_accelerator(
        tf.config.list_physical_devices(), mixed_precision=config.mixed_precision, xla=config.xla
    )
    distribute.apply(accelerator)
    strategy = distribute.make_strategy(cluster, accelerator=accelerator)
    replicas = strategy.num_replicas_in_sync
    global_batch = data.global_batch_size(config.batch_size, replicas)
    spec = model_spec(config, len(splits.class_names), replicas, median_side=data.median_image_side(splits.train))
    log.info("search space: backbones %s at %s px, heads %s%s", ",".join(spec.backbones),
             dict(spec.backbone_sizes), ",".join(spec.heads),
             f", unfreeze depths {list(spec.unfreeze_depths)} (fractions of the backbone)"
             if spec.fine_tuned_backbones else "")
    epochs = config.epochs or auto_epochs(len(splits.train), global_batch)
    if config.epochs is None:
        steps = math.ceil(len(splits.train) / global_batch)
        log.info("epochs per trial: %d (%d optimizer steps at %d per epoch; --epochs sets it)", epochs, epochs * steps,
                 steps)
    class_weights = balanced_class_weights(splits)
    if class_weights is not None:
        log.info("classes are imbalanced (%s): weighting the loss by class %s", counts,
                 {name: round(w, 2) for name, w in zip(splits.class_names, class_weights, strict=True)})
    if spec.weights == "none" and any(BACKBONE_SPECS[b].factory is not None for b in spec.backbones):
        log.warning("training ImageNet architectures from random weights needs far more data and epochs than "
                    "fine-tuning; with %d training images prefer pretrained weights or the small_cnn backbone",
                    len(splits.train))
    _check_resumable(config, splits, spec, cluster)
    prepare_backbones(spec)
    size = (spec.image_size, spec.image_size)
    # Several workers must each run the same number of steps: pad to full global batches (weight 0).
    padded = cluster.num_workers > 1
    train_ds = data.make_dataset(splits.train, size, global_batch, training=True, seed=config.seed,
                                 pad_to_full_batches=padded, class_weights=class_weights)
    val_ds = data.make_dataset(splits.val, size, global_batch, training=False, seed=config.seed,
                               pad_to_full_batches=padded)

    hypermodel = TransferHyperModel(spec)
    run_root = config.model_run_dir
    with distribute.worker_dirs(run_root, cluster) as dirs:
        if not cluster.is_chief and not config.overwrite:
            _seed_scratch_from_shared(run_root / "tuner", dirs.tuner_dir, config.model_name)
        tuner = make_tuner(config, hypermodel, directory=dirs.tuner_dir, strategy=strategy, epochs=epochs)
        tuner.tfstack_cluster = cluster
        tuner.tfstack_strategy = strategy
        tuner.tfstack_metrics = metrics
        tuner.tfstack_backup_root = dirs.backup_dir
        tuner.tfstack_history_root = (run_root / "histories") if cluster.is_chief else None
        if config.overwrite and cluster.is_chief:
            shutil.rmtree(run_root / "histories", ignore_errors=True)
        already = sum(1 for t in tuner.oracle.trials.values() if t.status == "COMPLETED")
        if already:
            log.info("resuming the search in %s: %d trials already completed", dirs.tuner_dir, already)
        callbacks: list[keras.callbacks.Callback] = [
            # val_loss moves smoothly where val_accuracy jumps by whole images on small validation sets.
            keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=config.patience),
            ProgressCallback(metrics, global_batch),
            keras.callbacks.TensorBoard(log_dir=str(dirs.logs_dir), write_graph=False, profile_batch=0),
        ]
        try:
            tuner.search(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, verbose=2)
        except kt.errors.FatalError as exc:
            if isinstance(exc.__cause__, TrainerError):
                raise exc.__cause__ from None
            raise SearchError(f"The search stopped: {exc}") from exc
        best_trials = tuner.oracle.get_best_trials(1)
        if not best_trials or best_trials[0].score is None:
            raise SearchError(
                f"Expected at least one trial with a {OBJECTIVE}. "
                f"Received: {len(tuner.oracle.trials)} trials, none scored"
            )
        best = best_trials[0]
        checkpoint = Path(tuner._get_checkpoint_fname(best.trial_id))  # KerasTuner's own best-epoch weights
        trials = _trial_rows(tuner)

    if not cluster.is_chief:
        return SearchResult(dict(best.hyperparameters.values), float(best.score), None, len(splits.test),
                            len(trials), None, None)

    # The chief rebuilds the best model outside the strategy, restores its best epoch and evaluates it.
    keras.backend.clear_session()
    model = TransferHyperModel(dataclasses.replace(spec, learning_rate_scale=1.0)).build(best.hyperparameters)
    try:
        model.load_weights(checkpoint)
    except (ValueError, OSError) as exc:
        raise SearchError(f"Could not restore the best trial's weights from {checkpoint}: {exc}") from exc
    held_out = splits.test or splits.val
    labels, predictions = _predict(model, held_out, size, config.batch_size, spec.binary)
    accuracy = float(np.mean(labels == predictions)) if len(labels) else math.nan
    split_name = "test" if splits.test else "validation"
    matrix = plots.confusion_matrix(labels, predictions, len(splits.class_names))
    recall = {name: float(matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else math.nan
              for i, name in enumerate(splits.class_names)}
    balanced = float(np.nanmean(list(recall.values()))) if recall else math.nan
    log.info("best trial %s: %s=%.4f; %s accuracy %.4f (balanced %.4f) on %d held-out images", best.trial_id,
             OBJECTIVE, best.score, split_name, accuracy, balanced, len(labels))
    for warning in held_out_warnings(labels, accuracy, recall, float(best.score)):
        log.warning("%s", warning)

    report_dir = run_root / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    plots.write_trials_table(trials, report_dir)
    plots.write_curves(_load_histories(run_root / "histories"), report_dir / "curves.png")
    plots.write_confusion_matrix(matrix, splits.class_names, report_dir / "confusion_matrix.png",
                                 f"{config.model_name}: {split_name} accuracy {accuracy:.4f}")

    metadata = {
        "model_name": config.model_name,
        "class_names": list(splits.class_names),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "search_started_at": started.isoformat(),
        "hyperparameters": dict(best.hyperparameters.values),
        "metrics": {OBJECTIVE: float(best.score), f"{split_name}_accuracy": accuracy,
                    f"{split_name}_balanced_accuracy": balanced, f"{split_name}_recall_by_class": recall,
                    f"{split_name}_images": len(labels)},
        "data": {"root": str(root), "fingerprint": splits.fingerprint, "train_class_counts": counts,
                 "train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
                 "skipped": [str(p) for p, _ in splits.skipped]},
        "training": {"workers": cluster.num_workers, "replicas": replicas, "global_batch_size": global_batch,
                     "accelerator": dataclasses.asdict(accelerator) if dataclasses.is_dataclass(accelerator) else
                     str(accelerator), "trials": len(trials), "tuner": config.tuner},
        "config": config.to_dict(),
        "versions": _library_versions(),
    }
    warmup = [f.path.read_bytes() for f in held_out[:8]]
    exported = export_model(
        model, export_base=config.export_base, model_name=config.model_name, class_names=splits.class_names,
        image_size=spec.image_size, metadata=metadata, warmup_images=warmup,
    )
    (report_dir / "held_out.json").write_text(json.dumps(
        [{"path": str(f.path.resolve()), "label": f.label} for f in held_out], indent=1) + "\n")
    (report_dir / "summary.json").write_text(json.dumps({**metadata, "export": str(exported.path)}, indent=2,
                                                        default=str) + "\n")
    return SearchResult(dict(best.hyperparameters.values), float(best.score), accuracy, len(labels), len(trials),
                        exported, report_dir, model, recall)


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
    """Epochs for about `steps` optimizer steps, within [10, 60]: small data sets need more epochs."""
    steps_per_epoch = max(1, math.ceil(train_images / global_batch))
    return int(min(60, max(10, math.ceil(steps / steps_per_epoch))))


def balanced_class_weights(splits: data.DataSplits, threshold: float = 2.0) -> list[float] | None:
    """Per-class loss weights n / (C * n_c) when the largest class has over `threshold` times the smallest."""
    counts = [sum(f.label == i for f in splits.train) for i in range(len(splits.class_names))]
    if min(counts) == 0 or max(counts) <= threshold * min(counts):
        return None
    total = sum(counts)
    return [total / (len(counts) * count) for count in counts]


_SEARCH_IDENTITY = "search.json"


def _check_resumable(config: SearchConfig, splits: data.DataSplits, spec: ModelSpec, cluster: Cluster) -> None:
    """Refuse to resume a search that was run over other data or another search space."""
    identity = {
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
        recorded = json.loads(path.read_text())
        changed = sorted(key for key in identity if recorded.get(key) != identity[key])
        if changed:
            raise SearchError(
                f"Expected {config.model_run_dir} to hold a search over the same data and search space, so that it "
                f"can resume. Received differences in: {', '.join(changed)}. Pass --overwrite to start afresh, or "
                f"another --model-name or --run-dir"
            )
    elif cluster.is_chief:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(identity, indent=1) + "\n")
        temporary.replace(path)


def _predict(
    model: keras.Model, files: tuple[data.ImageFile, ...], size: tuple[int, int], batch: int, binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    if not files:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dataset = data.make_dataset(files, size, batch, training=False, seed=0)
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
