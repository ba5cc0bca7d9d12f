"""CLIP image-tower parity: open_clip's CLIP (OpenAI's architecture and key names) with random
weights, saved as OpenAI ships it (TorchScript archive), as open_clip saves it (whole model, or the
image tower alone) and in timm's layout (made by timm's own converter), loaded with `vitjax.load`
and compared block by block with open_clip, and at another image size with open_clip and timm
loading the same file through their own position-embedding resampling.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

import vitjax
from parity import assert_close, compare_outputs, images, jax_param_count, randomize, timm_taps, to_torch, torch, torch_param_count

pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, resize_pos_embed  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from timm.models.vision_transformer import checkpoint_filter_fn  # noqa: E402

from vitjax.convert.layouts import sniff  # noqa: E402
from vitjax.convert.read import CheckpointError, read_state_dict  # noqa: E402
from vitjax.models.registry import lookup  # noqa: E402

SIZE, OTHER, PATCH, WIDTH, DEPTH, HEADS, EMBED = 32, 48, 8, 64, 2, 2, 24
# Twice parity.randomize's default spread: at 0.2 the tiny model's attention is nearly uniform, at
# 0.4 it is peaked, so a misplaced query, key or head would show.
TINY = dict(patch_size=PATCH, width=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_dim=4 * WIDTH, proj_dim=EMBED)
TEXT = CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1)  # ignored, but in the files
# vitjax name -> (open_clip's quick_gelu, the timm arch with the same activation)
VARIANTS = {
    "vit_base_patch16_clip_224.openai": (True, "vit_base_patch16_clip_quickgelu_224"),
    "vit_base_patch16_clip_224.laion2b": (False, "vit_base_patch16_clip_224"),
}


def tiny_clip(quick_gelu: bool, image_size: int = SIZE, layer_scale: float | None = None):
    vision = CLIPVisionCfg(layers=DEPTH, width=WIDTH, head_width=WIDTH // HEADS, image_size=image_size,
                           patch_size=PATCH, ls_init_value=layer_scale)
    model = CLIP(EMBED, vision, TEXT, quick_gelu=quick_gelu)
    randomize(model)
    return model


def tiny_timm(arch: str, state: dict, image_size: int):
    """timm's CLIP tower, loading `state` (either layout) through timm's own checkpoint filter."""
    model = timm.create_model(arch, pretrained=False, img_size=image_size, patch_size=PATCH, embed_dim=WIDTH,
                              depth=DEPTH, num_heads=HEADS, num_classes=EMBED)
    model.load_state_dict(checkpoint_filter_fn(state, model))
    return model.eval()


def resized_clip(quick_gelu: bool, state: dict, image_size: int):
    """open_clip's CLIP at another size, loading `state` after open_clip's own pos-embed resize."""
    model = tiny_clip(quick_gelu, image_size)
    state = dict(state)
    resize_pos_embed(state, model)
    model.load_state_dict(state)
    return model.eval()


def _returning_weights(mha, store: list):
    """The module's own forward with need_weights: torch's attention probabilities, per head."""
    forward = mha.forward

    def patched(*args, **kwargs):
        out, weights = forward(*args, **{**kwargs, "need_weights": True, "average_attn_weights": False})
        store.append(weights.detach().numpy())
        return out, weights

    return patched


def open_clip_taps(model, x: np.ndarray) -> dict:
    """Every block's tokens and attention, the final tokens, pooled feature and embedding."""
    visual = model.visual
    taps = {"tokens": [], "attn": []}

    def batch_major(t):  # open_clip can run its blocks sequence-major
        return (t if visual.transformer.batch_first else t.transpose(0, 1)).detach().numpy()

    hooks = [visual.ln_post.register_forward_hook(lambda m, i, o: taps.__setitem__("features", o))]
    for block in visual.transformer.resblocks:
        hooks.append(block.register_forward_hook(lambda m, i, o: taps["tokens"].append(batch_major(o))))
        block.attn.forward = _returning_weights(block.attn, taps["attn"])
    try:
        with torch.no_grad():
            taps["embedding"] = model.encode_image(to_torch(x)).numpy()
    finally:
        for hook in hooks:
            hook.remove()
        for block in visual.transformer.resblocks:
            del block.attn.forward
    taps["pooled"] = visual._global_pool(taps["features"])[0].numpy()
    taps["features"] = taps["features"].numpy()
    return taps


