"""Loss landscapes along random directions (Li et al. 2018; Park & Kim 2022), evaluated on a grid.

    loss_fn = classification_objective(model, weight_decay=0.05, penalty='park_kim')
    d1, d2 = directions(key, params, normalization='park_kim')
    surface = landscape_2d(loss_fn, params, batches, (d1, d2), grid=21, span=1.0)
    # surface['loss'][iy, ix] = mean over batches of loss_fn(params + x[ix] d1 + y[iy] d2, batch)

Directions
----------
A direction is a Gaussian vector shaped like the params, rescaled slice by slice so that each slice
has the norm of the same slice of the weights: d_s <- d_s * |theta_s| / (|d_s| + eps).
What a slice is depends on `normalization`:

'filter' (Li et al.'s filter normalisation, read for Flax layouts; `filter_axes`)
    A filter is one output unit's incoming weights. Flax stores kernels (..., in, out), so a slice
    is everything but the last axis: conv (kh, kw, in, out) -> w[..., j] (one output channel),
    Dense (in, out) -> w[:, j] (one neuron), the qkv kernel (D, 3D) -> one q, k or v output unit,
    the attention output and MLP kernels likewise, the patch embedding (p, p, 3, D) -> one embedding
    channel, a relative position table (T, heads) -> one head's column. Token tables (cls_token,
    dist_token, reg_token, mask_token (1, n, D) and pos_embed (1, N, D)) have no output axis of
    their own: a slice is one token's vector w[0, n, :]. A Flax DenseGeneral kernel (in, heads,
    head_dim) would need an output slice over (heads, head_dim) instead: pass your own `axes`
    rule for such params. eps = 1e-10 (Li et al.'s code).
'park_kim' (how-do-vits-work `ops/loss_landscapes.py::normalize_filter`; `park_kim_axes`)
    torch.norm(w, dim=0) on the PyTorch layout: the norm *across dim 0* for each index of the
    other dims. PyTorch's Linear (out, in) and Conv2d (out, in, kh, kw) have the output axis at
    dim 0, so the slice is one *input* unit's outgoing weights (for a conv: one (in, kh, kw)
    position across all output channels). Flax stores these kernels transposed ((in, out),
    (kh, kw, in, out)), so PyTorch's dim 0 is the Flax *last* axis: slice = w[i, :] and
    w[y, x, i, :]. Every other tensor has the same layout in both (tokens (1, n, D), pos_embed,
    relative position tables (T, heads), 1-D vectors), so dim 0 stays axis 0; for the (1, n, D)
    token tables that axis has size 1 and the rule scales each entry to |w| (Park & Kim zero only
    tensors with < 2 dims and pos_embed/relative_position, so their cls_token is perturbed this
    way). `proj` (a ViT's embedding projection, applied as x @ proj) counts as a kernel.
    eps = 1e-7 (their code).
'none'
    The raw Gaussian direction (Li et al.'s default, which they warn is not scale invariant).

Excluded tensors get an exactly zero direction (they stay at their trained value). `exclude` is a
predicate (path, leaf) -> bool (`vitjax.curvature.selection`); its default depends on the
normalisation: 'filter' and 'none' exclude tensors with < 2 dims (biases, LayerNorm/BatchNorm
scales and shifts: Li et al.'s `--xignore biasbn`); 'park_kim' excludes their set
(`selection.park_kim_landscape_excluded`: < 2 dims, pos_embed, relative position tables). ResNet
BatchNorm running statistics are always excluded (eval-mode BatchNorm: they are constants). Two
directions are not re-orthogonalised (random directions in high dimension are nearly orthogonal;
curvature.md section 2.6).

Evaluation
----------
Grid points are evaluated `chunk` at a time with `vmap` (one compiled call evaluates a chunk of
points on one batch), each batch split over the devices of `mesh` (`vitjax.parallel`; padded rows
carry valid=False, which `loss_fn` must honour, as `classification_objective` does), and results
are averaged over batches weighted by their number of valid rows. The batches are fixed (e.g.
`vitjax.curvature.batches.fixed_batches`), the same at every grid point: Park & Kim draw a fresh
augmentation at every grid point, which adds sampling noise to their surfaces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vitjax import parallel
from vitjax.curvature import batches as batches_lib
from vitjax.curvature import selection, vectors

NORMALIZATIONS = ("filter", "park_kim", "none")
TOKEN_PARAMS = frozenset({"cls_token", "dist_token", "reg_token", "mask_token", "pos_embed"})
EPS = {"filter": 1e-10, "park_kim": 1e-7}

AxesRule = Callable[[str, object], tuple[int, ...]]


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def filter_axes(path: str, leaf) -> tuple[int, ...]:
    """The axes one filter-normalisation slice spans (its norm is taken over them), Flax layouts."""
    ndim = len(leaf.shape)
    if ndim < 2:
        return tuple(range(ndim))
    if _name(path) in TOKEN_PARAMS:
        return (ndim - 1,)
    return tuple(range(ndim - 1))


def park_kim_axes(path: str, leaf) -> tuple[int, ...]:
    """The axis of Park & Kim's torch.norm(w, dim=0), translated to the Flax layout."""
    ndim = len(leaf.shape)
    if ndim == 0:
        return ()
    name = _name(path)
    return (ndim - 1,) if name.endswith("kernel") or name == "proj" else (0,)


