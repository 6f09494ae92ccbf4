"""Models from outside train.py (common/model_specs.py) through the sweep, the analysis, the figures and the video,
against the models called by hand and scored with numpy; import_checkpoint.py round trips; bad specs -> exit 2.

The torchvision models have random weights saved in torchvision's own format (``state_dict()``): once in a
temporary torch hub cache under the file name of the weights' URL (so the weights API path is the one taken),
once as a --weights-file with the aux head's tensors in it. The factories are the functions below.
"""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import segmentation

import analyze_logits
import evaluate_corruptions as ev
import import_checkpoint
import make_figures
import make_video
from common.checkpoint import load_model, save_checkpoint
from common.cli import UsageError
from common.constants import IMAGENET_MEAN, IMAGENET_STD
from common.corruptions import corrupt_image
from common.data import eval_sample, voc_dataset
from common.datasets import DatasetSpec, dataset_spec, generated_palette
from common.model_specs import load_spec, spec_kind
from common.models import build_model
from helpers import refused, tiny_checkpoint

SIZE, N = 32, 3
CONDS = [("clean", 0), ("gaussian_noise", 2)]
HERE = os.path.splitext(os.path.basename(__file__))[0]   # the factories' module, as imported by pytest


# --------------------------------------------------------------------------------------------- factories

class TinyNet(nn.Module):
    """Logits at half the input's resolution (so the sweep upsamples them), returned in a dict like torchvision."""

    def __init__(self, channels):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b = nn.Conv2d(8, channels, 1)

    def forward(self, x):
        return {"out": self.b(torch.relu(self.a(x)))}


def tiny_factory():
    torch.manual_seed(3)
    return TinyNet(21)


def tiny_ibe_factory():    # 20 foreground logits: --model-kind ibe adds the background
    torch.manual_seed(4)
    return TinyNet(20)


def seven_channel_factory():
    return TinyNet(7)


# -------------------------------------------------------------------------------------------- fixtures

def randomise_bn(net, seed):
    """Non-trivial BatchNorm statistics, so that eval-mode outputs differ across classes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory, synthetic):
    d = tmp_path_factory.mktemp("external")
    hub = d / "torch_home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(hub))     # torch.hub.get_dir() = $TORCH_HOME/hub
        torch.manual_seed(0)
        lraspp = randomise_bn(segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                     num_classes=21), 1)
        url = segmentation.LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1.url
        cached = hub / "hub" / "checkpoints" / os.path.basename(url)   # load_state_dict_from_url's file name
        cached.parent.mkdir(parents=True)
        torch.save(lraspp.state_dict(), cached)
        # Built with its aux head, as torchvision's published weights are: the sweep drops those tensors.
        torch.manual_seed(1)
        dlv3 = randomise_bn(segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                      num_classes=21, aux_loss=True), 2)
        torch.save(dlv3.state_dict(), d / "dlv3.pth")
        w = {"root": synthetic(n_val=N, max_side=64), "dir": d, "cached": str(cached),
             "lraspp": lraspp, "dlv3": dlv3, "dlv3_file": str(d / "dlv3.pth")}
        w["specs"] = ["torchvision:lraspp_mobilenet_v3_large:COCO_WITH_VOC_LABELS_V1",
                      "torchvision:deeplabv3_mobilenet_v3_large", f"{HERE}:tiny_factory", f"{HERE}:tiny_ibe_factory"]
        w["names"] = ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "tiny_factory", "tiny_ibe_factory"]
        w["out"] = d / "results"
        sweep(w, w["out"])
        yield w


def sweep(w, out, *extra, specs=None, weights=None, kinds=("baseline", "ibe")):
    args = ev.get_args_parser().parse_args(
        ["--checkpoints", *(specs or w["specs"]), "--weights-file", *(weights or ["-", w["dlv3_file"], "-", "-"]),
         "--model-kind", *kinds, "--data", "synthetic", "--synthetic-root", w["root"],
         "--size", str(SIZE), "--batch-size", "1", "--workers", "0", "--corruptions", "gaussian",
         "--severities", "0", "2", "--out", str(out), *extra])
    return ev.main(args)


def rows(out):
    return {(r["model"], r["corruption"], r["severity"]): r
            for r in (json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")))}


def images(w, corruption, severity):
    """The sweep's inputs by hand: Pillow-resized val images (eval_sample), seeded corruption, labels."""
    ds = voc_dataset(os.path.join(w["root"], "voc"), "val")
    out = []
    for i in range(N):
        image_id, image, label = eval_sample(ds, i, "paper", SIZE)
        if severity:
            image = corrupt_image(image, image_id, corruption, severity)
        out.append((np.asarray(image), label))
    return out


