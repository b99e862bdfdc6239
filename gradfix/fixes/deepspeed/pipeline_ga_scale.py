"""ds-pipeline-ga-scale: pipeline parallelism scales gradients by the wrong power of
gradient_accumulation_steps (DeepSpeed 0.16.0-0.19.2).

A ``PipelineEngine`` runs GA micro-batches per ``train_batch()`` and must apply
their mean. It turns ``enable_backward_allreduce`` off (it reduces gradients on
its own schedule), and two generations of the engine tie the 1/GA scaling to the
wrong things:

* 0.16.0-0.18.2: ``backward()`` divides the loss by GA only when
  ``enable_backward_allreduce`` is on, so a pipeline applies the sum of its
  micro-batches (GA times the right update) on every stage;
* 0.18.3-0.19.2: a hook on every stage's forward outputs divides by GA, so the
  gradient the last stage sends upstream (already divided once) is divided again
  on every earlier stage: those stages get 1/GA of the right update.

The first fixed release (0.19.3) divides once, on the last stage, and leaves the
gradients of the other stages as they arrive. The fix does the same: on 0.16.0-
0.18.2 the loss the last stage hands to DeepSpeedEngine.backward() is divided by GA
(what 0.15 did, and what backward() does when allreduce is on); on 0.18.3-0.19.2 the
output hook passes gradients through unchanged on every stage but the last.
Engines that are not pipelines are never touched.
"""

from gradfix import gates

TARGET = "deepspeed.runtime.pipe.engine"  # imported by `import deepspeed`
PIPELINE = "PipelineEngine"
BACKWARD_PASS = "_exec_backward_pass"  # PipelineEngine's own: the last stage calls super().backward(self.loss)
# (PipelineEngine dispatches its schedule through a table of the functions as defined,
# so wrapping _exec_backward_pass itself would never run: the fix wraps what it calls.)
OUTPUT_HOOK = "_backward_prologue_per_tensor"  # DeepSpeedEngine's, 0.18.3 and later
REPLACES = (f"DeepSpeedEngine.{OUTPUT_HOOK}", "DeepSpeedEngine.backward")  # the base class, as the pipe module imports it
# 0.16.0-0.18.2: the 1/GA scaling of the loss, in backward() or _backward_prologue(), waits for allreduce.
GATED_SCALING = (r"do_gradient_reduction\s*=\s*self\.enable_backward_allreduce\b",
                 r"if\s+do_gradient_reduction\s+and\s+self\.gradient_accumulation_steps\(\)\s*>\s*1\s+and\s+scale_wrt_gas")
LAST_STAGE_BACKWARD = r"super\(\)\.backward\(self\.loss\)"
HITS = "micro-batch backward passes"
UNREACHED = "no pipeline-parallel training with gradient_accumulation_steps > 1 ran"


def _classes(module):
    """(PipelineEngine, the DeepSpeedEngine it derives from), or None."""
    pipeline = getattr(module, PIPELINE, None)
    if not isinstance(pipeline, type) or BACKWARD_PASS not in vars(pipeline):
        return None
    base = next((cls for cls in pipeline.__mro__[1:] if cls.__name__ == "DeepSpeedEngine"), None)
    return (pipeline, base) if base is not None else None


def _hook_divides(hook) -> bool:
    """Whether the engine's output hook turns a gradient of 1 into 1/4 at GA 4."""
    import torch

    engine = type("StandIn", (), {})()
    engine.gradient_accumulation_steps = lambda: 4
    engine._scale_wrt_gas = True  # the flag of 0.18.4 and later: a plain engine.backward(loss)
    return hook(engine, torch.ones(1)).item() == 0.25


def _source(function) -> str:
    """The source of ``function`` itself, under decorators: 0.16.0-0.16.4 decorate
    backward() with an NVTX wrapper that keeps the function only in its closure."""
    import inspect  # here, not at module level: importing gradfix stays cheap

    function = inspect.unwrap(function)
    inner = [cell.cell_contents for cell in getattr(function, "__closure__", None) or ()
             if inspect.isfunction(cell.cell_contents)]
    return inspect.getsource(inner[0] if len(inner) == 1 else function)


