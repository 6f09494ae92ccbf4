"""Robustness summary and logit-structure analysis of an evaluate_corruptions.py results folder.

    python analyze_logits.py --results results [--out results] [--reference baseline] \
        [--bootstrap 1000] [--seed 0] [--pca-pass results/shortside]

Reads what evaluate_corruptions.py wrote to --results (metrics.jsonl, logits/, confusion/, run.json)
and computes, per model, everything PROTOCOL.md ("Metrics", "Logit structure") defines:

* clean mIoU; mPC = the paper's headline = mean mIoU over the 15 corruptions x severities 1..5;
  rPC = mPC / clean mIoU; mIoU per corruption (mean over severities 1..5) and per severity
  (mean over the 15 corruptions; severity 0 = clean);
* the headline also as ``mean_sev0_5``: the mean over the 15 corruptions of each corruption's mean over
  severities 0..5, severity 0 being the clean mIoU. That is the mean of the notebook's results table,
  whose rows (one per corruption) hold levels 0-5, level 0 the uncorrupted images; PROTOCOL.md: which of
  the two means the paper's 42.1 / 40.3 / 37.5 are is not stated. Complete, it is (clean + 5 mPC) / 6;
  with gaps, each corruption averages the clean mIoU and the severities it has (null without a clean row);
* CD_c, rCD_c and their means mCD, mrCD relative to the --reference model;
* END and Distance (read from metrics.jsonl): clean, mean over the corruption conditions, per condition.
  Distance twice (LogitTracker): ``distance``, the notebook's (mean over all 20 foreground classes of
  mu_n[n] - mu_n[0], never-predicted classes counting 0: ``distance_notebook``), and
  ``distance_predicted``, the same mean over the foreground classes predicted at least once
  (``distance_margin``; null for rows written before it existed). Where logits/ are present both are
  recomputed from them, and a row that disagrees gets a note (older rows held the second under the
  first's name);
* explained variance: PCA of the 21x21 class-mean logit matrix (rows = predicted classes as samples,
  columns = the 21 logits, centred), cumulative explained-variance ratio of components 1..21, via
  numpy's SVD. Rows of classes a model never predicted under a condition are NaN in
  ``LogitTracker.mean()`` and are dropped; ``classes_used`` says how many rows were left. Components
  beyond the matrix's rank explain nothing, so their cumulative ratio is 1. With fewer than 2 rows
  (or rows that are all equal) the ratio is undefined: NaN in the npz, null in the JSON.
  Beside it, ``explained_variance_notebook``: the notebook's sklearn PCA(21) on all 21 rows with NaN
  means set to 0, so each never-predicted class is a row of zeros (a point at the origin that the
  PCA also has to explain). The first is the default because a class that was never predicted has no
  mean, not a mean of 0; the two agree when every class is predicted;
* the clean explained variance (``explained_variance_clean`` and the npz's ``<model>/clean/...``
  explained-variance arrays) comes from a separate clean pass when there is one (``--pca-pass``; by
  default ``<results>/shortside``, the notebook's FixScaleResize pass that reproduce.sh runs with
  ``evaluate_corruptions.py --protocol shortside --out <results>/shortside``), else from the clean
  condition of the main sweep; ``explained_variance_source`` says which. That pass's run.json must give
  every model it shares with the main run.json the same checkpoint_sha256 (else exit status 2);
* paired bootstrap 95% intervals (percentile method) of each model's mIoU minus the reference's, clean
  and aggregate (mean over the corruption conditions), resampling validation images with replacement
  (the same resampled images for every model and every condition) and recomputing mIoU from summed
  per-image TP/FP/FN;
* calibration (common/calibration.py; metrics.jsonl's ece, nll, brier): clean, the mean over the
  corruption conditions of each condition's value, and per severity (mean over the 15 corruptions), with
  paired bootstrap 95% intervals of model minus reference on the same resamples as mIoU's, each metric
  recomputed from the resampled images' summed per-image bins, NLL and Brier sums (calib_image_* in
  confusion/; ECE is not a mean over images, so the bins are resampled, not per-image ECEs);
* every calibration reading (docs/calibration.md: softmax, sigmoid, each also after temperature scaling) from
  metrics.jsonl's "calibration": ECE, adaptive ECE, NLL, Brier, AURC, AUROC (and class-wise ECE for the sigmoid)
  clean, corrupted and per severity; each model's own reading (SCrIBE: sigmoid; baseline, IBE: softmax); paired
  bootstrap intervals of model minus reference of all but the class-wise ECE, recomputed from the resampled
  images' bins (the fine log-odds bins for adaptive ECE, AURC and AUROC);
* the worst case: per severity the lowest mIoU over the 15 corruptions, which one, and a paired bootstrap
  interval of model minus reference of that minimum (recomputed per resample).

Partial results (fewer corruptions, severities or models) are analysed as far as they go: every gap
is listed in ``missing`` and printed as one ``missing: ...`` line, and every aggregate says how many
conditions it covers and whether that is all of them (``complete``). Corruptions outside the paper's
15 (the held-out extras) appear per corruption and per condition but never in an aggregate.

Writes to --out (default: the --results folder), all three atomically (temporary name, then rename,
only after everything has been computed, so a failed run leaves earlier outputs untouched):

    analysis.json         numbers (schema below); mIoU values as fractions in [0, 1], NaN as null
    tables.md             markdown tables; mIoU in percent with 1 decimal (like the paper's 42.1)
    analysis_arrays.npz   arrays for figures (keys below)

analysis.json:
    schema "analyze_logits/2"; args; git_commit; results (absolute path); source {protocol, size,
    images, corruption_code, models [{name, kind, checkpoint_sha256}]} from run.json (null when absent);
    pca_pass (absolute path of the --pca-pass folder, or null); explained_variance_source
    ("<protocol> pass at <path>" or "clean condition of the main sweep");
    reference; models [names]; benchmark_corruptions [the 15]; severities [1..5]; units;
    missing [{what: "metrics"|"logits"|"confusion"|"pca_logits"|"calibration", models [names],
             conditions ["<corruption>/<s>"], message}]; notes [strings];
    per_model {<model>: {
        kind, clean_miou,
        mpc  {value, n_conditions, of: 75, complete},   rpc {value, complete},
        mean_sev0_5 {value, n_conditions (corrupted ones used), of: 75, clean (clean mIoU present?),
                     complete},
        per_corruption {<corruption>: {miou (mean over the severities present), severities [s],
                                       complete, benchmark (one of the 15?)}},
        per_severity {"0".."5": {miou, n_corruptions, of, complete}},         ("0" = clean)
        cd {<corruption>: {cd, rcd, severities [s used: present for model and reference], complete}},
        mcd {value, n_corruptions, of: 15, complete},  mrcd {same},
        end {clean, corrupted {value, n_conditions, of: 75, complete}},  distance {same},
        distance_predicted {same},
        explained_variance_clean {cumulative [21] or null, classes_used, cumulative_notebook [21] or null,
                                  source} or null,
        clean_structure_source: the pass the npz's <model>/clean/{count, mean, distance, correlation,
                                correlation_notebook} come from, as explained_variance_source (null: none),
        per_condition {"<corruption>/<s>" ("clean/0" for clean): {miou, pixel_acc, end, distance,
                       distance_predicted, explained_variance [21] or null, classes_used or null,
                       explained_variance_notebook [21] or null}},
        calibration {clean {ece, nll, brier}, corrupted {ece|nll|brier: {value, n_conditions, of: 75,
                     complete}}, per_severity {"0".."5": {ece, nll, brier, n_corruptions, of, complete}}},
        own_reading ("softmax" | "sigmoid"),
        readings {softmax|sigmoid|softmax_ts|sigmoid_ts: {reading, temperature_scaled, temperature,
                  clean {ece, ece_adaptive, nll, brier, aurc, auroc, ece_classwise},
                  corrupted {<metric>: {value, n_conditions, of: 75, complete}},
                  per_severity {"0".."5": {<metric>..., n_corruptions, of, complete}}}},
        worst_case {"1".."5": {miou, corruption, n_corruptions, of, complete}}}};
    (per_condition is always the main sweep's, its clean/0 included);
    bootstrap {n_resamples, seed, confidence: 0.95, method, n_images, reference,
               comparisons {<model>: {clean {observed, lower, upper} or null,
                                      aggregate {observed, lower, upper, n_conditions, of: 75,
                                                 complete} or null}},
               calibration {method, comparisons {<model>: {clean {ece|nll|brier: {observed, lower, upper}}
                            or null, corrupted {ece|nll|brier: {observed, lower, upper, n_conditions, of,
                            complete}} or null}}},
               readings {method, temperature_fit (run.json's temperature), readings {<reading>: {comparisons
                         {<model>: {clean {<metric>: {observed, lower, upper}} or null, corrupted {...} or null}}}}},
               worst_case {method, comparisons {<model>: {"1".."5": {observed, lower, upper, n_corruptions, of,
                           complete} or null}}}}
    (differences are model minus reference, as fractions of mIoU; the reference has no entry).

analysis_arrays.npz (float64; rows/columns in VOC class order; NaN where undefined):
    models                                          (M,) str: model names, in analysis.json order
    classes                                         (21,) str: VOC class names
    (the <model>/clean/ arrays come from the --pca-pass when it has the model, as the notebook's cells 44-45;
    analysis.json's clean_structure_source names the pass)
    <model>/clean/count                             (21,)        pixels predicted as each class
    <model>/clean/mean                              (21, 21)     class-mean logits, row n = mu_n
    <model>/clean/distance                          (21, 21)     D_ij = ||mu_i - mu_j||
    <model>/clean/correlation                       (21, 21, 21) [n] = correlation of the logits
                                                                 over pixels predicted n
    <model>/clean/correlation_notebook              (21, 21, 21) [n] = the notebook's quantity,
                                                                 (Q_n - mu_n mu_n^T) / N_n scaled by its diagonal
    <model>/clean/explained_variance                (21,)        cumulative ratio, components 1..21,
                                                                 from explained_variance_source
    <model>/clean/explained_variance_notebook       (21,)        the same with NaN means as zero rows
    <model>/clean/explained_variance_count          (21,)        pixels predicted as each class in that pass
    <model>/<corruption>/<severity>/mean            (21, 21)     same, under that condition
    <model>/<corruption>/<severity>/explained_variance  (21,)
    <model>/<corruption>/<severity>/explained_variance_notebook  (21,)
    explained_variance_source                       () str       as in analysis.json
    <model>/calibration/<s>/count, conf_sum, acc_sum  (15,)      reliability bins of severity s = 0 (clean)
                                                                 .. 5, summed over the 15 corruptions present
    <model>/calibration/ece_by_severity             (6,)         ECE, clean then the mean over corruptions per
                                                                 severity 1..5 (NaN where absent)
    <model>/readings/<reading>/<s>/count, conf_sum, acc_sum  (15,)  the same bins in each reading
    <model>/readings/<reading>/<s>/fine_count, fine_correct  (64,)  fine log-odds bins (softmax, sigmoid), for the
                                                                 risk-coverage curves
    (a key exists only where logits/<model>/<condition>.npz exists; the clean explained-variance keys
    only where the source pass has that model's clean logits)
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time
import zipfile

import numpy as np

from common import results as rf
from common.calibration import BINS, FINE_KEYS, ROW_KEYS, VARIANTS, metrics_from_bins, prefix_of, rank_metrics_from_fine
from common.cli import UsageError, run_cli, write_problem
from common.constants import CLASSES, NUM_CLASSES
from common.corruptions import ALL_CORRUPTIONS, CORRUPTIONS
from common.logits import LogitTracker
from common.folders import OutputLock, check_output_folder, file_sha256, git_commit, prepare_output_folder
from common.results import CLEAN, finite_or_none
SEVERITIES = (1, 2, 3, 4, 5)
BENCHMARK = [(c, s) for c in CORRUPTIONS for s in SEVERITIES]   # the paper's 75 conditions
CALIBRATION = ("ece", "nll", "brier")      # metrics.jsonl fields (common/calibration.py)
CONFIDENCE = 0.95
# Below this a CD/rCD denominator counts as zero: mIoUs are ratios of pixel counts, so sums of
# (1 - mIoU) over <= 5 severities that should cancel exactly can leave ~1e-16 of rounding.
ZERO = 1e-12


# ------------------------------------------------------------------------------------------- helpers

def cond_key(c, s):
    return f"{c}/{s}"


def finite_list(a):
    """An array as a JSON list, or None when any entry is undefined."""
    return [float(v) for v in a] if np.isfinite(a).all() else None


def mean_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def mean_over(values, of):
    """{value, n, of, complete} for a mean over whichever of `of` items are not None."""
    got = [v for v in values if v is not None]
    return {"value": mean_or_none(got), "n": len(got), "of": of, "complete": len(got) == of}


def counted(agg, n="n_conditions", value="value"):
    """A ``mean_over`` result under the names analysis.json gives it."""
    return {value: agg["value"], n: agg["n"], "of": agg["of"], "complete": agg["complete"]}


def span(sevs):
    """(1, 2, 3, 5) -> '1-3,5'."""
    parts, start = [], None
    for i, s in enumerate(sevs):
        if start is None:
            start = s
        if i + 1 == len(sevs) or sevs[i + 1] != s + 1:
            parts.append(str(start) if start == s else f"{start}-{s}")
            start = None
    return ",".join(parts)


def shown_list(names):
    """The first six names of a list of conditions, for a one-line message."""
    return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")


def checkpoint_hashes(run):
    """{model name: checkpoint sha256} of a run.json."""
    return {m.get("name"): m.get("sha256") for m in run.get("models", []) or [] if isinstance(m, dict)}


def pct(x):
    return "–" if x is None else f"{100 * x:.1f}"


def f3(x):
    return "–" if x is None else f"{x:.3f}"


def star(text, complete):
    """Incomplete aggregates carry a * (explained under the table)."""
    return text if complete or text == "–" else text + "*"


def ci(c, scale=100, digits=2):
    """A bootstrap interval as "+x [+lower, +upper]", by default in percentage points."""
    if c is None or c["observed"] is None:
        return "–"
    text = (f"{scale * c['observed']:+.{digits}f} [{scale * c['lower']:+.{digits}f}, "
            f"{scale * c['upper']:+.{digits}f}]")
    return star(text, c.get("complete", True))


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)



# --------------------------------------------------------------------------------- reading the inputs

def sweep_fix(path):
    """How to rewrite a damaged logits/ or confusion/ file: rerun the sweep of the folder it lies in."""
    return rf.sweep_rerun_hint(os.path.dirname(os.path.dirname(os.path.dirname(path))))


def load_npz(path, keys):
    """The named arrays of one confusion/ npz file, checked (keys, dtypes, shapes); a bad file is a UsageError
    naming it and the command that rewrites it."""
    return rf.read_confusion(path, sweep_fix(path), keys)


def read_tracker(path):
    """The LogitTracker state of one logits/<model>/<condition>.npz file, checked (21 classes, float64, finite)."""
    return LogitTracker.from_state_dict(rf.read_logits(path, sweep_fix(path), keys=("count", "sum", "sq")))


def read_calibration(path, prefix="calib_"):
    """(per-image calibration tables, image_ids) of one confusion/<model>/<condition>.npz in the reading whose
    arrays start with ``prefix`` (common/calibration.py ``prefix_of``; the fine log-odds bins where the file
    has them), or None when the file predates that reading; damaged or misshapen arrays are a UsageError."""
    keys = [prefix + k for k in ROW_KEYS]
    try:
        with np.load(path) as z:
            if any(k not in z.files for k in keys):
                return None
            fine = [prefix + k for k in FINE_KEYS if prefix + k in z.files]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"{path}: unreadable or incomplete ({type(e).__name__}: {str(e)[:120]})") from None
    fine = fine if len(fine) == len(FINE_KEYS) else []
    z = load_npz(path, keys + fine + ["image_ids"])
    tables = {k[len(prefix):]: np.asarray(z[k]) for k in keys + fine}
    n_images = len(z["image_ids"])
    want = {"image_count": (n_images, BINS), "image_conf_sum": (n_images, BINS), "image_acc_sum": (n_images, BINS),
            "image_nll_sum": (n_images,), "image_brier_sum": (n_images,)}
    want.update({k: (n_images, None) for k in FINE_KEYS if k in tables})
    for k, shape in want.items():
        if tables[k].ndim != len(shape) or any(w is not None and w != d for w, d in zip(shape, tables[k].shape)):
            raise UsageError(f"{path}: {prefix}{k} has shape {tables[k].shape}, expected {shape} (one row per image "
                             f"of image_ids); rerun evaluate_corruptions.py for that condition")
    return tables, np.asarray(z["image_ids"]).astype(str)


def align(ids, ids_ref, path, ref_path):
    """Indices that put this file's images in the reference order; images must be the same set,
    or the bootstrap could not pair them."""
    if ids.shape == ids_ref.shape and np.array_equal(ids, ids_ref):
        return np.arange(len(ids))
    pos = {i: k for k, i in enumerate(ids)}
    if len(pos) != len(ids) or set(pos) != set(ids_ref.tolist()):
        raise UsageError(f"{path}: its image_ids are not the images of {ref_path}; a bootstrap pairs images, "
                         f"so every model and condition must cover the same images (merge shards first)")
    return np.array([pos[i] for i in ids_ref])


def resolve_pca_pass(arg, results):
    """The folder of the clean pass for the explained variance, or None for the main sweep's clean condition."""
    if arg == "none":
        return None
    if arg is None:
        auto = os.path.join(results, "shortside")
        return auto if os.path.isdir(os.path.join(auto, "logits")) else None
    if not os.path.isdir(os.path.join(arg, "logits")):
        raise UsageError(f"--pca-pass {arg}: no logits/ folder there; give the --out folder of "
                         f"evaluate_corruptions.py --protocol shortside, or none")
    return arg