def normalise(image):
    """(x / 255 - mean) / std, 1 x 3 x H x W float32: the formula, not the sweep's fused kernel."""
    x = (image.astype(np.float32) / 255 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())


def hand_logits(w, name, x):
    """Each model called directly: torchvision's 'out', the factories' output upsampled, IBE's background."""
    with torch.no_grad():
        if name == "lraspp_mobilenet_v3_large":
            return w["lraspp"](x)["out"][0].numpy()
        if name == "deeplabv3_mobilenet_v3_large":
            return w["dlv3"](x)["out"][0].numpy()
        net = (tiny_factory if name == "tiny_factory" else tiny_ibe_factory)().eval()
        z = torch.nn.functional.interpolate(net(x)["out"], size=x.shape[-2:], mode="bilinear", align_corners=False)
        z = z[0].numpy().astype(np.float64)
    if name == "tiny_ibe_factory":   # background = -logsumexp of the 20 foreground logits, in numpy
        m = z.max(0)
        z = np.concatenate([-(m + np.log(np.exp(z - m).sum(0)))[None], z])
    return z


def numpy_scores(preds, labels):
    t = np.concatenate([lb.ravel() for lb in labels]).astype(int)
    p = np.concatenate([pr.ravel() for pr in preds]).astype(int)
    keep = t != 255
    t, p = t[keep], p[keep]
    ious = [np.sum((t == k) & (p == k)) / np.sum((t == k) | (p == k)) for k in range(21)
            if np.sum((t == k) | (p == k))]
    return np.mean(ious), np.mean(t == p)


# --------------------------------------------------------------------------------------------- the sweep

def test_every_model_equals_the_model_called_by_hand(world):
    got = rows(world["out"])
    assert len(got) == 4 * len(CONDS)
    for c, s in CONDS:
        data = images(world, c, s)
        for name in world["names"]:
            logits = [hand_logits(world, name, normalise(img)) for img, _ in data]
            preds = [z.argmax(0) for z in logits]
            miou, acc = numpy_scores(preds, [lb for _, lb in data])
            row = got[(name, c, s)]
            assert row["miou"] == pytest.approx(miou, abs=1e-12), (name, c, s)
            assert row["pixel_acc"] == pytest.approx(acc, abs=1e-12), (name, c, s)
            # The logit sums of the predicted classes (LogitTracker's 'sum'), by hand in float64.
            lg = np.load(os.path.join(world["out"], "logits", name, f"{c}_{s}.npz"))
            want = np.zeros((21, 21))
            for z, p in zip(logits, preds):
                np.add.at(want, p.ravel(), z.reshape(21, -1).T.astype(np.float64))
            assert np.allclose(lg["sum"], want, rtol=1e-5, atol=1e-3), (name, c, s)
            assert np.array_equal(lg["count"], np.bincount(np.concatenate([p.ravel() for p in preds]), minlength=21))


def test_run_json_records_each_models_identity(world):
    run = json.load(open(world["out"] / "run.json"))
    models = {m["name"]: m for m in run["models"]}
    assert list(models) == world["names"]
    sha = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (world["cached"], world["dlv3_file"])}
    tv = models["lraspp_mobilenet_v3_large"]["identity"]
    assert tv["weights"] == "COCO_WITH_VOC_LABELS_V1" and tv["weights_file"] == world["cached"]
    assert tv["weights_sha256"] == sha[world["cached"]] and tv["torchvision"] == torchvision.__version__
    assert models["deeplabv3_mobilenet_v3_large"]["identity"]["weights_sha256"] == sha[world["dlv3_file"]]
    assert models["deeplabv3_mobilenet_v3_large"]["identity"]["weights_file"] == world["dlv3_file"]
    assert [m["kind"] for m in models.values()] == ["baseline", "baseline", "baseline", "ibe"]
    assert models["tiny_ibe_factory"]["identity"]["spec"] == f"{HERE}:tiny_ibe_factory"
    # A factory without a weights file: the SHA-256 of its state dict's bytes, recomputed here.
    h = hashlib.sha256()
    for k, v in tiny_factory().state_dict().items():
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode() + v.numpy().tobytes())
    assert models["tiny_factory"]["identity"]["weights_sha256"] == h.hexdigest()
    # Every metrics row names its model's spec and identity hash.
    for (name, _, _), r in rows(world["out"]).items():
        assert r["checkpoint"] == models[name]["path"] and r["checkpoint_sha256"] == models[name]["sha256"]


