"""Benchmarks: how close each script comes to its irreducible cost, measured side by side in one run.

    python bench.py --quick        # this project's 2-core CPU, ~8 min: random-weight R50 checkpoints at 96 px
    python bench.py --gpu --minutes 8 --out bench.jsonl    # one CUDA GPU: model groups at 224 first, then the rest
    python bench.py --gpu --only model logits             # needs only torch, torchvision, numpy, Pillow

Numbers from this machine, and what dominates each, are in BENCHMARKS.md. Run it on an otherwise idle
machine: two multi-threaded torch processes on the same cores stall each other (a warning is printed when
other processes keep the cores busy).

Benchmarks, not tests: nothing here asserts, and nothing in tests/ times anything. Every measurement runs
alone, one after the other (never two heavy ones at once), with torch's default thread count unless said.
Scratch files go to ``--root`` (default data/bench, git-ignored): the synthetic dataset is generated there once
and kept; the per-run folder is removed at the end unless ``--keep``.

Measurement groups (``--only`` takes these names; ``model`` = the train_*, infer_*, deterministic and study
groups, ``sweep`` = both sweeps), in the order they run:

  train_v3 train_v3plus     training images/s, fp32 and bf16 + channels_last, MFU (GPU: at each recipe's batch)
  infer_v3 infer_v3plus     inference images/s of baseline, IBE and SCrIBE in both precisions
  deterministic             training images/s with and without --deterministic, alternated (notebook model)
  logits                    the logit tracker against the forward and the notebook's mask loop
  calibration               the sweep's calibration bookkeeping (ECE / NLL / Brier bins) against the forward
  corrupt                   every corruption at every severity of a 224 px image, on one core
  study                     the full study projected from the rates above (needs train_v3 and infer_v3)
  sweep_v3 sweep_v3plus     the corruption sweep's overhead and sharing, three checkpoints of each model
  dump train video          the VOC-C dump, the training input pipeline, the demo video (CPU)
  gradients                 cross-entropy's gradient over SCrIBE's BCE on one IBE model and the same crops, at
                            initialisation (info; run with --only gradients)

_v3 is the companion notebook's model, the default recipe (torchvision's DeepLabV3 head, ResNet-50, output
stride 8, 62.6 GFLOP per 224 px forward); _v3plus the paper's text (DeepLabV3+, stride 16, 26.5 GFLOP).
--gpu runs all groups, --quick all but the model groups and corrupt; a group that fails does not stop the
others (exit status 1 at the end). --minutes M skips, before it starts, any group whose rough estimate
(ESTIMATES below) no longer fits in what is left of M minutes.

Output. As each group ends, one JSON line on stdout (and appended to --out, flushed):
    {"group", "estimate_s", "seconds", "max_memory_allocated_mib" (CUDA; null on a CPU), "results": {target:
     row}, "notes": [breakdown lines]}, or {"group", "estimate_s", "seconds", "error": "<the traceback's last
     line>"}, or {"group", "estimate_s", "skipped": "budget" (with "left_s") or why its inputs are missing}.
A row is {"measured", "target", "rule" ("<=", ">=", "==", or "info": reported without a target), "ok",
"seconds": {raw timings}, ...}. On a GPU the ratios calibrated on the 2-core CPU (CPU_CALIBRATED) are reported
as "info" with the CPU target in "cpu_target". At the end: a table ``target | measured | target value | ok``,
the breakdown lines, and as the last line ONE JSON object of every row. --tiny (hidden) shrinks everything
to seconds for the tests; its numbers mean nothing.

The targets (ratios of times measured in this one run, on the same machine; the sweep's three carry the
suffix _v3 or _v3plus, and on a GPU the sweep runs with --amp bf16):

  sweep_efficiency      evaluate_corruptions.main() wall time, run in-process (imports and interpreter start
                        excluded; model loading, dataset opening and result writing included) with --workers 0
                        and three checkpoints, divided by (a) + (b): (a) corrupt_image alone on the same images
                        and conditions, (b) the three models' forward passes alone on the same batches
                        (median of --repeats passes over the images, times the number of conditions). The two
                        sweeps, (a) and (b) run back to back in each of --sweep-repeats rounds; each ratio is
                        taken within a round, and the median round's is reported. <= 1.2
  shared_calls          corrupt_image calls counted (a wrapper on evaluate_corruptions.corrupt_image) in the
                        1-checkpoint and the 3-checkpoint sweep: 3-model count / 1-model count, must be 1.
  shared_time           (3-model sweep - 1-model sweep) / forward time of the two extra models, within a round
                        (median round). <= 1.1
  dump_scaling          dump_voc_c.main() images/s with --workers 2 over --workers 1, on the dump's default work
                        (the paper's slow four, 224 px, severities 1 3 5). Each run is a fresh process with
                        main() timed inside it, into a fresh folder, twice (the faster counts); images/s by
                        difference between a short and a long run (8 and 48 images), so per-run start-up
                        (imports, numba compiles, the pool's workers starting) is reported apart. >= 1.7
  dump_overhead         dump time per image (--workers 1, by the same difference) / the time spent inside
                        corrupt_image in those same runs (a timing wrapper in the dump's process). <= 1.1
                        Beside it: over corrupt_image alone on the same images and conditions, timed in a
                        fresh process after a warm-up (noisier: separate runs).
  logits_vs_forward     LogitTracker.update on the logits of DeepLabV3+ R50 (random weights, eval) for one
                        8x3x224x224 batch / that forward pass. <= 0.10
  logits_vs_loop        LogitTracker.update / a float32 per-class boolean-mask loop (the paper notebook's
                        way: mask = pred == n; sums[n] += logits[mask] ...; same count, sum, outer products). <= 2
  calibration_vs_forward  what calibration adds to evaluate_corruptions.ConditionStats.update, called as it calls
                        it (common.calibration.Calibration.update with the prediction and the top logit it has
                        already, one row per image, labels with 255s), on the logits of the same DeepLabV3+ R50
                        8x3x224x224 batch as logits_vs_forward / that forward pass. <= 0.05. Beside it (no
                        target): ConditionStats.update as a whole over the forward, and Calibration.update
                        computing its own argmax and top logit.
  train_vs_decode       common.data.train_transform(224) on decoded VOC-sized (500x375) JPEG + label /
                        a bare JPEG decode (PIL open, convert RGB, np.asarray); one thread. <= 2
  train_16_workers      16 x images/s of one thread running the whole training sample (dataset[i]: decode image
                        and label, checks, train_transform), i.e. 16 loader workers if they scaled. >= 2000
  video_render          frames/s of make_video's rendering (make_video.compose, then the script's own encoder
                        settings: PyAV, libx264) / frames/s of drawing the same 2x2 frames as matplotlib figures
                        (imshow x4 + text, canvas.draw, buffer_rgba) into the same encoder. The frames (originals,
                        corruptions, both models' predictions) come from one run of the pipeline. >= 3
  video_end_to_end      (no target) make_video.main() frames/s / the same pipeline (clip, models, corruptions,
                        encoder) with matplotlib composing: the models and the encoder, common to both, bound it.

Model throughput (suffix _v3 or _v3plus; on a CPU only with --only, at crop 96):

  train_bf16_speedup    training images/s (train.py's train_one_epoch with the recipe's own arguments, on
                        batches already on the device) with bf16 autocast + channels_last / in fp32. >= 2
  train_images_per_s    the faster of the two. >= 1500 for DeepLabV3+ on one H100; the notebook model (2.4x its
                        FLOPs) is reported beside the same FLOP rate, without a target
  mfu_<mode>            (no target) achieved FLOP/s (images/s x the FLOPs of one training image, counted with
                        torch.utils.flop_counter: 187.6 GFLOP for the notebook model at 224, 79.3 for DeepLabV3+)
                        / the card's dense datasheet peak (bf16, or TF32 for fp32 runs, which cuDNN uses by default)
  infer_images_per_s_<kind>  (no target) the faster precision's images/s, both in the row
  deterministic_cost_v3 (no target) training images/s with --deterministic / without, median pair; the kernels
                        that warned for lack of a deterministic CUDA version are listed
  study_projected_minutes  3 x 50 epochs x 7,087 images at the notebook model's measured training rate, plus the
                        sweep: the larger of 3 models x 1,449 images x 76 conditions at its inference rates and
                        every corruption of 1,449 images (the corrupt group) spread over this machine's cores.
                        <= 30. _v3plus: the same for DeepLabV3+. Without the corrupt group it is a lower bound,
                        and the row says so.
"""
import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from fractions import Fraction

import cv2
import numpy as np
import torch
from PIL import Image

import evaluate_corruptions
import train as train_script
from common import vocc
from common.calibration import Calibration
from common.checkpoint import load_model, save_random_checkpoint
from common.cli import UsageError, run_cli
from common.constants import colorize
from common.corruptions import SLOW, corrupt_image, parse_corruptions, parse_severities
from common.data import build_datasets, eval_sample, normalise_uint8, train_transform, voc_dataset
from common.device import autocast, resolve_device, set_deterministic, use_device
from common.logits import LogitTracker, channel_argmax
from common.models import BACKBONES, build_model, default_output_stride, model_flops, predict, segmentation_loss
from common.outputs import git_commit
from common.synthetic import ensure_synthetic

# Per mode: what the models are and how much work each measurement does. --quick fits this project's
# 2-core CPU in a few minutes; --gpu is the paper's model size. Flags override single entries.
CORRUPTIONS = ["gaussian_noise", "defocus_blur", "zoom_blur", "snow", "contrast", "jpeg_compression"]
# Both modes: ResNet-50 models, the sweep's conditions, and the dump on its own default work at 224 px.
COMMON = dict(backbone="resnet50", head_channels=256, corruptions=CORRUPTIONS, severities=[0, 1, 3, 5],
              sweep_repeats=3, dump_corruptions=list(SLOW), dump_size=224, dump_severities=[1, 3, 5],
              dump_images=[8, 48], dump_repeats=2, logit_batch=8, logit_size=224, corrupt_size=224,
              corrupt_corruptions=["all"], min_val=100, synthetic_min_side=None, synthetic_max_side=None)
