"""The ``gradfix`` command line (also ``python -m gradfix``).

Exit codes: 0 all is well; 1 something needs attention (an UNSUPPORTED or FAILED
patch, a problem found by doctor, or a `verify` run that is wrong with gradfix); 2
usage error, catalog errors, or `verify` could not run. ``run``
replaces itself with the command, so its exit code is the command's (127 when
the command cannot be found).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import List, Optional

from . import config, doctor, engine
from . import __version__
from .registry import State
from .verdicts import NEEDS_ATTENTION, assess_catalog

OK, ATTENTION, USAGE = 0, 1, 2


def _table(rows: List[List[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def cmd_list(args) -> int:
    settings = config.current()
    catalog, rows = assess_catalog(settings)
    for problem in catalog.problems:
        print(f"gradfix: catalog error: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps([
            {
                "id": entry.id,
                "package": entry.package,
                "affected": entry.affected,
                "fixed_in": entry.fixed_in,
                "installed_version": status.installed_version,
                "verdict": verdict,
                "reason": status.reason,
                "summary": entry.summary,
                "upstream": list(entry.upstream),
            }
            for entry, status, verdict in rows
        ], indent=2), file=args.out)
    elif not rows:
        print("The catalog has no patches.")
    else:
        table = [["ID", "PACKAGE", "AFFECTED", "FIXED IN", "INSTALLED", "VERDICT"]]
        table += [
            [entry.id, entry.package, entry.affected, entry.fixed_in,
             status.installed_version or "-", verdict]
            for entry, status, verdict in rows
        ]
        print(_table(table))
        for entry, status, verdict in rows:
            if verdict in NEEDS_ATTENTION:
                print(f"\n{entry.id}: {status.reason}")
    if catalog.problems:
        return USAGE
    return ATTENTION if any(verdict in NEEDS_ATTENTION for _, _, verdict in rows) else OK


def cmd_status(args) -> int:
    statuses = engine.activate()
    if args.json:
        print(json.dumps([s.to_dict() for s in statuses], indent=2), file=args.out)
    elif not statuses:
        print(f"gradfix {__version__}: the catalog has no patches.")
    else:
        profile = config.current().profile
        print(f"gradfix {__version__}: " + (f"patch set of gradfix {profile} (GRADFIX_PROFILE)\n" if profile
                                            else "its own patch set (GRADFIX_PROFILE unset)\n"))
        table = [["ID", "STATE", "REASON"]]
        table += [[s.id, s.state, s.reason] for s in statuses]
        print(_table(table))
        print("\n(This process only. Inside a training run, gradfix.status() and the line gradfix "
              "logs at exit say how often each applied patch corrected the buggy path; GRADFIX_LOG=debug "
              "makes every rank log its own lines, and gradfix.ray.worker_status() asks Ray workers.)")
    return ATTENTION if any(s.state in (State.UNSUPPORTED, State.CONFLICT, State.FAILED) for s in statuses) else OK


def cmd_index(args) -> int:
    from . import catalog, catalog_files

    code = OK
    for folder in args.folders:
        if not os.path.isdir(folder):
            print(f"gradfix index: {folder} is not a folder", file=sys.stderr)
            code = USAGE
            continue
        loaded = catalog_files.write_folder_index(folder, checked=not args.unchecked)
        for problem in loaded.problems:
            print(f"gradfix index: catalog error: {problem}", file=sys.stderr)
        if loaded.problems:
            print(f"gradfix index: {folder}: not indexed; fix the errors above and run it again", file=sys.stderr)
            code = USAGE
        elif args.unchecked:
            print(f"{os.path.join(folder, catalog.FOLDER_INDEX)}: {len(loaded.entries)} entries, unchecked: "
                  "start-up trusts it without looking at the files (run this again after changing the folder; "
                  "`gradfix doctor` says when it is stale)")
        else:
            print(f"{os.path.join(folder, catalog.FOLDER_INDEX)}: {len(loaded.entries)} entries; used at start-up "
                  "while the folder's files are unchanged (run this again after editing them)")
    return code


def cmd_doctor(args) -> int:
    return doctor.run(sys.stdout)


def cmd_run(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("gradfix run: give the command to run, e.g. `gradfix run -- torchrun train.py`",
              file=sys.stderr)
        return USAGE
    env = dict(os.environ, GRADFIX="1")
    if args.strict:
        env["GRADFIX_STRICT"] = "1"
    if args.log:
        env["GRADFIX_LOG"] = args.log
    if args.disable:
        env["GRADFIX_DISABLE"] = args.disable
    if not doctor.bootstrap_installed():
        print("gradfix run: warning: the start-up file gradfix.pth is not installed for this "
              "Python, so GRADFIX=1 may have no effect; see `gradfix doctor`.", file=sys.stderr)
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"gradfix run: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    return OK  # not reached


def cmd_verify(args) -> int:
    from . import verify  # imports nothing heavy itself; the runs happen in subprocesses

    return verify.main(args, out=args.out)


def _call_shapes(text):
    from .verify.calls import parse_calls

    try:
        return parse_calls(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradfix",
        description="Correct known gradient-accumulation and loss-reduction bugs of pinned "
        "training-framework releases.",
        epilog="Exit codes: 0 ok, 1 needs attention, 2 usage or catalog error; "
        "`run` returns the command's own exit code.",
    )
    parser.add_argument("--version", action="version", version=f"gradfix {__version__}")
    sub = parser.add_subparsers(dest="name", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("list", help="every catalog entry and its verdict for this environment")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("status", help="activate in this process and show the patch records")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("index", help="compile GRADFIX_CATALOG_PATH folders for a fast start-up",
                       description="Validate each catalog folder and record it in FOLDER/gradfix-index.marshal, "
                       "which start-up reads instead of parsing the TOML files while they are unchanged.")
    p.add_argument("folders", nargs="+", metavar="FOLDER")
    p.add_argument("--unchecked", action="store_true",
                   help="for a folder that is deployed, not edited: start-up trusts the index without "
                   "listing the folder or checking each file's size and time; `gradfix doctor` says when it is stale")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("doctor", help="check the installation and say what matters here")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("run", help="run a command with gradfix active in every Python process",
                       usage="gradfix run [--strict] [--log LEVEL] [--disable IDS] -- COMMAND [ARGS...]")
    p.add_argument("--strict", action="store_true", help="set GRADFIX_STRICT=1")
    p.add_argument("--log", choices=config.LOG_LEVELS, help="set GRADFIX_LOG")
    p.add_argument("--disable", metavar="IDS", help="set GRADFIX_DISABLE (comma-separated ids or *)")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="check the installed DeepSpeed's gradient accumulation, without "
                       "and with gradfix, against a plain PyTorch reference",
                       description="Train a tiny model a few steps three times (DeepSpeed without gradfix, "
                       "with gradfix, plain PyTorch) and compare. Exit codes: 0 the run with gradfix matches "
                       "the reference, 1 it does not, 2 verify could not run.")
    p.add_argument("--ds-config", metavar="PATH", help="your DeepSpeed JSON (default: ZeRO-2, CPU optimizer "
                   "offload, GA 4, fp32); \"auto\" values are resolved, the optimizer is replaced by SGD")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="override the config's precision (default: what the config says; fp32 for auto)")
    p.add_argument("--ga", type=int, metavar="N", help="override gradient_accumulation_steps")
    p.add_argument("--backwards", type=int, default=1, metavar="K",
                   help="backward() calls per optimizer step, for GA 1 with several backwards (default 1)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run (default 3)")
    p.add_argument("--ranks", type=int, default=1, metavar="N",
                   help="data-parallel ranks of the DeepSpeed runs, started on this machine (default 1; bugs in "
                        "the cross-rank reduction need 2)")
    p.add_argument("--pipeline-stages", type=int, default=0, metavar="S",
                   help="train the model as a DeepSpeed PipelineModule of S stages with train_batch() (S x ranks "
                        "processes; ZeRO 0 or 1; default 0: no pipeline)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where DeepSpeed runs (default: cuda when available, else cpu)")
    p.add_argument("--calls", metavar="SHAPES", type=_call_shapes, default=None,
                   help="call shapes OUTPUT:BACKWARD, comma-separated, or all (default: tensor:engine, "
                        "model-output:engine, shared:engine, model-output:direct, shared:direct): OUTPUT tensor "
                        "(the model returns its prediction), model-output ({loss, logits}), tuple ((loss, "
                        "logits, hidden)), shared (the loss adds a forward of engine.module), two-forwards, aux "
                        "(a loss with an auxiliary loss returned beside it), checkpoint, eval-forward; BACKWARD "
                        "engine (engine.backward(loss)) or direct (loss.backward())")
    p.add_argument("--timeout", type=float, default=600, help="seconds per run before giving up (default 600)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)
    return parser


@contextlib.contextmanager
def _standard_output_for_json():
    """With --json, standard output holds the JSON document and nothing else: whatever
    is printed while the command runs (DeepSpeed's accelerator line when an assessment
    imports it, a C extension's output, a child process's) goes to standard error. Yields
    the stream the document is written to."""
    document = sys.stdout
    sys.stdout.flush()
    try:
        out_fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # not backed by files (an in-process capture)
        out_fd = err_fd = None
    if out_fd is not None:
        document = os.fdopen(os.dup(out_fd), "w", encoding=getattr(sys.stdout, "encoding", None) or "utf-8")
        os.dup2(err_fd, out_fd)
    saved, sys.stdout = sys.stdout, sys.stderr
    try:
        yield document
    finally:
        sys.stdout = saved
        document.flush()
        if out_fd is not None:
            saved.flush()
            os.dup2(document.fileno(), out_fd)
            document.close()


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "json", False):
        args.out = sys.stdout
        return args.func(args)
    with _standard_output_for_json() as args.out:
        return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
