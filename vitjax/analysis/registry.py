"""Every analysis `vitjax analyze` knows, by name, and how configured instances are made from names.

    ANALYSES['attention_distance']                       # the class
    resolve(['nmi', {'name': 'attention_distance', 'units': 'pixels'}])   # configured instances

A bare name gives the analysis with its paper defaults (named in each class's docstring); a dict
gives 'name' plus option fields. The named protocols of each paper are in presets.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from vitjax.analysis import attention, clustering, norms, probes, similarity, spectral
from vitjax.analysis.base import Analysis, PairAnalysis

MODULES = (attention, similarity, spectral, clustering, norms, probes)


def _collect() -> dict[str, type]:
    found: dict[str, type] = {}
    for module in MODULES:
        for export in module.__all__:
            cls = getattr(module, export)
            if isinstance(cls, type) and issubclass(cls, (Analysis, PairAnalysis)) and "name" in vars(cls):
                if cls.name in found and found[cls.name] is not cls:
                    raise RuntimeError(f"two analyses are named {cls.name!r}: {found[cls.name]} and {cls}")
                found[cls.name] = cls
    return dict(sorted(found.items()))


ANALYSES: dict[str, type] = _collect()


def lookup(name: str) -> type:
    """The analysis class registered as `name`; an unknown name lists the known ones."""
    if name not in ANALYSES:
        raise ValueError(f"unknown analysis {name!r}; known analyses: {', '.join(ANALYSES)}")
    return ANALYSES[name]


def options(cls: type) -> list[str]:
    """The option fields of an analysis class."""
    return [f.name for f in dataclasses.fields(cls)]


def make(entry: str | Mapping) -> Analysis:
    """One configured analysis from a name or a {'name': ..., option: value} mapping."""
    if isinstance(entry, str):
        return lookup(entry)()
    fields = dict(entry)
    if "name" not in fields:
        raise ValueError(f"an analysis entry needs a 'name': {fields}")
    cls = lookup(fields.pop("name"))
    unknown = sorted(set(fields) - set(options(cls)))
    if unknown:
        raise ValueError(f"analysis {cls.name!r} has no option(s) {unknown}; its options: {', '.join(options(cls))}")
    return cls(**fields)


def resolve(entries: Iterable[str | Mapping]) -> list[Analysis]:
    """Configured analyses from names or mappings; a comma-separated string is split."""
    if isinstance(entries, str):
        entries = [part.strip() for part in entries.split(",") if part.strip()]
    return [make(entry) for entry in entries]
