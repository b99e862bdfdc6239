"""Regenerate the files derived from the catalog (patches/*.toml):

* the built-in catalog's index, read at start-up: its block at the end of
  ``gradfix/catalog.py`` and every entry's fields in ``gradfix/_catalog_entries.py``;
* the support table in README.md, between its ``support-table`` markers, and the
  conformance summaries (patches/conformance.json, gradfix.conformance.summary),
  between its ``conformance-table`` and ``conformance-trainer-table`` markers;
* ``patches/conformance_summary.json``, what ``gradfix doctor`` says about an installed
  release (the matrix itself is not shipped);
* ``WATCHED`` in the start-up module (``gradfix/_site/_gradfix_bootstrap.py``): the
  top-level packages whose first import activates gradfix under ``GRADFIX=1``.

Run ``python -m gradfix._generate`` from a checkout after editing patches/;
``--check`` exits 1 when a derived file is out of date (the tests run it).
"""

import argparse
import os
import sys

from . import catalog, catalog_files, implementation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATALOG_MODULE = os.path.join(REPO, "gradfix", "catalog.py")
ENTRIES_MODULE = os.path.join(REPO, "gradfix", "_catalog_entries.py")
INDEX_BEGIN, INDEX_END = "# generated: begin\n", "# generated: end\n"
README = os.path.join(REPO, "README.md")
BEGIN, END = "<!-- support-table: begin (python -m gradfix._generate) -->", "<!-- support-table: end -->"
CONFORMANCE_BEGIN = "<!-- conformance-table: begin (python -m gradfix._generate) -->"
CONFORMANCE_END = "<!-- conformance-table: end -->"
TRAINER_BEGIN = "<!-- conformance-trainer-table: begin (python -m gradfix._generate) -->"
TRAINER_END = "<!-- conformance-trainer-table: end -->"
BOOTSTRAP = os.path.join(REPO, "gradfix", "_site", "_gradfix_bootstrap.py")
WATCHED_BEGIN, WATCHED_END = "# generated: begin", "# generated: end"
ALSO_WATCHED = ("ray",)  # not a patch target: the engine hooks ray.init (gradfix.ray)


def _checked_catalog(patches: str) -> catalog.Catalog:
    loaded = catalog.load([patches], include_builtin=False)
    if loaded.problems:
        raise SystemExit("catalog errors:\n" + "\n".join(map(str, loaded.problems)))
    return loaded


def index_block(patches: str) -> str:
    """The generated block of gradfix/catalog.py: the built-in catalog's file fingerprints,
    fix targets and rows, all that start-up reads."""
    loaded = _checked_catalog(patches)
    files = {os.path.basename(path): catalog_files.fingerprint(path) for path in catalog._toml_files(patches)}
    return "\n".join([
        "BUILTIN_FILES = {",
        *(f"    {name!r}: {value!r}," for name, value in files.items()),
        "}",
        "BUILTIN_TARGETS = {",
        *(f"    {name!r}: {value!r}," for name, value in _targets(patches).items()),
        "}",
        "BUILTIN_ROWS = [",
        *(f"    {entry.row!r}," for entry in loaded.entries),
        "]",
        "",
    ])


def catalog_module_text(patches: str, module: str = CATALOG_MODULE) -> str:
    """gradfix/catalog.py with its generated block computed from ``patches``."""
    with open(module, encoding="utf-8") as handle:
        head, rest = handle.read().split(INDEX_BEGIN, 1)
    return head + INDEX_BEGIN + index_block(patches) + INDEX_END + rest.split(INDEX_END, 1)[1]


def entries_text(patches: str) -> str:
    loaded = _checked_catalog(patches)
    return "\n".join([
        '"""Every field of the built-in catalog\'s entries, validated and compiled from',
        "patches/*.toml by `python -m gradfix._generate` (do not edit: edit patches/ and",
        "regenerate). Read when something first asks for an entry's texts; start-up reads",
        'only the block at the end of gradfix/catalog.py."""',
        "",
        "ENTRIES = [",
        *(f"    {entry.to_dict()!r}," for entry in loaded.entries),
        "]",
        "",
    ])


def _targets(patches: str) -> dict:
    loaded = _checked_catalog(patches)
    return {entry.implementation: implementation.load(entry.implementation).target
            for entry in sorted(loaded.entries, key=lambda e: e.implementation)}


