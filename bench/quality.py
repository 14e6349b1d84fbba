"""Search quality on a matrix of generated image folders: the default search vs a plain Keras CNN.

    .venv/bin/python bench/quality.py                       # the whole matrix (about 20 min on 2 cores)
    .venv/bin/python bench/quality.py --only shapes-2       # one folder
    .venv/bin/python bench/quality.py --scale 0.1 --max-trials 1 --epochs 2    # a smoke run

The benchmark writes its own folders (deterministic: numpy and Pillow, seeded per folder), each
with one property that makes it hard in its own way:

=============  =======  ======  =========  ========================  ============================
folder         classes  images  px         files                     told apart by
=============  =======  ======  =========  ========================  ============================
shapes-2       2        300     64-128     PNG RGBA                  shape only (disc vs square)
colours-5      5        100     28         JPEG RGB                  colour only (hue)
textures-10    10       1,000   400-500    JPEG greyscale            texture only (grating angle
                                                                     and frequency)
glyphs-30      30       5,000   32-40      PNG palette               shape only (letters, digits)
imbalanced-3   3        1,100   64         PNG 16-bit greyscale      shape, at 10:3:1 (1:10)
=============  =======  ======  =========  ========================  ============================

Colours, positions and sizes are random in every folder, so only the named property tells the
classes apart. A sixth folder, ``pretrain-8`` (8 classes of shapes and textures, 1,600 PNGs), is
only used to pretrain a backbone.

For each folder, in one run and on the same split (`trainer.scan.scan` with the search's defaults:
seed 42, 20% validation, 10% test):

1. ``search``: the default search as a user would run it offline,
   ``python -m trainer search --data DIR --weights none --max-trials N`` (a subprocess; its own
   held-out figures are read from the report's ``summary.json``);
2. ``plain CNN``: the Keras tutorials' CNN (Rescaling, Conv2D 32 / MaxPool / Conv2D 64 / MaxPool /
   Flatten / Dropout 0.5 / Dense softmax, Adam), trained on the same train split at the same input
   size for as many epochs as one search trial, keeping its best validation epoch;
3. ``pretrained``: the default search given ``--weights FILE``: a MobileNetV2 backbone (what
   ``--backbone auto`` picks with pretrained weights) that this benchmark first trains on
   ``pretrain-8``, so that the two-phase fine-tuning and the unfreeze-depth search have real
   features to transfer (``--image-size`` is fixed at `PRETRAIN_SIZE` to keep MobileNetV2 affordable
   on a CPU).

The table gives held-out (test split) accuracy, balanced accuracy (mean recall per class), the
chance level (majority-class share for accuracy; 1/C for balanced accuracy) and wall time.

Small folders (issue 26), ``--only letters-2`` etc.: a user's few dozen images a class, and a second
folder of the same classes in another style that neither the search nor the CNN ever sees:

==============  =======  =========  ======================  =====================
folder          classes  per class  trained on              held out
==============  =======  =========  ======================  =====================
letters-2       2        60         O, X in 4 sans fonts    4 serif fonts (60)
letters-3       3        40         L, O, X in 4 sans fonts 4 serif fonts (40)
shapes-3-small  3        30         shapes on flat colour   on a faint grating (40)
textures-2      2        40         smooth stripes, checks  hard-edged, finer (40)
==============  =======  =========  ======================  =====================

For each of ``--seeds`` seeds: the default search (``--weights none --max-trials 2 --seed S``; its
exported model is scored through its ``serving_default`` signature on the held-out folder's encoded
PNGs) and the plain CNN on the same split (`trainer.scan.scan` with seed S), scored on the same
images; the table gives the mean and spread over seeds of the held-out balanced accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

log = logging.getLogger("bench.quality")

SEED = 42
PRETRAIN_FOLDER = "pretrain-8"
PRETRAIN_SIZE = 64
"""Input size of the pretrained MobileNetV2 (its pretraining and the searches that fine-tune it)."""


# ------------------------------------------------------------------------------------------ folders


@dataclasses.dataclass(frozen=True)
class Folder:
    """One generated data set: `draw(label, side, rng)` returns an RGB uint8 image of class `label`."""

    name: str
    class_names: tuple[str, ...]
    counts: tuple[int, ...]
    sides: tuple[int, int]
    """Smallest and largest image side (square images, side drawn uniformly)."""
    fmt: str
    """File format and mode: "png-rgba", "jpeg-rgb", "jpeg-l", "png-p", "png-16", "png-rgb"."""
    told_apart_by: str
    draw: Callable[[int, int, np.random.Generator], np.ndarray]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]


def _contrasting(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two random colours whose grey levels differ by at least 80 (so a shape is visible in greyscale too)."""
    while True:
        a, b = _colour(rng), _colour(rng)
        if abs(sum(a) - sum(b)) / 3 >= 80:
            return a, b


