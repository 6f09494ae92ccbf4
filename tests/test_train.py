"""train.py end to end on a tiny synthetic dataset with a tiny model (CPU, seconds per run)."""
import json
import os

import numpy as np
import pytest
import torch

import train
from helpers import ROOT, TINY_TRAIN, cli, refused, run_tiny_train
from common.checkpoint import load_model, read_checkpoint, save_random_checkpoint

TINY = TINY_TRAIN


@pytest.fixture(scope="module")
def tiny_data(synthetic):
    """This module's set, larger than conftest's: 8 + 8 training images (the torchrun test splits 16), 6 val."""
    return synthetic(n_voc_train=8, n_sbd=8, n_val=6, max_side=96)


def run_train(tiny_data, out, *extra):
    return run_tiny_train(tiny_data, out, *extra)


def test_training_writes_checkpoints_and_log(tiny_data, tmp_path):
    run_train(tiny_data, tmp_path, "--model", "scribe", "--epochs", "3", "--val-every", "0")
    run = tmp_path / "scribe"
    rows = [json.loads(line) for line in open(run / "log.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(r["loss"] > 0 for r in rows)
    # --val-every 0: validated after the last epoch only.
    assert [r.get("val_miou") is None for r in rows] == [True, True, False]
    assert len(rows[-1]["val_iou"]) == 21 and 0 <= rows[-1]["val_miou"] <= 1
    # The notebook's LambdaLR(lambda e: (1 - e/E) ** 0.9), stepped once per epoch: epoch e (from 0) runs at
    # lr * (1 - e/E) ** 0.9, and the head at 10x that.
    assert [r["lr"] for r in rows] == pytest.approx([0.01 * (1 - e / 3) ** 0.9 for e in range(3)], rel=1e-12)
    ckpt = read_checkpoint(str(run / "checkpoint.pt"))
    assert ckpt["epoch"] == 2 and ckpt["args"]["model"] == "scribe"
    assert ckpt["model_config"]["kind"] == "scribe" and ckpt["model_config"]["num_outputs"] == 20
    # The classes trained on: the synthetic set is VOC-format, VOC's 21 with background first.
    assert ckpt["dataset"]["name"] == "voc" and ckpt["dataset"]["classes"][:2] == ["background", "aeroplane"]
    assert len(ckpt["dataset"]["classes"]) == 21 and ckpt["dataset"]["has_background"] is True
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == pytest.approx([0.01, 0.1])
    assert [(g["momentum"], g["weight_decay"], g["nesterov"]) for g in groups] == [(0.9, 5e-5, False)] * 2
    # The final weights are what gets evaluated; nothing is selected on val (which is also the test set).
    assert not os.path.exists(run / "best.pt")


def test_hold_out_keeps_evenly_spaced_train_images_out_of_training(tiny_data, tmp_path, capsys):
    from common.training_sets import build_datasets
    base = os.path.join(tiny_data, "voc", "VOCdevkit", "VOC2012")
    train_ids = open(os.path.join(base, "ImageSets", "Segmentation", "train.txt")).read().split()
    run_train(tiny_data, tmp_path, "--model", "baseline", "--epochs", "1", "--val-every", "0", "--hold-out", "2")
    # Two evenly spaced through train.txt: its first and last ids.
    held = [train_ids[0], train_ids[-1]]
    assert open(tmp_path / "baseline" / "held_out.txt").read().split() == held
    assert read_checkpoint(str(tmp_path / "baseline" / "checkpoint.pt"))["args"]["held_out"] == held
    voc, sbd = os.path.join(tiny_data, "voc"), os.path.join(tiny_data, "sbd")
    whole, kept = build_datasets(voc, sbd, 48)[0], build_datasets(voc, sbd, 48, hold_out=held)[0]
    names = [os.path.basename(p) for part in kept.datasets for p in part.images]
    assert len(kept) == len(whole) - 2 and not {f"{i}.jpg" for i in held} & set(names)
    line = refused(capsys, train, *TINY, "--synthetic-root", tiny_data, "--out", str(tmp_path / "bad"), "--model",
                   "baseline", "--hold-out", "-1")
    assert "--hold-out -1" in line


def test_defaults_are_the_notebook_recipe_and_flags_override_it():
    parse = train.get_args_parser().parse_args
    args = parse(["--model", "ibe"])
    train.resolve_recipe(args)
    assert (args.recipe, args.arch, args.output_stride, args.ibe_placement, args.poly_step, args.batch_size,
            args.scribe_ignore_as_background, args.epochs, args.lr, args.head_lr_mult, args.weight_decay,
            args.crop_size) == ("notebook", "deeplabv3", 8, "logits", "epoch", 30, True, 50, 0.01, 10.0, 5e-5, 224)
    # Also the settings both recipes share (docs/protocol.md): momentum 0.9, validation one image at a time.
    assert (args.momentum, args.val_batch_size, args.backbone, args.head_channels) == (0.9, 1, "resnet50", 256)
    args = parse(["--model", "ibe", "--recipe", "paper"])
    train.resolve_recipe(args)
    assert (args.arch, args.output_stride, args.ibe_placement, args.poly_step, args.batch_size,
            args.scribe_ignore_as_background) == ("deeplabv3plus", 16, "output", "iteration", 20, False)
    args = parse(["--model", "scribe", "--recipe", "paper", "--arch", "deeplabv3", "--batch-size", "7",
                  "--scribe-ignore-as-background"])
    train.resolve_recipe(args)
    assert (args.arch, args.output_stride, args.batch_size, args.scribe_ignore_as_background,
            args.poly_step) == ("deeplabv3", 8, 7, True, "iteration")
    args = parse(["--model", "scribe", "--no-scribe-ignore-as-background", "--ibe-placement", "output"])
    train.resolve_recipe(args)
    assert (args.scribe_ignore_as_background, args.ibe_placement, args.arch) == (False, "output", "deeplabv3")


def test_quick_recipe_is_the_flags_reproduce_sh_passed_and_a_flag_overrides_it():
    # The expected values are the literal flags reproduce.sh's quick mode passed to train.py before the recipe
    # had a name: --backbone resnet18 --head-channels 64 --crop-size 80 --epochs 12 --batch-size 8 --lr 0.02
    # --workers 0 --val-every 12 --arch deeplabv3plus --no-scribe-ignore-as-background, on top of the default
    # (notebook) recipe for everything else.
    parse = train.get_args_parser().parse_args
    args = parse(["--model", "scribe", "--recipe", "quick", "--data", "synthetic", "--pretrained-backbone", "b.pt"])
    train.resolve_recipe(args)
    got = {k: getattr(args, k) for k in ("backbone", "head_channels", "crop_size", "epochs", "batch_size", "lr",
                                         "workers", "val_every", "arch", "scribe_ignore_as_background",
                                         "ibe_placement", "poly_step", "output_stride", "head_lr_mult", "momentum",
                                         "weight_decay", "val_batch_size", "pretrained_backbone")}
    assert got == dict(backbone="resnet18", head_channels=64, crop_size=80, epochs=12, batch_size=8, lr=0.02,
                       workers=0, val_every=12, arch="deeplabv3plus", scribe_ignore_as_background=False,
                       ibe_placement="logits", poly_step="epoch", output_stride=32, head_lr_mult=10.0,
                       momentum=0.9, weight_decay=5e-5, val_batch_size=1, pretrained_backbone="b.pt")
    # An explicit flag overrides its entry and nothing else.
    over = parse(["--model", "scribe", "--recipe", "quick", "--data", "synthetic", "--pretrained-backbone", "b.pt",
                  "--epochs", "3", "--scribe-ignore-as-background"])
    train.resolve_recipe(over)
    assert (over.epochs, over.scribe_ignore_as_background) == (3, True)
    assert {k: getattr(over, k) for k in got if k not in ("epochs", "scribe_ignore_as_background")} == \
        {k: v for k, v in got.items() if k not in ("epochs", "scribe_ignore_as_background")}


def test_quick_recipe_without_a_pretrained_backbone_is_refused():
    # SCrIBE does not learn from scratch on the synthetic set: the recipe asks for the backbone (or an explicit none).
    args = train.get_args_parser().parse_args(["--model", "ibe", "--recipe", "quick", "--data", "synthetic"])
    with pytest.raises(train.UsageError, match="pretrain_backbone.py"):
        train.resolve_recipe(args)
    args = train.get_args_parser().parse_args(["--model", "ibe", "--recipe", "quick", "--data", "synthetic",
                                               "--pretrained-backbone", "none"])
    train.resolve_recipe(args)
    assert args.pretrained_backbone == "none"


def test_notebook_recipe_baseline_loads_into_torchvision_with_identical_logits(tmp_path):
    # What a default train.py run builds (the recipe's model, ResNet-50 at stride 8), saved as train.py saves it.
    import torchvision
    args = train.get_args_parser().parse_args(["--model", "baseline"])
    train.resolve_recipe(args)
    path = save_random_checkpoint(tmp_path / "b.pt", "baseline", arch=args.arch, output_stride=args.output_stride)
    ours, ckpt = load_model(path)
    ref = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                             aux_loss=False).eval()
    ref.load_state_dict(ckpt["model"])
    x = torch.randn(1, 3, 72, 88)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x)["out"], atol=1e-5)


