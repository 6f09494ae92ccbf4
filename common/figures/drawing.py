"""The plotting pieces the figures share: a line style per model, image tiles without ticks, a class legend,
fixed tile layouts, and grids of K x K matrices on one colour scale. The classes (names, palette) are the results
folder's DatasetSpec (common/analysis/inputs.py ``results_dataset``): VOC's 21, Cityscapes' 19, ADE20K's 150."""
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from common.constants import MODEL_COLOURS

CLASS_FONT = 6  # 21 class names along a ~3 inch matrix side
# Above this many classes the names would overlap along a matrix side: the axes carry class indices, a tick every
# few classes (the names are in tables.md's per-class table, in index order).
MAX_NAMED_CLASSES = 40


def styles(models):
    """Line style per model name: colour by kind (docs/protocol.md palette); repeats of a kind get dashes."""
    seen, out = {}, {}
    for m in models:
        k = seen[m["kind"]] = seen.get(m["kind"], -1) + 1
        out[m["name"]] = {"color": MODEL_COLOURS.get(m["kind"], (0, 0, 0)), "linestyle": ("-", "--", ":", "-.")[k % 4],
                          "marker": "os^D"[k % 4], "label": m["name"]}
    return out


def show(ax, img, title=None, label=None):
    """An image without ticks, or with ``label`` (the DatasetSpec of its classes) a class-index label in the
    dataset's colours; labels stay crisp with nearest."""
    coloured = label is not None
    ax.imshow(label.colorize(img) if coloured else img, interpolation="nearest" if coloured else "antialiased")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)


def class_legend(fig, labels, spec, loc="outside lower center"):
    """One colour patch per class of ``spec`` present in any of ``labels`` (255 drawn white, as colorize does)."""
    present = np.unique(np.concatenate([np.ravel(x) for x in labels]))
    handles = [Patch(facecolor=spec.colorize(np.array([c]))[0] / 255, edgecolor="0.4",
                     label=spec.classes[c] if c < spec.num_classes else "ignore (255)") for c in present]
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


def shared_limits(matrices):
    """(vmin, vmax) = nanmin/nanmax over all matrices, so equal colours mean equal values in every panel."""
    vals = np.concatenate([np.ravel(m) for m in matrices]).astype(float)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)  # a constant matrix still needs a valid range


def class_ticks(ax, names):
    """Both axes of a K x K class matrix: every class name up to MAX_NAMED_CLASSES (6 pt for VOC's 21, smaller
    for more), else class indices at a round step (about 10 ticks), so that ADE20K's 150 stay legible."""
    k = len(names)
    if k <= MAX_NAMED_CLASSES:
        ticks, font = np.arange(k), CLASS_FONT if k <= 21 else CLASS_FONT * 21 / k
        ax.set_xticks(ticks, names, rotation=90, fontsize=font)
        ax.set_yticks(ticks, names, fontsize=font)
        return
    step = next(s for s in (5, 10, 20, 25, 50, 100, 200, 500) if k / s <= 10)
    ticks = np.arange(0, k, step)
    ax.set_xticks(ticks, [str(t) for t in ticks], rotation=90, fontsize=CLASS_FONT)
    ax.set_yticks(ticks, [str(t) for t in ticks], fontsize=CLASS_FONT)


def draw_matrices(grid, title, cbar_label, names, cmap="viridis", limits=None, xlabel="logit",
                  ylabel="predicted class", extend="neither"):
    """A rows x columns grid [[(panel title, K x K matrix), ...], ...] on one colour scale, one colorbar;
    ``names``: the K class names (``class_ticks``; above MAX_NAMED_CLASSES the axis labels say "index").

    ``limits`` None -> ``shared_limits`` of every panel. NaN entries are drawn light grey. ``extend``
    ("min", "max", "both") marks on the colorbar that values beyond ``limits`` are clipped.
    """
    if len(names) > MAX_NAMED_CLASSES:
        xlabel, ylabel = f"{xlabel} (index; names: tables.md)", f"{ylabel} (index)"
    vmin, vmax = limits or shared_limits([m for row in grid for _, m in row])
    cmap = plt.get_cmap(cmap).with_extremes(bad="0.85")
    nr, nc = len(grid), len(grid[0])
    fig, axes = plt.subplots(nr, nc, figsize=(3.4 * nc + 1.3, 3.7 * nr + 0.9), squeeze=False, layout="constrained")
    for i, row in enumerate(grid):
        for j, (panel, m) in enumerate(row):
            ax = axes[i, j]
            im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(panel)
            if not np.isfinite(m).any():
                ax.text(0.5, 0.5, "no data\n(never predicted)", transform=ax.transAxes, ha="center", va="center")
            class_ticks(ax, names)
            # Class names only on the outer panels: the grid shares both axes.
            ax.tick_params(labelbottom=i == nr - 1, labelleft=j == 0)
            if i == nr - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=axes, shrink=min(0.9, 0.5 + 0.15 * nr), label=cbar_label, extend=extend)
    fig.suptitle(title)
    return fig
