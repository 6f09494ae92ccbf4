"""train.py on the datasets beyond VOC (--data cityscapes|folder; ADE20K and ACDC go through the same path), on
the small synthetic layouts of common/synthetic_layouts.py, with train.py's tiny CPU configuration."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import train
from helpers import refused, run_script
from common.checkpoint import load_model, read_checkpoint
from common.constants import IMAGENET_MEAN, IMAGENET_STD
from common.synthetic_layouts import ensure_layout

# helpers.TINY_TRAIN without its --data: ResNet-18, 8-channel heads, batches of 4, in-process loading. The crop
# (32) is the synthetic images' short side, so validation (short side resized to the crop) sees them unresized.
TINY = ["--backbone", "resnet18", "--head-channels", "8", "--crop-size", "32", "--batch-size", "4",
        "--workers", "0", "--print-freq", "2", "--pretrained-backbone", "none"]

# cityscapesScripts' labels.py: labelId -> trainId of the 19 evaluated classes (road 7 -> 0 ... bicycle 33 -> 18);
# every other labelId is ignored. Written out here so the test does not read the adapter's table.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    """Synthetic Cityscapes at 64 x 32: 8 train images (aachen, bochum), 3 val (frankfurt, lindau, munster)."""
    return ensure_layout("cityscapes", tmp_path_factory.mktemp("data") / "cityscapes", n_train=8, n_val=3,
                         width=64, height=32, quiet=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Synthetic folder dataset at 64 x 32: background + 5 shapes, train.txt (4 images) and val.txt (3)."""
    return ensure_layout("folder", tmp_path_factory.mktemp("data") / "folder", n_train=4, n_val=3, width=64,
                         height=32, quiet=True)


def run(out, *argv):
    return train.main(train.get_args_parser().parse_args(TINY + ["--out", str(out), *map(str, argv)]))


def numpy_miou(target, pred, n):
    keep = target != 255
    conf = np.zeros((n, n), np.int64)
    np.add.at(conf, (target[keep], pred[keep]), 1)
    present = conf.sum(0) + conf.sum(1) > 0
    iou = np.diag(conf)[present] / (conf.sum(0) + conf.sum(1) - np.diag(conf))[present]
    return iou.mean()


