"""Hugging Face models (common/hf_models.py) on randomly initialised tiny configs, against the library's own image
processor and model called directly; hf: model specs through common.model_specs.load_spec; the one-line refusals.
Skipped where the optional transformers is missing (tests/requirements-optional.txt), except the refusals that name
it; in CI (``CI`` set) its absence fails test_ci_has_transformers instead."""
import hashlib
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.cli import UsageError
from common.data import normalise_uint8
from common.datasets import dataset_spec
from common.hf_models import load_hf_model
from common.model_specs import load_recorded, load_spec


def test_missing_transformers_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)   # import transformers -> ImportError
    with pytest.raises(UsageError, match="optional package transformers.*pip install transformers"):
        load_hf_model("nvidia/segformer-b0-finetuned-ade-512-512")


try:
    import transformers as tf
except ImportError:
    tf = None
needs_transformers = pytest.mark.skipif(tf is None, reason="the optional package transformers is not installed")


def test_ci_has_transformers():
    """.ci/run installs it (tests/requirements-optional.txt): in CI the tests below must run, not skip."""
    if tf is None and os.environ.get("CI"):
        pytest.fail("transformers is not installed: .ci/run installs tests/requirements-optional.txt")


def _image(h=48, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _segformer(folder, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    torch.manual_seed(0)
    cfg = tf.SegformerConfig(num_labels=5, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                             num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16,
                             id2label={k: f"class{k}" for k in range(5)})
    model = tf.SegformerForSemanticSegmentation(cfg).eval()
    processor = tf.SegformerImageProcessor(image_mean=list(mean), image_std=list(std))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def _reference(model, processor, img):
    """The library's way: its processor (no resize) then the model, logits resized to the image."""
    pv = processor(images=img, do_resize=False, return_tensors="pt").pixel_values
    with torch.no_grad():
        return model(pixel_values=pv)


def _assert_matches_library(wrapped, model, processor, seed):
    """``wrapped`` (load_spec's model) on a 64 x 64 image equals the library's forward, resized bilinearly."""
    img = _image(64, 64, seed)
    with torch.no_grad():
        got = wrapped(normalise_uint8(torch.from_numpy(img)[None]))
    ref = F.interpolate(_reference(model, processor, img).logits, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    return got


@needs_transformers
@pytest.mark.parametrize("mean,std", [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,) * 3, (0.5,) * 3)])
def test_segformer_uses_its_processors_normalisation(tmp_path, mean, std):
    model, processor = _segformer(tmp_path / "m", mean, std)
    wrapped, info = load_hf_model(str(tmp_path / "m"))
    img = _image()
    with torch.no_grad():
        got = wrapped(normalise_uint8(torch.from_numpy(img)[None]))
    ref = F.interpolate(_reference(model, processor, img).logits, size=img.shape[:2], mode="bilinear",
                        align_corners=False)
    assert got.shape == (1, 5, 48, 80)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    assert info["classes"] == [f"class{k}" for k in range(5)] and info["model_type"] == "segformer"


@needs_transformers
def test_upernet_logits_at_the_input_size(tmp_path):
    torch.manual_seed(1)
    backbone = tf.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                 out_features=["stage1", "stage2", "stage3", "stage4"])
    model = tf.UperNetForSemanticSegmentation(tf.UperNetConfig(backbone_config=backbone, num_labels=4, hidden_size=16,
                                                               use_auxiliary_head=False)).eval()
    processor = tf.SegformerImageProcessor()
    model.save_pretrained(tmp_path / "u")
    processor.save_pretrained(tmp_path / "u")
    wrapped, _ = load_hf_model(str(tmp_path / "u"))
    img = _image(64, 96, 2)
    with torch.no_grad():
        got = wrapped(normalise_uint8(torch.from_numpy(img)[None]))
    torch.testing.assert_close(got, _reference(model, processor, img).logits, atol=1e-4, rtol=0)


