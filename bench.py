"""Benchmarks: each script, run as a user runs it, against its irreducible cost, side by side in one run.

    python bench.py --quick        # 2-core CPU, ~9-15 min (VMs differ): random-weight R50 checkpoints at 96 px
    python bench.py --gpu --minutes 8 --out bench.jsonl    # one CUDA GPU: model groups at 224 first, then the rest
    python bench.py --gpu --only model logits             # needs only torch, torchvision, numpy and Pillow
    python bench.py --only machine   # this machine's speed (R50 forward, 32x3x96x96), quoted beside run times
    python bench.py --only quick_step   # the quick model's step and forward: fp32 / bf16, each layout

Prints one JSON line per group as it ends (also appended to --out), then a table, the breakdown and one JSON
object of every row; a failing group does not stop the others (exit status 1). Scratch files go to --root, this
run's folder removed unless --keep. BENCHMARKS.md says how each script is run, defines every group, target and
JSON field, and keeps every run's numbers. The groups that drive the scripts are here; the model groups
(training and inference rates, MFU, --deterministic, gradients, the study projection) are in benchmarks/models.py,
the timers and the result row they share in benchmarks/measure.py.
"""
import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from unittest import mock

import numpy as np
import torch
from PIL import Image

import evaluate_corruptions
import train as train_script
from benchmarks.measure import KINDS, SHORT, Skip, model_kw, peak_memory, result, run_main, timed, torch_threads
from benchmarks.models import (bench_deterministic, bench_infer_model, bench_loss_gradients, bench_machine,
                               bench_quick_step, bench_study, bench_train_model, peak_tflops)
from common import vocc
from common.calibration import Calibration
from common.checkpoint import load_model, save_random_checkpoint
from common.cli import UsageError, run_cli
from common.constants import colorize
from common.corruptions import SLOW, corrupt_image, parse_corruptions, parse_severities
from common.data import eval_sample, normalise_uint8, train_transform, voc_dataset
from common.device import autocast, memory_format, resolve_device, use_device
from common.malloc import keep_freed_memory
from common.logits import LogitTracker, channel_argmax
from common.models import BACKBONES, predict
from common.folders import git_commit
from common.synthetic import ensure_synthetic

# Per mode: the models and how much work each measurement does; flags override single entries.
COMMON = dict(backbone="resnet50", head_channels=256, severities=[0, 1, 3, 5], sweep_repeats=3,
              corruptions=["gaussian_noise", "defocus_blur", "zoom_blur", "snow", "contrast", "jpeg_compression"],
              dump_corruptions=list(SLOW), dump_size=224, dump_severities=[1, 3, 5], dump_images=[8, 48],
              dump_repeats=2, logit_batch=8, logit_size=224, corrupt_size=224, corrupt_corruptions=["all"],
              min_val=100, synthetic_min_side=None, synthetic_max_side=None, train_workers=None,
              machine_backbone="resnet50", machine_head_channels=256, machine_batch=32, machine_size=96,
              quick_step_batch=8, quick_step_eval_batch=20, quick_step_size=80, quick_step_repeats=5)
MODES = {"quick": dict(COMMON, device="cpu", images=32, size=96, batch_size=16, repeats=3, logit_repeats=3,
                       train_images=32, frames=40, video_size=128, video_batch=8, train_crop=96, train_batch=4,
                       train_steps=3, infer_steps=2, infer_batch=4, infer_size=96, corrupt_images=1,
                       deterministic_pairs=1, sweep_amp="none", gradient_batch=8, gradient_batches=4),
         # train_batch None: each recipe's own (notebook 30, paper 20). The sweeps corrupt on one core (--workers
         # 0), which bounds them on a GPU: 32 images and one round keep each to a few minutes.
         "gpu": dict(COMMON, device="cuda", images=32, size=224, batch_size=32, repeats=5, logit_repeats=10,
                     sweep_repeats=1, train_images=64, frames=130, video_size=224, video_batch=16, train_crop=224,
                     train_batch=None, train_steps=40, infer_steps=20, infer_batch=32, infer_size=224,
                     corrupt_images=4, deterministic_pairs=2, sweep_amp="bf16", gradient_batch=16,
                     gradient_batches=4)}
