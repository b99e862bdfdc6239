"""Cost of `import gradfix` (which activates it) in a fresh interpreter, with none of
the catalog's frameworks installed, and a check that it imports no framework and no
fix module. All in one run, budgets on this 2-core machine:

* `import gradfix` (in-process `time.perf_counter`, median of fresh interpreters)
  <= 3 ms;
* the same with 200 extra catalog entries (a GRADFIX_CATALOG_PATH folder of packages
  that are not installed, reusing built-in implementation modules) <= 1.25 x without
  them: activation must not grow with the catalog. The folder is timed three ways: with
  an unchecked index (`gradfix index --unchecked`, held to the budget), with a checked
  one (`gradfix index`, which pays a listing and one stat per file) and not indexed
  (every start-up parses the TOML files);
* `python -c pass` with GRADFIX=1 <= 1.10 x with GRADFIX unset (whole process,
  paired runs, median of the per-pair ratios): what exporting GRADFIX=1 to every
  process of a job costs each one.

`--check` exits 1 over a budget or when a framework or fix module gets imported.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from _envs import DEPENDENCIES, NEUTRAL_CWD, build_wheel, make_venv, median_ms, scratch, wall_time

BUDGET_MS = 3.0
CATALOG_GROWTH_BUDGET = 1.25  # 200 extra entries
ENVIRONMENT_BUDGET = 1.10  # python -c pass, GRADFIX=1 vs unset
EXTRA_ENTRIES = 200
FRAMEWORKS = ("torch", "deepspeed", "openrlhf", "trl", "transformers", "accelerate", "llamafactory", "numpy")
PROBE = (
    "import time, sys\n"
    "start = time.perf_counter()\n"
    "import gradfix\n"
    "elapsed = time.perf_counter() - start\n"
    "import json\n"
    f"print(json.dumps([elapsed, [m for m in {FRAMEWORKS!r} if m in sys.modules],\n"
    "                  [m for m in sys.modules if m.startswith('gradfix.fixes')],\n"
    "                  len(gradfix.status())]))\n"
)
SYNTHETIC_ENTRY = """id = "synthetic-{number:03d}"
package = "gradfix-synthetic-{number:03d}"
affected = ">=1.0,<2.0"
fixed_in = "2.0"
summary = "A synthetic entry of the start-up benchmark."
trigger = "Never: the package does not exist."
effect = "None."
upstream = ["benchmarks/import_cost.py"]
implementation = "{implementation}"
since = "0.1.0"
"""


def synthetic_catalog(python, folder, count=EXTRA_ENTRIES):
    """``count`` catalog entries for packages that are not installed, reusing the built-in
    implementation modules (of the gradfix installed for ``python``) in turn."""
    listing = "import json\nfrom gradfix import catalog\nprint(json.dumps([e.implementation for e in catalog.load().entries]))"
    implementations = sorted(set(json.loads(subprocess.run(
        [python, "-c", listing], check=True, capture_output=True, text=True, cwd=NEUTRAL_CWD,
        env=dict(os.environ, GRADFIX="0")).stdout)))
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        text = SYNTHETIC_ENTRY.format(number=number, implementation=implementations[number % len(implementations)])
        (folder / f"synthetic-{number:03d}.toml").write_text(text)
    return folder


class Cost:
    """`import gradfix` in one environment: the median seconds over fresh interpreters,
    the frameworks and fix modules it imported, the patch counts it reported."""

    def __init__(self):
        self.times, self.frameworks, self.fixes, self.patches = [], set(), set(), set()

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def import_costs(python, envs: dict, rounds: int) -> dict:
    """name -> Cost of each environment, measured in turn within every round (the order
    alternates), so that a change of the machine's speed during the run affects them alike
    and the ratios between them stay fair."""
    for env in envs.values():
        for _ in range(3):  # warm the page cache; not measured
            wall_time([python, "-c", "import gradfix"], env)
    costs = {name: Cost() for name in envs}
    for number in range(rounds):
        for name, env in list(envs.items())[:: 1 if number % 2 else -1]:
            out = subprocess.run([python, "-c", PROBE], check=True, env=env, cwd=NEUTRAL_CWD,
                                 capture_output=True, text=True).stdout
            elapsed, imported, fix_modules, count = json.loads(out)
            cost = costs[name]
            cost.times.append(elapsed)
            cost.frameworks.update(imported)
            cost.fixes.update(fix_modules)
            cost.patches.add(count)
    return costs


def paired_start_up(python, env, rounds):
    """Median of per-pair ratios: `python -c pass` with GRADFIX=1 over GRADFIX unset,
    the two runs of each pair back to back (in alternating order)."""
    on = dict(env, GRADFIX="1")
    ratios, medians = [], {"unset": [], "on": []}
    for number in range(rounds):
        order = [("unset", env), ("on", on)][:: 1 if number % 2 else -1]
        times = {name: wall_time([python, "-c", "pass"], variables) for name, variables in order}
        ratios.append(times["on"] / times["unset"])
        for name, value in times.items():
            medians[name].append(value)
    return statistics.median(ratios), median_ms(medians["unset"]), median_ms(medians["on"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--check", action="store_true", help="exit 1 when over budget")
    args = parser.parse_args()

    root = scratch()
    python = str(make_venv(root / "venv", *DEPENDENCIES, str(build_wheel(root / "dist"))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADFIX")}
    # Three copies of the same 200 entries: TOML files only (parsed at every start-up), a
    # checked index (`gradfix index`) and an unchecked one (`gradfix index --unchecked`).
    folders = {kind: synthetic_catalog(python, root / kind) for kind in ("parsed", "checked", "unchecked")}
    for kind, flags in (("checked", []), ("unchecked", ["--unchecked"])):
        subprocess.run([python, "-m", "gradfix", "index", *flags, str(folders[kind])], check=True,
                       capture_output=True, cwd=NEUTRAL_CWD)
    envs = {"shipped": env, **{kind: dict(env, GRADFIX_CATALOG_PATH=str(f)) for kind, f in folders.items()}}
    costs = import_costs(python, envs, args.rounds)
    ratio, unset_ms, on_ms = paired_start_up(python, env, args.rounds * 2)
    slow = subprocess.run([python, "-X", "importtime", "-c", "import gradfix"], env=env, cwd=NEUTRAL_CWD,
                          capture_output=True, text=True).stderr.splitlines()
    slow = [line for line in slow if line.startswith("import time:") and "cumulative" not in line]
    heaviest = sorted(slow, key=lambda line: -int(line.split("|")[1]))[:6]

    def verdict(ok):
        return "OK" if ok else "OVER BUDGET"

    base = costs["shipped"]
    cost_ms = base.median * 1000
    growth = {kind: costs[kind].median / base.median for kind in folders}
    print(f"import gradfix (activation included), median of {args.rounds} fresh interpreters, the four set-ups "
          "measured in turn")
    print(f"  catalog as shipped ({sorted(base.patches)} patches): {cost_ms:6.2f} ms "
          f"(budget {BUDGET_MS} ms)  {verdict(cost_ms <= BUDGET_MS)}")
    print(f"  with {EXTRA_ENTRIES} extra entries ({sorted(costs['unchecked'].patches)} patches), budget "
          f"x{CATALOG_GROWTH_BUDGET}:")
    labels = {"unchecked": "`gradfix index --unchecked` (start-up reads the index only)",
              "checked": "`gradfix index` (a listing and one stat per file at start-up)",
              "parsed": "not indexed (every start-up parses the 200 TOML files)"}
    for kind in ("unchecked", "checked", "parsed"):
        print(f"    {labels[kind]}: {costs[kind].median * 1000:6.2f} ms, x{growth[kind]:.3f}  "
              f"{verdict(growth[kind] <= CATALOG_GROWTH_BUDGET)}")
    print(f"python -c pass, {args.rounds * 2} pairs: GRADFIX unset {unset_ms:.2f} ms, GRADFIX=1 {on_ms:.2f} ms; "
          f"median pair ratio x{ratio:.3f} (budget x{ENVIRONMENT_BUDGET})  {verdict(ratio <= ENVIRONMENT_BUDGET)}")
    frameworks = set().union(*(c.frameworks for c in costs.values()))
    fixes = set().union(*(c.fixes for c in costs.values()))
    print(f"  frameworks imported: {sorted(frameworks) or 'none'}")
    print(f"  fix modules imported: {sorted(fixes) or 'none'}")
    print("  heaviest imports (-X importtime, cumulative us):")
    for line in heaviest:
        print("   ", " ".join(line.split()))
    over = (cost_ms > BUDGET_MS or growth["unchecked"] > CATALOG_GROWTH_BUDGET or ratio > ENVIRONMENT_BUDGET
            or frameworks or fixes)
    return 1 if args.check and over else 0


if __name__ == "__main__":
    sys.exit(main())
