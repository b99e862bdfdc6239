"""Interpreter start-up with gradfix installed and GRADFIX unset, against a twin
environment without gradfix. Budget: ratio <= 1.02 (no measurable difference).

Both environments hold the same dependencies (wrapt, packaging); runs are
interleaved so machine noise hits both alike. `--check` exits 1 over budget.
"""

import argparse
import os
import sys

from _envs import DEPENDENCIES, build_wheel, make_venv, median_ms, scratch, wall_time

BUDGET = 1.02


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--check", action="store_true", help="exit 1 when over budget")
    args = parser.parse_args()

    root = scratch()
    wheel = build_wheel(root / "dist")
    without = make_venv(root / "without", *DEPENDENCIES)
    with_gradfix = make_venv(root / "with", *DEPENDENCIES, str(wheel))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADFIX")}

    samples = {"without": [], "with": []}
    for _ in range(5):  # warm the page cache; not measured
        wall_time([str(without), "-c", "pass"], env)
        wall_time([str(with_gradfix), "-c", "pass"], env)
    for _ in range(args.rounds):
        samples["without"].append(wall_time([str(without), "-c", "pass"], env))
        samples["with"].append(wall_time([str(with_gradfix), "-c", "pass"], env))
    base, patched = median_ms(samples["without"]), median_ms(samples["with"])
    ratio = patched / base
    print(f"python -c pass, median of {args.rounds} interleaved runs, GRADFIX unset")
    print(f"  without gradfix installed: {base:7.2f} ms")
    print(f"  with gradfix installed:    {patched:7.2f} ms")
    print(f"  ratio: {ratio:.3f} (budget {BUDGET})  {'OK' if ratio <= BUDGET else 'OVER BUDGET'}")
    return 1 if args.check and ratio > BUDGET else 0


if __name__ == "__main__":
    sys.exit(main())
