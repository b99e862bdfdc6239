"""The window normaliser's own cost: gradfix's read-ahead on OpenRLHF 0.10.3 against
OpenRLHF 0.10.4's built-in one, per optimizer step, on the same SFT run or PPO actor
training phase (``--trainer ppo``; DeepSpeed 0.18.9, ZeRO-2, GA 4, the tests' tiny model).

benchmarks/openrlhf_sft_step.py compares whole step times, and there the releases differ in
more than the normaliser (0.10.3 all-reduces every micro-batch's counts; the noise on a
2-core machine is about 3%). Here each run is profiled (cProfile) and only the code that
computes the window's normalisers is timed:

* gradfix (0.10.3, GRADFIX=1): Plan.counts (the mask sums and the one all-reduce per
  window, cumulative), take_pending (cumulative), and the own time of the read-ahead
  generator and of the loss wrapper's frame (SFT) or of the get_loss_batch_info
  wrapper's (PPO);
* OpenRLHF 0.10.4 (GRADFIX=0): _optimizer_step_loss_norm (cumulative) and the own time of
  iter_grad_accum_global_norm.

Both are divided by the number of optimizer steps, and the step-time ratio they imply is
(t + gradfix) / (t + upstream), with t the unprofiled step time of 0.10.4 (median of
--repeats runs). Profiling inflates Python calls in both alike, so the figures are upper
bounds. Budget: ratio <= 1.01. Needs the releases the nox `openrlhf` session installs; run
it with `python -m nox -s bench_openrlhf_window`.
"""

import argparse
import pstats
import statistics
import sys
import tempfile
from pathlib import Path

from openrlhf_sft_step import DEEPSPEED, runner_result, sft_result  # the same runs, environments and DeepSpeed
from orlrun import PPO_RUNNER

BUDGET = 1.01
GA = 4  # sft_run.py's default: train batch 4, micro-batch 1, one rank
# (file name ends with, function name, cumulative?) for each implementation's normaliser code
WINDOW_CODE = [("gradfix/fixes/openrlhf/_window.py", "counts", True),
               ("gradfix/fixes/openrlhf/_window.py", "take_pending", True)]
GRADFIX_CODE = {"sft": WINDOW_CODE + [("gradfix/fixes/openrlhf/_window.py", "__iter__", False),
                                      ("gradfix/fixes/openrlhf/_window.py", "_next_window", False),
                                      ("gradfix/fixes/openrlhf/_sft.py", "window_loss", False)],
                "ppo": WINDOW_CODE + [("gradfix/fixes/openrlhf/_ppo.py", "__iter__", False),
                                      ("gradfix/fixes/openrlhf/_ppo_dp.py", "window_loss_batch_info", False)]}
PATCH = {"sft": "openrlhf-sft-microbatch-mean-dp", "ppo": "openrlhf-ppo-actor-microbatch-mean-dp"}
UPSTREAM_CODE = [("openrlhf/utils/loss_utils.py", "_optimizer_step_loss_norm", True),
                 ("openrlhf/utils/loss_utils.py", "iter_grad_accum_global_norm", False)]


def seconds_in(profile, code):
    """{function name: seconds spent in it} for ``code`` (see GRADFIX_CODE), from a cProfile dump."""
    stats = pstats.Stats(str(profile)).stats
    seconds = {}
    for (filename, _, function), (_, _, own, cumulative, _) in stats.items():
        for ending, name, whole in code:
            if filename.endswith(ending) and function == name:
                seconds[name] = seconds.get(name, 0.0) + (cumulative if whole else own)
    missing = [name for _, name, whole in code if whole and name not in seconds]
    if missing:
        raise SystemExit(f"{profile}: never ran {missing}; is the patch applied / the release right?")
    return seconds


def ppo_result(release, patched, samples, profile=None):
    """One PPO actor training phase (the tests' runner, micro-batch 1, train batch 4: GA 4)."""
    return runner_result(PPO_RUNNER, release, patched, samples, profile)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--trainer", choices=["sft", "ppo"], default="sft")
    args = parser.parse_args()
    steps = args.samples // GA
    result = sft_result if args.trainer == "sft" else ppo_result
    with tempfile.TemporaryDirectory(prefix="gradfix-bench-profiles-") as folder:
        gradfix_profile, upstream_profile = Path(folder) / "gradfix.prof", Path(folder) / "upstream.prof"
        patched = result("0.10.3", True, args.samples, gradfix_profile)
        record = patched["gradfix"][PATCH[args.trainer]]
        assert record["state"] == "applied" and record["hits"] == steps, record
        result("0.10.4", False, args.samples, upstream_profile)
        ours_by_function = seconds_in(gradfix_profile, GRADFIX_CODE[args.trainer])
        theirs_by_function = seconds_in(upstream_profile, UPSTREAM_CODE)
    ours, theirs = sum(ours_by_function.values()) / steps, sum(theirs_by_function.values()) / steps
    step = statistics.median(result("0.10.4", False, args.samples)["seconds_per_step"] for _ in range(args.repeats))
    ratio = (step + ours) / (step + theirs)
    print(f"OpenRLHF {args.trainer.upper()} on CPU, DeepSpeed {DEEPSPEED} ZeRO-2, GA {GA}, {steps} optimizer steps, "
          "one rank")
    for label, total, by_function in (("gradfix (0.10.3)", ours, ours_by_function),
                                      ("OpenRLHF 0.10.4", theirs, theirs_by_function)):
        parts = ", ".join(f"{name} {seconds / steps * 1e3:.3f}" for name, seconds in by_function.items())
        print(f"  window normaliser, {label + ':':18s} {total * 1e3:8.3f} ms/step profiled ({parts})")
    print(f"  OpenRLHF 0.10.4 step time, unprofiled: {step * 1e3:8.1f} ms/step, median of {args.repeats}")
    print(f"implied step-time ratio, gradfix / 0.10.4 = {ratio:.4f} (budget {BUDGET})")
    return 0 if ratio <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