def pca_pass_trackers(folder, results, run, models, missing, notes):
    """{model: LogitTracker} of the pass's clean condition, after checking its run.json against the main one.

    The explained variance is only meaningful for the checkpoints the sweep evaluated, so a model name that
    both run.json files list with different checkpoint_sha256 is refused. A model the pass lacks (not in
    its run.json or no clean_0.npz) gets a ``pca_logits`` entry in ``missing`` and no explained variance,
    rather than one from the main sweep's other protocol under the same heading.
    """
    run_path = os.path.join(folder, "run.json")
    prun = rf.read_run(run_path)
    if prun is None:
        raise UsageError(f"{run_path}: not found, so the checkpoints of --pca-pass {folder} cannot be checked "
                         f"(give --pca-pass none to use the main sweep's clean condition)")
    if run is None:
        raise UsageError(f"{os.path.join(results, 'run.json')}: not found, so the checkpoints of --pca-pass "
                         f"{folder} cannot be checked against it (give --pca-pass none)")
    main_sha, pass_sha = checkpoint_hashes(run), checkpoint_hashes(prun)
    differ = [n for n in pass_sha if n in main_sha and (pass_sha[n] is None or pass_sha[n] != main_sha[n])]
    if differ:
        raise UsageError(f"--pca-pass {folder}: its run.json gives {', '.join(map(str, differ))} another "
                         f"checkpoint_sha256 than {os.path.join(results, 'run.json')}; rerun that pass with the "
                         f"evaluated checkpoints")
    if prun.get("protocol") != "shortside":
        notes.append(f"--pca-pass {folder} ran protocol {prun.get('protocol')}, not shortside (the notebook's "
                     f"FixScaleResize pass for the PCA figure)")
    trackers, lacking = {}, []
    for m in models:
        path = os.path.join(folder, "logits", m, f"{CLEAN}_0.npz")
        if m in pass_sha and os.path.exists(path):
            trackers[m] = read_tracker(path)
        else:
            lacking.append(m)
    if lacking:
        missing.append({"what": "pca_logits", "models": lacking, "conditions": [cond_key(CLEAN, 0)],
                        "message": f"missing: {', '.join(lacking)} not in {run_path} or without "
                                   f"logits/<model>/{CLEAN}_0.npz there; no clean explained variance for "
                                   f"{'it' if len(lacking) == 1 else 'them'}"})
    return trackers, f"{prun.get('protocol')} pass at {os.path.abspath(folder)}"


# ---------------------------------------------------------------------------------------- statistics

