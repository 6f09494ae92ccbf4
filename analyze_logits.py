"""Robustness summary and logit-structure analysis of an evaluate_corruptions.py results folder.

    python analyze_logits.py --results results [--out results] [--reference baseline] \
        [--bootstrap 1000] [--seed 0] [--pca-pass results/shortside]

Reads what evaluate_corruptions.py wrote to --results (metrics.jsonl, logits/, confusion/, run.json) and computes,
per model, what docs/protocol.md defines (its sections Metrics and Logit structure):

* the mIoU aggregates: clean mIoU, mPC (the paper's headline: the mean over the 15 corruptions x severities 1..5),
  rPC, the mean over severities 0..5 (the notebook's results table), mIoU per corruption and per severity, CD /
  rCD and their means against the --reference model, the worst case per severity, each class's IoU clean and
  under corruption (common/analysis/robustness.py);
* END and both Distances, and the explained variance of the class-mean logit matrix per condition; the clean
  one, with the clean matrices for the figures, from the --pca-pass when there is one (structure.py). END and both
  Distances need class 0 = background: on a dataset without one they are undefined (null, with a note);
* calibration: ECE / NLL / Brier and every reading of docs/calibration.md (calibration_summary.py);
* paired bootstrap 95% intervals of each model minus the reference, on the same resampled images for every model
  and condition (bootstrap.py).

The classes (how many, their names and colours, whether class 0 is a background) are the results folder's: run.json's
"dataset" record (common/analysis/inputs.py ``results_dataset``), so VOC's 21 classes and Cityscapes' 19 or ADE20K's
150 go through the same code.

Partial results (fewer corruptions, severities or models) are analysed as far as they go: every gap is listed in
``missing`` and printed as one ``missing: ...`` line, and every aggregate says how many conditions it covers and
whether that is all of them (``complete``). Corruptions outside the paper's 15 (the held-out extras) appear per
corruption and per condition but never in an aggregate.

Writes to --out (default: the --results folder), all three atomically (temporary names, renamed only after
everything has been computed, so a failed run leaves earlier outputs untouched): analysis.json (numbers; mIoU as
fractions in [0, 1], undefined values null), tables.md (markdown; mIoU in percent with 1 decimal, like the paper's
42.1) and analysis_arrays.npz (arrays for make_figures.py). Every key of the first and the last is in
docs/outputs.md.
"""
import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np

from common.analysis.bootstrap import miou_bootstrap, worst_case_intervals
from common.analysis.calibration_summary import calibration_analysis, readings_analysis
from common.analysis.conditions import SEVERITIES, Findings
from common.analysis.inputs import (MAIN_SWEEP, miou_by_model, missing_rows, pca_pass_trackers, per_image_counts,
                                    read_sweep, resolve_pca_pass, source_of)
from common.analysis.robustness import miou_summary, per_class_iou, preset_aggregate, worst_case
from common.analysis.structure import clean_structure, logit_summary, per_condition_structure
from common.analysis.tables import print_summary, tables_markdown
from common.cli import UsageError, run_cli, write_problem
from common.corruptions import CORRUPTIONS
from common.datasets import dataset_record
from common.folders import OutputLock, check_output_folder, file_sha256, git_commit, prepare_output_folder

SCHEMA = "analyze_logits/2"


def per_model_summaries(sweep, miou, per_condition, clean_trackers, pca):
    """({model: analysis.json's per_model entry} before calibration, readings and the worst case; Findings with
    their notes and arrays). ``pca``: (the --pca-pass trackers or None, the explained variance's source)."""
    pca_trackers, source = pca
    per_model, found = {}, Findings()
    for m in sweep.models:
        summary, notes = miou_summary(miou[m], miou[sweep.reference], m)
        tracker = (clean_trackers if pca_trackers is None else pca_trackers).get(m)
        fields, arrays = clean_structure(m, tracker, source, pca_trackers is not None, m in clean_trackers)
        found.add(Findings(notes=notes, arrays=arrays))
        summary["preset"] = preset_aggregate(miou[m], (sweep.run or {}).get("preset"))
        per_model[m] = {"kind": sweep.kinds.get(m), **summary, **logit_summary(per_condition[m]), **fields,
                        "per_class_iou": per_class_iou(sweep.table, m, sweep.dataset.num_classes),
                        "per_condition": per_condition[m]}
    return per_model, found


def analyse(args):
    """Everything but the writing: returns (analysis dict for analysis.json, arrays for the npz)."""
    metrics = os.path.join(args.results, "metrics.jsonl")
    metrics_sha256 = file_sha256(metrics) if os.path.isfile(metrics) else None   # before reading: never newer
    sweep, found = read_sweep(args.results, args.reference)
    miou, miou_found = miou_by_model(sweep)
    found.add(miou_found).add(missing_rows(sweep))
    pca_dir = resolve_pca_pass(args.pca_pass, args.results)
    pca_trackers, ev_source = None, MAIN_SWEEP
    if pca_dir is not None:
        pca_trackers, ev_source, pca_found = pca_pass_trackers(pca_dir, sweep)
        found.add(pca_found)
    found.arrays.update(models=np.array(sweep.models), classes=np.array(sweep.dataset.classes),
                        explained_variance_source=np.array(ev_source))
    per_condition, clean_trackers, structure_found = per_condition_structure(sweep, sweep.conditions())
    counts, image_order, counts_found = per_image_counts(sweep)
    per_model, summaries_found = per_model_summaries(sweep, miou, per_condition, clean_trackers,
                                                     (pca_trackers, ev_source))
    found.add(structure_found).add(counts_found).add(summaries_found)

    # The bootstrap: the same resampled images (seed, image order) for mIoU, calibration and the worst case.
    ids, reference = image_order[0], sweep.reference
    boot, notes = miou_bootstrap(sweep.models, reference, counts, miou, ids, args.bootstrap, args.seed)
    calibration, boot["calibration"], calibration_found = calibration_analysis(sweep, image_order, args.bootstrap,
                                                                               args.seed)
    readings, boot["readings"], readings_found = readings_analysis(sweep, image_order, args.bootstrap, args.seed)
    boot["worst_case"] = worst_case_intervals(sweep.models, reference, counts, ids, args.bootstrap, args.seed)
    found.add(Findings(notes=notes)).add(calibration_found).add(readings_found)
    for m in sweep.models:
        per_model[m].update(calibration=calibration[m], **readings[m], worst_case=worst_case(miou[m]))
    return {
        "schema": SCHEMA, "args": vars(args), "git_commit": git_commit(),
        "results": os.path.abspath(args.results), "source": source_of(sweep.run, metrics_sha256),
        "pca_pass": None if pca_dir is None else os.path.abspath(pca_dir), "explained_variance_source": ev_source,
        "dataset": dataset_record(sweep.dataset), "reference": reference, "models": sweep.models,
        "benchmark_corruptions": list(CORRUPTIONS), "severities": list(SEVERITIES),
        "units": "mIoU, mPC, differences: fractions in [0, 1]; tables.md shows mIoU in percent",
        "missing": found.missing, "notes": found.notes, "per_model": per_model, "bootstrap": boot,
    }, found.arrays


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
