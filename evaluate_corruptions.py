"""Evaluate trained models on VOC val under the 15 corruptions x severities 0..5 (the paper's sweep), or on
another dataset's val under a published protocol (docs/datasets.md).

    python evaluate_corruptions.py --checkpoints runs/{baseline,ibe,scribe}/checkpoint.pt \
        --data voc --voc-root /data/voc --voc-c VOC-C --out results
    python evaluate_corruptions.py --checkpoints runs/city/baseline/checkpoint.pt hf:/models/segformer \
        --data cityscapes --cityscapes-root /data/cityscapes --preset segformer-cityscapes-c --out results-city

Each image is decoded and corrupted once per condition (``--workers`` processes do that) and fed to
every model. Severity 0 is the clean image, evaluated once as the condition ``clean/0``. Writes to --out:

    run.json                                    models (path, sha256, config), protocol, versions, args
    metrics.jsonl                               one row per (model, corruption, severity), schema in docs/outputs.md
    logits/<model>/<corruption>_<severity>.npz  LogitTracker state (count, sum, sq; float64) + END sums
    confusion/<model>/<corruption>_<severity>.npz   KxK confusion (K: the dataset's classes, 21 on VOC), image ids,
                                                    per-image per-class TP/FP/FN,
                                                    calibration bins of every reading (totals and per image;
                                                    common/calibration.py, docs/calibration.md)

Before the sweep, one temperature per model and reading (softmax, sigmoid) is fitted on --calibration-images clean
images of --calibration-split (default: the images train.py --hold-out kept from training; never val, the test set)
and applied unchanged under every condition
(run.json's "temperature"; --calibration-images 0 skips it).

Resumable per condition: finished conditions are skipped, every file is written atomically and
metrics.jsonl is rewritten whole (temp + rename) after each condition, so a kill never tears it.
``--shard K/N`` evaluates images K, K+N, ...; ``--merge DIR...`` adds shard folders into one result.
``--shard auto`` takes K/N from a SLURM job array. Under ``torchrun --nproc_per_node=N evaluate_corruptions.py ...``
the processes share out each condition's batches and rank 0 writes the files one process would
(common/distributed.py).

One run per folder: before reusing anything, what decides the numbers (common/results.py ``identity``:
checkpoint sha256s, protocol, size, --amp, data, images, package versions, the VOC-C dump) is compared with
the folder's run.json, and a difference is refused with one line. More corruptions or severities extend the
run. ``--overwrite`` starts the folder afresh; it is not touched before the new run's first result, and is
then moved aside to ``<out>.replaced-<date>-<time>``. A damaged row or NPZ of a finished condition is a
cache entry: it is computed again.

This file is the step itself (arguments, checks, the sweep loop, the files per condition); its parts live in
common/sweep/ by topic: images.py (each image under each condition), condition_stats.py (what a model accumulates
and writes), temperature.py (the fit before the sweep), run_folder.py (the --out folder), shards.py (--merge).
"""
import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np
import torch
import torchvision
from tqdm import tqdm

from common import distributed, model_specs, results, vocc
from common.checkpoint import check_finite_logits
from common.cli import (UsageError, add_data_arguments, add_device_arguments, check_at_least, check_plain_name,
                        quiet_worker, run_cli)
from common.corruptions import add_code_argument, corruption_versions, parse_corruptions, parse_severities
from common.data import PROTOCOLS, check_protocol_sizes, normalise_uint8, single_thread_opencv
from common.datasets import dataset_record, open_data
from common.inference import with_inference
from common.presets import PRESETS, apply_preset, conditions_of, parse_inference
from common.device import autocast, memory_format, resolve_device, use_device
from common.folders import check_output_folder, git_commit, lock_folder
from common.malloc import keep_freed_memory
from common.metrics import miou_from_confusion
from common.results import CLEAN, read_metrics  # noqa: F401  (read_metrics: re-exported)
from common.sweep.condition_stats import (ConditionStats, gather_ranks, group_metrics, metrics_row, per_image_counts,
                                          protocol_size, write_condition)
