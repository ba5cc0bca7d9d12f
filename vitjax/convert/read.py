"""Reading public checkpoint files into a flat ``{name: numpy array}`` dict, without running their code.

Formats are recognised by their bytes, not their file names (MoCo v3 ships ``.pth.tar``, OpenAI CLIP
ships TorchScript as ``.pt``). Every problem is a `CheckpointError` that names the file, and nothing
is returned until the whole file has been read. Half floats (bf16, fp16) become float32 because the
analyses compute in float32; integer buffers keep their dtype.
"""

import argparse
import json
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

_HALF_FLOATS = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
# What `transformers`' save_pretrained writes, in the order transformers itself prefers them.
_HF_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
             "pytorch_model.bin.index.json")
# Entries that wrap the real state dict in training checkpoints, in order of preference. DINO-style
# checkpoints hold both 'student' and 'teacher'; the official evaluation code uses the teacher.
_WRAPPERS = ("teacher", "model", "state_dict", "module")


class CheckpointError(ValueError):
    """A checkpoint could not be read; the message names the file and what is wrong with it."""


@dataclass
class StateDict:
    """The tensors of a checkpoint, what container held them, and what unwrapping did to them."""

    tensors: dict[str, np.ndarray]
    container: str
    notes: list[str] = field(default_factory=list)


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Read a torch pickle, TorchScript archive, safetensors, .npz file or Hugging Face directory.

    The result is already unwrapped (see `unwrap`), so keys are those of the bare model.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or directory")
    raw, container = _read_hf_directory(path) if os.path.isdir(path) else _read_file(path)
    tensors, notes = unwrap(raw, where=path)
    return StateDict(tensors, container, notes)


def read_hf_config(directory: str | os.PathLike) -> dict | None:
    """The config.json of a Hugging Face save_pretrained directory, or None if it has none."""
    file = os.path.join(os.fspath(directory), "config.json")
    return _load_json(file) if os.path.isfile(file) else None


def find_in_hf_cache(repo_id: str, filename: str, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The local path of `filename` from `repo_id` if the Hugging Face cache holds it, else None.

    Never downloads. `cache_dir=None` means huggingface_hub's default, which follows HF_HUB_CACHE and
    HF_HOME as they were when huggingface_hub was imported.
    """
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) else None  # the other non-None answer: "known missing"


def unwrap(state: Mapping, where: str = "state dict") -> tuple[dict[str, np.ndarray], list[str]]:
    """Dig the model's tensors out of a training checkpoint; return them and notes saying how.

    Descends into the first of 'teacher', 'model', 'state_dict', 'module' that holds a mapping,
    drops non-tensor entries (epoch, args, optimizer...), then applies the prefix rules of the
    official evaluation code: MoCo v3 keeps only 'module.base_encoder.*' minus its projection
    'head.*'; a DINO-style teacher keeps only 'backbone.*'; 'module.' and 'backbone.' are stripped
    when every key has them. Each note is one sentence; a plain state dict gets no notes.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: holds a {type(state).__name__}, not a state dict of named tensors")
    notes, picked = [], None
    while (key := next((k for k in _WRAPPERS if isinstance(state.get(k), Mapping)), None)) is not None:
        others = [k for k in state if k != key]
        notes.append(f"took the {key!r} entry" + (f", ignoring {_names(others)}" if others else ""))
        state, picked = state[key], key
    if not state:
        raise CheckpointError(f"{where}: the state dict is empty")
    tensors = {k: v for k, v in state.items() if _is_tensor(v)}
    if not tensors:
        raise CheckpointError(f"{where}: holds no tensors, only {_names(list(state))}")
    if skipped := [k for k in state if k not in tensors]:
        notes.append(f"ignored non-tensor entries {_names(skipped)}")

    if any(k.startswith("module.base_encoder.") for k in tensors):
        tensors = _select(tensors, "module.base_encoder.", notes, but="head.",
                          why="MoCo v3: the momentum encoder, predictor and projection head only serve training")
    tensors = _strip_if_everywhere(tensors, "module.", notes)
    if picked == "teacher" and any(k.startswith("backbone.") for k in tensors):
        tensors = _select(tensors, "backbone.", notes, why="DINO-style: the projection heads only serve training")
    tensors = _strip_if_everywhere(tensors, "backbone.", notes)
    return {k: _to_numpy(v) for k, v in tensors.items()}, notes


def _select(tensors, prefix, notes, why, but=None):
    """Keep the keys under `prefix`, except those under `prefix + but`, and strip the prefix."""
    dropped = [k for k in tensors if not k.startswith(prefix) or (but and k.startswith(prefix + but))]
    if not dropped:
        return _strip_if_everywhere(tensors, prefix, notes)
    depth = prefix.count(".")  # name what was dropped by as many dotted parts as `prefix` has
    groups = sorted({".".join(k.split(".")[: depth + k.startswith(prefix)]) + ".*" for k in dropped})
    notes.append(f"kept the {len(tensors) - len(dropped)} tensors under {prefix!r} without that prefix, "
                 f"dropping {len(dropped)} under {_names(groups)} ({why})")
    dropped = set(dropped)
    return {k[len(prefix):]: v for k, v in tensors.items() if k not in dropped}


def _strip_if_everywhere(tensors, prefix, notes):
    if not all(k.startswith(prefix) for k in tensors):
        return tensors
    notes.append(f"stripped the {prefix!r} prefix from every key")
    return {k[len(prefix):]: v for k, v in tensors.items()}


def _names(keys, shown=8):
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(repr(k) for k in keys[:shown]) + more


def _is_tensor(value):
    torch = sys.modules.get("torch")  # a torch tensor can only exist if torch was imported
    return isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor))


