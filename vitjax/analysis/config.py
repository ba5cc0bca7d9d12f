"""Analysis run configs: Python files with `get_config()` (experiments/*/*.py), as training configs are.

    config.models = ["vit_base_patch16_224.dino:/ckpt/dino_vitbase16_pretrain.pth"]  # NAME[:CHECKPOINT]
    config.data = "imagenet2012:validation"     # DATASET[:SPLIT]
    config.preset = "teaching_matters"          # or '' and a list in config.analyses
    config.analyses = [dict(name="attention_distance", units="pixels"), "nmi"]

Keys (all optional; `vitjax analyze` flags override them): models, data, data_dir, preset,
analyses (names, or dicts of a name and options), batch_size, num_images (None: the whole split).
"""

from __future__ import annotations

from typing import Any

KEYS = {"models": None, "data": None, "data_dir": None, "preset": None, "analyses": None,
        "batch_size": 32, "num_images": None}


def defaults() -> dict[str, Any]:
    return dict(KEYS)


def load(path: str) -> dict[str, Any]:
    """The settings of config file `path` on top of `defaults()`; an unknown key is an error."""
    from vitjax.config_files import run_config_file

    user = run_config_file(str(path))
    user = user.to_dict() if hasattr(user, "to_dict") else dict(user)
    unknown = sorted(set(user) - set(KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; an analysis config has {', '.join(KEYS)}")
    settings = defaults()
    settings.update(user)
    return settings


def analyses_of(settings: dict[str, Any]) -> tuple[list, bool]:
    """The configured analyses a run's settings ask for, and whether the user named them.

    `analyses` alone: those; `preset` alone: the preset's; both: the preset's instances of the named
    analyses (its options), plus default instances of names the preset lacks; neither: preset 'all'.
    """
    from vitjax.analysis import presets, registry

    named = settings.get("analyses")
    if isinstance(named, str):
        named = [part.strip() for part in named.split(",") if part.strip()]
    preset = presets.get(settings["preset"]) if settings.get("preset") else None
    if not named:
        return preset if preset is not None else presets.get("all"), False
    chosen = registry.resolve(named)
    if preset is not None:
        wanted = {a.name for a in chosen}
        from_preset = [a for a in preset if a.name in wanted]
        covered = {a.name for a in from_preset}
        chosen = from_preset + [a for a in chosen if a.name not in covered]
    return chosen, True