from common.sweep.images import ConditionBatches, ConditionImages
from common.sweep.run_folder import conditions_to_do, open_results, save_results
from common.sweep.shards import merge, parse_shard
from common.sweep.temperature import calibration_set, check_not_val, fit_images, share_temperatures


# ----------------------------------------------------------------------------------------------- sweep

def check_sweep_args(args):
    """(conditions, shard): clean/0 first (for severity 0), then every corruption x severity > 0 (a --preset's own
    pairs), and this run's (K, N) of --shard, after the checks that need no file."""
    apply_preset(args, get_args_parser(), args.data)
    args.inference_mode = parse_inference(args.inference)
    severities = parse_severities(args.severities)
    corruptions = parse_corruptions(args.corruptions)
    conditions = [(CLEAN, 0)] if 0 in severities else []
    conditions += conditions_of(args, corruptions, severities)
    check_at_least("--batch-size", args.batch_size)
    if args.protocol != "native" and args.size < 32:
        raise UsageError(f"--size {args.size}: imagecorruptions needs images of at least 32x32")
    check_at_least("--limit", args.limit)
    check_at_least("--calibration-stride", args.calibration_stride)
    shard = parse_shard(args.shard) if args.shard else (0, 1)
    if args.shard == "auto":   # run.json and the rows name the shard itself, as --merge needs
        args.shard = f"{shard[0]}/{shard[1]}"
    return conditions, shard


def load_models(args, spec):
    """The models of --checkpoints (checkpoint files, torchvision:<builder>[:<weights>], hf:<id or folder> or
    module:factory specs, common/model_specs.py), each checked against the dataset ``spec``'s classes and run under
    --inference, and their run.json entries, display names checked as plain file names."""
    if len(args.checkpoints) == 0:
        raise UsageError("--checkpoints: give at least one checkpoint written by train.py, torchvision:<builder>, "
                         "hf:<id or folder> or module:factory")
    if args.names and len(args.names) != len(args.checkpoints):
        raise UsageError(f"--names: {len(args.names)} names for {len(args.checkpoints)} checkpoints")
    options = model_specs.model_options(args.checkpoints, args.weights_file, args.model_kind)
    data_spec = spec   # the loop below names each model spec "spec"
    models, infos = [], []
    for i, (spec, (weights_file, kind)) in enumerate(zip(args.checkpoints, options)):
        # A checkpoint's SHA-256 (provenance, in every metrics row) is read right after it loads, from the page
        # cache; torchvision, hf and factory models get an identity hash instead (common/model_specs.py).
        model, info = model_specs.load_spec(spec, args.device, weights_file, kind, dataset=data_spec)
        model = model.to(memory_format=memory_format(torch.device(args.device), args.amp))
        model = with_inference(model, args.inference_mode, data_spec.num_classes)
        if args.names:
            info["name"] = check_plain_name(args.names[i], f"--names (for {spec})")
        else:   # a checkpoint's stored name, or one derived from the spec: both become folder names
            check_plain_name(info["name"], f"checkpoint {spec}" if "identity" not in info else spec)
        if "identity" in info:
            ident = info["identity"]
            library = (f"transformers {ident['transformers']}" if ident.get("source") == "hf"
                       else f"torchvision {ident['torchvision']}")
            print(f"model {info['name']}: {spec} (kind {info['kind']}, weights "
                  f"{ident['weights_file'] or 'its own'}, sha256 {ident['weights_sha256'][:12]}, {library})")
        models.append(model)
        infos.append(info)
    names = [m["name"] for m in infos]
    if len(set(names)) != len(names):
        raise UsageError(f"two checkpoints share a display name ({names}); pass --names to tell them apart")
    return models, infos


def open_val_set(args, shard):
    """(--data's val set (common.datasets.Data), indices of this shard's images, their ids); an image too small for
    the protocol stops the run here."""
    data = open_data(args, "val")
    dataset = data.dataset
    n_total = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    indices = list(range(shard[0], n_total, shard[1]))
    image_ids = [dataset.ids[i] for i in indices]
    check_protocol_sizes(dataset, indices, args.protocol)
    return data, indices, image_ids


