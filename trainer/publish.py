"""The publish gate: nothing reaches the shared volume unless it loads, serves and is not worse.

TF Serving hot-swaps to every new version directory it sees, so a version is a release. Between
`trainer.export.stage_export` (a hidden staging directory) and `trainer.export.publish_staged` (the
atomic rename), the chief runs the gate:

1. **It stands on its own**: ``python -m trainer.verify`` loads the staged export in a fresh process,
   as TF Serving's loader does, checks the contract's signatures, replays its warm-up records and
   scores ``serving_default`` on the held-out image files (the bytes a client would send).
2. **It is better than chance**: its balanced accuracy (mean recall over classes, so a majority-class
   model of imbalanced data scores 1/C) must exceed ``1/C + CHANCE_MARGIN``.
3. **It is not worse than what is served**: the current version is the highest all-digit directory
   (what TF Serving's default ``latest`` policy serves). When its metadata records the same data
   fingerprint, its recorded held-out balanced accuracy is the same measurement on the same test split
   and is compared directly; otherwise (other data, or a record without the figure) the current version
   is scored in the same fresh process on today's held-out files, so both are measured on one split.
   When the class names differ the two models answer different questions and cannot be compared: the
   candidate is published (the log says so). A candidate worse than the current version by more than
   ``tolerance`` is not published.

``policy="always"`` (``--publish always``) skips 2 and 3, never 1: a model that does not load is never
published. The decision, both figures and the reason are logged, written to the report
(``publish.json``) and exported as metrics; a refused candidate makes ``python -m trainer search`` exit
with the trainer's "not published" status.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.export import METADATA_FILE, ExportedModel, discard_staged, existing_versions, publish_staged

__all__ = ["CHANCE_MARGIN", "POLICIES", "Decision", "Score", "decide", "gate_and_publish"]

log = logging.getLogger(__name__)

POLICIES = ("better", "always")
CHANCE_MARGIN = 0.05
"""How far above 1/C a candidate's held-out balanced accuracy must be to count as better than chance."""
_VERIFY_TIMEOUT_SECONDS = 900


