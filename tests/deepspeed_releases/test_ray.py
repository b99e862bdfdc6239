"""Ray workers are covered: a local Ray cluster started by the test (on CPU) runs
actors that import a buggy DeepSpeed release and report, from inside their own
process, the gradfix state of every DeepSpeed patch. The cluster itself is started
WITHOUT gradfix, so only what the driver passes along can activate it there."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from dsrun import release_env, releases
from helpers import free_port
from test_launchers import RELEASE, expected_applied

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray"),
    pytest.mark.skipif(RELEASE not in releases(), reason=f"needs DeepSpeed {RELEASE}"),
    pytest.mark.xdist_group("ray"),  # one cluster at a time on this machine
]

ACTOR = """
import json, sys
import ray

@ray.remote(num_cpus=0)
class Trainer:
    def states(self):
        import deepspeed  # the patch target, imported in the worker
        gradfix = sys.modules.get("gradfix")
        return {s.id: s.state for s in gradfix.status() if s.package == "deepspeed"} if gradfix else None

ray.init(address=sys.argv[1]{runtime_env})
trainer = Trainer.remote()
print("STATES " + json.dumps(ray.get(trainer.states.remote())), flush=True)
{after}
"""
# OpenRLHF's own call (openrlhf.cli.train_ppo_ray): a runtime_env with its three variables.
OPENRLHF_ENV = (', runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "true", "NCCL_DEBUG": "WARN", '
                '"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "true"}}')


def start_cluster(port, gradfix_run=False):
    """A head node in its own process group (``ray start --block``); stopping it stops
    this cluster only."""
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--port", str(port),
               "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"]
    if gradfix_run:
        command = [sys.executable, "-m", "gradfix", "run", "--", *command]
    env = release_env(RELEASE, RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")  # no GRADFIX in the cluster's environment
    head = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        probe = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{address}'); ray.shutdown()"],
                               env=env, capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            return head, address
        time.sleep(2)
    stop_cluster(head)
    pytest.fail("the Ray head did not come up in 120 s")


def stop_cluster(head):
    os.killpg(head.pid, 15)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, 9)


@pytest.fixture(scope="module")
def cluster():
    head, address = start_cluster(free_port())
    yield address
    stop_cluster(head)


def driver(address, gradfix, runtime_env="", after=""):
    code = ACTOR.replace("{runtime_env}", runtime_env).replace("{after}", after)
    env = release_env(RELEASE, **({"GRADFIX": gradfix} if gradfix else {}))
    proc = subprocess.run([sys.executable, "-c", code, address], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("STATES ")]
    return json.loads(line[len("STATES "):]), proc


def applied(states):
    return {patch for patch, state in (states or {}).items() if state == "applied"}


def test_driver_with_only_gradfix_1_covers_its_actors(cluster):
    """The driver has GRADFIX=1 and imports nothing of gradfix; OpenRLHF's runtime_env."""
    states, _ = driver(cluster, "1", OPENRLHF_ENV)
    assert applied(states) == expected_applied()


def test_without_gradfix_the_actors_are_not_covered(cluster):
    """The check above can fail: the same driver without GRADFIX."""
    states, _ = driver(cluster, None, OPENRLHF_ENV)
    assert states is None


def test_a_worker_without_gradfix_is_reported_in_the_driver(cluster):
    """The user's runtime_env sets GRADFIX=0 for the workers (kept as set); the driver,
    where gradfix is active, asks its workers and warns."""
    after = ("import gradfix.ray\n"
             "reports = gradfix.ray.worker_status(actors=[trainer])\n"
             "print('REPORTS ' + json.dumps(reports), flush=True)\n")
    states, proc = driver(cluster, "1", ', runtime_env={"env_vars": {"GRADFIX": "0"}}', after)
    assert states is None
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("REPORTS ")]
    reports = json.loads(line[len("REPORTS "):])
    assert {r["where"].split(" ")[0] for r in reports} == {"task", "actor"}
    assert not any(r["active"] for r in reports)
    assert "active in this driver but NOT in" in proc.stderr


def test_worker_status_of_covered_workers(cluster):
    after = ("import gradfix.ray\n"
             "reports = gradfix.ray.worker_status(actors=[trainer])\n"
             "print('REPORTS ' + json.dumps(reports), flush=True)\n")
    _, proc = driver(cluster, "1", "", after)
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("REPORTS ")]
    reports = json.loads(line[len("REPORTS "):])
    assert reports and all(r["active"] for r in reports)
    assert "NOT in" not in proc.stderr


def test_cluster_started_with_gradfix_run():
    """`gradfix run -- ray start --head`: a driver without GRADFIX gets covered workers."""
    head, address = start_cluster(free_port(), gradfix_run=True)
    try:
        states, _ = driver(address, None)
    finally:
        stop_cluster(head)
    assert applied(states) == expected_applied()
