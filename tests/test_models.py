"""Models, heads and losses against independent oracles (docs/protocol.md, "Models")."""
import numpy as np
import pytest
import torch
import torchvision

from common.cli import UsageError
from common.models import build_model, count_parameters, segmentation_loss


def test_deeplabv3plus_r50_parameter_counts_match_protocol():
    # docs/protocol.md: 40,352,181 with 21 outputs; the IBE head has 257 fewer (one 256-wide filter + bias).
    assert count_parameters(build_model("baseline")) == 40_352_181
    assert count_parameters(build_model("ibe")) == 40_352_181 - 257
    assert count_parameters(build_model("scribe")) == 40_352_181 - 257


def test_deeplabv3_matches_torchvision_parameter_for_parameter():
    ours = build_model("baseline", arch="deeplabv3")
    ref = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                             num_classes=21, aux_loss=False)
    assert count_parameters(ours) == count_parameters(ref) == 39_638_869
    a = {k: v.shape for k, v in ours.state_dict().items()}
    b = {k: v.shape for k, v in ref.state_dict().items()}
    assert a == b
    # Same names and shapes, so torchvision's weights load as they are and give the same logits.
    ours.load_state_dict(ref.state_dict())
    ours.eval(), ref.eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x)["out"], atol=1e-5)


def test_output_strides_and_dilation():
    m = build_model("baseline", backbone="resnet50", output_stride=8)
    assert m.config["output_stride"] == 8
    assert build_model("baseline", arch="deeplabv3").config["output_stride"] == 8
    assert build_model("baseline", backbone="resnet18").config["output_stride"] == 32
    with pytest.raises(UsageError, match="cannot dilate"):
        build_model("baseline", backbone="resnet18", output_stride=16)


def numpy_lse(z, axis):
    m = z.max(axis, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis, keepdims=True))).squeeze(axis)


def numpy_bilinear(z, out_h, out_w):
    """Bilinear upsampling with align_corners=False written out: pixel centres map to (i + 0.5) * in / out - 0.5,
    clamped at 0, between the two neighbouring source pixels (the last one repeated at the border)."""
    _, _, h, w = z.shape

    def taps(n_out, n_in):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, fy = taps(out_h, h)
    x0, x1, fx = taps(out_w, w)
    rows = z[:, :, y0] * (1 - fy)[:, None] + z[:, :, y1] * fy[:, None]
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx


@pytest.mark.parametrize("kind", ["ibe", "scribe"])
def test_implicit_background_after_upsampling_is_minus_logsumexp_at_every_pixel(kind):
    torch.manual_seed(0)
    m = build_model(kind, backbone="resnet18", head_channels=16, ibe_placement="output").eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 70, 90)).double().numpy()
    assert out.shape == (2, 21, 70, 90)
    fg = out[:, 1:]
    np.testing.assert_allclose(out[:, 0], -numpy_lse(fg, 1), rtol=1e-5, atol=1e-5)
    # Background can only win where every foreground logit is negative (necessary, not sufficient).
    assert ((fg < 0).all(1) | (out.argmax(1) != 0)).all()


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])
def test_implicit_background_on_the_logits_is_upsampled_from_the_head(arch):
    # The notebook: cat([-logsumexp(z), z]) on the head's stride-s output z, then bilinear upsampling.
    torch.manual_seed(1)
    m = build_model("ibe", arch=arch, backbone="resnet18", head_channels=16, ibe_placement="logits").eval()
    last = [c for c in m.classifier.modules() if isinstance(c, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(30)   # logits of a trained model's size, so that the two placements differ clearly
    x = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        feats = m.backbone(x)
        z = (m.classifier(feats["low"], feats["out"]) if arch == "deeplabv3plus" else m.classifier(feats["out"]))
        out = m(x).double().numpy()
    z = z.double().numpy()
    expected = numpy_bilinear(np.concatenate([-numpy_lse(z, 1)[:, None], z], 1), 70, 90)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    # ... which is not -logsumexp of the upsampled foreground (that is the "output" placement).
    assert np.abs(out[:, 0] + numpy_lse(out[:, 1:], 1)).max() > 1e-2


def test_background_need_not_win_where_every_foreground_logit_is_negative():
    from common.models import implicit_background
    z = torch.full((1, 20, 1, 1), -0.1)
    out = implicit_background(z)
    assert out[0, 0, 0, 0].item() == pytest.approx(-(np.log(20) - 0.1))   # -2.9, below every -0.1
    assert out.argmax(1).item() != 0


def test_baseline_has_21_free_logits():
    m = build_model("baseline", backbone="resnet18", head_channels=16).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 64, 64))
    lse = torch.logsumexp(out[:, 1:], 1)
    assert not torch.allclose(out[:, 0], -lse, atol=1e-3)


