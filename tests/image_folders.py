"""Tiny image folders for the data tests: random PNGs (lossless, so the arrays are the oracle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(root: Path, counts: dict[str, int] | int, size=(12, 10), seed: int = 0,
                      vary_size: bool = True) -> dict[str, np.ndarray]:
    """Write random RGB PNGs: `counts` maps class folder -> number of images (an int: that many
    images directly in `root`). With `vary_size`, image i is (i % 3, i % 2) pixels larger than
    `size`, so shapes differ. Returns {path: the uint8 array written}."""
    rng = np.random.default_rng(seed)
    folders = {"": counts} if isinstance(counts, int) else counts
    written = {}
    for name, count in folders.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            grow = (i % 3, i % 2) if vary_size else (0, 0)
            array = rng.integers(0, 256, (size[0] + grow[0], size[1] + grow[1], 3), dtype=np.uint8)
            path = root / name / f"img_{i:03d}.png"
            Image.fromarray(array).save(path)
            written[str(path)] = array
    return written