MODES = {
    "quick": dict(COMMON, device="cpu", images=32, size=96, batch_size=16, repeats=3, logit_repeats=3,
                  train_images=32, frames=40, video_size=128, video_batch=8, train_crop=96, train_batch=4,
                  train_steps=3, train_warmup=1, infer_steps=2, infer_batch=4, infer_size=96, corrupt_images=1,
                  deterministic_pairs=1, sweep_amp="none", gradient_batch=8, gradient_batches=4),
    # train_batch None: each recipe's own (notebook 30, paper 20). The sweeps run their corruptions on one core
    # (--workers 0), which bounds them on a GPU: 32 images and one round keep each to a few minutes.
    "gpu": dict(COMMON, device="cuda", images=32, size=224, batch_size=32, repeats=5, logit_repeats=10,
                sweep_repeats=1, train_images=64, frames=130, video_size=224, video_batch=16, train_crop=224,
                train_batch=None, train_steps=40, train_warmup=10, infer_steps=20, infer_batch=32, infer_size=224,
                corrupt_images=4, deterministic_pairs=2, sweep_amp="bf16", gradient_batch=16, gradient_batches=4),
}
# --tiny (for tests): every group at a size that runs in seconds. Its numbers mean nothing.
TINY = dict(backbone="resnet18", head_channels=8, images=2, size=32, batch_size=2, corruptions=["gaussian_noise"],
            severities=[0, 1], sweep_repeats=1, repeats=1, logit_repeats=1, logit_batch=1, logit_size=32,
            train_images=2, frames=4, video_size=32, video_batch=2, train_crop=32, train_batch=2, train_steps=1,
            train_warmup=1, infer_steps=1, infer_batch=2, infer_size=32, corrupt_images=1, corrupt_size=32,
            corrupt_corruptions=["contrast"],
            dump_corruptions=["zoom_blur"], dump_size=32, dump_severities=[1], dump_images=[1, 2], dump_repeats=1,
            deterministic_pairs=1, min_val=4, synthetic_min_side=32, synthetic_max_side=48, gradient_batch=2,
            gradient_batches=1)
ROOT = os.path.dirname(os.path.abspath(__file__))
KINDS = ("baseline", "ibe", "scribe")   # the three checkpoints of the sweep (the paper's three models)


# -------------------------------------------------------------------------------------------- helpers

def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device="cpu"):
    """(seconds, result) of one call, with the GPU drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def best_time(fn, repeats, device="cpu"):
    """The fastest of ``repeats`` calls (no warm-up: do it yourself where it matters). Interference (another VM, a daemon) only ever adds time, so the
    minimum is the estimate of a step's own cost (timeit's rule); every side of every ratio gets it."""
    return min(timed(fn, device)[0] for _ in range(repeats))


@contextlib.contextmanager
def quiet(log_path):
    """Send a script's own prints and progress bars to a log file; show its tail if it fails."""
    with open(log_path, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        try:
            yield
        except BaseException:
            fh.flush()
            sys.__stderr__.write("".join(open(log_path).readlines()[-20:]))
            raise


@contextlib.contextmanager
def torch_threads(n):
    """torch's and OpenCV's thread pools at ``n`` threads (a DataLoader worker has one of each)."""
    old, old_cv = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(n)
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
        cv2.setNumThreads(old_cv)


def result(measured, target, rule, seconds, **extra):
    """One row of the JSON line. ``rule`` "info" marks a reported ratio without a target (ok is None)."""
    ok = None if rule == "info" else {"<=": measured <= target, ">=": measured >= target,
                                      "==": measured == target}[rule]
    return {"measured": None if measured is None else round(float(measured), 4), "target": target, "rule": rule,
            "ok": None if ok is None else bool(ok),
            "seconds": {k: round(float(v), 4) for k, v in seconds.items()}, **extra}


# ------------------------------------------------------------------------- 1-3: sweep, shared, dump

def conditions_of(cfg):
    """The (corruption, severity) list evaluate_corruptions.py builds: clean/0 first, then c x s>0."""
    sev = parse_severities([str(s) for s in cfg["severities"]])
    cor = parse_corruptions(cfg["corruptions"])
    return ([("clean", 0)] if 0 in sev else []) + [(c, s) for c in cor for s in sev if s > 0]


def sweep_args(cfg, ckpts, out):
    return evaluate_corruptions.get_args_parser().parse_args([
        "--checkpoints", *ckpts, "--data", "synthetic", "--synthetic-root", cfg["synthetic_root"],
        "--limit", str(cfg["images"]), "--size", str(cfg["size"]), "--batch-size", str(cfg["batch_size"]),
        "--corruptions", *cfg["corruptions"], "--severities", *map(str, cfg["severities"]),
        "--workers", "0", "--device", cfg["device"], "--amp", cfg["sweep_amp"], "--out", out])


def run_sweep(cfg, ckpts, out, log):
    """(wall seconds, corrupt_image calls) of evaluate_corruptions.main in-process, --workers 0."""
    calls = [0]
    real = evaluate_corruptions.corrupt_image

    def counting(*a, **kw):
        calls[0] += 1
        return real(*a, **kw)

    evaluate_corruptions.corrupt_image = counting   # workers 0: the loader runs in this process
    try:
        with quiet(log):
            seconds, rc = timed(lambda: evaluate_corruptions.main(sweep_args(cfg, ckpts, out)), cfg["device"])
    finally:
        evaluate_corruptions.corrupt_image = real
    if rc != 0:
        raise RuntimeError(f"evaluate_corruptions.main returned {rc}; see {log}")
    return seconds, calls[0]


# dump_voc_c.main() timed inside a fresh Python process. Before the clock starts, one corrupt_image call per
# condition on a 32x32 image: the first use imports imagecorruptions (cv2, numba, scikit-image) and numba
# compiles some corruptions, a once-per-run cost (reported as warmup) that forked workers then inherit.
DUMP_MAIN = """
import json, sys, time
import numpy as np
import dump_voc_c
from common.corruptions import SLOW, corrupt_image, parse_corruptions, parse_severities
args = dump_voc_c.get_args_parser().parse_args(sys.argv[1:])
t = time.perf_counter()
for c in parse_corruptions(args.corruptions):
    for s in parse_severities(args.severities):
        corrupt_image(np.zeros((32, 32, 3), np.uint8), "warmup", c, s)
warm = time.perf_counter() - t
inside = [0.0]   # seconds spent inside corrupt_image during main() (this process: --workers 1 only)

def timed_corrupt(*a, **kw):
    t0 = time.perf_counter()
    try:
        return corrupt_image(*a, **kw)
    finally:
        inside[0] += time.perf_counter() - t0

dump_voc_c.corrupt_image = timed_corrupt
t = time.perf_counter()
rc = dump_voc_c.main(args)
print("BENCH-SECONDS", json.dumps([rc, time.perf_counter() - t, warm, inside[0]]))
"""


# corrupt_image alone, timed the same way: in a fresh process, after the same kind of warm-up.
CORRUPT_MAIN = """
import json, sys, time
import numpy as np
from common.corruptions import corrupt_image, parse_corruptions
from common.data import eval_sample, voc_dataset
root, size, first, last, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cors, sev = parse_corruptions(sys.argv[6].split(",")), [int(s) for s in sys.argv[7].split(",")]
samples = [eval_sample(voc_dataset(root, "val"), i, "paper", size) for i in range(first, last)]
for c in cors:
    corrupt_image(samples[0][1], "warmup", c, sev[0])
best = None
for _ in range(repeats):
    per = {c: 0.0 for c in cors}
    t0 = time.perf_counter()
    for image_id, image, _ in samples:
        for c in cors:
            for s in sev:
                t1 = time.perf_counter()
                corrupt_image(image, image_id, c, s)
                per[c] += time.perf_counter() - t1
    t = time.perf_counter() - t0
    if best is None or t < best[0]:
        best = (t, per)
print("BENCH-SECONDS", json.dumps([best[0] / len(samples), {c: v / len(samples) for c, v in best[1].items()}]))
"""


def run_script(code, argv, log):
    """Run ``python -c code argv`` in a fresh process from the repository root, its output appended to ``log``;
    returns the JSON list its last ``BENCH-SECONDS`` line carries."""
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True)
    with open(log, "a") as fh:
        fh.write(proc.stdout + proc.stderr)
    found = [line for line in proc.stdout.splitlines() if line.startswith("BENCH-SECONDS")]
    if not found:
        raise RuntimeError(f"bench script failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-300:]}")
    return json.loads(found[-1].split(" ", 1)[1])


def run_dump(argv, log):
    """(seconds of dump_voc_c.main, warm-up seconds, seconds inside corrupt_image in the main process), run in
    a fresh process."""
    rc, *times = run_script(DUMP_MAIN, argv, log)
    if rc != 0:
        raise RuntimeError(f"dump_voc_c.main returned {rc}; see {log}")
    return times


