"""GRADFIX_PROFILE: keep exactly the patch set of an earlier gradfix release, so that
upgrading gradfix never silently changes the numerics of a pinned experiment.

A patch belongs to profile P when it shipped in P (``since <= P``) and no later gradfix
release changed what it computes (``numerics_changed``). Patches outside the profile
are disabled, with the reason in their status; the catalog keeps no old code, so a
patch whose numerics changed after P cannot be replayed as it was and is left off.
"""

from gradfix.config import ENV_PROFILE


def exclusion(entry, profile):
    """Why ``entry`` is not part of ``profile`` (a Version), or None when it is."""
    if profile is None:
        return None
    from packaging.version import Version

    if Version(entry.since) > profile:
        return f"not in {ENV_PROFILE}={profile} (added in gradfix {entry.since})"
    later = [version for version in entry.numerics_changed if Version(version) > profile]
    if later:
        return (f"{ENV_PROFILE}={profile}: gradfix {later[0]} changed what this patch computes; "
                f"install gradfix=={profile} to reproduce that release exactly")
    return None
