"""trl-grpo-truncated-denominator: with ``mask_truncated_completions=True``, GRPO's
token-count losses (dapo, cispo, vespo) still count the masked tokens in their
denominator (TRL 0.22.0 to 1.8.x).

``num_items_in_batch`` is the sum of all completion lengths, computed before the
truncated completions (and, from 1.x, tool-output tokens) are masked out of the loss.
The loss sums only the tokens that remain and divides by the larger count: every
update shrinks by the share of masked tokens, and how much changes from batch to
batch. 1.9.0 counts the loss mask itself, gathered over the ranks. The fix replaces
the count in the generation batch with exactly that.
"""

from gradfix import gates

from gradfix.fixes._code import method_source

from ._grpo import TOKEN_COUNT_LOSSES, trainer_class

TARGET = "trl.trainer.grpo_trainer"
HITS = "generation batches whose token count left out the masked tokens"
UNREACHED = "no dapo/cispo/vespo GRPO generation batch with mask_truncated_completions or tool masks ran"
SCORER = "_generate_and_score_completions"


def probe(module):
    cls = trainer_class(module)
    text = method_source(cls, SCORER)
    if isinstance(text, gates.Probe):
        return text
    if "self._generate(" in text and "_generate" in vars(cls):  # 1.x counts in _generate
        counted = method_source(cls, "_generate")
        if isinstance(counted, gates.Probe):
            return counted
        text += " " + counted
    if "gather(loss_mask.sum())" in text:
        return gates.fixed("the token count is the loss mask's, gathered over the ranks")
    if "agg_completion_lengths.sum()" in text and "mask_truncated_completions" in text:
        return gates.buggy("the token count is the sum of completion lengths, masked tokens included")
    return gates.unknown("the token count is neither the known buggy nor the fixed code")


def apply(module, patcher):
    import torch

    def count_loss_tokens(wrapped, trainer, args, kwargs):
        batch = wrapped(*args, **kwargs)
        if (trainer.loss_type not in TOKEN_COUNT_LOSSES or not isinstance(batch, dict)
                or "num_items_in_batch" not in batch or "completion_mask" not in batch):
            return batch
        mask = batch["completion_mask"]
        if batch.get("tool_mask") is not None:
            mask = mask * batch["tool_mask"]
        count = trainer.accelerator.gather(mask.sum()).sum()  # every rank gets here: a collective is safe
        if count.item() != torch.as_tensor(batch["num_items_in_batch"]).item():
            patcher.hit()
        return {**batch, "num_items_in_batch": count.clamp(min=1)}

    patcher.wrap(trainer_class(module), SCORER, count_loss_tokens)
