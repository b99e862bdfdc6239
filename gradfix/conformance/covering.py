"""A covering design: a short list of cases in which every combination of ``strength``
axis values (every pair, by default) appears at least once, where the constraints allow
it; optionally a higher strength over a few axes whose interactions matter most.

Why the higher strength: the paper's own bug needs three values at once (ZeRO-2,
optimizer offload and GA of 3 or more); a design that only covers pairs can hold each
pair of them and never the three together.

Greedy and deterministic (the same axes give the same cases, so case ids stay stable
from one run of the matrix to the next): each case starts from the first combination
not yet covered and fills every other axis with the allowed value that completes the
most uncovered combinations, the earlier value on ties.
"""

from itertools import combinations, product


def combinations_to_cover(axes, allowed, names, strength):
    """Every allowed combination of ``strength`` values of the axes ``names``, each a
    tuple of (axis, value) in the axes' order."""
    found = set()
    for chosen in combinations([n for n in axes if n in names], strength):
        for values in product(*(axes[name] for name in chosen)):
            combo = tuple(zip(chosen, values))
            if allowed(dict(combo)):
                found.add(combo)
    return found


def covering(axes, allowed=lambda case: True, strength=2, strong_axes=(), strong_strength=3):
    """Cases (dicts axis -> value) that hold every allowed combination of ``strength``
    values of ``axes`` (dict axis -> values), and of ``strong_strength`` values among
    ``strong_axes``. ``allowed(partial_case)`` says whether a partial case may be
    completed: it must accept every value of an axis for at least one completion."""
    names = list(axes)
    position = {(name, value): (i, j) for i, name in enumerate(names) for j, value in enumerate(axes[name])}
    uncovered = combinations_to_cover(axes, allowed, names, strength)
    if strong_axes:
        uncovered |= combinations_to_cover(axes, allowed, strong_axes, strong_strength)
    cases = []
    while uncovered:
        seed = min(uncovered, key=lambda combo: [position[item] for item in combo])
        case = dict(seed)
        for name in names:
            if name in case:
                continue
            options = [value for value in axes[name] if allowed({**case, name: value})]
            if not options:
                raise ValueError(f"no value of {name!r} is allowed with {case}: the constraints leave a dead end")
            case[name] = max(options, key=lambda value: _gain(case, name, value, uncovered))
        case = {name: case[name] for name in names}
        uncovered = {combo for combo in uncovered if any(case[name] != value for name, value in combo)}
        cases.append(case)
    return cases


def pairwise(axes, allowed=lambda case: True):
    """Every allowed pair of axis values at least once."""
    return covering(axes, allowed, strength=2)


def _gain(case, name, value, uncovered):
    """How many uncovered combinations setting ``name`` to ``value`` completes."""
    gain = 0
    for combo in uncovered:
        if (name, value) in combo and all(case.get(other) == chosen for other, chosen in combo if other != name):
            gain += 1
    return gain