def bootstrap_text(patches: str, bootstrap: str = BOOTSTRAP) -> str:
    """The start-up module with its WATCHED line computed from the catalog's targets."""
    with open(bootstrap, encoding="utf-8") as handle:
        text = handle.read()
    watched = sorted({target.partition(".")[0] for target in _targets(patches).values()} | set(ALSO_WATCHED))
    head, block = text.split(WATCHED_BEGIN, 1)
    block, tail = block.split(WATCHED_END, 1)
    lines = [f"WATCHED = frozenset({tuple(watched)!r})" if line.startswith("WATCHED = ") else line
             for line in block.split("\n")]
    return f"{head}{WATCHED_BEGIN}{chr(10).join(lines)}{WATCHED_END}{tail}"


def load_sweep(patches: str) -> dict:
    """patches/sweep.json, the release sweep's verdicts (tests/release_sweep/sweep.py)."""
    import json

    path = os.path.join(patches, "sweep.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def verdict_name(cell) -> str:
    """A sweep cell is a verdict, or {"verdict": ..., "reason": ...}."""
    return cell if isinstance(cell, str) else cell["verdict"]


def sweep_cell(entry, sweep: dict) -> str:
    """Which releases the sweep checked for this patch, and where it applies."""
    rows = sweep.get(entry.package, {}).get("releases", {})
    checked = [release for release, verdicts in rows.items() if entry.id in verdicts]
    if not checked:
        return "not swept yet"
    applies = [r for r in checked if verdict_name(rows[r][entry.id]) == "applies"]
    where = f"{applies[0]}–{applies[-1]}" if len(applies) > 1 else (applies[0] if applies else "none")
    cell = f"{len(checked)} ({checked[0]}–{checked[-1]}); applies: {len(applies)} ({where})"
    reported = [r for r in checked
                if verdict_name(rows[r][entry.id]) == "unsupported" and entry.unpatched_reason(r)]
    if reported:
        cell += f"; reported, not patched (see `unpatched`): {len(reported)} ({reported[0]}–{reported[-1]})"
    unimportable = [r for r in checked if not_importable(rows[r][entry.id])]
    if unimportable:
        cell += f"; {len(unimportable)} not importable in the sweep's environment ({', '.join(unimportable)})"
    return cell


def not_importable(cell) -> bool:
    """A release the sweep could not judge: its target module does not import in the
    sweep's environment (e.g. an old DeepSpeed with a newer torch)."""
    return verdict_name(cell) == "error" and cell["reason"].startswith("cannot import")


def support_table(patches: str) -> str:
    loaded = _checked_catalog(patches)
    if not loaded.entries:
        return "No patches yet: the catalog is empty."
    sweep = load_sweep(patches)
    columns = ["patch id", "package", "affected releases", "fixed upstream in", "what goes wrong",
               "releases checked", "since"]
    rows = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for e in loaded.entries:
        fixed = "not yet" if e.fixed_in == catalog.UNFIXED else e.fixed_in
        rows.append(f"| `{e.id}` | {e.package} | `{e.affected}` | {fixed} | {e.summary} | {sweep_cell(e, sweep)} "
                    f"| {e.since} |")
    return "\n".join(rows)


def readme_text(patches: str, readme: str = README) -> str:
    from .conformance import records, summary

    with open(readme, encoding="utf-8") as handle:
        text = handle.read()
    text = _replace_between(text, BEGIN, END, support_table(patches))
    matrix = records.load(os.path.join(patches, records.MATRIX))
    text = _replace_between(text, CONFORMANCE_BEGIN, CONFORMANCE_END, summary.summary_table(matrix, "deepspeed"))
    return _replace_between(text, TRAINER_BEGIN, TRAINER_END, summary.summary_table(matrix, "transformers"))


def _replace_between(text: str, begin: str, end: str, block: str) -> str:
    if begin not in text or end not in text:
        raise SystemExit(f"README.md lacks the markers {begin} / {end}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block}\n{end}{tail}"


def conformance_summary_text(patches: str) -> str:
    from .conformance import records, summary

    matrix = records.load(os.path.join(patches, records.MATRIX))
    return summary.summary_text(matrix, records.known_uncovered(os.path.join(patches, records.KNOWN)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the files are current")
    args = parser.parse_args(argv)
    patches = os.path.join(REPO, "patches")
    stale = []
    from .conformance import summary

    derived = ((CATALOG_MODULE, catalog_module_text(patches)), (ENTRIES_MODULE, entries_text(patches)),
               (README, readme_text(patches)), (BOOTSTRAP, bootstrap_text(patches)),
               (os.path.join(patches, summary.SUMMARY), conformance_summary_text(patches)))
    for path, wanted in derived:
        current = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if current != wanted:
            stale.append(os.path.relpath(path, REPO))
            if not args.check:
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(wanted)
    if stale:
        print(("out of date: " if args.check else "regenerated: ") + ", ".join(stale))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