def timm_reference(model, x: np.ndarray) -> dict:
    taps = timm_taps(model, to_torch(x))
    return {**taps, "embedding": taps["logits"], "logits": None}  # timm's head is the projection


def check(model, params, ref: dict, x: np.ndarray) -> None:
    with jax.default_matmul_precision("highest"):
        out = model.apply({"params": params}, x, capture=("tokens", "attn"))
    compare_outputs(out, ref)


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tmp_path_factory):
    """One tiny random CLIP and its checkpoint in every layout it is published in."""
    name = request.param
    quick_gelu, arch = VARIANTS[name]
    model = tiny_clip(quick_gelu)
    state = model.state_dict()
    tmp = tmp_path_factory.mktemp(name)
    files = {"openai_clip": tmp / "open_clip.pt", "openai_jit": tmp / "ViT-tiny.pt",
             "openai_clip_visual": tmp / "visual.pt", "timm_clip": tmp / "model.safetensors"}
    # The sizes OpenAI's TorchScript archives record come along when their state_dict() is saved.
    sizes = {"input_resolution": SIZE, "context_length": TEXT.context_length, "vocab_size": TEXT.vocab_size}
    torch.save({**state, **{k: torch.tensor(v) for k, v in sizes.items()}}, files["openai_clip"])
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is what OpenAI's .pt files are
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), files["openai_jit"])
    torch.save(model.visual.state_dict(), files["openai_clip_visual"])
    timm_model = tiny_timm(arch, state, SIZE)  # timm's own conversion gives its layout
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, files["timm_clip"])
    return dict(name=name, quick_gelu=quick_gelu, arch=arch, model=model, state=state, files=files)


@pytest.mark.parametrize("layout", ["openai_clip", "openai_jit", "openai_clip_visual", "timm_clip"])
def test_native_size_matches_open_clip(variant, layout):
    path = variant["files"][layout]
    model, params = vitjax.load(variant["name"], checkpoint=path, image_size=SIZE, **TINY)
    x = images(2, SIZE)
    check(model, params, open_clip_taps(variant["model"], x), x)
    assert jax_param_count(params) == torch_param_count(variant["model"].visual)
    expected = "openai_clip" if layout == "openai_jit" else layout
    assert sniff(read_state_dict(path).tensors, lookup(variant["name"])) == expected


def test_other_size_matches_open_clip_and_timm(variant):
    """At 48 px open_clip and timm each resample the position embedding of the file they load."""
    x = images(2, OTHER, seed=1)
    model, params = vitjax.load(variant["name"], checkpoint=variant["files"]["openai_clip"], image_size=OTHER,
                                **TINY)
    check(model, params, open_clip_taps(resized_clip(variant["quick_gelu"], variant["state"], OTHER), x), x)
    check(model, params, timm_reference(tiny_timm(variant["arch"], variant["state"], OTHER), x), x)

    timm_file = variant["files"]["timm_clip"]
    model, params = vitjax.load(variant["name"], checkpoint=timm_file, image_size=OTHER, **TINY)
    reference = tiny_timm(variant["arch"], load_file(str(timm_file)), OTHER)
    check(model, params, timm_reference(reference, x), x)
    # timm's head keeps a (zero) bias that CLIP's projection does not have.
    assert jax_param_count(params) + EMBED == torch_param_count(reference)


def test_open_clip_layer_scale(tmp_path):
    original = tiny_clip(quick_gelu=False, layer_scale=0.1)
    path = tmp_path / "ls.pt"
    torch.save(original.state_dict(), path)
    model, params = vitjax.load("vit_base_patch16_clip_224.laion2b", checkpoint=path, image_size=SIZE,
                                layer_scale=True, **TINY)
    x = images(2, SIZE)
    check(model, params, open_clip_taps(original, x), x)
    assert jax_param_count(params) == torch_param_count(original.visual)


def test_timm_head_bias_must_be_zero(variant, tmp_path):
    state = load_file(str(variant["files"]["timm_clip"]))
    state["head.bias"] = state["head.bias"] + 0.5
    path = tmp_path / "classifier.safetensors"
    save_file(state, path)
    with pytest.raises(CheckpointError, match="head.bias is not zero"):
        vitjax.load(variant["name"], checkpoint=path, image_size=SIZE, **TINY)
