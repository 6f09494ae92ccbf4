"""Calibration of each model in the analysis (docs/calibration.md; the metrics themselves: common/calibration.py).

Two parts, both clean, mean over the corrupted conditions and per severity (mean over the 15 corruptions):
* ECE / NLL / Brier of the 21-way softmax (metrics.jsonl's ece, nll, brier), with the reliability bins summed over
  the 15 corruptions per severity for calibration.png;
* every reading (softmax, sigmoid, each also after temperature scaling; metrics.jsonl's "calibration"): ECE,
  adaptive ECE, NLL, Brier, AURC, AUROC and the sigmoid's class-wise ECE, with the pooled bins for readings.png.
Paired bootstrap intervals of model minus reference use the mIoU bootstrap's resamples (bootstrap.py); each
metric is recomputed from the drawn images' summed per-image bins and sums in confusion/ (ECE is not a mean over
images, so the bins are resampled, not per-image ECEs)."""
import os

import numpy as np

from common.calibration import VARIANTS, metrics_from_bins, prefix_of, rank_metrics_from_fine
from common.cli import UsageError
from common.corruptions import CORRUPTIONS
from common.results import finite_or_none

from .bootstrap import compare_metrics, resample_models
from .conditions import BENCHMARK, CLEAN_CONDITION, SEVERITIES, Findings, aggregate_entry, cond_key, mean_over
from .inputs import align, read_calibration

CALIBRATION = ("ece", "nll", "brier")      # metrics.jsonl fields (common/calibration.py)
READING_METRICS = ("ece", "ece_adaptive", "nll", "brier", "aurc", "auroc", "ece_classwise")
BOOTSTRAPPED = ("ece", "ece_adaptive", "nll", "brier", "aurc", "auroc")   # the additive ones (per image)
# Each structure's own reading: the one its loss trained it to produce (SCrIBE: per-class sigmoid BCE).
OWN_READING = {"baseline": "softmax", "ibe": "softmax", "scribe": "sigmoid"}
POOLED = ("count", "conf_sum", "acc_sum")   # the reliability bins of calibration.png


def number_or_none(value, metrics_path, what):
    """A metrics.jsonl value that must be a number or null, as a finite float or None."""
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise UsageError(f"{metrics_path}: {what} must be a number or null, got {value!r}")
    return finite_or_none(value)


def calibration_values(sweep):
    """{model: {(c, s): {ece, nll, brier}}} from metrics.jsonl, each a number or None."""
    values, path = {m: {} for m in sweep.models}, os.path.join(sweep.folder, "metrics.jsonl")
    for (m, c, s), r in sweep.table.items():
        values[m][c, s] = {key: number_or_none(r[key], path, f"{key} of {m} {cond_key(c, s)}") for key in CALIBRATION}
    return values


def reading_values(sweep):
    """{variant: {model: {(c, s): {metric: value or None}}}} from metrics.jsonl's "calibration" field."""
    out, path = {v: {m: {} for m in sweep.models} for v in VARIANTS}, os.path.join(sweep.folder, "metrics.jsonl")
    for (m, c, s), r in sweep.table.items():
        readings = r["calibration"]
        if not isinstance(readings, dict) or not all(isinstance(x, dict) for x in readings.values()):
            raise UsageError(f"{path}: calibration of {m} {cond_key(c, s)} must be an object of readings; rerun "
                             f"evaluate_corruptions.py for that condition")
        for v, entry in readings.items():
            if v in out:
                out[v][m][c, s] = {k: number_or_none(entry.get(k), path, f"calibration.{v}.{k} of {m} {cond_key(c, s)}")
                                   for k in READING_METRICS + ("temperature",)}
    return out


def severity_entries(values, metrics):
    """per_severity "1".."5" of one model: each metric's mean over the 15 corruptions, and the ECE's coverage."""
    out = {}
    for s in SEVERITIES:
        aggs = {k: mean_over([values.get((c, s), {}).get(k) for c in CORRUPTIONS], len(CORRUPTIONS)) for k in metrics}
        out[str(s)] = {**{k: a["value"] for k, a in aggs.items()}, "n_corruptions": aggs["ece"]["n"],
                       "of": len(CORRUPTIONS), "complete": aggs["ece"]["complete"]}
    return out


