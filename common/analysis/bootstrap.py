"""Paired bootstrap over the validation images (docs/protocol.md, Metrics): images are drawn with replacement,
the same draws for every model and condition (same seed, same image order), each statistic is recomputed from
the drawn images' summed per-image counts, and an interval is the percentile interval of model minus reference.

Here: the resampling weights, the intervals, and the mIoU bootstrap (clean, aggregate, worst case); the
calibration statistics resample through ``resample_models`` too (calibration_summary.py)."""
import numpy as np

from common.corruptions import CORRUPTIONS
from common.results import CLEAN, finite_or_none

from .conditions import BENCHMARK, SEVERITIES, cond_key

CONFIDENCE = 0.95


def bootstrap_weights(n_images, n_resamples, seed):
    """(B, n) multiplicities of images drawn uniformly with replacement, n per resample."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_images, size=(n_resamples, n_images))
    flat = (np.arange(n_resamples)[:, None] * n_images + idx).ravel()
    return np.bincount(flat, minlength=n_resamples * n_images).reshape(n_resamples, n_images).astype(np.float64)


def interval(observed, diffs):
    """{observed, lower, upper}: the percentile interval of the replicates ``diffs``."""
    if not np.isfinite(np.asarray(diffs, dtype=np.float64)).any():   # undefined in every resample (an AUROC
        return {"observed": finite_or_none(observed), "lower": None, "upper": None}   # without wrong pixels)
    lower, upper = np.nanpercentile(diffs, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return {"observed": finite_or_none(observed), "lower": finite_or_none(lower), "upper": finite_or_none(upper)}


def resample_miou(tp, union, weights):
    """mIoU (B, C) of C conditions under B resamples of the images, from per-image counts.

    tp, union: (n_images, C, K) per-image per-class TP and TP+FP+FN. weights: (B, n_images), how
    often each image is drawn in each resample. IoU_k = sum TP / sum (TP+FP+FN), mIoU over classes
    with sum (TP+FP+FN) > 0, which is docs/protocol.md's row_k + col_k > 0. One matmul per model: the
    weights are the same for every condition.
    """
    n, c, k = tp.shape
    both = np.concatenate([tp.reshape(n, c * k), union.reshape(n, c * k)], axis=1).astype(np.float64)
    summed = weights @ both
    tp_sum = summed[:, :c * k].reshape(-1, c, k)
    union_sum = summed[:, c * k:].reshape(-1, c, k)
    present = union_sum > 0
    iou = np.divide(tp_sum, union_sum, out=np.zeros_like(tp_sum), where=present)
    with np.errstate(invalid="ignore", divide="ignore"):
        return iou.sum(-1) / present.sum(-1)


def resample_counts(data, weights):
    """``resample_models``'s statistic for mIoU: data = one (tp, union) per condition."""
    tp = np.stack([d[0] for d in data], axis=1)
    union = np.stack([d[1] for d in data], axis=1)
    return {"miou": resample_miou(tp, union, weights)}


def resample_models(samples, n_images, n_resamples, seed, resample):
    """Observed values and bootstrap replicates of every model's per-condition statistics.

    samples: {model: {(c, s): per-image data}}; resample(list of data, weights (R, n)) -> {key: (R, C)}.
    Every model and condition is resampled with the same ``bootstrap_weights``, so the differences are paired,
    and the calibration bootstrap sees the mIoU bootstrap's images.
    Returns (observed, replicates): {model: {key: {(c, s): value}}}, the replicates' values of shape (R,).
    """
    weights = bootstrap_weights(n_images, n_resamples, seed)
    ones = np.ones((1, n_images))
    observed, replicates = {}, {}
    for m, by_condition in samples.items():
        conds = list(by_condition)
        if not conds:
            continue
        data = [by_condition[cs] for cs in conds]
        replicates[m] = {key: dict(zip(conds, v.T)) for key, v in resample(data, weights).items()}
        observed[m] = {key: dict(zip(conds, v[0])) for key, v in resample(data, ones).items()}
    return observed, replicates


