"""python -m gradfix.conformance: run, check and summarise the conformance matrix.

    python -m gradfix.conformance run --folder ~/.cache/gradfix/deepspeed --releases 0.18.3,0.19.8
    python -m gradfix.conformance run --package transformers --folder ~/.cache/gradfix/transformers \\
        --releases 4.46.2,4.54.0 --deepspeed-folder ~/.cache/gradfix/deepspeed/ds-0.16.4
    python -m gradfix.conformance check      # exit 1 when a record is not accounted for
    python -m gradfix.conformance table      # the README summary

``run`` needs torch in this interpreter's environment and each release installed in
FOLDER/ds-RELEASE (as the nox sessions install them); it merges its records into the
matrix file after every release, so an interrupted run keeps what it finished.
"""

import argparse
import os
import sys
import time

from . import deepspeed_cases, records, runner, summary, trainer_cases


def _summary(package, release, found, seconds):
    counts = {}
    for record in found:
        key = f"{record['unpatched']}/{record['gradfix']}"
        counts[key] = counts.get(key, 0) + 1
    print(f"{package} {release}: {len(found)} cases in {seconds:.0f} s "
          f"(unpatched/gradfix: {', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})", flush=True)


def _deepspeed_release(args, release):
    """(records, or None with a message) of one installed DeepSpeed release."""
    folder = os.path.join(args.folder, f"ds-{release}")
    if not os.path.isdir(folder):
        return None, f"{folder} does not exist: install DeepSpeed {release} there first"
    variables = dict(os.environ, PYTHONPATH=folder, TORCH_EXTENSIONS_DIR=os.path.join(args.folder, f"ext-{release}"),
                     GRADFIX_LOG="quiet")
    environment = runner.Environment(sys.executable, variables)
    cases = deepspeed_cases.cases()
    _, results = runner.run_release(environment, cases, parallel=args.parallel)

    def alone(case):
        _, again = runner.run_release(environment, [case], parallel=1)
        return runner.records(release, [case], again)[0]

    return _rerun_inconsistent(runner.records(release, cases, results), cases, alone), None


def _transformers_release(args, release):
    """(records, or None with a message) of one transformers release: FOLDER/tf-RELEASE,
    or this interpreter's own transformers when it is that release."""
    from importlib import metadata

    folder = os.path.join(args.folder, f"tf-{release}")
    variables = dict(os.environ, GRADFIX_LOG="quiet")
    if os.path.isdir(folder):
        variables["PYTHONPATH"] = folder
    else:
        try:
            installed = metadata.version("transformers")
        except metadata.PackageNotFoundError:
            installed = None
        if installed != release:
            return None, f"{folder} does not exist and this interpreter has transformers {installed}, not {release}"
        variables.pop("PYTHONPATH", None)
    deepspeed = None
    if args.deepspeed_folder:
        deepspeed = args.deepspeed_folder
        variables["TORCH_EXTENSIONS_DIR"] = deepspeed.rstrip(os.sep) + "-transformers-ext"
    environment = runner.Environment(sys.executable, variables, timeout=600)
    cases = trainer_cases.cases()
    results = runner.run_trainer_release(environment, cases, deepspeed, parallel=args.parallel)

    def alone(case):
        again = runner.run_trainer_release(environment, [case], deepspeed, parallel=1)
        return runner.trainer_records(release, [case], again)[0]

    return _rerun_inconsistent(runner.trainer_records(release, cases, results), cases, alone), None


def _run(args):
    path = args.out or os.path.join(records.patches_dir(), records.MATRIX)
    one_release = _deepspeed_release if args.package == "deepspeed" else _transformers_release
    for release in args.releases.split(","):
        started = time.monotonic()
        found, problem = one_release(args, release)
        if problem:
            print(problem, file=sys.stderr)
            return 2
        records.save(records.merge(records.load(path), found), path)
        _summary(args.package, release, found, time.monotonic() - started)
    return 0


def _rerun_inconsistent(found, cases, alone):
    """A case whose gradfix run changed nothing (no patch acted) runs the same code as the
    unpatched one, so their outcomes must agree. Where they do not, the case runs again on
    its own (``alone(case)``); the rerun's record is kept, with what the first run saw, so
    that the matrix does not commit a one-off (DeepSpeed's asynchronous offload copies are
    not deterministic under load) as a bug, nor hide one that recurs."""
    out = []
    for case, record in zip(cases, found):
        inconsistent = (not record["patches"] and "not_run" not in record
                        and record["unpatched"] != record["gradfix"])
        if inconsistent:
            rerun = alone(case)
            rerun["first_run"] = {way: [record[way], record[f"{way}_error"]] for way in ("unpatched", "gradfix")}
            print(f"  {record['case']}: unpatched {record['unpatched']}, gradfix {record['gradfix']} with no patch "
                  f"acting; alone: unpatched {rerun['unpatched']}, gradfix {rerun['gradfix']}", flush=True)
            record = rerun
        out.append(record)
    return out


def _matrix_path(args):
    """The matrix file, or None after saying why there is none (a wheel does not ship it)."""
    path = args.matrix or os.path.join(records.patches_dir(), records.MATRIX)
    if not os.path.exists(path):
        print(f"no conformance records at {path}: run from a checkout of gradfix (patches/{records.MATRIX}) "
              "or pass --matrix", file=sys.stderr)
        return None
    return path


def _check(args):
    path = _matrix_path(args)
    if path is None:
        return 2
    matrix = records.load(path)
    known = records.known_uncovered(os.path.join(os.path.dirname(path), records.KNOWN))
    missing = records.unexplained(matrix, known=known)
    for record in missing:
        print(f"not accounted for: {record['package']} {record['release']} {record['case']}: "
              f"unpatched {record['unpatched']} ({record['unpatched_error']}), "
              f"gradfix {record['gradfix']} ({record['gradfix_error']}), patches {record['patches']}")
    print(f"{len(matrix)} records, {len(missing)} not accounted for by the catalog or the known list")
    return 1 if missing else 0


def _table(args):
    path = _matrix_path(args)
    if path is None:
        return 2
    matrix = records.load(path)
    print("\n\n".join(summary.summary_table(matrix, package) for package in summary.COLUMNS))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gradfix.conformance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the cases on installed releases of one package")
    run.add_argument("--package", choices=("deepspeed", "transformers"), default="deepspeed")
    run.add_argument("--folder", required=True,
                     help="holds one ds-RELEASE (DeepSpeed) or tf-RELEASE (transformers) folder per release")
    run.add_argument("--deepspeed-folder",
                     help="transformers: a DeepSpeed release folder for the cases through DeepSpeed "
                     "(one without DeepSpeed bugs in ZeRO-2 fp32, so only the Trainer's show; they are skipped without)")
    run.add_argument("--releases", required=True, help="comma-separated releases")
    run.add_argument("--out", help="matrix file (default: the catalog's conformance.json)")
    run.add_argument("--parallel", type=int, default=2, help="worker processes at a time")
    for name, text in (("check", "every record corrected, right, or a known uncovered bug"),
                       ("table", "print the README summaries of the committed matrix")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--matrix", help="matrix file (default: patches/conformance.json of this checkout)")
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    return _check(args) if args.command == "check" else _table(args)


if __name__ == "__main__":
    sys.exit(main())
