"""Interpreter start-up with gradfix installed and GRADFIX unset, against a twin
environment without gradfix. Budget: ratio <= 1.02 (no measurable difference).

Two measurements, in one run:

* end to end: ``python -c pass`` in both environments, interleaved, medians. An
  A/A control (the environment without gradfix, timed twice) shows how much of a
  ratio this machine's noise alone produces;
* direct: the time ``site`` spends on gradfix.pth (all that gradfix adds to a
  start-up with GRADFIX unset), in-process over many repetitions, as a ratio to
  the start-up time. This one is precise enough to check against the budget.

`--check` exits 1 when the direct ratio is over budget.
"""

import argparse
import os
import subprocess
import sys

from _envs import DEPENDENCIES, NEUTRAL_CWD, build_wheel, make_venv, median_ms, scratch, wall_time

BUDGET = 1.02
SITE_COST = (
    "import site, sysconfig, time\n"
    "folder = sysconfig.get_paths()['purelib']\n"
    "n = 5000\n"
    "start = time.perf_counter()\n"
    "for _ in range(n):\n"
    "    site.addpackage(folder, 'gradfix.pth', set())\n"
    "print((time.perf_counter() - start) / n * 1000)\n"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--check", action="store_true", help="exit 1 when over budget")
    args = parser.parse_args()

    root = scratch()
    wheel = build_wheel(root / "dist")
    without = make_venv(root / "without", *DEPENDENCIES)
    with_gradfix = make_venv(root / "with", *DEPENDENCIES, str(wheel))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADFIX")}

    samples = {"without": [], "with": [], "control": []}
    for _ in range(5):  # warm the page cache; not measured
        wall_time([str(without), "-c", "pass"], env)
        wall_time([str(with_gradfix), "-c", "pass"], env)
    for _ in range(args.rounds):
        samples["without"].append(wall_time([str(without), "-c", "pass"], env))
        samples["with"].append(wall_time([str(with_gradfix), "-c", "pass"], env))
        samples["control"].append(wall_time([str(without), "-c", "pass"], env))
    base, patched, control = (median_ms(samples[k]) for k in ("without", "with", "control"))
    pth_ms = float(subprocess.run([str(with_gradfix), "-c", SITE_COST], env=env, cwd=NEUTRAL_CWD,
                                  check=True, capture_output=True, text=True).stdout)
    direct = (base + pth_ms) / base

    print(f"python -c pass, GRADFIX unset, median of {args.rounds} interleaved runs")
    print(f"  without gradfix installed: {base:7.2f} ms")
    print(f"  with gradfix installed:    {patched:7.2f} ms   end-to-end ratio {patched / base:.3f}")
    print(f"  without, timed again:      {control:7.2f} ms   A/A noise ratio  {control / base:.3f}")
    print(f"site's work on gradfix.pth: {pth_ms * 1000:.1f} us per start-up")
    print(f"  direct ratio: {direct:.4f} (budget {BUDGET})  {'OK' if direct <= BUDGET else 'OVER BUDGET'}")
    return 1 if args.check and direct > BUDGET else 0


if __name__ == "__main__":
    sys.exit(main())
