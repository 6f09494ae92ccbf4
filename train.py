"""Train one of the paper's three models (baseline, IBE, SCrIBE) on VOC 2012 + SBD, the synthetic set, or
another dataset (Cityscapes, ADE20K, ACDC, a folder: docs/datasets.md).

The default recipe is the companion notebook's, which produced the paper's table (``--recipe notebook``):
torchvision's DeepLabV3 head on an ImageNet ResNet-50 at output stride 8, IBE applied before upsampling,
SGD lr 0.01 (head x10), momentum 0.9, weight decay 5e-5, poly 0.9 stepped once per epoch, 50 epochs,
batch 30, crop 224, SCrIBE's BCE with 255 as background. ``--recipe paper`` is the paper's text instead
(DeepLabV3+ at output stride 16, IBE after upsampling, poly per iteration, batch 20, 255 masked out of
SCrIBE's loss). Any explicit flag overrides its recipe's value (docs/protocol.md).

    python train.py --model scribe --data voc --voc-root /data/voc --sbd-root /data/sbd
    python train.py --model scribe --recipe paper --data voc --voc-root /data/voc --sbd-root /data/sbd

A laptop-sized run on the generated VOC-format dataset (``--recipe quick``, reproduce.sh's quick mode: a backbone
pretrained once on the training set, then a small DeepLabV3+; why each setting departs from the paper:
docs/training.md, "The quick CPU recipe"):

    python pretrain_backbone.py --data synthetic --out runs/quick/backbone
    python train.py --model ibe --recipe quick --data synthetic --pretrained-backbone runs/quick/backbone/backbone.pt

Other datasets train on their train split and validate on their val split, with the same transforms, over
their own N classes (the baseline emits N logits; IBE and SCrIBE N - 1 and need a background class at index 0,
so they are refused on Cityscapes, ADE20K, ACDC, and a folder whose class 0 is not "background"):

    python train.py --model baseline --data cityscapes --cityscapes-root /data/cityscapes
    python train.py --model baseline --data ade20k --ade20k-root /data/ade
    python train.py --model baseline --data acdc --acdc-root /data/acdc --acdc-conditions fog,rain
    python train.py --model ibe --data folder --folder-root /data/mine     # classes.txt starts with background

Several GPUs or nodes: ``torchrun --nproc_per_node=8 train.py ...`` (--batch-size is per process).

Writes ``<out>/<name>/``: ``checkpoint.pt`` (after every epoch, atomically; after the last epoch it holds
the final weights, which are what the paper evaluated) and ``log.jsonl`` (one line per epoch); with
``--save-best`` also ``best.pt``, the epoch with the best val mIoU (VOC val is also the test set, so that
selects on the test split). ``--resume`` continues from ``checkpoint.pt``. Every checkpoint records the
dataset's classes (``ckpt["dataset"]``: common.datasets.dataset_record).
"""
import argparse
import contextlib
import json
import os
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.checkpoint import changed_settings, read_checkpoint, save_checkpoint
from common.cli import (UsageError, add_data_arguments, add_device_arguments, check_at_least, check_plain_name, quiet_worker,
                        run_cli, write_problem)
from common.data import pad_collate, require_a_batch, single_thread_opencv
from common.datasets import dataset_record, voc
from common.device import autocast, memory_format, resolve_device, seed_everything, set_deterministic, use_device
from common.logits import channel_argmax
from common.training_sets import open_training_data, training_data
from common.metrics import ConfusionMatrix
from common.models import (ARCHS, BACKBONES, IBE_PLACEMENTS, KINDS, build_model, default_output_stride,
                           head_parameters, segmentation_loss)
from common.folders import OutputLock, check_output_folder, git_commit, prepare_output_folder, write_text
from common.resume import epoch_seed, file_state, rng_state, set_rng_state, truncate_log

# What each --recipe sets (docs/protocol.md, docs/training.md); an explicit flag overrides its entry. Momentum,
# weight decay, the head's lr multiplier and the augmentation are the same in all three.
FULL_SCALE = dict(backbone="resnet50", head_channels=256, crop_size=224, epochs=50, lr=0.01, val_every=1,
                  workers=min(8, os.cpu_count() or 1))