def root_field(data) -> dict:
    """run.json's root of the val set: "voc_root" for VOC (and the synthetic VOC), "data_root" for the others."""
    return {vocc.root_key(data.spec.name): os.path.abspath(data.root)}


def dump_identity(args, data):
    """run.json's "voc_c": the identity of the --voc-c dump, after checking that it holds this run's pixels (same
    protocol, size, preset, library versions, seed rule and val set); None without --voc-c."""
    if args.voc_c is None:
        return None
    expect = {"corruption_code": args.corruption_code, "seed_rule": vocc.seed_rule(args.corruption_code),
              "preset": args.preset_record, **vocc.data_identity(args.data, data.root, data.dataset)}
    m = vocc.check_manifest(args.voc_c, args.protocol, args.size, corruption_versions(), **expect)
    return {"path": os.path.abspath(args.voc_c), "versions": m["versions"],
            **{k: m[k] for k in vocc.IDENTITY if k in m}}


def run_record(args, infos, data, image_ids, voc_c, data_sha256) -> dict:
    """run.json: what decides the numbers (results.identity) and the provenance; ``data_sha256``: the whole val
    split's files (results.files_sha256), which identifies the data wherever it is read from. "dataset": the
    classes, their names and colours (common.datasets.dataset_record), which the readers of the folder use."""
    versions = {**corruption_versions(), "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}
    return {"models": infos, "protocol": args.protocol, "size": protocol_size(args), "amp": args.amp,
            "data": args.data, **root_field(data), "split": "val", "images": len(image_ids),
            "dataset": dataset_record(data.spec), "preset": args.preset_record, "inference": args.inference_mode,
            "image_ids_sha256": results.ids_sha256(image_ids), "data_sha256": data_sha256, "limit": args.limit,
            "shard": args.shard, "voc_c": voc_c, "versions": versions, "corruption_code": args.corruption_code,
            "seed_rule": vocc.seed_rule(args.corruption_code), "calibration_stride": args.calibration_stride,
            "git_commit": git_commit(),
            "args": dict(vars(args))}   # the command's resolved arguments (--amp among them), as the docstring says


def save_predictions(root, model_name, condition, preds, ids, spec, write=vocc.write_bytes):
    """Each prediction as a palette PNG of class ids in the dataset's colours (VOC's: vocc.png_bytes)."""
    c, s = condition
    for pred, image_id in zip(preds, ids):
        path = os.path.join(root, model_name, f"{c}_{s}", f"{image_id}.png")
        pred = pred.astype(np.uint8)
        write(path, vocc.png_bytes(pred, palette=True) if spec.name == "voc" else spec.label_png(pred))


def sweep(args, device, world, models, infos, todo, items, image_ids, mine, batch, spec):
    """Every model on every batch of ``items`` (this rank's images under each condition of ``todo``, in order).
    Yields (condition, [ConditionStats per model], its start time, this rank's predictions [(path, PNG bytes)]
    under torchrun) after the condition's last batch, so that it is written before the next one loads."""
    if args.workers > 0:
        single_thread_opencv()   # before the workers fork: one OpenCV thread each (common/data.py says why)
    loader = torch.utils.data.DataLoader(items, batch_sampler=ConditionBatches(len(todo), len(mine), batch),
                                         num_workers=args.workers, pin_memory=args.device.startswith("cuda"),
                                         persistent_workers=False, worker_init_fn=quiet_worker)
    # Under the paper protocol every batch is 224x224 (the last may hold fewer images): autotune once.
    torch.backends.cudnn.benchmark = args.protocol == "paper"
    fmt = memory_format(device, args.amp)
    current, pending = None, []
    write = vocc.write_bytes if world.size == 1 else (lambda path, data: pending.append((path, data)))
    with torch.inference_mode():
        for batch_ in loader:
            cond = int(batch_["cond"][0])
            if cond != current:
                current, t0, seen = cond, time.perf_counter(), 0
                stats = [ConditionStats(len(mine), info.get("temperature"), args.calibration_stride,
                                        spec.num_classes, spec.has_background) for info in infos]
                c, s = todo[cond]
                bar = tqdm(total=len(mine), desc=f"{c}/{s}", unit="img", disable=None if world.is_root else True,
                           leave=False, dynamic_ncols=True)
            x = normalise_uint8(batch_["image"].to(args.device, non_blocking=True)).contiguous(memory_format=fmt)
            labels = batch_["label"].to(args.device, non_blocking=True)
            positions = batch_["pos"].numpy()
            for model, st, info in zip(models, stats, infos):
                with autocast(device, args.amp):
                    logits = model(x)
                # NaN logits would reach bincount as garbage indices; one reduction per batch says which model.
                check_finite_logits(logits, f"model {info['name']} ({info['path']})", f" at {c}/{s}")
                pred = st.update(logits, labels, positions)
                if args.save_predictions:
                    save_predictions(args.save_predictions, info["name"], todo[cond],
                                     pred.cpu().numpy(), [image_ids[mine[p]] for p in positions], spec, write)
            bar.update(len(positions))
            if bar.n % max(1, 4 * batch) < len(positions) or bar.n == len(mine):
                bar.set_postfix_str(" ".join(f"{i['name']}={miou_from_confusion(st.confusion)['miou']:.3f}"
                                             for i, st in zip(infos, stats)))
            seen += len(positions)
            if seen == len(mine):
                bar.close()
                yield todo[cond], stats, t0, pending
                pending.clear()
                current = None


def print_plan(args, n_models, n_conditions, n_todo, n_images):
    """The sweep's first lines: the commit, the arguments, and what is left to do."""
    print(f"git commit: {git_commit()}\narguments: {json.dumps(vars(args), sort_keys=True)}")
    print(f"{n_models} model(s) x {n_conditions} conditions x {n_images} images "
          f"({n_conditions - n_todo} conditions already done); corruption code {args.corruption_code}, "
          f"protocol {args.protocol}"
          f"{f' {args.size}px' if args.protocol != 'native' else ''}, device {args.device}", flush=True)


def write_models(args, folder, condition, stats, infos, image_ids, seconds, real_shifts):
    """Each model's two NPZ files of one finished condition, and its metrics row (returned); ``real_shifts``:
    each image's ACDC condition (its rows then give each real condition's mIoU), None elsewhere."""
    c, s = condition
    new = [metrics_row(st, info, c, s, args, len(image_ids), seconds) for st, info in zip(stats, infos)]
    for st, info, row in zip(stats, infos, new):
        counts = per_image_counts(st.per_image)
        write_condition(folder, info["name"], c, s, st, image_ids, *counts, groups=real_shifts)
        if real_shifts is not None:
            row["real_conditions"] = group_metrics(*counts, real_shifts)
    return new


def evaluate(args, held, world=distributed.SINGLE):
    """The sweep; under torchrun (``world``) every rank runs it on its share of each condition's images and
    rank 0 alone owns --out (common/distributed.py)."""
    conditions, shard = check_sweep_args(args)
    device = resolve_device(args.device)
    use_device(device, args.amp)
    args.device = str(device)
    check_output_folder(args.out)
    if args.voc_c is not None:
        vocc.read_manifest(args.voc_c)   # a damaged manifest is refused before the models load
    data, indices, image_ids = open_val_set(args, shard)
    dataset = data.dataset
    models, infos = load_models(args, data.spec)
    voc_c = dump_identity(args, data)
    batch = args.batch_size if args.protocol == "paper" else 1  # other protocols keep each image's own size
    mine = world.split(len(indices), batch)   # positions (in indices) of this rank's images; all in one process
    cal_set = calibration_set(args, data.root, dataset, infos, data)
    world.sync()                       # every rank's checks passed, or every rank stops with the first one's error
    todo = None
    if world.is_root:   # rank 0 alone owns --out: the lock, run.json, and what is left to do
        # The val files' digest: the dump's check above computed it already (it passed only if they are equal).
        digest = voc_c["data_sha256"] if voc_c else results.files_sha256(dataset)
        run = run_record(args, infos, data, image_ids, voc_c, digest)
        run["temperature"] = fit_images(args, cal_set)   # the images of the fit are part of the identity
        fresh, rows = open_results(args, held, run)
        todo, rows = conditions_to_do(args.out, conditions, infos, rows)
        print_plan(args, len(models), len(conditions), len(todo), len(indices))
        if not todo:
            results.write_metrics(args.out, rows)
    todo = world.share(todo)   # rank 0's plan: every rank sweeps the same conditions in the same order
    if not todo:
        return 0
    check_not_val(args, cal_set, dataset)
    temperature = share_temperatures(world, args, device, models, infos, cal_set)
    if world.is_root:
        run["temperature"] = temperature
    real_shifts = [dataset.conditions[i] for i in indices] if data.spec.name == "acdc" else None
    items = ConditionImages(dataset, [indices[p] for p in mine], todo, args.protocol, args.size, args.voc_c,
                            args.corruption_code)
    start = time.perf_counter()
    for (c, s), stats, t0, predictions in sweep(args, device, world, models, infos, todo, items, image_ids, mine,
                                                batch, data.spec):
        if world.size > 1:   # the ranks' parts, merged on rank 0 into what one process would have
            stats, predictions = gather_ranks(world, stats, mine, predictions)
            if stats is None:
                continue
            for path, png in predictions:
                vocc.write_bytes(path, png)
        seconds = time.perf_counter() - t0
        folder = fresh.path if fresh else args.out
        new = write_models(args, folder, (c, s), stats, infos, image_ids, seconds, real_shifts)
        rows = rows + new
        save_results(folder, fresh, run, rows)
        print(f"{c}/{s}: " + "  ".join(f"{r['model']} {r['miou']:.4f}" for r in new) + f"  ({seconds:.1f}s)",
              flush=True)
    print(f"swept {len(todo)} conditions in {time.perf_counter() - start:.1f}s; results in "
          f"{os.path.join(args.out, 'metrics.jsonl')}")
    return 0


# ----------------------------------------------------------------------------------------------- main

def main(args):
    # glibc: the extra models' statistics reuse freed memory instead of page-faulting it in again (common/malloc.py;
    # BENCHMARKS.md, Decisions).
    keep_freed_memory()
    with distributed.World.from_env(args.device) as world:   # under torchrun: this process's rank and its group
        with contextlib.ExitStack() as held:  # releases the output locks however the run ends
            if args.merge:
                if world.size > 1:
                    raise UsageError("--merge reads and writes folders in one process; run it without torchrun")
                lock_folder(args.out, held, "evaluate_corruptions.py --merge")
                return merge(args, held)
            status = evaluate(args, held, world)
        world.finish()   # every rank waits for rank 0's last writes, so all exit with one status
        return status


def get_args_parser():
    p = argparse.ArgumentParser(description="Evaluate checkpoints under the corruption benchmark (VOC-C).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", default=[], metavar="SPEC",
                   help="the models: checkpoints written by train.py (self-describing), torchvision:<builder>"
                        "[:<weights>] (e.g. torchvision:deeplabv3_resnet50:COCO_WITH_VOC_LABELS_V1; weights from the "
                        "torch hub cache), hf:<model id or save_pretrained folder> (a transformers segmentation "
                        "model; optional package) or module.path:factory (a function returning an nn.Module). Each "
                        "must predict the dataset's classes")
    p.add_argument("--names", nargs="+", default=None,
                   help="display names (plain file names); default: the name stored in each checkpoint, the "
                        "builder's name for torchvision:, the factory's for module:factory")
    model_specs.add_model_arguments(p, "--checkpoints")
    add_data_arguments(p, "voc", help="which val set: VOC 2012 val under --voc-root, the synthetic VOC, or the val "
                                      "split of Cityscapes, ADE20K, ACDC or a folder dataset under its --<name>-root "
                                      "(docs/datasets.md)")
    add_code_argument(p)
    p.add_argument("--voc-c", default=None,
                   help="a dump_voc_c.py folder: read corrupted images from it where present, corrupt on the fly "
                        "otherwise (identical pixels either way)")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="a published protocol (docs/datasets.md, Presets, names each source): fixes --corruptions, "
                        "--severities (per corruption), --protocol, --size and --inference, which are then refused; "
                        "run.json records it and a folder of another preset is refused. paper is the default "
                        "protocol's flags; kamann-rother-cityscapes-c, segformer-cityscapes-c (--data cityscapes), "
                        "semsegbench-ade20k-c (--data ade20k)")
    p.add_argument("--corruptions", nargs="+", default=["all"],
                   help="names, short names, numbers, 'all' (the 15), 'held_out', or a group")
    p.add_argument("--severities", nargs="+", default=["0", "1", "2", "3", "4", "5"],
                   help="0 = clean (evaluated once, reported as corruption 'clean'), 1..5")
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                   help="paper: Pillow-resize to --size x --size, corrupt, score at that size (the paper's sweep); "
                        "shortside: short side --size, aspect kept (the notebook's FixScaleResize, for its clean PCA "
                        "pass); native: original resolution (Cityscapes' presets); keep_ratio: aspect kept, fitted "
                        "into 4*size x size (mmsegmentation's test resize; ADE20K's 2048x512 at --size 512)")
    p.add_argument("--size", type=int, default=224,
                   help="image side under --protocol paper, short side under shortside and keep_ratio (smaller is "
                        "faster)")
    p.add_argument("--inference", default="whole",
                   help="whole: one forward of the whole image; slide:HxW:HxW: crops of HxW at a stride of HxW, "
                        "the logits averaged where crops overlap (mmsegmentation's slide mode; common/inference.py), "
                        "e.g. slide:1024x1024:768x768 on Cityscapes' 2048x1024")
    p.add_argument("--batch-size", type=int, default=16,
                   help="images per forward pass (shortside and native protocols: always 1, sizes differ)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="loader processes that decode and corrupt images")
    add_device_arguments(p)
    p.add_argument("--limit", type=int, default=None, help="only the first N val images")
    p.add_argument("--calibration-split", default="auto",
                   help="temperature scaling: the clean images the temperatures are fitted on, one per model and "
                        "reading, then applied unchanged under every corruption (docs/calibration.md). auto "
                        "(default): the VOC train images every checkpoint held out of its training (train.py "
                        "--hold-out N), else train (images the models saw, with a note); NAME: the split file "
                        "ImageSets/Segmentation/NAME.txt under the VOC root. Never val (the test set)")
    p.add_argument("--calibration-images", type=int, default=32,
                   help="how many images of --calibration-split (evenly spaced through it) the temperatures are fitted "
                        "on; 0: no temperature scaling")
    p.add_argument("--calibration-stride", type=int, default=3,
                   help="calibration (every reading) is scored on the pixels (S i, S j) of each image, every S-th row "
                        "and column: 1/S^2 of the pixels, the same pixels for every reading and model. 3 (default) "
                        "keeps its cost a small part of the forward pass and, being odd, visits every phase of the "
                        "models' 2^k upsampling grid alike; 1: every pixel (docs/calibration.md)")
    p.add_argument("--shard", default=None,
                   help="K/N: evaluate images K, K+N, K+2N, ... (merge with --merge); auto: K and N from the SLURM "
                        "job array (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT). Under "
                        "torchrun the processes share out the shard's batches")
    p.add_argument("--save-predictions", default=None,
                   help="also write every prediction as a VOC palette PNG under DIR/<model>/<corruption>_<severity>/")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="instead of evaluating, add the shard folders DIR... into --out")
    p.add_argument("--out", default="results", help="output folder (layout in the module docstring)")
    p.add_argument("--overwrite", action="store_true",
                   help="start --out afresh when it holds another run (other checkpoints, protocol, size, data, "
                        "versions...; without this flag that is refused): the new run is written beside it and takes "
                        "its place at its first finished condition; the old folder is moved to "
                        "<out>.replaced-<date>-<time>, untouched")
    return p


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
