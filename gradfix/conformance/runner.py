"""Run the cases on one installed release and turn the results into matrix records
(gradfix.conformance.records).

DeepSpeed: each case three ways (without gradfix, with GRADFIX=1, the plain PyTorch
reference), batched into one verify-worker process per way and rank count. Trainer:
two ways (the worker compares each run with its own reference), one process per way,
rank count and DeepSpeed on or off."""

import atexit
import json
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

from .. import verify
from ..verify import compare
from . import deepspeed_cases

# The worker runs from its file (it imports torch, which this module must not need).
WORKER = os.path.join(os.path.dirname(os.path.abspath(verify.__file__)), "worker.py")

STEPS = 3
WAYS = (("unpatched", "0"), ("gradfix", "1"))


class Environment:
    """Where a release runs: the interpreter and the variables that make the release
    importable (PYTHONPATH and the like)."""

    def __init__(self, python, variables, timeout=1200):
        self.python, self.variables, self.timeout = python, dict(variables), timeout

    def with_path(self, *folders):
        """The same, with ``folders`` first on PYTHONPATH (a DeepSpeed release beside transformers)."""
        path = os.pathsep.join([*map(str, folders), *filter(None, [self.variables.get("PYTHONPATH")])])
        return Environment(self.python, dict(self.variables, PYTHONPATH=path), self.timeout)

    def env(self, gradfix):
        env = dict(self.variables, GRADFIX=gradfix, DS_ACCELERATOR="cpu")
        env.setdefault("OMP_NUM_THREADS", "1")
        if shutil.which("numactl", path=env.get("PATH")) is None:
            env["PATH"] = _numactl_stand_in() + os.pathsep + env.get("PATH", os.defpath)
        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)  # each run starts its own process group
        return env


_NUMACTL = "#!/bin/sh\necho 'available: 1 nodes (0)'\necho \"node 0 cpus: $(seq -s ' ' 0 $(($(nproc) - 1)))\"\n"
_numactl_folder = []


def _numactl_stand_in():
    """A folder holding a ``numactl --hardware`` that reports one NUMA node. DeepSpeed's
    CPU accelerator counts its devices with it when LOCAL_SIZE is unset or 0 (0.14.5's
    ZeRO-3 asks), and a CPU machine without the numactl package would fail those cases
    for no reason of theirs."""
    if not _numactl_folder:
        folder = tempfile.mkdtemp(prefix="gradfix-numactl-")
        path = os.path.join(folder, "numactl")
        with open(path, "w") as handle:
            handle.write(_NUMACTL)
        os.chmod(path, 0o755)
        atexit.register(shutil.rmtree, folder, True)
        _numactl_folder.append(folder)
    return _numactl_folder[0]


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(environment, processes, arguments, worker=WORKER):
    """The worker's command line: directly, or under torchrun for several processes.
    The worker runs from its file so that an unpatched run never imports gradfix."""
    command = [environment.python]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                    "--master_port", str(_free_port())]
    if worker == WORKER:
        return command + [WORKER, "--steps", str(STEPS), *arguments]
    return command + [worker, *arguments]


