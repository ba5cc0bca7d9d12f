"""Layer-by-layer parity with timm for the families published in timm's key layout, and in the
official repositories' layouts that share it (DINO, MoCo v3, MAE, DINOv2, SelfPatch).

Each test builds the PyTorch original with random weights at a tiny size, saves it as the source
publishes it, loads it with `vitjax.load`, and compares every block's tokens and attention and the
final outputs, at the native image size and at another one.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import pytest

import vitjax
from parity import (assert_close, compare_outputs, images, jax_param_count, randomize, timm_taps, to_torch, torch,
                    torch_param_count)

timm = pytest.importorskip("timm")
F = torch.nn.functional

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
TINY_VITJAX = dict(patch_size=8, width=64, depth=2, num_heads=2, mlp_dim=256)


def tiny_timm(arch: str, seed: int = 0, **kw):
    model = timm.create_model(arch, pretrained=False, **{**TINY, **kw})
    randomize(model, seed)
    return model


def save(tmp_path, state: dict, name: str = "ckpt.pth") -> str:
    path = str(tmp_path / name)
    torch.save(state, path)
    return path


def check(model, params, reference, x: np.ndarray) -> None:
    """Compares vitjax's captured forward with the timm model's hooked forward on the same images."""
    with jax.default_matmul_precision("highest"):
        out = model.apply({"params": params}, x, capture=("tokens", "attn"))
    compare_outputs(out, timm_taps(reference, to_torch(x)))


def reload_at(arch: str, state: dict, size: int, **kw):
    """The timm model at another image size, loading `state` through timm's own checkpoint filter
    (which resamples the position embedding the timm way)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = timm.create_model(arch, pretrained=False, **{**TINY, **kw, "img_size": size})
    model.load_state_dict(checkpoint_filter_fn(state, model))
    return model.eval()


def official_interpolate(posemb: torch.Tensor, num_prefix: int, new: int, offset: float, antialias: bool):
    """The position-embedding interpolation of the DINO / DINOv2 / MAE repositories, in torch:
    bicubic, align_corners=False; with offset, `scale_factor=(new + offset) / old` (dino#8)."""
    prefix, patches = posemb[:, :num_prefix], posemb[:, num_prefix:]
    old = int(patches.shape[1] ** 0.5)
    grid = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    if offset:
        grid = F.interpolate(grid, scale_factor=((new + offset) / old,) * 2, mode="bicubic", antialias=antialias,
                             align_corners=False)
    else:
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", antialias=antialias, align_corners=False)
    assert grid.shape[-1] == new
    return torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)], dim=1)


def reload_with_posemb(arch: str, state: dict, size: int, posemb: torch.Tensor, **kw):
    """The timm model at another size with its pos_embed replaced by the official repo's resampling."""
    model = timm.create_model(arch, pretrained=False, **{**TINY, **kw, "img_size": size})
    model.load_state_dict({**state, "pos_embed": posemb})
    return model.eval()


# --- supervised ViT, DeiT, DeiT-III -----------------------------------------------------------


@pytest.mark.parametrize(
    "name, arch, kw",
    [
        ("vit_small_patch16_224.augreg_in21k_ft_in1k", "vit_small_patch16_224", {}),
        ("deit_small_patch16_224.fb_in1k", "deit_small_patch16_224", {}),
        ("deit_small_distilled_patch16_224.fb_in1k", "deit_small_distilled_patch16_224", {}),
        ("deit3_small_patch16_224.fb_in1k", "deit3_small_patch16_224", {}),
    ],
)
def test_supervised_families(tmp_path, name, arch, kw):
    reference = tiny_timm(arch, num_classes=10, **kw)
    state = reference.state_dict()
    path = save(tmp_path, state)
    model, params = vitjax.load(name, checkpoint=path, image_size=32, num_classes=10, **TINY_VITJAX)
    assert jax_param_count(params) == torch_param_count(reference)
    check(model, params, reference, images(2, 32))

    model, params = vitjax.load(name, checkpoint=path, image_size=48, num_classes=10, **TINY_VITJAX)
    check(model, params, reload_at(arch, state, 48, num_classes=10), images(2, 48, seed=1))


def test_deit3_official_layout_uses_gamma_names(tmp_path):
    reference = tiny_timm("deit3_small_patch16_224", num_classes=10)
    state = {k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2"): v
             for k, v in reference.state_dict().items()}
    path = save(tmp_path, {"model": state})
    model, params = vitjax.load("deit3_small_patch16_224.fb_in1k", checkpoint=path, image_size=32, num_classes=10,
                                **TINY_VITJAX)
    check(model, params, reference, images(2, 32))


