"""Pretrain a ResNet backbone once, as a multi-label classifier of the classes present in each training crop.

The paper's three models all start from an ImageNet-classification backbone. The quick mode trains on the
synthetic set, where ImageNet weights are neither available offline nor meaningful; this script gives the
same kind of starting point from the training set alone: torchvision's ResNet with its global average pool and
a linear layer of 20 outputs, trained with per-class BCE against "which foreground classes (1..20) appear in
the crop" (label 255 and background do not count). The same file then initialises all three models:

    python pretrain_backbone.py --data synthetic --backbone resnet18 --out runs/quick/backbone
    python train.py --model scribe --recipe quick --data synthetic \
        --pretrained-backbone runs/quick/backbone/backbone.pt

Crops come from train.py's training transform (``common.data.train_transform``) on the same training set
(VOC train + SBD train_noval), so the backbone never sees val images. Targets are taken from each crop's
label, not the whole image's, so that a class cropped out of view is not asked for.

Writes ``<out>/``: ``backbone.pt`` (the ResNet's state dict under torchvision's key names, without ``fc.*``:
what ``--pretrained-backbone PATH`` loads), ``log.jsonl`` (one line per epoch: loss, lr, seconds, and when
validated: val loss, micro-F1 and exact-match rate at probability 0.5 on the full val images) and
``pretrain.json`` (the arguments, git commit and the final line). A second run with the same arguments finds
``pretrain.json`` and returns at once; with other arguments it refuses to overwrite. The job is short, so an
interrupted run starts over (nothing is written under the final names until it ends).
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.checkpoint import changed_settings
from common.cli import UsageError, add_data_arguments, check_at_least, run_cli
from common.constants import IGNORE_INDEX, NUM_CLASSES
from common.data import pad_collate, require_a_batch, resolve_roots, single_thread_opencv
from common.training_sets import build_datasets, held_out_ids
from common.device import autocast, memory_format, seed_everything
from common.models import BACKBONES
from common.folders import OutputLock, atomic_write, file_sha256, git_commit, prepare_output_folder, write_text

FOREGROUND = NUM_CLASSES - 1   # classes 1..20; background is what no foreground class claims
CPU = torch.device("cpu")      # the script runs on the CPU (channels_last under bf16: common.device.memory_format)
# Arguments that change the weights written: a finished run with other values is not "the same run".
RUN_ARGS = ("backbone", "data", "voc_root", "sbd_root", "synthetic_root", "crop_size", "epochs", "batch_size", "lr",
            "momentum", "weight_decay", "amp", "seed", "hold_out")


def presence_targets(labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) int64 class maps -> (B, 20) float 0/1: does foreground class k (1..20) occur in the map.

    255 (ignore, and the padding of crops larger than the image) and background are not classes to find.
    """
    onehot = torch.zeros(labels.shape[0], NUM_CLASSES + 1, dtype=torch.bool, device=labels.device)
    flat = labels.reshape(labels.shape[0], -1)
    flat = torch.where(flat == IGNORE_INDEX, torch.full_like(flat, NUM_CLASSES), flat)  # 255 -> a spare slot
    onehot.scatter_(1, flat, True)
    return onehot[:, 1:NUM_CLASSES].float()


def presence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCEWithLogitsLoss's mean over all B x 20 elements, the reduction SCrIBE's loss uses too.

    (Summing over the 20 classes instead, i.e. 20x the gradient, trained worse: BENCHMARKS.md, Decisions.)
    """
    return F.binary_cross_entropy_with_logits(logits, targets)


def build_classifier(backbone: str) -> torch.nn.Module:
    """torchvision's ResNet (global average pool + linear layer) with one output per foreground class."""
    return BACKBONES[backbone][0](weights=None, num_classes=FOREGROUND)


def backbone_state(net: torch.nn.Module) -> dict:
    """The weights ``--pretrained-backbone`` loads: torchvision key names, the classifier (fc.*) left out."""
    return {k: v.detach().clone() for k, v in net.state_dict().items() if not k.startswith("fc.")}


