"""ds-output-hooks-engine-backward: ``engine.backward(loss)`` divides the gradient by
gradient_accumulation_steps (GA) once per tensor the model returned on its path
(DeepSpeed 0.18.3-0.19.5).

From 0.18.3 the 1/GA of engine.backward lives in a hook on every tensor that
``engine.forward`` returns. A transformers model called with ``labels`` returns
``loss`` and ``logits``, and ``loss`` is computed from ``logits``: the model's
gradient is divided by GA twice (1/GA^2), and three times for ``(loss, logits,
hidden)``. A part of the loss computed outside ``engine.forward`` (a second forward
of ``engine.module``) is not divided at all.

The first fixed release (0.19.6) divides the whole loss once in ``backward()`` when
``scale_wrt_gas`` is on, and the output hooks leave the gradients of that backward
alone. The fix does the same: it hands backward() the loss divided by GA and makes
the output hooks pass gradients through while that backward runs. It returns what
0.19.6 returns (the loss divided by GA, or the loss itself with
``scale_wrt_gas=False``). Pipeline engines are left alone (ds-pipeline-ga-scale).
"""

from . import _output_hooks
from ._output_hooks import ENGINE, ENGINE_BACKWARDS, HOOK

TARGET = "deepspeed.runtime.engine"
REPLACES = (f"{ENGINE}.backward", f"{ENGINE}.{HOOK}")
HITS = "engine.backward() calls with gradient_accumulation_steps > 1"
UNREACHED = "no engine.backward() ran with gradient_accumulation_steps > 1 outside a pipeline"


def probe(module):
    return _output_hooks.probe(module, through_engine_backward=True, subject="engine.backward()",
                               before_hooks="backward() divides the loss itself")


def apply(module, patcher):
    cls = _output_hooks.engine_class(module)

    def scale_loss_once(wrapped, engine, args, kwargs):
        ga = engine.gradient_accumulation_steps()
        if ga == 1 or _output_hooks.is_pipeline(engine):
            return wrapped(*args, **kwargs)
        loss, retain_graph, scale_wrt_gas = _output_hooks.backward_arguments(*args, **kwargs)
        scaled = loss / ga if scale_wrt_gas else loss
        with ENGINE_BACKWARDS:
            # The original's own return value divides once more (it is only a return
            # value there); 0.19.6 returns the loss divided once.
            wrapped(scaled, retain_graph=retain_graph, scale_wrt_gas=scale_wrt_gas)
        patcher.hit()
        return scaled

    def pass_through_inside_engine_backward(wrapped, engine, args, kwargs):
        if ENGINE_BACKWARDS.running and not _output_hooks.is_pipeline(engine):
            return args[0] if args else kwargs.get("grad")
        return wrapped(*args, **kwargs)

    patcher.wrap(cls, "backward", scale_loss_once)
    patcher.wrap(cls, HOOK, pass_through_inside_engine_backward)
