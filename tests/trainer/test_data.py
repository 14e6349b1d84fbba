"""The data module: folder scan and its errors, seeded split, fingerprint, embedded digits, tf.data pipelines."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from trainer import augment, pipeline
from trainer import scan as scan_module
from trainer.errors import ConfigError, DataError
from trainer.scan import DIGITS_MARKER, DataSplits, ImageFile, ensure_digits, scan

if TYPE_CHECKING:
    import tensorflow as tf

REPO = Path(__file__).resolve().parents[2]


def _save(path: Path, array: np.ndarray, fmt: str | None = None, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(path, format=fmt)
    return path


def _flat(value: int, size: int = 8) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def _folder(root: Path, counts: dict[str, int], size: int = 8, ext: str = "png") -> Path:
    """`root/<class>/<i>.<ext>`; image i of class k is a flat gray of value 8 * (global index) + 1."""
    index = 0
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            _save(root / name / f"{i:03d}.{ext}", _flat(8 * index + 1, size))
            index += 1
    return root


def _ids(files: tuple[ImageFile, ...]) -> list[str]:
    return [f.path.as_posix() for f in files]


@pytest.fixture
def three_classes(tmp_path: Path) -> Path:
    return _folder(tmp_path / "images", {"cat": 10, "ant": 10, "bee": 10})


# ----------------------------------------------------------------------------------------- API


def test_public_names_are_exactly_the_documented_ones() -> None:
    assert scan_module.__all__ == [
        "DIGITS_IMAGE_SIZE", "DIGITS_MARKER", "IMAGE_EXTENSIONS", "DataSplits", "ImageFile", "ensure_digits",
        "median_image_side", "scan",
    ]
    assert pipeline.__all__ == [
        "DISK_SHUFFLE_BUFFER_BYTES", "MEMORY_CACHE_CAP_BYTES", "MEMORY_CACHE_FRACTION", "Shard", "available_memory",
        "choose_cache", "decode_image", "decoded_bytes", "distributed_dataset", "global_batch_size", "load_arrays",
        "make_dataset", "memory_cache_budget", "shard_files",
    ]
    assert augment.__all__ == ["augmentation", "layer"]
    for module in (scan_module, pipeline, augment):
        assert all(hasattr(module, name) for name in module.__all__)


def test_median_image_side_reads_the_shorter_side_of_each_file(tmp_path: Path) -> None:
    files = []
    for i, (width, height) in enumerate([(40, 30), (100, 500), (64, 64), (20, 90), (300, 200)]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (width, height)).save(path)
        files.append(scan_module.ImageFile(path, 0))
    assert scan_module.median_image_side(files) == 64  # shorter sides 30, 100, 64, 20, 200
    assert scan_module.median_image_side([]) is None


def test_scan_runs_without_importing_tensorflow(three_classes: Path) -> None:
    code = (
        "import sys; from trainer.scan import scan; s = scan(sys.argv[1]);"
        "assert len(s.train) == 24, s; bad = [m for m in ('tensorflow', 'keras') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code, str(three_classes)], check=True, cwd=REPO, timeout=60)


# ------------------------------------------------------------------------------------ split


def test_split_is_sorted_stratified_disjoint_and_complete(three_classes: Path) -> None:
    splits = scan(three_classes, val_fraction=0.2, test_fraction=0.1, seed=7)
    assert splits.class_names == ("ant", "bee", "cat") and splits.num_classes == 3 and not splits.explicit
    for split, expected in (("train", 7), ("val", 2), ("test", 1)):
        assert splits.counts(split) == {"ant": expected, "bee": expected, "cat": expected}
    every = _ids(splits.train) + _ids(splits.val) + _ids(splits.test)
    assert len(set(every)) == 30 and sorted(every) == sorted(p.as_posix() for p in three_classes.glob("*/*.png"))
    for f in splits.train + splits.val + splits.test:
        assert splits.class_names[f.label] == f.path.parent.name
    assert splits.skipped == () and splits.root == three_classes


def test_same_seed_gives_the_same_split_and_another_seed_another(three_classes: Path) -> None:
    first, again, other = (scan(three_classes, seed=s) for s in (1, 1, 2))
    assert first == again
    assert _ids(first.val) != _ids(other.val)
    assert other.counts("val") == first.counts("val") == {"ant": 2, "bee": 2, "cat": 2}


def test_split_does_not_depend_on_the_folder_location(three_classes: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(three_classes, tmp_path / "elsewhere" / "copy")
    a, b = scan(three_classes, seed=3), scan(copy, seed=3)
    assert [f.path.relative_to(three_classes) for f in a.val] == [f.path.relative_to(copy) for f in b.val]
    assert a.fingerprint == b.fingerprint


@pytest.mark.parametrize(
    ("val_fraction", "test_fraction"),
    [(0.0, 0.0), (1.0, 0.0), (0.2, -0.1), (0.5, 0.5)],
    ids=["no-val", "all-val", "negative-test", "nothing-left-to-train"],
)
def test_bad_fractions_are_rejected(three_classes: Path, val_fraction: float, test_fraction: float) -> None:
    with pytest.raises(ConfigError, match="Expected"):
        scan(three_classes, val_fraction=val_fraction, test_fraction=test_fraction)


def test_a_class_too_small_to_split_names_its_folder(tmp_path: Path) -> None:
    root = _folder(tmp_path / "small", {"a": 5, "b": 2})
    with pytest.raises(DataError, match=r"at least 3 readable images in class folder .*small/b.*Received: 2"):
        scan(root, val_fraction=0.2, test_fraction=0.1)


def test_binary_data_gets_labels_zero_and_one(tmp_path: Path) -> None:
    splits = scan(_folder(tmp_path / "bin", {"no": 5, "yes": 5}))
    assert splits.class_names == ("no", "yes")
    assert {f.label for f in splits.train} == {f.label for f in splits.val} == {0, 1}


# ------------------------------------------------------------------------------ explicit splits


def test_explicit_split_folders_are_used_as_they_are(tmp_path: Path) -> None:
    root = tmp_path / "explicit"
    _folder(root / "train", {"x": 4, "y": 3})
    _folder(root / "val", {"x": 2, "y": 1})
    _folder(root / "test", {"x": 1, "y": 1})
    splits = scan(root, val_fraction=0.5, seed=1)
    assert splits.explicit and splits.class_names == ("x", "y")
    assert splits.counts("train") == {"x": 4, "y": 3} and splits.counts("val") == {"x": 2, "y": 1}
    assert splits.counts("test") == {"x": 1, "y": 1}
    assert all(f.path.parts[-3] == "train" for f in splits.train)
    assert all(f.path.parts[-3] == "val" for f in splits.val)
    assert scan(root, seed=1).train == splits.train


def test_explicit_splits_without_test_have_an_empty_test_split(tmp_path: Path) -> None:
    root = tmp_path / "explicit"
    _folder(root / "train", {"x": 2, "y": 2})
    _folder(root / "val", {"x": 1, "y": 1})
    assert scan(root, test_fraction=0.3).test == ()


def test_explicit_splits_with_different_classes_name_both_folders(tmp_path: Path) -> None:
    root = tmp_path / "explicit"
    _folder(root / "train", {"x": 2, "y": 2, "z": 2})
    _folder(root / "val", {"x": 1, "y": 1})
    with pytest.raises(DataError, match="same class folders") as caught:
        scan(root)
    message = str(caught.value)
    assert str(root / "train") in message and str(root / "val") in message and "only in train: ['z']" in message


@pytest.mark.parametrize(
    ("folders", "expected"),
    [(("train", "test"), "only \\['test', 'train'\\]"), (("train", "val", "extra"), "also \\['extra'\\]")],
    ids=["val-missing", "stray-folder"],
)
def test_incomplete_explicit_layouts_are_errors(tmp_path: Path, folders: tuple[str, ...], expected: str) -> None:
    root = tmp_path / "explicit"
    for name in folders:
        _folder(root / name, {"x": 2, "y": 2})
    with pytest.raises(DataError, match=expected) as caught:
        scan(root)
    assert str(root) in str(caught.value)


# ----------------------------------------------------------------------------- bad files


def _bad_file(kind: str, folder: Path) -> Path:
    rng = np.random.default_rng(0)
    good_jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(good_jpeg, format="JPEG")
    if kind == "garbage-png":
        path = folder / "broken.png"
        path.write_bytes(b"this is not a png at all" * 10)
    elif kind == "empty-jpg":
        path = folder / "empty.jpg"
        path.write_bytes(b"")
    elif kind == "truncated-jpeg":
        path = folder / "cut.JPEG"
        path.write_bytes(good_jpeg.getvalue()[: len(good_jpeg.getvalue()) // 2])
    elif kind == "notes-txt":
        path = folder / "notes.txt"
        path.write_text("labels were checked by hand\n")
    elif kind == "tiff-named-png":
        path = _save(folder / "scan.png", _flat(50), fmt="TIFF")
    elif kind == "one-bit-bmp":
        path = _save(folder / "mask.bmp", _flat(255), mode="1")
    elif kind == "palette-bmp":
        colours = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        path = _save(folder / "palette.bmp", colours, mode="P")
    else:
        raise AssertionError(kind)
    return path


BAD_KINDS = {
    "garbage-png": "not a readable image",
    "empty-jpg": "empty file",
    "truncated-jpeg": "not a readable image",
    "notes-txt": "not an image file",
    "tiff-named-png": "TIFF image",
    "one-bit-bmp": "1-bit",
    "palette-bmp": "palette BMP",
}


@pytest.mark.parametrize("kind", sorted(BAD_KINDS), ids=sorted(BAD_KINDS))
def test_bad_files_are_skipped_and_reported_by_path(three_classes: Path, kind: str) -> None:
    bad = _bad_file(kind, three_classes / "bee")
    splits = scan(three_classes, seed=1)
    assert len(splits.skipped) == 1
    path, reason = splits.skipped[0]
    assert path == bad and BAD_KINDS[kind] in reason
    used = _ids(splits.train) + _ids(splits.val)
    assert bad.as_posix() not in used and len(used) == 30


@pytest.mark.parametrize("kind", ["garbage-png", "notes-txt"], ids=["garbage-png", "notes-txt"])
def test_strict_mode_fails_naming_every_bad_file(three_classes: Path, kind: str) -> None:
    bad = _bad_file(kind, three_classes / "bee")
    other = _bad_file("empty-jpg", three_classes / "cat")
    with pytest.raises(DataError, match=r"strict mode\). Received: 2 bad file") as caught:
        scan(three_classes, strict=True)
    assert str(bad) in str(caught.value) and str(other) in str(caught.value)


def test_skipped_files_are_logged(three_classes: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = _bad_file("garbage-png", three_classes / "ant")
    with caplog.at_level("WARNING", logger="trainer.scan"):
        scan(three_classes)
    assert "skipped 1 unreadable or non-image file" in caplog.text and str(bad) in caplog.text


def test_hidden_files_and_folders_are_ignored(three_classes: Path) -> None:
    (three_classes / "ant" / ".DS_Store").write_bytes(b"\0\1junk")
    _folder(three_classes / ".thumbnails", {"ant": 3, "bee": 3})
    _save(three_classes / "cat" / ".cache" / "x.png", _flat(3))
    splits = scan(three_classes)
    assert splits.skipped == () and splits.class_names == ("ant", "bee", "cat")
    assert len(splits.train) + len(splits.val) == 30


def test_images_in_nested_folders_belong_to_their_class(three_classes: Path) -> None:
    _save(three_classes / "ant" / "2024" / "deep.png", _flat(7))
    splits = scan(three_classes)
    nested = [f for f in splits.train + splits.val if f.path.name == "deep.png"]
    assert len(nested) == 1 and splits.class_names[nested[0].label] == "ant"


# --------------------------------------------------------------------------- folder errors


def _missing(tmp: Path) -> Path:
    return tmp / "no" / "such" / "folder"


def _a_file(tmp: Path) -> Path:
    path = tmp / "images.zip"
    path.write_bytes(b"PK")
    return path


def _no_classes(tmp: Path) -> Path:
    root = tmp / "flat"
    root.mkdir()
    _save(root / "a.png", _flat(1))
    return root


def _single_class(tmp: Path) -> Path:
    return _folder(tmp / "single", {"only": 3})


def _empty_class(tmp: Path) -> Path:
    root = _folder(tmp / "images", {"a": 3, "b": 3})
    (root / "c").mkdir()
    (root / "c" / ".keep").touch()
    return root


def _all_bad_class(tmp: Path) -> Path:
    root = _folder(tmp / "images", {"a": 3, "b": 3})
    (root / "c").mkdir()
    (root / "c" / "x.png").write_bytes(b"junk")
    return root


FOLDER_ERRORS = {
    "missing-folder": (_missing, "no such file or folder", ""),
    "a-file": (_a_file, "(a file)", ""),
    "no-class-folders": (_no_classes, "no sub-folders", ""),
    "single-class": (_single_class, "at least 2 class sub-folders", ""),
    "empty-class-folder": (_empty_class, "empty class folder", "c"),
    "only-bad-files": (_all_bad_class, "at least one readable image", "c"),
}


@pytest.mark.parametrize("case", sorted(FOLDER_ERRORS), ids=sorted(FOLDER_ERRORS))
def test_unusable_folders_raise_data_error_naming_the_path(tmp_path: Path, case: str) -> None:
    make, expected, child = FOLDER_ERRORS[case]
    root = make(tmp_path)
    with pytest.raises(DataError, match="Expected") as caught:
        scan(root)
    assert isinstance(caught.value, ValueError)
    assert expected in str(caught.value) and str(root / child if child else root) in str(caught.value)


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_and_ignores_skipped_files(three_classes: Path) -> None:
    before = scan(three_classes).fingerprint
    assert len(before) == 64 and scan(three_classes).fingerprint == before
    _bad_file("notes-txt", three_classes / "ant")
    assert scan(three_classes).fingerprint == before


def _edit_pixels(root: Path) -> None:
    """Other pixels, same size on disk: only a content digest can tell."""
    path = root / "ant" / "000.png"
    size, original = path.stat().st_size, np.asarray(Image.open(path))
    for value in range(256):
        buffer = io.BytesIO()
        Image.fromarray(_flat(value)).save(buffer, format="PNG")
        if len(buffer.getvalue()) == size and not (original == value).all():
            path.write_bytes(buffer.getvalue())
            return
    raise AssertionError("no same-size replacement found")


def _add_file(root: Path) -> None:
    _save(root / "ant" / "new.png", _flat(99))


def _rename_file(root: Path) -> None:
    (root / "ant" / "000.png").rename(root / "ant" / "zzz.png")


def _move_to_other_class(root: Path) -> None:
    (root / "ant" / "000.png").rename(root / "bee" / "moved.png")


CHANGES = {"edit-pixels": _edit_pixels, "add-file": _add_file, "rename-file": _rename_file,
           "move-class": _move_to_other_class}


@pytest.mark.parametrize("change", sorted(CHANGES), ids=sorted(CHANGES))
def test_fingerprint_changes_with_the_files_used(three_classes: Path, change: str) -> None:
    size_before = (three_classes / "ant" / "000.png").stat().st_size
    before = scan(three_classes).fingerprint
    CHANGES[change](three_classes)
    if change == "edit-pixels":
        assert (three_classes / "ant" / "000.png").stat().st_size == size_before
    assert scan(three_classes).fingerprint != before


def test_fingerprint_changes_with_the_split_settings(three_classes: Path) -> None:
    prints = {scan(three_classes, seed=1).fingerprint, scan(three_classes, seed=2).fingerprint,
              scan(three_classes, seed=1, val_fraction=0.3).fingerprint}
    assert len(prints) == 3


# --------------------------------------------------------------------------- embedded digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_digits(tmp_path_factory.mktemp("digits") / "embedded")


def test_digits_are_1797_bright_on_dark_32x32_rgb_pngs(digits: Path) -> None:
    files = sorted(digits.glob("*/*.png"))
    assert len(files) == 1797 and sorted(p.name for p in digits.iterdir() if p.is_dir()) == [str(i) for i in range(10)]
    stack = np.stack([np.asarray(Image.open(p)) for p in files[::50]])
    assert all(Image.open(p).mode == "RGB" and Image.open(p).size == (32, 32) for p in files[::50])
    assert stack.shape[1:] == (32, 32, 3) and stack.dtype == np.uint8
    assert stack.mean() < 100 and stack.max() == 255 and stack.min() == 0
    assert (stack[..., 0] == stack[..., 1]).all() and (stack[..., 1] == stack[..., 2]).all()
    marker = json.loads((digits / DIGITS_MARKER).read_text())
    assert marker["images"] == 1797 and marker["upscale"] == "nearest"
    assert not [p for p in digits.parent.iterdir() if p.name.endswith(".partial")]


def test_digits_pixels_are_the_scikit_learn_scans_upscaled(digits: Path) -> None:
    from sklearn.datasets import load_digits

    source = load_digits()
    index = 123
    written = np.asarray(Image.open(digits / str(source.target[index]) / f"{index:04d}.png"))[..., 0]
    expected = np.rint(source.images[index] * 255 / 16).astype(np.uint8).repeat(4, 0).repeat(4, 1)
    np.testing.assert_array_equal(written, expected)


def test_ensure_digits_is_idempotent(digits: Path) -> None:
    marker = digits / DIGITS_MARKER
    stamp = marker.stat().st_mtime_ns
    assert ensure_digits(digits) == digits and marker.stat().st_mtime_ns == stamp
    splits = scan(digits, val_fraction=0.2, test_fraction=0.1, seed=42)
    assert splits.class_names == tuple(str(i) for i in range(10)) and splits.skipped == ()
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert all(n > 0 for split in ("train", "val", "test") for n in splits.counts(split).values())


def test_ensure_digits_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    foreign = tmp_path / "embedded"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match=f"{foreign}.*without the marker"):
        ensure_digits(foreign)
    assert (foreign / "mine.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------ pipelines


def test_pipeline_yields_uint8_pixels_and_int_labels_in_order(three_classes: Path) -> None:
    import tensorflow as tf

    splits = scan(three_classes)
    dataset = pipeline.make_dataset(splits.val, (8, 8), 4, training=False, seed=0)
    assert dataset.element_spec[0].shape.as_list() == [None, 8, 8, 3]
    # uint8 to the device (a quarter of float32's bytes); the model casts at its input.
    assert dataset.element_spec[0].dtype == tf.uint8 and dataset.element_spec[1].dtype == tf.int32
    batches = list(dataset.as_numpy_iterator())
    assert [len(y) for _, y in batches] == [4, 2]
    pixels = np.concatenate([x for x, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(labels, [f.label for f in splits.val])
    expected = np.stack([np.asarray(Image.open(f.path).convert("RGB")) for f in splits.val]).astype(np.float32)
    np.testing.assert_array_equal(pixels, expected)


def test_pipeline_resizes_to_the_requested_size(three_classes: Path) -> None:
    splits = scan(three_classes)
    x, y = next(iter(pipeline.make_dataset(splits.train, (5, 12), 3, training=True, seed=0)))
    assert x.shape == (3, 5, 12, 3) and y.shape == (3,)
    assert float(x.numpy().min()) >= 0 and float(x.numpy().max()) <= 255
    np.testing.assert_array_equal(x.numpy(), np.round(x.numpy()))


def test_training_order_is_seeded_reshuffled_per_epoch_and_complete(three_classes: Path) -> None:
    files = scan(three_classes).train

    def epochs(seed: int, count: int = 2) -> list[list[float]]:
        dataset = pipeline.make_dataset(files, (8, 8), 5, training=True, seed=seed)
        return [[float(v) for x, _ in dataset.as_numpy_iterator() for v in x[:, 0, 0, 0]] for _ in range(count)]

    first, again, other = epochs(1), epochs(1), epochs(2)
    assert first == again
    assert first[0] != first[1] and first != other
    assert sorted(first[0]) == sorted(first[1]) == sorted(other[0]) and len(set(first[0])) == len(files)


FORMATS = [
    ("png", "L"), ("png", "RGB"), ("png", "RGBA"), ("png", "P"),
    ("jpg", "L"), ("jpeg", "RGB"),
    ("bmp", "L"), ("bmp", "RGB"),
    ("gif", "L"), ("gif", "P"),
]


@pytest.mark.parametrize(("ext", "mode"), FORMATS, ids=[f"{e}-{m}" for e, m in FORMATS])
def test_formats_decode_to_three_channels_like_pillow(tmp_path: Path, ext: str, mode: str) -> None:
    rng = np.random.default_rng(5)
    for name in ("a", "b"):
        array = rng.integers(0, 255, (6, 10, 3), dtype=np.uint8)
        if mode == "RGBA":
            array = np.concatenate([array, rng.integers(0, 255, (6, 10, 1), dtype=np.uint8)], axis=-1)
        for i in range(2):
            _save(tmp_path / "fmt" / name / f"{i}.{ext.upper() if i else ext}", array, mode=mode)
    splits = scan(tmp_path / "fmt")
    assert splits.skipped == ()
    files = splits.train + splits.val
    pixels, labels = pipeline.load_arrays(files, (6, 10))
    assert pixels.shape == (4, 6, 10, 3) and pixels.dtype == np.float32 and labels.dtype == np.int32
    expected = np.stack([np.asarray(Image.open(f.path).convert("RGB")) for f in files]).astype(np.float32)
    tolerance = 4 if ext in ("jpg", "jpeg") else 0  # two JPEG decoders may round the IDCT differently
    np.testing.assert_allclose(pixels, expected, atol=tolerance)


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(_flat(v)) for v in (40, 200)]
    for name in ("a", "b"):
        (tmp_path / "gif" / name).mkdir(parents=True)
        for i in range(2):
            frames[0].save(tmp_path / "gif" / name / f"{i}.gif", save_all=True, append_images=frames[1:])
    pixels, _ = pipeline.load_arrays(scan(tmp_path / "gif").train, (8, 8))
    assert pixels.shape == (2, 8, 8, 3) and (np.abs(pixels - 40) <= 1).all()


def test_load_arrays_matches_the_pipeline(three_classes: Path) -> None:
    files = scan(three_classes).train
    x, y = pipeline.load_arrays(files, (6, 6))
    batches = list(pipeline.make_dataset(files, (6, 6), 7, training=False, seed=0).as_numpy_iterator())
    np.testing.assert_array_equal(x, np.concatenate([b[0] for b in batches]))
    np.testing.assert_array_equal(y, np.concatenate([b[1] for b in batches]))
    assert pipeline.load_arrays((), (6, 6))[0].shape == (0, 6, 6, 3)


def test_decode_image_is_the_serving_path(three_classes: Path) -> None:
    import tensorflow as tf

    files = scan(three_classes).val[:3]
    batch = next(iter(pipeline.make_dataset(files, (4, 5), 3, training=False, seed=0)))[0].numpy()
    served = tf.map_fn(lambda b: pipeline.decode_image(b, (4, 5)), tf.constant([f.path.read_bytes() for f in files]),
                       fn_output_signature=tf.TensorSpec([4, 5, 3], tf.float32))
    np.testing.assert_array_equal(served.numpy(), batch.astype(np.float32))


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda f: pipeline.make_dataset(f, (8, 8), 0, training=False, seed=0), ConfigError),
        (lambda f: pipeline.make_dataset(f, (8,), 2, training=False, seed=0), ConfigError),
        (lambda f: pipeline.make_dataset((), (8, 8), 2, training=False, seed=0), DataError),
    ],
    ids=["zero-batch", "one-number-size", "no-files"],
)
def test_bad_pipeline_arguments_are_rejected(three_classes: Path, call, error: type[Exception]) -> None:
    with pytest.raises(error, match="Expected"):
        call(scan(three_classes).train)


# ---------------------------------------------------------------------------- distribution


@pytest.mark.parametrize(("per_replica", "replicas", "expected"), [(32, 1, 32), (16, 4, 64)], ids=["one", "four"])
def test_global_batch_size(per_replica: int, replicas: int, expected: int) -> None:
    assert pipeline.global_batch_size(per_replica, replicas) == expected


def test_global_batch_size_rejects_nonsense() -> None:
    with pytest.raises(ConfigError, match="replicas=0"):
        pipeline.global_batch_size(8, 0)


def _worker_shard(dataset: tf.data.Dataset, workers: int, index: int) -> tf.data.Dataset:
    """What `tf.distribute` does to the data set on worker `index` (one replica per worker).

    Mirrors ``input_lib.DistributedDataset._create_cloned_datasets_from_dataset`` in TF 2.21:
    rebatch each global batch into per-replica pieces, then auto-shard under the data set's
    own `auto_shard_policy`.
    """
    from tensorflow.python.data.experimental.ops import distribute
    from tensorflow.python.distribute import input_ops

    sizes = distribute.batch_sizes_for_worker(distribute.compute_batch_size(dataset), workers, 1, index)
    return input_ops.auto_shard_dataset(dataset.rebatch(sizes), workers, index, workers)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_two_workers_get_disjoint_shards_that_cover_the_data(three_classes: Path, training: bool) -> None:
    files = scan(three_classes, val_fraction=0.2).train  # 24 files; 24 % 10 leaves a partial last batch
    # Each worker process builds its own pipeline and iterates it once per epoch.
    workers = [_worker_shard(pipeline.make_dataset(files, (8, 8), pipeline.global_batch_size(5, 2), training=training,
                                               seed=3), 2, i) for i in range(2)]
    for _ in range(2):  # two epochs: the shuffle must agree across workers in each
        shards = [[x[:, 0, 0, 0].tolist() for x, _ in worker.as_numpy_iterator()] for worker in workers]
        seen = [sorted(v for batch in shard for v in batch) for shard in shards]
        assert len(shards[0]) == len(shards[1]) == 3  # same number of steps on every worker
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == sorted(8.0 * i + 1 for i in range(30) if _in(files, i))


def _in(files: tuple[ImageFile, ...], index: int) -> bool:
    names = {(f.path.parent.name, f.path.name) for f in files}
    order = [(c, f"{i:03d}.png") for c in ("cat", "ant", "bee") for i in range(10)]  # `_folder` write order
    return order[index] in names


def test_file_autosharding_is_refused_for_a_file_name_list(three_classes: Path) -> None:
    """Why the pipeline sets DATA: FILE finds no file-reader dataset to split in it."""
    import tensorflow as tf

    dataset = pipeline.make_dataset(scan(three_classes).train, (8, 8), 4, training=True, seed=0)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.FILE
    with pytest.raises(tf.errors.NotFoundError, match="unshardable"):
        list(_worker_shard(dataset.with_options(options), 2, 0))


_MWMS_WORKER = """
import json, sys
import tensorflow as tf
from trainer import pipeline, scan
strategy = tf.distribute.MultiWorkerMirroredStrategy()
files = scan.scan(sys.argv[1], val_fraction=0.2).train
dataset = pipeline.make_dataset(files, (8, 8), pipeline.global_batch_size(5, strategy.num_replicas_in_sync),
                            training=True, seed=3)
