"""pretrain_backbone.py on a tiny synthetic dataset (CPU, seconds): what it writes loads into train.py's models,
its targets match the label files, and bad input is one clear line."""
import glob
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import pretrain_backbone as pb
from common.data import resolve_roots, sbd_dataset
from common.models import build_model
from helpers import cli, refused

TINY = ["--backbone", "resnet18", "--crop-size", "32", "--epochs", "2", "--batch-size", "2", "--workers", "0"]


@pytest.fixture(scope="module")
def tiny_data(synthetic):
    """This module's set: 3 + 3 training images, 2 val, 64 px."""
    return synthetic(n_voc_train=3, n_sbd=3, n_val=2, max_side=64)


def run(tiny_data, out, *extra):
    return pb.main(pb.get_args_parser().parse_args(TINY + ["--synthetic-root", tiny_data, "--out", str(out), *extra]))


def presence_oracle(label: np.ndarray) -> np.ndarray:
    """Independent of the torch code: which of the values 1..20 occur in the map (0 and 255 never count)."""
    present = set(np.unique(label).tolist())
    return np.array([k in present for k in range(1, 21)], dtype=np.float32)


def test_presence_targets_match_the_label_files(tiny_data):
    voc, sbd = resolve_roots("synthetic", synthetic_root=tiny_data, quiet=True)
    pngs = sorted(glob.glob(os.path.join(voc, "VOCdevkit", "VOC2012", "SegmentationClass", "*.png")))
    labels = [np.array(Image.open(p)) for p in pngs]
    labels += [np.array(target) for _, target in sbd_dataset(sbd)]   # SBD's .mat class maps
    assert any((lab == 255).any() for lab in labels)   # the VOC part has its 255 band: it must not count
    for lab in labels + [np.full((5, 7), 255, np.uint8), np.zeros((5, 7), np.uint8),
                         np.array([[0, 20, 255], [1, 1, 255]], np.uint8)]:
        got = pb.presence_targets(torch.from_numpy(lab.astype(np.int64))[None])
        assert got.shape == (1, 20) and got.dtype == torch.float32
        np.testing.assert_array_equal(got[0].numpy(), presence_oracle(lab))
    # A batch gives each map its own row.
    a, b = np.zeros((4, 4), np.int64), np.full((4, 4), 7, np.int64)
    batch = pb.presence_targets(torch.from_numpy(np.stack([a, b])))
    np.testing.assert_array_equal(batch.numpy(), np.stack([presence_oracle(a), presence_oracle(b)]))


