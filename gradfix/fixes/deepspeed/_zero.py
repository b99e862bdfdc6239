"""Helpers shared by the DeepSpeed ZeRO stage 1/2 fixes. No DeepSpeed import here:
everything works on the optimizer instance handed to the wrappers."""

import types
import weakref

from gradfix import gates

TARGET = "deepspeed.runtime.zero.stage_1_and_2"
CLASS = "DeepSpeedZeroOptimizer"


def optimizer_class(module):
    cls = getattr(module, CLASS, None)
    return cls if isinstance(cls, type) else None


def own_function(module, name, *also_needed):
    """The optimizer class's own function ``name`` (unbound, for the probes), or None
    when the class, that function or any of ``also_needed`` is missing."""
    cls = optimizer_class(module)
    if cls is None or any(needed not in vars(cls) for needed in (name, *also_needed)):
        return None
    return vars(cls)[name]


def missing(*names):
    return gates.unknown(f"{CLASS}." + " or .".join(names) + " is missing")


def probe_failed(name, exc):
    return gates.unknown(f"{name} failed on the probe: {type(exc).__name__}: {exc}")


def at_boundary(optimizer) -> bool:
    """``is_gradient_accumulation_boundary``: an attribute up to 0.19.4, a method after."""
    flag = optimizer.is_gradient_accumulation_boundary
    return bool(flag() if callable(flag) else flag)


def low_precision_master(optimizer) -> bool:
    """The low-precision master-weights mode (renamed in 0.18.3)."""
    flag = getattr(optimizer, "low_precision_master_weights_and_grads", None)
    if flag is None:
        flag = getattr(optimizer, "fp16_master_weights_and_gradients", False)
    return bool(flag)


def param_argument(param, *args, **kwargs):
    return param


class MicroStepCounter:
    """Counts micro-steps (not per-parameter calls) in which a fix corrected
    something: a new micro-step is seen when ``micro_step_id`` changes."""

    def __init__(self, patcher):
        self._patcher = patcher
        self._last = weakref.WeakKeyDictionary()

    def seen(self, optimizer, corrected: bool) -> None:
        micro_step = optimizer.micro_step_id
        if self._last.get(optimizer) != micro_step:
            self._last[optimizer] = micro_step
            if corrected:
                self._patcher.hit()


def stand_in(**attributes):
    """A small object with just the attributes a probed method reads."""
    return types.SimpleNamespace(**attributes)
