"""Peak memory of `vitjax analyze` as the number of images grows: it should stay flat.

    python benchmarks/analysis_memory.py                          # 64 and 512 images, preset 'all'
    python benchmarks/analysis_memory.py --images 64 256 512 --preset registers

Each run is a fresh process (so its peak resident memory, ru_maxrss, is its own) analysing the
first N test images of a vitjax_scenes config with 512 test images (built once into a temporary
TFDS folder, or --data-dir) with the embedded ViT and ResNet. The runner holds one batch of
attention maps inside its jitted step and analyses that need all features keep preallocated,
capacity-bounded buffers, so the peak should not grow with N (finalize work such as k-means grows
with the rows actually buffered, up to the capacity). Prints, per N, the peak RSS at the end of
the pass and after finalize, the run time and the bytes of state kept between batches per model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

DATA = "vitjax_scenes/size64_train8_test512_cue1_seed0"


def child(images: int, preset: str, data_dir: str) -> None:
    from vitjax.analysis import presets, run

    peaks = {}
    finalize = run.Pass.finalize

    def finalize_noting_the_peak(self):  # the pass's own peak, before finalize's k-means and probes
        peaks["pass"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return finalize(self)

    run.Pass.finalize = finalize_noting_the_peak
    start = time.perf_counter()
    result = run.analyze(list(run.DEFAULT_MODELS), f"{DATA}:test", presets.get(preset), num_images=images,
                         data_dir=data_dir, progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    state = {subject: sum(sizes.values()) for subject, sizes in result.metrics["run"]["state_bytes"].items()}
    print(json.dumps({"images": result.metrics["run"]["images"], "peak": peak, "pass_peak": peaks["pass"],
                      "seconds": seconds, "state": state}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--preset", default="all")
    parser.add_argument("--data-dir", help="TFDS folder (default: a temporary one, built here)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child, args.preset, args.data_dir)

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data_dir or scratch
        from vitjax.data.sources import open_source

        open_source(DATA, "test", data_dir=data_dir)  # build once, outside the measured processes
        print(f"preset {args.preset}, models vit_scenes_patch8_64 + resnet_scenes_64, data {DATA}:test, "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        for images in args.images:
            command = [sys.executable, __file__, "--child", str(images), "--preset", args.preset, "--data-dir", data_dir]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(done.stderr[-3000:])
            row = json.loads(done.stdout.strip().splitlines()[-1])
            state = ", ".join(f"{subject} {count / 2**20:.1f} MiB" for subject, count in row["state"].items())
            print(f"{row['images']:6d} images: peak RSS {row['pass_peak'] / 2**20:7.1f} MiB after the pass, "
                  f"{row['peak'] / 2**20:7.1f} MiB with finalize, {row['seconds']:6.1f} s; "
                  f"state kept: {state}")


if __name__ == "__main__":
    main()