def explained_variance(mean, notebook=False):
    """Cumulative explained-variance ratio (21,) of the PCA of a class-mean matrix, and the rows used.

    Rows are samples (predicted classes), columns variables (logits), centred per column. NaN rows
    (classes never predicted) are dropped, or with ``notebook`` set to 0 and kept, as the companion
    notebook's sklearn PCA(21) on the NaN-to-0 matrix did. The squared singular values of the centred
    matrix are the component variances (times a constant that cancels in the ratio).
    """
    mean = np.asarray(mean, dtype=np.float64)
    rows = np.nan_to_num(mean, nan=0.0) if notebook else mean[~np.isnan(mean).any(axis=1)]
    out = np.full(mean.shape[1], np.nan)
    if rows.shape[0] < 2:
        return out, int(rows.shape[0])
    var = np.linalg.svd(rows - rows.mean(axis=0), compute_uv=False) ** 2
    total = var.sum()
    if not total > 0:
        return out, int(rows.shape[0])
    cum = np.cumsum(var) / total
    out[:cum.size] = cum
    out[cum.size:] = 1.0    # components beyond min(rows, 21) have zero variance
    return out, int(rows.shape[0])


def both_explained_variances(mu):
    """(cumulative ratio, rows used, the notebook's cumulative ratio) of one class-mean matrix."""
    ev, used = explained_variance(mu)
    ev_nb, _ = explained_variance(mu, notebook=True)
    return ev, used, ev_nb


def resample_miou(tp, union, weights):
    """mIoU (B, C) of C conditions under B resamples of the images, from per-image counts.

    tp, union: (n_images, C, K) per-image per-class TP and TP+FP+FN. weights: (B, n_images), how
    often each image is drawn in each resample. IoU_k = sum TP / sum (TP+FP+FN), mIoU over classes
    with sum (TP+FP+FN) > 0, which is PROTOCOL.md's row_k + col_k > 0. One matmul per model: the
    weights are the same for every condition.
    """
    n, c, k = tp.shape
    both = np.concatenate([tp.reshape(n, c * k), union.reshape(n, c * k)], axis=1).astype(np.float64)
    summed = weights @ both
    t = summed[:, :c * k].reshape(-1, c, k)
    u = summed[:, c * k:].reshape(-1, c, k)
    present = u > 0
    iou = np.divide(t, u, out=np.zeros_like(t), where=present)
    with np.errstate(invalid="ignore", divide="ignore"):
        return iou.sum(-1) / present.sum(-1)


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


def bootstrap_weights(n_images, n_resamples, seed):
    """(B, n) multiplicities of images drawn uniformly with replacement, n per resample."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_images, size=(n_resamples, n_images))
    flat = (np.arange(n_resamples)[:, None] * n_images + idx).ravel()
    return np.bincount(flat, minlength=n_resamples * n_images).reshape(n_resamples, n_images).astype(np.float64)


def interval(observed, diffs):
    if not np.isfinite(np.asarray(diffs, dtype=np.float64)).any():   # undefined in every resample (an AUROC
        return {"observed": finite_or_none(observed), "lower": None, "upper": None}   # without wrong pixels)
    lo, hi = np.nanpercentile(diffs, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return {"observed": finite_or_none(observed), "lower": finite_or_none(lo), "upper": finite_or_none(hi)}


def degradation(miou, ref, c):
    """CD_c and rCD_c of one model against the reference (PROTOCOL.md), over the severities both have.

    miou / ref: {(corruption, severity): mIoU} including (clean, 0). Returns (entry, notes).
    """
    sev = [s for s in SEVERITIES if miou.get((c, s)) is not None and ref.get((c, s)) is not None]
    entry = {"cd": None, "rcd": None, "severities": sev, "complete": len(sev) == len(SEVERITIES)}
    notes = []
    if not sev:
        return entry, notes
    den = sum(1 - ref[c, s] for s in sev)
    if abs(den) > ZERO:
        entry["cd"] = sum(1 - miou[c, s] for s in sev) / den
    else:
        notes.append(f"CD of {c}/{span(sev)} undefined: the reference scores mIoU 1 at every severity (0/0)")
    cm, cr = miou.get((CLEAN, 0)), ref.get((CLEAN, 0))
    if cm is None or cr is None:
        return entry, notes
    den = sum(cr - ref[c, s] for s in sev)
    if abs(den) > ZERO:
        entry["rcd"] = sum(cm - miou[c, s] for s in sev) / den
    else:
        notes.append(f"rCD of {c}/{span(sev)} undefined: the reference loses no mIoU under it (denominator 0)")
    return entry, notes


def mean_sev0_5(mi):
    """The headline as the mean of the notebook's results table: mean over the 15 corruptions of the mean
    over severities 0..5, severity 0 = the clean mIoU. Corruptions without any severity are left out;
    undefined (None) without a clean mIoU, since every row of that table starts with it."""
    clean = mi.get((CLEAN, 0))
    rows, used = [], 0
    for c in CORRUPTIONS:
        vals = [mi[c, s] for s in SEVERITIES if mi.get((c, s)) is not None]
        if vals and clean is not None:
            rows.append(float(np.mean([clean] + vals)))
            used += len(vals)
    return {"value": mean_or_none(rows), "n_conditions": used, "of": len(BENCHMARK), "clean": clean is not None,
            "complete": used == len(BENCHMARK) and clean is not None}


def resample_models(samples, n_images, args, resample):
    """Observed values and bootstrap replicates of every model's per-condition statistics.

    samples: {model: {(c, s): per-image data}}; resample(list of data, weights (R, n)) -> {key: (R, C)}.
    Every model and condition is resampled with the same ``bootstrap_weights`` (same seed, same image order),
    so the differences are paired, and the calibration bootstrap sees the mIoU bootstrap's images.
    Returns (observed, boots): {model: {key: {(c, s): value}}}, the boots' values of shape (R,).
    """
    weights = bootstrap_weights(n_images, args.bootstrap, args.seed)
    ones = np.ones((1, n_images))
    observed, boots = {}, {}
    for m, by_condition in samples.items():
        conds = list(by_condition)
        if not conds:
            continue
        data = [by_condition[cs] for cs in conds]
        boots[m] = {key: dict(zip(conds, v.T)) for key, v in resample(data, weights).items()}
        observed[m] = {key: dict(zip(conds, v[0])) for key, v in resample(data, ones).items()}
    return observed, boots


def compare(observed, boots, m, reference, key):
    """(clean, aggregate): paired intervals of statistic ``key``, model m minus the reference, clean and of the
    mean over the benchmark conditions both have; each None where there is nothing to compare."""
    om, orf, bm, br = observed[m][key], observed[reference][key], boots[m][key], boots[reference][key]
    clean = None
    if (CLEAN, 0) in bm and (CLEAN, 0) in br:
        clean = interval(om[CLEAN, 0] - orf[CLEAN, 0], bm[CLEAN, 0] - br[CLEAN, 0])
    common = [cs for cs in BENCHMARK if cs in bm and cs in br]
    if not common:
        return clean, None

    def agg(d):
        return np.mean([d[cs] for cs in common], axis=0)
    return clean, dict(interval(agg(om) - agg(orf), agg(bm) - agg(br)), n_conditions=len(common),
                       of=len(BENCHMARK), complete=len(common) == len(BENCHMARK))


# ------------------------------------------------------------------------------ the rows of metrics.jsonl

def read_rows(results, reference):
    """metrics.jsonl and run.json of the sweep, checked against each other. Returns (table {(model, corruption,
    severity): row}, run, models in run.json order then any only in metrics.jsonl, kinds, reference, notes)."""
    if not os.path.isdir(results):
        raise UsageError(f"--results {results}: no such folder (give an evaluate_corruptions.py --out folder)")
    metrics_path = os.path.join(results, "metrics.jsonl")
    # Strictly: here a bad line means the numbers cannot be trusted (the sweep itself recomputes such rows).
    rows = rf.read_metrics(metrics_path)
    run = rf.read_run(os.path.join(results, "run.json"))
    rf.check_rows_match_run(rows, run, metrics_path, os.path.join(results, "run.json"))
    notes = []
    if run is None:
        notes.append("no run.json: model order and kinds come from metrics.jsonl")
    models, kinds = [], {}
    for m in (run or {}).get("models", []) or []:
        if isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"] not in models:
            models.append(m["name"])
            kinds[m["name"]] = m.get("kind")
    for r in rows:
        if r["model"] not in models:
            models.append(r["model"])
        kinds[r["model"]] = r.get("kind") or kinds.get(r["model"])
    table = {(r["model"], r["corruption"], r["severity"]): r for r in rows}
    with_rows = [m for m in models if any(k[0] == m for k in table)]
    if reference is not None and reference not in with_rows:
        raise UsageError(f"--reference {reference}: no such model in {metrics_path} "
                         f"(models: {', '.join(with_rows)})")
    if reference is None:
        reference = next((m for m in with_rows if kinds.get(m) == "baseline"), with_rows[0])
    return table, run, models, kinds, reference, notes


def miou_by_model(models, table, notes):
    """{model: {(corruption, severity): mIoU}}, None where the row's mIoU is undefined."""
    miou = {m: {} for m in models}
    for (m, c, s), r in table.items():
        miou[m][c, s] = finite_or_none(r["miou"])
        if r["miou"] is None:
            notes.append(f"{m} {cond_key(c, s)}: mIoU is null in metrics.jsonl (no pixel scored); left out")
    return miou


def missing_rows(models, table):
    """Gaps in metrics.jsonl against clean + 15 x 5, one entry per (corruption, set of severities),
    grouping models that lack the same severities."""
    missing = []
    for m in models:
        if not any(k[0] == m for k in table):
            missing.append({"what": "metrics", "models": [m],
                            "conditions": [cond_key(c, s) for c, s in [(CLEAN, 0)] + BENCHMARK],
                            "message": f"missing: {m} has no rows at all"})
    present = [m for m in models if any(k[0] == m for k in table)]
    for c in (CLEAN,) + CORRUPTIONS:
        sevs = (0,) if c == CLEAN else SEVERITIES
        groups = {}
        for m in present:
            lack = tuple(s for s in sevs if (m, c, s) not in table)
            if lack:
                groups.setdefault(lack, []).append(m)
        for lack, ms in groups.items():
            verb = "has" if len(ms) == 1 else "have"
            missing.append({"what": "metrics", "models": ms, "conditions": [cond_key(c, s) for s in lack],
                            "message": f"missing: {', '.join(ms)} {verb} no rows for {c}/{span(lack)}"})
    return missing


