"""mIoU aggregates of one model (docs/protocol.md, Metrics): clean mIoU, mPC, rPC, the mean over
severities 0-5, mIoU per corruption and per severity, CD / rCD against the reference model, the worst case;
and each class's IoU, clean and over the corrupted conditions (``per_class_iou``, from metrics.jsonl's "iou").

Every function takes {(corruption, severity): mIoU or None} (severity 0 = clean) and averages whatever a partial
sweep has, saying how many conditions it used and whether that is all of them (``complete``)."""
import numpy as np

from common.corruptions import ALL_CORRUPTIONS, CORRUPTIONS
from common.results import CLEAN, finite_or_none

from .conditions import BENCHMARK, SEVERITIES, aggregate_entry, mean_or_none, mean_over, severity_ranges

# Below this a CD/rCD denominator counts as zero: mIoUs are ratios of pixel counts, so sums of
# (1 - mIoU) over <= 5 severities that should cancel exactly can leave ~1e-16 of rounding.
ZERO = 1e-12


def degradation(miou, ref, c):
    """CD_c and rCD_c of one model against the reference, over the severities both have.

    miou / ref: {(corruption, severity): mIoU} including (clean, 0). Returns (entry, notes).
    """
    severities = [s for s in SEVERITIES if miou.get((c, s)) is not None and ref.get((c, s)) is not None]
    entry = {"cd": None, "rcd": None, "severities": severities, "complete": len(severities) == len(SEVERITIES)}
    notes = []
    if not severities:
        return entry, notes
    denominator = sum(1 - ref[c, s] for s in severities)
    if abs(denominator) > ZERO:
        entry["cd"] = sum(1 - miou[c, s] for s in severities) / denominator
    else:
        notes.append(f"CD of {c}/{severity_ranges(severities)} undefined: the reference scores mIoU 1 at every "
                     f"severity (0/0)")
    clean, clean_ref = miou.get((CLEAN, 0)), ref.get((CLEAN, 0))
    if clean is None or clean_ref is None:
        return entry, notes
    denominator = sum(clean_ref - ref[c, s] for s in severities)
    if abs(denominator) > ZERO:
        entry["rcd"] = sum(clean - miou[c, s] for s in severities) / denominator
    else:
        notes.append(f"rCD of {c}/{severity_ranges(severities)} undefined: the reference loses no mIoU under it "
                     f"(denominator 0)")
    return entry, notes


def mean_sev0_5(miou):
    """The headline as the mean of the notebook's results table: mean over the 15 corruptions of the mean
    over severities 0..5, severity 0 = the clean mIoU. Corruptions without any severity are left out;
    undefined (None) without a clean mIoU, since every row of that table starts with it."""
    clean = miou.get((CLEAN, 0))
    rows, used = [], 0
    for c in CORRUPTIONS:
        vals = [miou[c, s] for s in SEVERITIES if miou.get((c, s)) is not None]
        if vals and clean is not None:
            rows.append(float(np.mean([clean] + vals)))
            used += len(vals)
    return {"value": mean_or_none(rows), "n_conditions": used, "of": len(BENCHMARK), "clean": clean is not None,
            "complete": used == len(BENCHMARK) and clean is not None}


def per_corruption_and_severity(miou):
    """mIoU per corruption (mean over its severities) and per severity (mean over the 15; "0" = clean)."""
    per_corruption = {}
    for c in [c for c in ALL_CORRUPTIONS if any((c, s) in miou for s in SEVERITIES)]:
        severities = [s for s in SEVERITIES if miou.get((c, s)) is not None]
        per_corruption[c] = {"miou": mean_or_none([miou[c, s] for s in severities]), "severities": severities,
                             "complete": len(severities) == len(SEVERITIES), "benchmark": c in CORRUPTIONS}
    clean = miou.get((CLEAN, 0))
    per_severity = {"0": {"miou": clean, "n_corruptions": None, "of": None, "complete": clean is not None}}
    for s in SEVERITIES:
        agg = mean_over([miou.get((c, s)) for c in CORRUPTIONS], len(CORRUPTIONS))
        per_severity[str(s)] = aggregate_entry(agg, "n_corruptions", "miou")
    return per_corruption, per_severity


