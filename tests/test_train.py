"""train.py end to end on a tiny synthetic dataset with a tiny model (CPU, seconds per run)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import train
from helpers import tiny_synthetic
from common.checkpoint import load_model, read_checkpoint, save_random_checkpoint
from common.data import resolve_roots, build_datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--data", "synthetic", "--backbone", "resnet18", "--head-channels", "8", "--crop-size", "48",
        "--batch-size", "4", "--workers", "0", "--lr", "0.01", "--print-freq", "2"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return tiny_synthetic(tmp_path_factory, n_voc_train=8, n_sbd=8, n_val=6)


def run_train(tiny_data, out, *extra):
    args = train.get_args_parser().parse_args(TINY + ["--synthetic-root", tiny_data, "--out", str(out), *extra])
    return train.main(args)


def test_training_writes_checkpoints_and_log(tiny_data, tmp_path):
    run_train(tiny_data, tmp_path, "--model", "scribe", "--epochs", "3")
    run = tmp_path / "scribe"
    rows = [json.loads(line) for line in open(run / "log.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(len(r["val_iou"]) == 21 and 0 <= r["val_miou"] <= 1 and r["loss"] > 0 for r in rows)
    # The notebook's LambdaLR(lambda e: (1 - e/E) ** 0.9), stepped once per epoch: epoch e (from 0) runs at
    # lr * (1 - e/E) ** 0.9, and the head at 10x that.
    assert [r["lr"] for r in rows] == pytest.approx([0.01 * (1 - e / 3) ** 0.9 for e in range(3)], rel=1e-12)
    ckpt = read_checkpoint(str(run / "checkpoint.pt"))
    assert ckpt["epoch"] == 2 and ckpt["args"]["model"] == "scribe"
    assert ckpt["model_config"]["kind"] == "scribe" and ckpt["model_config"]["num_outputs"] == 20
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == pytest.approx([0.01, 0.1])
    assert [(g["momentum"], g["weight_decay"], g["nesterov"]) for g in groups] == [(0.9, 5e-5, False)] * 2
    # The final weights are what gets evaluated; nothing is selected on val (which is also the test set).
    assert not os.path.exists(run / "best.pt")


def test_defaults_are_the_notebook_recipe_and_flags_override_it():
    parse = train.get_args_parser().parse_args
    args = parse(["--model", "ibe"])
    train.resolve_recipe(args)
    assert (args.recipe, args.arch, args.output_stride, args.ibe_placement, args.poly_step, args.batch_size,
            args.scribe_ignore_as_background, args.epochs, args.lr, args.head_lr_mult, args.weight_decay,
            args.crop_size) == ("notebook", "deeplabv3", 8, "logits", "epoch", 30, True, 50, 0.01, 10.0, 5e-5, 224)
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
    # And the rebuilt model reproduces the logged validation mIoU.
    voc, sbd = resolve_roots("synthetic", synthetic_root=tiny_data, quiet=True)
    _, val = build_datasets(voc, sbd, 48)
    args = train.get_args_parser().parse_args(TINY + ["--model", "ibe"])
    args.device, args.rank, args.memory_format = "cpu", 0, torch.contiguous_format
    loader = torch.utils.data.DataLoader(val, batch_size=1, collate_fn=train.pad_collate)
    assert train.evaluate(model, loader, args)["miou"] == pytest.approx(ckpt["val"]["miou"], abs=1e-12)


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


def cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_non_finite_loss_stops_with_clear_message(tiny_data, tmp_path):
    r = cli("train.py", *TINY, "--synthetic-root", tiny_data, "--out", str(tmp_path), "--model", "baseline",
            "--epochs", "1", "--lr", "1e12")
    assert r.returncode == 2, r.stderr
    assert "non-finite loss" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "baseline" / "checkpoint.pt")


def test_missing_voc_root_is_one_clear_line(tmp_path):
    r = cli("train.py", "--model", "baseline", "--data", "voc", "--voc-root", str(tmp_path / "nope"),
            "--sbd-root", str(tmp_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "VOCdevkit" in lines[0] and "--data synthetic" in lines[0]


def test_torchrun_two_processes_on_cpu(tiny_data, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = cli("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "train.py", *TINY,
            "--synthetic-root", tiny_data, "--out", str(tmp_path), "--model", "ibe", "--epochs", "1",
            "--batch-size", "2", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in open(tmp_path / "ibe" / "log.jsonl")]
    assert len(rows) == 1 and 0 <= rows[0]["val_miou"] <= 1
    ckpt = read_checkpoint(str(tmp_path / "ibe" / "checkpoint.pt"))
    assert ckpt["args"]["world_size"] == 2
