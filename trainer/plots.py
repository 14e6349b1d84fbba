"""The run report: training curves, a confusion matrix, and a table of trials.

Written by the chief under ``<run-dir>/<model-name>/report/``: ``curves.png`` (per-trial training and
validation accuracy by epoch), ``confusion_matrix.png`` (the exported model on the held-out split),
``trials.csv`` and ``trials.md`` (every trial's hyperparameters, status and objective, best first).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TrialRow", "confusion_matrix", "write_confusion_matrix", "write_curves", "write_trials_table"]

TrialRow = Mapping[str, Any]
"""One trial: ``trial_id``, ``status``, ``score`` (or None), ``hyperparameters`` (a mapping)."""


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]``."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def write_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path, title: str) -> Path:
    plt = _pyplot()
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_curves(histories: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> Path:
    """One line per trial for accuracy (dashed) and val_accuracy (solid)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for trial_id, history in sorted(histories.items()):
        for key, style in (("accuracy", "--"), ("val_accuracy", "-")):
            values = history.get(key, [])
            if values:
                left.plot(range(1, len(values) + 1), values, style, label=f"{trial_id} {key}")
        losses = history.get("val_loss", [])
        if losses:
            right.plot(range(1, len(losses) + 1), losses, label=f"{trial_id}")
    left.set_xlabel("epoch")
    left.set_ylabel("accuracy")
    left.set_title("training (dashed) and validation (solid) accuracy")
    right.set_xlabel("epoch")
    right.set_ylabel("val_loss")
    right.set_title("validation loss")
    if histories:
        left.legend(fontsize=6, ncol=2)
        right.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_trials_table(rows: Sequence[TrialRow], directory: Path) -> tuple[Path, Path]:
    """``trials.csv`` and ``trials.md``, best score first (unscored trials last)."""
    ordered = sorted(rows, key=lambda r: -r["score"] if _finite(r.get("score")) else math.inf)
    names = sorted({name for row in ordered for name in row["hyperparameters"]})
    header = ["rank", "trial_id", "status", "val_accuracy", *names]
    table = [
        [str(rank), str(row["trial_id"]), str(row["status"]),
         f"{row['score']:.4f}" if _finite(row.get("score")) else "",
         *(_cell(row["hyperparameters"].get(name)) for name in names)]
        for rank, row in enumerate(ordered, start=1)
    ]
    csv_path, md_path = directory / "trials.csv", directory / "trials.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
