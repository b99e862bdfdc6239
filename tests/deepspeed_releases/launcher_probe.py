"""Run in every process a launcher starts: imports DeepSpeed (the patch target) and
prints one line ``PROBE <json>`` with this process's rank, pid and the gradfix
state of every DeepSpeed patch. It never imports gradfix itself: gradfix is
active here only if the environment activated it.

    python launcher_probe.py                 # one process (under a launcher: each rank)
    python launcher_probe.py --mp spawn      # this process and two multiprocessing children
"""

import argparse
import json
import os
import sys


def report(origin):
    import deepspeed  # noqa: F401  (the patch target)

    gradfix = sys.modules.get("gradfix")
    states = {s.id: s.state for s in gradfix.status() if s.package == "deepspeed"} if gradfix else None
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID"))
    line = {"origin": origin, "rank": rank, "node": os.environ.get("GROUP_RANK", os.environ.get("SLURM_NODEID")),
            "pid": os.getpid(), "states": states}
    print("PROBE " + json.dumps(line), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mp", choices=("spawn", "forkserver", "fork"))
    args, _ = parser.parse_known_args()  # launchers may add --local_rank
    if not args.mp:
        return report("launcher")
    import multiprocessing

    context = multiprocessing.get_context(args.mp)
    if args.mp == "fork":  # the children inherit what this process imported and patched
        report("parent")
    children = [context.Process(target=report, args=(f"{args.mp} child",)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join()
        assert child.exitcode == 0, child.exitcode


if __name__ == "__main__":
    main()
