"""`vitjax.load` and `vitjax.create_model`: a name (and a checkpoint) in, a Flax module and plain
params out.

Loading is all-or-nothing: the file is read, its layout recognised, every key mapped through that
layout's table, position parameters fitted, and every shape checked against the model before any
param is returned.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vitjax.convert import hf_vit, layouts, orbax_io
from vitjax.convert.positions import fit_pos_embed, fit_rel_pos_bias
from vitjax.convert.read import StateDict, find_in_hf_cache, read_hf_config, read_state_dict
from vitjax.convert.table import apply_table, check_fit
from vitjax.models.registry import ModelSpec, lookup
from vitjax.models.vit import ViT, ViTConfig


def model_config(name: str, image_size: int | tuple[int, int] | None = None, **overrides):
    """The config a name stands for, with `image_size` and any config fields overridden."""
    spec = lookup(name)
    if image_size is not None:
        overrides["image_size"] = image_size
    try:
        return dataclasses.replace(spec.config, **overrides)
    except TypeError as error:
        fields = sorted(f.name for f in dataclasses.fields(spec.config))
        raise TypeError(f"{error}; {type(spec.config).__name__} fields are: {', '.join(fields)}") from None


def build(config):
    """The Flax module for a config."""
    if isinstance(config, ViTConfig):
        return ViT(config)
    from vitjax.models.resnet import ResNet, ResNetConfig

    if isinstance(config, ResNetConfig):
        return ResNet(config)
    raise TypeError(f"no model for config type {type(config).__name__}")


def dummy_input(config) -> jax.Array:
    height, width = config.image_size
    return jnp.zeros((1, height, width, config.in_chans), jnp.float32)


def param_shapes(model) -> dict[str, tuple[int, ...]]:
    """Every param path of `model` and its shape, without allocating anything."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), dummy_input(model.config))["params"]
    return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(shapes, sep="/").items()}


def param_count(config) -> int:
    """Number of parameters of the model a config builds, without allocating it.

    ViT blocks are identical, so a ViT is counted from its 0- and 1-block versions: tracing a
    40-block model just to count it would make `vitjax models` take minutes.
    """
    count = lambda cfg: sum(math.prod(s) for s in param_shapes(build(cfg)).values())
    if not isinstance(config, ViTConfig):
        return count(config)
    stem = count(dataclasses.replace(config, depth=0))
    return stem + config.depth * (count(dataclasses.replace(config, depth=1)) - stem)


def create_model(name: str, *, key: jax.Array, image_size=None, **overrides):
    """A randomly initialised model: `model, params = create_model(name, key=jax.random.key(0))`."""
    model = build(model_config(name, image_size, **overrides))
    variables = jax.jit(model.init)(key, dummy_input(model.config))
    return model, variables["params"]


def bundled_path(spec: ModelSpec) -> str:
    """Where the weights shipped with the package for `spec` live (vitjax/pretrained/NAME/)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", spec.bundled)


def _find_checkpoint(spec: ModelSpec) -> str:
    if spec.bundled:
        path = os.path.join(bundled_path(spec), "params.safetensors")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing: this vitjax install lacks its bundled weights")
        return path
    if spec.hub is not None:
        path = find_in_hf_cache(*spec.hub)
        if path is not None:
            return path
    wanted = f"{spec.hub[1]} of the Hugging Face repo {spec.hub[0]}" if spec.hub else spec.source
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
    raise FileNotFoundError(
        f"no checkpoint given for {spec.name!r} and none found in the Hugging Face cache{offline}. "
        f"It needs {wanted or 'a checkpoint file'}: download it and pass checkpoint=PATH "
        f"(or put it in the Hugging Face cache)."
    )


def load(name: str, checkpoint: str | os.PathLike | None = None, image_size=None, **overrides):
    """`model, params = vitjax.load(name, checkpoint=None, image_size=None)`.

    name:       a timm name (with or without its tag) or an official alias; `vitjax models` lists them
    checkpoint: a file or directory in any layout the family is published in (timm, the official
                repo's, Hugging Face transformers'), or a directory written by `vitjax convert`;
                None looks in the Hugging Face cache
    image_size: run at another resolution; position parameters are resampled as the source does
    overrides:  config fields (e.g. depth, width), for checkpoints of non-standard size
    """
    spec = lookup(name)
    path = os.fspath(checkpoint) if checkpoint is not None else _find_checkpoint(spec)
    if orbax_io.is_vitjax_checkpoint(path):
        saved = orbax_io.read_metadata(path)
        if saved.get("name") not in (None, spec.name):
            raise ValueError(f"{path} was converted for {saved['name']!r}, not {spec.name!r}")
        overrides = {**saved.get("overrides", {}), **overrides}
        state = orbax_io.read(path)
    else:
        state = read_state_dict(path)
    if image_size is not None:
        overrides["image_size"] = image_size
    model = build(model_config(name, **overrides))
    hf_config = read_hf_config(path) if os.path.isdir(path) else None
    if hf_config is not None and isinstance(model.config, ViTConfig):
        hf_vit.check_config(hf_config, model.config)  # heads and activation: what shapes cannot show
    return model, convert_state(state, spec, model)


def convert_state(state: StateDict, spec: ModelSpec, model) -> dict:
    """Maps a read checkpoint onto `model`'s params (a nested dict of jax arrays), or raises."""
    layout = layouts.sniff(state.tensors, spec)
    mapped = apply_table(state.tensors, layouts.rules(layout, model.config), layout)
    if isinstance(model.config, ViTConfig):
        fit_pos_embed(mapped.params, model.config)
        fit_rel_pos_bias(mapped.params, model.config)
    check_fit(mapped, param_shapes(model), layout)
    flat = {tuple(path.split("/")): jnp.asarray(np.asarray(v, np.float32)) for path, v in mapped.params.items()}
    return traverse_util.unflatten_dict(flat)
