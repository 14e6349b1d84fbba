"""Issue 26: defaults that depend on the size of the folder.

Rotation and zoom are off below 25 training images a class; the batch shrinks to 16 or 8 a replica when
an epoch at 32 would hold fewer than 8 optimizer steps (docs/trainer.md, "Small folders").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import load
from trainer.errors import ConfigError
from trainer.search_space import auto_augmentation, auto_batch_size, model_spec


@pytest.mark.parametrize(
    ("rotation", "zoom", "smallest_class", "expected"),
    [
        # The documented defaults (docs/trainer.md): 0.05 of a turn and 0.1 from 25 training images a class ...
        (None, None, 25, (0.05, 0.1)),
        (None, None, 28, (0.05, 0.1)),  # letters-3 and textures-2
        (None, None, 126, (0.05, 0.1)),  # the embedded digits: about 126 a class
        (None, None, None, (0.05, 0.1)),  # class sizes unknown: the general default
        # ... and off below it: shapes-3-small has 21 a class, colours-5 14.
        (None, None, 24, (0.0, 0.0)),
        (None, None, 21, (0.0, 0.0)),
        # What the user sets is kept, whatever the size.
        (0.05, None, 21, (0.05, 0.0)),
        (None, 0.2, 21, (0.0, 0.2)),
        (0.0, 0.0, 500, (0.0, 0.0)),
    ],
)
def test_rotation_and_zoom_default_by_the_smallest_class(
    rotation: float | None, zoom: float | None, smallest_class: int | None, expected: tuple[float, float]
) -> None:
    assert auto_augmentation(rotation, zoom, smallest_class) == expected


def test_the_model_of_a_tiny_folder_has_no_geometric_augmentation(tmp_path: Path) -> None:
    config = load({"data": str(tmp_path), "weights": "none"}, {})
    assert config.rotation is None and config.zoom is None
    assert model_spec(config, 3, median_side=36, smallest_class=21).augmentation == ()
    assert model_spec(config, 2, median_side=36, smallest_class=42).augmentation == (("rotation", 0.05), ("zoom", 0.1))
    flip = load({"data": str(tmp_path), "weights": "none", "flip": "horizontal"}, {})
    assert model_spec(flip, 3, smallest_class=21).augmentation == (("flip", "horizontal"),), "only the defaults change"


def test_rotation_and_zoom_parse_auto_and_numbers_from_every_source(tmp_path: Path) -> None:
    assert load({"data": str(tmp_path), "rotation": "0.2"}, {}).rotation == 0.2
    assert load({"data": str(tmp_path)}, {"TFSTACK_ZOOM": "0"}).zoom == 0.0
    assert load({"data": str(tmp_path)}, {"TFSTACK_ROTATION": "auto"}).rotation is None
    with pytest.raises(ConfigError, match="rotation"):
        load({"data": str(tmp_path), "rotation": "0.7"}, {})
    with pytest.raises(ConfigError, match="zoom"):
        load({"data": str(tmp_path), "zoom": "lots"}, {})


@pytest.mark.parametrize(
    ("batch_size", "train_images", "replicas", "expected"),
    [
        # The documented rule (docs/trainer.md): 32 a replica from 8 global batches of 32 an epoch ...
        (None, 256, 1, 32),
        (None, 1257, 1, 32),  # the embedded digits' training split
        (None, 512, 2, 32),
        # ... else 16 from 8 global batches of 16, else 8.
        (None, 255, 1, 16),
        (None, 128, 1, 16),
        (None, 511, 2, 16),
        (None, 127, 1, 8),
        (None, 84, 1, 8),  # letters-2 and letters-3
        (None, 63, 1, 8),  # shapes-3-small
        (None, 3, 1, 8),
        (None, 255, 2, 8),
        # What the user sets is kept, whatever the size.
        (4, 10_000, 1, 4),
        (64, 63, 2, 64),
    ],
)
def test_batch_size_default_by_the_training_split(
    batch_size: int | None, train_images: int, replicas: int, expected: int
) -> None:
    assert auto_batch_size(batch_size, train_images, replicas) == expected


def test_batch_size_parses_auto_and_numbers_from_every_source(tmp_path: Path) -> None:
    assert load({"data": str(tmp_path)}, {}).batch_size is None
    assert load({"data": str(tmp_path), "batch_size": "auto"}, {}).batch_size is None
    assert load({"data": str(tmp_path)}, {"TFSTACK_BATCH_SIZE": "16"}).batch_size == 16
    with pytest.raises(ConfigError, match="batch_size"):
        load({"data": str(tmp_path), "batch_size": "0"}, {})
