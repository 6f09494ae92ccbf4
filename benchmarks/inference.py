"""bench.py's full-resolution inference group (slide): common/inference.py's sliding window (the Cityscapes
protocol of SegFormer and mmsegmentation: 1024 x 1024 crops at stride 768 on 2048 x 1024) against the whole image
in one forward, on the same model and input, side by side; BENCHMARKS.md defines the row."""
import torch

from benchmarks.measure import result, timed
from common.constants import NUM_CLASSES
from common.inference import sliding_window_logits, whole_image_logits, window_starts
from common.models import build_model


def crop_count(width, height, crop, stride):
    """How many crops the sliding window runs on a ``width`` x ``height`` image (square crop and stride)."""
    return len(window_starts(height, crop, stride)) * len(window_starts(width, crop, stride))


def bench_slide(ctx):
    """slide_vs_whole: seconds of sliding_window_logits over whole_image_logits on one random image, fp32, eval,
    alternated within each of slide_repeats rounds (the fastest of each counts), after a warm-up of each."""
    cfg = ctx["cfg"]
    dev, (w, h), crop, stride = cfg["device"], cfg["slide_size"], cfg["slide_crop"], cfg["slide_stride"]
    model = build_model("baseline", arch="deeplabv3plus", backbone=cfg["slide_backbone"],
                        head_channels=cfg["slide_head_channels"]).to(dev).eval()
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(dev)

    def whole():
        with torch.inference_mode():
            return whole_image_logits(model, x)

    def slide():
        with torch.inference_mode():
            return sliding_window_logits(model, x, crop, stride, NUM_CLASSES)

    best = {"whole": timed(whole, dev, warmup=True)[0], "slide": timed(slide, dev, warmup=True)[0]}
    for _ in range(cfg["slide_repeats"] - 1):
        best = {k: min(best[k], timed(fn, dev)[0]) for k, fn in (("whole", whole), ("slide", slide))}
    crops = crop_count(w, h, crop, stride)
    return {"slide_vs_whole": result(best["slide"] / best["whole"], None, "info", best, crops=crops,
                                     pixel_ratio=round(crops * crop * crop / (w * h), 4), size=f"{w}x{h}", crop=crop,
                                     stride=stride, whole_images_per_s=round(1 / best["whole"], 3),
                                     slide_images_per_s=round(1 / best["slide"], 3),
                                     model=f"DeepLabV3+ {cfg['slide_backbone']}, {cfg['slide_head_channels']}-channel "
                                           f"heads, random weights")}
