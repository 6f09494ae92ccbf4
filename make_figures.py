"""The figures of the paper's write-up (PROTOCOL.md, "Figures and video") from a results folder.

    python make_figures.py --results results --out figures [--pdf]
    python make_figures.py --results results --out figures --data voc --voc-root /data/voc --index 17 \
        --only voc_sample qualitative_grid

Reads what evaluate_corruptions.py (run.json, metrics.jsonl) and analyze_logits.py (analysis_arrays.npz)
wrote to --results. The image figures also open the val set and the checkpoints: by default those
run.json names (its checkpoints, data set and image size), so a plain call redraws what was evaluated.
Writes to --out one PNG per figure (and the same figure as PDF with --pdf):

    voc_sample.png          val image --index: image | label | each model's prediction
    corruption_grid.png     gaussian_noise, defocus_blur, snow, brightness, elastic_transform x severity 1..5
    miou_vs_severity.png    per model: mean mIoU over the paper's corruptions present vs severity (0 = clean),
                            band = mean +- 1.96 * SD / sqrt(n) over those corruptions (normal 95% interval)
    per_corruption.png      one panel per corruption present: mIoU vs severity 0..5 per model
    explained_variance.png  cumulative explained variance of the clean class-mean logit matrix, components 1..21,
                            from the pass analysis_arrays.npz names (the shortside pass when there was one)
    class_means.png         clean class-mean logits (rows: predicted class, columns: logit), models side by side
    distance_matrices.png   clean distances ||mu_i - mu_j|| between class means, models side by side
    correlations.png        correlation of the 21 logits over the pixels predicted as background and as the
                            3 foreground classes predicted most often (over all models), one row per model
    correlations_notebook.png  the same panels of the notebook's quantity, (Q - mu mu^T) / N scaled by its
                            diagonal (not the covariance; near 1 wherever the mean logits dominate), in the
                            paper's colour range 0.8..1 (lower values drawn as 0.8), for comparison with its figure
    calibration.png         top: one reliability diagram per model (accuracy vs mean confidence in each of the
                            15 bins, bins summed over the 15 corruptions) for clean, severity 3 and severity 5,
                            with the diagonal; bottom: ECE vs severity per model (mean over the corruptions)
    qualitative_grid.png    the five corruptions above at severity 0..3: input | baseline | SCrIBE prediction
    contact_sheet.png       the first 100 val images with their indices, for picking --index

Inputs by figure: ``NEEDS`` below. Images are the "paper" protocol's size x size arrays, corrupted with the
project's seeded rule: the pixels that were scored. qualitative_grid takes the first checkpoint of kind
baseline and of kind scribe; a missing one is replaced by the next unused checkpoint. Every input is checked
before anything is drawn: bad input ends with one ``error:`` line, exit status 2 and no new file; each file is
written to a temporary name and renamed. Matrices drawn side by side share one colour scale (nanmin..nanmax
over all panels; correlations -1..1); light grey marks undefined entries (classes the model never predicted).
Same inputs give the same files.
(correlations.png uses -1..1 and correlations_notebook.png 0.8..1: ``CORRELATION_VIEWS``.)
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only: works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from common import external, results as rf  # noqa: E402
from common.cli import UsageError, add_data_arguments, add_device_arguments, run_cli  # noqa: E402
from common.constants import CLASSES, MODEL_COLOURS, NUM_CLASSES, colorize  # noqa: E402
from common.corruptions import ALL_CORRUPTIONS, CORRUPTIONS, MIN_SIDE, corrupt_image  # noqa: E402
from common.data import eval_sample, resolve_roots, voc_dataset  # noqa: E402
from common.device import resolve_device, use_device  # noqa: E402
from common.models import predict  # noqa: E402
from common.outputs import atomic_write, file_sha256, prepare_output_folder  # noqa: E402
from common.results import CLEAN  # noqa: E402
GRID_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "snow", "brightness", "elastic_transform")
QUALITATIVE_SEVERITIES = (0, 1, 2, 3)
CONTACT_MAX = 100
# What each figure reads: metrics.jsonl, analysis_arrays.npz, the val set, the checkpoints.
NEEDS = {"voc_sample": {"images", "models"}, "corruption_grid": {"images"}, "miou_vs_severity": {"metrics"},
         "per_corruption": {"metrics"}, "explained_variance": {"arrays"}, "class_means": {"arrays"},
         "distance_matrices": {"arrays"}, "correlations": {"arrays"}, "correlations_notebook": {"arrays"},
         "calibration": {"arrays"},
         "qualitative_grid": {"images", "models"}, "contact_sheet": {"images"}}
RC = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9, "xtick.labelsize": 8,
      "ytick.labelsize": 8, "figure.titlesize": 12, "savefig.dpi": 150}
CLASS_FONT = 6  # 21 class names along a ~3 inch matrix side
# Without these the PDF embeds the time of writing and two runs would differ byte for byte.
METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}


# ------------------------------------------------------------------------------------------ helpers

def styles(models):
    """Line style per model name: colour by kind (PROTOCOL.md palette); repeats of a kind get dashes."""
    seen, out = {}, {}
    for m in models:
        k = seen[m["kind"]] = seen.get(m["kind"], -1) + 1
        out[m["name"]] = {"color": MODEL_COLOURS.get(m["kind"], (0, 0, 0)), "linestyle": ("-", "--", ":", "-.")[k % 4],
                          "marker": "os^D"[k % 4], "label": m["name"]}
    return out


def save(fig, out, name, pdf):
    paths = [os.path.join(out, f"{name}.{ext}") for ext in (("png", "pdf") if pdf else ("png",))]
    for path in paths:
        ext = path.rsplit(".", 1)[1]
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=ext, metadata=METADATA[ext]))
    plt.close(fig)
    print(f"wrote {', '.join(paths)}")


def show(ax, img, title=None, label=False):
    """An image (or a class-index label, coloured) without ticks; labels stay crisp with nearest."""
    ax.imshow(colorize(img) if label else img, interpolation="nearest" if label else "antialiased")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)


def class_legend(fig, labels, loc="outside lower center"):
    """One colour patch per class present in any of ``labels`` (255 drawn white, as colorize does)."""
    present = np.unique(np.concatenate([np.ravel(x) for x in labels]))
    handles = [Patch(facecolor=colorize(np.array([c]))[0] / 255, edgecolor="0.4",
                     label=CLASSES[c] if c < NUM_CLASSES else "ignore (255)") for c in present]
    fig.legend(handles=handles, loc=loc, ncol=min(len(handles), 8), frameon=False)


def tile_figure(nrows, ncols, group=None, tile=1.4, gap=0.05, group_gap=0.3, left=0.1, top=0.6, bottom=0.1):
    """Square image axes at fixed positions (sizes in inches), columns in groups of ``group`` separated
    by ``group_gap``. Fixed, because a constrained layout shrinks the tiles beside row labels so that
    rows no longer line up. Returns (figure, axes[nrows, ncols], x centre of each group, figure fraction).
    """
    group = group or ncols
    width = left + ncols * tile + (ncols - 1) * gap + (ncols // group - 1) * (group_gap - gap) + 0.1
    height = top + nrows * tile + (nrows - 1) * gap + bottom
    fig = plt.figure(figsize=(width, height))
    axes = np.empty((nrows, ncols), dtype=object)
    for i in range(nrows):
        for j in range(ncols):
            x = left + j * (tile + gap) + (j // group) * (group_gap - gap)
            y = height - top - (i + 1) * tile - i * gap
            axes[i, j] = fig.add_axes((x / width, y / height, tile / width, tile / height))
    centres = [(left + g * group * (tile + gap) + g * (group_gap - gap) + (group * (tile + gap) - gap) / 2) / width
               for g in range(ncols // group)]
    return fig, axes, centres


# --------------------------------------------------------------------------------------- the numbers

def severity_curves(rows, names):
    """Per model: mean mIoU over the paper's corruptions at each severity 0..5, with a 95% band.

    Severity 0 is the clean row (a point: band of zero width). For s >= 1 the mean is over those of
    the 15 paper corruptions with a non-null mIoU at s (held-out extras left out, as in
    analyze_logits.py's aggregates), and the band is mean +- 1.96 * SD / sqrt(n), SD with ddof=1:
    a normal-approximation 95% interval of the mean over corruptions, NaN with fewer than 2 of them.
    Returns {name: {"severity", "mean", "lower", "upper", "n"}} of arrays over severities 0..5.
    """
    out = {}
    for name in names:
        mean, half, n = np.full(6, np.nan), np.full(6, np.nan), np.zeros(6, dtype=int)
        for s in range(6):
            vals = [r["miou"] for r in rows if r["model"] == name and r["severity"] == s and r.get("miou") is not None
                    and (r["corruption"] == CLEAN if s == 0 else r["corruption"] in CORRUPTIONS)]
            n[s] = len(vals)
            if vals:
                mean[s] = np.mean(vals)
                half[s] = 0.0 if s == 0 else (1.96 * np.std(vals, ddof=1) / np.sqrt(len(vals))
                                              if len(vals) > 1 else np.nan)
        out[name] = {"severity": np.arange(6), "mean": mean, "lower": mean - half, "upper": mean + half, "n": n}
    return out


def shared_limits(matrices):
    """(vmin, vmax) = nanmin/nanmax over all matrices, so equal colours mean equal values in every panel."""
    vals = np.concatenate([np.ravel(m) for m in matrices]).astype(float)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)  # a constant matrix still needs a valid range


def draw_matrices(grid, title, cbar_label, cmap="viridis", limits=None, xlabel="logit", ylabel="predicted class",
                  extend="neither"):
    """A rows x columns grid [[(panel title, 21x21 matrix), ...], ...] on one colour scale, one colorbar.

    ``limits`` None -> ``shared_limits`` of every panel. NaN entries are drawn light grey. ``extend``
    ("min", "max", "both") marks on the colorbar that values beyond ``limits`` are clipped.
    """
    vmin, vmax = limits or shared_limits([m for row in grid for _, m in row])
    cmap = plt.get_cmap(cmap).with_extremes(bad="0.85")
    nr, nc = len(grid), len(grid[0])
    fig, axes = plt.subplots(nr, nc, figsize=(3.4 * nc + 1.3, 3.7 * nr + 0.9), squeeze=False, layout="constrained")
    ticks = np.arange(NUM_CLASSES)
    for i, row in enumerate(grid):
        for j, (panel, m) in enumerate(row):
            ax = axes[i, j]
            im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(panel)
            if not np.isfinite(m).any():
                ax.text(0.5, 0.5, "no data\n(never predicted)", transform=ax.transAxes, ha="center", va="center")
            ax.set_xticks(ticks, CLASSES, rotation=90, fontsize=CLASS_FONT)
            ax.set_yticks(ticks, CLASSES, fontsize=CLASS_FONT)
            # Class names only on the outer panels: the grid shares both axes.
            ax.tick_params(labelbottom=i == nr - 1, labelleft=j == 0)
            if i == nr - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=axes, shrink=min(0.9, 0.5 + 0.15 * nr), label=cbar_label, extend=extend)
    fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------- figures from results

def fig_miou_vs_severity(ctx):
    curves = severity_curves(ctx["rows"], ctx["metric_names"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    for name, c in curves.items():
        st = ctx["styles"][name]
        ax.plot(c["severity"], 100 * c["mean"], **st)
        ax.fill_between(c["severity"], 100 * c["lower"], 100 * c["upper"], color=st["color"], alpha=0.2, lw=0)
    n = max(int(c["n"][1:].max()) for c in curves.values())
    ax.set(xlabel="severity (0 = clean)", ylabel="mIoU (%)", xticks=range(6))
    ax.set_title(f"Mean mIoU over {n} of the {len(CORRUPTIONS)} corruptions\n"
                 "band: mean ± 1.96·SD/√n across corruptions (95%)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def fig_per_corruption(ctx):
    rows, names = ctx["rows"], ctx["metric_names"]
    present = [c for c in ALL_CORRUPTIONS if any(r["corruption"] == c for r in rows)]
    present += sorted({r["corruption"] for r in rows} - set(present) - {CLEAN})  # names we do not know
    nc = min(5, len(present))
    nr = -(-len(present) // nc)
    fig, axes = plt.subplots(nr, nc, figsize=(2.9 * nc + 0.5, 2.3 * nr + 1.0), squeeze=False, sharex=True,
                             sharey=True, layout="constrained")
    miou = {(r["model"], r["corruption"], r["severity"]): r.get("miou") for r in rows}
    for ax, corruption in zip(axes.flat, present):
        for name in names:
            pts = [(s, miou.get((name, CLEAN if s == 0 else corruption, s))) for s in range(6)]
            pts = [(s, 100 * v) for s, v in pts if v is not None]
            if pts:
                ax.plot(*zip(*pts), **{**ctx["styles"][name], "markersize": 4})
        ax.set_title(corruption + ("" if corruption in CORRUPTIONS else " (held out)"))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(present):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set(xlabel="severity", xticks=range(6))
    for ax in axes[:, 0]:
        ax.set_ylabel("mIoU (%)")
    fig.legend(handles=[Line2D([], [], **ctx["styles"][n]) for n in names], loc="outside lower center",
               ncol=len(names))
    fig.suptitle("mIoU per corruption vs severity (0 = clean)")
    return fig


def array(ctx, name, key):
    """``<model>/clean/<key>`` of analysis_arrays.npz, or NaN when the model had no clean logits."""
    ndim = {"count": 1, "explained_variance": 1, "explained_variance_count": 1, "mean": 2, "distance": 2,
            "correlation": 3, "correlation_notebook": 3}[key]
    return ctx["arrays"].get(f"{name}/clean/{key}", np.full((NUM_CLASSES,) * ndim, np.nan))


def fig_explained_variance(ctx):
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    comps = np.arange(1, NUM_CLASSES + 1)
    for name in ctx["array_names"]:
        # Classes predicted in the pass the PCA came from (older arrays: the main sweep's clean count).
        count_key = ("explained_variance_count" if f"{name}/clean/explained_variance_count" in ctx["arrays"]
                     else "count")
        ev, used = array(ctx, name, "explained_variance"), int((array(ctx, name, count_key) > 0).sum())
        note = f"classes predicted: {used}" + ("" if np.isfinite(ev).any() else ", undefined below 2")
        ax.plot(comps, ev, **{**ctx["styles"][name], "label": f"{name} ({note})", "markersize": 4})
    ax.set(xlabel="number of principal components", ylabel="cumulative explained variance ratio",
           xticks=comps, ylim=(0, 1.03), xlim=(0.5, NUM_CLASSES + 0.5))
    source = str(ctx["arrays"].get("explained_variance_source", "clean condition of the main sweep"))
    ax.set_title("PCA of the clean class-mean logit matrix (rows: predicted classes)\n"
                 f"from the {source.split(' at ')[0]}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def fig_class_means(ctx):
    return draw_matrices([[(n, array(ctx, n, "mean")) for n in ctx["array_names"]]],
                         "Class-mean logits on clean val (row n: mean logit vector over pixels predicted n; "
                         "grey: never predicted)", "logit")


def fig_distance_matrices(ctx):
    return draw_matrices([[(n, array(ctx, n, "distance")) for n in ctx["array_names"]]],
                         "Distances between clean class-mean logit vectors ||μi − μj|| (grey: never predicted)",
                         "Euclidean distance", cmap="magma", xlabel="predicted class")


# The two correlation figures: which analysis_arrays.npz matrix, and how it is drawn.
CORRELATION_VIEWS = {
    "correlation": {"limits": (-1, 1), "cmap": "RdBu_r", "extend": "neither", "cbar": "correlation",
                    "title": "Correlation between the 21 logits over the pixels predicted as each column's class "
                             "(clean val; grey: undefined)"},
    # PROTOCOL.md: the paper's figure shows the notebook's quantity, on a 0.8-1 colour scale.
    "correlation_notebook": {
        "limits": (0.8, 1.0), "cmap": "viridis", "extend": "min", "cbar": "notebook's 'correlation' (below 0.8: 0.8)",
        "title": "The notebook's 'correlation' of the 21 logits, as in the paper's figure: (Q − μμᵀ)/N scaled "
                 "by its diagonal,\nnot the covariance Q/N − μμᵀ (independent logits of mean −8, SD 2 give 0.94 "
                 "here, 0 as a correlation); clean val, grey: undefined"},
}


def fig_correlations(ctx, key="correlation"):
    view = CORRELATION_VIEWS[key]
    names = ctx["array_names"]
    counts = sum(np.nan_to_num(array(ctx, n, "count")) for n in names)
    fg = [int(k) for k in np.argsort(-counts[1:], kind="stable")[:3] + 1 if counts[k] > 0]
    grid = [[(f"{n}: {CLASSES[k]}\n{int(np.nan_to_num(array(ctx, n, 'count')[k])):,} px",
              array(ctx, n, key)[k]) for k in [0] + fg] for n in names]
    return draw_matrices(grid, view["title"], view["cbar"], cmap=view["cmap"], limits=view["limits"],
                         ylabel="logit", extend=view["extend"])


def fig_correlations_notebook(ctx):
    return fig_correlations(ctx, "correlation_notebook")


# The reliability diagrams' conditions: clean and two severities (bins summed over the corruptions).
RELIABILITY_SEVERITIES = (0, 3, 5)
RELIABILITY_STYLE = {0: {"color": "0.2", "linestyle": "-", "marker": "o"},
                     3: {"color": (0.90, 0.62, 0.0), "linestyle": "--", "marker": "s"},
                     5: {"color": (0.80, 0.47, 0.65), "linestyle": ":", "marker": "^"}}


def reliability(ctx, name, severity):
    """(mean confidence, accuracy, pixels) of the non-empty bins of one model at one severity, from the
    bins analyze_logits.py summed over the corruptions; None when the arrays have none."""
    key = f"{name}/calibration/{severity}"
    if f"{key}/count" not in ctx["arrays"]:
        return None
    count, conf, acc = (np.asarray(ctx["arrays"][f"{key}/{k}"], dtype=np.float64)
                        for k in ("count", "conf_sum", "acc_sum"))
    kept = count > 0
    return conf[kept] / count[kept], acc[kept] / count[kept], count[kept]


def check_calibration(ctx):
    """calibration.png needs analyze_logits.py's calibration arrays (older analyses have none)."""
    if not any(f"{n}/calibration/ece_by_severity" in ctx["arrays"] for n in ctx["array_names"]):
        raise UsageError(f"{os.path.join(ctx['results_dir'], 'analysis_arrays.npz')}: no calibration arrays (written "
                         f"by an analyze_logits.py from before calibration, or results without ece/nll/brier); rerun "
                         f"analyze_logits.py --results {ctx['results_dir']}")


def fig_calibration(ctx):
    names = ctx["array_names"]
    fig = plt.figure(figsize=(max(7.0, 3.0 * len(names) + 0.6), 6.8), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(1.25, 1))
    axes = np.atleast_1d(top.subplots(1, len(names), sharex=True, sharey=True))
    for ax, name in zip(axes, names):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, label="perfect calibration")
        drawn = False
        for s in RELIABILITY_SEVERITIES:
            rel = reliability(ctx, name, s)
            if rel is None:
                continue
            label = "clean" if s == 0 else f"severity {s}"
            ax.plot(rel[0], rel[1], **RELIABILITY_STYLE[s], markersize=4, label=label)
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no calibration bins", transform=ax.transAxes, ha="center", va="center")
        ax.set(title=name, xlim=(0, 1), ylim=(0, 1), xlabel="confidence (bin mean)", aspect="equal")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=7)
    top.suptitle("Reliability of the top-1 softmax confidence\n(15 bins over the non-255 pixels; severities 3 and "
                 "5: bins summed over the corruptions)", fontsize=10)
    ax = bottom.subplots()
    for name in names:
        ece = np.asarray(ctx["arrays"].get(f"{name}/calibration/ece_by_severity", np.full(6, np.nan)), float)
        ax.plot(np.arange(6), 100 * ece, **ctx["styles"][name])
    ax.set(xlabel="severity (0 = clean)", ylabel="ECE (%)", xticks=range(6))
    ax.set_title("ECE vs severity: clean, then the mean over the corruptions of each condition's ECE")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


