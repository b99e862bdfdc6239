"""ds-zero2-offload-ga: ZeRO-2 + offload_optimizer + gradient accumulation N >= 3
applies only (first + last micro-batch) / N.

On the buggy releases ``async_accumulate_grad_in_cpu_via_gpu`` adds the CPU running
sum into the device gradient on micro-steps > 0 but stores the result back to the
CPU accumulator only on micro-step 0, so micro-batches 2..N-1 are lost.

The fix: after the original has run on a micro-step > 0 that is not the
accumulation boundary, store the device running sum back into the CPU accumulator,
with the original's slice rule (the whole gradient; the partition's slice in
low-precision master-weights mode), as a non-blocking copy issued right after the
original's own copies. The upstream fix also stores it at the boundary, where
nothing reads it before the next window overwrites it; skipping that store keeps
ZeRO-1 + offload correct on 0.15.2-0.16.4, where ``micro_step_id`` is still N-1 at
the boundary.
"""

from gradfix import gates

from . import _zero
from ._zero import (MicroStepCounter, at_boundary, low_precision_master, missing, optimizer_class, own_function,
                    param_argument, probe_failed, stand_in)

TARGET = _zero.TARGET  # the module whose import triggers this patch
METHOD = "async_accumulate_grad_in_cpu_via_gpu"
REPLACES = (f"{_zero.CLASS}.{METHOD}",)
HITS = "accumulation micro-steps"
UNREACHED = "no ZeRO-2 optimizer offload with gradient_accumulation_steps >= 3 ran"


def _run_probe(function, low_precision: bool) -> float:
    """One middle micro-step (device gradient 1, CPU running sum 2). Returns the CPU
    running sum afterwards: 3 when it is stored back (fixed), 2 when not (buggy)."""
    import torch

    size = 4
    gradient = torch.ones(size)
    fp32_partition = torch.nn.Parameter(torch.zeros(size))
    fp32_partition.grad = torch.full((size,), 2.0)
    optimizer = stand_in(
        get_param_id=lambda param: 0,
        grad_position={0: [0, 0, 0, size]},
        temp_grad_buffer_for_gpu_offload=torch.zeros(size),
        fp16_master_weights_and_gradients=low_precision,
        low_precision_master_weights_and_grads=low_precision,
        single_partition_of_fp32_groups=[fp32_partition],
        device="cpu",
        cpu_offload_pin_memory=False,
        accumulated_grads_in_cpu={0: fp32_partition.grad.view(-1) if low_precision else torch.full((size,), 2.0)},
        get_param_gradient_attribute=lambda param: gradient,
        micro_step_id=1,
        is_gradient_accumulation_boundary=False,
        gradient_accumulation_steps=4,
    )
    function(optimizer, torch.nn.Parameter(torch.zeros(size)))
    values = set(optimizer.accumulated_grads_in_cpu[0].tolist())
    return values.pop() if len(values) == 1 else float("nan")


def probe(module):
    function = own_function(module, METHOD)
    if function is None:
        return missing(METHOD)
    try:
        results = {mode: _run_probe(function, mode) for mode in (False, True)}
    except Exception as exc:
        return probe_failed(METHOD, exc)
    if all(value == 3.0 for value in results.values()):
        return gates.fixed()
    if all(value == 2.0 for value in results.values()):
        return gates.buggy("middle micro-batches are not stored back to the CPU accumulator")
    return gates.unknown(f"{METHOD} left CPU running sums {results} on the probe (expected 2 or 3)")


def apply(module, patcher):
    counter = MicroStepCounter(patcher)

    def store_running_sum(wrapped, optimizer, args, kwargs):
        result = wrapped(*args, **kwargs)
        corrected = optimizer.micro_step_id > 0 and not at_boundary(optimizer)
        if corrected:
            param = param_argument(*args, **kwargs)
            param_id = optimizer.get_param_id(param)
            _, source_offset, _, num_elements = optimizer.grad_position[param_id]
            running_sum = optimizer.get_param_gradient_attribute(param).data.view(-1)
            if low_precision_master(optimizer):
                running_sum = running_sum.narrow(0, source_offset, num_elements)
            optimizer.accumulated_grads_in_cpu[param_id].data.copy_(running_sum, non_blocking=True)
        counter.seen(optimizer, corrected)
        return result

    patcher.wrap(optimizer_class(module), METHOD, store_running_sum)
