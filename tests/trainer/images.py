"""Small synthetic image folders for trainer tests: classes a tiny CNN can tell apart in a few steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def pattern(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image of class `kind`: horizontal stripes, vertical stripes, a bright square, ..."""
    image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
    if kind == 0:
        image[::4, :, :] = 230
    elif kind == 1:
        image[:, ::4, :] = 230
    elif kind == 2:
        image[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4, :] = 230
    else:
        image[:, :, kind % 3] = 200
    return image


def write_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 16, fmt: str = "png") -> Path:
    """`root/<class>/<i>.<fmt>` with `per_class` images of each of `classes` classes."""
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(pattern(label, size, rng)).save(folder / f"{i}.{fmt}")
    return root