def test_gradient_wrt_image_matches_torch(tmp_path):
    reference = tiny_timm("vit_small_patch16_224", num_classes=10)
    model, params = vitjax.load("vit_small_patch16_224.augreg_in21k_ft_in1k", checkpoint=save(tmp_path, reference.state_dict()),
                                image_size=32, num_classes=10, **TINY_VITJAX)
    x = images(2, 32)
    weights = np.random.RandomState(3).randn(2, 10).astype(np.float32)

    def scalar(images):
        return (model.apply({"params": params}, images).logits * weights).sum()

    with jax.default_matmul_precision("highest"):
        grad = jax.grad(scalar)(x)
    x_torch = to_torch(x).requires_grad_(True)
    (reference(x_torch) * torch.from_numpy(weights)).sum().backward()
    assert_close(grad, x_torch.grad.numpy().transpose(0, 2, 3, 1), "d(logits)/d(image)")


def test_every_tap_matches_timm_internals(tmp_path):
    """norm1/norm2, q/k/v, logits and branch outputs against values hooked out of timm's forward."""
    reference = tiny_timm("deit3_small_patch16_224", num_classes=0)
    model, params = vitjax.load("deit3_small_patch16_224.fb_in1k", checkpoint=save(tmp_path, reference.state_dict()),
                                image_size=32, num_classes=0, **TINY_VITJAX)
    x = images(2, 32)
    with jax.default_matmul_precision("highest"):
        out = model.apply({"params": params}, x, capture=vitjax.Capture(frozenset(vitjax.TAPS), blocks=(-1,)))
    assert out.layers[0] == {} and set(out.layers[1]) == set(vitjax.TAPS)
    block = reference.blocks[1]
    seen = {}
    hooks = [
        block.norm1.register_forward_hook(lambda m, i, o: seen.setdefault("norm1", o)),
        block.norm2.register_forward_hook(lambda m, i, o: seen.setdefault("norm2", o)),
        block.attn.qkv.register_forward_hook(lambda m, i, o: seen.setdefault("qkv", o)),
        block.ls1.register_forward_hook(lambda m, i, o: seen.setdefault("attn_branch", o)),
        block.ls2.register_forward_hook(lambda m, i, o: seen.setdefault("mlp_branch", o)),
    ]
    with torch.no_grad():
        reference(to_torch(x))
    for hook in hooks:
        hook.remove()
    batch, tokens, _ = seen["qkv"].shape
    q, k, v = seen["qkv"].reshape(batch, tokens, 3, 2, 32).permute(2, 0, 3, 1, 4)
    logits = (q * 32**-0.5) @ k.transpose(-2, -1)
    layer = out.layers[1]
    for name, expected in [("norm1", seen["norm1"]), ("norm2", seen["norm2"]), ("q", q), ("k", k), ("v", v),
                           ("attn_logits", logits), ("attn", logits.softmax(-1)),
                           ("attn_branch", seen["attn_branch"]), ("mlp_branch", seen["mlp_branch"])]:
        assert_close(layer[name], expected.detach().numpy(), name)


# --- DINO ----------------------------------------------------------------------------------------


def test_dino_official_training_checkpoint(tmp_path):
    """DINO's own checkpoints hold teacher and student, 'backbone.' prefixes and the DINO head."""
    reference = tiny_timm("vit_small_patch16_224", num_classes=0)
    backbone = {f"backbone.{k}": v for k, v in reference.state_dict().items()}
    dino_head = {"head.mlp.0.weight": torch.zeros(8, 64), "head.last_layer.weight_g": torch.ones(16, 1)}
    student = {k: v + 1 for k, v in backbone.items()}  # must not be the one that gets loaded
    path = save(tmp_path, {"teacher": {**backbone, **dino_head}, "student": {**student, **dino_head}, "epoch": 3,
                           "args": argparse.Namespace(arch="vit_small")})
    for name in ("vit_small_patch16_224.dino", "dino_vits16"):
        model, params = vitjax.load(name, checkpoint=path, image_size=32, **TINY_VITJAX)
        check(model, params, reference, images(2, 32))