RECIPES = {
    # The companion notebook, which produced the paper's numbers.
    "notebook": dict(FULL_SCALE, arch="deeplabv3", ibe_placement="logits", poly_step="epoch", batch_size=30,
                     scribe_ignore_as_background=True),
    # The paper's text.
    "paper": dict(FULL_SCALE, arch="deeplabv3plus", ibe_placement="output", poly_step="iteration", batch_size=20,
                  scribe_ignore_as_background=False),
    # reproduce.sh's quick mode: the notebook's recipe cut to a CPU budget on the synthetic set, each deviation
    # forced by a measurement there (docs/training.md). Needs --pretrained-backbone (pretrain_backbone.py).
    "quick": dict(arch="deeplabv3plus", ibe_placement="logits", poly_step="epoch", batch_size=8,
                  scribe_ignore_as_background=False, backbone="resnet18", head_channels=64, crop_size=80,
                  epochs=12, lr=0.02, val_every=12, workers=0),
}

# What --resume restores besides the weights (read_checkpoint checks model and model_config).
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng", "epoch", "best_miou")
# Arguments that define the model or the optimisation problem: a resumed run must agree on them. (--amp is
# not one: it changes the arithmetic, not the problem, so a run may resume in another precision; each
# log.jsonl line records the one its epoch used.)
MODEL_ARGS = ("model", "recipe", "arch", "backbone", "output_stride", "head_channels", "ibe_placement",
              "pretrained_backbone", "data", "crop_size", "batch_size", "epochs", "lr", "head_lr_mult",
              "momentum", "weight_decay", "poly_step", "scribe_ignore_as_background", "seed", "hold_out")


# ---------------------------------------------------------------------------------------------- helpers

def resolve_recipe(args) -> dict:
    """Fill every recipe setting the command line left unset (None) from ``RECIPES[args.recipe]``; returns
    the resolved settings (also kept in ``args``, hence in the checkpoint and the printed arguments)."""
    for key, value in RECIPES[args.recipe].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.output_stride = args.output_stride or default_output_stride(args.arch, args.backbone)
    if args.pretrained_backbone is None:
        if args.recipe == "quick":
            raise UsageError("--recipe quick trains from a backbone pretrained on the training set: run "
                             "pretrain_backbone.py --out DIR first and pass --pretrained-backbone DIR/backbone.pt "
                             "(or --pretrained-backbone none to train from scratch)")
        # ImageNet weights for real photographs (the paper's start); none for the generated VOC-format set.
        args.pretrained_backbone = "none" if args.data == "synthetic" else "imagenet"
    return {k: getattr(args, k) for k in (*RECIPES[args.recipe], "output_stride")}


def init_distributed(args):
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a plain single process.

    ``args.device`` becomes an indexed device string (``cuda:0``, never a bare ``cuda``, which
    ``torch.cuda.set_device`` refuses): LOCAL_RANK's GPU under torchrun, the current one otherwise.
    """
    args.world_size = int(os.environ.get("WORLD_SIZE", 1))
    args.rank = int(os.environ.get("RANK", 0))
    args.distributed = args.world_size > 1
    device = resolve_device(args.device)
    if args.sync_bn and args.distributed and device.type != "cuda":
        raise UsageError(f"--sync-bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs only; this run is on "
                         f"{device}); drop --sync-bn")
    if args.sync_bn and not args.distributed and args.rank == 0:
        print("note: --sync-bn has no effect in a single process (it syncs BatchNorm across torchrun's processes)")
    use_device(device, args.amp)
    args.device = str(device)
    if args.distributed:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def is_main(args) -> bool:
    return args.rank == 0


def checkpoint_path(args) -> str:
    return os.path.join(args.run_dir, "checkpoint.pt")


def stored_args(args) -> dict:
    """The arguments as printed and saved (not the memory format: a torch object, and it follows from the device)."""
    return {k: v for k, v in vars(args).items() if k != "memory_format"}


class ShardSampler(torch.utils.data.Sampler):
    """Rank r evaluates indices r, r+W, r+2W...: every image exactly once (DistributedSampler pads)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def prepare_run(args):
    """Check and complete the arguments, join torchrun's process group, and return the checkpoint that
    ``--resume`` continues (None for a fresh run); rank 0 prints the commit, recipe and arguments."""
    recipe = resolve_recipe(args)
    check_at_least("--epochs", args.epochs)
    check_at_least("--val-every", args.val_every, 0)
    check_at_least("--hold-out", args.hold_out, 0)
    for flag, value in (("--batch-size", args.batch_size), ("--val-batch-size", args.val_batch_size)):
        check_at_least(flag, value)
    init_distributed(args)
    set_deterministic(args.deterministic)
    args.name = check_plain_name(args.name or args.model, "--name")   # a folder under --out, nowhere else
    args.run_dir = os.path.join(args.out, args.name)
    args.memory_format = memory_format(torch.device(args.device), args.amp)
    resume = checkpoint_to_resume(checkpoint_path(args), args)
    if is_main(args):
        print(f"git commit: {git_commit()}")
        print(f"recipe {args.recipe}: " + ", ".join(f"{k} {v}" for k, v in recipe.items()))
        print("arguments: " + json.dumps(dict(sorted(stored_args(args).items())), default=str))
    return resume


