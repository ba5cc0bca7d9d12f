"""Shared tools of the parity tests: random PyTorch originals, their taps, and the comparison.

The PyTorch models are the oracles: they are built by timm / transformers / open_clip with random
weights, saved in a published layout, loaded through `vitjax.load`, and compared layer by layer.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

TOL = 1e-4  # max abs error relative to the output's scale (max |reference|), float32


def randomize(module, seed: int = 0, std: float = 0.4) -> None:
    """Overwrites every float parameter and buffer with N(0, std) (BatchNorm variances with U(0.5, 1.5)),
    so that zero-initialised biases, layer scales and position tables are all exercised. At std 0.4
    a tiny ViT's attention is peaked (at 0.2 it is nearly uniform, and comparing it proves little)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * std)
    module.eval()


def images(n: int, size: int | tuple[int, int], seed: int = 0, channels: int = 3) -> np.ndarray:
    """Random NHWC float32 images, roughly normalised."""
    height, width = (size, size) if isinstance(size, int) else size
    return np.random.RandomState(seed).randn(n, height, width, channels).astype(np.float32)


def to_torch(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def assert_close(actual, expected, what: str, tol: float = TOL) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != reference {expected.shape}"
    scale = max(np.abs(expected).max(), 1e-6)
    error = np.abs(actual - expected).max() / scale
    assert error <= tol, f"{what}: max abs error {error:.2e} of the output scale {scale:.3g} (tolerance {tol:g})"


def assert_peaked(attn, what: str) -> None:
    """Guards the comparisons themselves: near-uniform attention would match almost any model."""
    attn = np.asarray(attn)
    mean_max = attn.max(-1).mean()
    assert mean_max >= 3 / attn.shape[-1], f"{what}: attention is nearly uniform (mean row max {mean_max:.3f})"


def compare_outputs(out, ref: dict, what: str = "") -> None:
    """vitjax's Output (captured with 'tokens' and 'attn') against a reference's taps: per-block
    'tokens' and 'attn' lists, final tokens 'features', 'pooled', and 'logits'/'embedding' (None or
    absent where the model has none)."""
    where = f"{what}: " if what else ""
    assert len(out.layers) == len(ref["tokens"]) == len(ref["attn"]), f"{where}block count differs"
    for i, layer in enumerate(out.layers):
        assert_close(layer["tokens"], ref["tokens"][i], f"{where}block {i} tokens")
        assert_close(layer["attn"], ref["attn"][i], f"{where}block {i} attention")
    assert_peaked(max(ref["attn"], key=lambda a: np.asarray(a).max(-1).mean()), f"{where}every block")
    assert_close(out.tokens, ref["features"], f"{where}final tokens")
    assert_close(out.pooled, ref["pooled"], f"{where}pooled feature")
    for name in ("logits", "embedding"):
        actual, expected = getattr(out, name), ref.get(name)
        assert (actual is None) == (expected is None), f"{where}{name} present in only one of the models"
        if expected is not None:
            assert_close(actual, expected, f"{where}{name}")


def torch_param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def jax_param_count(params) -> int:
    import jax

    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


def timm_taps(model, x) -> dict:
    """Block outputs and post-softmax attention of a timm ViT/BEiT, through forward hooks.

    timm's fused attention returns no probabilities, so the explicit path is forced for the call.
    """
    taps = {"tokens": [], "attn": []}
    hooks = []
    for block in model.blocks:
        hooks.append(block.register_forward_hook(lambda m, i, o: taps["tokens"].append(o.detach().numpy())))
        hooks.append(block.attn.attn_drop.register_forward_hook(lambda m, i, o: taps["attn"].append(o.detach().numpy())))
        block.attn.fused_attn = False
    try:
        with torch.no_grad():
            features = model.forward_features(x)
            taps["features"] = features.numpy()
            taps["pooled"] = model.forward_head(features, pre_logits=True).numpy()
            taps["logits"] = model.forward_head(features).numpy() if model.num_classes else None
    finally:
        for hook in hooks:
            hook.remove()
    return taps
