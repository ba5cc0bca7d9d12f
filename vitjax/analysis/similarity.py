"""Centred kernel alignment (CKA) between layers: within one model across depth, and between two models.

Two estimators, both streamed over minibatches of `minibatch` consecutive images (n = 8 by default):

'teaching_matters' (Walmer et al., CVPR'23, `cka/cka_main.py`; protocols.md section 1), the default:
    X = the flattened (tokens x dim) features of one minibatch, K = X X^T, K <- (K - min K) / max(K - min K),
    diag(K) <- 0, HSIC the unbiased estimator of Song et al. (2012)
        HSIC(K, L) = [tr(KL) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'KL1] / (n(n-3)),
    and HSIC_KL, HSIC_KK, HSIC_LL each averaged over the minibatches BEFORE the ratio
        CKA = mean HSIC_KL / sqrt(mean HSIC_KK * mean HSIC_LL).
'linear': minibatch linear CKA (Nguyen, Raghu & Kornblith, ICLR'21): the same without the min-max
    scaling (K = X X^T with its diagonal zeroed, as the unbiased estimator requires). Min-max scaling
    leaves a single minibatch's CKA unchanged (unbiased HSIC ignores a constant added off the
    diagonal) but reweights the minibatches in the averages; that is the only difference.

Minibatches are the runner's batches cut into consecutive groups of `minibatch` rows, so their
boundaries fall at multiples of `minibatch` in the dataset order whatever the runner's batch size
(which must be a multiple of `minibatch`). A minibatch holding any padding row (the padded end of
the last batch) is skipped entirely, so the result equals Teaching Matters' whenever the number of
images is a multiple of `minibatch` (5,000 / 8 = 625 minibatches in their protocol); otherwise the
last few images are not used (Teaching Matters' own loader would use them as one smaller batch).

Features are computed in float32 with the Gram matrices at full matmul precision; the streamed
state is the sum of HSIC values and the number of minibatches.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.analysis.base import Analysis, PairAnalysis, State
from vitjax.capture import Output

__all__ = ["CKA", "CKABetween"]

# The order in which a pre-norm block computes its token-shaped taps; layers are listed block by
# block in this order (Teaching Matters' depth-wise CKA: norm1, norm2 of block 0, then of block 1, ...).
BLOCK_ORDER = ("norm1", "attn_branch", "norm2", "mlp_branch", "tokens")
ESTIMATORS = ("teaching_matters", "linear")
TOKEN_MODES = ("all", "cls", "patches")
HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class CKAOptions:
    """The options both CKA analyses share (Teaching Matters' defaults).

    taps:      which token-shaped taps of every block are compared, listed block by block in
               BLOCK_ORDER: ('norm1', 'norm2') is Teaching Matters' depth-wise CKA, ('tokens',) the
               block outputs (for a ResNet: the stage outputs)
    tokens:    'all' (Teaching Matters' default), 'cls' (token 0) or 'patches' (every prefix token
               dropped: class, distillation and registers; Teaching Matters' 'spat' drops token 0 only)
    estimator: 'teaching_matters' or 'linear' (see the module docstring)
    minibatch: images per minibatch n (>= 4; the unbiased estimator divides by n - 3)
    """

    taps: frozenset[str] = frozenset({"norm1", "norm2"})
    tokens: str = "all"
    estimator: str = "teaching_matters"
    minibatch: int = 8

    def __post_init__(self):
        taps = frozenset([self.taps] if isinstance(self.taps, str) else self.taps)
        object.__setattr__(self, "taps", taps)
        if not taps or not taps <= set(BLOCK_ORDER):
            raise ValueError(f"CKA taps must be a non-empty subset of {BLOCK_ORDER}, not {sorted(taps)}")
        if self.tokens not in TOKEN_MODES:
            raise ValueError(f"CKA tokens must be one of {TOKEN_MODES}, not {self.tokens!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"CKA estimator must be one of {ESTIMATORS}, not {self.estimator!r}")
        if self.minibatch < 4:
            raise ValueError(f"CKA minibatch must be at least 4 (the unbiased HSIC divides by n - 3), "
                             f"not {self.minibatch}")

    @property
    def ordered_taps(self) -> tuple[str, ...]:
        return tuple(tap for tap in BLOCK_ORDER if tap in self.taps)

    def names(self, size: int) -> np.ndarray:
        """The 'block.tap' names of `size` compared layers (every block records every tap)."""
        return np.array([f"{block}.{tap}" for block in range(size // len(self.ordered_taps))
                         for tap in self.ordered_taps])

    def layer_names(self, output: Output) -> list[str]:
        """'block.tap' for every compared layer in depth order; checks every block recorded every tap."""
        if self.tokens == "cls" and output.layout.num_class == 0:
            raise ValueError("CKA with tokens='cls' needs a class token; this model has none (use 'all' or 'patches')")
        for block, layer in enumerate(output.layers):
            for tap in self.ordered_taps:
                if tap not in layer:
                    raise ValueError(f"CKA compares every block, but block {block} did not record {tap!r}; "
                                     f"capture {sorted(self.taps)} in all blocks")
        return list(self.names(len(output.layers) * len(self.ordered_taps)))

    def kernels(self, output: Output, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(S, M, n, n) kernels of the S compared layers on the M minibatches of this batch, and
        (M,) whether each minibatch is complete (holds no padding row)."""
        self.layer_names(output)
        size = valid.shape[0]
        if size % self.minibatch:
            raise ValueError(f"CKA cuts each batch into minibatches of {self.minibatch} images; the batch "
                             f"size {size} is not a multiple of {self.minibatch}")
        count = size // self.minibatch
        complete = valid.reshape(count, self.minibatch).all(axis=1)
        off_diagonal = 1.0 - jnp.eye(self.minibatch, dtype=jnp.float32)
        kernels = []
        for layer in output.layers:
            for tap in self.ordered_taps:
                x = select_tokens(layer[tap], output.layout, self.tokens).astype(jnp.float32)
                x = x.reshape(count, self.minibatch, -1)
                k = jnp.einsum("mif,mjf->mij", x, x, precision=HIGHEST)
                if self.estimator == "teaching_matters":
                    k = min_max_scale(k)
                kernels.append(k * off_diagonal)
        return jnp.stack(kernels), complete


def select_tokens(x: jax.Array, layout, tokens: str) -> jax.Array:
    """The tokens a CKA mode compares, (B, N', D). ResNet stages have no prefix: 'patches' is 'all'."""
    if tokens == "all":
        return x
    if tokens == "cls":
        return x[:, :1]
    return x[:, layout.num_prefix:]


def min_max_scale(k: jax.Array) -> jax.Array:
    """(K - min K) / max(K - min K) per minibatch kernel (..., n, n); a constant kernel becomes 0."""
    k = k - k.min(axis=(-2, -1), keepdims=True)
    top = k.max(axis=(-2, -1), keepdims=True)
    return jnp.where(top > 0, k / jnp.where(top > 0, top, 1.0), 0.0)


def unbiased_hsic(k: jax.Array, l: jax.Array) -> jax.Array:
    """(S, M, n, n) and (T, M, n, n) symmetric kernels with zero diagonals -> (M, S, T) unbiased HSIC
    of every pair of layers on every minibatch."""
    n = k.shape[-1]
    trace = jnp.einsum("smij,tmij->mst", k, l, precision=HIGHEST)  # tr(KL) = sum(K * L) for symmetric L
    k_rows, l_rows = k.sum(-1), l.sum(-1)  # K1, L1: (S, M, n), (T, M, n)
    cross = jnp.einsum("smi,tmi->mst", k_rows, l_rows, precision=HIGHEST)  # 1'KL1
    totals = k_rows.sum(-1).T[:, :, None] * l_rows.sum(-1).T[:, None, :]  # 1'K1 1'L1
    return (trace + totals / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def summed_over_complete(hsic: jax.Array, complete: jax.Array) -> jax.Array:
    """Sum over the minibatch axis 0 of the complete minibatches only."""
    return jnp.where(complete.reshape(-1, *(1,) * (hsic.ndim - 1)), hsic, 0.0).sum(0)


def ratio(hsic_kl: np.ndarray, hsic_kk: np.ndarray, hsic_ll: np.ndarray) -> np.ndarray:
    """CKA = HSIC_KL / sqrt(HSIC_KK HSIC_LL) (NaN where a layer's HSIC is not positive)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return hsic_kl / np.sqrt(np.outer(hsic_kk, hsic_ll))


@dataclasses.dataclass(frozen=True)
class CKA(CKAOptions, Analysis):
    """CKA between every pair of layers of one model (Teaching Matters Fig. 3 heatmaps).

    Metrics: 'cka' (S, S); 'hsic' (S, S) the minibatch-averaged HSIC terms; 'layers' (S,) names
    'block.tap'; 'minibatches' the number of minibatches used.
    """

    name: ClassVar[str] = "cka"

    def init(self, spec: Output) -> State:
        size = len(self.layer_names(spec))
        return {"hsic": jnp.zeros((size, size), jnp.float32), "minibatches": jnp.zeros((), jnp.int32)}

    def update(self, state: State, output: Output, batch: dict) -> State:
        k, complete = self.kernels(output, batch["valid"])
        hsic = summed_over_complete(unbiased_hsic(k, k), complete)
        return {"hsic": state["hsic"] + hsic, "minibatches": state["minibatches"] + complete.sum(dtype=jnp.int32)}

    def finalize(self, state: State) -> dict[str, np.ndarray]:
        count = int(state["minibatches"])
        hsic = np.asarray(state["hsic"], np.float64) / max(count, 1)
        return {"cka": ratio(hsic, np.diag(hsic), np.diag(hsic)), "hsic": hsic,
                "layers": self.names(len(hsic)), "minibatches": np.array(count)}


@dataclasses.dataclass(frozen=True)
class CKABetween(CKAOptions, PairAnalysis):
    """CKA between every layer of model a and every layer of model b on the same images.

    Metrics: 'cka' (Sa, Sb); 'layers_a' (Sa,), 'layers_b' (Sb,) names 'block.tap'; 'minibatches'.
    """

    name: ClassVar[str] = "cka_between"

    def init(self, spec_a: Output, spec_b: Output) -> State:
        sa, sb = len(self.layer_names(spec_a)), len(self.layer_names(spec_b))
        return {"hsic_ab": jnp.zeros((sa, sb), jnp.float32), "hsic_aa": jnp.zeros((sa,), jnp.float32),
                "hsic_bb": jnp.zeros((sb,), jnp.float32), "minibatches": jnp.zeros((), jnp.int32)}

    def update(self, state: State, out_a: Output, out_b: Output, batch: dict) -> State:
        ka, complete = self.kernels(out_a, batch["valid"])
        kb, _ = self.kernels(out_b, batch["valid"])
        self_hsic = lambda k: jnp.diagonal(unbiased_hsic(k, k), axis1=1, axis2=2)  # (M, S)
        update = {"hsic_ab": unbiased_hsic(ka, kb), "hsic_aa": self_hsic(ka), "hsic_bb": self_hsic(kb)}
        sums = {key: state[key] + summed_over_complete(value, complete) for key, value in update.items()}
        return sums | {"minibatches": state["minibatches"] + complete.sum(dtype=jnp.int32)}

    def finalize(self, state: State) -> dict[str, np.ndarray]:
        count = int(state["minibatches"])
        mean = {key: np.asarray(state[key], np.float64) / max(count, 1) for key in ("hsic_ab", "hsic_aa", "hsic_bb")}
        return {"cka": ratio(mean["hsic_ab"], mean["hsic_aa"], mean["hsic_bb"]),
                "layers_a": self.names(len(mean["hsic_aa"])), "layers_b": self.names(len(mean["hsic_bb"])),
                "minibatches": np.array(count)}
