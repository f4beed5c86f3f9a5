"""Peak memory of a GRASP merge, in units of P (fp32 bytes of the model's parameters).

Each measurement runs in a fresh interpreter. The floor is the RSS after the
imports, the source resolution and the target data loading; the figure is the peak RSS of the whole
merge above that floor, divided by P. The algorithm's own floor is about 4P
(model, gradients, two AdamW moments).

    python benchmarks/memory.py --arch resnet18 --k 2 8 --finetune-epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys
import psutil
import matplotlib.pyplot, transformers.models.resnet.modeling_resnet  # imports are part of the floor
from hf_grasp import GraspMerger
from hf_grasp.report import peak_rss_bytes
from hf_grasp.training import load_accuracy
load_accuracy()
args = json.loads(sys.argv[1])
# resolving the sources and loading the target data are the floor's "data"
merger = GraspMerger.from_pretrained(args["sources"], target="digits-eras", tau=0.3, eval_sources=False,
                                     initial_epochs=args["initial_epochs"], finetune_epochs=args["finetune_epochs"],
                                     lr=1e-3)
floor = psutil.Process().memory_info().rss
result = merger.merge()
print(json.dumps({"floor": floor, "peak": peak_rss_bytes(), "param_bytes": result.report.memory.param_bytes,
                  "test_accuracy": result.report.final["test"]["accuracy"]}))
"""


def measure(sources: list[str], *, initial_epochs: int, finetune_epochs: int, env: dict | None = None) -> dict:
    arg = json.dumps({"sources": sources, "initial_epochs": initial_epochs, "finetune_epochs": finetune_epochs})
    proc = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18", help="Architecture (see hf_grasp.bench.archs).")
    p.add_argument("--k", type=int, nargs="+", default=[2, 8], help="Numbers of sources to measure.")
    p.add_argument("--initial-epochs", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--mmap-threshold", type=int, default=None,
                   help="Run the children with MALLOC_MMAP_THRESHOLD_ set (glibc then returns every large "
                        "buffer to the OS when freed, at some speed cost).")
    args = p.parse_args()
    env = {"MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold)} if args.mmap_threshold else None

    from hf_grasp.bench import archs

    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for i in range(max(args.k)):
            d = Path(tmp) / f"s{i}"
            archs.new_checkpoint(args.arch, d, num_labels=10, image_size=32, seed=i)
            dirs.append(str(d))
        print(f"| K | floor MiB | peak MiB | peak - floor MiB | P MiB | (peak - floor) / P |")
        print("|---|---|---|---|---|---|")
        for k in args.k:
            m = measure(dirs[:k], initial_epochs=args.initial_epochs, finetune_epochs=args.finetune_epochs, env=env)
            mib = 2**20
            over = m["peak"] - m["floor"]
            print(f"| {k} | {m['floor'] / mib:.0f} | {m['peak'] / mib:.0f} | {over / mib:.0f} | "
                  f"{m['param_bytes'] / mib:.1f} | {over / m['param_bytes']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
