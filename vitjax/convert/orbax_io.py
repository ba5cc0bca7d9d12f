"""vitjax's own checkpoint format: an orbax checkpoint of the params plus a small JSON of metadata.

Written by `vitjax convert` (or `save`), read back by `vitjax.load(name, checkpoint=DIR)`. The params
keep vitjax's own paths, so reading them back is the 'vitjax' layout: an identity key table, with
the same position fitting and strict shape checks as every other layout.
"""

from __future__ import annotations

import json
import os

import numpy as np
from flax import traverse_util

from vitjax.convert.read import CheckpointError, StateDict

METADATA = "vitjax.json"
PARAMS = "params"


def is_vitjax_checkpoint(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, METADATA))


def save(directory: str | os.PathLike, params, metadata: dict) -> None:
    """Writes params (a nested dict of arrays) and metadata (name, config overrides, source) atomically."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and os.listdir(directory):
        raise FileExistsError(f"{directory} exists and is not empty; choose a new --out directory")
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, PARAMS), params)
    # The metadata goes last: a directory without it is not mistaken for a finished checkpoint.
    with open(os.path.join(directory, METADATA), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)


def read_metadata(directory: str) -> dict:
    try:
        with open(os.path.join(directory, METADATA)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{directory}: unreadable {METADATA}: {error}") from None


def read(directory: str) -> StateDict:
    """The params of a vitjax checkpoint directory as a flat {path: array} state dict."""
    import orbax.checkpoint as ocp

    try:
        with ocp.StandardCheckpointer() as checkpointer:
            params = checkpointer.restore(os.path.join(directory, PARAMS))
    except Exception as error:  # orbax raises many types for a damaged directory
        raise CheckpointError(f"{directory}: cannot restore the orbax checkpoint: {error}") from None
    flat = traverse_util.flatten_dict(params, sep="/")
    return StateDict({path: np.asarray(value) for path, value in flat.items()}, "vitjax orbax checkpoint")