# --tiny (hidden, for tests): every group at a size that runs in seconds. Its numbers mean nothing.
TINY = dict(backbone="resnet18", head_channels=8, images=2, size=32, batch_size=2, corruptions=["gaussian_noise"],
            severities=[0, 1], sweep_repeats=1, repeats=1, logit_repeats=1, logit_batch=1, logit_size=32,
            train_images=2, frames=4, video_size=32, video_batch=2, train_crop=32, train_batch=2, train_steps=1,
            infer_steps=1, infer_batch=2, infer_size=32, corrupt_images=1, corrupt_size=32,
            corrupt_corruptions=["contrast"], dump_corruptions=["zoom_blur"], dump_size=32, dump_severities=[1],
            dump_images=[1, 2], dump_repeats=1, deterministic_pairs=1, min_val=4, synthetic_min_side=32,
            synthetic_max_side=48, train_workers=0, gradient_batch=2, gradient_batches=1,
            machine_backbone="resnet18", machine_head_channels=8, machine_batch=1, machine_size=32,
            quick_step_batch=2, quick_step_eval_batch=2, quick_step_size=32, quick_step_repeats=1)
ROOT = os.path.dirname(os.path.abspath(__file__))
# Calibrated on the 2-core CPU, where the forward passes dominate: "info" on a GPU, with the CPU target beside.
CPU_CALIBRATED = ("shared_time_v3", "shared_time_v3plus", "logits_vs_forward")

# -------------------------------------------------------------------------------------------- helpers

def val_samples(cfg, size, indices):
    """``eval_sample`` (id, uint8 image, label) of synthetic val images ``indices`` at ``size`` px, as the sweep."""
    val = voc_dataset(os.path.join(cfg["synthetic_root"], "voc"), "val")
    return [eval_sample(val, i % len(val), "paper", size) for i in indices]

def corrupt_seconds(samples, conditions, repeats=1, warmup=None):
    """(seconds, {corruption: seconds}) of corrupt_image on samples x conditions, the fastest of ``repeats``
    passes, after the first sample under the ``warmup`` conditions (imports, numba's compiles)."""
    if warmup:
        corrupt_seconds(samples[:1], warmup)
    best = None
    for _ in range(repeats):
        per = dict.fromkeys([c for c, _ in conditions], 0.0)
        for image_id, image, _ in samples:
            for c, s in conditions:
                t0 = time.perf_counter()
                corrupt_image(image, image_id, c, s)
                per[c] += time.perf_counter() - t0
        best = per if best is None or sum(per.values()) < sum(best.values()) else best
    return sum(best.values()), best

def corrupt_alone(cfg, size, indices, conditions, repeats):
    """corrupt_seconds on val images ``indices``, warmed up; bench_dump runs it in a fresh process, like the dump."""
    return corrupt_seconds(val_samples(cfg, size, indices), conditions, repeats, warmup=conditions)

def in_fresh_process(fn, *args):
    """``fn(*args)`` in a new interpreter (multiprocessing's spawn), started as a script's own run is."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)

def notebook_moments(logits):
    """The paper notebook's way: per class a boolean mask over the batch, float32 sums. Same statistics."""
    k, pred, x = logits.shape[1], logits.argmax(1), logits.permute(0, 2, 3, 1)     # B x H x W x K view
    count, sums = torch.zeros(k, device=logits.device), torch.zeros((k, k), device=logits.device)
    sq = torch.zeros((k, k, k), device=logits.device)
    for n in range(k):
        v = x[pred == n]                                                           # N_n x K, float32
        count[n], sums[n], sq[n] = count[n] + v.shape[0], sums[n] + v.sum(0), sq[n] + v.T @ v
    return count, sums, sq

