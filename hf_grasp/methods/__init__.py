"""Merge methods behind one interface.

:mod:`.registry` names the methods (torch-free), :mod:`.catalog` declares the
built-in ones with their parameters, and each method's code is one module here
(``grasp.py``, ``task_arithmetic.py``, ...), imported when the method first runs.
:class:`~hf_grasp.engine.context.MergeContext` is what every method receives.
"""

from . import catalog  # noqa: F401  (declares the built-in methods)
from .registry import METHODS, MethodInfo, declare_method, find_method, get_method, register_method

__all__ = ["METHODS", "MethodInfo", "declare_method", "find_method", "get_method", "register_method"]