def hand_bce(logits, target, ignore_as_background=False):
    """Masked one-hot BCE written out with numpy: mean over 21 channels and non-255 pixels."""
    z = logits.double().numpy()
    t = target.numpy().copy()
    if ignore_as_background:
        t[t == 255] = 0
    valid = t != 255
    total, n = 0.0, 0
    for b, i, j in zip(*np.nonzero(valid)):
        y = np.zeros(21)
        y[t[b, i, j]] = 1
        x = z[b, :, i, j]
        total += np.sum(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))
        n += 21
    return total / n


@pytest.mark.parametrize("ignore_as_background", [False, True])
def test_scribe_loss_equals_hand_written_masked_bce(ignore_as_background):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 21, 5, 6, generator=g) * 3
    target = torch.randint(0, 21, (2, 5, 6), generator=g)
    target[0, :2] = 255
    got = segmentation_loss("scribe", logits, target, ignore_as_background).item()
    assert got == pytest.approx(hand_bce(logits, target, ignore_as_background), rel=1e-6)
    if not ignore_as_background:
        # The ignored pixels truly do not matter: changing their logits leaves the loss unchanged.
        logits2 = logits.clone()
        logits2[0, :, :2] = 100.0
        assert segmentation_loss("scribe", logits2, target).item() == pytest.approx(got, rel=1e-7)


def test_notebook_scribe_loss_is_bce_with_logits_on_the_one_hot_with_255_as_background():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 21, 5, 6, generator=g) * 3
    target = torch.randint(0, 21, (2, 5, 6), generator=g)
    target[1, 3:] = 255
    onehot = torch.nn.functional.one_hot(torch.where(target == 255, 0, target), 21).permute(0, 3, 1, 2).float()
    expected = torch.nn.BCEWithLogitsLoss()(logits, onehot).item()
    assert segmentation_loss("scribe", logits, target, ignore_as_background=True).item() == pytest.approx(expected,
                                                                                                          rel=1e-6)


def test_cross_entropy_ignores_255_for_baseline_and_ibe():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 21, 4, 4, generator=g)
    target = torch.randint(0, 21, (1, 4, 4), generator=g)
    target[0, 0] = 255
    z = logits.double().numpy()[0]
    t = target.numpy()[0]
    vals = [-(z[t[i, j], i, j] - np.log(np.exp(z[:, i, j]).sum())) for i in range(4) for j in range(4)
            if t[i, j] != 255]
    for kind in ("baseline", "ibe"):
        assert segmentation_loss(kind, logits, target).item() == pytest.approx(np.mean(vals), rel=1e-6)


def test_pretrained_backbone_from_path_and_errors(tmp_path):
    src = torchvision.models.resnet18(weights=None)
    torch.nn.init.constant_(src.conv1.weight, 0.25)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)  # a full ImageNet-style state dict, fc included
    m = build_model("baseline", backbone="resnet18", head_channels=16, pretrained_backbone=str(path))
    assert torch.all(m.backbone.conv1.weight == 0.25)
    with pytest.raises(UsageError, match="no such file"):
        build_model("baseline", backbone="resnet18", pretrained_backbone=str(tmp_path / "missing.pth"))
    with pytest.raises(UsageError, match="does not fit"):
        build_model("baseline", backbone="resnet34", pretrained_backbone=str(path))


def test_imagenet_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    # No network and an empty hub cache: the weights API cannot fetch, and we must say what to do.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(UsageError, match="--pretrained-backbone none"):
        build_model("baseline", backbone="resnet18", pretrained_backbone="imagenet")
    # With the file in the hub cache the real weights API loads it, offline.
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    src = torchvision.models.resnet18(weights=None)
    torch.nn.init.constant_(src.conv1.weight, -0.5)
    torch.save(src.state_dict(), cache / weights.url.rsplit("/", 1)[-1])
    m = build_model("baseline", backbone="resnet18", head_channels=16, pretrained_backbone="imagenet")
    assert torch.all(m.backbone.conv1.weight == -0.5)