def mpl_compose(original, corrupted, pred_baseline, pred_robust, labels):
    """make_video's 960x540 2x2 frame drawn the notebook way: a matplotlib figure per frame, rasterised by Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 5.4), dpi=100, facecolor="black")
    canvas = FigureCanvasAgg(fig)
    tiles = ((original, "bilinear"), (corrupted, "bilinear"), (colorize(pred_baseline), "nearest"),
             (colorize(pred_robust), "nearest"))
    for k, ((img, interp), text) in enumerate(zip(tiles, labels)):
        ax = fig.add_axes([(k % 2) / 2, 0.5 - (k // 2) / 2, 0.5, 0.5])
        ax.imshow(img, interpolation=interp)
        ax.set_axis_off()
        ax.text(0.012, 0.97, text, transform=ax.transAxes, va="top", ha="left", color="white", fontsize=13,
                bbox=dict(facecolor="black", alpha=0.8, edgecolor="none", pad=3))
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])

def conditions_of(cfg):
    """The (corruption, severity) list evaluate_corruptions.py builds: clean/0 first, then c x s>0."""
    sev = parse_severities([str(s) for s in cfg["severities"]])
    return [("clean", 0)] * (0 in sev) + [(c, s) for c in parse_corruptions(cfg["corruptions"]) for s in sev if s]

# --------------------------------------------------------------------- groups (defined in BENCHMARKS.md)

def run_sweep(cfg, ckpts, out, log):
    """(wall seconds, corrupt_image calls) of evaluate_corruptions.main in this process, with --workers 0."""
    argv = ["--checkpoints", *ckpts, "--data", "synthetic", "--synthetic-root", cfg["synthetic_root"],
            "--limit", str(cfg["images"]), "--size", str(cfg["size"]), "--batch-size", str(cfg["batch_size"]),
            "--corruptions", *cfg["corruptions"], "--severities", *map(str, cfg["severities"]),
            "--workers", "0", "--device", cfg["device"], "--amp", cfg["sweep_amp"], "--out", out]
    # The one seam into a script: corrupt_image wrapped, not replaced, to count its calls. With --workers 0 the
    # loader corrupts in this process, where the wrapper sees every call.
    with mock.patch.object(evaluate_corruptions, "corrupt_image", wraps=evaluate_corruptions.corrupt_image) as calls:
        return run_main(evaluate_corruptions, argv, log, cfg["device"])[0], calls.call_count

def bench_sweep(ctx, arch):
    """sweep_efficiency, shared_calls and shared_time of the three checkpoints of ``arch``."""
    cfg, ckpts, short, dev = ctx["cfg"], ctx["checkpoints"](arch), SHORT[arch], ctx["cfg"]["device"]
    folder, fmt = os.path.join(ctx["scratch"], f"sweep-{short}"), memory_format(torch.device(dev), cfg["sweep_amp"])
    bs = cfg["batch_size"]
    conds = conditions_of(cfg)
    corrupted = conds[conds[0][1] == 0:]
    n = min(cfg["images"], len(voc_dataset(os.path.join(cfg["synthetic_root"], "voc"), "val")))
    samples = val_samples(cfg, cfg["size"], range(n))
    # Warm-up: imagecorruptions' imports and numba's compiles, a tiny sweep (lazy imports), first forwards.
    corrupt_seconds(samples[:1], corrupted)
    run_sweep(dict(cfg, images=2, corruptions=cfg["corruptions"][:1], severities=[0, 1]), ckpts[:1],
              os.path.join(folder, "warmup"), ctx["log"])
    # The forwards alone, as the sweep runs them: its batches, memory format, inference mode and --amp.
    models = [load_model(p, dev)[0].to(memory_format=fmt) for p in ckpts]
    batches = [normalise_uint8(torch.from_numpy(np.stack([s[1] for s in samples[i:i + bs]])).to(dev)).contiguous(
        memory_format=fmt) for i in range(0, n, bs)]

    def forward(model):
        with torch.inference_mode(), autocast(torch.device(dev), cfg["sweep_amp"]):
            [model(x) for x in batches]
    [forward(m) for m in models]
    # Each ratio within its round (this VM's speed drifts by several percent over minutes), the median reported.
    rounds = []
    for r in range(cfg["sweep_repeats"]):
        (t1, calls1), (t3, calls3) = (run_sweep(cfg, ckpts[:m], os.path.join(folder, f"{m}-{r}"), ctx["log"])
                                      for m in (1, 3))
        fwd = [len(conds) * float(np.median([timed(lambda: forward(m), dev)[0] for _ in range(cfg["repeats"])]))
               for m in models]
        t_corrupt = corrupt_seconds(samples, corrupted)[0]
        rounds.append(dict(sweep_1_model=t1, sweep_3_models=t3, corrupt_alone=t_corrupt, forward_alone=sum(fwd),
                           extra_models_forward=sum(fwd[1:]), efficiency=t3 / (t_corrupt + sum(fwd)),
                           shared=(t3 - t1) / sum(fwd[1:])))
    # A run's fixed cost: the 3-model sweep again on its finished folder, where every condition is skipped.
    t_fixed = run_sweep(cfg, ckpts, os.path.join(folder, "3-0"), ctx["log"])[0]
    e, sh = (sorted(rounds, key=lambda rd: rd[key])[len(rounds) // 2] for key in ("efficiency", "shared"))
    seconds = dict({key: e[key] for key in ("sweep_3_models", "corrupt_alone", "forward_alone")}, fixed_per_run=t_fixed)
    return {f"sweep_efficiency_{short}": result(e["efficiency"], 1.2, "<=", seconds,
                                                rounds=[round(rd["efficiency"], 4) for rd in rounds]),
            f"shared_calls_{short}": result(calls3 / max(calls1, 1), 1.0, "==", calls_1_model=calls1,
                                            calls_3_models=calls3, calls_expected=n * len(corrupted)),
            f"shared_time_{short}": result(sh["shared"], 1.1, "<=", {key: sh[key] for key in (
                "sweep_1_model", "sweep_3_models", "extra_models_forward")},
                rounds=[round(rd["shared"], 4) for rd in rounds])}

def run_dump(argv, images, log):
    """Seconds of ``python dump_voc_c.py argv``'s own work: ``images`` over the images/s of its last line."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "dump_voc_c.py"), *argv], cwd=ROOT,
                          capture_output=True, text=True)
    with open(log, "a") as fh:
        fh.write(proc.stdout + proc.stderr)
    rate = re.findall(r"([0-9.]+) images/s", proc.stdout)
    if proc.returncode != 0 or not rate:
        raise RuntimeError(f"dump_voc_c.py exited {proc.returncode}: {(proc.stderr or proc.stdout)[-300:]}")
    return images / float(rate[-1])

