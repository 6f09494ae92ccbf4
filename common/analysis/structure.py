"""Logit structure (docs/protocol.md, Logit structure): per condition the row of metrics.jsonl with the explained
variance of the class-mean logit matrix recomputed from logits/, END and both Distances aggregated over the
conditions, and the clean matrices (counts, class means, distances, correlations) for the figures.

Explained variance: PCA of the K x K class-mean matrix (K classes of the results folder, 21 on VOC), rows =
predicted classes as samples, columns = the K logits, centred, via numpy's SVD; classes never predicted have no
mean (NaN rows) and are dropped. Beside it the notebook's definition: sklearn PCA(K) on all K rows with NaN means
set to 0. The clean ones come from the --pca-pass (the notebook's FixScaleResize pass, cells 44-45) where it has
the model. END and both Distances need class 0 = background: on a dataset without one they are null in
metrics.jsonl and stay undefined here (one note says so)."""
import math
import os

import numpy as np

from common.results import CLEAN, finite_or_none

from .conditions import BENCHMARK, Findings, aggregate_entry, cond_key, finite_list, mean_over
from .inputs import MAIN_SWEEP, absent_files, read_tracker, undefined_without_background


def explained_variance(mean, notebook=False):
    """Cumulative explained-variance ratio (K,) of the PCA of a class-mean matrix, and the rows used.

    Rows are samples (predicted classes), columns variables (logits), centred per column. NaN rows
    (classes never predicted) are dropped, or with ``notebook`` set to 0 and kept, as the companion
    notebook's sklearn PCA(K) on the NaN-to-0 matrix did. The squared singular values of the centred
    matrix are the component variances (times a constant that cancels in the ratio). Fewer than 2 rows, or
    rows that are all equal: NaN (undefined).
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
    out[cum.size:] = 1.0    # components beyond min(rows, K) have zero variance
    return out, int(rows.shape[0])


def both_explained_variances(class_means):
    """(cumulative ratio, rows used, the notebook's cumulative ratio) of one class-mean matrix."""
    ev, used = explained_variance(class_means)
    ev_notebook, _ = explained_variance(class_means, notebook=True)
    return ev, used, ev_notebook


def condition_entry(row):
    """The per_condition entry of one metrics.jsonl row; the explained variance comes from logits/."""
    return {"miou": finite_or_none(row["miou"]), "pixel_acc": finite_or_none(row.get("pixel_acc")),
            "end": finite_or_none(row.get("end")), "distance": finite_or_none(row.get("distance")),
            "distance_predicted": finite_or_none(row.get("distance_predicted")),
            "explained_variance": None, "classes_used": None, "explained_variance_notebook": None}


def clean_matrices(tracker, m):
    """The npz arrays of one model's clean logit structure: counts, class means, distances, both correlations."""
    return {f"{m}/clean/count": tracker.count.copy(), f"{m}/clean/mean": tracker.mean(),
            f"{m}/clean/distance": tracker.distance_matrix(), f"{m}/clean/correlation": tracker.correlation(),
            f"{m}/clean/correlation_notebook": tracker.correlation_notebook()}


def condition_structure(tracker, m, c, s, entry, has_background=True):
    """(the explained-variance fields of one condition's per_condition ``entry``, its npz arrays, and the
    (field, metrics.jsonl value, recomputed value) of each Distance the row disagrees on; the recomputation takes
    class 0 as the background, so without one nothing is compared)."""
    class_means = tracker.mean()
    ev, used, ev_notebook = both_explained_variances(class_means)
    fields = {"explained_variance": finite_list(ev), "classes_used": used,
              "explained_variance_notebook": finite_list(ev_notebook)}
    if c == CLEAN:
        arrays = clean_matrices(tracker, m)
    else:
        arrays = {f"{m}/{c}/{s}/mean": class_means, f"{m}/{c}/{s}/explained_variance": ev,
                  f"{m}/{c}/{s}/explained_variance_notebook": ev_notebook}
    recomputed = ((("distance", tracker.distance_notebook()), ("distance_predicted", tracker.distance_margin()))
                  if has_background else ())
    disagree = [(key, entry[key], value) for key, value in recomputed
                if entry[key] is not None and finite_or_none(value) is not None
                and not math.isclose(entry[key], value, rel_tol=1e-9, abs_tol=1e-12)]
    return fields, arrays, disagree


def per_condition_structure(sweep, conditions):
    """Per model and condition with a metrics row, its per_condition entry with the logit structure of its
    logits/ file. Returns (per_condition {model: {"c/s": entry}}, {model: clean LogitTracker}, Findings: the npz
    arrays, a note per Distance that logits/ recompute otherwise, the absent logits/ files)."""
    per_condition, clean_trackers, found = {m: {} for m in sweep.models}, {}, Findings()
    k, has_background = sweep.dataset.num_classes, sweep.dataset.has_background
    if not has_background:
        found.notes.append(f"END and both Distances: {undefined_without_background(sweep.dataset)} (class 0 is "
                           f"{sweep.dataset.classes[0]!r})")
    disagree, lacking = {}, {}             # (model, row field) -> [(condition, row, recomputed)]; model -> [c/s]
    for m in sweep.models:
        for c, s in conditions:
            row = sweep.table.get((m, c, s))
            if row is None:
                continue
            entry = per_condition[m][cond_key(c, s)] = condition_entry(row)
            path = os.path.join(sweep.folder, "logits", m, f"{c}_{s}.npz")
            if not os.path.exists(path):
                lacking.setdefault(m, []).append(cond_key(c, s))
                continue
            tracker = read_tracker(path, k)
            if c == CLEAN:
                clean_trackers[m] = tracker
            fields, arrays, differ = condition_structure(tracker, m, c, s, entry, has_background)
            entry.update(fields)
            found.arrays.update(arrays)
            for key, row_value, value in differ:
                disagree.setdefault((m, key), []).append((cond_key(c, s), row_value, value))
    for (m, key), where in disagree.items():
        cs, row_value, value = where[0]
        found.notes.append(f"{m}: {key} in metrics.jsonl differs from the one recomputed from logits/ in "
                           f"{len(where)} condition(s) (first {cs}: {row_value:.6g} against {value:.6g}); rerun "
                           f"evaluate_corruptions.py for them")
    found.missing += [absent_files("logits", m, names, "no explained variance or logit matrices there")
                      for m, names in lacking.items()]
    return per_condition, clean_trackers, found


def logit_summary(per_condition):
    """END and both Distances of one model: clean, and the mean over the benchmark conditions."""
    out = {}
    for key in ("end", "distance", "distance_predicted"):
        corrupted = mean_over([per_condition[cond_key(*cs)][key] if cond_key(*cs) in per_condition else None
                               for cs in BENCHMARK], len(BENCHMARK))
        out[key] = {"clean": per_condition.get(cond_key(CLEAN, 0), {}).get(key),
                    "corrupted": aggregate_entry(corrupted)}
    return out


def clean_structure(m, tracker, source, from_pass, has_main_clean):
    """(explained_variance_clean and clean_structure_source of one model, their npz arrays).

    ``tracker``: the model's clean LogitTracker from ``source`` (the --pca-pass, or the main sweep), or None.
    The pass's clean matrices replace the main sweep's, as the notebook drew its figures from that pass."""
    if tracker is None:
        return {"explained_variance_clean": None,
                "clean_structure_source": MAIN_SWEEP if has_main_clean else None}, {}
    ev, used, ev_notebook = both_explained_variances(tracker.mean())
    arrays = {f"{m}/clean/explained_variance": ev, f"{m}/clean/explained_variance_notebook": ev_notebook,
              f"{m}/clean/explained_variance_count": tracker.count.copy()}
    fields = {"explained_variance_clean": {"cumulative": finite_list(ev), "classes_used": used,
                                           "cumulative_notebook": finite_list(ev_notebook), "source": source},
              "clean_structure_source": MAIN_SWEEP if has_main_clean else None}
    if from_pass:
        arrays.update(clean_matrices(tracker, m))
        fields["clean_structure_source"] = source
    return fields, arrays
