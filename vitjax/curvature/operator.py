"""The loss operator: an explicitly declared loss, its gradient and its Hessian-vector product.

Curvature numbers are only as meaningful as the operator behind them, so everything that defines it
is an argument here rather than a hidden default (see shared/reference/curvature.md, section 2.7):

- `loss_fn(params, batch) -> scalar`: the mean loss over the batch's valid examples (`batch['valid']`
  when present). Model mode lives inside it: call the model in inference mode (BatchNorm with its
  running statistics, no dropout), or pass a fixed dropout rng in the batch.
- `batches`: a fixed list of batch dicts (augmentation already applied, seeded per batch), weighted by
  their number of valid examples; or a zero-argument callable returning such an iterable (a loader),
  which is read twice so that an unseeded source is caught.
- `wrt`: the parameters differentiated; the rest are constants. For a ResNet pass
  `wrt=jax.tree.map(operator.not_, statistics_mask(params))` so that BatchNorm running statistics
  are constants, not weights.
- `weight_decay`: an analytic lambda/2 |theta|^2 over the differentiated params (adds exactly lambda*v).

The product is forward-over-reverse (`jax.jvp` of `jax.grad`; 'rev_rev' is the slower fallback), or with
`linearize=True` the tangent half of it from a stored `jax.linearize` of the gradient; jitted once per
`loss_fn` object (reuse the same object to reuse the compiled code), reduced over the stacked
batches with `lax.scan`. The batch axis is split over every device of the mesh, so the reduction over
examples is an all-reduce across devices and hosts that XLA inserts; parameters are placed by
`vitjax.parallel.state_shardings` (replicated, or FSDP-sharded on an fsdp mesh).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vitjax import parallel
from vitjax.curvature import vectors

MODES = ("fwd_rev", "rev_rev")
CHECK_RTOL = 1e-5  # relative difference above which two products of the same vector count as different


class CurvatureError(ValueError):
    """The operator is ill-defined (non-scalar loss, non-deterministic batches, NaN curvature)."""


# --- splitting params into the differentiated subset and the constants -------------------------


def _path_names(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)


def _mask(params, wrt) -> Any:
    """A boolean tree like `params`: True where the leaf is differentiated."""
    if wrt is None:
        return jax.tree.map(lambda x: jnp.issubdtype(jnp.result_type(x), jnp.inexact), params)
    if callable(wrt):
        return jax.tree_util.tree_map_with_path(lambda path, _: bool(wrt(_path_names(path))), params)
    try:
        return jax.tree.map(lambda _, m: bool(m), params, wrt)
    except ValueError as error:
        raise CurvatureError(f"wrt must be a boolean tree with the structure of params: {error}") from None


def split(params, wrt=None) -> tuple[Any, Any]:
    """(differentiated, constants): two trees like `params` holding None where the other one holds
    the leaf. `wrt` is a boolean tree like params, or a callable taking a leaf's path (a tuple of dict
    keys / sequence indices, e.g. ('layer1', '0', 'bn1', 'mean')) and returning True to differentiate it;
    by default every floating-point leaf is differentiated."""
    mask = _mask(params, wrt)
    diff = jax.tree.map(lambda x, m: x if m else None, params, mask)
    const = jax.tree.map(lambda x, m: None if m else x, params, mask)
    return diff, const


def merge(diff, const):
    """The full params again (inverse of `split`)."""
    return jax.tree.map(lambda d, c: c if d is None else d, diff, const, is_leaf=lambda x: x is None)


# --- batches --------------------------------------------------------------------------------------


def _to_numpy(tree):
    """Host copies of a tree of host arrays or (possibly multi-host) global jax arrays. Unlike
    `parallel.to_host`, host arrays are taken as they are (they are the same on every process)."""
    def leaf(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(parallel.to_host(x))
        return np.asarray(x)

    return jax.tree.map(leaf, tree)


def _count(batch: dict) -> int:
    if "valid" in batch:
        return int(np.asarray(batch["valid"]).sum())
    return len(next(iter(batch.values())))


def _host(batch: dict) -> dict[str, np.ndarray]:
    if not isinstance(batch, dict) or not batch:
        raise CurvatureError(f"a batch must be a non-empty dict of arrays, got {type(batch).__name__}")
    return _to_numpy(dict(batch))


def _stack(batches: list[dict], multiple: int) -> tuple[dict[str, np.ndarray], np.ndarray, bool]:
    """Stacks batches to (num_batches, size, ...), padding every batch to one size that `multiple`
    (the device count) divides with rows marked `valid` False. Returns (stacked, counts, padded)."""
    keys = set(batches[0])
    for i, batch in enumerate(batches):
        if set(batch) != keys:
            raise CurvatureError(f"batch {i} has entries {sorted(batch)}, batch 0 has {sorted(keys)}")
    sizes = [len(next(iter(b.values()))) for b in batches]
    size = -(-max(sizes) // multiple) * multiple
    padded = any(s != size for s in sizes)
    stacked = {}
    for name in sorted(keys | ({"valid"} if padded else set())):
        rows = []
        for batch, n in zip(batches, sizes):
            value = batch[name] if name in batch else np.ones(n, bool)
            rows.append(np.concatenate([value, np.zeros((size - n,) + value.shape[1:], value.dtype)]))
        stacked[name] = np.stack(rows)
    return stacked, np.array([_count(b) for b in batches]), padded


def _read(batches) -> list[dict]:
    batches = [_host(b) for b in (batches() if callable(batches) else batches)]
    if not batches:
        raise CurvatureError("the batch source is empty")
    return batches


# --- the jitted computations (static in loss_fn and mode, so one compilation serves many operators) --


def _check_scalar(loss_fn, diff, const, batch) -> None:
    shape = jax.eval_shape(loss_fn, merge(diff, const), batch)
    if not (hasattr(shape, "shape") and shape.shape == ()):
        what = getattr(shape, "shape", type(shape).__name__)
        raise CurvatureError(f"loss_fn must return a scalar (the mean loss over the batch's valid examples); "
                             f"it returned {what}. Reduce it with a (valid-weighted) mean.")


def _batch_loss(loss_fn, diff, const, batch):
    return loss_fn(merge(diff, const), batch).astype(jnp.result_type(jnp.float32, *jax.tree.leaves(diff)))


def _with_decay(weight_decay, diff, loss, grad):
    """The loss and gradient with the analytic penalty weight_decay/2 |theta|^2 added."""
    return loss + 0.5 * weight_decay * vectors.dot(diff, diff), vectors.axpy(weight_decay, diff, grad)


@partial(jax.jit, static_argnums=0)
def _loss_and_grad(loss_fn, diff, const, batches, weights, weight_decay):
    value_and_grad = jax.value_and_grad(partial(_batch_loss, loss_fn), argnums=0)

    def body(carry, xs):
        loss, grad = carry
        batch, weight = xs
        value, g = value_and_grad(diff, const, batch)
        return (loss + weight * value, vectors.axpy(weight, g, grad)), None

    start = (jnp.zeros((), weights.dtype), vectors.zeros_like(diff))
    (loss, grad), _ = jax.lax.scan(body, start, (batches, weights))
    return _with_decay(weight_decay, diff, loss, grad)


def _product_sums(loss_fn, mode, diff, const, batches, weights, weight_decay, v):
    """(loss, gradient, H v) in one pass: the loss and gradient are the primal outputs of the product."""
    value_and_grad = jax.value_and_grad(partial(_batch_loss, loss_fn), argnums=0)

    def one(batch):
        if mode == "fwd_rev":
            (value, grad), (_, hv) = jax.jvp(lambda d: value_and_grad(d, const, batch), (diff,), (v,))
            return value, grad, hv
        grad, vjp, value = jax.vjp(lambda d: value_and_grad(d, const, batch)[::-1], diff, has_aux=True)
        return value, grad, vjp(v)[0]  # the vjp of a gradient with v is H'v = Hv

    def body(acc, xs):
        batch, weight = xs
        value, grad, hv = one(batch)
        return (acc[0] + weight * value, vectors.axpy(weight, grad, acc[1]), vectors.axpy(weight, hv, acc[2])), None

    start = (jnp.zeros((), weights.dtype), vectors.zeros_like(diff), vectors.zeros_like(diff))
    (loss, grad, hv), _ = jax.lax.scan(body, start, (batches, weights))
    return (*_with_decay(weight_decay, diff, loss, grad), vectors.axpy(weight_decay, v, hv))


_products = jax.jit(_product_sums, static_argnums=(0, 1))
# H v alone: with the gradient not an output, XLA drops the primal weight-gradient products (about 10%).
_hvp = jax.jit(lambda *args: _product_sums(*args)[2], static_argnums=(0, 1))


def _linearization(loss_fn, diff, const, batch):
    """(loss, gradient, v -> (d loss, H v)) of one batch: `jax.linearize` of the loss and its gradient.
    The linear map is a `jax.tree_util.Partial` whose leaves are the stored residuals."""
    value_and_grad = jax.value_and_grad(partial(_batch_loss, loss_fn), argnums=0)
    (value, grad), tangent = jax.linearize(lambda d: value_and_grad(d, const, batch), diff)
    return value, grad, tangent


@partial(jax.jit, static_argnums=0)
def _linearize(loss_fn, diff, const, batches, weights, weight_decay):
    """The loss and gradient, and every batch's residuals stacked over batches."""
    def one(batch):
        value, grad, tangent = _linearization(loss_fn, diff, const, batch)
        return value, grad, jax.tree.leaves(tangent)

    values, grads, residuals = jax.lax.map(one, batches)
    grad = jax.tree.map(lambda g: jnp.tensordot(weights, g, 1), grads)
    return (*_with_decay(weight_decay, diff, weights @ values, grad), residuals)