def test_rerun_resumes_and_other_weights_or_kind_are_refused(world, tmp_path, capsys):
    out = tmp_path / "res"
    specs = world["specs"][1:3]
    sweep(world, out, specs=specs, weights=[world["dlv3_file"], "-"], kinds=["baseline"])
    assert sweep(world, out, specs=specs, weights=[world["dlv3_file"], "-"], kinds=["baseline"]) == 0
    assert "(2 conditions already done)" in capsys.readouterr().out
    torch.manual_seed(5)   # same architecture, other weights, same display name
    other = segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(ev.UsageError, match="deeplabv3_mobilenet_v3_large.*another checkpoint"):
        sweep(world, out, specs=specs, weights=[str(tmp_path / "other.pth"), "-"], kinds=["baseline"])
    # The same factory read as IBE instead of baseline is another model too.
    args = ev.get_args_parser().parse_args(
        ["--checkpoints", f"{HERE}:tiny_factory", "--model-kind", "scribe", "--data", "synthetic",
         "--synthetic-root", world["root"], "--size", str(SIZE), "--workers", "0", "--corruptions", "gaussian",
         "--severities", "0", "2", "--out", str(out)])
    with pytest.raises(ev.UsageError, match="tiny_factory.*another checkpoint"):
        ev.main(args)


def test_analysis_takes_a_torchvision_model_as_reference(world, tmp_path):
    args = analyze_logits.get_args_parser().parse_args(
        ["--results", str(world["out"]), "--out", str(tmp_path), "--reference", "lraspp_mobilenet_v3_large",
         "--bootstrap", "20"])
    analyze_logits.main(args)
    a = json.load(open(tmp_path / "analysis.json"))
    assert a["reference"] == "lraspp_mobilenet_v3_large" and a["models"] == world["names"]
    r = rows(world["out"])
    ref = r[("lraspp_mobilenet_v3_large", "gaussian_noise", 2)]["miou"]
    for m in world["names"]:
        cd = a["per_model"][m]["cd"]["gaussian_noise"]["cd"]   # (1 - mIoU) / (1 - reference's), severity 2 only
        assert cd == pytest.approx((1 - r[(m, "gaussian_noise", 2)]["miou"]) / (1 - ref))
    comps = a["bootstrap"]["comparisons"]
    assert "lraspp_mobilenet_v3_large" not in comps
    assert comps["tiny_factory"]["clean"]["observed"] == pytest.approx(
        r[("tiny_factory", "clean", 0)]["miou"] - r[("lraspp_mobilenet_v3_large", "clean", 0)]["miou"])


def test_figures_reload_the_models_run_json_records(world, tmp_path):
    args = make_figures.get_args_parser().parse_args(["--results", str(world["out"]), "--out", str(tmp_path),
                                                      "--only", "voc_sample"])
    ctx = make_figures.read_results(args, ["voc_sample"])
    make_figures.read_images(args, ctx, ["voc_sample"])
    assert [m["name"] for m in ctx["models"]] == world["names"]
    assert [m["kind"] for m in ctx["models"]] == ["baseline", "baseline", "baseline", "ibe"]
    for m in ctx["models"]:   # the reloaded models predict what the models by hand predict
        with torch.no_grad():
            got = m["model"](normalise(ctx["image"])).argmax(1)[0].numpy()
        assert np.array_equal(got, hand_logits(world, m["name"], normalise(ctx["image"])).argmax(0)), m["name"]
    make_figures.main(args)
    assert (tmp_path / "voc_sample.png").stat().st_size > 0


