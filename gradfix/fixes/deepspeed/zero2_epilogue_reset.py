"""ds-zero2-epilogue-reset: ZeRO-2 without optimizer offload applies only the last
micro-batch of each accumulation window (GA >= 2, or several backward() per step).

On the buggy releases ``independent_gradient_partition_epilogue`` decides whether
to start a new gradient accumulator (``all_grad_tensors[i]``) by looking at
``averaged_gradients[i]``, which is None on every micro-step before the boundary,
so the accumulator is replaced by the current micro-batch's gradients each time.
The fixed releases look at the accumulator itself.

The narrowest intervention: around the epilogue, note the groups whose accumulator
holds earlier micro-batches but would be replaced; when the original then fetches
the current gradients for such a group (``get_all_grad_tensors``), add them into
the existing accumulator and hand that back, which is exactly what the fixed
release does in its accumulate branch. Everything else in the epilogue runs
untouched.
"""

import threading

from gradfix import gates

from . import _zero
from ._zero import missing, optimizer_class, own_function, probe_failed, stand_in

TARGET = _zero.TARGET  # the module whose import triggers this patch
METHOD = "independent_gradient_partition_epilogue"
FETCH = "get_all_grad_tensors"
REPLACES = (f"{_zero.CLASS}.{METHOD}", f"{_zero.CLASS}.{FETCH}")
HITS = "accumulation micro-steps"
UNREACHED = "no ZeRO-2 run without optimizer offload accumulated several micro-batches"


def _accumulator_after_middle_step(function):
    """Run the epilogue on a stand-in whose accumulator holds 2 and whose current
    gradient is 1, on a micro-step before the boundary. Returns the accumulator's
    value afterwards: 3 fixed, 1 buggy (replaced)."""
    import torch

    param = torch.zeros(1)
    nothing = lambda *args, **kwargs: None  # noqa: E731
    optimizer = stand_in(
        report_ipg_memory_usage=nothing,
        reduce_ipg_grads=nothing,
        _release_ipg_buffers=nothing,
        zero_grad=nothing,
        params_already_reduced=[],
        overlap_comm=False,
        cpu_offload=False,
        bit16_groups=[[param]],
        params_in_partition=[[param]],
        averaged_gradients={0: None},
        all_grad_tensors={0: [torch.full((1,), 2.0)]},
        get_all_grad_tensors=lambda tensors, dtype: [torch.full((1,), 1.0)],
        gradient_accumulation_dtype=torch.float32,
        is_gradient_accumulation_boundary=False,
    )
    function(optimizer)
    return optimizer.all_grad_tensors[0][0].item()


def probe(module):
    function = own_function(module, METHOD, FETCH)
    if function is None:
        return missing(METHOD, FETCH)
    try:
        value = _accumulator_after_middle_step(function)
    except Exception as exc:
        return probe_failed(METHOD, exc)
    if value == 3.0:
        return gates.fixed()
    if value == 1.0:
        return gates.buggy("the gradient accumulator is replaced on every micro-step before the boundary")
    return gates.unknown(f"{METHOD} left the accumulator at {value} on the probe (expected 1 or 3)")


def apply(module, patcher):
    pending = threading.local()  # group index -> accumulator the original is about to drop

    def wrongly_reset_groups(optimizer):
        if optimizer.cpu_offload is not False:
            return {}
        averaged, accumulators = optimizer.averaged_gradients, optimizer.all_grad_tensors
        return {
            i: accumulators[i]
            for i in range(len(optimizer.bit16_groups))
            if averaged.get(i) is None and accumulators.get(i) is not None
        }

    def keep_accumulating(wrapped, optimizer, args, kwargs):
        groups = wrongly_reset_groups(optimizer)
        corrected = bool(groups)  # add_into_accumulator empties it
        pending.groups = (optimizer, groups)
        try:
            result = wrapped(*args, **kwargs)
        finally:
            pending.groups = None
        if corrected:  # the epilogue runs once per backward
            patcher.hit()
        return result

    def add_into_accumulator(wrapped, optimizer, args, kwargs):
        current = wrapped(*args, **kwargs)
        owner, groups = getattr(pending, "groups", None) or (None, {})
        if owner is not optimizer or not groups:
            return current
        tensors = args[0] if args else kwargs.get("tensor_list")
        for i, accumulator in list(groups.items()):
            if tensors is optimizer.params_in_partition[i]:
                del groups[i]
                for accumulated, new in zip(accumulator, current):
                    accumulated.add_(new)
                return accumulator
        return current

    cls = optimizer_class(module)
    patcher.wrap(cls, METHOD, keep_accumulating)
    patcher.wrap(cls, FETCH, add_into_accumulator)