@needs_transformers
def test_mask2former_semantic_scores(tmp_path):
    torch.manual_seed(2)
    backbone = tf.SwinConfig(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                             out_features=["stage1", "stage2", "stage3", "stage4"], image_size=64)
    cfg = tf.Mask2FormerConfig(backbone_config=backbone, num_labels=5, hidden_dim=32, num_queries=6,
                               encoder_layers=1, decoder_layers=2, feature_size=32, mask_feature_size=32,
                               dim_feedforward=32, encoder_feedforward_dim=32, num_attention_heads=2)
    model = tf.Mask2FormerForUniversalSegmentation(cfg).eval()
    processor = tf.Mask2FormerImageProcessor()
    model.save_pretrained(tmp_path / "m2f")
    processor.save_pretrained(tmp_path / "m2f")
    wrapped, info = load_hf_model(str(tmp_path / "m2f"))
    img = _image(64, 96, 3)
    with torch.no_grad():
        got = wrapped(normalise_uint8(torch.from_numpy(img)[None]))
    out = _reference(model, processor, img)
    # the semantic scores by hand (numpy): class probabilities without "no object" times mask probabilities
    cls = out.class_queries_logits.numpy().astype(np.float64)[0]
    cls = np.exp(cls - cls.max(-1, keepdims=True))
    cls = (cls / cls.sum(-1, keepdims=True))[:, :-1]                                     # Q x C
    masks = F.interpolate(out.masks_queries_logits, size=img.shape[:2], mode="bilinear",
                          align_corners=False).numpy().astype(np.float64)[0]             # Q x H x W
    expected = np.tensordot(cls.T, 1 / (1 + np.exp(-masks)), axes=1)                     # C x H x W
    assert got.shape == (1, 5, 64, 96) and info["model_type"] == "mask2former"
    np.testing.assert_allclose(got[0].numpy(), expected, atol=1e-4)


@needs_transformers
def test_offline_and_bad_folders_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="hf download nvidia/segformer-b0-finetuned-ade-512-512") as e:
        load_hf_model("nvidia/segformer-b0-finetuned-ade-512-512")
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a transformers model folder"):
        load_hf_model(str(tmp_path / "empty"))


# ----------------------------------------------------------------------------- hf: specs (common/model_specs.py)

def _tiny_segformer(folder, seed=0, num_labels=19, mean=(0.485, 0.456, 0.406)):
    """A two-stage SegFormer of ~17k parameters, saved with its image processor."""
    torch.manual_seed(seed)
    cfg = tf.SegformerConfig(num_labels=num_labels, num_encoder_blocks=2, hidden_sizes=[8, 16], depths=[1, 1],
                             num_attention_heads=[1, 1], sr_ratios=[8, 4], strides=[4, 2], patch_sizes=[7, 3],
                             decoder_hidden_size=16)
    model = tf.SegformerForSemanticSegmentation(cfg).eval()
    processor = tf.SegformerImageProcessor(image_mean=list(mean), image_std=[0.229, 0.224, 0.225])
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_hf_spec_missing_transformers_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UsageError, match="optional package transformers.*pip install transformers") as e:
        load_spec("hf:nvidia/segformer-b0-finetuned-cityscapes-1024-1024", "cpu", None, None,
                  dataset=dataset_spec("cityscapes"))
    assert "\n" not in str(e.value)


@needs_transformers
@pytest.mark.parametrize("arch", ["segformer", "upernet"])
def test_hf_spec_on_cityscapes_equals_the_library(tmp_path, arch, capfd):
    folder = tmp_path / f"city_{arch}"
    if arch == "segformer":
        model, processor = _tiny_segformer(folder)
    else:
        torch.manual_seed(1)
        backbone = tf.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                                     out_features=["stage1", "stage2"])
        model = tf.UperNetForSemanticSegmentation(tf.UperNetConfig(
            backbone_config=backbone, num_labels=19, hidden_size=16, use_auxiliary_head=False)).eval()
        processor = tf.SegformerImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    capfd.readouterr()
    wrapped, info = load_spec("hf:" + str(folder), "cpu", None, None, dataset=dataset_spec("cityscapes"))
    assert capfd.readouterr().err == ""   # no progress bar, no load report
    assert _assert_matches_library(wrapped, model, processor, 4).shape == (1, 19, 64, 64)
    assert info["num_classes"] == 19 and info["kind"] == "baseline" and info["name"] == f"city_{arch}"
    ident = info["identity"]
    assert ident["source"] == "hf" and ident["model_type"] == arch and ident["name_or_path"] == str(folder)
    assert ident["weights_sha256"] == _sha(folder / "model.safetensors") and ident["weight_files"] == [
        "model.safetensors"]
    assert ident["transformers"] == tf.__version__ and ident["model_kind"] == "baseline"


