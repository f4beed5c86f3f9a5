"""hf_grasp: merge many fine-tuned models into one with GRASP.

Public API::

    from hf_grasp import GraspMerger
    merger = GraspMerger.from_pretrained(["org/m1", "org/m2@v1"], target="digits-eras", tau=0.3)
    result = merger.merge()
    result.save_pretrained("merged/")
"""

from .runtime.errors import GraspError

__version__ = "0.1.0"
__all__ = ["GraspMerger", "MergeResult", "MergeReport", "MergeOptions", "MergePlan", "GraspError", "register_method",
           "__version__"]

# Heavy imports (torch, transformers, datasets) wait until the API is used, so
# `hf-grasp --help` and the pure-math modules stay quick to import.
_LAZY = {"GraspMerger": "merger", "MergeResult": "merger", "MergeReport": "output.report",
         "MergeOptions": "plan.options", "MergePlan": "plan.plan", "register_method": "methods"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
