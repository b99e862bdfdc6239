"""The configuration of arXiv 2604.23747: OpenRLHF 0.9.10 with DeepSpeed 0.18.9,
ZeRO-2, Adam offload, GA 4, through OpenRLHF's own SFT entry point, with gradfix
switched on by GRADFIX=1 alone. Both bugs are in play: DeepSpeed drops
accumulation micro-batches (ds-zero2-offload-ga) and OpenRLHF weighs micro-batches
equally (openrlhf-sft-microbatch-mean). Each alone leaves the run wrong; both
patches together make it equal to the fixed stack (OpenRLHF 0.10.4, DeepSpeed 0.19.0).
"""

import pytest

from helpers import full_tier_only
from orlrun import matches_reference, relative_gaps, same_run, sft, stacks

RELEASE, DEEPSPEED = "0.9.10", "0.18.9"
FIXED = ("0.10.4", "0.19.0")
DS_PATCH, OPENRLHF_PATCH = "ds-zero2-offload-ga", "openrlhf-sft-microbatch-mean"
PAPER = {"adam_offload": True}

pytestmark = pytest.mark.skipif(RELEASE not in stacks() or FIXED[0] not in stacks(),
                                reason="needs OpenRLHF 0.9.10 and 0.10.4 in the matrix")


def far_from_reference(result):
    return max(relative_gaps(result["grad_norms"], result["reference"]["grad_norms"])) > 0.1


def test_paper_configuration_without_gradfix_is_wrong():
    assert far_from_reference(sft(RELEASE, False, DEEPSPEED, **PAPER))


@full_tier_only("CI proves each patch on its own, and both together here")
@pytest.mark.parametrize("left_out", [DS_PATCH, OPENRLHF_PATCH])
def test_each_bug_alone_keeps_the_run_wrong(left_out):
    result = sft(RELEASE, True, DEEPSPEED, disable=left_out, **PAPER)
    assert result["gradfix"][left_out]["state"] == "disabled"
    assert far_from_reference(result)


def test_paper_configuration_with_gradfix_matches_the_fixed_stack():
    patched = sft(RELEASE, True, DEEPSPEED, **PAPER)
    windows = len(patched["reference"]["grad_norms"])
    assert patched["gradfix"][OPENRLHF_PATCH]["hits"] == windows
    assert patched["gradfix"][DS_PATCH]["hits"] == windows * 2  # micro-batches 2 and 3 of each window
    assert matches_reference(patched), (patched["grad_norms"], patched["reference"]["grad_norms"])
    assert same_run(patched, sft(*FIXED, **PAPER))


def test_paper_configuration_update_with_gradfix_equals_the_fixed_stack():
    patched = sft(RELEASE, True, DEEPSPEED, lr=1e-3, **PAPER)
    assert patched["weights"]["distance"] > 0
    assert patched["weights"] == sft(*FIXED, lr=1e-3, **PAPER)["weights"]
    assert patched["weights"] != sft(RELEASE, False, DEEPSPEED, lr=1e-3, **PAPER)["weights"]
