"""Spectral and geometric views of feature maps: Fourier analysis, feature-map variance, singular
value spectra and token cosine similarity.

Fourier and variance follow Park & Kim (ICLR'22, `fourier_analysis.ipynb`, `featuremap_variance.ipynb`;
protocols.md section 4; cl-vs-mim's `representation_analysis.ipynb` does the same). Their "latents"
are the hidden states of the residual stream: the embedding, then after every attention sub-block
(x + attn(norm1(x))) and after every MLP sub-block (the block output). vitjax rebuilds that sequence
exactly from three taps of every block: after-MLP = 'tokens', after-attention = 'tokens' - 'mlp_branch',
embedding = block 0's after-attention - 'attn_branch'. The two residual branches themselves are
reported too. For a ResNet (or taps=('tokens',)) the sequence is the block (stage) outputs.

Feature maps drop every prefix token (class, distillation, registers) and reshape the patch tokens
to the grid; ResNet stages have no prefix and their own grid (its aspect ratio that of the final grid).

Fourier, variance and token similarity average a per-image statistic over the valid images
(streaming sums); singular values keep each block's token scatter matrix (merged exactly). So a
batched, sharded or merged run equals one pass over all images up to float32 summation order.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.analysis.base import count_valid, mean_or_nan, valid_sum
from vitjax.analysis.base import Analysis, State
from vitjax.capture import Output, TokenLayout

__all__ = ["FeatureVariance", "Fourier", "SingularValues", "TokenSimilarity"]

STREAM_TAPS = frozenset({"tokens", "attn_branch", "mlp_branch"})
BRANCHES = ("attn_branch", "mlp_branch")


def feature_map(tokens: jax.Array, layout: TokenLayout) -> jax.Array:
    """(B, N, D) tokens as a (B, gh, gw, D) feature map of patch tokens (prefix tokens dropped)."""
    n = tokens.shape[1]
    if n == layout.num_tokens:
        return layout.patches(tokens)
    if layout.num_prefix == 0:  # a ResNet stage: a finer grid with the final grid's aspect ratio
        rows = round(math.sqrt(n * layout.grid[0] / layout.grid[1]))
        if rows and n % rows == 0:
            return tokens.reshape(tokens.shape[0], rows, n // rows, tokens.shape[2])
    raise ValueError(f"cannot lay {n} tokens out on a grid: the model's layout has {layout.num_prefix} prefix "
                     f"tokens and a {layout.grid} patch grid")


def patch_tokens(tokens: jax.Array, layout: TokenLayout, which: str) -> jax.Array:
    """'patches': every prefix token dropped (ResNet stages have none); 'all': every token."""
    if which not in ("patches", "all"):
        raise ValueError(f"tokens must be 'patches' or 'all', not {which!r}")
    return tokens if which == "all" else tokens[:, layout.num_prefix:]


def block_taps(output: Output, tap: str, analysis: str) -> list[jax.Array]:
    """One tap of every block; a clear error where a block did not record it."""
    missing = [i for i, layer in enumerate(output.layers) if tap not in layer]
    if missing:
        raise ValueError(f"analysis {analysis!r} reads {tap!r} from every block; blocks {missing} did not record it"
                         + ("" if tap == "tokens" else " (a ResNet records only 'tokens': use taps=('tokens',))"))
    return [layer[tap] for layer in output.layers]


class PerImageMean(Analysis):
    """An analysis whose metrics are means over images of a per-image statistic: the state is the
    sum over valid images of `per_image(output)` (a pytree of (B, ...) arrays) and their number."""

    def per_image(self, output: Output):
        raise NotImplementedError

    def init(self, spec: Output) -> State:
        shapes = jax.eval_shape(self.per_image, spec)
        sums = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape[1:], jnp.float32), shapes)
        return {"sums": sums, "images": jnp.zeros((), jnp.float32)}

    def update(self, state: State, output: Output, batch: dict) -> State:
        valid = batch["valid"]
        add = lambda total, x: total + valid_sum(x.astype(jnp.float32), valid)
        return {"sums": jax.tree_util.tree_map(add, state["sums"], self.per_image(output)),
                "images": state["images"] + count_valid(batch)}

    @staticmethod
    def means(state: State):
        """The per-image means on the host (float64), NaN before any image."""
        return jax.tree_util.tree_map(lambda total: mean_or_nan(total, state["images"]), state["sums"])


def stacked(rows: list[np.ndarray]) -> np.ndarray:
    """1-D arrays of different lengths as one (len(rows), longest) array, NaN-padded."""
    out = np.full((len(rows), max(len(r) for r in rows)), np.nan)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@dataclasses.dataclass(frozen=True)
class ResidualStream(PerImageMean):
    """Park & Kim's sequence of hidden states (and the branches), as feature maps.

    taps: {'tokens', 'attn_branch', 'mlp_branch'} (the default: the full sequence embedding,
          after-attention, after-MLP per block, plus both branches) or {'tokens'} (block outputs
          only: what a ResNet records).
    """

    taps: frozenset[str] = STREAM_TAPS

    def __post_init__(self):
        taps = frozenset([self.taps] if isinstance(self.taps, str) else self.taps)
        object.__setattr__(self, "taps", taps)
        if taps not in (STREAM_TAPS, frozenset({"tokens"})):
            raise ValueError(f"{self.name} taps must be {sorted(STREAM_TAPS)} or ['tokens'], not {sorted(taps)}")

    @property
    def branches(self) -> bool:
        return self.taps == STREAM_TAPS

    def maps(self, output: Output) -> dict[str, list[jax.Array]]:
        """{'hidden': the hidden-state sequence, 'attn_branch': [...], 'mlp_branch': [...]} of
        (B, gh, gw, D) float32 feature maps (the branches only with the full taps)."""
        as_map = lambda t: feature_map(t.astype(jnp.float32), output.layout)
        after_mlp = [as_map(t) for t in block_taps(output, "tokens", self.name)]
        if not self.branches:
            return {"hidden": after_mlp}
        attn, mlp = ([as_map(t) for t in block_taps(output, tap, self.name)] for tap in BRANCHES)
        after_attn = [out - branch for out, branch in zip(after_mlp, mlp)]
        hidden = [after_attn[0] - attn[0]]
        for mid, out in zip(after_attn, after_mlp):
            hidden += [mid, out]
        return {"hidden": hidden, "attn_branch": attn, "mlp_branch": mlp}

    def hidden_names(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Names of the `size` hidden states and whether each follows an attention sub-block."""
        if not self.branches:
            return np.array([str(i) for i in range(size)]), np.zeros(size, bool)
        names = ["embed"] + [f"{i}.{part}" for i in range((size - 1) // 2) for part in ("attn", "mlp")]
        return np.array(names), np.array([name.endswith(".attn") for name in names])


def log_amplitude(x: jax.Array) -> jax.Array:
    """Park & Kim's log(|fft2| + 1e-6) of a real (B, gh, gw, D) map, averaged over channels: (B, gh, gw).

    A real map's spectrum is conjugate-symmetric, X[u, v] = conj X[-u, -v], so the amplitudes of
    columns v <= gw // 2 come from a real FFT and the other columns are mirrored from them. XLA:CPU
    runs the real FFT over (gh, gw) with the channels last about 3x as fast as a complex fft2 with
    the channels moved first (10 against 29 ms for 32 ViT-S/16 maps of 14 x 14 x 384, 2026-11-22).
    """
    gh, gw = x.shape[1:3]
    half = jnp.log(jnp.abs(jnp.fft.rfftn(x, axes=(1, 2))) + 1e-6).mean(axis=-1)  # (B, gh, gw // 2 + 1)
    rows = -np.arange(gh) % gh
    columns = gw - np.arange(gw // 2 + 1, gw)
    return jnp.concatenate([half, half[:, rows][:, :, columns]], axis=2)


def half_diagonal(mean_log: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The relative log amplitude along the half-diagonal from the centre of an fftshifted spectrum,
    and its frequency in units of pi.

    Park & Kim: roll by (h//2, w//2) (= fftshift), take `.diag()[h//2:]`, subtract the first (DC)
    element. On a non-square grid vitjax steps one bin along both axes from the centre
    (h//2 + t, w//2 + t) while both stay inside; the frequency given is along the rows, 2t/h.
    """
    h, w = mean_log.shape
    shifted = np.roll(mean_log, (h // 2, w // 2), axis=(0, 1))
    steps = np.arange(min(h - h // 2, w - w // 2))
    curve = shifted[h // 2 + steps, w // 2 + steps]
    return curve - curve[0], 2.0 * steps / h


@dataclasses.dataclass(frozen=True)
class Fourier(ResidualStream):
    """Relative log amplitude of Fourier-transformed feature maps (Park & Kim Fig. 2a, 8; cl-vs-mim).

    The mean of the LOG amplitude over images and channels, fftshifted, its half-diagonal from the
    centre minus the DC term; the "high-frequency" value is the last element (0.86 pi on 14x14; NaN
    for maps of 2 x 2 or smaller, whose half-diagonal holds only the DC term).
    Metrics (S hidden states, L blocks, F frequencies; shorter curves NaN-padded):
      'log_amplitude' (S, F), 'frequency' (S, F) in units of pi, 'high_frequency' (S,),
      'layers' (S,) names ('embed', 'i.attn', 'i.mlp'; block indices for taps=('tokens',)),
      'is_msa' (S,) True after an attention sub-block, 'images';
      with the branches: 'attn_branch_log_amplitude' (L, F), 'attn_branch_high_frequency' (L,) and
      the same for 'mlp_branch'.
    """

    name: ClassVar[str] = "fourier"

    def per_image(self, output: Output):
        return {key: tuple(log_amplitude(x) for x in maps) for key, maps in self.maps(output).items()}

    def finalize(self, state: State) -> dict[str, np.ndarray]:
        metrics = {"images": np.asarray(state["images"])}
        for key, maps in self.means(state).items():
            curves, frequencies = zip(*(half_diagonal(m) for m in maps))
            prefix = "" if key == "hidden" else f"{key}_"
            metrics[f"{prefix}log_amplitude"] = stacked(curves)
            # A map of 2 x 2 or smaller has only the DC term on its half-diagonal: no high frequency.
            metrics[f"{prefix}high_frequency"] = np.array([curve[-1] if len(curve) > 1 else np.nan for curve in curves])
            if key == "hidden":
                metrics["frequency"] = stacked(frequencies)
                metrics["layers"], metrics["is_msa"] = self.hidden_names(len(curves))
        return metrics


@dataclasses.dataclass(frozen=True)
class FeatureVariance(ResidualStream):
    """Feature-map variance (Park & Kim Fig. 9): the variance over (h, w) of each channel, unbiased
    as torch.var computes it, then the mean over images and channels.

    Metrics: 'variance' (S,), 'layers' (S,), 'is_msa' (S,), 'images'; with the branches
    'attn_branch_variance' (L,) and 'mlp_branch_variance' (L,).
    """

    name: ClassVar[str] = "feature_variance"

    def per_image(self, output: Output):
        variance = lambda x: x.var(axis=(1, 2), ddof=1).mean(axis=-1)
        return {key: jnp.stack([variance(x) for x in maps], axis=1) for key, maps in self.maps(output).items()}

    def finalize(self, state: State) -> dict[str, np.ndarray]:
        means = self.means(state)
        metrics = {f"{key}_variance": value for key, value in means.items() if key != "hidden"}
        names, is_msa = self.hidden_names(len(means["hidden"]))
        return {"variance": means["hidden"], "layers": names, "is_msa": is_msa,
                "images": np.asarray(state["images"])} | metrics


def scatter_of(x: jax.Array, valid: jax.Array) -> dict:
    """{'count', 'mean', 'scatter'} of the rows x (R, D) whose `valid` is True: their number, mean and
    centred scatter matrix sum_r (x_r - mean)(x_r - mean)^T, in float32 at full matmul precision."""
    w = valid.astype(jnp.float32)[:, None]
    count = w.sum()
    mean = (jnp.where(w > 0, x, 0.0)).sum(0) / jnp.maximum(count, 1.0)
    centred = jnp.where(w > 0, x - mean, 0.0)
    scatter = jnp.einsum("rd,re->de", centred, centred, precision=jax.lax.Precision.HIGHEST)
    return {"count": count, "mean": mean, "scatter": scatter}


def combine_scatter(a: dict, b: dict) -> dict:
    """The count, mean and centred scatter of the union of two row sets (Chan et al.'s pairwise update)."""
    count = a["count"] + b["count"]
    share = b["count"] / jnp.maximum(count, 1.0)
    delta = b["mean"] - a["mean"]
    return {"count": count, "mean": a["mean"] + share * delta,
            "scatter": a["scatter"] + b["scatter"] + jnp.outer(delta, delta) * a["count"] * share}


@dataclasses.dataclass(frozen=True)
class SingularValues(Analysis):
    """Singular value spectra of the token representations at every block output: the singular
    values of the matrix that stacks the tokens of all images (rows) over the D channels.

    The state is each block's token count, mean and scatter matrix (D x D, merged exactly with
    Chan et al.'s pairwise update), so memory is L * D^2 floats whatever the dataset size, and the
    spectrum comes from one float64 eigendecomposition at the end: sigma_k = sqrt(eig_k(scatter)).
    A per-image SVD inside the pass would cost more than the forward pass itself on a CPU.
    A spectrum that falls fast means the tokens span few directions (dimensional collapse).

    tokens: 'patches' (prefix tokens dropped, the default) or 'all'.
    center: True (the default) subtracts the mean token (the covariance spectrum); False keeps it.
    Metrics: 'spectrum' (L, D) sigma_k / sigma_1 (NaN-padded for ResNet stages of fewer channels),
    'effective_rank' (L,) exp(entropy of sigma / sum sigma) (Roy & Vetterli), 'layers', 'tokens'.
    """

    name: ClassVar[str] = "singular_values"
    taps: ClassVar[frozenset[str]] = frozenset({"tokens"})
    tokens: str = "patches"
    center: bool = True

    def _batch_scatters(self, output: Output, valid: jax.Array) -> tuple[dict, ...]:
        scatters = []
        for x in block_taps(output, "tokens", self.name):
            x = patch_tokens(x, output.layout, self.tokens).astype(jnp.float32)
            rows = x.reshape(-1, x.shape[-1])
            scatters.append(scatter_of(rows, jnp.repeat(valid, x.shape[1])))
        return tuple(scatters)

    def init(self, spec: Output) -> State:
        shapes = jax.eval_shape(self._batch_scatters, spec, jax.ShapeDtypeStruct(spec.tokens.shape[:1], jnp.bool_))
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)

    def update(self, state: State, output: Output, batch: dict) -> State:
        return self.merge(state, self._batch_scatters(output, batch["valid"]))

    def merge(self, a: State, b: State) -> State:
        return tuple(combine_scatter(x, y) for x, y in zip(a, b))

    def finalize(self, state: State) -> dict[str, np.ndarray]:
        spectra, ranks = [], []
        for layer in state:
            scatter = np.asarray(layer["scatter"], np.float64)
            if not self.center:  # add the mean back: sum x x^T = scatter + count * mean mean^T
                mean = np.asarray(layer["mean"], np.float64)
                scatter = scatter + float(layer["count"]) * np.outer(mean, mean)
            sigma = np.sqrt(np.clip(np.linalg.eigvalsh(scatter)[::-1], 0.0, None))
            with np.errstate(invalid="ignore", divide="ignore"):
                spectra.append(sigma / sigma[0])
                p = sigma / sigma.sum()
                ranks.append(np.exp(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0))))
        return {"spectrum": stacked(spectra), "effective_rank": np.array(ranks), "layers": np.arange(len(state)),
                "tokens": np.array(float(state[0]["count"]) if state else 0.0)}


@dataclasses.dataclass(frozen=True)
class TokenSimilarity(PerImageMean):
    """Mean cosine similarity between the distinct tokens of one image, per block output (cl-vs-mim's
    token uniformity view: 1 means every token of an image points the same way).

    Per image: mean over pairs i != j of cos(x_i, x_j) = (|sum_i u_i|^2 - sum_i |u_i|^2) / (N(N-1))
    with u_i = x_i / |x_i|; then the mean over images.
    tokens: 'patches' (prefix tokens dropped, the default) or 'all'.
    Metrics: 'token_similarity' (L,), 'layers', 'images'.
    """

    name: ClassVar[str] = "token_similarity"
    taps: ClassVar[frozenset[str]] = frozenset({"tokens"})
    tokens: str = "patches"

    def per_image(self, output: Output):
        similarity = []
        for x in block_taps(output, "tokens", self.name):
            x = patch_tokens(x, output.layout, self.tokens).astype(jnp.float32)
            norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
            u = x / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny)
            n = x.shape[1]
            total = jnp.square(u.sum(1)).sum(-1) - jnp.square(u).sum((1, 2))
            similarity.append(total / (n * (n - 1)))
        return jnp.stack(similarity, axis=1)

    def finalize(self, state: State) -> dict[str, np.ndarray]:
        values = self.means(state)
        return {"token_similarity": values, "layers": np.arange(len(values)), "images": np.asarray(state["images"])}
