"""ds-bf16-zero0-unfused: bf16 without ZeRO (stage 0) trains wrongly on DeepSpeed
0.17.6-0.18.5.

From 0.17.6 such a run is handed to ``FP16_UnfusedOptimizer`` (the ``DDP_BFLOAT16``
path), which two things break:

* the engine clears the bf16 gradients after a step only under ZeRO
  (``_take_model_step``), so every step applies the sum of all earlier gradients;
* the optimizer keeps fp16's dynamic loss scale (65536) for bf16. Up to 0.18.2
  backward() multiplies the loss by it and step() divides, so only the reported
  grad norm is 65536 times too large; from 0.18.3 backward() no longer multiplies
  but step() still divides, so the model hardly moves at all.

The fixed release (0.18.6) clears the gradients after every bf16 step and uses a
scale of 1 for bf16. The fix does the same: a loss scale of 1 (static) for an
unfused optimizer whose parameters are bf16, and the missing zero_grad after each
optimizer step of a bf16 run without ZeRO.
"""

from gradfix import gates

TARGET = "deepspeed.runtime.engine"  # imports FP16_UnfusedOptimizer by name
ENGINE = "DeepSpeedEngine"
OPTIMIZER = "FP16_UnfusedOptimizer"
STEP = "_take_model_step"
REPLACES = (f"{OPTIMIZER}.__init__", f"{ENGINE}.{STEP}")
HITS = "optimizer steps"
UNREACHED = "no bf16 run without ZeRO (stage 0) took an optimizer step"
UNIT_SCALE = "_gradfix_bf16_unit_scale"  # set on the optimizers this fix gave a loss scale of 1
GATED_ZERO_GRAD = r"if self\.zero_optimization\(\) and hasattr\(self\.optimizer, ['\"]zero_grad['\"]\)"


def _classes(module):
    engine, optimizer = getattr(module, ENGINE, None), getattr(module, OPTIMIZER, None)
    if not isinstance(engine, type) or not isinstance(optimizer, type) or STEP not in vars(engine):
        return None
    return engine, optimizer


def probe(module):
    import inspect  # here, not at module level: importing gradfix stays cheap
    import re

    classes = _classes(module)
    if classes is None:
        return gates.unknown(f"{ENGINE}.{STEP} or {OPTIMIZER} is missing")
    engine_cls, optimizer_cls = classes
    if not hasattr(module, "DDP_BFLOAT16"):  # bf16 without ZeRO still goes to BF16_Optimizer
        return gates.fixed(f"bf16 without ZeRO does not use {OPTIMIZER} (the code before 0.17.6)")
    try:
        knows_bf16 = "low_precision_dtype" in inspect.signature(optimizer_cls.__init__).parameters
        gated = bool(re.search(GATED_ZERO_GRAD, inspect.getsource(vars(engine_cls)[STEP])))
    except (OSError, TypeError, ValueError) as exc:
        return gates.unknown(f"cannot read {ENGINE}.{STEP} or {OPTIMIZER}.__init__: {exc}")
    if knows_bf16 and not gated:
        return gates.fixed()
    if not knows_bf16 and gated:
        return gates.buggy(f"{OPTIMIZER} applies fp16's loss scale to bf16 and {STEP} clears bf16 gradients "
                           "only under ZeRO")
    return gates.unknown(f"{OPTIMIZER} knows bf16: {knows_bf16}; {STEP} clears bf16 gradients only under "
                         f"ZeRO: {gated} (expected both or neither)")


def _is_bf16(optimizer) -> bool:
    import torch

    return any(param.dtype == torch.bfloat16 for group in getattr(optimizer, "fp16_groups", ()) for param in group)


def apply(module, patcher):
    engine_cls, optimizer_cls = _classes(module)

    def unit_scale_for_bf16(wrapped, optimizer, args, kwargs):
        result = wrapped(*args, **kwargs)
        if _is_bf16(optimizer):  # bf16 has fp32's range: no loss scaling, as 0.18.6 decides
            optimizer.cur_scale = 1.0
            optimizer.dynamic_loss_scale = False
            setattr(optimizer, UNIT_SCALE, True)
        return result

    def clear_bf16_gradients(wrapped, engine, args, kwargs):
        result = wrapped(*args, **kwargs)
        optimizer = engine.optimizer
        corrected = getattr(optimizer, UNIT_SCALE, False)
        if engine.bfloat16_enabled() and not engine.zero_optimization():
            optimizer.zero_grad() if hasattr(optimizer, "zero_grad") else engine.zero_grad()
            corrected = True
        if corrected:
            patcher.hit()
        return result

    patcher.wrap(optimizer_cls, "__init__", unit_scale_for_bf16)
    patcher.wrap(engine_cls, STEP, clear_bf16_gradients)
