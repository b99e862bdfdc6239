"""Summaries of the conformance matrix: the README tables (rows are code variants,
columns case families) and what ``gradfix doctor`` says about an installed release
(from ``patches/conformance_summary.json``, generated, since the matrix itself is not
shipped)."""

import json
import os

from .records import matches, patches_dir

SUMMARY = "conformance_summary.json"

COLUMNS = {  # package -> (column, which records it holds)
    "deepspeed": (
        ("engine.backward", lambda r: r["config"]["backward"] == "engine"),
        ("loss.backward()", lambda r: r["config"]["backward"] == "direct"),
        ("caller-scaled", lambda r: r["config"]["backward"] == "caller_scaled"),
        ("marked backwards", lambda r: r["config"]["backward"] == "marked"),
        ("unmarked backwards", lambda r: r["config"]["backward"] == "unmarked"),
        ("pipeline", lambda r: r["family"] == "pipeline"),
    ),
    "transformers": (
        ("model takes loss kwargs", lambda r: r["config"]["model"] == "loss_kwargs"),
        ("model's own mean loss", lambda r: r["config"]["model"] == "mean_loss"),
        ("compute_loss_func", lambda r: r["config"]["model"] == "compute_loss_func"),
    ),
}


OUTCOMES = ("right", "corrected", "WRONG with gradfix", "not run")


def outcome(record):
    """How a case came out, in the words of the README table."""
    if record["unpatched"] == "not_run":
        return "not run"
    if record["unpatched"] == "right":
        return "right"
    return "corrected" if record["gradfix"] == "right" else "WRONG with gradfix"


def _counts(records):
    counts = {}
    for r in records:
        counts[outcome(r)] = counts.get(outcome(r), 0) + 1
    return {k: counts[k] for k in OUTCOMES if k in counts}


def _cell(records):
    if not records:
        return "-"
    return ", ".join(f"{n} {k}" for k, n in _counts(records).items())


def summary(records, known):
    """What `gradfix doctor` tells about an installed release, per package and release:
    the case count, each column's outcome counts, and the reasons of the known
    uncovered problems its cases hit."""
    out = {}
    for package, columns in COLUMNS.items():
        by_release = {}
        for r in records:
            if r["package"] == package:
                by_release.setdefault(r["release"], []).append(r)
        for release, rows in by_release.items():
            reasons = sorted({k["reason"] for r in rows if outcome(r) == "WRONG with gradfix"
                              for k in known if matches(k, r)})
            out.setdefault(package, {})[release] = {
                "cases": len(rows),
                "columns": {name: _counts([r for r in rows if pick(r)]) for name, pick in columns},
                "known": reasons}
    return out


def summary_text(records, known):
    return json.dumps(summary(records, known), indent=1, sort_keys=True) + "\n"


def load_summary(path=None):
    path = path or os.path.join(patches_dir(), SUMMARY)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def doctor_lines(versions, summary_data):
    """Lines for `gradfix doctor` about the installed ``versions`` ({package: version})."""
    lines = []
    for package in COLUMNS:
        version = versions.get(package)
        if not version:
            continue
        releases = summary_data.get(package, {})
        found = releases.get(version)
        if found is None:
            lines.append(f"{package} {version}: not in the conformance matrix (it has {len(releases)} releases "
                         f"of {package}); `python -m nox -s conformance` in a gradfix checkout runs it")
            continue
        totals = {}
        for counts in found["columns"].values():
            for key, n in counts.items():
                totals[key] = totals.get(key, 0) + n
        wrong = totals.get("corrected", 0) + totals.get("WRONG with gradfix", 0)
        where = ", ".join(f"{name} {counts.get('corrected', 0) + counts.get('WRONG with gradfix', 0)}"
                          for name, counts in found["columns"].items()
                          if counts.get("corrected", 0) + counts.get("WRONG with gradfix", 0))
        line = f"{package} {version}: {found['cases']} cases; wrong without gradfix: {wrong}"
        line += f" ({where})" if where else ""
        line += f"; gradfix corrects {totals.get('corrected', 0)}"
        if totals.get("WRONG with gradfix"):
            line += f"; still wrong with gradfix: {totals['WRONG with gradfix']} (known, below)"
        lines.append(line)
        lines += [f"  known, not corrected: {reason}" for reason in found["known"]]
    return lines


def variants(records, package="deepspeed"):
    """Releases grouped by identical outcomes (the code variants the matrix can tell
    apart): [(releases, records of the first release)], oldest first."""
    from packaging.version import Version

    by_release = {}
    for r in records:
        if r["package"] == package:
            by_release.setdefault(r["release"], []).append(r)
    groups = []
    for release in sorted(by_release, key=Version):
        signature = sorted((r["case"], r["unpatched"], r["gradfix"]) for r in by_release[release])
        if groups and groups[-1][0] == signature:
            groups[-1][1].append(release)
        else:
            groups.append((signature, [release], by_release[release]))
    return [(releases, rows) for _, releases, rows in groups]


def summary_table(records, package="deepspeed"):
    """The README section: rows are code variants, columns case families; a cell counts
    the cases right without gradfix, corrected by gradfix, wrong even with it, not run."""
    groups = variants(records, package)
    if not groups:
        return f"No conformance records of {package} yet: run `python -m nox -s conformance`."
    columns = COLUMNS[package]
    header = ["releases", *(name for name, _ in columns)]
    rows = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for releases, group in groups:
        label = releases[0] if len(releases) == 1 else f"{releases[0]}–{releases[-1]} ({len(releases)})"
        cells = [_cell([r for r in group if pick(r)]) for _, pick in columns]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
