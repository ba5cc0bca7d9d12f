"""Training objectives are plug-ins: the loop knows only this protocol, so a new objective (DINO,
SelfPatch, MoCo v3, MAE/SimMIM, a CL+MIM hybrid) is a new module here and a line in OBJECTIVES,
with no change to the loop, the checkpoints or the sharding.

An objective owns its model(s) and decides what is trained:

- `init(key) -> (params, state)`: `params` are what the optimizer updates (a backbone and its
  heads); `state` is everything else the objective carries between steps and checkpoints with
  them (an EMA teacher, DINO's centre; `{}` for supervised training).
- `frozen(params) -> bool tree`: params the optimizer must leave alone (BatchNorm running
  statistics, which `update` writes instead). Never decayed, never stepped.
- `loss(params, state, batch, key, step) -> (loss, LossAux)`: a scalar to minimise, with metrics
  to log and the `updates` that `update` needs after the optimizer step. Runs inside jit and grad.
- `update(params, state, updates, step) -> (params, state)`: after the optimizer step (write
  BatchNorm statistics into params, move an EMA teacher, update a centre).
- `evaluate(params, state, batch) -> dict`: per-batch *sums* including 'count' (the number of
  valid examples, honouring the batch's 'valid' mask); the loop reports sum / count.
- `defaults() -> ConfigDict` (on the class): the objective's config keys and their defaults;
  the config loader rejects any other key under `objective.`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import ml_collections


class LossAux(NamedTuple):
    metrics: dict[str, jax.Array]  # scalars to log (batch means)
    updates: Any  # handed to `Objective.update` after the optimizer step


class Objective(Protocol):
    def init(self, key: jax.Array) -> tuple[Any, Any]: ...

    def frozen(self, params) -> Any: ...

    def loss(self, params, state, batch: dict[str, jax.Array], key: jax.Array,
             step: jax.Array) -> tuple[jax.Array, LossAux]: ...

    def update(self, params, state, updates, step: jax.Array) -> tuple[Any, Any]: ...

    def evaluate(self, params, state, batch: dict[str, jax.Array]) -> dict[str, jax.Array]: ...


def _supervised():
    from vitjax.train.objectives import supervised

    return supervised.Supervised


# name -> the objective class (imported lazily). Each class has `defaults()` and
# `from_config(config)` (the whole run config: it reads `model` and `objective`).
OBJECTIVES: dict[str, Callable[[], type]] = {"supervised": _supervised}


def objective_class(name: str) -> type:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; available: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]()


def defaults(name: str) -> ml_collections.ConfigDict:
    """The config keys of objective `name` (with `name` itself)."""
    config = objective_class(name).defaults()
    config.name = name
    return config


def create(config: ml_collections.ConfigDict) -> Objective:
    """The objective a run config names in `config.objective.name`."""
    return objective_class(config.objective.name).from_config(config)
