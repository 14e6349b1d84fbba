"""The prepared TFRecord format (trainer.prepared): same pixels as the folder, keyed reuse, atomic writes, sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.trainer.images import pattern, write_folder
from trainer import pipeline, prepared, scan
from trainer.errors import ConfigError, DataError, PeerLostError

ROOT = Path(__file__).resolve().parents[2]


def _mixed_folder(root: Path) -> Path:
    """3 classes of 20x24 PNGs and 40x30 JPEGs (two decoders, a real resize), one 16x16 PNG per class."""
    rng = np.random.default_rng(1)
    for label in range(3):
        folder = root / f"c{label}"
        folder.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(pattern(label, 24, rng)[:20]).save(folder / f"p{i}.png")
            Image.fromarray(pattern(label, 40, rng)[:30]).save(folder / f"j{i}.jpg", quality=90)
        Image.fromarray(pattern(label, 16, rng)).save(folder / "native.png")
    return root


def _all(dataset: tf.data.Dataset) -> list[np.ndarray]:
    batches = list(dataset.as_numpy_iterator())
    return [np.concatenate([b[i] for b in batches]) for i in range(len(batches[0]))]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mixed_folder(tmp_path_factory.mktemp("mixed") / "data")


def test_records_hold_the_folder_pipelines_pixels_and_labels(folder: Path, tmp_path: Path) -> None:
    splits = scan.scan(folder, val_fraction=0.25, test_fraction=0.2, seed=3)
    records = prepared.ensure_prepared(splits, (16, 16), tmp_path / "store", seed=3)
    assert {s: records.count(s) for s in prepared.SPLITS} == {s: len(getattr(splits, s)) for s in prepared.SPLITS}
    for split in ("val", "test"):  # evaluation order is the split's order: element by element
        ours = _all(prepared.make_dataset(records, split, 4, training=False, seed=0, cache="none"))
        folder_ = _all(pipeline.make_dataset(getattr(splits, split), (16, 16), 4, training=False, seed=0, cache="none"))
        np.testing.assert_array_equal(ours[0], folder_[0])
        np.testing.assert_array_equal(ours[1], folder_[1])
    # Training records are permuted: the same multiset of (pixels, label) as the folder's training files.
    ours = _all(prepared.make_dataset(records, "train", 5, training=True, seed=0, cache="memory"))
    folder_ = _all(pipeline.make_dataset(splits.train, (16, 16), 5, training=False, seed=0, cache="none"))
    assert sorted((x.tobytes(), int(y)) for x, y in zip(*ours, strict=True)) == \
        sorted((x.tobytes(), int(y)) for x, y in zip(*folder_, strict=True))


def test_records_match_an_independent_decode(folder: Path, tmp_path: Path) -> None:
    """Not through trainer.pipeline: PIL for the 16x16 originals (no resize), tf.io + tf.image for resized ones."""
    splits = scan.scan(folder, val_fraction=0.25, test_fraction=0.0, seed=3)
    records = prepared.ensure_prepared(splits, (16, 16), tmp_path / "store", seed=3)
    pixels, labels = _all(prepared.make_dataset(records, "val", 64, training=False, seed=0, cache="none"))
    checked = {"native": 0, "resized": 0}
    for f, x, y in zip(splits.val, pixels, labels, strict=True):
        assert y == int(f.path.parent.name[1:])
        if f.path.name == "native.png":
            expected = np.asarray(Image.open(f.path).convert("RGB"))
            checked["native"] += 1
        else:
            image = tf.io.decode_png(f.path.read_bytes(), 3) if f.path.suffix == ".png" else \
                tf.io.decode_jpeg(f.path.read_bytes(), 3)
            resized = tf.image.resize(image, (16, 16), method="bilinear", antialias=True)
            expected = np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)
            checked["resized"] += 1
        np.testing.assert_array_equal(x, expected, err_msg=str(f.path))
    assert checked["resized"] >= 3


def test_a_second_prepare_reuses_the_set_and_a_change_makes_another(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", classes=2, per_class=10, size=12)
    store = tmp_path / "store"
    first = prepared.ensure_prepared(scan.scan(root, seed=1), (12, 12), store, seed=1)
    shard = first.path / first.files["train"][0].name
    before = shard.stat().st_ino, shard.stat().st_mtime_ns
    again = prepared.ensure_prepared(scan.scan(root, seed=1), (12, 12), store, seed=1)
    assert again == first and (shard.stat().st_ino, shard.stat().st_mtime_ns) == before  # reused, not rewritten

    bigger = prepared.ensure_prepared(scan.scan(root, seed=1), (20, 20), store, seed=1)
    assert bigger.path != first.path and bigger.image_size == (20, 20)
    assert _all(prepared.make_dataset(bigger, "val", 8, training=False, seed=0))[0].shape[1:] == (20, 20, 3)

    changed = root / "class_0" / "0.png"
    Image.fromarray(np.full((12, 12, 3), 77, np.uint8)).save(changed)
    edited = scan.scan(root, seed=1)
    renewed = prepared.ensure_prepared(edited, (12, 12), store, seed=1)
    assert renewed.path not in (first.path, bigger.path)
    found = _all(prepared.make_dataset(renewed, "train", 64, training=False, seed=0))[0]
    in_train = any(f.path == changed for f in edited.train)
    assert in_train == any((x == 77).all() for x in found)
    assert prepared.open_prepared(store, first.fingerprint, (12, 12)) == first  # the old set stays valid for its data


def test_a_damaged_or_mismatched_set_is_refused_and_rebuilt(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", classes=2, per_class=10, size=12)
    splits = scan.scan(root, seed=1)
    store = tmp_path / "store"
    good = prepared.ensure_prepared(splits, (12, 12), store, seed=1)
    expected = _all(prepared.make_dataset(good, "val", 8, training=False, seed=0))

    shard = good.path / good.files["val"][0].name
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated
    with pytest.raises(DataError, match=r"to be \d+ bytes"):
        prepared.open_prepared(store, splits.fingerprint, (12, 12))
    rebuilt = prepared.ensure_prepared(splits, (12, 12), store, seed=1)
    for a, b in zip(_all(prepared.make_dataset(rebuilt, "val", 8, training=False, seed=0)), expected, strict=True):
        np.testing.assert_array_equal(a, b)

    manifest = rebuilt.path / prepared.MANIFEST
    record = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**record, "image_size": [8, 8]}))
    with pytest.raises(DataError, match="Received: "):
        prepared.open_prepared(store, splits.fingerprint, (12, 12))
    manifest.write_text("{not json")
    with pytest.raises(DataError, match="readable prepared-set manifest"):
        prepared.open_prepared(store, splits.fingerprint, (12, 12))
    assert prepared.ensure_prepared(splits, (12, 12), store, seed=1).count("val") == len(splits.val)


def test_a_flipped_bit_in_a_shard_fails_the_read(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", classes=2, per_class=10, size=12)
    splits = scan.scan(root, seed=1)
    records = prepared.ensure_prepared(splits, (12, 12), tmp_path / "store", seed=1)
    shard = records.path / records.files["train"][0].name
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0xFF  # same size: only TFRecord's CRC can tell
    shard.write_bytes(bytes(content))
    with pytest.raises(tf.errors.DataLossError):
        _all(prepared.make_dataset(records, "train", 4, training=False, seed=0))


def test_a_staging_directory_is_never_read_and_the_next_writer_removes_it(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", classes=2, per_class=6, size=12)
    splits = scan.scan(root, seed=1)
    store = tmp_path / "store"
    key = prepared.prepared_key(splits.fingerprint, (12, 12))
    staging = store / f".{key}.1234.partial"
    staging.mkdir(parents=True)
    (staging / prepared.MANIFEST).write_text("{}")  # even a manifest inside: the name is not the set's
    assert prepared.open_prepared(store, splits.fingerprint, (12, 12)) is None
    with pytest.raises(PeerLostError, match="within 0s"):
        prepared.wait_for_prepared(store, splits.fingerprint, (12, 12), 0, sleep=lambda s: None)
    written = prepared.ensure_prepared(splits, (12, 12), store, seed=1)
    assert not staging.exists() and written.path == store / key
    assert prepared.wait_for_prepared(store, splits.fingerprint, (12, 12), 0) == written


_KILLED_WRITER = """
import os, signal, sys
from trainer import pipeline, prepared, scan
real = prepared._fsync
def die_after_first_shard(path):
    real(path)
    os.kill(os.getpid(), signal.SIGKILL)
