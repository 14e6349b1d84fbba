"""The trainer's data set: image-folder scan, seeded split, fingerprint, the embedded digits.

Layouts (detected automatically, class names sorted, labels ``0..C-1`` in that order)::

    root/<class>/**/<image>                         one folder per class: a seeded, stratified
                                                    train / val (/ test) split is drawn per class
    root/{train,val[,test]}/<class>/**/<image>      explicit splits; each must hold the same classes

Images are ``.jpg .jpeg .png .bmp .gif`` (any case); names starting with ``.`` are ignored.

`scan` runs before any TensorFlow work and never imports TensorFlow (nor does importing this
module). It opens every candidate with Pillow (verify, then a cheap load: JPEGs are decoded at
1/8 scale) and also rejects what Pillow reads but ``tf.io.decode_image`` would not (TIFF or WebP
renamed ``.png``, palette or 1-bit BMPs). Bad files are skipped and listed by path in
`DataSplits.skipped` (default) or, with ``strict=True``, fail the scan. A missing folder, a
folder without class sub-folders, a single class, an empty class folder or explicit splits
with different classes raise `DataError` naming the path.

`DataSplits.fingerprint` is a SHA-256 over (split, relative path, size, content digest, class)
of every file used, plus the split seed and fractions: stable across copies of the folder,
different as soon as one used file is added, removed, moved or edited.

The embedded default data set (`ensure_digits`) is scikit-learn's ``load_digits``: 1,797 real
8x8 scans, values 0..16 scaled to 0..255 (bright strokes on a dark background, as stored),
upscaled x4 to 32x32 by nearest neighbour (each source pixel becomes a 4x4 block, no invented
values; the model resizes further as its backbone needs), written as RGB PNGs in ``0/``..``9/``.
"""


from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import logging
import math
import os
import random
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from trainer.errors import ConfigError, DataError

if TYPE_CHECKING:
    pass


