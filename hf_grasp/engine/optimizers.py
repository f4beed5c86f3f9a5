"""The fine-tuning optimizer, named as transformers' ``TrainingArguments.optim`` names it.

``adamw_torch`` is the released code's ``torch.optim.AdamW`` (fused where the device has the kernel). The others
come from transformers' own mapping (``Trainer.get_optimizer_cls_and_kwargs``: Adafactor at a fixed rate, SGD,
bitsandbytes' 8-bit AdamW), so a name means here what it means to a ``Trainer``. Weight decay applies to every
parameter, as in the released code (``Trainer`` exempts biases and norms).
"""

from __future__ import annotations

import functools
import tempfile
import torch

from ..runtime.errors import GraspError, flag

#: the released code's optimizer, the default
DEFAULT_OPTIM = "adamw_torch"


def make_optimizer(name: str, params: list[torch.Tensor], *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``params`` at ``lr`` and ``weight_decay``."""
    if name == DEFAULT_OPTIM:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=has_fused_adamw(params))
    cls, kwargs = _transformers_optimizer(name, lr)
    return cls(params, weight_decay=weight_decay, **kwargs)


def _transformers_optimizer(name: str, lr: float) -> tuple[type, dict]:
    """transformers' class and keyword arguments for ``TrainingArguments(optim=name)``."""
    from accelerate.state import is_initialized
    from transformers import Trainer, TrainingArguments

    # use_configured_state: TrainingArguments otherwise resets accelerate's process state, which the merge's
    # Accelerator holds (it refuses that setting when there is none yet); output_dir: required, nothing is
    # written there
    kept = {"accelerator_config": {"use_configured_state": True}} if is_initialized() else {}
    with tempfile.TemporaryDirectory() as nowhere:
        args = TrainingArguments(output_dir=nowhere, optim=name, learning_rate=lr, report_to="none", **kept)
    try:
        return Trainer.get_optimizer_cls_and_kwargs(args)
    except (ImportError, ValueError) as e:
        extra = " (pip install 'hf-grasp[lowmem]')" if "bitsandbytes" in str(e) else ""
        raise GraspError(f"{flag('optim', name)}: {str(e).splitlines()[0]}{extra}") from e


def has_fused_adamw(params: list[torch.Tensor]) -> bool:
    """Whether PyTorch's fused AdamW kernel takes these parameters (floating point, on a CPU or CUDA-like device)."""
    return all(p.is_floating_point() and _fused_adamw_runs(p.device, p.dtype) for p in params)


@functools.cache
def _fused_adamw_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether one fused AdamW step runs on a parameter of this device and dtype. torch lists the devices with the
    kernel only in a private function; the public optimizer is asked instead (once per device and dtype: it
    refuses an unsupported one with a RuntimeError at its first step)."""
    p = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
    p.grad = torch.zeros_like(p)
    try:
        torch.optim.AdamW([p], fused=True).step()
    except RuntimeError:
        return False
    return True