def forward_by_hand(model, path):
    """The model's argmax on an image file, normalised by formula (no resize: the crop is the short side)."""
    x = (np.asarray(Image.open(path).convert("RGB")) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    with torch.no_grad():
        logits = model(torch.from_numpy(x.transpose(2, 0, 1)[None]).float())
    return logits, logits[0].argmax(0).numpy()


def test_cityscapes_baseline_trains_19_outputs_and_validates_over_19_classes(cityscapes, tmp_path):
    run(tmp_path, "--model", "baseline", "--data", "cityscapes", "--cityscapes-root", cityscapes, "--epochs", "4",
        "--lr", "0.05", "--val-every", "0", "--batch-size", "8")
    rows = [json.loads(line) for line in open(tmp_path / "baseline" / "log.jsonl")]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert len(rows[-1]["val_iou"]) == 19
    path = str(tmp_path / "baseline" / "checkpoint.pt")
    ckpt = read_checkpoint(path)
    assert ckpt["model_config"]["num_outputs"] == 19
    assert ckpt["dataset"]["name"] == "cityscapes" and ckpt["dataset"]["has_background"] is False
    assert ckpt["dataset"]["classes"][:3] == ["road", "sidewalk", "building"] and len(ckpt["dataset"]["classes"]) == 19
    model, _ = load_model(path)
    # val mIoU: the saved model over the val images (sorted, as the adapter lists them), scored by hand.
    targets, preds = [], []
    for d, _, files in sorted(os.walk(os.path.join(cityscapes, "leftImg8bit", "val"))):
        for name in sorted(files):
            logits, pred = forward_by_hand(model, os.path.join(d, name))
            assert logits.shape[1] == 19
            raw = np.asarray(Image.open(os.path.join(d.replace("leftImg8bit", "gtFine"),
                                                     name.replace("leftImg8bit", "gtFine_labelIds"))))
            lut = np.full(256, 255, np.int64)
            lut[list(CITYSCAPES_TRAIN_IDS)] = list(CITYSCAPES_TRAIN_IDS.values())
            targets.append(lut[raw].ravel())
            preds.append(pred.ravel())
    assert len(targets) == 3
    t, p = np.concatenate(targets), np.concatenate(preds)
    assert (t != 255).any() and (t == 255).any()   # the void labelIds are in the val set and must be ignored
    assert rows[-1]["val_miou"] == pytest.approx(numpy_miou(t, p, 19), abs=1e-6)


def test_cityscapes_hold_out_is_evenly_spaced_through_the_train_split(cityscapes, tmp_path, capsys):
    run(tmp_path, "--model", "baseline", "--data", "cityscapes", "--cityscapes-root", cityscapes, "--epochs", "1",
        "--val-every", "0", "--hold-out", "3")
    ids = sorted(n[: -len("_leftImg8bit.png")] for _, _, fs in os.walk(os.path.join(cityscapes, "leftImg8bit", "train"))
                 for n in fs)
    assert len(ids) == 8
    held = [ids[0], ids[4], ids[7]]   # round(linspace(0, 7, 3)) = 0, 3.5 -> 4, 7
    assert open(tmp_path / "baseline" / "held_out.txt").read().split() == held
    assert read_checkpoint(str(tmp_path / "baseline" / "checkpoint.pt"))["args"]["held_out"] == held
    assert "train 5 images" in capsys.readouterr().out


@pytest.mark.parametrize("kind,outputs", [("baseline", 6), ("scribe", 5)])
def test_folder_trains_its_own_classes(folder, tmp_path, kind, outputs):
    # The folder's class 0 is "background", so IBE / SCrIBE are allowed: 5 foreground logits + the implicit one.
    run(tmp_path, "--model", kind, "--data", "folder", "--folder-root", folder, "--epochs", "1")
    path = str(tmp_path / kind / "checkpoint.pt")
    ckpt = read_checkpoint(path)
    assert ckpt["model_config"]["num_outputs"] == outputs
    assert ckpt["dataset"]["name"] == "folder" and ckpt["dataset"]["has_background"] is True
    assert ckpt["dataset"]["classes"] == open(os.path.join(folder, "classes.txt")).read().split()
    row = json.loads(open(tmp_path / kind / "log.jsonl").read().splitlines()[-1])
    assert len(row["val_iou"]) == 6 and np.isfinite(row["loss"])
    model, _ = load_model(path)
    logits, _ = forward_by_hand(model, os.path.join(folder, "images", "val_0000.png"))
    assert logits.shape[1] == 6
    if kind == "scribe":   # channel 0 is the implicit background, -logsumexp of the 5 others
        assert torch.allclose(logits[:, 0], -torch.logsumexp(logits[:, 1:], 1), atol=1e-4)


def test_ibe_is_refused_without_a_background_class(cityscapes, folder, tmp_path, capsys):
    for kind in ("ibe", "scribe"):
        out = tmp_path / kind
        line = refused(capsys, train, *TINY, "--out", out, "--model", kind, "--data", "cityscapes",
                       "--cityscapes-root", cityscapes)
        assert "background" in line and "cityscapes" in line and "--model baseline" in line
        assert not out.exists()
    # A folder whose class 0 is not "background" is refused alike.
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    names = open(other / "classes.txt").read().split()
    (other / "classes.txt").write_text("\n".join(["sky"] + names[1:]) + "\n")
    line = refused(capsys, train, *TINY, "--out", tmp_path / "out", "--model", "ibe", "--data", "folder",
                   "--folder-root", other)
    assert "'sky'" in line and not (tmp_path / "out").exists()
    # ... and the baseline trains on it.
    assert run_script(train, *TINY, "--out", tmp_path / "out", "--model", "baseline", "--data", "folder",
                      "--folder-root", other, "--epochs", "1") == 0


def test_missing_or_wrong_cityscapes_root_is_one_line_and_no_output(cityscapes, folder, tmp_path, capsys):
    out = tmp_path / "out"
    line = refused(capsys, train, *TINY, "--out", out, "--model", "baseline", "--data", "cityscapes")
    assert "--cityscapes-root is required" in line
    line = refused(capsys, train, *TINY, "--out", out, "--model", "baseline", "--data", "cityscapes",
                   "--cityscapes-root", tmp_path)
    assert f"--cityscapes-root {tmp_path}" in line and "leftImg8bit" in line
    # A root flag for another dataset than --data is refused rather than ignored.
    line = refused(capsys, train, *TINY, "--out", out, "--model", "baseline", "--data", "folder",
                   "--folder-root", folder, "--cityscapes-root", cityscapes)
    assert "--cityscapes-root" in line
    line = refused(capsys, train, *TINY, "--out", out, "--model", "baseline", "--data", "synthetic",
                   "--cityscapes-root", cityscapes)
    assert "--cityscapes-root is given but --data is synthetic" in line
    line = refused(capsys, train, *TINY, "--out", out, "--model", "baseline", "--data", "folder")
    assert "--folder-root is required" in line
    assert not out.exists()


def test_ade20k_and_acdc_train_their_own_classes_and_acdc_resumes_only_its_conditions(tmp_path, capsys):
    ade = ensure_layout("ade20k", tmp_path / "ade", n_train=4, n_val=2, max_side=48, quiet=True)
    acdc = ensure_layout("acdc", tmp_path / "acdc", n_train=2, n_val=1, width=64, height=32, quiet=True)
    run(tmp_path / "a", "--model", "baseline", "--data", "ade20k", "--ade20k-root", ade, "--epochs", "1")
    ckpt = read_checkpoint(str(tmp_path / "a" / "baseline" / "checkpoint.pt"))
    assert ckpt["model_config"]["num_outputs"] == 150 and ckpt["dataset"]["name"] == "ade20k"
    # ACDC: the train split of the chosen conditions only (2 images each).
    capsys.readouterr()
    run(tmp_path / "c", "--model", "baseline", "--data", "acdc", "--acdc-root", acdc, "--acdc-conditions", "fog,snow",
        "--epochs", "1", "--batch-size", "2")
    assert "train 4 images" in capsys.readouterr().out
    ckpt = read_checkpoint(str(tmp_path / "c" / "baseline" / "checkpoint.pt"))
    assert ckpt["model_config"]["num_outputs"] == 19 and ckpt["dataset"]["name"] == "acdc"
    line = refused(capsys, train, *TINY, "--out", tmp_path / "c", "--model", "baseline", "--data", "acdc",
                   "--acdc-root", acdc, "--acdc-conditions", "fog", "--epochs", "1", "--batch-size", "2", "--resume")
    assert "--acdc-conditions fog,snow -> fog" in line


def test_load_model_rebuilds_n_classes_from_num_outputs(tmp_path):
    # A checkpoint records num_outputs (the head's channels); the loader adds IBE / SCrIBE's implicit background.
    from common.checkpoint import save_random_checkpoint
    from common.models import build_model
    for kind, n, outputs in (("baseline", 6, 6), ("ibe", 6, 5), ("scribe", 19, 18)):
        path = save_random_checkpoint(tmp_path / f"{kind}.pt", kind, backbone="resnet18", head_channels=8,
                                      num_classes=n)
        assert read_checkpoint(path)["model_config"]["num_outputs"] == outputs
        model, _ = load_model(path)
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 32, 32)).shape == (1, n, 32, 32)
    with pytest.raises(train.UsageError, match="at least 2"):
        build_model("ibe", backbone="resnet18", num_classes=1)   # no foreground logit left
