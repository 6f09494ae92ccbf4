"""bench.py's train group: common.data's training sample against decoding alone, on VOC-sized JPEGs, as one
DataLoader worker runs it (train_vs_decode, train_16_workers; BENCHMARKS.md)."""
import os

import numpy as np
import torch
from PIL import Image

from benchmarks.measure import result, timed, torch_threads
from common import vocc
from common.data import train_transform, voc_dataset


def voc_sized_copy(ctx):
    """The synthetic val images as a VOC training set of VOC-sized JPEGs (~500x375, quality 90, upscaled)."""
    base = os.path.join(ctx["scratch"], "voc-sized", "VOCdevkit", "VOC2012")
    src = voc_dataset(os.path.join(ctx["cfg"]["synthetic_root"], "voc"), "val")
    ids = [f"2099_{i:06d}" for i in range(min(ctx["cfg"]["train_images"], len(src)))]
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    for (img, target), image_id in zip(src, ids):
        size = (500, 375) if img.size[0] >= img.size[1] else (375, 500)
        img.resize(size, Image.BICUBIC).save(os.path.join(base, "JPEGImages", f"{image_id}.jpg"), quality=90)
        vocc.write_bytes(os.path.join(base, "SegmentationClass", f"{image_id}.png"),
                         vocc.png_bytes(np.asarray(target.resize(size, Image.NEAREST)), palette=True))
    vocc.write_bytes(os.path.join(base, "ImageSets", "Segmentation", "train.txt"), ("\n".join(ids) + "\n").encode())
    return os.path.dirname(os.path.dirname(base))


def bench_train_input(ctx):
    """common.data's training sample on VOC-sized JPEGs on one thread, what one DataLoader worker has."""
    root, tf = voc_sized_copy(ctx), train_transform(224)
    ds, plain = voc_dataset(root, "train", tf), voc_dataset(root, "train")
    n = len(ds)
    pairs = [plain[i] for i in range(n)]   # decoded (image, label) pairs
    jobs = dict(decode=lambda: [np.asarray(Image.open(p).convert("RGB")) for p in ds.images],
                transform=lambda: [tf(*p) for p in pairs], full_sample=lambda: [ds[i] for i in range(n)])
    with torch_threads(1):   # torch and OpenCV
        torch.manual_seed(0)
        t = {name: timed(fn, "cpu", ctx["cfg"]["repeats"], warmup=True)[0] / n for name, fn in jobs.items()}
    return {"train_vs_decode": result(t["transform"] / t["decode"], 2.0, "<=", {
                f"{name}_per_image": v for name, v in t.items()}, full_sample_vs_decode=round(
                t["full_sample"] / t["decode"], 3)),
            "train_16_workers": result(16 / t["full_sample"], 2000, ">=", dict(full_sample_per_image=t["full_sample"]),
                                       images_per_s_per_core=round(1 / t["full_sample"], 1))}
