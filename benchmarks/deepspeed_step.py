"""Optimizer-step time of ZeRO-2 + CPU offload + gradient accumulation 8 on a model of
about 17M parameters, on CPU, three ways in one run (interleaved):

* the first fixed release, unpatched (0.19.0): the baseline;
* a buggy release with gradfix (0.18.9, GRADFIX=1);
* the same buggy release unpatched (for scale: it skips work the fix must do);
* the fixed release with GRADFIX=1 (its patches are not needed: a control for the noise
  and for what merely having gradfix active costs).

Budget: patched buggy <= 1.02 x the fixed release. Needs the DeepSpeed releases
installed by the nox `deepspeed` session; run it with `python -m nox -s bench_deepspeed`.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _envs

BUDGET = 1.02
HIDDEN, LAYERS, MICRO_BATCH, GA = 2048, 4, 8, 8


def worker(steps: int, warmup: int, offload: str) -> None:
    import deepspeed
    import torch

    _envs.single_process_distributed_env()
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    layers = []
    for _ in range(LAYERS):
        layers += [torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.Tanh()]
    net = torch.nn.Sequential(*layers)
    config = {
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "gradient_accumulation_steps": GA,
        "zero_optimization": {"stage": 2, **({"offload_optimizer": {"device": offload}} if offload != "none" else {})},
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    engine, _, _, _ = deepspeed.initialize(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=1e-3), config=config)
    x, y = torch.randn(MICRO_BATCH, HIDDEN), torch.randn(MICRO_BATCH, HIDDEN)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        for _ in range(GA):
            engine.backward(torch.nn.functional.mse_loss(engine(x), y))
            engine.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    print("STEP_TIMES " + json.dumps(times))


def measure(releases: Path, release: str, patched: bool, steps: int, warmup: int, offload: str) -> list:
    env = _envs.deepspeed_release_env(releases, release, patched)
    out = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(steps), "--warmup", str(warmup),
                          "--offload", offload],
                         env=env, capture_output=True, text=True, check=True, cwd="/").stdout
    line = next(line for line in out.splitlines() if line.startswith("STEP_TIMES "))
    return json.loads(line[len("STEP_TIMES "):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", type=Path, default=Path.home() / ".cache" / "gradfix" / "deepspeed")
    parser.add_argument("--buggy", default="0.18.9")
    parser.add_argument("--fixed", default="0.19.0")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three runs")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--offload", choices=("cpu", "none"), default="cpu",
                        help="none: ZeRO-2 without offload (ds-zero2-epilogue-reset; use --buggy 0.18.2 --fixed 0.18.3)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help="exit 1 when over budget")
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.warmup, args.offload)
        return 0

    runs = {"fixed": (args.fixed, False), "patched": (args.buggy, True), "buggy": (args.buggy, False),
            "control": (args.fixed, True)}
    samples = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (release, patched) in runs.items():
            samples[name] += measure(args.releases, release, patched, args.steps, args.warmup, args.offload)
    median = {name: statistics.median(values) for name, values in samples.items()}
    ratio = median["patched"] / median["fixed"]
    params = LAYERS * (HIDDEN * HIDDEN + HIDDEN)
    print(f"ZeRO-2, offload_optimizer={args.offload}, GA {GA}, {params / 1e6:.1f}M parameters, CPU; median optimizer-step time "
          f"over {args.rounds} x {args.steps} steps")
    print(f"  deepspeed {args.fixed} (first fixed), unpatched: {median['fixed'] * 1000:8.1f} ms")
    print(f"  deepspeed {args.buggy} with gradfix:             {median['patched'] * 1000:8.1f} ms   ratio {ratio:.3f} "
          f"(budget {BUDGET})  {'OK' if ratio <= BUDGET else 'OVER BUDGET'}")
    print(f"  deepspeed {args.buggy} unpatched (wrong result): {median['buggy'] * 1000:8.1f} ms   ratio "
          f"{median['buggy'] / median['fixed']:.3f}")
    print(f"  deepspeed {args.fixed} with GRADFIX=1 (control):  {median['control'] * 1000:8.1f} ms   ratio "
          f"{median['control'] / median['fixed']:.3f}")
    return 1 if args.check and ratio > BUDGET else 0


if __name__ == "__main__":
    sys.exit(main())