@partial(jax.jit, static_argnums=(0, 1))
def _linearized_hvp(loss_fn, index, diff, const, batches, weights, weight_decay, kept, v):
    """H v from stored residuals: only the tangent half of a product runs. `kept` and `index` are
    `_distinct` of the residuals: leaf i of the linear map is kept[index[i]]."""
    def body(hv, xs):
        batch, weight, distinct = xs
        stored = [distinct[i] for i in index]
        # Traced again for the linear map's structure; the residuals it would compute are dead code
        # (XLA drops them) and the stored ones take their place.
        tangent = _linearization(loss_fn, diff, const, batch)[2]
        traced = [(x.shape, x.dtype) for x in jax.tree.leaves(tangent)]
        if traced != [(x.shape, x.dtype) for x in stored]:
            raise CurvatureError("the loss traced differently from when it was linearized; rebuild the operator")
        return vectors.axpy(weight, jax.tree.unflatten(jax.tree.structure(tangent), stored)(v)[1], hv), None

    hv, _ = jax.lax.scan(body, vectors.zeros_like(diff), (batches, weights, kept))
    return vectors.axpy(weight_decay, v, hv)


def _fingerprint(x: jax.Array) -> jax.Array:
    """Two sums that equal arrays share (unequal ones rarely): the first test for duplicates."""
    x = x.astype(jnp.float32)
    ramp = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1) % 7 + 1 if x.ndim else 1
    return jnp.stack([x.sum(), (x * ramp).sum()])


