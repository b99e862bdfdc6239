"""Give DeepSpeed release folders their CPU ops prebuilt, each distinct op source built once.

DeepSpeed installed with DS_BUILD_OPS=0 builds its C++ ops with torch's JIT the first
time a process needs them (the shared-memory comm op at every engine start on CPU,
cpu_adam or fused_adam with OpenRLHF), about a minute of compiler time per release and
per virtualenv, because the JIT's build folder names the release's source path and the
venv's torch. Most releases ship byte-identical op sources, so CI would compile the
same code twenty-odd times.

This script does what ``DS_BUILD_<OP>=1 pip install deepspeed`` does (an ahead-of-time
op: the extension module under the name ``builder.absolute_name()`` and
``installed_ops[NAME] = True`` in ``git_version_info_installed.py``, which DeepSpeed's
``OpBuilder.load`` imports instead of JIT-building), with the compiled module shared
by every release whose op has the same sources, include files, compiler flags, torch
and Python: one build per distinct source under ``--cache``. No Python code of
DeepSpeed changes.

    python tests/deepspeed_ops.py --cache DIR --op ShareMemCommBuilder FOLDER [FOLDER ...]

Run it with the session's interpreter (the torch the tests use); each FOLDER is a
``pip install --target`` folder holding one release.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

INSTALLED = Path("deepspeed") / "git_version_info_installed.py"

# Run inside a release folder (on PYTHONPATH): the op's build inputs, as JSON.
DESCRIBE = r"""
import json, os, sys
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from deepspeed.accelerator import get_accelerator
builder = get_accelerator().create_op_builder(sys.argv[1])
if builder is None or not builder.is_compatible(False):
    print(json.dumps(None))
    raise SystemExit
absolute = lambda paths: [os.path.abspath(builder.deepspeed_src_path(p)) for p in builder.strip_empty_entries(paths)]
print(json.dumps({"name": builder.NAME, "module": builder.absolute_name(), "sources": absolute(builder.sources()),
                  "includes": absolute(builder.include_paths()),
                  "cflags": builder.strip_empty_entries(builder.cxx_args()) + ["-UC10_USE_GLOG"],
                  "ldflags": builder.strip_empty_entries(builder.extra_ldflags())}))
"""

# Run in the build folder: compile the op the way DeepSpeed's jit_load does, under the
# module name an ahead-of-time install gives it.
BUILD = r"""
import json, sys
from torch.utils.cpp_extension import load
spec = json.loads(sys.argv[1])
load(name=spec["module"].rpartition(".")[2], sources=spec["sources"], extra_include_paths=spec["includes"],
     extra_cflags=spec["cflags"], extra_ldflags=spec["ldflags"], build_directory=sys.argv[2], verbose=False)
"""


def _run(code, *args, env=None):
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"deepspeed_ops: {proc.stderr[-3000:]}")
    return proc.stdout


def describe(folder, op):
    env = dict(os.environ, PYTHONPATH=str(folder), GRADFIX="0")
    lines = _run(DESCRIBE, op, env=env).strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def source_key(spec):
    """Everything the compiled module depends on, hashed: source and header contents,
    flags, the module name, torch and the Python ABI."""
    import torch

    digest = hashlib.sha256()
    files = list(spec["sources"])
    for include in spec["includes"]:
        files += sorted(str(p) for p in Path(include).rglob("*") if p.is_file())
    for path in files:
        digest.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    digest.update(json.dumps([spec["module"], spec["cflags"], spec["ldflags"], torch.__version__,
                              sysconfig.get_config_var("EXT_SUFFIX")]).encode())
    return digest.hexdigest()[:16]


def build_once(spec, cache):
    """The compiled module for ``spec``, built now unless an identical one exists."""
    module = spec["module"].rpartition(".")[2]
    folder = Path(cache) / f"{module}-{source_key(spec)}"
    built = folder / f"{module}.so"
    if built.exists():
        return built, 0.0
    partial = folder.with_name("partial-" + folder.name)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.monotonic()
    _run(BUILD, json.dumps(spec), str(partial))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return built, time.monotonic() - started


def mark_installed(folder, name):
    """installed_ops[name] = True, as an ahead-of-time install writes it."""
    path = Path(folder) / INSTALLED
    text = path.read_text()
    updated, count = re.subn(rf"(['\"]{re.escape(name)}['\"]\s*:\s*)False", r"\1True", text)
    if count == 0 and not re.search(rf"['\"]{re.escape(name)}['\"]\s*:\s*True", text):
        raise SystemExit(f"deepspeed_ops: {path} lists no installed_ops entry for {name}")
    path.write_text(updated)


def _stamp(folder, op):
    return Path(folder) / f".gradfix-prebuilt-{op}"  # gone when the folder is reinstalled


def install(folder, spec, built):
    """Put the compiled module where an ahead-of-time install puts it, and mark it installed."""
    target = Path(folder) / (spec["module"].replace(".", os.sep) + sysconfig.get_config_var("EXT_SUFFIX"))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, target)
    mark_installed(folder, spec["name"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="where the distinct builds are kept")
    parser.add_argument("--op", action="append", required=True, help="op builder class, e.g. ShareMemCommBuilder")
    parser.add_argument("--jobs", type=int, default=2, help="describes and builds at a time")
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args(argv)
    todo = [(folder, op) for folder in args.folders for op in args.op if not _stamp(folder, op).exists()]
    if not todo:
        return
    with ThreadPoolExecutor(args.jobs) as pool:  # each describe imports a release: seconds, mostly torch
        specs = list(pool.map(lambda job: describe(*job), todo))
    distinct = {source_key(spec): spec for spec in specs if spec is not None}
    with ThreadPoolExecutor(args.jobs) as pool:
        builds = dict(zip(distinct, pool.map(lambda spec: build_once(spec, args.cache), distinct.values())))
    for (folder, op), spec in zip(todo, specs):
        if spec is None:
            _stamp(folder, op).write_text("not available")
            print(f"deepspeed_ops: {Path(folder).name}: {op} not available")
            continue
        built, seconds = builds[source_key(spec)]
        install(folder, spec, built)
        _stamp(folder, op).write_text(built.parent.name)
        print(f"deepspeed_ops: {Path(folder).name}: {spec['name']} from {built.parent.name}"
              + (f" (built in {seconds:.0f} s)" if seconds else ""))


if __name__ == "__main__":
    main()
