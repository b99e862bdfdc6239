"""The two gates every patch passes: the installed version, then the code itself."""

from __future__ import annotations

import ast
import enum
import hashlib
import inspect
import textwrap
from dataclasses import dataclass
from typing import Optional

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version


class VersionVerdict(enum.Enum):
    AFFECTED = "affected"  # a release inside the affected range
    UNAFFECTED = "unaffected"  # a release outside it
    UNCERTAIN = "uncertain"  # local, dev or pre-release build, or no version: the code decides


def version_gate(installed: Optional[str], affected: SpecifierSet) -> VersionVerdict:
    """Compare the installed version with the catalog's affected range.

    A local or development build (``0.18.10+abc``, ``0.19.0.dev0``) may carry any
    mix of upstream commits, so its version proves nothing: the code probe decides.
    """
    if installed is None:
        return VersionVerdict.UNCERTAIN
    try:
        version = Version(installed)
    except InvalidVersion:
        return VersionVerdict.UNCERTAIN
    if version.local is not None or version.is_prerelease:  # is_prerelease covers .devN
        return VersionVerdict.UNCERTAIN
    return VersionVerdict.AFFECTED if affected.contains(version) else VersionVerdict.UNAFFECTED


def plausibly_affected(installed: Optional[str], affected: SpecifierSet) -> bool:
    """For an uncertain version: could this build still be in the affected range?"""
    try:
        return affected.contains(Version(installed), prereleases=True)  # type: ignore[arg-type]
    except (InvalidVersion, TypeError):
        return True  # no usable version: assume it could be


class CodeVerdict(enum.Enum):
    BUGGY = "buggy"  # the known buggy code: patch it
    FIXED = "fixed"  # already behaves like the upstream fix: leave it alone
    UNKNOWN = "unknown"  # neither: never patch blindly


@dataclass(frozen=True)
class Probe:
    """What a patch's code gate found, with a short human-readable detail."""

    verdict: CodeVerdict
    detail: str = ""


def buggy(detail: str = "") -> Probe:
    return Probe(CodeVerdict.BUGGY, detail)


def fixed(detail: str = "") -> Probe:
    return Probe(CodeVerdict.FIXED, detail)


def unknown(detail: str) -> Probe:
    return Probe(CodeVerdict.UNKNOWN, detail)


class _StripDocstrings(ast.NodeTransformer):
    def _strip(self, node):
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _strip


def source_fingerprint(obj) -> str:
    """A hash of ``obj``'s source that ignores comments, docstrings and formatting.

    Two functions that differ only in layout get the same fingerprint; any change to
    the code itself changes it. Raises OSError/TypeError when the source is unavailable.
    """
    source = textwrap.dedent(inspect.getsource(obj))
    tree = _StripDocstrings().visit(ast.parse(source))
    normalised = ast.dump(tree, annotate_fields=False, include_attributes=False)
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]