epochs = []
for _ in range(2):
    seen = []
    for x, _ in strategy.experimental_distribute_dataset(dataset):
        seen.append([v for part in strategy.experimental_local_results(x) for v in part[:, 0, 0, 0].numpy().tolist()])
    epochs.append(seen)
json.dump(epochs, open(sys.argv[2], "w"))
"""


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_shards_are_disjoint_and_cover(three_classes: Path, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(_MWMS_WORKER))
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        command = [sys.executable, str(script), str(three_classes), str(tmp_path / f"{index}.json")]
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=240)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    results = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
    files = scan(three_classes, val_fraction=0.2).train
    expected = sorted(8.0 * i + 1 for i in range(30) if _in(files, i))
    for epoch in range(2):
        steps = [results[w][epoch] for w in range(2)]
        assert len(steps[0]) == len(steps[1])
        seen = [sorted(v for step in worker for v in step) for worker in steps]
        assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == expected


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_is_none_when_everything_is_off() -> None:
    assert augment.augmentation("none", 0.0, 0.0) is None and augment.augmentation(False) is None


@pytest.mark.parametrize(
    ("flip", "rotation", "zoom", "layers"),
    [
        ("none", 0.05, 0.1, ["augment_rotation", "augment_zoom"]),
        ("horizontal", 0.0, 0.0, ["augment_flip"]),
        (True, 0.1, 0.0, ["augment_flip", "augment_rotation"]),
    ],
    ids=["digits-default", "flip-only", "bool-flip"],
)
def test_augmentation_layers_and_inference_pass_through(flip, rotation: float, zoom: float, layers: list[str]) -> None:
    model = augment.augmentation(flip, rotation, zoom, seed=1)
    assert model is not None and [layer.name for layer in model.layers] == layers
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(images, training=False)), images)
    assert not np.allclose(np.asarray(model(images, training=True)), images) or layers == ["augment_flip"]


@pytest.mark.parametrize(
    "kwargs", [{"flip": "sideways"}, {"rotation": -0.1}, {"zoom": 1.5}], ids=["flip", "rotation", "zoom"]
)
def test_augmentation_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="Expected"):
        augment.augmentation(**kwargs)


def test_datasplits_is_frozen(three_classes: Path) -> None:
    splits: DataSplits = scan(three_classes)
    with pytest.raises(AttributeError):
        splits.train = ()  # type: ignore[misc]


def test_a_symlink_loop_inside_a_class_folder_is_listed_once(three_classes: Path) -> None:
    (three_classes / "ant" / "loop").symlink_to(three_classes / "ant", target_is_directory=True)
    splits = scan(three_classes)
    assert len(splits.train) + len(splits.val) == 30


# --------------------------------------------------------------------------- multi-worker padding


@pytest.mark.parametrize("count", [9, 16, 17], ids=["partial", "exact", "one-over"])
def test_padding_to_full_batches_keeps_every_real_image_once_with_weight_one(digits: Path, count: int) -> None:
    files = [ImageFile(path, 0) for path in sorted(digits.glob("3/*.png"))[:count]]
    dataset = pipeline.make_dataset(files, (32, 32), 8, training=True, seed=1, pad_to_full_batches=True)
    batches = list(dataset.as_numpy_iterator())
    assert all(x.shape[0] == 8 for x, _y, _w in batches), "every global batch is full"
    weights = np.concatenate([w for _x, _y, w in batches])
    assert weights.sum() == count and len(weights) == -(-count // 8) * 8
    assert set(np.unique(weights)) <= {0.0, 1.0}
    unpadded = pipeline.make_dataset(files, (32, 32), 8, training=False, seed=1)
    assert sum(x.shape[0] for x, _y in unpadded.as_numpy_iterator()) == count


def test_class_weights_become_sample_weights(digits: Path) -> None:
    files = [ImageFile(path, label) for label in (0, 1) for path in sorted(digits.glob(f"{label}/*.png"))[:5]]
    dataset = pipeline.make_dataset(files, (32, 32), 4, training=False, seed=1, class_weights=[1.0, 3.0])
    batches = list(dataset.as_numpy_iterator())
    labels = np.concatenate([y for _x, y, _w in batches])
    weights = np.concatenate([w for _x, _y, w in batches])
    np.testing.assert_array_equal(weights, np.where(labels == 1, 3.0, 1.0))


# ---------------------------------------------------------------------- per-worker shards, uint8, cache


def _files(count: int, classes: int = 3) -> list[ImageFile]:
    return [ImageFile(Path(f"/data/{i % classes}/{i:04d}.png"), i % classes) for i in range(count)]


SHARDINGS = [(24, 10, 2, True), (24, 10, 2, False), (30, 10, 2, True), (7, 8, 4, True), (101, 12, 3, False),
             (5, 6, 1, True)]


@pytest.mark.parametrize(("count", "global_batch", "shards", "training"), SHARDINGS,
                         ids=[f"{n}files-b{b}-{s}shards-{'train' if t else 'eval'}" for n, b, s, t in SHARDINGS])
def test_shards_are_disjoint_equal_and_cover_every_real_file_once(count: int, global_batch: int, shards: int,
                                                                  training: bool) -> None:
    files = _files(count)
    parts = [pipeline.shard_files(files, global_batch, num_shards=shards, index=i, training=training, seed=7)
             for i in range(shards)]
    steps = -(-count // global_batch)
    padded = steps * global_batch if shards > 1 else count
    assert [len(p.files) for p in parts] == [padded // shards] * shards  # equal: same steps on every worker
    assert all(len(p.files) == len(p.weights) and p.padded_total == padded for p in parts)
    real = [f for p in parts for f, w in zip(p.files, p.weights, strict=True) if w > 0]
    assert sorted(f.path for f in real) == sorted(f.path for f in files)  # every real file exactly once
    weights = [w for p in parts for w in p.weights]
    assert sum(w == 0 for w in weights) == padded - count and set(weights) <= {0.0, 1.0}
    again = [pipeline.shard_files(files, global_batch, num_shards=shards, index=i, training=training, seed=7)
             for i in range(shards)]
    assert again == parts  # deterministic: every worker computes the same partition on its own


def test_training_shards_are_a_seeded_sample_and_eval_shards_keep_the_order() -> None:
    files = _files(40)
    train = [pipeline.shard_files(files, 8, num_shards=2, index=i, training=True, seed=1).files for i in range(2)]
    other = [pipeline.shard_files(files, 8, num_shards=2, index=i, training=True, seed=2).files for i in range(2)]
    assert train != other and sorted(train[0] + train[1], key=str) == sorted(other[0] + other[1], key=str)
    assert {f.label for f in train[0]} == {0, 1, 2}  # a sample of every class, not a block of the sorted list
    evaluation = pipeline.shard_files(files, 8, training=False, seed=1).files
    assert list(evaluation) == files  # one eval pipeline keeps the order: model.predict lines up with the labels


def test_class_weights_follow_their_files_into_the_shards() -> None:
    files = _files(10, classes=2)
    parts = [pipeline.shard_files(files, 4, num_shards=2, index=i, training=True, seed=3, class_weights=[1.0, 2.5])
             for i in range(2)]
    real = [(f.label, w) for p in parts for f, w in zip(p.files, p.weights, strict=True) if w > 0]
    assert sorted(real) == sorted((f.label, 2.5 if f.label else 1.0) for f in files)


def test_bad_shard_arguments_are_rejected() -> None:
    with pytest.raises(ConfigError, match="index=2"):
        pipeline.shard_files(_files(4), 4, num_shards=2, index=2, training=False, seed=0)
    with pytest.raises(ConfigError, match="divisible"):
        pipeline.shard_files(_files(3), 3, num_shards=2, index=0, training=False, seed=0)


class _Pipelines:
    """A strategy stand-in that calls the pipeline function with explicit input contexts (N workers, 1 replica each)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def distribute_datasets_from_function(self, fn: Any) -> list[Any]:
        import tensorflow as tf

        return [fn(tf.distribute.InputContext(self.workers, i, self.workers)) for i in range(self.workers)]


