"""ds-scale-wrt-gas-ignored: ``engine.backward(loss, scale_wrt_gas=False)`` still
divides the gradients by gradient_accumulation_steps (DeepSpeed 0.18.3).

0.18.3 moved the 1/GA scaling into a hook on the model outputs
(``_backward_prologue_per_tensor``) that divides unconditionally, so a caller that
scales its loss itself (Hugging Face Accelerate does) gets 1/GA of the right
gradient, update and grad norm. The fixed release (0.18.4) remembers the flag of
the latest ``backward()`` call and the hook divides only when it is true. The fix
does the same with its own attribute.
"""

from gradfix import gates

TARGET = "deepspeed.runtime.engine"
ENGINE = "DeepSpeedEngine"
HOOK = "_backward_prologue_per_tensor"
REPLACES = (f"{ENGINE}.backward", f"{ENGINE}.{HOOK}")
FLAG = "_gradfix_scale_wrt_gas"  # the flag of the latest backward() call (0.18.4 keeps it the same way)
HITS = "backward() calls with scale_wrt_gas=False"
UNREACHED = "no engine.backward(..., scale_wrt_gas=False) with gradient_accumulation_steps > 1 ran"


def _engine_class(module):
    cls = getattr(module, ENGINE, None)
    return cls if isinstance(cls, type) else None


def _hook_result(function, flag_name):
    """The hook's output for a gradient of 1 with GA 4 after backward(scale_wrt_gas=False)."""
    import torch

    engine = type("StandIn", (), {})()
    engine.gradient_accumulation_steps = lambda: 4
    setattr(engine, flag_name, False)
    return function(engine, torch.ones(1)).item()


def probe(module):
    cls = _engine_class(module)
    if cls is None or "backward" not in vars(cls):
        return gates.unknown(f"{ENGINE}.backward is missing")
    if HOOK not in vars(cls):  # before 0.18.3 the scaling honoured the flag in _backward_prologue
        return gates.fixed(f"no {HOOK} (the code before 0.18.3)")
    hook = vars(cls)[HOOK]
    if "is_current_graph_registered" in getattr(getattr(hook, "__code__", None), "co_names", ()):
        return gates.fixed("backward() scales its own graphs; the hook leaves them alone (0.19 and later)")
    try:
        value = _hook_result(hook, "_scale_wrt_gas")
    except Exception as exc:
        return gates.unknown(f"{HOOK} failed on the probe: {type(exc).__name__}: {exc}")
    if value == 1.0:
        return gates.fixed()
    if value == 0.25:
        return gates.buggy("the output hook divides by gradient_accumulation_steps whatever scale_wrt_gas says")
    return gates.unknown(f"{HOOK} turned 1 into {value} on the probe (expected 1 or 0.25)")


def _scale_wrt_gas(loss, retain_graph=False, scale_wrt_gas=True, *args, **kwargs):
    return scale_wrt_gas


def apply(module, patcher):
    cls = _engine_class(module)

    def remember_flag(wrapped, engine, args, kwargs):
        flag = bool(_scale_wrt_gas(*args, **kwargs))
        setattr(engine, FLAG, flag)
        if not flag and engine.gradient_accumulation_steps() > 1:
            patcher.hit()
        return wrapped(*args, **kwargs)

    def divide_only_when_asked(wrapped, engine, args, kwargs):
        if getattr(engine, FLAG, True):
            return wrapped(*args, **kwargs)
        return args[0] if args else kwargs.get("grad")

    patcher.wrap(cls, "backward", remember_flag)
    patcher.wrap(cls, HOOK, divide_only_when_asked)