def bench_dump(ctx):
    """dump_scaling and dump_overhead, per image by difference of a short and a long run."""
    cfg = ctx["cfg"]
    (short, long_), size, extra = cfg["dump_images"], cfg["dump_size"], cfg["dump_images"][1] - cfg["dump_images"][0]
    cors, sev = parse_corruptions(cfg["dump_corruptions"]), [s for s in cfg["dump_severities"] if s > 0]
    argv = ["--data", "synthetic", "--synthetic-root", cfg["synthetic_root"], "--size", str(size),
            "--corruptions", *cors, "--severities", *map(str, sev)]
    runs = {(w, n): min(run_dump(argv + ["--limit", str(n), "--workers", str(w), "--out", os.path.join(
        ctx["scratch"], f"dump-w{w}-n{n}-{r}")], n, ctx["log"]) for r in range(cfg["dump_repeats"]))
            for w in (1, 2) for n in (short, long_)}
    per_image = {w: max(runs[w, long_] - runs[w, short], 1e-9) / extra for w in (1, 2)}
    conditions = [(c, s) for c in cors for s in sev]
    t_corrupt = in_fresh_process(corrupt_alone, cfg, size, list(range(short, long_)), conditions,
                                 cfg["dump_repeats"])[0] / extra
    start_up = {f"start_up_workers_{w}": round(runs[w, short] - short * per_image[w], 2) for w in (1, 2)}
    return {"dump_scaling": result(per_image[1] / per_image[2], 1.7, ">=", dict(
                per_image_workers_1=per_image[1], per_image_workers_2=per_image[2],
                **{f"run_workers_{w}_images_{n}": t for (w, n), t in runs.items()}),
                images_per_s_1=round(1 / per_image[1], 2), images_per_s_2=round(1 / per_image[2], 2),
                whole_run_ratio=round(runs[1, long_] / runs[2, long_], 3)),
            "dump_overhead": result(per_image[1] / t_corrupt, 1.1, "<=", dict(
                dump_per_image=per_image[1], corrupt_alone_per_image=t_corrupt),
                files_per_image=len(conditions), **start_up)}

