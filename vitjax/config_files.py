"""Python config files (experiments/*.py): running one, reading one into an options dataclass, and
the NAME[:CHECKPOINT] and DATASET[:SPLIT] specs that configs and command lines name models and data by.

A config file defines `get_config()` returning an ml_collections.ConfigDict (big_vision's style),
and its docstring holds the command that runs it. `vitjax train` merges it into the trainer's
defaults (vitjax/train/config.py); `vitjax analyze` and the curvature commands read it here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import ml_collections


def run_config_file(path: str) -> ml_collections.ConfigDict:
    """The ConfigDict that `get_config()` of the Python file at `path` returns."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config file {path}")
    spec = importlib.util.spec_from_file_location("vitjax_run_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config() returning an ml_collections.ConfigDict")
    return module.get_config()


def options_from(options_class, config_file: str | None, overrides: dict):
    """An `options_class` dataclass: its defaults, then the config file's entries, then `overrides`
    (command-line values; None means not given). An unknown key is an error naming the known ones."""
    values = {}
    if config_file:
        config = run_config_file(config_file)
        values.update(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(options_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; known: {sorted(known)}")
    if "models" in values:
        values["models"] = tuple(values["models"])
    return options_class(**values)


def parse_model(text: str) -> tuple[str, str | None]:
    """'NAME[:CHECKPOINT]' -> (name, checkpoint or None)."""
    name, sep, checkpoint = text.partition(":")
    if not name or (sep and not checkpoint):
        raise ValueError(f"--model takes NAME[:CHECKPOINT], got {text!r}")
    return name, checkpoint or None


def parse_data(text: str, default_split: str | None = "test") -> tuple[str, str | None]:
    """'DATASET[:SPLIT]' -> (dataset, split); 'folder:/path[:SPLIT]' keeps its prefix."""
    from vitjax.data.sources import FOLDER_PREFIX

    if text.startswith(FOLDER_PREFIX):
        path, sep, split = text[len(FOLDER_PREFIX):].partition(":")
        return FOLDER_PREFIX + path, split if sep else None
    dataset, sep, split = text.partition(":")
    return dataset, split if sep else default_split
