"""A fresh slice of the DeepSpeed conformance matrix (tests/conformance_slice.py): five
single-rank cases of 0.18.3, one per kind of outcome, three worker processes in all."""

import sys

import pytest
from conformance_slice import committed, disagreements
from dsrun import release_env, releases

from gradfix.conformance import deepspeed_cases, runner

RELEASE = "0.18.3"
CASES = (
    "z2-cpu-fp32-ga3-noclip-loss-engine-r1",  # the paper's bug (and the output hooks): corrected
    "z1-none-fp32-ga3-noclip-model_output-direct-r1",  # loss.backward() on a ModelOutput: corrected
    "z0-none-fp32-ga8-noclip-model_output-engine-r1",  # engine.backward on a ModelOutput: corrected
    "z2-none-bf16-ga1-noclip-loss-unmarked-r1",  # unmarked backwards: known, wrong either way
    "z3-none-fp32-ga1-noclip-loss-engine-r1",  # right either way
)

pytestmark = pytest.mark.skipif(RELEASE not in releases(), reason=f"needs DeepSpeed {RELEASE}")


def test_a_fresh_slice_agrees_with_the_committed_matrix():
    old = committed("deepspeed", RELEASE, CASES)
    cases = [c for c in deepspeed_cases.cases() if deepspeed_cases.case_id(c) in CASES]
    environment = runner.Environment(sys.executable, release_env(RELEASE), timeout=600)
    _, results = runner.run_release(environment, cases, parallel=1)
    fresh = runner.records(RELEASE, cases, results)
    assert len(fresh) == len(CASES)
    assert not disagreements(fresh, old)