def checkpoint_to_resume(ckpt_path: str, args):
    """The checkpoint ``--resume`` continues (None for a fresh run); refuses to overwrite a run without
    --resume, and to resume one made with other model or optimisation settings (MODEL_ARGS)."""
    exists = os.path.exists(ckpt_path)
    seen = file_state(ckpt_path)
    if exists and not args.resume:
        raise UsageError(f"{ckpt_path} already exists; pass --resume to continue it, or choose another "
                         f"--out/--name (nothing was overwritten)")
    check_output_folder(args.out)
    if not exists:
        return None
    resume = read_checkpoint(ckpt_path)
    resume["file_state"] = seen   # what check_still_ours compares once the folder's lock is held
    missing = [k for k in RESUME_KEYS if k not in resume]
    if missing:
        raise UsageError(f"{ckpt_path}: cannot resume from it, it has no {', '.join(missing)} (damaged, or not "
                         f"written by train.py); move it away and train again without --resume")
    old = resume.get("args", {})
    if not isinstance(old, dict):
        old = {}
    lacking = [f"--{k.replace('_', '-')}" for k in MODEL_ARGS if k not in old]
    if lacking:
        raise UsageError(f"{ckpt_path}: cannot resume from it, it records no {', '.join(lacking)} (an earlier "
                         f"train.py's format); move it away and train again without --resume")
    # ACDC's conditions choose its training images; other datasets have no such flag (and runs made before it
    # existed do not record it), so it is compared for --data acdc only.
    keys = MODEL_ARGS + (("acdc_conditions",) if args.data == "acdc" else ())
    diff = changed_settings(old, {k: getattr(args, k, None) for k in keys})
    if diff:
        raise UsageError(f"{ckpt_path} was made with other settings ({'; '.join(diff)}); resume with the "
                         f"original flags or choose another --name")
    return resume


def check_still_ours(args, resume) -> None:
    """Called holding the run folder's lock: the checkpoint must still be what ``checkpoint_to_resume`` saw.
    A second train.py started while the first was finishing checked before the first had written its checkpoint
    (or its last epoch); without this it would train on, replace that checkpoint and truncate the log."""
    path = checkpoint_path(args)
    now = file_state(path)
    if resume is None and now is not None:
        raise UsageError(f"{path} was written by another train.py while this one started (nothing was overwritten); "
                         f"pass --resume to continue it, or choose another --out/--name")
    if resume is not None and now != resume.get("file_state"):
        raise UsageError(f"{path} changed while this run started (another train.py wrote it); nothing was "
                         f"overwritten; run the same command again to resume from the new checkpoint")


def build_training_model(args, resume, num_classes: int = voc.SPEC.num_classes):
    """(model to train, bare model): DistributedDataParallel around the bare one under torchrun, else the
    same module twice. Checkpoints hold the bare model's state dict."""
    device = torch.device(args.device)
    # A resumed run takes every weight from its checkpoint: no pretrained file needs to be read.
    model = build_model(args.model, args.arch, args.backbone, args.output_stride, args.head_channels,
                        "none" if resume is not None else args.pretrained_backbone, args.ibe_placement,
                        num_classes=num_classes)
    if args.sync_bn and args.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=args.memory_format)
    if not args.distributed:
        return model, model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                     else None), model