def test_video_takes_specs(world):
    args = make_video.get_args_parser().parse_args(
        ["--synthetic", "--baseline", world["specs"][0], "--robust", f"{HERE}:tiny_ibe_factory",
         "--model-kind", "ibe", "--device", "cpu"])
    models, names, classes = make_video.load_pair(args)
    assert names == ["lraspp_mobilenet_v3_large", "tiny_ibe_factory"] and classes.name == "voc"
    x = normalise(images(world, "clean", 0)[0][0])
    with torch.no_grad():
        assert np.allclose(models[1](x)[0].numpy(), hand_logits(world, "tiny_ibe_factory", x), atol=1e-5)


# ------------------------------------------------------------------------------------- import_checkpoint

def run_import(*argv):
    return import_checkpoint.main(import_checkpoint.get_args_parser().parse_args(list(argv)))


def test_import_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    ours = randomise_bn(build_model("ibe", arch="deeplabv3", backbone="resnet18", head_channels=8,
                                    ibe_placement="logits"), 3)
    torch.save({"module." + k: v for k, v in ours.state_dict().items()}, tmp_path / "bare.pth")  # as DDP saves
    run_import("--state-dict", str(tmp_path / "bare.pth"), "--model", "ibe", "--backbone", "resnet18",
               "--head-channels", "8", "--name", "imported", "--out", str(tmp_path / "ckpt.pt"))
    model, ckpt = load_model(str(tmp_path / "ckpt.pt"))
    assert ckpt["name"] == "imported" and model.config == ours.config
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), ours(x))
    # torchvision's DeepLabV3 state dict, aux head included, is our deeplabv3 baseline at output stride 8.
    torch.manual_seed(1)
    tv = randomise_bn(segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                      aux_loss=True), 4)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    run_import("--state-dict", str(tmp_path / "tv.pth"), "--torchvision-builder", "deeplabv3_resnet50",
               "--out", str(tmp_path / "tv.pt"))
    model, ckpt = load_model(str(tmp_path / "tv.pt"))
    assert ckpt["name"] == "deeplabv3_resnet50" and model.config["output_stride"] == 8
    with torch.no_grad():
        assert torch.equal(model(x[:1]), tv(x[:1])["out"])


# ------------------------------------------------------------------------------------------ bad input

def bad_cases(w, tmp):
    bad_name = tiny_checkpoint(tmp / "bad_name.pt", "baseline", name="../up")
    return {
        "unknown builder": (["--checkpoints", "torchvision:resnet50"], ["resnet50", "deeplabv3_resnet50"]),
        "unknown weights": (["--checkpoints", "torchvision:fcn_resnet50:IMAGENET1K_V1"], ["IMAGENET1K_V1",
                                                                                            "COCO_WITH_VOC_LABELS_V1"]),
        "weights that do not fit": (["--checkpoints", "torchvision:lraspp_mobilenet_v3_large", "--weights-file",
                                     w["dlv3_file"]], ["dlv3.pth", "does not fit", "lraspp_mobilenet_v3_large"]),
        "factory that cannot be imported": (["--checkpoints", "no_such_module_here:build"],
                                            ["no_such_module_here", "cannot import"]),
        "factory without that function": (["--checkpoints", f"{HERE}:no_such_factory"], ["no_such_factory"]),
        "wrong number of channels": (["--checkpoints", f"{HERE}:seven_channel_factory"], ["7", "21"]),
        "20 channels read as baseline": (["--checkpoints", f"{HERE}:tiny_ibe_factory"], ["20", "--model-kind"]),
        "a name that is not plain": (["--checkpoints", f"{HERE}:tiny_factory", "--names", "a/b"], ["--names", "a/b"]),
        "a checkpoint's name that is not plain": (["--checkpoints", bad_name], ["bad_name.pt", "../up"]),
        "--model-kind without a factory": (["--checkpoints", "torchvision:lraspp_mobilenet_v3_large",
                                            "--model-kind", "ibe"], ["--model-kind", "factory"]),
        "--weights-file count": (["--checkpoints", f"{HERE}:tiny_factory", "--weights-file", "a.pth", "b.pth"],
                                 ["--weights-file", "2 file(s) for 1"]),
    }


def test_bad_specs_one_line_exit_2(world, tmp_path, capsys):
    common = ["--data", "synthetic", "--synthetic-root", world["root"], "--size", str(SIZE), "--workers", "0",
              "--corruptions", "gaussian", "--severities", "0"]
    for what, (argv, words) in bad_cases(world, tmp_path).items():
        out = tmp_path / what.replace(" ", "_")
        line = refused(capsys, ev, *common, *argv, "--out", out)
        assert all(word in line for word in words), (what, line)
        assert not os.path.exists(out / "run.json") and not os.path.exists(out / "metrics.jsonl"), what


