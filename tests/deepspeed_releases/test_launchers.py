"""Every process of a job is covered: real launchers (torchrun, the deepspeed
launcher, accelerate launch) and multiprocessing start two processes on CPU, each
imports a buggy DeepSpeed release and reports, from inside, the state of every
DeepSpeed patch. gradfix is activated only by the environment (GRADFIX=1 exported,
or `gradfix run --`); the processes never import it themselves."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dsrun import affected_patches, release_env, releases
from helpers import free_port, full_tier_only, tiered

RELEASE = "0.18.2"
PROBE = str(Path(__file__).with_name("launcher_probe.py"))
pytestmark = pytest.mark.skipif(RELEASE not in releases(), reason=f"needs DeepSpeed {RELEASE}")


def expected_applied():
    """The DeepSpeed patches whose catalog range holds RELEASE."""
    return affected_patches(RELEASE)


def port():
    return str(free_port())


def probe(argv, gradfix="1"):
    env = release_env(RELEASE, **({"GRADFIX": gradfix} if gradfix else {}))
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=Path(PROBE).parent)
    assert proc.returncode == 0, f"{argv}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return [json.loads(line[len("PROBE "):]) for line in proc.stdout.splitlines() if line.startswith("PROBE ")]


def assert_patched(lines, count, origin):
    workers = [line for line in lines if line["origin"] == origin]
    assert len(workers) == count, lines
    assert len({line["pid"] for line in workers}) == count
    applied = expected_applied()
    assert applied, "the catalog should have DeepSpeed patches for this release"
    for line in workers:
        assert line["states"] is not None, f"gradfix is not active in {line}"
        assert {i for i, state in line["states"].items() if state == "applied"} == applied, line


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]


def test_torchrun_with_gradfix_exported():
    lines = probe([*TORCHRUN, port(), PROBE])
    assert_patched(lines, 2, "launcher")
    assert sorted(line["rank"] for line in lines) == ["0", "1"]


def test_gradfix_run_wraps_a_launcher():
    lines = probe([sys.executable, "-m", "gradfix", "run", "--", *TORCHRUN, port(), PROBE], gradfix=None)
    assert_patched(lines, 2, "launcher")


@full_tier_only("every test below checks the patches from inside the job")
def test_without_gradfix_nothing_is_active():
    """The check above can fail: the same launch without GRADFIX leaves gradfix out."""
    lines = probe([*TORCHRUN, port(), PROBE], gradfix=None)
    assert len(lines) == 2 and all(line["states"] is None for line in lines)


def test_deepspeed_launcher():
    lines = probe([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", port(),
                   PROBE])
    assert_patched(lines, 2, "launcher")
    assert sorted(line["rank"] for line in lines) == ["0", "1"]


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="needs accelerate")
def test_accelerate_launch():
    # --multi_gpu selects accelerate's torchrun-based launcher; the probe touches no GPU.
    # (--cpu would start one process: several CPU processes need MPI there.)
    lines = probe([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", port(), PROBE])
    assert_patched(lines, 2, "launcher")
    assert sorted(line["rank"] for line in lines) == ["0", "1"]


@pytest.mark.parametrize("method", tiered(["spawn"], full=["forkserver", "fork"]))
def test_multiprocessing_children(method):
    lines = probe([sys.executable, PROBE, "--mp", method])
    assert_patched(lines, 2, f"{method} child")


def launch_at_once(commands, environments):
    """Start one command per node or task at once, each with its own environment (as on
    separate machines), and wait for all; their PROBE lines and their stderr."""
    procs = [subprocess.Popen(command, env=release_env(RELEASE, **environment), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=Path(PROBE).parent)
             for command, environment in zip(commands, environments)]
    lines, errors = [], []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{proc.args}:\n{out[-3000:]}\n{err[-3000:]}"
        lines += [json.loads(line[len("PROBE "):]) for line in out.splitlines() if line.startswith("PROBE ")]
        errors.append(err)
    return lines, errors


def torchrun_node(node_rank, master_port, through_gradfix_run):
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node_rank),
               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", master_port, PROBE]
    return [sys.executable, "-m", "gradfix", "run", "--", *command] if through_gradfix_run else command


@full_tier_only("CI covers gradfix run on one node")
def test_two_nodes_each_started_with_gradfix_run():
    """Two torchrun agents (two "nodes" on this machine, static rendezvous), each started
    with `gradfix run --` as the README says to do on every node."""
    master = port()
    lines, _ = launch_at_once([torchrun_node(0, master, True), torchrun_node(1, master, True)], [{}, {}])
    assert_patched(lines, 2, "launcher")
    assert sorted((line["node"], line["rank"]) for line in lines) == [("0", "0"), ("1", "1")]


@full_tier_only("CI covers gradfix run on one node")
def test_a_node_started_without_gradfix_is_not_covered():
    """The check above can fail: GRADFIX on node 0 only leaves node 1's worker without it."""
    master = port()
    lines, _ = launch_at_once([torchrun_node(0, master, False), torchrun_node(1, master, False)],
                              [{"GRADFIX": "1"}, {}])
    by_node = {line["node"]: line for line in lines}
    assert by_node["0"]["states"] is not None and by_node["1"]["states"] is None


@full_tier_only("CI covers torchrun and the deepspeed launcher inheriting GRADFIX=1")
def test_slurm_style_tasks_inherit_the_batch_scripts_gradfix():
    """srun is not installed here; this starts the tasks as srun does by default
    (--export=ALL: the batch script's environment, where `export GRADFIX=1` ran, plus
    SLURM_PROCID / SLURM_LOCALID / SLURM_NODEID / SLURM_NTASKS per task). gradfix takes
    its rank label from SLURM_PROCID when no launcher set RANK."""
    tasks = [dict(GRADFIX="1", GRADFIX_LOG="debug", SLURM_PROCID=str(task), SLURM_LOCALID="0",
                  SLURM_NODEID=str(task), SLURM_NTASKS="2") for task in range(2)]
    lines, errors = launch_at_once([[sys.executable, PROBE]] * 2, tasks)
    assert_patched(lines, 2, "launcher")
    assert sorted(line["rank"] for line in lines) == ["0", "1"]
    for task, err in enumerate(errors):
        assert f"[rank {task}]: applied" in err, err[-2000:]
