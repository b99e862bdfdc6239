"""The conformance matrix (gradfix.conformance): its case design, and the committed
records (patches/conformance.json) against the catalog. The records come from the
periodic ``python -m nox -s conformance``; these checks keep them honest and current."""

from itertools import combinations, product

import pytest
from packaging.specifiers import SpecifierSet

from gradfix import catalog
from helpers import REPO
from gradfix.conformance import covering, deepspeed_cases, records, summary, trainer_cases

WAYS = {"right", "wrong", "not_run"}
DESIGNS = {"deepspeed": deepspeed_cases, "transformers": trainer_cases}


PATCHES = REPO / "patches"  # the records are not shipped in the wheel


@pytest.fixture(scope="module")
def matrix():
    loaded = records.load(str(PATCHES / records.MATRIX))
    if not loaded:
        pytest.fail("patches/conformance.json is missing or empty: run `python -m nox -s conformance`")
    return loaded


def all_allowed_pairs(axes, allowed):
    """Every pair of values that some complete allowed case holds (brute force)."""
    names = list(axes)
    pairs = set()
    for values in product(*(axes[name] for name in names)):
        case = dict(zip(names, values))
        if allowed(case):
            pairs |= {(a, case[a], b, case[b]) for a, b in combinations(names, 2)}
    return pairs


def held(cases, combos):
    return {combo for combo in combos if any(all(c[name] == value for name, value in combo) for c in cases)}


@pytest.mark.parametrize("design", DESIGNS.values(), ids=DESIGNS.keys())
def test_the_cases_cover_every_pair_and_every_accumulation_triple(design):
    cases = [c for c in design.cases() if c["family"] in ("deepspeed", "trainer")]
    names = list(design.AXES)
    covered = {(a, c[a], b, c[b]) for c in cases for a, b in combinations(names, 2)}
    assert all_allowed_pairs(design.AXES, design.allowed) <= covered
    triples = covering.combinations_to_cover(design.AXES, design.allowed, design.ACCUMULATION_AXES, 3)
    assert held(cases, triples) == triples
    assert all(design.allowed(c) for c in cases)
    full_grid = sum(1 for values in product(*design.AXES.values()) if design.allowed(dict(zip(names, values))))
    assert len(cases) < full_grid / 5  # the point of the design: a few dozen cases, not the grid


def test_the_paper_bug_is_a_deepspeed_case():
    # ZeRO-2 + offload + GA 3: pairs alone could hold each pair of it and never all three.
    assert any(c["zero_stage"] == 2 and c["offload"] == "cpu" and c["ga"] == 3 for c in deepspeed_cases.cases())


def test_pairwise_is_deterministic_and_rejects_dead_ends():
    axes = {"a": (1, 2, 3), "b": ("x", "y"), "c": (True, False)}
    first = covering.pairwise(axes)
    assert first == covering.pairwise(axes)
    assert all_allowed_pairs(axes, lambda case: True) <= {
        (a, c[a], b, c[b]) for c in first for a, b in combinations(axes, 2)}
    with pytest.raises(ValueError, match="dead end"):
        covering.pairwise(axes, allowed=lambda case: not (case.get("a") == 1 and "b" in case))


@pytest.mark.parametrize("design", DESIGNS.values(), ids=DESIGNS.keys())
def test_case_ids_are_unique(design):
    ids = [design.case_id(c) for c in design.cases()]
    assert len(ids) == len(set(ids))


def test_records_are_well_formed(matrix):
    for record in matrix:
        assert record["package"] in DESIGNS and record["family"] in ("deepspeed", "pipeline", "trainer")
        assert set(record["config"]) <= set(DESIGNS[record["package"]].AXES), record
        assert record["unpatched"] in WAYS and record["gradfix"] in WAYS, record
        for way in ("unpatched", "gradfix"):
            error = record[f"{way}_error"]
            assert (error is None) == (record[way] == "not_run"), record
        assert ("not_run" in record) == ("not_run" in (record["unpatched"], record["gradfix"])), record
        assert set(record["patches"]) <= {e.id for e in catalog.load().entries}, record


def test_every_release_ran_the_current_cases(matrix):
    """A change of the axes or of the case ids must be followed by a new run."""
    by_release = {}
    for record in matrix:
        by_release.setdefault((record["package"], record["release"]), set()).add(record["case"])
    stale = {}
    for (package, release), found in by_release.items():
        wanted = {DESIGNS[package].case_id(c) for c in DESIGNS[package].cases()}
        if found != wanted:
            stale[f"{package} {release}"] = sorted(wanted ^ found)
    assert not stale, f"rerun `python -m nox -s conformance` (or conformance_transformers) for {stale}"


def test_both_packages_have_records(matrix):
    assert {r["package"] for r in matrix} == set(DESIGNS)


