"""Reading an evaluate_corruptions.py results folder for the analysis: metrics.jsonl and run.json (checked
against each other), the classes of the folder (run.json's "dataset", ``results_dataset``: make_figures.py reads
them the same way), the clean pass of --pca-pass, and the logits/ and confusion/ files of one condition.

Every file must be in the format evaluate_corruptions.py writes today (docs/outputs.md); a damaged file or one
from an earlier format is a UsageError naming it and the command that rewrites it."""
import os
from dataclasses import dataclass

import numpy as np

from common import results as rf
from common.calibration import BINS, FINE_KEYS, ROW_KEYS
from common.cli import UsageError
from common.datasets import spec_from_record
from common.corruptions import ALL_CORRUPTIONS, CORRUPTIONS
from common.logits import LogitTracker
from common.results import CLEAN, finite_or_none

from .conditions import BENCHMARK, SEVERITIES, Findings, cond_key, severity_ranges, shown_list

# Fields every row of today's evaluate_corruptions.py carries beyond those common/results.py checks.
ROW_FIELDS = ("iou", "distance_predicted", "ece", "nll", "brier", "calibration")
MAIN_SWEEP = "clean condition of the main sweep"


@dataclass
class Sweep:
    """The rows of one results folder: ``table`` {(model, corruption, severity): row}, ``run`` (run.json or None),
    ``models`` (run.json's order, then any only in metrics.jsonl), ``kinds`` {model: kind}, ``reference``,
    ``dataset`` (the DatasetSpec of its classes, ``results_dataset``)."""
    folder: str
    table: dict
    run: dict
    models: list
    kinds: dict
    reference: str
    dataset: object

    def conditions(self):
        """Clean, the paper's 75, then the held-out corruptions' conditions that have rows."""
        extras = [(c, s) for c in ALL_CORRUPTIONS[len(CORRUPTIONS):] for s in SEVERITIES
                  if any(k[1:] == (c, s) for k in self.table)]
        return [(CLEAN, 0)] + BENCHMARK + extras


def rerun_hint(path):
    """How to rewrite a damaged logits/ or confusion/ file: rerun the sweep of the folder it lies in."""
    return rf.sweep_rerun_hint(os.path.dirname(os.path.dirname(os.path.dirname(path))))


def checkpoint_hashes(run):
    """{model name: checkpoint sha256} of a run.json."""
    return {m.get("name"): m.get("sha256") for m in run.get("models", []) or [] if isinstance(m, dict)}


def results_dataset(folder, run):
    """The classes of a results folder: the DatasetSpec (names, palette, background) of run.json's "dataset"
    record (common.datasets.dataset_record), which every evaluate_corruptions.py run writes. ``run``: the folder's
    run.json as read (None when absent). No record, or one whose names and colours disagree, is a UsageError:
    nothing else says how many classes the numbers are over."""
    path = os.path.join(folder, "run.json")
    fix = "rerun evaluate_corruptions.py into a new --out (its run.json records the classes)"
    if run is None:
        raise UsageError(f"{path}: not found, so the classes of the results are unknown; {fix}")
    record = run.get("dataset")
    if not isinstance(record, dict):
        raise UsageError(f"{path}: no dataset record (an earlier evaluate_corruptions.py's format); {fix}")
    try:
        spec = spec_from_record(record)
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path}: damaged dataset record ({type(e).__name__}: {str(e)[:60]}); {fix}") from None
    if spec.num_classes < 2 or spec.palette.shape != (spec.num_classes, 3):
        raise UsageError(f"{path}: dataset record with {spec.num_classes} classes and {len(spec.palette)} "
                         f"palette colours (damaged); {fix}")
    return spec


def undefined_without_background(spec):
    """The note that says why an analysis that needs class 0 = background (END, the notebook's Distance, the
    IBE/SCrIBE comparisons) is absent."""
    return f"undefined: {spec.name} has no background class"


def check_iou_lengths(rows, k, metrics_path, run_path):
    """Refuses rows whose per-class IoU list is not k numbers or nulls, k the classes run.json records."""
    for r in rows:
        iou, where = r["iou"], f"{metrics_path}: the row for {r['model']} {cond_key(r['corruption'], r['severity'])}"
        if not isinstance(iou, list) or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                                                for v in iou):
            raise UsageError(f"{where} has iou {rf.clipped_json(iou)}, not a list of numbers or nulls (damaged); "
                             f"{rf.sweep_rerun_hint(os.path.dirname(metrics_path))}")
        if len(iou) != k:
            raise UsageError(f"{where} has {len(iou)} per-class IoUs, {run_path} records {k} classes; rerun "
                             f"evaluate_corruptions.py into a new --out")