def logit_inputs(ctx, name):
    """DeepLabV3+ R50 (random weights, eval), its input batch and logits, after a first (warm-up) forward."""
    cfg, dev = ctx["cfg"], ctx["cfg"]["device"]
    model = load_model(save_random_checkpoint(os.path.join(ctx["scratch"], f"{name}.pt"), "baseline",
                                              **model_kw(cfg, "deeplabv3plus")), dev)[0]
    x = torch.randn(cfg["logit_batch"], 3, cfg["logit_size"], cfg["logit_size"],
                    generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.inference_mode():
        return model, x, model(x).float()

def bench_logits(ctx):
    dev, reps = ctx["cfg"]["device"], ctx["cfg"]["logit_repeats"]
    model, x, logits = logit_inputs(ctx, "logits")
    with torch.inference_mode():
        t_fwd = timed(lambda: model(x), dev, reps)[0]
        t_track = timed(lambda: LogitTracker().update(logits), dev, max(reps, 5), warmup=True)[0]
        t_loop = timed(lambda: notebook_moments(logits), dev, max(reps, 5), warmup=True)[0]
    return {"logits_vs_forward": result(t_track / t_fwd, 0.10, "<=", dict(tracker_update=t_track, forward=t_fwd)),
            "logits_vs_loop": result(t_track / t_loop, 2.0, "<=", dict(tracker_update=t_track, mask_loop=t_loop))}

def bench_calibration(ctx):
    """Calibration.update as ConditionStats calls it over the forward, every reading on (softmax and sigmoid,
    each also after temperature scaling); beside it each reading alone and the alternatives."""
    dev, reps = ctx["cfg"]["device"], max(ctx["cfg"]["logit_repeats"], 5)
    model, x, logits = logit_inputs(ctx, "calibration")
    (bs, _, h, w), gen = logits.shape, torch.Generator().manual_seed(0)
    labels = torch.randint(0, 21, (bs, h, w), generator=gen)
    labels[torch.rand((bs, h, w), generator=gen) < 0.05] = 255      # VOC's ignored borders, roughly
    labels, pos = labels.to(dev), np.arange(bs)
    pred, top = channel_argmax(logits), torch.maximum(logits[:, 1:].amax(1), logits[:, 0])
    temps = {"softmax": 1.5, "sigmoid": 1.5}   # as after a temperature fit: every reading on

    def every_reading():      # what ConditionStats.update runs: the four readings (docs/calibration.md)
        for cal in evaluate_corruptions.ConditionStats(bs, temps).calibrations.values():
            cal.update(logits, labels, pos, pred=pred, top=top)

    calls = dict(calibration=every_reading,
                 calibration_softmax=lambda: Calibration(bs).update(logits, labels, pos, pred=pred, top=top),
                 calibration_sigmoid=lambda: Calibration(bs, reading="sigmoid", classwise=True).update(
                     logits, labels, pos, pred=pred, top=top),
                 calibration_alone=lambda: Calibration(bs).update(logits, labels, pos),
                 condition_stats=lambda: evaluate_corruptions.ConditionStats(bs, temps).update(logits, labels, pos))
    with torch.inference_mode():
        t_fwd = timed(lambda: model(x), dev, reps)[0]
        t = {name: timed(fn, dev, reps, warmup=True)[0] for name, fn in calls.items()}
    return {f"{name}_vs_forward": result(t[name] / t_fwd, 0.05 if name == "calibration" else None,
                                         "<=" if name == "calibration" else "info", {name: t[name], "forward": t_fwd})
            for name in calls}

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

def video_frames(make_video, text, ckpts, cfg):
    """make_video's frame tiles, rebuilt from its clip, schedule (its segment_of: n // K frames a segment) and
    models, at the --size geometry the benchmark runs it with."""
    n = int(re.search(r"wrote .*?: (\d+) frames", text).group(1))
    size, schedule = tuple(map(int, re.search(r"models see (\d+)x(\d+)", text).groups())), make_video.build_schedule()
    originals = [np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in make_video.synthetic_frames(n)]
    conds = [schedule[make_video.segment_of(i, n, len(schedule))] for i in range(n)]
    corrupted = np.stack([corrupt_image(o, f"frame{i:06d}", c, s) if s else o
                          for i, (o, (c, s)) in enumerate(zip(originals, conds))])
    preds = [predict(load_model(ckpts[k], cfg["device"])[0], corrupted, cfg["device"], cfg["video_batch"])
             for k in (0, 2)]
    return [(originals[i], corrupted[i], preds[0][i], preds[1][i],
             ("", make_video.condition_label(*conds[i]), make_video.THEIRS, make_video.OURS)) for i in range(n)]

def bench_video(ctx):
    """video_render and video_end_to_end: make_video.compose against a matplotlib figure per frame."""
    import av           # PyAV and make_video (which needs it) only here: the other groups run without them
    import make_video

    cfg, ckpts, vdir, dev = ctx["cfg"], ctx["checkpoints"]("deeplabv3plus"), os.path.join(ctx["scratch"], "video"), \
        ctx["cfg"]["device"]
    argv = ["--synthetic", "--size", str(cfg["video_size"]), "--batch-size", str(cfg["video_batch"]), "--device",
            dev, "--baseline", ckpts[0], "--robust", ckpts[2]]
    # Warm-up: every corruption once (numba compiles glass blur on first use), a 4-frame run (lazy imports).
    corrupt_seconds([("warmup", np.zeros((64, 64, 3), np.uint8), None)], [(c, 2) for c in parse_corruptions(["all"])])
    run_main(make_video, argv + ["--frames", "4", "--out", os.path.join(vdir, "warm.mp4")], ctx["log"], dev)
    text = run_main(make_video, argv + ["--frames", str(cfg["frames"]), "--out", os.path.join(vdir, "script.mp4")],
                    ctx["log"], dev)[1]
    n, fps = re.search(r"wrote .*?: (\d+) frames.*\(([0-9.]+) frames/s\)", text).groups()
    n, t_script = int(n), int(n) / float(fps)      # its own clock: from the first frame to the renamed file
    frames = video_frames(make_video, text, ckpts, cfg)

    def render(compose_fn):
        container, stream = make_video.open_output(os.path.join(vdir, "render.mp4"), 25, make_video.pick_codec())
        with container:
            for i, args in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(compose_fn(*args), format="rgb24")
                vf.pts = i
                [container.mux(packet) for packet in stream.encode(vf)]
            [container.mux(packet) for packet in stream.encode(None)]   # the encoder's lookahead

    render(make_video.compose), mpl_compose(*frames[0])                   # encoder, fonts, matplotlib warm-up
    t_np, t_mpl = (timed(lambda: render(fn), dev, cfg["repeats"])[0] for fn in (make_video.compose, mpl_compose))
    t_pipeline = t_script + t_mpl - t_np   # the script's own run, with matplotlib's rendering instead of its own
    return {"video_render": result(t_mpl / t_np, 3.0, ">=", dict(make_video_render=t_np, matplotlib_render=t_mpl),
                                   frames=n, fps_make_video=round(n / t_np, 2), fps_matplotlib=round(n / t_mpl, 2)),
            "video_end_to_end": result(t_pipeline / t_script, None, "info", dict(
                make_video=t_script, matplotlib_pipeline=t_pipeline), fps_make_video=round(n / t_script, 2),
                fps_matplotlib=round(n / t_pipeline, 2))}

def bench_corrupt(ctx):
    """Corruption cost per val image at 224 px, every corruption and severity, on one core of this machine."""
    cfg = ctx["cfg"]
    samples, cors = val_samples(cfg, cfg["corrupt_size"], range(cfg["corrupt_images"])), parse_corruptions(
        cfg["corrupt_corruptions"])
    total, per = corrupt_seconds(samples, [(c, s) for c in cors for s in range(1, 6)], warmup=[(c, 1) for c in cors])
    ctx["corrupt_per_val_image"] = total / len(samples)    # all 75 conditions of one image
    return {"corrupt_all_75_per_image": result(total / len(samples), None, "info", {
        c: t / len(samples) for c, t in per.items()}, images=len(samples), size=cfg["corrupt_size"])}

# ---------------------------------------------------------------------------------------------- main

# Each group in the order it runs: its function, whether it reads the synthetic set, and its rough seconds for
# --minutes in quick mode (BENCHMARKS.md's runs, rounded up) and gpu mode (guesses for one H100/H200).
GROUPS = {"machine": (lambda ctx: bench_machine(ctx), False, 15, 5),
          "quick_step": (lambda ctx: bench_quick_step(ctx), False, 25, 10),
          "train_v3": (lambda ctx: bench_train_model(ctx, "deeplabv3"), False, 150, 120),
          "train_v3plus": (lambda ctx: bench_train_model(ctx, "deeplabv3plus"), False, 100, 60),
          "infer_v3": (lambda ctx: bench_infer_model(ctx, "deeplabv3"), False, 90, 30),
          "infer_v3plus": (lambda ctx: bench_infer_model(ctx, "deeplabv3plus"), False, 60, 20),
          "deterministic": (lambda ctx: bench_deterministic(ctx), False, 200, 90),
          "logits": (lambda ctx: bench_logits(ctx), False, 15, 15),
          "calibration": (lambda ctx: bench_calibration(ctx), False, 15, 15),
          "corrupt": (lambda ctx: bench_corrupt(ctx), True, 40, 30),
          "study": (lambda ctx: bench_study(ctx), False, 1, 1),
          "sweep_v3": (lambda ctx: bench_sweep(ctx, "deeplabv3"), True, 420, 200),
          "sweep_v3plus": (lambda ctx: bench_sweep(ctx, "deeplabv3plus"), True, 240, 200),
          "dump": (lambda ctx: bench_dump(ctx), True, 200, 90),
          "train": (lambda ctx: bench_train_input(ctx), True, 10, 10),
          "video": (lambda ctx: bench_video(ctx), True, 60, 60),
          "gradients": (lambda ctx: bench_loss_gradients(ctx), True, 120, 20)}
# "model": every group that needs the model on the device and nothing beyond torch, torchvision, numpy, Pillow.
ALIASES = {"model": ("machine", "quick_step", "train_v3", "train_v3plus", "infer_v3", "infer_v3plus", "deterministic",
                     "study"),
           "sweep": ("sweep_v3", "sweep_v3plus")}
QUICK_GROUPS = ("machine", "quick_step", "sweep_v3", "sweep_v3plus", "dump", "logits", "calibration", "train", "video")

def fits(estimate_s, minutes, elapsed_s):
    """Whether a group estimated at ``estimate_s`` fits in a --minutes budget of which ``elapsed_s`` is spent."""
    return minutes is None or estimate_s <= minutes * 60 - elapsed_s

def last_line(tb_text):
    """The last line of a traceback ("ValueError: ..."), what a group's JSON line reports as its error."""
    lines = [line for line in tb_text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"

def run_group(ctx, group, line):
    """One group's JSON line: its rows and breakdown, its error (the traceback on stderr), or why it was skipped."""
    t0, dev = time.perf_counter(), ctx["cfg"]["device"]
    peak_memory(dev, reset=True)
    try:
        res = (GROUPS[group][1] and ctx["synthetic"](), GROUPS[group][0](ctx))[1]
    except Skip as e:
        return dict(line, skipped=str(e))
    except Exception:
        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        return dict(line, seconds=round(time.perf_counter() - t0, 2), error=last_line(tb))
    for key in CPU_CALIBRATED if ctx["mode"] == "gpu" else ():
        if key in res and res[key]["rule"] != "info":
            res[key].update(rule="info", ok=None, cpu_target=f"{res[key]['rule']} {res[key]['target']}", target=None)
    notes = [f"{key}: " + ", ".join(f"{k} {v:.4g}" for k, v in r["seconds"].items()) for key, r in res.items()
             if r["seconds"]]
    return dict(line, seconds=round(time.perf_counter() - t0, 2), max_memory_allocated_mib=peak_memory(dev),
                results=res, notes=notes)

def make_context(args, mode, cfg):
    """What the groups share; the synthetic datasets (kept under --root) and checkpoints made on first use."""
    root = os.path.abspath(args.root)
    cfg["synthetic_root"] = os.path.join(root, "synthetic")
    name = torch.cuda.get_device_name(torch.device(cfg["device"])) if mode == "gpu" else platform.processor() or "cpu"
    ctx = dict(mode=mode, cfg=cfg, scratch=os.path.join(root, f"run-{os.getpid()}"), device_name=name,
               peak=peak_tflops(name) if mode == "gpu" else None, train_ips={}, infer_ips={}, cache={})
    ctx["log"] = os.path.join(ctx["scratch"], "scripts.log")   # what the scripts print
    os.makedirs(ctx["scratch"], exist_ok=True)

    def once(key, make):
        if key not in ctx["cache"]:
            ctx["cache"][key] = make()
        return ctx["cache"][key]

    def synthetic(folder, **counts):
        path = os.path.join(root, folder)
        ensure_synthetic(path, min_side=cfg["synthetic_min_side"], max_side=cfg["synthetic_max_side"], quiet=True,
                         **counts)
        return path

    # The bench's val set (and 8 training images, for the gradients); train.py's training set: train_steps
    # batches of the larger recipe batch, half VOC train, half SBD.
    n = cfg["train_steps"] * (cfg["train_batch"] or max(r["batch_size"] for r in train_script.RECIPES.values()))
    n_val = max(cfg["min_val"], cfg["images"])
    ctx["synthetic"] = lambda: once("val", lambda: synthetic("synthetic", n_voc_train=4, n_sbd=4, n_val=n_val))
    ctx["train_data"] = lambda: once("train", lambda: synthetic("synthetic-train", n_voc_train=n - n // 2,
                                                                n_sbd=n // 2, n_val=1))
    ctx["checkpoints"] = lambda arch: once(arch, lambda: [save_random_checkpoint(
        os.path.join(ctx["scratch"], f"{SHORT[arch]}-{k}.pt"), k, seed, **model_kw(cfg, arch))
        for seed, k in enumerate(KINDS)])
    return ctx

def print_summary(lines):
    """The table of every target, the breakdown, and as the last line one JSON object of every row."""
    results = {}
    for line in lines:
        results.update({line["group"]: dict(error=line["error"], ok=False)} if "error" in line else
                       line.get("results", {}))
    print(f"\n{'target':<34} {'measured':>9}  {'target value':>12}  ok")
    for key, r in results.items():
        rule = "" if "error" in r else "(no target)" if r["rule"] == "info" else f"{r['rule']} {r['target']}"
        shown = "ERROR" if "error" in r else "n/a" if r["measured"] is None else f"{r['measured']:.3f}"
        print(f"{key:<34} {shown:>9}  {rule:>12}  {'' if r['ok'] is None else r['ok']}   {r.get('error', '')}")
    print("\n" + "\n".join(n for line in lines for n in line.get("notes", [])))
    return results

def main(args):
    keep_freed_memory()   # as evaluate_corruptions.main does: the sweeps run in this process
    mode = "gpu" if args.gpu else "quick"
    if mode == "gpu" and not torch.cuda.is_available():
        raise UsageError("--gpu needs CUDA, which this torch build or machine does not have; use --quick")
    cfg = dict(MODES[mode], **(TINY if args.tiny else {}))
    cfg.update({k: v for k, v in vars(args).items() if k in cfg and v is not None})
    if mode == "gpu":
        cfg["device"] = str(resolve_device("cuda"))   # cuda:<current>: set_device refuses a bare "cuda"
        use_device(torch.device(cfg["device"]))
        # cuBLAS reads it once, at its first call: both sides of deterministic_cost share --deterministic's value.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    ctx, t_start, lines = make_context(args, mode, cfg), time.perf_counter(), []
    only = ([g for g in GROUPS if g in {x for name in args.only for x in ALIASES.get(name, (name,))}] if args.only
            else list(GROUPS if mode == "gpu" else QUICK_GROUPS))
    print(f"bench.py --{mode}{' --tiny' if args.tiny else ''}: {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {ctx['device_name']}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
          f"; git commit {git_commit()}\nconfig: {json.dumps({k: v for k, v in cfg.items() if k != 'synthetic_root'})}")
    print(f"groups: {' '.join(only)}" + ("" if args.minutes is None else f"; budget {args.minutes:g} min"), flush=True)
    # Two torch processes on the same cores stall each other on OpenMP barriers (a condition took 0.8 s or 7.0 s).
    if os.getloadavg()[0] > 0.5:
        print(f"warning: the load average is {os.getloadavg()[0]:.1f}: other processes keep the cores busy; timings "
              "will be noisy", file=sys.stderr, flush=True)
    # --tiny runs in test processes beside others: one thread keeps their OpenMP pools from stalling (25x seen).
    with open(args.out, "a") if args.out else contextlib.nullcontext() as out_fh, \
            torch_threads(1) if args.tiny else contextlib.nullcontext():
        for group in only:
            line = {"group": group, "estimate_s": 1 if args.tiny else GROUPS[group][2 if mode == "quick" else 3]}
            elapsed = time.perf_counter() - t_start
            lines.append(run_group(ctx, group, line) if fits(line["estimate_s"], args.minutes, elapsed) else
                         dict(line, skipped="budget", left_s=round(args.minutes * 60 - elapsed, 1)))
            print(json.dumps(lines[-1]), flush=True)
            if out_fh is not None:   # on disk at once: a run killed midway keeps every group it finished
                out_fh.write(json.dumps(lines[-1]) + "\n")
                out_fh.flush()
                os.fsync(out_fh.fileno())
    results = print_summary(lines)
    failed = [line["group"] for line in lines if "error" in line]
    print(f"total {time.perf_counter() - t_start:.0f}s" + (f"; failed: {' '.join(failed)}" if failed else ""))
    if not args.keep:
        shutil.rmtree(ctx["scratch"], ignore_errors=True)
    print(json.dumps(results))
    return 1 if failed else 0

def get_args_parser():
    q, g = MODES["quick"], MODES["gpu"]
    p = argparse.ArgumentParser(description="Measure each script, run as a user runs it, against its irreducible "
                                "cost (groups, targets and output: BENCHMARKS.md).")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the default: sizes for a 2-core CPU, about 9-15 minutes")
    mode.add_argument("--gpu", action="store_true", help="one CUDA GPU: the model groups at 224 first, then the rest")
    p.add_argument("--only", nargs="+", choices=tuple(GROUPS) + tuple(ALIASES), default=None, metavar="GROUP",
                   help=f"run these groups only: {', '.join(GROUPS)}; model = {' '.join(ALIASES['model'])}; sweep = "
                        f"both sweeps (default: all with --gpu, {' '.join(QUICK_GROUPS)} with --quick)")
    p.add_argument("--minutes", type=float, default=None, help="budget: skip a group whose estimate no longer fits")
    p.add_argument("--out", default=None, help="also append each group's JSON line here as it ends (flushed)")
    p.add_argument("--backbone", choices=tuple(BACKBONES), default=None, help=f"default {q['backbone']}")
    for flag, text in (("--head-channels", "ASPP/decoder width"), ("--images", "val images in the sweep"),
                       ("--size", "image side in the sweep"), ("--batch-size", "sweep batch size"),
                       ("--frames", "frames of make_video's clip"),
                       ("--repeats", "repeats of the short measurements (the fastest counts)"),
                       ("--sweep-repeats", "rounds of the sweep measurements (the median round counts)")):
        key = flag[2:].replace("-", "_")
        p.add_argument(flag, type=int, default=None, help=f"{text} (quick {q[key]}, gpu {g[key]})")
    p.add_argument("--corruptions", nargs="+", default=None,
                   help=f"the sweep's (default: {' '.join(q['corruptions'])})")
    p.add_argument("--severities", type=int, nargs="+", default=None,
                   help=f"the sweep's, 0 = clean (default: {' '.join(map(str, q['severities']))})")
    p.add_argument("--root", default="data/bench", help="scratch folder: synthetic datasets (kept), run files")
    p.add_argument("--keep", action="store_true", help="keep this run's files under ROOT/run-<pid>/")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)   # for tests: seconds, numbers mean nothing
    return p

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
