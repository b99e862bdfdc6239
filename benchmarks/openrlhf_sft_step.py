"""Optimizer-step time of OpenRLHF SFT with gradfix's window read-ahead against
OpenRLHF 0.10.4's own window normalisation, on the same DeepSpeed (0.18.9, ZeRO-2,
GA 4), interleaved in one run:

* OpenRLHF 0.10.4, GRADFIX=0: the baseline;
* OpenRLHF 0.10.3 with GRADFIX=1 (openrlhf-sft-microbatch-mean-dp): the same
  transformers (5.7.0) and nearly the same code as 0.10.4, so the ratio is the
  cost of the read-ahead against 0.10.4's; the budget applies to it;
* OpenRLHF 0.10.3 unpatched, and 0.9.10 (the paper's release) with and without
  gradfix, for scale (0.9.10 also differs in its transformers, 5.5.0);
* OpenRLHF 0.10.4, GRADFIX=0, a second time: a control for the noise.

Each run is the real CLI on the tiny model of the tests (tests/openrlhf_releases/sft_run.py);
the time per step excludes start-up and the first step. Budget: 0.10.3 + gradfix <=
1.01 x 0.10.4. Needs the releases the nox `openrlhf` session installs; run it with
`python -m nox -s bench_openrlhf`.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# The runs are the test suite's: its runner and its environment for a cached release.
TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "openrlhf_releases")]
from orlrun import SFT_RUNNER, release_env  # noqa: E402

BUDGET = 1.01
DEEPSPEED = "0.18.9"
RUNS = {"fixed 0.10.4": ("0.10.4", False), "0.10.3 + gradfix": ("0.10.3", True),
        "0.10.3 unpatched": ("0.10.3", False), "0.9.10 + gradfix": ("0.9.10", True),
        "0.9.10 unpatched": ("0.9.10", False), "fixed 0.10.4 (control)": ("0.10.4", False)}


def runner_result(runner, release, patched, samples, profile=None):
    """One run of a test runner (sft_run.py, ppo_run.py) against ``release``: its RESULT.
    ``profile``: run it under cProfile and write the dump there."""
    env = release_env(release, DEEPSPEED, GRADFIX="1" if patched else "0")
    prefix = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    with tempfile.TemporaryDirectory(prefix="gradfix-bench-openrlhf-") as workdir:
        proc = subprocess.run([*prefix, str(runner), "--workdir", workdir, "--samples", str(samples)],
                              env=env, cwd=workdir, capture_output=True, text=True, check=True)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def sft_result(release, patched, samples, profile=None):
    """One SFT run through OpenRLHF's CLI (the tests' runner)."""
    return runner_result(SFT_RUNNER, release, patched, samples, profile)


def seconds_per_step(release, patched, samples):
    return sft_result(release, patched, samples)["seconds_per_step"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    times = {name: [] for name in RUNS}
    for _ in range(args.repeats):
        for name, (release, patched) in RUNS.items():
            times[name].append(seconds_per_step(release, patched, args.samples))
    baseline = statistics.median(times["fixed 0.10.4"])
    print(f"OpenRLHF SFT on CPU, DeepSpeed {DEEPSPEED} ZeRO-2, GA 4, {args.samples // 4} steps, "
          f"median of {args.repeats} interleaved runs")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:24s} {median * 1000:8.1f} ms/step   ratio {median / baseline:.3f}")
    ratio = statistics.median(times["0.10.3 + gradfix"]) / baseline
    print(f"patched / fixed = {ratio:.3f} (budget {BUDGET})")
    return 0 if ratio <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
