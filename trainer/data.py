"""The trainer's input: image-folder scan, seeded split, tf.data pipelines and the embedded digits.

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

Pipelines decode with `decode_image`, the same function the exported ``serving_default``
signature runs: ``tf.io.decode_image(channels=3, expand_animations=False)`` (grayscale and RGBA
become RGB, a GIF gives its first frame), bilinear resize with antialiasing to ``(H, W)``, rounded
to whole 0..255 values. Elements are kept and batched as uint8 (a quarter of float32's bytes, to
cache and to copy to the device): the model's float32 ``Input`` casts them inside the compiled step
(Keras converts inputs to the Input's dtype), and per-backbone preprocessing lives inside the model
too. Labels are int32 class indices (sparse); binary data sets give 0/1.

Sharding (`distributed_dataset`, what the search trains on): files are sharded per worker *before*
decoding. ``strategy.distribute_datasets_from_function`` calls the pipeline function once per worker
with its ``InputContext``; `shard_files` (pure Python) pads the file list to a whole number of global
batches (copies of its first images, sample weight 0; always with several workers, so every shard
has the same length and every worker runs ``ceil(len(files) / global_batch)`` steps), permutes it
with the seed for training, and gives worker ``i`` every N-th entry from ``i``: a static, disjoint,
deterministic partition that every worker computes alike. Each worker then reads, decodes and caches
only its shard, reshuffles it each epoch with the seed, and batches it by the per-replica batch. One
process gets one pipeline over all files (a plain ``tf.data.Dataset`` of global batches), as does
`make_dataset`, which `model.predict` users and the benches call directly. Before, every worker
decoded every file, built the global batch, cast it to float32 and kept 1/N of it (DATA
auto-sharding: a list of file names has no file reader to shard by FILE); `make_dataset` still sets
that policy for callers that hand its single pipeline to ``experimental_distribute_dataset``.

Cache (`--cache`, resolved by `choose_cache`): ``memory`` decodes once and shuffles the cached
tensors; ``none`` shuffles file names before decoding, so no pixels wait in a buffer; a directory
is a tf.data file cache per split and shard (`_disk_cache_prefix`: named by a digest of the
shard's files, labels and weights, the data fingerprint (or each file's size and mtime), image
size and seed; held by an ``flock`` for the process's life, so a ``.lockfile`` left by a killed
writer is recognised as stale and its partial files are removed; tf.data writes the ``.index``
that makes a cache complete only at the end of a full pass), shuffled within
`DISK_SHUFFLE_BUFFER_BYTES` after the first epoch. All three give the same batches while the
shard fits that buffer. ``auto`` is ``memory`` when this worker's decoded shards fit
`memory_cache_budget` (min(`MEMORY_CACHE_CAP_BYTES`, `MEMORY_CACHE_FRACTION` of
`available_memory`, which honours cgroup limits)), else ``none``. A memory or file cache belongs
to the data set, so the iterators Keras opens for each ``fit`` (every epoch, phase and trial)
reuse it.

Augmentation is built by `augmentation` as Keras preprocessing layers for the *model* to
include (the hypermodel does the same from its spec): inside the model they run on the
accelerator, are inactive at inference, so validation and export stay clean, and the cached
pipeline does not have to be re-augmented per epoch by the CPU. A horizontal flip turns digits
into other shapes, so every layer can be switched off; the embedded digits use rotation and zoom
only.

The embedded default data set (`ensure_digits`) is scikit-learn's ``load_digits``: 1,797 real
8x8 scans, values 0..16 scaled to 0..255 (bright strokes on a dark background, as stored),
upscaled x4 to 32x32 by nearest neighbour (each source pixel becomes a 4x4 block, no invented
values; the model resizes further as its backbone needs), written as RGB PNGs in ``0/``..``9/``.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from trainer.errors import ConfigError, DataError

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

__all__ = [
    "DIGITS_IMAGE_SIZE",
    "DIGITS_MARKER",
    "DISK_SHUFFLE_BUFFER_BYTES",
    "IMAGE_EXTENSIONS",
    "MEMORY_CACHE_CAP_BYTES",
    "MEMORY_CACHE_FRACTION",
    "DataSplits",
    "ImageFile",
    "Shard",
    "augmentation",
    "available_memory",
    "choose_cache",
    "decode_image",
    "decoded_bytes",
    "distributed_dataset",
    "ensure_digits",
    "global_batch_size",
    "load_arrays",
    "make_dataset",
    "median_image_side",
    "memory_cache_budget",
    "scan",
    "shard_files",
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


# ---------------------------------------------------------------------------------------- tf.data


def decode_image(data: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes -> float32 ``[H, W, 3]`` of whole values 0..255.

    The one decoder of the project: the training pipeline and the exported serving signature
    both call it, so a served image is seen exactly as in training.
    """
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    resized = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    return tf.round(tf.clip_by_value(resized, 0.0, 255.0))