# ------------------------------------------------------------------- logit structure and per-image counts

def condition_entry(r):
    """The per_condition entry of one metrics.jsonl row; the explained variance comes from logits/."""
    return {"miou": finite_or_none(r["miou"]), "pixel_acc": finite_or_none(r.get("pixel_acc")),
            "end": finite_or_none(r.get("end")), "distance": finite_or_none(r.get("distance")),
            "distance_predicted": finite_or_none(r.get("distance_predicted")),
            "explained_variance": None, "classes_used": None, "explained_variance_notebook": None}


def logit_structure(tracker, m, c, s, entry, arrays):
    """One condition's explained variance into its per_condition ``entry`` and its matrices into ``arrays``;
    returns the (field, metrics.jsonl value, recomputed value) of each Distance the row disagrees on."""
    mu = tracker.mean()
    ev, used, ev_nb = both_explained_variances(mu)
    entry.update(explained_variance=finite_list(ev), classes_used=used, explained_variance_notebook=finite_list(ev_nb))
    prefix = f"{m}/clean" if c == CLEAN else f"{m}/{c}/{s}"
    if c == CLEAN:
        clean_structure(tracker, m, arrays)
    else:
        arrays[f"{prefix}/mean"] = mu
        arrays[f"{prefix}/explained_variance"] = ev
        arrays[f"{prefix}/explained_variance_notebook"] = ev_nb
    recomputed = (("distance", tracker.distance_notebook()), ("distance_predicted", tracker.distance_margin()))
    return [(key, entry[key], value) for key, value in recomputed
            if entry[key] is not None and finite_or_none(value) is not None
            and not math.isclose(entry[key], value, rel_tol=1e-9, abs_tol=1e-12)]


def clean_structure(tracker, m, arrays):
    """The clean logit structure of one model into ``arrays``: counts, class means, distance matrix and both
    correlations. The notebook drew them from its clean FixScaleResize pass (cells 44-45), so analyse() calls this
    again with the --pca-pass tracker where there is one, replacing the main sweep's."""
    arrays[f"{m}/clean/count"] = tracker.count.copy()
    arrays[f"{m}/clean/mean"] = tracker.mean()
    arrays[f"{m}/clean/distance"] = tracker.distance_matrix()
    arrays[f"{m}/clean/correlation"] = tracker.correlation()
    arrays[f"{m}/clean/correlation_notebook"] = tracker.correlation_notebook()


def image_counts(path, ids_ref, ref_path):
    """(image_ids, per-image TP, TP+FP+FN) of one confusion/ file, in the order of ids_ref (None: its own)."""
    z = load_npz(path, ("image_ids", "tp", "fp", "fn"))
    ids = np.asarray(z["image_ids"]).astype(str)
    if ids_ref is None:
        ids_ref, ref_path = ids, path
    order = align(ids, ids_ref, path, ref_path)
    tp, fp, fn = (np.asarray(z[k])[order] for k in ("tp", "fp", "fn"))
    if not (tp.shape == fp.shape == fn.shape == (len(ids_ref), NUM_CLASSES)):
        raise UsageError(f"{path}: tp/fp/fn shapes {tp.shape}, {fp.shape}, {fn.shape}; expected "
                         f"({len(ids_ref)}, {NUM_CLASSES})")
    return ids, tp, tp + fp + fn


def read_conditions(results, models, table, arrays, notes, missing):
    """Per model and condition with a metrics row: its per_condition entry, its logit matrices (into ``arrays``)
    and its per-image counts. Returns (per_condition, counts {model: {(c, s): (tp, union)}} on one image order,
    (that order's image ids, the file they came from) or (None, None), {model: clean LogitTracker})."""
    conditions = [(CLEAN, 0)] + BENCHMARK + [(c, s) for c in ALL_CORRUPTIONS[len(CORRUPTIONS):] for s in SEVERITIES
                                             if any(k[1:] == (c, s) for k in table)]
    per_condition, counts, clean_trackers = {m: {} for m in models}, {m: {} for m in models}, {}
    disagree = {}                           # (model, row field) -> conditions where logits/ say otherwise
    lacking = {"logits": {}, "confusion": {}}
    ids_ref = ids_path = None
    for m in models:
        for c, s in conditions:
            r = table.get((m, c, s))
            if r is None:
                continue
            entry = per_condition[m][cond_key(c, s)] = condition_entry(r)
            lpath = os.path.join(results, "logits", m, f"{c}_{s}.npz")
            if os.path.exists(lpath):
                tracker = read_tracker(lpath)
                if c == CLEAN:
                    clean_trackers[m] = tracker
                for key, row, value in logit_structure(tracker, m, c, s, entry, arrays):
                    disagree.setdefault((m, key), []).append((cond_key(c, s), row, value))
            else:
                lacking["logits"].setdefault(m, []).append((c, s))
            if c != CLEAN and c not in CORRUPTIONS:
                continue        # held-out extras never enter the bootstrap
            cpath = os.path.join(results, "confusion", m, f"{c}_{s}.npz")
            if not os.path.exists(cpath):
                lacking["confusion"].setdefault(m, []).append((c, s))
                continue
            ids, tp, union = image_counts(cpath, ids_ref, ids_path)
            if ids_ref is None:
                ids_ref, ids_path = ids, cpath
            counts[m][c, s] = (tp, union)
    report_gaps(disagree, lacking, notes, missing)
    return per_condition, counts, (ids_ref, ids_path), clean_trackers


def report_gaps(disagree, lacking, notes, missing):
    """Notes on Distances that logits/ recompute otherwise, and ``missing`` entries for absent files."""
    for (m, key), where in disagree.items():
        cs, row, value = where[0]
        notes.append(f"{m}: {key} in metrics.jsonl differs from the one recomputed from logits/ in {len(where)} "
                     f"condition(s) (first {cs}: {row:.6g} against {value:.6g}); rows written before both "
                     f"Distances existed held the predicted-classes mean as distance: rerun evaluate_corruptions.py")
    for what, by_model in lacking.items():
        for m, conds in by_model.items():
            names = [cond_key(*cs) for cs in conds]
            effect = ("no explained variance or logit matrices there" if what == "logits"
                      else "those conditions are left out of the bootstrap")
            missing.append({"what": what, "models": [m], "conditions": names,
                            "message": f"missing: {what}/{m}/ files for {len(names)} condition(s) with metrics "
                                       f"rows ({shown_list(names)}); {effect}"})


# --------------------------------------------------------------------------------------- per-model tables

def per_corruption_and_severity(mi):
    """mIoU per corruption (mean over its severities) and per severity (mean over the 15; "0" = clean)."""
    per_corruption = {}
    for c in [c for c in ALL_CORRUPTIONS if any((c, s) in mi for s in SEVERITIES)]:
        sev = [s for s in SEVERITIES if mi.get((c, s)) is not None]
        per_corruption[c] = {"miou": mean_or_none([mi[c, s] for s in sev]), "severities": sev,
                             "complete": len(sev) == len(SEVERITIES), "benchmark": c in CORRUPTIONS}
    clean = mi.get((CLEAN, 0))
    per_severity = {"0": {"miou": clean, "n_corruptions": None, "of": None, "complete": clean is not None}}
    for s in SEVERITIES:
        agg = mean_over([mi.get((c, s)) for c in CORRUPTIONS], len(CORRUPTIONS))
        per_severity[str(s)] = counted(agg, "n_corruptions", "miou")
    return per_corruption, per_severity


def corruption_errors(mi, ref_miou, notes):
    """{cd per corruption, mcd, mrcd} of one model against the reference."""
    cd = {}
    for c in CORRUPTIONS:
        entry, cd_notes = degradation(mi, ref_miou, c)
        if entry["severities"]:
            cd[c] = entry
            # The denominators are the reference's alone, so say it once, not once per model.
            notes += [t for t in cd_notes if t not in notes]
    mcd = mean_over([cd[c]["cd"] if c in cd else None for c in CORRUPTIONS], len(CORRUPTIONS))
    mrcd = mean_over([cd[c]["rcd"] if c in cd else None for c in CORRUPTIONS], len(CORRUPTIONS))
    # A mean over all 15 corruptions is complete only if each CD_c used all five severities.
    for agg in (mcd, mrcd):
        agg["complete"] = agg["complete"] and all(cd[c]["complete"] for c in CORRUPTIONS if c in cd)
    return {"cd": cd, "mcd": counted(mcd, "n_corruptions"), "mrcd": counted(mrcd, "n_corruptions")}


def miou_summary(mi, ref_miou, m, notes):
    """clean mIoU, mPC, rPC, the sev. 0-5 mean, per corruption and severity, CD/rCD of one model."""
    clean = mi.get((CLEAN, 0))
    mpc = mean_over([mi.get(cs) for cs in BENCHMARK], len(BENCHMARK))
    per_corruption, per_severity = per_corruption_and_severity(mi)
    out = {"clean_miou": clean, "mpc": counted(mpc),
           "rpc": {"value": (mpc["value"] / clean if mpc["value"] is not None and clean else None),
                   "complete": mpc["complete"] and clean is not None},
           "mean_sev0_5": mean_sev0_5(mi), "per_corruption": per_corruption, "per_severity": per_severity,
           **corruption_errors(mi, ref_miou, notes)}
    if clean is not None and clean == 0 and mpc["value"] is not None:
        notes.append(f"{m}: rPC undefined, clean mIoU is 0")
    return out


def logit_summary(pc):
    """END and both Distances of one model: clean, and the mean over the benchmark conditions."""
    out = {}
    for key in ("end", "distance", "distance_predicted"):
        corr = mean_over([pc[cond_key(*cs)][key] if cond_key(*cs) in pc else None for cs in BENCHMARK],
                         len(BENCHMARK))
        out[key] = {"clean": pc.get(cond_key(CLEAN, 0), {}).get(key), "corrupted": counted(corr)}
    return out