# ----------------------------------------------------------------------------- figures from images

def corrupted(ctx, corruption, severity):
    """The --index image under a condition, computed once per run (the grids share conditions)."""
    key = (corruption, severity)
    if key not in ctx["cache"]:
        ctx["cache"][key] = corrupt_image(ctx["image"], ctx["image_id"], corruption, severity)
    return ctx["cache"][key]


def fig_voc_sample(ctx):
    models = ctx["models"]
    preds = [predict(m["model"], ctx["image"][None], ctx["device"])[0] for m in models]
    fig, axes = plt.subplots(1, 2 + len(models), figsize=(2.6 * (2 + len(models)), 3.4), layout="constrained")
    show(axes[0], ctx["image"], f"image {ctx['image_id']}")
    show(axes[1], ctx["label"], "label", label=True)
    for ax, m, p in zip(axes[2:], models, preds):
        show(ax, p, f"{m['name']} prediction", label=True)
    class_legend(fig, [ctx["label"]] + preds)
    fig.suptitle(f"VOC val image {ctx['index']} ({ctx['size']}x{ctx['size']}, as evaluated)")
    return fig


def fig_corruption_grid(ctx):
    fig, axes, _ = tile_figure(len(GRID_CORRUPTIONS), 5, tile=1.7, left=0.35, top=0.75)
    for i, corruption in enumerate(GRID_CORRUPTIONS):
        for j, s in enumerate(range(1, 6)):
            show(axes[i, j], corrupted(ctx, corruption, s), f"severity {s}" if i == 0 else None)
        axes[i, 0].set_ylabel(corruption)
    fig.suptitle(f"Corruptions of val image {ctx['index']} ({ctx['image_id']}) by severity")
    return fig


