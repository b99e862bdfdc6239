"""A fresh slice of the Trainer conformance matrix (tests/conformance_slice.py): three
single-rank cases of transformers 4.48.0 (two worker processes)."""

import sys

import pytest
from conformance_slice import committed, disagreements
from tfrun import releases

from gradfix.conformance import runner, trainer_cases
from helpers import clean_env

RELEASE = "4.48.0"
CASES = (
    "loss_kwargs-ga4-r1-avg_default-full-plain",  # num_items not passed: corrected
    "mean_loss-ga2-r1-avg_default-short-plain",  # stops before the short window: known
    "compute_loss_func-ga2-r1-avg_default-full-plain",  # num_items_in_batch=None: known
)

pytestmark = pytest.mark.skipif(RELEASE not in releases(), reason=f"needs transformers {RELEASE}")


def test_a_fresh_slice_agrees_with_the_committed_matrix():
    old = committed("transformers", RELEASE, CASES)
    cases = [c for c in trainer_cases.cases() if trainer_cases.case_id(c) in CASES]
    environment = runner.Environment(sys.executable, clean_env(PYTHONPATH=releases()[RELEASE]), timeout=600)
    results = runner.run_trainer_release(environment, cases, parallel=1)
    fresh = runner.trainer_records(RELEASE, cases, results)
    assert len(fresh) == len(CASES)
    assert not disagreements(fresh, old)
