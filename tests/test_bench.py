"""bench.py's arithmetic and its reference implementations (not its timings: benchmarks are not tests)."""
import numpy as np
import pytest
import torch

import bench


def test_study_projection_by_hand():
    # The study: 3 models x 50 epochs x 7,087 images, then 3 models x 1,449 val images x 76
    # conditions (clean + 15 x 5). At 1,500 training images/s, 3,000 / 2,000 / 1,000 inference images/s
    # and 1.6 s of corruptions per val image on 16 cores:
    t_train, t_fwd, t_cor, t_all = bench.project_study(1500.0, [3000.0, 2000.0, 1000.0], 1.6, 16)
    assert t_train == pytest.approx(1_063_050 / 1500)                          # 708.7 s
    assert t_fwd == pytest.approx(110_124 / 3000 + 110_124 / 2000 + 110_124 / 1000)   # 201.9 s
    assert t_cor == pytest.approx(1449 * 1.6 / 16)                             # 144.9 s
    assert t_all == pytest.approx(t_train + t_fwd)                             # the forward passes bound the sweep
    # With slow corruptions (few cores) the CPU side bounds the sweep instead.
    assert bench.project_study(1500.0, [3000.0] * 3, 1.6, 2)[3] == pytest.approx(708.7 + 1449 * 1.6 / 2)


def test_notebook_loop_computes_the_trackers_statistics():
    # logits_vs_loop compares LogitTracker with this loop: the ratio means something only if both compute
    # the same count, sums and outer products. Oracle: numpy in float64, by predicted class.
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, (2, 21, 9, 7)).astype(np.float32)
    x[:, 0] += 1.5
    count, sums, sq = bench.notebook_moments(torch.from_numpy(x))
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
    assert bench.conditions_of(cfg) == [("clean", 0), ("gaussian_noise", 1), ("gaussian_noise", 5),
                                        ("snow", 1), ("snow", 5)]
    assert len(bench.conditions_of(bench.MODES["quick"])) == 1 + 6 * 3   # the quick sweep's 19
