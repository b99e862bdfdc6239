"""OpenRLHF 0.7.0-0.10.2 PPO: every loss term of a training step (the policy or
value loss, the KL and entropy terms) is a token mean over the step's own
micro-batch (``masked_mean``). DeepSpeed then averages micro-batches and ranks
equally, so a micro-batch of 5 response tokens weighs as much as one of 500.

0.10.4 divides each term's masked sum by the window's token count / GA and
multiplies by the data-parallel size. For a micro-batch of n tokens that is the
micro-batch mean times ``n * dp / (N_window / GA)``: the fix multiplies the loss
handed to ``strategy.backward`` by that factor, leaving OpenRLHF's loss code and
its logged values as they are. It holds when every term is a token mean, so runs
with a sequence-level loss (GSPO, ``token_level_loss`` off) or a mixture-of-experts
auxiliary loss are left alone, with a warning. Dynamic batching scales its losses
in the replay buffer (``ppo_dynamic_batch_sample_fraction``).
"""

from gradfix import gates

from . import _ppo, _window

PPO_TRAIN_MARKS = ["DataLoader(", "self.training_step(experience"]


def training_step_marks(role):
    return [role.loss_call, f"self.strategy.backward(loss, self.{role.model}"]


def loss_on_stand_in(role, loss_class, **normalisers):
    """The loss class on one sequence of two response tokens at ratio 1: advantages
    [1, 3] (policy: sum -4) or values [1, 3] against returns 0 (value: sum 5)."""
    import torch

    pair, zero, mask = torch.tensor([[1.0, 3.0]]), torch.zeros(1, 2), torch.ones(1, 2)
    first = (zero, zero, pair) if role is _ppo.ACTOR else (pair, zero, zero)
    value = loss_class()(*first, action_mask=mask, **normalisers)
    return float(value[0] if isinstance(value, tuple) else value)


STAND_IN_SUM = {"actor": -4.0, "critic": 5.0}


def probe(module, role):
    verdict = _ppo.source_marks(module, role, PPO_TRAIN_MARKS, training_step_marks(role))
    if verdict is not None:
        return verdict
    if "get_loss_batch_info" in vars(module):
        return gates.unknown(f"{role.target} normalises with get_loss_batch_info (0.10.3's code, another patch)")
    loss_class = vars(module).get(role.loss_class)
    try:
        value = loss_on_stand_in(role, loss_class)
    except Exception as exc:
        return gates.unknown(f"{role.loss_class} failed on the probe: {type(exc).__name__}: {exc}")
    expected = STAND_IN_SUM[role.model] / 2
    if value != expected:
        return gates.unknown(f"{role.loss_class} gave {value} on the probe (a micro-batch mean is {expected})")
    return gates.buggy("each micro-batch's loss is a mean over its own tokens")


def unsupported(trainer, role):
    if _ppo.dynamic_batching(trainer.args):
        return ""  # GA 1, one step per buffer step: openrlhf-ppo-dynamic-batch-sample-fraction's part
    if not getattr(getattr(trainer, role.loss_attribute, None), "token_level_loss", False):
        return "a sequence-level loss (GSPO, or token_level_loss off)"
    if getattr(trainer, "aux_loss", False):
        return "a mixture-of-experts auxiliary loss (not normalised by tokens)"
    return None


def window_scaled_step(wrapped, trainer, args, kwargs):
    """Run the training step with its backward loss scaled from the micro-batch's
    token mean to its share of the window's token mean."""
    experience = args[0] if args else kwargs.get("experience")
    mask = getattr(experience, "action_mask", None)
    counts = _window.take_pending(mask, _ppo.pending) if mask is not None else None
    if counts is None:
        return wrapped(*args, **kwargs)
    factor = mask.sum().to(counts.batch_num_tokens) * counts.dp_size / counts.batch_num_tokens
    strategy = trainer.strategy
    own = vars(strategy).get("backward")  # an instance attribute of the user's, restored below
    backward = strategy.backward

    def window_backward(loss, *rest, **options):
        return backward(loss * factor, *rest, **options)

    # On the instance and only for this call: the strategy's class also serves other trainers.
    strategy.backward = window_backward
    try:
        return wrapped(*args, **kwargs)
    finally:
        if own is None:
            del strategy.backward
        else:
            strategy.backward = own


def apply(module, role, patcher):
    _ppo.apply_with(module, role, patcher, lambda trainer: unsupported(trainer, role), train_step=window_scaled_step)
