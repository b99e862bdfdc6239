"""openrlhf-sft-microbatch-mean: OpenRLHF 0.7.0-0.10.2 SFT averages each micro-batch's
loss over its own tokens; DeepSpeed then averages micro-batches and ranks equally,
so a micro-batch with 5 response tokens weighs as much as one with 500.

``SFTLoss.forward(per_token_logps, loss_mask)`` is a masked mean. The fix gives it
the window's counts (``_window``) and computes what OpenRLHF 0.10.4's loss does
with them: the masked sum over the window's tokens / GA, times the data-parallel
size (or, for ``token_level_loss=False``, the sequence means over the window's
sequences / GA).
"""

from . import _sft

TARGET = _sft.TARGET
REPLACES = _sft.REPLACES
HITS, UNREACHED = _sft.HITS, _sft.UNREACHED
CALL = "self.loss_fn(per_token_log_probs, loss_mask[:, :-1])"


def probe(module):
    return _sft.probe_with(module, [_sft.LOOP_MARK, CALL], ["per_token_logps", "loss_mask"], {}, 2.0,
                           "each micro-batch's loss is a mean over its own tokens")


def window_token_mean(wrapped, loss_module, per_token_logps, loss_mask, counts):
    losses = -per_token_logps
    if getattr(loss_module, "token_level_loss", True):
        return (losses * loss_mask).sum() / counts.batch_num_tokens * counts.dp_size
    tokens = loss_mask.sum(dim=-1)
    sequence_means = (losses * loss_mask).sum(dim=-1) / (tokens + 1e-8)
    return (sequence_means * (tokens > 0).float()).sum() / counts.global_batch_size * counts.dp_size


def apply(module, patcher):
    _sft.apply_with(module, patcher, window_token_mean)
