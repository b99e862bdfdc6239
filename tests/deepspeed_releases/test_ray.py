"""Ray workers are covered: a local Ray cluster started by the test (on CPU) runs
actors that import a buggy DeepSpeed release and report, from inside their own
process, the gradfix state of every DeepSpeed patch. The cluster itself is started
WITHOUT gradfix, so only what the driver passes along can activate it there."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from dsrun import release_env, releases
from helpers import free_port, full_tier_only
from test_launchers import RELEASE, expected_applied

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray"),
    pytest.mark.skipif(RELEASE not in releases(), reason=f"needs DeepSpeed {RELEASE}"),
    pytest.mark.xdist_group("ray"),  # one cluster at a time on this machine
]

# An actor that reports, from its own process, the state of every DeepSpeed patch.
TRAINER_ACTOR = """
import json, sys
import ray

@ray.remote(num_cpus=0)
class Trainer:
    def states(self):
        import deepspeed  # the patch target, imported in the worker
        gradfix = sys.modules.get("gradfix")
        return {s.id: s.state for s in gradfix.status() if s.package == "deepspeed"} if gradfix else None
"""

ACTOR = TRAINER_ACTOR + """
ray.init(address=sys.argv[1]{runtime_env})
trainer = Trainer.remote()
print("STATES " + json.dumps(ray.get(trainer.states.remote())), flush=True)
{after}
"""
# OpenRLHF's own call (openrlhf.cli.train_ppo_ray): a runtime_env with its three variables.
OPENRLHF_ENV = (', runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "true", "NCCL_DEBUG": "WARN", '
                '"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "true"}}')


def start_cluster(port, gradfix_run=False, dashboard_port=None):
    """A head node in its own process group (``ray start --block``); stopping it stops
    this cluster only. ``dashboard_port``: with Ray's dashboard (job submission) there."""
    dashboard = (["--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port",
                  str(dashboard_port)] if dashboard_port else ["--include-dashboard", "false"])
    # Ports of its own for every server of the head, so that two test clusters can run side
    # by side (ray[default] starts a dashboard agent on every node even without the dashboard).
    own_ports = [option for name in ("--ray-client-server-port", "--dashboard-agent-listen-port",
                                     "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")
                 for option in (name, str(free_port()))]
    # A short session folder: nox's TMPDIR is deep, and the dashboard's Unix sockets under it
    # exceed the 107-byte path limit (the dashboard then dies at start-up).
    session_folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--port", str(port),
               "--num-cpus", "2", *dashboard, *own_ports, "--temp-dir", session_folder, "--disable-usage-stats"]
    if gradfix_run:
        command = [sys.executable, "-m", "gradfix", "run", "--", *command]
    env = release_env(RELEASE, RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")  # no GRADFIX in the cluster's environment
    # Its output goes to a file: a pipe nobody reads fills up and blocks the head (the
    # dashboard's start-up output alone is enough).
    log = tempfile.TemporaryFile()
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head.session_folder = session_folder
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    ready = f"import ray; ray.init(address='{address}'); ray.shutdown()"
    if dashboard_port:
        ready += ("; from ray.job_submission import JobSubmissionClient; "
                  f"JobSubmissionClient('{job_url(dashboard_port)}')")
    while time.monotonic() < deadline:
        try:
            probe = subprocess.run([sys.executable, "-c", ready], env=env, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired as late:
            probe = subprocess.CompletedProcess(late.cmd, 1, late.stdout or "", late.stderr or "")
            probe.stdout, probe.stderr = [x.decode(errors="replace") if isinstance(x, bytes) else x
                                          for x in (probe.stdout, probe.stderr)]
            continue
        if probe.returncode == 0:
            return head, address
        time.sleep(2)
    stop_cluster(head)
    log.seek(0)
    pytest.fail("the Ray head did not come up in 120 s:\n" + log.read().decode(errors="replace")[-3000:]
                + "\nlast probe:\n" + (probe.stdout + probe.stderr)[-3000:])


def job_url(dashboard_port):
    return f"http://127.0.0.1:{dashboard_port}"


def stop_cluster(head):
    os.killpg(head.pid, 15)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, 9)
    shutil.rmtree(head.session_folder, ignore_errors=True)


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


@full_tier_only("CI covers a cluster whose driver has GRADFIX=1")
def test_cluster_started_with_gradfix_run():
    """`gradfix run -- ray start --head`: a driver without GRADFIX gets covered workers."""
    head, address = start_cluster(free_port(), gradfix_run=True)
    try:
        states, _ = driver(address, None)
    finally:
        stop_cluster(head)
    assert applied(states) == expected_applied()


# `ray job submit`: the entrypoint runs as the job's driver inside the cluster, started by
# Ray's job supervisor, so neither the submitting shell's environment nor anything the CLI
# process imports reaches it except through the job's runtime_env.
JOB = TRAINER_ACTOR + """
ray.init()
print("DRIVER " + json.dumps("gradfix" in sys.modules and sys.modules["gradfix"].is_active()), flush=True)
print("STATES " + json.dumps(ray.get(Trainer.remote().states.remote())), flush=True)
"""


@pytest.fixture(scope="module")
def job_cluster(tmp_path_factory):
    """A cluster started without gradfix, with Ray's dashboard for job submission."""
    if importlib.util.find_spec("ray.dashboard.modules.job.sdk") is None or \
            importlib.util.find_spec("aiohttp") is None:
        pytest.skip("`ray job submit` needs ray[default] (the dashboard)")
    dashboard_port = free_port()
    head, _ = start_cluster(free_port(), dashboard_port=dashboard_port)
    script = tmp_path_factory.mktemp("job") / "job.py"
    script.write_text(JOB)
    yield job_url(dashboard_port), script
    stop_cluster(head)


def submit(job_cluster, *, through_gradfix_run=False, runtime_env=None, **environment):
    url, script = job_cluster
    command = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", url]
    if runtime_env is not None:
        command += ["--runtime-env-json", json.dumps(runtime_env)]
    command += ["--", sys.executable, str(script)]
    if through_gradfix_run:
        command = [sys.executable, "-m", "gradfix", "run", "--", *command]
    proc = subprocess.run(command, env=release_env(RELEASE, **environment), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    value = {}
    for line in proc.stdout.splitlines():
        tag, _, rest = line.partition(" ")
        if tag in ("DRIVER", "STATES"):
            value[tag] = json.loads(rest)
    assert set(value) == {"DRIVER", "STATES"}, proc.stdout[-3000:]
    return value


@full_tier_only("a second cluster; CI covers the driver's GRADFIX=1 reaching the actors")
def test_job_submit_with_gradfix_in_its_runtime_env(job_cluster):
    """The README's command: --runtime-env-json '{"env_vars": {"GRADFIX": "1"}}'."""
    job = submit(job_cluster, runtime_env={"env_vars": {"GRADFIX": "1"}})
    assert job["DRIVER"] is True and applied(job["STATES"]) == expected_applied()


@full_tier_only("a second cluster; CI covers the driver's GRADFIX=1 reaching the actors")
def test_gradfix_run_ray_job_submit(job_cluster):
    """`gradfix run -- ray job submit ...`: gradfix in the CLI process adds GRADFIX=1 to
    the job's runtime_env, so the entrypoint and its workers are covered."""
    job = submit(job_cluster, through_gradfix_run=True)
    assert job["DRIVER"] is True and applied(job["STATES"]) == expected_applied()


@full_tier_only("a second cluster; CI covers the driver's GRADFIX=1 reaching the actors")
def test_job_submit_without_gradfix_is_not_covered(job_cluster):
    """The checks above can fail: the same job without GRADFIX, and GRADFIX=0 set by the
    user in the runtime_env is kept even when the submitting process has gradfix on."""
    assert submit(job_cluster) == {"DRIVER": False, "STATES": None}
    kept = submit(job_cluster, through_gradfix_run=True, runtime_env={"env_vars": {"GRADFIX": "0"}})
    assert kept == {"DRIVER": False, "STATES": None}