def clean_explained_variance(tracker, m, source, arrays):
    """explained_variance_clean of one model from its clean tracker in the --pca-pass (or the main sweep)."""
    ev, used, ev_nb = both_explained_variances(tracker.mean())
    arrays[f"{m}/clean/explained_variance"] = ev
    arrays[f"{m}/clean/explained_variance_notebook"] = ev_nb
    arrays[f"{m}/clean/explained_variance_count"] = tracker.count.copy()
    return {"cumulative": finite_list(ev), "classes_used": used, "cumulative_notebook": finite_list(ev_nb),
            "source": source}


# ---------------------------------------------------------------------------------------------- bootstrap

def resample_counts(data, weights):
    """``resample_models``'s statistic for mIoU: data = one (tp, union) per condition."""
    tp = np.stack([d[0] for d in data], axis=1)
    un = np.stack([d[1] for d in data], axis=1)
    return {"miou": resample_miou(tp, un, weights)}


def bootstrap(models, reference, counts, miou, ids, args, notes):
    """Paired bootstrap of mIoU differences to the reference, clean and aggregate (see module doc)."""
    out = {"n_resamples": args.bootstrap, "seed": args.seed, "confidence": CONFIDENCE,
           "method": "percentile; images resampled with replacement, the same resamples for every model "
                     "and condition; mIoU recomputed from summed per-image TP/FP/FN",
           "n_images": None if ids is None else int(len(ids)), "reference": reference, "comparisons": {}}
    if args.bootstrap == 0 or ids is None or not counts[reference]:
        if args.bootstrap and ids is None:
            notes.append("no confusion/ files: no bootstrap intervals")
        elif args.bootstrap:
            notes.append(f"the reference {reference} has no confusion/ files: no bootstrap intervals")
        return out
    observed, boots = resample_models(counts, len(ids), args, resample_counts)
    for m in observed:
        for cs, v in observed[m]["miou"].items():
            row = miou[m].get(cs)
            if row is not None and abs(v - row) > 1e-9:
                notes.append(f"{m} {cond_key(*cs)}: mIoU from confusion/ per-image counts ({v:.6f}) differs from "
                             f"metrics.jsonl ({row:.6f}); the bootstrap uses the counts")
    for m in models:
        if m != reference and m in boots:
            clean, aggregate = compare(observed, boots, m, reference, "miou")
            out["comparisons"][m] = {"clean": clean, "aggregate": aggregate}
    return out


# -------------------------------------------------------------------------------------------- calibration

def calibration_values(results, models, table, notes):
    """{model: {(c, s): {ece, nll, brier}}} from metrics.jsonl, each a number or None."""
    values = {m: {} for m in models}
    for (m, c, s), r in table.items():
        for key in CALIBRATION:
            v = r.get(key)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                raise UsageError(f"{os.path.join(results, 'metrics.jsonl')}: {key} of {m} {cond_key(c, s)} must be "
                                 f"a number or null, got {v!r}")
        values[m][c, s] = {key: finite_or_none(r.get(key)) for key in CALIBRATION}
    no_fields = [m for m in models if values[m] and all("ece" not in r for k, r in table.items() if k[0] == m)]
    if no_fields:
        notes.append(f"no calibration in metrics.jsonl for {', '.join(no_fields)}: rows written before ece/nll/brier "
                     f"were measured; rerun evaluate_corruptions.py into a new --out")
    return values


def calibration_summary(v):
    """(analysis.json's calibration entry, ECE by severity 0..5 (6,)) of one model's values."""
    clean = v.get((CLEAN, 0), {})
    corrupted = {key: counted(mean_over([v.get(cs, {}).get(key) for cs in BENCHMARK], len(BENCHMARK)))
                 for key in CALIBRATION}
    per_severity = {"0": {**{k: clean.get(k) for k in CALIBRATION}, "n_corruptions": None, "of": None,
                          "complete": clean.get("ece") is not None}}
    ece_by_severity = np.full(6, np.nan)
    ece_by_severity[0] = np.nan if clean.get("ece") is None else clean["ece"]
    for s in SEVERITIES:
        aggs = {key: mean_over([v.get((c, s), {}).get(key) for c in CORRUPTIONS], len(CORRUPTIONS))
                for key in CALIBRATION}
        entry = {key: aggs[key]["value"] for key in CALIBRATION}
        entry.update(n_corruptions=aggs["ece"]["n"], of=len(CORRUPTIONS), complete=aggs["ece"]["complete"])
        per_severity[str(s)] = entry
        if entry["ece"] is not None:
            ece_by_severity[s] = entry["ece"]
    summary = {"clean": {k: clean.get(k) for k in CALIBRATION}, "corrupted": corrupted, "per_severity": per_severity}
    return summary, ece_by_severity


def calibration_tables(results, m, table, ids_ref, ids_path, lacking):
    """One model's per-image calibration tables {(c, s): tables} on the bootstrap's image order (conditions
    whose confusion/ file predates calibration go to ``lacking``), and its reliability bins summed over the
    15 corruptions per severity {s: (count, conf_sum, acc_sum) or None}."""
    tables, pooled = {}, {s: None for s in range(6)}
    for c, s in [(CLEAN, 0)] + BENCHMARK:
        if (m, c, s) not in table:
            continue
        path = os.path.join(results, "confusion", m, f"{c}_{s}.npz")
        if not os.path.exists(path):
            continue                       # already listed under missing confusion
        got = read_calibration(path)
        if got is None:
            lacking.setdefault(m, []).append(cond_key(c, s))
            continue
        t, ids = got
        if ids_ref is not None:
            order = align(ids, ids_ref, path, ids_path)
            t = {k: a[order] for k, a in t.items()}
        tables[c, s] = t
        bins = (t["image_count"].sum(0), t["image_conf_sum"].sum(0), t["image_acc_sum"].sum(0))
        pooled[s] = bins if pooled[s] is None else tuple(a + b for a, b in zip(pooled[s], bins))
    return tables, pooled


def calibration_analysis(results, models, table, reference, ids_ref, ids_path, args, arrays, notes, missing):
    """ECE / NLL / Brier per model: clean, mean over the corruption conditions (the benchmark's 75 present),
    per severity (mean over the 15 corruptions), from metrics.jsonl; reliability bins summed over the 15
    corruptions per severity (analysis_arrays.npz, for calibration.png); and paired bootstrap intervals of
    each model minus the reference, on the mIoU bootstrap's resamples (same seed and images), recomputing
    each metric from the resampled images' per-image bins and sums in confusion/.

    Returns {"per_model": {model: summary}, "bootstrap": {...}}.
    """
    values = calibration_values(results, models, table, notes)
    per_model, tables, lacking = {}, {}, {}
    for m in models:
        per_model[m], ece_by_severity = calibration_summary(values[m])
        tables[m], pooled = calibration_tables(results, m, table, ids_ref, ids_path, lacking)
        for s, bins in pooled.items():
            if bins is not None:
                for key, a in zip(("count", "conf_sum", "acc_sum"), bins):
                    arrays[f"{m}/calibration/{s}/{key}"] = a
        arrays[f"{m}/calibration/ece_by_severity"] = ece_by_severity
    for m, conds in lacking.items():
        missing.append({"what": "calibration", "models": [m], "conditions": conds,
                        "message": f"missing: no calibration bins in confusion/{m}/ for {len(conds)} condition(s) "
                                   f"({shown_list(conds)}), written before calibration was measured; no reliability "
                                   f"bins or calibration intervals there"})
    return {"per_model": per_model, "bootstrap": calibration_bootstrap(models, reference, tables, ids_ref, args)}


def calibration_bootstrap(models, reference, tables, ids_ref, args):
    """Paired bootstrap 95% intervals of ECE, NLL and Brier, model minus reference: clean, and the mean over
    the benchmark conditions both have; the resamples are the mIoU bootstrap's (``resample_models``)."""
    out = {"method": "percentile; the mIoU bootstrap's resamples of the images; ECE, NLL and Brier recomputed "
                     "from the resampled images' summed per-image bins and sums", "comparisons": {}}
    if args.bootstrap == 0 or ids_ref is None or not tables[reference]:
        return out
    observed, boots = resample_models(tables, len(ids_ref), args,
                                      lambda t, w: dict(zip(CALIBRATION, resample_calibration(t, w))))
    for m in models:
        if m == reference or m not in boots:
            continue
        pairs = {key: compare(observed, boots, m, reference, key) for key in CALIBRATION}
        out["comparisons"][m] = {
            "clean": {key: p[0] for key, p in pairs.items()} if pairs["ece"][0] is not None else None,
            "corrupted": {key: p[1] for key, p in pairs.items()} if pairs["ece"][1] is not None else None}
    return out


# ------------------------------------------------------------------------ readings (docs/calibration.md)

READING_METRICS = ("ece", "ece_adaptive", "nll", "brier", "aurc", "auroc", "ece_classwise")
BOOTSTRAPPED = ("ece", "ece_adaptive", "nll", "brier", "aurc", "auroc")   # the additive ones (per image)
# Each structure's own reading: the one its loss trained it to produce (SCrIBE: per-class sigmoid BCE).
OWN_READING = {"baseline": "softmax", "ibe": "softmax", "scribe": "sigmoid"}


def reading_values(results, models, table):
    """{variant: {model: {(c, s): {metric: value or None}}}} from metrics.jsonl's "calibration" field
    (absent from rows written before it: no entry)."""
    out = {v: {m: {} for m in models} for v in VARIANTS}
    for (m, c, s), r in table.items():
        cal = r.get("calibration")
        if cal is None:
            continue
        if not isinstance(cal, dict) or not all(isinstance(x, dict) for x in cal.values()):
            raise UsageError(f"{os.path.join(results, 'metrics.jsonl')}: calibration of {m} {cond_key(c, s)} must be "
                             f"an object of readings; rerun evaluate_corruptions.py for that condition")
        for v, entry in cal.items():
            if v in out:
                vals = {}
                for k in READING_METRICS + ("temperature",):
                    x = entry.get(k)
                    if x is not None and (not isinstance(x, (int, float)) or isinstance(x, bool)):
                        raise UsageError(f"{os.path.join(results, 'metrics.jsonl')}: calibration.{v}.{k} of {m} "
                                         f"{cond_key(c, s)} must be a number or null, got {x!r}")
                    vals[k] = finite_or_none(x)
                out[v][m][c, s] = vals
    return out


