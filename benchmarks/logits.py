"""bench.py's groups of what the sweep computes from the logits beside the forward: the class statistics of
LogitTracker (logits) and the calibration readings (calibration); BENCHMARKS.md defines each target and field."""
import os

import numpy as np
import torch

import evaluate_corruptions
from benchmarks.measure import model_kw, result, timed
from common.calibration import Calibration
from common.checkpoint import load_model, save_random_checkpoint
from common.logits import LogitTracker, channel_argmax
from common.sweep.condition_stats import ConditionStats


def notebook_moments(logits):
    """The paper notebook's way: per class a boolean mask over the batch, float32 sums. Same statistics."""
    k, pred, x = logits.shape[1], logits.argmax(1), logits.permute(0, 2, 3, 1)     # B x H x W x K view
    count, sums = torch.zeros(k, device=logits.device), torch.zeros((k, k), device=logits.device)
    sq = torch.zeros((k, k, k), device=logits.device)
    for n in range(k):
        v = x[pred == n]                                                           # N_n x K, float32
        count[n], sums[n], sq[n] = count[n] + v.shape[0], sums[n] + v.sum(0), sq[n] + v.T @ v
    return count, sums, sq


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
    each also after temperature scaling) on evaluate_corruptions.py's default pixel subgrid; beside it the same on
    every pixel, each reading alone and the alternatives."""
    dev, reps = ctx["cfg"]["device"], max(ctx["cfg"]["logit_repeats"], 5)
    model, x, logits = logit_inputs(ctx, "calibration")
    (bs, _, h, w), gen = logits.shape, torch.Generator().manual_seed(0)
    labels = torch.randint(0, 21, (bs, h, w), generator=gen)
    labels[torch.rand((bs, h, w), generator=gen) < 0.05] = 255      # VOC's ignored borders, roughly
    labels, pos = labels.to(dev), np.arange(bs)
    pred, top = channel_argmax(logits), torch.maximum(logits[:, 1:].amax(1), logits[:, 0])
    temps = {"softmax": 1.5, "sigmoid": 1.5}   # as after a temperature fit: every reading on
    stride = evaluate_corruptions.get_args_parser().get_default("calibration_stride")

    def every_reading(s):     # what ConditionStats.update runs: the four readings (docs/calibration.md)
        for cal in ConditionStats(bs, temps, s).calibrations.values():
            cal.update(logits, labels, pos, pred=pred, top=top)

    calls = dict(calibration=lambda: every_reading(stride),
                 calibration_every_pixel=lambda: every_reading(1),
                 calibration_softmax=lambda: Calibration(bs, stride=stride).update(logits, labels, pos, pred=pred,
                                                                                   top=top),
                 calibration_sigmoid=lambda: Calibration(bs, reading="sigmoid", classwise=True, stride=stride).update(
                     logits, labels, pos, pred=pred, top=top),
                 calibration_alone=lambda: Calibration(bs, stride=stride).update(logits, labels, pos),
                 condition_stats=lambda: ConditionStats(bs, temps, stride).update(logits, labels, pos))
    with torch.inference_mode():
        t_fwd = timed(lambda: model(x), dev, reps)[0]
        t = {name: timed(fn, dev, reps, warmup=True)[0] for name, fn in calls.items()}
    return {f"{name}_vs_forward": result(t[name] / t_fwd, 0.05 if name == "calibration" else None,
                                         "<=" if name == "calibration" else "info",
                                         {name: t[name], "forward": t_fwd}, stride=1 if "every" in name else stride)
            for name in calls}