def check_row_fields(rows, metrics_path):
    """Refuses rows without the fields of today's format (written by an earlier evaluate_corruptions.py)."""
    for r in rows:
        lacking = [k for k in ROW_FIELDS if k not in r]
        if lacking:
            raise UsageError(f"{metrics_path}: the row for {r['model']} {cond_key(r['corruption'], r['severity'])} has "
                             f"no {', '.join(lacking)} field (an earlier evaluate_corruptions.py's format); rerun "
                             f"evaluate_corruptions.py into a new --out")


def model_order(rows, run):
    """(models in run.json order then any only in metrics.jsonl, {model: kind})."""
    models, kinds = [], {}
    for m in (run or {}).get("models", []) or []:
        if isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"] not in models:
            models.append(m["name"])
            kinds[m["name"]] = m.get("kind")
    for r in rows:
        if r["model"] not in models:
            models.append(r["model"])
        kinds[r["model"]] = r.get("kind") or kinds.get(r["model"])
    return models, kinds


def read_sweep(results, reference):
    """metrics.jsonl and run.json of the sweep, checked against each other: (Sweep, Findings with its notes)."""
    if not os.path.isdir(results):
        raise UsageError(f"--results {results}: no such folder (give an evaluate_corruptions.py --out folder)")
    metrics_path = os.path.join(results, "metrics.jsonl")
    # Strictly: here a bad line means the numbers cannot be trusted (the sweep itself recomputes such rows).
    rows = rf.read_metrics(metrics_path)
    check_row_fields(rows, metrics_path)
    run_path = os.path.join(results, "run.json")
    run = rf.read_run(run_path)
    rf.check_rows_match_run(rows, run, metrics_path, run_path)
    dataset = results_dataset(results, run)
    check_iou_lengths(rows, dataset.num_classes, metrics_path, run_path)
    found = Findings()
    models, kinds = model_order(rows, run)
    table = {(r["model"], r["corruption"], r["severity"]): r for r in rows}
    with_rows = [m for m in models if any(k[0] == m for k in table)]
    if reference is not None and reference not in with_rows:
        raise UsageError(f"--reference {reference}: no such model in {metrics_path} "
                         f"(models: {', '.join(with_rows)})")
    if reference is None:
        reference = next((m for m in with_rows if kinds.get(m) == "baseline"), with_rows[0])
    return Sweep(results, table, run, models, kinds, reference, dataset), found


def miou_by_model(sweep):
    """({model: {(corruption, severity): mIoU}}, None where the row's mIoU is undefined; Findings with a note
    for each such row)."""
    miou, found = {m: {} for m in sweep.models}, Findings()
    for (m, c, s), r in sweep.table.items():
        miou[m][c, s] = finite_or_none(r["miou"])
        if r["miou"] is None:
            found.notes.append(f"{m} {cond_key(c, s)}: mIoU is null in metrics.jsonl (no pixel scored); left out")
    return miou, found


def missing_rows(sweep):
    """Findings with the gaps in metrics.jsonl against clean + 15 x 5, one entry per (corruption, set of
    severities), grouping models that lack the same severities."""
    found, table = Findings(), sweep.table
    for m in sweep.models:
        if not any(k[0] == m for k in table):
            found.missing.append({"what": "metrics", "models": [m],
                                  "conditions": [cond_key(c, s) for c, s in [(CLEAN, 0)] + BENCHMARK],
                                  "message": f"missing: {m} has no rows at all"})
    present = [m for m in sweep.models if any(k[0] == m for k in table)]
    for c in (CLEAN,) + CORRUPTIONS:
        severities = (0,) if c == CLEAN else SEVERITIES
        groups = {}
        for m in present:
            lack = tuple(s for s in severities if (m, c, s) not in table)
            if lack:
                groups.setdefault(lack, []).append(m)
        for lack, ms in groups.items():
            verb = "has" if len(ms) == 1 else "have"
            message = f"missing: {', '.join(ms)} {verb} no rows for {c}/{severity_ranges(lack)}"
            found.missing.append({"what": "metrics", "models": ms, "conditions": [cond_key(c, s) for s in lack],
                                  "message": message})
    return found


