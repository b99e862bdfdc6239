"""Ray: gradfix in every worker of a job, and a way to check it from the driver.

Ray starts its workers from the cluster's processes, not from the driver, so a
driver's ``GRADFIX=1`` does not reach a cluster that was started without it (and
OpenRLHF's ``ray.init`` forwards only its own three variables). While gradfix is
active, ``ray.init`` and ``JobSubmissionClient.submit_job`` (``ray job submit``) add the
GRADFIX variables to the job's ``runtime_env`` (``env_vars``); what the caller set there
is never overwritten. Each worker then
activates gradfix at start-up, like any other process with ``GRADFIX=1``.

``worker_status()`` asks the workers themselves: one task on every alive node,
plus any actors passed in, each reporting whether gradfix is active in its process
and the state of every patch there.
"""

import os

from . import report

RAY_INIT_MODULES = ("ray", "ray._private.worker")  # `ray.init` and where it is defined
RAY_JOB_SDK = "ray.dashboard.modules.job.sdk"  # JobSubmissionClient: `ray job submit` and the Python SDK


def gradfix_variables(environ=os.environ) -> dict:
    """What a worker needs to run gradfix as this process does: GRADFIX=1 and every
    other GRADFIX_* setting of this process."""
    variables = {name: value for name, value in environ.items() if name.startswith("GRADFIX_")}
    variables["GRADFIX"] = "1"
    return variables


# Set by Ray's job supervisor for the entrypoint of a submitted job: the job's config,
# whose runtime_env Ray merges into the driver's ray.init and its workers.
RAY_JOB_CONFIG = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def job_variables(environ=os.environ) -> set:
    """The variables a submitted job's own runtime_env sets (none outside such a job).
    Ray refuses a ``ray.init`` runtime_env that sets any of them again."""
    text = environ.get(RAY_JOB_CONFIG)
    if not text:
        return set()
    import json  # here: `import gradfix` stays light (json pulls in re)

    try:
        config = json.loads(text)
        return set((config.get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):  # not what Ray writes: add nothing Ray could refuse
        return set(gradfix_variables(environ))


def merged_runtime_env(runtime_env, environ=os.environ):
    """``runtime_env`` with the GRADFIX variables added to ``env_vars``; a variable
    the caller set (GRADFIX=0 included), or that the submitted job's runtime_env already
    sets, is kept as set. Returns ``runtime_env`` itself when nothing is added."""
    env_vars = dict((runtime_env or {}).get("env_vars") or {})
    taken = set(env_vars) | job_variables(environ)
    added = {name: value for name, value in gradfix_variables(environ).items() if name not in taken}
    if not added:
        return runtime_env, added
    env_vars.update(added)
    return dict(runtime_env or {}, env_vars=env_vars), added


def _add_to_runtime_env(wrapped, instance, args, kwargs):
    from . import engine

    if engine.is_active():
        runtime_env, added = merged_runtime_env(kwargs.get("runtime_env"))
        if added:
            kwargs = dict(kwargs, runtime_env=runtime_env)
            report.debug(f"gradfix: the Ray job's runtime_env carries {', '.join(sorted(added))} to its workers")
    return wrapped(*args, **kwargs)


def _wrap(owner, name):
    import wrapt

    function = vars(owner).get(name)
    if function is None or getattr(function, "_self_gradfix_ray", False):  # absent, or wrapped already
        return
    wrapper = wrapt.FunctionWrapper(function, _add_to_runtime_env)
    wrapper._self_gradfix_ray = True  # _self_: an attribute of the wrapper, not of Ray's function
    setattr(owner, name, wrapper)


def install_ray_init(module) -> None:
    """Post-import hook of ``ray`` and ``ray._private.worker`` (wrap their ``init``) and of
    Ray's job SDK (wrap ``JobSubmissionClient.submit_job``, which ``ray job submit`` calls:
    the job's entrypoint and every worker of the job then get the GRADFIX variables)."""
    try:
        if module.__name__ == RAY_JOB_SDK:
            _wrap(module.JobSubmissionClient, "submit_job")
        else:
            _wrap(module, "init")
    except Exception as exc:  # never break the user's Ray import
        report.warning(f"gradfix: cannot pass GRADFIX to Ray workers ({type(exc).__name__}: {exc}); start the "
                       "cluster with `gradfix run -- ray start ...`, or pass --runtime-env-json "
                       "'{\"env_vars\": {\"GRADFIX\": \"1\"}}' to `ray job submit`")


def worker_status(actors=(), timeout: float = 120.0):
    """Ask Ray workers whether gradfix is active in them: one task on every alive node
    of the connected cluster, and each actor in ``actors`` (from inside the actor's
    own process). Returns one dict per worker: ``where``, ``node``, ``pid``,
    ``active``, ``states`` (patch id -> state; None when inactive). When gradfix is
    active here and a worker reports it inactive, logs a warning."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from . import _ray_probe, engine

    ray.cloudpickle.register_pickle_by_value(_ray_probe)  # the probe must not import gradfix
    task = ray.remote(num_cpus=0)(_ray_probe.process_status)
    pending = [("task", task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                .remote()) for node in ray.nodes() if node.get("Alive")]
    pending += [(f"actor {actor}", actor.__ray_call__.remote(_ray_probe.actor_status)) for actor in actors]
    results = ray.get([ref for _, ref in pending], timeout=timeout)
    reports = [dict(result, where=where) for (where, _), result in zip(pending, results)]
    inactive = [r for r in reports if not r["active"]]
    if inactive and engine.is_active():
        report.warning("gradfix: active in this driver but NOT in " + ", ".join(
            f"{r['where']} (node {r['node']}, pid {r['pid']})" for r in inactive)
            + ": those processes train without gradfix. Start the cluster with `gradfix run -- ray start ...`, or "
            "let gradfix add GRADFIX=1 to the job's runtime_env (do not set GRADFIX=0 there).")
    return reports

