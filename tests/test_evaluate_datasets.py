"""evaluate_corruptions.py beyond VOC: the sweep on the synthetic Cityscapes and ACDC layouts, with a model of 19
classes, its mIoU against a numpy confusion over predictions computed here, the sliding window against a loop
over the crops, ACDC's real conditions one by one, presets, and the one-line refusals."""
import glob
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import evaluate_corruptions as ev
from common.corruptions import corrupt_image
from common.synthetic_layouts import ensure_layout
from helpers import refused, run_script

# Cityscapes' labelIds -> trainIds for the ids the synthetic street scene draws, copied from the dataset's
# labels.py (cityscapesScripts/cityscapesscripts/helpers/labels.py): road 7 -> 0, sidewalk 8 -> 1, building
# 11 -> 2, pole 17 -> 5, traffic light 19 -> 6, traffic sign 20 -> 7, vegetation 21 -> 8, sky 23 -> 10, person
# 24 -> 11, car 26 -> 13, truck 27 -> 14, bicycle 33 -> 18; unlabeled 0, ego vehicle 1, static 4, parking 9 and
# guard rail 14 are ignored (255).
TRAIN_ID = {7: 0, 8: 1, 11: 2, 17: 5, 19: 6, 20: 7, 21: 8, 23: 10, 24: 11, 26: 13, 27: 14, 33: 18,
            0: 255, 1: 255, 4: 255, 9: 255, 14: 255}
CITYSCAPES_NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                    "bicycle"]
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


