"""Start-up entry of gradfix, run in every Python process by ``gradfix.pth``
(or ``gradfix.start`` on PEP 829 interpreters).

It lives outside the ``gradfix`` package so that, with ``GRADFIX`` unset, nothing
of gradfix is imported. Standard library only, and it never raises: a broken
install costs one warning line on stderr, never the user's program. The one
exception is ``GRADFIX_STRICT=1``, where a failure to start ends the process.

Activation waits for the first import of a package the catalog patches (``WATCHED``):
a process that never imports one (a launcher's helper, a data worker, a tokenizer or
compiler subprocess) never imports gradfix, so exporting ``GRADFIX=1`` to a whole job
costs such processes next to nothing. A watched import activates gradfix first, so
every patch is armed before the framework's own code runs, exactly as ``import gradfix``
at the top of the script would. Extra catalogs (``GRADFIX_CATALOG_PATH``) may patch any
package, so with one gradfix activates at start-up instead.
"""

import _thread
import os
import sys

# Keep in step with gradfix.config (a test checks that both agree).
TRUE_VALUES = ("1", "true", "yes", "on")
FALSE_VALUES = ("0", "false", "no", "off")
STRICT_EXIT_CODE = 78
# generated: begin (python -m gradfix._generate; the top-level packages of the catalog's
# targets, and ray, whose import gradfix hooks to pass GRADFIX to Ray workers)
WATCHED = frozenset(('accelerate', 'deepspeed', 'llamafactory', 'openrlhf', 'ray', 'transformers', 'trl'))
# generated: end
_started = False


def _warn(message):
    try:
        sys.stderr.write("gradfix: " + message + "\n")
    except Exception:
        pass


def _strict():
    return os.environ.get("GRADFIX_STRICT", "").strip().lower() in TRUE_VALUES


def main():
    """Activate gradfix when GRADFIX asks for it; otherwise return at once."""
    global _started
    if _started:  # site.py may read the same .pth twice (lib and a lib64 symlink)
        return
    _started = True
    raw = os.environ.get("GRADFIX", "")
    value = raw.strip().lower()
    if value in FALSE_VALUES or not value:
        return
    if value not in TRUE_VALUES:
        _warn(
            "GRADFIX=%r is not a valid value; use GRADFIX=1 to activate gradfix in every "
            "process or GRADFIX=0 to disable it. gradfix stays inactive in this process." % raw
        )
        return
    if os.environ.get("GRADFIX_CATALOG_PATH") or any(name in sys.modules for name in WATCHED):
        _activate()
    else:
        sys.meta_path.insert(0, _FirstFrameworkImport())


def _activate():
    """Import gradfix, which activates it; never raises, except under strict mode."""
    try:
        import gradfix  # noqa: F401  (importing activates)
    except Exception as exc:
        if _strict():
            _warn("cannot start under GRADFIX_STRICT=1: %s: %s" % (type(exc).__name__, exc))
            os._exit(STRICT_EXIT_CODE)
        _warn(
            "could not start (%s: %s); this process runs without gradfix. "
            "Run `python -m gradfix doctor` to see why." % (type(exc).__name__, exc)
        )


class _FirstFrameworkImport:
    """A ``sys.meta_path`` finder that activates gradfix when the first watched package
    is looked for, then finds that package with the other finders (gradfix's own
    post-import hook finder among them) and steps aside."""

    def __init__(self):
        self.done = False
        self.lock = _thread.RLock()  # another thread's watched import waits for activation
        # (thread, name) lookups under way: gradfix's post-import hook finder also asks the
        # rest of sys.meta_path, so without this each would call the other forever.
        self.searching = set()

    def find_spec(self, fullname, path=None, target=None):
        if path is not None or fullname not in WATCHED:
            return None
        key = (_thread.get_ident(), fullname)
        if key in self.searching:
            return None
        with self.lock:
            if not self.done:
                self.done = True
                _activate()
        self.searching.add(key)
        try:
            spec = self._find_with_others(fullname, target)
        finally:
            self.searching.discard(key)
        if spec is not None:
            # Whoever asked stops at this spec, so leaving the list now is safe.
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
        return spec  # None (not installed): stay, inert, rather than change the list mid-search

    def _find_with_others(self, fullname, target):
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, None, target)
            if spec is not None:
                return spec
        return None
