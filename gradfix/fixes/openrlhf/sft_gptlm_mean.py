"""openrlhf-sft-gptlm-mean: OpenRLHF before 0.7.0 trains SFT with ``GPTLMLoss``, a
cross-entropy mean over each micro-batch's own labels, so micro-batches and ranks
weigh equally whatever their token counts (the bug 0.10.4 fixed).

gradfix recognises the bug but does not correct it: these releases build the
labels inside ``fit`` (prompt lengths, packed samples, multi-turn response ranges,
pretrain mode, ring attention), so the token count of a window cannot be read off
the batches reliably before training them. The status says so, and what to do.
"""

from gradfix import gates

from . import _sft

TARGET = _sft.TARGET
REPLACES = ("SFTTrainer.fit",)
MARKS = ["self.loss_fn(output.logits, labels)", "self.loss_fn.IGNORE_INDEX"]
ADVICE = ("each micro-batch's loss is a mean over its own tokens, and this release builds its labels inside "
          "SFTTrainer.fit, so the token count of an optimizer window cannot be known before training it. "
          "Use OpenRLHF >= 0.7.0 with gradfix (or >= 0.10.4), or train with gradient accumulation 1 on a "
          "single data-parallel rank, where a micro-batch mean is the step's token mean")


def probe(module):
    found = _sft.fit_source(module, loss_class="GPTLMLoss")
    if isinstance(found, gates.Probe):
        return found
    if not all(mark in found[2] for mark in MARKS):
        return gates.unknown("SFTTrainer.fit does not compute its loss as expected for this release")
    return gates.uncorrectable(ADVICE)


def apply(module, patcher):
    raise RuntimeError("openrlhf-sft-gptlm-mean has no correction; its probe never reports a correctable bug")
