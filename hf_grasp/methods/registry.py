"""The registry that names merge methods: what each is, what it takes, where its code lives.

Torch-free on purpose: the command line reads every method's name, paper and
parameters to build ``hf-grasp merge --help`` without importing a model
library. A method's code is imported the first time :func:`get_method` hands
it out.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..plan.options import MethodParams, NoParams, method_info

if TYPE_CHECKING:
    from ..engine.context import MergeContext


@dataclass
class MethodInfo:
    """A registered merge method: how the card, the help and the engine know it.

    ``fn`` is the function ``fn(ctx: MergeContext) -> None`` leaving the result
    in ``ctx.merged`` (or ``ctx.artifact``); ``impl`` names it as
    ``"module:function"`` until it is first needed. ``params``: the pydantic
    model of the method's own parameters (``--density`` for TIES, ...).
    ``parameter_space``: the result is one model whose parameters were merged
    (``--recalibrate-bn`` applies). ``needs_base``: the method works on task
    vectors relative to ``--base``. ``reads_across_sources``: it reads one tensor
    of every source at a time, so all K sources' files must be on disk together
    (no ``--evict-sources``). ``sequential``: it merges source by source through
    :class:`~hf_grasp.engine.context.MergeContext`'s steps, so a run can be
    resumed after each step (``--resume``) and an earlier merge of it continued
    with more sources (``--init org/merged``). ``multi_process``: it gives the
    same result when launched on several processes (``accelerate launch``,
    ``torchrun``); a method without it refuses such a launch (the default: a method is trusted with several
    processes only once it says so). ``extra``: the optional extra its code needs
    (:data:`hf_grasp.runtime.extras.EXTRAS`), checked before it is imported. ``label``: the short name tables
    use ("GRASP", "TIES"); ``description``: how it merges, in a sentence or two, for the card.
    """

    name: str
    pretty_name: str
    label: str
    description: str
    params: type[MethodParams] = NoParams
    paper: str | None = None
    parameter_space: bool = True
    needs_base: bool = False
    reads_across_sources: bool = False
    sequential: bool = False
    multi_process: bool = False
    extra: str | None = None
    fn: Callable[["MergeContext"], None] | None = None
    impl: str | None = None

    def load(self) -> "MethodInfo":
        """Import the method's code if it has not been imported yet; returns ``self``."""
        if self.fn is None:
            self.require_extra()
            module, _, attr = (self.impl or "").partition(":")
            self.fn = getattr(importlib.import_module(module), attr)
        return self

    def require_extra(self) -> None:
        """One error line naming the extra to install when the method's optional extra is missing."""
        if self.extra:
            from ..runtime.extras import require

            require(self.extra, f"merge method {self.name!r}")

    @property
    def is_grasp(self) -> bool:
        """GRASP or one of its gated variants (the card explains alignment and τ only for these)."""
        from .catalog import GraspParams

        return issubclass(self.params, GraspParams)


METHODS: dict[str, MethodInfo] = {}


def declare_method(info: MethodInfo) -> MethodInfo:
    """Add ``info`` to :data:`METHODS` (a later declaration of the same name replaces it)."""
    METHODS[info.name] = info
    return info


def register_method(name: str, *, params: type[MethodParams] = NoParams, pretty_name: str | None = None,
                    label: str | None = None, description: str = "", paper: str | None = None,
                    parameter_space: bool = True, needs_base: bool = False, reads_across_sources: bool = False,
                    sequential: bool = False, multi_process: bool = False, extra: str | None = None):
    """Decorator registering ``fn(ctx)`` as merge method ``name`` with its own ``params`` model.

    Every capability flag of :class:`MethodInfo` can be declared; the defaults are the safe ones: not
    ``sequential`` (no ``--resume``, no continuing with ``--init``), not ``multi_process`` (a launch on several
    processes is refused), the result one model of merged parameters.

    The way a method from outside hf_grasp plugs in::

        class MyParams(MethodParams):
            strength: float = option(0.5, "How hard to pull.", gt=0)

        @register_method("mine", params=MyParams, paper="https://...")
        def mine(ctx):
            ...  # ctx.params.strength
    """

    def wrap(fn):
        declare_method(MethodInfo(name, pretty_name or name, label or name, description, params, paper,
                                  parameter_space=parameter_space, needs_base=needs_base,
                                  reads_across_sources=reads_across_sources, sequential=sequential,
                                  multi_process=multi_process, extra=extra, fn=fn))
        return fn

    return wrap


def find_method(name: str) -> MethodInfo:
    """The registered method ``name`` (its code not imported); :class:`GraspError` listing the names if unknown."""
    return method_info(name, METHODS)


def get_method(name: str) -> MethodInfo:
    """The registered method ``name`` with its code imported, ready to run."""
    return find_method(name).load()
