"""What the two output-hook patches share: DeepSpeed 0.18.3 and later divide by
gradient_accumulation_steps (GA) in a backward hook on every tensor with a grad_fn
that ``engine.forward`` returns (``_backward_prologue_per_tensor``, registered with
``register_output_backward_hooks``). When one returned tensor lies on the path to
another (``{"loss", "logits"}``, ``(loss, logits, hidden)``), the gradient is divided
once per returned tensor on its path; a part of the loss that does not come out of
``engine.forward`` (a second forward of ``engine.module``) is never divided.

The behavioural probe runs the installed code on a stand-in engine: a "model" whose
output is ``(loss, logits)`` with ``loss = logits`` and ``logits = w * 1``, hooked
the way ``engine.forward`` hooks it, GA 4. A backward that divides once leaves 1/4
in ``w.grad``; the buggy code leaves 1/16.
"""

import threading

ENGINE = "DeepSpeedEngine"
HOOK = "_backward_prologue_per_tensor"
REGISTER = "register_output_backward_hooks"
PROBE_GA = 4
ONCE, TWICE = 1 / PROBE_GA, 1 / PROBE_GA ** 2


def engine_class(module):
    cls = getattr(module, ENGINE, None)
    return cls if isinstance(cls, type) else None


def hooks_missing(module):
    """Why the module has no output hooks to probe (None when it has them)."""
    cls = engine_class(module)
    if cls is None or "forward" not in vars(cls) or "backward" not in vars(cls):
        return f"{ENGINE}.forward or .backward is missing"
    if HOOK not in vars(cls) or not callable(getattr(module, REGISTER, None)):
        return "no output hooks"
    if REGISTER not in _names_used(vars(cls)["forward"]):
        return f"{ENGINE}.forward does not call {REGISTER}"
    return None


def _names_used(function):
    """The global names ``function``'s code uses, under decorators (DeepSpeed's NVTX
    decorator keeps the function in its closure, without functools.wraps)."""
    import inspect

    function = inspect.unwrap(function)
    inner = [cell.cell_contents for cell in getattr(function, "__closure__", None) or ()
             if inspect.isfunction(cell.cell_contents)]
    function = inner[0] if len(inner) == 1 else function
    return getattr(getattr(function, "__code__", None), "co_names", ())


class _StandInOptimizer:
    """Not a ZeRO optimizer, not DeepSpeed's DummyOptim: engine.backward's plain path."""


def stand_in_engine():
    """Just enough of an engine for backward() and the output hook to run on CPU:
    no ZeRO, no AMP, no loss scaler, no compile, GA 4."""
    engine = type("StandInEngine", (), {})()
    engine.gradient_accumulation_steps = lambda: PROBE_GA
    engine.optimizer = _StandInOptimizer()
    engine.torch_autocast_z0_gradscaler = None
    engine._scale_wrt_gas = True
    engine._running_engine_backward = False
    engine._running_engine_backward_lock = threading.Lock()
    engine._running_engine_backward_count = 0
    engine._unmanaged_backward_count = 0
    engine._is_compiled_autograd_enabled = False
    engine._compile_kwargs = {}
    engine._support_torch_style_backward = True
    engine._manual_backward_expected = False
    for name in ("eigenvalue_enabled", "amp_enabled", "zero_optimization", "is_deepcompile_active"):
        setattr(engine, name, lambda: False)
    engine.managed_gradient_accumulation = lambda: True
    engine.is_gradient_accumulation_boundary = lambda: True
    engine._backward_prologue = engine._backward_epilogue = lambda: None
    return engine


def probe_gradient(module, cls, through_engine_backward: bool, hook=None) -> float:
    """``w.grad`` after one backward of the probe model's ``(loss, logits)`` output:
    with ``cls.backward`` on the stand-in engine, or a direct ``loss.backward()``.
    ``hook``: the per-tensor function to register (default: the class's own)."""
    import torch

    engine = stand_in_engine()
    backward, hook = upstream(vars(cls)["backward"]), upstream(hook or vars(cls)[HOOK])
    weight = torch.ones(1, requires_grad=True)
    logits = weight * 1.0
    loss = (logits * 1.0).sum()
    getattr(module, REGISTER)((loss, logits), preprocess_once_fn=lambda: None,
                              preprocess_per_tensor_fn=lambda grad: hook(engine, grad))
    if through_engine_backward:
        backward(engine, loss)
    else:
        loss.backward()
    return weight.grad.item()


def probe(module, through_engine_backward, subject, before_hooks):
    """The code gate of both patches: ``subject`` names the backward probed in the
    verdicts ("engine.backward()", "a direct backward"); ``before_hooks`` says what the
    code before 0.18.3 does instead (it has no output hooks: fixed)."""
    from gradfix import gates

    missing = hooks_missing(module)
    if missing == "no output hooks":
        return gates.fixed(f"no output hooks: {before_hooks} (the code before 0.18.3)")
    if missing:
        return gates.unknown(missing)
    try:
        gradient = probe_gradient(module, engine_class(module), through_engine_backward)
    except Exception as exc:
        return gates.unknown(f"{subject} failed on the probe: {type(exc).__name__}: {exc}")
    if gradient == ONCE:
        return gates.fixed(f"{subject} divides a (loss, logits) output by GA once")
    if gradient == TWICE:
        return gates.buggy(f"{subject} divides a (loss, logits) output by GA twice")
    return gates.unknown(f"{subject} left {gradient} on the probe (expected {ONCE} or {TWICE})")


def upstream(function):
    """``function`` without the wrappers of other gradfix patches (the conflict check
    has refused any other wrapper before a probe runs)."""
    from gradfix.patcher import GradfixWrapper

    while isinstance(function, GradfixWrapper):
        function = function.__wrapped__
    return function


def backward_arguments(loss, retain_graph=False, scale_wrt_gas=True):
    """engine.backward's arguments (the same three on every release with output hooks)."""
    return loss, retain_graph, scale_wrt_gas


class EngineBackwards:
    """How many ``engine.backward()`` calls are under way in this process, of any
    engine: 0.19.6 recognises the graph of an engine.backward() for every output hook
    on it, whichever engine registered the hook. A count, not a thread-local: on GPUs
    the autograd engine runs hooks in its own threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._count = 0

    def __enter__(self):
        with self._lock:
            self._count += 1

    def __exit__(self, *exc_info):
        with self._lock:
            self._count -= 1

    @property
    def running(self) -> bool:
        return self._count > 0


ENGINE_BACKWARDS = EngineBackwards()


def is_pipeline(engine) -> bool:
    """Pipeline engines scale on their own schedule (ds-pipeline-ga-scale): left alone."""
    return bool(getattr(engine, "pipeline_parallelism", False))