def compare(observed, replicates, m, reference, key):
    """(clean, aggregate): paired intervals of statistic ``key``, model m minus the reference, clean and of the
    mean over the benchmark conditions both have; each None where there is nothing to compare."""
    obs_m, obs_ref = observed[m][key], observed[reference][key]
    reps_m, reps_ref = replicates[m][key], replicates[reference][key]
    clean = None
    if (CLEAN, 0) in reps_m and (CLEAN, 0) in reps_ref:
        clean = interval(obs_m[CLEAN, 0] - obs_ref[CLEAN, 0], reps_m[CLEAN, 0] - reps_ref[CLEAN, 0])
    common = [cs for cs in BENCHMARK if cs in reps_m and cs in reps_ref]
    if not common:
        return clean, None

    def mean_of(values):
        return np.mean([values[cs] for cs in common], axis=0)
    return clean, dict(interval(mean_of(obs_m) - mean_of(obs_ref), mean_of(reps_m) - mean_of(reps_ref)),
                       n_conditions=len(common), of=len(BENCHMARK), complete=len(common) == len(BENCHMARK))


def compare_metrics(observed, replicates, models, reference, keys):
    """{model: {"clean": {key: interval} or None, "corrupted": {...} or None}} for each model but the reference,
    of each of ``keys`` the model and the reference both have (the first of ``keys`` decides None)."""
    out = {}
    for m in models:
        if m == reference or m not in replicates:
            continue
        have = [k for k in keys if k in replicates[m] and k in replicates[reference]]
        pairs = {k: compare(observed, replicates, m, reference, k) for k in have}
        out[m] = {"clean": {k: p[0] for k, p in pairs.items()} if pairs[keys[0]][0] is not None else None,
                  "corrupted": {k: p[1] for k, p in pairs.items()} if pairs[keys[0]][1] is not None else None}
    return out


def miou_bootstrap(models, reference, counts, miou, ids, n_resamples, seed):
    """(analysis.json's bootstrap entry of the mIoU differences to the reference, clean and aggregate; notes).

    counts: {model: {(c, s): (tp, union)}} on the image order ``ids`` (None: no confusion/ files)."""
    out = {"n_resamples": n_resamples, "seed": seed, "confidence": CONFIDENCE,
           "method": "percentile; images resampled with replacement, the same resamples for every model "
                     "and condition; mIoU recomputed from summed per-image TP/FP/FN",
           "n_images": None if ids is None else int(len(ids)), "reference": reference, "comparisons": {}}
    if n_resamples == 0 or ids is None or not counts[reference]:
        if n_resamples and ids is None:
            return out, ["no confusion/ files: no bootstrap intervals"]
        if n_resamples:
            return out, [f"the reference {reference} has no confusion/ files: no bootstrap intervals"]
        return out, []
    observed, replicates = resample_models(counts, len(ids), n_resamples, seed, resample_counts)
    notes = []
    for m in observed:
        for cs, v in observed[m]["miou"].items():
            row = miou[m].get(cs)
            if row is not None and abs(v - row) > 1e-9:
                notes.append(f"{m} {cond_key(*cs)}: mIoU from confusion/ per-image counts ({v:.6f}) differs from "
                             f"metrics.jsonl ({row:.6f}); the bootstrap uses the counts")
    for m in models:
        if m != reference and m in replicates:
            clean, aggregate = compare(observed, replicates, m, reference, "miou")
            out["comparisons"][m] = {"clean": clean, "aggregate": aggregate}
    return out, notes


def worst_case_intervals(models, reference, counts, ids, n_resamples, seed):
    """Per severity 1-5, a paired interval of model minus reference of the lowest mIoU over the corruptions both
    have, the minimum recomputed in every resample (where the worst corruption may be another one)."""
    out = {"method": "percentile; the mIoU bootstrap's resamples; the minimum over corruptions recomputed in each",
           "comparisons": {}}
    if n_resamples == 0 or ids is None or not counts.get(reference):
        return out
    observed, replicates = resample_models(counts, len(ids), n_resamples, seed, resample_counts)
    for m in models:
        if m == reference or m not in replicates:
            continue
        entry = {}
        for s in SEVERITIES:
            reps_m, reps_ref = replicates[m]["miou"], replicates[reference]["miou"]
            common = [c for c in CORRUPTIONS if (c, s) in reps_m and (c, s) in reps_ref]
            if not common:
                entry[str(s)] = None
                continue
            lowest_m = min(observed[m]["miou"][c, s] for c in common)
            lowest_ref = min(observed[reference]["miou"][c, s] for c in common)
            diffs = np.min([reps_m[c, s] for c in common], axis=0) - np.min([reps_ref[c, s] for c in common], axis=0)
            entry[str(s)] = dict(interval(lowest_m - lowest_ref, diffs), n_corruptions=len(common),
                                 of=len(CORRUPTIONS), complete=len(common) == len(CORRUPTIONS))
        out["comparisons"][m] = entry
    return out
