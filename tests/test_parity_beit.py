"""BEiT parity: timm's Beit, the official (unilm) checkpoints and transformers' Beit models, loaded by
`vitjax.load` and compared block by block with the PyTorch originals, at the stored image size and at
another one, where the oracle is timm resizing the relative position tables itself while loading.

Every model is tiny (32 px, 8-px patches, width 64, 2 blocks, 2 heads) with random weights, including
the tables and layer scales that BEiT initialises to zero or constants.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity import assert_close, compare_outputs, images, jax_param_count, randomize, timm_taps, to_torch, torch, torch_param_count

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from timm.models.beit import checkpoint_filter_fn, gen_relative_position_index  # noqa: E402

from vitjax.load import load  # noqa: E402
from vitjax.models.layers import relative_position_index  # noqa: E402

NAME = "beit_base_patch16_224.in22k_ft_in22k_in1k"
SIZE, OTHER = 32, 48
TINY = dict(patch_size=8, width=64, depth=2, num_heads=2, mlp_dim=256)
# A BEiT pre-training checkpoint: final norm, class-token pooling, no classifier.
PRETRAINED = dict(final_norm=True, fc_norm=False, pool="token", num_classes=0)


def timm_beit(img_size: int = SIZE, **kw):
    kw = {"num_classes": 10, **kw}
    return timm.create_model("beit_base_patch16_224", img_size=img_size, patch_size=8, embed_dim=64, depth=2,
                             num_heads=2, **kw).eval()


def timm_reloaded(state: dict, img_size: int, **kw):
    """timm's own path to another size: a model built for it, loading through checkpoint_filter_fn."""
    model = timm_beit(img_size, **kw)
    model.load_state_dict(checkpoint_filter_fn(state, model))
    return model


def load_tiny(path, size: int, **overrides):
    return load(NAME, checkpoint=path, image_size=size, **{**TINY, "num_classes": 10, **overrides})


@functools.partial(jax.jit, static_argnums=0)
def forward(model, params, x):
    return model.apply({"params": params}, x, capture=("tokens", "attn"))


def run(path, size: int, **overrides):
    """vitjax's output for the test images, with every block's tokens and attention."""
    model, params = load_tiny(path, size, **overrides)
    with jax.default_matmul_precision("highest"):
        return params, forward(model, params, images(2, size))


