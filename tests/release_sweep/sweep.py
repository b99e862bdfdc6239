"""Release sweep: every release of a package, in and around its patches' affected
ranges, run through each patch's version gate and code gate.

    python tests/release_sweep/sweep.py deepspeed --since 0.14.0 [--until R] [--stack FOLDER ...] [--jobs 2]

Each release is installed without dependencies into its own folder under
~/.cache/gradfix/sweep/<package> (kept between runs), put in front of this interpreter's
packages, and assessed by ``python -m gradfix list --json`` in a fresh process: what
activation would do there (applies / not needed / unsupported / error) for every patch of
the package. ``--stack`` folders go on the path behind the release (the frameworks it
imports). The verdicts are merged into patches/sweep.json, from which the README support
table lists the releases checked, and which tests/test_sweep_table.py holds against the
catalog.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "patches" / "sweep.json"
CACHE = Path(os.environ.get("GRADFIX_CACHE", Path.home() / ".cache" / "gradfix")) / "sweep"
KEEP_REASON = {"unsupported", "error", "conflict"}  # verdicts whose reason the table keeps


def published_releases(package):
    """Final releases on the package index, oldest first."""
    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", package],
                          capture_output=True, text=True, check=True)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("Available versions:"))
    releases = []
    for text in line.split(":", 1)[1].split(","):
        try:
            version = Version(text.strip())
        except InvalidVersion:
            continue
        if not version.is_prerelease and not version.is_devrelease:
            releases.append(version)
    return sorted(releases)


def install(package, release):
    """The release in its own folder (installed once; an interrupted install is redone)."""
    folder = CACHE / package / f"{package}-{release}"
    if (folder / ".complete").exists():
        return folder
    partial = folder.with_name("partial-" + folder.name)
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(partial), f"{package}=={release}"], check=True,
                   env=dict(os.environ, DS_BUILD_OPS="0"), capture_output=True)
    (partial / ".complete").write_text(str(release))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def assess(package, release, stack):
    """{patch id: verdict (and reason where it matters)} for one release."""
    folder = install(package, release)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADFIX") and k != "PYTHONPATH"}
    # DISABLE_VERSION_CHECK: LLaMA-Factory refuses to import beside a transformers outside its pins;
    # the gates read the code, whichever transformers carries it.
    env.update(PYTHONPATH=os.pathsep.join([str(folder), *stack]), DS_ACCELERATOR="cpu", GRADFIX_LOG="error",
               DISABLE_VERSION_CHECK="1")
    proc = subprocess.run([sys.executable, "-m", "gradfix", "list", "--json"], env=env, capture_output=True,
                          text=True, timeout=600, cwd=str(CACHE))
    lines = proc.stdout.splitlines()
    try:  # frameworks may log to stdout on import, before the JSON list
        rows = json.loads("\n".join(lines[lines.index("["):]))
    except (ValueError, json.JSONDecodeError):
        raise SystemExit(f"{package} {release}: gradfix list failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    verdicts = {}
    for row in rows:
        if row["package"] != package:
            continue
        if row["installed_version"] != str(release):
            raise SystemExit(f"{package} {release}: gradfix saw version {row['installed_version']}")
        verdict = row["verdict"]
        verdicts[row["id"]] = {"verdict": verdict, "reason": row["reason"]} if verdict in KEEP_REASON else verdict
    return str(release), verdicts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package")
    parser.add_argument("--since", required=True, help="oldest release to check")
    parser.add_argument("--stack", action="append", default=[], help="a folder the releases import from")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--until", help="newest release to check (default: the newest published)")
    args = parser.parse_args()
    newest = Version(args.until) if args.until else None
    releases = [r for r in published_releases(args.package)
                if r >= Version(args.since) and (newest is None or r <= newest)]
    CACHE.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        stack = [str(Path(folder).resolve()) for folder in args.stack]  # the checks run elsewhere
        results = dict(pool.map(lambda release: assess(args.package, release, stack), releases))
    table = json.loads(TABLE.read_text()) if TABLE.exists() else {}
    import torch

    entry = table.setdefault(args.package, {"releases": {}})
    entry["checked_with"] = f"Python {sys.version.split()[0]}, torch {torch.__version__}"
    entry["releases"].update(results)
    entry["releases"] = dict(sorted(entry["releases"].items(), key=lambda item: Version(item[0])))
    TABLE.write_text(json.dumps(dict(sorted(table.items())), indent=1) + "\n")
    counts = {}
    for verdicts in results.values():
        for verdict in verdicts.values():
            name = verdict if isinstance(verdict, str) else verdict["verdict"]
            counts[name] = counts.get(name, 0) + 1
    print(f"{args.package}: {len(results)} releases checked ({releases[0]} to {releases[-1]}); verdicts {counts}")


if __name__ == "__main__":
    main()
