"""Parity with Hugging Face transformers' ViT, DeiT, DINO (hosted as ViTModel), DINOv2 and DINOv2 +
registers: tiny random models saved with `save_pretrained`, loaded by `vitjax.load` under the
families' timm names and official aliases, and compared block by block with transformers' forward.

At the stored size (32 px) every name must match. At another size (48 px) the oracle is
transformers' own position-embedding interpolation. Dinov2WithRegistersModel resamples like the
DINOv2 register names (size-based antialiased bicubic). ViTModel, DeiTModel and Dinov2Model use plain
size-based bicubic (`F.interpolate(size=..., mode='bicubic')`, no antialias, no +0.1 offset), which
no registry name of these families uses (timm antialiases; the official DINO/DINOv2 aliases use
the +0.1 scale factor): those are loaded with `posemb_resample=TORCH_BICUBIC` passed explicitly.
"""

from __future__ import annotations

import json

import jax
import pytest
from parity import assert_close, compare_outputs, images, jax_param_count, randomize, to_torch, torch, torch_param_count

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from vitjax.convert import hf_vit  # noqa: E402
from vitjax.convert.read import CheckpointError  # noqa: E402
from vitjax.convert.table import CheckpointMismatch  # noqa: E402
from vitjax.load import load  # noqa: E402
from vitjax.models.registry import TORCH_BICUBIC  # noqa: E402

SIZE, OTHER = 32, 48
HF_TINY = dict(image_size=SIZE, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
               layer_norm_eps=1e-6, attn_implementation="eager")
VITJAX_TINY = dict(patch_size=8, width=64, depth=2, num_heads=2, mlp_dim=256)
LABELS = 5


def vit_config(**kw):
    return transformers.ViTConfig(intermediate_size=256, **{**HF_TINY, **kw})


def deit_config(**kw):
    return transformers.DeiTConfig(intermediate_size=256, **{**HF_TINY, **kw})


# case -> (builds the HF model, vitjax name, vitjax overrides)
CASES = {
    "vit_classifier": (lambda: transformers.ViTForImageClassification(vit_config(num_labels=LABELS)),
                       "vit_small_patch16_224.augreg_in21k_ft_in1k", dict(num_classes=LABELS)),
    "vit_model_with_pooler": (lambda: transformers.ViTModel(vit_config()),
                              "vit_base_patch16_224.augreg_in21k_ft_in1k", dict(num_classes=0)),
    # DeiT without distillation is hosted as ViTForImageClassification (facebook/deit-*-patch16-224).
    "deit_as_vit": (lambda: transformers.ViTForImageClassification(vit_config(num_labels=LABELS)),
                    "deit_small_patch16_224.fb_in1k", dict(num_classes=LABELS)),
    "deit_distilled": (lambda: transformers.DeiTForImageClassificationWithTeacher(deit_config(num_labels=LABELS)),
                       "deit_tiny_distilled_patch16_224.fb_in1k", dict(num_classes=LABELS)),
    "deit_model_with_pooler": (lambda: transformers.DeiTModel(deit_config()),
                               "deit_small_distilled_patch16_224.fb_in1k", dict(num_classes=0)),
    # facebook/dino-* are ViTModel without a pooler.
    "dino": (lambda: transformers.ViTModel(vit_config(), add_pooling_layer=False), "dino_vits16", {}),
    "dino_timm_name": (lambda: transformers.ViTModel(vit_config(), add_pooling_layer=False),
                       "vit_small_patch16_224.dino", {}),
    "dinov2": (lambda: transformers.Dinov2Model(transformers.Dinov2Config(**HF_TINY)), "dinov2_vits14", {}),
    "dinov2_timm_name": (lambda: transformers.Dinov2Model(transformers.Dinov2Config(**HF_TINY)),
                         "vit_small_patch14_dinov2.lvd142m", {}),
    # SwiGLU (ViT-g): hidden = 2/3 * 4 * 64 rounded up to a multiple of 8 = 176 per branch.
    "dinov2_swiglu": (lambda: transformers.Dinov2Model(transformers.Dinov2Config(use_swiglu_ffn=True, **HF_TINY)),
                      "dinov2_vitg14", dict(mlp_dim=176)),
    "dinov2_registers": (lambda: transformers.Dinov2WithRegistersModel(
        transformers.Dinov2WithRegistersConfig(**HF_TINY)), "dinov2_vits14_reg", {}),
    "dinov2_registers_timm_name": (lambda: transformers.Dinov2WithRegistersModel(
        transformers.Dinov2WithRegistersConfig(**HF_TINY)), "vit_small_patch14_reg4_dinov2.lvd142m", {}),
}


