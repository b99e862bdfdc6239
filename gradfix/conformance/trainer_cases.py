"""The transformers ``Trainer`` cases of the conformance matrix: axes, which
combinations can run, a stable id per case, and the worker's job for it
(gradfix.conformance.trainer_worker explains what "right" is).

* ``model``: ``loss_kwargs`` (a Llama, whose forward takes ``num_items_in_batch``),
  ``mean_loss`` (a model whose forward takes no loss keyword arguments: its loss is its
  micro-batch's token mean) or ``compute_loss_func`` (that model with a token-sum
  ``compute_loss_func``).
* ``average_tokens``: ``average_tokens_across_devices`` left out, set true, set false.
* ``last_window``: ``full`` (two full optimizer steps) or ``short`` (a full step, then
  a window of GA - 1 micro-batches: an epoch that does not divide by GA).
* ``deepspeed``: through DeepSpeed ZeRO-2 in fp32, or plain (DDP on two ranks).
* ``ga`` and ``ranks`` (gloo, on CPU).
"""

AXES = {
    "model": ("loss_kwargs", "mean_loss", "compute_loss_func"),
    "ga": (1, 2, 4),
    "ranks": (1, 2),
    "average_tokens": ("default", "true", "false"),
    "last_window": ("full", "short"),
    "deepspeed": (False, True),
}
# Where the Trainer's accumulation bugs live: every triple of these values appears too.
ACCUMULATION_AXES = ("model", "ga", "ranks", "last_window")


def allowed(case):
    if case.get("last_window") == "short" and case.get("ga") == 1:
        return False  # every window of GA 1 is full
    if case.get("average_tokens") in ("true", "false") and case.get("ranks") == 1:
        return False  # one rank: the setting changes nothing
    return True


def case_id(case):
    return (f"{case['model']}-ga{case['ga']}-r{case['ranks']}-avg_{case['average_tokens']}-{case['last_window']}"
            f"-{'ds' if case['deepspeed'] else 'plain'}")


def cases():
    from .covering import covering

    return [dict(case, family="trainer")
            for case in covering(AXES, allowed, strength=2, strong_axes=ACCUMULATION_AXES, strong_strength=3)]


def sequences(case):
    """Rows of the epoch: two full windows on every rank, or one and a short one."""
    per_rank = 2 * case["ga"] if case["last_window"] == "full" else 2 * case["ga"] - 1
    return per_rank * case["ranks"]


def job_of(case):
    return {"model": case["model"], "ga": case["ga"], "average_tokens": case["average_tokens"],
            "deepspeed": case["deepspeed"], "sequences": sequences(case)}
