"""Load and validate the catalog: one ``<id>.toml`` file per upstream bug.

The built-in catalog is ``gradfix/_catalog`` in an installed wheel and
``patches/`` in a checkout (editable installs included). Every problem is reported
with the file and the field it concerns; a bad file is skipped, never guessed at.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

_PACKAGE_DIR = Path(__file__).resolve().parent
_ID_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_DIST_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_MODULE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

#: field -> (type, description); the schema documented in patches/README.md.
SCHEMA = {
    "id": (str, "patch id, equal to the file name without .toml"),
    "package": (str, "distribution name on PyPI, e.g. deepspeed"),
    "affected": (str, "PEP 440 specifier set of the buggy releases"),
    "fixed_in": (str, "first upstream release with the fix"),
    "summary": (str, "one line: what goes wrong"),
    "trigger": (str, "the configurations that hit the bug"),
    "effect": (str, "what the bug does to training"),
    "upstream": (list, "issue / pull-request references"),
    "implementation": (str, "dotted module path of the fix"),
    "since": (str, "gradfix version that first shipped the patch"),
}


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    package: str
    affected: SpecifierSet
    fixed_in: Version
    summary: str
    trigger: str
    effect: str
    upstream: Tuple[str, ...]
    implementation: str
    since: Version
    path: Path

    @property
    def affected_text(self) -> str:
        """The affected range with lower bounds first (SpecifierSet sorts alphabetically)."""
        specs = sorted(map(str, self.affected), key=lambda s: (not s.startswith(">"), s))
        return ",".join(specs)


@dataclass(frozen=True)
class CatalogProblem:
    path: Path
    field: Optional[str]
    message: str

    def __str__(self) -> str:
        where = f"field {self.field!r}: " if self.field else ""
        return f"{self.path}: {where}{self.message}"


@dataclass(frozen=True)
class Catalog:
    entries: Tuple[CatalogEntry, ...]
    problems: Tuple[CatalogProblem, ...]

    @property
    def ids(self) -> Tuple[str, ...]:
        return tuple(entry.id for entry in self.entries)

    def get(self, patch_id: str) -> Optional[CatalogEntry]:
        return next((entry for entry in self.entries if entry.id == patch_id), None)


def builtin_dir() -> Path:
    """Where the built-in catalog lives for this install (wheel or checkout)."""
    shipped = _PACKAGE_DIR / "_catalog"
    return shipped if shipped.is_dir() else _PACKAGE_DIR.parent / "patches"


class CatalogError(ValueError):
    """A catalog file that cannot be used; ``problem`` names the file and field."""

    def __init__(self, problem: CatalogProblem):
        super().__init__(str(problem))
        self.problem = problem


class _Problem(Exception):
    def __init__(self, field: Optional[str], message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _text(data: dict, name: str) -> str:
    value = data[name]
    if not value.strip():
        raise _Problem(name, "must not be empty")
    return value.strip()


def _parse_entry(path: Path, data: dict) -> CatalogEntry:
    for name, (kind, description) in SCHEMA.items():
        if name not in data:
            raise _Problem(name, f"missing ({description})")
        if not isinstance(data[name], kind):
            raise _Problem(name, f"must be a {kind.__name__}, got {type(data[name]).__name__}")
    unknown = sorted(set(data) - set(SCHEMA))
    if unknown:
        raise _Problem(unknown[0], f"unknown field; valid fields: {', '.join(SCHEMA)}")

    patch_id = _text(data, "id")
    if not _ID_PATTERN.match(patch_id):
        raise _Problem("id", f"{patch_id!r} must be lowercase words joined by '-'")
    if patch_id != path.stem:
        raise _Problem("id", f"{patch_id!r} must equal the file name {path.stem!r}")
    package = _text(data, "package")
    if not _DIST_PATTERN.match(package):
        raise _Problem("package", f"{package!r} is not a valid distribution name")
    try:
        affected = SpecifierSet(_text(data, "affected"))
    except InvalidSpecifier as exc:
        raise _Problem("affected", f"not a PEP 440 specifier set ({exc})") from None
    if not str(affected):
        raise _Problem("affected", "must not be empty")
    fixed_in = _version(data, "fixed_in")
    if affected.contains(fixed_in, prereleases=True):
        raise _Problem("fixed_in", f"{fixed_in} lies inside the affected range {affected}")
    upstream = tuple(data["upstream"])
    if not upstream or not all(isinstance(ref, str) and ref.strip() for ref in upstream):
        raise _Problem("upstream", "must be a non-empty list of non-empty strings")
    implementation = _text(data, "implementation")
    if not _MODULE_PATTERN.match(implementation):
        raise _Problem("implementation", f"{implementation!r} is not a dotted module path")
    return CatalogEntry(
        id=patch_id,
        package=package,
        affected=affected,
        fixed_in=fixed_in,
        summary=_text(data, "summary"),
        trigger=_text(data, "trigger"),
        effect=_text(data, "effect"),
        upstream=upstream,
        implementation=implementation,
        since=_version(data, "since"),
        path=path,
    )


def _version(data: dict, name: str) -> Version:
    try:
        return Version(_text(data, name))
    except InvalidVersion:
        raise _Problem(name, f"{data[name]!r} is not a PEP 440 version") from None


def load_file(path: Path) -> CatalogEntry:
    """Parse one catalog file; raises CatalogError naming the file and field."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(CatalogProblem(path, None, f"cannot read: {exc}")) from None
    try:
        return _parse_entry(path, data)
    except _Problem as problem:
        raise CatalogError(CatalogProblem(path, problem.field, problem.message)) from None


def load(extra_dirs: Iterable[str] = (), include_builtin: bool = True) -> Catalog:
    """Load the built-in catalog plus ``extra_dirs``; bad files become problems."""
    dirs: List[Path] = [builtin_dir()] if include_builtin else []
    dirs += [Path(d) for d in extra_dirs]
    entries: List[CatalogEntry] = []
    problems: List[CatalogProblem] = []
    seen = {}
    for directory in dirs:
        if not directory.is_dir():
            problems.append(CatalogProblem(directory, None, "catalog folder does not exist"))
            continue
        for path in sorted(directory.glob("*.toml")):
            try:
                entry = load_file(path)
            except CatalogError as exc:
                problems.append(exc.problem)
                continue
            if entry.id in seen:
                problems.append(
                    CatalogProblem(path, "id", f"{entry.id!r} is already defined in {seen[entry.id]}")
                )
                continue
            seen[entry.id] = path
            entries.append(entry)
    return Catalog(tuple(entries), tuple(problems))
