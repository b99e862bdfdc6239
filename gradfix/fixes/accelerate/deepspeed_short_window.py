"""accelerate-deepspeed-short-window: under DeepSpeed, accelerate lets the engine count
micro-batches itself, so an accumulation window that ends early is never stepped
(accelerate < 1.8.0).

``DeepSpeedEngineWrapper.backward`` calls ``engine.backward`` and ``engine.step`` on
every micro-batch, and the engine steps whenever its own micro-batch counter reaches
gradient_accumulation_steps. When an epoch's micro-batches are not a multiple of GA,
Trainer (and ``accelerator.accumulate``) end the epoch with a short window and expect
an optimizer step there; the engine does not step, keeps those gradients for the next
window, and counts every later window of the run out of line with the trainer's.
1.8.0 tells the engine where each window ends with
``engine.set_gradient_accumulation_boundary(sync_gradients)``.

The fix does the same before each backward, but only once the run manages
``sync_gradients`` itself (Trainer or ``accelerator.accumulate`` set it through
``GradientState._set_sync_gradients``). A script that calls backward without
either keeps the engine's own count, as it relies on it.
"""

from gradfix import gates
from gradfix.fixes._code import method_source

TARGET = "accelerate.utils.deepspeed"
HITS = "micro-batches whose window end the engine's own count placed differently from the trainer's"
UNREACHED = "no DeepSpeed backward ran where the engine's count and the trainer's windows disagreed"
MANAGED = "_gradfix_sync_managed"  # on GradientState's shared state: someone sets sync_gradients per micro-batch


def probe(module):
    source = method_source(getattr(module, "DeepSpeedEngineWrapper", None), "backward")
    if isinstance(source, gates.Probe):
        return source
    if "set_gradient_accumulation_boundary" in source:
        return gates.fixed("backward tells the engine where each accumulation window ends")
    if "self.engine.backward(loss" in source and "self.engine.step()" in source:
        return gates.buggy("the engine decides the accumulation windows by its own micro-batch count")
    return gates.unknown("DeepSpeedEngineWrapper.backward is neither the known buggy nor the fixed code")


def _counted_boundary(engine):
    """Where the engine's own count would put the window's end (DeepSpeed's rule)."""
    return (engine.micro_steps + 1) % engine.gradient_accumulation_steps() == 0


def apply(module, patcher):
    from accelerate import state as state_module

    def note_managed(wrapped, gradient_state, args, kwargs):
        setattr(gradient_state, MANAGED, True)
        return wrapped(*args, **kwargs)

    def set_window_end(wrapped, wrapper, args, kwargs):
        gradient_state = state_module.GradientState()
        engine = getattr(wrapper, "engine", None)
        if getattr(gradient_state, MANAGED, False) and hasattr(engine, "set_gradient_accumulation_boundary"):
            boundary = bool(gradient_state.sync_gradients)
            if boundary != _counted_boundary(engine):
                patcher.hit()
            engine.set_gradient_accumulation_boundary(boundary)
        return wrapped(*args, **kwargs)

    patcher.wrap(state_module.GradientState, "_set_sync_gradients", note_managed)
    patcher.wrap(module.DeepSpeedEngineWrapper, "backward", set_window_end)