prepared._fsync = die_after_first_shard
prepared.ensure_prepared(scan.scan(sys.argv[1], seed=1), (12, 12), sys.argv[2], seed=1)
"""


@pytest.mark.slow
def test_a_writer_killed_mid_write_leaves_no_set_and_the_next_one_writes_it(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", classes=2, per_class=6, size=12)
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(root), str(store)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr[-2000:]
    splits = scan.scan(root, seed=1)
    left = list(store.glob(".*.partial"))
    assert len(left) == 1 and any(left[0].glob("*.tfrecord"))  # killed after its first shard
    assert prepared.open_prepared(store, splits.fingerprint, (12, 12)) is None
    written = prepared.ensure_prepared(splits, (12, 12), store, seed=1)
    assert not left[0].exists()
    assert _all(prepared.make_dataset(written, "train", 64, training=False, seed=0))[0].shape[0] == len(splits.train)


@pytest.mark.parametrize(
    ("counts", "batch", "shards", "pad"),
    [([7], 4, 1, False), ([7], 4, 1, True), ([3, 3, 1], 4, 2, False), ([5, 5], 8, 4, False), ([2], 16, 2, False),
     ([4, 4, 4], 6, 3, True)],
    ids=["one-no-pad", "one-pad", "two-shards", "four-shards", "padding-wraps", "even"],
)
def test_segments_pad_and_split_like_the_folder_pipeline(counts: list[int], batch: int, shards: int,
                                                         pad: bool) -> None:
    """The same padded multiset of (record, weight) as trainer.pipeline.shard_files, in equal blocks."""
    total = sum(counts)
    files = [scan.ImageFile(Path(f"{i}.png"), i) for i in range(total)]  # label = record index
    starts = np.cumsum([0, *counts])
    expected: list[tuple[int, float]] = []
    got: list[tuple[int, float]] = []
    for index in range(shards):
        shard = pipeline.shard_files(files, batch, num_shards=shards, index=index, training=False, seed=0,
                                 pad_to_full_batches=pad)
        expected += [(f.label, w) for f, w in zip(shard.files, shard.weights, strict=True)]
        block = [(int(starts[s.file]) + s.skip + k, 1.0 if s.real else 0.0)
                 for s in prepared.shard_segments(counts, batch, num_shards=shards, index=index,
                                                  pad_to_full_batches=pad) for k in range(s.take)]
        assert len(block) == len(shard.files)  # equal blocks: every worker runs the same steps
        got += block
    assert sorted(got) == sorted(expected)
    assert sorted(i for i, w in got if w == 1.0) == list(range(total))  # every real record exactly once


def test_segments_refuse_a_batch_the_pipelines_cannot_share() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        prepared.shard_segments([9], 3, num_shards=2)
    with pytest.raises(DataError, match="at least one record"):
        prepared.shard_segments([], 4)


class _Contexts:
    """What a strategy does for the input: call the pipeline function once per worker with its context."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def distribute_datasets_from_function(self, fn):
        return [fn(tf.distribute.InputContext(self.workers, i, self.workers)) for i in range(self.workers)]