def build_loaders(train_set, val_set, generator, args):
    """(train sampler, train loader, val loader): shuffled training batches (drop_last) drawn with
    ``generator``, DistributedSampler's share under torchrun; each rank validates its ShardSampler share."""
    if args.distributed:
        train_sampler = torch.utils.data.DistributedSampler(train_set, shuffle=True, seed=args.seed, drop_last=True)
    else:
        train_sampler = torch.utils.data.RandomSampler(train_set, generator=generator)
    single_thread_opencv()   # the transform's OpenCV calls: one thread per loader worker (and here, if workers 0)
    loader_kw = dict(num_workers=args.workers, pin_memory=torch.device(args.device).type == "cuda",
                     worker_init_fn=quiet_worker)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=train_sampler, drop_last=True,
                              generator=generator, **loader_kw)
    val_loader = DataLoader(val_set, batch_size=args.val_batch_size, collate_fn=pad_collate,
                            sampler=ShardSampler(len(val_set), args.rank, args.world_size), **loader_kw)
    require_a_batch(train_loader, per_process=True)
    return train_sampler, train_loader, val_loader


def make_optimizer(model, args):
    backbone, head = head_parameters(model)
    return torch.optim.SGD([{"params": backbone, "lr": args.lr}, {"params": head, "lr": args.lr * args.head_lr_mult}],
                           lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def poly_schedule(optimizer, args, steps_per_epoch: int):
    """Poly decay (1 - t/T) ** 0.9: t counts epochs (the notebook's LambdaLR, stepped after each epoch) or
    iterations (the paper's text, stepped after each step); see ``train_one_epoch`` and ``main``."""
    total = args.epochs if args.poly_step == "epoch" else args.epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: (1 - min(t, total) / total) ** 0.9)


def restore(resume, model, optimizer, scheduler, scaler, args):
    """Load a checkpoint's model, optimiser, schedule, scaler and RNG state; returns (first epoch to run,
    best val mIoU so far)."""
    try:   # a damaged or foreign checkpoint fails here, in torch's own loaders: one line, not a traceback
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if resume["scaler"] and scaler.is_enabled():
            scaler.load_state_dict(resume["scaler"])   # else: fp16 starts (or stops) here, with a fresh scale
        set_rng_state(resume["rng"])
        start_epoch, best = int(resume["epoch"]) + 1, float(resume["best_miou"])
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise UsageError(f"{checkpoint_path(args)}: cannot resume from it ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]}); move it away and train again without "
                         f"--resume, or put back a good copy") from None
    if is_main(args):
        print(f"resumed {checkpoint_path(args)} after epoch {start_epoch} (best val mIoU {best:.4f})")
    return start_epoch, best


def print_model_summary(model, spec, train_set, val_set, loader, args):
    if not is_main(args):
        return
    n = sum(p.numel() for p in model.parameters())
    c = model.config
    ibe = f", IBE on the {c['ibe_placement']}" if c.get("ibe_placement") else ""
    print(f"model {c['kind']}: {c['arch']} {c['backbone']} OS{c['output_stride']} head {c['head_channels']}{ibe}, "
          f"{c['num_outputs']} outputs for {spec.name}'s {spec.num_classes} classes, {n:,} parameters; train {len(train_set)} images ({len(loader)} steps/epoch x {args.world_size} "
          f"process(es)), val {len(val_set)}; device {args.device}, amp {args.amp}")


