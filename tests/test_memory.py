"""Memory is flat in K: one source resident at a time, whatever the number of sources."""

from __future__ import annotations

from pathlib import Path

from conftest import last_json, run_python

PEAK = """
import json, sys
from hf_grasp import GraspMerger
from hf_grasp.output.report import peak_rss_bytes
merger = GraspMerger.from_pretrained(sys.argv[1:], target="digits-eras", initial_epochs=1, finetune_epochs=1,
                                     eval_sources=False)
# the floor: imports, the target data (preprocessed) and the resolved sources; the high-water mark restarts here
floor = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS:"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
result = merger.merge()
print(json.dumps({"floor": floor, "peak": peak_rss_bytes(), "P": result.report.memory.param_bytes}))
"""


def test_peak_rss_flat_in_k_and_bounded_in_model_sizes(checkpoints):
    # ResNet-18-sized (~11M params, P ~ 45 MB), one epoch per round: holding 16 sources at once would add 15P,
    # keeping the source's gradients beside the merged model's another P, a full set of training gradients beside
    # AdamW's two moments another P
    srcs = [str(p) for p in checkpoints("resnet18", 16, seed0=100)]
    # the lowest of three fresh processes per K: identical runs' peaks differ by up to 1.5% here (2.3% once in CI,
    # beside the other test worker), which is noise next to the 15P that holding the sources would add
    runs = {k: min((last_json(run_python(PEAK, *srcs[:k])) for _ in range(3)), key=lambda r: r["peak"])
            for k in (2, 16)}
    above = {k: (r["peak"] - r["floor"]) / r["P"] for k, r in runs.items()}
    ratio = runs[16]["peak"] / runs[2]["peak"]
    print(f"peak RSS K=2 {runs[2]['peak'] / 2**20:.0f} MiB, K=16 {runs[16]['peak'] / 2**20:.0f} MiB, "
          f"ratio {ratio:.3f}; above the floor {above[2]:.2f}P and {above[16]:.2f}P")
    assert ratio <= 1.02
    # measured 4.68P (K=2) and 4.81P (K=16), down from 5.1P / 5.5P before the AdamW moments and the idle probe
    # were packed out of the C heap and 7.9P before that: the tensors alive peak near 3.7P (the model and two
    # moments plus a batch's activations and a few gradients while training), library code paged in after the
    # floor adds ~0.55P, the heap's holes the rest (benchmarks/results/perf.md). The 4.5P goal is not met;
    # this bound catches a return of a second gradient set, of a held source file or of the heap's holes.
    assert max(above.values()) <= 5.3


FROZEN = """
import gc, json, weakref
from hf_grasp.runtime.memory import frozen_heap

gc.disable()  # only the explicit collections below

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

before = cycle()                      # garbage from before the block: frozen, so kept
with frozen_heap():
    inside_count = gc.get_freeze_count()
    during = cycle()                  # garbage made inside: still collected
    gc.collect()
    kept, collected = before() is not None, during() is None
after_count = gc.get_freeze_count()
gc.collect()
freed_later = before() is None
gc.freeze()                           # an entry point froze its imports already
frozen = gc.get_freeze_count()
earlier = cycle()                     # garbage of an earlier merge
with frozen_heap():
    gc.collect()
print(json.dumps([inside_count > 0, kept, collected, after_count, freed_later,
                  gc.get_freeze_count() == frozen, earlier() is None]))
"""


def test_frozen_heap_skips_older_objects_and_restores():
    inside, kept, collected, after, freed_later, unchanged, earlier_freed = last_json(run_python(FROZEN))
    assert inside and kept and collected
    # on leaving, the older objects are collectable again
    assert after == 0 and freed_later
    # under an entry point's freeze it freezes nothing more: an earlier merge's garbage is still collected
    assert unchanged and earlier_freed


def test_a_sharded_checkpoint_streams_without_a_second_copy(tmp_path):
    # a ResNet-50-sized checkpoint in 10 MB shards: streaming it into the probe must stay far below its size
    # above the probe (a loader holding a second full copy would add about all of it)
    import importlib.util

    spec = importlib.util.spec_from_file_location("sharded_stream", Path(__file__).parents[1] / "benchmarks" /
                                                  "sharded_stream.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    m = bench.measure(bench.make_checkpoint(tmp_path / "ckpt", width=1, shard_mb=10))
    print(f"{m['size'] / 2**20:.0f} MiB in {m['shards']} shards: {m['above_probe'] / 2**20:.1f} MiB above the probe")
    assert m["shards"] >= 8 and m["above_probe"] < 0.35 * m["size"]


def test_distill_and_soup_wise_peak_flat_in_k(checkpoints):
    # the bench's memory runs: the same fresh process per K; distill holds N x C teacher numbers, never a source
    srcs = [str(p) for p in checkpoints("resnet18", 8, seed0=100)]
    for method in ("distill", "soup-wise"):
        code = PEAK.replace('target="digits-eras",', f'target="digits-eras", method="{method}",')
        runs = {k: last_json(run_python(code, *srcs[:k])) for k in (2, 8)}  # one run each: ±1.5% against 5%
        ratio = runs[8]["peak"] / runs[2]["peak"]
        print(f"{method}: peak RSS K=2 {runs[2]['peak'] / 2**20:.0f} MiB, K=8 {runs[8]['peak'] / 2**20:.0f} MiB, "
              f"ratio {ratio:.3f}")
        assert ratio < 1.05, method
