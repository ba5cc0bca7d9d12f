"""The MLP activations, by the names that model configs use.

GELU is torch.nn.GELU's exact (erf) form, written as torch computes it (jax.nn.gelu's exact form
goes through erfc and costs about 5% of a ViT-S forward on CPU). Its first and second derivatives
are given as custom JVP rules, so that each derivative is one array. What differentiating the
formula would keep instead (erf, the Gaussian density and their products, each as wide as the MLP)
is what fills a Hessian-vector product's memory: `jax.linearize` of a ViT-S gradient kept nine
MLP-wide arrays per block with the formula, six with these rules (see vitjax/curvature/operator.py).
"""

from __future__ import annotations

import jax
import numpy as np


def _constant(value: float, x: jax.Array) -> np.ndarray:
    return np.asarray(value, x.dtype)


def _normal_cdf(x: jax.Array) -> jax.Array:
    return 0.5 * (1.0 + jax.lax.erf(x * _constant(2**-0.5, x)))


def _normal_pdf(x: jax.Array) -> jax.Array:
    return _constant((2 * np.pi) ** -0.5, x) * jax.numpy.exp(-0.5 * x * x)


@jax.custom_jvp
def gelu(x: jax.Array) -> jax.Array:
    """x Phi(x), Phi the standard normal CDF (torch.nn.GELU's default; bit for bit, as halving is exact)."""
    return x * _normal_cdf(x)


@jax.custom_jvp
def _gelu_slope(x: jax.Array) -> jax.Array:
    """GELU'(x) = Phi(x) + x phi(x)."""
    return _normal_cdf(x) + x * _normal_pdf(x)


def _gelu_curvature(x: jax.Array) -> jax.Array:
    """GELU''(x) = phi(x) (2 - x^2)."""
    return _normal_pdf(x) * (2.0 - x * x)


gelu.defjvp(lambda primals, tangents: (gelu(primals[0]), _gelu_slope(primals[0]) * tangents[0]))
_gelu_slope.defjvp(lambda primals, tangents: (_gelu_slope(primals[0]), _gelu_curvature(primals[0]) * tangents[0]))


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": gelu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": quick_gelu,
}