@needs_transformers
def test_hf_identity_follows_weights_and_processor(tmp_path):
    """The identity hash changes with the weights and with the processor's mean (same weights), not on reload;
    a --weights-file (the transformers model's state dict) replaces the folder's weights."""
    city = dataset_spec("cityscapes")
    _tiny_segformer(tmp_path / "a", seed=0)
    other, processor = _tiny_segformer(tmp_path / "b", seed=1)
    _tiny_segformer(tmp_path / "c", seed=0, mean=(0.5, 0.5, 0.5))
    sha = {k: load_spec(f"hf:{tmp_path / k}", dataset=city)[1]["sha256"] for k in "abc"}
    assert len(set(sha.values())) == 3
    assert load_spec(f"hf:{tmp_path / 'a'}", dataset=city)[1]["sha256"] == sha["a"]
    torch.save(other.state_dict(), tmp_path / "b.pth")
    model, info = load_spec(f"hf:{tmp_path / 'a'}", "cpu", str(tmp_path / "b.pth"), dataset=city)
    assert info["identity"]["weights_sha256"] == _sha(tmp_path / "b.pth") and info["sha256"] not in sha.values()
    _assert_matches_library(model, other, processor, 5)


@needs_transformers
def test_hf_relative_folder_is_recorded_absolute(tmp_path, monkeypatch):
    """A spec naming a folder relative to where it ran is reloaded (make_figures.py) from anywhere."""
    city = dataset_spec("cityscapes")
    _tiny_segformer(tmp_path / "runs" / "m")
    monkeypatch.chdir(tmp_path / "runs")
    _, info = load_spec("hf:m", dataset=city)
    assert info["identity"]["name_or_path"] == str(tmp_path / "runs" / "m") and info["name"] == "m"
    monkeypatch.chdir(tmp_path)
    _, again = load_recorded(json.loads(json.dumps(info)), dataset=city)
    assert again["sha256"] == info["sha256"]


@needs_transformers
def test_hf_spec_refusals_are_one_line(tmp_path, capfd):
    _tiny_segformer(tmp_path / "city")
    cases = [
        (dict(), r"city: the model predicts 19 classes \(its config's num_labels\) and voc has 21"),
        (dict(dataset=dataset_spec("ade20k")), "predicts 19 classes .* and ade20k has 150"),
        (dict(dataset=dataset_spec("cityscapes"), model_kind="ibe"), "hf models are read as baseline"),
    ]
    for kw, pattern in cases:
        with pytest.raises(UsageError, match=pattern) as e:
            load_spec(f"hf:{tmp_path / 'city'}", **kw)
        assert "\n" not in str(e.value)
    # A backbone alone: transformers would initialise the head at random.
    torch.manual_seed(0)
    tf.SegformerModel(tf.SegformerConfig(num_labels=19, num_encoder_blocks=2, hidden_sizes=[8, 16], depths=[1, 1],
                                         num_attention_heads=[1, 1], sr_ratios=[8, 4], strides=[4, 2],
                                         patch_sizes=[7, 3])).save_pretrained(tmp_path / "backbone")
    tf.SegformerImageProcessor().save_pretrained(tmp_path / "backbone")
    capfd.readouterr()
    with pytest.raises(UsageError, match=r"backbone: its weights lack \d+ tensor\(s\) of "
                                         r"SegformerForSemanticSegmentation \(e\.g\. decode_head"):
        load_spec(f"hf:{tmp_path / 'backbone'}", dataset=dataset_spec("cityscapes"))
    assert capfd.readouterr().err == ""
    torch.save({"decode_head.classifier.weight": torch.zeros(19, 16, 1, 1)}, tmp_path / "part.pth")
    with pytest.raises(UsageError, match=r"part\.pth: does not fit hf:.*missing"):
        load_spec(f"hf:{tmp_path / 'city'}", "cpu", str(tmp_path / "part.pth"), dataset=dataset_spec("cityscapes"))
    monkey_offline = pytest.MonkeyPatch()
    monkey_offline.setenv("HF_HUB_OFFLINE", "1")
    try:
        with pytest.raises(UsageError, match="hf download nvidia/segformer-b5-x.*HF_HUB_OFFLINE=1"):
            load_spec("hf:nvidia/segformer-b5-x", dataset=dataset_spec("cityscapes"))
    finally:
        monkey_offline.undo()