def fig_qualitative_grid(ctx):
    # PROTOCOL.md: input, baseline, SCrIBE. By kind; where one is missing, the next checkpoint stands in.
    models = ctx["models"]
    chosen = [next((m for m in models if m["kind"] == k), None) for k in ("baseline", "scribe")]
    spare = iter([m for m in models if all(m is not c for c in chosen)])
    chosen = [m for m in (c or next(spare, None) for c in chosen) if m is not None]
    conds = [(c, s) for c in GRID_CORRUPTIONS for s in QUALITATIVE_SEVERITIES]
    images = np.stack([corrupted(ctx, c, s) for c, s in conds])
    preds = [predict(m["model"], images, ctx["device"]) for m in chosen]
    per = 1 + len(chosen)
    fig, axes, centres = tile_figure(len(GRID_CORRUPTIONS), per * len(QUALITATIVE_SEVERITIES), group=per,
                                     tile=1.35, left=0.35, top=1.0, bottom=0.5)
    for k, (corruption, s) in enumerate(conds):
        i, j = divmod(k, len(QUALITATIVE_SEVERITIES))
        show(axes[i, j * per], images[k], "input" if i == 0 else None)
        for n, m in enumerate(chosen):
            show(axes[i, j * per + 1 + n], preds[n][k], m["name"] if i == 0 else None, label=True)
        if j == 0:
            axes[i, 0].set_ylabel(corruption, fontsize=9)
    height = fig.get_size_inches()[1]
    for x, s in zip(centres, QUALITATIVE_SEVERITIES):
        fig.text(x, 1 - 0.62 / height, "clean (severity 0)" if s == 0 else f"severity {s}", ha="center",
                 fontsize=11, fontweight="bold")
    class_legend(fig, preds, loc="lower center")
    fig.suptitle(f"Val image {ctx['index']} ({ctx['image_id']}): input and predictions under corruption")
    return fig