def save_epoch(row, val, best, epoch, model, optimizer, scheduler, scaler, spec, args) -> float:
    """Rank 0 after an epoch: the log line, checkpoint.pt (and best.pt when val mIoU improved), the progress
    line; returns the best val mIoU so far."""
    improved = val is not None and val["miou"] > best
    best = val["miou"] if improved else best
    ckpt = {"model": model.state_dict(), "model_config": model.config, "name": args.name, "epoch": epoch,
            "args": stored_args(args), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(), "best_miou": best, "val": val,
            "git_commit": git_commit(), "versions": {"torch": str(torch.__version__)},
            "dataset": dataset_record(spec)}
    # The log line goes first: if a kill lands between the two writes, the resumed run drops the
    # line again (truncate_log) and redoes the epoch, so log and checkpoint never disagree.
    log = os.path.join(args.run_dir, "log.jsonl")
    try:
        with open(log, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    except OSError as e:   # a torn line is dropped by the next --resume (truncate_log)
        raise UsageError(write_problem(e, log) or f"cannot write {log}: {e}") from None
    if improved and args.save_best:
        save_checkpoint(os.path.join(args.run_dir, "best.pt"), ckpt)
    save_checkpoint(checkpoint_path(args), ckpt)
    vm = f"{val['miou']:.4f}" if val else "-"
    print(f"epoch {epoch + 1}/{args.epochs}  loss {row['loss']:.4f}  train mIoU {row['train_miou']:.4f}  "
          f"val mIoU {vm}  {row['images_per_s']:.1f} img/s  {row['seconds']:.1f}s", flush=True)
    return best


# ----------------------------------------------------------------------------------------- train / eval

def train_one_epoch(model, loader, optimizer, scheduler, scaler, epoch, num_classes, args):
    model.train()
    # Training crops all have one size, so cuDNN's per-shape autotuning pays off; validation keeps each
    # image's aspect (a new shape nearly every batch), where it would autotune over and over.
    torch.backends.cudnn.benchmark = not args.deterministic
    device = torch.device(args.device)
    cm = ConfusionMatrix(num_classes)
    loss_sum = torch.zeros((), device=args.device, dtype=torch.float64)
    steps = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=None if is_main(args) else True,
               leave=False, dynamic_ncols=True)
    for images, labels in bar:
        images = images.to(args.device, non_blocking=True, memory_format=args.memory_format)
        labels = labels.to(args.device, non_blocking=True)
        with autocast(device, args.amp):
            logits = model(images)
        loss = segmentation_loss(args.model, logits, labels, args.scribe_ignore_as_background)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if args.poly_step == "iteration":
            scheduler.step()  # the paper's text; the notebook steps once per epoch (``main``)
        loss_sum += loss.detach()
        steps += 1
        cm.update(labels, channel_argmax(logits.detach()))
        if steps % args.print_freq == 0:
            # Checking every step would synchronise the GPU each time; a NaN is caught within print_freq.
            check_finite(loss_sum, epoch, steps, args)
            bar.set_postfix(loss=f"{loss_sum.item() / steps:.4f}", miou=f"{cm.compute()['miou']:.3f}")
    check_finite(loss_sum, epoch, steps, args)
    if args.distributed:
        dist.all_reduce(loss_sum)
        loss_sum /= args.world_size
    cm.all_reduce()
    return loss_sum.item() / max(steps, 1), cm.compute()["miou"]


def check_finite(loss_sum, epoch, step, args):
    if not torch.isfinite(loss_sum):
        ckpt = checkpoint_path(args)
        last = f"the last good checkpoint is {ckpt}" if os.path.exists(ckpt) else "no checkpoint was written"
        raise UsageError(f"non-finite loss at epoch {epoch + 1}, step {step} (--lr {args.lr}, --amp {args.amp}); "
                         f"training stopped, {last}; lower --lr or use --amp none/bf16")


@torch.inference_mode()
def evaluate(model, loader, num_classes, args):
    model.eval()
    torch.backends.cudnn.benchmark = False
    device = torch.device(args.device)
    cm = ConfusionMatrix(num_classes)
    for images, labels in tqdm(loader, desc="val", disable=None if is_main(args) else True, leave=False):
        images = images.to(args.device, non_blocking=True, memory_format=args.memory_format)
        with autocast(device, args.amp):
            logits = model(images)
        cm.update(labels.to(args.device), channel_argmax(logits))
    cm.all_reduce()
    return cm.compute()


# ------------------------------------------------------------------------------------------------- main

