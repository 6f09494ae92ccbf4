"""The figures of the paper's write-up (PROTOCOL.md, "Figures and video") from a results folder.

    python make_figures.py --results results --out figures [--pdf]
    python make_figures.py --results results --out figures --data voc --voc-root /data/voc --index 17 \
        --qualitative-index 17 --only voc_sample qualitative_grid

Reads what evaluate_corruptions.py (run.json, metrics.jsonl) and analyze_logits.py (analysis_arrays.npz)
wrote to --results. The image figures also open the val set and the checkpoints: by default those
run.json names (its checkpoints, data set and image size), so a plain call redraws what was evaluated.
Writes to --out one PNG per figure (and the same figure as PDF with --pdf):

    voc_sample.png          val image --index (default 687, the notebook's): image | label | each model's prediction
    corruption_grid.png     the notebook's cell 22 on val image --index: gaussian_noise, defocus_blur, snow,
                            brightness, elastic_transform x severity 1..5, each corrupted at size x size and
                            resized back to the image's own size (bicubic, Pillow's default the notebook used)
    miou_vs_severity.png    per model: mean mIoU (a fraction) over the paper's corruptions present vs severity
                            (0 = clean); band: the notebook's seaborn lineplot default, a bootstrap 95% interval
                            of that mean (1000 resamples of the corruptions, seeded by --band-seed; written out
                            with numpy, seaborn is not needed); --band normal: mean +- 1.96 * SD / sqrt(n)
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
    correlation_class.png   the notebook's cell 45: class --correlation-class (default 13, horse), the notebook's
                            quantity per model in -1..1 (plasma), and below it the true correlation, same scale
    calibration.png         top: one reliability diagram per model (accuracy vs mean confidence in each of the
                            15 bins, bins summed over the 15 corruptions) for clean, severity 3 and severity 5,
                            with the diagonal; bottom: ECE vs severity per model (mean over the corruptions)
    readings.png            per model (columns): reliability diagrams of the softmax and of the sigmoid reading
                            (docs/calibration.md) for clean and severity --reliability-severity (bins summed over
                            the corruptions), and after temperature scaling at that severity; bottom row: the
                            risk-coverage curves (pixel error among the most confident pixels against the share
                            kept) of both readings, clean and at that severity, from the fine log-odds bins
    qualitative_grid.png    the notebook's cell 50 on val image --qualitative-index (default 790): an "Original"
                            panel (clean input with its label as a 0.4-scale inset in the bottom-right corner |
                            baseline | SCrIBE prediction) over a "Corrupted" panel (severities 1..3 across; per
                            corruption above, rows input, baseline, SCrIBE); every tile without its top
                            --crop-top 50 and bottom --crop-bottom 1 rows (rows of a 224-px image, scaled to --size)
    contact_sheet.png       the notebook's cell 49: 100 val images from --contact-start (default 700), 10 a row,
                            each with its index, for picking --index / --qualitative-index
Indices: the defaults are the notebook's (VOC val has 1449 images); where one is beyond a smaller val set
(the synthetic one has 100), the figure uses it modulo the set's size (the contact sheet: 0) and prints one
``note:`` line saying which index it used. An index passed beyond the set is refused.

Inputs by figure: ``NEEDS`` below. Images are the "paper" protocol's size x size arrays, corrupted with the
project's seeded rule: the pixels that were scored (corruption_grid then resizes them back). qualitative_grid
takes the first checkpoint of kind baseline and of kind scribe; a missing one is replaced by the next unused one. Every input is checked
before anything is drawn: bad input ends with one ``error:`` line, exit status 2 and no new file; each file is
written to a temporary name and renamed. Matrices drawn side by side share one colour scale (nanmin..nanmax
over all panels; correlations -1..1); light grey marks undefined entries (classes the model never predicted).
Same inputs give the same files.
(correlations.png and correlation_class.png use -1..1, correlations_notebook.png 0.8..1: ``CORRELATION_VIEWS``.)
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only: works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from common import model_specs, results as rf  # noqa: E402
from common.cli import UsageError, add_data_arguments, add_device_arguments, run_cli  # noqa: E402
from common.constants import CLASSES, MODEL_COLOURS, NUM_CLASSES, colorize  # noqa: E402
from common.corruptions import (ALL_CORRUPTIONS, CORRUPTION_CODES, CORRUPTIONS, DEFAULT_CODE, MIN_SIDE,  # noqa: E402
                                corrupt_image)
from common.data import eval_sample, resolve_roots, voc_dataset  # noqa: E402
from common.device import resolve_device, use_device  # noqa: E402
from common.models import predict  # noqa: E402
from common.folders import atomic_write, file_sha256, prepare_output_folder  # noqa: E402
from common.results import CLEAN  # noqa: E402
GRID_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "snow", "brightness", "elastic_transform")  # 0, 3, 7, 10, 12
QUALITATIVE_SEVERITIES = (0, 1, 2, 3)   # 0 in the "Original" panel, 1..3 in the "Corrupted" one
CONTACT_MAX = 100
# The notebook's own choices (PROTOCOL.md, "Figures and video"): cell 22's corruption grid on val image 687,
# cell 50's qualitative grid on 790 with 50 rows cut from the top and 1 from the bottom of its 224-px tiles and
# the label as a 0.4-scale inset, cell 49's contact sheet from 700 (delta), cell 45's class 13 (cor[-8:-7]).
NOTEBOOK_GRID_INDEX, NOTEBOOK_QUALITATIVE_INDEX, NOTEBOOK_CONTACT_START = 687, 790, 700
NOTEBOOK_CROP = (50, 1)          # (crop_top, crop_bot) in rows of a 224-px image
NOTEBOOK_SIDE = 224
INSET_SCALE = 0.4
NOTEBOOK_CORRELATION_CLASS = 13  # horse
BOOTSTRAP_RESAMPLES, BOOTSTRAP_LEVEL = 1000, 95   # seaborn lineplot's defaults (n_boot=1000, ci=95)
# What each figure reads: metrics.jsonl, analysis_arrays.npz, the val set, the checkpoints.
NEEDS = {"voc_sample": {"images", "models"}, "corruption_grid": {"images"}, "miou_vs_severity": {"metrics"},
         "per_corruption": {"metrics"}, "explained_variance": {"arrays"}, "class_means": {"arrays"},
         "distance_matrices": {"arrays"}, "correlations": {"arrays"}, "correlations_notebook": {"arrays"},
         "correlation_class": {"arrays"}, "calibration": {"arrays"}, "readings": {"arrays"},
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


def tile_figure(nrows, ncols, group=None, tile=1.4, gap=0.05, group_gap=0.3, left=0.1, top=0.6, bottom=0.1,
                aspect=1.0):
    """Image axes of ``tile`` x ``tile * aspect`` inches at fixed positions, columns in groups of ``group``
    separated by ``group_gap``. Fixed, because a constrained layout shrinks the tiles beside row labels so that
    rows no longer line up. Returns (figure, axes[nrows, ncols], x centre of each group, figure fraction).
    """
    group = group or ncols
    tile_h = tile * aspect
    width = left + ncols * tile + (ncols - 1) * gap + (ncols // group - 1) * (group_gap - gap) + 0.1
    height = top + nrows * tile_h + (nrows - 1) * gap + bottom
    fig = plt.figure(figsize=(width, height))
    axes = np.empty((nrows, ncols), dtype=object)
    for i in range(nrows):
        for j in range(ncols):
            x = left + j * (tile + gap) + (j // group) * (group_gap - gap)
            y = height - top - (i + 1) * tile_h - i * gap
            axes[i, j] = fig.add_axes((x / width, y / height, tile / width, tile_h / height))
    centres = [(left + g * group * (tile + gap) + g * (group_gap - gap) + (group * (tile + gap) - gap) / 2) / width
               for g in range(ncols // group)]
    return fig, axes, centres


# --------------------------------------------------------------------------------------- the numbers

def bootstrap_interval(values, seed=0, n_boot=BOOTSTRAP_RESAMPLES, level=BOOTSTRAP_LEVEL):
    """(low, high): the notebook's band, seaborn lineplot's default ``ci=95``: the ``(100 - level) / 2`` and
    ``(100 + level) / 2`` percentiles of the means of ``n_boot`` resamples (with replacement, of the same size)
    of ``values``. seaborn drew them unseeded; here from ``numpy.random.default_rng(seed)``, so that two runs
    draw the same band. One value gives a band of zero width, as in seaborn."""
    vals = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = vals[rng.integers(0, len(vals), (n_boot, len(vals)))].mean(axis=1)
    low, high = np.percentile(means, (50 - level / 2, 50 + level / 2))
    return float(low), float(high)


def severity_curves(rows, names, band="bootstrap", seed=0):
    """Per model: mean mIoU over the paper's corruptions at each severity 0..5, with a 95% band.

    Severity 0 is the clean row (a point: band of zero width). For s >= 1 the mean is over those of
    the 15 paper corruptions with a non-null mIoU at s (held-out extras left out, as in
    analyze_logits.py's aggregates). The band: ``band="bootstrap"`` (the notebook's seaborn lineplot)
    ``bootstrap_interval`` of those values; ``band="normal"`` mean +- 1.96 * SD / sqrt(n), SD with ddof=1,
    a normal-approximation 95% interval of the mean, NaN with fewer than 2 corruptions.
    Returns {name: {"severity", "mean", "lower", "upper", "n"}} of arrays over severities 0..5.
    """
    out = {}
    for name in names:
        mean, lower, upper, n = np.full(6, np.nan), np.full(6, np.nan), np.full(6, np.nan), np.zeros(6, dtype=int)
        for s in range(6):
            vals = [r["miou"] for r in rows if r["model"] == name and r["severity"] == s and r.get("miou") is not None
                    and (r["corruption"] == CLEAN if s == 0 else r["corruption"] in CORRUPTIONS)]
            n[s] = len(vals)
            if not vals:
                continue
            mean[s] = np.mean(vals)
            if s == 0:
                lower[s] = upper[s] = mean[s]
            elif band == "bootstrap":
                lower[s], upper[s] = bootstrap_interval(vals, seed)
            elif len(vals) > 1:
                half = 1.96 * np.std(vals, ddof=1) / np.sqrt(len(vals))
                lower[s], upper[s] = mean[s] - half, mean[s] + half
        out[name] = {"severity": np.arange(6), "mean": mean, "lower": lower, "upper": upper, "n": n}
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
    # The notebook's cell 52: seaborn lineplot of mIoU (a fraction) against severity, hue = model.
    band, seed = ctx.get("band", "bootstrap"), ctx.get("band_seed", 0)
    curves = severity_curves(ctx["rows"], ctx["metric_names"], band, seed)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    for name, c in curves.items():
        st = ctx["styles"][name]
        ax.plot(c["severity"], c["mean"], **st)
        ax.fill_between(c["severity"], c["lower"], c["upper"], color=st["color"], alpha=0.2, lw=0)
    n = max(int(c["n"][1:].max()) for c in curves.values())
    ax.set(xlabel="severity (0 = clean)", ylabel="mIoU", xticks=range(6))
    how = (f"bootstrap 95% interval of the mean ({BOOTSTRAP_RESAMPLES} resamples of the corruptions, seed {seed})"
           if band == "bootstrap" else "mean ± 1.96·SD/√n across corruptions (95%)")
    ax.set_title(f"Mean mIoU over {n} of the {len(CORRUPTIONS)} corruptions\nband: {how}", fontsize=9)
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


def fig_correlation_class(ctx):
    """The notebook's cell 45: one class's matrix of its 'correlation' (the notebook's quantity) per model in
    -1..1, plasma; below it the same class's correlation, on the same scale."""
    k = ctx.get("correlation_class", NOTEBOOK_CORRELATION_CLASS)
    names = ctx["array_names"]
    grid = [[(f"{n}: notebook's", array(ctx, n, "correlation_notebook")[k]) for n in names],
            [(f"{n}: correlation", array(ctx, n, "correlation")[k]) for n in names]]
    return draw_matrices(grid, f"Class {k} ({CLASSES[k]}), clean val: the notebook's 'correlation' of the 21 logits "
                         f"over its pixels (top, its cell 45)\nbeside their correlation (bottom), both on -1..1; "
                         f"grey: undefined", "correlation", cmap="plasma", limits=(-1, 1), ylabel="logit")


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


READINGS_SHOWN = ("softmax", "sigmoid")


def reading_bins(ctx, name, variant, severity):
    """(mean confidence, accuracy) of the non-empty 15 bins of one reading at one severity, or None."""
    key = f"{name}/readings/{variant}/{severity}"
    if f"{key}/count" not in ctx["arrays"]:
        return None
    count, conf, acc = (np.asarray(ctx["arrays"][f"{key}/{k}"], dtype=np.float64)
                        for k in ("count", "conf_sum", "acc_sum"))
    kept = count > 0
    return conf[kept] / count[kept], acc[kept] / count[kept]


def risk_coverage(ctx, name, variant, severity):
    """(coverage, risk) at every fine-bin boundary, most confident pixels first, or None: coverage = pixels
    kept / all, risk = errors among them / pixels kept (docs/calibration.md, AURC)."""
    key = f"{name}/readings/{variant}/{severity}"
    if f"{key}/fine_count" not in ctx["arrays"]:
        return None
    n = np.asarray(ctx["arrays"][f"{key}/fine_count"], dtype=np.float64)[::-1]
    w = n - np.asarray(ctx["arrays"][f"{key}/fine_correct"], dtype=np.float64)[::-1]
    kept = n > 0
    if not kept.any():
        return None
    cn, cw = np.cumsum(n)[kept], np.cumsum(w)[kept]
    return np.r_[0.0, cn / cn[-1]], np.r_[cw[0] / cn[0], cw / cn]


def has_readings(ctx):
    return any(f"{n}/readings/softmax/0/count" in ctx["arrays"] for n in ctx["array_names"])


def fig_readings(ctx):
    names, s = ctx["array_names"], ctx["reliability_severity"]
    fig, axes = plt.subplots(3, len(names), figsize=(max(6.0, 3.0 * len(names) + 0.6), 9.2), layout="constrained",
                             squeeze=False)
    styles = {"clean": {"color": "0.2", "linestyle": "-", "marker": "o"},
              "sev": {"color": (0.90, 0.62, 0.0), "linestyle": "--", "marker": "s"},
              "ts": {"color": (0.0, 0.45, 0.70), "linestyle": ":", "marker": "^"}}
    for col, name in enumerate(names):
        for row, reading in enumerate(READINGS_SHOWN):
            ax = axes[row, col]
            ax.plot([0, 1], [0, 1], color="0.6", lw=1)
            for style, variant, sev, label in (("clean", reading, 0, "clean"), ("sev", reading, s, f"severity {s}"),
                                               ("ts", f"{reading}_ts", s, f"severity {s}, temperature-scaled")):
                rel = reading_bins(ctx, name, variant, sev)
                if rel is not None:
                    ax.plot(*rel, **styles[style], markersize=4, label=label)
            ax.set(title=f"{name}: {reading} reading", xlim=(0, 1), ylim=(0, 1), aspect="equal",
                   xlabel="confidence (bin mean)", ylabel="accuracy" if col == 0 else None)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.legend(loc="upper left", fontsize=7)
        ax = axes[2, col]
        for reading, ls in zip(READINGS_SHOWN, ("-", "--")):
            for sev, colour in ((0, "0.2"), (s, (0.90, 0.62, 0.0))):
                rc = risk_coverage(ctx, name, reading, sev)
                if rc is not None:
                    ax.plot(*rc, color=colour, linestyle=ls, lw=1.2,
                            label=f"{reading}, {'clean' if sev == 0 else f'severity {s}'}")
        ax.set(title=f"{name}: risk-coverage", xlim=(0, 1), ylim=(0, None), xlabel="coverage (share of pixels kept)",
               ylabel="risk (error among kept)" if col == 0 else None)
        ax.grid(alpha=0.3)
        if col == 0:
            ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(f"Calibration in two readings (docs/calibration.md)\nseverity {s}: bins summed over the corruptions",
                 fontsize=10)
    return fig


# ----------------------------------------------------------------------------- figures from images

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
    show(axes[1], s["label"], "label", label=True)
    for ax, m, p in zip(axes[2:], models, preds):
        show(ax, p, f"{m['name']} prediction", label=True)
    class_legend(fig, [s["label"]] + preds)
    fig.suptitle(f"VOC val image {ctx['index']} ({ctx['size']}x{ctx['size']}, as evaluated)")
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


def label_inset(image, label):
    """The notebook's "Original" input tile (cell 50): ``image`` with the coloured ``label`` shrunk by 0.4 pasted
    into its bottom-right corner. The shrink is torch's ``interpolate(scale_factor=0.4)`` (nearest): floor(0.4 n)
    pixels a side, output pixel i taken from source pixel floor(i * 2.5)."""
    h, w = label.shape
    oh, ow = int(np.floor(h * INSET_SCALE)), int(np.floor(w * INSET_SCALE))
    step = 1 / INSET_SCALE   # 2.5 exactly in binary: floor(i * step) has no rounding trap
    rows = np.minimum(np.floor(np.arange(oh) * step).astype(int), h - 1)
    cols = np.minimum(np.floor(np.arange(ow) * step).astype(int), w - 1)
    out = image.copy()
    if oh and ow:
        out[h - oh:, w - ow:] = colorize(label)[rows][:, cols]
    return out


def fig_qualitative_grid(ctx):
    """The notebook's cell 50, on val image --qualitative-index: an "Original" panel (the clean input with
    its label as a 0.4-scale inset | baseline | SCrIBE prediction) over a "Corrupted" panel (columns:
    severities 1..3; per corruption three rows: input, baseline, SCrIBE), every tile cut to ``crop_rows``.
    Each image axes carries the label "<panel>|<row>|<corruption>|<severity>" (row: input or a model name)."""
    # PROTOCOL.md: input, baseline, SCrIBE. By kind; where one is missing, the next checkpoint stands in.
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
        show(ax, img, title, label=colour)
        return ax

    # "Original": clean input with the label inset, then each model's clean prediction.
    tile(left, top, label_inset(s["image"][keep], s["label"][keep]), f"original|input|{CLEAN}|0", "Input")
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
    class_legend(fig, [p[:, keep] for p in preds] + [s["label"][keep]], loc="lower center")
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


# Every figure by its name (the file it writes, the --only choice), in the order they are drawn.
FIGURES = {"voc_sample": fig_voc_sample, "corruption_grid": fig_corruption_grid,
           "miou_vs_severity": fig_miou_vs_severity, "per_corruption": fig_per_corruption,
           "explained_variance": fig_explained_variance, "class_means": fig_class_means,
           "distance_matrices": fig_distance_matrices, "correlations": fig_correlations,
           "correlations_notebook": fig_correlations_notebook, "correlation_class": fig_correlation_class,
           "calibration": fig_calibration, "readings": fig_readings,
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
    if ctx["run"]:
        rf.require_identity(ctx["run"], run_path, f"rerun evaluate_corruptions.py --overwrite --out {d}")
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


def pick_index(flag, value, default, n, figures, wrap=True):
    """The val index ``flag`` gives: ``value`` when passed (refused beyond the set); else the notebook's
    ``default``, and where that is beyond a set of ``n`` images, ``default % n`` (``wrap``) or 0, said in a note."""
    if value is not None:
        if not 0 <= value < n:
            raise UsageError(f"{flag} {value}: the val set has {n} images (0..{n - 1}); contact_sheet.png shows "
                             f"them with their indices")
        return value
    if default < n:
        return default
    used, why = (default % n, f"{default} mod {n}") if wrap else (0, "from the first")
    if figures:
        print(f"note: {flag}: the notebook's {default} is beyond this val set of {n} images; {', '.join(figures)} "
              f"{'use' if len(figures) > 1 else 'uses'} {used} instead ({why}); pass {flag} to choose")
    return used


def read_images(args, ctx, wanted):
    """The val set, the indices of the image figures, and (for the prediction figures) the models."""
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
    n = len(ds)
    uses = lambda *figs: [f for f in figs if f in wanted]  # noqa: E731
    ctx["index"] = pick_index("--index", args.index, NOTEBOOK_GRID_INDEX, n, uses("voc_sample", "corruption_grid"))
    ctx["qualitative_index"] = pick_index("--qualitative-index", args.qualitative_index, NOTEBOOK_QUALITATIVE_INDEX,
                                          n, uses("qualitative_grid"))
    ctx["contact_start"] = pick_index("--contact-start", args.contact_start, NOTEBOOK_CONTACT_START, n,
                                      uses("contact_sheet"), wrap=False)
    ctx["crop"] = (args.crop_top, args.crop_bottom)
    if "qualitative_grid" in wanted:
        keep = crop_rows(ctx)
        if min(ctx["crop"]) < 0 or keep.stop - keep.start < 8:
            raise UsageError(f"--crop-top {args.crop_top} --crop-bottom {args.crop_bottom}: must be >= 0 and leave "
                             f"at least 8 of the {size} rows (they are rows of a 224-px image, scaled to --size)")
    # The corruption code the results were measured with.
    ctx["code"] = args.corruption_code or run.get("corruption_code", DEFAULT_CODE)
    ctx["samples"] = {}
    s = sample(ctx, ctx["index"])   # the --index image, as scored
    ctx["image_id"], ctx["image"], ctx["label"] = s["id"], s["image"], s["label"]
    device = resolve_device(args.device)
    use_device(device)
    ctx["cache"], ctx["device"], ctx["models"] = {}, str(device), []
    if any("models" in NEEDS[f] for f in wanted):
        ctx["models"] = load_models(args, run, ctx["device"])


def load_models(args, run, device):
    """[{name, kind, model}] of --checkpoints, else of the models run.json lists (as they were evaluated)."""
    known = {m.get("sha256"): m for m in run.get("models", [])}
    if args.checkpoints:   # checkpoints or torchvision:/module:factory specs (common/model_specs.py)
        options = model_specs.model_options(args.checkpoints, args.weights_file, args.model_kind)
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
        if model_specs.spec_kind(spec) == "checkpoint" and not os.path.isfile(spec):
            raise UsageError(f"checkpoint {spec}: no such file; pass --checkpoints with the files that were "
                             f"evaluated (run.json lists them)")
        if recorded is not None:
            model, info = model_specs.load_recorded(recorded, device)
        else:
            model, info = model_specs.load_spec(spec, device, *opts)
        # The display name of the evaluation when this exact model was evaluated, else its own.
        info = known.get(info["sha256"]) or info
        models.append({"name": info["name"], "kind": model.config["kind"], "model": model})
    return models


# --------------------------------------------------------------------------------------------- main

def main(args):
    wanted = [f for f in FIGURES if f in (args.only or FIGURES)]
    print(f"arguments: {json.dumps(vars(args), sort_keys=True)}")
    ctx = read_results(args, wanted)
    ctx.update(band=args.band, band_seed=args.band_seed, correlation_class=args.correlation_class)
    if "calibration" in wanted:
        check_calibration(dict(ctx, results_dir=args.results))
    if "readings" in wanted and not has_readings(ctx):
        if args.only:
            raise UsageError(f"{os.path.join(args.results, 'analysis_arrays.npz')}: no reading arrays (an analysis "
                             f"from before them, or results without the sigmoid reading); rerun analyze_logits.py "
                             f"--results {args.results}")
        print("note: readings.png skipped: analysis_arrays.npz has no reading arrays (rerun analyze_logits.py)")
        wanted.remove("readings")
    if not 1 <= args.reliability_severity <= 5:
        raise UsageError(f"--reliability-severity {args.reliability_severity}: must be 1..5")
    ctx["reliability_severity"] = args.reliability_severity
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
    model_specs.add_model_arguments(p, "--checkpoints")
    p.add_argument("--index", "--grid-index", dest="index", type=int, default=None,
                   help=f"val image of voc_sample and corruption_grid; default: the notebook's "
                        f"{NOTEBOOK_GRID_INDEX} (a smaller val set: {NOTEBOOK_GRID_INDEX} mod its size, with a note); "
                        f"contact_sheet.png shows the indices")
    p.add_argument("--qualitative-index", type=int, default=None,
                   help=f"val image of qualitative_grid; default: the notebook's {NOTEBOOK_QUALITATIVE_INDEX} (a "
                        f"smaller val set: {NOTEBOOK_QUALITATIVE_INDEX} mod its size, with a note)")
    p.add_argument("--contact-start", type=int, default=None,
                   help=f"first val image of contact_sheet (it shows up to {CONTACT_MAX}); default: the notebook's "
                        f"{NOTEBOOK_CONTACT_START} (0 for a val set that small, with a note)")
    p.add_argument("--crop-top", type=int, default=NOTEBOOK_CROP[0],
                   help="rows cut from the top of each qualitative_grid tile, in rows of a 224-px image (scaled to "
                        "--size); default: the notebook's crop_top")
    p.add_argument("--crop-bottom", type=int, default=NOTEBOOK_CROP[1],
                   help="rows cut from the bottom of each qualitative_grid tile, likewise; default: the notebook's "
                        "crop_bot")
    p.add_argument("--correlation-class", type=int, default=NOTEBOOK_CORRELATION_CLASS, choices=range(NUM_CLASSES),
                   metavar="K", help="class of correlation_class (0..20); default: the notebook's 13, horse")
    p.add_argument("--band", choices=("bootstrap", "normal"), default="bootstrap",
                   help="miou_vs_severity's band: bootstrap (the notebook's seaborn lineplot: 95%% percentile "
                        f"interval of the mean over corruptions, {BOOTSTRAP_RESAMPLES} resamples) or normal "
                        "(mean +- 1.96 SD / sqrt(n))")
    p.add_argument("--band-seed", type=int, default=0, help="seed of the bootstrap band's resamples")
    p.add_argument("--size", type=int, default=None,
                   help="image side (paper protocol); default: run.json's size, 224 if it has none")
    p.add_argument("--corruption-code", choices=CORRUPTION_CODES, default=None,
                   help="whose corruption formulas draw the image figures (see evaluate_corruptions.py --help); "
                        "default: the one run.json records")
    p.add_argument("--reliability-severity", type=int, default=3,
                   help="readings.png: the severity (1..5) whose reliability diagrams and risk-coverage curves are "
                        "drawn beside the clean ones")
    add_device_arguments(p, amp=False, default="cpu")   # a few predictions: the CPU is enough
    return p


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