def corrupted_entries(values, metrics):
    """Each metric's mean over the benchmark conditions present, as analysis.json's ``corrupted``."""
    return {k: aggregate_entry(mean_over([values.get(cs, {}).get(k) for cs in BENCHMARK], len(BENCHMARK)))
            for k in metrics}


def calibration_summary(values):
    """(analysis.json's calibration entry, ECE by severity 0..5 (6,)) of one model's values."""
    clean = values.get(CLEAN_CONDITION, {})
    per_severity = {"0": {**{k: clean.get(k) for k in CALIBRATION}, "n_corruptions": None, "of": None,
                          "complete": clean.get("ece") is not None}, **severity_entries(values, CALIBRATION)}
    ece_by_severity = np.array([np.nan if per_severity[str(s)]["ece"] is None else per_severity[str(s)]["ece"]
                                for s in range(6)])
    summary = {"clean": {k: clean.get(k) for k in CALIBRATION}, "corrupted": corrupted_entries(values, CALIBRATION),
               "per_severity": per_severity}
    return summary, ece_by_severity


def reading_summary(values):
    """One model's values in one reading: its temperature, clean, mean over the benchmark conditions, per
    severity."""
    clean = values.get(CLEAN_CONDITION, {})
    temps = sorted({x["temperature"] for x in values.values() if x.get("temperature") is not None})
    return {"temperature": temps[0] if len(temps) == 1 else (temps or None),
            "clean": {k: clean.get(k) for k in READING_METRICS},
            "corrupted": corrupted_entries(values, READING_METRICS),
            "per_severity": {"0": {k: clean.get(k) for k in READING_METRICS},
                             **severity_entries(values, READING_METRICS)}}


def per_image_tables(sweep, m, conditions, variant, image_order):
    """One model's per-image tables in one reading {(c, s): tables} for ``conditions``, on the bootstrap's image
    order ``image_order`` ((ids, the file they came from) or (None, None)), and the tables summed per severity
    {s: {count, conf_sum, acc_sum[, fine_count, fine_correct]}} (0 = clean; 1-5 summed over the 15 corruptions)."""
    reading, scaled = VARIANTS[variant]
    tables, pooled = {}, {}
    for c, s in conditions:
        path = os.path.join(sweep.folder, "confusion", m, f"{c}_{s}.npz")
        if not os.path.exists(path):
            continue                       # listed under the missing confusion/ files
        t, ids = read_calibration(path, prefix_of(reading, scaled), fine=not scaled)
        if image_order[0] is not None:
            order = align(ids, image_order[0], path, image_order[1])
            t = {k: a[order] for k, a in t.items()}
        tables[c, s] = t
        sums = {"count": t["image_count"].sum(0), "conf_sum": t["image_conf_sum"].sum(0),
                "acc_sum": t["image_acc_sum"].sum(0)}
        if "image_fine_count" in t:
            sums.update(fine_count=t["image_fine_count"].sum(0), fine_correct=t["image_fine_correct"].sum(0))
        pooled[s] = sums if s not in pooled else {k: pooled[s][k] + a for k, a in sums.items()}
    return tables, pooled


def resample_calibration(tables, weights):
    """(ece, nll, brier), each (R, C), of C conditions under R resamples of the images.

    tables: per condition the per-image tables of ``read_calibration``, on one image order; weights (R, n):
    how often each image is drawn. The bins, NLL and Brier sums of a resample are the weighted sums of
    the per-image ones (the bins add exactly), and ECE = sum_b |acc_b - conf_b| / N is recomputed from them.
    """
    out = []
    for t in tables:
        count = weights @ t["image_count"].astype(np.float64)
        conf = weights @ t["image_conf_sum"]
        acc = weights @ t["image_acc_sum"].astype(np.float64)
        out.append(metrics_from_bins(count, conf, acc, weights @ t["image_nll_sum"], weights @ t["image_brier_sum"]))
    return tuple(np.stack([o[i] for o in out], axis=1) for i in range(3))


def resample_ece_nll_brier(tables, weights):
    """``resample_models``'s statistics for ECE, NLL and Brier."""
    return dict(zip(CALIBRATION, resample_calibration(tables, weights)))


