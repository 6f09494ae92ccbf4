"""The published protocols as presets (common/presets.py): the table's invariants, the counts each paper states,
the resize rules by hand, and the refusal to mix two presets in one results folder."""
import json

import pytest

from common.cli import UsageError
from common.corruptions import resolve_corruption
from common.datasets import NAMES as DATASET_NAMES
from common.presets import AGGREGATES, PRESETS, check_recorded, get_preset

# Typed from the sources: Kamann & Rother's / SegFormer's Table 6 columns, and the paper's 15 (docs/protocol.md).
CITYSCAPES_C = {"motion_blur", "defocus_blur", "glass_blur", "gaussian_blur", "gaussian_noise", "impulse_noise",
                "shot_noise", "speckle_noise", "brightness", "contrast", "saturate", "jpeg_compression", "snow",
                "spatter", "fog", "frost"}
PAPER_15 = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
            "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_well_formed(name):
    p = PRESETS[name]
    assert p.name == name and p.dataset in DATASET_NAMES and p.aggregate in AGGREGATES
    assert len(set(p.corruptions)) == len(p.corruptions) > 0
    for c in p.corruptions:
        assert resolve_corruption(c) == c
    assert set(p.severities) == set(p.corruptions)
    for c, sev in p.severities.items():
        assert len(sev) > 0 and list(sev) == sorted(set(sev)) and set(sev) <= {1, 2, 3, 4, 5}, c
    assert p.inference["mode"] in ("whole", "slide")
    if p.inference["mode"] == "slide":
        (ch, cw), (sh, sw) = p.inference["crop"], p.inference["stride"]
        assert 0 < sh <= ch and 0 < sw <= cw
    assert len(p.source) > 80 and any(str(y) in p.source for y in range(2019, 2027))
    json.dumps(p.record())   # storable in run.json
    assert p.conditions()[0] == (None, 0)


def test_what_the_papers_state():
    paper = PRESETS["paper"]
    assert list(paper.corruptions) == PAPER_15 and len(paper.conditions()) == 1 + 75
    assert paper.resolution == {"resize": "square", "size": 224}
    kr = PRESETS["kamann-rother-cityscapes-c"]
    assert set(kr.corruptions) == CITYSCAPES_C and len(kr.conditions()) == 1 + 16 * 5
    sf = PRESETS["segformer-cityscapes-c"]
    assert set(sf.corruptions) == CITYSCAPES_C
    # "3 severities for 4 kinds of Noise and 5 severities for the rest 12"
    noise = {"gaussian_noise", "impulse_noise", "shot_noise", "speckle_noise"}
    assert {c for c, s in sf.severities.items() if s == (1, 2, 3)} == noise
    assert {c for c, s in sf.severities.items() if s == (1, 2, 3, 4, 5)} == CITYSCAPES_C - noise
    assert len(sf.conditions()) == 1 + 4 * 3 + 12 * 5
    assert sf.inference == {"mode": "slide", "crop": (1024, 1024), "stride": (768, 768)}
    ade = PRESETS["semsegbench-ade20k-c"]
    assert list(ade.corruptions) == PAPER_15 and ade.dataset == "ade20k"


def test_eval_sizes_by_hand():
    assert PRESETS["segformer-cityscapes-c"].eval_size(2048, 1024) == (2048, 1024)
    assert PRESETS["paper"].eval_size(500, 375) == (224, 224)
    ade = PRESETS["semsegbench-ade20k-c"]
    # fit 2048 x 512, aspect kept, rounded half up: min(2048/683, 512/512) = 1
    assert ade.eval_size(683, 512) == (683, 512)
    # min(2048/400, 512/300) = 1.70667: 400 -> 682.67 -> 683, 300 -> 512
    assert ade.eval_size(400, 300) == (683, 512)
    # min(2048/3000, 512/500) = 0.68267: 3000 -> 2048, 500 -> 341.33 -> 341
    assert ade.eval_size(3000, 500) == (2048, 341)
    # portrait: min(2048/512, 512/256) = 2: 256 x 512 -> 512 x 1024
    assert ade.eval_size(256, 512) == (512, 1024)


def test_a_results_folder_keeps_its_preset():
    sf, kr = PRESETS["segformer-cityscapes-c"], PRESETS["kamann-rother-cityscapes-c"]
    check_recorded(sf.record(), sf, "results/")
    check_recorded(None, PRESETS["paper"], "results/")   # a folder from before presets is the paper's
    with pytest.raises(UsageError, match="holds results of preset 'segformer-cityscapes-c'; --preset "
                                         "kamann-rother-cityscapes-c would mix"):
        check_recorded(sf.record(), kr, "results/")
    with pytest.raises(UsageError, match="preset 'paper'"):
        check_recorded(None, sf, "results/")
    changed = dict(sf.record(), severities={**sf.record()["severities"], "gaussian_noise": [1, 2, 3, 4, 5]})
    with pytest.raises(UsageError):
        check_recorded(changed, sf, "results/")   # same name, other settings: refused too
    with pytest.raises(UsageError, match="expected one of paper, "):
        get_preset("cityscapes-c")