def poly_schedule(optimizer, total_steps: int):
    """Poly decay (1 - t/T) ** 0.9 per iteration, the segmentation recipes' shape."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: (1 - min(t, total_steps) / total_steps) ** 0.9)


def check_args(args) -> None:
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--crop-size", args.crop_size)):
        check_at_least(flag, value)
    check_at_least("--hold-out", args.hold_out, 0)
    if args.val_every < 0:
        raise UsageError(f"--val-every {args.val_every}: must be 0 (after the last epoch only) or more")
    if not args.lr > 0:
        raise UsageError(f"--lr {args.lr}: must be positive")
    if args.workers < 0:
        raise UsageError(f"--workers {args.workers}: must be 0 or more")


def read_meta(path: str) -> dict:
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable ({e}); remove {os.path.dirname(path)} and run again") from None
    return meta if isinstance(meta, dict) else {}


def finished_run(args, settings: dict):
    """The final log line of a finished run in ``--out`` made with ``settings`` (None when there is none yet);
    refuses a folder that holds another run's backbone, or a backbone.pt its pretrain.json does not vouch for."""
    weights_path, meta_path = os.path.join(args.out, "backbone.pt"), os.path.join(args.out, "pretrain.json")
    if not (os.path.exists(meta_path) or os.path.exists(weights_path)):
        return None
    done = read_meta(meta_path)
    if done.get("settings") != settings:
        diff = changed_settings(done.get("settings") or {}, settings)
        raise UsageError(f"{args.out} holds a backbone made with other settings ({'; '.join(diff) or 'unknown'}); "
                         f"choose another --out (nothing was overwritten)")
    if not os.path.isfile(weights_path) or file_sha256(weights_path) != done.get("sha256"):
        raise UsageError(f"{weights_path} is missing or differs from the one {meta_path} records; remove "
                         f"{args.out} and run again")
    print(f"{weights_path} is already pretrained with these settings; nothing to do")
    return done["final"]


def write_outputs(net, rows, settings, t_start, args) -> None:
    """backbone.pt, log.jsonl, then pretrain.json, each atomically."""
    weights_path = os.path.join(args.out, "backbone.pt")
    # Weights first, then the log, then the record that says "done": a kill in between leaves no pretrain.json,
    # and the next run refuses the orphaned backbone.pt instead of trusting it.
    atomic_write(weights_path, lambda tmp: torch.save(backbone_state(net), tmp))
    write_text(os.path.join(args.out, "log.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    meta = {"settings": settings, "args": dict(sorted(vars(args).items())), "git_commit": git_commit(),
            "versions": {"torch": str(torch.__version__)}, "sha256": file_sha256(weights_path),
            "seconds": time.perf_counter() - t_start, "final": rows[-1]}
    write_text(os.path.join(args.out, "pretrain.json"), json.dumps(meta, indent=1) + "\n")
    print(f"wrote {weights_path} ({time.perf_counter() - t_start:.0f}s); use it with "
          f"train.py --backbone {args.backbone} --pretrained-backbone {weights_path}")


def train_one_epoch(net, loader, optimizer, scheduler, epoch, args):
    net.train()
    loss_sum, steps = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=None, leave=False, dynamic_ncols=True)
    for images, labels in bar:
        with autocast(CPU, args.amp):
            logits = net(images.contiguous(memory_format=memory_format(CPU, args.amp)))
        loss = presence_loss(logits.float(), presence_targets(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item()
        steps += 1
        bar.set_postfix(loss=f"{loss_sum / steps:.4f}")
    if not np.isfinite(loss_sum):
        raise UsageError(f"non-finite loss in epoch {epoch + 1} (--lr {args.lr}); nothing was written, lower --lr")
    return loss_sum / max(steps, 1)


@torch.inference_mode()
def evaluate(net, loader, amp="none"):
    """Presence loss (as in training), micro-F1 and exact-match rate of the presence predictions
    (probability > 0.5) on whole images."""
    net.eval()
    loss_sum, n, tp, fp, fn, exact = 0.0, 0, 0, 0, 0, 0
    for images, labels in tqdm(loader, desc="val", disable=None, leave=False):
        with autocast(CPU, amp):
            logits = net(images.contiguous(memory_format=memory_format(CPU, amp))).float()
        target = presence_targets(labels)
        loss_sum += presence_loss(logits, target).item() * images.shape[0]
        pred = logits > 0
        truth = target.bool()
        tp += int((pred & truth).sum())
        fp += int((pred & ~truth).sum())
        fn += int((~pred & truth).sum())
        exact += int((pred == truth).all(dim=1).sum())
        n += images.shape[0]
    return {"val_loss": loss_sum / max(n, 1), "val_f1": 2 * tp / max(2 * tp + fp + fn, 1),
            "val_exact": exact / max(n, 1)}


def main(args):
    check_args(args)
    settings = {k: getattr(args, k) for k in RUN_ARGS}
    # The data first: a wrong root must not leave an empty output folder behind.
    voc_root, sbd_root = resolve_roots(args.data, args.voc_root, args.sbd_root, args.synthetic_root)
    held = held_out_ids(voc_root, args.hold_out)
    train_set, val_set = build_datasets(voc_root, sbd_root, args.crop_size, hold_out=held)
    prepare_output_folder(args.out)
    with OutputLock(args.out, "pretrain_backbone.py"):
        done = finished_run(args, settings)
        if done is not None:
            return done
        print(f"git commit: {git_commit()}")
        print("arguments: " + json.dumps(dict(sorted(vars(args).items()))))

        seed_everything(args.seed)
        net = build_classifier(args.backbone).to(memory_format=memory_format(CPU, args.amp))
        generator = torch.Generator().manual_seed(args.seed)
        single_thread_opencv()
        train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                  generator=generator, num_workers=args.workers)
        val_loader = DataLoader(val_set, batch_size=1, collate_fn=pad_collate, num_workers=args.workers)
        require_a_batch(train_loader)
        optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum,
                                    weight_decay=args.weight_decay)
        scheduler = poly_schedule(optimizer, args.epochs * len(train_loader))
        print(f"pretraining {args.backbone} as a {FOREGROUND}-class presence classifier: train {len(train_set)} "
              f"images ({len(train_loader)} steps/epoch), val {len(val_set)}")

        rows, t_start = [], time.perf_counter()
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            loss = train_one_epoch(net, train_loader, optimizer, scheduler, epoch, args)
            seconds = time.perf_counter() - t0
            row = {"epoch": epoch + 1, "loss": loss, "lr": lr, "seconds": seconds,
                   "images_per_s": len(train_loader) * args.batch_size / seconds}
            if epoch + 1 == args.epochs or (args.val_every and (epoch + 1) % args.val_every == 0):
                row.update(evaluate(net, val_loader, args.amp))
            rows.append(row)
            val = (f"  val loss {row['val_loss']:.4f} F1 {row['val_f1']:.3f} exact {row['val_exact']:.2f}"
                   if "val_f1" in row else "")
            print(f"epoch {epoch + 1}/{args.epochs}  loss {loss:.4f}{val}  {row['images_per_s']:.1f} img/s  "
                  f"{seconds:.1f}s", flush=True)
        write_outputs(net, rows, settings, t_start, args)
    return rows[-1]


