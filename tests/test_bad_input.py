"""Bad input gets an error that names the problem, and nothing is ever half-loaded."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

import vitjax
from parity import randomize, torch

timm = pytest.importorskip("timm")

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0)
TINY_VITJAX = dict(image_size=32, patch_size=8, width=64, depth=2, num_heads=2, mlp_dim=256)


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory):
    model = timm.create_model("vit_small_patch16_224", pretrained=False, **TINY)
    randomize(model)
    path = tmp_path_factory.mktemp("ckpt") / "dino.pth"
    torch.save(model.state_dict(), path)
    return str(path)


def test_truncated_checkpoint(tmp_path, dino_file):
    data = open(dino_file, "rb").read()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(vitjax.CheckpointError, match="truncated.pth"):
        vitjax.load("dino_vits16", checkpoint=str(path), **TINY_VITJAX)


def test_corrupted_checkpoint(tmp_path, dino_file):
    data = bytearray(open(dino_file, "rb").read())
    data[100:400] = os.urandom(300)
    path = tmp_path / "corrupted.pth"
    path.write_bytes(bytes(data))
    with pytest.raises(vitjax.CheckpointError, match="corrupted.pth"):
        vitjax.load("dino_vits16", checkpoint=str(path), **TINY_VITJAX)


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are my notes, not weights\n")
    with pytest.raises(vitjax.CheckpointError, match="notes.pth"):
        vitjax.load("dino_vits16", checkpoint=str(path), **TINY_VITJAX)


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"pos_embed": Exploit()}, path)
    with pytest.raises(vitjax.CheckpointError, match="evil.pth"):
        vitjax.load("dino_vits16", checkpoint=str(path), **TINY_VITJAX)
    assert not marker.exists()


def test_checkpoint_of_another_family_names_the_keys(tmp_path):
    beit = timm.create_model("beit_base_patch16_224", pretrained=False, **TINY)
    path = tmp_path / "beit.pth"
    torch.save(beit.state_dict(), path)
    with pytest.raises(vitjax.CheckpointMismatch) as error:
        vitjax.load("dino_vits16", checkpoint=str(path), **TINY_VITJAX)
    message = str(error.value)
    assert "blocks.0.attn.q_bias" in message and "blocks.0.attn.relative_position_bias_table" in message
    assert "missing" in message and "pos_embed" in message


def test_mis_shaped_tensor_is_named_with_both_shapes(tmp_path, dino_file):
    state = torch.load(dino_file)
    state["blocks.1.mlp.fc1.weight"] = state["blocks.1.mlp.fc1.weight"][:128]
    state["blocks.1.mlp.fc1.bias"] = state["blocks.1.mlp.fc1.bias"][:128]
    path = tmp_path / "narrow.pth"
    torch.save(state, path)
    with pytest.raises(vitjax.CheckpointMismatch, match=r"blocks\.1\.mlp\.fc1\.weight: checkpoint \(64, 128\)"):
        vitjax.load("dino_vits16", checkpoint=str(path), **TINY_VITJAX)


def test_missing_key_is_named(tmp_path, dino_file):
    state = torch.load(dino_file)
    del state["norm.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(vitjax.CheckpointMismatch, match="norm/scale"):
        vitjax.load("dino_vits16", checkpoint=str(path), **TINY_VITJAX)


def test_unknown_model_name_suggests_close_ones():
    with pytest.raises(KeyError, match="dino_vits16"):
        vitjax.load("dino_vit16")


def test_missing_checkpoint_says_which_file_is_needed(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="timm/vit_small_patch16_224.dino"):
        vitjax.load("vit_small_patch16_224.dino")
    with pytest.raises(FileNotFoundError, match="dino_deitsmall16_pretrain.pth"):
        vitjax.load("dino_vits16")


def test_checkpoint_found_in_the_hugging_face_cache(monkeypatch, tmp_path, dino_file):
    """With no checkpoint argument, the file is taken from the Hugging Face cache when it is there."""
    import huggingface_hub.constants
    from safetensors.torch import save_file

    snapshot = tmp_path / "models--timm--vit_small_patch16_224.dino" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--timm--vit_small_patch16_224.dino" / "refs").mkdir()
    (tmp_path / "models--timm--vit_small_patch16_224.dino" / "refs" / "main").write_text("0123abcd")
    save_file(torch.load(dino_file), snapshot / "model.safetensors")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, cached = vitjax.load("vit_small_patch16_224.dino", **TINY_VITJAX)
    _, direct = vitjax.load("vit_small_patch16_224.dino", checkpoint=dino_file, **TINY_VITJAX)
    jax.tree_util.tree_map(np.testing.assert_array_equal, cached, direct)


@pytest.fixture(scope="module")
def tiny_model():
    return vitjax.create_model("dino_vits16", key=jax.random.key(0), **TINY_VITJAX)


@pytest.mark.parametrize("shape, message", [
    ((1, 32, 32, 1), "1 channels, the model expects 3"),
    ((1, 3, 32, 32), "NCHW"),  # channels-first images get a hint
    ((1, 30, 32, 3), "30x32 cannot be tiled by 8-pixel patches"),
])
def test_images_the_model_cannot_take(tiny_model, shape, message):
    model, params = tiny_model
    with pytest.raises(ValueError, match=message):
        model.apply({"params": params}, np.zeros(shape, np.float32))


def test_unknown_capture_tap_lists_the_known_ones(tiny_model):
    model, params = tiny_model
    with pytest.raises(ValueError, match="known taps"):
        model.apply({"params": params}, np.zeros((1, 32, 32, 3), np.float32), capture="attention")


def test_capture_of_a_block_the_model_does_not_have(tiny_model):
    model, params = tiny_model
    with pytest.raises(ValueError, match="block 5, but the model has 2 blocks"):
        model.apply({"params": params}, np.zeros((1, 32, 32, 3), np.float32),
                    capture=vitjax.Capture(frozenset({"attn"}), blocks=(5,)))
