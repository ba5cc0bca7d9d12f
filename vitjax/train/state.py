"""The train state: everything a run needs to continue exactly where it stopped.

It is one pytree (a flax struct), so it is jitted, sharded and checkpointed as a whole.
Randomness is a function of the step: step s draws from `fold_in(rng, s)`, so a run resumed at
step s draws the same numbers as one that never stopped.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken so far
    params: Any  # what the optimizer updates (a nested dict)
    opt_state: Any
    objective_state: Any  # what the objective carries besides params (EMA teacher, centre; {} if none)
    rng: jax.Array  # uint32 key data (not a typed key: plain arrays checkpoint everywhere)

    def step_key(self) -> jax.Array:
        """The key of the current step."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def create(objective, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh state; jit it with out_shardings to create the state already sharded."""
    init_key, train_key = jax.random.split(jax.random.key(seed))
    params, objective_state = objective.init(init_key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      objective_state=objective_state, rng=jax.random.key_data(train_key))