def reading_summary(v):
    """One model's values in one reading: clean, mean over the benchmark conditions, per severity."""
    clean = v.get((CLEAN, 0), {})
    temps = sorted({x["temperature"] for x in v.values() if x.get("temperature") is not None})
    per_severity = {"0": {k: clean.get(k) for k in READING_METRICS}}
    for s in SEVERITIES:
        aggs = {k: mean_over([v.get((c, s), {}).get(k) for c in CORRUPTIONS], len(CORRUPTIONS))
                for k in READING_METRICS}
        per_severity[str(s)] = {**{k: a["value"] for k, a in aggs.items()}, "n_corruptions": aggs["ece"]["n"],
                                "of": len(CORRUPTIONS), "complete": aggs["ece"]["complete"]}
    return {"temperature": temps[0] if len(temps) == 1 else (temps or None),
            "clean": {k: clean.get(k) for k in READING_METRICS},
            "corrupted": {k: counted(mean_over([v.get(cs, {}).get(k) for cs in BENCHMARK], len(BENCHMARK)))
                          for k in READING_METRICS},
            "per_severity": per_severity}


def resample_reading(tables, weights):
    """``resample_models``'s statistics for one reading: ECE, NLL, Brier from the 15 bins and sums, and where
    every condition has fine bins, adaptive ECE, AURC and AUROC from the resampled fine bins."""
    out = dict(zip(CALIBRATION, resample_calibration(tables, weights)))
    if all("image_fine_count" in t for t in tables):
        rank = [rank_metrics_from_fine(weights @ t["image_fine_count"].astype(np.float64),
                                       weights @ t["image_fine_correct"].astype(np.float64),
                                       weights @ t["image_fine_conf_sum"]) for t in tables]
        for k in ("ece_adaptive", "aurc", "auroc"):
            out[k] = np.stack([r[k] for r in rank], axis=1)
    return out


def reading_tables(results, m, table, variant, ids_ref, ids_path):
    """One model's per-image tables in one reading {(c, s): tables} on the bootstrap's image order, and the
    pooled 15-bin and fine tables per severity (0 = clean; 1-5 summed over the 15 corruptions) for figures."""
    tables, pooled = {}, {}
    for c, s in [(CLEAN, 0)] + BENCHMARK:
        path = os.path.join(results, "confusion", m, f"{c}_{s}.npz")
        if (m, c, s) not in table or not os.path.exists(path):
            continue
        got = read_calibration(path, prefix_of(*VARIANTS[variant]))
        if got is None:
            continue
        t, ids = got
        if ids_ref is not None:
            order = align(ids, ids_ref, path, ids_path)
            t = {k: a[order] for k, a in t.items()}
        tables[c, s] = t
        sums = {"count": t["image_count"].sum(0), "conf_sum": t["image_conf_sum"].sum(0),
                "acc_sum": t["image_acc_sum"].sum(0)}
        if "image_fine_count" in t:
            sums.update(fine_count=t["image_fine_count"].sum(0), fine_correct=t["image_fine_correct"].sum(0))
        if s not in pooled:
            pooled[s] = sums
        else:
            pooled[s] = {k: pooled[s][k] + a for k, a in sums.items() if k in pooled[s]}
    return tables, pooled


def readings_analysis(results, models, kinds, table, reference, ids_ref, ids_path, run, args, arrays):
    """Every reading of every model (softmax, sigmoid, and each after temperature scaling): clean, corrupted
    and per-severity values of READING_METRICS from metrics.jsonl; pooled reliability and fine bins per
    severity (analysis_arrays.npz); paired bootstrap intervals of model minus reference of the BOOTSTRAPPED
    metrics on the mIoU bootstrap's resamples. Returns ({model: {"own_reading", "readings"}}, bootstrap)."""
    values = reading_values(results, models, table)
    per_model = {m: {"own_reading": OWN_READING.get(kinds.get(m), "softmax"), "readings": {}} for m in models}
    boot = {"method": "percentile; the mIoU bootstrap's resamples of the images; each metric recomputed from the "
                      "resampled images' summed bins (15 equal-width and fine log-odds bins) and sums",
            "temperature_fit": (run or {}).get("temperature"), "readings": {}}
    for v in VARIANTS:
        tables = {}
        for m in models:
            if not values[v][m]:
                continue
            per_model[m]["readings"][v] = dict(reading=VARIANTS[v][0], temperature_scaled=VARIANTS[v][1],
                                               **reading_summary(values[v][m]))
            tables[m], pooled = reading_tables(results, m, table, v, ids_ref, ids_path)
            for s, sums in pooled.items():
                for k, a in sums.items():
                    arrays[f"{m}/readings/{v}/{s}/{k}"] = a
        comps = {}
        if args.bootstrap and ids_ref is not None and tables.get(reference):
            observed, boots = resample_models(tables, len(ids_ref), args, resample_reading)
            for m in models:
                if m == reference or m not in boots:
                    continue
                keys = [k for k in BOOTSTRAPPED if k in boots[m] and k in boots[reference]]
                pairs = {k: compare(observed, boots, m, reference, k) for k in keys}
                comps[m] = {"clean": {k: p[0] for k, p in pairs.items()} if pairs["ece"][0] is not None else None,
                            "corrupted": {k: p[1] for k, p in pairs.items()} if pairs["ece"][1] is not None else None}
        boot["readings"][v] = {"comparisons": comps}
    return per_model, boot


def worst_case(models, reference, counts, miou, ids, args):
    """Per severity 1-5: each model's minimum mIoU over the 15 corruptions present and which corruption it is,
    and a paired bootstrap interval of model minus reference of that minimum (recomputed in every resample, where
    the worst corruption may be another one) over the corruptions both have."""
    per_model = {}
    for m in models:
        per_model[m] = {}
        for s in SEVERITIES:
            have = [(miou[m][c, s], c) for c in CORRUPTIONS if miou[m].get((c, s)) is not None]
            low = min(have) if have else (None, None)
            per_model[m][str(s)] = {"miou": low[0], "corruption": low[1], "n_corruptions": len(have),
                                    "of": len(CORRUPTIONS), "complete": len(have) == len(CORRUPTIONS)}
    out = {"method": "percentile; the mIoU bootstrap's resamples; the minimum over corruptions recomputed in each",
           "comparisons": {}}
    if args.bootstrap == 0 or ids is None or not counts.get(reference):
        return per_model, out
    observed, boots = resample_models(counts, len(ids), args, resample_counts)
    for m in models:
        if m == reference or m not in boots:
            continue
        entry = {}
        for s in SEVERITIES:
            common = [c for c in CORRUPTIONS if (c, s) in boots[m]["miou"] and (c, s) in boots[reference]["miou"]]
            if not common:
                entry[str(s)] = None
                continue
            om = min(observed[m]["miou"][c, s] for c in common)
            orf = min(observed[reference]["miou"][c, s] for c in common)
            bm = np.min([boots[m]["miou"][c, s] for c in common], axis=0)
            br = np.min([boots[reference]["miou"][c, s] for c in common], axis=0)
            entry[str(s)] = dict(interval(om - orf, bm - br), n_corruptions=len(common), of=len(CORRUPTIONS),
                                 complete=len(common) == len(CORRUPTIONS))
        out["comparisons"][m] = entry
    return per_model, out


# ------------------------------------------------------------------------------------------- analysis

def source_of(run, metrics_sha256=None):
    """analysis.json's ``source``: what run.json says about the sweep, or None without one; and the sha256 of the
    metrics.jsonl the tables come from (make_figures.py refuses tables older than the folder's metrics.jsonl)."""
    if run is None:
        return None
    return {"protocol": run.get("protocol"), "size": run.get("size"), "images": run.get("images"),
            "corruption_code": run.get("corruption_code", "imagecorruptions"),
            "metrics_sha256": metrics_sha256,
            "models": [{"name": m.get("name"), "kind": m.get("kind"), "checkpoint_sha256": m.get("sha256")}
                       for m in run.get("models", []) if isinstance(m, dict)]}


def analyse(args):
    """Everything but the writing: returns (analysis dict for analysis.json, arrays for the npz)."""
    results = args.results
    metrics = os.path.join(results, "metrics.jsonl")
    metrics_sha256 = file_sha256(metrics) if os.path.isfile(metrics) else None   # before reading: never newer
    table, run, models, kinds, reference, notes = read_rows(results, args.reference)
    miou = miou_by_model(models, table, notes)
    missing = missing_rows(models, table)
    pca_dir = resolve_pca_pass(args.pca_pass, results)
    if pca_dir is not None:
        pca_trackers, ev_source = pca_pass_trackers(pca_dir, results, run, models, missing, notes)
    else:
        pca_trackers, ev_source = None, "clean condition of the main sweep"
    arrays = {"models": np.array(models), "classes": np.array(CLASSES),
              "explained_variance_source": np.array(ev_source)}
    per_condition, counts, (ids_ref, ids_path), clean_trackers = read_conditions(results, models, table, arrays,
                                                                                 notes, missing)
    if pca_trackers is None:
        pca_trackers = clean_trackers
    per_model = {}
    for m in models:
        ev_clean = (clean_explained_variance(pca_trackers[m], m, ev_source, arrays) if m in pca_trackers
                    else None)
        structure_source = "clean condition of the main sweep" if f"{m}/clean/mean" in arrays else None
        if pca_dir is not None and m in pca_trackers:
            clean_structure(pca_trackers[m], m, arrays)
            structure_source = ev_source
        per_model[m] = {"kind": kinds.get(m), **miou_summary(miou[m], miou[reference], m, notes),
                        **logit_summary(per_condition[m]), "explained_variance_clean": ev_clean,
                        "clean_structure_source": structure_source, "per_condition": per_condition[m]}
    boot = bootstrap(models, reference, counts, miou, ids_ref, args, notes)
    calib = calibration_analysis(results, models, table, reference, ids_ref, ids_path, args, arrays, notes, missing)
    for m in models:
        per_model[m]["calibration"] = calib["per_model"][m]
    boot["calibration"] = calib["bootstrap"]
    readings, boot["readings"] = readings_analysis(results, models, kinds, table, reference, ids_ref, ids_path, run,
                                                   args, arrays)
    worst, boot["worst_case"] = worst_case(models, reference, counts, miou, ids_ref, args)
    for m in models:
        per_model[m].update(readings[m], worst_case=worst[m])
    return {
        "schema": "analyze_logits/2", "args": vars(args), "git_commit": git_commit(),
        "results": os.path.abspath(results), "source": source_of(run, metrics_sha256),
        "pca_pass": None if pca_dir is None else os.path.abspath(pca_dir), "explained_variance_source": ev_source,
        "reference": reference, "models": models,
        "benchmark_corruptions": list(CORRUPTIONS), "severities": list(SEVERITIES),
        "units": "mIoU, mPC, differences: fractions in [0, 1]; tables.md shows mIoU in percent",
        "missing": missing, "notes": notes, "per_model": per_model, "bootstrap": boot,
    }, arrays


