"""Shards of one sweep (``--shard K/N``, ``--shard auto`` in a SLURM job array) and ``--merge``, which adds
their folders into one result, the same as a single run's (docs/outputs.md)."""
import os

import numpy as np

from common import distributed, results
from common.cli import UsageError
from common.folders import replace_folder
from common.results import read_metrics
from common.sweep.condition_stats import ConditionStats, combine, group_metrics, metrics_row, write_condition
from common.sweep.run_folder import check_same_run, save_results


def parse_shard(spec):
    if spec == "auto":   # inside a SLURM job array: this task's place in it (common/distributed.py)
        return distributed.slurm_shard()
    try:
        k, n = (int(x) for x in spec.split("/"))
    except (ValueError, AttributeError):
        raise UsageError(f"--shard {spec!r}: expected K/N with 0 <= K < N, e.g. 0/4, or auto in a SLURM "
                         f"array") from None
    if not 0 <= k < n:
        raise UsageError(f"--shard {spec}: expected K/N with 0 <= K < N, e.g. 0/4")
    return k, n


def shard_rerun_hint(folder) -> str:
    return f"rerun that shard (evaluate_corruptions.py --shard K/N with its arguments and --out {folder})"


def read_shards(folders):
    """[(folder, run.json, rows)] of the --merge folders, after checking they are the shards of one sweep:
    the same identity but for the images, each K/N once, with one N, all N present."""
    shards = []
    for d in folders:
        path = os.path.join(d, "run.json")
        hint = shard_rerun_hint(d)
        run = results.read_run(path, hint=hint)
        if run is None:
            raise UsageError(f"--merge {d}: no run.json; is it an evaluate_corruptions.py --out folder?")
        results.require_identity(run, path, hint)
        rows = read_metrics(os.path.join(d, "metrics.jsonl"), hint=results.sweep_rerun_hint(d))
        results.check_rows_match_run(rows, run, os.path.join(d, "metrics.jsonl"), path, hint=hint)
        if not isinstance(run.get("shard"), str):
            raise UsageError(f"--merge {d}: not a shard (its run.json has no --shard K/N); merge the folders of "
                             f"one sweep run with --shard 0/N ... N-1/N")
        shards.append((d, run, rows, parse_shard(run["shard"])))
    d0, base, _, (k0, n0) = shards[0]
    seen = {}
    for d, run, _, (k, n) in shards:
        diff = results.first_difference(base, run, skip=("images", "image_ids_sha256", "shard"))
        if diff is not None:
            raise UsageError(f"--merge {d}: a shard of another run than {d0}: "
                             f"{results.describe(diff, f'{d0} was made with', f'{d} with')}")
        if n != n0:
            raise UsageError(f"--merge {d}: shard {k}/{n}, but {d0} is shard {k0}/{n0}; merge the shards of one sweep")
        if k in seen:
            raise UsageError(f"--merge {d}: shard {k}/{n} again (also {seen[k]}); give each shard once")
        seen[k] = d
    lacking = [f"{k}/{n0}" for k in range(n0) if k not in seen]
    if lacking:
        raise UsageError(f"--merge: shard(s) {', '.join(lacking)} missing; give all {n0} shard folders")
    return [(d, run, rows) for d, run, rows, _ in shards]


def merge(args, held):
    """Add shard folders: confusions, per-image counts and logit moments are sums, so this is exact."""
    runs = read_shards(args.merge)
    base = runs[0][1]
    conds = sorted({(row["corruption"], row["severity"]) for row in runs[0][2]})
    args.protocol, args.size, args.shard = base["protocol"], base["size"] or args.size, None

    parts = {}   # (model, condition, shard folder) -> (logits, confusion), read and checked before any write
    for c, s in conds:
        for info in base["models"]:
            for d, _, rws in runs:
                if not any((x["model"], x["corruption"], x["severity"]) == (info["name"], c, s) for x in rws):
                    raise UsageError(f"--merge {d}: no result for {info['name']} {c}/{s}; finish that shard first")
                parts[info["name"], (c, s), d] = (
                    results.read_logits(results.logits_path(d, info["name"], c, s), shard_rerun_hint(d)),
                    results.read_confusion(results.confusion_path(d, info["name"], c, s), shard_rerun_hint(d)))
    first = (base["models"][0]["name"], conds[0]) if base["models"] and conds else None
    all_ids = [i for d, _, _ in runs for i in parts[first + (d,)][1]["image_ids"]] if first else []
    merged = dict(base, images=sum(r["images"] for _, r, _ in runs), shard=None,
                  image_ids_sha256=results.ids_sha256(all_ids), merged_from=args.merge)
    fresh = replace_folder(args.out, held, "evaluate_corruptions.py --merge") if args.overwrite else None
    if fresh is None:
        check_same_run(args.out, merged)
    folder = fresh.path if fresh else args.out

    out_rows = []
    for c, s in conds:
        for info in base["models"]:
            name = info["name"]
            pieces, ids, groups, secs, n = [], [], [], 0.0, 0
            for d, _, rws in runs:
                row = [x for x in rws if (x["model"], x["corruption"], x["severity"]) == (name, c, s)]
                lg, cf = parts[name, (c, s), d]
                pieces.append((ConditionStats.from_files(lg, cf, base["dataset"]["has_background"]),
                               (cf["tp"], cf["fp"], cf["fn"])))
                ids += list(cf["image_ids"])
                groups += list(cf["image_groups"]) if "image_groups" in cf else [None] * len(cf["image_ids"])
                secs += row[0].get("seconds") or 0.0
                n += row[0].get("images") or len(cf["image_ids"])
            order = np.argsort(np.array(ids), kind="stable")
            st, (tp, fp, fn) = combine(pieces, order)
            row = metrics_row(st, info, c, s, args, n, secs)
            grouped = None if None in groups else [groups[i] for i in order]   # ACDC's real conditions
            if grouped is not None:
                row["real_conditions"] = group_metrics(tp, fp, fn, grouped)
            out_rows.append(row)
            write_condition(folder, name, c, s, st, np.array(ids)[order], tp, fp, fn, groups=grouped)
    save_results(folder, fresh, merged, out_rows)
    print(f"merged {len(runs)} folders: {len(conds)} conditions x {len(base['models'])} models -> {args.out}")
    return 0