def _values(batches: list[tuple[np.ndarray, ...]]) -> list[int]:
    return [int(v) for x, *_ in batches for v in x[:, 0, 0, 0]]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_each_worker_pipeline_decodes_only_its_shard(three_classes: Path, training: bool) -> None:
    files = scan(three_classes, val_fraction=0.2).train  # 24 files, global batch 10: padded to 30
    pipelines = pipeline.distributed_dataset(_Pipelines(2), files, (8, 8), 10, training=training, seed=3,
                                         pad_to_full_batches=True)
    for _ in range(2):
        runs = [list(p.as_numpy_iterator()) for p in pipelines]
        assert [len(r) for r in runs] == [3, 3] and all(len(x) == 5 for r in runs for x, _, _ in r)  # per replica
        real = [[v for (x, _, w) in r for v, weight in zip(x[:, 0, 0, 0], w, strict=True) if weight > 0]
                for r in runs]
        assert not set(real[0]) & set(real[1])
        expected = sorted(8 * i + 1 for i in range(30) if _in(files, i))  # each file is a flat gray 8 * index + 1
        assert sorted(real[0] + real[1]) == expected


def test_one_process_gets_one_pipeline_batched_by_the_global_batch(three_classes: Path) -> None:
    import tensorflow as tf

    files = scan(three_classes).train
    dataset = pipeline.distributed_dataset(tf.distribute.get_strategy(), files, (8, 8), 4, training=False, seed=0)
    plain = pipeline.make_dataset(files, (8, 8), 4, training=False, seed=0)
    assert isinstance(dataset, tf.data.Dataset) and dataset.element_spec[0].dtype == tf.uint8
    for (x, y), (x2, y2) in zip(dataset.as_numpy_iterator(), plain.as_numpy_iterator(), strict=True):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)


