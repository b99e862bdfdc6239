"""ds-output-hooks-direct-backward: a direct ``loss.backward()`` on a DeepSpeed ZeRO
engine divides the gradient by gradient_accumulation_steps (GA) once per tensor the
model returned on its path, and not at all where the loss did not come out of
``engine.forward`` (DeepSpeed 0.18.3 and later; no release fixes it).

0.18.3 made ``loss.backward()`` legal on ZeRO-1/2/3 engines and does its 1/GA in a
hook on every tensor ``engine.forward`` returns. A transformers model called with
``labels`` returns ``loss`` computed from ``logits``, so its gradient is divided
twice (1/GA^2); ``(loss, logits, hidden)`` divides the first layers three times; a
shared loss (a second forward of ``engine.module``) adds an undivided part. 0.19.6
corrected ``engine.backward()`` only.

The fix divides where every path ends, once: a hook on each trainable parameter of
the engine's module divides the gradient a direct backward brings by GA, and the
output hooks pass gradients through during direct backwards. ``engine.backward()``
calls are left to DeepSpeed (and to ds-output-hooks-engine-backward before 0.19.6).
The result is what ``engine.backward()`` computes on 0.19.6 for the same loss, for
every output shape (in fp32 up to the rounding of dividing at the parameters
instead of at the loss). Pipeline engines and engines without a ZeRO optimizer
(which refuse direct backwards) are left alone.
"""

import weakref

from . import _output_hooks
from ._output_hooks import ENGINE, ENGINE_BACKWARDS, HOOK

TARGET = "deepspeed.runtime.engine"
REPLACES = (f"{ENGINE}.forward", f"{ENGINE}.backward", f"{ENGINE}.{HOOK}")
HITS = "direct backward passes with gradient_accumulation_steps > 1"
UNREACHED = "no direct loss.backward() ran on a ZeRO engine with gradient_accumulation_steps > 1"


def probe(module):
    return _output_hooks.probe(module, through_engine_backward=False, subject="a direct backward",
                               before_hooks="direct loss.backward() is not supported")


def _takes_direct_backward(engine) -> bool:
    return bool(getattr(engine, "_support_torch_style_backward", False)) and not _output_hooks.is_pipeline(engine)


class _ParameterHooks:
    """The per-parameter division of each engine this patch has seen run forward."""

    def __init__(self, patcher):
        self._patcher = patcher
        self._engines = weakref.WeakKeyDictionary()  # engine -> hook handles
        self._counted = set()  # ids of autograd graph tasks already counted as a hit

    def covers(self, engine) -> bool:
        return engine in self._engines

    def install(self, engine):
        if engine in self._engines or not _takes_direct_backward(engine):
            return
        engine_ref = weakref.ref(engine)
        handles = [p.register_hook(lambda grad, ref=engine_ref: self._divide(ref(), grad))
                   for p in engine.module.parameters() if p.requires_grad]
        self._engines[engine] = handles

    def _divide(self, engine, grad):
        if engine is None or grad is None or ENGINE_BACKWARDS.running or not self._patcher.locations:
            return grad  # engine.backward() scales its own graph; a reverted patch does nothing
        ga = engine.gradient_accumulation_steps()
        if ga == 1:
            return grad
        self._count_backward_pass()
        return grad / ga

    def _count_backward_pass(self):
        import torch

        task = torch._C._current_graph_task_id() if hasattr(torch._C, "_current_graph_task_id") else -1
        if task == -1 or task not in self._counted:
            self._counted = {task}  # only the latest task: nothing grows over a long run
            self._patcher.hit()


def apply(module, patcher):
    cls = _output_hooks.engine_class(module)
    parameter_hooks = _ParameterHooks(patcher)

    def divide_at_parameters(wrapped, engine, args, kwargs):
        parameter_hooks.install(engine)
        return wrapped(*args, **kwargs)

    def count_engine_backward(wrapped, engine, args, kwargs):
        with ENGINE_BACKWARDS:
            return wrapped(*args, **kwargs)

    def pass_through_direct_backward(wrapped, engine, args, kwargs):
        if not ENGINE_BACKWARDS.running and parameter_hooks.covers(engine):
            return args[0] if args else kwargs.get("grad")  # divided at the parameters
        return wrapped(*args, **kwargs)

    patcher.wrap(cls, "forward", divide_at_parameters)
    patcher.wrap(cls, "backward", count_engine_backward)
    patcher.wrap(cls, HOOK, pass_through_direct_backward)
