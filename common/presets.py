"""Published corruption protocols as named presets: which dataset, corruptions, severities, resolution,
inference mode and aggregate each fixes, with its source (docs/datasets.md, "Presets", says more).

    p = PRESETS["segformer-cityscapes-c"]
    p.severities["gaussian_noise"]      # (1, 2, 3): SegFormer tests the four noises at three severities
    p.eval_size(2048, 1024)             # (2048, 1024): scored at native size
    p.inference                         # {"mode": "slide", "crop": (1024, 1024), "stride": (768, 768)}
    p.record()                          # what a results folder stores; check_recorded(record, p) refuses another

``apply_preset(args)`` sets a script's --data-independent protocol flags from ``--preset`` (dump_voc_c.py and
evaluate_corruptions.py): --corruptions, --severities, --protocol, --size, and (evaluate) --inference. A preset is
a whole protocol: those flags given beside it are refused. Corruptions are the full names of common.corruptions;
severity 0 (clean) is always evaluated besides these.
"""
import dataclasses

from .cli import UsageError
from .corruptions import CORRUPTIONS

# Kamann & Rother's 16 corruptions (ImageNet-C's 15 minus zoom blur, elastic transform and pixelate, plus the
# four held-out ones), grouped as their tables and SegFormer's Table 6 group them.
CITYSCAPES_C_16 = (
    "motion_blur", "defocus_blur", "glass_blur", "gaussian_blur",             # blur
    "gaussian_noise", "impulse_noise", "shot_noise", "speckle_noise",         # noise
    "brightness", "contrast", "saturate", "jpeg_compression",                 # digital
    "snow", "spatter", "fog", "frost",                                        # weather
)
NOISE_4 = ("gaussian_noise", "impulse_noise", "shot_noise", "speckle_noise")
ALL_SEVERITIES = (1, 2, 3, 4, 5)

# How the per-condition mIoUs become one number:
#   mean_conditions: the mean over every (corruption, severity) evaluated (the paper's mPC over 15 x 5);
#   mean_of_corruption_means: each corruption's mIoU averaged over its severities, then the mean over
#     corruptions (what a table of one column per corruption reports; it differs from mean_conditions when
#     corruptions have different numbers of severities, as in SegFormer's).
AGGREGATES = ("mean_conditions", "mean_of_corruption_means")


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    dataset: str
    split: str
    corruptions: tuple
    severities: dict            # corruption -> tuple of severities 1..5
    resolution: dict            # {"resize": "square", "size": S} | {"resize": "native"} |
                                # {"resize": "shortside", "size": S} | {"resize": "keep_ratio", "scale": (L, S)}
    inference: dict             # {"mode": "whole"} | {"mode": "slide", "crop": (h, w), "stride": (h, w)}
    aggregate: str
    source: str
    notes: str = ""

    def conditions(self) -> list:
        """Every (corruption, severity) the preset evaluates, clean (None, 0) first."""
        return [(None, 0)] + [(c, s) for c in self.corruptions for s in self.severities[c]]

    def eval_size(self, width: int, height: int) -> tuple:
        """(width, height) at which an image of that size is corrupted and scored under this preset."""
        return eval_size(self.resolution, width, height)

    def record(self) -> dict:
        """A JSON-ready description (lists for tuples) for run.json, so a results folder knows its preset."""
        def plain(v):
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v
        return plain(dataclasses.asdict(self))


def eval_size(resolution: dict, width: int, height: int) -> tuple:
    """The evaluated size for a ``resolution`` rule (Preset.resolution)."""
    kind = resolution["resize"]
    if kind == "native":
        return width, height
    if kind == "square":
        return resolution["size"], resolution["size"]
    if kind == "shortside":   # the notebook's FixScaleResize (common.data.shortside_size)
        from .data import shortside_size
        return shortside_size(width, height, resolution["size"])
    if kind == "keep_ratio":   # mmsegmentation's Resize(scale=(4 S, S), keep_ratio=True): common.data
        from .data import keep_ratio_size
        long_edge, short_edge = resolution["scale"]
        assert long_edge == 4 * short_edge, resolution
        return keep_ratio_size(width, height, short_edge)
    raise ValueError(f"unknown resize rule {kind!r}")


# The flags a preset fixes, with the defaults they have without one (a flag that differs was given).
PRESET_FLAGS = ("corruptions", "severities", "protocol", "size", "inference")


