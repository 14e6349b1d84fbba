"""Upstream artefacts that tests compare against, beside the checkout in ``shared/upstream/``.

Files copied from upstream repositories (TF Serving's test SavedModels, the JobSet and TFJob CRDs) are
not committed to this repository: the workplace keeps fetched material out of the developers' commits
and lets only the steering side place data files, under its ``shared/`` folder, which every checkout
and CI clone has beside it. Layout: ``shared/upstream/<upstream path>``, e.g.
``shared/upstream/tensorflow_serving/servables/tensorflow/testdata/saved_model_half_plus_two_cpu/`` and
``shared/upstream/crds/jobset.x-k8s.io_jobsets.yaml``. Tests that need one call :func:`require`; until
the file is there they are skipped with a reason that names it (docs/deploy.md and
docs/model_server.md list them), while the rest of the suite checks everything else against our own
reproductions and upstream's documented expectations.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: ``UPSTREAM_ARTEFACTS`` points elsewhere, for a developer who keeps the files outside ``shared/``.
SHARED_UPSTREAM = Path(os.environ.get("UPSTREAM_ARTEFACTS") or ROOT.parent / "shared" / "upstream")


def find(*parts: str) -> Path | None:
    """``shared/upstream/<parts...>`` when present, else None."""
    path = SHARED_UPSTREAM.joinpath(*parts)
    return path if path.exists() else None


def require(*parts: str) -> Path:
    """``shared/upstream/<parts...>``, or skip the calling test saying which upstream file it needs."""
    path = find(*parts)
    if path is None:
        pytest.skip(f"needs the upstream artefact shared/upstream/{'/'.join(parts)} (see tests/upstream.py)")
    return path


#: TF Serving's test SavedModels: ``shared/upstream/tensorflow_serving/servables/tensorflow/testdata/<name>``.
TF_SERVING_TESTDATA = ("tensorflow_serving", "servables", "tensorflow", "testdata")


def tf_serving_testdata(name: str, *parts: str) -> Path:
    """One of TF Serving's own test models (``saved_model_half_plus_two_cpu``, ...), or skip naming it."""
    return require(*TF_SERVING_TESTDATA, name, *parts)