def _default_exclude(normalization: str) -> selection.Predicate:
    if normalization == "park_kim":
        return selection.park_kim_landscape_excluded
    return selection.is_one_dimensional


def normalize_direction(direction, params, *, normalization: str = "filter", exclude="default",
                        axes: AxesRule | None = None, eps: float | None = None):
    """Rescale `direction` slice by slice to the norms of the weights' slices; zero excluded tensors.

    axes: a rule (path, leaf) -> axes of one slice, replacing `filter_axes` / `park_kim_axes`.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    exclude = _default_exclude(normalization) if exclude == "default" else exclude
    skip = selection.tree_where(selection.any_of(selection.is_statistic, exclude), params)
    rule = axes or (park_kim_axes if normalization == "park_kim" else filter_axes)
    eps = EPS.get(normalization, 0.0) if eps is None else eps

    paths = selection.tree_paths(params)

    def one(path, d, w, skipped):
        if skipped:
            return jnp.zeros_like(d)
        if normalization == "none":
            return d
        over = rule(path, w)
        slice_norm = lambda x: jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=over, keepdims=True))
        return (d * (slice_norm(w) / (slice_norm(d) + eps))).astype(d.dtype)

    # One compiled program rather than a few eager ops per tensor (paths and shapes are static).
    return jax.jit(lambda d, w: jax.tree.map(one, paths, d, w, skip))(direction, params)


def directions(key, params, *, normalization: str = "filter", exclude="default", num: int = 2,
               axes: AxesRule | None = None, eps: float | None = None) -> tuple:
    """`num` normalised random Gaussian directions (see the module docstring), one key each."""
    return tuple(normalize_direction(jax.jit(vectors.normal_like)(k, params), params, normalization=normalization,
                                     exclude=exclude, axes=axes, eps=eps)
                 for k in jax.random.split(key, num))


def _terms(loss_fn) -> Callable:
    """loss_fn's per-batch terms: its own `.terms` (classification_objective) or just the loss,
    with the batch's count of valid rows as the weight across batches."""
    if hasattr(loss_fn, "terms"):
        return loss_fn.terms

    def terms(params, batch):
        return {"loss": loss_fn(params, batch), "count": batch["valid"].astype(jnp.float32).sum()}

    return terms