def _noise(image: Image.Image, rng: np.random.Generator, amount: int = 12) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    pixels = pixels + rng.integers(-amount, amount + 1, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _shape(kind: str, side: int, rng: np.random.Generator, fill: tuple[int, int, int] | None = None,
           background: tuple[int, int, int] | None = None) -> np.ndarray:
    """A filled disc / square / triangle / ring / cross of random size and place on a plain background."""
    if fill is None or background is None:
        fill, background = _contrasting(rng)
    image = Image.new("RGB", (side, side), background)
    pen = ImageDraw.Draw(image)
    size = rng.uniform(0.35, 0.7) * side
    x0 = rng.uniform(0.05 * side, side - size - 0.05 * side)
    y0 = rng.uniform(0.05 * side, side - size - 0.05 * side)
    box = (x0, y0, x0 + size, y0 + size)
    width = max(2, int(size / 6))
    if kind == "disc":
        pen.ellipse(box, fill=fill)
    elif kind == "square":
        pen.rectangle(box, fill=fill)
    elif kind == "triangle":
        pen.polygon([(x0, y0 + size), (x0 + size, y0 + size), (x0 + size / 2, y0)], fill=fill)
    elif kind == "ring":
        pen.ellipse(box, outline=fill, width=width)
    elif kind == "cross":
        pen.rectangle((x0, y0 + size / 2 - width / 2, x0 + size, y0 + size / 2 + width / 2), fill=fill)
        pen.rectangle((x0 + size / 2 - width / 2, y0, x0 + size / 2 + width / 2, y0 + size), fill=fill)
    else:
        raise ValueError(kind)
    return _noise(image, rng)


def _grating(angle_deg: float, periods: float, side: int, rng: np.random.Generator) -> np.ndarray:
    """A sinusoidal grating: `periods` cycles across the image at `angle_deg`, random phase and colours."""
    a, b = (np.array(c, np.float32) for c in _contrasting(rng))
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    angle = math.radians(angle_deg + rng.uniform(-4, 4))
    wave = np.sin(2 * math.pi * periods * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 2 * math.pi))
    mix = (wave[..., None] + 1) / 2
    return _noise(Image.fromarray((a * mix + b * (1 - mix)).astype(np.uint8)), rng)


_HUES = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
         "purple": (150, 50, 180)}


