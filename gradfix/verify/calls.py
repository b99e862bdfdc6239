"""Call shapes: what the model returns and how the training loop calls backward.
DeepSpeed 0.18.3 and later divide the gradient reaching every tensor the engine's
forward returns by GA, so these shapes train differently there. A shape is written
"OUTPUT:BACKWARD". No torch here: the CLI reads it too."""

OUTPUTS = {
    "tensor": "model returns its prediction",  # the loss is computed from it outside
    "loss": "model returns its loss",  # one tensor, computed inside the model
    "model-output": "model returns {loss, logits}",  # a transformers ModelOutput called with labels
    "tuple": "model returns (loss, logits, hidden)",
    "shared": "loss adds a forward of engine.module",  # a shared loss
    "two-forwards": "loss adds a second forward of the engine",
    "aux": "model returns {loss (with an aux loss), aux_loss, logits}",  # a MoE model's router loss
    "checkpoint": "model checkpoints its activations",  # torch.utils.checkpoint, non-reentrant
    "eval-forward": "an evaluation forward (no_grad) runs before the backward",
}
BACKWARDS = {
    "engine": "engine.backward(loss)",
    "direct": "loss.backward()",  # DeepSpeed 0.18.3+, ZeRO-1/2/3
}
DEFAULT_CALL = "tensor:engine"
ALL_CALLS = tuple(f"{output}:{backward}" for backward in BACKWARDS for output in OUTPUTS)
# What `gradfix verify` trains unless told otherwise: the plain loop, the canonical
# transformers loop (`engine.backward(out.loss)`), a shared loss, and both through a
# direct backward where the release takes one. (loss, logits, hidden) is hit wherever
# {loss, logits} is; `--calls all` adds it and the plain loop's direct backward.
VERIFY_CALLS = ("tensor:engine", "model-output:engine", "shared:engine", "model-output:direct", "shared:direct")


def parse_calls(text):
    """["OUTPUT:BACKWARD", ...] from "a:b,c:d" ("all": every shape); ValueError names
    what is unknown."""
    if text.strip() == "all":
        return list(ALL_CALLS)
    calls = [c.strip() for c in text.split(",") if c.strip()]
    for call in calls:
        output, _, backward = call.partition(":")
        if output not in OUTPUTS or backward not in BACKWARDS:
            raise ValueError(f"unknown call shape {call!r}: use OUTPUT:BACKWARD with OUTPUT one of "
                             f"{', '.join(OUTPUTS)} and BACKWARD one of {', '.join(BACKWARDS)}, or all")
    if not calls:
        raise ValueError("no call shape given")
    return calls


def words(call):
    output, _, backward = call.partition(":")
    return f"{OUTPUTS[output]}, {BACKWARDS[backward]}"