MEMORY_CACHE_CAP_BYTES = 32 << 30
"""`auto` never caches more than this in memory per worker, whatever the machine reports (several
workers on one node each see the whole node's memory when no container limit is set)."""

MEMORY_CACHE_FRACTION = 0.5
"""`auto` caches in memory when this worker's decoded shards fit in this fraction of the memory
available to it: the rest is left to TensorFlow, the model, prefetch buffers and the OS page cache."""

DISK_SHUFFLE_BUFFER_BYTES = 512 << 20
"""Decoded bytes a shuffle buffer may hold after a disk cache (the memory cache needs none: its
shuffle buffer holds references to the cached tensors)."""

_CACHE_FORMAT = 1
_cache_locks: dict[str, int] = {}  # disk cache directory -> open fd holding its flock for the process's life


@dataclass(frozen=True)
class Shard:
    """What one input pipeline (one worker) reads: its files and their sample weights, in reading order."""

    files: tuple[ImageFile, ...]
    weights: tuple[float, ...]
    """1 (or the class weight) for real images, 0 for the padding copies."""
    index: int
    count: int
    padded_total: int
    """Length of the padded list over all shards (`count` x ``len(files)``)."""


def shard_files(
    files: Sequence[ImageFile],
    global_batch: int,
    *,
    num_shards: int = 1,
    index: int = 0,
    training: bool,
    seed: int,
    pad_to_full_batches: bool = False,
    class_weights: Sequence[float] | None = None,
) -> Shard:
    """Shard `index` of `num_shards` of `files`: static, seeded, disjoint, equal lengths (pure Python).

    The list is padded (always with several shards, else only with ``pad_to_full_batches``) to a
    multiple of `global_batch` with copies of its first images at weight 0, so that every shard
    has the same length and every worker runs ``ceil(len(files) / global_batch)`` steps. For
    training the padded list is permuted with ``random.Random(seed)`` first (each worker gets a
    random sample of every class); evaluation keeps the given order. Shard ``i`` is then every
    ``num_shards``-th entry from ``i``.
    """
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ConfigError(f"Expected 0 <= index < num_shards. Received: index={index}, num_shards={num_shards}")
    if global_batch < 1:
        raise ConfigError(f"Expected a batch size >= 1. Received: batch_size={global_batch}")
    if not files:
        raise DataError("Expected at least one image file to build a data set from. Received: files=()")
    files = list(files)
    weights = [float(class_weights[f.label]) if class_weights is not None else 1.0 for f in files]
    if (pad_to_full_batches or num_shards > 1) and len(files) % global_batch:
        padding = global_batch - len(files) % global_batch
        files += [files[i % len(files)] for i in range(padding)]
        weights += [0.0] * padding
    if len(files) % num_shards:
        raise ConfigError(
            f"Expected a global batch divisible by the number of input pipelines. Received: "
            f"global_batch={global_batch}, num_shards={num_shards}"
        )
    order = list(range(len(files)))
    if training:
        random.Random(seed).shuffle(order)
    mine = order[index::num_shards]
    return Shard(tuple(files[i] for i in mine), tuple(weights[i] for i in mine), index, num_shards, len(files))


def decoded_bytes(images: int, image_size: tuple[int, int]) -> int:
    """Bytes of `images` decoded ``H x W x 3`` uint8 images (what a cache holds)."""
    height, width = _check_size(image_size)
    return images * height * width * 3


def available_memory() -> int | None:
    """Bytes this process may still use: MemAvailable, lowered to the container's cgroup limit if any."""
    candidates: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    # A Kubernetes memory limit is a cgroup limit: /proc/meminfo shows the whole node.
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit_text = Path(limit_file).read_text().strip()
            if limit_text == "max" or int(limit_text) >= 1 << 60:  # no limit (v1 reports a huge number)
                continue
            candidates.append(max(0, int(limit_text) - int(Path(usage_file).read_text().strip())))
            break
        except (OSError, ValueError):
            continue
    return min(candidates) if candidates else None


def memory_cache_budget(available: int | None) -> int:
    """What `auto` may cache in memory: min(`MEMORY_CACHE_CAP_BYTES`, `MEMORY_CACHE_FRACTION` x available)."""
    if available is None:  # not Linux, or unreadable: assume nothing beyond the cap's eighth
        return MEMORY_CACHE_CAP_BYTES // 8
    return min(MEMORY_CACHE_CAP_BYTES, int(available * MEMORY_CACHE_FRACTION))


