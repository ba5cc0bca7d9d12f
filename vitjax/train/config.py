"""Run configs: Python files with `get_config() -> ml_collections.ConfigDict`, as big_vision writes
them, each with the command that runs it in its docstring.

A config sets only what differs from `defaults()`. Loading one (`load`) fails before anything
starts on a key the trainer does not know, in the file or in a `--set key=value` override, and on
a value of the wrong type; the model section is checked by building the model's config. The
`model` section holds a registry `name` (`vitjax models`) plus any fields of that model's config
(ViTConfig or ResNetConfig) to override, so any architecture the registry can express trains.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
from ml_collections import config_dict

from vitjax.config_files import run_config_file
from vitjax.models.registry import IMAGENET_MEAN, IMAGENET_STD


def defaults(objective: str = "supervised") -> ml_collections.ConfigDict:
    """Every key the trainer reads, with its default; `objective` chooses the objective's section."""
    from vitjax.train import objectives

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict({"name": ""})  # + fields of the model's config
    config.objective = objectives.defaults(objective)

    config.data = ml_collections.ConfigDict()
    config.data.source = ""  # open_source spec ('vitjax_scenes/size64', 'imagenet2012', 'folder:/x') or 'synthetic'
    config.data.data_dir = config_dict.placeholder(str)  # TFDS data dir (None: TFDS's default)
    config.data.manual_dir = config_dict.placeholder(str)  # where manually downloaded archives are (ImageNet)
    config.data.train_split = "train"
    config.data.eval_split = "test"  # '' for no evaluation
    config.data.image_size = 224
    config.data.augment = "deit"  # vitjax.data.augment.train_transform kind ('simple', 'deit', ...)
    config.data.crop_scale = config_dict.placeholder(tuple)  # RandomResizedCrop scale; None: the kind's own
    config.data.interpolation = "bicubic"
    config.data.mean = IMAGENET_MEAN
    config.data.std = IMAGENET_STD
    config.data.eval_crop_pct = 0.875  # eval: resize the shorter side to image_size / crop_pct, center-crop
    config.data.eval_batch_size = 0  # 0: batch_size
    config.data.shuffle_buffer = config_dict.placeholder(int)  # None: the source's own suggestion

    config.batch_size = 128  # global, over all devices and processes
    config.total_steps = 1000

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"  # 'adamw' or 'sgd' (momentum, nesterov)
    config.optimizer.base_lr = 5e-4  # the learning rate is base_lr * batch_size / lr_reference_batch
    config.optimizer.lr_reference_batch = 512  # DeiT 512, DINO and MoCo v3 256
    config.optimizer.warmup_steps = 0
    config.optimizer.warmup_lr = 1e-6  # the learning rate at step 0 of the warmup
    config.optimizer.min_lr = 1e-5  # where the cosine ends
    config.optimizer.b1 = 0.9  # Adam's beta1, or SGD's momentum
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.weight_decay = 0.05
    config.optimizer.weight_decay_end = config_dict.placeholder(float)  # DINO: cosine from weight_decay to this
    config.optimizer.grad_clip_norm = 0.0  # clip the global gradient norm; 0: off

    config.fsdp = 1  # devices per parameter shard; 1: pure data parallelism (params replicated)
    config.log_every = 50
    config.eval_every = 0  # 0: evaluate only at the end
    config.checkpoint_every = 500  # 0: only at the end
    config.keep_checkpoints = 3
    config.tensorboard = True  # also write TensorBoard summaries (JSON lines are always written)
    return config


def build_model(section: ml_collections.ConfigDict):
    """The Flax module of a `model` section: registry `name` plus config-field overrides."""
    from vitjax.load import build, model_config

    fields = section.to_dict()
    name = fields.pop("name", "")
    if not name:
        raise ValueError("the config names no model: set model.name (see `vitjax models`)")
    return build(model_config(name, **fields))


def load(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """The config of file `path` on top of `defaults()`, with dotted-key `overrides` applied.

    Raises ValueError (unknown key, wrong type, a model that cannot be built) before anything runs.
    """
    user = run_config_file(os.fspath(path))
    overrides = dict(overrides or {})
    objective = overrides.get("objective.name", user.get("objective", {}).get("name", "supervised"))
    config = defaults(objective)
    _merge(config, user, where=os.fspath(path))
    for key, value in overrides.items():
        _set(config, key, value)
    build_model(config.model)  # a misspelt or mistyped model field fails here, not after data loading
    return config


def _merge(base: ml_collections.ConfigDict, user, where: str, prefix: str = "") -> None:
    for key, value in user.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and key in base:
            _merge(base[key], value, where, f"{name}.")
        else:
            _assign(base, key, value, name, where)


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    *parents, key = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            _unknown(".".join(parents[: i + 1]), node, "--set")
        node = node[part]
    _assign(node, key, value, dotted, "--set")


def _assign(node: ml_collections.ConfigDict, key: str, value: Any, name: str, where: str) -> None:
    # The model section takes any field of the model's config; build_model checks them.
    if key not in node and not name.startswith("model."):
        _unknown(name, node, where)
    try:
        node[key] = value
    except TypeError as error:
        raise ValueError(f"{where}: {name}={value!r} has the wrong type "
                         f"(expected {type(node[key]).__name__}): {error}") from None


def _unknown(name: str, node, where: str):
    known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none"
    raise ValueError(f"{where}: unknown config key {name!r}; known keys here: {known}")
