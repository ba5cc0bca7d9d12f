"""The trainer's pieces against their originals: ResNet BatchNorm training against PyTorch, AdamW
with DeiT's weight-decay mask and DINO's schedules against torch.optim.AdamW and DINO's
`cosine_scheduler`; configs that fail before training; logs TensorBoard can read; trained params
that `vitjax.load` reads back; and the loss falling on vitjax_scenes."""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from parity import assert_close, images, randomize, to_torch, torch

timm = pytest.importorskip("timm")

import vitjax  # noqa: E402
from vitjax import parallel  # noqa: E402
from vitjax.cli import main  # noqa: E402
from vitjax.load import build, dummy_input, model_config  # noqa: E402
from vitjax.train import config as run_config  # noqa: E402
from vitjax.train import objectives, optimizer, train  # noqa: E402
from vitjax.train import state as state_lib  # noqa: E402
from vitjax.train.loop import train_step  # noqa: E402
from vitjax.train.logging import read_metrics  # noqa: E402
from vitjax.train.schedules import cosine, weight_decay_mask  # noqa: E402
from vitjax.train.synthetic import SyntheticTask  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(__file__), "configs")
TINY = os.path.join(CONFIGS, "tiny_synthetic.py")


def dino_cosine_scheduler(base, final, total, warmup=0, start_warmup=0.0):
    """DINO's utils.cosine_scheduler (per iteration), in float64 NumPy, as the DINO repo writes it."""
    warmup_schedule = np.linspace(start_warmup, base, warmup) if warmup > 0 else np.array([])
    iters = np.arange(total - warmup)
    schedule = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup_schedule, schedule))


# ----------------------------------------------------------------------------- ResNet BatchNorm


def test_resnet_train_mode_matches_torch(tmp_path):
    """Train-mode forward (batch statistics), the updated running statistics (momentum 0.1,
    unbiased variance) and the gradients through BatchNorm equal PyTorch's."""
    from timm.models.resnet import Bottleneck, ResNet

    reference = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=5)  # timm's plain stem is always 64 wide
    randomize(reference)
    path = tmp_path / "tiny_resnet.pth"
    torch.save(reference.state_dict(), path)
    model, params = vitjax.load("resnet50.a1_in1k", checkpoint=path, layers=(1, 1, 1, 1), num_classes=5)

    x = images(4, 32)
    reference.train()
    logits = reference(to_torch(x))
    (logits**2).mean().backward()

    def loss(p):
        out, mutated = model.apply({"params": p}, x, train=True, mutable="statistics")
        return (out.logits**2).mean(), (out.logits, mutated["statistics"])

    with jax.default_matmul_precision("highest"):
        (_, (ours, statistics)), grads = jax.value_and_grad(loss, has_aux=True)(params)
    assert_close(ours, logits.detach().numpy(), "train-mode logits")
    torch_modules = dict(reference.named_modules())
    checked = 0
    for path_, value in traverse_util.flatten_dict(statistics).items():
        *module, stat = path_
        name = ".".join(module).replace("downsample_conv", "downsample.0").replace("downsample_bn", "downsample.1")
        buffer = getattr(torch_modules[name], f"running_{stat}")
        assert_close(value, buffer.numpy(), f"running {stat} of {name}")
        checked += 1
    assert checked == 2 * sum(isinstance(m, torch.nn.BatchNorm2d) for m in reference.modules())
    assert_close(grads["conv1"]["kernel"], reference.conv1.weight.grad.numpy().transpose(2, 3, 1, 0), "stem grad")
    assert_close(grads["layer2"]["0"]["bn2"]["scale"], reference.layer2[0].bn2.weight.grad.numpy(), "BN scale grad")
    # The running statistics do not take part in a train-mode forward.
    assert not np.any(grads["bn1"]["mean"]) and not np.any(grads["bn1"]["var"])


# ----------------------------------------------------------------------------- optimizer and schedules


def abstract_params(name: str, **overrides):
    model = build(model_config(name, **overrides))
    return jax.eval_shape(model.init, jax.random.key(0), dummy_input(model.config))["params"]


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_weight_decay_mask_matches_timm_param_groups(arch):
    """The decayed / not-decayed split is timm's `param_groups_weight_decay` with the model's
    `no_weight_decay()` (compared by parameter counts; BatchNorm statistics are buffers in timm)."""
    if arch == "vit":
        reference = timm.create_model("vit_small_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                                      num_heads=2, num_classes=4, init_values=1e-5)
        params = abstract_params("vit_small_patch16_224", image_size=32, patch_size=8, width=32, depth=2,
                                 num_heads=2, mlp_dim=128, num_classes=4, layer_scale=True)
        skip = reference.no_weight_decay()
    else:
        from timm.models.resnet import Bottleneck, ResNet

        reference = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=5)
        params = abstract_params("resnet50.a1_in1k", layers=(1, 1, 1, 1), num_classes=5, image_size=32)
        skip = ()
    from timm.optim import param_groups_weight_decay

    groups = param_groups_weight_decay(reference, 0.05, no_weight_decay_list=skip)
    timm_counts = {g["weight_decay"] > 0: sum(p.numel() for p in g["params"]) for g in groups}
    mask = weight_decay_mask(params)
    ours = {True: 0, False: 0}
    for leaf, decayed in zip(jax.tree.leaves(params), jax.tree.leaves(mask)):
        ours[bool(decayed)] += math.prod(leaf.shape)
    if arch == "resnet":  # vitjax's params include the running statistics, never decayed
        statistics = [b for n, b in reference.named_buffers() if n.endswith(("running_mean", "running_var"))]
        ours[False] -= sum(b.numel() for b in statistics)
    assert ours == timm_counts


