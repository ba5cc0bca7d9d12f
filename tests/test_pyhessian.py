"""The top Hessian eigenvalue of a tiny timm ViT against PyHessian 0.1 (`pip install --no-deps
pyhessian==0.1`), the tool Park & Kim used: same weights (loaded into vitjax from the timm state
dict), same batch, same loss (mean cross-entropy, model in eval mode)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import vitjax
from parity import images, randomize, to_torch, torch
from vitjax.curvature.eigen import lanczos, power_iteration
from vitjax.curvature.losses import ClassificationLoss
from vitjax.curvature.operator import hessian_operator

timm = pytest.importorskip("timm")
pyhessian = pytest.importorskip("pyhessian")

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)
TINY_VITJAX = dict(image_size=32, patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=128, num_classes=5)


def test_top_eigenvalue_agrees_with_pyhessian(tmp_path):
    reference = timm.create_model("vit_small_patch16_224", pretrained=False, **TINY)
    randomize(reference, seed=0, std=0.2)
    for block in reference.blocks:
        block.attn.fused_attn = False  # PyTorch's fused CPU attention has no second derivative
    path = str(tmp_path / "tiny.pth")
    torch.save(reference.state_dict(), path)
    model, params = vitjax.load("vit_small_patch16_224.augreg_in21k_ft_in1k", checkpoint=path, **TINY_VITJAX)

    x = images(8, 32)
    labels = np.random.RandomState(1).randint(0, 5, 8)
    torch.manual_seed(0)
    data = (to_torch(x), torch.from_numpy(labels))
    expected, _ = pyhessian.hessian(reference, torch.nn.CrossEntropyLoss(), data=data, cuda=False).eigenvalues(
        maxIter=300, tol=1e-4)

    batch = {"image": x, "label": labels.astype(np.int32)}
    with jax.default_matmul_precision("highest"):
        op = hessian_operator(ClassificationLoss(model), params, [batch])
        power = power_iteration(op.matvec, op.params, jax.random.PRNGKey(0), max_iter=300, tol=1e-4)
        exact = lanczos(op.matvec, op.params, jax.random.PRNGKey(1), num_steps=20, k=1, which="LM")
    assert power.converged[0] and exact.converged[0]
    np.testing.assert_allclose(power.values[0], expected[0], rtol=0.01)
    np.testing.assert_allclose(exact.values[0], expected[0], rtol=0.01)
