"""`gradfix doctor`: installed versions, activation set-up, catalog health, and
which catalog entries matter in this environment, with advice in plain words."""

from __future__ import annotations

import importlib.util
import site
import sys
from pathlib import Path
from typing import List, TextIO

from . import catalog as catalog_module
from . import catalog_files
from . import config
from . import __version__
from .versions import installed_versions
from .verdicts import APPLIES, DISABLED, ERROR, PACKAGE_ABSENT, UNSUPPORTED, assess_catalog

FRAMEWORKS = ("torch", "deepspeed", "openrlhf", "trl", "transformers", "accelerate", "llamafactory")
RUNTIME_DEPENDENCIES = ("wrapt", "packaging")
BOOTSTRAP_FILES = ("gradfix.pth", "gradfix.start")


def _site_dirs() -> List[Path]:
    dirs = list(getattr(site, "getsitepackages", lambda: [])())
    user = getattr(site, "getusersitepackages", lambda: None)()
    if user:
        dirs.append(user)
    seen, result = set(), []
    for entry in dirs:
        path = Path(entry)
        if path not in seen and path.is_dir():
            seen.add(path)
            result.append(path)
    return result


def bootstrap_paths() -> List[Path]:
    """The gradfix.pth files this interpreter reads at start-up."""
    return [d / "gradfix.pth" for d in _site_dirs() if (d / "gradfix.pth").is_file()]


def bootstrap_installed() -> bool:
    return bool(bootstrap_paths()) and importlib.util.find_spec("_gradfix_bootstrap") is not None


def _conformance_lines() -> List[str]:
    """What the committed conformance matrix says about the installed DeepSpeed and
    transformers: how many of its cases train wrong without gradfix, how many gradfix
    corrects, and the known problems it does not."""
    from .conformance import summary

    versions = installed_versions(tuple(summary.COLUMNS))
    return summary.doctor_lines({k: v for k, v in versions.items() if v}, summary.load_summary())


def run(out: TextIO) -> int:
    problems: List[str] = []
    advice: List[str] = []

    def say(line: str = "") -> None:
        print(line, file=out)

    say(f"gradfix {__version__} at {Path(__file__).resolve().parent}")
    say(f"Python {sys.version.split()[0]} ({sys.executable})")
    say("\nPackages:")
    for name, version in installed_versions(FRAMEWORKS + RUNTIME_DEPENDENCIES).items():
        say(f"  {name:<14}{version or 'not installed'}")

    settings = config.current()
    say("\nActivation:")
    switch = {None: "unset: active in scripts that `import gradfix`",
              True: "1: active in every Python process", False: "0: gradfix is switched off"}
    say(f"  GRADFIX         {switch[settings.switch]}")
    say(f"  GRADFIX_DISABLE {'*' if settings.disable_all else ','.join(settings.disabled) or '(none)'}")
    say(f"  GRADFIX_STRICT  {'on' if settings.strict else 'off'}")
    say(f"  GRADFIX_LOG     {settings.log_level}")
    problems += settings.problems
    paths = bootstrap_paths()
    if not paths:
        say("  start-up file   missing (gradfix.pth is in no site-packages folder of this Python)")
        problems.append("GRADFIX=1 cannot work: gradfix.pth is not installed; reinstall gradfix "
                        "with pip (`pip install --force-reinstall gradfix`)")
    elif importlib.util.find_spec("_gradfix_bootstrap") is None:
        say(f"  start-up file   {paths[0]} (but _gradfix_bootstrap is missing)")
        problems.append("the start-up module _gradfix_bootstrap is missing; reinstall gradfix")
    else:
        say(f"  start-up file   {paths[0]}")

    catalog, rows = assess_catalog(settings)
    folders = [str(catalog_module.builtin_dir())] + list(settings.catalog_path)
    say(f"\nCatalog: {len(catalog.entries)} patch(es) from {', '.join(folders)}")
    for folder in settings.catalog_path:
        state = catalog_files.folder_index_state(folder)
        say(f"  {folder}: index {state}")
        if state.startswith("unchecked, stale"):
            problems.append(f"catalog folder {folder}: its unchecked index no longer matches the files "
                            f"({state.split(': ', 1)[1]}), and start-up uses the index: run "
                            f"`gradfix index --unchecked {folder}` again")
    for problem in catalog.problems:
        problems.append(f"catalog: {problem}")
    unknown = config.unknown_ids_problem(settings, catalog.ids)
    if unknown:
        problems.append(unknown)

    say("\nWhat matters here:")
    relevant = [(e, s, v) for e, s, v in rows if v != PACKAGE_ABSENT]
    if not relevant:
        say("  None of the catalog's packages is installed.")
    for entry, status, verdict in relevant:
        say(f"  {entry.id}: {verdict} - {status.reason}")
        if verdict == APPLIES and settings.switch is not True:
            advice.append(f"{entry.id} fixes {entry.package} {status.installed_version}: add "
                          "`import gradfix` at the top of your training script, or set GRADFIX=1 "
                          "(or use `gradfix run -- <command>`) to cover every process.")
        elif verdict == UNSUPPORTED:
            problems.append(f"{entry.id}: {entry.package} {status.installed_version} is in the "
                            f"affected range but its code is not the known buggy code; gradfix "
                            f"will not touch it. {entry.upgrade_advice()}.")
        elif verdict == ERROR:
            problems.append(f"{entry.id}: {status.reason}")
        elif verdict == DISABLED and status.installed_version:
            advice.append(f"{entry.id} is disabled here, so {entry.package} "
                          f"{status.installed_version} keeps its bug if it is in the affected range.")

    conformance = _conformance_lines()
    if conformance:
        say("\nConformance matrix (DeepSpeed and Trainer against plain PyTorch, README):")
        for line in conformance:
            say(f"  {line}")

    if problems:
        say("\nProblems:")
        for line in problems:
            say(f"  - {line}")
    if advice:
        say("\nAdvice:")
        for line in advice:
            say(f"  - {line}")
    if not problems:
        say("\nNo problems found.")
    return 1 if problems else 0