def protocol_of(resolution: dict) -> tuple:
    """(--protocol, --size) for a preset's resolution rule (common.data.eval_sample's protocols)."""
    kind = resolution["resize"]
    if kind == "square":
        return "paper", resolution["size"]
    if kind == "native":
        return "native", None
    if kind == "shortside":
        return "shortside", resolution["size"]
    if kind == "keep_ratio":
        return "keep_ratio", resolution["scale"][1]
    raise ValueError(f"unknown resize rule {kind!r}")


def inference_arg(inference: dict) -> str:
    """--inference's text for a preset's inference: "whole" or "slide:CHxCW:SHxSW"."""
    if inference["mode"] == "whole":
        return "whole"
    (ch, cw), (sh, sw) = inference["crop"], inference["stride"]
    return f"slide:{ch}x{cw}:{sh}x{sw}"


def parse_inference(text: str) -> dict:
    """--inference whole | slide:HxW:HxW (crop, stride) -> {"mode": ...} (a Preset's inference)."""
    if text == "whole":
        return {"mode": "whole"}
    try:
        mode, crop, stride = text.split(":")
        pair = [tuple(int(v) for v in part.lower().split("x")) for part in (crop, stride)]
        if mode != "slide" or any(len(q) != 2 or min(q) < 1 for q in pair):
            raise ValueError
    except ValueError:
        raise UsageError(f"--inference {text!r}: expected whole, or slide:HxW:HxW (crop, then stride; e.g. "
                         f"slide:1024x1024:768x768)") from None
    return {"mode": "slide", "crop": pair[0], "stride": pair[1]}


def apply_preset(args, parser, dataset: str) -> None:
    """Fill args' protocol flags from ``args.preset`` (None: leave them; the record is then ``None``). A preset for
    another dataset than ``dataset`` (--data's; synthetic counts as voc, acdc as cityscapes), or a protocol flag
    given beside the preset, is refused with one line. Sets ``args.preset_record`` (run.json's "preset") and
    ``args.preset_severities`` ({corruption: severities}: a preset may give corruptions different severities,
    so the conditions are ``conditions_of(args)``'s, not the product of --corruptions and --severities)."""
    args.preset_record, args.preset_severities = None, None
    if getattr(args, "preset", None) is None:
        return
    preset = get_preset(args.preset)
    data = "voc" if dataset == "synthetic" else dataset
    if preset.dataset != data and not (preset.dataset == "cityscapes" and data == "acdc"):
        raise UsageError(f"--preset {preset.name} is a {preset.dataset} protocol and --data is {dataset}; choose a "
                         f"preset for {data} (docs/datasets.md, Presets) or no --preset")
    for flag in PRESET_FLAGS:
        if hasattr(args, flag) and getattr(args, flag) != parser.get_default(flag):
            raise UsageError(f"--{flag} is fixed by --preset {preset.name}; drop --{flag} (or drop --preset and "
                             f"give every protocol flag yourself)")
    args.corruptions = list(preset.corruptions)
    args.severities = ["0"] + sorted({str(s) for c in preset.corruptions for s in preset.severities[c]})
    args.protocol, size = protocol_of(preset.resolution)
    args.size = size if size is not None else parser.get_default("size")
    if hasattr(args, "inference"):
        args.inference = inference_arg(preset.inference)
    args.preset_severities = {c: list(preset.severities[c]) for c in preset.corruptions}
    args.preset_record = preset.record()


def conditions_of(args, corruptions, severities) -> list:
    """The (corruption, severity > 0) pairs a run evaluates: the product of the parsed --corruptions and
    --severities, kept to each corruption's own severities under a preset."""
    own = getattr(args, "preset_severities", None)
    return [(c, s) for c in corruptions for s in severities if s > 0 and (own is None or s in own[c])]


def _same(corruptions, severities):
    return {c: tuple(severities) for c in corruptions}


