"""The exit report (report.log_evidence): one line per applied patch, with the rank
under a launcher; one line for a rank-less process that reached none of them."""

import pytest

from gradfix import report
from gradfix.registry import PatchStatus, State


def status(patch_id, hits, evidence):
    return PatchStatus(id=patch_id, package="pkg", installed_version="1.0", package_present=True, affected="<2",
                       fixed_in="2", state=State.APPLIED, reason="", hits=hits, evidence=evidence,
                       locations=(), notes=())


@pytest.fixture
def lines(monkeypatch, capsys):
    for name in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(report, "_configured_logger", lambda: None)  # stderr, whatever pytest set up
    monkeypatch.setattr(report, "_log_level", "info")

    def emitted(statuses, rank=None):
        if rank is not None:
            monkeypatch.setenv("RANK", str(rank))
        report.log_evidence(statuses)
        return capsys.readouterr().err.splitlines()

    return emitted


UNREACHED = [status("a", 0, "never reached in this process (x)"), status("b", 0, "never reached in this process (y)")]


def test_a_launcher_that_reached_nothing_says_so_once(lines):
    (line,) = lines(UNREACHED)
    assert line.startswith("gradfix: applied, never reached in this process (pid ")
    assert line.endswith("normal for a launcher or any process that does not train): a, b")


def test_a_rank_reports_every_patch_with_its_rank(lines):
    assert lines(UNREACHED, rank=0) == ["gradfix [rank 0]: a applied, never reached in this process (x)",
                                        "gradfix [rank 0]: b applied, never reached in this process (y)"]


def test_a_process_that_corrected_something_reports_every_patch(lines):
    statuses = [status("a", 3, "corrected 3 things"), UNREACHED[1]]
    assert lines(statuses) == ["gradfix: a applied, corrected 3 things",
                               "gradfix: b applied, never reached in this process (y)"]


def test_one_unreached_patch_keeps_its_reason(lines):
    assert lines(UNREACHED[:1]) == ["gradfix: a applied, never reached in this process (x)"]
