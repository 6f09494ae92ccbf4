"""bench.py's and benchmarks/'s arithmetic and reference implementations (not their timings: benchmarks are
not tests)."""
import time

import numpy as np
import pytest
import torch

import bench
from benchmarks import corruption, logits, measure, models
from benchmarks.models import model_flops


def test_study_projection_by_hand():
    # The study: 3 models x 50 epochs x 7,087 images, then 3 models x 1,449 val images x 76
    # conditions (clean + 15 x 5). At 1,500 training images/s, 3,000 / 2,000 / 1,000 inference images/s
    # and 1.6 s of corruptions per val image on 16 cores:
    t_train, t_fwd, t_cor, t_all = models.project_study(1500.0, [3000.0, 2000.0, 1000.0], 1.6, 16)
    assert t_train == pytest.approx(1_063_050 / 1500)                          # 708.7 s
    assert t_fwd == pytest.approx(110_124 / 3000 + 110_124 / 2000 + 110_124 / 1000)   # 201.9 s
    assert t_cor == pytest.approx(1449 * 1.6 / 16)                             # 144.9 s
    assert t_all == pytest.approx(t_train + t_fwd)                             # the forward passes bound the sweep
    # With slow corruptions (few cores) the CPU side bounds the sweep instead.
    assert models.project_study(1500.0, [3000.0] * 3, 1.6, 2)[3] == pytest.approx(708.7 + 1449 * 1.6 / 2)