@needs_transformers
def test_hf_id_in_the_cache_is_read_without_the_network(tmp_path, monkeypatch):
    """A model id whose files are in the Hugging Face cache (its layout: refs/main -> snapshots/<commit>/, files
    linked to blobs/) loads with no address looked up, HF_HUB_OFFLINE unset; the identity hashes its snapshot."""
    import huggingface_hub.constants
    import socket

    model, processor = _tiny_segformer(tmp_path / "saved")
    repo = tmp_path / "hub" / "models--tinyorg--city-segformer"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    (repo / "snapshots" / commit).mkdir(parents=True)
    for f in sorted(os.listdir(tmp_path / "saved")):
        blob = repo / "blobs" / _sha(tmp_path / "saved" / f)
        blob.write_bytes((tmp_path / "saved" / f).read_bytes())
        os.symlink(os.path.relpath(blob, repo / "snapshots" / commit), repo / "snapshots" / commit / f)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    looked_up = []

    def no_network(host, *a, **k):
        looked_up.append(host)
        raise OSError("no network in this test")
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    wrapped, info = load_spec("hf:tinyorg/city-segformer", dataset=dataset_spec("cityscapes"))
    assert looked_up == []
    ident = info["identity"]
    assert info["name"] == "city-segformer" and ident["name_or_path"] == "tinyorg/city-segformer"
    assert ident["folder"] == str(repo / "snapshots" / commit)
    assert ident["weights_sha256"] == _sha(tmp_path / "saved" / "model.safetensors")
    _assert_matches_library(wrapped, model, processor, 6)


@needs_transformers
def test_hf_spec_in_the_sweep_on_voc(tmp_path, synthetic):
    """evaluate_corruptions.py --checkpoints hf:<folder> (VOC, 21 labels): the metrics row's mIoU is that of the
    library's own forward on the sweep's images, scored in numpy; run.json records the identity. The processor's
    mean is not ImageNet's, so that the wrapper's renormalisation matters."""
    import evaluate_corruptions as ev
    from common.data import eval_sample, voc_dataset

    model, processor = _tiny_segformer(tmp_path / "voc_segformer", num_labels=21, mean=(0.3, 0.5, 0.7))
    root = synthetic(n_val=2, max_side=64)
    args = ev.get_args_parser().parse_args(
        ["--checkpoints", f"hf:{tmp_path / 'voc_segformer'}", "--data", "synthetic", "--synthetic-root", root,
         "--size", "32", "--batch-size", "1", "--workers", "0", "--corruptions", "gaussian", "--severities", "0",
         "--out", str(tmp_path / "out")])
    ev.main(args)
    row = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert [(r["model"], r["corruption"]) for r in row] == [("voc_segformer", "clean")]
    ds = voc_dataset(os.path.join(root, "voc"), "val")
    inter, union = np.zeros(21), np.zeros(21)
    for i in range(len(ds)):
        _, image, label = eval_sample(ds, i, "paper", 32)
        img = np.asarray(image)
        pred = F.interpolate(_reference(model, processor, img).logits, size=img.shape[:2], mode="bilinear",
                             align_corners=False)[0].argmax(0).numpy()
        keep = label != 255
        for k in range(21):
            inter[k] += np.sum((pred == k) & (label == k) & keep)
            union[k] += np.sum(((pred == k) | (label == k)) & keep)
    assert row[0]["miou"] == pytest.approx(np.mean(inter[union > 0] / union[union > 0]), abs=1e-12)
    run = json.load(open(tmp_path / "out" / "run.json"))
    ident = run["models"][0]["identity"]
    assert ident["source"] == "hf" and ident["weights_sha256"] == _sha(tmp_path / "voc_segformer" / "model.safetensors")
