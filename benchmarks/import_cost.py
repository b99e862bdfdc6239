"""Cost of `import gradfix` (which activates it) in a fresh interpreter, and a
check that it imports no framework. Budget: <= 15 ms on the 2-core CI machine.

Reported both absolutely and as a ratio to the interpreter's own start-up, all
in one run. `--check` exits 1 over budget or when a framework gets imported.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from _envs import DEPENDENCIES, NEUTRAL_CWD, build_wheel, make_venv, median_ms, scratch, wall_time

BUDGET_MS = 15.0
FRAMEWORKS = ("torch", "deepspeed", "openrlhf", "trl", "transformers", "accelerate", "llamafactory", "numpy")
PROBE = (
    "import time, sys, json\n"
    "start = time.perf_counter()\n"
    "import gradfix\n"
    "elapsed = time.perf_counter() - start\n"
    f"print(json.dumps([elapsed, [m for m in {FRAMEWORKS!r} if m in sys.modules]]))\n"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--check", action="store_true", help="exit 1 when over budget")
    args = parser.parse_args()

    root = scratch()
    python = str(make_venv(root / "venv", *DEPENDENCIES, str(build_wheel(root / "dist"))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADFIX")}

    imports, startups, leaked = [], [], set()
    for _ in range(5):  # warm the page cache; not measured
        wall_time([python, "-c", "import gradfix"], env)
    for _ in range(args.rounds):
        out = subprocess.run([python, "-c", PROBE], check=True, env=env, cwd=NEUTRAL_CWD,
                             capture_output=True, text=True).stdout
        elapsed, frameworks = json.loads(out)
        imports.append(elapsed)
        leaked.update(frameworks)
        startups.append(wall_time([python, "-c", "pass"], env))
    cost, start = statistics.median(imports) * 1000, median_ms(startups)
    slow = subprocess.run([python, "-X", "importtime", "-c", "import gradfix"], env=env, cwd=NEUTRAL_CWD,
                          capture_output=True, text=True).stderr.splitlines()
    slow = [line for line in slow if line.startswith("import time:") and "cumulative" not in line]
    heaviest = sorted(slow, key=lambda line: -int(line.split("|")[1]))[:6]

    print(f"import gradfix (activation included), median of {args.rounds} fresh interpreters")
    print(f"  import gradfix: {cost:6.2f} ms (budget {BUDGET_MS} ms)  {'OK' if cost <= BUDGET_MS else 'OVER BUDGET'}")
    print(f"  python -c pass: {start:6.2f} ms; ratio (start-up + import) / start-up: {(start + cost) / start:.3f}")
    print(f"  frameworks imported: {sorted(leaked) or 'none'}")
    print("  heaviest imports (-X importtime, cumulative us):")
    for line in heaviest:
        print("   ", " ".join(line.split()))
    over = cost > BUDGET_MS or bool(leaked)
    return 1 if args.check and over else 0


if __name__ == "__main__":
    sys.exit(main())
