"""The training loop, top to bottom: mesh, objective, optimizer, state (fresh or resumed), then
steps with logging, evaluation and checkpoints.

    state = train(config, workdir)                     # data from config.data
    state = train(config, workdir, train_batches=f)    # any batch factory

A batch factory is `start_step -> iterator of batches`, each batch a dict of global jax.Arrays
whose leading axis is split over the mesh (`parallel.batch_sharding`), and step s's batch must be
a pure function of (seed, s): that is what makes a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from vitjax import parallel
from vitjax.train import objectives, optimizer
from vitjax.train import state as state_lib
from vitjax.train.checkpoint import Checkpoints, export_params, resume_step
from vitjax.train.logging import MetricWriter

Batches = Callable[[int], Iterator[dict[str, jax.Array]]]
EvalBatches = Callable[[], Iterator[dict[str, jax.Array]]]


def train_step(state: state_lib.TrainState, batch, *, objective, tx, learning_rate):
    """One optimizer step; returns the new state and the step's metrics (replicated scalars)."""

    def loss_fn(params):
        return objective.loss(params, state.objective_state, batch, state.step_key(), state.step)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params, objective_state = objective.update(params, state.objective_state, aux.updates, state.step)
    metrics = {"loss": loss, **aux.metrics, "grad_norm": optax.tree.norm(grads),
               "learning_rate": learning_rate(state.step)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              objective_state=objective_state)
    return new_state, metrics


def evaluate(eval_step, state, batches: EvalBatches) -> dict[str, float]:
    """The objective's per-batch sums over the whole eval set, divided by the example count."""
    totals: dict[str, float] = {}
    iterator = batches()
    for batch in iterator:
        for name, value in parallel.to_host(eval_step(state, batch)).items():
            totals[name] = totals.get(name, 0.0) + float(value)
    _close(iterator)
    count = totals.pop("count", 0.0)
    return {name: value / max(count, 1.0) for name, value in totals.items()}


def _close(iterator) -> None:
    """Stops a batch iterator's background work (the loader's prefetch thread), if it has any."""
    if hasattr(iterator, "close"):
        iterator.close()


def _due(done: int, every: int, total: int) -> bool:
    return done == total or (every > 0 and done % every == 0)


def train(config: ml_collections.ConfigDict, workdir: str, *, train_batches: Batches | None = None,
          eval_batches: EvalBatches | None = None, mesh=None, resume: str = "auto",
          progress: bool = True, callbacks=()) -> state_lib.TrainState:
    """Trains to `config.total_steps` and returns the final state.

    Without batch factories, the data comes from `config.data`. `mesh` defaults to every device
    with `config.fsdp` devices per parameter shard. `resume`: see `vitjax.train.checkpoint`.
    """
    lead = jax.process_index() == 0
    say = tqdm.write if lead else (lambda *_: None)
    mesh = mesh or parallel.make_mesh(config.fsdp)
    for name, size in (("batch_size", config.batch_size), ("data.eval_batch_size", config.data.eval_batch_size)):
        if size % mesh.size:
            raise ValueError(f"{name} {size} is not divisible by the {mesh.size} devices")
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    start = resume_step(checkpoint_dir, resume)  # fails here, before any work, if it cannot resume
    objective = objectives.create(config)
    if train_batches is None:
        from vitjax.train.data import batches_from_config

        train_batches, eval_batches = batches_from_config(config, parallel.batch_sharding(mesh))

    # The optimizer needs the params' structure (for its masks), which needs no real params.
    abstract_params = jax.eval_shape(lambda: objective.init(jax.random.key(config.seed))[0])
    tx = optimizer.make(config, abstract_params, objective.frozen(abstract_params))
    create = functools.partial(state_lib.create, objective, tx, config.seed)
    shardings = parallel.state_shardings(jax.eval_shape(create), mesh)

    checkpoints = Checkpoints(checkpoint_dir, keep=config.keep_checkpoints)
    if start is None:
        start = 0
        state = jax.jit(create, out_shardings=shardings)()
    else:
        abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                jax.eval_shape(create), shardings)
        state = checkpoints.restore(start, abstract)
        say(f"resumed from {checkpoint_dir} at step {start}")
    count = sum(math.prod(p.shape) for p in jax.tree.leaves(abstract_params))
    say(f"{config.model.name}: {count:,} params; mesh {dict(mesh.shape)} over {jax.process_count()} "
        f"process(es); steps {start} -> {config.total_steps}")
    if lead:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))

    step_fn = jax.jit(
        functools.partial(train_step, objective=objective, tx=tx, learning_rate=optimizer.learning_rate(config)),
        out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)
    eval_fn = jax.jit(lambda state, batch: objective.evaluate(state.params, state.objective_state, batch),
                      out_shardings=parallel.replicated(mesh))
    writer = MetricWriter(workdir, start_step=start, enabled=lead, tensorboard=config.tensorboard)

    total = config.total_steps
    batches = train_batches(start)
    pending, clock = [], time.perf_counter()
    with tqdm(initial=start, total=total, disable=not (progress and lead), desc="train") as bar:
        for done in range(start + 1, total + 1):
            state, metrics = step_fn(state, next(batches))
            pending.append(metrics)
            bar.update()
            for callback in callbacks:  # callback(step, state), e.g. curvature.spectra.SpectraCallback
                callback(done, state)
            if _due(done, config.log_every, total):
                host = parallel.to_host(pending)
                logged = {name: float(np.mean([m[name] for m in host])) for name in host[0]}
                logged["images_per_second"] = len(pending) * config.batch_size / (time.perf_counter() - clock)
                writer.write(done, logged)
                bar.set_postfix(loss=f"{logged['loss']:.4f}")
                pending, clock = [], time.perf_counter()
            if eval_batches is not None and _due(done, config.eval_every, total):
                results = evaluate(eval_fn, state, eval_batches)
                writer.write(done, {f"eval/{name}": value for name, value in results.items()})
                say(f"step {done}: " + ", ".join(f"eval {name} {value:.4f}" for name, value in results.items()))
                clock = time.perf_counter()  # the throughput above excludes evaluation
            if _due(done, config.checkpoint_every, total):
                checkpoints.save(done, state)
    _close(batches)
    checkpoints.close()
    writer.close()
    if start < total:
        export = os.path.join(workdir, "params")
        if export_params(export, state.params, config.model):
            say(f"wrote {export}: load it with vitjax.load({config.model.name!r}, checkpoint={export!r})")
        else:
            say(f"multi-process run: the trained params are in {checkpoint_dir}/{total} (not exported)")
    return state
