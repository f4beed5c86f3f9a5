"""The applications built on the library: the ``hf-grasp`` command line, the benchmark and the Space."""
