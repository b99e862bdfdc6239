"""ds-zero2-offload-multi-backward: ZeRO-1/2 + offload_optimizer with
gradient_accumulation_steps = 1 and several backward() calls per optimizer step
(inner ones marked with ``engine.set_gradient_accumulation_boundary(False)``)
keeps only the last backward's gradient.

On the buggy releases ``copy_grads_in_partition`` calls the CPU accumulator only
when ``gradient_accumulation_steps > 1``. The fix (as upstream): with one
accumulation step, call it whenever earlier backwards of this step must be
restored (``micro_step_id > 0``) or later ones will follow (not the boundary),
before the original's boundary work. A lone backward per step keeps the fast path.
On 0.15.2-0.18.9 the accumulator itself needs ds-zero2-offload-ga as well.
"""

from gradfix import gates

from . import _zero
from ._zero import (MicroStepCounter, at_boundary, missing, optimizer_class, own_function, param_argument,
                    probe_failed, stand_in)

TARGET = _zero.TARGET  # the module whose import triggers this patch
METHOD = "copy_grads_in_partition"
ACCUMULATE = "async_accumulate_grad_in_cpu_via_gpu"
REPLACES = (f"{_zero.CLASS}.{METHOD}",)
HITS = "backward passes"
UNREACHED = "no optimizer offload run with several backward() per step and gradient_accumulation_steps = 1"


def _accumulates(function, micro_step_id: int, boundary: bool) -> bool:
    """Whether copy_grads_in_partition calls the CPU accumulator with GA 1."""
    import torch

    calls = []
    record = lambda name: (lambda *args, **kwargs: calls.append(name))  # noqa: E731
    optimizer = stand_in(
        cpu_offload=True,
        gradient_accumulation_steps=1,
        micro_step_id=micro_step_id,
        is_gradient_accumulation_boundary=boundary,
        async_accumulate_grad_in_cpu_via_gpu=record("accumulate"),
        set_norm_for_param_grad_in_gpu=record("norm"),
        update_offload_overflow_tracker_for_param_grad=record("overflow"),
        update_overflow_tracker_for_param_grad=record("overflow"),  # the older name (e.g. 0.16.4)
        async_inplace_copy_grad_to_fp32_buffer_from_gpu=record("copy"),
    )
    function(optimizer, torch.zeros(2))
    return "accumulate" in calls


def probe(module):
    function = own_function(module, METHOD, ACCUMULATE)
    if function is None:
        return missing(METHOD, ACCUMULATE)
    try:
        inner = _accumulates(function, micro_step_id=0, boundary=False)
        last = _accumulates(function, micro_step_id=3, boundary=True)
        lone = _accumulates(function, micro_step_id=0, boundary=True)
    except Exception as exc:
        return probe_failed(METHOD, exc)
    if lone:
        return gates.unknown(f"{METHOD} accumulates a lone backward with GA 1 (unexpected)")
    if inner and last:
        return gates.fixed()
    if not inner and not last:
        return gates.buggy("with GA 1 the CPU accumulator is never called")
    return gates.unknown(f"{METHOD} accumulates inner={inner}, last={last} with GA 1")


def apply(module, patcher):
    counter = MicroStepCounter(patcher)

    def accumulate_every_backward(wrapped, optimizer, args, kwargs):
        corrected = (
            optimizer.cpu_offload
            and optimizer.gradient_accumulation_steps == 1
            and (optimizer.micro_step_id > 0 or not at_boundary(optimizer))
        )
        if corrected:
            getattr(optimizer, ACCUMULATE)(param_argument(*args, **kwargs))
        counter.seen(optimizer, corrected)
        return wrapped(*args, **kwargs)

    patcher.wrap(optimizer_class(module), METHOD, accumulate_every_backward)
