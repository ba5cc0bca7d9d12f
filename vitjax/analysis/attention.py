"""Per-head attention statistics as streaming reducers: distance, entropy, NMI, collapse, received.

Each is a mean over images of a per-image value, so the state is a sum and an image count, and
the mean over images equals Teaching Matters' "cache per image, mean in the plot" and cl-vs-mim's
"mean over the batch, then over heads" (their notebook uses one batch; means are linear, so the
order of the image and head means does not matter). Every analysis reads the post-softmax 'attn'
tap of each block; prefix-token handling is in attention_tokens.py.

The spatial analyses (CLS maps, AAAM, saliency) live in attention_maps.py and are re-exported here.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.analysis.attention_maps import AlignedAttentionMaps, ClsAttentionMaps, SaliencyAlignment
from vitjax.analysis.attention_tokens import (TAP, attention_maps, attention_shape, patch_block, renormalise,
                                              renormalise_patch_rows, summed_patch_rows)
from vitjax.analysis.base import Analysis, count_valid, mean_or_nan, valid_sum
from vitjax.capture import Output, TokenLayout
from vitjax.kernels.stats import pair_distance, token_geometry

__all__ = ["AttentionDistance", "AttentionEntropy", "NormalizedMutualInformation", "AttentionCollapse",
           "AttentionReceived", "ClsAttentionMaps", "AlignedAttentionMaps", "SaliencyAlignment"]

HIGHEST = jax.lax.Precision.HIGHEST  # the sums over keys must not drop to bf16 passes on accelerators
PIXEL_EPS = 1e-32  # cl-vs-mim adds this to every patch entry before renormalising for the pixel distance


class PerImageMean(Analysis):
    """An analysis whose metrics are means over valid images of per-image arrays.

    Subclasses define `per_image(attn (B, H, N, N) float32, layout) -> {name: (B, ...)}` for one
    block; the state holds each name's sum over valid images stacked over blocks, (L, ...), and the
    image count. `finalize` returns the means (and NaN when no image was counted).
    """

    taps: ClassVar[frozenset[str]] = frozenset({TAP})

    def per_image(self, attn: jax.Array, layout: TokenLayout) -> dict[str, jax.Array]:
        raise NotImplementedError

    def init(self, spec: Output):
        blocks, heads, layout = attention_shape(spec, self.name)
        n = layout.num_tokens
        one_image = jax.ShapeDtypeStruct((1, heads, n, n), jnp.float32)
        shapes = jax.eval_shape(lambda a: self.per_image(a, layout), one_image)
        sums = {key: jnp.zeros((blocks, *s.shape[1:]), jnp.float32) for key, s in shapes.items()}
        return {"sums": sums, "count": jnp.zeros((), jnp.float32)}

    def update(self, state, output: Output, batch: dict):
        valid = batch["valid"]
        per_block = [self.per_image(attn, output.layout) for attn in attention_maps(output, self.name)]
        sums = {key: state["sums"][key] + jnp.stack([valid_sum(block[key], valid) for block in per_block])
                for key in state["sums"]}
        return {"sums": sums, "count": state["count"] + count_valid(batch)}

    def means(self, state) -> dict[str, np.ndarray]:
        return {key: mean_or_nan(total, state["count"]) for key, total in state["sums"].items()}

    def finalize(self, state) -> dict[str, np.ndarray]:
        return {**self.means(state), "num_images": np.asarray(state["count"])}


def _with_head_means(metrics: dict, *keys: str) -> dict:
    """Adds '<key>_mean' (L,): the mean over heads of a per-(block, head) metric."""
    return {**metrics, **{f"{key}_mean": metrics[key].mean(axis=1) for key in keys}}


@dataclasses.dataclass(frozen=True)
class AttentionDistance(PerImageMean):
    """Average attention distance per block and head (Raghu et al.'s metric as the papers run it).

    Patch queries and patch keys only (all prefix tokens dropped), rows renormalised; per image and
    head, the mean over queries q of sum_k A'_qk d_qk; then the mean over images.

    units='unit_square' (Teaching Matters, default): token (row, col) at (row / (gh-1), col / (gw-1)),
        rows renormalised with no epsilon, so rows whose mass was all on prefix tokens are zero rows
        (distance 0) that still count in the query mean. Multiply by (K-1) x patch for pixels.
    units='pixels' (cl-vs-mim): d = Euclidean distance in pixels (row x patch_h, col x patch_w);
        1e-32 is added to every patch entry before renormalising (all-prefix rows become uniform).
    The two are not comparable. Metrics: 'distance' (L, H), 'distance_mean' (L,) over heads,
    'prefix_rows' (L, H): patch rows per image whose mass was all on prefix tokens (mean; under
    'unit_square' they count as distance 0), 'num_images', 'units'.
    """

    name: ClassVar[str] = "attention_distance"
    units: str = "unit_square"

    def __post_init__(self):
        if self.units not in ("unit_square", "pixels"):
            raise ValueError(f"attention_distance units must be 'unit_square' or 'pixels', not {self.units!r}")

    def _distances(self, layout):
        geometry = token_geometry(layout, self.units).slice(layout.num_prefix, layout.num_tokens)
        return pair_distance(geometry, geometry), PIXEL_EPS if self.units == "pixels" else 0.0

    def per_image(self, attn, layout):
        distance, eps = self._distances(layout)
        per_query = jnp.einsum("bhqk,qk->bhq", renormalise_patch_rows(attn, layout, eps), distance, precision=HIGHEST)
        prefix_rows = (patch_block(attn, layout).sum(-1) == 0).sum(-1, dtype=jnp.float32)
        return {"distance": per_query.mean(-1), "prefix_rows": prefix_rows}

    def update(self, state, output: Output, batch: dict):
        # The metric is linear in the renormalised rows, so summing the rows over images first
        # gives the same sum of per-image means in one read of each attention block; the read is
        # shared with AAAM when both run in one step (same call, same outputs used).
        distance, eps = self._distances(output.layout)
        sums = {"distance": [], "prefix_rows": []}
        for attn in attention_maps(output, self.name):
            rows, empty = summed_patch_rows(attn, output.layout, batch["valid"], eps)
            sums["distance"].append(jnp.einsum("hqk,qk->h", rows, distance, precision=HIGHEST) / distance.shape[0])
            sums["prefix_rows"].append(empty)
        return {"sums": {key: state["sums"][key] + jnp.stack(value) for key, value in sums.items()},
                "count": state["count"] + count_valid(batch)}

    def finalize(self, state):
        return {**_with_head_means(super().finalize(state), "distance"), "units": np.asarray(self.units)}


@dataclasses.dataclass(frozen=True)
class AttentionEntropy(PerImageMean):
    """Entropy of each patch query's attention over patch keys, in nats (natural log).

    Prefix tokens dropped from queries and keys, rows renormalised (all-prefix rows are zero rows
    with entropy 0 that still count), H_q = -sum_k A'_qk ln A'_qk with 0 ln 0 = 0; mean over
    queries, then images. ln K is the entropy of a uniform row (K patches), 0 of a one-hot row.
    Metrics: 'entropy' (L, H), 'entropy_mean' (L,), 'num_images'.
    """

    name: ClassVar[str] = "attention_entropy"

    def per_image(self, attn, layout):
        rows = renormalise_patch_rows(attn, layout)
        plogp = jnp.where(rows > 0, rows * jnp.log(jnp.where(rows > 0, rows, 1.0)), 0.0)
        return {"entropy": -plogp.sum(-1).mean(-1)}

    def finalize(self, state):
        return _with_head_means(super().finalize(state), "entropy")


@dataclasses.dataclass(frozen=True)
class NormalizedMutualInformation(PerImageMean):
    """Normalised mutual information between queries and keys (cl-vs-mim, Park et al. ICLR'23).

    Per image and head: A' = patch-query rows over patch keys, eps (1e-8) added to every entry and
    renormalised; a uniform query prior p(q) = 1/Q; key marginal p(k) = sum_q p(q) A'(k|q);
    I = sum_qk p(q) A'(k|q) ln(A'(k|q) / p(k)); NMI = I / sqrt(H(q) H(k)) with H(q) = ln Q and
    H(k) = -sum_k p(k) ln p(k). Mean over images, then heads. NMI -> 0 is attention collapse
    (every query attends alike). Metrics: 'nmi' (L, H), 'nmi_mean' (L,), 'num_images'.
    """

    name: ClassVar[str] = "nmi"
    eps: float = 1e-8

    def per_image(self, attn, layout):
        rows = renormalise(patch_block(attn, layout), self.eps)
        queries = rows.shape[-2]
        key_marginal = rows.mean(-2)  # (B, H, K)
        information = (rows * jnp.log(rows / key_marginal[..., None, :])).sum((-2, -1)) / queries
        key_entropy = -(key_marginal * jnp.log(key_marginal)).sum(-1)
        return {"nmi": information / jnp.sqrt(np.log(queries) * key_entropy)}

    def finalize(self, state):
        return _with_head_means(super().finalize(state), "nmi")


def _unit_rows(rows: jax.Array) -> jax.Array:
    """Rows scaled to unit L2 norm; zero rows stay zero (cosine 0 with everything)."""
    norm = jnp.sqrt((rows * rows).sum(-1, keepdims=True))
    return jnp.where(norm > 0, rows / jnp.where(norm > 0, norm, 1.0), 0.0)


def _mean_pair_cosine(units: jax.Array, axis: int) -> jax.Array:
    """Mean cosine over ordered pairs i != j of unit rows along `axis`: (|sum u|^2 - sum |u|^2) / (n (n-1))."""
    n = units.shape[axis]
    total = units.sum(axis)
    pairs = (total * total).sum(-1) - (units * units).sum((axis, -1))
    return pairs / (n * (n - 1)) if n > 1 else jnp.full(pairs.shape, jnp.nan)


@dataclasses.dataclass(frozen=True)
class AttentionCollapse(PerImageMean):
    """How alike attention maps are: across queries (per head) and across heads (per query).

    A map is a patch query's attention row over patch keys (prefix queries and keys dropped; the
    cosine is blind to renormalisation, so none is needed). Cosine similarity with a zero row (all
    mass on prefix tokens) is 0, and such rows still count.

    'query_similarity' (L, H): per image and head, the mean cosine similarity over all ordered pairs
        of distinct patch queries, then the mean over images (1 = every query attends alike).
    'head_similarity' (L,): per image and patch query, the mean cosine similarity over all ordered
        pairs of distinct heads, then the mean over queries and images (NaN for one head).
    Also 'query_similarity_mean' (L,) over heads and 'num_images'. Computed in O(Q K) per head from
    |sum u|^2 - sum |u|^2, without any Q x Q matrix.
    """

    name: ClassVar[str] = "attention_collapse"

    def per_image(self, attn, layout):
        units = _unit_rows(patch_block(attn, layout))  # (B, H, Q, K)
        return {"query_similarity": _mean_pair_cosine(units, axis=2),
                "head_similarity": _mean_pair_cosine(units, axis=1).mean(-1)}

    def finalize(self, state):
        return _with_head_means(super().finalize(state), "query_similarity")


def token_kinds(layout: TokenLayout) -> dict[str, slice]:
    """The token kinds a layout has, with their positions (absent kinds left out)."""
    class_end, dist_end = layout.num_class, layout.num_class + layout.num_dist
    kinds = {"class": slice(0, class_end), "dist": slice(class_end, dist_end),
             "register": layout.register_slice, "patch": layout.patch_slice}
    return {kind: where for kind, where in kinds.items() if where.stop > where.start}


@dataclasses.dataclass(frozen=True)
class AttentionReceived(PerImageMean):
    """Attention each key receives, per block and head: where the attention sinks are.

    Per image and head, key j receives r_j = mean over ALL queries (prefix ones included) of A_qj,
    the share of an average query's attention that goes to j (sum_j r_j = 1); then the mean over
    images. Per token kind, the mean of r_j over that kind's tokens:
    'received_class', 'received_dist', 'received_register', 'received_patch' (L, H), present only
    for the kinds the model has; 'patch_max' (L, H): per image the largest r_j over patches (a
    high-norm outlier patch that acts as a sink stands out here), mean over images;
    'received' (L, H, N) per token; 'num_images'.
    """

    name: ClassVar[str] = "attention_received"

    def per_image(self, attn, layout):
        received = attn.mean(-2)  # (B, H, N)
        kinds = {f"received_{kind}": received[..., where].mean(-1) for kind, where in token_kinds(layout).items()}
        return {"received": received, "patch_max": received[..., layout.patch_slice].max(-1), **kinds}
