"""Helpers for analyses whose state holds bounded Buffers (see base.Buffer)."""

from __future__ import annotations

import jax

from vitjax.analysis.base import Buffer


def _is_buffer(node) -> bool:
    return isinstance(node, dict) and set(node) == {"rows", "count"}


def merge_buffers(a, b):
    """Merges two pytrees of Buffer states leaf-buffer by leaf-buffer (a's rows first, then b's)."""

    def merge(x, y):
        rows = x["rows"]
        return Buffer(rows.shape[0], tuple(rows.shape[1:]), rows.dtype).merge(x, y)

    return jax.tree_util.tree_map(merge, a, b, is_leaf=_is_buffer)


def token_grid(num_tokens: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) grid of `num_tokens` spatial tokens of an image of size `image_hw`.

    A ViT's grid is in its TokenLayout; a ResNet's stages each have their own, which is found
    here from the token count and the image's aspect ratio."""
    height, width = image_hw
    h = max(1, round((num_tokens * height / width) ** 0.5))
    if num_tokens % h:
        raise ValueError(f"{num_tokens} tokens do not tile a {height}x{width} image into a grid")
    return h, num_tokens // h