def state_of(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --- timm, and the official fine-tuned checkpoints (timm's names, index buffers, a 'model' wrapper) ---


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory):
    model = timm_beit()
    randomize(model, seed=1)
    state = state_of(model)
    root = tmp_path_factory.mktemp("beit_timm")
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(root / "model.safetensors"))
    # unilm keeps relative_position_index as a persistent buffer and saves {'model': state_dict, ...}.
    index = gen_relative_position_index((SIZE // 8, SIZE // 8))
    official = {**state, **{f"blocks.{i}.attn.relative_position_index": index for i in range(2)}}
    torch.save({"model": official, "epoch": 3}, root / "checkpoint-best.pth")
    return model, state, {"timm": root / "model.safetensors", "unilm": root / "checkpoint-best.pth"}


@pytest.mark.parametrize("size", [SIZE, OTHER])
@pytest.mark.parametrize("layout", ["timm", "unilm"])
def test_timm_and_official_layouts(timm_files, layout, size):
    model, state, files = timm_files
    oracle = model if size == SIZE else timm_reloaded(state, size)
    params, out = run(files[layout], size)
    compare_outputs(out, timm_taps(oracle, to_torch(images(2, size))), f"{layout} at {size} px")
    assert jax_param_count(params) == torch_param_count(oracle)


@pytest.mark.parametrize("size", [SIZE, OTHER])
def test_input_gradient_matches_autograd(timm_files, size):
    model, state, files = timm_files
    oracle = model if size == SIZE else timm_reloaded(state, size)
    vit, params = load_tiny(files["timm"], size)
    x = images(2, size)
    weights = np.random.RandomState(7).randn(2, 10).astype(np.float32)

    def score(images_nhwc):
        return jnp.sum(vit.apply({"params": params}, images_nhwc).logits * weights)

    with jax.default_matmul_precision("highest"):
        grad = jax.jit(jax.grad(score))(jnp.asarray(x))
    x_torch = to_torch(x).requires_grad_(True)
    (oracle(x_torch) * torch.from_numpy(weights)).sum().backward()
    assert_close(grad, x_torch.grad.numpy().transpose(0, 2, 3, 1), f"d score / d image at {size} px")


# --- BEiT pre-training checkpoints: one relative position table shared by all blocks ---


@pytest.fixture(scope="module")
def shared_files(tmp_path_factory):
    shared = dict(use_rel_pos_bias=False, use_shared_rel_pos_bias=True, global_pool="token", num_classes=0)
    model = timm_beit(**shared)
    randomize(model, seed=2)
    state = state_of(model)
    gen = torch.Generator().manual_seed(3)
    extras = {  # what the official pre-training checkpoint holds besides the backbone
        "rel_pos_bias.relative_position_index": gen_relative_position_index((SIZE // 8, SIZE // 8)),
        "mask_token": torch.randn(1, 1, 64, generator=gen),
        "lm_head.weight": torch.randn(8192, 64, generator=gen),
        "lm_head.bias": torch.randn(8192, generator=gen),
    }
    path = tmp_path_factory.mktemp("beit_pt") / "beit_base_patch16_224_pt22k.pth"
    torch.save({"model": {**state, **extras}}, path)
    return model, state, shared, path


@pytest.mark.parametrize("size", [SIZE, OTHER])
def test_official_shared_table_checkpoint(shared_files, size):
    model, state, shared, path = shared_files
    oracle = model if size == SIZE else timm_reloaded(state, size, **shared)
    params, out = run(path, size, **PRETRAINED)
    compare_outputs(out, timm_taps(oracle, to_torch(images(2, size))), f"shared table at {size} px")
    # vitjax keeps a table per block; timm's shared-table model holds one.
    table = oracle.rel_pos_bias.relative_position_bias_table.numel()
    assert jax_param_count(params) == torch_param_count(oracle) + (len(oracle.blocks) - 1) * table


# --- Hugging Face transformers ---


def hf_config(**kw):
    # layer_norm_eps: BEiT's own 1e-6 (the name's); transformers' default is 1e-12.
    return transformers.BeitConfig(
        image_size=SIZE, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=256, use_absolute_position_embeddings=False, layer_scale_init_value=0.1,
        layer_norm_eps=1e-6, attn_implementation="eager", **kw)


def hf_state_from_timm(state: dict) -> dict:
    """timm's BEiT weights under transformers' (in-memory) names, so one set of weights has both oracles."""
    out = {
        "beit.embeddings.cls_token": state["cls_token"],
        "beit.embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "beit.embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "beit.pooler.layernorm.weight": state["fc_norm.weight"],
        "beit.pooler.layernorm.bias": state["fc_norm.bias"],
        "classifier.weight": state["head.weight"],
        "classifier.bias": state["head.bias"],
    }
    for i in range(2):
        b, h = f"blocks.{i}.", f"beit.layers.{i}."
        q, k, v = state[b + "attn.qkv.weight"].chunk(3)
        out.update({
            h + "attention.q_proj.weight": q, h + "attention.k_proj.weight": k, h + "attention.v_proj.weight": v,
            h + "attention.q_proj.bias": state[b + "attn.q_bias"],
            h + "attention.v_proj.bias": state[b + "attn.v_bias"],
            h + "relative_position_bias.relative_position_bias_table": state[b + "attn.relative_position_bias_table"],
            h + "lambda_1": state[b + "gamma_1"], h + "lambda_2": state[b + "gamma_2"],
        })
        for hf, tm in [("attention.o_proj", "attn.proj"), ("layernorm_before", "norm1"),
                       ("layernorm_after", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]:
            out.update({f"{h}{hf}.weight": state[f"{b}{tm}.weight"], f"{h}{hf}.bias": state[f"{b}{tm}.bias"]})
    return out


def hf_taps(outputs, features, pooled, logits=None) -> dict:
    taps = {"tokens": [h.numpy() for h in outputs.hidden_states[1:]],  # [0] is the embedding output
            "attn": [a.numpy() for a in outputs.attentions], "features": features.numpy(), "pooled": pooled.numpy()}
    if logits is not None:
        taps["logits"] = logits.numpy()
    return taps


@pytest.fixture(scope="module")
def hf_files(timm_files, tmp_path_factory):
    _, state, _ = timm_files
    config = hf_config(num_labels=10, use_mean_pooling=True, use_relative_position_bias=True)
    hf = transformers.BeitForImageClassification(config).eval()
    hf.load_state_dict(hf_state_from_timm(state), strict=True)
    directory = tmp_path_factory.mktemp("beit_hf") / "beit-tiny"
    hf.save_pretrained(directory)
    return hf, directory


def test_hf_saved_names(hf_files):
    """save_pretrained writes the legacy names the microsoft/beit-* repos hold, not the in-memory ones."""
    from safetensors import safe_open

    with safe_open(str(hf_files[1] / "model.safetensors"), "np") as f:
        keys = set(f.keys())
    assert "beit.encoder.layer.0.attention.attention.query.weight" in keys
    assert "beit.encoder.layer.0.attention.attention.key.bias" not in keys
    assert "beit.encoder.layer.1.attention.attention.relative_position_bias.relative_position_bias_table" in keys


def test_hf_layout(hf_files):
    hf, directory = hf_files
    x = to_torch(images(2, SIZE))
    with torch.no_grad():
        outputs = hf(x, output_hidden_states=True, output_attentions=True)
        base = hf.beit(x)
    params, out = run(directory, SIZE)
    compare_outputs(out, hf_taps(outputs, base.last_hidden_state, base.pooler_output, outputs.logits), "transformers")
    assert jax_param_count(params) == torch_param_count(hf)


def test_hf_layout_other_size(timm_files, hf_files):
    """At another size transformers interpolates the tables bilinearly at run time, not as the timm name
    does; the oracle is timm's own resize, with the same weights (transformers == timm at the stored size)."""
    model, state, _ = timm_files
    hf, directory = hf_files
    x = to_torch(images(2, SIZE))
    with torch.no_grad():
        assert_close(hf(x).logits.numpy(), model(x).numpy(), "transformers vs timm, same weights")
    _, out = run(directory, OTHER)
    compare_outputs(out, timm_taps(timm_reloaded(state, OTHER), to_torch(images(2, OTHER))), f"transformers at {OTHER} px")


def test_hf_masked_image_modeling_shared_table(tmp_path):
    """BeitForMaskedImageModeling (microsoft/beit-*-pt22k): a shared table, and the final norm outside `beit.`."""
    hf = transformers.BeitForMaskedImageModeling(
        hf_config(use_shared_relative_position_bias=True, use_relative_position_bias=False, use_mask_token=True)
    ).eval()
    randomize(hf, seed=4)
    hf.save_pretrained(tmp_path)
    x = to_torch(images(2, SIZE))
    with torch.no_grad():
        outputs = hf.beit(x, output_hidden_states=True, output_attentions=True)
        features = hf.layernorm(outputs.last_hidden_state)
    _, out = run(tmp_path, SIZE, **PRETRAINED)
    compare_outputs(out, hf_taps(outputs, features, features[:, 0]), "transformers masked image modelling")


def test_relative_position_index_matches_timm():
    for grid in [(4, 4), (3, 5), (6, 2)]:
        np.testing.assert_array_equal(relative_position_index(grid), gen_relative_position_index(grid).numpy())
