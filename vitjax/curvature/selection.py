"""Which parameters a curvature tool touches: predicates on a parameter's path and value.

A predicate is `predicate(path: str, leaf) -> bool`, where `path` joins the param-dict keys with '/'
(e.g. 'blocks_0/attn/qkv/kernel', 'layer1/0/bn1/var', 'pos_embed') and `leaf` is the array (only its
shape and ndim are read, so shape structs work too). The objective's penalty and the landscape's
directions take such a predicate as `exclude`; `tree_where` evaluates one over a whole param tree.
"""

from __future__ import annotations

from collections.abc import Callable

from flax import traverse_util

from vitjax.models.resnet import STATISTICS

Predicate = Callable[[str, object], bool]


def is_statistic(path: str, leaf=None) -> bool:
    """A ResNet BatchNorm running statistic ('.../mean', '.../var'): a buffer, not a weight. Every
    tool here treats these as constants (eval-mode BatchNorm)."""
    return path.rsplit("/", 1)[-1] in STATISTICS


def is_one_dimensional(path: str, leaf) -> bool:
    """Biases, LayerNorm/BatchNorm scales and shifts, layer scales: tensors with fewer than 2 dims."""
    return len(leaf.shape) < 2


def is_position(path: str, leaf=None) -> bool:
    """Absolute position embeddings and relative position bias tables."""
    name = path.rsplit("/", 1)[-1]
    return name == "pos_embed" or "rel_pos" in name or "relative_position" in name


def park_kim_landscape_excluded(path: str, leaf) -> bool:
    """What Park & Kim's `create_bases` zeroes in a landscape direction: every tensor with fewer than
    2 dims (`ignore_bn`) and the keywords 'pos_embed' and 'relative_position' (`ignore_kw`), plus
    the running statistics (buffers in PyTorch, never perturbed there either)."""
    return is_statistic(path) or is_one_dimensional(path, leaf) or is_position(path)


def any_of(*predicates: Predicate | None) -> Predicate:
    """A predicate true where any of `predicates` is (None entries are skipped)."""
    chosen = [p for p in predicates if p is not None]
    return lambda path, leaf: any(p(path, leaf) for p in chosen)


def tree_where(predicate: Predicate, params) -> dict:
    """A tree like `params` holding predicate(path, leaf) as Python bools."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({key: bool(predicate("/".join(map(str, key)), leaf))
                                         for key, leaf in flat.items()})


def tree_paths(params) -> dict:
    """A tree like `params` holding each leaf's '/'-joined path."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({key: "/".join(map(str, key)) for key in flat})
