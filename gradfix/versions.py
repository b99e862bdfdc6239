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
    out = []
    for char in name.lower():
        sep = char in "-_."
        if not (sep and out and out[-1] == "_"):
            out.append("_" if sep else char)
    return "".join(out)


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


def installed_versions(distributions) -> dict:
    """``{distribution: version or None}`` for each name, in one pass over sys.path."""
    wanted = {normalise(name): name for name in distributions}
    found = {}
    for entry in sys.path:
        if entry in _STANDARD_LIBRARY:
            continue
        try:
            names = os.listdir(entry or os.curdir)
        except OSError:  # missing folder, zip file
            continue
        for name in names:
            if not name.endswith(_SUFFIXES):
                continue
            key = normalise(name[: name.rindex(".")].partition("-")[0])
            if key in wanted and key not in found:
                version = _read_version(os.path.join(entry or os.curdir, name))
                if version:
                    found[key] = version
        if len(found) == len(wanted):
            break
    return {name: found.get(key) for key, name in wanted.items()}


def installed_version(distribution: str):
    return installed_versions([distribution])[distribution]