def test_head_trains_at_ten_times_the_backbone_lr_and_only_the_head(tmp_path):
    # docs/protocol.md: backbone lr 0.01, classifier (torchvision's ``classifier``: the whole head) lr 0.1. The
    # groups are checked by parameter name, for both architectures.
    from common.models import build_model
    for arch in ("deeplabv3", "deeplabv3plus"):
        model = build_model("scribe", arch=arch, backbone="resnet18", head_channels=8)
        args = train.get_args_parser().parse_args(["--model", "scribe", "--arch", arch])
        train.resolve_recipe(args)
        opt = train.make_optimizer(model, args)
        by_lr = {}
        for g in opt.param_groups:
            by_lr.setdefault(g["lr"], set()).update(id(p) for p in g["params"])
        names = {id(p): n for n, p in model.named_parameters()}
        assert len(by_lr) == 2 and sorted(by_lr) == pytest.approx([0.01, 0.1], rel=1e-12)
        head = {names[i] for i in by_lr[max(by_lr)]}
        body = {names[i] for i in by_lr[min(by_lr)]}
        assert head == {n for n in names.values() if n.startswith("classifier.")} and head
        assert body == {n for n in names.values() if n.startswith("backbone.")} and body
        assert head | body == set(names.values()) and not head & body
        assert max(by_lr) == pytest.approx(10 * min(by_lr))


