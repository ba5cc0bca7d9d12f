"""Declarative key tables: how the tensors of one source layout become vitjax params.

A table is an ordered list of rules; each source key is consumed by the first rule whose regex
matches it in full, either mapped onto a param path (with a transform) or explicitly ignored with a
reason. Applying a table is all-or-nothing: every source key must be consumed or ignored, every
param must be produced, every shape must fit, or a `CheckpointMismatch` names the offending keys.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

import numpy as np


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit the model: lists missing, unexpected and mis-shaped keys."""

    def __init__(self, layout: str, missing=(), unexpected=(), misshaped=(), duplicated=()):
        self.missing, self.unexpected = sorted(missing), sorted(unexpected)
        self.misshaped, self.duplicated = sorted(misshaped), sorted(duplicated)
        lines = [f"checkpoint does not fit the model (read as the {layout!r} layout):"]
        for title, items in [
            ("missing params (no checkpoint key provides them)", self.missing),
            ("unexpected checkpoint keys (no param takes them)", self.unexpected),
            ("mis-shaped", self.misshaped),
            ("params written by more than one checkpoint key", self.duplicated),
        ]:
            if items:
                shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
                lines.append(f"  {title}: " + ", ".join(str(i) for i in shown))
        super().__init__("\n".join(lines))


def identity(x: np.ndarray) -> np.ndarray:
    return x


def linear(w: np.ndarray) -> np.ndarray:
    """torch Linear (out, in) -> Flax Dense kernel (in, out)."""
    return w.T


def conv(w: np.ndarray) -> np.ndarray:
    """torch Conv2d OIHW -> Flax HWIO."""
    return w.transpose(2, 3, 1, 0)


@dataclasses.dataclass(frozen=True)
class Rule:
    """source: regex matched in full against a checkpoint key; groups fill `target`'s \\1, \\2.

    target: '/'-separated param path, or None to ignore the key (then `why` says why).
    part:   for params assembled from several keys (Hugging Face's separate q/k/v), the index of
            this key's slice; the slices are concatenated along the last axis in part order.
    transform: turns the tensor into the param; for an ignored key, a check that raises if dropping
            the tensor would change the model (timm's CLIP head bias must be zero, for example).
    """

    source: str
    target: str | None
    transform: Callable[[np.ndarray], np.ndarray] = identity
    part: int | None = None
    why: str = ""

    def __post_init__(self):
        object.__setattr__(self, "_regex", re.compile(self.source))


def ignore(source: str, why: str, check: Callable[[np.ndarray], object] = identity) -> Rule:
    return Rule(source, None, check, why=why)


@dataclasses.dataclass
class Mapped:
    """The outcome of applying a table: params by path, and the keys that were ignored, and why."""

    params: dict[str, np.ndarray]
    ignored: dict[str, str]
    sources: dict[str, str]  # param path -> the checkpoint key(s) it came from


def apply_table(state: Mapping[str, np.ndarray], rules: list[Rule], layout: str) -> Mapped:
    """Maps every key of `state` through `rules`; unexpected or doubly-written keys raise."""
    params, parts, ignored, sources = {}, {}, {}, {}
    unexpected, duplicated = [], []
    for key, value in state.items():
        rule = next((r for r in rules if r._regex.fullmatch(key)), None)
        if rule is None:
            unexpected.append(key)
            continue
        if rule.target is None:
            rule.transform(np.asarray(value))  # a check: may only refuse to drop the tensor
            ignored[key] = rule.why
            continue
        path = rule._regex.sub(rule.target, key)
        value = rule.transform(np.asarray(value))
        if rule.part is not None:
            slot = parts.setdefault(path, {})
            if rule.part in slot:
                duplicated.append(path)
            slot[rule.part] = value
            sources[path] = ", ".join(filter(None, [sources.get(path), key]))
        elif path in params:
            duplicated.append(path)
        else:
            params[path] = value
            sources[path] = key
    for path, slot in parts.items():
        if path in params:
            duplicated.append(path)
        params[path] = np.concatenate([slot[i] for i in sorted(slot)], axis=-1)
    if unexpected or duplicated:
        raise CheckpointMismatch(layout, unexpected=unexpected, duplicated=duplicated)
    return Mapped(params, ignored, sources)


def check_fit(mapped: Mapped, expected: Mapping[str, tuple[int, ...]], layout: str) -> None:
    """Raises unless `mapped` provides exactly the expected param paths with the expected shapes."""
    missing = [p for p in expected if p not in mapped.params]
    unexpected = [f"{mapped.sources.get(p, p)} (-> {p})" for p in mapped.params if p not in expected]
    misshaped = [
        f"{mapped.sources.get(p, p)}: checkpoint {tuple(v.shape)}, model {tuple(expected[p])}"
        for p, v in mapped.params.items()
        if p in expected and tuple(v.shape) != tuple(expected[p])
    ]
    if missing or unexpected or misshaped:
        raise CheckpointMismatch(layout, missing=missing, unexpected=unexpected, misshaped=misshaped)
