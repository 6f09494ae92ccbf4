"""The structure of the clean logits, from analysis_arrays.npz: explained variance of the class-mean matrix,
the class means, their distances, and the correlations of the 21 logits (ours and the notebook's quantity)."""
import matplotlib.pyplot as plt
import numpy as np

from common.constants import CLASSES, NUM_CLASSES
from common.figures.drawing import draw_matrices

# The notebook's cell 45 drew class 13 (cor[-8:-7]).
NOTEBOOK_CORRELATION_CLASS = 13  # horse


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
    # docs/protocol.md: the paper's figure shows the notebook's quantity, on a 0.8-1 colour scale.
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