@pytest.mark.parametrize("mode", ["epoch", "iteration"])
def test_poly_schedule_against_its_formula_for_both_groups(mode):
    # (1 - t/T) ** 0.9 times each group's initial lr, T = epochs (per epoch) or epochs x steps (per iteration).
    epochs, steps = 5, 3
    args = train.get_args_parser().parse_args(["--model", "baseline", "--epochs", str(epochs), "--poly-step", mode])
    train.resolve_recipe(args)
    w = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": [w[0]], "lr": 0.01}, {"params": [w[1]], "lr": 0.1}], lr=0.01)
    sched = train.poly_schedule(opt, args, steps)
    total = epochs if mode == "epoch" else epochs * steps
    for t in range(total + 1):
        want = [0.01 * (1 - t / total) ** 0.9, 0.1 * (1 - t / total) ** 0.9]
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(want, rel=1e-12, abs=1e-15), t
        opt.step()
        sched.step()


def test_sync_bn_converts_the_model_under_a_process_group(tmp_path, tiny_data, monkeypatch):
    # On the CPU, DistributedDataParallel refuses SyncBatchNorm layers ("SyncBatchNorm layers only work with
    # GPU modules") and SyncBatchNorm's training forward refuses CPU tensors, so here --sync-bn can only be
    # checked by inspecting the model train.py hands to DistributedDataParallel: a one-process gloo group
    # stands in for torchrun, and the run stops there.
    import torch.distributed as dist
    seen = {}

    class Stop(Exception):
        pass

    def fake_init(args):
        args.world_size, args.rank, args.distributed, args.device = 1, 0, True, "cpu"
        dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg{len(seen)}", rank=0, world_size=1)

    def inspect(model, *a, **k):
        seen[len(seen)] = {type(m).__name__ for m in model.modules()}
        raise Stop

    monkeypatch.setattr(train, "init_distributed", fake_init)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", inspect)
    for flag in ([], ["--sync-bn"]):
        try:
            with pytest.raises(Stop):
                run_train(tiny_data, tmp_path / "o", "--model", "ibe", "--epochs", "1", *flag)
        finally:
            dist.destroy_process_group()
    assert "BatchNorm2d" in seen[0] and "SyncBatchNorm" not in seen[0]
    assert "SyncBatchNorm" in seen[1] and "BatchNorm2d" not in seen[1]

