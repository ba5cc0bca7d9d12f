"""Each paper's protocol as a named list of configured analyses (`vitjax analyze --preset NAME`).

A preset is not a code branch: it picks the options that each analysis documents (definitions in
shared/reference/protocols.md). The papers disagree on some choices (attention distance in
pixels or on the unit square, NMI's epsilon, AAAM's divisor), so their numbers are comparable
only within a preset. `all` is the default: every analysis with its default options, plus the
variants that let a ResNet or a second model join in (block-output Fourier, variance and CKA).
"""

from __future__ import annotations

from vitjax.analysis.attention import (AlignedAttentionMaps, AttentionCollapse, AttentionDistance,
                                       AttentionReceived, ClsAttentionMaps, NormalizedMutualInformation,
                                       SaliencyAlignment)
from vitjax.analysis.clustering import Clustering
from vitjax.analysis.norms import OutlierRedundancy, TokenNorms
from vitjax.analysis.probes import Probes
from vitjax.analysis.registry import ANALYSES
from vitjax.analysis.similarity import CKA, CKABetween
from vitjax.analysis.spectral import FeatureVariance, Fourier, SingularValues, TokenSimilarity

BLOCK_OUTPUTS = frozenset({"tokens"})  # what every model (a ResNet too) records per block


def teaching_matters() -> list:
    """Teaching Matters (Walmer et al., CVPR'23), the choices of its released code:
    CLS attention maps not renormalised; AAAM with its divisor quirk (once per query per batch of 2
    images, so values are ~2x the mean map); attention distance on the unit square, class token
    dropped and rows renormalised with no epsilon (all-prefix rows count as 0); saliency: the CLS
    row, top 60% of the mass, IoU with the foreground per head; depth-wise CKA on the norm1/norm2
    outputs and between models on the block outputs, minibatches of 8, min-max scaled kernels with
    zeroed diagonal, unbiased HSIC averaged before the ratio; k-means k=50 (CLS and mean patch token)
    and k=80 (mask-pooled), seed 0, 10 restarts, the first 5,000 images."""
    return [ClsAttentionMaps(), AlignedAttentionMaps(divisor="teaching_matters", batch_size=2),
            AttentionDistance(units="unit_square"), SaliencyAlignment(map="cls", mass=0.6),
            CKA(taps=frozenset({"norm1", "norm2"}), estimator="teaching_matters", minibatch=8),
            CKABetween(taps=BLOCK_OUTPUTS, estimator="teaching_matters", minibatch=8),
            Clustering(k=50, k_mask=80, n_init=10, seed=0, capacity=5000)]


def cl_vs_mim() -> list:
    """What Do Self-Supervised ViTs Learn? (Park et al., ICLR'23), its notebooks' choices:
    attention distance in pixels (patch size x grid distance, 1e-32 added before renormalising);
    NMI with a uniform query prior and 1e-8 added; attention collapse (cosine similarity of maps
    across queries and heads); Fourier of the residual stream [embedding, after attention, after
    MLP] per block, no final norm; token cosine similarity and singular value spectra of the block
    outputs (the paper's collapse views, not in its repository)."""
    return [AttentionDistance(units="pixels"), NormalizedMutualInformation(eps=1e-8), AttentionCollapse(),
            Fourier(), TokenSimilarity(), SingularValues()]


def registers() -> list:
    """Vision Transformers Need Registers (Darcet et al., ICLR'24): norms of the un-normalised block
    output tokens per layer; the outlier threshold found per model from the bimodal histogram of
    the last block's patch-token norms (150 was DINOv2-g's hand-picked value, not a constant);
    cosine similarity of outliers' input patch embeddings with their 4 neighbours; linear probes
    (position, pixels, class from one token) on outlier vs normal tokens; the attention each key
    (class, register, patch) receives, where the attention sinks are."""
    return [TokenNorms(threshold=None), OutlierRedundancy(threshold=None), Probes(threshold=None),
            AttentionReceived()]


def park_kim() -> list:
    """How Do Vision Transformers Work? (Park & Kim, ICLR'22), `fourier_analysis.ipynb` and
    `featuremap_variance.ipynb`: relative log amplitude of the Fourier-transformed feature maps (mean
    of the log over images and channels, fftshift, half-diagonal minus DC, the last element as the
    high-frequency value) and feature-map variance, on the residual stream with the attention and
    MLP branches separately; also on the block outputs alone, which a ResNet (their comparison)
    records too."""
    return [Fourier(), FeatureVariance(), Fourier(taps=BLOCK_OUTPUTS), FeatureVariance(taps=BLOCK_OUTPUTS)]


def all_analyses() -> list:
    """Every registered analysis with its default options (each class names its paper), plus
    attention distance in pixels next to the unit-square default, and the block-output variants of
    Fourier, variance and CKA that ResNets and pairs of models of different families can run."""
    extra = [AttentionDistance(units="pixels"), Fourier(taps=BLOCK_OUTPUTS), FeatureVariance(taps=BLOCK_OUTPUTS),
             CKA(taps=BLOCK_OUTPUTS), CKABetween(taps=BLOCK_OUTPUTS)]
    chosen = []
    for name, cls in ANALYSES.items():
        chosen.append(cls())
        chosen += [a for a in extra if a.name == name]
    return chosen


PRESETS = {"all": all_analyses, "teaching_matters": teaching_matters, "cl_vs_mim": cl_vs_mim,
           "registers": registers, "park_kim": park_kim}

def get(name: str) -> list:
    """The configured analyses of preset `name`; an unknown name lists the presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def describe(name: str) -> str:
    """The first line of a preset's docstring."""
    return PRESETS[name].__doc__.strip().splitlines()[0]