def _to_numpy(value):
    if not isinstance(value, np.ndarray):  # a torch tensor; numpy has no bf16, so widen in torch
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() and value.element_size() < 4 else value).numpy()
    return value.astype(np.float32) if value.dtype in _HALF_FLOATS else value


def _read_file(path):
    """Sniff the format from the first bytes and read the file into a (possibly nested) dict."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be opened: {e.strerror}") from e
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = [n.rsplit("/", 1)[-1] for n in z.namelist()]
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{path}: a damaged zip archive, probably a truncated download ({e})") from e
        if names and all(n.endswith(".npy") for n in names):
            return _read_npz(path), "numpy .npz"
        if "constants.pkl" in names:
            return _read_torchscript(path), "TorchScript archive"
        if "data.pkl" in names:
            return _torch_load(path), "torch pickle"
        raise CheckpointError(f"{path}: a zip archive, but not a torch checkpoint, TorchScript archive or .npz")
    if head.startswith(b"\x80"):  # a pickle protocol marker: torch.save's pre-1.6 format
        return _torch_load(path), "torch pickle (legacy format)"
    # safetensors: a little-endian u64 JSON header size (at most 100 MB), then the JSON. The size
    # is not checked against the file's, so a truncated file is reported as such by safetensors.
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= 100_000_000:
        return _read_safetensors(path), "safetensors"
    raise CheckpointError(f"{path}: not a checkpoint (not a torch pickle, TorchScript archive, safetensors "
                          f"or .npz file); it starts with {head[:8]!r}")


def _import_torch(path):
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f'{path}: reading this format needs PyTorch: pip install "vitjax[torch]"') from e
    return torch


def _torch_load(path):
    torch = _import_torch(path)
    # Training checkpoints of DINO, MAE, MoCo v3 and DeiT store their argparse.Namespace as 'args'.
    # Allowing it runs no file-supplied code: Namespace defines no __reduce__ or __setstate__, so the
    # weights-only unpickler builds it with object.__new__ and fills its __dict__, and a REDUCE call
    # Namespace(*args) rejects positional arguments. Its attribute values stay under the same limits.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise _unreadable(path, "torch pickle", e) from e
        blocked = re.search(r"GLOBAL (\S+)", str(e))
        what = f"it references {blocked.group(1)}" if blocked else str(e).strip().splitlines()[-1]
        raise CheckpointError(
            f"{path}: refuses to unpickle code: {what}, which loading with weights_only=True does not "
            "allow. If the file is a whole pickled model and you trust it, load it in PyTorch yourself "
            "and torch.save its state_dict()") from None
    except Exception as e:
        raise _unreadable(path, "torch pickle", e) from e


def _read_torchscript(path):
    torch = _import_torch(path)
    # OpenAI CLIP's .pt files are TorchScript archives, and torch.jit.load is the only way to read
    # them. It never runs Python pickle code: TorchScript's own unpickler resolves no Python globals,
    # and the archive's code is TorchScript (no Python imports or builtins), compiled but never run
    # beyond its __setstate__ methods; forward is never called. Still, read archives you trust.
    try:
        with warnings.catch_warnings():  # torch deprecates TorchScript, but these files are TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(path, map_location="cpu").state_dict()
    except Exception as e:
        raise _unreadable(path, "TorchScript archive", e) from e


def _read_safetensors(path):
    from safetensors.numpy import load_file  # gives ml_dtypes.bfloat16 arrays for bf16

    try:
        return load_file(path)
    except Exception as e:
        raise _unreadable(path, "safetensors file", e) from e


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except Exception as e:
        raise _unreadable(path, ".npz file", e) from e


def _unreadable(path, kind, error):
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return CheckpointError(f"{path}: this {kind} is truncated or corrupted: {detail}")


def _read_hf_directory(path):
    """Read a transformers save_pretrained directory, one file or all shards of an index."""
    name = next((n for n in _HF_FILES if os.path.isfile(os.path.join(path, n))), None)
    if name is None:
        raise CheckpointError(f"{path}: a directory, but not a Hugging Face save_pretrained directory: "
                              f"it has none of {', '.join(_HF_FILES)}")
    if not name.endswith(".index.json"):
        return _read_file(os.path.join(path, name))[0], f"Hugging Face directory ({name})"
    index = _load_json(os.path.join(path, name))
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{os.path.join(path, name)}: has no 'weight_map' naming the shards")
    shards = sorted(set(weight_map.values()))
    state = {}
    for shard in shards:
        state.update(_read_file(os.path.join(path, shard))[0])
    if missing := sorted(set(weight_map) - set(state)):
        raise CheckpointError(f"{path}: the shards lack tensors that {name} lists: {_names(missing)}")
    return state, f"Hugging Face directory ({len(shards)} shards listed in {name})"


def _load_json(file):
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not readable JSON: {e}") from e