def bench_sweep(cfg, ckpts, scratch, arch):
    """Targets 1-3 for the three checkpoints of ``arch``, keys suffixed _v3 / _v3plus. Returns (results dict,
    breakdown lines)."""
    dev, n, bs, amp = cfg["device"], cfg["images"], cfg["batch_size"], cfg["sweep_amp"]
    short = SHORT[arch]
    scratch = os.path.join(scratch, f"sweep-{short}")   # each arch's result folders apart (their checkpoints differ)
    os.makedirs(scratch, exist_ok=True)
    conds = conditions_of(cfg)
    corrupted_conds = [(c, s) for c, s in conds if s > 0]
    voc_root = os.path.join(cfg["synthetic_root"], "voc")
    dataset = voc_dataset(voc_root, "val")
    n = min(n, len(dataset))
    log = os.path.join(scratch, "scripts.log")

    # Warm-up: imagecorruptions' imports and numba JIT, first forward passes, a tiny sweep (lazy imports).
    probe = eval_sample(dataset, 0, "paper", cfg["size"])[1]
    for c, s in corrupted_conds:
        corrupt_image(probe, "warmup", c, s)
    warm = dict(cfg, images=2, corruptions=cfg["corruptions"][:1], severities=[0, 1])
    run_sweep(warm, ckpts[:1], os.path.join(scratch, "sweep-warmup"), log)

    # What the sweep re-does per condition besides corrupting: decode + resize each image (eval_sample).
    samples = []
    t_decode = timed(lambda: samples.extend(eval_sample(dataset, i, "paper", cfg["size"]) for i in range(n)))[0]
    ids = [s[0] for s in samples]

    def corrupt_all():
        """(a) corrupt_image alone, every image under every corrupted condition (as the sweep does them)."""
        for c, s in corrupted_conds:
            for i in range(n):
                corrupt_image(samples[i][1], ids[i], c, s)

    # (b) forward passes alone, on the sweep's batches: a pass over the n images is what each condition runs.
    models, infos = evaluate_corruptions.load_models(argparse.Namespace(checkpoints=ckpts, names=None, device=dev))
    fmt = torch.channels_last if dev.startswith("cuda") else torch.contiguous_format
    batches = []
    for s0 in range(0, n, bs):
        imgs = torch.from_numpy(np.stack([samples[i][1] for i in range(s0, min(s0 + bs, n))]))
        labels = torch.from_numpy(np.stack([samples[i][2] for i in range(s0, min(s0 + bs, n))])).to(dev)
        batches.append((normalise_uint8(imgs.to(dev)).contiguous(memory_format=fmt), labels,
                        np.arange(s0, min(s0 + bs, n))))

    def forward_pass(model):   # as the sweep runs it: inference mode, its --amp
        with torch.inference_mode(), autocast(torch.device(dev), amp):
            for x, _, _ in batches:
                model(x)

    for model in models:
        forward_pass(model)   # warm-up
    k = len(conds)

    # Rounds: the 1- and 3-checkpoint sweeps, then (a) and (b) alone, back to back, each alone on the machine.
    # Every ratio is taken within one round, whose parts ran within a minute of each other: this VM's speed
    # drifts by several percent over minutes, and a sweep and a forward timed in different minutes would
    # carry that drift into the ratio. The median round's ratio is the one reported.
    rounds = []
    for r in range(cfg["sweep_repeats"]):
        t1, calls1 = run_sweep(cfg, ckpts[:1], os.path.join(scratch, f"sweep-1-{r}"), log)
        t3, calls3 = run_sweep(cfg, ckpts, os.path.join(scratch, f"sweep-3-{r}"), log)
        # The median of --repeats passes, like the sweeps' single runs it is compared with (the fastest pass
        # would set a best case against a typical one).
        fwd = [k * float(np.median([timed(lambda: forward_pass(model), dev)[0] for _ in range(cfg["repeats"])]))
               for model in models]
        t_corrupt = timed(corrupt_all)[0]
        rounds.append(dict(sweep_1_model=t1, sweep_3_models=t3, corrupt_alone=t_corrupt, forward_alone=sum(fwd),
                           extra_models_forward=sum(fwd[1:]), forward_per_model=fwd))
    for rd in rounds:
        rd["efficiency"] = rd["sweep_3_models"] / (rd["corrupt_alone"] + rd["forward_alone"])
        rd["shared"] = (rd["sweep_3_models"] - rd["sweep_1_model"]) / rd["extra_models_forward"]

    def median_round(key):
        """The round whose ratio is the median; of the two middle ones for an even count, the higher."""
        return sorted(rounds, key=lambda rd: rd[key])[len(rounds) // 2]

    # The per-run fixed cost (load and hash checkpoints, open the dataset, git, locks): the 3-model sweep
    # again on its finished folder, where every condition is skipped.
    t_fixed = run_sweep(cfg, ckpts, os.path.join(scratch, "sweep-3-0"), log)[0]
    # Statistics updates (confusion, LogitTracker, END), timed separately, for the breakdown.
    per_model_upd = []
    with torch.inference_mode():
        for model in models:
            st = evaluate_corruptions.ConditionStats(n)
            upd = 0.0
            for x, labels, pos in batches:
                with autocast(torch.device(dev), amp):
                    logits = model(x)
                upd += timed(lambda: st.update(logits, labels, pos), dev)[0]
            per_model_upd.append(k * upd)
    decode_all = k * t_decode
    update_all = sum(per_model_upd)

    res = {}
    e = median_round("efficiency")
    other = e["sweep_3_models"] - e["corrupt_alone"] - e["forward_alone"] - decode_all - update_all - t_fixed
    res[f"sweep_efficiency_{short}"] = result(e["efficiency"], 1.2, "<=", dict(
        sweep_3_models=e["sweep_3_models"], corrupt_alone=e["corrupt_alone"], forward_alone=e["forward_alone"],
        decode_resize_est=decode_all, stats_update_est=update_all, fixed_per_run=t_fixed, unexplained=other),
        rounds=[round(rd["efficiency"], 4) for rd in rounds])
    res[f"shared_calls_{short}"] = result(calls3 / max(calls1, 1), 1.0, "==", {}, calls_1_model=calls1, calls_3_models=calls3,
                                 calls_expected=n * len(corrupted_conds))
    sh = median_round("shared")
    res[f"shared_time_{short}"] = result(sh["shared"], 1.1, "<=", dict(
        sweep_1_model=sh["sweep_1_model"], sweep_3_models=sh["sweep_3_models"],
        extra_models_forward=sh["extra_models_forward"], extra_models_stats_update_est=sum(per_model_upd[1:])),
        rounds=[round(rd["shared"], 4) for rd in rounds])
    notes = [f"sweep {arch}: {k} conditions x {n} images, batch {bs}, amp {amp}; {len(rounds)} rounds, the median shown. 3-model "
             f"sweep {e['sweep_3_models']:.2f}s = corrupt {e['corrupt_alone']:.2f} + forward "
             f"{e['forward_alone']:.2f} + decode/resize per condition ~{decode_all:.2f} + stats update "
             f"~{update_all:.2f} + fixed per run {t_fixed:.2f} + other {other:.2f}; per round "
             + ", ".join(f"{rd['efficiency']:.3f}" for rd in rounds),
             f"shared: corrupt_image calls {calls1} (1 model) vs {calls3} (3 models), expected "
             f"{n * len(corrupted_conds)}; ({sh['sweep_3_models']:.2f} - {sh['sweep_1_model']:.2f}) / "
             f"{sh['extra_models_forward']:.2f}, of which the extra models' statistics ~"
             f"{sum(per_model_upd[1:]):.2f}; per round " + ", ".join(f"{rd['shared']:.3f}" for rd in rounds)
             + "; forward per pass over the images: "
             + ", ".join(f"{i['name']} {f / k:.3f}s" for i, f in zip(infos, sh["forward_per_model"]))]
    del models

    return res, notes


def bench_dump(cfg, scratch):
    """Dump targets, on what the dump is for: its default corruptions (the paper's slow four) at 224 px.

    Throughput is measured by difference: each worker count runs a short and a long dump into fresh
    folders, and images/s is (long - short images) / (long - short seconds). That removes the per-run
    start-up (imports, numba compiling glass blur, the pool's workers importing torch: 2-5 s), which a
    real dump (1,449 images, minutes per corruption) amortises and a bench-sized one would not. The
    whole-run times are reported as well.
    """
    voc_root = os.path.join(cfg["synthetic_root"], "voc")
    dataset = voc_dataset(voc_root, "val")
    short, long_ = cfg["dump_images"]
    size, sev = cfg["dump_size"], [s for s in cfg["dump_severities"] if s > 0]
    cors = parse_corruptions(cfg["dump_corruptions"])
    log = os.path.join(scratch, "scripts.log")

    def dump(workers, n, rep):
        argv = ["--data", "synthetic", "--synthetic-root", cfg["synthetic_root"], "--limit", str(n),
                "--size", str(size), "--corruptions", *cors, "--severities", *map(str, sev),
                "--workers", str(workers), "--out", os.path.join(scratch, f"dump-w{workers}-n{n}-{rep}")]
        return run_dump(argv, log)

    # Each run into a fresh folder, cfg["dump_repeats"] times, the fastest kept.
    tries = {(w, n): [dump(w, n, r) for r in range(cfg["dump_repeats"])] for w in (1, 2) for n in (short, long_)}
    runs = {key: min(v) for key, v in tries.items()}
    per_image = {w: (runs[w, long_][0] - runs[w, short][0]) / (long_ - short) for w in (1, 2)}
    # With one worker the dump corrupts in its own process: the time inside corrupt_image, from the same runs,
    # is the denominator least exposed to drift between runs (noise that slows both slows both).
    inside = (runs[1, long_][2] - runs[1, short][2]) / (long_ - short)

    # corrupt_image alone on the same images (the long run's extra ones) and conditions, in a fresh process.
    t_corrupt, per_cor = run_script(CORRUPT_MAIN, [voc_root, str(size), str(short), str(long_),
                                                   str(cfg["dump_repeats"]), ",".join(cors), ",".join(map(str, sev))],
                                    log)
    # The per-file work of the dump (PNG encoding, the write), timed apart for the breakdown, in this process.
    samples = [eval_sample(dataset, i, "paper", size) for i in range(short, long_)]
    outputs = [corrupt_image(image, image_id, c, s) for image_id, image, _ in samples for c in cors for s in sev]
    t_png, data = timed(lambda: [vocc.png_bytes(o) for o in outputs])
    t_png /= len(samples)
    wdir = os.path.join(scratch, "write-probe")
    t_write = timed(lambda: [vocc.write_bytes(os.path.join(wdir, f"{j}.png"), b) for j, b in enumerate(data)])[0]
    t_write /= len(samples)
    t_sample = timed(lambda: [eval_sample(dataset, i, "paper", size) for i in range(short, long_)])[0] / len(samples)
    files = len(cors) * len(sev)
    res = {"dump_scaling": result(per_image[1] / per_image[2], 1.7, ">=", dict(
               per_image_workers_1=per_image[1], per_image_workers_2=per_image[2],
               **{f"run_workers_{w}_images_{n}": t for (w, n), (t, *_) in runs.items()}),
               images_per_s_1=round(1 / per_image[1], 2), images_per_s_2=round(1 / per_image[2], 2),
               whole_run_ratio=round(runs[1, long_][0] / runs[2, long_][0], 3)),
           "dump_overhead": result(per_image[1] / inside, 1.1, "<=", dict(
               dump_per_image=per_image[1], inside_corrupt_image_per_image=inside, corrupt_alone_per_image=t_corrupt,
               png_encode_per_image=t_png, write_per_image=t_write, decode_resize_per_image=t_sample),
               files_per_image=files, versus_corrupt_alone=round(per_image[1] / t_corrupt, 3))}
    notes = [f"dump: {', '.join(cors)} x severities {sev} at {size} px, {short} and {long_} images; per image "
             f"(the {long_ - short} extra): workers 1 {per_image[1] * 1e3:.0f} ms, of which inside corrupt_image "
             f"{inside * 1e3:.0f} (alone in a fresh process: {t_corrupt * 1e3:.0f}, ratio "
             f"{per_image[1] / t_corrupt:.3f}) = corrupt {t_corrupt * 1e3:.0f} "
             f"({', '.join(f'{c} {t * 1e3:.1f}' for c, t in per_cor.items())}, a fresh process) + decode/resize "
             f"{t_sample * 1e3:.1f} + PNG encode {t_png * 1e3:.1f} ({files} files) + write {t_write * 1e3:.1f} "
             f"+ other {(per_image[1] - t_corrupt - t_sample - t_png - t_write) * 1e3:.1f}; workers 2 "
             f"{per_image[2] * 1e3:.0f} ms; whole runs ({long_} images): workers 1 {runs[1, long_][0]:.1f}s, "
             f"workers 2 {runs[2, long_][0]:.1f}s; start-up (short run minus its images): workers 1 "
             f"{runs[1, short][0] - short * per_image[1]:.1f}s, "
             f"workers 2 {runs[2, short][0] - short * per_image[2]:.1f}s"]
    return res, notes


# ----------------------------------------------------------------------------------- 4: logit tracking

def notebook_moments(logits):
    """The paper notebook's way: per class a boolean mask over the batch, float32 sums. Same statistics."""
    k = logits.shape[1]
    pred = logits.argmax(1)
    x = logits.permute(0, 2, 3, 1)                      # B x H x W x K view
    count = torch.zeros(k, device=logits.device)
    sums = torch.zeros((k, k), device=logits.device)
    sq = torch.zeros((k, k, k), device=logits.device)
    for n in range(k):
        mask = pred == n
        v = x[mask]                                     # N_n x K, float32
        count[n] += v.shape[0]
        sums[n] += v.sum(0)
        sq[n] += v.T @ v
    return count, sums, sq


def bench_logits(cfg, scratch):
    dev, reps = cfg["device"], cfg["logit_repeats"]
    # DeepLabV3+ (the paper's text) R50, output stride 16, random weights; as in the runs of BENCHMARKS.md.
    bs, side = cfg["logit_batch"], cfg["logit_size"]
    model = load_model(save_random_checkpoint(os.path.join(scratch, "logits-model.pt"), "baseline",
                                              **model_kw(cfg, "deeplabv3plus")), dev)[0]
    x = torch.randn(bs, 3, side, side, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.inference_mode():
        logits = model(x)                                # warm-up (oneDNN / cuDNN pick their kernels)
        t_fwd = best_time(lambda: model(x), reps, dev)
        LogitTracker().update(logits)
        t_track = best_time(lambda: LogitTracker().update(logits), max(reps, 5), dev)
        notebook_moments(logits)
        t_loop = best_time(lambda: notebook_moments(logits), max(reps, 5), dev)
        classes = int((torch.bincount(logits.argmax(1).flatten(), minlength=21) > 0).sum())
    res = {"logits_vs_forward": result(t_track / t_fwd, 0.10, "<=", dict(tracker_update=t_track, forward=t_fwd)),
           "logits_vs_loop": result(t_track / t_loop, 2.0, "<=", dict(tracker_update=t_track, mask_loop=t_loop))}
    notes = [f"logits: {bs}x21x{side}x{side}, {classes} classes predicted; forward {t_fwd:.3f}s, "
             f"tracker {t_track * 1e3:.1f} ms, "
             f"float32 mask loop {t_loop * 1e3:.1f} ms (best of {max(reps, 5)}; {torch.get_num_threads()} threads)"]
    return res, notes


def bench_calibration(cfg, scratch):
    """What the sweep's calibration adds per batch, against the forward that produced the logits."""
    dev, reps = cfg["device"], max(cfg["logit_repeats"], 5)
    bs, side = cfg["logit_batch"], cfg["logit_size"]
    model = load_model(save_random_checkpoint(os.path.join(scratch, "calibration-model.pt"), "baseline",
                                              **model_kw(cfg, "deeplabv3plus")), dev)[0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(bs, 3, side, side, generator=gen).to(dev)
    labels = torch.randint(0, 21, (bs, side, side), generator=gen)
    labels[torch.rand((bs, side, side), generator=gen) < 0.05] = 255      # VOC's ignored borders, roughly
    labels = labels.to(dev)
    positions = np.arange(bs)
    with torch.inference_mode():
        logits = model(x).float()                         # warm-up (oneDNN / cuDNN pick their kernels)
        t_fwd = best_time(lambda: model(x), reps, dev)
        pred, fg_max = channel_argmax(logits), logits[:, 1:].amax(1)    # ConditionStats has both already

        def sweep_call():   # exactly what ConditionStats.update adds for calibration
            Calibration(bs).update(logits, labels, positions, pred=pred, top=torch.maximum(fg_max, logits[:, 0]))

        def alone():
            Calibration(bs).update(logits, labels, positions)

        def stats():
            evaluate_corruptions.ConditionStats(bs).update(logits, labels, positions)

        for fn in (sweep_call, alone, stats):
            fn()
        t_cal = best_time(sweep_call, reps, dev)
        t_alone = best_time(alone, reps, dev)
        t_stats = best_time(stats, reps, dev)
    res = {"calibration_vs_forward": result(t_cal / t_fwd, 0.05, "<=", dict(calibration=t_cal, forward=t_fwd)),
           "calibration_alone_vs_forward": result(t_alone / t_fwd, None, "info",
                                                  dict(calibration_alone=t_alone, forward=t_fwd)),
           "condition_stats_vs_forward": result(t_stats / t_fwd, None, "info",
                                                dict(condition_stats=t_stats, forward=t_fwd))}
    notes = [f"calibration: {bs}x21x{side}x{side}; forward {t_fwd:.3f}s, calibration as the sweep calls it "
             f"{t_cal * 1e3:.1f} ms ({100 * t_cal / t_fwd:.1f}% of the forward), with its own argmax and top logit "
             f"{t_alone * 1e3:.1f} ms, ConditionStats.update in all {t_stats * 1e3:.1f} ms (best of {reps}; "
             f"{torch.get_num_threads()} threads)"]
    return res, notes


# ---------------------------------------------------------------------------- 5: training input pipeline

def make_voc_sized(cfg, dest):
    """VOC-layout folder of ~500x375 JPEGs (quality 90) + palette labels, from upscaled synthetic images."""
    src = voc_dataset(os.path.join(cfg["synthetic_root"], "voc"), "val")
    base = os.path.join(dest, "VOCdevkit", "VOC2012")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    ids = []
    for i in range(min(cfg["train_images"], len(src))):
        img, target = src[i]
        size = (500, 375) if img.size[0] >= img.size[1] else (375, 500)
        image_id = f"2099_{i:06d}"
        img.resize(size, Image.BICUBIC).save(os.path.join(base, "JPEGImages", f"{image_id}.jpg"), quality=90)
        label = np.asarray(target.resize(size, Image.NEAREST))
        with open(os.path.join(base, "SegmentationClass", f"{image_id}.png"), "wb") as fh:
            fh.write(vocc.png_bytes(label, palette=True))
        ids.append(image_id)
    with open(os.path.join(base, "ImageSets", "Segmentation", "train.txt"), "w") as fh:
        fh.write("\n".join(ids) + "\n")
    return dest


def bench_train_input(cfg, scratch):
    root = make_voc_sized(cfg, os.path.join(scratch, "voc-sized"))
    tf = train_transform(224)
    ds = voc_dataset(root, "train", tf)
    plain = voc_dataset(root, "train")
    n, reps = len(ds), cfg["repeats"]

    def decode_all():
        for p in ds.images:
            with Image.open(p) as im:
                np.asarray(im.convert("RGB"))

    pairs = [plain[i] for i in range(n)]   # decoded (PIL image, PIL label), already loaded by the checks
    step_time = {"params": 0.0, "crop": 0.0, "colour": 0.0, "to_tensors": 0.0}

    def transform_all():
        for img, target in pairs:
            tf(img, target)

    def transform_steps():   # the same work, step by step, for the breakdown
        for img, target in pairs:
            t0 = time.perf_counter()
            p = tf.get_params(*img.size)
            t1 = time.perf_counter()
            rgb, label = tf.crop(img, target, p)
            t2 = time.perf_counter()
            rgb = tf.colour(rgb, p)
            t3 = time.perf_counter()
            tf.to_tensors(rgb, label)
            t4 = time.perf_counter()
            for key, t in zip(step_time, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                step_time[key] += t

    # One thread: what one DataLoader worker has (torch sets 1 thread in each worker).
    with torch_threads(1):   # torch and OpenCV
        torch.manual_seed(0)
        decode_all(), transform_all(), ds[0]                         # warm-up
        t_dec = best_time(decode_all, reps) / n
        t_tf = best_time(transform_all, reps) / n
        t_full = best_time(lambda: [ds[i] for i in range(n)], reps) / n
        transform_steps()
    per_core = 1 / t_full
    res = {"train_vs_decode": result(t_tf / t_dec, 2.0, "<=", dict(
               decode_per_image=t_dec, transform_per_image=t_tf, full_sample_per_image=t_full),
               full_sample_vs_decode=round(t_full / t_dec, 3)),
           "train_16_workers": result(16 * per_core, 2000, ">=", dict(full_sample_per_image=t_full),
                                      images_per_s_per_core=round(per_core, 1))}
    notes = [f"train input: {n} JPEGs ~500x375, 1 thread; decode {t_dec * 1e3:.2f} ms, transform {t_tf * 1e3:.2f} ms, "
             f"dataset[i] {t_full * 1e3:.2f} ms ({per_core:.0f} images/s/core); transform steps (ms/image): "
             + ", ".join(f"{nm} {t / n * 1e3:.2f}" for nm, t in step_time.items())]
    return res, notes


# ------------------------------------------------------------------------------------------- 6: video

def mpl_compose(original, corrupted, pred_baseline, pred_robust, labels):
    """The same 2x2 frame drawn the notebook way: one matplotlib figure per frame, rasterised by Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    import make_video
    fig = Figure(figsize=(make_video.FRAME_W / 100, make_video.FRAME_H / 100), dpi=100, facecolor="black")
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


def bench_video(cfg, ckpts, scratch):
    import av           # PyAV and make_video (which needs it) only here: the other groups run without them
    import make_video

    dev, frames, size, bs = cfg["device"], cfg["frames"], cfg["video_size"], cfg["video_batch"]
    log = os.path.join(scratch, "scripts.log")
    vdir = os.path.join(scratch, "video")
    os.makedirs(vdir, exist_ok=True)
    argv = ["--synthetic", "--frames", str(frames), "--size", str(size), "--batch-size", str(bs),
            "--device", dev, "--baseline", ckpts[0], "--robust", ckpts[2]]

    # make_video.py as it is. Warm-up first: every corruption of the schedule once (numba compiles glass
    # blur on first use, ~2 s) and a short render (lazy imports, first forward passes).
    probe = np.zeros((64, 64, 3), np.uint8)
    for c, s in make_video.build_schedule():
        if s > 0:
            corrupt_image(probe, "warmup", c, s)
    with quiet(log):
        make_video.main(make_video.get_args_parser().parse_args(
            argv[:1] + ["--frames", "4"] + argv[3:] + ["--out", os.path.join(vdir, "warm.mp4")]))
        t_script, rc = timed(lambda: make_video.main(make_video.get_args_parser().parse_args(
            argv + ["--out", os.path.join(vdir, "script.mp4")])), dev)
    if rc != 0:
        raise RuntimeError(f"make_video.main returned {rc}; see {log}")

    # The same pipeline with matplotlib composing (make_video's own functions for everything else).
    stage = dict(setup=0.0, source=0.0, prepare=0.0, predict=0.0, compose=0.0, encode=0.0, flush=0.0)
    kept = []

    def source():   # the synthetic clip, its generation time counted apart
        gen = make_video.synthetic_frames(frames, 0)
        while True:
            t0 = time.perf_counter()
            frame = next(gen, None)
            stage["source"] += time.perf_counter() - t0
            if frame is None:
                return
            yield frame

    def mpl_pipeline():
        t0 = time.perf_counter()
        args = make_video.get_args_parser().parse_args(["--synthetic", "--baseline", ckpts[0], "--robust", ckpts[2],
                                                        "--device", str(dev), "--batch-size", str(bs)])
        models, names = make_video.load_pair(args)
        schedule = make_video.build_schedule()
        mw, mh = make_video.model_size(make_video.SYNTH_W, make_video.SYNTH_H, size)
        container, stream = make_video.open_output(os.path.join(vdir, "mpl.mp4"), Fraction(25),
                                                   make_video.pick_codec())
        stage["setup"] += time.perf_counter() - t0
        start = 0
        with container:
            for batch in make_video.batches(source(), bs):
                t0 = time.perf_counter()
                conds, originals, corrupted = make_video.prepare_batch(batch, start, frames, schedule, (mw, mh))
                t1 = time.perf_counter()
                preds = [predict(m, corrupted, dev, bs) for m in models]
                t2 = time.perf_counter()
                stage["prepare"] += t1 - t0
                stage["predict"] += t2 - t1
                kept.append((originals, corrupted, preds, conds, names))   # every frame's content
                for k, (c, s) in enumerate(conds):
                    t3 = time.perf_counter()
                    frame = mpl_compose(originals[k], corrupted[k], preds[0][k], preds[1][k],
                                        ("original", make_video.condition_label(c, s), names[0], names[1]))
                    t4 = time.perf_counter()
                    vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
                    vf.pts = start + k
                    for packet in stream.encode(vf):
                        container.mux(packet)
                    stage["compose"] += t4 - t3
                    stage["encode"] += time.perf_counter() - t4
                start += len(batch)
            t0 = time.perf_counter()
            for packet in stream.encode(None):   # the encoder's lookahead: x264 encodes much of it here
                container.mux(packet)
            stage["flush"] += time.perf_counter() - t0

    with quiet(log):
        mpl_compose(*(np.zeros((64, 64, 3), np.uint8),) * 2, *(np.zeros((64, 64), np.uint8),) * 2, ("a",) * 4)
        t_mpl = timed(mpl_pipeline, dev)[0]

    # The target: rendering the same frames (the same originals, corruptions and predictions, kept from the
    # pipeline above) into the same encoder, make_video.compose against a matplotlib figure per frame.
    frames_in = [(o[k], c[k], p[0][k], p[1][k], ("original", make_video.condition_label(*cs[k]), nm[0], nm[1]))
                 for o, c, p, cs, nm in kept for k in range(len(cs))]

    def render(compose_fn, path):
        container, stream = make_video.open_output(path, Fraction(25), make_video.pick_codec())
        with container:
            for i, args in enumerate(frames_in):
                vf = av.VideoFrame.from_ndarray(compose_fn(*args), format="rgb24")
                vf.pts = i
                for packet in stream.encode(vf):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)

    with quiet(log):
        render(make_video.compose, os.path.join(vdir, "warm-render.mp4"))   # encoder and font warm-up
        t_render_np = best_time(lambda: render(make_video.compose, os.path.join(vdir, "render-np.mp4")),
                                  cfg["repeats"])
        t_render_mpl = best_time(lambda: render(mpl_compose, os.path.join(vdir, "render-mpl.mp4")),
                                   cfg["repeats"])
    # Composing alone, on the same frames.
    t_np = best_time(lambda: [make_video.compose(*a) for a in frames_in], cfg["repeats"]) / len(frames_in)
    t_fig = best_time(lambda: [mpl_compose(*a) for a in frames_in], cfg["repeats"]) / len(frames_in)
    res = {"video_render": result(t_render_mpl / t_render_np, 3.0, ">=", dict(
        make_video_render=t_render_np, matplotlib_render=t_render_mpl, compose_per_frame=t_np,
        mpl_compose_per_frame=t_fig),
        frames=len(frames_in), fps_make_video=round(len(frames_in) / t_render_np, 2),
        fps_matplotlib=round(len(frames_in) / t_render_mpl, 2), compose_only_ratio=round(t_fig / t_np, 2)),
        "video_end_to_end": result(t_mpl / t_script, None, "info", dict(
            make_video=t_script, matplotlib_pipeline=t_mpl, **{f"mpl_pipeline_{k}": v for k, v in stage.items()}),
            fps_make_video=round(frames / t_script, 2), fps_matplotlib=round(frames / t_mpl, 2))}
    notes = [f"video: {frames} frames, models see {make_video.model_size(make_video.SYNTH_W, make_video.SYNTH_H, size)}"
             f"; render (compose + encode, same frames and encoder): make_video {t_render_np:.2f}s "
             f"({len(frames_in) / t_render_np:.1f} fps), matplotlib {t_render_mpl:.2f}s "
             f"({len(frames_in) / t_render_mpl:.1f} fps); compose alone {t_np * 1e3:.1f} ms vs matplotlib "
             f"{t_fig * 1e3:.1f} ms/frame ({t_fig / t_np:.1f}x); whole script {t_script:.2f}s "
             f"({frames / t_script:.1f} fps) vs the same pipeline with matplotlib {t_mpl:.2f}s ("
             + ", ".join(f"{k} {v:.2f}" for k, v in stage.items()) + ")"]
    return res, notes


# ---------------------------------------------------------------------- 7: model throughput (GPU)

# Dense tensor-core peaks (TFLOP/s) from NVIDIA's H100 and H200 datasheets, which print the figures with 2:4
# sparsity; the dense figure is half of it. TF32 is what cuDNN uses for fp32 convolutions by default
# (torch.backends.cudnn.allow_tf32), so an fp32 run is judged against it. Keyed by (chip, form factor).
PEAK_TFLOPS = {
    ("H100", "SXM"): dict(bf16=1979 / 2, tf32=989 / 2),
    ("H100", "PCIe"): dict(bf16=1513 / 2, tf32=756 / 2),
    ("H100", "NVL"): dict(bf16=1671 / 2, tf32=835 / 2),
    ("H200", "SXM"): dict(bf16=1979 / 2, tf32=989 / 2),
    ("H200", "NVL"): dict(bf16=1671 / 2, tf32=835 / 2),
}


def peak_tflops(device_name):
    """The datasheet's dense peaks for ``torch.cuda.get_device_name()``, or None when the card is not in the table.

    Matched on whole words, so "GH200" is not an H200. The SXM boards do not say so in their names ("NVIDIA H100
    80GB HBM3", "NVIDIA H200"): a name without "PCIe" or "NVL" is the SXM one. A MIG slice has a fraction of the
    card's SMs, so no peak is claimed for it.
    """
    words = set(re.split(r"[^A-Z0-9]+", device_name.upper()))
    chip = next((c for c in ("H100", "H200") if c in words), None)
    if chip is None or "MIG" in words:
        return None
    form = "NVL" if "NVL" in words else "PCIe" if "PCIE" in words else "SXM"
    return dict(PEAK_TFLOPS[chip, form], card=f"{chip} {form}")


# The full study (PROTOCOL.md): 3 models x 50 epochs on VOC train + SBD train_noval, then the sweep of
# 3 models over VOC val under clean + 15 corruptions x 5 severities.
STUDY = dict(models=3, epochs=50, train_images=7087, val_images=1449, conditions=1 + 15 * 5)


def project_study(train_images_per_s, infer_images_per_s, corrupt_s_per_val_image, cores, study=STUDY):
    """(train, GPU forward of the sweep, corruptions of the sweep on all cores, whole study) in seconds.

    Training: models x epochs x train images at the training rate. The sweep: its forward passes (each
    model's val images x conditions at that model's inference rate, one model after another) and its
    corruptions (every val image's corruptions, spread over the cores by the loader workers) overlap, so
    the slower of the two counts.
    """
    t_train = study["models"] * study["epochs"] * study["train_images"] / train_images_per_s
    t_forward = sum(study["val_images"] * study["conditions"] / ips for ips in infer_images_per_s)
    t_corrupt = study["val_images"] * corrupt_s_per_val_image / cores
    return t_train, t_forward, t_corrupt, t_train + max(t_forward, t_corrupt)


def model_kw(cfg, arch):
    """build_model keywords of ``arch`` as its recipe trains it: the notebook's DeepLabV3 (output stride 8, IBE
    on the logits) or the paper's DeepLabV3+ (stride 16, IBE on the output); stride 32 for ResNet-18/34."""
    recipe = train_script.RECIPES[RECIPE_OF[arch]]
    return dict(arch=arch, backbone=cfg["backbone"], head_channels=cfg["head_channels"],
                output_stride=default_output_stride(arch, cfg["backbone"]), ibe_placement=recipe["ibe_placement"])


def train_args(cfg, arch, amp, batch_size, scratch, deterministic=False):
    """train.py's own arguments for ``arch``'s recipe, resolved as train.py resolves them, plus the fields its
    ``train()`` sets before calling ``train_one_epoch`` (single process, this device)."""
    argv = ["--model", "baseline", "--recipe", RECIPE_OF[arch], "--backbone", cfg["backbone"],
            "--head-channels", str(cfg["head_channels"]), "--amp", amp, "--crop-size", str(cfg["train_crop"]),
            "--print-freq", "1000000", "--device", cfg["device"]] + (["--batch-size", str(batch_size)]
                                                                      if batch_size else [])
    args = train_script.get_args_parser().parse_args(argv + (["--deterministic"] if deterministic else []))
    train_script.resolve_recipe(args)
    args.rank, args.world_size, args.distributed = 0, 1, False
    # The two precisions compared (``modes``): fp32 in the default layout, bf16 with channels_last, on any device.
    args.memory_format = torch.channels_last if amp != "none" else torch.contiguous_format
    args.run_dir = os.path.join(scratch, "train-" + arch)
    return args


def synthetic_batches(n, bs, crop, device):
    """``n`` random training batches, generated on the CPU (seeded) and moved to the device once."""
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(bs, 3, crop, crop, generator=g).to(device),
             torch.randint(0, 21, (bs, crop, crop), generator=g).to(device)) for _ in range(n)]


class Trainer:
    """train.py's ``train_one_epoch`` (loss, SGD step, poly schedule, confusion) on batches already on the
    device: the input pipeline is measured apart (train_16_workers)."""

    def __init__(self, cfg, arch, amp, scratch, deterministic=False):
        self.cfg, self.args = cfg, train_args(cfg, arch, amp, cfg["train_batch"], scratch, deterministic)
        torch.manual_seed(0)
        self.model = build_model("baseline", **model_kw(cfg, arch)).to(cfg["device"],
                                                                       memory_format=self.args.memory_format)
        self.optimizer = train_script.make_optimizer(self.model, self.args)
        self.scheduler = train_script.poly_schedule(self.optimizer, self.args, cfg["train_steps"])
        self.scaler = torch.amp.GradScaler(torch.device(cfg["device"]).type, enabled=False)
        self.batches = synthetic_batches(cfg["train_steps"], self.args.batch_size, cfg["train_crop"], cfg["device"])

    def epoch(self, steps):
        return train_script.train_one_epoch(self.model, self.batches[:steps], self.optimizer, self.scheduler,
                                            self.scaler, 0, self.args)

    def images_per_s(self, log):
        """Images/s over the batches, after a warm-up (cuDNN autotuning, the allocator)."""
        with quiet(log):
            self.epoch(self.cfg["train_warmup"])
            t = timed(lambda: self.epoch(len(self.batches)), self.cfg["device"])[0]
        return self.args.batch_size * len(self.batches) / t


def modes(device):
    """(label, --amp, memory format) of the precisions compared: fp32, and bf16 autocast + channels_last."""
    return (("fp32", "none", torch.contiguous_format), ("bf16_channels_last", "bf16", torch.channels_last))


def peak_memory(device):
    return torch.cuda.max_memory_allocated(device) if str(device).startswith("cuda") else None


def reset_peak_memory(device):
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def bench_train_model(ctx, arch):
    """Training images/s in fp32 and bf16 + channels_last, their MFU against the card's dense peak."""
    cfg, scratch, short = ctx["cfg"], ctx["scratch"], SHORT[arch]
    dev, crop = cfg["device"], cfg["train_crop"]
    kw = model_kw(cfg, arch)
    flops_train = model_flops(train_step=True, side=crop, **kw)
    name, peak = ctx["device_name"], ctx["peak"]
    ips, memory, batch = {}, {}, None
    for label, amp, _ in modes(dev):
        reset_peak_memory(dev)
        trainer = Trainer(cfg, arch, amp, scratch)
        batch = trainer.args.batch_size
        ips[label] = trainer.images_per_s(os.path.join(scratch, "model.log"))
        memory[label] = peak_memory(dev)
        del trainer
    best = max(ips, key=ips.get)
    ctx["train_ips"][arch] = (ips[best], best)
    speedup = ips["bf16_channels_last"] / ips["fp32"]
    # The target was set for the paper's DeepLabV3+ on one H100; the notebook model costs 2.4x its FLOPs, so
    # it is shown beside the same FLOP rate instead of being judged against it.
    target = 1500 if arch == "deeplabv3plus" else None
    mem = {k: None if v is None else round(v / 2**20, 1) for k, v in memory.items()}
    res = {f"train_bf16_speedup_{short}": result(speedup, 2.0, ">=", {}, images_per_s={k: round(v, 1) for k, v in
                                                                                        ips.items()}),
           f"train_images_per_s_{short}": result(ips[best], target, ">=" if target else "info", {}, mode=best,
                                                 device=name, batch=batch, crop=crop,
                                                 max_memory_allocated_mib=mem)}
    if target is None:
        fl_plus = model_flops(train_step=True, side=crop, **model_kw(cfg, "deeplabv3plus"))
        res[f"train_images_per_s_{short}"]["same_flop_rate_as_1500_v3plus"] = round(1500 * fl_plus / flops_train, 1)
    for label in ips:
        tflops = ips[label] * flops_train / 1e12
        key = "bf16" if label.startswith("bf16") else "tf32"
        res[f"mfu_{label}_{short}"] = result(tflops / peak[key] if peak else None, None, "info", {},
                                             achieved_tflops=round(tflops, 2), peak_tflops=peak[key] if peak else None,
                                             card=peak["card"] if peak else None,
                                             train_gflop_per_image=round(flops_train / 1e9, 2))
    notes = [f"train {arch} {cfg['backbone']} OS{kw['output_stride']} at {crop}x{crop}, batch {batch}, {name}: "
             f"{flops_train / 1e9:.2f} GFLOP per training image (counted); images/s "
             + ", ".join(f"{k} {v:.1f}" for k, v in ips.items())
             + (f"; peak memory MiB {mem}" if dev.startswith("cuda") else "")]
    return res, notes


def bench_infer_model(ctx, arch):
    """Inference images/s of each output structure (eval, inference_mode, as the sweep runs them)."""
    cfg, short = ctx["cfg"], SHORT[arch]
    dev, bs, side = cfg["device"], cfg["infer_batch"], cfg["infer_size"]
    device = torch.device(dev)
    kw = model_kw(cfg, arch)
    x0 = torch.randn(bs, 3, side, side, generator=torch.Generator().manual_seed(0)).to(dev)
    ips = {}
    for label, amp, fmt in modes(dev):
        x = x0.contiguous(memory_format=fmt)
        for kind in KINDS:
            torch.manual_seed(0)
            m = build_model(kind, **kw).eval().to(dev, memory_format=fmt)
            with torch.inference_mode(), autocast(device, amp):
                for _ in range(2):
                    m(x)
                t = timed(lambda: [m(x) for _ in range(cfg["infer_steps"])], dev)[0]
            ips[kind, label] = bs * cfg["infer_steps"] / t
            del m
    labels = [lb for lb, _, _ in modes(dev)]
    best = {k: max(labels, key=lambda lb: ips[k, lb]) for k in KINDS}
    ctx["infer_ips"][arch] = {k: ips[k, best[k]] for k in KINDS}
    res = {f"infer_images_per_s_{k}_{short}": result(ips[k, best[k]], None, "info", {}, mode=best[k],
                                                      images_per_s={lb: round(ips[k, lb], 1) for lb in labels},
                                                      batch=bs, size=side)
           for k in KINDS}
    notes = [f"inference {arch} at {side}x{side}, batch {bs}: images/s "
             + ", ".join(f"{k} {lb} {v:.1f}" for (k, lb), v in ips.items())]
    return res, notes


def bench_deterministic(ctx):
    """What ``--deterministic`` costs training: images/s with common.device.set_deterministic on / off, the
    two measured in alternation in this process, the median pair's ratio reported."""
    cfg, scratch = ctx["cfg"], ctx["scratch"]
    dev, arch = cfg["device"], HEADLINE_ARCH
    amp = "bf16" if dev.startswith("cuda") else "none"
    log = os.path.join(scratch, "model.log")
    trainers = {False: Trainer(cfg, arch, amp, scratch), True: Trainer(cfg, arch, amp, scratch, deterministic=True)}
    pairs, warned = [], set()
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
           torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        for _ in range(cfg["deterministic_pairs"]):
            rate = {}
            for det in (False, True):
                if det:
                    set_deterministic(True)
                else:
                    torch.use_deterministic_algorithms(False)
                    torch.backends.cudnn.deterministic = False
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    rate[det] = trainers[det].images_per_s(log)
                # Kernels without a deterministic CUDA version warn (warn_only): name them in the result.
                warned.update(str(w.message).split(" does not have a deterministic")[0][:80] for w in caught
                              if "deterministic" in str(w.message))
            pairs.append((rate[False], rate[True]))
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old[0], old[1]
        torch.use_deterministic_algorithms(old[2], warn_only=old[3])
    ratios = sorted(d / f for f, d in pairs)
    ratio = ratios[len(ratios) // 2]
    res = {f"deterministic_cost_{SHORT[arch]}": result(ratio, None, "info", {}, amp=amp,
                                                       pairs_images_per_s=[[round(f, 1), round(d, 1)] for f, d in pairs],
                                                       nondeterministic_kernels_warned=sorted(warned))}
    notes = [f"deterministic: {arch} training, amp {amp}, images/s default vs --deterministic per pair: "
             + ", ".join(f"{f:.1f}/{d:.1f}" for f, d in pairs) + f"; ratio {ratio:.3f}"]
    return res, notes


def logit_gradients(logits, target):
    """Norms of d loss / d logits for cross-entropy (ignore 255) and the notebook's SCrIBE BCE (255 ->
    background, mean over every element), on the same logits: how much smaller SCrIBE's steps start."""
    norms = {}
    for kind in ("ibe", "scribe"):
        z = logits.detach().clone().requires_grad_(True)
        segmentation_loss(kind, z, target, ignore_as_background=True).backward()
        norms[kind] = float(z.grad.norm())
    return norms["ibe"], norms["scribe"]


def bench_loss_gradients(ctx):
    """Cross-entropy's gradient against SCrIBE's BCE, on one IBE model (the notebook's placement) and the same
    synthetic training crops, at initialisation: with respect to the logits and to all parameters."""
    cfg = ctx["cfg"]
    voc, sbd = os.path.join(cfg["synthetic_root"], "voc"), os.path.join(cfg["synthetic_root"], "sbd")
    train_set, _ = build_datasets(voc, sbd, cfg["train_crop"])
    # Random crops drawn with replacement: the bench's synthetic set holds only 8 training images.
    n = cfg["gradient_batch"] * cfg["gradient_batches"]
    sampler = torch.utils.data.RandomSampler(train_set, replacement=True, num_samples=n,
                                             generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg["gradient_batch"], sampler=sampler)
    res, notes = {}, []
    for arch in ("deeplabv3", "deeplabv3plus"):
        torch.manual_seed(0)
        model = build_model("ibe", **dict(model_kw(cfg, arch), ibe_placement="logits")).to(cfg["device"]).train()
        on_logits, on_params = [], []
        for k, (x, y) in enumerate(loader):
            if k == cfg["gradient_batches"]:
                break
            x, y = x.to(cfg["device"]), y.to(cfg["device"])
            grads = {}
            for kind in ("ibe", "scribe"):
                model.zero_grad(set_to_none=True)
                segmentation_loss(kind, model(x), y, ignore_as_background=True).backward()
                grads[kind] = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()
                                                   if p.grad is not None)))
            with torch.no_grad():
                logits = model(x)
            ce, bce = logit_gradients(logits, y)
            on_logits.append(ce / bce)
            on_params.append(grads["ibe"] / grads["scribe"])
        short = SHORT[arch]
        res[f"ce_over_bce_gradient_logits_{short}"] = result(float(np.median(on_logits)), None, "info", {},
                                                             per_batch=[round(r, 2) for r in on_logits])
        res[f"ce_over_bce_gradient_params_{short}"] = result(float(np.median(on_params)), None, "info", {},
                                                             per_batch=[round(r, 2) for r in on_params])
        notes.append(f"gradients {arch}: cross-entropy / SCrIBE BCE, per batch, logits "
                     + ", ".join(f"{r:.1f}" for r in on_logits) + "; parameters "
                     + ", ".join(f"{r:.1f}" for r in on_params))
    return res, notes


def bench_corrupt(ctx):
    """Corruption cost per val image at 224 px, every corruption and severity, on one core of this machine:
    the sweep's loader workers (and the dump) spread it over the cores while the GPU runs the models."""
    cfg = ctx["cfg"]
    val = voc_dataset(os.path.join(cfg["synthetic_root"], "voc"), "val")
    samples = [eval_sample(val, i, "paper", cfg["corrupt_size"]) for i in range(cfg["corrupt_images"])]
    cors = parse_corruptions(cfg["corrupt_corruptions"])
    for c in cors:
        corrupt_image(samples[0][1], "warmup", c, 1)
    per = {c: 0.0 for c in cors}
    for image_id, image, _ in samples:
        for c in cors:
            t0 = time.perf_counter()
            for sev in range(1, 6):
                corrupt_image(image, image_id, c, sev)
            per[c] += time.perf_counter() - t0
    per_image = sum(per.values()) / len(samples)   # all 75 conditions of one image
    ctx["corrupt_per_val_image"] = per_image
    res = {"corrupt_all_75_per_image": result(per_image, None, "info", {c: t / len(samples) for c, t in per.items()},
                                              images=len(samples), size=cfg["corrupt_size"])}
    return res, [f"corruptions: all 75 conditions of one {cfg['corrupt_size']} px image {per_image:.2f} s on one core ("
                 + ", ".join(f"{c} {t / len(samples):.2f}" for c, t in per.items()) + ")"]


def bench_study(ctx):
    """The full study's projected wall time, from the training and inference rates measured above: the
    notebook recipe's model (the default, the headline) and the paper's DeepLabV3+ beside it."""
    cfg = ctx["cfg"]
    if HEADLINE_ARCH not in ctx["train_ips"] or HEADLINE_ARCH not in ctx["infer_ips"]:
        raise Skip(f"needs the rates of train_{SHORT[HEADLINE_ARCH]} and infer_{SHORT[HEADLINE_ARCH]}")
    cores = os.cpu_count() or 1
    corrupt = ctx.get("corrupt_per_val_image")
    res, notes = {}, []
    for arch in (HEADLINE_ARCH, "deeplabv3plus"):
        if arch not in ctx["train_ips"] or arch not in ctx["infer_ips"]:
            continue
        ips, mode = ctx["train_ips"][arch]
        t_train, t_fwd, t_cpu, t_study = project_study(ips, list(ctx["infer_ips"][arch].values()), corrupt or 0.0,
                                                        cores)
        key = "study_projected_minutes" + ("" if arch == HEADLINE_ARCH else f"_{SHORT[arch]}")
        res[key] = result(t_study / 60, 30, "<=", dict(
            train=t_train, sweep_forward=t_fwd, sweep_corruptions_on_all_cores=t_cpu,
            corrupt_all_75_per_image=corrupt or 0.0), arch=arch, recipe=RECIPE_OF[arch], train_mode=mode,
            cpu_cores=cores, train_crop=cfg["train_crop"], assumptions=(
                "training at the best measured images/s, data loading keeping up; sweep = max(GPU forward of "
                "3 models x 1449 images x 76 conditions, corruption CPU time / cores)"),
            **({} if corrupt is not None else {"lower_bound": "corruptions not measured (group corrupt did not run): "
                                                               "the sweep's CPU side is left out"}))
        notes.append(f"study ({RECIPE_OF[arch]} recipe, {arch}): train {t_train / 60:.1f} min + sweep max(forward "
                     f"{t_fwd / 60:.1f}, corruptions {t_cpu / 60:.1f} on {cores} cores) = {t_study / 60:.1f} min"
                     + ("" if cfg["train_crop"] == 224 else
                        f" (measured at crop {cfg['train_crop']}, not the study's 224: not a projection of it)"))
    return res, notes


# ---------------------------------------------------------------------------------------------- main

class Skip(Exception):
    """A group that cannot run for a reason that is not a failure (its inputs were not measured)."""


RECIPE_OF = {"deeplabv3": "notebook", "deeplabv3plus": "paper"}
SHORT = {"deeplabv3": "v3", "deeplabv3plus": "v3plus"}
HEADLINE_ARCH = "deeplabv3"   # the default recipe's model (the notebook's DeepLabV3, output stride 8)

# Ratios calibrated on this project's 2-core CPU, where the forward passes dominate; on a GPU they measure
# something else (the extra models' statistics and loading against tiny forward passes; the tracker against a
# forward that is 50x faster), so a GPU run reports them with "rule": "info" and the CPU target beside.
CPU_CALIBRATED = ("shared_time_v3", "shared_time_v3plus", "logits_vs_forward")


def groups(ctx):
    """(name, function) of every measurement group, in the order they run: the GPU's first, then the CPU's."""
    def data(fn):   # a group that reads the synthetic dataset: generated before its clock starts
        return lambda: (ctx["synthetic"](), fn())[1]

    cfg, scratch, ckpts = ctx["cfg"], ctx["scratch"], ctx["checkpoints"]
    return [
        ("train_v3", lambda: bench_train_model(ctx, "deeplabv3")),
        ("train_v3plus", lambda: bench_train_model(ctx, "deeplabv3plus")),
        ("infer_v3", lambda: bench_infer_model(ctx, "deeplabv3")),
        ("infer_v3plus", lambda: bench_infer_model(ctx, "deeplabv3plus")),
        ("deterministic", lambda: bench_deterministic(ctx)),
        ("logits", lambda: bench_logits(cfg, scratch)),
        ("calibration", lambda: bench_calibration(cfg, scratch)),
        ("corrupt", data(lambda: bench_corrupt(ctx))),
        ("study", lambda: bench_study(ctx)),
        ("sweep_v3", data(lambda: bench_sweep(cfg, ckpts("deeplabv3"), scratch, "deeplabv3"))),
        ("sweep_v3plus", data(lambda: bench_sweep(cfg, ckpts("deeplabv3plus"), scratch, "deeplabv3plus"))),
        ("dump", data(lambda: bench_dump(cfg, scratch))),
        ("train", data(lambda: bench_train_input(cfg, scratch))),
        ("video", lambda: bench_video(cfg, ckpts("deeplabv3plus"), scratch)),
        ("gradients", data(lambda: bench_loss_gradients(ctx))),
    ]


GROUPS = ("train_v3", "train_v3plus", "infer_v3", "infer_v3plus", "deterministic", "logits", "calibration", "corrupt",
          "study",
          "sweep_v3", "sweep_v3plus", "dump", "train", "video", "gradients")
# --only accepts these names for several groups. "model" is everything that needs the model on the device and
# nothing beyond torch, torchvision, numpy and Pillow (no imagecorruptions, PyAV or zlib-ng).
ALIASES = {"model": ("train_v3", "train_v3plus", "infer_v3", "infer_v3plus", "deterministic", "study"),
           "sweep": ("sweep_v3", "sweep_v3plus")}
DEFAULT_GROUPS = {"gpu": GROUPS, "quick": ("sweep_v3", "sweep_v3plus", "dump", "logits", "calibration", "train",
                                           "video")}

# Rough cost of each group in seconds, for --minutes: a group is skipped when its estimate does not fit in
# what is left. Quick (this 2-core CPU): from the runs in BENCHMARKS.md, rounded up. GPU: planning guesses
# for one H100/H200, deliberately pessimistic, not measurements: the training groups at the recipe's batch for
# 50 steps in two precisions with cuDNN autotuning (~20 s each precision), the inference groups 3 models x 2
# precisions x 22 batches, the CPU-bound groups (corruptions of the sweep with --workers 0, the dump) as on
# one fast core. Tiny (tests): a second each.
ESTIMATES = {
    "quick": dict(train_v3=150, train_v3plus=100, infer_v3=90, infer_v3plus=60, deterministic=200, logits=15,
                  calibration=15, corrupt=40, study=1, sweep_v3=240, sweep_v3plus=150, dump=90, train=10, video=45, gradients=60),
    "gpu": dict(train_v3=60, train_v3plus=45, infer_v3=30, infer_v3plus=20, deterministic=45, logits=15,
                calibration=15, corrupt=30, study=1, sweep_v3=200, sweep_v3plus=200, dump=90, train=10, video=60, gradients=20),
    "tiny": {g: 1 for g in GROUPS},
}


def selected_groups(only, mode):
    """The groups --only names (aliases expanded), in the run order; the mode's default without --only."""
    if not only:
        return list(DEFAULT_GROUPS[mode])
    wanted = {g for name in only for g in ALIASES.get(name, (name,))}
    return [g for g in GROUPS if g in wanted]


def fits(estimate_s, minutes, elapsed_s):
    """Whether a group estimated at ``estimate_s`` fits in a --minutes budget of which ``elapsed_s`` is spent."""
    return minutes is None or estimate_s <= minutes * 60 - elapsed_s


def last_line(tb_text):
    """The last line of a traceback ("ValueError: ..."), what a group's JSON line reports as its error."""
    lines = [line for line in tb_text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


def machine():
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"GPU {gpu}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def busy_cores(seconds=1.0):
    """Cores kept busy by other processes over ``seconds`` while this one sleeps (Linux /proc/stat), or None."""
    def sample():
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        return sum(v) - v[3] - v[4], sum(v)   # busy (all but idle and iowait), total
    try:
        b0, t0 = sample()
        time.sleep(seconds)
        b1, t1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)


def emit(line, out_fh):
    """One group's JSON line: on stdout at once, and appended to --out (flushed to disk) if given."""
    text = json.dumps(line)
    print(text, flush=True)
    if out_fh is not None:
        out_fh.write(text + "\n")
        out_fh.flush()
        os.fsync(out_fh.fileno())


def main(args):
    mode = "gpu" if args.gpu else "quick"
    if mode == "gpu" and not torch.cuda.is_available():
        raise UsageError("--gpu needs CUDA, which this torch build or machine does not have; use --quick")
    cfg = dict(MODES[mode])
    if args.tiny:
        cfg.update(TINY)
    for key in ("images", "size", "batch_size", "corruptions", "severities", "repeats", "sweep_repeats", "frames",
                "backbone", "head_channels"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    estimates = ESTIMATES["tiny" if args.tiny else mode]
    if mode == "gpu":
        device = resolve_device("cuda")   # cuda:<current>, with its index: set_device refuses a bare "cuda"
        use_device(device)
        cfg["device"] = str(device)
        # cuBLAS reads its workspace setting once, at its first call: set here (what --deterministic sets), so
        # the deterministic group's side really is deterministic and both sides of its ratio share it.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    root = os.path.abspath(args.root)
    cfg["synthetic_root"] = os.path.join(root, "synthetic")
    scratch = os.path.join(root, f"run-{os.getpid()}")
    os.makedirs(scratch, exist_ok=True)
    only = selected_groups(args.only, mode)
    print(f"bench.py --{mode}{' --tiny' if args.tiny else ''}: {machine()}; git commit {git_commit()}")
    print(f"config: {json.dumps({k: v for k, v in cfg.items() if k != 'synthetic_root'})}", flush=True)
    print(f"groups: {' '.join(only)}" + ("" if args.minutes is None else f"; budget {args.minutes:g} min"),
          flush=True)
    busy = busy_cores()
    if busy is not None and busy > 0.3:
        # Two multi-threaded torch processes on the same cores stall each other on OpenMP barriers
        # (seen here: identical sweep conditions took 0.8 s or 7.0 s), so every ratio below is unreliable.
        print(f"warning: other processes keep {busy:.1f} cores busy; timings will be noisy", file=sys.stderr,
              flush=True)

    t_start = time.perf_counter()
    name = torch.cuda.get_device_name(torch.device(cfg["device"])) if mode == "gpu" else platform.processor() or "cpu"
    ctx = dict(cfg=cfg, scratch=scratch, device_name=name, peak=peak_tflops(name) if mode == "gpu" else None,
               train_ips={}, infer_ips={}, cache={})

    def synthetic():   # generated on first use (the model groups need none)
        if "synthetic" not in ctx["cache"]:
            ensure_synthetic(cfg["synthetic_root"], n_voc_train=4, n_sbd=4, n_val=max(cfg["min_val"], cfg["images"]),
                             min_side=cfg["synthetic_min_side"], max_side=cfg["synthetic_max_side"], quiet=True)
            ctx["cache"]["synthetic"] = cfg["synthetic_root"]
        return ctx["cache"]["synthetic"]

    def checkpoints(arch):   # the three random-weight checkpoints of an arch, written on first use
        if arch not in ctx["cache"]:
            synthetic()
            ctx["cache"][arch] = [save_random_checkpoint(os.path.join(scratch, f"{SHORT[arch]}-{k}.pt"), k, seed,
                                                         **model_kw(cfg, arch)) for seed, k in enumerate(KINDS)]
        return ctx["cache"][arch]

    ctx["synthetic"], ctx["checkpoints"] = synthetic, checkpoints
    out_fh = open(args.out, "a") if args.out else None
    results, notes, failed = {}, [], []
    # --tiny runs inside test processes beside others: one thread, which the tiny models lose nothing by, and
    # which keeps two OpenMP pools on two busy cores from stalling each other (25x, seen here).
    threads = torch_threads(1) if args.tiny else contextlib.nullcontext()
    try:
        threads.__enter__()
        for group, job in groups(ctx):
            if group not in only:
                continue
            line = {"group": group, "estimate_s": estimates[group]}
            elapsed = time.perf_counter() - t_start
            if not fits(estimates[group], args.minutes, elapsed):
                emit(dict(line, skipped="budget", left_s=round(args.minutes * 60 - elapsed, 1)), out_fh)
                continue
            reset_peak_memory(cfg["device"])
            t0 = time.perf_counter()
            try:
                res, lines = job()
            except Skip as e:
                emit(dict(line, skipped=str(e)), out_fh)
                continue
            except Exception:
                tb = traceback.format_exc()
                print(tb, file=sys.stderr, flush=True)
                failed.append(group)
                results[group] = {"error": last_line(tb), "ok": False}
                emit(dict(line, seconds=round(time.perf_counter() - t0, 2), error=last_line(tb)), out_fh)
                continue
            if mode == "gpu":
                for key in CPU_CALIBRATED:
                    if key in res and res[key]["rule"] != "info":
                        res[key].update(rule="info", ok=None, cpu_target=f"{res[key]['rule']} {res[key]['target']}",
                                        target=None)
            mem = peak_memory(cfg["device"])
            results.update(res)
            notes += lines
            emit(dict(line, seconds=round(time.perf_counter() - t0, 2),
                      max_memory_allocated_mib=None if mem is None else round(mem / 2**20, 1),
                      results=res, notes=lines), out_fh)
    finally:
        threads.__exit__(None, None, None)
        if out_fh is not None:
            out_fh.close()

    print(f"\n{'target':<34} {'measured':>9}  {'target value':>12}  ok")
    for key, r in results.items():
        if "error" in r:
            print(f"{key:<34} {'ERROR':>9}  {'':>12}  False   {r['error']}")
        else:
            rule = "(no target)" if r["rule"] == "info" else f"{r['rule']} {r['target']}"
            shown = "n/a" if r["measured"] is None else f"{r['measured']:.3f}"
            print(f"{key:<34} {shown:>9}  {rule:>12}  {'' if r['ok'] is None else r['ok']}")
    print("\n" + "\n".join(notes))
    print(f"total {time.perf_counter() - t_start:.0f}s" + (f"; failed: {' '.join(failed)}" if failed else ""))
    busy = busy_cores()
    if busy is not None and busy > 0.3:   # a job that started meanwhile: the check at the start missed it
        print(f"warning: at the end, other processes keep {busy:.1f} cores busy; timings may be noisy",
              file=sys.stderr, flush=True)
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(results))
    return 1 if failed else 0


def get_args_parser():
    q, g = MODES["quick"], MODES["gpu"]
    p = argparse.ArgumentParser(
        description="Measure each script against its irreducible cost, side by side in one run (targets in the "
                    "module docstring); prints one JSON line per measurement group as it ends, then a table, a "
                    "breakdown and one JSON line of every target.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="the default: sizes for a 2-core CPU, about 8 minutes (random-weight R50 checkpoints at "
                           f"{q['size']} px in the sweeps; the logit target uses 8x3x224x224 in both modes)")
    mode.add_argument("--gpu", action="store_true",
                      help=f"one CUDA GPU: training and inference throughput, MFU and --deterministic's cost for "
                           f"both models at 224, then the CPU-side groups; stops with an error when CUDA is not "
                           f"available")
    p.add_argument("--only", nargs="+", choices=GROUPS + tuple(ALIASES), default=None, metavar="GROUP",
                   help=f"run these measurement groups only: {', '.join(GROUPS)}; model = the training, inference "
                        f"and deterministic groups plus the study projection; sweep = both sweeps. Default: all "
                        f"with --gpu, {' '.join(DEFAULT_GROUPS['quick'])} with --quick")
    p.add_argument("--minutes", type=float, default=None,
                   help="time budget: a group whose rough estimate (ESTIMATES in bench.py) no longer fits in what "
                        "is left is skipped and reported as skipped; default: no budget")
    p.add_argument("--out", default=None,
                   help="also append each group's JSON line to this file as soon as the group ends (flushed), so "
                        "a run killed midway keeps everything it finished")
    p.add_argument("--backbone", choices=tuple(BACKBONES), default=None,
                   help=f"backbone of the models (quick {q['backbone']}, gpu {g['backbone']}); a smaller one "
                        f"makes per-pixel bookkeeping weigh more")
    p.add_argument("--head-channels", type=int, default=None,
                   help=f"ASPP/decoder width of those models (quick {q['head_channels']}, "
                        f"gpu {g['head_channels']})")
    p.add_argument("--images", type=int, default=None,
                   help=f"val images in the sweep (quick {q['images']}, gpu {g['images']})")
    p.add_argument("--size", type=int, default=None,
                   help=f"image side in the sweep (quick {q['size']}, gpu {g['size']}; the dump runs at "
                        f"{q['dump_size']}, its default)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"sweep and inference batch size (quick {q['batch_size']}, gpu {g['batch_size']})")
    p.add_argument("--corruptions", nargs="+", default=None,
                   help=f"corruptions of the sweep (default: {' '.join(q['corruptions'])}: fast and slow ones from "
                        f"every group); the dump uses its own default, {' '.join(q['dump_corruptions'])}")
    p.add_argument("--severities", type=int, nargs="+", default=None,
                   help=f"severities of the sweep, 0 = clean (default: {' '.join(map(str, q['severities']))})")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"repeats of the short measurements, the fastest counts; the sweep's forward passes "
                        f"alone take the median (quick {q['repeats']}, gpu {g['repeats']})")
    p.add_argument("--sweep-repeats", type=int, default=None,
                   help=f"rounds of the sweep measurements (both sweeps, corrupt_image alone, forward alone), the "
                        f"median round's ratios count (quick "
                        f"{q['sweep_repeats']}, gpu {g['sweep_repeats']}); each dump runs {q['dump_repeats']} times")
    p.add_argument("--frames", type=int, default=None,
                   help=f"frames of the synthetic video clip (quick {q['frames']}, gpu {g['frames']})")
    p.add_argument("--root", default="data/bench",
                   help="scratch folder: the synthetic dataset (generated once, kept) and this run's files "
                        "(removed unless --keep); default: data/bench (git-ignored)")
    p.add_argument("--keep", action="store_true", help="keep this run's files under ROOT/run-<pid>/")
    # For tests: every group at a size that runs in seconds (ResNet-18, 8-channel heads, 32 px). Not a benchmark.
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