def evaluate_points(loss_fn, params, batches: Sequence[dict], directions: Sequence, points, *,
                    chunk: int = 8, mesh=None, desc: str = "landscape") -> dict[str, np.ndarray]:
    """loss_fn (and its other terms) at params + sum_k points[p, k] * directions[k], for each row p
    of `points` (P, K), averaged over `batches` weighted by valid rows: {term: (P,) float64}."""
    directions = tuple(directions)
    points = np.asarray(points, np.float32).reshape(-1, len(directions))
    if not len(batches):
        raise ValueError("no batches to evaluate the loss on")
    mesh = mesh or parallel.make_mesh()
    params, directions = jax.device_put((params, directions), parallel.replicated(mesh))
    num_points = len(points)
    chunk = max(1, min(chunk, num_points))
    padded = np.concatenate([points, np.repeat(points[-1:], -num_points % chunk, axis=0)])
    chunks = [jax.device_put(padded[i:i + chunk], parallel.replicated(mesh)) for i in range(0, len(padded), chunk)]
    terms = _terms(loss_fn)

    @jax.jit
    def at_points(params, directions, coefficients, batch):
        def at(c):
            shifted = params
            for k, d in enumerate(directions):
                shifted = vectors.axpy(c[k], d, shifted)
            return terms(shifted, batch)

        return jax.vmap(at)(coefficients)

    sums, total = None, 0.0
    with tqdm(total=len(batches) * len(chunks), desc=desc, leave=False) as bar:
        for host_batch in batches:
            batch = batches_lib.place(host_batch, mesh)
            parts = []
            for coefficients in chunks:
                parts.append(at_points(params, directions, coefficients, batch))
                bar.update()
            out = jax.device_get(parts)
            count = float(out[0]["count"][0])
            values = {key: np.concatenate([p[key] for p in out]).astype(np.float64) * count
                      for key in out[0] if key != "count"}
            sums = values if sums is None else {key: sums[key] + values[key] for key in sums}
            total += count
    if not total:
        raise ValueError("the batches have no valid rows")
    return {key: value[:num_points] / total for key, value in sums.items()}


def _first(directions):
    return directions[0] if isinstance(directions, (list, tuple)) else directions


def _axis(grid: int, span: float) -> np.ndarray:
    if grid < 2 or span <= 0:
        raise ValueError(f"need grid >= 2 and span > 0, got grid={grid}, span={span}")
    return np.linspace(-span, span, grid)


def landscape_1d(loss_fn, params, batches: Sequence[dict], directions, *, grid: int = 21, span: float = 1.0,
                 chunk: int = 8, mesh=None) -> dict:
    """The loss along one direction (a tree, or the first of a sequence) at `grid` points of
    [-span, span]: {'alpha': (grid,), 'loss': (grid,), ... the other terms, 'objective': text}."""
    alpha = _axis(grid, span)
    values = evaluate_points(loss_fn, params, batches, (_first(directions),), alpha[:, None], chunk=chunk,
                             mesh=mesh, desc="landscape 1d")
    return {"alpha": alpha, **values, "objective": getattr(loss_fn, "description", "loss_fn(params, batch)")}


def landscape_2d(loss_fn, params, batches: Sequence[dict], directions, *, grid: int = 21, span: float = 1.0,
                 chunk: int = 8, mesh=None) -> dict:
    """The loss on the plane of two directions: {'x': (grid,), 'y': (grid,), 'loss': (grid, grid)
    indexed [iy, ix] (matplotlib's contour(x, y, z) order), ... the other terms, 'objective'}."""
    if len(directions) != 2:
        raise ValueError(f"a 2-D landscape needs two directions, got {len(directions)}")
    x = y = _axis(grid, span)
    points = np.stack(np.meshgrid(x, y), axis=-1).reshape(-1, 2)  # row p = (x[ix], y[iy]), p = iy * grid + ix
    values = evaluate_points(loss_fn, params, batches, directions, points, chunk=chunk, mesh=mesh,
                             desc="landscape 2d")
    return {"x": x, "y": y, **{key: value.reshape(grid, grid) for key, value in values.items()},
            "objective": getattr(loss_fn, "description", "loss_fn(params, batch)")}
