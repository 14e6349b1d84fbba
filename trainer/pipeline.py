"""tf.data pipelines over scanned files: one decoder, per-worker sharding, caches.

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
"""


from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trainer.errors import ConfigError, DataError

if TYPE_CHECKING:
    import tensorflow as tf

from trainer.scan import ImageFile

__all__ = [
    "DISK_SHUFFLE_BUFFER_BYTES",
    "MEMORY_CACHE_CAP_BYTES",
    "MEMORY_CACHE_FRACTION",
    "Shard",
    "available_memory",
    "choose_cache",
    "decode_image",
    "decoded_bytes",
    "distributed_dataset",
    "global_batch_size",
    "load_arrays",
    "make_dataset",
    "memory_cache_budget",
    "shard_files",
]

log = logging.getLogger(__name__)

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
