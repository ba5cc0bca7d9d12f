"""The `vitjax` command: models, inspect, convert (and loading the converted checkpoint back)."""

from __future__ import annotations

import shutil
import subprocess

import jax
import numpy as np
import pytest

import vitjax
from vitjax.cli import main
from parity import randomize, torch

timm = pytest.importorskip("timm")

SET = ["--set", "patch_size=8", "--set", "width=64", "--set", "depth=2", "--set", "num_heads=2",
       "--set", "mlp_dim=256"]


def test_models_lists_every_family(capsys):
    assert main(["models", "--no-count"]) == 0
    table = capsys.readouterr().out
    for name in ("vit_small_patch16_224.dino", "dinov2_vits14_reg", "beit_base_patch16_224.in22k_ft_in22k_in1k",
                 "vit_base_patch16_clip_224.openai", "mocov3_vit_base", "selfpatch_vits16", "resnet50.a1_in1k"):
        assert name in table


def test_models_counts_parameters(capsys):
    assert main(["models", "--family", "distilled"]) == 0
    table = capsys.readouterr().out
    assert "deit_small_distilled_patch16_224.fb_in1k" in table and "22.4M" in table
    assert "dino_vits16" not in table


def test_inspect_shows_layout_and_per_block_shapes(capsys):
    assert main(["inspect", "dinov2_vits14_reg", "--image-size", "56", "--set", "depth=2"]) == 0
    text = capsys.readouterr().out
    assert "1 class, 0 distillation, 4 registers, 4x4 patches of 14 px = 21 tokens" in text
    assert "(1, 6, 21, 21)" in text  # block attention shape


def test_unknown_name_is_an_error_with_suggestions(capsys):
    assert main(["inspect", "dino_vit_s16"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_convert_writes_an_orbax_checkpoint_that_load_reads_back(tmp_path, capsys):
    reference = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                                  depth=2, num_heads=2, num_classes=0)
    randomize(reference)
    source = tmp_path / "dino.pth"
    torch.save(reference.state_dict(), source)
    out = tmp_path / "converted"
    assert main(["convert", str(source), "--model", "dino_vits16", "--out", str(out), "--image-size", "32", *SET]) == 0
    assert "wrote" in capsys.readouterr().out

    model, params = vitjax.load("dino_vits16", checkpoint=str(out))
    assert model.config.depth == 2  # the overrides used at conversion travel with the checkpoint
    _, direct = vitjax.load("dino_vits16", checkpoint=str(source), image_size=32, patch_size=8, width=64, depth=2,
                            num_heads=2, mlp_dim=256)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, direct)

    # At another size the converted checkpoint resamples exactly like the original file does.
    _, resized = vitjax.load("dino_vits16", checkpoint=str(out), image_size=48)
    _, resized_direct = vitjax.load("dino_vits16", checkpoint=str(source), image_size=48, patch_size=8, width=64,
                                    depth=2, num_heads=2, mlp_dim=256)
    np.testing.assert_allclose(resized["pos_embed"], resized_direct["pos_embed"], rtol=1e-6, atol=1e-6)

    with pytest.raises(ValueError, match="converted for 'dino_vits16'"):
        vitjax.load("dino_vitb16", checkpoint=str(out))
    assert main(["convert", str(source), "--model", "dino_vits16", "--out", str(out), *SET]) == 2  # not empty


@pytest.mark.skipif(shutil.which("vitjax") is None, reason="the vitjax console script is not installed")
@pytest.mark.parametrize("command", [[], ["models"], ["inspect"], ["convert"]])
def test_help_of_every_command(command):
    result = subprocess.run(["vitjax", *command, "--help"], capture_output=True, text=True, check=True)
    assert "usage: vitjax" in result.stdout and len(result.stdout.splitlines()) > 5
