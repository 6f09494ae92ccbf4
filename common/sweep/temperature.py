"""Temperature scaling before the sweep: which clean images the temperatures are fitted on (never val, the
test set) and the fit, one T per model and reading (docs/calibration.md)."""
import copy
import os

import numpy as np
import torch
from tqdm import tqdm

from common import results
from common.calibration import fit_temperature
from common.cli import UsageError, check_at_least, check_plain_name
from common.constants import IGNORE_INDEX
from common.data import VOC_BASE_DIR, check_protocol_sizes, eval_sample, normalise_uint8, read_split
from common.training_sets import evenly_spaced
from common.device import autocast, memory_format


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


def other_calibration_set(args, data, infos):
    """``calibration_set`` on a dataset of common/datasets (Cityscapes, ADE20K, ACDC, folder): --calibration-split
    auto is the images of its train split every checkpoint held out (train.py --hold-out), else its train split
    with a note; a name is one of the dataset's splits other than val."""
    name, spec = args.calibration_split, data.spec
    if name == "val":
        raise UsageError(f"--calibration-split val: {spec.name} val is the test set, and a temperature fitted on it "
                         f"would be tuned on the test images; use auto (default) or train, or --calibration-images 0")
    held = None
    if name == "auto":
        held = [set(i.get("held_out") or ()) for i in infos if "identity" not in i]
        held = set.intersection(*held) if held else set()
        name = "train"
    if name not in spec.splits:
        raise UsageError(f"--calibration-split {name}: {spec.name} has the splits {', '.join(spec.splits)}; name "
                         f"one other than val, or --calibration-images 0")
    options = {"conditions": args.acdc_conditions} if spec.name == "acdc" else {}
    dataset = spec.eval_dataset(data.root, name, **options)
    ids = list(dataset.ids)
    source = name
    if held:
        ids, source = [i for i in ids if i in held], "held-out"
    elif args.calibration_split == "auto":
        print("note: no checkpoint held training images out (train.py --hold-out N), so the temperatures are fitted "
              f"on {spec.name} train images the models were trained on", flush=True)
    picked = evenly_spaced(ids, args.calibration_images)
    where = {i: k for k, i in enumerate(dataset.ids)}
    indices = [where[i] for i in picked]
    check_protocol_sizes(dataset, indices, args.protocol)
    return dataset, indices, picked, source


def calibration_set(args, voc_root, val, infos, data=None):
    """(dataset, indices, ids, what they are) of the clean images the temperatures are fitted on:
    --calibration-images of ``calibration_ids``, evenly spaced through them (deterministic); None with
    --calibration-images 0. VOC val is the test set: naming it, or a split sharing an image with it, is refused.
    ``data`` (common.datasets.open_data) other than VOC: ``other_calibration_set``."""
    check_at_least("--calibration-images", args.calibration_images, 0)
    if args.calibration_images == 0:
        return None
    if data is not None and data.spec.name != "voc":
        return other_calibration_set(args, data, infos)
    source, path, ids = calibration_ids(args, voc_root, infos)
    picked = evenly_spaced(ids, args.calibration_images)
    dataset = copy.copy(val)           # val's loader and checks, over the calibration images' files
    base = os.path.dirname(os.path.dirname(os.path.dirname(path)))
    dataset.images = [os.path.join(base, "JPEGImages", f"{i}.jpg") for i in picked]
    dataset.targets = [os.path.join(base, "SegmentationClass", f"{i}.png") for i in picked]
    dataset.ids = list(picked)
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
    val_ids = set(getattr(val, "ids", None) or (os.path.splitext(os.path.basename(p))[0] for p in val.images))
    shared = [i for i in cal_set[2] if i in val_ids]
    if shared:
        raise UsageError(f"--calibration-split {args.calibration_split}: {len(shared)} of its images are val (test) "
                         f"images, first {shared[0]}; fit the temperature on images that are not in val")


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


def share_temperatures(world, args, device, models, infos, cal_set):
    """One fit, on rank 0, shared: every rank scales by the same temperatures (docs/calibration.md). Each
    model's info gets its {reading: T}; returns run.json's "temperature" (``fit_temperatures``) on every rank."""
    temperature = world.share(fit_temperatures(args, device, models, infos, cal_set) if world.is_root else None)
    for info in infos:
        if temperature is not None:
            info["temperature"] = {r: f["temperature"] for r, f in temperature["models"][info["name"]].items()}
    return temperature