def test_dino_alias_resamples_like_the_dino_repo(tmp_path):
    reference = tiny_timm("vit_small_patch16_224", num_classes=0)
    state = reference.state_dict()
    path = save(tmp_path, state)
    posemb = official_interpolate(state["pos_embed"], 1, 6, offset=0.1, antialias=False)
    model, params = vitjax.load("dino_vits16", checkpoint=path, image_size=48, **TINY_VITJAX)
    oracle = reload_with_posemb("vit_small_patch16_224", state, 48, posemb, num_classes=0)
    check(model, params, oracle, images(2, 48))
    # The timm name of the same checkpoint resamples the timm way, which is measurably different.
    model_timm, params_timm = vitjax.load("vit_small_patch16_224.dino", checkpoint=path, image_size=48, **TINY_VITJAX)
    assert np.abs(np.asarray(params_timm["pos_embed"]) - posemb.numpy()).max() > 1e-4


# --- MoCo v3 ----------------------------------------------------------------------------------------


def test_mocov3_official_checkpoint(tmp_path):
    reference = tiny_timm("vit_small_patch16_224", num_classes=0, num_heads=4)
    encoder = reference.state_dict()
    projector = {"head.0.weight": torch.zeros(32, 64), "head.1.running_mean": torch.zeros(32)}
    state = {f"module.base_encoder.{k}": v for k, v in {**encoder, **projector}.items()}
    state.update({f"module.momentum_encoder.{k}": v + 1 for k, v in encoder.items()})
    state["module.predictor.0.weight"] = torch.zeros(4, 4)
    path = save(tmp_path, {"epoch": 300, "arch": "vit_small", "state_dict": state}, "vit-s-300ep.pth.tar")
    model, params = vitjax.load("mocov3_vit_small", checkpoint=path, image_size=32, **{**TINY_VITJAX, "num_heads": 4})
    assert jax_param_count(params) == torch_param_count(reference)
    check(model, params, reference, images(2, 32))
    # MoCo v3's fixed sin-cos table is read from the file and resampled like any timm checkpoint.
    model, params = vitjax.load("mocov3_vit_small", checkpoint=path, image_size=48, **{**TINY_VITJAX, "num_heads": 4})
    check(model, params, reload_at("vit_small_patch16_224", encoder, 48, num_classes=0, num_heads=4), images(2, 48))


# --- MAE -----------------------------------------------------------------------------------------


def test_mae_pretrained_checkpoint_ignores_the_decoder(tmp_path):
    reference = tiny_timm("vit_base_patch16_224", num_classes=0)
    extras = {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, 64),
              "decoder_blocks.0.norm1.weight": torch.zeros(32), "decoder_pred.bias": torch.zeros(192)}
    path = save(tmp_path, {"model": {**reference.state_dict(), **extras}})
    for name in ("vit_base_patch16_224.mae", "mae_vit_base_patch16"):
        model, params = vitjax.load(name, checkpoint=path, image_size=32, **TINY_VITJAX)
        check(model, params, reference, images(2, 32))


def test_mae_finetuned_global_pool(tmp_path):
    """Fine-tuned MAE: mean of patch tokens -> fc_norm -> head, no final norm; MAE resamples with
    plain bicubic (no antialias)."""
    kw = dict(num_classes=10, global_pool="avg", fc_norm=True)
    reference = tiny_timm("vit_base_patch16_224", **kw)
    state = reference.state_dict()
    assert "fc_norm.weight" in state and "norm.weight" not in state
    path = save(tmp_path, {"model": state})
    model, params = vitjax.load("mae_vit_base_patch16_finetuned", checkpoint=path, image_size=32, num_classes=10,
                                **TINY_VITJAX)
    check(model, params, reference, images(2, 32))

    posemb = official_interpolate(state["pos_embed"], 1, 6, offset=0.0, antialias=False)
    model, params = vitjax.load("mae_vit_base_patch16_finetuned", checkpoint=path, image_size=48, num_classes=10,
                                **TINY_VITJAX)
    check(model, params, reload_with_posemb("vit_base_patch16_224", state, 48, posemb, **kw), images(2, 48))


# --- DINOv2 --------------------------------------------------------------------------------------

DINOV2 = dict(img_size=28, patch_size=7)
DINOV2_VITJAX = dict(TINY_VITJAX, patch_size=7)