def test_the_model_casts_uint8_batches_and_trains_as_on_float32(three_classes: Path) -> None:
    import keras_tuner as kt
    import tensorflow as tf

    from trainer.hypermodel import ModelSpec, TransferHyperModel

    files = scan(three_classes).train

    def as_float(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.cast(x, tf.float32), y

    # Each fit gets its own, identically seeded data set: a shuffled data set moves on with every iterator.
    train = {"uint8": pipeline.make_dataset(files, (16, 16), 8, training=True, seed=1),
             "float32": pipeline.make_dataset(files, (16, 16), 8, training=True, seed=1).map(as_float)}
    pixels = pipeline.make_dataset(files, (16, 16), 8, training=False, seed=1)
    assert train["uint8"].element_spec[0].dtype == tf.uint8 and train["float32"].element_spec[0].dtype == tf.float32
    spec = ModelSpec(num_classes=3, image_size=16, heads=("gap_dense",), augmentation=(("rotation", 0.05),))
    trained = {}
    for name, dataset in train.items():
        model = TransferHyperModel(spec).build(kt.HyperParameters())
        model.fit(dataset, epochs=2, verbose=0)
        trained[name] = (model.get_weights(), model.predict(pixels, verbose=0),
                         model.predict(pixels.map(as_float), verbose=0))
    for a, b in zip(trained["uint8"][0], trained["float32"][0], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(trained["uint8"][1], trained["uint8"][2])  # predict casts too
    np.testing.assert_array_equal(trained["uint8"][1], trained["float32"][2])


def _epochs(files: list[ImageFile] | tuple[ImageFile, ...], cache: object, count: int = 2) -> list[list[np.ndarray]]:
    dataset = pipeline.make_dataset(files, (8, 8), 5, training=True, seed=4, cache=cache, name="train",
                                pad_to_full_batches=True)
    return [[np.concatenate([x.reshape(len(x), -1), w[:, None]], axis=1) for x, _, w in dataset.as_numpy_iterator()]
            for _ in range(count)]


def _same(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> bool:
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b, strict=True)):
        return False
    return all(np.array_equal(u, v) for x, y in zip(a, b, strict=True) for u, v in zip(x, y, strict=True))


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every file the pipelines built from now on read (one read per decode)."""
    import tensorflow as tf

    from tests.trainer.reads import counting_read_file

    reads: list[str] = []
    monkeypatch.setattr(tf.io, "read_file", counting_read_file(tf.io.read_file, reads))
    return reads


def test_cache_modes_give_the_same_batches_and_a_disk_cache_is_read_back(
    three_classes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = scan(three_classes).train  # 24 images, padded to 25 for batches of 5
    reads = _count_reads(monkeypatch)
    counts = {}
    results = {}
    for mode, cache in [("memory", "memory"), ("none", "none"), ("disk", tmp_path / "cache"),
                        ("disk again", tmp_path / "cache")]:
        before = len(reads)
        results[mode] = _epochs(files, cache)
        counts[mode] = len(reads) - before
    assert counts == {"memory": 25, "none": 50, "disk": 25, "disk again": 0}  # 2 epochs; the second pass is cached
    assert _same(results["memory"], results["none"]) and _same(results["memory"], results["disk"])
    assert _same(results["memory"], results["disk again"])
    assert not np.array_equal(results["memory"][0][0], results["memory"][1][0])  # reshuffled each epoch
    folders = list((tmp_path / "cache").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("tfstack-train-shard0of1-")
    assert (folders[0] / "cache.index").is_file() and not list(folders[0].glob("*.lockfile"))


def test_disk_caches_of_other_shards_sizes_or_splits_never_share_a_directory(three_classes: Path,
                                                                            tmp_path: Path) -> None:
    files = scan(three_classes).train
    cache = tmp_path / "cache"
    runs = [((8, 8), "train", 0, None), ((8, 8), "train", 1, None), ((6, 6), "train", 0, None),
            ((8, 8), "val", 0, None), ((8, 8), "train", 0, "f1"), ((8, 8), "train", 1, "f1"),
            ((8, 8), "train", 0, "f2")]
    for size, name, shard, fingerprint in runs:
        pipelines = pipeline.distributed_dataset(_Pipelines(2), files, size, 10, training=True, seed=3, cache=cache,
                                             name=name, fingerprint=fingerprint)
        list(pipelines[shard].as_numpy_iterator())
    # 7 runs x 2 pipelines, of which runs 2 and 6 build the same pipelines as runs 1 and 5: 10 directories.
    assert len(list(cache.iterdir())) == 10
    assert sorted(p.name.split("-")[2] for p in cache.iterdir()).count("shard1of2") == 5


_KILLED_WRITER = """
import os, sys
from pathlib import Path
from trainer import pipeline, scan
files = scan.scan(sys.argv[1]).train
dataset = pipeline.make_dataset(files, (32, 32), 5, training=False, seed=4, cache=Path(sys.argv[2]), name="train")
iterator = iter(dataset)
next(iterator)
print("partial", sorted(p.name for d in Path(sys.argv[2]).iterdir() for p in d.iterdir()), flush=True)
os.kill(os.getpid(), 9)
"""


def test_a_restarted_worker_ignores_the_lockfile_of_a_killed_cache_writer(digits: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(_KILLED_WRITER))
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    killed = subprocess.run([sys.executable, str(script), str(digits), str(cache)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=180)
    assert killed.returncode == -9, killed.stderr[-2000:]
    (folder,) = cache.iterdir()
    assert list(folder.glob("*.lockfile")), killed.stdout  # what tf.data refuses to start on
    assert not (folder / "cache.index").exists()  # the partial cache does not pass for a complete one
    files = scan(digits).train  # 1,257 images: the killed run read a few batches ahead, not all of them

    def batches(cache: object) -> list[np.ndarray]:
        dataset = pipeline.make_dataset(files, (32, 32), 5, training=False, seed=4, cache=cache, name="train")
        return [x for x, _ in dataset.as_numpy_iterator()]

    restarted, expected = batches(cache), batches("none")
    assert len(restarted) == len(expected) == -(-len(files) // 5)  # every image, none lost to the killed run
    assert all(np.array_equal(a, b) for a, b in zip(restarted, expected, strict=True))
    assert (folder / "cache.index").is_file() and not list(folder.glob("*.lockfile"))


def test_decoded_bytes_counts_uint8_pixels() -> None:
    assert pipeline.decoded_bytes(100_000, (224, 224)) == 15_052_800_000  # the "15 GB per 100,000 images"


GIB = 1 << 30


@pytest.mark.parametrize(
    ("setting", "needed", "available", "expected"),
    [
        ("auto", 1 * GIB, 16 * GIB, "memory"),  # digits-sized data on any machine
        ("auto", 8 * GIB, 16 * GIB, "memory"),  # exactly half of what is available
        ("auto", 8 * GIB + 1, 16 * GIB, "none"),
        ("auto", 15_052_800_000, 64 * GIB, "memory"),  # 100k images at 224 px on a 64 GiB worker
        ("auto", 40 * GIB, 512 * GIB, "none"),  # a big node: the 32 GiB cap still applies
        ("auto", 1 * GIB, None, "memory"),  # memory unknown: up to 4 GiB
        ("auto", 5 * GIB, None, "none"),
        ("memory", 40 * GIB, 1 * GIB, "memory"),  # an explicit choice is kept
        ("none", 1, 64 * GIB, "none"),
        ("/scratch/cache", 1, 64 * GIB, "/scratch/cache"),
    ],
    ids=["small", "half", "over-half", "imagenet-sized", "cap", "unknown-small", "unknown-large", "memory", "none",
         "dir"],
)
def test_choose_cache(setting: str, needed: int, available: int | None, expected: str) -> None:
    assert pipeline.choose_cache(setting, needed, available) == expected


def test_memory_cache_budget_is_the_smaller_of_the_cap_and_half_the_memory() -> None:
    assert pipeline.memory_cache_budget(16 * GIB) == 8 * GIB
    assert pipeline.memory_cache_budget(1024 * GIB) == pipeline.MEMORY_CACHE_CAP_BYTES == 32 * GIB
    available = pipeline.available_memory()
    assert available is None or 0 < available < 1 << 50


def test_a_cache_directory_that_cannot_be_created_is_a_config_error(three_classes: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"--cache.*a-file"):
        pipeline.make_dataset(scan(three_classes).train, (8, 8), 4, training=False, seed=0, cache=blocker)