def build(case: str, seed: int = 0):
    make, name, overrides = CASES[case]
    model = make()
    randomize(model, seed)
    return model, name, {**VITJAX_TINY, **overrides}


def hf_resample_override(model) -> dict:
    """What vitjax must be told to resample like transformers (empty: the names already do)."""
    return {} if isinstance(model, transformers.Dinov2WithRegistersModel) else {"posemb_resample": TORCH_BICUBIC}


def hf_reference(model, size: int) -> dict:
    """Block outputs, attention, final tokens, the class feature the heads read, and logits."""
    x = to_torch(images(2, size))
    interpolate = {} if "Dinov2" in type(model).__name__ else {"interpolate_pos_encoding": True}
    backbone = model.base_model
    with torch.no_grad():
        out = backbone(x, output_hidden_states=True, output_attentions=True, **interpolate)
        logits = model(x, **interpolate).logits.numpy() if backbone is not model else None
    tokens = out.last_hidden_state.numpy()
    # The class feature: timm averages the class and distillation tokens of distilled DeiT (vitjax's
    # `pooled`); everyone else reads the class token (Dinov2Model's pooler_output is exactly that).
    distilled = isinstance(backbone, transformers.DeiTModel)
    pooled = (tokens[:, 0] + tokens[:, 1]) / 2 if distilled else tokens[:, 0]
    if isinstance(backbone, transformers.Dinov2Model | transformers.Dinov2WithRegistersModel):
        assert_close(pooled, out.pooler_output.numpy(), "Dinov2's pooler_output is its class token")
    return dict(tokens=[h.numpy() for h in out.hidden_states[1:]], attn=[a.numpy() for a in out.attentions],
                features=tokens, pooled=pooled, logits=logits)


def run(name: str, path, size: int, **overrides):
    vit, params = load(name, checkpoint=path, image_size=size, **overrides)
    with jax.default_matmul_precision("highest"):
        out = vit.apply({"params": params}, images(2, size), capture=("tokens", "attn"))
    return vit, params, out


def kept_param_count(model, config) -> int:
    """transformers' count less what vitjax drops on purpose: ViTModel/DeiTModel's tanh pooler and the
    masked-image-modelling token; and timm's register names fold the class position entry into
    cls_token (no_embed_class), so their pos_embed is one row shorter."""
    dropped = sum(p.numel() for n, p in model.named_parameters() if ".pooler." in f".{n}" or n.endswith("mask_token"))
    folded = 0 if config.pos_embed_prefix else config.width * (int(config.class_token) + int(config.dist_token))
    return torch_param_count(model) - dropped - folded


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each case's HF model and its save_pretrained directory, built once."""
    cache = {}

    def get(case: str):
        if case not in cache:
            model, name, overrides = build(case, seed=len(cache))
            directory = tmp_path_factory.mktemp(case)
            model.save_pretrained(directory)
            assert (directory / "model.safetensors").exists()
            cache[case] = model, name, overrides, directory
        return cache[case]

    return get


