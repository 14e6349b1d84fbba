"""What a search keeps in its run directory besides the tuner's state: identity, publication, histories.

``search.json`` (`check_resumable`) records what the search ran over, so a rerun over other data or
another search space is refused instead of resumed; ``published.json`` (`record_published`) the
version a finished search exported, so a rerun does not export it again; ``histories/trial_*/``
the per-epoch metrics of every trial for the report's curves. Every file is written with
`trainer.atomic.write_atomic`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import tensorflow as tf

from trainer import scan
from trainer.atomic import write_atomic
from trainer.cluster import Cluster
from trainer.config import SearchConfig
from trainer.errors import ConfigError
from trainer.export import ExportedModel
from trainer.hypermodel import ModelSpec

__all__ = ["check_resumable", "clear_run", "library_versions", "load_histories", "published_before", "read_identity",
           "record_published", "write_history"]

_HISTORY_FILE = "history.json"


def write_history(root: Path, trial_id: str, history: Mapping[str, list[float]]) -> None:
    """One trial's per-epoch metrics (all its phases, in order) as ``root/trial_<id>/history.json``."""
    write_atomic(root / f"trial_{trial_id}" / _HISTORY_FILE, json.dumps(history))


_SEARCH_IDENTITY = "search.json"



def check_resumable(
    config: SearchConfig, splits: scan.DataSplits, spec: ModelSpec, cluster: Cluster, epochs: int,
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
        write_atomic(path, json.dumps({**identity, **recorded}, indent=1) + "\n")



def read_identity(model_run_dir: Path) -> dict[str, Any]:
    """The recorded ``search.json`` of `model_run_dir` ({} when there is none or it is unreadable)."""
    try:
        return json.loads((model_run_dir / _SEARCH_IDENTITY).read_text())
    except (OSError, ValueError):
        return {}


def clear_run(run_root: Path) -> None:
    """What --overwrite removes besides the tuner state: histories, backups and the published record."""
    for stale in ("histories", "backup"):
        shutil.rmtree(run_root / stale, ignore_errors=True)
    (run_root / _PUBLISHED).unlink(missing_ok=True)


_PUBLISHED = "published.json"



def published_before(run_root: Path, best_trial: str, trials: int) -> ExportedModel | None:
    """The version a previous run of this very search exported (same best trial and trial count), if any."""
    try:
        record = json.loads((run_root / _PUBLISHED).read_text())
    except (OSError, ValueError):
        return None
    path = Path(record.get("path", ""))
    if record.get("best_trial") != best_trial or record.get("trials") != trials or not path.is_dir():
        return None
    return ExportedModel(int(record["version"]), path)



def record_published(run_root: Path, exported: ExportedModel, best_trial: str, trials: int) -> None:
    write_atomic(run_root / _PUBLISHED, json.dumps({"version": exported.version, "path": str(exported.path),
                                                    "best_trial": best_trial, "trials": trials}) + "\n")



def load_histories(root: Path) -> dict[str, Mapping[str, list[float]]]:
    histories: dict[str, Mapping[str, list[float]]] = {}
    if root.is_dir():
        for path in sorted(root.glob(f"trial_*/{_HISTORY_FILE}")):
            histories[path.parent.name] = json.loads(path.read_text())
    return histories



def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "keras_tuner": kt.__version__}
    try:
        versions["tfstack"] = version("tfstack")
    except PackageNotFoundError:
        versions["tfstack"] = "unknown"
    return versions