def resample_reading(tables, weights):
    """``resample_models``'s statistics for one reading: ECE, NLL, Brier from the 15 bins and sums, and where
    the reading has fine bins (not after temperature scaling), adaptive ECE, AURC and AUROC from them."""
    out = resample_ece_nll_brier(tables, weights)
    if all("image_fine_count" in t for t in tables):
        rank = [rank_metrics_from_fine(weights @ t["image_fine_count"].astype(np.float64),
                                       weights @ t["image_fine_correct"].astype(np.float64),
                                       weights @ t["image_fine_conf_sum"]) for t in tables]
        for k in ("ece_adaptive", "aurc", "auroc"):
            out[k] = np.stack([r[k] for r in rank], axis=1)
    return out


def calibration_analysis(sweep, image_order, n_resamples, seed):
    """ECE / NLL / Brier per model and their paired bootstrap. Returns ({model: calibration entry}, the
    bootstrap's calibration entry, Findings with the npz's <model>/calibration/ arrays)."""
    values, per_model, tables, found = calibration_values(sweep), {}, {}, Findings()
    conditions = [CLEAN_CONDITION] + BENCHMARK
    for m in sweep.models:
        per_model[m], ece_by_severity = calibration_summary(values[m])
        present = [(c, s) for c, s in conditions if (m, c, s) in sweep.table]
        tables[m], pooled = per_image_tables(sweep, m, present, "softmax", image_order)
        for s in sorted(pooled):
            found.arrays.update({f"{m}/calibration/{s}/{k}": pooled[s][k] for k in POOLED})
        found.arrays[f"{m}/calibration/ece_by_severity"] = ece_by_severity
    boot = {"method": "percentile; the mIoU bootstrap's resamples of the images; ECE, NLL and Brier recomputed "
                      "from the resampled images' summed per-image bins and sums", "comparisons": {}}
    ids = image_order[0]
    if n_resamples and ids is not None and tables[sweep.reference]:
        observed, replicates = resample_models(tables, len(ids), n_resamples, seed, resample_ece_nll_brier)
        boot["comparisons"] = compare_metrics(observed, replicates, sweep.models, sweep.reference, CALIBRATION)
    return per_model, boot, found


def readings_analysis(sweep, image_order, n_resamples, seed):
    """Every reading of every model: clean, corrupted and per-severity values of READING_METRICS; pooled bins per
    severity; paired bootstrap intervals of the BOOTSTRAPPED metrics. Returns ({model: {"own_reading",
    "readings"}}, the bootstrap's readings entry, Findings with the npz's <model>/readings/ arrays)."""
    values, found = reading_values(sweep), Findings()
    per_model = {m: {"own_reading": OWN_READING.get(sweep.kinds.get(m), "softmax"), "readings": {}}
                 for m in sweep.models}
    boot = {"method": "percentile; the mIoU bootstrap's resamples of the images; each metric recomputed from the "
                      "resampled images' summed bins (15 equal-width and fine log-odds bins) and sums",
            "temperature_fit": (sweep.run or {}).get("temperature"), "readings": {}}
    for v in VARIANTS:
        tables = {}
        for m in sweep.models:
            if not values[v][m]:
                continue
            per_model[m]["readings"][v] = dict(reading=VARIANTS[v][0], temperature_scaled=VARIANTS[v][1],
                                               **reading_summary(values[v][m]))
            present = [cs for cs in [CLEAN_CONDITION] + BENCHMARK if cs in values[v][m]]
            tables[m], pooled = per_image_tables(sweep, m, present, v, image_order)
            for s, sums in pooled.items():
                found.arrays.update({f"{m}/readings/{v}/{s}/{k}": a for k, a in sums.items()})
        comparisons, ids = {}, image_order[0]
        if n_resamples and ids is not None and tables.get(sweep.reference):
            observed, replicates = resample_models(tables, len(ids), n_resamples, seed, resample_reading)
            comparisons = compare_metrics(observed, replicates, sweep.models, sweep.reference, BOOTSTRAPPED)
        boot["readings"][v] = {"comparisons": comparisons}
    return per_model, boot, found