def test_notebook_loop_computes_the_trackers_statistics():
    # logits_vs_loop compares LogitTracker with this loop: the ratio means something only if both compute
    # the same count, sums and outer products. Oracle: numpy in float64, by predicted class.
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, (2, 21, 9, 7)).astype(np.float32)
    x[:, 0] += 1.5
    count, sums, sq = logits.notebook_moments(torch.from_numpy(x))
    pix = x.astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, 21)
    pred = pix.argmax(1)
    for n in range(21):
        sel = pix[pred == n]
        assert count[n].item() == len(sel)
        np.testing.assert_allclose(sums[n].numpy(), sel.sum(0), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(sq[n].numpy(), sel.T @ sel, rtol=1e-5, atol=1e-3)
    assert len(np.unique(pred)) > 10


def test_sweep_conditions_are_clean_then_every_corruption_and_severity():
    cfg = dict(corruptions=["gaussian_noise", "snow"], severities=[0, 1, 5])
    assert corruption.conditions_of(cfg) == [("clean", 0), ("gaussian_noise", 1), ("gaussian_noise", 5),
                                             ("snow", 1), ("snow", 5)]
    assert len(corruption.conditions_of(bench.MODES["quick"])) == 1 + 6 * 3   # the quick sweep's 19


def test_flop_count_matches_the_published_figure():
    # Independent oracle: 26.5 GFLOP for one 224x224 forward of DeepLabV3+ R50 at output stride 16 (the figure
    # the performance issue quotes); a training step is forward + backward, about 3x the forward.
    fwd = model_flops("baseline", 224)
    assert fwd == pytest.approx(26.5e9, rel=0.005)
    assert 2.9 < model_flops("baseline", 224, train_step=True) / fwd < 3.1
    assert model_flops("baseline", 112) == pytest.approx(fwd / 4, rel=0.02)   # convolutions scale with pixels


def test_notebook_model_flops_match_the_published_figure():
    # The companion notebook's model (torchvision's DeepLabV3 head, ResNet-50, output stride 8): 62.6 GFLOP per
    # 224x224 forward as published, 2.4x DeepLabV3+ at output stride 16 (26.5 GFLOP).
    v3 = model_flops(arch="deeplabv3", output_stride=8)
    assert v3 == pytest.approx(62.6e9, rel=0.005)
    assert round(v3 / model_flops(arch="deeplabv3plus", output_stride=16), 1) == 2.4
    # The bench's model_kw gives the groups exactly that model for the notebook recipe.
    kw = measure.model_kw(dict(backbone="resnet50", head_channels=256), "deeplabv3")
    assert (kw["arch"], kw["output_stride"], kw["ibe_placement"]) == ("deeplabv3", 8, "logits")


@pytest.mark.parametrize("name, bf16, tf32", [
    # Datasheet figures (with sparsity) halved: SXM 1,979 / 989; PCIe 1,513 / 756; NVL 1,671 / 835.
    ("NVIDIA H100 80GB HBM3", 989.5, 494.5),     # the SXM board, which its name does not say
    ("NVIDIA H100 PCIe", 756.5, 378.0),
    ("NVIDIA H100 NVL", 835.5, 417.5),
    ("NVIDIA H200", 989.5, 494.5),               # SXM
    ("NVIDIA H200 NVL", 835.5, 417.5),
])
def test_peak_tflops_by_device_name(name, bf16, tf32):
    peak = models.peak_tflops(name)
    assert peak["bf16"] == pytest.approx(bf16) and peak["tf32"] == pytest.approx(tf32)


@pytest.mark.parametrize("name", ["NVIDIA GH200 480GB", "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                                  "cpu"])
def test_no_peak_is_claimed_for_other_cards_or_a_mig_slice(name):
    assert models.peak_tflops(name) is None


def test_study_headline_is_the_notebook_model_by_hand(monkeypatch):
    # Notebook model at 500 training images/s and 3,000 / 2,000 / 1,000 inference images/s; DeepLabV3+ at
    # 1,500 and 6,000 each; 1.6 s of corruptions per val image on 16 cores.
    monkeypatch.setattr(models.os, "cpu_count", lambda: 16)
    ctx = dict(cfg=dict(train_crop=224), corrupt_per_val_image=1.6,
               train_ips={"deeplabv3": (500.0, "bf16_channels_last"), "deeplabv3plus": (1500.0, "bf16_channels_last")},
               infer_ips={"deeplabv3": dict(baseline=3000.0, ibe=2000.0, scribe=1000.0),
                          "deeplabv3plus": dict(baseline=6000.0, ibe=6000.0, scribe=6000.0)})
    res = models.bench_study(ctx)
    # 3 x 50 x 7,087 / 500 = 2,126.1 s of training; forward 110,124 x (1/3000 + 1/2000 + 1/1000) = 201.9 s
    # > corruptions 1,449 x 1.6 / 16 = 144.9 s: 2,328.0 s = 38.80 min.
    assert res["study_projected_minutes"]["measured"] == pytest.approx(38.80, abs=0.005)
    assert res["study_projected_minutes"]["ok"] is False
    # DeepLabV3+: 708.7 s + max(3 x 110,124 / 6000 = 55.06, 144.9) = 853.6 s = 14.23 min.
    assert res["study_projected_minutes_v3plus"]["measured"] == pytest.approx(14.23, abs=0.005)
    ctx["train_ips"].pop("deeplabv3")
    with pytest.raises(measure.Skip):
        models.bench_study(ctx)


def test_logit_gradients_against_the_losses_derivatives_by_hand():
    # d CE / d z = (softmax(z) - onehot) / (pixels not 255); d BCE / d z = (sigmoid(z) - onehot') / (B*21*H*W),
    # with 255 -> background in the one-hot of the BCE (the notebook's SCrIBE loss).
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, (2, 21, 5, 4))
    y = rng.integers(0, 21, (2, 5, 4))
    y[0, :2] = 255
    ce_norm, bce_norm = models.logit_gradients(torch.from_numpy(z).float(), torch.from_numpy(y))
    valid = y != 255
    onehot = np.eye(21)[np.where(valid, y, 0)].transpose(0, 3, 1, 2)
    soft = np.exp(z - z.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    g_ce = (soft - onehot) * valid[:, None] / valid.sum()
    g_bce = (1 / (1 + np.exp(-z)) - onehot) / z.size
    assert ce_norm == pytest.approx(np.linalg.norm(g_ce), rel=1e-5)
    assert bce_norm == pytest.approx(np.linalg.norm(g_bce), rel=1e-5)


def test_machine_speed_is_one_r50_deeplabv3plus_forward_of_32_images_at_96(monkeypatch):
    # The figure every run time is quoted beside (README, BENCHMARKS.md): fp32 DeepLabV3+ ResNet-50, 256-channel
    # heads, eval, one batch of 32 x 3 x 96 x 96, the fastest of 5 after a warm-up.
    seen = []

    class Stub(torch.nn.Module):
        def forward(self, x):
            seen.append((tuple(x.shape), self.training, torch.is_inference_mode_enabled()))
            time.sleep(0.02)   # the measured figure is the seconds of one forward call
            return x

    def stub_build(kind, **kw):
        seen.append((kind, kw))
        return Stub()
    monkeypatch.setattr(models, "build_model", stub_build)
    res = models.bench_machine(dict(cfg=bench.MODES["quick"]))
    assert seen[0] == ("baseline", dict(arch="deeplabv3plus", backbone="resnet50", head_channels=256))
    assert seen[1:] == [((32, 3, 96, 96), False, True)] * 6
    row = res["machine_forward_s"]
    assert row["rule"] == "info" and 0.02 <= row["measured"] < 0.5 and (row["batch"], row["size"]) == (32, 96)


def test_quick_step_times_the_quick_model_in_three_layouts_and_precisions(monkeypatch):
    # The figures behind reproduce.sh's --amp choice: the same SCrIBE model (ResNet-18 DeepLabV3+, 64-channel heads,
    # IBE on the logits) trained and evaluated as fp32 contiguous, fp32 channels_last and bf16 channels_last.
    seen, build = [], models.build_model

    def spying_build(kind, **kw):
        seen.append(("build", kind, kw))
        model = build(kind, **kw)
        model.backbone.conv1.register_forward_hook(lambda m, inp, out: seen.append(
            (out.dtype, inp[0].is_contiguous(memory_format=torch.channels_last)
             and not inp[0].is_contiguous(), m.training, torch.is_inference_mode_enabled(), inp[0].shape[0])))
        return model
    monkeypatch.setattr(models, "build_model", spying_build)
    cfg = dict(bench.TINY, device="cpu", quick_step_size=32, quick_step_batch=2, quick_step_eval_batch=3)
    res = models.bench_quick_step(dict(cfg=cfg))
    builds = [s for s in seen if s[0] == "build"]
    assert builds == [("build", "scribe", dict(arch="deeplabv3plus", backbone="resnet18", head_channels=64,
                                               ibe_placement="logits"))] * 4
    calls = [s for s in seen if s[0] != "build"]
    # Per mode: a warm-up and one timed call of the step (training, autograd on, batch 2), then of the forward
    # (eval, inference mode, batch 3).
    expected = []
    for dtype, channels_last in ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False),
                                 (torch.bfloat16, True)):
        expected += [(dtype, channels_last, True, False, 2)] * 2 + [(dtype, channels_last, False, True, 3)] * 2
    assert calls == expected
    assert set(res) == {f"quick_{p}_speedup_{m}" for p in ("train", "eval")
                        for m in ("fp32_channels_last", "bf16_contiguous", "bf16_channels_last")}
    for key, row in res.items():
        label = key.split("_speedup_")[1]
        assert row["rule"] == "info" and row["measured"] == pytest.approx(
            row["seconds"]["fp32_contiguous"] / row["seconds"][label], rel=0.02)   # seconds rounded to 0.1 ms
    assert res["quick_train_speedup_bf16_channels_last"]["seconds"] != res["quick_eval_speedup_bf16_channels_last"][
        "seconds"]


def test_dump_projection_by_hand():
    # One image: decoded once (1 s), then corruption a at 3 severities (2 s - 1 s each), b at 5 (11 s - 1 s each):
    # 1 + 3 x 1 + 5 x 10 = 54 s; 500 images on 16 cores: 500 x 54 / 16 s = 0.46875 h.
    hours = corruption.project_dump_hours({"a": 2.0, "b": 11.0}, 1.0, {"a": (1, 2, 3), "b": (1, 2, 3, 4, 5)}, 500, 16)
    assert hours == pytest.approx(500 * 54 / 16 / 3600)


def test_dump_full_times_dump_one_of_one_condition_on_the_full_size_image(tmp_path, monkeypatch):
    import dump_voc_c
    calls = []
    real = dump_voc_c.dump_one

    def spy(index, conditions, out, protocol, size, dataset, code, palette=True):
        calls.append((list(conditions), protocol, dataset[index][0].size))
        return real(index, conditions, out, protocol, size, dataset, code, palette)
    monkeypatch.setattr(dump_voc_c, "dump_one", spy)
    cfg = {**bench.MODES["quick"], **bench.TINY, "dump_full_corruptions": ["contrast", "fog"]}
    ctx = dict(cfg=cfg, root=str(tmp_path), scratch=str(tmp_path / "run"))
    res = corruption.bench_dump_full(ctx)
    # The label once, the fixed part twice, then each corruption at severity 3, all at 64 x 32, --protocol native.
    assert calls == [([], "native", (64, 32))] * 3 + [([("contrast", 3)], "native", (64, 32)),
                                                      ([("fog", 3)], "native", (64, 32))]
    image = next((tmp_path / "run" / "dump-full" / "fog" / "3").iterdir())
    assert np.asarray(__import__("PIL.Image").Image.open(image)).shape == (32, 64, 3)
    assert set(res) == {"dump_full_contrast", "dump_full_fog", "dump_full_fixed_s"}   # no projection: 2 of 16
    for c in ("contrast", "fog"):
        row = res[f"dump_full_{c}"]
        assert row["measured"] == pytest.approx(1 / row["seconds"]["dump_one"], rel=0.02)


def test_slide_runs_the_model_on_the_whole_image_and_on_mmsegs_crops(monkeypatch):
    from benchmarks import inference
    seen = []

    class Stub(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            time.sleep(0.02)   # seconds the row's rounding keeps (its ratio is checked against them, not a time)
            return torch.zeros(x.shape[0], 21, *x.shape[2:])
    monkeypatch.setattr(inference, "build_model", lambda kind, **kw: Stub())
    cfg = {**bench.MODES["quick"], **bench.TINY, "slide_repeats": 2}   # 96 x 48, crops 48 at stride 36
    row = inference.bench_slide(dict(cfg=cfg))["slide_vs_whole"]
    # mmsegmentation's grid by hand: rows max(48 - 48 + 35, 0) // 36 + 1 = 1, columns (96 - 48 + 35) // 36 + 1 = 3.
    whole, crop = (1, 3, 48, 96), (1, 3, 48, 48)
    # Each warmed up and timed, then one more round of both.
    assert seen == [whole, whole] + [crop] * 6 + [whole] + [crop] * 3
    assert row["crops"] == 3 and row["pixel_ratio"] == 1.5
    assert row["measured"] == pytest.approx(row["seconds"]["slide"] / row["seconds"]["whole"], rel=0.02)
    # The Cityscapes protocol: 1024 x 1024 crops at stride 768 on 2048 x 1024 are 1 x 3 crops, 1.5x the pixels.
    assert inference.crop_count(2048, 1024, 1024, 768) == 3
