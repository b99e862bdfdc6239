"""What the two OpenRLHF dynamic-batching boundary fixes (actor and critic) share.

With dynamic batching OpenRLHF configures DeepSpeed with one accumulation step and
calls ``strategy.backward`` for every micro-batch of an optimizer step, then
``optimizer_step`` after the last one (``replay_buffer.dynamic_optimizer_step``).
It never tells DeepSpeed that the inner backwards are not the end of the step, so
for DeepSpeed every backward is an accumulation boundary. ZeRO-1/2 finish the
step's gradient partition at each boundary; from DeepSpeed 0.18.3 (and with
optimizer offload, on every release) the next boundary overwrites it, and only the
last micro-batch of each step reaches the optimizer. ZeRO-0 and ZeRO-3 accumulate
in the parameters' gradients and are right.

The fix marks each training step's backward with DeepSpeed's own API,
``engine.set_gradient_accumulation_boundary(last)``, ``last`` being OpenRLHF's
``dynamic_optimizer_step[step]``: the inner backwards then accumulate, as with
``gradient_accumulation_steps`` > 1, and the last one ends the step. Only ZeRO-1/2
engines are marked; micro-batches, losses and optimizer steps are OpenRLHF's.
"""

from gradfix import gates
from gradfix.fixes._code import marked_source

from . import _ppo

FIXED_MARK = "set_gradient_accumulation_boundary"
TRAINING_STEP_MARKS = ["dynamic_optimizer_step[step]", "self.strategy.backward("]
HITS = "inner backwards of dynamic-batching steps (marked as accumulation micro-steps)"
ACCUMULATING_STAGES = (1, 2)  # the ZeRO stages that finish the gradient partition at every boundary


def probe(module, role):
    trainer_class = getattr(module, role.trainer, None)
    verdict = marked_source(trainer_class, "training_step", FIXED_MARK, TRAINING_STEP_MARKS,
                            "does not train as expected")
    if isinstance(verdict, gates.Probe):
        return verdict
    if "step" not in training_step_signature(trainer_class).parameters:
        return gates.unknown(f"{role.trainer}.training_step takes no 'step'")
    return gates.buggy("dynamic batching never marks inner backwards, so under ZeRO-1/2 every micro-batch "
                       "ends DeepSpeed's accumulation")


def training_step_signature(trainer_class):
    import inspect

    return inspect.signature(trainer_class.training_step)


def engine_of(trainer, role):
    """The DeepSpeed engine behind the trainer's model (the actor wraps it), or None."""
    model = getattr(trainer, role.model, None)
    for candidate in (getattr(model, "model", None), model):
        if hasattr(candidate, "set_gradient_accumulation_boundary") and hasattr(candidate, "zero_optimization_stage"):
            return candidate
    return None


def ends_step(trainer, step):
    """OpenRLHF's own flag: whether micro-batch ``step`` is the last of its optimizer
    step (None when the buffer has no such flag for it)."""
    flags = getattr(getattr(trainer, "replay_buffer", None), "dynamic_optimizer_step", None)
    if not isinstance(step, int) or flags is None or not 0 <= step < len(flags):
        return None
    return bool(flags[step])


def marked_training_step(role, trainer_class, patcher):
    signature = training_step_signature(trainer_class)  # read once: training steps are a hot path

    def training_step(wrapped, trainer, args, kwargs):
        engine = engine_of(trainer, role) if _ppo.dynamic_batching(trainer.args) else None
        if engine is None or engine.zero_optimization_stage() not in ACCUMULATING_STAGES:
            return wrapped(*args, **kwargs)
        last = ends_step(trainer, signature.bind(trainer, *args, **kwargs).arguments.get("step"))
        if last is None:
            return wrapped(*args, **kwargs)
        engine.set_gradient_accumulation_boundary(last)
        if not last:
            patcher.hit()
        return wrapped(*args, **kwargs)

    return training_step


def apply(module, role, patcher):
    trainer_class = getattr(module, role.trainer)
    patcher.wrap(trainer_class, "training_step", marked_training_step(role, trainer_class, patcher))
