"""What every stage relies on: errors, optional extras, progress and logging, signals, the launch, the output
directory and scratch space, phase timing and memory housekeeping. Imports nothing else of hf_grasp."""
