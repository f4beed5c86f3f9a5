"""The benchmark harness: the built-in offline dataset, its sources, and ``hf-grasp bench``.

One module per job; import the one you need (this package imports nothing, so
looking up the built-in dataset through its entry point stays light):

- :mod:`.digits_eras`: the built-in dataset ``digits-eras`` (offered to
  :mod:`hf_grasp.inputs.data` through the ``hf_grasp.datasets`` entry-point group);
- :mod:`.archs`: small built-in architectures as Hub-format checkpoints;
- :mod:`.hub_cache`: ``publish_to_cache``, a folder into the local HF cache;
- :mod:`.make_sources`: ``hf-grasp make-sources``;
- :mod:`.demo`: ``hf-grasp demo``;
- :mod:`.runner`: ``hf-grasp bench``: the runs, workers, resume, memory runs;
- :mod:`.summary`: tables, claims, plots and the CSV, from result rows alone.
"""
