"""Merge methods behind one interface; importing this package registers them."""

from .base import METHODS, MergeContext, MethodInfo, get_method, register_method
from . import ablations, grasp  # noqa: F401  (importing registers the methods)

__all__ = ["METHODS", "MergeContext", "MethodInfo", "get_method", "register_method"]