def test_output_loads_into_train_py_models_with_equal_weights(tiny_data, tmp_path):
    final = run(tiny_data, tmp_path / "a", "--seed", "3")
    path = str(tmp_path / "a" / "backbone.pt")
    state = torch.load(path, weights_only=True)
    assert not any(k.startswith("fc.") for k in state)
    torch.manual_seed(3)
    init = pb.build_classifier("resnet18").state_dict()
    assert not torch.equal(init["conv1.weight"], state["conv1.weight"])   # training moved the weights
    for arch in ("deeplabv3", "deeplabv3plus"):
        model = build_model("scribe", arch=arch, backbone="resnet18", head_channels=8, pretrained_backbone=path)
        body = model.backbone.state_dict()
        assert set(body) == set(state)
        for k, v in state.items():
            assert torch.equal(body[k], v), k
    rows = [json.loads(line) for line in open(tmp_path / "a" / "log.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert "val_f1" in rows[-1] and "val_f1" not in rows[0] and rows[-1] == final
    meta = json.load(open(tmp_path / "a" / "pretrain.json"))
    assert meta["settings"]["seed"] == 3 and meta["args"]["epochs"] == 2 and meta["final"] == final

    # Same arguments: nothing is redone; other arguments: refused, the file untouched.
    before = open(path, "rb").read()
    assert run(tiny_data, tmp_path / "a", "--seed", "3") == final
    with pytest.raises(pb.UsageError, match="other settings"):
        run(tiny_data, tmp_path / "a", "--seed", "4")
    assert open(path, "rb").read() == before

    # Seeded: a second folder with the same arguments holds the same weights.
    run(tiny_data, tmp_path / "b", "--seed", "3")
    again = torch.load(str(tmp_path / "b" / "backbone.pt"), weights_only=True)
    assert all(torch.equal(again[k], v) for k, v in state.items())


@pytest.mark.parametrize("case", ["missing_data", "zero_epochs", "out_is_a_file", "batch_too_large", "bad_lr"])
def test_bad_input_is_one_clear_line(tiny_data, tmp_path, case, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    out = str(tmp_path / "out")
    args, expect = {
        "missing_data": (["--data", "voc", "--voc-root", str(tmp_path / "nope"), "--sbd-root", str(tmp_path)],
                         "VOCdevkit"),
        "zero_epochs": (["--epochs", "0"], "--epochs 0"),
        "out_is_a_file": (["--out", str(tmp_path / "a_file")], "is a file"),
        "batch_too_large": (["--batch-size", "64"], "fewer than one batch"),
        "bad_lr": (["--lr", "0"], "--lr"),
    }[case]
    if case == "missing_data":   # in a fresh interpreter, as a shell sees it
        r = cli("pretrain_backbone.py", *TINY, "--synthetic-root", tiny_data, "--out", out, *args, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        line = lines[0]
    else:
        line = refused(capsys, pb, *TINY, "--synthetic-root", tiny_data, "--out", out, *args)
    assert line.startswith("error: ") and expect in line, line
    assert not os.path.exists(os.path.join(out, "backbone.pt"))
    if case == "out_is_a_file":
        assert (tmp_path / "a_file").read_text() == "not a folder"


def test_amp_bf16_runs_the_forward_in_bf16_and_is_part_of_the_settings(tiny_data, tmp_path, monkeypatch):
    seen = []   # (dtype of conv1's output, memory layout of its input) on every call
    build = pb.build_classifier

    def spying_build(backbone):
        net = build(backbone)
        net.conv1.register_forward_hook(lambda m, inp, out: seen.append(
            (out.dtype, inp[0].is_contiguous(memory_format=torch.channels_last))))
        return net
    monkeypatch.setattr(pb, "build_classifier", spying_build)
    final = run(tiny_data, tmp_path / "a", "--amp", "bf16")
    assert seen and set(seen) == {(torch.bfloat16, True)}     # training and the val pass
    state = torch.load(str(tmp_path / "a" / "backbone.pt"), weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())   # float32 weights
    assert np.isfinite(final["loss"]) and 0 <= final["val_f1"] <= 1
    assert json.load(open(tmp_path / "a" / "pretrain.json"))["settings"]["amp"] == "bf16"
    with pytest.raises(pb.UsageError, match="amp"):          # a float32 run may not reuse the bf16 backbone
        run(tiny_data, tmp_path / "a")

    # A float32 run is found as done for --amp none; a pretrain.json that records no --amp (the format before the
    # flag) is another run's, refused without touching the folder.
    seen.clear()
    final = run(tiny_data, tmp_path / "b")
    assert set(seen) == {(torch.float32, False)}           # float32: the default layout
    assert run(tiny_data, tmp_path / "b") == final
    meta_path = tmp_path / "b" / "pretrain.json"
    meta = json.load(open(meta_path))
    del meta["settings"]["amp"]
    meta_path.write_text(json.dumps(meta))
    before = {f: (tmp_path / "b" / f).read_bytes() for f in os.listdir(tmp_path / "b")}
    for amp in ("none", "bf16"):
        with pytest.raises(pb.UsageError, match="other settings .*--amp None -> " + amp):
            run(tiny_data, tmp_path / "b", "--amp", amp)
    assert {f: (tmp_path / "b" / f).read_bytes() for f in os.listdir(tmp_path / "b")} == before
