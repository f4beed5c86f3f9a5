"""What every method runs on: the merge context (two models, the target's loaders, the step records), fine-tuning
and evaluation under accelerate, and the pure math of alignment and of the baselines."""