def _coloured(label: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """Class = the hue of a random shape; the shape, its place and the grey background are random."""
    base = np.array(list(_HUES.values())[label], np.float32)
    fill = tuple(int(v) for v in np.clip(base + rng.normal(0, 18, 3), 0, 255))
    grey = int(rng.integers(20, 236))
    kind = ("disc", "square", "triangle")[int(rng.integers(0, 3))]
    return _shape(kind, side, rng, fill=fill, background=(grey, grey, grey))  # type: ignore[arg-type]


_TEXTURES = [(angle, periods) for periods in (6, 14) for angle in (0, 36, 72, 108, 144)]
_GLYPHS = "ABCDEFGHJKLMNPQRSTUVWXYZ234567"


def _glyph(label: int, side: int, rng: np.random.Generator) -> np.ndarray:
    fill, background = _contrasting(rng)
    image = Image.new("RGB", (side, side), background)
    font = ImageFont.load_default(size=int(side * rng.uniform(0.6, 0.8)))
    pen = ImageDraw.Draw(image)
    left, top, right, bottom = pen.textbbox((0, 0), _GLYPHS[label], font=font)
    x = rng.uniform(0, max(1.0, side - (right - left))) - left
    y = rng.uniform(0, max(1.0, side - (bottom - top))) - top
    pen.text((x, y), _GLYPHS[label], font=font, fill=fill)
    return _noise(image, rng, 8)


def _pretrain(label: int, side: int, rng: np.random.Generator) -> np.ndarray:
    if label < 4:
        return _shape(("disc", "square", "triangle", "cross")[label], side, rng)
    return _grating((0, 45, 90, 135)[label - 4], 8, side, rng)


FOLDERS: tuple[Folder, ...] = (
    Folder("shapes-2", ("disc", "square"), (150, 150), (64, 128), "png-rgba", "shape",
           lambda label, side, rng: _shape(("disc", "square")[label], side, rng)),
    Folder("colours-5", tuple(_HUES), (20,) * 5, (28, 28), "jpeg-rgb", "colour", _coloured),
    Folder("textures-10", tuple(f"a{a}-p{p}" for a, p in _TEXTURES), (100,) * 10, (400, 500), "jpeg-l", "texture",
           lambda label, side, rng: _grating(*_TEXTURES[label], side, rng)),
    Folder("glyphs-30", tuple(_GLYPHS), (167,) * 29 + (157,), (32, 40), "png-p", "shape",
           _glyph),
    Folder("imbalanced-3", ("ring", "cross", "triangle"), (800, 240, 80), (64, 64), "png-16", "shape, 1:10",
           lambda label, side, rng: _shape(("ring", "cross", "triangle")[label], side, rng)),
)
PRETRAIN = Folder(PRETRAIN_FOLDER, ("disc", "square", "triangle", "cross", "g0", "g45", "g90", "g135"), (200,) * 8,
                  (64, 64), "png-rgb", "shape, texture", _pretrain)


# Small folders (issue 26): a user's few dozen images a class, held-out images in another style.
# Fonts ship with matplotlib (a trainer dependency), so every machine renders the same pixels.
_FONT_DIR = Path(__import__("matplotlib").get_data_path()) / "fonts" / "ttf"
TRAIN_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Oblique.ttf")
HELDOUT_FONTS = ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "STIXGeneral.ttf", "cmss10.ttf")


@dataclasses.dataclass(frozen=True)
class SmallFolder:
    """A small training folder in one style and a held-out folder of the same classes in another."""

    name: str
    class_names: tuple[str, ...]
    per_class: int
    """Images a class in the training folder (the search splits it into train / val / test)."""
    heldout_per_class: int
    train_style: str
    heldout_style: str
    draw: Callable[[int, int, np.random.Generator, bool], np.ndarray]
    """`draw(label, side, rng, heldout)`: an RGB uint8 image in the training or the held-out style."""


def _letter(text: str, side: int, rng: np.random.Generator, fonts: tuple[str, ...]) -> np.ndarray:
    """`text` in a random one of `fonts`, random size, place and colours (ink darker than paper), pixel noise."""
    fill, background = sorted(_contrasting(rng), key=sum)
    image = Image.new("RGB", (side, side), background)
    font = ImageFont.truetype(str(_FONT_DIR / fonts[int(rng.integers(len(fonts)))]),
                              size=max(8, int(side * rng.uniform(0.7, 0.9))))
    pen = ImageDraw.Draw(image)
    left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
    x = rng.uniform(0, max(1.0, side - (right - left))) - left
    y = rng.uniform(0, max(1.0, side - (bottom - top))) - top
    pen.text((x, y), text, font=font, fill=fill)
    return _noise(image, rng, 8)


def _letters(letters: str) -> Callable[[int, int, np.random.Generator, bool], np.ndarray]:
    def draw(label: int, side: int, rng: np.random.Generator, heldout: bool) -> np.ndarray:
        return _letter(letters[label], side, rng, HELDOUT_FONTS if heldout else TRAIN_FONTS)
    return draw