_fingerprints = jax.jit(lambda leaves: jnp.stack([_fingerprint(x) for x in leaves]))


@jax.jit
def _same_bits(a: jax.Array, b: jax.Array) -> jax.Array:
    """Bit-for-bit equality (NaN equals an identical NaN; 0.0 and -0.0 differ)."""
    if jnp.issubdtype(a.dtype, jnp.floating):
        as_int = jnp.dtype(f"uint{8 * a.dtype.itemsize}")
        a, b = jax.lax.bitcast_convert_type(a, as_int), jax.lax.bitcast_convert_type(b, as_int)
    return jnp.all(a == b)


def _distinct(leaves: list) -> tuple[list, tuple[int, ...]]:
    """The leaves without bit-identical repeats, and for each original leaf its index among them.

    A linearization of a gradient stores some values twice: the forward pass's tangent and the
    backward pass's tangent each evaluate a derivative (GELU's slope, for one) and keep their own
    copy. Dropping the repeats cut a ViT-S's stored residuals by 12%.
    """
    prints = np.asarray(parallel.to_host(_fingerprints(leaves)))
    kept, index, groups = [], [], {}
    for leaf, fingerprint in zip(leaves, prints):
        group = groups.setdefault((leaf.shape, leaf.dtype, fingerprint.tobytes()), [])
        match = next((j for j in group if bool(_same_bits(kept[j], leaf))), None)
        if match is None:
            match = len(kept)
            group.append(match)
            kept.append(leaf)
        index.append(match)
    return kept, tuple(index)


