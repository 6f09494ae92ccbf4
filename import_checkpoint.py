"""Turn a bare state dict into one of our self-describing checkpoints, loadable by every script here.

    # torchvision's DeepLabV3 (fine-tuned elsewhere, or its published COCO-with-VOC-labels weights):
    python import_checkpoint.py --state-dict deeplabv3_resnet50_coco-cd0a2569.pth \
        --torchvision-builder deeplabv3_resnet50 --out runs/tv_deeplabv3/checkpoint.pt
    # one of the paper's models from a bare state dict (IBE, notebook layout):
    python import_checkpoint.py --state-dict ibe_weights.pth --model ibe --arch deeplabv3 --backbone resnet50 \
        --output-stride 8 --ibe-placement logits --out runs/ibe_imported/checkpoint.pt

The architecture flags are those of train.py, with train.py's default recipe (the notebook's: DeepLabV3 head,
output stride 8 on ResNet-50/101, IBE before upsampling) as defaults. ``--torchvision-builder
deeplabv3_resnet50|deeplabv3_resnet101`` stands for ``--arch deeplabv3 --backbone resnet50|101 --output-stride 8
--head-channels 256``, which is torchvision's model layer for layer and name for name; its ``aux_classifier.*``
weights (the training-only FCN head) are dropped. torchvision's FCN and LR-ASPP models have no counterpart here:
evaluate them as ``torchvision:<builder> --weights-file PATH`` instead. Keys saved by DDP (``module.`` prefix) are
accepted. Every key and shape must fit, else one line says which do not and nothing is written.

Writes ``--out`` (atomically; an existing file is never overwritten): ``model``, ``model_config``, ``name``,
``epoch`` (null: not trained here), ``args`` (this command's), ``imported_from`` {path, sha256},
``git_commit``, ``versions``; then loads it back with ``common.checkpoint.load_model`` to check.
"""
import argparse
import json
import os
import sys

import torch

from common import model_specs
from common.checkpoint import check_finite_weights, load_model, save_checkpoint
from common.cli import UsageError, check_plain_name, run_cli
from common.models import ARCHS, BACKBONES, IBE_PLACEMENTS, KINDS, build_model, count_parameters
from common.folders import file_sha256, git_commit

# torchvision builders that are one of our architectures (arch, backbone, output stride, head channels).
TORCHVISION_BUILDERS = {"deeplabv3_resnet50": ("deeplabv3", "resnet50", 8, 256),
                        "deeplabv3_resnet101": ("deeplabv3", "resnet101", 8, 256)}


def architecture(args):
    """build_model's keyword arguments from the flags (or from --torchvision-builder)."""
    if args.torchvision_builder is None:
        return dict(kind=args.model, arch=args.arch or "deeplabv3", backbone=args.backbone or "resnet50",
                    output_stride=args.output_stride, head_channels=args.head_channels or 256,
                    ibe_placement=args.ibe_placement)
    if args.torchvision_builder not in TORCHVISION_BUILDERS:
        raise UsageError(f"--torchvision-builder {args.torchvision_builder}: not one of our architectures (only "
                         f"{', '.join(TORCHVISION_BUILDERS)} are); evaluate it directly with "
                         f"--checkpoints torchvision:{args.torchvision_builder} --weights-file {args.state_dict}")
    given = [f for f, v in (("--arch", args.arch), ("--backbone", args.backbone),
                            ("--output-stride", args.output_stride), ("--head-channels", args.head_channels))
             if v is not None]
    if given:
        raise UsageError(f"--torchvision-builder {args.torchvision_builder} fixes the architecture; leave out "
                         f"{', '.join(given)}")
    arch, backbone, stride, width = TORCHVISION_BUILDERS[args.torchvision_builder]
    return dict(kind=args.model, arch=arch, backbone=backbone, output_stride=stride, head_channels=width,
                ibe_placement=args.ibe_placement)


def main(args):
    if os.path.exists(args.out):
        raise UsageError(f"--out {args.out}: exists; remove it or choose another name (it is never overwritten)")
    name = check_plain_name(args.name or args.torchvision_builder or args.model, "--name")
    kw = architecture(args)
    state = model_specs.read_state_dict(args.state_dict, f"--state-dict {args.state_dict}")
    notes = []
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        notes.append("removed the DDP prefix 'module.'")
    if args.torchvision_builder:
        aux = [k for k in state if k.startswith("aux_classifier.")]
        state = {k: v for k, v in state.items() if k not in aux}
        if aux:
            notes.append(f"dropped {len(aux)} aux_classifier tensors (torchvision's training-only head)")
    with torch.device("meta"):   # no random init: every tensor comes from the state dict (checked)
        model = build_model(**kw)
    what = f"--state-dict {args.state_dict}: does not fit {kw['kind']} {kw['arch']} {kw['backbone']} " \
           f"(output stride {model.config['output_stride']}, head {kw['head_channels']})"
    model_specs.assign_state(model, state, what)
    check_finite_weights(model.state_dict(), f"--state-dict {args.state_dict}",
                         "these weights come from a diverged or damaged run; nothing was written")
    ckpt = {"model": model.state_dict(), "model_config": model.config, "name": name, "epoch": None,
            "args": dict(vars(args)),
            "imported_from": {"path": os.path.abspath(args.state_dict), "sha256": file_sha256(args.state_dict)},
            "git_commit": git_commit(),
            "versions": {"torch": str(torch.__version__), "torchvision": model_specs.torchvision_version()}}
    save_checkpoint(args.out, ckpt)
    back, _ = load_model(args.out)   # what every script will do with it
    same = all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))
    if not same:  # cannot happen unless the file system lies; never leave a checkpoint that differs
        os.remove(args.out)
        raise RuntimeError(f"{args.out} read back differs from what was written")
    print(f"wrote {args.out}: {name}, {json.dumps(model.config)}, {count_parameters(model):,} parameters"
          + (f"; {'; '.join(notes)}" if notes else ""))
    return 0


def get_args_parser():
    p = argparse.ArgumentParser(description="Turn a bare state dict into a self-describing checkpoint.")
    p.add_argument("--state-dict", required=True,
                   help="the weights: a state dict saved with torch.save (or a dict holding one under 'model' or "
                        "'state_dict'); read with weights_only=True")
    p.add_argument("--out", required=True, help="the checkpoint to write (e.g. runs/<name>/checkpoint.pt)")
    p.add_argument("--name", default=None,
                   help="display name stored in the checkpoint; default: the builder's name or --model")
    p.add_argument("--model", choices=KINDS, default="baseline", help="output structure (default baseline)")
    p.add_argument("--torchvision-builder", default=None,
                   help=f"torchvision builder the state dict was saved from ({', '.join(TORCHVISION_BUILDERS)}); "
                        f"sets --arch, --backbone, --output-stride and --head-channels")
    p.add_argument("--arch", choices=ARCHS, default=None, help="head (default deeplabv3, as train.py's default recipe)")
    p.add_argument("--backbone", choices=tuple(BACKBONES), default=None, help="backbone (default resnet50)")
    p.add_argument("--output-stride", type=int, default=None,
                   help="8, 16 or 32; default: 8 for deeplabv3, 16 for deeplabv3plus, 32 for resnet18/34")
    p.add_argument("--head-channels", type=int, default=None, help="ASPP (and decoder) width (default 256)")
    p.add_argument("--ibe-placement", choices=IBE_PLACEMENTS, default="logits",
                   help="IBE/SCrIBE: -logsumexp before (logits, the default, as train.py's default recipe) or after "
                        "(output) the upsampling")
    return p


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