def test_dinov2_timm_and_official(tmp_path):
    reference = tiny_timm("vit_small_patch14_dinov2", num_classes=0, **DINOV2)
    state = reference.state_dict()
    official = {**{k: v for k, v in state.items()}, "mask_token": torch.zeros(1, 64)}
    path = save(tmp_path, official, "dinov2_vits14_pretrain.pth")
    for name in ("vit_small_patch14_dinov2.lvd142m", "dinov2_vits14"):
        model, params = vitjax.load(name, checkpoint=path, image_size=28, **DINOV2_VITJAX)
        assert jax_param_count(params) == torch_param_count(reference)
        check(model, params, reference, images(2, 28))

    model, params = vitjax.load("vit_small_patch14_dinov2.lvd142m", checkpoint=path, image_size=42, **DINOV2_VITJAX)
    check(model, params, reload_at("vit_small_patch14_dinov2", state, 42, num_classes=0, patch_size=7),
          images(2, 42, seed=2))
    posemb = official_interpolate(state["pos_embed"], 1, 6, offset=0.1, antialias=False)
    model, params = vitjax.load("dinov2_vits14", checkpoint=path, image_size=42, **DINOV2_VITJAX)
    oracle = reload_with_posemb("vit_small_patch14_dinov2", state, 42, posemb, num_classes=0, patch_size=7)
    check(model, params, oracle, images(2, 42, seed=2))


def test_dinov2_registers_timm_and_official_layouts(tmp_path):
    """timm folds pos_embed[:, 0] into cls_token for register models; the official file does not.
    Both layouts load into both names (timm's and the official alias) with identical outputs."""
    reference = tiny_timm("vit_small_patch14_reg4_dinov2", num_classes=0, **DINOV2)
    timm_state = reference.state_dict()
    assert timm_state["pos_embed"].shape[1] == 16  # patches only
    class_pos = torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(5)) * 0.2
    official = {k: v for k, v in timm_state.items() if k not in ("reg_token", "pos_embed", "cls_token")}
    official.update(register_tokens=timm_state["reg_token"], cls_token=timm_state["cls_token"] - class_pos,
                    pos_embed=torch.cat([class_pos, timm_state["pos_embed"]], 1), mask_token=torch.zeros(1, 64))
    for state in (timm_state, official):
        path = save(tmp_path, state)
        for name in ("vit_small_patch14_reg4_dinov2.lvd142m", "dinov2_vits14_reg"):
            model, params = vitjax.load(name, checkpoint=path, image_size=28, **DINOV2_VITJAX)
            assert model.config.num_registers == 4
            check(model, params, reference, images(2, 28))
    model, params = vitjax.load("vit_small_patch14_reg4_dinov2.lvd142m", checkpoint=save(tmp_path, timm_state),
                                image_size=42, **DINOV2_VITJAX)
    oracle = reload_at("vit_small_patch14_reg4_dinov2", timm_state, 42, num_classes=0, patch_size=7)
    check(model, params, oracle, images(2, 42))


def test_dinov2_giant_swiglu(tmp_path):
    """ViT-g's fused SwiGLU (timm's SwiGLUPacked / the official w12, w3)."""
    reference = tiny_timm("vit_giant_patch14_dinov2", num_classes=0, embed_dim=48, num_heads=2, **DINOV2)
    state = reference.state_dict()
    official = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): v for k, v in state.items()}
    path = save(tmp_path, official)
    model, params = vitjax.load("dinov2_vitg14", checkpoint=path, image_size=28,
                                **dict(DINOV2_VITJAX, width=48, mlp_dim=128))
    assert jax_param_count(params) == torch_param_count(reference)
    check(model, params, reference, images(2, 28))


# --- SelfPatch -----------------------------------------------------------------------------------


def test_selfpatch_backbone_without_class_token(tmp_path):
    reference = tiny_timm("vit_small_patch16_224", num_classes=0, class_token=False, global_pool="avg",
                          fc_norm=False, final_norm=False)
    state = reference.state_dict()
    assert "cls_token" not in state and state["pos_embed"].shape[1] == 16
    teacher = {f"backbone.{k}": v for k, v in state.items()}
    path = save(tmp_path, {"teacher": teacher, "student": teacher})
    model, params = vitjax.load("selfpatch_vits16", checkpoint=path, image_size=32, **TINY_VITJAX)
    assert model.config.layout().num_prefix == 0
    assert jax_param_count(params) == torch_param_count(reference)
    check(model, params, reference, images(2, 32))
    # SelfPatch builds on DINO's code, so it resamples with DINO's +0.1 offset (no prefix entries).
    kw = dict(num_classes=0, class_token=False, global_pool="avg", fc_norm=False, final_norm=False)
    posemb = official_interpolate(state["pos_embed"], 0, 6, offset=0.1, antialias=False)
    model, params = vitjax.load("selfpatch_vits16", checkpoint=path, image_size=48, **TINY_VITJAX)
    check(model, params, reload_with_posemb("vit_small_patch16_224", state, 48, posemb, **kw), images(2, 48))
