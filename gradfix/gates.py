"""The two gates every patch passes: the installed version, then the code itself.

``packaging`` is imported on first use, i.e. only when a catalog package is
actually installed.
"""


class VersionVerdict:
    AFFECTED = "affected"  # a release inside the affected range
    UNAFFECTED = "unaffected"  # a release outside it
    UNCERTAIN = "uncertain"  # local, dev or pre-release build, or no version: the code decides


def version_gate(installed, affected) -> str:
    """Compare the installed version with the affected ``SpecifierSet``.

    A local or development build (``0.18.10+abc``, ``0.19.0.dev0``) may carry any
    mix of upstream commits, so its version proves nothing: the code probe decides.
    """
    from packaging.version import InvalidVersion, Version

    if installed is None:
        return VersionVerdict.UNCERTAIN
    try:
        version = Version(installed)
    except InvalidVersion:
        return VersionVerdict.UNCERTAIN
    if version.local is not None or version.is_prerelease:  # is_prerelease covers .devN
        return VersionVerdict.UNCERTAIN
    return VersionVerdict.AFFECTED if affected.contains(version) else VersionVerdict.UNAFFECTED


def plausibly_affected(installed, affected) -> bool:
    """For an uncertain version: could this build still be in the affected range?"""
    from packaging.version import InvalidVersion, Version

    try:
        return affected.contains(Version(installed), prereleases=True)
    except (InvalidVersion, TypeError):
        return True  # no usable version: assume it could be


class CodeVerdict:
    BUGGY = "buggy"  # the known buggy code: patch it
    FIXED = "fixed"  # already behaves like the upstream fix: leave it alone
    UNKNOWN = "unknown"  # neither: never patch blindly
    UNCORRECTABLE = "uncorrectable"  # the known buggy code, but no reliable correction exists
    CONFLICT = "conflict"  # another patcher (or a hand-made fix) replaced the code: never stack on it


class Probe:
    """What a patch's code gate found, with a short human-readable detail."""

    __slots__ = ("verdict", "detail")

    def __init__(self, verdict: str, detail: str = ""):
        self.verdict, self.detail = verdict, detail

    def __repr__(self) -> str:
        return f"Probe({self.verdict!r}, {self.detail!r})"


def buggy(detail: str = "") -> Probe:
    return Probe(CodeVerdict.BUGGY, detail)


def fixed(detail: str = "") -> Probe:
    return Probe(CodeVerdict.FIXED, detail)


def unknown(detail: str) -> Probe:
    return Probe(CodeVerdict.UNKNOWN, detail)


def conflict(detail: str) -> Probe:
    return Probe(CodeVerdict.CONFLICT, detail)


def uncorrectable(detail: str) -> Probe:
    """The bug is there and gradfix cannot correct it: ``detail`` says why and what
    the user can do instead. Reported as unsupported; the fix is never applied."""
    return Probe(CodeVerdict.UNCORRECTABLE, detail)


def source_fingerprint(obj) -> str:
    """A hash of ``obj``'s source that ignores comments, docstrings and formatting.

    Two functions that differ only in layout get the same fingerprint; any change to
    the code itself changes it. Raises OSError/TypeError when the source is unavailable.
    """
    import ast
    import hashlib
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = body[1:] or [ast.Pass()]
    normalised = ast.dump(tree, annotate_fields=False, include_attributes=False)
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]
