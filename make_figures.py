"""The figures of the paper's write-up (docs/protocol.md, "Figures and video") from a results folder.

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
    explained_variance.png  cumulative explained variance of the clean class-mean logit matrix, components 1..K,
                            from the pass analysis_arrays.npz names (the shortside pass when there was one)
    class_means.png         clean class-mean logits (rows: predicted class, columns: logit), models side by side
    distance_matrices.png   clean distances ||mu_i - mu_j|| between class means, models side by side
    correlations.png        correlation of the K logits over the pixels predicted as background and as the
                            3 foreground classes predicted most often (over all models; without a background
                            class, the 4 classes predicted most often), one row per model
    correlations_notebook.png  the same panels of the notebook's quantity, (Q - mu mu^T) / N scaled by its
                            diagonal (not the covariance; near 1 wherever the mean logits dominate), in the
                            paper's colour range 0.8..1 (lower values drawn as 0.8), for comparison with its figure
    correlation_class.png   the notebook's cell 45: class --correlation-class (default on VOC the notebook's 13,
                            horse; on another dataset the class predicted most often), the notebook's quantity per
                            model in -1..1 (plasma), and below it the true correlation, same scale
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
Classes: the results folder's (run.json's "dataset": names, palette, background; K of them, 21 on VOC), read by
common/analysis/inputs.py ``results_dataset`` as analyze_logits.py reads them; labels and predictions are drawn
in that palette, and matrices with more than 40 classes (ADE20K's 150) carry class indices on their axes instead
of names (tables.md lists the names in index order). The val set of the image figures must have those classes.
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
(correlations.png and correlation_class.png use -1..1, correlations_notebook.png 0.8..1: ``CORRELATION_VIEWS``
in common/figures/structure.py.) This file reads and checks the inputs and writes the files; the drawing is in
common/figures/, one module per topic (its __init__.py lists them).
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only: works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402

from common import model_specs, results as rf  # noqa: E402
from common.cli import UsageError, add_data_arguments, add_device_arguments, run_cli  # noqa: E402
from common.analysis.inputs import results_dataset  # noqa: E402
from common.corruptions import CORRUPTION_CODES, DEFAULT_CODE, MIN_SIDE  # noqa: E402
from common.data import resolve_roots, voc_dataset  # noqa: E402
from common.datasets import DATASETS, NAMES, acdc, dataset_spec, open_data  # noqa: E402
from common.device import resolve_device, use_device  # noqa: E402
from common.figures.drawing import styles  # noqa: E402
from common.figures.miou import BOOTSTRAP_RESAMPLES, fig_miou_vs_severity, fig_per_corruption  # noqa: E402
from common.figures.reliability import check_calibration, fig_calibration, fig_readings, has_readings  # noqa: E402
from common.figures.structure import (NOTEBOOK_CORRELATION_CLASS, default_correlation_class,  # noqa: E402
                                      fig_class_means, fig_correlation_class, fig_correlations,
                                      fig_correlations_notebook, fig_distance_matrices, fig_explained_variance)
from common.figures.val_images import (CONTACT_MAX, NOTEBOOK_CONTACT_START, NOTEBOOK_CROP,  # noqa: E402
                                       NOTEBOOK_GRID_INDEX, NOTEBOOK_QUALITATIVE_INDEX, crop_rows, fig_contact_sheet,
                                       fig_corruption_grid, fig_qualitative_grid, fig_voc_sample, sample)
from common.folders import atomic_write, file_sha256, prepare_output_folder  # noqa: E402
from common.results import CLEAN  # noqa: E402

# What each figure reads: metrics.jsonl, analysis_arrays.npz, the val set, the checkpoints.
NEEDS = {"voc_sample": {"images", "models"}, "corruption_grid": {"images"}, "miou_vs_severity": {"metrics"},
         "per_corruption": {"metrics"}, "explained_variance": {"arrays"}, "class_means": {"arrays"},
         "distance_matrices": {"arrays"}, "correlations": {"arrays"}, "correlations_notebook": {"arrays"},
         "correlation_class": {"arrays"}, "calibration": {"arrays"}, "readings": {"arrays"},
         "qualitative_grid": {"images", "models"}, "contact_sheet": {"images"}}
RC = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9, "xtick.labelsize": 8,
      "ytick.labelsize": 8, "figure.titlesize": 12, "savefig.dpi": 150}
# Without these the PDF embeds the time of writing and two runs would differ byte for byte.
METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}


# ------------------------------------------------------------------------------------------ output

def save(fig, out, name, pdf):
    paths = [os.path.join(out, f"{name}.{ext}") for ext in (("png", "pdf") if pdf else ("png",))]
    for path in paths:
        ext = path.rsplit(".", 1)[1]
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=ext, metadata=METADATA[ext]))
    plt.close(fig)
    print(f"wrote {', '.join(paths)}")


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
    if needs & {"arrays", "images"}:   # class names and colours; the mIoU curves need none
        ctx["classes"] = results_dataset(d, ctx["run"] or None)
    if "metrics" in needs:
        ctx["metrics_path"] = os.path.join(d, "metrics.jsonl")
        ctx["rows"] = rf.read_metrics(ctx["metrics_path"])
        rf.check_rows_match_run(ctx["rows"], ctx["run"] or None, ctx["metrics_path"], run_path)
        if "per_corruption" in wanted and all(r["corruption"] == CLEAN for r in ctx["rows"]):
            raise UsageError(f"{ctx['metrics_path']}: only clean rows; per_corruption needs corrupted ones")
    if "arrays" in needs:
        ctx["arrays"], ctx["array_names"] = read_arrays(d, wanted, ctx["run"], run_path, ctx["classes"])
    # Display names and kinds: run.json's order, then any model only the metrics or arrays know.
    models = [{"name": m["name"], "kind": m.get("kind")} for m in ctx["run"].get("models", [])]
    kinds = {r["model"]: r.get("kind") for r in ctx["rows"]}
    for name in list(kinds) + ctx.get("array_names", []):
        if name not in [m["name"] for m in models]:
            models.append({"name": name, "kind": kinds.get(name)})
    ctx["styles"] = styles(models)
    ctx["metric_names"] = [m["name"] for m in models if m["name"] in kinds]
    return ctx


def read_arrays(d, wanted, run, run_path, classes):
    """analysis_arrays.npz of results folder ``d`` and the models it lists, checked to come from the run that
    run.json describes and to be over its ``classes`` (a DatasetSpec)."""
    path = os.path.join(d, "analysis_arrays.npz")
    if not os.path.exists(path):
        raise UsageError(f"{path}: missing; run analyze_logits.py --results {d} first "
                         f"(needed by {', '.join(f for f in wanted if 'arrays' in NEEDS[f])})")
    fix = f"rewrite it with analyze_logits.py --results {d}"
    arrays = rf.read_analysis_arrays(path, fix)   # its K x K arrays agree with its classes, checked here
    if [str(c) for c in arrays.get("classes", [])] != list(classes.classes):
        raise UsageError(f"{path}: its classes are not the {classes.name} classes {run_path} records; {fix}")
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
    if args.data in ("voc", "synthetic"):
        voc_root, _ = resolve_roots(args.data, args.voc_root, None, args.synthetic_root, need_sbd=False, quiet=True)
        ds, spec = voc_dataset(voc_root, "val"), DATASETS["voc"]
    elif args.data:        # Cityscapes, ADE20K, ACDC, a folder dataset: through its adapter and --<name>-root
        data = open_data(args, "val", quiet=True)
        ds, spec = data.dataset, data.spec
    elif run.get("voc_root") and run.get("data", "voc") in ("voc", "synthetic"):
        ds, spec = voc_dataset(run["voc_root"], "val"), DATASETS["voc"]  # the val set that was evaluated
    elif run.get("data_root") and run.get("data") in NAMES:     # another dataset's val set, as evaluated
        spec = dataset_spec(run["data"], run["data_root"])
        conditions = (run.get("args") or {}).get("acdc_conditions")
        options = {"conditions": acdc.parse_conditions(conditions)} if run["data"] == "acdc" else {}
        ds = spec.eval_dataset(run["data_root"], "val", **options)
    else:
        raise UsageError(f"--data: {args.results}/run.json names no val set that this script can open; pass --data "
                         f"and its root (--voc-root R, --cityscapes-root R, ...), or --data synthetic")
    if tuple(spec.classes) != tuple(ctx["classes"].classes):
        raise UsageError(f"--data {args.data}: its {spec.num_classes} classes are not the {ctx['classes'].name} "
                         f"classes of {args.results}/run.json; pass the val set that was evaluated")
    ctx["dataset"] = ds
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
        ctx["models"] = load_models(args, run, ctx["device"], ctx["classes"])


def load_models(args, run, device, classes):
    """[{name, kind, model}] of --checkpoints, else of the models run.json lists (as they were evaluated), each
    checked to predict ``classes`` (the results' DatasetSpec)."""
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
            model, info = model_specs.load_recorded(recorded, device, dataset=classes)
        else:
            model, info = model_specs.load_spec(spec, device, *opts, dataset=classes)
        # The display name of the evaluation when this exact model was evaluated, else its own.
        info = known.get(info["sha256"]) or info
        models.append({"name": info["name"], "kind": model.config["kind"], "model": model})
    return models


# --------------------------------------------------------------------------------------------- main

def main(args):
    wanted = [f for f in FIGURES if f in (args.only or FIGURES)]
    print(f"arguments: {json.dumps(vars(args), sort_keys=True)}")
    ctx = read_results(args, wanted)
    ctx.update(band=args.band, band_seed=args.band_seed)
    if "correlation_class" in wanted:     # the classes are the results folder's: checked here, not by argparse
        k = ctx["classes"].num_classes
        if args.correlation_class is not None and not 0 <= args.correlation_class < k:
            raise UsageError(f"--correlation-class {args.correlation_class}: {ctx['classes'].name} has classes "
                             f"0..{k - 1}")
        ctx["correlation_class"] = (default_correlation_class(ctx) if args.correlation_class is None
                                    else args.correlation_class)
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
    p.add_argument("--correlation-class", type=int, default=None, metavar="K",
                   help=f"class index of correlation_class (0..K-1, K the results folder's classes); default: on VOC "
                        f"the notebook's {NOTEBOOK_CORRELATION_CLASS}, horse; elsewhere the class predicted most often")
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
