"""Merge methods behind one interface.

Every module in this package registers its methods with ``@register_method``
when imported; importing the package imports them all, so a new method is one
new module and nothing else.
"""

import importlib
import pkgutil

from .base import METHODS, MergeContext, MethodInfo, get_method, register_method

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "MergeContext", "MethodInfo", "get_method", "register_method"]
