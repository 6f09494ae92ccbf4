"""The structure of the clean logits, from analysis_arrays.npz: explained variance of the class-mean matrix,
the class means, their distances, and the correlations of the K logits (ours and the notebook's quantity). The
classes are ctx["classes"], the results folder's DatasetSpec."""
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from common.figures.drawing import draw_matrices

# The notebook's cell 45 drew class 13 (cor[-8:-7]).
NOTEBOOK_CORRELATION_CLASS = 13  # horse


def array(ctx, name, key):
    """``<model>/clean/<key>`` of analysis_arrays.npz, or NaN when the model had no clean logits."""
    ndim = {"count": 1, "explained_variance": 1, "explained_variance_count": 1, "mean": 2, "distance": 2,
            "correlation": 3, "correlation_notebook": 3}[key]
    return ctx["arrays"].get(f"{name}/clean/{key}", np.full((ctx["classes"].num_classes,) * ndim, np.nan))


def names(ctx):
    return list(ctx["classes"].classes)


def default_correlation_class(ctx):
    """correlation_class.png's class without --correlation-class: the notebook's 13 (horse) on VOC; elsewhere the
    class predicted most often over all models (a foreground one where class 0 is a background)."""
    spec = ctx["classes"]
    if spec.name == "voc":
        return NOTEBOOK_CORRELATION_CLASS
    counts = sum(np.nan_to_num(array(ctx, n, "count")) for n in ctx["array_names"])
    first = 1 if spec.has_background else 0
    return first + int(np.argmax(counts[first:]))


def fig_explained_variance(ctx):
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    k = ctx["classes"].num_classes
    comps = np.arange(1, k + 1)
    for name in ctx["array_names"]:
        # Classes predicted in the pass the PCA came from (older arrays: the main sweep's clean count).
        count_key = ("explained_variance_count" if f"{name}/clean/explained_variance_count" in ctx["arrays"]
                     else "count")
        ev, used = array(ctx, name, "explained_variance"), int((array(ctx, name, count_key) > 0).sum())
        note = f"classes predicted: {used}" + ("" if np.isfinite(ev).any() else ", undefined below 2")
        ax.plot(comps, ev, **{**ctx["styles"][name], "label": f"{name} ({note})", "markersize": 4})
    ax.set(xlabel="number of principal components", ylabel="cumulative explained variance ratio",
           ylim=(0, 1.03), xlim=(0.5, k + 0.5))
    if k <= 30:      # a tick per component; more would overlap (ADE20K's 150): round integer steps instead
        ax.set_xticks(comps)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    source = str(ctx["arrays"].get("explained_variance_source", "clean condition of the main sweep"))
    ax.set_title("PCA of the clean class-mean logit matrix (rows: predicted classes)\n"
                 f"from the {source.split(' at ')[0]}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def fig_class_means(ctx):
    return draw_matrices([[(n, array(ctx, n, "mean")) for n in ctx["array_names"]]],
                         "Class-mean logits on clean val (row n: mean logit vector over pixels predicted n; "
                         "grey: never predicted)", "logit", names(ctx))


def fig_distance_matrices(ctx):
    return draw_matrices([[(n, array(ctx, n, "distance")) for n in ctx["array_names"]]],
                         "Distances between clean class-mean logit vectors ||μi − μj|| (grey: never predicted)",
                         "Euclidean distance", names(ctx), cmap="magma", xlabel="predicted class")


# The two correlation figures: which analysis_arrays.npz matrix, and how it is drawn.
CORRELATION_VIEWS = {
    "correlation": {"limits": (-1, 1), "cmap": "RdBu_r", "extend": "neither", "cbar": "correlation",
                    "title": "Correlation between the {k} logits over the pixels predicted as each column's class "
                             "(clean val; grey: undefined)"},
    # docs/protocol.md: the paper's figure shows the notebook's quantity, on a 0.8-1 colour scale.
    "correlation_notebook": {
        "limits": (0.8, 1.0), "cmap": "viridis", "extend": "min", "cbar": "notebook's 'correlation' (below 0.8: 0.8)",
        "title": "The notebook's 'correlation' of the {k} logits, as in the paper's figure: (Q − μμᵀ)/N scaled "
                 "by its diagonal,\nnot the covariance Q/N − μμᵀ (independent logits of mean −8, SD 2 give 0.94 "
                 "here, 0 as a correlation); clean val, grey: undefined"},
}


def fig_correlations(ctx, key="correlation"):
    """Panels: the background class and the 3 foreground classes predicted most often over all models; on a
    dataset without a background, the 4 classes predicted most often."""
    view, spec = CORRELATION_VIEWS[key], ctx["classes"]
    models = ctx["array_names"]
    counts = sum(np.nan_to_num(array(ctx, n, "count")) for n in models)
    if spec.has_background:
        shown = [0] + [int(k) for k in np.argsort(-counts[1:], kind="stable")[:3] + 1 if counts[k] > 0]
    else:
        shown = [int(k) for k in np.argsort(-counts, kind="stable")[:4] if counts[k] > 0] or [0]
    grid = [[(f"{n}: {spec.classes[k]}\n{int(np.nan_to_num(array(ctx, n, 'count')[k])):,} px",
              array(ctx, n, key)[k]) for k in shown] for n in models]
    return draw_matrices(grid, view["title"].format(k=spec.num_classes), view["cbar"], names(ctx), cmap=view["cmap"],
                         limits=view["limits"], ylabel="logit", extend=view["extend"])


def fig_correlations_notebook(ctx):
    return fig_correlations(ctx, "correlation_notebook")


def fig_correlation_class(ctx):
    """The notebook's cell 45: one class's matrix of its 'correlation' (the notebook's quantity) per model in
    -1..1, plasma; below it the same class's correlation, on the same scale."""
    k, spec = ctx["correlation_class"], ctx["classes"]
    models = ctx["array_names"]
    grid = [[(f"{n}: notebook's", array(ctx, n, "correlation_notebook")[k]) for n in models],
            [(f"{n}: correlation", array(ctx, n, "correlation")[k]) for n in models]]
    return draw_matrices(grid, f"Class {k} ({spec.classes[k]}), clean val: the notebook's 'correlation' of the "
                         f"{spec.num_classes} logits over its pixels (top, its cell 45)\nbeside their correlation "
                         f"(bottom), both on -1..1; grey: undefined", "correlation", names(ctx), cmap="plasma",
                         limits=(-1, 1), ylabel="logit")
