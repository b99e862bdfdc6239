"""OpenRLHF 0.10.3 PPO: the loss terms take the normalisers (``dp_size``,
``batch_num_tokens``, ``global_batch_size``) from ``get_loss_batch_info``, which
counts the step's own micro-batch over all ranks. The rank part is right (0.10.3
fixed it); accumulation micro-batches still weigh equally whatever their token
counts.

0.10.4 computes the same normalisers over the whole window. The fix returns the
window's from the module's ``get_loss_batch_info`` name for the micro-batches the
read-ahead yielded, so every term (policy or value loss, KL, entropy) uses them,
exactly as in 0.10.4. Dynamic batching has its own normalisers, already right in
0.10.3, and is left alone.
"""

from gradfix import gates
from gradfix.fixes._code import flat_source

from . import _ppo, _window
from ._ppo_microbatch import PPO_TRAIN_MARKS, STAND_IN_SUM, loss_on_stand_in

COUNT_MARK = "batch_num_tokens = loss_mask.sum()"  # the micro-batch's own count, all-reduced


def probe(module, role):
    verdict = _ppo.source_marks(module, role, PPO_TRAIN_MARKS, ["get_loss_batch_info(", role.loss_call])
    if verdict is not None:
        return verdict
    helper = vars(module).get("get_loss_batch_info")
    try:
        counts_microbatch = COUNT_MARK in flat_source(helper)
        value = loss_on_stand_in(role, vars(module).get(role.loss_class), dp_size=1, batch_num_tokens=4.0)
    except Exception as exc:
        return gates.unknown(f"cannot check get_loss_batch_info and {role.loss_class}: {type(exc).__name__}: {exc}")
    if not counts_microbatch:
        return gates.unknown("get_loss_batch_info does not count the micro-batch's tokens as 0.10.3 does")
    expected = STAND_IN_SUM[role.model] / 4.0
    if value != expected:
        return gates.unknown(f"{role.loss_class} gave {value} on the probe with 4 tokens (expected {expected})")
    return gates.buggy("each micro-batch's loss is normalised by its own token count (over all ranks)")


def window_loss_batch_info(wrapped, instance, args, kwargs):
    if kwargs.get("dynamic_batch") or len(args) < 2:
        return wrapped(*args, **kwargs)
    counts = _window.take_pending(args[1], _ppo.pending)
    if counts is None:
        return wrapped(*args, **kwargs)
    return {"dp_size": counts.dp_size, "batch_num_tokens": counts.batch_num_tokens,
            "global_batch_size": counts.global_batch_size}


def unsupported(trainer):
    return "" if _ppo.dynamic_batching(trainer.args) else None  # "": right as it is, no warning


def apply(module, role, patcher):
    _ppo.apply_with(module, role, patcher, unsupported, names={"get_loss_batch_info": window_loss_batch_info})
