"""The code gate of lf-mm-token-sum on stand-in classes (the real releases are tested
end to end in tests/llamafactory_releases): it patches only a trainer whose __init__
turns model_accepts_loss_kwargs off for a processor, and leaves any other code alone."""

import types

from gradfix import gates
from gradfix.fixes.llamafactory import mm_token_sum


class _Base:
    model_accepts_loss_kwargs = True


def _module(init):
    trainer = type("CustomSeq2SeqTrainer", (_Base,), {"__init__": init})
    return types.SimpleNamespace(CustomSeq2SeqTrainer=trainer)


def test_the_released_code_is_buggy():
    def __init__(self, finetuning_args, processor, **kwargs):
        if processor is not None:
            # avoid wrong loss under gradient accumulation
            self.model_accepts_loss_kwargs = False

    assert mm_token_sum.probe(_module(__init__)).verdict == gates.CodeVerdict.BUGGY


def test_code_that_keeps_loss_kwargs_is_left_alone():
    def __init__(self, finetuning_args, processor, **kwargs):
        if processor is not None:
            self.compute_loss_func = object()  # e.g. an upstream token-sum loss

    probe = mm_token_sum.probe(_module(__init__))
    assert probe.verdict == gates.CodeVerdict.UNKNOWN and "no longer" in probe.detail


def test_a_missing_trainer_is_reported():
    probe = mm_token_sum.probe(types.SimpleNamespace())
    assert probe.verdict == gates.CodeVerdict.UNKNOWN and "missing" in probe.detail
