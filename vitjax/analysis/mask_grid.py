"""Foreground masks resized to the token grid as Teaching Matters does it, in JAX.

`run_seg_analysis.py::prep_token_masks` turns each object mask into an 8-bit image (mask x 255),
resizes it to the token grid with PIL's `Image.resize` default filter (antialiased bicubic, Keys
a = -0.5) and calls a token foreground where the union of the resized masks is > 0. PIL resamples
in two separable passes, width then height, with 22-bit fixed-point weights and a clipped uint8
result after each pass; `token_mask` does exactly that as two integer matrix products, whose
weights are computed once on the host from the static sizes (as PIL's `precompute_coeffs`), so
it matches PIL bit for bit (tests/test_analysis_attention.py checks it against PIL itself).
vitjax/data/preprocess.py does the same resampling in TensorFlow for the input pipeline.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

PRECISION_BITS = 22  # PIL's fixed-point coefficients for 8-bit images


def _bicubic(x: np.ndarray) -> np.ndarray:
    x, a = np.abs(x), -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=32)
def pil_bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """PIL's fixed-point bicubic weights for one axis as a dense (size_out, size_in) int32 matrix."""
    scale = size_in / size_out
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    matrix = np.zeros((size_out, size_in), np.int64)
    for i in range(size_out):
        center = (i + 0.5) * scale
        first = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C's cast
        stop = min(int(center + support + 0.5), size_in)
        weights = _bicubic((np.arange(first, stop) - center + 0.5) / stretch)
        total = weights.sum()
        if total != 0.0:
            weights = weights / total
        fixed = weights * (1 << PRECISION_BITS)
        matrix[i, first:stop] = np.trunc(np.where(fixed < 0.0, fixed - 0.5, fixed + 0.5))
    return matrix.astype(np.int32)


def _resample(pixels: jax.Array, matrix: np.ndarray, axis_spec: str) -> jax.Array:
    """One PIL pass: rounding constant + integer weighted sum, shifted back and clipped to 0..255."""
    total = jnp.einsum(axis_spec, pixels, jnp.asarray(matrix), preferred_element_type=jnp.int32)
    return jnp.clip(jnp.right_shift(total + (1 << (PRECISION_BITS - 1)), PRECISION_BITS), 0, 255)


def resize_uint8(pixels: jax.Array, size: tuple[int, int]) -> jax.Array:
    """PIL's `Image.resize((w, h), BICUBIC)` of (B, H, W) 8-bit values (any int dtype) -> int32 (B, h, w).

    An axis whose size does not change is left as it is, as PIL does.
    """
    pixels = pixels.astype(jnp.int32)
    (height, width), (out_h, out_w) = pixels.shape[1:], size
    if width != out_w:
        pixels = _resample(pixels, pil_bicubic_matrix(width, out_w), "bhw,ow->bho")
    if height != out_h:
        pixels = _resample(pixels, pil_bicubic_matrix(height, out_h), "bhw,oh->bow")
    return pixels


def token_mask(mask: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Teaching Matters' token-grid foreground (B, gh, gw) bool from a (B, H, W) mask in [0, 1].

    The mask becomes 8-bit (round(mask x 255), so a binary mask gives PIL's 0/255 image), is
    resized to the grid with PIL's bicubic and thresholded at > 0: a token is foreground when the
    antialiased mask has any weight there, which slightly dilates objects (by up to about half a
    patch), as in the paper's IoU.
    """
    pixels = jnp.round(jnp.clip(mask.astype(jnp.float32), 0.0, 1.0) * 255.0).astype(jnp.int32)
    return resize_uint8(pixels, grid) > 0