def choose_cache(setting: str | Path, cached_bytes: int, available: int | None) -> str:
    """Resolve a ``--cache`` setting for a worker whose decoded shards take `cached_bytes`.

    ``memory``, ``none`` and directories are returned as they are. ``auto`` is ``memory`` when the
    bytes fit `memory_cache_budget` (`available` bytes of memory), else ``none`` (decode every epoch):
    a disk cache needs a local, fast disk with room for the shards, and only the user knows one.
    """
    setting = str(setting)
    if setting != "auto":
        return setting
    return "memory" if cached_bytes <= memory_cache_budget(available) else "none"


def _cache_mode(cache: bool | str | Path) -> str:
    if cache is True:
        return "memory"
    if cache is False:
        return "none"
    mode = str(cache)
    if mode == "auto":
        raise ConfigError("Expected cache resolved by choose_cache before building a pipeline. Received: cache='auto'")
    if not mode.strip():
        raise ConfigError(f"Expected cache to be memory, none or a directory. Received: cache={mode!r}")
    return mode  # anything else is a directory: _disk_cache_prefix creates it or says why it cannot


def _disk_cache_prefix(root: Path, name: str, shard: Shard, image_size: tuple[int, int], training: bool,
                       seed: int, fingerprint: str | None = None) -> str:
    """The tf.data cache file prefix for this shard, in a directory no other live process writes.

    The directory name is a digest of what the cache holds (each file's path, label and weight, in
    reading order; image size; shard; seed) and of the data's content: `fingerprint` (the scan's
    `DataSplits.fingerprint`) when given, else each file's size and mtime, so another shard, split,
    size or edited folder never reads it. An ``flock`` held for the life of the process marks it in
    use: a directory whose lock nobody holds but whose tf.data ``.lockfile`` remains was left by a
    killed process, and its partial files are removed (tf.data writes the ``.index`` that makes a cache complete last).
    """
    import fcntl

    digest = hashlib.sha256()
    digest.update(json.dumps([_CACHE_FORMAT, list(image_size), shard.index, shard.count, training, seed,
                              fingerprint]).encode())
    for f, weight in zip(shard.files, shard.weights, strict=True):
        identity = [-1, -1]
        if fingerprint is None:  # the scan's fingerprint saves a stat per file (slow on network volumes)
            with contextlib.suppress(OSError):  # unreadable now: reading it will fail and say so
                stat = f.path.stat()
                identity = [stat.st_size, stat.st_mtime_ns]
        digest.update(json.dumps([str(f.path), f.label, weight, *identity]).encode())
    folder = root / f"tfstack-{name}-shard{shard.index}of{shard.count}-{digest.hexdigest()[:20]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission, read-only file system
        raise ConfigError(f"Expected --cache to name a writable local directory. Received: cache={str(root)!r} "
                          f"({exc.strerror or exc}: {exc.filename or folder})") from exc
    key = str(folder)
    prefix = folder / "cache"
    if key in _cache_locks:  # this process holds it already (a pipeline built again, a second fit)
        return str(prefix)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        if (folder / "cache.index").is_file():
            return str(prefix)  # complete: another process only reads it, as we will
        private = Path(tempfile.mkdtemp(prefix=f"{folder.name}.{os.getpid()}.", dir=root))
        atexit.register(shutil.rmtree, private, ignore_errors=True)  # nobody could find it again
        log.warning("disk cache %s is being written by another live process: caching this pipeline in %s",
                    folder, private)
        return _disk_cache_prefix(private, name, shard, image_size, training, seed, fingerprint)
    _cache_locks[key] = fd
    if not (folder / "cache.index").is_file():
        stale = [p for p in folder.iterdir() if p.name.startswith("cache")]
        if stale:
            log.warning("removing an incomplete disk cache left by a stopped process: %s (%d files)", folder,
                        len(stale))
        for p in stale:
            p.unlink(missing_ok=True)
    return str(prefix)


