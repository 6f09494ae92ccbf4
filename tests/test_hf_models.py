"""Hugging Face models (common/hf_models.py) on randomly initialised tiny configs, against the library's own image
processor and model called directly; the one-line refusals. Skipped where the optional transformers is missing,
except the refusal that names it."""
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.cli import UsageError
from common.data import normalise_uint8
from common.hf_models import load_hf_model


def test_missing_transformers_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)   # import transformers -> ImportError
    with pytest.raises(UsageError, match="optional package transformers.*pip install transformers"):
        load_hf_model("nvidia/segformer-b0-finetuned-ade-512-512")


try:
    import transformers as tf
except ImportError:
    tf = None
needs_transformers = pytest.mark.skipif(tf is None, reason="the optional package transformers is not installed")


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
