"""The --out folder of a sweep: one run per folder (its run.json's identity), resumed per condition, and
run.json + metrics.jsonl written whole after each condition (common/results.py, common/folders.py)."""
import json
import os
import sys

from common import results
from common.cli import UsageError
from common.folders import lock_folder, replace_folder
from common.results import read_metrics


def save_results(folder, fresh, run, rows):
    """run.json and the whole metrics.jsonl, after a condition's NPZ files. run.json goes with the first result,
    so a run that fails before any leaves nothing behind; under --overwrite (``fresh``) that first result is
    when the new folder takes the old one's place."""
    results.write_run(folder, run)
    results.write_metrics(folder, rows)
    if fresh:
        fresh.commit()


AFRESH = "use another --out, or --overwrite to start it afresh (the old folder is then moved aside, untouched)"


def check_same_run(out, run):
    """Refuse an --out that holds another run, or results that no readable run.json describes.

    Returns the folder's run.json (None when it has none yet)."""
    run_path = os.path.join(out, "run.json")
    old = results.read_run(run_path, hint=f"it says which run made the results beside it; {AFRESH}")
    if old is None:
        if results.has_results(out):
            raise UsageError(f"{out} holds results but no run.json, so nothing says which run made them; {AFRESH}")
        return None
    results.require_identity(old, run_path, AFRESH)
    diff = results.first_difference(old, run)
    if diff is not None:
        raise UsageError(f"{run_path}: this folder holds another run, {results.describe(diff)}; {AFRESH}")
    return old


def open_results(args, held, run):
    """Rank 0 takes --out: (``fresh``, the rows already there). With --overwrite and anything in the folder, the
    new run is written beside it (``fresh.path``) and takes its place at the first finished condition; otherwise
    the folder must hold this run, or nothing yet (``fresh`` None)."""
    lock_folder(args.out, held, "evaluate_corruptions.py")
    if args.save_predictions:   # two sweeps writing PNGs under one display name there would mix them
        lock_folder(args.save_predictions, held, "evaluate_corruptions.py --save-predictions",
                     flag="--save-predictions")
    fresh = replace_folder(args.out, held, "evaluate_corruptions.py") if args.overwrite else None
    if fresh:
        return fresh, []
    check_same_run(args.out, run)
    rows = read_metrics(os.path.join(args.out, "metrics.jsonl"), damaged="drop")
    results.check_rows_match_run(rows, json.loads(json.dumps(run)), os.path.join(args.out, "metrics.jsonl"),
                                 os.path.join(args.out, "run.json"),
                                 hint="the folder mixes results of two runs; use another --out, or --overwrite to "
                                     "start it afresh")
    return None, rows


def conditions_to_do(out, conditions, infos, rows):
    """Resume: (the conditions still to compute, the rows of the others). A condition is done when every model
    has its row and its two NPZ files, intact."""
    have = {(r["model"], r["corruption"], r["severity"]) for r in rows}

    def done(c, s):
        for m in (info["name"] for info in infos):
            if (m, c, s) not in have:
                return False
            problem = results.condition_problem(out, m, c, s)
            if problem is not None:
                print(f"warning: {problem}; {c}/{s} is computed again", file=sys.stderr)
                return False
        return True

    todo = [cs for cs in conditions if not done(*cs)]
    return todo, [r for r in rows if (r["corruption"], r["severity"]) not in set(todo)]
