"""Installed distribution versions, read from the ``*.dist-info`` / ``*.egg-info``
metadata on sys.path, first match wins, as importlib.metadata does.

importlib.metadata itself is not used: importing it costs more than the rest of
gradfix's activation together (a test checks that both agree).
"""

import os
import sys

_SUFFIXES = (".dist-info", ".egg-info")
# The standard library's folders hold no distribution metadata; listing them would be
# most of the time this module takes.
_STANDARD_LIBRARY = {os.path.dirname(os.__file__), os.path.join(os.path.dirname(os.__file__), "lib-dynload")}


def normalise(name: str) -> str:
    """PEP 503 name normalisation, with '_' as separator as in metadata folder names."""
    name = name.lower().replace("-", "_").replace(".", "_")  # (str.translate is 4 times slower)
    while "__" in name:
        name = name.replace("__", "_")
    return name


def _metadata_file(path: str) -> str:
    if path.endswith(".dist-info"):
        return os.path.join(path, "METADATA")
    return os.path.join(path, "PKG-INFO") if os.path.isdir(path) else path


def _read_version(path: str):
    try:
        with open(_metadata_file(path), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip() or None
                if not line.strip():  # end of the header block
                    break
    except OSError:
        pass
    return None


class Scan:
    """What one pass over sys.path found: ``versions`` ``{distribution: version or
    None}``, and ``modules``, the asked-for top-level modules seen as a folder, a
    ``.py`` file or an extension module in a listed sys.path folder, out of
    ``searched``, the modules every sys.path folder was listed for. ``complete`` is
    False when a sys.path entry is an archive (a zip file), which a listing cannot see
    into: only an import system search can tell what it holds."""

    __slots__ = ("versions", "modules", "searched", "complete")

    def __init__(self, versions, modules, searched, complete):
        self.versions, self.modules, self.searched, self.complete = versions, modules, searched, complete


def _module_files(modules) -> dict:
    """file or folder name -> top-level module, for the names a listing may show."""
    import _imp  # built in: the extension suffixes without importing importlib

    files = {}
    for module in modules:
        for suffix in ("", ".py", *_imp.extension_suffixes()):
            files[module + suffix] = module
    return files


def _listing(entry: str):
    """The names in a sys.path folder. The import system has usually listed it already
    (to import gradfix): its finder's cached listing is used while the folder's
    modification time is the one the finder recorded, the test the finder itself
    applies before trusting it; otherwise the folder is listed again."""
    path = entry or os.getcwd()
    finder = sys.path_importer_cache.get(path)
    cached = getattr(finder, "_path_cache", None)  # importlib's FileFinder (CPython 3.3+)
    if cached and sys.platform != "win32" and getattr(finder, "_path_mtime", None) == os.stat(path).st_mtime:
        return cached  # (on Windows the cached names are case-folded)
    return os.listdir(path)


def scan(distributions, modules=()) -> Scan:
    """Versions of ``distributions`` (names, or a dict of names to their normalised
    forms, which the catalog's rows record) and which of the top-level ``modules`` a
    plain sys.path folder holds, in one pass over sys.path (a listing each)."""
    keys = distributions if isinstance(distributions, dict) else {name: normalise(name) for name in distributions}
    wanted = set(keys.values())  # two spellings of one name ("DeepSpeed", "deepspeed") share a key
    files = _module_files(modules) if modules else {}
    found, seen, searched, complete = {}, set(), set(modules), True
    for entry in sys.path:
        if entry in _STANDARD_LIBRARY:
            continue
        try:
            names = _listing(entry)
        except NotADirectoryError:  # a zip archive
            complete = False
            continue
        except OSError:  # a missing folder
            continue
        if files:
            seen.update(files[name] for name in files.keys() & names)
        for name in names:
            if not name.endswith(_SUFFIXES):
                continue
            key = normalise(name[: name.rindex(".")].partition("-")[0])
            if key in wanted and key not in found:
                version = _read_version(os.path.join(entry or os.curdir, name))
                if version:
                    found[key] = version
        if len(found) == len(wanted):  # the modules matter only for distributions not found
            searched = set()  # the later folders were not listed
            break
    return Scan({name: found.get(key) for name, key in keys.items()}, seen, searched, complete)


def installed_versions(distributions) -> dict:
    """``{distribution: version or None}`` for each name, in one pass over sys.path."""
    return scan(distributions).versions


def installed_version(distribution: str):
    return installed_versions([distribution])[distribution]