def _small_shape(label: int, side: int, rng: np.random.Generator, heldout: bool) -> np.ndarray:
    """Shapes on plain backgrounds to train on; held out, on a faint grating (30% of the paper's colour)."""
    kind = ("disc", "square", "triangle")[label]
    if not heldout:
        return _shape(kind, side, rng)
    fill, background = _contrasting(rng)
    shape = _shape(kind, side, rng, fill=fill, background=background).astype(np.float32)
    grating = _grating(float(rng.uniform(0, 180)), 3, side, rng).astype(np.float32)
    paper = np.all(np.abs(shape - np.array(background, np.float32)) < 20, axis=-1, keepdims=True)
    mixed = np.where(paper, 0.7 * shape + 0.3 * grating, shape)
    return np.clip(mixed, 0, 255).astype(np.uint8)


def _small_texture(label: int, side: int, rng: np.random.Generator, heldout: bool) -> np.ndarray:
    """Stripes (one grating) or checks (two crossed at 90 degrees), 3-5 cycles, random angle and colours.

    Trained on smooth (sinusoidal) renderings; held out: hard-edged (square-wave) ones, finer (5-7 cycles).
    """
    a, b = (np.array(c, np.float32) for c in _contrasting(rng))
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    angle, periods = math.radians(rng.uniform(0, 180)), rng.uniform(5, 7) if heldout else rng.uniform(3, 5)
    wave = np.sin(2 * math.pi * periods * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 2 * math.pi))
    if label == 1:  # checks: the product of two orthogonal gratings
        wave = wave * np.sin(2 * math.pi * periods * (-xx * math.sin(angle) + yy * math.cos(angle))
                             + rng.uniform(0, 2 * math.pi))
    if heldout:
        wave = np.sign(wave)
    mix = (wave[..., None] + 1) / 2
    return _noise(Image.fromarray((a * mix + b * (1 - mix)).astype(np.uint8)), rng)


SMALL_FOLDERS: tuple[SmallFolder, ...] = (
    SmallFolder("letters-2", ("O", "X"), 60, 60, "sans-serif fonts", "serif fonts", _letters("OX")),
    SmallFolder("letters-3", ("L", "O", "X"), 40, 40, "sans-serif fonts", "serif fonts", _letters("LOX")),
    SmallFolder("shapes-3-small", ("disc", "square", "triangle"), 30, 40, "flat colours", "on a faint grating",
                _small_shape),
    SmallFolder("textures-2", ("stripes", "checks"), 40, 40, "smooth, 3-5 cycles", "hard-edged, 5-7 cycles",
                _small_texture),
)
SMALL_SIDES = (32, 40)


