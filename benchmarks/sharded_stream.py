"""Peak memory of streaming a large sharded checkpoint into the probe, against the checkpoint's size.

A synthetic transformers ResNet image classifier (bottleneck, ResNet-50
depths, widths scaled by ``--width``) is built from a config (random weights),
saved with ``save_pretrained(max_shard_size=...)`` as a sharded safetensors
checkpoint, then, in a fresh interpreter, the probe is allocated and
the checkpoint streamed into it with :func:`hf_grasp.inputs.sources.stream_into`
(``safe_open``, one tensor at a time). The figure is the peak RSS while
streaming above the RSS with the probe allocated (the kernel's peak counter
``VmHWM`` is reset just before): a loader that held a second full copy would
show about the checkpoint's size.

    python benchmarks/sharded_stream.py --width 5 --shard-mb 500   # ~2.3 GB
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MAKE = """
import json, sys
from transformers import ResNetConfig, ResNetForImageClassification
a = json.loads(sys.argv[1])
w = a["width"]
config = ResNetConfig(embedding_size=64 * w, hidden_sizes=[256 * w, 512 * w, 1024 * w, 2048 * w], depths=[3, 4, 6, 3],
                      layer_type="bottleneck", num_labels=10)
ResNetForImageClassification(config).save_pretrained(a["dir"], max_shard_size=f"{a['shard_mb']}MB")
"""

STREAM = """
import json, sys
from pathlib import Path
from transformers import AutoConfig, AutoModelForImageClassification
from hf_grasp.inputs.sources import resolve, stream_into

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

source = resolve(sys.argv[1])
probe = AutoModelForImageClassification.from_config(AutoConfig.from_pretrained(sys.argv[1]))
with_probe = rss("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
stream_into(probe, source)
print(json.dumps({"with_probe": with_probe, "peak": rss("VmHWM"), "shards": len(source.weight_files),
                  "size": sum(f.stat().st_size for f in source.weight_files),
                  "largest_tensor": max(p.numel() * p.element_size() for p in probe.state_dict().values())}))
"""


def make_checkpoint(folder: Path, *, width: int, shard_mb: int) -> Path:
    """Write the synthetic sharded ResNet checkpoint to ``folder`` (in a child process: its memory is not ours)."""
    arg = json.dumps({"dir": str(folder), "width": width, "shard_mb": shard_mb})
    subprocess.run([sys.executable, "-c", MAKE, arg], check=True, capture_output=True, text=True)
    return folder


def measure(folder: Path) -> dict:
    """Stream ``folder`` into a fresh probe in a fresh interpreter; returns sizes and RSS figures in bytes."""
    proc = subprocess.run([sys.executable, "-c", STREAM, str(folder)], check=True, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["above_probe"] = out["peak"] - out["with_probe"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=5, help="Width multiplier of ResNet-50 (1: 90 MiB, 5: ~2.3 GiB).")
    p.add_argument("--shard-mb", type=int, default=500, help="save_pretrained's max_shard_size, in MB.")
    p.add_argument("--keep", type=Path, help="Write the checkpoint here and keep it (default: a temporary dir).")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="hf-grasp-sharded-") as tmp:
        folder = make_checkpoint(args.keep or Path(tmp) / "ckpt", width=args.width, shard_mb=args.shard_mb)
        m = measure(folder)
    mib = 2**20
    print("| checkpoint | shards | largest tensor | RSS with probe | peak while streaming, above it | / size |")
    print("|---|---|---|---|---|---|")
    print(f"| {m['size'] / mib:.0f} MiB | {m['shards']} | {m['largest_tensor'] / mib:.0f} MiB | "
          f"{m['with_probe'] / mib:.0f} MiB | {m['above_probe'] / mib:.0f} MiB | {m['above_probe'] / m['size']:.3f} |")


if __name__ == "__main__":
    main()
