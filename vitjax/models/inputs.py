"""Checks on the images a model is given, shared by every architecture."""

from __future__ import annotations

import jax


def check_nhwc(images: jax.Array, in_chans: int) -> None:
    """Raises a ValueError that names the problem unless `images` is (batch, height, width, in_chans)."""
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC (batch, height, width, channels); got shape {images.shape}")
    if images.shape[-1] != in_chans:
        hint = " (NCHW input? vitjax takes NHWC)" if images.shape[1] == in_chans else ""
        raise ValueError(f"images have {images.shape[-1]} channels, the model expects {in_chans}{hint}")
