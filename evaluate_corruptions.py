"""Evaluate trained models on VOC val under the 15 corruptions x severities 0..5 (the paper's sweep).

    python evaluate_corruptions.py --checkpoints runs/{baseline,ibe,scribe}/checkpoint.pt \
        --data voc --voc-root /data/voc --voc-c VOC-C --out results

Each image is decoded and corrupted once per condition (``--workers`` processes do that) and fed to
every model. Severity 0 is the clean image, evaluated once as the condition ``clean/0``. Writes to --out:

    run.json                                    models (path, sha256, config), protocol, versions, args
    metrics.jsonl                               one row per (model, corruption, severity), schema in docs/outputs.md
    logits/<model>/<corruption>_<severity>.npz  LogitTracker state (count, sum, sq; float64) + END sums
    confusion/<model>/<corruption>_<severity>.npz   21x21 confusion, image ids, per-image per-class TP/FP/FN,
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
"""
import argparse
import contextlib
import copy
import json
import os
import sys
import time

import numpy as np
import torch
import torchvision
from tqdm import tqdm

from common import distributed, model_specs, results, vocc
from common.calibration import VARIANTS, Calibration, fit_temperature, prefix_of
from common.checkpoint import check_finite_logits
from common.cli import (UsageError, add_data_arguments, add_device_arguments, check_at_least, check_plain_name,
                        quiet_worker, run_cli)
from common.constants import IGNORE_INDEX, NUM_CLASSES
from common.corruptions import (DEFAULT_CODE, add_code_argument, corrupt_image, corruption_number, corruption_versions, parse_corruptions,
                                parse_severities)
from common.data import (PROTOCOLS, VOC_BASE_DIR, check_protocol_sizes, eval_sample, evenly_spaced, normalise_uint8,
                         read_split, resolve_roots, single_thread_opencv, voc_dataset)
from common.device import autocast, memory_format, resolve_device, use_device
from common.folders import check_output_folder, git_commit, lock_folder, replace_folder
from common.logits import LogitTracker, channel_argmax
from common.malloc import keep_freed_memory
from common.metrics import miou_from_confusion
from common.results import CLEAN, finite_or_none, read_metrics  # noqa: F401  (read_metrics: re-exported)


# ------------------------------------------------------------------------------------------- data side

class ConditionImages(torch.utils.data.Dataset):
    """Item k = image ``items[k][1]`` under condition ``conditions[items[k][0]]``, as uint8 arrays.

    Runs in the loader's worker processes, which is where the corruption cost is spread out.
    """

    def __init__(self, dataset, indices, conditions, protocol, size, voc_c=None, code=DEFAULT_CODE):
        self.dataset, self.indices, self.conditions = dataset, indices, conditions
        self.protocol, self.size, self.voc_c, self.code = protocol, size, voc_c, code

    def __len__(self):
        return len(self.conditions) * len(self.indices)

    def __getitem__(self, k):
        cond, pos = divmod(k, len(self.indices))
        corruption, severity = self.conditions[cond]
        index = self.indices[pos]
        image_id, image, label = eval_sample(self.dataset, index, self.protocol, self.size)
        if severity > 0:
            dumped = None
            if self.voc_c is not None:
                dumped = vocc.read_png(vocc.image_path(self.voc_c, corruption, severity, image_id), image.shape)
            image = dumped if dumped is not None else corrupt_image(image, image_id, corruption, severity,
                                                                                self.code)
        image = np.require(image, requirements="W")  # the library returns read-only arrays for pixelate and jpeg
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label), "cond": cond, "pos": pos}


