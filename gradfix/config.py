"""Every GRADFIX_* environment variable, parsed in one place.

Bad values never raise: each produces a warning that names the variable, the bad
value and the valid ones, and the variable falls back to its default.
"""

import os

TRUE_VALUES = ("1", "true", "yes", "on")
FALSE_VALUES = ("0", "false", "no", "off")
LOG_LEVELS = ("quiet", "info", "debug")
DISABLE_ALL = "*"

ENV_SWITCH = "GRADFIX"
ENV_DISABLE = "GRADFIX_DISABLE"
ENV_STRICT = "GRADFIX_STRICT"
ENV_LOG = "GRADFIX_LOG"
ENV_CATALOG_PATH = "GRADFIX_CATALOG_PATH"
ENV_PROFILE = "GRADFIX_PROFILE"

class Settings:
    """The parsed environment. ``switch`` is True (on), False (off) or None (unset)."""

    __slots__ = ("switch", "disabled", "disable_all", "strict", "log_level", "catalog_path", "profile", "problems")

    def __init__(self, switch=None, disabled=(), disable_all=False, strict=False, log_level="info",
                 catalog_path=(), profile=None, problems=()):
        self.switch = switch
        self.disabled = tuple(disabled)
        self.disable_all = disable_all
        self.strict = strict
        self.log_level = log_level
        self.catalog_path = tuple(catalog_path)
        self.profile = profile  # a packaging Version, or None
        self.problems = tuple(problems)

    @property
    def killed(self) -> bool:
        """GRADFIX=0: gradfix does nothing, even when imported or activated."""
        return self.switch is False

    def is_disabled(self, patch_id: str) -> bool:
        return self.disable_all or patch_id in self.disabled


def _bool(name: str, raw: str, problems: list):
    value = raw.strip().lower()
    if not value:
        return None
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    problems.append(
        f"{name}={raw!r} is not a valid value; use one of {', '.join(TRUE_VALUES)} "
        f"(on) or {', '.join(FALSE_VALUES)} (off). Ignoring it."
    )
    return None


def parse(environ) -> Settings:
    """Parse the GRADFIX_* variables of ``environ``; problems are collected, not raised."""
    problems: list = []
    switch = _bool(ENV_SWITCH, environ.get(ENV_SWITCH, ""), problems)
    strict = bool(_bool(ENV_STRICT, environ.get(ENV_STRICT, ""), problems))

    log_raw = environ.get(ENV_LOG, "")
    log_level = log_raw.strip().lower() or "info"
    if log_level not in LOG_LEVELS:
        problems.append(
            f"{ENV_LOG}={log_raw!r} is not a valid level; use one of {', '.join(LOG_LEVELS)}. "
            "Using info."
        )
        log_level = "info"

    items = [item.strip() for item in environ.get(ENV_DISABLE, "").split(",")]
    items = [item for item in items if item]
    disable_all = DISABLE_ALL in items or "all" in (item.lower() for item in items)
    disabled = tuple(item for item in items if item != DISABLE_ALL and item.lower() != "all")

    catalog_path = tuple(p for p in environ.get(ENV_CATALOG_PATH, "").split(os.pathsep) if p)
    profile = _profile(environ.get(ENV_PROFILE, ""), problems)

    return Settings(
        switch=switch,
        disabled=disabled,
        disable_all=disable_all,
        strict=strict,
        log_level=log_level,
        catalog_path=catalog_path,
        profile=profile,
        problems=tuple(problems),
    )


def _profile(raw: str, problems: list):
    """GRADFIX_PROFILE: a released gradfix version not newer than this one, or None."""
    text = raw.strip()
    if not text:
        return None
    from packaging.version import InvalidVersion, Version

    from gradfix import __version__

    try:
        profile = Version(text)
    except InvalidVersion:
        problems.append(f"{ENV_PROFILE}={raw!r} is not a gradfix version (e.g. {__version__}). "
                        "Ignoring it: this gradfix's own patch set is active.")
        return None
    if profile > Version(__version__):
        problems.append(f"{ENV_PROFILE}={raw!r} is newer than the installed gradfix {__version__}, which cannot "
                        f"know that release's patch set. Install gradfix=={text}. Ignoring it.")
        return None
    return profile


def unknown_ids_problem(settings: Settings, known_ids):
    """A warning for GRADFIX_DISABLE entries that name no catalog patch, or None."""
    unknown = [patch_id for patch_id in settings.disabled if patch_id not in known_ids]
    if not unknown:
        return None
    valid = ", ".join(sorted(known_ids)) or "(the catalog is empty)"
    return (
        f"{ENV_DISABLE} names unknown patch id(s) {', '.join(map(repr, unknown))}; "
        f"valid ids: {valid}, or * for all. `gradfix list` shows them."
    )


def current() -> Settings:
    return parse(os.environ)