__all__ = [
    "DIGITS_IMAGE_SIZE",
    "DIGITS_MARKER",
    "IMAGE_EXTENSIONS",
    "DataSplits",
    "ImageFile",
    "ensure_digits",
    "median_image_side",
    "scan",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png"})
"""File extensions (lower case) `scan` treats as images; anything else is reported and skipped."""

DIGITS_IMAGE_SIZE = 32
"""Height and width of the embedded digits written by `ensure_digits`."""

DIGITS_MARKER = ".tfstack-digits.json"
"""Written last into the embedded digits folder; a folder without it is never used."""

_SPLIT_FOLDERS = ("train", "val", "test")
_TF_FORMATS = frozenset({"BMP", "GIF", "JPEG", "MPO", "PNG"})  # what tf.io.decode_image reads (MPO is JPEG)
_FINGERPRINT_VERSION = 1
_DIGITS_FORMAT = 1


@dataclass(frozen=True)
class ImageFile:
    """One usable image and its class index."""

    path: Path
    label: int


@dataclass(frozen=True)
class DataSplits:
    """What `scan` found: the classes, the files of each split, and what was skipped."""

    class_names: tuple[str, ...]
    train: tuple[ImageFile, ...]
    val: tuple[ImageFile, ...]
    test: tuple[ImageFile, ...]
    skipped: tuple[tuple[Path, str], ...]
    """(path, reason) of every unreadable or non-image file left out."""
    fingerprint: str
    """Hex SHA-256 of the files used, their split and class, and the split settings."""
    root: Path
    explicit: bool = False
    """True when the folder had explicit ``train/`` ``val/`` (``test/``) split folders."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self, split: str) -> dict[str, int]:
        """Images per class name in ``train``, ``val`` or ``test``."""
        files: tuple[ImageFile, ...] = getattr(self, split)
        return {name: sum(f.label == i for f in files) for i, name in enumerate(self.class_names)}


# --------------------------------------------------------------------------------------------- scan


def scan(
    root: Path | str,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 42,
    strict: bool = False,
) -> DataSplits:
    """List, verify and split the image folder `root` (no TensorFlow involved).

    Without explicit split folders, each class is split on its own (stratified): its files,
    sorted by path, are shuffled by ``random.Random(f"{seed}:{class}")``, and
    ``round(n * val_fraction)`` (at least 1) go to val, ``round(n * test_fraction)`` (at least
    1 when the fraction is positive) to test, the rest to train. With explicit folders the
    fractions are not used.
    """
    root = Path(root)
    _check_fractions(val_fraction, test_fraction)
    if not root.exists():
        raise DataError(f"Expected an existing image folder. Received: root={root} (no such file or folder)")
    if not root.is_dir():
        raise DataError(f"Expected an image folder with one sub-folder per class. Received: root={root} (a file)")

    explicit = _explicit_layout(root)
    # (split or "" for "to be split", class folders) per part of the folder.
    parts: list[tuple[str, dict[str, Path]]]
    if explicit:
        parts = [(name, _class_dirs(root / name)) for name in _SPLIT_FOLDERS if (root / name).is_dir()]
        _check_same_classes(root, parts)
    else:
        parts = [("", _class_dirs(root))]
    class_names = tuple(sorted(parts[0][1]))
    labels = {name: i for i, name in enumerate(class_names)}

    candidates: list[tuple[str, str, Path]] = []  # (split, class, path)
    for split, classes in parts:
        for name in class_names:
            files = _list_files(classes[name])
            if not files:
                raise DataError(
                    f"Expected at least one file in every class folder. Received: empty class folder {classes[name]}"
                )
            candidates.extend((split, name, path) for path in files)

    checks = _check_files([path for _, _, path in candidates])
    skipped = tuple((path, reason) for (_, _, path), (reason, _, _) in zip(candidates, checks, strict=True) if reason)
    if skipped and strict:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in skipped)
        raise DataError(
            f"Expected only readable images under {root} (strict mode). Received: {len(skipped)} bad file(s):\n"
            f"{listing}"
        )

    usable: dict[tuple[str, str], list[tuple[Path, int, str]]] = {}
    for (split, name, path), (reason, size, digest) in zip(candidates, checks, strict=True):
        if not reason:
            usable.setdefault((split, name), []).append((path, size, digest))
    for split, classes in parts:
        for name in class_names:
            if (split, name) not in usable:
                raise DataError(
                    f"Expected at least one readable image in every class folder. "
                    f"Received: none in {classes[name]} (all skipped: see the log)"
                )

    assigned: dict[str, list[tuple[Path, int, str, str]]] = {"train": [], "val": [], "test": []}
    for (split, name), files in sorted(usable.items()):
        if split:
            assigned[split].extend((p, s, d, name) for p, s, d in files)
            continue
        for target, chosen in _split_class(files, name, parts[0][1][name], val_fraction, test_fraction, seed):
            assigned[target].extend((p, s, d, name) for p, s, d in chosen)

    fingerprint = _fingerprint(root, assigned, class_names, seed, val_fraction, test_fraction, explicit)
    splits = DataSplits(
        class_names=class_names,
        **{
            split: tuple(ImageFile(p, labels[name]) for p, _, _, name in sorted(files, key=lambda f: (f[3], f[0])))
            for split, files in assigned.items()
        },
        skipped=skipped,
        fingerprint=fingerprint,
        root=root,
        explicit=explicit,
    )
    if skipped:
        shown = "; ".join(f"{path} ({reason})" for path, reason in skipped[:10])
        more = f"; ... {len(skipped) - 10} more" if len(skipped) > 10 else ""
        log.warning("skipped %d unreadable or non-image file(s) under %s: %s%s", len(skipped), root, shown, more)
    log.info(
        "scanned %s (%s): %d classes, %d train / %d val / %d test images",
        root, "explicit splits" if explicit else f"split with seed {seed}", len(class_names),
        len(splits.train), len(splits.val), len(splits.test),
    )
    return splits


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"Expected 0 < val_fraction < 1. Received: val_fraction={val_fraction}")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"Expected 0 <= test_fraction < 1. Received: test_fraction={test_fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            "Expected val_fraction + test_fraction < 1, to leave images for training. "
            f"Received: val_fraction={val_fraction}, test_fraction={test_fraction}"
        )


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir())


def _explicit_layout(root: Path) -> bool:
    names = {p.name for p in _visible_dirs(root)}
    if {"train", "val"} <= names:
        extra = sorted(names - set(_SPLIT_FOLDERS))
        if extra:
            raise DataError(
                f"Expected only train/, val/ and test/ next to each other in {root} (explicit splits). "
                f"Received: also {extra}"
            )
        return True
    if names and names <= set(_SPLIT_FOLDERS):
        raise DataError(
            f"Expected both train/ and val/ split folders in {root} (test/ is optional). "
            f"Received: only {sorted(names)}"
        )
    return False


def _class_dirs(folder: Path) -> dict[str, Path]:
    dirs = _visible_dirs(folder)
    if not dirs:
        raise DataError(
            f"Expected one sub-folder per class in {folder}. Received: no sub-folders "
            f"({sum(1 for p in folder.iterdir() if not p.name.startswith('.'))} other entries)"
        )
    if len(dirs) < 2:
        raise DataError(
            f"Expected at least 2 class sub-folders in {folder}. Received: 1 ({dirs[0].name!r})"
        )
    return {p.name: p for p in dirs}


def _check_same_classes(root: Path, parts: list[tuple[str, dict[str, Path]]]) -> None:
    reference_split, reference = parts[0]
    for split, classes in parts[1:]:
        if set(classes) != set(reference):
            raise DataError(
                f"Expected the same class folders in every split folder of {root}. Received: "
                f"{root / reference_split} has {sorted(reference)}, {root / split} has {sorted(classes)} "
                f"(only in {reference_split}: {sorted(set(reference) - set(classes))}, "
                f"only in {split}: {sorted(set(classes) - set(reference))})"
            )


def _list_files(folder: Path) -> list[Path]:
    found: list[Path] = []
    visited: set[str] = set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in visited:  # a symlink loop, or two links to one folder: list it once
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(current) / name for name in sorted(files) if not name.startswith("."))
    return found


def _check_files(paths: Sequence[Path]) -> list[tuple[str, int, str]]:
    """(reason or "", size, content digest) per path; Pillow releases the GIL while decoding."""
    workers = max(1, min(8, os.cpu_count() or 1))
    if len(paths) < 64 or workers == 1:
        return [_check_file(p) for p in paths]
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="tfstack-scan") as pool:
        return list(pool.map(_check_file, paths, chunksize=32))


def _check_file(path: Path) -> tuple[str, int, str]:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return (
            f"not an image file (extension {path.suffix or 'none'!r}; expected one of {sorted(IMAGE_EXTENSIONS)})",
            0,
            "",
        )
    try:
        content = path.read_bytes()
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}", 0, ""
    if not content:
        return "empty file", 0, ""
    reason = _image_problem(content)
    return reason, len(content), "" if reason else hashlib.sha256(content).hexdigest()


def _image_problem(content: bytes) -> str:
    try:
        with Image.open(io.BytesIO(content)) as image:
            fmt = image.format
            image.verify()
        if fmt not in _TF_FORMATS:
            return f"{fmt} image; tf.io.decode_image reads only JPEG, PNG, BMP and GIF"
        if fmt == "BMP" and (problem := _bmp_problem(content)):
            return problem
        with Image.open(io.BytesIO(content)) as image:
            if fmt in ("JPEG", "MPO"):
                image.draft(image.mode, (1, 1))  # DCT-domain downscale: reads every byte, decodes 1/64
            image.load()
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, struct.error...)
        return f"not a readable image: {type(exc).__name__}: {exc}"
    return ""


def _bmp_problem(content: bytes) -> str:
    """tf.io.decode_bmp reads uncompressed 8 (grayscale), 24 and 32-bit BMPs only."""
    (header_size,) = struct.unpack_from("<I", content, 14)
    if header_size == 12:  # OS/2 core header
        (bits,) = struct.unpack_from("<H", content, 24)
        compression = 0
    else:
        bits, compression = struct.unpack_from("<HI", content, 28)
    if bits not in (8, 24, 32) or compression not in (0, 3):
        return f"BMP with {bits}-bit pixels, compression {compression}; tf.io.decode_image reads 8/24/32-bit only"
    if bits == 8:
        with Image.open(io.BytesIO(content)) as image:
            if image.mode != "L":  # Pillow reports a gray-ramp palette as "L"; TF ignores palettes
                return "palette BMP; tf.io.decode_image reads the palette indices as gray levels"
    return ""


def _split_class(
    files: list[tuple[Path, int, str]],
    name: str,
    folder: Path,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> list[tuple[str, list[tuple[Path, int, str]]]]:
    n = len(files)
    n_val = max(1, math.floor(n * val_fraction + 0.5))
    n_test = max(1, math.floor(n * test_fraction + 0.5)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise DataError(
            f"Expected at least {n_val + n_test + 1} readable images in class folder {folder} to split it into "
            f"train/val{'/test' if n_test else ''}. Received: {n}"
        )
    order = sorted(files, key=lambda f: f[0].as_posix())
    random.Random(f"{seed}:{name}").shuffle(order)
    return [("val", order[:n_val]), ("test", order[n_val : n_val + n_test]), ("train", order[n_val + n_test :])]


def _fingerprint(
    root: Path,
    assigned: dict[str, list[tuple[Path, int, str, str]]],
    class_names: tuple[str, ...],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    explicit: bool,
) -> str:
    record = {
        "version": _FINGERPRINT_VERSION,
        "explicit": explicit,
        "seed": seed,
        "val_fraction": None if explicit else val_fraction,
        "test_fraction": None if explicit else test_fraction,
        "classes": list(class_names),
        "files": sorted(
            [split, path.relative_to(root).as_posix(), size, digest, name]
            for split, files in assigned.items()
            for path, size, digest, name in files
        ),
    }
    return hashlib.sha256(json.dumps(record, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------------------------ embedded digits


def ensure_digits(root: Path | str) -> Path:
    """Write scikit-learn's digits as ``root/<digit>/<index>.png`` once, atomically; return `root`.

    The folder is built under a hidden temporary name next to `root` and renamed into place with
    `DIGITS_MARKER` already inside, so a half-written folder is never seen. A second call (or a
    second worker racing on a shared volume) finds the marker and returns at once.
    """
    root = Path(root)
    if (root / DIGITS_MARKER).is_file():
        return root
    if root.exists():
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        else:
            raise DataError(
                f"Expected {root} to be absent or the embedded digits folder (with {DIGITS_MARKER}). "
                f"Received: a {'folder' if root.is_dir() else 'file'} without the marker; remove it or choose "
                "another path"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        count = _write_digits(staging)
        try:
            os.rename(staging, root)
        except OSError:
            if (root / DIGITS_MARKER).is_file():  # another process got there first
                return root
            raise
        log.info("wrote the embedded digits data set (%d images) to %s", count, root)
        return root
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_digits(folder: Path) -> int:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # (N, 8, 8)
    scale = DIGITS_IMAGE_SIZE // pixels.shape[1]
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    rgb = np.repeat(pixels[..., None], 3, axis=-1)
    for label in range(10):
        (folder / str(label)).mkdir()
    for index, (image, label) in enumerate(zip(rgb, digits.target, strict=True)):
        Image.fromarray(image, "RGB").save(folder / str(int(label)) / f"{index:04d}.png")
    marker = {
        "format": _DIGITS_FORMAT,
        "source": "sklearn.datasets.load_digits",
        "images": len(rgb),
        "size": [DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE],
        "upscale": "nearest",
    }
    (folder / DIGITS_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    return len(rgb)


def median_image_side(files: Sequence[ImageFile], sample: int = 200) -> int | None:
    """The median of min(width, height) over up to `sample` of `files` (evenly spaced), from headers only."""
    if not files:
        return None
    step = max(1, len(files) // sample)
    sides = []
    for f in list(files)[::step][:sample]:
        try:
            with Image.open(f.path) as image:
                sides.append(min(image.size))
        except OSError:
            continue
    return int(np.median(sides)) if sides else None
