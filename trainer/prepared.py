"""The prepared input format: pre-resized images as sharded TFRecords, written once on the shared volume.

Decoding and resizing an image costs a CPU core about 2.5 ms at 224 px (docs/benchmarks.md); a GPU
trains on thousands of images a second. So the chief decodes every image once, with the trainer's one
decoder (`decode_image`, the same pixels the folder pipeline and the serving signature see), and writes
the resized uint8 pixels as TFRecords; every epoch of every trial of every worker then only reads
them. Layout, under a store directory (default ``<run-dir>/prepared``)::

    <store>/<key>/manifest.json                   written last; the set exists only with it
    <store>/<key>/train-00000-of-00004.tfrecord   records: H*W*C uint8 pixels, then the int32 label
    <store>/<key>/val-00000-of-00001.tfrecord ...

``<key>`` is `prepared_key`: the data fingerprint (`DataSplits.fingerprint`: every used file's content,
its split and class, the split seed and fractions), the image size, the channels and the format
version, so a second search on the same data and size reuses the set and any change of a file, the
split or the size makes a new one. Training records are stored in a permutation drawn with the
split seed (contiguous blocks are random samples); validation and test keep the split's order.

Written atomically: shards and manifest go into a hidden ``.<key>.*.partial`` staging directory that
is renamed into place last, under an ``flock`` per key, so a reader never sees a half-written set and
a staging directory left by a killed writer is never read (the next writer deletes it). `open_prepared`
checks the manifest against the expected fingerprint, size and format and every shard's byte size; a
set that fails is rebuilt by a writer (`ensure_prepared`) and never read; a flipped bit inside a shard
fails TFRecord's CRC check when read (``DataLossError``).

Reading (`distributed_dataset`, `make_dataset`): worker ``i`` of ``N`` reads only block ``i`` of the
split's records, padded to whole global batches with weight-0 copies of the first records exactly as
the folder pipeline pads (`shard_segments`), through ``interleave`` over its shard files; training
reads with ``deterministic=False`` and reshuffles within the block each pass, validation and test keep
their order. Elements are those of `trainer.pipeline.make_dataset`: uint8 pixels, int32 labels (and
float32 sample weights when padded or class-weighted).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import random
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trainer import pipeline, scan
from trainer.errors import ConfigError, DataError, PeerLostError

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "FORMAT",
    "MANIFEST",
    "PreparedFile",
    "PreparedSet",
    "Segment",
    "distributed_dataset",
    "ensure_prepared",
    "for_search",
    "make_dataset",
    "open_prepared",
    "prepared_key",
    "shard_segments",
    "wait_for_prepared",
    "write_prepared",
]

log = logging.getLogger(__name__)

FORMAT = 1
"""Bumped whenever the records' content or layout changes (the decoder, the resize, the features)."""
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
CHANNELS = 3  # pipeline.decode_image always gives RGB
SHARD_BYTES = 64 << 20
"""Target size of one shard file: big enough for sequential reads, small enough to split work finely."""
MAX_RECORDS_PER_SHARD = 4096
_POLL_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class PreparedFile:
    """One shard file of one split: its name in the set's directory, its record count and byte size."""

    name: str
    records: int
    bytes: int


@dataclasses.dataclass(frozen=True)
class PreparedSet:
    """A complete prepared set (its manifest checked): where it is and what each split's shards hold."""

    path: Path
    fingerprint: str
    image_size: tuple[int, int]
    channels: int
    class_names: tuple[str, ...]
    files: dict[str, tuple[PreparedFile, ...]]

    def count(self, split: str) -> int:
        """Records (images) of `split`."""
        return sum(f.records for f in self.files[split])

    @property
    def record_bytes(self) -> int:
        """Pixel bytes of one record (H x W x C)."""
        return self.image_size[0] * self.image_size[1] * self.channels


def prepared_key(fingerprint: str, image_size: tuple[int, int], channels: int = CHANNELS) -> str:
    """The set's directory name: data fingerprint, size, channels and format (see the module docstring)."""
    height, width = image_size
    return f"{fingerprint[:32]}-{height}x{width}x{channels}-v{FORMAT}"


