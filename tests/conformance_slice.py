"""A fresh slice of the conformance matrix, for the framework sessions: a few committed
cases of one release run again now, in this session's environment, and compared with
patches/conformance.json. The periodic run made the records; this keeps them honest."""

import math

from helpers import REPO

from gradfix.conformance import records

ERROR_AGREES = 1e-3  # relative: the same code on the same data gives the same numbers


def committed(package, release, case_ids):
    matrix = records.load(str(REPO / "patches" / records.MATRIX))
    found = {r["case"]: r for r in matrix if r["package"] == package and r["release"] == release}
    missing = sorted(set(case_ids) - set(found))
    assert not missing, f"not in the committed matrix for {package} {release}: {missing}"
    return found


def _close(fresh, old):
    if old is None or fresh is None or old == "nan" or fresh == "nan":
        return fresh == old
    return math.isclose(fresh, old, rel_tol=ERROR_AGREES, abs_tol=1e-6)


def disagreements(fresh_records, committed_records):
    """Where a fresh record differs from the committed one in an outcome or an error."""
    problems = []
    for fresh in fresh_records:
        old = committed_records[fresh["case"]]
        for way in ("unpatched", "gradfix"):
            if fresh[way] != old[way] or not _close(fresh[f"{way}_error"], old[f"{way}_error"]):
                problems.append(f"{fresh['case']} {way}: now {fresh[way]} ({fresh[f'{way}_error']}), "
                                f"committed {old[way]} ({old[f'{way}_error']})")
    return problems