def test_offline_without_weights_names_the_file_to_place(world, tmp_path, monkeypatch, capsys):
    def offline(url, dst, *a, **k):
        raise OSError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    line = refused(capsys, ev, "--checkpoints", "torchvision:fcn_resnet101", "--data", "synthetic",
                   "--synthetic-root", world["root"], "--out", tmp_path / "o")
    want = tmp_path / "empty_home" / "hub" / "checkpoints" / "fcn_resnet101_coco-7ecb50ca.pth"
    assert str(want) in line and "download.pytorch.org" in line and "--weights-file" in line


def test_import_refuses_what_does_not_fit(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(build_model("baseline", backbone="resnet18", head_channels=8).state_dict(), tmp_path / "r18.pth")
    line = refused(capsys, import_checkpoint, "--state-dict", tmp_path / "r18.pth", "--arch", "deeplabv3plus",
                   "--backbone", "resnet34", "--head-channels", "8", "--out", tmp_path / "x.pt")
    assert "r18.pth" in line and "does not fit" in line and "missing" in line
    line = refused(capsys, import_checkpoint, "--state-dict", tmp_path / "r18.pth", "--torchvision-builder",
                   "fcn_resnet50", "--out", tmp_path / "x.pt")
    assert "torchvision:fcn_resnet50 --weights-file" in line
    assert not os.path.exists(tmp_path / "x.pt")
    save_checkpoint(str(tmp_path / "y.pt"), {"model": {}, "model_config": {}})
    line = refused(capsys, import_checkpoint, "--state-dict", tmp_path / "r18.pth", "--out", tmp_path / "y.pt")
    assert "exists" in line


def test_unimportable_factory_from_the_command_line(world, tmp_path, capsys):
    assert "my_models_nowhere" in refused(capsys, ev, "--checkpoints", "my_models_nowhere:build", "--data",
                                          "synthetic", "--synthetic-root", world["root"], "--out", tmp_path / "o")
    assert not os.path.exists(tmp_path / "o" / "run.json")


# ------------------------------------------------------------------------------- datasets other than VOC

CITYSCAPES = dataset_spec("cityscapes")   # 19 classes, no background


def folder_spec(classes):
    """A --data folder dataset's spec, as its adapter makes it from classes.txt (no loader needed here)."""
    return DatasetSpec(name="folder", classes=tuple(classes), palette=generated_palette(len(classes)),
                       has_background=classes[0] == "background", loader=None)


def test_checkpoints_must_predict_the_datasets_classes(tmp_path):
    base = tiny_checkpoint(tmp_path / "base.pt", "baseline")
    ibe = tiny_checkpoint(tmp_path / "ibe.pt", "ibe")
    for path, n in ((base, 21), (ibe, 21)):   # VOC (dataset None, and named): 21 outputs, IBE's 20 + background
        assert load_spec(path)[1]["num_classes"] == n
        assert load_spec(path, dataset=dataset_spec("voc"))[1]["num_classes"] == n
    with pytest.raises(UsageError, match=r"base\.pt: its baseline model predicts 21 classes and cityscapes has 19"):
        load_spec(base, dataset=CITYSCAPES)
    with pytest.raises(UsageError, match=r"ibe\.pt: its model kind is ibe, and the IBE structure needs a background "
                                         r"class at index 0 and cityscapes has none \(class 0 is 'road'\)"):
        load_spec(ibe, dataset=CITYSCAPES)
    # A checkpoint that records the classes it was trained on: the same count under other names is refused.
    ckpt = torch.load(base, weights_only=True)
    other = ["background"] + [f"thing{k}" for k in range(1, 21)]
    ckpt["dataset"] = {"name": "folder", "classes": other}
    save_checkpoint(str(tmp_path / "named.pt"), ckpt)
    assert load_spec(str(tmp_path / "named.pt"), dataset=folder_spec(other))[1]["num_classes"] == 21
    with pytest.raises(UsageError, match=r"named\.pt: trained on folder, whose class 1 is 'thing1', and voc's is "
                                         r"'aeroplane'"):
        load_spec(str(tmp_path / "named.pt"))


def test_torchvision_weights_file_for_another_dataset(world, tmp_path):
    """A random 19-class deeplabv3 state dict (aux head included, as torchvision saves) loaded for Cityscapes:
    the net is built with 19 classes and gives what torchvision's own 19-class model gives."""
    torch.manual_seed(7)
    net = randomise_bn(segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                 num_classes=19, aux_loss=True), 5)
    torch.save(net.state_dict(), tmp_path / "city.pth")
    model, info = load_spec("torchvision:deeplabv3_mobilenet_v3_large", "cpu", str(tmp_path / "city.pth"),
                            dataset=CITYSCAPES)
    x = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model(x), net(x)["out"]
    assert got.shape == (1, 19, 40, 56) and torch.equal(got, want)
    assert info["num_classes"] == 19 and info["kind"] == "baseline"
    assert info["identity"]["weights_sha256"] == hashlib.sha256((tmp_path / "city.pth").read_bytes()).hexdigest()
    # torchvision's published weights (VOC's 21 classes) are refused on Cityscapes ...
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(world["dir"] / "torch_home"))
        with pytest.raises(UsageError, match="torchvision:lraspp_mobilenet_v3_large: torchvision's published weights "
                                             "predict the 21 VOC classes and cityscapes has 19.*--weights-file"):
            load_spec("torchvision:lraspp_mobilenet_v3_large", dataset=CITYSCAPES)
    # ... as is a 21-class state dict, and the 19-class one on VOC, each naming both numbers.
    with pytest.raises(UsageError, match=r"deeplabv3_mobilenet_v3_large with --weights-file \S+dlv3\.pth: predicts "
                                         r"21 classes \(classifier\.4\.weight is \(21, 256, 1, 1\)\) and "
                                         r"cityscapes has 19"):
        load_spec("torchvision:deeplabv3_mobilenet_v3_large", "cpu", world["dlv3_file"], dataset=CITYSCAPES)
    with pytest.raises(UsageError, match=r"city\.pth: predicts 19 classes .* and voc has 21"):
        load_spec("torchvision:deeplabv3_mobilenet_v3_large", "cpu", str(tmp_path / "city.pth"))