# ------------------------------------------------------------------------------------------ reading a set


def open_prepared(store: Path | str, fingerprint: str, image_size: tuple[int, int]) -> PreparedSet | None:
    """The complete set for (`fingerprint`, `image_size`) in `store`, or None when there is none yet.

    Raises:
        DataError: a set of that name exists but does not match (another fingerprint, size or format in
            its manifest, an unreadable manifest, a shard missing or of another size): never read it.
    """
    size = (int(image_size[0]), int(image_size[1]))
    path = Path(store) / prepared_key(fingerprint, size)
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None
    try:
        record = json.loads(manifest.read_text())
        files = {split: tuple(PreparedFile(str(f["name"]), int(f["records"]), int(f["bytes"]))
                              for f in record["splits"][split]) for split in SPLITS}
        found = (record["format"], record["fingerprint"], tuple(record["image_size"]), record["channels"])
        class_names = tuple(str(name) for name in record["class_names"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"Expected a readable prepared-set manifest. Received: {manifest} ({exc})") from exc
    expected = (FORMAT, fingerprint, size, CHANNELS)
    if found != expected:
        raise DataError(f"Expected prepared set {path} to hold (format, fingerprint, size, channels) {expected}. "
                        f"Received: {found}")
    for split_files in files.values():
        for f in split_files:
            try:
                actual = (path / f.name).stat().st_size
            except OSError as exc:
                raise DataError(f"Expected shard {path / f.name} of the prepared set. Received: {exc}") from exc
            if actual != f.bytes:
                raise DataError(f"Expected shard {path / f.name} to be {f.bytes} bytes (manifest). "
                                f"Received: {actual} bytes")
    return PreparedSet(path, fingerprint, size, CHANNELS, class_names, files)


def wait_for_prepared(store: Path | str, fingerprint: str, image_size: tuple[int, int], timeout: float, *,
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> PreparedSet:
    """A non-writer's view: the set the chief writes, polled until complete; bounded by `timeout` seconds.

    A set that does not match (the chief may be about to replace it) counts as not there yet.

    Raises:
        PeerLostError: no complete, matching set within `timeout` (the chief is gone or stuck: restart the
            group); the message says what was last found.
    """
    deadline = clock() + timeout
    last = "nothing yet"
    while True:
        try:
            prepared = open_prepared(store, fingerprint, image_size)
        except DataError as exc:
            prepared, last = None, str(exc)
        if prepared is not None:
            return prepared
        if clock() >= deadline:
            raise PeerLostError(
                f"Expected the chief to write the prepared set {Path(store) / prepared_key(fingerprint, image_size)} "
                f"within {timeout:.0f}s (--prepare-timeout). Received: {last}. Is the chief running, and is the "
                "store on a volume every worker shares?"
            )
        sleep(_POLL_SECONDS)


def for_search(splits: scan.DataSplits, image_size: tuple[int, int], store: Path | str, *, writes: bool, seed: int,
               timeout: float) -> PreparedSet:
    """The set a search trains from: written (or reused) by the process that `writes`, awaited by the others."""
    if writes:
        return ensure_prepared(splits, image_size, store, seed=seed)
    log.info("waiting up to %.0fs for the chief's prepared records in %s", timeout, store)
    return wait_for_prepared(store, splits.fingerprint, image_size, timeout)


# ------------------------------------------------------------------------------------------ writing a set


def ensure_prepared(splits: scan.DataSplits, image_size: tuple[int, int], store: Path | str, *,
                    seed: int) -> PreparedSet:
    """The set for `splits` at `image_size` in `store`: reused when complete and matching, else (re)written.

    Writers of one key take turns (an ``flock``); the loser of a race finds the winner's set and reuses it.
    """
    size = (int(image_size[0]), int(image_size[1]))
    store = Path(store)
    key = prepared_key(splits.fingerprint, size)
    with _writer_lock(store, key):
        try:
            prepared = open_prepared(store, splits.fingerprint, size)
        except DataError as exc:
            log.warning("prepared set %s does not match (%s): rebuilding it", store / key, exc)
            _remove(store / key)
            prepared = None
        if prepared is not None:
            log.info("prepared set %s: reused (%d train / %d val / %d test records at %dx%d)", prepared.path,
                     prepared.count("train"), prepared.count("val"), prepared.count("test"), *size)
            return prepared
        for stale in store.glob(f".{key}.*.partial"):  # left by a killed writer: we hold the lock
            log.warning("removing a prepared set's staging directory left by a stopped writer: %s", stale)
            _remove(stale)
        return write_prepared(splits, size, store, seed=seed)


def write_prepared(splits: scan.DataSplits, image_size: tuple[int, int], store: Path | str, *,
                   seed: int) -> PreparedSet:
    """Decode every image of `splits` once at `image_size` and write the set; returns it (complete).

    Call `ensure_prepared` instead unless you hold the key's lock: this always writes a new staging
    directory and renames it into place (returning the other set if a complete one took the name meanwhile).
    """
    size = (int(image_size[0]), int(image_size[1]))
    store = Path(store)
    key = prepared_key(splits.fingerprint, size)
    store.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".partial", dir=store))
    staging.chmod(0o755)  # mkdtemp's 0700 would follow the set into place: other readers need to list it
    try:
        files: dict[str, list[PreparedFile]] = {}
        for split in SPLITS:
            ordered = _stored_order(getattr(splits, split), training=split == "train", seed=seed)
            files[split] = _write_split(staging, split, ordered, size)
        manifest = {
            "format": FORMAT, "fingerprint": splits.fingerprint, "image_size": list(size), "channels": CHANNELS,
            "class_names": list(splits.class_names), "seed": seed, "root": str(splits.root),
            "decoder": "trainer.pipeline.decode_image: RGB, bilinear resize with antialias, rounded",
            "splits": {split: [dataclasses.asdict(f) for f in split_files] for split, split_files in files.items()},
        }
        _write_synced(staging / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        try:
            os.rename(staging, store / key)  # the commit: the set appears complete or not at all
        except OSError:
            raced = open_prepared(store, splits.fingerprint, size)  # another writer's rename won (no flock)
            if raced is None:
                raise
            return raced
    finally:
        _remove(staging)
    total = sum(f.records for split_files in files.values() for f in split_files)
    log.info("prepared set %s: wrote %d records at %dx%d in %.1f s", store / key, total, *size,
             time.perf_counter() - started)
    prepared = open_prepared(store, splits.fingerprint, size)
    assert prepared is not None  # just renamed into place
    return prepared


def _stored_order(files: Sequence[scan.ImageFile], *, training: bool, seed: int) -> list[scan.ImageFile]:
    """Training records in a seeded permutation (a contiguous block is then a random sample); others as split."""
    ordered = list(files)
    if training:
        random.Random(f"prepared:{seed}").shuffle(ordered)
    return ordered


def _write_split(folder: Path, split: str, files: Sequence[scan.ImageFile],
                 size: tuple[int, int]) -> list[PreparedFile]:
    import tensorflow as tf

    if not files:
        return []
    per_shard = max(1, min(MAX_RECORDS_PER_SHARD, SHARD_BYTES // (size[0] * size[1] * CHANNELS)))
    shards = math.ceil(len(files) / per_shard)
    # The folder pipeline's own decode (in order, no cache): the records hold exactly its pixels.
    pixels = pipeline.make_dataset(files, size, 256, training=False, seed=0, cache="none").unbatch()
    written: list[PreparedFile] = []
    images = iter(pixels.as_numpy_iterator())
    for index in range(shards):
        name = f"{split}-{index:05d}-of-{shards:05d}.tfrecord"
        count = min(per_shard, len(files) - index * per_shard)
        with tf.io.TFRecordWriter(str(folder / name)) as writer:
            for _ in range(count):
                image, label = next(images)
                writer.write(_record(image.tobytes(), int(label)))
        _fsync(folder / name)
        written.append(PreparedFile(name, count, (folder / name).stat().st_size))
    return written


def _record(pixels: bytes, label: int) -> bytes:
    """H*W*C uint8 pixels, then the label as a little-endian int32: fixed length, no protobuf to parse."""
    return pixels + struct.pack("<i", label)


def _write_synced(path: Path, content: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _writer_lock(store: Path, key: str) -> Iterator[None]:
    store.mkdir(parents=True, exist_ok=True)
    fd = os.open(store / f".{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------------------------- the pipelines


@dataclasses.dataclass(frozen=True)
class Segment:
    """A run of consecutive records of one shard file, read as real images (weight 1) or padding (0)."""

    file: int
    skip: int
    take: int
    real: bool


def shard_segments(counts: Sequence[int], global_batch: int, *, num_shards: int = 1, index: int = 0,
                   pad_to_full_batches: bool = False) -> list[Segment]:
    """What pipeline `index` of `num_shards` reads of a split whose shard files hold `counts` records.

    Pure Python, the same on every worker. As in `trainer.pipeline.shard_files`, the split is padded (always
    with several pipelines, else only with `pad_to_full_batches`) to a whole number of global batches
    with copies of its first records at weight 0, so every pipeline reads the same number of records;
    pipeline ``i`` then reads the ``i``-th contiguous block of that padded list (the training records
    are stored permuted, so a block is a random sample), and only the shard files that block touches.
    """
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ConfigError(f"Expected 0 <= index < num_shards. Received: index={index}, num_shards={num_shards}")
    if global_batch < 1:
        raise ConfigError(f"Expected a batch size >= 1. Received: batch_size={global_batch}")
    total = sum(counts)
    if total < 1:
        raise DataError("Expected at least one record to build a data set from. Received: an empty split")
    padded = total
    if (pad_to_full_batches or num_shards > 1) and total % global_batch:
        padded = total + global_batch - total % global_batch
    if padded % num_shards:
        raise ConfigError(f"Expected a global batch divisible by the number of input pipelines. Received: "
                          f"global_batch={global_batch}, num_shards={num_shards}")
    block = padded // num_shards
    start, stop = index * block, (index + 1) * block
    starts = [sum(counts[:j]) for j in range(len(counts))]
    segments: list[Segment] = []
    position = start
    while position < stop:  # padded position p is record p % total, real only in the first pass
        lap, offset = divmod(position, total)
        end = min(stop - lap * total, total)  # within this lap
        for j, (first, count) in enumerate(zip(starts, counts, strict=True)):
            lo, hi = max(offset, first), min(end, first + count)
            if lo < hi:
                segments.append(Segment(j, lo - first, hi - lo, lap == 0))
        position = lap * total + end
    return segments


def make_dataset(prepared: PreparedSet, split: str, batch_size: int, *, training: bool, seed: int,
                 cache: bool | str | Path = True, pad_to_full_batches: bool = False,
                 class_weights: Sequence[float] | None = None, repeat: bool = False) -> tf.data.Dataset:
    """One pipeline over all of `split` (as `trainer.pipeline.make_dataset`, from the prepared records)."""
    segments = shard_segments([f.records for f in prepared.files[split]], batch_size,
                              pad_to_full_batches=pad_to_full_batches)
    weighted = pad_to_full_batches or class_weights is not None
    return _pipeline(prepared, split, segments, batch_size, training=training, seed=seed, cache=cache,
                     weighted=weighted, class_weights=class_weights, repeat=repeat)


def distributed_dataset(strategy: tf.distribute.Strategy, prepared: PreparedSet, split: str, global_batch: int, *,
                        training: bool, seed: int, cache: bool | str | Path = True, pad_to_full_batches: bool = False,
                        class_weights: Sequence[float] | None = None,
                        repeat: bool = False) -> tf.data.Dataset | tf.distribute.DistributedDataset:
    """`trainer.pipeline.distributed_dataset` from the prepared records: one pipeline per worker over its block."""
    import tensorflow as tf

    counts = [f.records for f in prepared.files[split]]

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = context.get_per_replica_batch_size(global_batch)
        segments = shard_segments(counts, global_batch, num_shards=context.num_input_pipelines,
                                  index=context.input_pipeline_id, pad_to_full_batches=pad_to_full_batches)
        weighted = pad_to_full_batches or class_weights is not None or context.num_input_pipelines > 1
        log.info("%s input pipeline %d of %d: reads %d prepared records of %d (%d shard files), batches of %d",
                 split, context.input_pipeline_id, context.num_input_pipelines, sum(s.take for s in segments),
                 sum(counts), len({s.file for s in segments}), batch)
        dataset = _pipeline(prepared, split, segments, batch, training=training, seed=seed, cache=cache,
                            weighted=weighted, class_weights=class_weights, repeat=repeat)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sharded
        return dataset.with_options(options)

    return strategy.distribute_datasets_from_function(dataset_fn)


def _pipeline(prepared: PreparedSet, split: str, segments: Sequence[Segment], batch_size: int, *, training: bool,
              seed: int, cache: bool | str | Path, weighted: bool, class_weights: Sequence[float] | None,
              repeat: bool) -> tf.data.Dataset:
    """interleave(records of each segment) (-> cache) -> shuffle -> batch (-> repeat) -> parse -> prefetch.

    Records stay serialized until batched: one ``decode_raw`` per batch. The memory cache holds the
    records (pixel bytes plus 4); a ``--cache`` directory is not used (the records already are the
    decoded images on disk).
    """
    import tensorflow as tf

    if batch_size < 1:
        raise ConfigError(f"Expected a batch size >= 1. Received: batch_size={batch_size}")
    files = prepared.files[split]
    height, width = prepared.image_size
    channels = prepared.channels
    columns = (
        tf.constant([str(prepared.path / files[s.file].name) for s in segments]),
        tf.constant([s.skip for s in segments], tf.int64),
        tf.constant([s.take for s in segments], tf.int64),
        tf.constant([1.0 if s.real else 0.0 for s in segments], tf.float32),
    )

    padding = not all(s.real for s in segments)

    def read(path: tf.Tensor, skip: tf.Tensor, take: tf.Tensor, real: tf.Tensor) -> tf.data.Dataset:
        records = tf.data.TFRecordDataset(path, buffer_size=1 << 20).skip(skip).take(take)
        if not padding:  # every record is real: no per-record flag to carry (a tf.data op less per image)
            return records
        return tf.data.Dataset.zip((records, tf.data.Dataset.from_tensors(real).repeat()))

    # Training reads several shard files at once in whatever order they deliver; evaluation reads its
    # segments one after the other, in the split's order.
    dataset = tf.data.Dataset.from_tensor_slices(columns).interleave(
        read, cycle_length=max(1, min(len(segments), 8)) if training else 1, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not training)
    count = sum(s.take for s in segments)
    # interleave hides the length: stated, Keras knows an evaluation pass's steps instead of running into its end.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    if pipeline._cache_mode(cache) == "memory":
        dataset = dataset.cache()
    if training:
        buffer = max(batch_size, pipeline.DISK_SHUFFLE_BUFFER_BYTES // prepared.record_bytes)
        dataset = dataset.shuffle(min(count, buffer), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if repeat:
        dataset = dataset.repeat()
    weights_by_class = tf.constant(list(class_weights) if class_weights is not None else [1.0], tf.float32)
    pixel_bytes = prepared.record_bytes

    def parse(records: tf.Tensor, real: tf.Tensor | None = None) -> tuple[tf.Tensor, ...]:
        # One copy of the pixels (decode_raw reads the first H*W*C bytes of each record); the label after them.
        pixels = tf.reshape(tf.io.decode_raw(records, tf.uint8, fixed_length=pixel_bytes),
                            [-1, height, width, channels])
        labels = tf.reshape(tf.io.decode_raw(tf.strings.substr(records, pixel_bytes, 4), tf.int32,
                                             little_endian=True), [-1])
        if not weighted:
            return pixels, labels
        if real is None:
            real = tf.ones_like(labels, tf.float32)
        if class_weights is not None:
            real = real * tf.gather(weights_by_class, labels)
        return pixels, labels, real

    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    options = tf.data.Options()
    options.deterministic = not training
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