class ConditionBatches(torch.utils.data.Sampler):
    """Batches that never straddle two conditions, conditions in order."""

    def __init__(self, n_conditions, n_images, batch_size):
        self.batches = [list(range(c * n_images + s, c * n_images + min(s + batch_size, n_images)))
                        for c in range(n_conditions) for s in range(0, n_images, batch_size)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


# ------------------------------------------------------------------------------------------ model side

class ConditionStats:
    """Everything one model accumulates over one condition: confusion, per-image counts, logits, END,
    calibration (per image, on the logits' device).

    ``calibrations`` holds every reading (common/calibration.py ``VARIANTS``): "softmax" (also
    ``calibration``), "sigmoid" (with the class-wise table), and with ``temperatures`` ({"softmax": T,
    "sigmoid": T}, fitted before the sweep) "softmax_ts" and "sigmoid_ts" at those temperatures."""

    def __init__(self, n_images, temperatures=None, stride=1):
        self.confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
        self.per_image = np.zeros((n_images, NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
        self.tracker = LogitTracker()
        self.end_sum = 0.0
        self.pixels = 0
        # Every reading on the same pixels: the subgrid of every stride-th row and column (--calibration-stride).
        self.calibrations = {"softmax": Calibration(n_images, stride=stride),
                             "sigmoid": Calibration(n_images, reading="sigmoid", classwise=True, stride=stride)}
        for reading, t in (temperatures or {}).items():
            # After temperature scaling only the bins, NLL and Brier: the failure-detection numbers of the
            # sigmoid reading do not change with T (a monotone map of each pixel's confidence).
            self.calibrations[f"{reading}_ts"] = Calibration(n_images, reading=reading, temperature=t, fine=False,
                                                             stride=stride)

    @property
    def calibration(self):
        """The softmax reading (the one metrics.jsonl's ece / nll / brier give)."""
        return self.calibrations["softmax"]

    @torch.inference_mode()
    def update(self, logits, labels, positions):
        """Add one batch; returns the predictions (argmax over the 21 channels, first maximum on ties)."""
        logits = logits.float()
        pred = channel_argmax(logits)
        b, k2 = labels.shape[0], NUM_CLASSES ** 2
        # One bincount gives every image's 21x21 confusion: image j's cells are offset by 441 * j, and
        # ignored pixels all go to one extra bin at the end (cheaper than selecting the kept ones).
        slot = torch.arange(b, device=labels.device).view(b, 1, 1) * k2
        idx = labels.long() * NUM_CLASSES + pred + slot
        idx = torch.where(labels == IGNORE_INDEX, b * k2, idx)
        per = torch.bincount(idx.view(-1), minlength=b * k2 + 1)[:-1].view(b, NUM_CLASSES, NUM_CLASSES)
        per = per.cpu().numpy()
        self.per_image[positions] += per
        self.confusion += per.sum(0)
        self.tracker.update(logits, pred)
        # END (docs/protocol.md): bg = softmax over all 21 at channel 0; id = normalised max softmax over the
        # 20 foreground logits; averaged over every output pixel, like the logit statistics. With one exp
        # pass, s = sum_fg exp(z - max z_fg) in [1, 20]: max softmax_fg = 1 / s and
        # bg = 1 / (1 + s exp(max z_fg - z0)), which tends to 0 or 1 without NaN when the exp overflows.
        k = NUM_CLASSES - 1
        fg, z0 = logits[:, 1:], logits[:, 0]
        fg_max = fg.amax(1)
        s = (fg - fg_max.unsqueeze(1)).exp_().sum(1)
        bg = torch.exp(fg_max - z0).mul_(s).add_(1).reciprocal_()
        ident = s.reciprocal_().sub_(1 / k).mul_(1 / (1 - 1 / k))
        self.end_sum += float(torch.dot(bg.view(-1).double(), ident.view(-1).double()))
        # ECE / NLL / Brier of the 21-way softmax over the non-255 pixels, one row per image (the bootstrap
        # resamples images), on the device until the condition is written; the top logit is END's max(fg, z0).
        top = torch.maximum(fg_max, z0)
        for cal in self.calibrations.values():
            cal.update(logits, labels, positions, pred=pred, top=top)
        self.pixels += pred.numel()
        return pred

    def state(self) -> dict:
        """Everything as host numpy arrays and numbers, to send to another process (``from_state``)."""
        return {"confusion": self.confusion, "per_image": self.per_image, "tracker": self.tracker.state_dict(),
                "end_sum": self.end_sum, "pixels": self.pixels,
                "calibrations": {k: (c.rows(), c.reading, c.temperature, c.stride)
                                 for k, c in self.calibrations.items()}}

    @classmethod
    def from_state(cls, state) -> "ConditionStats":
        new = cls(0)
        new.confusion, new.per_image = state["confusion"], state["per_image"]
        new.tracker = LogitTracker.from_state_dict(state["tracker"])
        new.end_sum, new.pixels = state["end_sum"], state["pixels"]
        new.calibrations = {k: Calibration.from_rows(rows, reading, t, stride)
                            for k, (rows, reading, t, stride) in state["calibrations"].items()}
        return new

    @classmethod
    def from_files(cls, logits: dict, confusion: dict) -> "ConditionStats":
        """A condition read back from its two NPZ files (``write_condition``); ``per_image`` is left empty."""
        new = cls(0)
        new.confusion, new.tracker = confusion["confusion"], LogitTracker.from_state_dict(logits)
        new.end_sum, new.pixels = float(logits["end_sum"]), int(logits["pixels"])
        new.calibrations = {k: Calibration.from_state_dict(confusion, prefix_of(*VARIANTS[k]), VARIANTS[k][0])
                            for k in VARIANTS}
        return new


def metrics_row(stats: ConditionStats, model_info, corruption, severity, args, n_images, seconds):
    m = {k: finite_or_none(v) for k, v in miou_from_confusion(stats.confusion).items()}
    end = stats.end_sum / stats.pixels if stats.pixels else None
    cal = stats.calibration.metrics()
    return {"model": model_info["name"], "checkpoint": model_info["path"], "checkpoint_sha256": model_info["sha256"],
            "kind": model_info["kind"], "corruption": corruption,
            "corruption_number": None if corruption == CLEAN else corruption_number(corruption),
            "severity": severity, "corruption_code": args.corruption_code, "protocol": args.protocol,
            "size": protocol_size(args), "miou": m["miou"], "pixel_acc": m["pixel_acc"], "iou": m["iou"],
            # The notebook's Distance (all 20 foreground classes, never-predicted ones counting 0), and the
            # same mean over the classes the model predicted (docs/protocol.md, "Logit structure").
            "distance": finite_or_none(stats.tracker.distance_notebook()),
            "distance_predicted": finite_or_none(stats.tracker.distance_margin()), "end": finite_or_none(end),
            # Calibration of the softmax over the 21 channels, non-255 pixels (common/calibration.py); null
            # when no pixel was scored.
            "ece": finite_or_none(cal.get("ece")), "nll": finite_or_none(cal.get("nll")),
            "brier": finite_or_none(cal.get("brier")),
            # Every reading (docs/calibration.md): {softmax, sigmoid, softmax_ts, sigmoid_ts: {temperature, ece,
            # ece_adaptive, nll, brier, aurc, auroc, ...}}, those measured.
            "calibration": calibration_fields(stats),
            "images": n_images, "seconds": seconds, "shard": args.shard}


def calibration_fields(stats: ConditionStats) -> dict:
    """metrics.jsonl's "calibration": each reading's metrics (common/calibration.py) and its temperature."""
    out = {}
    for key, cal in stats.calibrations.items():
        if cal is not None:
            out[key] = {"reading": cal.reading, "temperature": cal.temperature,
                        **{k: finite_or_none(v) for k, v in cal.metrics().items()}}
    return out


def protocol_size(args):
    """The --size the protocol resizes to (the side under "paper", the short side under "shortside")."""
    return None if args.protocol == "native" else args.size


def per_image_counts(per_image):
    """Each image's per-class TP, FP and FN from its 21x21 confusion (rows: label, columns: prediction)."""
    tp = np.einsum("nkk->nk", per_image)
    return tp, per_image.sum(1) - tp, per_image.sum(2) - tp


def shard_calibration(parts, order):
    """One condition's calibration from its shards' per-image rows, stacked and put in ``order`` as tp/fp/fn
    are: the rows and totals of a single run over the same logits, bit for bit. None for a temperature-scaled
    reading the shards did not measure (no temperature fit)."""
    return None if any(p is None for p in parts) else Calibration.concat(parts, order)


def combine(parts, order):
    """One condition's stats from parts over disjoint sets of images (the shard folders of --merge, the ranks of
    a torchrun sweep): [(ConditionStats, per-image arrays)], the arrays with one row per image of that part.

    Confusions and pixel counts add exactly; logit moments and END sums add in part order (float64, so they
    differ from one process's batch-by-batch sums in the last digits only); the per-image arrays and calibration
    rows are stacked and put in ``order`` (indices into the stacked rows), which gives the single run's rows
    exactly. Returns (stats, [each per-image array, stacked and ordered]); ``stats.per_image`` is left empty."""
    total = ConditionStats(0)
    for st, _ in parts:
        total.confusion = total.confusion + st.confusion
        total.tracker = total.tracker + st.tracker
        total.end_sum += st.end_sum
        total.pixels += st.pixels
    total.calibrations = {k: shard_calibration([st.calibrations.get(k) for st, _ in parts], order)
                          for k in parts[0][0].calibrations}
    arrays = [np.concatenate([a[i] for _, a in parts])[order] for i in range(len(parts[0][1]))]
    return total, arrays


def gather_ranks(world, stats, mine, predictions):
    """Under torchrun, at the end of a condition: every rank's stats (one per model; ``mine``, the positions of
    its images) and its predictions ([(path, PNG bytes)]) to rank 0, which gets back the stats over all images in
    the single-process image order, and every prediction to write. (None, None) on the other ranks."""
    parts = world.gather(([st.state() for st in stats], mine, predictions))
    if parts is None:
        return None, None
    order = np.argsort(np.concatenate([p[1] for p in parts]), kind="stable")
    merged = []
    for m in range(len(stats)):
        st, (per_image,) = combine([(ConditionStats.from_state(p[0][m]), [p[0][m]["per_image"]]) for p in parts],
                                   order)
        st.per_image = per_image
        merged.append(st)
    return merged, [w for p in parts for w in p[2]]


def write_condition(out, model_name, corruption, severity, stats: ConditionStats, image_ids, tp, fp, fn):
    """The condition's two NPZ files: logit state + END sums, and confusion + per-image TP/FP/FN + the
    calibration bins (``calib_*``: the condition's totals and one row per image, in image_ids order)."""
    calib = {}
    for key, cal in stats.calibrations.items():
        if cal is not None:
            calib.update(cal.state_dict(prefix_of(*VARIANTS[key])))
    results.write_condition(out, model_name, corruption, severity,
                            logits=dict(**stats.tracker.state_dict(), end_sum=np.float64(stats.end_sum),
                                        pixels=np.int64(stats.pixels)),
                            confusion=dict(confusion=stats.confusion, image_ids=np.array(image_ids), tp=tp, fp=fp,
                                           fn=fn, **calib))


def save_results(folder, fresh, run, rows):
    """run.json and the whole metrics.jsonl, after a condition's NPZ files. run.json goes with the first result,
    so a run that fails before any leaves nothing behind; under --overwrite (``fresh``) that first result is
    when the new folder takes the old one's place."""
    results.write_run(folder, run)
    results.write_metrics(folder, rows)
    if fresh:
        fresh.commit()


def save_predictions(root, model_name, condition, preds, ids, write=vocc.write_bytes):
    c, s = condition
    for pred, image_id in zip(preds, ids):
        path = os.path.join(root, model_name, f"{c}_{s}", f"{image_id}.png")
        write(path, vocc.png_bytes(pred.astype(np.uint8), palette=True))


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


# ----------------------------------------------------------------------------------------------- sweep

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


def check_sweep_args(args):
    """(conditions, shard): clean/0 first (for severity 0), then every corruption x severity > 0, and this run's
    (K, N) of --shard, after the checks that need no file."""
    severities = parse_severities(args.severities)
    corruptions = parse_corruptions(args.corruptions)
    conditions = [(CLEAN, 0)] if 0 in severities else []
    conditions += [(c, s) for c in corruptions for s in severities if s > 0]
    check_at_least("--batch-size", args.batch_size)
    if args.protocol != "native" and args.size < 32:
        raise UsageError(f"--size {args.size}: imagecorruptions needs images of at least 32x32")
    check_at_least("--limit", args.limit)
    check_at_least("--calibration-stride", args.calibration_stride)
    shard = parse_shard(args.shard) if args.shard else (0, 1)
    if args.shard == "auto":   # run.json and the rows name the shard itself, as --merge needs
        args.shard = f"{shard[0]}/{shard[1]}"
    return conditions, shard


def load_models(args):
    """The models of --checkpoints (checkpoint files, torchvision:<builder>[:<weights>] or module:factory specs,
    common/model_specs.py) and their run.json entries, display names checked as plain file names."""
    if len(args.checkpoints) == 0:
        raise UsageError("--checkpoints: give at least one checkpoint written by train.py, torchvision:<builder> "
                         "or module:factory")
    if args.names and len(args.names) != len(args.checkpoints):
        raise UsageError(f"--names: {len(args.names)} names for {len(args.checkpoints)} checkpoints")
    options = model_specs.model_options(args.checkpoints, args.weights_file, args.model_kind)
    models, infos = [], []
    for i, (spec, (weights_file, kind)) in enumerate(zip(args.checkpoints, options)):
        # A checkpoint's SHA-256 (provenance, in every metrics row) is read right after it loads, from the page
        # cache; torchvision and factory models get an identity hash instead (common/model_specs.py).
        model, info = model_specs.load_spec(spec, args.device, weights_file, kind)
        model = model.to(memory_format=memory_format(torch.device(args.device), args.amp))
        if args.names:
            info["name"] = check_plain_name(args.names[i], f"--names (for {spec})")
        else:   # a checkpoint's stored name, or one derived from the spec: both become folder names
            check_plain_name(info["name"], f"checkpoint {spec}" if "identity" not in info else spec)
        if "identity" in info:
            ident = info["identity"]
            print(f"model {info['name']}: {spec} (kind {info['kind']}, weights "
                  f"{ident['weights_file'] or 'its own'}, sha256 {ident['weights_sha256'][:12]}, torchvision "
                  f"{ident['torchvision']})")
        models.append(model)
        infos.append(info)
    names = [m["name"] for m in infos]
    if len(set(names)) != len(names):
        raise UsageError(f"two checkpoints share a display name ({names}); pass --names to tell them apart")
    return models, infos


def open_val_set(args, shard):
    """(voc_root, dataset, indices of this shard's images, their ids); an image too small for the protocol stops
    the run here."""
    voc_root, _ = resolve_roots(args.data, args.voc_root, None, args.synthetic_root, need_sbd=False)
    dataset = voc_dataset(voc_root, "val")
    n_total = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    indices = list(range(shard[0], n_total, shard[1]))
    image_ids = [os.path.splitext(os.path.basename(dataset.images[i]))[0] for i in indices]
    check_protocol_sizes(dataset, indices, args.protocol)
    return voc_root, dataset, indices, image_ids


# ------------------------------------------------------------------------------------ temperature scaling

FIT_PIXELS = 500_000   # at most this many clean pixels (evenly spaced) per model for the temperature fit


def calibration_ids(args, voc_root, infos):
    """(what the ids are, the split file they come from, ids) for the temperature fit. --calibration-split auto:
    the images every train.py checkpoint held out of its training (train.py --hold-out), else the train split
    with a note (the models saw those images); a split name: that file under the VOC root."""
    name = args.calibration_split
    if name == "val":
        raise UsageError("--calibration-split val: VOC val is the test set, and a temperature fitted on it would be "
                         "tuned on the test images; name another split file (default auto), or --calibration-images 0")
    train_path = os.path.join(voc_root, VOC_BASE_DIR, "ImageSets", "Segmentation", "train.txt")
    if name == "auto":
        held = [set(i.get("held_out") or ()) for i in infos if "identity" not in i]   # train.py checkpoints
        common = set.intersection(*held) if held else set()
        if common:
            return "held-out", train_path, [i for i in read_split(train_path) if i in common]
        print("note: no checkpoint held training images out (train.py --hold-out N), so the temperatures are fitted "
              "on train images the models were trained on; a held-out fit is one retraining away", flush=True)
        name = "train"
    check_plain_name(name, "--calibration-split")
    path = os.path.join(voc_root, VOC_BASE_DIR, "ImageSets", "Segmentation", f"{name}.txt")
    if not os.path.isfile(path):
        raise UsageError(f"--calibration-split {name}: no {path}; give the name of a split file in that folder "
                         f"(e.g. train), or --calibration-images 0 for no temperature scaling")
    return name, path, read_split(path)


def calibration_set(args, voc_root, val, infos):
    """(dataset, indices, ids, what they are) of the clean images the temperatures are fitted on:
    --calibration-images of ``calibration_ids``, evenly spaced through them (deterministic); None with
    --calibration-images 0. VOC val is the test set: naming it, or a split sharing an image with it, is refused."""
    check_at_least("--calibration-images", args.calibration_images, 0)
    if args.calibration_images == 0:
        return None
    source, path, ids = calibration_ids(args, voc_root, infos)
    picked = evenly_spaced(ids, args.calibration_images)
    dataset = copy.copy(val)           # val's loader and checks, over the calibration images' files
    base = os.path.dirname(os.path.dirname(os.path.dirname(path)))
    dataset.images = [os.path.join(base, "JPEGImages", f"{i}.jpg") for i in picked]
    dataset.targets = [os.path.join(base, "SegmentationClass", f"{i}.png") for i in picked]
    missing = [f for f in dataset.images + dataset.targets if not os.path.isfile(f)]
    if missing:
        raise UsageError(f"{path} names {len(missing)} file(s) that do not exist, first {missing[0]}; fix the split "
                         f"file, or --calibration-images 0")
    check_protocol_sizes(dataset, range(len(picked)), args.protocol)
    return dataset, list(range(len(picked))), picked, source


def fit_images(args, cal_set):
    """run.json's "temperature" before the fit: which clean images (part of the run's identity); None without."""
    if cal_set is None:
        return None
    return {"split": cal_set[3], "images": len(cal_set[2]),
            "image_ids_sha256": results.ids_sha256(cal_set[2])}


def check_not_val(args, cal_set, val):
    """Refuse a calibration split that shares an image with val (the test set). After the folder's identity
    check, so that a val set changed under a run is reported as such first."""
    if cal_set is None:
        return
    val_ids = {os.path.splitext(os.path.basename(p))[0] for p in val.images}
    shared = [i for i in cal_set[2] if i in val_ids]
    if shared:
        raise UsageError(f"--calibration-split {args.calibration_split}: {len(shared)} of its images are val (test) "
                         f"images, first {shared[0]}; fit the temperature on images that are not in val.txt")


def fit_temperatures(args, device, models, infos, cal_set):
    """run.json's "temperature": one T per model and reading (softmax, sigmoid), each minimising the mean NLL of
    that reading over the clean pixels of ``cal_set`` under the sweep's protocol (common/calibration.py
    ``fit_temperature``); also stored in each model's info, from which the sweep's ConditionStats take it.
    None (and no temperature-scaled readings) when ``cal_set`` is None."""
    if cal_set is None:
        return None
    dataset, indices, ids, _ = cal_set
    batch = args.batch_size if args.protocol == "paper" else 1
    fmt = memory_format(device, args.amp)
    logits, labels = [[] for _ in models], []
    with torch.inference_mode():
        for start in tqdm(range(0, len(indices), batch), desc="temperature", unit="batch", disable=None, leave=False):
            samples = [eval_sample(dataset, i, args.protocol, args.size) for i in indices[start:start + batch]]
            x = normalise_uint8(torch.from_numpy(np.stack([s[1] for s in samples])).to(device))
            lab = torch.from_numpy(np.stack([s[2] for s in samples])).to(device)
            valid = lab != IGNORE_INDEX
            for m, model in enumerate(models):
                with autocast(device, args.amp):
                    z = model(x.contiguous(memory_format=fmt))
                logits[m].append(z.float().permute(0, 2, 3, 1)[valid].cpu())
            labels.append(lab[valid].cpu())
    y = torch.cat(labels)
    total = int(y.numel())
    keep = torch.linspace(0, total - 1, FIT_PIXELS).round().long().unique() if total > FIT_PIXELS else None
    record = {**fit_images(args, cal_set), "pixels": total if keep is None else int(keep.numel()),
              "pixels_total": total, "models": {}}
    if total == 0:
        raise UsageError(f"--calibration-split {args.calibration_split} ({cal_set[3]}): its {len(ids)} image(s) have "
                         f"no labelled pixel (all 255); use more --calibration-images or another split")
    for m, info in enumerate(infos):
        z = torch.cat(logits[m])
        yy = y
        if keep is not None:
            z, yy = z[keep], y[keep]
        fits = {reading: fit_temperature(z, yy, reading) for reading in ("softmax", "sigmoid")}
        info["temperature"] = {reading: f["temperature"] for reading, f in fits.items()}
        record["models"][info["name"]] = fits
        print(f"temperature of {info['name']} on {len(ids)} clean {cal_set[3]} images: "
              + ", ".join(f"{r} T={f['temperature']:.3f} (NLL {f['nll_at_1']:.4f} -> {f['nll']:.4f})"
                          for r, f in fits.items()), flush=True)
    return record


def dump_identity(args, dataset, voc_root):
    """run.json's "voc_c": the identity of the --voc-c dump, after checking that it holds this run's pixels (same
    protocol, size, library versions, seed rule and val set); None without --voc-c."""
    if args.voc_c is None:
        return None
    data = {"corruption_code": args.corruption_code, "seed_rule": vocc.seed_rule(args.corruption_code),
            "data": args.data, "voc_root": os.path.abspath(voc_root), "split": "val",
            "image_ids_sha256": results.ids_sha256(os.path.splitext(os.path.basename(p))[0] for p in dataset.images),
            "data_sha256": results.files_sha256(dataset)}
    m = vocc.check_manifest(args.voc_c, args.protocol, args.size, corruption_versions(), **data)
    return {"path": os.path.abspath(args.voc_c), "versions": m["versions"],
            **{k: m[k] for k in vocc.IDENTITY if k in m}}


def run_record(args, infos, voc_root, image_ids, voc_c, data_sha256) -> dict:
    """run.json: what decides the numbers (results.identity) and the provenance; ``data_sha256``: the whole val
    split's files (results.files_sha256), which identifies the data wherever it is read from."""
    versions = {**corruption_versions(), "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}
    return {"models": infos, "protocol": args.protocol, "size": protocol_size(args), "amp": args.amp,
            "data": args.data, "voc_root": os.path.abspath(voc_root), "split": "val", "images": len(image_ids),
            "image_ids_sha256": results.ids_sha256(image_ids), "data_sha256": data_sha256, "limit": args.limit,
            "shard": args.shard, "voc_c": voc_c, "versions": versions, "corruption_code": args.corruption_code,
            "seed_rule": vocc.seed_rule(args.corruption_code), "calibration_stride": args.calibration_stride,
            "git_commit": git_commit(),
            "args": dict(vars(args))}   # the command's resolved arguments (--amp among them), as the docstring says


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


def sweep(args, device, world, models, infos, todo, items, image_ids, mine, batch):
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
                stats = [ConditionStats(len(mine), info.get("temperature"), args.calibration_stride)
                         for info in infos]
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
                                     pred.cpu().numpy(), [image_ids[mine[p]] for p in positions], write)
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
    models, infos = load_models(args)
    voc_root, dataset, indices, image_ids = open_val_set(args, shard)
    voc_c = dump_identity(args, dataset, voc_root)
    batch = args.batch_size if args.protocol == "paper" else 1  # other protocols keep each image's own size
    mine = world.split(len(indices), batch)   # positions (in indices) of this rank's images; all in one process
    cal_set = calibration_set(args, voc_root, dataset, infos)
    world.sync()                       # every rank's checks passed, or every rank stops with the first one's error
    todo = None
    if world.is_root:   # rank 0 alone owns --out: the lock, run.json, and what is left to do
        run = run_record(args, infos, voc_root, image_ids, voc_c, results.files_sha256(dataset))
        run["temperature"] = fit_images(args, cal_set)   # the images of the fit are part of the identity
        fresh, rows = open_results(args, held, run)
        todo, rows = conditions_to_do(args.out, conditions, infos, rows)
        print(f"git commit: {git_commit()}\narguments: {json.dumps(vars(args), sort_keys=True)}")
        print(f"{len(models)} model(s) x {len(conditions)} conditions x {len(indices)} images "
              f"({len(conditions) - len(todo)} conditions already done); corruption code {args.corruption_code}, "
              f"protocol {args.protocol}"
              f"{f' {args.size}px' if args.protocol != 'native' else ''}, device {args.device}", flush=True)
        if not todo:
            results.write_metrics(args.out, rows)
    todo = world.share(todo)   # rank 0's plan: every rank sweeps the same conditions in the same order
    if not todo:
        return 0
    check_not_val(args, cal_set, dataset)
    # One fit, on rank 0, shared: every rank scales by the same temperatures (docs/calibration.md).
    temperature = world.share(fit_temperatures(args, device, models, infos, cal_set) if world.is_root else None)
    for info in infos:
        if temperature is not None:
            info["temperature"] = {r: f["temperature"] for r, f in temperature["models"][info["name"]].items()}
    if world.is_root:
        run["temperature"] = temperature
    items = ConditionImages(dataset, [indices[p] for p in mine], todo, args.protocol, args.size, args.voc_c,
                            args.corruption_code)
    start = time.perf_counter()
    for (c, s), stats, t0, predictions in sweep(args, device, world, models, infos, todo, items, image_ids, mine,
                                                batch):
        if world.size > 1:   # the ranks' parts, merged on rank 0 into what one process would have
            stats, predictions = gather_ranks(world, stats, mine, predictions)
            if stats is None:
                continue
            for path, data in predictions:
                vocc.write_bytes(path, data)
        seconds = time.perf_counter() - t0
        new = [metrics_row(st, info, c, s, args, len(indices), seconds) for st, info in zip(stats, infos)]
        folder = fresh.path if fresh else args.out
        for st, info in zip(stats, infos):
            write_condition(folder, info["name"], c, s, st, image_ids, *per_image_counts(st.per_image))
        rows = rows + new
        save_results(folder, fresh, run, rows)
        print(f"{c}/{s}: " + "  ".join(f"{r['model']} {r['miou']:.4f}" for r in new) + f"  ({seconds:.1f}s)",
              flush=True)
    print(f"swept {len(todo)} conditions in {time.perf_counter() - start:.1f}s; results in "
          f"{os.path.join(args.out, 'metrics.jsonl')}")
    return 0


# ---------------------------------------------------------------------------------------------- merge

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
            pieces, ids, secs, n = [], [], 0.0, 0
            for d, _, rws in runs:
                row = [x for x in rws if (x["model"], x["corruption"], x["severity"]) == (name, c, s)]
                lg, cf = parts[name, (c, s), d]
                pieces.append((ConditionStats.from_files(lg, cf), (cf["tp"], cf["fp"], cf["fn"])))
                ids += list(cf["image_ids"])
                secs += row[0].get("seconds") or 0.0
                n += row[0].get("images") or len(cf["image_ids"])
            order = np.argsort(np.array(ids), kind="stable")
            st, (tp, fp, fn) = combine(pieces, order)
            out_rows.append(metrics_row(st, info, c, s, args, n, secs))
            write_condition(folder, name, c, s, st, np.array(ids)[order], tp, fp, fn)
    save_results(folder, fresh, merged, out_rows)
    print(f"merged {len(runs)} folders: {len(conds)} conditions x {len(base['models'])} models -> {args.out}")
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
                        "torch hub cache) or module.path:factory (a function returning an nn.Module)")
    p.add_argument("--names", nargs="+", default=None,
                   help="display names (plain file names); default: the name stored in each checkpoint, the "
                        "builder's name for torchvision:, the factory's for module:factory")
    model_specs.add_model_arguments(p, "--checkpoints")
    add_data_arguments(p, "voc", help="which val set: VOC 2012 val under --voc-root, or the synthetic one")
    add_code_argument(p)
    p.add_argument("--voc-c", default=None,
                   help="a dump_voc_c.py folder: read corrupted images from it where present, corrupt on the fly "
                        "otherwise (identical pixels either way)")
    p.add_argument("--corruptions", nargs="+", default=["all"],
                   help="names, short names, numbers, 'all' (the 15), 'held_out', or a group")
    p.add_argument("--severities", nargs="+", default=["0", "1", "2", "3", "4", "5"],
                   help="0 = clean (evaluated once, reported as corruption 'clean'), 1..5")
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                   help="paper: Pillow-resize to --size x --size, corrupt, score at that size (the paper's sweep); "
                        "shortside: short side --size, aspect kept (the notebook's FixScaleResize, for its clean PCA "
                        "pass); native: original resolution")
    p.add_argument("--size", type=int, default=224,
                   help="image side under --protocol paper, short side under shortside (smaller is faster)")
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