def test_paper_recipe_steps_poly_per_iteration_and_save_best_keeps_best(tiny_data, tmp_path):
    run_train(tiny_data, tmp_path, "--model", "baseline", "--epochs", "2", "--recipe", "paper", "--save-best")
    run = tmp_path / "baseline"
    rows = [json.loads(line) for line in open(run / "log.jsonl")]
    ckpt = read_checkpoint(str(run / "checkpoint.pt"))
    steps = 16 // 4   # 8 VOC train + 8 SBD images in batches of 4, drop_last
    assert ckpt["scheduler"]["last_epoch"] == 2 * steps
    # Epoch 2 starts after `steps` iterations of (1 - t/T) ** 0.9 with T = 2 * steps.
    assert [r["lr"] for r in rows] == pytest.approx([0.01, 0.01 * (1 - steps / (2 * steps)) ** 0.9], rel=1e-12)
    assert ckpt["model_config"]["arch"] == "deeplabv3plus"
    best = read_checkpoint(str(run / "best.pt"))
    assert best["val"]["miou"] == max(r["val_miou"] for r in rows)


def test_checkpoint_round_trip_rebuilds_the_same_model(tiny_data, tmp_path):
    run_train(tiny_data, tmp_path, "--model", "ibe", "--epochs", "1")
    model, ckpt = load_model(str(tmp_path / "ibe" / "checkpoint.pt"))
    # The file alone rebuilds the architecture; the weights are the saved ones, bit for bit.
    assert model.config == ckpt["model_config"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k])
    # And the logged validation mIoU is that model's on val images resized by Pillow to short side 48 (the
    # crop size), aspect kept, recomputed by hand: a square resize, or any other geometry, gives another number.
    whole, _, _ = val_miou_by_hand(model, tiny_data, 48)
    logged = json.loads(open(tmp_path / "ibe" / "log.jsonl").readline())["val_miou"]
    assert ckpt["val"]["miou"] == logged == pytest.approx(whole, abs=1e-6)