def test_adamw_with_dino_schedules_matches_torch():
    """optimizer.make (AdamW, DeiT's lr scaling, warmup + cosine lr, DINO's cosine weight decay,
    the decay mask) against torch.optim.AdamW driven per step as DINO's training loop drives it."""
    config = run_config.defaults()
    config.batch_size, config.total_steps = 64, 12
    config.optimizer.update(dict(base_lr=0.05, lr_reference_batch=256, warmup_steps=4, warmup_lr=0.001,
                                 min_lr=0.002, weight_decay=0.04, weight_decay_end=0.4))
    lrs = dino_cosine_scheduler(0.05 * 64 / 256, 0.002, 12, warmup=4, start_warmup=0.001)
    wds = dino_cosine_scheduler(0.04, 0.4, 12)
    np.testing.assert_allclose(jax.vmap(optimizer.learning_rate(config))(jnp.arange(12)), lrs, rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(cosine(0.04, 0.4, 12))(jnp.arange(12)), wds, rtol=1e-5)

    rng = np.random.RandomState(0)
    params = {"dense": {"kernel": rng.randn(5, 3).astype(np.float32), "bias": rng.randn(3).astype(np.float32)}}
    grads = [jax.tree.map(lambda p: rng.randn(*p.shape).astype(np.float32), params) for _ in range(12)]
    frozen = jax.tree.map(lambda _: False, params)
    tx = optimizer.make(config, params, frozen)
    state, ours = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, ours)
        ours = jax.tree.map(lambda p, u: p + u, ours, updates)

    kernel, bias = (torch.tensor(params["dense"][n], requires_grad=True) for n in ("kernel", "bias"))
    adamw = torch.optim.AdamW([{"params": [kernel]}, {"params": [bias], "weight_decay": 0.0}], lr=1.0)
    for i, g in enumerate(grads):
        for group in adamw.param_groups:  # DINO's loop: lr for every group, weight decay for the decayed one
            group["lr"] = lrs[i]
        adamw.param_groups[0]["weight_decay"] = wds[i]
        kernel.grad, bias.grad = torch.tensor(g["dense"]["kernel"]), torch.tensor(g["dense"]["bias"])
        adamw.step()
    np.testing.assert_allclose(ours["dense"]["kernel"], kernel.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours["dense"]["bias"], bias.detach().numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("override, message", [
    ("optimzer.base_lr=0.1", "unknown config key 'optimzer'"),
    ("optimizer.base_rl=0.1", "unknown config key 'optimizer.base_rl'"),
    ("total_steps=ten", "wrong type"),
    ("model.depht=2", "depht"),
])
def test_bad_config_fails_before_training(tmp_path, capsys, override, message):
    workdir = tmp_path / "run"
    assert main(["train", TINY, "--workdir", str(workdir), "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not workdir.exists()  # nothing started


def test_unknown_key_in_config_file_fails(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict()\n"
                   "    c.data = dict(source='synthetic', shufle_buffer=10)\n    return c\n")
    with pytest.raises(ValueError, match=r"unknown config key 'data.shufle_buffer'.*shuffle_buffer"):
        run_config.load(bad)


def test_experiment_configs_load_and_name_their_command():
    """Every experiment config loads, builds its model, and its docstring holds its command."""
    root = os.path.join(os.path.dirname(__file__), "..", "experiments")
    files = sorted(f for f in os.listdir(root) if f.endswith(".py"))
    assert {"scenes_vit.py", "scenes_resnet.py", "deit_imagenet.py"} <= set(files)
    for name in files:
        path = os.path.join(root, name)
        config = run_config.load(path)
        with open(path) as f:
            assert f"vitjax train experiments/{name}" in f.read().split('"""')[1], name
        model = run_config.build_model(config.model)
        assert model.config.num_classes > 0


# ----------------------------------------------------------------------------- a short run


def tiny_config(**overrides):
    return run_config.load(TINY, overrides)


def test_run_logs_tensorboard_and_exports_params(tmp_path):
    """A short synthetic run: the TensorBoard events hold the logged values, and the exported
    params load back with `vitjax.load` and give the trained model's logits."""
    config = tiny_config(total_steps=6, checkpoint_every=0, eval_every=3)
    mesh = parallel.make_mesh(1, jax.devices()[:1])
    sharding = parallel.batch_sharding(mesh)
    task = SyntheticTask(image_size=32, num_classes=4, global_batch=16)
    state = train(config, str(tmp_path), train_batches=task.train_batches(sharding),
                  eval_batches=task.eval_batches(sharding), mesh=mesh, progress=False)

    logged = read_metrics(str(tmp_path))
    assert [m["step"] for m in logged if "loss" in m] == list(range(1, 7))
    assert [m["step"] for m in logged if "eval/accuracy" in m] == [3, 6]

    from vitjax.data.tf_env import import_tf

    tf = import_tf()
    events = {}
    for name in os.listdir(tmp_path / "tensorboard"):
        for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "tensorboard" / name)):
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                events[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    for line in logged:
        for key, value in line.items():
            if key != "step":
                assert events[(key, line["step"])] == pytest.approx(value, rel=1e-6), key

    model, params = vitjax.load(config.model.name, checkpoint=str(tmp_path / "params"))
    assert model.config == run_config.build_model(config.model).config
    jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(state.params))


def test_resnet_training_keeps_statistics_out_of_the_optimizer():
    """After a train step, the BatchNorm statistics are exactly the running averages the model
    returned for that batch (no gradient step, no weight decay), and the weights did move."""
    config = tiny_config(**{"optimizer.warmup_steps": 0})
    config.model = dict(name="resnet50.a1_in1k", layers=(1, 1, 1, 1), width=8, num_classes=4, image_size=32)
    config.optimizer.weight_decay = 0.5  # large, so that decaying a statistic could not go unnoticed
    objective = objectives.create(config)
    abstract = jax.eval_shape(lambda: objective.init(jax.random.key(0))[0])
    tx = optimizer.make(config, abstract, objective.frozen(abstract))
    state = jax.jit(functools.partial(state_lib.create, objective, tx, 0))()
    batch = SyntheticTask(image_size=32, num_classes=4, global_batch=16).host_batch(0, 0)

    model = objective.model
    _, mutated = jax.jit(functools.partial(model.apply, train=True, mutable="statistics"))(
        {"params": state.params}, batch["image"])
    step = jax.jit(functools.partial(train_step, objective=objective, tx=tx,
                                     learning_rate=optimizer.learning_rate(config)))
    new_state, metrics = step(state, batch)
    trained = traverse_util.flatten_dict(jax.device_get(new_state.params))
    for path, value in traverse_util.flatten_dict(mutated["statistics"]).items():
        np.testing.assert_array_equal(trained[path], value, err_msg="/".join(path))
    assert not np.allclose(trained[("fc", "kernel")], state.params["fc"]["kernel"])
    assert math.isfinite(metrics["loss"])


def test_loss_falls_on_scenes(tmp_path_factory):
    """A tiny ViT on a tiny vitjax_scenes (32 px, 64 training images, built here), through the
    whole data pipeline (TFDS source, augmentation, loader): the training loss falls, and the
    accuracy on the training images is well above chance (10 classes). Some dozens of steps
    are enough to fit 64 images, not to generalise, so the test split is not used."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    workdir = str(tmp_path_factory.mktemp("scenes_run"))
    config = tiny_config(**{
        "data.source": "vitjax_scenes/size32_train64_test32_cue8_seed0", "data.data_dir": data_dir,
        "data.augment": "simple", "data.crop_scale": (0.8, 1.0), "data.eval_crop_pct": 1.0,
        "data.eval_split": "train", "model.num_classes": 10, "model.patch_size": 4, "batch_size": 32,
        "total_steps": 48, "optimizer.base_lr": 1e-3, "optimizer.warmup_steps": 4, "log_every": 4,
        "eval_every": 0, "checkpoint_every": 0, "tensorboard": False})
    train(config, workdir, mesh=parallel.make_mesh(1, jax.devices()[:1]), progress=False)
    logged = read_metrics(workdir)
    losses = [m["loss"] for m in logged if "loss" in m]
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:2]), losses
    accuracy = [m["eval/accuracy"] for m in logged if "eval/accuracy" in m]
    assert accuracy == [pytest.approx(accuracy[0])] and accuracy[0] > 0.25, accuracy


@pytest.mark.parametrize("alphas", [(0.0, 0.0), (0.8, 1.0)])
def test_supervised_targets_are_mix_batch(alphas):
    """The objective's images and soft targets are `mix_batch`'s (timm Mixup semantics), with its
    own shortcut when mixing is off (label smoothing only)."""
    from vitjax.data.mixing import mix_batch
    from vitjax.train.objectives.supervised import Supervised

    mixup, cutmix = alphas
    model = run_config.build_model(tiny_config().model)
    objective = Supervised(model, label_smoothing=0.1, mixup_alpha=mixup, cutmix_alpha=cutmix)
    key, x, labels = jax.random.key(3), jnp.asarray(images(6, 32)), jnp.arange(6) % 4
    ours = objective.targets(key, x, labels)
    expected = mix_batch(key, x, labels, num_classes=4, mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.1)
    for a, b in zip(ours, expected):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