@pytest.mark.parametrize("size", [SIZE, OTHER])
@pytest.mark.parametrize("case", list(CASES))
def test_save_pretrained_parity(saved, case, size):
    model, name, overrides, directory = saved(case)
    if size != SIZE:
        overrides = {**overrides, **hf_resample_override(model)}
    vit, params, out = run(name, directory, size, **overrides)
    compare_outputs(out, hf_reference(model, size), f"{case} as {name} at {size} px")
    hf_vit.check_config(json.loads((directory / "config.json").read_text()), vit.config)
    if size == SIZE:  # elsewhere vitjax stores the resampled grid, transformers the saved one
        assert jax_param_count(params) == kept_param_count(model, vit.config)


def test_pytorch_model_bin(saved, tmp_path):
    """The pickled pytorch_model.bin that older transformers wrote (e.g. google/vit-base-patch16-224)."""
    model, name, overrides, directory = saved("deit_distilled")
    state = safetensors_torch.load_file(str(directory / "model.safetensors"))
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    _, _, out = run(name, tmp_path, SIZE, **overrides)
    compare_outputs(out, hf_reference(model, SIZE), "deit_distilled from pytorch_model.bin")


@pytest.mark.parametrize("case", ["vit_classifier", "dinov2_swiglu"])
def test_in_memory_names(saved, case, tmp_path):
    """transformers 5's module names (`layers.{i}.attention.q_proj`, DINOv2's gate_proj/up_proj), as a
    torch.save of a live model's state_dict() has them."""
    model, name, overrides, _ = saved(case)
    torch.save(model.state_dict(), tmp_path / "live.pth")
    assert any("q_proj" in k for k in model.state_dict())
    _, _, out = run(name, tmp_path / "live.pth", SIZE, **overrides)
    compare_outputs(out, hf_reference(model, SIZE), f"{case} from in-memory names")


def test_transformers_default_eps_is_within_tolerance(tmp_path):
    """The HF ports of ViT/DeiT/DINO store ViTConfig's layer_norm_eps=1e-12 while the names use the
    sources' 1e-6; vitjax keeps the name's numerics, and the difference stays far inside tolerance."""
    model = transformers.ViTForImageClassification(vit_config(num_labels=LABELS, layer_norm_eps=1e-12))
    randomize(model, seed=11)
    model.save_pretrained(tmp_path)
    _, _, out = run("vit_small_patch16_224.augreg_in21k_ft_in1k", tmp_path, SIZE, **VITJAX_TINY, num_classes=LABELS)
    compare_outputs(out, hf_reference(model, SIZE), "layer_norm_eps 1e-12 read with 1e-6")


def test_check_config_refuses_what_the_weights_cannot_show(saved):
    _, name, overrides, directory = saved("dinov2")
    vit, _ = load(name, checkpoint=directory, image_size=SIZE, **overrides)
    config = json.loads((directory / "config.json").read_text())
    with pytest.raises(CheckpointError, match="num_heads=4"):
        hf_vit.check_config({**config, "num_attention_heads": 4}, vit.config)
    with pytest.raises(CheckpointError, match="mlp='gelu_tanh'"):
        hf_vit.check_config({**config, "hidden_act": "gelu_pytorch_tanh"}, vit.config)
    with pytest.raises(CheckpointError, match="mlp='swiglu'"):
        hf_vit.check_config({**config, "use_swiglu_ffn": True}, vit.config)
    with pytest.raises(CheckpointError, match="does not implement"):
        hf_vit.check_config({**config, "hidden_act": "relu"}, vit.config)


def test_wrong_family_and_unsupported_heads(saved, tmp_path):
    _, _, overrides, vit_dir = saved("dino")
    with pytest.raises(CheckpointError, match="hf_vit"):
        load("dinov2_vits14", checkpoint=vit_dir, image_size=SIZE, **overrides)
    # Dinov2ForImageClassification's head reads [class token, mean patch token]: no vitjax head does.
    model = transformers.Dinov2ForImageClassification(transformers.Dinov2Config(num_labels=LABELS, **HF_TINY))
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatch, match="classifier.weight"):
        load("dinov2_vits14", checkpoint=tmp_path, image_size=SIZE, **VITJAX_TINY)