# --- the operator --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class HessianOperator:
    """H = d^2/dtheta^2 [sum_b n_b L_b(theta) / sum_b n_b + weight_decay/2 |theta|^2] at `params`.

    Vectors are trees like `params` (the differentiated subset; None at constants).
    """

    params: Any  # the differentiated subset, placed on the mesh
    constants: Any  # the other leaves (None at differentiated ones)
    batches: dict  # stacked (num_batches, batch_size, ...), batch axis split over the mesh
    weights: jax.Array  # (num_batches,) n_b / sum n_b
    num_examples: int
    loss_fn: Callable
    weight_decay: float
    mode: str
    mesh: Mesh
    linearization: tuple | None = None  # (loss, gradient, distinct residuals, index) kept by `linearized()`

    @property
    def dim(self) -> int:
        return vectors.size(self.params)

    def _placed(self, v):
        return jax.device_put(v, jax.tree.map(lambda x: x.sharding, self.params))  # one compilation for any caller

    def matvec(self, v):
        """H v."""
        operands = (self.params, self.constants, self.batches, self.weights, self.weight_decay)
        if self.linearization is not None:
            kept, index = self.linearization[2:]
            return _linearized_hvp(self.loss_fn, index, *operands, kept, self._placed(v))
        return _hvp(self.loss_fn, self.mode, *operands, self._placed(v))

    def products(self, v):
        """(loss, gradient, H v) from one pass over the batches."""
        if self.linearization is not None:
            return (*self.loss_and_grad(), self.matvec(v))
        return _products(self.loss_fn, self.mode, self.params, self.constants, self.batches, self.weights,
                         self.weight_decay, self._placed(v))

    def linearized(self) -> HessianOperator:
        """This operator with the linearization of the gradient kept in memory (what PyHessian keeps
        with `create_graph=True`): each product then runs only its tangent half, 1.7-2 gradients of
        time instead of 2.6 (ViT-S on CPU), while holding about 1.6x a gradient's peak memory per
        batch for as long as the operator lives (2.7-2.8x at a product's peak). For the many products of
        one eigenvalue or density estimate on fixed batches; forward-over-reverse mode only."""
        if self.mode != "fwd_rev":
            raise ValueError("linearized() keeps a forward-over-reverse linearization; the operator's mode is "
                             f"{self.mode!r}")
        if self.linearization is not None:
            return self
        loss, grad, residuals = _linearize(self.loss_fn, self.params, self.constants, self.batches, self.weights,
                                           self.weight_decay)
        return dataclasses.replace(self, linearization=(loss, grad, *_distinct(residuals)))

    def loss(self) -> float:
        return float(self.loss_and_grad()[0])

    def grad(self):
        return self.loss_and_grad()[1]

    def loss_and_grad(self):
        if self.linearization is not None:
            return self.linearization[:2]
        return _loss_and_grad(self.loss_fn, self.params, self.constants, self.batches, self.weights,
                              self.weight_decay)

    def full_params(self, diff=None):
        """The complete params tree (with `diff` in place of the differentiated subset if given)."""
        return merge(self.params if diff is None else diff, self.constants)


def hessian_operator(loss_fn: Callable, params, batches: Sequence[dict] | Callable, *, wrt=None,
                     weight_decay: float = 0.0, mesh: Mesh | None = None, mode: str = "fwd_rev",
                     check: bool = True, linearize: bool = False) -> HessianOperator:
    """The Hessian of the batch-size-weighted mean of `loss_fn` over `batches` (see the module doc).

    `batches` are host arrays identical on every process (numpy, or global jax arrays, which are
    gathered); batches of different sizes, or sizes the device count does not divide, are padded with
    rows whose `valid` is False. With `check`, the operator is probed once: a finite loss and product,
    two equal products of one vector, padding that `loss_fn` ignores, and (for a callable source) a
    second pass that gives the same product. Each failure raises `CurvatureError` naming the cause.
    `linearize` returns `op.linearized()`: faster products for more memory (see there).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    mesh = parallel.make_mesh() if mesh is None else mesh
    host = _read(batches)
    params = _to_numpy(params)  # placed below like training state (replicated, or FSDP-sharded)
    diff, const = split(params, wrt)
    if not jax.tree.leaves(diff):
        raise CurvatureError("wrt selects no parameters: nothing to differentiate")
    _check_scalar(loss_fn, diff, const, host[0])
    shardings = parallel.state_shardings(params, mesh)
    place = lambda tree: jax.tree.map(lambda x, s: None if x is None else parallel.global_batch(
        {"x": np.asarray(x)}, s)["x"], tree, shardings, is_leaf=lambda x: x is None)
    stacked, weights, count, padded = _place_batches(host, mesh)
    op = HessianOperator(params=place(diff), constants=place(const), batches=stacked, weights=weights,
                         num_examples=count, loss_fn=loss_fn, weight_decay=float(weight_decay), mode=mode, mesh=mesh)
    if check:
        _check(op, host, padded, batches if callable(batches) else None)
    return op.linearized() if linearize else op


def _place_batches(host: list[dict], mesh: Mesh) -> tuple[dict, jax.Array, int, bool]:
    """The stacked batches split over the mesh, their weights n_b / sum n_b, the example count, and
    whether padding was added."""
    stacked, counts, padded = _stack(host, mesh.devices.size)
    if counts.sum() == 0:
        raise CurvatureError("the batches contain no valid examples")
    placed = parallel.global_batch(stacked, NamedSharding(mesh, P(None, parallel.AXES)))
    return placed, jnp.asarray(counts / counts.sum(), jnp.result_type(float)), int(counts.sum()), padded


# --- probes and checks ---------------------------------------------------------------------------


def _relative(a, b) -> float:
    """|a - b| / |b| on the host (no compilation: the checks run once per operator)."""
    a, b = (np.concatenate([np.ravel(x).astype(np.float64) for x in jax.tree.leaves(parallel.to_host(t))])
            for t in (a, b))
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(np.float64).tiny))


def _host_vector(op, seed: int = 0):
    """A Gaussian vector like op.params drawn on the host and placed like the params."""
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda x: parallel.global_batch({"x": rng.randn(*x.shape).astype(x.dtype)}, x.sharding)["x"],
                        op.params)


_random_vector = jax.jit(vectors.normal_like)
_dot = jax.jit(vectors.dot)
_norm = jax.jit(vectors.norm)
_call = partial(jax.jit, static_argnums=0)(lambda loss_fn, params, batch: loss_fn(params, batch))


def symmetry_probe(op, key) -> float:
    """|u'Hv - v'Hu| / (|u| |Hv|) for random u, v: about machine precision for a well-defined
    operator; large when products are non-deterministic or the operator is not a Hessian."""
    ku, kv = jax.random.split(key)
    u, v = _random_vector(ku, op.params), _random_vector(kv, op.params)
    hu, hv = op.matvec(u), op.matvec(v)
    gap = abs(float(_dot(u, hv)) - float(_dot(v, hu)))
    return gap / max(float(_norm(u)) * float(_norm(hv)), np.finfo(np.float32).tiny)


def determinism_probe(op, key) -> float:
    """|Hv - Hv'| / |Hv| for two products of the same random v (0 on a deterministic backend)."""
    v = _random_vector(key, op.params)
    return _relative(op.matvec(v), op.matvec(v))


