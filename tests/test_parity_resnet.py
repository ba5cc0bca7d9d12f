"""ResNet-50 parity: timm's resnet50 (torchvision's architecture and key names) with random weights
and statistics, saved in each published layout, loaded with `vitjax.load`, compared stage by stage.

The real ResNet-50 runs at small images (64x64, and 96x80, whose odd grids exercise the
symmetric stride-2 padding); the weights are random, so nothing is downloaded.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from parity import assert_close, images, jax_param_count, randomize, to_torch, torch, torch_param_count

timm = pytest.importorskip("timm")

from vitjax.capture import Capture  # noqa: E402
from vitjax.load import load  # noqa: E402
from vitjax.models.resnet import statistics_mask  # noqa: E402

STAGES = ("layer1", "layer2", "layer3", "layer4")


def timm_resnet(num_classes: int, seed: int = 0):
    model = timm.create_model("resnet50", num_classes=num_classes)
    randomize(model, seed)
    return model


def reference(model, x) -> dict:
    """Every stage's output (NCHW -> (B, h*w, C)), the pooled feature and the logits."""
    taps, hooks = {}, []
    for stage in STAGES:
        hook = lambda m, i, o, stage=stage: taps.__setitem__(stage, o.detach().numpy())
        hooks.append(getattr(model, stage).register_forward_hook(hook))
    try:
        with torch.no_grad():
            features = model.forward_features(to_torch(x))
            taps["pooled"] = model.forward_head(features, pre_logits=True).numpy()
            taps["logits"] = model.forward_head(features).numpy() if model.num_classes else None
    finally:
        for hook in hooks:
            hook.remove()
    for stage in STAGES:
        b, c, h, w = taps[stage].shape
        taps[stage] = taps[stage].transpose(0, 2, 3, 1).reshape(b, h * w, c)
    return taps


def run(model, params, x, capture="tokens"):
    with jax.default_matmul_precision("highest"):
        return model.apply({"params": params}, x, capture=capture)


def assert_matches(out, ref, what: str) -> None:
    for i, stage in enumerate(STAGES):
        assert_close(out.layers[i]["tokens"], ref[stage], f"{what} {stage}")
    assert_close(out.tokens, ref["layer4"], f"{what} final tokens")
    assert_close(out.pooled, ref["pooled"], f"{what} pooled")
    if ref["logits"] is None:
        assert out.logits is None
    else:
        assert_close(out.logits, ref["logits"], f"{what} logits")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    model = timm_resnet(num_classes=10)
    path = tmp_path_factory.mktemp("resnet") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize("size", [64, (96, 80)])