@dataclasses.dataclass(frozen=True)
class Score:
    """A model's held-out figures."""

    accuracy: float
    balanced_accuracy: float
    images: int


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the gate decided, and why."""

    publish: bool
    reason: str
    candidate: Score | None
    current_version: int | None = None
    current: Score | None = None
    basis: str = "none"
    """How the current version was scored: ``recorded`` (same data), ``rescored`` (today's split), or ``none``."""
    version: int | None = None
    """The version the candidate was published as."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def decide(
    candidate: Score,
    *,
    num_classes: int,
    current_version: int | None,
    current: Score | None,
    basis: str,
    policy: str = "better",
    tolerance: float = 0.02,
    classes_changed: bool = False,
) -> Decision:
    """The gate's rules 2 and 3 (see the module docstring) on already measured scores."""
    common = {"candidate": candidate, "current_version": current_version, "current": current, "basis": basis}
    if policy == "always":
        return Decision(True, "--publish always", **common)
    chance = 1.0 / num_classes
    if math.isnan(candidate.balanced_accuracy) or candidate.balanced_accuracy <= chance + CHANCE_MARGIN:
        return Decision(
            False,
            f"held-out balanced accuracy {candidate.balanced_accuracy:.4f} is no better than chance "
            f"(1/{num_classes} = {chance:.4f}, margin {CHANCE_MARGIN})",
            **common,
        )
    if current_version is None:
        return Decision(True, "no version is published yet", **common)
    if classes_changed:
        return Decision(True, f"version {current_version} has other class names: not comparable", **common)
    if current is None or math.isnan(current.balanced_accuracy):
        return Decision(True, f"version {current_version} has no comparable held-out figure", **common)
    if candidate.balanced_accuracy < current.balanced_accuracy - tolerance:
        return Decision(
            False,
            f"worse than version {current_version}: held-out balanced accuracy {candidate.balanced_accuracy:.4f} "
            f"vs {current.balanced_accuracy:.4f} ({basis}; tolerance {tolerance})",
            **common,
        )
    return Decision(
        True,
        f"not worse than version {current_version}: {candidate.balanced_accuracy:.4f} vs "
        f"{current.balanced_accuracy:.4f} ({basis}; tolerance {tolerance})",
        **common,
    )


def _current(model_dir: Path) -> tuple[int, Path, dict[str, Any]] | None:
    versions = existing_versions(model_dir)
    if not versions:
        return None
    path = model_dir / str(versions[-1])
    try:
        metadata = json.loads((path / "assets.extra" / METADATA_FILE).read_text())
    except (OSError, ValueError):
        metadata = {}
    return versions[-1], path, metadata if isinstance(metadata, dict) else {}


def _recorded_score(metadata: Mapping[str, Any]) -> Score | None:
    """The held-out figures a version's metadata records (test split, or validation without one)."""
    metrics = metadata.get("metrics", {})
    for split in ("test", "validation"):
        try:
            return Score(float(metrics[f"{split}_accuracy"]), float(metrics[f"{split}_balanced_accuracy"]),
                         int(metrics[f"{split}_images"]))
        except (KeyError, TypeError, ValueError):
            continue
    return None


def _verify(exports: list[tuple[Path, bool]], held_out: Sequence[tuple[Path, int]]) -> list[dict[str, Any]]:
    """Run ``python -m trainer.verify`` on `exports` ((path, replay warm-up) pairs); its results in order."""
    request = {"exports": [{"path": str(path), "replay_warmup": replay} for path, replay in exports],
               "held_out": [{"path": str(path), "label": label} for path, label in held_out]}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)  # the verifier is no cluster member
    try:
        done = subprocess.run([sys.executable, "-m", "trainer.verify"], input=json.dumps(request), text=True,
                              capture_output=True, timeout=_VERIFY_TIMEOUT_SECONDS, env=env)
    except subprocess.TimeoutExpired:
        return [{"error": f"verification did not finish within {_VERIFY_TIMEOUT_SECONDS}s"}]
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if done.returncode != 0 or "results" not in answer:
        detail = answer.get("error") or (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [{"error": detail}]
    results: list[dict[str, Any]] = answer["results"]
    return results


def gate_and_publish(
    staging: Path,
    *,
    held_out: Sequence[tuple[Path, int]],
    class_names: Sequence[str],
    fingerprint: str,
    policy: str = "better",
    tolerance: float = 0.02,
) -> tuple[Decision, ExportedModel | None]:
    """Run the gate on a staged export and publish it if it passes (else discard it)."""
    model_dir = staging.parent
    current = _current(model_dir)
    recorded = None
    classes_changed = False
    exports = [(staging, True)]
    if current is not None:
        _version, path, metadata = current
        classes_changed = list(metadata.get("class_names", [])) != list(class_names)
        if metadata.get("data", {}).get("fingerprint") == fingerprint:
            recorded = _recorded_score(metadata)
        if recorded is None and not classes_changed and policy != "always":
            exports.append((path, False))  # score the served version on today's held-out files
    results = _verify(exports, held_out)
    if "error" in results[0]:
        discard_staged(staging)
        decision = Decision(False, f"the staged export failed verification: {results[0]['error']}", None,
                            current[0] if current else None)
        _log(decision)
        return decision, None
    candidate = Score(results[0]["accuracy"], results[0]["balanced_accuracy"], results[0]["images"])
    basis, current_score = "none", recorded
    if recorded is not None:
        basis = "recorded"
    elif len(results) > 1 and "error" not in results[1]:
        basis = "rescored"
        current_score = Score(results[1]["accuracy"], results[1]["balanced_accuracy"], results[1]["images"])
    decision = decide(candidate, num_classes=len(class_names), current_version=current[0] if current else None,
                      current=current_score, basis=basis, policy=policy, tolerance=tolerance,
                      classes_changed=classes_changed)
    exported = None
    if decision.publish:
        exported = publish_staged(staging)
        decision = dataclasses.replace(decision, version=exported.version)
    else:
        discard_staged(staging)
    _log(decision)
    return decision, exported


def _log(decision: Decision) -> None:
    if decision.publish:
        log.info("publish gate: published version %s (%s)", decision.version, decision.reason)
    else:
        log.warning("publish gate: NOT published (%s)", decision.reason)