def fig_contact_sheet(ctx):
    ds = ctx["dataset"]
    n = min(CONTACT_MAX, len(ds))
    fig, axes, _ = tile_figure(-(-n // min(10, n)), min(10, n), tile=1.4, gap=0.04, left=0.05, top=0.5,
                               bottom=0.05)
    thumb = min(ctx["size"], 128)  # small thumbnails keep the sheet's file size down
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(eval_sample(ds, i, "paper", thumb)[1])
            ax.text(0.03, 0.97, str(i), transform=ax.transAxes, ha="left", va="top", fontsize=9, color="white",
                    bbox={"facecolor": "black", "alpha": 0.7, "pad": 1.5, "linewidth": 0})
    fig.suptitle(f"Val images 0..{n - 1} of {len(ds)} (pick one with --index)")
    return fig


# Every figure by its name (the file it writes, the --only choice), in the order they are drawn.
FIGURES = {"voc_sample": fig_voc_sample, "corruption_grid": fig_corruption_grid,
           "miou_vs_severity": fig_miou_vs_severity, "per_corruption": fig_per_corruption,
           "explained_variance": fig_explained_variance, "class_means": fig_class_means,
           "distance_matrices": fig_distance_matrices, "correlations": fig_correlations,
           "correlations_notebook": fig_correlations_notebook, "calibration": fig_calibration,
           "qualitative_grid": fig_qualitative_grid, "contact_sheet": fig_contact_sheet}
assert FIGURES.keys() == NEEDS.keys()


# ------------------------------------------------------------------------------------------- inputs

def read_results(args, wanted):
    """run.json, metrics rows and analysis arrays as far as the wanted figures need them, each checked
    (common/results.py): a damaged file, rows that run.json does not describe, or arrays that analyze_logits.py
    computed from other checkpoints than run.json lists end with one line naming the file and what rewrites it."""
    d = args.results
    if not os.path.isdir(d):
        raise UsageError(f"--results {d}: no such folder; run evaluate_corruptions.py --out {d} first")
    ctx = {"run": {}, "rows": [], "arrays": {}}
    run_path = os.path.join(d, "run.json")
    ctx["run"] = rf.read_run(run_path) or {}
    needs = set().union(*(NEEDS[f] for f in wanted))
    if "metrics" in needs:
        ctx["metrics_path"] = os.path.join(d, "metrics.jsonl")
        ctx["rows"] = rf.read_metrics(ctx["metrics_path"])
        rf.check_rows_match_run(ctx["rows"], ctx["run"] or None, ctx["metrics_path"], run_path)
        if "per_corruption" in wanted and all(r["corruption"] == CLEAN for r in ctx["rows"]):
            raise UsageError(f"{ctx['metrics_path']}: only clean rows; per_corruption needs corrupted ones")
    if "arrays" in needs:
        ctx["arrays"], ctx["array_names"] = read_arrays(d, wanted, ctx["run"], run_path)
    # Display names and kinds: run.json's order, then any model only the metrics or arrays know.
    models = [{"name": m["name"], "kind": m.get("kind")} for m in ctx["run"].get("models", [])]
    kinds = {r["model"]: r.get("kind") for r in ctx["rows"]}
    for name in list(kinds) + ctx.get("array_names", []):
        if name not in [m["name"] for m in models]:
            models.append({"name": name, "kind": kinds.get(name)})
    ctx["styles"] = styles(models)
    ctx["metric_names"] = [m["name"] for m in models if m["name"] in kinds]
    return ctx


def read_arrays(d, wanted, run, run_path):
    """analysis_arrays.npz of results folder ``d`` and the models it lists, checked to come from the run that
    run.json describes."""
    path = os.path.join(d, "analysis_arrays.npz")
    if not os.path.exists(path):
        raise UsageError(f"{path}: missing; run analyze_logits.py --results {d} first "
                         f"(needed by {', '.join(f for f in wanted if 'arrays' in NEEDS[f])})")
    fix = f"rewrite it with analyze_logits.py --results {d}"
    arrays = rf.read_analysis_arrays(path, fix)
    names = [str(n) for n in arrays.get("models", [])]
    if not names:
        raise UsageError(f"{path}: lists no models; rerun analyze_logits.py --results {d}")
    # The arrays must come from this folder's run: analysis.json, written with them, names its checkpoints.
    analysis = rf.read_analysis(os.path.join(d, "analysis.json"), fix)
    source = (analysis or {}).get("source") or {}
    then = {m.get("name"): m.get("checkpoint_sha256") for m in source.get("models", []) if isinstance(m, dict)}
    now = {m["name"]: m.get("sha256") for m in run.get("models", [])}
    other = [n for n in then if n in now and then[n] != now[n]]
    if other or (then and now and set(names) - set(now)):
        raise UsageError(f"{path}: computed from another run than {run_path} describes (model "
                         f"{(other or sorted(set(names) - set(now)))[0]}); {fix}")
    # Tables made while the sweep was still writing (or before it recomputed a condition) are stale.
    metrics = os.path.join(d, "metrics.jsonl")
    if source.get("metrics_sha256") and os.path.isfile(metrics) and file_sha256(metrics) != source["metrics_sha256"]:
        raise UsageError(f"{path}: computed from an older {metrics} (the sweep has added or recomputed results "
                         f"since); {fix}")
    return arrays, names


def read_images(args, ctx, wanted):
    """The val set, the --index image, and (for the prediction figures) the models."""
    run = ctx["run"]
    if args.data:
        voc_root, _ = resolve_roots(args.data, args.voc_root, None, args.synthetic_root, need_sbd=False, quiet=True)
    elif run.get("voc_root"):
        voc_root = run["voc_root"]  # the val set that was evaluated
    else:
        raise UsageError(f"--data: {args.results}/run.json names no val set; pass --data voc --voc-root R "
                         f"or --data synthetic")
    ctx["dataset"] = ds = voc_dataset(voc_root, "val")
    ctx["size"] = size = args.size or run.get("size") or 224  # run.json size is null under --protocol native
    if size < MIN_SIDE:
        raise UsageError(f"--size {size}: the corruptions need at least {MIN_SIDE}")
    if not 0 <= args.index < len(ds):
        raise UsageError(f"--index {args.index}: the val set has {len(ds)} images (0..{len(ds) - 1}); "
                         f"contact_sheet.png shows them with their indices")
    ctx["index"] = args.index
    ctx["image_id"], ctx["image"], ctx["label"] = eval_sample(ds, args.index, "paper", size)
    device = resolve_device(args.device)
    use_device(device)
    ctx["cache"], ctx["device"], ctx["models"] = {}, str(device), []
    if any("models" in NEEDS[f] for f in wanted):
        ctx["models"] = load_models(args, run, ctx["device"])


def load_models(args, run, device):
    """[{name, kind, model}] of --checkpoints, else of the models run.json lists (as they were evaluated)."""
    known = {m.get("sha256"): m for m in run.get("models", [])}
    if args.checkpoints:   # checkpoints or torchvision:/module:factory specs (common/external.py)
        options = external.model_options(args.checkpoints, args.weights_file, args.model_kind)
        entries = [(spec, None, opts) for spec, opts in zip(args.checkpoints, options)]
    else:                  # as evaluated: run.json's files, or its specs with their weights file and kind
        if not all(isinstance(m.get("path"), str) and m["path"] for m in run.get("models", [])):
            raise UsageError(f"{args.results}/run.json: a model without its checkpoint path (damaged?); pass "
                             f"--checkpoints with the models that were evaluated")
        entries = [(m["path"], m, None) for m in run.get("models", [])]
    if not entries:
        raise UsageError(f"--checkpoints: none given and {args.results}/run.json lists none; pass the "
                         f"checkpoints written by train.py (or torchvision:/module:factory specs)")
    models = []
    for spec, recorded, opts in entries:
        if external.spec_kind(spec) == "checkpoint" and not os.path.isfile(spec):
            raise UsageError(f"checkpoint {spec}: no such file; pass --checkpoints with the files that were "
                             f"evaluated (run.json lists them)")
        if recorded is not None:
            model, info = external.load_recorded(recorded, device)
        else:
            model, info = external.load_spec(spec, device, *opts)
        # The display name of the evaluation when this exact model was evaluated, else its own.
        info = known.get(info["sha256"]) or info
        models.append({"name": info["name"], "kind": model.config["kind"], "model": model})
    return models


# --------------------------------------------------------------------------------------------- main

def main(args):
    wanted = [f for f in FIGURES if f in (args.only or FIGURES)]
    print(f"arguments: {json.dumps(vars(args), sort_keys=True)}")
    ctx = read_results(args, wanted)
    if "calibration" in wanted:
        check_calibration(dict(ctx, results_dir=args.results))
    if any("images" in NEEDS[f] for f in wanted):
        read_images(args, ctx, wanted)
    prepare_output_folder(args.out)
    with plt.rc_context(RC):
        for name in wanted:
            save(FIGURES[name](ctx), args.out, name, args.pdf)


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default="results",
                   help="an evaluate_corruptions.py --out folder (analyze_logits.py run on it for the matrix figures)")
    p.add_argument("--out", default="figures", help="folder for the PNG (and PDF) files")
    p.add_argument("--only", nargs="+", choices=list(FIGURES), default=None, metavar="NAME",
                   help=f"draw only these figures (default: all): {', '.join(FIGURES)}")
    p.add_argument("--pdf", action="store_true", help="also write each figure as PDF (vector, for the paper)")
    add_data_arguments(p, None, help="val set for the image figures; default: the one run.json records")
    p.add_argument("--checkpoints", nargs="+", default=None, metavar="SPEC",
                   help="models for voc_sample and qualitative_grid: checkpoints, torchvision:<builder>[:<weights>] "
                        "or module.path:factory; default: the models in run.json (with their weights file and kind)")
    external.add_model_arguments(p, "--checkpoints")
    p.add_argument("--index", type=int, default=0,
                   help="val image shown in the image figures (contact_sheet.png shows the indices)")
    p.add_argument("--size", type=int, default=None,
                   help="image side (paper protocol); default: run.json's size, 224 if it has none")
    add_device_arguments(p, amp=False, default="cpu")   # a few predictions: the CPU is enough
    return p


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