def test_timm_resnet50(classifier, size):
    torch_model, path = classifier
    model, params = load("resnet50.a1_in1k", checkpoint=path, num_classes=10, image_size=64)
    x = images(2, size)
    out = run(model, params, x)
    assert_matches(out, reference(torch_model, x), f"resnet50 at {size}")
    height, width = (size, size) if isinstance(size, int) else size
    grid = (-(-height // 32), -(-width // 32))  # every stride-2 layer rounds up
    assert out.layout.grid == grid and out.layout.num_prefix == 0 and out.embedding is None


def test_param_count(classifier):
    """The trainable params are timm's parameters exactly; the BN running statistics, which vitjax
    keeps as params, are 2*C more per BatchNorm, as many as timm's running_mean/var buffers."""
    torch_model, path = classifier
    _, params = load("resnet50.a1_in1k", checkpoint=path, num_classes=10)
    statistics = sum(b.numel() for n, b in torch_model.named_buffers() if n.endswith(("running_mean", "running_var")))
    mask = statistics_mask(params)
    trainable = jax.tree.map(lambda p, is_stat: 0 if is_stat else p.size, params, mask)
    # ResNet-50 has 25,557,032 parameters with its 1000-class fc (2048 x 1000 + 1000).
    assert sum(jax.tree.leaves(trainable)) == torch_param_count(torch_model) == 25_557_032 - 990 * 2049
    assert jax_param_count(params) == torch_param_count(torch_model) + statistics
    batch_norms = [m for m in torch_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert statistics == sum(2 * m.num_features for m in batch_norms)


def test_headless_ignores_classifier(classifier):
    """Built with num_classes=0 (DINO's name), a checkpoint's fc is set aside, as timm does."""
    torch_model, path = classifier
    model, params = load("dino_resnet50", checkpoint=path, image_size=64)
    assert "fc" not in params
    out = run(model, params, images(2, 64), capture=None)
    assert_close(out.pooled, reference(torch_model, images(2, 64))["pooled"], "headless pooled")
    assert out.logits is None and all(layer == {} for layer in out.layers)


def projector(dims=(2048, 64, 16)):
    """MoCo v3's projection MLP (Linear-BN-ReLU-Linear-BN without affine), which replaces fc."""
    mlp = torch.nn.Sequential(
        torch.nn.Linear(dims[0], dims[1], bias=False), torch.nn.BatchNorm1d(dims[1]), torch.nn.ReLU(),
        torch.nn.Linear(dims[1], dims[2], bias=False), torch.nn.BatchNorm1d(dims[2], affine=False),
    )
    randomize(mlp, 3)
    return mlp


def test_mocov3_checkpoint(tmp_path):
    """The MoCo v3 training checkpoint: module.base_encoder.* (with its projector in fc.*), the
    momentum encoder and the predictor, inside 'state_dict' next to training metadata."""
    base, momentum = timm_resnet(0, seed=1), timm_resnet(0, seed=2)
    base.fc, momentum.fc = projector(), projector()
    wrapper = torch.nn.Module()
    wrapper.base_encoder, wrapper.momentum_encoder = base, momentum
    wrapper.predictor = torch.nn.Sequential(torch.nn.Linear(16, 16, bias=False))
    state = {f"module.{k}": v for k, v in wrapper.state_dict().items()}
    path = tmp_path / "r-50-1000ep.pth.tar"
    torch.save({"epoch": 1000, "arch": "resnet50", "state_dict": state}, path)

    model, params = load("mocov3_resnet50", checkpoint=path, image_size=64)
    base.fc = torch.nn.Identity()  # what MoCo v3's linear evaluation reads: the 2048-d pooled feature
    x = images(2, 64, seed=1)
    assert_matches(run(model, params, x), reference(base, x), "MoCo v3")


def test_dino_checkpoints(tmp_path):
    """DINO's released backbone (no fc), and its training checkpoint: a DDP-wrapped teacher of
    backbone.* plus the DINO head, next to the student."""
    backbone = timm_resnet(0, seed=4)
    released = tmp_path / "dino_resnet50_pretrain.pth"
    torch.save(backbone.state_dict(), released)

    head = torch.nn.Sequential(torch.nn.Linear(2048, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    teacher = torch.nn.Module()
    teacher.backbone, teacher.head = backbone, head
    wrapped = {f"module.{k}": v for k, v in teacher.state_dict().items()}
    training = tmp_path / "checkpoint.pth"
    torch.save({"student": wrapped, "teacher": wrapped, "epoch": 800}, training)

    x = images(2, (96, 80), seed=2)
    expected = reference(backbone, x)
    for path in (released, training):
        model, params = load("dino_resnet50", checkpoint=path, image_size=64)
        assert_matches(run(model, params, x), expected, f"DINO {path.name}")


def test_capture(classifier):
    _, path = classifier
    model, params = load("resnet50.a1_in1k", checkpoint=path, num_classes=10, image_size=64)
    x = images(2, 64)
    out = run(model, params, x, capture=Capture(frozenset({"tokens"}), blocks=(-1,)))
    assert [bool(layer) for layer in out.layers] == [False, False, False, True]
    assert out.layers[3]["tokens"].shape == (2, 4, 2048)
    with pytest.raises(ValueError, match="only in ViTs"):
        run(model, params, x, capture=("tokens", "attn"))
