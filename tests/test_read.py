"""Reading checkpoint files: every container, the training-checkpoint wrappers, and every failure."""

import argparse
import json
import os

import ml_dtypes
import numpy as np
import pytest

from vitjax.convert.read import (
    CheckpointError,
    StateDict,
    find_in_hf_cache,
    read_hf_config,
    read_state_dict,
    unwrap,
)

# Building TorchScript archives needs torch.jit.script/save, which torch now deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def _tensors(**shapes):
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(*shape, generator=gen) for k, shape in shapes.items()}


def _save(obj, path):
    import torch

    torch.save(obj, path)
    return path


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


class _RunsShell:
    """Pickles as a call to os.system, the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ---------------------------------------------------------------------------- torch pickles


def test_plain_torch_pickle_has_no_notes(tmp_path):
    sd = _tensors(w=(3, 4), b=(4,))
    out = read_state_dict(_save(sd, tmp_path / "plain.pth"))
    assert isinstance(out, StateDict)
    assert out.container == "torch pickle" and out.notes == []
    assert set(out.tensors) == {"w", "b"}
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in out.tensors.values())
    np.testing.assert_array_equal(out.tensors["w"], sd["w"].numpy())


def test_model_wrapper_and_non_tensor_entries(tmp_path):
    sd = _tensors(**{"blocks.0.w": (2, 2)})
    out = read_state_dict(_save({"model": sd, "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / "m.pth"))
    assert set(out.tensors) == {"blocks.0.w"}
    assert out.notes == ["took the 'model' entry, ignoring 'epoch', 'optimizer'"]


def test_dino_checkpoint_takes_teacher_backbone_with_args_namespace(tmp_path):
    teacher = _tensors(**{"backbone.cls_token": (1, 1, 4), "backbone.blocks.0.w": (4, 4),
                          "head.mlp.0.weight": (8, 4), "head.last_layer.weight_g": (1, 8)})
    student = {"module." + k: v + 1 for k, v in teacher.items()}
    ckpt = {"teacher": teacher, "student": student, "epoch": 3,
            "args": argparse.Namespace(arch="vit_small", lr=5e-4, out_dim=65536)}
    out = read_state_dict(_save(ckpt, tmp_path / "checkpoint.pth"))
    assert set(out.tensors) == {"cls_token", "blocks.0.w"}
    np.testing.assert_array_equal(out.tensors["blocks.0.w"], teacher["backbone.blocks.0.w"].numpy())
    assert out.notes[0] == "took the 'teacher' entry, ignoring 'student', 'epoch', 'args'"
    assert "dropping 2 under 'head.*'" in out.notes[1] and "DINO" in out.notes[1]


def test_moco_v3_keeps_base_encoder_without_projection_head(tmp_path):
    enc = _tensors(**{"blocks.0.w": (4, 4), "pos_embed": (1, 5, 4), "head.0.weight": (16, 4)})
    sd = {f"module.{part}.{k}": v for part in ("base_encoder", "momentum_encoder") for k, v in enc.items()}
    sd["module.predictor.0.weight"] = enc["head.0.weight"]
    ckpt = {"epoch": 300, "arch": "vit_base", "state_dict": sd, "optimizer": {"state": {}}}
    out = read_state_dict(_save(ckpt, tmp_path / "vit-b-300ep.pth.tar"))
    assert set(out.tensors) == {"blocks.0.w", "pos_embed"}
    assert out.notes[1] == (
        "kept the 2 tensors under 'module.base_encoder.' without that prefix, dropping 5 under "
        "'module.base_encoder.head.*', 'module.momentum_encoder.*', 'module.predictor.*' "
        "(MoCo v3: the momentum encoder, predictor and projection head only serve training)")


def test_prefix_stripped_only_when_every_key_has_it():
    w = np.ones((2,), np.float32)
    tensors, notes = unwrap({"module.backbone.a": w, "module.backbone.b": w})
    assert set(tensors) == {"a", "b"} and len(notes) == 2
    tensors, notes = unwrap({"module.a": w, "b": w})
    assert set(tensors) == {"module.a", "b"} and notes == []


def test_half_floats_widen_and_int_buffers_stay(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {"bf": torch.randn(3).bfloat16(), "fp": torch.randn(3).half(), "idx": torch.arange(3),
          "f64": torch.randn(2, dtype=torch.float64)}
    out = read_state_dict(_save(sd, tmp_path / "half.bin")).tensors
    assert out["bf"].dtype == out["fp"].dtype == np.float32
    np.testing.assert_array_equal(out["bf"], sd["bf"].float().numpy())
    assert out["idx"].dtype == np.int64 and out["f64"].dtype == np.float64


def test_legacy_torch_format(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "old.pt"
    torch.save(_tensors(w=(2,)), path, _use_new_zipfile_serialization=False)
    out = read_state_dict(path)
    assert out.container == "torch pickle (legacy format)" and set(out.tensors) == {"w"}


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = _save({"w": _tensors(w=(2,))["w"], "x": _RunsShell(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth: refuses to unpickle code: it references posix\.system"):
        read_state_dict(path)
    assert not marker.exists()


def test_code_hidden_inside_the_allowed_namespace_is_still_refused(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = {"model": _tensors(w=(2,)), "args": argparse.Namespace(x=_RunsShell(marker))}
    with pytest.raises(CheckpointError, match="refuses to unpickle code"):
        read_state_dict(_save(ckpt, tmp_path / "args.pth"))
    assert not marker.exists()


def test_whole_pickled_module_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(CheckpointError, match=r"torch\.nn\.modules\.linear\.Linear.*state_dict"):
        read_state_dict(_save(torch.nn.Linear(2, 2), tmp_path / "module.pth"))


def test_missing_torch_says_how_to_install(tmp_path, monkeypatch):
    path = _save(_tensors(w=(2,)), tmp_path / "w.pth")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(CheckpointError, match=r'w\.pth: .*pip install "vitjax\[torch\]"'):
        read_state_dict(path)


# ------------------------------------------------------------------------------ TorchScript


def test_torchscript_archive(tmp_path):
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 3)
            self.register_buffer("ids", torch.arange(3))

        def forward(self, x):
            return self.proj(x) + self.ids

    model = Tiny()
    torch.jit.save(torch.jit.script(model), tmp_path / "ViT-B-32.pt")
    out = read_state_dict(tmp_path / "ViT-B-32.pt")
    assert out.container == "TorchScript archive"
    assert set(out.tensors) == {"proj.weight", "proj.bias", "ids"}
    np.testing.assert_array_equal(out.tensors["proj.weight"], model.proj.weight.detach().numpy())
    assert out.tensors["ids"].dtype == np.int64


# -------------------------------------------------------------------- safetensors and npz


def test_safetensors_float32_and_bf16(tmp_path):
    from safetensors.numpy import save_file

    w = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    save_file({"w": w, "n": np.arange(3, dtype=np.int32)}, tmp_path / "f32.safetensors")
    save_file({"w": w.astype(ml_dtypes.bfloat16)}, tmp_path / "bf16.safetensors")
    f32 = read_state_dict(tmp_path / "f32.safetensors")
    assert f32.container == "safetensors" and f32.tensors["n"].dtype == np.int32
    np.testing.assert_array_equal(f32.tensors["w"], w)
    bf16 = read_state_dict(tmp_path / "bf16.safetensors").tensors["w"]
    assert bf16.dtype == np.float32
    np.testing.assert_array_equal(bf16, w.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_npz(tmp_path):
    np.savez(tmp_path / "params.npz", **{"blocks.0.w": np.ones((2, 2), np.float32)})
    out = read_state_dict(tmp_path / "params.npz")
    assert out.container == "numpy .npz" and set(out.tensors) == {"blocks.0.w"}


# ------------------------------------------------------------------ Hugging Face directories


@pytest.fixture
def tiny_vit():
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=16, image_size=8, patch_size=4)
    return transformers.ViTModel(config)


def test_hf_directory_safetensors(tmp_path, tiny_vit):
    from safetensors.numpy import load_file

    # transformers 5 renames keys in memory but saves the public on-disk names ('encoder.layer.0...').
    tiny_vit.save_pretrained(tmp_path / "vit")
    out = read_state_dict(tmp_path / "vit")
    assert out.container == "Hugging Face directory (model.safetensors)" and out.notes == []
    on_disk = load_file(tmp_path / "vit" / "model.safetensors")
    assert set(out.tensors) == set(on_disk) and "embeddings.cls_token" in on_disk
    assert read_hf_config(tmp_path / "vit")["model_type"] == "vit"


def test_hf_directory_sharded(tmp_path, tiny_vit):
    tiny_vit.save_pretrained(tmp_path / "whole")
    tiny_vit.save_pretrained(tmp_path / "vit", max_shard_size="1KB")
    out = read_state_dict(tmp_path / "vit")
    assert out.container.endswith("shards listed in model.safetensors.index.json)")
    whole = read_state_dict(tmp_path / "whole").tensors
    assert set(out.tensors) == set(whole)
    for k, v in whole.items():
        np.testing.assert_array_equal(out.tensors[k], v)
    shard = sorted((tmp_path / "vit").glob("model-0000*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard.name}: no such file|{shard.name}: cannot be opened"):
        read_state_dict(tmp_path / "vit")


def test_hf_directory_pytorch_bin(tmp_path, tiny_vit):
    import torch

    # transformers 5 ignores save_pretrained(safe_serialization=False) and writes safetensors anyway,
    # so lay out an older directory by hand: pytorch_model.bin next to config.json.
    (tmp_path / "vit").mkdir()
    tiny_vit.config.to_json_file(tmp_path / "vit" / "config.json")
    torch.save(tiny_vit.state_dict(), tmp_path / "vit" / "pytorch_model.bin")
    out = read_state_dict(tmp_path / "vit")
    assert out.container == "Hugging Face directory (pytorch_model.bin)"
    expected = tiny_vit.state_dict()
    assert set(out.tensors) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(out.tensors[k], v.numpy())
    assert read_hf_config(tmp_path / "vit")["hidden_size"] == 8


def test_read_hf_config_absent_and_malformed(tmp_path):
    assert read_hf_config(tmp_path) is None
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not readable JSON"):
        read_hf_config(tmp_path)


# ----------------------------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth: no such file or directory"):
        read_state_dict(tmp_path / "nope.pth")


def test_directory_that_is_not_hf(tmp_path):
    (tmp_path / "weights.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="not a Hugging Face save_pretrained directory"):
        read_state_dict(tmp_path)


def test_truncated_torch_pickle(tmp_path):
    path = _truncate(_save(_tensors(w=(64, 64)), tmp_path / "half.pth"))
    with pytest.raises(CheckpointError, match=r"half\.pth: .*truncated"):
        read_state_dict(path)


def test_truncated_legacy_torch_pickle(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "half.pt"
    torch.save(_tensors(w=(64, 64)), path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"half\.pt: this torch pickle is truncated or corrupted"):
        read_state_dict(_truncate(path))


@pytest.mark.parametrize("shape", [(64, 64), (2,)], ids=["data-cut", "header-cut"])
def test_truncated_safetensors(tmp_path, shape):
    from safetensors.numpy import save_file

    save_file({"w": np.ones(shape, np.float32)}, tmp_path / "half.safetensors")
    with pytest.raises(CheckpointError, match=r"half\.safetensors: this safetensors file is truncated"):
        read_state_dict(_truncate(tmp_path / "half.safetensors"))


def test_truncated_torchscript(tmp_path):
    torch = pytest.importorskip("torch")
    torch.jit.save(torch.jit.script(torch.nn.Linear(32, 32)), tmp_path / "half.pt")
    with pytest.raises(CheckpointError, match=r"half\.pt: a damaged zip archive"):
        read_state_dict(_truncate(tmp_path / "half.pt"))


@pytest.mark.parametrize("name, content", [
    ("cat.png", b"\x89PNG\r\n\x1a\n" + bytes(64)),
    ("notes.pth", b"these are not weights\n"),
    ("empty.safetensors", b""),
])
def test_not_a_checkpoint(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{name}: not a checkpoint"):
        read_state_dict(tmp_path / name)


def test_zip_that_is_not_a_checkpoint(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "photos.pth", "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(CheckpointError, match="a zip archive, but not a torch checkpoint"):
        read_state_dict(tmp_path / "photos.pth")


def test_empty_state_dict(tmp_path):
    pytest.importorskip("torch")
    with pytest.raises(CheckpointError, match=r"empty\.pth: the state dict is empty"):
        read_state_dict(_save({}, tmp_path / "empty.pth"))
    with pytest.raises(CheckpointError, match="the state dict is empty"):
        read_state_dict(_save({"model": {}, "epoch": 1}, tmp_path / "empty_model.pth"))


def test_state_dict_without_tensors(tmp_path):
    pytest.importorskip("torch")
    with pytest.raises(CheckpointError, match=r"meta\.pth: holds no tensors, only 'epoch', 'arch'"):
        read_state_dict(_save({"epoch": 3, "arch": "vit"}, tmp_path / "meta.pth"))


def test_not_a_mapping(tmp_path):
    with pytest.raises(CheckpointError, match=r"list\.pth: holds a list, not a state dict"):
        read_state_dict(_save([_tensors(w=(2,))["w"]], tmp_path / "list.pth"))


# --------------------------------------------------------------------------- the HF cache


def _fake_hf_cache(root, repo_id, filename, content=b"x"):
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / filename).write_bytes(content)
    return repo / "snapshots" / commit / filename


def test_find_in_hf_cache_explicit_dir(tmp_path):
    file = _fake_hf_cache(tmp_path, "timm/vit_base_patch16_224.augreg_in21k", "model.safetensors")
    assert find_in_hf_cache("timm/vit_base_patch16_224.augreg_in21k", "model.safetensors", tmp_path) == str(file)
    assert find_in_hf_cache("timm/vit_base_patch16_224.augreg_in21k", "config.json", tmp_path) is None
    assert find_in_hf_cache("facebook/dino-vitb16", "model.safetensors", tmp_path) is None


def test_find_in_hf_cache_default_dir_follows_huggingface_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    file = _fake_hf_cache(tmp_path, "facebook/dino-vitb16", "config.json", b"{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert find_in_hf_cache("facebook/dino-vitb16", "config.json") == str(file)


def test_find_in_hf_cache_known_missing_is_none(tmp_path):
    file = _fake_hf_cache(tmp_path, "org/name", "config.json")
    no_exist = file.parents[2] / ".no_exist" / file.parent.name
    no_exist.mkdir(parents=True)
    (no_exist / "model.safetensors").write_bytes(b"")
    assert find_in_hf_cache("org/name", "model.safetensors", tmp_path) is None


def test_hf_index_without_weight_map(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="has no 'weight_map'"):
        read_state_dict(tmp_path)