def source_of(run, metrics_sha256=None):
    """analysis.json's ``source``: what run.json says about the sweep, or None without one; and the sha256 of the
    metrics.jsonl the tables come from (make_figures.py refuses tables older than the folder's metrics.jsonl)."""
    if run is None:
        return None
    return {"protocol": run.get("protocol"), "size": run.get("size"), "images": run.get("images"),
            "corruption_code": run.get("corruption_code"), "metrics_sha256": metrics_sha256,
            "models": [{"name": m.get("name"), "kind": m.get("kind"), "checkpoint_sha256": m.get("sha256")}
                       for m in run.get("models", []) if isinstance(m, dict)]}


# ------------------------------------------------------------------------------------------- NPZ files

def sized(spec, k):
    """common/results.py's NPZ ``spec`` {key: (dtype kinds, shape)} with its class dimension (``rf.K``, a named
    length that only makes the arrays agree with each other) set to k, the classes run.json records."""
    return {key: (kinds, None if shape is None else tuple(k if d == rf.K else d for d in shape))
            for key, (kinds, shape) in spec.items()}


def read_tracker(path, k):
    """The LogitTracker state of one logits/<model>/<condition>.npz file, checked (k classes: count (k,), sum
    (k, k), sq (k, k, k); float64, finite, counts >= 0)."""
    hint = rerun_hint(path)
    z = rf.load_npz(path, sized({key: rf.LOGITS_SPEC[key] for key in ("count", "sum", "sq")}, k), hint)
    if (z["count"] < 0).any():
        raise UsageError(f"{path}: negative pixel counts (damaged); {hint}")
    return LogitTracker.from_state_dict(z)


def read_calibration(path, prefix, fine):
    """(per-image calibration tables, image_ids) of one confusion/<model>/<condition>.npz in the reading whose
    arrays start with ``prefix`` (common/calibration.py ``prefix_of``), with the fine log-odds bins when ``fine``.
    A file without them (an earlier format) or with misshapen ones is a UsageError."""
    keys = [prefix + k for k in ROW_KEYS + (FINE_KEYS if fine else ())]
    z = rf.read_confusion(path, rerun_hint(path), keys + ["image_ids"])
    absent = [k for k in keys if k not in z]
    if absent:
        raise UsageError(f"{path}: no {absent[0]} array (an earlier evaluate_corruptions.py's format, without that "
                         f"calibration reading); rerun evaluate_corruptions.py into a new --out")
    tables = {k[len(prefix):]: np.asarray(z[k]) for k in keys}
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


def image_counts(path, ids_ref, ref_path, k):
    """(image_ids, per-image TP, TP+FP+FN) of one confusion/ file of k classes, in the order of ids_ref (None:
    its own)."""
    hint = rerun_hint(path)
    z = rf.load_npz(path, sized({key: rf.CONFUSION_SPEC[key] for key in ("image_ids", "tp", "fp", "fn")}, k), hint)
    if any((z[key] < 0).any() for key in ("tp", "fp", "fn")):
        raise UsageError(f"{path}: negative counts in tp/fp/fn (damaged); {hint}")
    ids = np.asarray(z["image_ids"]).astype(str)
    if ids_ref is None:
        ids_ref, ref_path = ids, path
    order = align(ids, ids_ref, path, ref_path)
    tp, fp, fn = (np.asarray(z[k])[order] for k in ("tp", "fp", "fn"))
    if not (tp.shape == fp.shape == fn.shape == (len(ids_ref), k)):
        raise UsageError(f"{path}: tp/fp/fn shapes {tp.shape}, {fp.shape}, {fn.shape}; expected "
                         f"({len(ids_ref)}, {k})")
    return ids, tp, tp + fp + fn


def absent_files(what, m, names, effect):
    """A ``missing`` entry for the logits/ or confusion/ files of model m absent for the conditions ``names``."""
    return {"what": what, "models": [m], "conditions": names,
            "message": f"missing: {what}/{m}/ files for {len(names)} condition(s) with metrics rows "
                       f"({shown_list(names)}); {effect}"}