def write_small_folder(folder: SmallFolder, root: Path) -> tuple[Path, Path]:
    """Write `root/<name>/<class>/` (training style) and `root/<name>-heldout/<class>/` (held-out style)."""
    targets = (root / folder.name, root / f"{folder.name}-heldout")
    for target, heldout, count in zip(targets, (False, True), (folder.per_class, folder.heldout_per_class),
                                      strict=True):
        marker = target / ".complete.json"
        if marker.is_file():
            continue
        rng = np.random.default_rng(_stable_seed(target.name))
        for label, name in enumerate(folder.class_names):
            (target / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                side = int(rng.integers(SMALL_SIDES[0], SMALL_SIDES[1] + 1))
                _save(folder.draw(label, side, rng, heldout), target / name / f"{i:04d}", "png-rgb")
        marker.write_text("{}")
    return targets


def _save(pixels: np.ndarray, path: Path, fmt: str) -> Path:
    image = Image.fromarray(pixels)
    if fmt == "png-rgba":
        alpha = Image.new("L", image.size, 255)
        image.putalpha(alpha)
        path = path.with_suffix(".png")
        image.save(path)
    elif fmt == "jpeg-rgb":
        path = path.with_suffix(".jpg")
        image.save(path, quality=90)
    elif fmt == "jpeg-l":
        path = path.with_suffix(".jpeg")
        image.convert("L").save(path, quality=90)
    elif fmt == "png-p":
        path = path.with_suffix(".png")
        image.quantize(64, dither=Image.Dither.NONE).save(path)
    elif fmt == "png-16":
        path = path.with_suffix(".png")
        grey = np.asarray(image.convert("L"), np.uint16) * 257  # 0..255 -> 0..65535
        Image.fromarray(grey.astype(np.uint16)).save(path)  # mode I;16
    elif fmt == "png-rgb":
        path = path.with_suffix(".png")
        image.save(path)
    else:
        raise ValueError(fmt)
    return path


def write_folder(folder: Folder, root: Path, scale: float = 1.0) -> Path:
    """Write `folder` under `root/<name>/<class>/` (`scale` < 1 shrinks the image counts, at least 6 a class)."""
    target = root / folder.name
    marker = target / ".complete.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"scale": scale}:
        return target
    rng = np.random.default_rng(_stable_seed(folder.name))
    for label, (name, count) in enumerate(zip(folder.class_names, folder.counts, strict=True)):
        (target / name).mkdir(parents=True, exist_ok=True)
        for i in range(max(6, round(count * scale))):
            side = int(rng.integers(folder.sides[0], folder.sides[1] + 1))
            _save(folder.draw(label, side, rng), target / name / f"{i:04d}", folder.fmt)
    marker.write_text(json.dumps({"scale": scale}))
    return target


def _stable_seed(name: str) -> int:
    return SEED * 1000 + sum(ord(c) * 31**i for i, c in enumerate(name)) % 100_000


# ------------------------------------------------------------------------------------------ runs


@dataclasses.dataclass
class Row:
    folder: str
    method: str
    accuracy: float
    balanced: float
    chance: float
    balanced_chance: float
    seconds: float
    note: str = ""
    seed: int | None = None
    """Small-folder rows: the seed of the search (split, initialisation, oracle) and of the plain CNN."""


def _chance(splits: Any) -> tuple[float, float]:
    counts = np.bincount([f.label for f in splits.test], minlength=splits.num_classes)
    return float(counts.max() / counts.sum()), 1.0 / splits.num_classes


def _search_row(folder: str, method: str, chance: tuple[float, float], run: Callable[[], dict[str, Any]],
                note: Callable[[dict[str, Any]], str]) -> Row:
    """One search run as a table row; a failed run is a row too (NaN figures, the error as its note)."""
    started = time.perf_counter()
    try:
        summary = run()
    except RuntimeError as exc:
        log.warning("%s", exc)
        return Row(folder, method, math.nan, math.nan, *chance, time.perf_counter() - started,
                   f"failed: {str(exc).splitlines()[0]}")
    metrics = summary["metrics"]
    return Row(folder, method, metrics["test_accuracy"], metrics["test_balanced_accuracy"], *chance,
               time.perf_counter() - started, note(summary["hyperparameters"]))


def run_search(root: Path, work: Path, name: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """``python -m trainer search`` in a subprocess; returns its summary.json."""
    command = [sys.executable, "-m", "trainer", "search", "--data", str(root), "--model-name", name,
               "--run-dir", str(work / "runs"), "--export-base", str(work / "models"), "--overwrite",
               "--max-trials", str(args.max_trials), *(["--epochs", str(args.epochs)] if args.epochs else []),
               # the benchmark measures the search; the publish gate (which refuses chance-level models) would
               # keep a toy-sized run's figures out of the table
               "--publish", "always", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    (work / f"{name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise RuntimeError(f"search on {root} failed ({result.returncode}):\n{tail}")
    return json.loads((work / "runs" / name / "report" / "summary.json").read_text())


def plain_cnn(splits: Any, size: int, epochs: int, seed: int, test: Any = None) -> tuple[float, float]:
    """The Keras tutorials' CNN on the same split; returns held-out (accuracy, balanced accuracy) on `test`
    (image files; default the split's test files)."""
    import keras

    from trainer import pipeline

    keras.utils.set_random_seed(seed)
    x_train, y_train = pipeline.load_arrays(splits.train, (size, size))
    x_val, y_val = pipeline.load_arrays(splits.val, (size, size))
    x_test, y_test = pipeline.load_arrays(splits.test if test is None else test, (size, size))
    model = keras.Sequential([
        keras.Input((size, size, 3)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(splits.num_classes, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, validation_data=(x_val, y_val), verbose=0,
              callbacks=[keras.callbacks.EarlyStopping("val_accuracy", patience=epochs, restore_best_weights=True)])
    predicted = model.predict(x_test, verbose=0).argmax(-1)
    keras.backend.clear_session()
    return _scores(y_test, predicted, splits.num_classes)


def _scores(labels: np.ndarray, predicted: np.ndarray, classes: int) -> tuple[float, float]:
    recalls = [float(np.mean(predicted[labels == c] == c)) for c in range(classes) if np.any(labels == c)]
    return float(np.mean(predicted == labels)), float(np.mean(recalls))


def pretrain_backbone(root: Path, target: Path, epochs: int, seed: int) -> Path:
    """Train MobileNetV2 (from random weights, as the search builds it) on `root`; save its backbone weights."""
    import keras

    from trainer import pipeline, scan
    from trainer.hypermodel import BACKBONE_SPECS, _backbone

    keras.utils.set_random_seed(seed)
    splits = scan.scan(root, val_fraction=0.1, seed=seed)
    size = (PRETRAIN_SIZE, PRETRAIN_SIZE)
    train = pipeline.make_dataset(splits.train, size, 32, training=True, seed=seed)
    val = pipeline.make_dataset(splits.val, size, 32, training=False, seed=seed)
    spec = BACKBONE_SPECS["mobilenet_v2"]
    backbone = _backbone(spec, PRETRAIN_SIZE, "none", seed)
    inputs = keras.Input((*size, 3))
    x = keras.layers.Rescaling(spec.scale, spec.offset)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(backbone(x))
    model = keras.Model(inputs, keras.layers.Dense(splits.num_classes)(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(train, validation_data=val, epochs=epochs, verbose=0)
    log.warning("pretrained mobilenet_v2 on %s: val_accuracy %.3f after %d epochs", root.name,
                history.history["val_accuracy"][-1], epochs)
    backbone.save_weights(target)
    keras.backend.clear_session()
    return target


def bench(args: argparse.Namespace, scratch: Path) -> list[Row]:
    from trainer import scan
    from trainer.search_space import auto_epochs, auto_image_size

    rows: list[Row] = []
    folders = [f for f in FOLDERS if not args.only or f.name in args.only]
    weights_file: Path | None = None
    if args.pretrained:
        started = time.perf_counter()
        source = write_folder(PRETRAIN, scratch / "data", args.scale)
        weights_file = pretrain_backbone(source, scratch / "mobilenet_v2.weights.h5", args.pretrain_epochs, SEED)
        log.warning("pretraining took %.0f s", time.perf_counter() - started)
    for folder in folders:
        started = time.perf_counter()
        root = write_folder(folder, scratch / "data", args.scale)
        log.warning("%s: written in %.1f s", folder.name, time.perf_counter() - started)
        splits = scan.scan(root, val_fraction=0.2, test_fraction=0.1, seed=SEED)
        chance, balanced_chance = _chance(splits)
        work = scratch / "work" / folder.name
        work.mkdir(parents=True, exist_ok=True)

        rows.append(_search_row(folder.name, "search", (chance, balanced_chance),
                                functools.partial(run_search, root, work, "search", args, ["--weights", "none"]),
                                lambda hp: f"{hp['backbone']} {hp['head']}"))
        log.warning("%s", rows[-1])

        size = auto_image_size("small_cnn", scan.median_image_side(splits.train))
        epochs = args.epochs or auto_epochs(len(splits.train), 32)
        started = time.perf_counter()
        accuracy, balanced = plain_cnn(splits, size, epochs, SEED)
        rows.append(Row(folder.name, "plain CNN", accuracy, balanced, chance, balanced_chance,
                        time.perf_counter() - started, f"{size} px, {epochs} epochs"))
        log.warning("%s", rows[-1])

        if weights_file is not None:
            budget = argparse.Namespace(max_trials=args.pretrained_max_trials,
                                        epochs=args.pretrained_epochs or args.epochs)
            extra = ["--weights", str(weights_file), "--image-size", str(PRETRAIN_SIZE)]
            rows.append(_search_row(folder.name, "pretrained", (chance, balanced_chance),
                                    functools.partial(run_search, root, work, "pretrained", budget, extra),
                                    lambda hp: f"{hp['backbone']} {hp['head']} unfreeze {hp.get('unfreeze_depth')}"))
            log.warning("%s", rows[-1])
    return rows


def heldout_files(root: Path, class_names: tuple[str, ...]) -> list[Any]:
    """The held-out folder's images as `trainer.scan.ImageFile`s, labelled in `class_names` order."""
    from trainer.scan import ImageFile

    return [ImageFile(path, label) for label, name in enumerate(class_names)
            for path in sorted((root / name).glob("*.png"))]


def exported_scores(model_dir: Path, files: list[Any], class_names: tuple[str, ...]) -> tuple[float, float]:
    """(accuracy, balanced accuracy) of the newest exported version on encoded `files`, as a client sends them."""
    import tensorflow as tf

    version = max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    served = tf.saved_model.load(str(version))
    names = [n.decode() for n in served.serving_default(images=tf.constant([f.path.read_bytes() for f in files]))
             ["class_name"].numpy()]
    predicted = np.array([class_names.index(n) for n in names])
    return _scores(np.array([f.label for f in files]), predicted, len(class_names))


def _small_search(root: Path, work: Path, seed: int, heldout: list[Any], class_names: tuple[str, ...],
                  args: argparse.Namespace) -> dict[str, Any]:
    """The default search on a small folder; its summary with the held-out style's scores as test figures."""
    budget = argparse.Namespace(max_trials=args.small_max_trials, epochs=args.epochs)
    summary = run_search(root, work, "search", budget,
                         ["--weights", "none", "--seed", str(seed), *args.small_search_args])
    accuracy, balanced = exported_scores(work / "models" / "search", heldout, class_names)
    summary["metrics"].update(test_accuracy=accuracy, test_balanced_accuracy=balanced)
    return summary


def small_bench(args: argparse.Namespace, scratch: Path) -> list[Row]:
    """Small-folder rows: per seed, the default search and the plain CNN, both scored on the held-out style."""
    from trainer import scan
    from trainer.search_space import auto_epochs, auto_image_size

    rows: list[Row] = []
    for folder in [f for f in SMALL_FOLDERS if not args.only or f.name in args.only]:
        root, heldout_root = write_small_folder(folder, scratch / "data")
        class_names = tuple(sorted(folder.class_names))
        heldout = heldout_files(heldout_root, class_names)
        chance = (1.0 / len(class_names), 1.0 / len(class_names))  # balanced held-out folder
        for seed in range(SEED, SEED + args.seeds):
            work = scratch / "work" / folder.name / str(seed)
            work.mkdir(parents=True, exist_ok=True)

            search = functools.partial(_small_search, root, work, seed, heldout, class_names, args)
            rows.append(_search_row(folder.name, "search", chance, search,
                                    lambda hp: f"{hp['backbone']} {hp['head']}"))
            rows[-1].seed = seed
            log.warning("%s", rows[-1])
            splits = scan.scan(root, val_fraction=0.2, test_fraction=0.1, seed=seed)
            size = auto_image_size("small_cnn", scan.median_image_side(splits.train))
            epochs = args.epochs or auto_epochs(len(splits.train), 32)
            started = time.perf_counter()
            accuracy, balanced = plain_cnn(splits, size, epochs, seed, test=heldout)
            rows.append(Row(folder.name, "plain CNN", accuracy, balanced, *chance, time.perf_counter() - started,
                            f"{size} px, {epochs} epochs", seed))
            log.warning("%s", rows[-1])
    return rows


def small_table(rows: list[Row]) -> str:
    """Mean and spread over seeds of the held-out balanced accuracy, per small folder and method."""
    lines = ["| folder (held-out style) | method | balanced accuracy, mean ± sd | per seed | chance | wall s |",
             "|---|---|---|---|---|---|"]
    for (folder, method), group in _by_folder_method(rows).items():
        values = np.array([r.balanced for r in group])
        lines.append(f"| {folder} | {method} | {np.mean(values):.3f} ± {np.std(values):.3f} | "
                     f"{' '.join(f'{v:.2f}' for v in values)} | {group[0].balanced_chance:.3f} | "
                     f"{sum(r.seconds for r in group):.0f} |")
    return "\n".join(lines)


def _by_folder_method(rows: list[Row]) -> dict[tuple[str, str], list[Row]]:
    grouped: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        grouped.setdefault((row.folder, row.method), []).append(row)
    return grouped


def small_verdict(rows: list[Row], tolerance: float) -> list[str]:
    """Small folders: every seed of the search above chance; its mean not below the plain CNN's by `tolerance`."""
    problems = []
    grouped = _by_folder_method(rows)
    for (folder, method), group in grouped.items():
        if method != "search":
            continue
        for row in group:
            if not row.balanced > row.balanced_chance + 0.05:
                problems.append(f"{folder} seed {row.seed}: the default search is at chance "
                                f"(balanced {row.balanced:.3f})")
        search = float(np.mean([r.balanced for r in group]))
        cnn = float(np.mean([r.balanced for r in grouped.get((folder, "plain CNN"), [])] or [0.0]))
        if search < cnn - tolerance:
            problems.append(f"{folder}: the default search ({search:.3f}) is below the plain CNN ({cnn:.3f}) "
                            f"by more than {tolerance} (mean over seeds)")
    return problems


def table(rows: list[Row]) -> str:
    lines = ["| folder | method | test accuracy | balanced accuracy | chance (acc / bal) | wall s | chosen |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.folder} | {row.method} | {row.accuracy:.3f} | {row.balanced:.3f} | "
                     f"{row.chance:.3f} / {row.balanced_chance:.3f} | {row.seconds:.0f} | {row.note} |")
    return "\n".join(lines)


def verdict(rows: list[Row], tolerance: float) -> list[str]:
    """Where the default search falls short of the goal: at chance, or below the plain CNN."""
    problems = []
    by_folder: dict[str, dict[str, Row]] = {}
    for row in rows:
        by_folder.setdefault(row.folder, {})[row.method] = row
    for folder, methods in by_folder.items():
        search = methods["search"]
        if search.balanced <= search.balanced_chance + 0.05:
            problems.append(f"{folder}: the default search is at chance (balanced {search.balanced:.3f})")
        cnn = methods.get("plain CNN")
        if cnn is not None and search.balanced < cnn.balanced - tolerance:
            problems.append(f"{folder}: the default search ({search.balanced:.3f}) is below the plain CNN "
                            f"({cnn.balanced:.3f}) by more than {tolerance}")
    return problems


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=[f.name for f in (*FOLDERS, *SMALL_FOLDERS)],
                        help="run only this folder (repeatable)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each folder's images (default 1)")
    parser.add_argument("--max-trials", type=int, default=3, help="trials per search (default 3)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the search's own)")
    parser.add_argument("--pretrain-epochs", type=int, default=6, help="epochs of backbone pretraining (default 6)")
    parser.add_argument("--pretrained-max-trials", type=int, default=2,
                        help="trials per search with the pretrained backbone (default 2)")
    parser.add_argument("--pretrained-epochs", type=int, default=8,
                        help="epochs per trial with the pretrained backbone, head phase included (default 8)")
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                        help="skip the pretrained-backbone column")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="balanced-accuracy margin by which the search may trail the plain CNN (default 0.02)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per small folder (default 3)")
    parser.add_argument("--small-max-trials", type=int, default=2,
                        help="trials per search on the small folders (default 2, as in issue 26)")
    parser.add_argument("--small-search-args", type=str.split, default=[],
                        help="extra search flags for the small folders, one string (ablations: '--patience-steps 0')")
    parser.add_argument("--workdir", type=Path, default=None, help="keep folders and runs here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tfstack-quality-") as temporary:
        scratch = args.workdir or Path(temporary)
        rows = bench(args, scratch) if not args.only or set(args.only) & {f.name for f in FOLDERS} else []
        small = small_bench(args, scratch)
    if rows:
        print(table(rows))
    if small:
        print(small_table(small))
    print(f"total wall time: {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in rows + small], indent=1) + "\n")
    problems = verdict(rows, args.tolerance) + small_verdict(small, args.tolerance)
    for problem in problems:
        print(f"goal missed: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
