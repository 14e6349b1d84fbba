"""``bench/quality.py``: its folders are what its docstring claims, and a smoke run prints every row."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import quality  # noqa: E402  (bench/ is not a package)

_MODES = {"png-rgba": ("PNG", "RGBA"), "jpeg-rgb": ("JPEG", "RGB"), "jpeg-l": ("JPEG", "L"), "png-p": ("PNG", "P"),
          "png-16": ("PNG", "I;16"), "png-rgb": ("PNG", "RGB")}


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_the_matrix_covers_what_the_issue_asks() -> None:
    folders = quality.FOLDERS
    assert len(folders) >= 5
    assert {2, 5, 10, 30} <= {len(f.class_names) for f in folders}
    totals = [sum(f.counts) for f in folders]
    assert min(totals) == 100 and max(totals) == 5000
    assert min(f.sides[0] for f in folders) == 28 and max(f.sides[1] for f in folders) == 500
    assert {"png-rgba", "jpeg-rgb", "jpeg-l", "png-p", "png-16"} <= {f.fmt for f in folders}
    assert any(max(f.counts) == 10 * min(f.counts) for f in folders)
    assert {"shape", "texture", "colour"} <= {f.told_apart_by for f in folders}


@pytest.mark.parametrize("folder", [*quality.FOLDERS, quality.PRETRAIN], ids=lambda f: f.name)
def test_generated_folders_are_deterministic_and_in_the_stated_format(tmp_path: Path, folder: quality.Folder) -> None:
    first = quality.write_folder(folder, tmp_path / "a", scale=0.04)
    second = quality.write_folder(folder, tmp_path / "b", scale=0.04)
    assert _digest(first) == _digest(second)
    files = [p for p in sorted(first.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    assert sorted({p.parent.name for p in files}) == sorted(folder.class_names)
    for path in files[:: max(1, len(files) // 12)]:
        with Image.open(path) as image:
            assert (image.format, image.mode) == _MODES[folder.fmt], path
            assert image.size[0] == image.size[1] and folder.sides[0] <= image.size[0] <= folder.sides[1]


def test_classes_differ_only_by_the_stated_property() -> None:
    """Colour folders: the mean hue of a class differs; shape folders: the mean colour does not tell classes apart."""
    rng = np.random.default_rng(0)
    colours = np.array([[quality._coloured(label, 28, rng).reshape(-1, 3).mean(0) for _ in range(30)]
                        for label in range(5)])
    shapes = np.array([[quality._shape(kind, 64, rng).reshape(-1, 3).mean(0) for _ in range(60)]
                       for kind in ("disc", "square")])
    # Colour classes: their average colours lie far apart compared with the spread inside a class.
    assert np.linalg.norm(colours.mean(1)[0] - colours.mean(1)[2]) > 2 * colours[0].std(0).mean() / np.sqrt(30)
    # Shape classes: the average colour of discs and squares is the same within sampling noise.
    difference = np.abs(shapes[0].mean(0) - shapes[1].mean(0))
    assert np.all(difference < 4 * shapes.std(1).mean(0) / np.sqrt(60))


@pytest.mark.slow
def test_quality_bench_smoke_run_prints_every_row(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [sys.executable, "bench/quality.py", "--scale", "0.05", "--max-trials", "1", "--epochs", "2",
         "--pretrain-epochs", "1", "--pretrained-max-trials", "1", "--pretrained-epochs", "2",
         "--only", "shapes-2", "--only", "colours-5", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: the goal missed at these toy sizes
    rows = json.loads(out.read_text())
    assert [(r["folder"], r["method"]) for r in rows] == [
        (folder, method) for folder in ("shapes-2", "colours-5") for method in ("search", "plain CNN", "pretrained")
    ]
    assert all(0.0 <= r["accuracy"] <= 1.0 and not r["note"].startswith("failed") for r in rows), rows
    assert "| shapes-2 | plain CNN |" in result.stdout and "total wall time" in result.stdout


def test_small_folders_cover_what_issue_26_asks(tmp_path: Path) -> None:
    """Two and three classes, 30-60 images a class, held out in another style; written deterministically."""
    small = quality.SMALL_FOLDERS
    assert {2, 3} <= {len(f.class_names) for f in small}
    assert all(30 <= f.per_class <= 60 and f.train_style != f.heldout_style for f in small)
    assert not set(quality.TRAIN_FONTS) & set(quality.HELDOUT_FONTS)
    folder = small[0]
    first = quality.write_small_folder(folder, tmp_path / "a")
    second = quality.write_small_folder(folder, tmp_path / "b")
    assert [_digest(p) for p in first] == [_digest(p) for p in second]
    train, heldout = first
    for root, count in ((train, folder.per_class), (heldout, folder.heldout_per_class)):
        assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(folder.class_names)
        assert all(len(list((root / name).glob("*.png"))) == count for name in folder.class_names)
    # Same classes, another style: no held-out image is a copy of a training image.
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in train.rglob("*.png")}
    assert not digests & {hashlib.sha256(p.read_bytes()).hexdigest() for p in heldout.rglob("*.png")}


def test_small_verdict_flags_chance_and_a_shortfall_against_the_plain_cnn() -> None:
    def row(method: str, balanced: float, seed: int) -> quality.Row:
        return quality.Row("letters-2", method, balanced, balanced, 0.5, 0.5, 1.0, seed=seed)

    fine = [row("search", 0.86, 42), row("plain CNN", 0.80, 42), row("search", 0.80, 43), row("plain CNN", 0.84, 43)]
    assert quality.small_verdict(fine, 0.02) == []
    at_chance = [row("search", 0.50, 42), row("plain CNN", 0.60, 42), row("search", 0.95, 43),
                 row("plain CNN", 0.60, 43)]
    assert quality.small_verdict(at_chance, 0.02) == ["letters-2 seed 42: the default search is at chance "
                                                      "(balanced 0.500)"]
    below = [row("search", 0.70, 42), row("plain CNN", 0.80, 42)]
    assert "below the plain CNN" in quality.small_verdict(below, 0.02)[0]
    assert "0.700 ± 0.000" in quality.small_table(below)
