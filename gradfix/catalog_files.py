"""Catalog files: parse and validate one ``<id>.toml`` file, and compile a catalog folder
into its index (``gradfix index``). Start-up needs none of this while the catalog
folders' indexes are current (gradfix.catalog); a changed folder is parsed here.
"""

import marshal
import os
import sys

from .catalog import (FOLDER_INDEX, _FOLDER_INDEX_FORMAT, OPTIONAL, SCHEMA, UNFIXED, Catalog, CatalogEntry,
                      CatalogProblem, _read_folder_index, _stamps, _toml_names, load, split_unpatched)


class CatalogError(ValueError):
    """A catalog file that cannot be used; ``problem`` names the file and field."""

    def __init__(self, problem: CatalogProblem):
        super().__init__(str(problem))
        self.problem = problem


class _Problem(Exception):
    def __init__(self, field, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def _text(data: dict, name: str) -> str:
    value = data[name].strip()
    if not value:
        raise _Problem(name, "must not be empty")
    return value


def validate(path: str, data: dict) -> CatalogEntry:
    """Check every field of one parsed catalog file; raises _Problem."""
    import re

    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    def version_of(name, text):
        try:
            return Version(text.strip())
        except InvalidVersion:
            raise _Problem(name, f"{text!r} is not a PEP 440 version") from None

    def version(name):
        return version_of(name, _text(data, name))

    for name, (kind, description) in SCHEMA.items():
        if name not in data:
            raise _Problem(name, f"missing ({description})")
        if not isinstance(data[name], kind):
            raise _Problem(name, f"must be a {kind.__name__}, got {type(data[name]).__name__}")
    unknown = sorted(set(data) - set(SCHEMA) - set(OPTIONAL))
    if unknown:
        raise _Problem(unknown[0], f"unknown field; valid fields: {', '.join([*SCHEMA, *OPTIONAL])}")

    patch_id = _text(data, "id")
    stem = os.path.basename(path)[: -len(".toml")]
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", patch_id):
        raise _Problem("id", f"{patch_id!r} must be lowercase words joined by '-'")
    if patch_id != stem:
        raise _Problem("id", f"{patch_id!r} must equal the file name {stem!r}")
    package = _text(data, "package")
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", package):
        raise _Problem("package", f"{package!r} is not a valid distribution name")
    try:
        affected = SpecifierSet(_text(data, "affected"))
    except InvalidSpecifier as exc:
        raise _Problem("affected", f"not a PEP 440 specifier set ({exc})") from None
    fixed_in = UNFIXED if _text(data, "fixed_in") == UNFIXED else version("fixed_in")
    if fixed_in != UNFIXED and affected.contains(fixed_in, prereleases=True):
        raise _Problem("fixed_in", f"{fixed_in} lies inside the affected range {affected}")
    upstream = data["upstream"]
    if not upstream or not all(isinstance(ref, str) and ref.strip() for ref in upstream):
        raise _Problem("upstream", "must be a non-empty list of non-empty strings")
    implementation = _text(data, "implementation")
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", implementation):
        raise _Problem("implementation", f"{implementation!r} is not a dotted module path")
    # Lower bounds first: SpecifierSet's own str() sorts alphabetically ("<2.0,>=1.0").
    specs = sorted(map(str, affected), key=lambda s: (not s.startswith(">"), s))
    fields = {name: _text(data, name) if kind is str else data[name] for name, (kind, _) in SCHEMA.items()}
    since = version("since")
    changed = data.get("numerics_changed", [])
    if not isinstance(changed, list) or not all(isinstance(v, str) for v in changed):
        raise _Problem("numerics_changed", "must be a list of gradfix versions")
    changed_versions = [version_of("numerics_changed", v) for v in changed]
    if any(v <= since for v in changed_versions):
        raise _Problem("numerics_changed", f"every version must be later than since = {since}")
    unpatched = data.get("unpatched", [])
    if not isinstance(unpatched, list) or not all(isinstance(v, str) and ":" in v for v in unpatched):
        raise _Problem("unpatched", "must be a list of 'SPECIFIERS: why' strings")
    for item in unpatched:
        specifiers, why = split_unpatched(item)
        try:
            SpecifierSet(specifiers)
        except InvalidSpecifier as exc:
            raise _Problem("unpatched", f"{specifiers!r} is not a PEP 440 specifier set ({exc})") from None
        if not why:
            raise _Problem("unpatched", f"{item!r} does not say why")
    fields.update(affected=",".join(specs), fixed_in=str(fixed_in), since=str(since),
                  upstream=[ref.strip() for ref in upstream], numerics_changed=[str(v) for v in changed_versions],
                  unpatched=[item.strip() for item in unpatched])
    return CatalogEntry(fields, os.path.dirname(path))


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python < 3.11 only
        import tomli as tomllib
    return tomllib


def load_file(path: str) -> CatalogEntry:
    """Parse and validate one catalog file; raises CatalogError naming the file and field."""
    tomllib = _toml()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(CatalogProblem(path, None, f"cannot read: {exc}")) from None
    try:
        return validate(path, data)
    except _Problem as problem:
        raise CatalogError(CatalogProblem(path, problem.field, problem.message)) from None
    except ImportError as exc:  # a broken install: packaging missing
        raise CatalogError(CatalogProblem(path, None, f"cannot validate: {exc}")) from None



# -- indexes -------------------------------------------------------------------

def fingerprint(path: str):
    """(size, CRC-32) of a catalog file: tells a checkout's edited file from the one
    the index was compiled from (not a defence against tampering: the catalog folder is
    as trusted as gradfix's own code)."""
    import zlib

    with open(path, "rb") as handle:
        data = handle.read()
    return len(data), zlib.crc32(data)


def write_folder_index(directory: str, checked: bool = True) -> Catalog:
    """Validate the catalog folder ``directory`` and record it in FOLDER_INDEX (``gradfix
    index``). Nothing is written when a file has a problem.

    A checked index is used while the folder holds the same files, each with its size
    and modification time unchanged: a listing and one stat per file at each start-up.
    An unchecked one is trusted as it is, like the wheel's own catalog and like Python's
    unchecked-hash .pyc files: for a folder that is deployed, not edited; start-up reads
    only the index, and ``gradfix doctor`` says when the files no longer match it."""
    loaded = load([directory], include_builtin=False, use_index=False)
    if not loaded.problems:
        names = _toml_names(directory)
        shared = {}  # one object per distinct string: marshal then writes repeats as references
        rows = [tuple(shared.setdefault(value, value) for value in entry.row) for entry in loaded.entries]
        serial = os.urandom(8)  # tells the rest of this file from a later index's
        head = marshal.dumps({"format": _FOLDER_INDEX_FORMAT, "serial": serial, "entries": rows,
                              "stamps": _stamps(directory, names) if checked else None})
        rest = marshal.dumps({"serial": serial, "entries": [entry.to_dict() for entry in loaded.entries],
                              "fingerprints": {name: fingerprint(os.path.join(directory, name)) for name in names}})
        partial = os.path.join(directory, FOLDER_INDEX + ".partial")
        with open(partial, "wb") as handle:
            handle.write(len(head).to_bytes(4, "little") + head + rest)
        os.replace(partial, os.path.join(directory, FOLDER_INDEX))
    return loaded


def folder_index_state(directory: str) -> str:
    """What start-up does with ``directory``'s index, in words, for ``gradfix doctor``:
    "none", "checked", "unchecked" or "unchecked, stale: <what changed>"."""
    index = _read_folder_index(directory)
    if index is None:
        return "none"
    if index.stamps is not None:
        return "checked"
    recorded = index.fingerprints()
    names = _toml_names(directory)
    changed = [f"{name} added" for name in names if name not in recorded]
    changed += [f"{name} removed" for name in recorded if name not in names]
    changed += [f"{name} edited" for name in names
                if name in recorded and fingerprint(os.path.join(directory, name)) != recorded[name]]
    return "unchecked, stale: " + ", ".join(changed) if changed else "unchecked"