def main(args):
    spec, splits = training_data(args)   # --model ibe without a background class, a wrong root: refused here
    resume = prepare_run(args)
    train_set, val_set = open_training_data(args, splits, quiet=not is_main(args))
    seed_everything(args.seed)
    model, bare = build_training_model(args, resume, spec.num_classes)
    generator = torch.Generator()
    train_sampler, train_loader, val_loader = build_loaders(train_set, val_set, generator, args)
    optimizer = make_optimizer(bare, args)
    scheduler = poly_schedule(optimizer, args, len(train_loader))
    scaler = torch.amp.GradScaler(torch.device(args.device).type, enabled=args.amp == "fp16")
    start_epoch, best = (0, -1.0) if resume is None else restore(resume, bare, optimizer, scheduler, scaler, args)

    with contextlib.ExitStack() as held:  # releases the run folder's lock however training ends
        if is_main(args):
            prepare_output_folder(args.run_dir)
            held.enter_context(OutputLock(args.run_dir, "train.py"))
            check_still_ours(args, resume)
            truncate_log(os.path.join(args.run_dir, "log.jsonl"), start_epoch)
            if args.held_out:
                write_text(os.path.join(args.run_dir, "held_out.txt"), "".join(f"{i}\n" for i in args.held_out))
        print_model_summary(bare, spec, train_set, val_set, train_loader, args)
        for epoch in range(start_epoch, args.epochs):
            seed = epoch_seed(args, epoch)
            seed_everything(seed)
            generator.manual_seed(seed)
            if args.distributed:
                train_sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]   # the backbone's, at the epoch's first step
            loss, train_miou = train_one_epoch(model, train_loader, optimizer, scheduler, scaler, epoch,
                                               spec.num_classes, args)
            if args.poly_step == "epoch":
                scheduler.step()   # the notebook's LambdaLR, stepped after the epoch
            train_seconds = time.perf_counter() - t0
            validate = epoch + 1 == args.epochs or (args.val_every > 0 and (epoch + 1) % args.val_every == 0)
            val = evaluate(model, val_loader, spec.num_classes, args) if validate else None
            row = {"epoch": epoch + 1, "loss": loss, "lr": lr, "amp": args.amp, "train_miou": train_miou,
                   "val_miou": val["miou"] if val else None, "val_pixel_acc": val["pixel_acc"] if val else None,
                   "val_iou": val["iou"] if val else None, "seconds": time.perf_counter() - t0,
                   "images_per_s": len(train_loader) * args.batch_size * args.world_size / train_seconds}
            if is_main(args):
                best = save_epoch(row, val, best, epoch, bare, optimizer, scheduler, scaler, spec, args)
            if args.distributed:
                dist.barrier()
        if args.distributed:
            dist.destroy_process_group()
    return best