def test_factories_against_the_datasets_classes():
    seven = [f"c{k}" for k in range(7)]
    model, info = load_spec(f"{HERE}:seven_channel_factory", dataset=folder_spec(seven))
    assert info["num_classes"] == 7
    with pytest.raises(UsageError, match=r"seven_channel_factory: the model returned \(1, 7, 32, 32\) .*expected B x "
                                         r"19 x h x w logits for the 19 classes of cityscapes"):
        load_spec(f"{HERE}:seven_channel_factory", dataset=CITYSCAPES)
    # Read as IBE on an 8-class dataset with a background: 7 foreground logits + background = -logsumexp.
    eight = ["background"] + seven
    model, info = load_spec(f"{HERE}:seven_channel_factory", model_kind="ibe", dataset=folder_spec(eight))
    x = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = nn.functional.interpolate(model.net(x)["out"], size=(24, 24), mode="bilinear", align_corners=False)
        got = model(x)
    z = z[0].numpy().astype(np.float64)
    bg = -np.log(np.exp(z).sum(0))
    assert info["num_classes"] == 8 and got.shape == (1, 8, 24, 24)
    np.testing.assert_allclose(got[0, 0].numpy(), bg, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[0, 1:].numpy(), z, rtol=1e-6, atol=1e-6)
    with pytest.raises(UsageError, match=r"tiny_ibe_factory --model-kind scribe: the SCrIBE structure needs a "
                                         r"background class at index 0 and cityscapes has none"):
        load_spec(f"{HERE}:tiny_ibe_factory", model_kind="scribe", dataset=CITYSCAPES)


def test_spec_kinds():
    assert [spec_kind(s) for s in ("hf:nvidia/segformer-b0", "torchvision:fcn_resnet50", f"{HERE}:tiny_factory",
                                   "runs/x.pt")] == ["hf", "torchvision", "factory", "checkpoint"]
    with pytest.raises(UsageError, match="expected hf:<model id or folder>"):
        load_spec("hf:", dataset=CITYSCAPES)
    with pytest.raises(UsageError, match="torchvision models are read as baseline"):
        load_spec("torchvision:fcn_resnet50", model_kind="ibe")