def test_each_worker_reads_its_own_block_with_padding_and_class_weights(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", classes=3, per_class=9, size=12)
    splits = scan.scan(root, seed=1)
    records = prepared.ensure_prepared(splits, (12, 12), tmp_path / "store", seed=1)
    weights = [1.0, 2.0, 3.0]
    for split, training in (("train", True), ("val", False)):
        per_worker = [_all(ds) for ds in prepared.distributed_dataset(
            _Contexts(2), records, split, 8, training=training, seed=1, cache="memory",
            class_weights=weights if training else None)]
        n = records.count(split)
        assert len({len(x) for x, _, _ in per_worker}) == 1 and len(per_worker[0][0]) * 2 == -(-n // 8) * 8
        real = [(x.tobytes(), int(y)) for x, y, w in per_worker for x, y, w in zip(x, y, w, strict=True) if w > 0]
        folder_ = _all(pipeline.make_dataset(getattr(splits, split), (12, 12), 64, training=False, seed=0))
        assert sorted(real) == sorted((x.tobytes(), int(y)) for x, y in zip(*folder_, strict=True))
        for _, y, w in per_worker:  # real images weigh their class weight (or 1), padding 0
            expected = np.array([weights[label] if training else 1.0 for label in y], np.float32)
            assert set(np.round(w / expected, 6)) <= {0.0, 1.0}
        assert sum(int((w == 0).sum()) for _, _, w in per_worker) == -(-n // 8) * 8 - n


def test_the_prepare_command_writes_the_set_a_search_with_the_same_flags_reads(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", classes=2, per_class=10, size=12)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "trainer", "prepare", "--data", str(root), "--image-size", "12",
                             "--run-dir", str(tmp_path / "runs"), "--seed", "4", "--backbone", "small_cnn"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    splits = scan.scan(root, val_fraction=0.2, test_fraction=0.1, seed=4)  # the search's default split settings
    records = prepared.open_prepared(tmp_path / "runs" / "prepared", splits.fingerprint, (12, 12))
    assert records is not None and f"prepared: {records.path} " in result.stdout
    assert records.count("train") == len(splits.train) and records.count("test") == len(splits.test) > 0


def test_a_writer_that_loses_the_rename_race_reuses_the_winners_set(tmp_path: Path) -> None:
    """Without a working flock (some network file systems) two writers both write; the set stays whole."""
    root = write_folder(tmp_path / "data", classes=2, per_class=6, size=12)
    splits = scan.scan(root, seed=1)
    first = prepared.write_prepared(splits, (12, 12), tmp_path / "store", seed=1)
    shard = first.path / first.files["train"][0].name
    inode = shard.stat().st_ino
    assert prepared.write_prepared(splits, (12, 12), tmp_path / "store", seed=1) == first
    assert shard.stat().st_ino == inode and not list((tmp_path / "store").glob(".*.partial"))