def make_dataset(
    files: Sequence[ImageFile],
    image_size: tuple[int, int],
    batch_size: int,
    *,
    training: bool,
    seed: int,
    cache: bool | str | Path = True,
    pad_to_full_batches: bool = False,
    class_weights: Sequence[float] | None = None,
    name: str = "data",
    fingerprint: str | None = None,
) -> tf.data.Dataset:
    """Batches of (uint8 ``[B, H, W, 3]`` pixels 0..255, int32 ``[B]`` labels) from all of `files`.

    One input pipeline over every file (`shard_files` with one shard); `distributed_dataset` builds
    one per worker, each over its own shard. `batch_size` is the batch this pipeline yields;
    ``training`` shuffles with `seed`, in a new but reproducible order each epoch. The last batch may
    be smaller. `cache`: ``"memory"`` (or True), ``"none"`` (or False), or a directory for a disk
    cache (see the module docstring); `name` names the disk cache (``train``, ``val``) and
    `fingerprint` (`DataSplits.fingerprint`) keys it by the data's content.

    ``pad_to_full_batches`` (for multi-worker training): the set is padded with copies of its first
    images to a whole number of batches and each element gets a sample weight, 1 for real images and
    0 for the padding: ``(pixels, labels, weights)``. Every global batch is then full, so every worker
    gets an equal share and runs the same number of steps (a worker with fewer steps than its peers
    leaves them waiting in a collective forever), while weighted metrics stay exact.

    ``class_weights`` (indexed by label) also yields ``(pixels, labels, weights)``, each real image
    weighted by its class, so that rare classes count as much as common ones in the loss.
    """
    size = _check_size(image_size)
    shard = shard_files(files, batch_size, training=training, seed=seed, pad_to_full_batches=pad_to_full_batches,
                        class_weights=class_weights)
    weighted = pad_to_full_batches or class_weights is not None
    dataset = _pipeline(shard, size, batch_size, training=training, seed=seed, cache=cache, weighted=weighted,
                        name=name, fingerprint=fingerprint)
    import tensorflow as tf

    # Handed to tf.distribute as one pipeline (experimental_distribute_dataset), every worker would run
    # all of it and keep its share of each batch: a list of file names has no file reader to shard by FILE.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def distributed_dataset(
    strategy: tf.distribute.Strategy,
    files: Sequence[ImageFile],
    image_size: tuple[int, int],
    global_batch: int,
    *,
    training: bool,
    seed: int,
    cache: bool | str | Path = True,
    pad_to_full_batches: bool = False,
    class_weights: Sequence[float] | None = None,
    name: str = "data",
    fingerprint: str | None = None,
    repeat: bool = False,
) -> tf.data.Dataset | tf.distribute.DistributedDataset:
    """What ``model.fit`` trains on under `strategy`: one pipeline per worker, each over its own shard.

    ``strategy.distribute_datasets_from_function`` calls the pipeline function once per input
    pipeline (one per worker) with its ``InputContext``: the worker reads, decodes and caches only
    shard ``input_pipeline_id`` of ``num_input_pipelines`` (`shard_files`), batched per replica. With
    one worker and TensorFlow's default strategy this is that pipeline itself, a plain
    ``tf.data.Dataset`` batched by `global_batch`. Elements are as `make_dataset`'s, the weights
    present when padding (always with several workers) or class weights apply.

    ``repeat=True`` (what the search uses) repeats the batched shard forever, each pass reshuffled: pass
    ``steps_per_epoch=ceil(len(files) / global_batch)`` (`trainer.steps.steps_per_epoch`) to ``fit`` (the
    search repeats only the training set). One epoch is then exactly one pass, the same batches as without repeat, and
    Keras keeps one iterator for the whole ``fit`` instead of one per epoch; an infinite data set also
    spares tf.distribute its per-step "has any worker still data?" all-reduce (``_enable_get_next_as_optional``
    in tensorflow/python/distribute/input_lib.py returns False for INFINITE cardinality).
    """
    size = _check_size(image_size)
    weighted_always = pad_to_full_batches or class_weights is not None

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        import tensorflow as tf

        batch = context.get_per_replica_batch_size(global_batch)
        shard = shard_files(files, global_batch, num_shards=context.num_input_pipelines,
                            index=context.input_pipeline_id, training=training, seed=seed,
                            pad_to_full_batches=pad_to_full_batches, class_weights=class_weights)
        weighted = weighted_always or context.num_input_pipelines > 1
        log.info("%s input pipeline %d of %d: decodes %d of %d images (%d padding, weight 0), batches of %d, "
                 "cache %s", name, shard.index, shard.count, len(shard.files), shard.padded_total,
                 shard.padded_total - len(files), batch, _cache_mode(cache))
        dataset = _pipeline(shard, size, batch, training=training, seed=seed, cache=cache, weighted=weighted,
                            name=name, fingerprint=fingerprint, repeat=repeat)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sharded
        return dataset.with_options(options)

    return strategy.distribute_datasets_from_function(dataset_fn)


