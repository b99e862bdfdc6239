"""ds-bf16-zero1-last-microbatch: with ``BF16_Optimizer`` (bf16 model, fp32
gradient accumulation, ZeRO stage 1, no offload) and several data-parallel ranks,
the last micro-batch of every accumulation window is left out of the cross-rank
average.

``DeepSpeedEngine._backward_epilogue`` all-reduces the fp32 accumulator at the
boundary and only then lets the optimizer add the micro-batch just computed
(``BF16_Optimizer.backward_epilogue``), so that micro-batch stays rank-local. The
fixed release (0.19.0) adds it first. The fix does the same: for a
``BF16_Optimizer`` it runs the optimizer's epilogue before the original engine
epilogue and makes the original's own call to it a no-op for that one call.
Everything else (timers, the reduction, ``exit_backward``) runs untouched.
"""

import types

from gradfix import gates

TARGET = "deepspeed.runtime.engine"  # imports BF16_Optimizer by name
ENGINE = "DeepSpeedEngine"
METHOD = "_backward_epilogue"
OPTIMIZER = "BF16_Optimizer"
REPLACES = (f"{ENGINE}.{METHOD}",)
HITS = "accumulation boundaries on several data-parallel ranks"
UNREACHED = ("no bf16 + fp32 gradient accumulation + ZeRO-1 run reduced over several data-parallel ranks "
             "(a single rank is not affected)")


def _classes(module):
    engine, optimizer = getattr(module, ENGINE, None), getattr(module, OPTIMIZER, None)
    if not isinstance(engine, type) or not isinstance(optimizer, type) or METHOD not in vars(engine):
        return None
    return engine, optimizer


def _epilogue_order(engine_cls, optimizer_cls):
    """Run the engine's epilogue on a stand-in engine whose optimizer is a bare
    ``BF16_Optimizer`` recording what happens. Returns the recorded order of
    "accumulate" (the optimizer adds the micro-batch to its fp32 gradients) and
    "reduce" (the cross-rank all-reduce)."""
    order = []
    nothing = lambda *args, **kwargs: None  # noqa: E731
    optimizer = object.__new__(optimizer_cls)  # no __init__: only what the epilogue touches
    optimizer.update_hp_grads = lambda *args, **kwargs: order.append("accumulate")
    optimizer.exit_backward = nothing
    optimizer.immediate_grad_update = False
    timers = types.SimpleNamespace(backward_inner_timers=(), backward_reduce_timers=(), backward_timers=())
    engine = types.SimpleNamespace(
        optimizer=optimizer, engine_timers=timers, _start_timers=nothing, _stop_timers=nothing,
        enable_backward_allreduce=True, inside_no_sync_ctxt=False, memory_breakdown=lambda: False,
        is_deepcompile_active=lambda: False, uses_parallelization_pass_only=lambda: False,
        allreduce_gradients=lambda *args, **kwargs: order.append("reduce"),
    )
    vars(engine_cls)[METHOD](engine)
    return order


def probe(module):
    classes = _classes(module)
    if classes is None:
        return gates.unknown(f"{ENGINE}.{METHOD} or {OPTIMIZER} is missing")
    if "backward_epilogue" not in vars(classes[1]):  # it accumulates inside backward(), before any reduction
        return gates.fixed(f"{OPTIMIZER} has no backward_epilogue (the code before 0.18.3)")
    try:
        order = _epilogue_order(*classes)
    except Exception as exc:
        return gates.unknown(f"{METHOD} failed on the probe: {type(exc).__name__}: {exc}")
    if order == ["accumulate", "reduce"]:
        return gates.fixed()
    if order == ["reduce", "accumulate"]:
        return gates.buggy("the boundary micro-batch reaches the fp32 gradients after the cross-rank all-reduce")
    return gates.unknown(f"{METHOD} did {order} on the probe (expected reduce and accumulate, in some order)")


def _corrects_now(engine, optimizer) -> bool:
    """Whether this epilogue all-reduces across several ranks a micro-batch the
    optimizer has yet to add (with ``immediate_grad_update`` hooks add it during
    backward): the only case in which the order changes more than rounding."""
    return (engine.enable_backward_allreduce and not engine.inside_no_sync_ctxt
            and not getattr(optimizer, "immediate_grad_update", False)
            and engine.is_gradient_accumulation_boundary() and getattr(engine, "dp_world_size", 1) > 1)


def apply(module, patcher):
    _, optimizer_cls = _classes(module)

    def accumulate_before_reducing(wrapped, engine, args, kwargs):
        optimizer = engine.optimizer
        if not isinstance(optimizer, optimizer_cls):
            return wrapped(*args, **kwargs)
        if _corrects_now(engine, optimizer):
            patcher.hit()
        optimizer.backward_epilogue()
        own = vars(optimizer).pop("backward_epilogue", None)  # normally none: the class's method
        optimizer.backward_epilogue = lambda *a, **k: None  # the original's own call: already done
        try:
            return wrapped(*args, **kwargs)
        finally:
            del optimizer.backward_epilogue
            if own is not None:
                optimizer.backward_epilogue = own

    patcher.wrap(getattr(module, ENGINE), METHOD, accumulate_before_reducing)