class Position19(nn.Module):
    """19 logits that depend on the colour (a 3x3 conv) and on where a pixel sits in its input (a ramp), so that
    a sliding window gives other logits than the whole image, and a crop placed wrong shows."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 19, 3, padding=1)

    def forward(self, x):
        h, w = x.shape[-2:]
        ramp = torch.linspace(0, 1, w)[None, None, None, :] * torch.linspace(-1, 1, 19)[None, :, None, None]
        return self.conv(x) + ramp


def position19():
    return Position19().eval()


FACTORY = "test_evaluate_datasets:position19"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    d = tmp_path_factory.mktemp("layouts")
    return {name: ensure_layout(name, d / name, n_train=2, n_val=2, width=96, height=48, quiet=True)
            for name in ("cityscapes", "acdc")}


def sweep(root, out, *extra, data="cityscapes"):
    return run_script(ev, "--checkpoints", FACTORY, "--data", data, f"--{data}-root", root, "--protocol", "native",
                      "--workers", "0", "--calibration-images", "1", "--out", out, *extra)


def rows(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def labels_by_hand(root, split="val"):
    """{image id: train-id label} from the raw labelIds files through the table above."""
    lut = np.full(256, 255, np.uint8)
    for raw, train in TRAIN_ID.items():
        lut[raw] = train
    out = {}
    for path in glob.glob(os.path.join(root, "gtFine", split, "*", "*_gtFine_labelIds.png")):
        raw = np.array(Image.open(path))
        assert set(np.unique(raw)) <= set(TRAIN_ID), "the synthetic scene drew an id the table above lacks"
        out[os.path.basename(path)[: -len("_gtFine_labelIds.png")]] = lut[raw]
    return out


def logits_by_hand(image: np.ndarray, crop=None, stride=None) -> np.ndarray:
    """The model's logits for one uint8 image: normalised in numpy, the whole image or a loop over the crops
    (every stride while a crop fits, then one flush with the end), averaged where they overlap."""
    x = torch.from_numpy(((image / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32))
    model = position19()
    with torch.no_grad():
        if crop is None:
            return model(x)[0].numpy()
        h, w = image.shape[:2]
        total, count = np.zeros((19, h, w)), np.zeros((h, w))

        def starts(size, c, s):
            out = list(range(0, size - c + 1, s))
            return out + [size - c] if out[-1] + c < size else out

        for top in starts(h, crop[0], stride[0]):
            for left in starts(w, crop[1], stride[1]):
                total[:, top:top + crop[0], left:left + crop[1]] += \
                    model(x[:, :, top:top + crop[0], left:left + crop[1]])[0].numpy()
                count[top:top + crop[0], left:left + crop[1]] += 1
        return total / count


def miou_by_hand(pairs) -> float:
    """mIoU over (prediction, label) pairs: a 19x19 numpy confusion, IoU over the classes seen."""
    conf = np.zeros((19, 19))
    for pred, label in pairs:
        keep = label != 255
        np.add.at(conf, (label[keep], pred[keep]), 1)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def image_of(root, image_id):
    city = image_id.split("_")[0]
    return np.array(Image.open(os.path.join(root, "leftImg8bit", "val", city, f"{image_id}_leftImg8bit.png"))
                    .convert("RGB"))


@pytest.mark.parametrize("inference, crop, stride", [("whole", None, None), ("slide:32x40:24x28", (32, 40), (24, 28))])
def test_cityscapes_sweep_scores_19_classes_as_numpy_does(layouts, tmp_path, inference, crop, stride):
    root, out = layouts["cityscapes"], tmp_path / "r"
    assert sweep(root, out, "--corruptions", "gaussian_noise", "--severities", "0", "2", "--inference", inference,
                 "--save-predictions", tmp_path / "p") == 0
    labels = labels_by_hand(root)
    run = json.load(open(out / "run.json"))
    assert run["dataset"]["classes"] == CITYSCAPES_NAMES and run["dataset"]["has_background"] is False
    assert run["inference"]["mode"] == inference.split(":")[0] and run["data_root"] == root
    for row in rows(out):
        c, s = row["corruption"], row["severity"]
        pairs = []
        for image_id, label in sorted(labels.items()):
            image = image_of(root, image_id)
            if s > 0:
                image = corrupt_image(image, image_id, c, s)
            pred = logits_by_hand(image, crop, stride).argmax(0)
            saved = np.array(Image.open(tmp_path / "p" / "position19" / f"{c}_{s}" / f"{image_id}.png"))
            assert (saved == pred).mean() > 0.999   # float32 sums in another order may flip a near tie
            pairs.append((pred, label))
        assert row["miou"] == pytest.approx(miou_by_hand(pairs), abs=1e-3) and len(row["iou"]) == 19
        # Defined by a background class, which Cityscapes does not have.
        assert row["end"] is None and row["distance"] is None
        with np.load(out / "confusion" / "position19" / f"{c}_{s}.npz") as z:
            assert z["confusion"].shape == (19, 19) and z["calib_sigmoid_classwise_count"].shape[0] == 19
            assert sorted(z["image_ids"]) == sorted(labels)
        with np.load(out / "logits" / "position19" / f"{c}_{s}.npz") as z:
            assert z["sq"].shape == (19, 19, 19)


def test_acdc_reports_each_real_condition_like_a_corruption(layouts, tmp_path):
    root, out = layouts["acdc"], tmp_path / "r"
    assert sweep(root, out, "--corruptions", "fog", "--severities", "0", "1", "--save-predictions", tmp_path / "p",
                 data="acdc") == 0
    lut = np.full(256, 255, np.uint8)
    for raw, train in TRAIN_ID.items():
        lut[raw] = train
    for row in rows(out):
        assert set(row["real_conditions"]) == {"fog", "night", "rain", "snow"}
        for cond, got in row["real_conditions"].items():
            pairs = []
            for path in glob.glob(os.path.join(root, "gt", cond, "val", "*", "*_gt_labelIds.png")):
                image_id = os.path.basename(path)[: -len("_gt_labelIds.png")]
                pred = np.array(Image.open(tmp_path / "p" / "position19" / f"{row['corruption']}_{row['severity']}"
                                           / f"{image_id}.png"))
                pairs.append((pred, lut[np.array(Image.open(path))]))
            assert got["images"] == len(pairs) == 2
            assert got["miou"] == pytest.approx(miou_by_hand(pairs), abs=1e-12)


def test_a_folder_keeps_its_inference_and_data(layouts, tmp_path, capsys):
    root, out = layouts["cityscapes"], tmp_path / "r"
    assert sweep(root, out, "--corruptions", "pixelate", "--severities", "0", "--calibration-images", "0") == 0
    line = refused(capsys, ev, "--checkpoints", FACTORY, "--data", "cityscapes", "--cityscapes-root", root,
                   "--protocol", "native", "--workers", "0", "--severities", "0", "--calibration-images", "0",
                   "--inference", "slide:32x32:16x16", "--out", out)
    assert "--inference" in line and "--overwrite" in line


@pytest.mark.parametrize("argv, says", [
    (["--data", "voc", "--cityscapes-root", "X"], "--cityscapes-root is given but --data is voc"),
    (["--data", "cityscapes", "--cityscapes-root", "NOPE"], "--cityscapes-root NOPE: missing"),
    (["--data", "cityscapes", "--preset", "paper"], "--preset paper is a voc protocol and --data is cityscapes"),
    (["--data", "synthetic", "--preset", "segformer-cityscapes-c"], "is a cityscapes protocol"),
    (["--data", "cityscapes", "--preset", "segformer-cityscapes-c", "--size", "512"],
     "--size is fixed by --preset segformer-cityscapes-c"),
    (["--data", "cityscapes", "--inference", "slide:1024"], "--inference 'slide:1024': expected whole, or slide"),
])
def test_refused_in_one_line(layouts, tmp_path, capsys, argv, says):
    argv = [a if a != "X" else layouts["cityscapes"] for a in argv]
    if argv[1] == "cityscapes" and "--cityscapes-root" not in argv:
        argv += ["--cityscapes-root", layouts["cityscapes"]]
    line = refused(capsys, ev, "--checkpoints", FACTORY, *argv, "--workers", "0", "--out", tmp_path / "o")
    assert says in line, line
    assert not (tmp_path / "o").exists()


def test_a_preset_sweeps_exactly_its_sources_conditions():
    # SegFormer's Cityscapes-C: 16 corruptions, the 4 noises at severities 1-3 and the other 12 at 1-5
    # (NVlabs/SegFormer#71), at native size, 1024x1024 windows at stride 768.
    args = ev.get_args_parser().parse_args(["--data", "cityscapes", "--preset", "segformer-cityscapes-c"])
    conditions, _ = ev.check_sweep_args(args)
    noises = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"}
    assert conditions[0] == ("clean", 0) and len(conditions) == 1 + 4 * 3 + 12 * 5
    assert {c for c, _ in conditions[1:]} >= noises and len({c for c, _ in conditions[1:]}) == 16
    assert all(s <= 3 for c, s in conditions if c in noises)
    assert ("fog", 5) in conditions and ("gaussian_noise", 4) not in conditions
    assert args.protocol == "native" and args.inference_mode == {"mode": "slide", "crop": (1024, 1024),
                                                                 "stride": (768, 768)}


def test_acdc_shards_merge_into_the_single_run(layouts, tmp_path):
    root, whole = layouts["acdc"], tmp_path / "whole"
    common = ["--corruptions", "snow", "--severities", "0", "1", "--calibration-images", "0"]
    assert sweep(root, whole, *common, data="acdc") == 0
    for k in (0, 1):
        assert sweep(root, tmp_path / f"s{k}", *common, "--shard", f"{k}/2", data="acdc") == 0
    assert run_script(ev, "--merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "m") == 0
    for a, b in zip(rows(whole), rows(tmp_path / "m")):
        assert (a["corruption"], a["miou"], a["iou"]) == (b["corruption"], b["miou"], b["iou"])
        assert a["real_conditions"] == b["real_conditions"] and len(a["real_conditions"]) == 4


def test_a_cityscapes_dump_gives_the_sweep_the_same_numbers(layouts, tmp_path):
    import dump_voc_c

    root = layouts["cityscapes"]
    common = ["--corruptions", "gaussian_noise", "--severities", "0", "3", "--calibration-images", "0"]
    assert run_script(dump_voc_c, "--data", "cityscapes", "--cityscapes-root", root, "--protocol", "native",
                      "--corruptions", "gaussian_noise", "--severities", "3", "--workers", "1",
                      "--out", tmp_path / "C") == 0
    assert sweep(root, tmp_path / "fly", *common) == 0
    assert sweep(root, tmp_path / "dumped", *common, "--voc-c", tmp_path / "C") == 0
    assert [r["miou"] for r in rows(tmp_path / "fly")] == [r["miou"] for r in rows(tmp_path / "dumped")]
    run = json.load(open(tmp_path / "dumped" / "run.json"))
    assert run["voc_c"]["data"] == "cityscapes" and run["voc_c"]["data_root"] == root
    # The dumped PNGs replaced by grey images of their size: a sweep that reads them scores other pixels, so the
    # dump is what the sweep above read.
    pngs = glob.glob(str(tmp_path / "C" / "gaussian_noise" / "3" / "*.png"))
    assert len(pngs) == 2
    for path in pngs:
        Image.fromarray(np.full_like(np.array(Image.open(path)), 128)).save(path)
    assert sweep(root, tmp_path / "grey", *common, "--voc-c", tmp_path / "C") == 0
    assert rows(tmp_path / "grey")[1]["miou"] != rows(tmp_path / "fly")[1]["miou"]


@pytest.mark.slow
def test_torchvision_hf_and_our_checkpoint_on_cityscapes_under_a_preset(layouts, tmp_path):
    # The command: --data cityscapes --preset ... --checkpoints torchvision:deeplabv3_resnet50 hf:<folder>
    # (and one of ours), on the synthetic Cityscapes tree; every mIoU equals a numpy confusion over the model's own
    # saved predictions, and analyze_logits.py reads the folder.
    tf = pytest.importorskip("transformers")
    import analyze_logits
    from torchvision.models import segmentation

    from common.checkpoint import save_random_checkpoint

    torch.manual_seed(0)
    net = segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=19, aux_loss=False)
    torch.save(net.state_dict(), tmp_path / "dlv3.pth")
    cfg = tf.SegformerConfig(num_labels=19, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                             num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16)
    tf.SegformerForSemanticSegmentation(cfg).eval().save_pretrained(tmp_path / "segformer")
    tf.SegformerImageProcessor().save_pretrained(tmp_path / "segformer")
    ours = save_random_checkpoint(tmp_path / "ours.pt", "baseline", 1, "ours", backbone="resnet18", head_channels=8,
                                  num_classes=19)
    root, out = layouts["cityscapes"], tmp_path / "r"
    assert run_script(ev, "--checkpoints", "torchvision:deeplabv3_resnet50", f"hf:{tmp_path / 'segformer'}", ours,
                      "--weights-file", tmp_path / "dlv3.pth", "-", "--data", "cityscapes", "--cityscapes-root", root,
                      "--preset", "kamann-rother-cityscapes-c", "--limit", "1", "--workers", "1",
                      "--calibration-images", "1", "--save-predictions", tmp_path / "p", "--out", out) == 0
    got = rows(out)
    assert {r["model"] for r in got} == {"deeplabv3_resnet50", "segformer", "ours"} and len(got) == 3 * 81
    labels = labels_by_hand(root)
    for row in got:
        folder = tmp_path / "p" / row["model"] / f"{row['corruption']}_{row['severity']}"
        (png,) = os.listdir(folder)
        pred = np.array(Image.open(folder / png))
        assert row["miou"] == pytest.approx(miou_by_hand([(pred, labels[png[:-4]])]), abs=1e-12)
    assert analyze_logits.main(analyze_logits.get_args_parser().parse_args(["--results", str(out)])) in (0, None)
    analysis = json.load(open(out / "analysis.json"))
    for m in ("deeplabv3_resnet50", "segformer", "ours"):
        entry = analysis["per_model"][m]["preset"]
        assert entry["preset"] == "kamann-rother-cityscapes-c" and entry["complete"] and entry["n"] == entry["of"] == 16


def test_a_preset_difference_is_told_by_the_presets_names():
    from common import results
    from common.presets import PRESETS

    record = PRESETS["segformer-cityscapes-c"].record()
    assert results.describe(("preset", record, None)) == \
        "made with --preset segformer-cityscapes-c, this run has --preset none"
    assert results.describe(("voc_c.preset", "kamann-rother-cityscapes-c", record)).endswith(
        "this run has the VOC-C dump's preset segformer-cityscapes-c")