def per_image_counts(sweep):
    """The bootstrap's data: (counts {model: {(c, s): (tp, union)}} of clean and the 15 corruptions' conditions
    with metrics rows, all on one image order; that order as (image ids, the file they came from), (None, None)
    without confusion/ files; Findings with the absent confusion/ files)."""
    counts, lacking, found = {m: {} for m in sweep.models}, {}, Findings()
    ids_ref = ids_path = None
    for m in sweep.models:
        for c, s in [(CLEAN, 0)] + BENCHMARK:       # held-out extras never enter the bootstrap
            if (m, c, s) not in sweep.table:
                continue
            path = os.path.join(sweep.folder, "confusion", m, f"{c}_{s}.npz")
            if not os.path.exists(path):
                lacking.setdefault(m, []).append(cond_key(c, s))
                continue
            ids, tp, union = image_counts(path, ids_ref, ids_path, sweep.dataset.num_classes)
            if ids_ref is None:
                ids_ref, ids_path = ids, path
            counts[m][c, s] = (tp, union)
    found.missing += [absent_files("confusion", m, names, "those conditions are left out of the bootstrap")
                      for m, names in lacking.items()]
    return counts, (ids_ref, ids_path), found


# ------------------------------------------------------------------------------------- the --pca-pass

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


def checked_pca_run(folder, sweep):
    """The --pca-pass run.json, refused when it or the main one is absent, or when it gives a model that both
    list another checkpoint_sha256: the explained variance only means something for the evaluated checkpoints."""
    run_path = os.path.join(folder, "run.json")
    pass_run = rf.read_run(run_path)
    if pass_run is None:
        raise UsageError(f"{run_path}: not found, so the checkpoints of --pca-pass {folder} cannot be checked "
                         f"(give --pca-pass none to use the main sweep's clean condition)")
    main_path = os.path.join(sweep.folder, "run.json")
    if sweep.run is None:
        raise UsageError(f"{main_path}: not found, so the checkpoints of --pca-pass {folder} cannot be checked "
                         f"against it (give --pca-pass none)")
    main_sha, pass_sha = checkpoint_hashes(sweep.run), checkpoint_hashes(pass_run)
    differ = [n for n in pass_sha if n in main_sha and (pass_sha[n] is None or pass_sha[n] != main_sha[n])]
    if differ:
        raise UsageError(f"--pca-pass {folder}: its run.json gives {', '.join(map(str, differ))} another "
                         f"checkpoint_sha256 than {main_path}; rerun that pass with the evaluated checkpoints")
    return pass_run


def pca_pass_trackers(folder, sweep):
    """({model: LogitTracker} of the pass's clean condition, its source text, Findings).

    A model the pass lacks (not in its run.json or no clean_0.npz) gets a ``pca_logits`` entry in ``missing`` and
    no explained variance, rather than one from the main sweep's other protocol under the same heading."""
    pass_run, found = checked_pca_run(folder, sweep), Findings()
    if results_dataset(folder, pass_run).classes != sweep.dataset.classes:
        raise UsageError(f"--pca-pass {folder}: its run.json records other classes ({pass_run['dataset']['name']}) "
                         f"than {os.path.join(sweep.folder, 'run.json')} ({sweep.dataset.name}); give the clean pass "
                         f"of the same models on the same dataset, or --pca-pass none")
    if pass_run.get("protocol") != "shortside":
        found.notes.append(f"--pca-pass {folder} ran protocol {pass_run.get('protocol')}, not shortside (the "
                           f"notebook's FixScaleResize pass for the PCA figure)")
    pass_sha, trackers, lacking = checkpoint_hashes(pass_run), {}, []
    for m in sweep.models:
        path = os.path.join(folder, "logits", m, f"{CLEAN}_0.npz")
        if m in pass_sha and os.path.exists(path):
            trackers[m] = read_tracker(path, sweep.dataset.num_classes)
        else:
            lacking.append(m)
    if lacking:
        found.missing.append({"what": "pca_logits", "models": lacking, "conditions": [cond_key(CLEAN, 0)],
                              "message": f"missing: {', '.join(lacking)} not in {os.path.join(folder, 'run.json')} "
                                         f"or without logits/<model>/{CLEAN}_0.npz there; no clean explained variance "
                                         f"for {'it' if len(lacking) == 1 else 'them'}"})
    return trackers, f"{pass_run.get('protocol')} pass at {os.path.abspath(folder)}", found
