"""Issue 26: the default search on a small binary folder beats chance on held-out images in another style."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import quality  # noqa: E402  (bench/ is not a package; its small folders are the benchmark's rows)


@pytest.mark.slow
def test_default_search_on_a_120_image_binary_folder_beats_chance_on_other_fonts(tmp_path: Path) -> None:
    """120 images of O and X in sans-serif fonts; held out: 120 in serif fonts the search never sees.

    As the issue's user ran it (``--weights none``, every other setting at its default, the publish gate
    included: before the fix both of the user's two trials stopped after ~20 steps at chance, and the gate
    refused the model with exit 3), but with one trial instead of two, to keep the slow suite's budget (two
    trials took 111 s of CPU time): the defaults under test (patience and minimum in steps, epochs, split,
    augmentation) shape each trial, not the number of trials. On one core, as a CI runner gives it.
    """
    folder = next(f for f in quality.SMALL_FOLDERS if f.name == "letters-2")
    assert len(folder.class_names) == 2 and folder.per_class == 60
    root, heldout_root = quality.write_small_folder(folder, tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "search", "--data", str(root), "--weights", "none", "--max-trials", "1",
         "--run-dir", str(tmp_path / "runs"), "--export-base", str(tmp_path / "models")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,  # generous: shared CI runners
    )
    assert result.returncode == 0, result.stderr[-3000:]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"search CPU time: {usage.ru_utime + usage.ru_stime:.0f} s")  # what one free core needs (-s shows it)

    (version,) = (tmp_path / "models" / "letters-2").iterdir()
    served = tf.saved_model.load(str(version))
    names, labels = [], []
    for name in sorted(folder.class_names):
        files = sorted((heldout_root / name).glob("*.png"))
        output = served.serving_default(images=tf.constant([p.read_bytes() for p in files]))
        names.extend(n.decode() for n in output["class_name"].numpy())
        labels.extend([name] * len(files))
    predicted, truth = np.array(names), np.array(labels)
    recalls = [float(np.mean(predicted[truth == name] == name)) for name in sorted(folder.class_names)]
    print(f"held-out recall by class: {recalls}, balanced {np.mean(recalls):.3f}")
    # Chance is 0.5 (a balanced held-out folder); one class for everything also scores 0.5.
    assert np.mean(recalls) >= 0.7, (recalls, result.stderr[-2000:])
    assert min(recalls) >= 0.4, recalls
