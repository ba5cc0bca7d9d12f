"""Ships trained runs as the embedded default models: copies each run's params into
vitjax/pretrained/NAME/ as params.safetensors, with the run's config.json and metrics.jsonl beside
them, after checking that the run trained exactly the architecture registered under NAME.

    vitjax train experiments/scenes_vit.py --workdir runs/scenes_vit
    vitjax train experiments/scenes_resnet.py --workdir runs/scenes_resnet
    python experiments/tools/bundle_scenes_models.py vit_scenes_patch8_64=runs/scenes_vit \
        resnet_scenes_64=runs/scenes_resnet
"""

import os
import shutil
import sys

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import save_file

from vitjax.convert import orbax_io
from vitjax.load import bundled_path, load, model_config
from vitjax.models.registry import lookup

MAX_BYTES = 5 * 2**20  # the limit per shipped model


def bundle(name: str, workdir: str) -> None:
    spec = lookup(name)
    exported = os.path.join(workdir, "params")
    saved = orbax_io.read_metadata(exported)
    trained = model_config(saved["name"], **saved["overrides"])
    if trained != spec.config:
        raise SystemExit(f"{workdir} trained\n  {trained}\nbut {name} is registered as\n  {spec.config}")
    _, params = load(saved["name"], checkpoint=exported)
    flat = {"/".join(path): np.asarray(leaf, np.float32)
            for path, leaf in traverse_util.flatten_dict(jax.device_get(params)).items()}
    out = bundled_path(spec)
    os.makedirs(out, exist_ok=True)
    weights = os.path.join(out, "params.safetensors")
    save_file(flat, weights)
    if os.path.getsize(weights) > MAX_BYTES:
        raise SystemExit(f"{weights} is {os.path.getsize(weights):,} bytes, over the 5 MB limit")
    for log in ("config.json", "metrics.jsonl"):
        shutil.copy(os.path.join(workdir, log), os.path.join(out, log))
    print(f"{name}: {sum(v.size for v in flat.values()):,} params -> {weights}")


if __name__ == "__main__":
    for pair in sys.argv[1:] or ["--help"]:
        name, sep, workdir = pair.partition("=")
        if not sep:
            raise SystemExit(__doc__)
        bundle(name, workdir)