def _run(environment, command, gradfix, marker):
    """The last ``marker`` line's JSON (RESULT or RESULTS), or an error text."""
    try:
        proc = subprocess.run(command, env=environment.env(gradfix), capture_output=True, text=True,
                              timeout=environment.timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {environment.timeout} s"
    lines = [line for line in proc.stdout.splitlines() if line.startswith(marker + " ")]
    if proc.returncode != 0 or not lines:
        return None, f"exit code {proc.returncode}: {_failure(proc.stderr or proc.stdout)}"
    return json.loads(lines[0][len(marker) + 1:]), None


_EXCEPTION = re.compile(r"^(?:\[rank\d+\]: )?(\w+(?:Error|Exception): .*)$")


def _failure(output):
    """The exception a worker died of (the first rank's), else the output's last lines:
    torchrun's own summary after it says nothing about the cause."""
    for line in output.splitlines():
        match = _EXCEPTION.match(line.strip())
        if match and "ChildFailedError" not in line:
            return match.group(1)[:400]
    return " | ".join(output.split("Exception ignored in:")[0].strip().splitlines()[-3:])[-400:]


def _batch(environment, mode, gradfix, ranks, jobs):
    """Results of ``jobs`` in one worker process (one per rank); when the batch fails,
    each job alone, so that one crashing case costs only itself."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(jobs, handle)
    try:
        if mode == "reference":
            command = _launch(environment, 1, ["--mode", "reference", "--jobs", handle.name, "--world", str(ranks)])
        else:
            command = _launch(environment, ranks, ["--mode", "deepspeed", "--jobs", handle.name])
        results, error = _run(environment, command, gradfix, "RESULTS")
    finally:
        os.unlink(handle.name)
    if results is not None:
        return results
    if len(jobs) == 1:
        return [{"error": error}]
    return [_batch(environment, mode, gradfix, ranks, [job])[0] for job in jobs]


def _pipeline(environment, mode, gradfix, config):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
    try:
        arguments = ["--config", handle.name, "--lr", str(deepspeed_cases.LEARNING_RATE)]
        if mode == "reference":
            command = _launch(environment, 1, ["--mode", "reference", *arguments])
        else:
            command = _launch(environment, 2, ["--mode", "deepspeed", "--pipeline-stages", "2", *arguments])
        result, error = _run(environment, command, gradfix, "RESULT")
    finally:
        os.unlink(handle.name)
    return result if result is not None else {"error": error}


def run_release(environment, cases=None, parallel=2):
    """``{way: [result per case]}`` for the ways unpatched, gradfix and reference."""
    cases = deepspeed_cases.cases() if cases is None else cases
    tasks = []  # (way, indices, callable)
    for ranks in sorted({c["ranks"] for c in cases if c["family"] == "deepspeed"}):
        indices = [i for i, c in enumerate(cases) if c["family"] == "deepspeed" and c["ranks"] == ranks]
        jobs = [deepspeed_cases.job_of(cases[i]) for i in indices]
        for way, gradfix in WAYS:
            tasks.append((way, indices, lambda g=gradfix, r=ranks, j=jobs: _batch(environment, "deepspeed", g, r, j)))
        tasks.append(("reference", indices, lambda r=ranks, j=jobs: _batch(environment, "reference", "0", r, j)))
    for i, case in enumerate(cases):
        if case["family"] == "pipeline":
            config = deepspeed_cases.config_of(case)
            for way, gradfix in WAYS:
                tasks.append((way, [i], lambda g=gradfix, c=config: [_pipeline(environment, "deepspeed", g, c)]))
            tasks.append(("reference", [i], lambda c=config: [_pipeline(environment, "reference", "0", c)]))
    results = {way: [None] * len(cases) for way in ("unpatched", "gradfix", "reference")}
    with ThreadPoolExecutor(parallel) as pool:
        done = [(way, indices, pool.submit(task)) for way, indices, task in tasks]
        for way, indices, future in done:
            for index, result in zip(indices, future.result()):
                results[way][index] = result
    return cases, results


def _call_result(result, case):
    """A case's own run inside a worker result: the call it trained, or the pipeline run."""
    if result is None or "error" in result:
        return None, (result or {}).get("error", "no result")
    if case["family"] == "pipeline":
        return result, None
    (run,) = result["calls"].values()
    if "skipped" in run or "failed" in run:
        return None, run.get("skipped") or f"DeepSpeed failed: {run['failed']}"
    return run, None


def records(release, cases, results):
    """One matrix record per case (gradfix.conformance.records explains the fields)."""
    out = []
    for i, case in enumerate(cases):
        reference, problem = _call_result(results["reference"][i], case)
        record = {"package": "deepspeed", "release": release, "case": deepspeed_cases.case_id(case),
                  "family": case["family"],
                  "config": {k: case[k] for k in ("zero_stage", "offload", "precision", "ga", "ranks", "output",
                                                  "backward", "clipping")}}
        for way in ("unpatched", "gradfix"):
            run, why = _call_result(results[way][i], case)
            problem = problem or why
            if run is None or reference is None:
                record[way], record[f"{way}_error"] = "not_run", None
                continue
            comparison = compare.Comparison(run, reference, case["precision"])
            record[way] = "right" if comparison.correct else "wrong"
            error = comparison.largest_error
            record[f"{way}_error"] = round(error, 6) if math.isfinite(error) else "nan"  # JSON has no NaN
        if record["unpatched"] == "not_run" or record["gradfix"] == "not_run":
            record["not_run"] = problem
        acted = (results["gradfix"][i] or {}).get("gradfix") or {}
        record["patches"] = sorted(pid for pid, r in acted.items() if r.get("hits"))
        out.append(record)
    return out


# -- transformers Trainer -------------------------------------------------------

TRAINER_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainer_worker.py")
TRAINER_MATCH = 1e-5  # relative update error of a right fp32 run (about 5e-7 here)
RANKS_AGREE = 1e-6  # the largest difference between two ranks' weights after a right run


def _trainer_batch(environment, gradfix, ranks, jobs):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(jobs, handle)
    try:
        command = _launch(environment, ranks, ["--jobs", handle.name], worker=TRAINER_WORKER)
        results, error = _run(environment, command, gradfix, "RESULTS")
    finally:
        os.unlink(handle.name)
    if results is not None:
        return results
    if len(jobs) == 1:
        return [{"error": error}]
    return [_trainer_batch(environment, gradfix, ranks, [job])[0] for job in jobs]


def run_trainer_release(environment, cases, deepspeed_folder=None, parallel=2):
    """``{way: [result per case]}`` for the ways unpatched and gradfix (each Trainer
    result holds its own comparison with the reference); ``deepspeed_folder`` goes on
    the path of the DeepSpeed cases only."""
    from . import trainer_cases

    tasks = []
    for ranks, deepspeed in sorted({(c["ranks"], c["deepspeed"]) for c in cases}):
        if deepspeed and deepspeed_folder is None:
            continue
        where = environment.with_path(deepspeed_folder) if deepspeed else environment
        indices = [i for i, c in enumerate(cases) if (c["ranks"], c["deepspeed"]) == (ranks, deepspeed)]
        jobs = [trainer_cases.job_of(cases[i]) for i in indices]
        for way, gradfix in WAYS:
            tasks.append((way, indices, lambda w=where, g=gradfix, r=ranks, j=jobs: _trainer_batch(w, g, r, j)))
    results = {way: [{"error": "no DeepSpeed release given"}] * len(cases) for way, _ in WAYS}
    with ThreadPoolExecutor(parallel) as pool:
        done = [(way, indices, pool.submit(task)) for way, indices, task in tasks]
        for way, indices, future in done:
            for index, result in zip(indices, future.result()):
                results[way][index] = result
    return results


def trainer_records(release, cases, results):
    from . import trainer_cases

    out = []
    for i, case in enumerate(cases):
        record = {"package": "transformers", "release": release, "case": trainer_cases.case_id(case),
                  "family": "trainer", "config": {k: case[k] for k in trainer_cases.AXES}}
        problems = []
        for way, _ in WAYS:
            run = results[way][i]
            why = run.get("error") or run.get("failed")
            if why:
                record[way], record[f"{way}_error"] = "not_run", None
                problems.append(why)
                continue
            error = run["update_error"]
            right = (error <= TRAINER_MATCH and run["rank_divergence"] <= RANKS_AGREE
                     and run["optimizer_steps"] == run["reference_steps"])
            record[way] = "right" if right else "wrong"
            record[f"{way}_error"] = round(error, 6) if math.isfinite(error) else "nan"
            record.setdefault("optimizer_steps", {"reference": run["reference_steps"]})[way] = run["optimizer_steps"]
        if problems:
            record["not_run"] = problems[0]
        record["patches"] = list(results["gradfix"][i].get("patches", []))
        out.append(record)
    return out
