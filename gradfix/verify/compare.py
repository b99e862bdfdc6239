"""Compare a DeepSpeed run with the plain PyTorch reference and put the outcome in
words. Pure Python: no torch needed to read the workers' results."""

import math


# The update error of a step is |params - reference| / |reference update|, both
# Euclidean norms over all parameters, the update measured from the initial
# parameters. fp32 runs of fixed DeepSpeed releases agree with the reference to
# 1e-6 or better; bf16 runs to about 0.1 (parameter rounding); a dropped
# micro-batch costs 0.3 and more.
TOLERANCE = {"fp32": 1e-4, "bf16": 0.2, "fp16": 0.2}


def _distance(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


class Comparison:
    """A run measured against the reference, step by step."""

    def __init__(self, run, reference, precision):
        self.precision = precision
        self.steps_match = len(run["params"]) == len(reference["params"])
        initial = reference["initial"]
        self.max_param_differences = [max(abs(a - b) for a, b in zip(got, want))
                                      for got, want in zip(run["params"], reference["params"])]
        self.update_errors = [_distance(got, want) / max(_distance(want, initial), 1e-12)
                              for got, want in zip(run["params"], reference["params"])]

    @property
    def correct(self) -> bool:
        # Each step on its own: max() of a list holding NaN depends on where the NaN is.
        return self.steps_match and all(error <= TOLERANCE[self.precision] for error in self.update_errors)

    @property
    def largest_error(self) -> float:
        """The worst step's update error; NaN when any step's parameters are not finite."""
        return math.nan if any(math.isnan(e) for e in self.update_errors) else max(self.update_errors)

    def to_dict(self) -> dict:
        return {"correct": self.correct, "update_errors": self.update_errors,
                "max_param_differences": self.max_param_differences, "tolerance": TOLERANCE[self.precision]}


class Combined:
    """Several comparisons read as one: correct when every one is."""

    def __init__(self, comparisons):
        self.comparisons = comparisons

    @property
    def correct(self) -> bool:
        return all(c.correct for c in self.comparisons)


def _percent(error):
    if math.isnan(error):
        return "NaN"
    if error < 1e-4:
        return "<0.01%"
    return f"{100 * error:.2g}%" if error < 1 else f"{100 * error:.0f}%"  # 300%, not 3e+02%


def percent_text(errors):
    return " / ".join(_percent(e) for e in errors)


def norms_text(norms):
    return " / ".join("-" if n is None else f"{n:.4f}" for n in norms)


def evidence_text(records):
    """What gradfix did in a run, one line per patch that acted or could not act."""
    lines, unreached = [], []
    for patch_id, record in sorted((records or {}).items()):
        if record["state"] == "applied" and record["hits"]:
            lines.append(f"{patch_id}: applied, {record['evidence']}")
        elif record["state"] == "applied":
            unreached.append(patch_id)
        elif record["state"] in ("unsupported", "failed", "disabled"):
            lines.append(f"{patch_id}: {record['state']} ({record['reason']})")
    if unreached:
        lines.append(f"also applied, not reached by this configuration: {', '.join(unreached)}")
    return lines
