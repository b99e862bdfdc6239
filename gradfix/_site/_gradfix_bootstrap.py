"""Start-up entry of gradfix, run in every Python process by ``gradfix.pth``
(or ``gradfix.start`` on PEP 829 interpreters).

It lives outside the ``gradfix`` package so that, with ``GRADFIX`` unset, nothing
of gradfix is imported. Standard library only, and it never raises: a broken
install costs one warning line on stderr, never the user's program. The one
exception is ``GRADFIX_STRICT=1``, where a failure to start ends the process.
"""

import os
import sys

# Keep in step with gradfix.config (a test checks that both agree).
TRUE_VALUES = ("1", "true", "yes", "on")
FALSE_VALUES = ("0", "false", "no", "off")
STRICT_EXIT_CODE = 78
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