def _probe_output_hook(pipeline, base):
    """0.18.3 and later: GA scaling in a hook on every engine's outputs."""
    if OUTPUT_HOOK in vars(pipeline):
        return gates.fixed(f"{PIPELINE} overrides {OUTPUT_HOOK}: only the last stage divides (0.19.3 and later)")
    try:
        divides = _hook_divides(vars(base)[OUTPUT_HOOK])
    except Exception as exc:
        return gates.unknown(f"{OUTPUT_HOOK} failed on the probe: {type(exc).__name__}: {exc}")
    if not divides:
        return gates.unknown(f"{OUTPUT_HOOK} does not divide a gradient by gradient_accumulation_steps on the probe")
    return gates.buggy("every pipeline stage divides its output gradients by gradient_accumulation_steps, so the "
                       "stages before the last are divided twice")


def _probe_gated_loss_scaling(pipeline, base):
    """0.16.0-0.18.2: GA scaling of the loss in backward(), gated by allreduce."""
    import re

    try:
        scaling = "".join(_source(vars(base)[name]) for name in ("backward", "_backward_prologue")
                          if name in vars(base))
        last_stage = _source(vars(pipeline)[BACKWARD_PASS])
    except (OSError, TypeError) as exc:
        return gates.unknown(f"cannot read the engine's backward code: {exc}")
    if "_scale_loss_by_gas" in scaling and not re.search(GATED_SCALING[0], scaling):
        return gates.fixed("backward() divides the loss by gradient_accumulation_steps whatever "
                           "enable_backward_allreduce says (the code before 0.16.0)")
    if all(re.search(pattern, scaling) for pattern in GATED_SCALING) and re.search(LAST_STAGE_BACKWARD, last_stage):
        return gates.buggy("backward() divides the loss by gradient_accumulation_steps only when "
                           "enable_backward_allreduce is on, which the pipeline engine turns off")
    return gates.unknown("the loss scaling in DeepSpeedEngine.backward() is neither the known buggy code nor the "
                         "code before 0.16.0")


def probe(module):
    classes = _classes(module)
    if classes is None:
        return gates.unknown(f"{PIPELINE}.{BACKWARD_PASS} is missing")
    pipeline, base = classes
    if OUTPUT_HOOK in vars(base):
        return _probe_output_hook(pipeline, base)
    return _probe_gated_loss_scaling(pipeline, base)


def _scales_by_gas(engine, scale_wrt_gas) -> bool:
    """Whether backward() divides by GA when allreduce is on: the engine's legacy
    ``scale_wrt_gas`` attribute, when set, overrides the argument."""
    legacy = getattr(engine, "scale_wrt_gas", None)
    return engine.gradient_accumulation_steps() > 1 and bool(scale_wrt_gas if legacy is None else legacy)


def apply(module, patcher):
    pipeline, base = _classes(module)

    def divide_last_stage_loss(wrapped, engine, args, kwargs):
        # A pipeline's last stage calls DeepSpeedEngine.backward(self.loss), which skips
        # the 1/GA because allreduce is off: hand it the loss divided the engine's own
        # way (what backward() does with allreduce on, and what 0.15 did). Only that
        # call is corrected: the positions of backward()'s other arguments differ
        # between releases, and PipelineEngine passes none.
        if not isinstance(engine, pipeline) or engine.enable_backward_allreduce or len(args) != 1:
            return wrapped(*args, **kwargs)
        if not _scales_by_gas(engine, kwargs.get("scale_wrt_gas", True)):
            return wrapped(*args, **kwargs)
        loss = args[0]
        patcher.hit()
        return wrapped(engine._scale_loss_by_gas(loss.float() if hasattr(loss, "float") else loss), **kwargs)

    def pass_through_before_last_stage(wrapped, engine, args, kwargs):
        if not isinstance(engine, pipeline) or engine.is_last_stage():
            return wrapped(*args, **kwargs)
        grad = args[0] if args else kwargs.get("grad")
        if grad is not None and engine.gradient_accumulation_steps() > 1:
            patcher.hit()
        return grad  # already divided once by the last stage

    if OUTPUT_HOOK in vars(base):
        patcher.wrap(base, OUTPUT_HOOK, pass_through_before_last_stage)
    else:
        # PipelineEngine.backward only raises (train_batch() is the entry point); its
        # last stage reaches this wrapper through super().backward().
        patcher.wrap(base, "backward", divide_last_stage_loss, overridden_on_purpose=(pipeline,))
