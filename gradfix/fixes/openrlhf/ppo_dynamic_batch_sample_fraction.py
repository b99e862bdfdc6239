"""openrlhf-ppo-dynamic-batch-sample-fraction: OpenRLHF 0.8.6-0.10.2 PPO with
dynamic batching weights each micro-batch of an optimizer step by its share of the
step's samples, not of its tokens.

With dynamic batching (``--use_dynamic_batch``, ``--train.dynamic_batch_enable``)
the replay buffer cuts every optimizer step into micro-batches of balanced token
counts (``NaiveReplayBuffer.setup_dynamic_batch``) and DeepSpeed runs with GA 1.
Each training step multiplies its loss, a token mean over its own micro-batch, by
``dynamic_loss_scale[step] = samples_j / samples_step``, and DeepSpeed averages
the ranks: a few long responses packed together weigh as much as many short ones.

0.10.3 and later give micro-batch j ``masked_sum_j * dp / N_step``, N_step being
the step's response tokens over all data-parallel ranks. For a token-mean loss that
is the micro-batch mean times ``n_j * dp / N_step``: the fix writes those factors
into ``dynamic_loss_scale`` after the buffer has set up its micro-batches (one
all-reduce of the per-step token totals per rollout). Samples, micro-batches,
their order and the optimizer steps stay as OpenRLHF chose them. Runs whose loss is
not a token mean (GSPO, a mixture-of-experts auxiliary loss) are left alone with a
warning; so is ring attention without a device mesh.
"""

from gradfix import gates, report
from gradfix.fixes._code import marked_source

from . import _window

TARGET = "openrlhf.trainer.ppo_utils.replay_buffer"
REPLACES = ("NaiveReplayBuffer.setup_dynamic_batch",)
HITS = "dynamic-batching optimizer steps (micro-batches weighted by their token share)"
UNREACHED = "no OpenRLHF PPO run with dynamic batching set up its replay buffer"

FIXED_MARK = "dynamic_batch_num_tokens"  # 0.10.3+: the step's token count, all-reduced
BUGGY_MARKS = ["len(partition) / sample_num", "self.dynamic_loss_scale =", "self.dynamic_optimizer_step ="]

_warned = set()  # reasons already told: the buffer is set up once per rollout


def probe(module):
    verdict = marked_source(getattr(module, "NaiveReplayBuffer", None), "setup_dynamic_batch", FIXED_MARK,
                            BUGGY_MARKS, "does not scale losses as expected")
    if isinstance(verdict, gates.Probe):
        return verdict
    return gates.buggy("each dynamic micro-batch's loss is weighted by its share of the step's samples")


def run_setting(args, name):
    """An actor setting under its 0.8.x-0.10.1 name (``args.name``) or its 0.10.2 one
    (``args.actor.name``)."""
    for scope in (args, getattr(args, "actor", None)):
        if scope is not None and hasattr(scope, name):
            return getattr(scope, name)
    return None


def unsupported(strategy):
    """Why this run's loss is not a token mean the factors can correct, or None."""
    args = strategy.args
    if run_setting(args, "policy_loss_type") == "gspo":
        return "a sequence-level policy loss (GSPO)"
    if (run_setting(args, "aux_loss_coef") or 0) > 1e-8:
        return "a mixture-of-experts auxiliary loss (not normalised by tokens)"
    if _window.data_parallel(strategy) is None:
        return "ring attention without a device mesh"
    return None


def step_token_counts(buffer):
    """Response tokens of every micro-batch, grouped by optimizer step, or None when
    the buffer's layout is not the one ``setup_dynamic_batch`` builds."""
    indices, last_of_step = buffer.dynamic_indices, buffer.dynamic_optimizer_step
    if not (len(indices) == len(last_of_step) == len(buffer.dynamic_loss_scale)) or (indices and not last_of_step[-1]):
        return None
    tokens = [int(item.action_mask.sum()) for item in buffer.items]
    steps, current = [], []
    for micro_batch, last in zip(indices, last_of_step):
        current.append(sum(tokens[i] for i in micro_batch))
        if last:
            steps.append(current)
            current = []
    return steps


def token_shares(steps, strategy, device):
    """``n_j * dp / N_step`` for every micro-batch, N_step summed over the ranks."""
    import torch
    import torch.distributed as dist

    group, size = _window.data_parallel(strategy)
    totals = torch.tensor([float(sum(step)) for step in steps], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=group)
    return [count * size / total if total else 0.0
            for step, total in zip(steps, totals.tolist()) for count in step]


def token_weighted_setup(patcher):
    def setup(wrapped, buffer, args, kwargs):
        result = wrapped(*args, **kwargs)
        strategy = args[0] if args else kwargs.get("strategy")
        reason = unsupported(strategy)
        steps = step_token_counts(buffer) if reason is None else None
        if reason is None and steps is None:
            reason = "the replay buffer's dynamic micro-batches are not laid out as expected"
        if reason is not None:
            if reason not in _warned:
                _warned.add(reason)
                report.warning(f"gradfix: OpenRLHF PPO dynamic batching is not corrected in this run: {reason}")
            return result
        buffer.dynamic_loss_scale = token_shares(steps, strategy, getattr(buffer, "target_device", "cpu"))
        patcher.hit(len(steps))
        return result

    return setup


def apply(module, patcher):
    patcher.wrap(module.NaiveReplayBuffer, "setup_dynamic_batch", token_weighted_setup(patcher))