def test_every_wrong_cell_is_corrected_or_a_known_uncovered_bug(matrix):
    missing = records.unexplained(matrix, known=records.known_uncovered(str(PATCHES / records.KNOWN)))
    assert not missing, "\n".join(
        f"deepspeed {r['release']} {r['case']}: unpatched {r['unpatched']}, gradfix {r['gradfix']}, "
        f"patches {r['patches']}" for r in missing)


# The patches whose bug the case axes reach; on the releases they cover, the matrix must
# have a case each corrects (not an empty check: a design that misses one fails here).
# Not reached: ds-bf16-zero1-last-microbatch (needs grad_accum_dtype fp32) and
# hf-loss-without-count-not-divided (a loss computed without the count: label smoothing).
SEEN = ("ds-bf16-zero0-unfused", "ds-output-hooks-engine-backward", "ds-output-hooks-direct-backward",
        "ds-pipeline-ga-scale", "ds-zero2-epilogue-reset", "ds-zero2-offload-ga", "ds-zero2-offload-multi-backward",
        "ds-scale-wrt-gas-ignored", "hf-deepspeed-double-ga-scale", "hf-dp-token-average",
        "hf-mean-loss-not-divided", "hf-num-items-not-passed",
        "hf-partial-window-ga-divisor", "hf-ddp-no-sync-inverted")


def test_the_matrix_sees_the_catalogs_bugs(matrix):
    entries = {e.id: e for e in catalog.load().entries}
    corrected = {pid for r in matrix if r["unpatched"] == "wrong" and r["gradfix"] == "right" for pid in r["patches"]}
    for pid in SEEN:
        releases = {r["release"] for r in matrix if r["package"] == entries[pid].package
                    and SpecifierSet(entries[pid].affected).contains(r["release"], prereleases=True)}
        if releases:
            assert pid in corrected, f"no case of the matrix shows {pid} on {sorted(releases)}"


def test_known_uncovered_entries_are_well_formed_and_used(matrix):
    known = records.known_uncovered(str(PATCHES / records.KNOWN))
    for entry in known:
        assert set(entry) == {"package", "releases", "match", "reason", "patch"}, entry
        SpecifierSet(entry["releases"])
        assert set(entry["match"]) <= set(DESIGNS[entry["package"]].AXES), entry
        assert any(records.matches(entry, r) and r["unpatched"] == "wrong" for r in matrix), (
            f"known entry matches no wrong record any more: {entry['reason'][:80]}")


def test_explain_rejects_what_it_must():
    entry = catalog.load().entries[0]
    record = {"package": "deepspeed", "release": "0.18.3", "case": "x", "family": "deepspeed", "config": {},
              "unpatched": "wrong", "gradfix": "right", "patches": []}
    assert records.explain(record, [entry], []) is None  # corrected by nothing the catalog says
    assert records.explain(dict(record, gradfix="wrong"), [entry], []) is None
    assert records.explain(dict(record, unpatched="right", gradfix="wrong"), [entry], []) is None
    assert records.explain(dict(record, unpatched="right", gradfix="right"), [entry], []) == "right without gradfix"


def test_the_ci_slice_flags_what_differs():
    from conformance_slice import disagreements

    old = {"c": {"case": "c", "unpatched": "wrong", "unpatched_error": 0.75, "gradfix": "right", "gradfix_error": 0.0}}
    assert disagreements([dict(old["c"])], old) == []
    assert disagreements([dict(old["c"], unpatched_error=0.7501)], old) == []  # within 1e-3
    assert disagreements([dict(old["c"], unpatched_error=0.76)], old)
    assert disagreements([dict(old["c"], gradfix="wrong")], old)
    assert disagreements([dict(old["c"], gradfix_error="nan")], old)


def test_doctor_says_what_the_matrix_found_for_the_installed_releases(matrix):
    known = records.known_uncovered(str(PATCHES / records.KNOWN))
    found = summary.summary(matrix, known)
    lines = summary.doctor_lines({"deepspeed": "0.18.3", "transformers": "4.48.0"}, found)
    deepspeed = next(line for line in lines if line.startswith("deepspeed 0.18.3:"))
    outcomes = [summary.outcome(r) for r in matrix if r["package"] == "deepspeed" and r["release"] == "0.18.3"]
    assert f"{len(outcomes)} cases" in deepspeed
    assert f"gradfix corrects {outcomes.count('corrected')}" in deepspeed
    assert f"still wrong with gradfix: {outcomes.count('WRONG with gradfix')}" in deepspeed
    assert any("set_gradient_accumulation_boundary" in line for line in lines)  # the known reason, in words
    assert any("huggingface/transformers#37923" in line for line in lines)
    unknown = summary.doctor_lines({"deepspeed": "0.1.0"}, found)
    assert len(unknown) == 1 and "not in the conformance matrix" in unknown[0]
    assert summary.doctor_lines({}, found) == []
