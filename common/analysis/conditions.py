"""The paper's conditions, means over whichever of them a partial sweep has, and ``Findings``: the notes, gaps
and arrays each step of the analysis returns beside its numbers (analyze_logits.py combines them in order)."""
from dataclasses import dataclass, field

import numpy as np

from common.corruptions import CORRUPTIONS
from common.results import CLEAN

SEVERITIES = (1, 2, 3, 4, 5)
BENCHMARK = [(c, s) for c in CORRUPTIONS for s in SEVERITIES]   # the paper's 75 conditions
CLEAN_CONDITION = (CLEAN, 0)


@dataclass
class Findings:
    """What a step found besides its numbers: ``notes`` (analysis.json's notes), ``missing`` (its gaps, one dict
    each) and ``arrays`` (analysis_arrays.npz entries). ``add`` appends another step's findings in order."""
    notes: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    arrays: dict = field(default_factory=dict)

    def add(self, other: "Findings") -> "Findings":
        # A note can come once per model with the same text (a CD denominator is the reference's alone): once.
        self.notes += [n for n in other.notes if n not in self.notes]
        self.missing += other.missing
        self.arrays.update(other.arrays)
        return self


def cond_key(corruption, severity):
    """The name of a condition in analysis.json: "fog/3", "clean/0"."""
    return f"{corruption}/{severity}"


def finite_list(a):
    """An array as a JSON list, or None when any entry is undefined."""
    return [float(v) for v in a] if np.isfinite(a).all() else None


def mean_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def mean_over(values, of):
    """{value, n, of, complete} for a mean over whichever of `of` items are not None."""
    present = [v for v in values if v is not None]
    return {"value": mean_or_none(present), "n": len(present), "of": of, "complete": len(present) == of}


def aggregate_entry(agg, n="n_conditions", value="value"):
    """A ``mean_over`` result under the names analysis.json gives it."""
    return {value: agg["value"], n: agg["n"], "of": agg["of"], "complete": agg["complete"]}


def severity_ranges(severities):
    """(1, 2, 3, 5) -> '1-3,5'."""
    parts, start = [], None
    for i, s in enumerate(severities):
        if start is None:
            start = s
        if i + 1 == len(severities) or severities[i + 1] != s + 1:
            parts.append(str(start) if start == s else f"{start}-{s}")
            start = None
    return ",".join(parts)


def shown_list(names):
    """The first six names of a list of conditions, for a one-line message."""
    return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
