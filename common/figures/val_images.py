"""The figures drawn from val images: a sample with each model's prediction, the notebook's corruption grid,
its qualitative grid of input and predictions under corruption, and the contact sheet. Images are the "paper"
protocol's size x size arrays, corrupted with the project's seeded rule (common/corruptions.py). Labels and
predictions are drawn in the palette of the results folder's classes (ctx["classes"], a DatasetSpec)."""
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects
from PIL import Image

from common.corruptions import corrupt_image
from common.data import eval_sample
from common.figures.drawing import class_legend, show, tile_figure
from common.models import predict
from common.results import CLEAN

GRID_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "snow", "brightness", "elastic_transform")  # 0, 3, 7, 10, 12
QUALITATIVE_SEVERITIES = (0, 1, 2, 3)   # 0 in the "Original" panel, 1..3 in the "Corrupted" one
CONTACT_MAX = 100
# The notebook's own choices (docs/protocol.md, "Figures and video"): cell 22's corruption grid on val image
# 687, cell 50's qualitative grid on 790 with 50 rows cut from the top and 1 from the bottom of its 224-px tiles
# and the label as a 0.4-scale inset, cell 49's contact sheet from 700 (delta).
NOTEBOOK_GRID_INDEX, NOTEBOOK_QUALITATIVE_INDEX, NOTEBOOK_CONTACT_START = 687, 790, 700
NOTEBOOK_CROP = (50, 1)          # (crop_top, crop_bot) in rows of a 224-px image
NOTEBOOK_SIDE = 224
INSET_SCALE = 0.4


def sample(ctx, index):
    """{"id", "image", "label", "original_size"} of val image ``index``: image and label as the "paper"
    protocol scored them (size x size), and the (width, height) of the image file. Read once per run."""
    if index not in ctx["samples"]:
        image_id, image, label = eval_sample(ctx["dataset"], index, "paper", ctx["size"])
        ctx["samples"][index] = {"id": image_id, "image": image, "label": label,
                                 "original_size": ctx["dataset"][index][0].size}
    return ctx["samples"][index]


def corrupted(ctx, index, corruption, severity):
    """Val image ``index`` under a condition (severity 0: the clean image), computed once per run."""
    key = (index, corruption, severity)
    if key not in ctx["cache"]:
        s = sample(ctx, index)
        ctx["cache"][key] = (s["image"] if severity == 0 else
                             corrupt_image(s["image"], s["id"], corruption, severity, ctx["code"]))
    return ctx["cache"][key]


def short_name(corruption):
    """The notebook's row label: the corruption's first word, capitalised ("elastic_transform" -> "Elastic")."""
    return corruption.split("_")[0].capitalize()


def fig_voc_sample(ctx):
    models, s = ctx["models"], sample(ctx, ctx["index"])
    preds = [predict(m["model"], s["image"][None], ctx["device"])[0] for m in models]
    fig, axes = plt.subplots(1, 2 + len(models), figsize=(2.6 * (2 + len(models)), 3.4), layout="constrained")
    show(axes[0], s["image"], f"image {s['id']}")
    show(axes[1], s["label"], "label", label=ctx["classes"])
    for ax, m, p in zip(axes[2:], models, preds):
        show(ax, p, f"{m['name']} prediction", label=ctx["classes"])
    class_legend(fig, [s["label"]] + preds, ctx["classes"])
    name = ctx["classes"].name
    fig.suptitle(f"{'VOC' if name == 'voc' else name} val image {ctx['index']} ({ctx['size']}x{ctx['size']}, "
                 f"as evaluated)")
    return fig


def grid_tile(ctx, corruption, severity):
    """The notebook's cell 22 tile: the --index image at size x size, corrupted, resized back to the image
    file's own size with Pillow's default filter (bicubic since Pillow 7.0; the notebook pinned 7.2)."""
    img = corrupted(ctx, ctx["index"], corruption, severity)
    return np.asarray(Image.fromarray(img).resize(sample(ctx, ctx["index"])["original_size"], Image.BICUBIC))


def fig_corruption_grid(ctx):
    s = sample(ctx, ctx["index"])
    w, h = s["original_size"]
    fig, axes, _ = tile_figure(len(GRID_CORRUPTIONS), 5, tile=1.7, left=0.35, top=0.75, aspect=h / w)
    for i, corruption in enumerate(GRID_CORRUPTIONS):
        for j, sev in enumerate(range(1, 6)):
            show(axes[i, j], grid_tile(ctx, corruption, sev), f"severity {sev}" if i == 0 else None)
        axes[i, 0].set_ylabel(corruption)
    fig.suptitle(f"Corruptions of val image {ctx['index']} ({s['id']}) by severity\n"
                 f"({ctx['size']}x{ctx['size']}, corrupted, resized back to {w}x{h})", fontsize=10)
    return fig


def crop_rows(ctx):
    """Rows of a size x size tile the qualitative grid keeps: --crop-top / --crop-bottom are rows of a 224-px
    image (the notebook's), scaled to --size and rounded."""
    size = ctx["size"]
    top, bottom = (int(round(v * size / NOTEBOOK_SIDE)) for v in ctx["crop"])
    return slice(top, size - bottom)


def label_inset(image, label, spec):
    """The notebook's "Original" input tile (cell 50): ``image`` with ``label`` coloured in the palette of
    ``spec`` (a DatasetSpec) shrunk by 0.4 pasted into its bottom-right corner. The shrink is torch's
    ``interpolate(scale_factor=0.4)`` (nearest): floor(0.4 n) pixels a side, output pixel i taken from source
    pixel floor(i * 2.5)."""
    h, w = label.shape
    oh, ow = int(np.floor(h * INSET_SCALE)), int(np.floor(w * INSET_SCALE))
    step = 1 / INSET_SCALE   # 2.5 exactly in binary: floor(i * step) has no rounding trap
    rows = np.minimum(np.floor(np.arange(oh) * step).astype(int), h - 1)
    cols = np.minimum(np.floor(np.arange(ow) * step).astype(int), w - 1)
    out = image.copy()
    if oh and ow:
        out[h - oh:, w - ow:] = spec.colorize(label)[rows][:, cols]
    return out