def _pipeline(shard: Shard, size: tuple[int, int], batch_size: int, *, training: bool, seed: int,
              cache: bool | str | Path, weighted: bool, name: str, fingerprint: str | None = None,
              repeat: bool = False) -> tf.data.Dataset:
    """read -> decode + resize -> uint8 (-> cache) -> shuffle -> batch (-> repeat) -> prefetch, for one shard.

    Where the shuffle goes depends on the cache: after a memory cache (its buffer holds references to
    the cached tensors), before decoding without a cache (file names, not pixels, wait in the buffer),
    and after a disk cache within `DISK_SHUFFLE_BUFFER_BYTES`. Memory and no cache give the same order
    for the same seed; so does the disk cache when the whole shard fits the buffer.
    """
    import tensorflow as tf

    if batch_size < 1:
        raise ConfigError(f"Expected a batch size >= 1. Received: batch_size={batch_size}")
    mode = _cache_mode(cache)
    count = len(shard.files)
    columns: tuple[tf.Tensor, ...] = (
        tf.constant([str(f.path) for f in shard.files]),
        tf.constant([f.label for f in shard.files], dtype=tf.int32),
    )
    if weighted:
        columns += (tf.constant(shard.weights, dtype=tf.float32),)

    def load(path: tf.Tensor, *rest: tf.Tensor) -> tuple[tf.Tensor, ...]:
        pixels = decode_image(tf.io.read_file(path), size)
        return (tf.cast(pixels, tf.uint8), *rest)  # exact: decode_image returns whole values 0..255

    def decode(dataset: tf.data.Dataset) -> tf.data.Dataset:
        return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    dataset = tf.data.Dataset.from_tensor_slices(columns)
    if mode == "none":
        if training:
            dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        dataset = decode(dataset)
    elif mode == "memory":
        dataset = decode(dataset).cache()
        if training:
            dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    else:
        prefix = _disk_cache_prefix(Path(mode), name, shard, size, training, seed, fingerprint)
        dataset = decode(dataset).cache(prefix)
        if training:
            buffer = max(batch_size, DISK_SHUFFLE_BUFFER_BYTES // decoded_bytes(1, size))
            dataset = dataset.shuffle(min(count, buffer), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if repeat:  # after batch: every pass ends with the same (possibly partial) last batch as one epoch does
        dataset = dataset.repeat()
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def load_arrays(files: Sequence[ImageFile], image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Decode every file once: float32 ``(N, H, W, 3)`` pixels (same values as `make_dataset`), int32 labels."""
    height, width = _check_size(image_size)
    if not files:
        return np.zeros((0, height, width, 3), np.float32), np.zeros((0,), np.int32)
    dataset = make_dataset(files, (height, width), 256, training=False, seed=0, cache="none")
    xs, ys = [], []
    for x, y in dataset.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


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


def augmentation(
    flip: str | bool = "none",
    rotation: float = 0.0,
    zoom: float = 0.0,
    *,
    seed: int | None = None,
) -> keras.Sequential | None:
    """Random flip / rotation / zoom layers for the model to include, or None when all are off.

    `flip`: ``"none"``, ``"horizontal"``, ``"vertical"``, ``"horizontal_and_vertical"`` (True means
    horizontal). `rotation` is a fraction of a full turn, `zoom` a fraction of the size (0 = off).
    The layers act only in training; at inference they pass images through unchanged.
    """
    modes = ("none", "horizontal", "vertical", "horizontal_and_vertical")
    mode = ("horizontal" if flip else "none") if isinstance(flip, bool) else flip
    if mode not in modes:
        raise ConfigError(f"Expected flip to be one of {list(modes)} or a bool. Received: flip={flip!r}")
    for name, value in (("rotation", rotation), ("zoom", zoom)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"Expected 0 <= {name} < 1 (0 = off). Received: {name}={value}")
    if mode == "none" and rotation == 0 and zoom == 0:
        return None
    import keras

    layers: list[Any] = []
    if mode != "none":
        layers.append(keras.layers.RandomFlip(mode, seed=seed, name="augment_flip"))
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, seed=seed, name="augment_rotation"))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, seed=seed, name="augment_zoom"))
    return keras.Sequential(layers, name="augmentation")


def global_batch_size(per_replica: int, replicas: int) -> int:
    """The batch a distributed data set must be built with: `per_replica` x `replicas` (all workers)."""
    if per_replica < 1 or replicas < 1:
        raise ConfigError(
            f"Expected a per-replica batch size and a replica count >= 1. "
            f"Received: per_replica={per_replica}, replicas={replicas}"
        )
    return per_replica * replicas


def _check_size(image_size: Iterable[int]) -> tuple[int, int]:
    size = tuple(image_size)
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
        raise ConfigError(f"Expected image_size as (height, width) of positive ints. Received: image_size={size}")
    return int(size[0]), int(size[1])