PRESETS = {p.name: p for p in (
    Preset(
        name="paper", dataset="voc", split="val",
        corruptions=CORRUPTIONS, severities=_same(CORRUPTIONS, ALL_SEVERITIES),
        resolution={"resize": "square", "size": 224}, inference={"mode": "whole"},
        aggregate="mean_conditions",
        source="Lehman, Temel & AlRegib, 'On the Structures of Representation for the Robustness of Semantic "
               "Segmentation to Input Corruption', ICIP 2020 (arXiv 2009.00817), and its companion notebook: "
               "VOC 2012 val resized to 224 x 224 with Pillow, then corrupted; 15 ImageNet-C corruptions x "
               "severities 1-5; mIoU averaged over the 75 (docs/protocol.md)",
        notes="Today's default of evaluate_corruptions.py (--protocol paper)."),
    Preset(
        name="kamann-rother-cityscapes-c", dataset="cityscapes", split="val",
        corruptions=CITYSCAPES_C_16, severities=_same(CITYSCAPES_C_16, ALL_SEVERITIES),
        resolution={"resize": "native"}, inference={"mode": "whole"},
        aggregate="mean_of_corruption_means",
        source="Kamann & Rother, 'Benchmarking the Robustness of Semantic Segmentation Models', CVPR 2020 "
               "(arXiv 1908.05005; extended in IJCV 129:462-483, 2021): Cityscapes val, 16 corruptions of "
               "ImageNet-C and its held-out set (blur: motion, defocus, frosted glass, gaussian; noise: "
               "gaussian, impulse, shot, speckle; digital: brightness, contrast, saturate, JPEG; weather: snow, "
               "spatter, fog, frost), DeepLabv3+ evaluated on the full 2048 x 1024 image",
        notes="Severities 1-5 for all 16 is ImageNet-C's default; we could not confirm from the sources at hand "
              "whether the paper restricted the noises on Cityscapes (SegFormer, which says it generated "
              "Cityscapes-C the same way, reports noise at 1-3). Their realistic extras (PSF blur, "
              "intensity-dependent noise) are not in imagecorruptions and are left out."),
    Preset(
        name="segformer-cityscapes-c", dataset="cityscapes", split="val",
        corruptions=CITYSCAPES_C_16,
        severities={c: (1, 2, 3) if c in NOISE_4 else ALL_SEVERITIES for c in CITYSCAPES_C_16},
        resolution={"resize": "native"},
        inference={"mode": "slide", "crop": (1024, 1024), "stride": (768, 768)},
        aggregate="mean_of_corruption_means",
        source="Xie et al., 'SegFormer: Simple and Efficient Design for Semantic Segmentation with "
               "Transformers', NeurIPS 2021, robustness study (Table 6): Cityscapes-C with 16 corruptions, "
               "'3 severities for 4 kinds of Noise and 5 severities for the rest 12' (quoted in "
               "github.com/NVlabs/SegFormer issue 71), generated 'in the same way as' Kamann & Rother (issue 31); "
               "Cityscapes test mode of local_configs/segformer/B5/segformer.b5.1024x1024.city.160k.py: sliding "
               "window, 1024 x 1024 crops at stride 768 on the 2048 x 1024 image",
        notes="The table reports one mIoU per corruption (averaged over its severities); the single number here "
              "is their mean."),
    Preset(
        name="semsegbench-ade20k-c", dataset="ade20k", split="val",
        corruptions=CORRUPTIONS, severities=_same(CORRUPTIONS, (3,)),
        resolution={"resize": "keep_ratio", "scale": (2048, 512)}, inference={"mode": "whole"},
        aggregate="mean_conditions",
        source="Agnihotri et al., 'SemSegBench & DetecBench: Benchmarking Reliability and Generalization Beyond "
               "Classification', 2025 (code: github.com/shashankskagnihotri/benchmarking_reliability_generalization,"
               " semantic_segmentation/semsegbench/evals.py): ADE20K val under the 15 ImageNet-C corruptions "
               "('2D common corruptions'), applied in the model's data preprocessor after the test resize; "
               "severity 1-5 selectable, the benchmark's stored results are at severity 3",
        notes="Resolution and inference follow mmsegmentation's ADE20K test pipeline (resize to fit 2048 x 512, "
              "aspect kept; whole image), which SemSegBench's mmsegmentation configs use; a model trained with "
              "another test pipeline should be evaluated with its own."),
)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"--preset {name!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def check_recorded(recorded, preset: Preset, where: str) -> None:
    """Refuse to add ``preset``'s results to a folder that recorded another protocol (``recorded``: the
    ``record()`` stored there, or None for a folder from before presets, which counts as "paper")."""
    name = recorded["name"] if recorded else "paper"
    if name != preset.name or (recorded and recorded != preset.record()):
        raise UsageError(f"{where} holds results of preset {name!r}; --preset {preset.name} would mix two protocols "
                         f"in one table: use another --out folder")