def corruption_errors(miou, ref_miou):
    """({cd per corruption, mcd, mrcd} of one model against the reference, notes on undefined ones)."""
    cd, notes = {}, []
    for c in CORRUPTIONS:
        entry, cd_notes = degradation(miou, ref_miou, c)
        if entry["severities"]:
            cd[c] = entry
            notes += cd_notes
    mcd = mean_over([cd[c]["cd"] if c in cd else None for c in CORRUPTIONS], len(CORRUPTIONS))
    mrcd = mean_over([cd[c]["rcd"] if c in cd else None for c in CORRUPTIONS], len(CORRUPTIONS))
    # A mean over all 15 corruptions is complete only if each CD_c used all five severities.
    for agg in (mcd, mrcd):
        agg["complete"] = agg["complete"] and all(cd[c]["complete"] for c in CORRUPTIONS if c in cd)
    return {"cd": cd, "mcd": aggregate_entry(mcd, "n_corruptions"),
            "mrcd": aggregate_entry(mrcd, "n_corruptions")}, notes


def miou_summary(miou, ref_miou, m):
    """(clean mIoU, mPC, rPC, the severities. 0-5 mean, per corruption and severity, CD/rCD of model ``m``; notes)."""
    clean = miou.get((CLEAN, 0))
    mpc = mean_over([miou.get(cs) for cs in BENCHMARK], len(BENCHMARK))
    per_corruption, per_severity = per_corruption_and_severity(miou)
    errors, notes = corruption_errors(miou, ref_miou)
    out = {"clean_miou": clean, "mpc": aggregate_entry(mpc),
           "rpc": {"value": (mpc["value"] / clean if mpc["value"] is not None and clean else None),
                   "complete": mpc["complete"] and clean is not None},
           "mean_sev0_5": mean_sev0_5(miou), "per_corruption": per_corruption, "per_severity": per_severity,
           **errors}
    if clean is not None and clean == 0 and mpc["value"] is not None:
        notes.append(f"{m}: rPC undefined, clean mIoU is 0")
    return out, notes


def preset_aggregate(miou, preset):
    """The single number of a --preset (run.json's "preset" record; common/presets.py AGGREGATES) over its own
    conditions: ``mean_conditions``, the mean over every (corruption, severity) it lists; or
    ``mean_of_corruption_means``, each corruption's mIoU averaged over its severities, then the mean over its
    corruptions (SegFormer's and Kamann & Rother's tables). None without a preset."""
    if not preset:
        return None
    severities = preset["severities"]
    if preset["aggregate"] == "mean_conditions":
        conds = [(c, s) for c in preset["corruptions"] for s in severities[c]]
        agg = aggregate_entry(mean_over([miou.get(cs) for cs in conds], len(conds)), "n")
    else:
        means = [mean_over([miou.get((c, s)) for s in severities[c]], len(severities[c]))
                 for c in preset["corruptions"]]
        agg = aggregate_entry(mean_over([m["value"] for m in means], len(means)), "n")
        agg["complete"] = agg["complete"] and all(m["complete"] for m in means)
    return {"preset": preset["name"], "aggregate": preset["aggregate"], **agg}


def worst_case(miou):
    """Per severity 1-5 ("1".."5"): the lowest mIoU over the 15 corruptions present and which corruption it is."""
    out = {}
    for s in SEVERITIES:
        have = [(miou[c, s], c) for c in CORRUPTIONS if miou.get((c, s)) is not None]
        lowest, corruption = min(have) if have else (None, None)
        out[str(s)] = {"miou": lowest, "corruption": corruption, "n_corruptions": len(have),
                       "of": len(CORRUPTIONS), "complete": len(have) == len(CORRUPTIONS)}
    return out


def per_class_iou(table, m, k):
    """Each class's IoU of model ``m``: clean, and its mean over the benchmark conditions present where it is
    defined (a class absent from a condition's labels and predictions has IoU null there). ``table``:
    {(model, corruption, severity): metrics.jsonl row}, whose "iou" lists are over the folder's k classes."""
    rows = [table[m, c, s] for c, s in BENCHMARK if (m, c, s) in table]
    clean = table.get((m, CLEAN, 0))
    columns = [finite_or_none(r["iou"]) for r in rows]
    return {"clean": finite_or_none(clean["iou"]) if clean else [None] * k,
            "corrupted": [mean_or_none([col[i] for col in columns]) for i in range(k)],
            "n_conditions": len(rows), "of": len(BENCHMARK), "complete": len(rows) == len(BENCHMARK)}