def get_args_parser():
    p = argparse.ArgumentParser(description="Train DeepLab with the baseline, IBE or SCrIBE output structure. "
                                "Defaults reproduce the companion notebook behind the paper's table; flags marked "
                                "'recipe' default to --recipe's value.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_structure_arguments(p.add_argument_group("model"))
    add_data_arguments(p, "voc", sbd=True,
                       help="voc = VOC 2012 train + SBD train_noval (7,087 images), val on VOC val; "
                            "synthetic = the generated VOC-format dataset under --synthetic-root; cityscapes, "
                            "ade20k, acdc, folder = that dataset's train split, val on its val split, under its "
                            "--<name>-root (docs/datasets.md)")
    add_schedule_arguments(p.add_argument_group("optimisation and schedule"))
    add_device_arguments(p, amp_help="autocast precision (bf16 is the fast choice on recent GPUs); the paper "
                                     "trained in fp32. A run may resume in another precision")
    add_run_arguments(p.add_argument_group("the run"))
    return p


def add_structure_arguments(p):
    """--model, --recipe and the architecture flags."""
    p.add_argument("--model", choices=KINDS, required=True,
                   help="output structure: baseline = softmax CE over the dataset's N logits (21 on VOC); ibe = N-1 "
                        "logits with background -logsumexp, CE; scribe = the IBE structure with per-class sigmoid "
                        "BCE. ibe and scribe need a background class 0 (VOC, a folder whose class 0 is "
                        "'background'), so they are refused on cityscapes, ade20k and acdc")
    p.add_argument("--recipe", choices=tuple(RECIPES), default="notebook",
                   help="notebook = the companion code that produced the paper's numbers (DeepLabV3 OS8, IBE before "
                        "upsampling, poly per epoch, batch 30, SCrIBE 255 -> background); paper = the paper's text "
                        "(DeepLabV3+ OS16, IBE after upsampling, poly per iteration, batch 20, 255 masked); quick = "
                        "reproduce.sh's CPU recipe for the synthetic set (needs --pretrained-backbone)")
    p.add_argument("--arch", choices=ARCHS, default=None,
                   help="recipe: deeplabv3 (notebook: torchvision's head, no decoder) or deeplabv3plus (paper, quick)")
    p.add_argument("--backbone", choices=list(BACKBONES), default=None,
                   help="recipe: resnet50 (notebook, paper) or resnet18 (quick); resnet18/34 are for CPU work and run "
                        "at output stride 32 (no dilation)")
    p.add_argument("--output-stride", type=int, choices=(8, 16, 32), default=None,
                   help="default: 8 for deeplabv3, 16 for deeplabv3plus, 32 for resnet18/34")
    p.add_argument("--head-channels", type=int, default=None,
                   help="recipe: ASPP/decoder width, 256 (notebook, paper) or 64 (quick: a tiny CPU model)")
    p.add_argument("--ibe-placement", choices=IBE_PLACEMENTS, default=None,
                   help="recipe; IBE/SCrIBE: -logsumexp on the head's stride-8 logits before upsampling (logits, the "
                        "notebook) or on the upsampled output (output, the paper's text)")
    p.add_argument("--pretrained-backbone", default=None,
                   help="'imagenet' (torchvision weights API, needs the cached file offline), 'none', or a path "
                        "to a backbone state dict (pretrain_backbone.py's backbone.pt); default: none with --data "
                        "synthetic, imagenet with every other --data; --recipe quick needs it given")


def add_schedule_arguments(p):
    """The optimiser, schedule, crops, loss option and validation cadence (most of them set by --recipe)."""
    p.add_argument("--epochs", type=int, default=None, help="recipe: 50 (notebook, paper) or 12 (quick)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="recipe: 30 (notebook), 20 (paper) or 8 (quick); per process under torchrun")
    p.add_argument("--val-batch-size", type=int, default=1,
                   help="validation keeps each image's aspect; batches above 1 pad images to one size, which changes "
                        "the logits near the padded borders (the notebook validated one image at a time)")
    p.add_argument("--lr", type=float, default=None,
                   help="recipe: backbone learning rate, 0.01 (notebook, paper) or 0.02 (quick); the head gets "
                        "--head-lr-mult x")
    p.add_argument("--head-lr-mult", type=float, default=10.0)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-5)
    p.add_argument("--poly-step", choices=("epoch", "iteration"), default=None,
                   help="recipe: poly decay (1 - t/T)^0.9 with t in epochs, stepped after each epoch (notebook), "
                        "or in iterations (paper)")
    p.add_argument("--crop-size", type=int, default=None,
                   help="recipe: training crop, 224 (notebook, paper) or 80 (quick); the short side is drawn from "
                        "[crop/2, 2*crop]; val resizes the short side to it")
    p.add_argument("--scribe-ignore-as-background", action=argparse.BooleanOptionalAction, default=None,
                   help="recipe, SCrIBE only: map label 255 to background before the one-hot and average BCE over "
                        "every element (notebook), or leave 255 pixels out of the loss (--no-..., paper, quick)")
    p.add_argument("--val-every", type=int, default=None,
                   help="recipe: validate every N epochs and after the last (0: the last only); 1 or 12 (quick)")
    p.add_argument("--save-best", action="store_true",
                   help="also keep best.pt, the epoch with the best val mIoU. VOC val is also the test set, so this "
                        "selects on the test split; the paper evaluated the final weights (checkpoint.pt)")
    p.add_argument("--workers", type=int, default=None,
                   help="recipe: data loader processes, min(8, CPUs) or 0 (quick: load in the training process)")


def add_run_arguments(p):
    """Determinism, processes, the held-out images, and where the run goes."""
    p.add_argument("--deterministic", action="store_true",
                   help="cuDNN deterministic algorithms and torch's deterministic kernels, for repeatable GPU runs "
                        "(slower; CPU runs are deterministic already)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes under torchrun")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hold-out", type=int, default=0, metavar="N",
                   help="withhold N train images (VOC: evenly spaced through train.txt; other --data: through "
                        "its train split's ids) from training, so that "
                        "evaluate_corruptions.py can fit its calibration temperatures on clean images the model never "
                        "saw; their ids go to <out>/<name>/held_out.txt and the checkpoint. 0 (default): the "
                        "notebook's whole training set")
    p.add_argument("--print-freq", type=int, default=20, help="progress-bar update and NaN check interval (steps)")
    p.add_argument("--out", default="runs", help="output folder; the run goes to <out>/<name>/")
    p.add_argument("--name", default=None, help="run name; default: the --model value")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/<name>/checkpoint.pt (model, optimizer, schedule, scaler, epoch, RNG); "
                        "starts fresh if there is none")


def interrupted_note(args) -> str:
    """What a Ctrl-C'd or SIGTERM'd run kept (run_cli prints it): each epoch's checkpoint is complete or absent."""
    path = os.path.join(args.out, args.name or args.model, "checkpoint.pt")
    if not os.path.exists(path):
        return "no epoch had finished, so no checkpoint was kept; run the same command again to start over"
    again = "run the same command again" if args.resume else "run the same command with --resume"
    return f"{path} holds the last finished epoch; {again} to continue from it"


if __name__ == "__main__":
    run_cli(main, get_args_parser(), kept=interrupted_note)