def get_args_parser():
    p = argparse.ArgumentParser(description="Pretrain a ResNet backbone as a multi-label classifier of the classes "
                                "present in each training crop, for train.py --pretrained-backbone.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", choices=list(BACKBONES), default="resnet18",
                   help="torchvision ResNet; must match train.py's --backbone")
    add_data_arguments(p, "synthetic", sbd=True,
                       help="voc = VOC 2012 train + SBD train_noval; synthetic = the generated VOC-format dataset")
    p.add_argument("--crop-size", type=int, default=64,
                   help="training crop, through train.py's transform (random scale 0.5-2x of it, then crop); "
                        "smaller than the quick recipe's training crop (80 in train.py --recipe quick) buys more SGD "
                        "steps per second")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=16, help="crops per SGD step (drop_last)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate at the start of the poly decay")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay (ImageNet's usual 1e-4)")
    p.add_argument("--val-every", type=int, default=0,
                   help="score presence on the val images every N epochs; always after the last, 0 = only then")
    p.add_argument("--workers", type=int, default=1, help="data loader processes (0: load in this process)")
    p.add_argument("--amp", choices=["none", "bf16"], default="none",
                   help="autocast precision of the forward (bf16, in channels_last: faster on a CPU with AVX-512 BF16 "
                        "or AMX, see bench.py --only quick_step; slow on one without); the weights and the "
                        "optimiser stay float32")
    p.add_argument("--seed", type=int, default=0, help="same seed and arguments: the same weights on CPU")
    p.add_argument("--hold-out", type=int, default=0, metavar="N",
                   help="leave out the N VOC train images that train.py --hold-out N leaves out, so that no step "
                        "sees the images the calibration temperatures are fitted on")
    p.add_argument("--out", default="runs/quick/backbone",
                   help="output folder: backbone.pt, log.jsonl, pretrain.json")
    return p


if __name__ == "__main__":
    run_cli(main, get_args_parser())
