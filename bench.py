"""Benchmarks: each script, run as a user runs it, against its irreducible cost, side by side in one run.

    python bench.py --quick        # 2-core CPU, ~9-15 min (VMs differ): random-weight R50 checkpoints at 96 px
    python bench.py --gpu --minutes 8 --out bench.jsonl    # one CUDA GPU: model groups at 224 first, then the rest
    python bench.py --gpu --only model logits             # needs only torch, torchvision, numpy and Pillow
    python bench.py --only machine   # this machine's speed (R50 forward, 32x3x96x96), quoted beside run times
    python bench.py --only quick_step   # the quick model's step and forward: fp32 / bf16, each layout
    python bench.py --only dump_full slide   # the dump per corruption at 2048x1024; sliding window vs whole image

Prints one JSON line per group as it ends (also appended to --out), then a table, the breakdown and one JSON
object of every row; a failing group does not stop the others (exit status 1). Scratch files go to --root, this
run's folder removed unless --keep. BENCHMARKS.md says how each script is run, defines every group, target and
JSON field, and keeps every run's numbers. This file holds the modes, the order of the groups, the budget and the
summary; the groups themselves are in benchmarks/, by topic: models.py (training and inference rates, MFU,
--deterministic, gradients, the study projection), corruption.py (the sweep, the dump, the dump at 2048 x 1024,
corrupt_image alone), inference.py (the sliding window against the whole image), logits.py (LogitTracker and the calibration readings), train_input.py (the training sample), video.py (the
video's frames), and measure.py (the timers and the result row they share).
"""
import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import time
import traceback

import torch

import train as train_script
from benchmarks.corruption import bench_corrupt, bench_dump, bench_dump_full, bench_sweep
from benchmarks.inference import bench_slide
from benchmarks.logits import bench_calibration, bench_logits
from benchmarks.measure import KINDS, SHORT, Skip, model_kw, peak_memory, torch_threads
from benchmarks.models import (bench_deterministic, bench_infer_model, bench_loss_gradients, bench_machine,
                               bench_quick_step, bench_study, bench_train_model, peak_tflops)
from benchmarks.train_input import bench_train_input
from benchmarks.video import bench_video
from common.checkpoint import save_random_checkpoint
from common.cli import UsageError, run_cli
from common.corruptions import SLOW
from common.device import resolve_device, use_device
from common.malloc import keep_freed_memory
from common.models import BACKBONES
from common.folders import git_commit
from common.synthetic import ensure_synthetic

# Per mode: the models and how much work each measurement does; flags override single entries.
COMMON = dict(backbone="resnet50", head_channels=256, severities=[0, 1, 3, 5], sweep_repeats=3,
              corruptions=["gaussian_noise", "defocus_blur", "zoom_blur", "snow", "contrast", "jpeg_compression"],
              dump_corruptions=list(SLOW), dump_size=224, dump_severities=[1, 3, 5], dump_images=[8, 48],
              dump_repeats=2, logit_batch=8, logit_size=224, corrupt_size=224, corrupt_corruptions=["all"],
              min_val=100, synthetic_min_side=None, synthetic_max_side=None, train_workers=None,
              machine_backbone="resnet50", machine_head_channels=256, machine_batch=32, machine_size=96,
              quick_step_batch=8, quick_step_eval_batch=20, quick_step_size=80, quick_step_repeats=5,
              # dump_full: every corruption of ImageNet-C and Cityscapes-C (the 15 and the held-out 4) once
              dump_full_corruptions=["all", "held_out"], dump_full_size=(2048, 1024), dump_full_severity=3,
              dump_full_repeats=1,
              # slide: the Cityscapes sliding window (SegFormer's test mode) on reproduce.sh's quick model's size
              slide_size=(2048, 1024), slide_crop=1024, slide_stride=768, slide_backbone="resnet18",
              slide_head_channels=64, slide_repeats=2)
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
            quick_step_batch=2, quick_step_eval_batch=2, quick_step_size=32, quick_step_repeats=1,
            dump_full_corruptions=["contrast"], dump_full_size=(64, 32), dump_full_repeats=1, slide_size=(96, 48),
            slide_crop=48, slide_stride=36, slide_head_channels=8, slide_repeats=1)
# Calibrated on the 2-core CPU, where the forward passes dominate: "info" on a GPU, with the CPU target beside.
CPU_CALIBRATED = ("shared_time_v3", "shared_time_v3plus", "logits_vs_forward")


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
          "gradients": (lambda ctx: bench_loss_gradients(ctx), True, 120, 20),
          "slide": (lambda ctx: bench_slide(ctx), False, 120, 10),
          "dump_full": (lambda ctx: bench_dump_full(ctx), False, 150, 150)}
# Run only when --only names them: dump_full spends minutes of one core on 2048 x 1024 corruptions.
OPT_IN = ("dump_full",)
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
    ctx = dict(mode=mode, cfg=cfg, root=root, scratch=os.path.join(root, f"run-{os.getpid()}"), device_name=name,
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
            else [g for g in GROUPS if g not in OPT_IN] if mode == "gpu" else list(QUICK_GROUPS))
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
                        f"both sweeps (default: all but {' '.join(OPT_IN)} with --gpu, {' '.join(QUICK_GROUPS)} with "
                        f"--quick)")
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
