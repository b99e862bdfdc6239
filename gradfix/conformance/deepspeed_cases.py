"""The DeepSpeed cases of the conformance matrix: the axes, which combinations can
run, a stable id per case, and the verify worker's job for it.

A case trains the verify worker's tiny model (gradfix.verify.worker) three optimizer
steps with SGD at learning rate 1, so the applied update is the gradient itself,
and the matrix compares its parameters with a plain PyTorch fp32 loop doing the same
accumulation. What the axes mean:

* ``output``: what the model returns: its ``loss``; a transformers-style
  ``model_output`` ({loss, logits}); ``tuple_hidden`` (loss, logits, hidden); or
  ``shared_loss``, a model returning its prediction whose loss adds a second forward
  through ``engine.module``.
* ``backward``: ``engine`` (``engine.backward(loss)``), ``direct`` (``loss.backward()``,
  DeepSpeed 0.18.3 and later), ``caller_scaled`` (the caller divides by GA and calls
  ``engine.backward(loss, scale_wrt_gas=False)``, as Accelerate does), ``marked``
  (GA 1, three ``engine.backward`` per step, each marked with
  ``set_gradient_accumulation_boundary``, then one ``step``: DeepSpeed's API for such
  callers) and ``unmarked`` (the same without the marks).
* ``ranks``: 1 or 2 data-parallel ranks (gloo, on CPU).
* ZeRO stage, optimizer offload, precision, gradient accumulation steps, clipping (at 1.0).

A short last window does not exist for DeepSpeed itself (the engine counts its own
micro-steps; a caller that ends a window early must mark it, which ``marked`` covers).
A pipeline (``train_batch`` of a 2-stage ``PipelineModule``) is a family of its own.
"""

from ..verify import dsconfig

AXES = {
    "zero_stage": (0, 1, 2, 3),
    "offload": ("none", "cpu"),
    "precision": ("fp32", "bf16"),
    "ga": (1, 2, 3, 4, 8),
    "clipping": (False, True),
    "output": ("loss", "model_output", "tuple_hidden", "shared_loss"),
    "backward": ("engine", "direct", "caller_scaled", "marked", "unmarked"),
    "ranks": (1, 2),
}
PIPELINE_CASES = (  # zero_stage, precision, ga: the pipeline engine takes ZeRO 0 and 1
    {"zero_stage": 0, "precision": "fp32", "ga": 4},
    {"zero_stage": 1, "precision": "bf16", "ga": 2},
)
MARKED_BACKWARDS = 3  # engine.backward calls per optimizer step of the marked/unmarked cases
LEARNING_RATE = 1.0
CLIPPING = 1.0
_WORKER_OUTPUT = {"loss": "loss", "model_output": "model-output", "tuple_hidden": "tuple", "shared_loss": "shared"}


def allowed(case):
    """Whether a (partial) case is a configuration DeepSpeed takes at all."""
    if case.get("offload") == "cpu" and case.get("zero_stage") == 0:
        return False  # optimizer offload needs ZeRO
    if case.get("backward") in ("marked", "unmarked") and case.get("ga", 1) != 1:
        return False  # several backwards per step are the caller's own accumulation
    if case.get("backward") == "direct" and case.get("zero_stage") == 0:
        return False  # DeepSpeed refuses a direct loss.backward() without a ZeRO optimizer
    return True


def case_id(case):
    if case.get("family") == "pipeline":
        return f"pipeline-z{case['zero_stage']}-{case['precision']}-ga{case['ga']}"
    return (f"z{case['zero_stage']}-{case['offload']}-{case['precision']}-ga{case['ga']}-"
            f"{'clip' if case['clipping'] else 'noclip'}-{case['output']}-{case['backward']}-r{case['ranks']}")


# Where the accumulation bugs live: every triple of values of these axes appears too
# (ZeRO-2 + offload + GA >= 3 is the paper's bug; bf16 + ZeRO-0 + GA another).
ACCUMULATION_AXES = ("zero_stage", "offload", "precision", "ga")


def cases():
    """Every pair of axis values at least once, every triple of ACCUMULATION_AXES, then
    the pipeline cases."""
    from .covering import covering

    found = [dict(case, family="deepspeed")
             for case in covering(AXES, allowed, strength=2, strong_axes=ACCUMULATION_AXES, strong_strength=3)]
    found += [dict(case, family="pipeline", offload="none", clipping=False, output="loss", backward="train_batch",
                   ranks=1) for case in PIPELINE_CASES]
    return found


def config_of(case):
    """The DeepSpeed JSON of a case (the worker's micro-batch of 2 samples)."""
    several = case["backward"] in ("marked", "unmarked")
    return dsconfig.default_config(stage=case["zero_stage"], offload=case["offload"], ga=1 if several else case["ga"],
                                   precision=case["precision"], clipping=CLIPPING if case["clipping"] else 0.0)


def job_of(case):
    """The verify worker's job (``--jobs``) that trains ``case``; the reference runs the same job."""
    several = case["backward"] in ("marked", "unmarked")
    backward = "direct" if case["backward"] == "direct" else "engine"
    return {"config": config_of(case), "lr": LEARNING_RATE,
            "backwards": MARKED_BACKWARDS if several else 1, "mark_boundaries": case["backward"] == "marked",
            "user_scaled_loss": case["backward"] == "caller_scaled",
            "calls": [f"{_WORKER_OUTPUT[case['output']]}:{backward}"]}