def _first_nonfinite(tree) -> str | None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(parallel.to_host(tree)):
        if not np.isfinite(leaf).all():
            return "/".join(str(k) for k in _path_names(path))
    return None


def _check(op: HessianOperator, host: list[dict], padded: bool, source) -> None:
    v = _host_vector(op)
    loss, grad, hv = op.products(v)
    if not np.isfinite(float(loss)):
        raise CurvatureError(f"the loss is {float(loss)} at these params: the curvature is undefined")
    if (where := _first_nonfinite(grad)) is not None:
        raise CurvatureError(f"the gradient is not finite at params[{where}]: the curvature is undefined")
    if padded:
        # Padding rows must not count: the loss of a padded batch must equal that of the original.
        stacked = _stack(host, op.mesh.devices.size)[0]
        i = next(i for i, b in enumerate(host) if len(next(iter(b.values()))) < len(stacked["valid"][i]))
        params = parallel.to_host(op.full_params())
        original = float(_call(op.loss_fn, params, host[i]))
        with_padding = float(_call(op.loss_fn, params, {k: v[i] for k, v in stacked.items()}))
        if abs(original - with_padding) > CHECK_RTOL * max(abs(original), 1e-30):
            raise CurvatureError("loss_fn ignores batch['valid']: the batches were padded to a common size the "
                                 f"device count ({op.mesh.devices.size}) divides, and the padding changed the loss "
                                 f"({original} -> {with_padding}); weight the mean by batch['valid']")
    if (where := _first_nonfinite(hv)) is not None:
        raise CurvatureError(f"NaN curvature: the Hessian-vector product is not finite at params[{where}] "
                             "(the loss and gradient are finite: check second derivatives, e.g. sqrt or norms at 0)")
    if (gap := _relative(op.matvec(v), hv)) > CHECK_RTOL:
        raise CurvatureError(f"the Hessian-vector product is not deterministic: two products of one vector differ "
                             f"by {gap:.2e} (relative); is there unseeded randomness inside loss_fn?")
    if source is None:
        return
    again = _read(source)
    if _same(again, host):
        return
    try:
        batches, weights, _, _ = _place_batches(again, op.mesh)
        second = dataclasses.replace(op, batches=batches, weights=weights)
        gap = _relative(second.matvec(v), hv)
    except (CurvatureError, TypeError, ValueError):  # a second pass shaped differently from the first
        gap = float("inf")
    if gap > CHECK_RTOL:
        raise CurvatureError(f"the batch source is not deterministic: two passes over it give Hessian-vector products "
                             f"that differ by {gap:.2e} (relative). Seed augmentation per batch and shuffling per "
                             "pass, or pass a fixed list of batches.")


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))