def test_resumed_run_ends_with_identical_weights(tiny_data, tmp_path, monkeypatch):
    run_train(tiny_data, tmp_path / "straight", "--model", "baseline", "--epochs", "3")

    real = train.train_one_epoch
    calls = {"n": 0}

    def crash_in_second_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(*a, **k)

    monkeypatch.setattr(train, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_train(tiny_data, tmp_path / "resumed", "--model", "baseline", "--epochs", "3")
    monkeypatch.setattr(train, "train_one_epoch", real)
    assert read_checkpoint(str(tmp_path / "resumed" / "baseline" / "checkpoint.pt"))["epoch"] == 0
    run_train(tiny_data, tmp_path / "resumed", "--model", "baseline", "--epochs", "3", "--resume")

    a = read_checkpoint(str(tmp_path / "straight" / "baseline" / "checkpoint.pt"))
    b = read_checkpoint(str(tmp_path / "resumed" / "baseline" / "checkpoint.pt"))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    la = [json.loads(x)["loss"] for x in open(tmp_path / "straight" / "baseline" / "log.jsonl")]
    lb = [json.loads(x)["loss"] for x in open(tmp_path / "resumed" / "baseline" / "log.jsonl")]
    assert la == lb


def test_existing_run_is_not_overwritten_without_resume(tiny_data, tmp_path):
    run_train(tiny_data, tmp_path, "--model", "ibe", "--epochs", "1")
    before = (tmp_path / "ibe" / "checkpoint.pt").read_bytes()
    with pytest.raises(train.UsageError, match="--resume"):
        run_train(tiny_data, tmp_path, "--model", "ibe", "--epochs", "1")
    with pytest.raises(train.UsageError, match="other settings"):
        run_train(tiny_data, tmp_path, "--model", "ibe", "--epochs", "2", "--resume")
    assert (tmp_path / "ibe" / "checkpoint.pt").read_bytes() == before


def test_non_finite_loss_stops_with_clear_message(tiny_data, tmp_path, capsys):
    line = refused(capsys, train, *TINY, "--synthetic-root", tiny_data, "--out", tmp_path, "--model", "baseline",
                   "--epochs", "1", "--lr", "1e12")
    assert "non-finite loss" in line
    assert not os.path.exists(tmp_path / "baseline" / "checkpoint.pt")


def test_missing_voc_root_is_one_clear_line(tmp_path, capsys):
    line = refused(capsys, train, "--model", "baseline", "--data", "voc", "--voc-root", tmp_path / "nope",
                   "--sbd-root", tmp_path)
    assert "VOCdevkit" in line and "--data synthetic" in line


# Runs train.py's main under torchrun, recording what each rank computed locally: every batch's loss and
# every (target, prediction) that reaches a ConfusionMatrix (instance 0: the training epoch, 1: validation).
# Only inputs are recorded; the reductions across ranks stay train.py's, and the test redoes them by hand.
RECORDING_LAUNCHER = """
import os, sys
sys.path.insert(0, {root!r})
import numpy as np
import train
from common import metrics

record = {{"loss": [], "cm": []}}
real_loss = train.segmentation_loss


def loss(*a, **k):
    value = real_loss(*a, **k)
    record["loss"].append(float(value))
    return value


class RecordingConfusion(metrics.ConfusionMatrix):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.slot = len(record["cm"])
        record["cm"].append([])

    def update(self, target, pred):
        record["cm"][self.slot].append((target.reshape(-1).numpy().copy(), pred.reshape(-1).numpy().copy()))
        super().update(target, pred)


train.segmentation_loss, train.ConfusionMatrix = loss, RecordingConfusion
rank = os.environ["RANK"]
train.main(train.get_args_parser().parse_args(sys.argv[1:]))
arrays = {{"loss": np.array(record["loss"])}}
for k, calls in enumerate(record["cm"]):
    arrays[f"target{{k}}"] = np.concatenate([t for t, _ in calls])
    arrays[f"pred{{k}}"] = np.concatenate([p for _, p in calls])
np.savez(os.path.join({out!r}, f"rank{{rank}}.npz"), **arrays)
"""


def numpy_miou(target, pred):
    keep = target != 255
    conf = np.zeros((21, 21), np.int64)
    np.add.at(conf, (target[keep], pred[keep]), 1)
    present = conf.sum(0) + conf.sum(1) > 0
    iou = np.diag(conf)[present] / (conf.sum(0) + conf.sum(1) - np.diag(conf))[present]
    return iou.mean()


def val_miou_by_hand(model, data_root, short):
    """The trained model over the whole val set, each image resized by Pillow to short side ``short``
    (long side int(long * short / short side), BILINEAR image, NEAREST label; docs/protocol.md FixScaleResize),
    normalised by formula, one image at a time, scored by a numpy confusion."""
    from PIL import Image

    from common.constants import IMAGENET_MEAN, IMAGENET_STD
    base = os.path.join(data_root, "voc", "VOCdevkit", "VOC2012")
    targets, preds, halves = [], [], ([], [])
    for k, image_id in enumerate(open(os.path.join(base, "ImageSets", "Segmentation", "val.txt")).read().split()):
        img = Image.open(os.path.join(base, "JPEGImages", f"{image_id}.jpg")).convert("RGB")
        lbl = Image.open(os.path.join(base, "SegmentationClass", f"{image_id}.png"))
        w, h = img.size
        size = (int(w * short / h), short) if w > h else (short, int(h * short / w))
        x = (np.asarray(img.resize(size, Image.BILINEAR)) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        with torch.no_grad():
            pred = model(torch.from_numpy(x.transpose(2, 0, 1)[None]).float())[0].argmax(0).numpy()
        target = np.array(lbl.resize(size, Image.NEAREST)).astype(np.int64)
        assert pred.shape == target.shape == (size[1], size[0])
        targets.append(target.ravel())
        preds.append(pred.ravel())
        halves[k % 2].append(k)
    t, p = np.concatenate(targets), np.concatenate(preds)
    half = [numpy_miou(np.concatenate([targets[k] for k in ks]), np.concatenate([preds[k] for k in ks]))
            for ks in halves]
    return numpy_miou(t, p), half, len(t)


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tiny_data, tmp_path):
    # Each rank trains on its share of the batches and validates every other val image (ShardSampler):
    # what rank 0 logs must be the reduction over both ranks, by hand from what each rank computed, and
    # the logged val mIoU must be the saved model's over the whole val set.
    launcher = tmp_path / "launch.py"
    launcher.write_text(RECORDING_LAUNCHER.format(root=ROOT, out=str(tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = cli("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", str(launcher), *TINY,
            "--synthetic-root", tiny_data, "--out", str(tmp_path), "--model", "ibe", "--epochs", "1",
            "--batch-size", "2", env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in open(tmp_path / "ibe" / "log.jsonl")]
    assert len(rows) == 1
    ckpt = read_checkpoint(str(tmp_path / "ibe" / "checkpoint.pt"))
    assert ckpt["args"]["world_size"] == 2
    ranks = [np.load(tmp_path / f"rank{k}.npz") for k in (0, 1)]
    # 16 training images, 2 ranks x batches of 2: 4 steps each; the logged loss is the mean of all 8.
    assert [len(z["loss"]) for z in ranks] == [4, 4]
    assert rows[0]["loss"] == pytest.approx(np.concatenate([z["loss"] for z in ranks]).mean(), rel=1e-9)
    for key, slot in (("train_miou", 0), ("val_miou", 1)):
        t = np.concatenate([z[f"target{slot}"] for z in ranks])
        p = np.concatenate([z[f"pred{slot}"] for z in ranks])
        assert rows[0][key] == pytest.approx(numpy_miou(t, p), abs=1e-12), key
    model, _ = load_model(str(tmp_path / "ibe" / "checkpoint.pt"))
    whole, halves, pixels = val_miou_by_hand(model, tiny_data, 48)
    assert sum(len(z["target1"]) for z in ranks) == pixels and min(len(z["target1"]) for z in ranks) > 0
    assert rows[0]["val_miou"] == pytest.approx(whole, abs=1e-6)
    assert min(abs(whole - h) for h in halves) > 1e-6     # either rank's half alone would give another number


@pytest.mark.parametrize("amp,dtype,channels_last", [("none", torch.float32, False), ("bf16", torch.bfloat16, True)])
def test_cpu_layout_and_precision_follow_amp(tiny_data, tmp_path, monkeypatch, amp, dtype, channels_last):
    # On the CPU, float32 keeps the default layout (channels_last does not speed its training up) and bf16
    # autocast runs in channels_last (BENCHMARKS.md, quick_step); the weights stay float32 either way.
    seen, build = set(), train.build_model

    def spying_build(*a, **kw):
        model = build(*a, **kw)
        model.backbone.conv1.register_forward_hook(lambda m, inp, out: seen.add(
            (out.dtype, inp[0].is_contiguous(memory_format=torch.channels_last) and not inp[0].is_contiguous(),
             m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous())))
        return model
    monkeypatch.setattr(train, "build_model", spying_build)
    run_train(tiny_data, tmp_path, "--model", "ibe", "--epochs", "1", "--amp", amp)
    assert seen == {(dtype, channels_last, channels_last)}          # every training and validation forward
    state = read_checkpoint(str(tmp_path / "ibe" / "checkpoint.pt"))["model"]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}


def _bn_rank(rank, init_file, images, out):
    # One torchrun process, as train.py sets it up: its init_distributed (gloo on the CPU) and build_training_model
    # (DDP, no --sync-bn), then one training-mode forward of this rank's 15 images.
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    import torch.distributed as dist
    torch.set_num_threads(1)
    args = train.get_args_parser().parse_args(TINY_TRAIN + ["--model", "baseline", "--batch-size", "15", "--device", "cpu",
                                                             "--out", out])
    train.resolve_recipe(args)
    args.world_size, args.rank, args.distributed = 2, rank, True
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        args.memory_format = torch.contiguous_format
        model, bare = train.build_training_model(args, None)
        model.train()
        with torch.no_grad():
            model(images[rank])
        bn = bare.backbone.bn1
        torch.save({"weight": bare.backbone.conv1.weight.detach().clone(), "running_mean": bn.running_mean.clone(),
                    "running_var": bn.running_var.clone()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_of_15_normalise_batchnorm_over_their_own_15_images(tmp_path):
    # The notebook's nn.DataParallel on two GPUs at batch 30 normalised each BatchNorm over the 15 images of a GPU;
    # torchrun --nproc_per_node 2 train.py --batch-size 15 does the same (docs/training.md). Oracle: each rank's first
    # BatchNorm running statistics after one forward, from its own 15 images by hand (momentum 0.1 from mean 0 and
    # variance 1, the unbiased batch variance), and not from all 30.
    import torch.multiprocessing as mp
    images = torch.randn(2, 15, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images[1] = 2 * images[1] + 1          # the two ranks' batches have other statistics
    mp.spawn(_bn_rank, args=(str(tmp_path / "pg"), images, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        y = torch.nn.functional.conv2d(images[rank].double(), got["weight"].double(), stride=2, padding=3)
        mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=True)
        torch.testing.assert_close(got["running_mean"].double(), 0.1 * mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["running_var"].double(), 0.9 + 0.1 * var, rtol=1e-4, atol=1e-6)
        y_all = torch.nn.functional.conv2d(images.flatten(0, 1).double(), got["weight"].double(), stride=2, padding=3)
        assert (got["running_mean"].double() - 0.1 * y_all.mean((0, 2, 3))).abs().max() > 1e-2


@pytest.mark.parametrize("amp, mode", [("none", "ieee"), ("bf16", "tf32")])
def test_float32_is_full_precision_under_amp_none(tiny_data, tmp_path, amp, mode):
    # torch has run float32 convolutions in TF32 on Ampere/Hopper since 1.7; the notebook's torch 1.6 could not.
    # The setting is global and read by cuDNN and cuBLAS only, so it is checked here after train.py set it.
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "none"
    run_tiny_train(tiny_data, tmp_path / "o", "--model", "baseline", "--epochs", "1", "--amp", amp)
    assert torch.backends.cudnn.conv.fp32_precision == torch.backends.cuda.matmul.fp32_precision == mode