# ------------------------------------------------------------------------------------------- reporting

def summary_rows(a):
    rows = []
    for m in a["models"]:
        p = a["per_model"][m]
        comp = a["bootstrap"]["comparisons"].get(m, {})
        rows.append([m + (" (ref)" if m == a["reference"] else ""), pct(p["clean_miou"]),
                     star(pct(p["mpc"]["value"]), p["mpc"]["complete"]),
                     star(pct(p["mean_sev0_5"]["value"]), p["mean_sev0_5"]["complete"]),
                     star(f3(p["rpc"]["value"]), p["rpc"]["complete"]),
                     star(f3(p["mcd"]["value"]), p["mcd"]["complete"]),
                     star(f3(p["mrcd"]["value"]), p["mrcd"]["complete"]),
                     f3(p["end"]["clean"]),
                     star(f3(p["end"]["corrupted"]["value"]), p["end"]["corrupted"]["complete"]),
                     f3(p["distance"]["clean"]),
                     star(f3(p["distance"]["corrupted"]["value"]), p["distance"]["corrupted"]["complete"]),
                     f3(p["distance_predicted"]["clean"]),
                     star(f3(p["distance_predicted"]["corrupted"]["value"]),
                          p["distance_predicted"]["corrupted"]["complete"]),
                     ci(comp.get("clean")), ci(comp.get("aggregate"))])
    return rows


SUMMARY_HEADER = ["model", "clean mIoU", "mPC", "mean sev. 0-5", "rPC", "mCD", "mrCD", "END clean", "END corr.",
                  "Distance clean", "Distance corr.", "Distance (pred.) clean", "Distance (pred.) corr.",
                  "Δ clean mIoU [95% CI]", "Δ mPC [95% CI]"]
SUMMARY_CAPTION = (
    "mPC: mean mIoU over the 15 corruptions x severities 1-5 (75 conditions), the benchmark's definition. "
    "mean sev. 0-5: mean over the 15 corruptions of each corruption's mean mIoU over severities 0-5, severity 0 "
    "being the clean mIoU (one row of the notebook's results table per corruption, levels 0-5); complete, it is "
    "(clean + 5 x mPC) / 6. Which of the two the paper's headline (42.1 / 40.3 / 37.5) is, is not stated. "
    "Distance: the notebook's, mean over all 20 foreground classes n of mean logit n minus mean background "
    "logit over the pixels predicted n, classes never predicted counting 0; Distance (pred.): the same mean "
    "over the foreground classes predicted at least once. corr. = mean over the corrupted conditions.")


def pct2(x):
    """A fraction as percent with 2 decimals ("–" for None): ECE in the tables."""
    return "–" if x is None else f"{100 * x:.2f}"


def calibration_markdown(a):
    """The tables.md section "Calibration"."""
    models, pm = a["models"], a["per_model"]
    comps = a["bootstrap"].get("calibration", {}).get("comparisons", {})
    ece = pct2

    def cell(value, complete, fmt):
        return star(fmt(value), complete)

    def delta(c, key, scale, digits):
        return ci((c or {}).get(key), scale, digits)

    rows = []
    for m in models:
        cal = pm[m].get("calibration")
        if cal is None:
            continue
        cl, co = cal["clean"], cal["corrupted"]
        comp = comps.get(m, {})
        rows.append([m + (" (ref)" if m == a["reference"] else ""),
                     ece(cl["ece"]), cell(co["ece"]["value"], co["ece"]["complete"], ece),
                     f3(cl["nll"]), cell(co["nll"]["value"], co["nll"]["complete"], f3),
                     f3(cl["brier"]), cell(co["brier"]["value"], co["brier"]["complete"], f3),
                     delta(comp.get("clean"), "ece", 100, 2), delta(comp.get("corrupted"), "ece", 100, 2),
                     delta(comp.get("corrupted"), "nll", 1, 3), delta(comp.get("corrupted"), "brier", 1, 3)])
    header = ["model", "ECE clean", "ECE corr.", "NLL clean", "NLL corr.", "Brier clean", "Brier corr.",
              "Δ ECE clean [95% CI]", "Δ ECE corr. [95% CI]", "Δ NLL corr. [95% CI]", "Δ Brier corr. [95% CI]"]
    sev_rows = [[m] + [star(ece(pm[m]["calibration"]["per_severity"][str(s)]["ece"]),
                            pm[m]["calibration"]["per_severity"][str(s)]["complete"]) for s in range(6)]
                for m in models if pm[m].get("calibration")]
    return ["## Calibration", "",
            "Over the pixels whose label is not 255, from the softmax over the 21 output channels as the models "
            "build them (IBE/SCrIBE: background = -logsumexp of the 20 foreground logits). ECE: expected "
            "calibration error of the top-1 confidence, 15 equal-width bins, in **percent**; NLL: mean negative "
            "log-likelihood of the true class (nats); Brier: mean over pixels of the sum over the 21 classes of "
            "(p - one-hot)^2. corr. = mean over the corrupted conditions (15 corruptions x severities 1-5) of "
            "each condition's value. Δ: model minus the reference, with a paired bootstrap 95% interval on the "
            "mIoU bootstrap's resamples; lower is better for all three.", "",
            md_table(header, rows), "",
            "### ECE (%) per severity, mean over the 15 corruptions (0 = clean)", "",
            md_table(["model"] + [str(s) for s in range(6)], sev_rows), ""]




READING_TITLES = {"softmax": "softmax (21-way, every model's common reading)",
                  "sigmoid": "sigmoid (one-vs-rest per class, SCrIBE's own)",
                  "softmax_ts": "softmax after temperature scaling", "sigmoid_ts": "sigmoid after temperature scaling"}


def readings_markdown(a):
    """The tables.md sections of the readings (docs/calibration.md) and the worst case over corruptions."""
    models, pm = a["models"], a["per_model"]
    comps = a["bootstrap"].get("readings", {}).get("readings", {})

    def both(entry, k, fmt):
        corr = entry["corrupted"][k]
        return [fmt(entry["clean"].get(k)), star(fmt(corr["value"]), corr["complete"])]

    def temp(entry):
        t = entry.get("temperature")
        return "–" if t is None else (f"{t:.3f}" if not isinstance(t, list) else "varies")

    metrics = [("ece", "ECE (%)", pct2), ("ece_adaptive", "adaptive ECE (%)", pct2), ("nll", "NLL", f3),
               ("brier", "Brier", f3), ("aurc", "AURC", f3), ("auroc", "AUROC", f3)]
    out = []
    own_rows = []
    for m in models:
        r = pm[m].get("readings", {}).get(pm[m].get("own_reading"))
        if r:
            own_rows.append([m, pm[m]["own_reading"]] + [x for k, _, fmt in metrics for x in both(r, k, fmt)])
    head = [f"{title} {part}" for _, title, _ in metrics for part in ("clean", "corr.")]
    caption = ("Each reading's formulas are in docs/calibration.md. ECE: 15 equal-width bins of the top-label "
               "confidence; adaptive ECE: 15 equal-mass bins; NLL and Brier of that reading's probabilities (the "
               "sigmoid's sum over the 21 one-vs-rest classes, so they are not comparable across readings); AURC: "
               "area under the risk-coverage curve (pixel error against confidence, lower is better); AUROC: "
               "confidence separating correct from wrong pixels (higher is better). corr. = mean over the corrupted "
               "conditions; * = incomplete.")
    if own_rows:
        out += ["## Calibration in each structure's own reading", "",
                "Baseline and IBE: the 21-way softmax they were trained with; SCrIBE: the per-class sigmoid of its "
                "BCE training. " + caption, "", md_table(["model", "reading"] + head, own_rows), ""]
    for v in VARIANTS:
        rows, delta_rows = [], []
        for m in models:
            r = pm[m].get("readings", {}).get(v)
            if not r:
                continue
            rows.append([m + (" (ref)" if m == a["reference"] else ""), temp(r)]
                        + [x for k, _, fmt in metrics for x in both(r, k, fmt)]
                        + ([pct2(r["clean"].get("ece_classwise"))] if v == "sigmoid" else []))
            c = comps.get(v, {}).get("comparisons", {}).get(m)
            if c:
                delta_rows.append([m] + [ci((c.get(part) or {}).get(k), 100 if k.startswith("ece") else 1,
                                            2 if k.startswith("ece") else 3)
                                         for part in ("clean", "corrupted") for k in BOOTSTRAPPED])
        if not rows:
            continue
        out += [f"## Calibration, reading: {READING_TITLES[v]}", "",
                ("Temperature T fitted per model on clean images that are not the test set (run.json's "
                 "temperature), applied unchanged under every corruption. " if v.endswith("_ts") else "") + caption,
                "", md_table(["model", "T"] + head + (["class-wise ECE (%) clean"] if v == "sigmoid" else []), rows),
                ""]
        if delta_rows:
            out += [f"Δ to {a['reference']} ({READING_TITLES[v]}), paired bootstrap 95% intervals "
                    f"(ECE in points of %):",
                    "", md_table(["model"] + [f"Δ {k} {part}" for part in ("clean", "corr.") for k in BOOTSTRAPPED],
                                 delta_rows), ""]
    return out + reading_severity_markdown(a)