def fig_qualitative_grid(ctx):
    """The notebook's cell 50, on val image --qualitative-index: an "Original" panel (the clean input with
    its label as a 0.4-scale inset | baseline | SCrIBE prediction) over a "Corrupted" panel (columns:
    severities 1..3; per corruption three rows: input, baseline, SCrIBE), every tile cut to ``crop_rows``.
    Each image axes carries the label "<panel>|<row>|<corruption>|<severity>" (row: input or a model name)."""
    # docs/protocol.md: input, baseline, SCrIBE. By kind; where one is missing, the next checkpoint stands in.
    models = ctx["models"]
    chosen = [next((m for m in models if m["kind"] == k), None) for k in ("baseline", "scribe")]
    spare = iter([m for m in models if all(m is not c for c in chosen)])
    chosen = [m for m in (c or next(spare, None) for c in chosen) if m is not None]
    index, keep = ctx["qualitative_index"], crop_rows(ctx)
    s = sample(ctx, index)
    sevs = QUALITATIVE_SEVERITIES[1:]
    conds = [(CLEAN, 0)] + [(c, sev) for c in GRID_CORRUPTIONS for sev in sevs]
    images = np.stack([corrupted(ctx, index, c, sev) for c, sev in conds])
    preds = [predict(m["model"], images, ctx["device"]) for m in chosen]
    rows = ["input"] + [m["name"] for m in chosen]
    per = len(rows)
    tw = 1.5
    th = tw * (keep.stop - keep.start) / ctx["size"]
    left, gap, group_gap, top, mid, bottom = 1.1, 0.03, 0.14, 1.15, 0.75, 0.6
    width = left + len(sevs) * tw + (len(sevs) - 1) * gap + 0.2
    height = top + th + mid + len(GRID_CORRUPTIONS) * (per * th + (per - 1) * gap) + \
        (len(GRID_CORRUPTIONS) - 1) * group_gap + bottom
    fig = plt.figure(figsize=(width, height))

    def tile(x, y, img, label, title=None, colour=False):
        ax = fig.add_axes((x / width, 1 - (y + th) / height, tw / width, th / height), label=label)
        show(ax, img, title, label=ctx["classes"] if colour else None)
        return ax

    # "Original": clean input with the label inset, then each model's clean prediction.
    tile(left, top, label_inset(s["image"][keep], s["label"][keep], ctx["classes"]), f"original|input|{CLEAN}|0",
         "Input")
    for n, m in enumerate(chosen):
        tile(left + (n + 1) * (tw + gap), top, preds[n][0][keep], f"original|{m['name']}|{CLEAN}|0", m["name"], True)
    fig.text((left + 1.5 * tw + gap) / width, 1 - (top - 0.38) / height, "Original", ha="center", va="bottom",
             fontweight="bold", fontsize=11)
    # "Corrupted": severities 1..3 across, corruption x (input, baseline, SCrIBE) down.
    y0 = top + th + mid
    for i, corruption in enumerate(GRID_CORRUPTIONS):
        for r, row in enumerate(rows):
            y = y0 + i * (per * th + (per - 1) * gap + group_gap) + r * (th + gap)
            for j, sev in enumerate(sevs):
                k = 1 + i * len(sevs) + j
                img = images[k] if r == 0 else preds[r - 1][k]
                ax = tile(left + j * (tw + gap), y, img[keep], f"corrupted|{row}|{corruption}|{sev}",
                          str(sev) if i == 0 and r == 0 else None, r > 0)
                if j == 0:
                    ax.set_ylabel(short_name(corruption) if r == 0 else row, fontsize=8,
                                  fontweight="bold" if r == 0 else "normal")
    fig.text((left + (len(sevs) * tw + (len(sevs) - 1) * gap) / 2) / width, 1 - (y0 - 0.38) / height,
             "Corrupted (severity)", ha="center", va="bottom", fontweight="bold", fontsize=11)
    class_legend(fig, [p[:, keep] for p in preds] + [s["label"][keep]], ctx["classes"], loc="lower center")
    fig.suptitle(f"Val image {index} ({s['id']}), rows {keep.start}..{keep.stop - 1} of {ctx['size']}: "
                 f"input and predictions", fontsize=10)
    return fig


def fig_contact_sheet(ctx):
    """The notebook's cell 49: 100 val images from --contact-start, 10 a row, each index written on it."""
    ds, start = ctx["dataset"], ctx["contact_start"]
    n = min(CONTACT_MAX, len(ds) - start)
    fig, axes, _ = tile_figure(-(-n // min(10, n)), min(10, n), tile=1.4, gap=0.04, left=0.05, top=0.5,
                               bottom=0.05)
    thumb = min(ctx["size"], 128)  # small thumbnails keep the sheet's file size down
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(eval_sample(ds, start + i, "paper", thumb)[1])
            # As the notebook wrote them: black, outlined in white, centred on the image.
            txt = ax.text(0.5, 0.5, str(start + i), transform=ax.transAxes, ha="center", va="center", fontsize=11)
            txt.set_path_effects([patheffects.Stroke(linewidth=3, foreground="white"), patheffects.Normal()])
    fig.suptitle(f"Val images {start}..{start + n - 1} of {len(ds)} (pick one with --index or --qualitative-index)")
    return fig
