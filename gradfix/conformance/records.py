"""The committed conformance matrix, ``patches/conformance.json``: reading it, checking
it against the catalog (the summaries are in gradfix.conformance.summary).

One record per package, release and case::

    {"package": "deepspeed" | "transformers", "release": "0.18.3", "case": "z2-cpu-fp32-ga4-...",
     "family": "deepspeed" | "pipeline" | "trainer",
     "config": {axis: value} (gradfix.conformance.deepspeed_cases / trainer_cases AXES),
     "unpatched": "right" | "wrong" | "not_run", "gradfix": ...,
     "unpatched_error": float | "nan" | null, "gradfix_error": ...,   # largest step's update error
     "patches": [ids of the patches that acted in the gradfix run],
     "not_run": "why" (only where a way did not run),
     "optimizer_steps": {"reference": n, "unpatched": n, "gradfix": n}  (Trainer records),
     "first_run": {"unpatched": [outcome, error], "gradfix": [...]}  (only for a case run
         again because its two ways disagreed with no patch acting; see __main__)}

The update error is the distance of the parameters from the plain PyTorch fp32
reference's, relative to the reference's update. DeepSpeed (gradfix.verify.compare):
the worst of three steps, "right" within 1e-4 for fp32 and 0.2 for bf16 (parameter
rounding). Trainer (gradfix.conformance.trainer_worker): the weights after the epoch,
"right" within 1e-5 with every rank holding the same weights and as many optimizer
steps as the reference.
"""

import json
import os

MATRIX = "conformance.json"
KNOWN = "conformance_known.json"


def patches_dir():
    from .. import catalog

    return catalog.builtin_dir()


def load(path=None):
    path = path or os.path.join(patches_dir(), MATRIX)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def known_uncovered(path=None):
    """Bugs the matrix finds that gradfix does not correct yet: a list of
    {"package", "releases" (specifiers), "match" (config values), "reason", "patch"}."""
    path = path or os.path.join(patches_dir(), KNOWN)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def merge(old, new):
    """``old`` records with those of ``new``'s releases replaced, sorted by release and case."""
    from packaging.version import Version

    replaced = {(r["package"], r["release"]) for r in new}
    kept = [r for r in old if (r["package"], r["release"]) not in replaced]
    return sorted(kept + list(new), key=lambda r: (r["package"], Version(r["release"]), r["case"]))


def save(records, path):
    """A JSON list with one record per line: compact, and a new run's diff reads case by case."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("[\n" + ",\n".join(json.dumps(r, sort_keys=True) for r in records) + "\n]\n")


def matches(known, record):
    from packaging.specifiers import SpecifierSet

    return (known["package"] == record["package"]
            and SpecifierSet(known["releases"]).contains(record["release"], prereleases=True)
            and all(record["config"].get(key) in (values if isinstance(values, list) else [values])
                    for key, values in known["match"].items()))


def explain(record, entries, known):
    """Why a record is acceptable, or None when it is not: a wrong cell must be corrected
    by a patch whose affected range holds the release, or be a known uncovered bug; a
    gradfix cell must be right (or known)."""
    from packaging.specifiers import SpecifierSet

    listed = [k for k in known if matches(k, record)]
    if record["gradfix"] == "wrong":
        return f"known: {listed[0]['reason']}" if listed else None
    if record["unpatched"] != "wrong":
        return "right without gradfix" if record["unpatched"] == "right" else f"not run: {record.get('not_run')}"
    if record["gradfix"] == "not_run":
        return None
    by_id = {entry.id: entry for entry in entries}
    covering = [pid for pid in record["patches"]
                if pid in by_id and SpecifierSet(by_id[pid].affected).contains(record["release"], prereleases=True)]
    if covering:
        return "corrected by " + ", ".join(covering)
    return f"known: {listed[0]['reason']}" if listed else None


def unexplained(records, entries=None, known=None):
    """Records the catalog and the known list do not account for (the fast test's check)."""
    if entries is None:
        from .. import catalog

        entries = catalog.load().entries
    known = known_uncovered() if known is None else known
    return [r for r in records if explain(r, entries, known) is None]