def reading_severity_markdown(a):
    """tables.md: ECE per severity in every reading, before and after temperature scaling."""
    models, pm = a["models"], a["per_model"]
    out, sev = [], []
    for m in models:
        for v in VARIANTS:
            r = pm[m].get("readings", {}).get(v)
            if r:
                sev.append([m, READING_TITLES[v].split(" (")[0]]
                           + [star(pct2(r["per_severity"][str(s)]["ece"]),
                                   r["per_severity"][str(s)].get("complete", True)) for s in range(6)])
    if sev:
        out += ["### ECE (%) per severity in every reading, before and after temperature scaling (0 = clean)", "",
                md_table(["model", "reading"] + [str(s) for s in range(6)], sev), ""]
    return out


def worst_case_markdown(a):
    """tables.md: the lowest mIoU over the 15 corruptions per severity, with its paired interval."""
    models, pm = a["models"], a["per_model"]
    wc = a["bootstrap"].get("worst_case", {}).get("comparisons", {})
    out, rows = [], []
    for m in models:
        w = pm[m].get("worst_case")
        if not w:
            continue
        rows.append([m + (" (ref)" if m == a["reference"] else "")]
                    + [star(f"{pct(w[str(s)]['miou'])} ({w[str(s)]['corruption']})" if w[str(s)]["miou"] is not None
                            else "–", w[str(s)]["complete"]) for s in SEVERITIES]
                    + [ci((wc.get(m) or {}).get(str(s))) for s in SEVERITIES])
    if rows:
        out += ["## Worst case: the lowest mIoU (%) over the 15 corruptions, per severity", "",
                "The corruption it is in brackets; Δ: model minus the reference's worst case (each model's own worst "
                "corruption), paired bootstrap 95% interval in points, the minimum recomputed in every resample.", "",
                md_table(["model"] + [f"sev. {s}" for s in SEVERITIES] + [f"Δ sev. {s} [95% CI]" for s in SEVERITIES],
                         rows), ""]
    return out


def tables_markdown(a):
    models, pm = a["models"], a["per_model"]
    src = a["source"] or {}
    b = a["bootstrap"]
    out = [f"# Corruption robustness: {a['results']}", "",
           f"Protocol {src.get('protocol', '?')}, size {src.get('size', '?')}, {src.get('images', '?')} images, "
           f"corruptions by {src.get('corruption_code', '?')} (docs/corruptions.md); "
           f"reference model for CD/rCD and Δ: **{a['reference']}**.",
           "mIoU, mPC and per-corruption/per-severity values are mIoU in **percent** (1 decimal); rPC, CD, "
           "rCD, END, Distance and explained variance are ratios/values to 3 decimals; Δ are differences "
           "to the reference in percentage points" + (
               f" with a paired bootstrap 95% interval ({b['n_resamples']} resamples over {b['n_images']} images, "
               f"seed {b['seed']})" if b["comparisons"] else " (no bootstrap: --bootstrap 0 or no confusion/ files)")
           + ". A trailing * marks an aggregate over an incomplete set of conditions.", "",
           "## Summary", "", md_table(SUMMARY_HEADER, summary_rows(a)), "", SUMMARY_CAPTION, ""]
    corrs = [c for c in ALL_CORRUPTIONS if any(c in pm[m]["per_corruption"] for m in models)]
    if corrs:
        rows = [[m] + [star(pct(pm[m]["per_corruption"][c]["miou"]), pm[m]["per_corruption"][c]["complete"])
                       if c in pm[m]["per_corruption"] else "–" for c in corrs] for m in models]
        out += ["## mIoU (%) per corruption, mean over severities 1-5", "",
                md_table(["model"] + [c if c in CORRUPTIONS else c + " (held out)" for c in corrs], rows), ""]
    rows = [[m] + [star(pct(pm[m]["per_severity"][str(s)]["miou"]), pm[m]["per_severity"][str(s)]["complete"])
                   for s in range(6)] for m in models]
    out += ["## mIoU (%) per severity, mean over the 15 corruptions (0 = clean)", "",
            md_table(["model"] + [str(s) for s in range(6)], rows), ""]
    bench = [c for c in CORRUPTIONS if any(c in pm[m]["cd"] for m in models)]
    if bench:
        for key, title in (("cd", "CD"), ("rcd", "rCD")):
            rows = [[m] + [star(f3(pm[m]["cd"][c][key]), pm[m]["cd"][c]["complete"]) if c in pm[m]["cd"] else "–"
                           for c in bench] for m in models]
            out += [f"## {title} per corruption (reference {a['reference']})", "",
                    md_table(["model"] + bench, rows), ""]
    ks = (1, 2, 3, 5, 10)
    rows = []
    for m in models:
        ev = pm[m]["explained_variance_clean"]
        for key, definition, used in (("cumulative", "predicted classes", (ev or {}).get("classes_used")),
                                      ("cumulative_notebook", "notebook (all 21, NaN as 0)", NUM_CLASSES)):
            cum = (ev or {}).get(key)
            rows.append([m, definition] + [f3(cum[k - 1]) if cum else "–" for k in ks]
                        + [str(used) if ev else "–"])
    out += ["## Cumulative explained variance of the clean class-mean logit matrix", "",
            f"From the {a['explained_variance_source']}. Rows of the PCA: the predicted classes' mean logit vectors "
            "(classes never predicted left out), or as the notebook did, all 21 with a never-predicted class's "
            "mean set to 0.", "",
            md_table(["model", "definition"] + [f"{k} comp." for k in ks] + ["rows"], rows), ""]
    out += calibration_markdown(a)
    out += readings_markdown(a)
    out += worst_case_markdown(a)
    if a["missing"]:
        out += ["## Missing", ""] + [f"- {x['message'][len('missing: '):]}" for x in a["missing"]] + [""]
    if a["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in a["notes"]] + [""]
    return "\n".join(out)


def print_summary(a):
    shown = {"model": "model", "clean mIoU": "clean", "mPC": "mPC", "mean sev. 0-5": "sev0-5", "rPC": "rPC",
             "mCD": "mCD", "mrCD": "mrCD", "END clean": "END", "Distance clean": "Distance",
             "Distance (pred.) clean": "Dist.pred", "Δ clean mIoU [95% CI]": "Δclean [95% CI]",
             "Δ mPC [95% CI]": "ΔmPC [95% CI]"}
    cols = [SUMMARY_HEADER.index(h) for h in shown]
    header = list(shown.values())
    rows = [[r[i] for i in cols] for r in summary_rows(a)]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for r in [header] + rows:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())
    print("(mIoU in %, Δ in percentage points vs the reference; * = incomplete; END/Distance on clean)")


def write_outputs(out, analysis, arrays, tables):
    """All three files to temporary names first, then renamed: a failure leaves the old ones intact."""
    prepare_output_folder(out)
    text = json.dumps(analysis, indent=1, allow_nan=False) + "\n"
    writers = {
        "analysis.json": lambda fh: fh.write(text.encode()),
        "tables.md": lambda fh: fh.write(tables.encode()),
        "analysis_arrays.npz": lambda fh: np.savez(fh, **arrays),
    }
    tmps, name = {}, None
    try:
        for name, write in writers.items():
            tmps[name] = os.path.join(out, f".{name}.tmp-{os.getpid()}")
            with open(tmps[name], "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
        for name, tmp in tmps.items():
            os.replace(tmp, os.path.join(out, name))
    except OSError as e:   # the disk full or read-only: one line naming the file (the old ones stay as they were)
        line = write_problem(e, os.path.join(out, name or ""))
        if line is None:
            raise
        raise UsageError(line) from None
    finally:
        for tmp in tmps.values():
            if os.path.exists(tmp):
                os.remove(tmp)


# ------------------------------------------------------------------------------------------------ main

def main(args):
    t0 = time.perf_counter()
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap {args.bootstrap}: must be 0 (off) or a positive number of resamples")
    args.out = args.out or args.results
    check_output_folder(args.out)
    with contextlib.ExitStack() as held:
        # One writer per folder: refused at once while a sweep (or another analysis) still writes to --out,
        # whose tables it would otherwise replace with ones made from a half-finished run. (A folder without a
        # lock file has had no writer yet: its lock is taken before writing, and no file is added before that.)
        locked = os.path.exists(os.path.join(args.out, ".lock"))
        if locked:
            held.enter_context(OutputLock(args.out, "analyze_logits.py"))
        return analyse_and_write(args, held, locked, t0)


def analyse_and_write(args, held, locked, t0):
    print(f"git commit: {git_commit()}\narguments: {json.dumps(vars(args), sort_keys=True)}", flush=True)
    analysis, arrays = analyse(args)
    for gap in analysis["missing"]:
        print(gap["message"])
    for m in analysis["models"]:
        mpc = analysis["per_model"][m]["mpc"]
        if mpc["n_conditions"] and not mpc["complete"]:
            print(f"{m}: aggregate over {mpc['n_conditions']} of {mpc['of']} conditions")
    for n in analysis["notes"]:
        print(f"note: {n}")
    print(f"explained variance from the {analysis['explained_variance_source']}")
    if not locked:   # not locked yet: created if need be, and held while written
        prepare_output_folder(args.out)
        held.enter_context(OutputLock(args.out, "analyze_logits.py"))
    write_outputs(args.out, analysis, arrays, tables_markdown(analysis))
    print_summary(analysis)
    print(f"wrote analysis.json, tables.md, analysis_arrays.npz to {args.out} ({time.perf_counter() - t0:.1f}s)")
    return 0


def get_args_parser():
    p = argparse.ArgumentParser(description="Robustness tables, CD/rCD, bootstrap intervals and logit structure "
                                            "from an evaluate_corruptions.py results folder.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--results", required=True,
                   help="the --out folder of evaluate_corruptions.py (metrics.jsonl, logits/, confusion/, run.json)")
    p.add_argument("--out", default=None,
                   help="folder for analysis.json, tables.md, analysis_arrays.npz; None means the --results folder")
    p.add_argument("--reference", default=None,
                   help="model name that CD/rCD and the bootstrap differences are relative to; None means "
                        "the model of kind 'baseline', else the first model")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples of the validation images (0 = no intervals); 1000 takes seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (recorded in the output)")
    p.add_argument("--pca-pass", default=None, metavar="DIR",
                   help="a clean evaluate_corruptions.py --protocol shortside --out folder (same checkpoints) that the "
                        "clean explained variance is computed from, as in the notebook; None means <results>/shortside "
                        "when it holds logits/, else the main sweep's clean condition; 'none' forces the latter")
    return p


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
