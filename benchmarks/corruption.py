"""bench.py's groups that corrupt: evaluate_corruptions.py's sweep (sweep_efficiency, shared_calls, shared_time),
dump_voc_c.py's dump (dump_scaling, dump_overhead), its cost per corruption at 2048 x 1024 (dump_full) and
corrupt_image alone (corrupt); BENCHMARKS.md defines each target and JSON field."""
import contextlib
import multiprocessing
import os
import re
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import torch

import evaluate_corruptions
from benchmarks.measure import SHORT, result, run_main, timed, torch_threads
from common.checkpoint import load_model
from common.corruptions import corrupt_image, parse_corruptions, parse_severities
from common.data import eval_sample, normalise_uint8, voc_dataset
from common.device import autocast, memory_format
from common.sweep import images as sweep_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository: dump_voc_c.py runs there


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


def conditions_of(cfg):
    """The (corruption, severity) list evaluate_corruptions.py builds: clean/0 first, then c x s>0."""
    sev = parse_severities([str(s) for s in cfg["severities"]])
    return [("clean", 0)] * (0 in sev) + [(c, s) for c in parse_corruptions(cfg["corruptions"]) for s in sev if s]


def run_sweep(cfg, ckpts, out, log):
    """(wall seconds, corrupt_image calls) of evaluate_corruptions.main in this process, with --workers 0."""
    argv = ["--checkpoints", *ckpts, "--data", "synthetic", "--synthetic-root", cfg["synthetic_root"],
            "--limit", str(cfg["images"]), "--size", str(cfg["size"]), "--batch-size", str(cfg["batch_size"]),
            "--corruptions", *cfg["corruptions"], "--severities", *map(str, cfg["severities"]),
            "--workers", "0", "--device", cfg["device"], "--amp", cfg["sweep_amp"], "--out", out]
    # The one seam into a script: corrupt_image wrapped, not replaced, to count its calls. With --workers 0 the
    # loader corrupts in this process, where the wrapper sees every call.
    with mock.patch.object(sweep_images, "corrupt_image", wraps=sweep_images.corrupt_image) as calls:
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


def bench_corrupt(ctx):
    """Corruption cost per val image at 224 px, every corruption and severity, on one core of this machine."""
    cfg = ctx["cfg"]
    samples, cors = val_samples(cfg, cfg["corrupt_size"], range(cfg["corrupt_images"])), parse_corruptions(
        cfg["corrupt_corruptions"])
    total, per = corrupt_seconds(samples, [(c, s) for c in cors for s in range(1, 6)], warmup=[(c, 1) for c in cors])
    ctx["corrupt_per_val_image"] = total / len(samples)    # all 75 conditions of one image
    return {"corrupt_all_75_per_image": result(total / len(samples), None, "info", {
        c: t / len(samples) for c, t in per.items()}, images=len(samples), size=cfg["corrupt_size"])}


def project_dump_hours(per_condition, fixed, severities, images, cores):
    """Hours to dump ``images`` images under a preset's ``severities`` ({corruption: severities}) on ``cores``
    dump workers, from the seconds of one condition of one image (``per_condition``: {corruption: seconds of
    dump_one with that one condition}) and of none (``fixed``: decoding, resizing, the label): each image is
    decoded once and then corrupted under every condition, the measured severity standing for every other."""
    per_image = fixed + sum((per_condition[c] - fixed) * len(s) for c, s in severities.items())
    return images * per_image / cores / 3600


def bench_dump_full(ctx):
    """dump_full_<corruption>: images/s of dump_voc_c.dump_one (decode, --protocol native, corrupt, encode, write)
    of one condition on one synthetic Cityscapes val image at full size (2048 x 1024), one thread, as one dump
    worker runs it; dump_full_fixed_s (the same with no condition) and the SegFormer preset's projection beside.
    Opt-in (``--only dump_full``): glass blur alone takes about a minute an image."""
    import dump_voc_c
    from common import vocc
    from common.corruptions import DEFAULT_CODE
    from common.datasets import dataset_spec
    from common.presets import PRESETS
    from common.synthetic_layouts import ensure_layout

    cfg = ctx["cfg"]
    (w, h), severity, repeats = cfg["dump_full_size"], cfg["dump_full_severity"], cfg["dump_full_repeats"]
    spec = dataset_spec("cityscapes")
    root = ensure_layout("cityscapes", os.path.join(ctx["root"], f"cityscapes-{w}x{h}"), n_train=1, n_val=1,
                         width=w, height=h, quiet=True)
    dataset = spec.eval_dataset(root, "val")
    image_id, image, _ = eval_sample(dataset, 0, "native", None)
    out = os.path.join(ctx["scratch"], "dump-full")
    cors = parse_corruptions(cfg["dump_full_corruptions"])

    def dump(conditions):
        for c, s in conditions:   # a dumped file is skipped: time the writing of a new one
            with contextlib.suppress(FileNotFoundError):
                os.remove(vocc.image_path(out, c, s, image_id))
        t0 = time.perf_counter()
        dump_voc_c.dump_one(0, conditions, out, "native", None, dataset, DEFAULT_CODE, spec.palette)
        return time.perf_counter() - t0

    seconds = {}
    with torch_threads(1):
        for c in cors:   # imports and numba's compiles, on a small crop
            corrupt_image(np.ascontiguousarray(image[:64, :64]), image_id, c, severity)
        dump([])          # the label, written once
        fixed = min(dump([]) for _ in range(max(repeats, 2)))
        for c in cors:
            seconds[c] = min(dump([(c, severity)]) for _ in range(repeats))
    rows = {f"dump_full_{c}": result(1 / t, None, "info", {"dump_one": t}, size=f"{w}x{h}", severity=severity,
                                     threads=1) for c, t in seconds.items()}
    rows["dump_full_fixed_s"] = result(fixed, None, "info", {"dump_one_no_condition": fixed}, size=f"{w}x{h}")
    preset = PRESETS["segformer-cityscapes-c"]
    if all(c in seconds for c in preset.corruptions):
        rows["dump_full_segformer_hours_16_cores"] = result(
            project_dump_hours(seconds, fixed, preset.severities, 500, 16), None, "info",
            images=500, cores=16, conditions=len(preset.conditions()) - 1,
            note=f"severity {severity} standing for every severity")
    return rows
