"""make_figures.py: every figure is drawn and not blank, the plotted severity curves and their bootstrap band
against numpy, one colour scale across matrix panels, the notebook's image figures (crop, label inset, grid
tiles, contact sheet, indices beyond a small set), --pdf / --only, deterministic files, bad input -> exit 2."""
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import analyze_logits
import evaluate_corruptions
import make_figures as mf
from common.cli import UsageError
from common.datasets import DATASETS, dataset_record
from common.figures import drawing, miou, val_images
from helpers import refused

VOC = DATASETS["voc"]


@pytest.fixture(scope="module")
def results(tmp_path_factory, synthetic, tiny_ckpts):
    """A small results folder (2 corruptions x severities 0..2, 3 val images at 40 px) and its analysis.

    The image figures corrupt the --index image themselves, so the five grid corruptions need not be here.
    """
    d = tmp_path_factory.mktemp("figs")
    ckpts = [tiny_ckpts["baseline"], tiny_ckpts["ibe"], tiny_ckpts["scribe"]]
    syn = synthetic(n_voc_train=1, n_sbd=1, n_val=3, max_side=64)
    out = str(d / "results")
    evaluate_corruptions.main(evaluate_corruptions.get_args_parser().parse_args(
        ["--checkpoints", *ckpts, "--data", "synthetic", "--synthetic-root", syn, "--size", "40", "--workers", "0",
         "--corruptions", "gaussian", "brightness", "--severities", "0", "1", "2", "--out", out]))
    analyze_logits.main(analyze_logits.get_args_parser().parse_args(["--results", out, "--bootstrap", "10"]))
    return {"dir": out, "ckpts": ckpts, "root": d}


def draw(*argv):
    return mf.main(mf.get_args_parser().parse_args(list(argv)))


def test_every_figure_is_drawn_and_not_blank(results, tmp_path, capsys):
    draw("--results", results["dir"], "--out", str(tmp_path))
    out = capsys.readouterr().out
    # The notebook's indices are beyond the 3-image set: each falls back, and says so in one line.
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: --index: the notebook's 687 is beyond this val set of 3 images; voc_sample, corruption_grid use 0 "
        "instead (687 mod 3); pass --index to choose",
        "note: --qualitative-index: the notebook's 790 is beyond this val set of 3 images; qualitative_grid uses 1 "
        "instead (790 mod 3); pass --qualitative-index to choose",
        "note: --contact-start: the notebook's 700 is beyond this val set of 3 images; contact_sheet uses 0 instead "
        "(from the first); pass --contact-start to choose"]
    assert sorted(os.listdir(tmp_path)) == sorted(f"{f}.png" for f in mf.FIGURES)
    assert sum(line.startswith("wrote ") for line in out.splitlines()) == len(mf.FIGURES)
    for name in mf.FIGURES:
        img = np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB"))
        assert img.shape[0] >= 250 and img.shape[1] >= 600, name
        assert img.std() > 10, name
        rgb = img.astype(np.uint32)   # one integer per colour: np.unique(axis=0) on the pixels takes seconds
        assert len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])) > 50, name


def test_severity_curves_against_numpy(tmp_path):
    rows = [{"model": "a", "corruption": "clean", "severity": 0, "miou": 0.7},
            {"model": "b", "corruption": "clean", "severity": 0, "miou": 0.6}]
    rng = np.random.default_rng(0)
    table = {m: rng.uniform(0.2, 0.6, (3, 5)) for m in "ab"}
    for m in "ab":
        for c, corruption in enumerate(("gaussian_noise", "snow", "jpeg_compression")):
            rows += [{"model": m, "corruption": corruption, "severity": s + 1, "miou": table[m][c, s]}
                     for s in range(5)]
        # A held-out extra never enters the paper's mean; an undefined mIoU (null) is skipped.
        rows += [{"model": m, "corruption": "speckle_noise", "severity": 1, "miou": 0.0},
                 {"model": m, "corruption": "fog", "severity": 2, "miou": None}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = miou.severity_curves(evaluate_corruptions.read_metrics(str(path)), ["a", "b"], band="normal")
    for m, clean in (("a", 0.7), ("b", 0.6)):
        c = curves[m]
        mean = np.concatenate([[clean], table[m].mean(0)])
        half = np.concatenate([[0.0], 1.96 * table[m].std(0, ddof=1) / np.sqrt(3)])
        np.testing.assert_array_equal(c["severity"], np.arange(6))
        np.testing.assert_allclose(c["mean"], mean)
        np.testing.assert_allclose(c["lower"], mean - half)
        np.testing.assert_allclose(c["upper"], mean + half)
        np.testing.assert_array_equal(c["n"], [1, 3, 3, 3, 3, 3])
    one = rows[:2] + [{"model": "a", "corruption": "snow", "severity": 1, "miou": 0.5}]
    normal = miou.severity_curves(one, ["a"], band="normal")
    assert normal["a"]["mean"][1] == 0.5 and np.isnan(normal["a"]["lower"][1])  # no normal band from one value
    boot = miou.severity_curves(one, ["a"])
    assert boot["a"]["lower"][1] == boot["a"]["upper"][1] == 0.5                # seaborn: a band of zero width


def seaborn_band(values, seed, n_boot=1000):
    """seaborn.algorithms.bootstrap + its percentile interval, written out: n_boot times, draw len(values)
    indices with replacement and keep the mean; the band is the 2.5th and 97.5th percentiles of those means."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values, float)
    means = []
    for _ in range(n_boot):
        means.append(values.take(rng.integers(0, len(values), len(values))).mean())
    return np.percentile(means, [2.5, 97.5])


def test_bootstrap_band_against_numpy():
    # 15 corruptions x 5 severities for two models: the default band is the seaborn lineplot's, by hand.
    from common.corruptions import CORRUPTIONS
    rng = np.random.default_rng(4)
    table = {m: rng.uniform(0.1, 0.7, (15, 5)) for m in "ab"}
    rows = [{"model": m, "corruption": "clean", "severity": 0, "miou": 0.75} for m in "ab"]
    rows += [{"model": m, "corruption": c, "severity": s + 1, "miou": table[m][i, s]}
             for m in "ab" for i, c in enumerate(CORRUPTIONS) for s in range(5)]
    for seed in (0, 7):
        curves = miou.severity_curves(rows, ["a", "b"], seed=seed)
        for m in "ab":
            c = curves[m]
            want = np.array([[0.75, 0.75]] + [seaborn_band(table[m][:, s], seed) for s in range(5)])
            np.testing.assert_allclose(c["mean"], np.concatenate([[0.75], table[m].mean(0)]))
            np.testing.assert_allclose(c["lower"], want[:, 0], rtol=1e-12)
            np.testing.assert_allclose(c["upper"], want[:, 1], rtol=1e-12)
            # About the normal interval's width (15 values: within 25% of 2 * 1.96 SD / sqrt(n)), around the mean.
            width = c["upper"][1:] - c["lower"][1:]
            normal = 2 * 1.96 * table[m].std(0, ddof=1) / np.sqrt(15)
            assert np.all(np.abs(width / normal - 1) < 0.25), width / normal
            assert np.all((c["lower"] <= c["mean"]) & (c["mean"] <= c["upper"]))
    # The figure draws these numbers, as fractions, and names the band.
    ctx = {"rows": rows, "metric_names": ["a", "b"], "band_seed": 7,
           "styles": mf.styles([{"name": "a", "kind": "baseline"}, {"name": "b", "kind": "scribe"}])}
    ax = mf.fig_miou_vs_severity(ctx).axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), np.concatenate([[0.75], table["a"].mean(0)]))
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    want = [seaborn_band(table["a"][:, s], 7) for s in range(5)]
    assert np.isclose(band, want[2][0]).any() and np.isclose(band, want[2][1]).any()
    assert "bootstrap" in ax.get_title() and ax.get_ylabel() == "mIoU"
    mf.plt.close("all")


def test_matrices_share_one_colour_scale():
    rng = np.random.default_rng(1)
    mats = [rng.normal(0, s, (21, 21)) for s in (1, 3, 5)]
    mats[1][4] = np.nan  # a never-predicted class
    names = [f"c{i}" for i in range(21)]
    fig = drawing.draw_matrices([[(str(i), m) for i, m in enumerate(mats)]], "t", "logit", names)
    clims = {im.get_clim() for ax in fig.axes for im in ax.images}
    stack = np.stack(mats)
    assert clims == {(np.nanmin(stack), np.nanmax(stack))}
    assert len(fig.axes) == len(mats) + 1  # one colorbar for all panels
    assert drawing.shared_limits(mats) == (np.nanmin(stack), np.nanmax(stack))
    fixed = drawing.draw_matrices([[("a", mats[0])], [("b", mats[2])]], "t", "r", names, limits=(-1, 1))
    assert {im.get_clim() for ax in fixed.axes for im in ax.images} == {(-1, 1)}
    assert drawing.shared_limits([np.full((2, 2), np.nan)]) == (0.0, 1.0)


def test_pdf_only_and_determinism(results, tmp_path):
    only = ["--only", "miou_vs_severity", "class_means", "--pdf"]
    draw("--results", results["dir"], "--out", str(tmp_path / "a"), *only)
    draw("--results", results["dir"], "--out", str(tmp_path / "b"), *only)
    files = sorted(os.listdir(tmp_path / "a"))
    assert files == ["class_means.pdf", "class_means.png", "miou_vs_severity.pdf", "miou_vs_severity.png"]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "class_means.pdf").read_bytes().startswith(b"%PDF")


def test_qualitative_grid_with_one_checkpoint(results, tmp_path):
    # No SCrIBE checkpoint: the grid shows what is there instead of failing.
    draw("--results", results["dir"], "--out", str(tmp_path), "--only", "qualitative_grid", "voc_sample",
         "--checkpoints", results["ckpts"][0], "--index", "2")
    assert sorted(os.listdir(tmp_path)) == ["qualitative_grid.png", "voc_sample.png"]


def bad_case(results, tmp_path, case):
    """(--results, extra arguments, text the error must contain) for one kind of bad input."""
    if case == "no_results":
        return str(tmp_path / "nowhere"), ["--only", "miou_vs_severity"], "nowhere"
    if case in ("no_arrays", "no_metrics"):
        res = str(tmp_path / "copy")
        shutil.copytree(results["dir"], res)
        os.remove(os.path.join(res, "analysis_arrays.npz" if case == "no_arrays" else "metrics.jsonl"))
        if case == "no_arrays":
            return res, ["--only", "miou_vs_severity", "explained_variance"], "run analyze_logits.py"
        return res, ["--only", "per_corruption", "class_means"], "run evaluate_corruptions.py"
    if case == "no_checkpoint":
        return results["dir"], ["--only", "voc_sample", "--checkpoints", str(tmp_path / "missing.pt")], "missing.pt"
    if case == "earlier_run_json":   # the format before run.json recorded the corruption code
        res = str(tmp_path / "copy")
        shutil.copytree(results["dir"], res)
        run = json.load(open(os.path.join(res, "run.json")))
        del run["corruption_code"]
        with open(os.path.join(res, "run.json"), "w") as fh:
            json.dump(run, fh)
        return res, ["--only", "voc_sample"], "run.json: no corruption_code (written by an earlier evaluate_corruptions"
    return results["dir"], ["--only", "miou_vs_severity", "contact_sheet", "--index", "3"], "--index 3"


CASES = ["no_results", "no_arrays", "no_metrics", "no_checkpoint", "earlier_run_json", "bad_index"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_before_any_file(results, tmp_path, case):
    res, args, expect = bad_case(results, tmp_path, case)
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=re.escape(expect)):
        draw("--results", res, "--out", str(out), *args)
    assert not out.exists() or not os.listdir(out)  # checked before drawing: not even the good figure


@pytest.mark.parametrize("case", ["no_arrays", "bad_index"])
def test_bad_input_exits_2_with_one_line(results, tmp_path, case, capsys):
    # In a fresh interpreter, as a shell sees it: test_runs.py's damaged arrays.
    res, args, expect = bad_case(results, tmp_path, case)
    assert expect in refused(capsys, mf, "--results", res, "--out", tmp_path / "out", *args)
    assert not (tmp_path / "out").exists()


def panels(fig):
    """{panel title: (data as float array with NaN where masked, colour limits)} of a draw_matrices figure."""
    out = {}
    for ax in fig.axes:
        for im in ax.images:
            out[ax.get_title()] = (np.ma.filled(np.ma.asarray(im.get_array(), dtype=float), np.nan), im.get_clim())
    return out


def notebook_correlation_by_hand(path):
    """(Q_n - mu_n mu_n^T) / N_n scaled by the square roots of its diagonal, from a logits/ npz."""
    z = np.load(path)
    out = {}
    for n in np.flatnonzero(z["count"] > 1):
        mu = z["sum"][n] / z["count"][n]
        c = (z["sq"][n] - np.outer(mu, mu)) / z["count"][n]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[int(n)] = c / np.sqrt(np.outer(np.diag(c), np.diag(c)))
    return out


def test_correlations_notebook_draws_the_notebook_quantity_on_08_to_1(results, tmp_path):
    from common.constants import CLASSES
    assert "correlations_notebook" in mf.FIGURES
    args = mf.get_args_parser().parse_args(["--results", results["dir"], "--only", "correlations",
                                            "correlations_notebook"])
    ctx = mf.read_results(args, args.only)
    figs = mf.fig_correlations_notebook(ctx), mf.fig_correlations(ctx)
    nb, ours = panels(figs[0]), panels(figs[1])
    assert nb.keys() == ours.keys() and len(nb) == 4 * len(ctx["array_names"])
    assert {clim for _, clim in nb.values()} == {(0.8, 1.0)} and {clim for _, clim in ours.values()} == {(-1, 1)}
    differs = 0
    for title, (data, _) in nb.items():
        name, cls = title.split("\n")[0].split(": ")
        k = CLASSES.index(cls)
        want = notebook_correlation_by_hand(os.path.join(results["dir"], "logits", name, "clean_0.npz")).get(k)
        if want is None:
            assert np.isnan(data).all()
            continue
        ok = np.isfinite(data)
        assert ok.any() and np.isfinite(want[ok]).all()      # every value drawn is checked
        np.testing.assert_allclose(data[ok], want[ok], rtol=1e-8, atol=1e-10)
        differs += np.nanmax(np.abs(data - ours[title][0])) > 1e-3
    assert differs > 0   # at least one panel shows something other than the covariance-based correlation

    # The pictures differ too (test_every_figure_is_drawn_and_not_blank writes both files); low dpi: fast.
    pixels = []
    for fig in figs:
        fig.savefig(tmp_path / "f.png", dpi=20)
        pixels.append(np.asarray(Image.open(tmp_path / "f.png").convert("RGB")))
        mf.plt.close(fig)
    assert pixels[0].shape != pixels[1].shape or (pixels[0] != pixels[1]).any()


def complete_run_json(root, run=None):
    """Writes root/run.json (``run``, else the one there) with placeholders for the identity fields that
    make_figures.py requires of a run.json and that a hand-made results folder lacks."""
    from common.results import RUN_FIELDS
    run = run or json.load(open(root / "run.json"))
    placeholders = {"data_root": "", "protocol": "paper", "size": 224, "images": 3}   # the types results.py checks
    json.dump({**{k: placeholders.get(k) for k in RUN_FIELDS if k != "voc_root"}, **run}, open(root / "run.json", "w"))


def test_explained_variance_figure_names_its_pass():
    ev = np.linspace(0.5, 1, 21)
    count, pca_count = np.ones(21), np.ones(21)
    pca_count[[3, 4, 5]] = 0
    ctx = {"array_names": ["m"], "styles": mf.styles([{"name": "m", "kind": "baseline"}]), "classes": VOC,
           "arrays": {"m/clean/explained_variance": ev, "m/clean/count": count,
                      "m/clean/explained_variance_count": pca_count,
                      "explained_variance_source": np.array("shortside pass at /somewhere")}}
    ax = mf.fig_explained_variance(ctx).axes[0]
    assert "shortside pass" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["m (classes predicted: 18)"]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), ev)


# --------------------------------------------------------------- panels read back against their sources

# The standard VOC colormap as published with the devkit (VOCdevkit VOClabelcolormap), class by class.
VOC_RGB = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128), 5: (128, 0, 128),
           6: (0, 128, 128), 7: (128, 128, 128), 8: (64, 0, 0), 9: (192, 0, 0), 10: (64, 128, 0),
           11: (192, 128, 0), 12: (64, 0, 128), 13: (192, 0, 128), 14: (64, 128, 128), 15: (192, 128, 128),
           16: (0, 64, 0), 17: (128, 64, 0), 18: (0, 192, 0), 19: (128, 192, 0), 20: (0, 64, 128),
           255: (224, 224, 192)}


def paint(label):
    """A class map coloured with the literal table; docs/protocol.md: anything above 20 (255) drawn white."""
    table = np.full((256, 3), 255, np.uint8)
    for c in range(21):
        table[c] = VOC_RGB[c]
    return table[np.asarray(label, dtype=np.uint8)]


def test_voc_palette_is_the_published_colormap():
    import io

    from common.constants import voc_palette
    from common.constants import colorize
    from common.vocc import png_bytes
    pal = voc_palette()
    for c, rgb in VOC_RGB.items():
        assert tuple(int(v) for v in pal[c]) == rgb, c
    labels = np.array([list(range(11)), list(range(10, 21))], dtype=np.uint8)
    labels[0, 0] = 255
    np.testing.assert_array_equal(colorize(labels), paint(labels))
    assert tuple(colorize(np.array([255]))[0]) == (255, 255, 255)
    # Saved predictions and labels are palette PNGs with those colours.
    im = Image.open(io.BytesIO(png_bytes(labels, palette=True)))
    assert im.mode == "P" and np.array_equal(np.array(im), labels)
    pngpal = np.array(im.getpalette()[:768], np.uint8).reshape(-1, 3)
    for c, rgb in VOC_RGB.items():
        assert tuple(int(v) for v in pngpal[c]) == rgb, c


def test_class_means_and_distance_panels_are_those_of_the_logits_files(tmp_path):
    # A results folder with every class predicted (two models, other class means), analysed, then drawn:
    # each panel read back against mu_n = S_n / N_n and ||mu_i - mu_j|| from the logits files by hand.
    rng = np.random.default_rng(3)
    rows = []
    for m, kind in (("base", "baseline"), ("scribe", "scribe")):
        os.makedirs(tmp_path / "logits" / m)
        count = rng.integers(1, 50, 21).astype(float)
        count[7 if m == "base" else 12] = 0                       # one never-predicted class: grey
        x = rng.normal(0, 4, (21, 21))
        np.savez(tmp_path / "logits" / m / "clean_0.npz", count=count, sum=x * count[:, None],
                 sq=count[:, None, None] * (x[:, :, None] * x[:, None, :] + np.eye(21)), end_sum=np.float64(0),
                 pixels=np.int64(count.sum()))
        rows.append({"model": m, "kind": kind, "corruption": "clean", "severity": 0, "miou": 0.5, "iou": [None] * 21,
                     "distance_predicted": None, "ece": None, "nll": None, "brier": None, "calibration": {}})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    complete_run_json(tmp_path, {"models": [{"name": r["model"], "kind": r["kind"], "sha256": None} for r in rows],
                                 "dataset": dataset_record(VOC)})
    analyze_logits.main(analyze_logits.get_args_parser().parse_args(["--results", str(tmp_path), "--bootstrap", "0"]))
    args = mf.get_args_parser().parse_args(["--results", str(tmp_path), "--only", "class_means", "distance_matrices"])
    ctx = mf.read_results(args, args.only)
    means, dists = panels(mf.fig_class_means(ctx)), panels(mf.fig_distance_matrices(ctx))
    assert set(means) == set(dists) == {"base", "scribe"}
    for name in means:
        z = np.load(tmp_path / "logits" / name / "clean_0.npz")
        mu = np.full((21, 21), np.nan)
        seen = z["count"] > 0
        mu[seen] = z["sum"][seen] / z["count"][seen, None]
        d = np.array([[np.sqrt(np.sum((mu[i] - mu[j]) ** 2)) for j in range(21)] for i in range(21)])
        np.testing.assert_allclose(means[name][0], mu, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(dists[name][0], d, rtol=1e-9, atol=1e-12, equal_nan=True)
        assert np.isnan(means[name][0]).sum() == 21 and np.isfinite(dists[name][0]).sum() == 20 * 20
    for figure in (means, dists):                               # one colour scale over each figure's panels
        stack = [v[0] for v in figure.values()]
        assert {clim for _, clim in figure.values()} == {(np.nanmin(stack), np.nanmax(stack))}


def index_image(results, index, size=40):
    """(image id, image, label) of val image ``index`` as the paper protocol scores it, read by hand."""
    run = json.load(open(os.path.join(results["dir"], "run.json")))
    base = os.path.join(run["voc_root"], "VOCdevkit", "VOC2012")
    image_id = open(os.path.join(base, "ImageSets", "Segmentation", "val.txt")).read().split()[index]
    img = Image.open(os.path.join(base, "JPEGImages", f"{image_id}.jpg")).convert("RGB")
    lbl = Image.open(os.path.join(base, "SegmentationClass", f"{image_id}.png"))
    return (image_id, np.array(img.resize((size, size), Image.BILINEAR)),
            np.array(lbl.resize((size, size), Image.NEAREST)), img.size, run["corruption_code"])


def image_ctx(results, *argv):
    args = mf.get_args_parser().parse_args(["--results", results["dir"], *argv])
    ctx = mf.read_results(args, args.only)
    mf.read_images(args, ctx, args.only)
    return ctx


def test_qualitative_grid_shows_each_models_own_predictions(results):
    # The notebook's cell 50 read back from the figure: every tile cut to the crop rows, input tiles against
    # the image corrupted by hand (corrupt_image with docs/protocol.md's seed), prediction tiles against each model
    # called directly and coloured by the literal palette, and the "Original" input's label inset against
    # torch's interpolate(scale_factor=0.4), the notebook's own call.
    import torch

    from common.checkpoint import load_model
    from common.constants import IMAGENET_MEAN, IMAGENET_STD
    from common.corruptions import corrupt_image
    ctx = image_ctx(results, "--only", "qualitative_grid", "--qualitative-index", "2", "--crop-top", "60",
                    "--crop-bottom", "8")
    fig = mf.fig_qualitative_grid(ctx)
    tiles = {ax.get_label(): np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images}
    mf.plt.close(fig)
    # 60 and 8 rows of a 224-px image at 40 px: round(60 * 40 / 224) = 11 from the top, round(8 * 40 / 224) = 1
    # from the bottom.
    keep = slice(11, 39)
    image_id, img, label, _, code = index_image(results, 2)
    models = {load_model(p)[0].config["kind"]: load_model(p)[0] for p in results["ckpts"]}
    names = {kind: load_model(p)[1]["name"] for p in results["ckpts"] for kind in [load_model(p)[0].config["kind"]]}
    rows = ["input", names["baseline"], names["scribe"]]
    conds = [("corrupted", c, s) for c in val_images.GRID_CORRUPTIONS for s in (1, 2, 3)] + [("original", "clean", 0)]
    assert sorted(tiles) == sorted(f"{p}|{r}|{c}|{s}" for p, c, s in conds for r in rows)
    differ = 0
    for panel, c, s in conds:
        x = corrupt_image(img, image_id, c, s, code) if s else img
        t = torch.from_numpy(((x / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD))
                             .transpose(2, 0, 1)[None]).float()
        want = {}
        for kind in ("baseline", "scribe"):
            with torch.no_grad():
                want[kind] = models[kind](t).numpy()[0].argmax(0)
            got = tiles[f"{panel}|{names[kind]}|{c}|{s}"]
            assert got.shape == (28, 40, 3)
            assert (got == paint(want[kind])[keep]).all(-1).mean() > 0.99, (c, s, kind)
        differ += (want["baseline"] != want["scribe"]).mean() > 0.05
        got = tiles[f"{panel}|input|{c}|{s}"]
        if panel == "corrupted":
            np.testing.assert_array_equal(got, x[keep])
    assert differ > 0      # the two model rows show different models
    # "Original": the clean input cut to the crop, with its cut label shrunk by 0.4 in the bottom-right corner.
    got = tiles["original|input|clean|0"]
    small = torch.nn.functional.interpolate(torch.from_numpy(paint(label[keep])).permute(2, 0, 1)[None].float(),
                                            scale_factor=0.4)[0].permute(1, 2, 0).numpy().astype(np.uint8)
    assert small.shape == (11, 16, 3)          # floor(0.4 * 28) x floor(0.4 * 40)
    np.testing.assert_array_equal(got[-11:, -16:], small)
    np.testing.assert_array_equal(got[:-11], img[keep][:-11])
    np.testing.assert_array_equal(got[:, :-16], img[keep][:, :-16])


def test_the_notebooks_crop_and_inset_at_224():
    # crop_top 50 / crop_bot 1 of the 224-px image: rows 50..222 (the notebook's im[:, 50:-1]).
    assert mf.crop_rows({"size": 224, "crop": mf.NOTEBOOK_CROP}) == slice(50, 223)
    import torch
    rng = np.random.default_rng(0)
    label = rng.integers(0, 21, (173, 224)).astype(np.uint8)
    label[:5] = 255
    image = rng.integers(0, 256, (173, 224, 3)).astype(np.uint8)
    got = val_images.label_inset(image, label, VOC)
    small = torch.nn.functional.interpolate(torch.from_numpy(paint(label)).permute(2, 0, 1)[None].float(),
                                            scale_factor=0.4)[0].permute(1, 2, 0).numpy().astype(np.uint8)
    assert small.shape == (69, 89, 3)
    np.testing.assert_array_equal(got[173 - 69:, 224 - 89:], small)
    np.testing.assert_array_equal(got[:173 - 69], image[:173 - 69])


def test_corruption_grid_tiles_are_resized_back_to_the_image(results):
    # The notebook's cell 22: corrupted at size x size, then resized to the image file's own size (Pillow's
    # default filter in the notebook's Pillow 7.2: bicubic).
    from common.corruptions import corrupt_image
    ctx = image_ctx(results, "--only", "corruption_grid", "--index", "1")
    fig = mf.fig_corruption_grid(ctx)
    tiles = [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]
    mf.plt.close(fig)
    image_id, img, _, (w, h), code = index_image(results, 1)
    assert len(tiles) == 25 and (w, h) != (40, 40)
    for k, (c, s) in enumerate((c, s) for c in val_images.GRID_CORRUPTIONS for s in range(1, 6)):
        want = np.array(Image.fromarray(corrupt_image(img, image_id, c, s, code)).resize((w, h), Image.BICUBIC))
        np.testing.assert_array_equal(tiles[k], want)


def test_contact_sheet_starts_where_asked_and_indices_fall_back(results, capsys):
    ctx = image_ctx(results, "--only", "contact_sheet", "--contact-start", "1")
    fig = mf.fig_contact_sheet(ctx)
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == ["1", "2"]
    shown = [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]
    mf.plt.close(fig)
    assert len(shown) == 2
    np.testing.assert_array_equal(shown[0], index_image(results, 1)[1])   # image 1 at min(size, 128) = 40 px
    assert "note:" not in capsys.readouterr().out      # passed indices are used as they are
    # Defaults beyond the set: the notebook's index mod the set's size (the contact sheet: from 0), in a note.
    assert mf.pick_index("--index", None, 687, 100, ["corruption_grid"]) == 87
    assert mf.pick_index("--contact-start", None, 700, 100, ["contact_sheet"], wrap=False) == 0
    assert mf.pick_index("--index", None, 687, 1449, ["corruption_grid"]) == 687      # VOC val: the notebook's
    out = capsys.readouterr().out.splitlines()
    assert out == ["note: --index: the notebook's 687 is beyond this val set of 100 images; corruption_grid uses 87 "
                   "instead (687 mod 100); pass --index to choose",
                   "note: --contact-start: the notebook's 700 is beyond this val set of 100 images; contact_sheet "
                   "uses 0 instead (from the first); pass --contact-start to choose"]
    with pytest.raises(UsageError, match="--qualitative-index 100: the val set has 100 images"):
        mf.pick_index("--qualitative-index", 100, 790, 100, ["qualitative_grid"])


def test_correlation_class_is_the_notebooks_cell_45(results):
    from common.constants import CLASSES
    names = json.load(open(os.path.join(results["dir"], "run.json")))
    names = [m["name"] for m in names["models"]]
    z = np.load(os.path.join(results["dir"], "logits", names[0], "clean_0.npz"))
    k = int(np.argmax(z["count"][1:]) + 1)                      # a foreground class the first model predicts
    args = mf.get_args_parser().parse_args(["--results", results["dir"], "--only", "correlation_class"])
    ctx = mf.read_results(args, args.only)
    assert mf.default_correlation_class(ctx) == 13 and CLASSES[13] == "horse"  # on VOC the notebook's cor[-8:-7]
    ctx["correlation_class"] = k
    fig = mf.fig_correlation_class(ctx)
    got = panels(fig)
    assert {im.get_cmap().name for ax in fig.axes for im in ax.images} == {"plasma"}
    mf.plt.close(fig)
    assert set(got) == {f"{n}: {q}" for n in names for q in ("notebook's", "correlation")}
    assert {clim for _, clim in got.values()} == {(-1, 1)}
    want = notebook_correlation_by_hand(os.path.join(results["dir"], "logits", names[0], "clean_0.npz"))[k]
    data = got[f"{names[0]}: notebook's"][0]
    ok = np.isfinite(data)
    assert ok.sum() > 100
    np.testing.assert_allclose(data[ok], want[ok], rtol=1e-8, atol=1e-10)
    # The lower row: the true correlation of the same pixels' logits (the covariance scaled by its diagonal).
    mu = z["sum"][k] / z["count"][k]
    cov = z["sq"][k] / z["count"][k] - np.outer(mu, mu)
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    data = got[f"{names[0]}: correlation"][0]
    ok = np.isfinite(data)
    np.testing.assert_allclose(data[ok], corr[ok], rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------ any number of classes

def k_class_results(root, dataset, kinds):
    """A results folder over the classes of ``dataset`` (test_analyze_logits.k_class_folder: counts and logit
    states drawn in numpy), its run.json completed with the identity fields make_figures.py requires, analysed."""
    from test_analyze_logits import K_CONDS, k_class_folder
    _, means = k_class_folder(root, dataset, kinds, K_CONDS)
    complete_run_json(root)
    analyze_logits.main(analyze_logits.get_args_parser().parse_args(["--results", str(root), "--bootstrap", "0"]))
    return means


def tick_texts(ax, axis):
    return [t.get_text() for t in getattr(ax, f"get_{axis}ticklabels")()]


def test_cityscapes_matrices_are_over_its_19_classes(tmp_path, capsys):
    from test_analyze_logits import CITYSCAPES
    means = k_class_results(tmp_path, CITYSCAPES, {"base": "baseline", "other": "baseline"})
    names = CITYSCAPES["classes"]
    for m in ("base", "other"):   # class 0 (road) predicted least: without a background it is no special panel
        path = tmp_path / "logits" / m / "clean_0.npz"
        z = dict(np.load(path))
        scale = 0.5 / z["count"][0]        # the same class mean from 0.5 pixels
        z["count"][0], z["sum"][0], z["sq"][0] = 0.5, z["sum"][0] * scale, z["sq"][0] * scale
        np.savez(path, **z)
    analyze_logits.main(analyze_logits.get_args_parser().parse_args(["--results", str(tmp_path), "--bootstrap", "0"]))
    args = mf.get_args_parser().parse_args(["--results", str(tmp_path), "--only", "class_means", "correlations",
                                            "correlation_class", "explained_variance"])
    ctx = mf.read_results(args, args.only)
    assert ctx["classes"].num_classes == 19
    fig = mf.fig_class_means(ctx)
    drawn = panels(fig)
    np.testing.assert_allclose(drawn["base"][0], means["base"], rtol=1e-12)
    matrix_axes = [ax for ax in fig.axes if ax.images]
    assert tick_texts(matrix_axes[0], "y") == names and tick_texts(matrix_axes[0], "x") == names
    # No background class: the four classes predicted most often (over both models), named by Cityscapes.
    counts = sum(np.load(tmp_path / "logits" / m / "clean_0.npz")["count"] for m in ("base", "other"))
    top = np.argsort(-counts, kind="stable")[:4]
    titles = [ax.get_title() for ax in mf.fig_correlations(ctx).axes if ax.images]
    assert [t.split("\n")[0] for t in titles[:4]] == [f"base: {names[k]}" for k in top]
    ev = mf.fig_explained_variance(ctx).axes[0]
    assert len(ev.lines[0].get_xdata()) == 19 and ev.get_xlim() == (0.5, 19.5)
    # --correlation-class follows the dataset: 18 is Cityscapes' last, 19 is refused at run time.
    draw("--results", str(tmp_path), "--out", str(tmp_path / "f"), "--only", "correlation_class",
         "--correlation-class", "18")
    assert (tmp_path / "f" / "correlation_class.png").exists()
    line = refused(capsys, mf, "--results", tmp_path, "--out", tmp_path / "g", "--only", "correlation_class",
                   "--correlation-class", "19")
    assert line == "error: --correlation-class 19: cityscapes has classes 0..18"
    ctx["correlation_class"] = mf.default_correlation_class(ctx)
    assert ctx["correlation_class"] == int(top[0])
    assert mf.fig_correlation_class(ctx)._suptitle.get_text().startswith(f"Class {top[0]} ({names[top[0]]}), clean")
    mf.plt.close("all")


def test_150_classes_keep_their_matrices_with_index_ticks(tmp_path):
    names = [f"class{i:03d}" for i in range(150)]
    dataset = {"name": "many", "classes": names, "palette": [[i, 255 - i, (7 * i) % 256] for i in range(150)],
               "has_background": False, "ignore_index": 255}
    means = k_class_results(tmp_path, dataset, {"base": "baseline"})
    args = mf.get_args_parser().parse_args(["--results", str(tmp_path), "--only", "distance_matrices"])
    ctx = mf.read_results(args, args.only)
    fig = mf.fig_distance_matrices(ctx)
    ax = next(ax for ax in fig.axes if ax.images)
    want = np.sqrt(((means["base"][:, None] - means["base"][None]) ** 2).sum(-1))
    np.testing.assert_allclose(panels(fig)["base"][0], want, rtol=1e-9, atol=1e-9)
    assert panels(fig)["base"][0].shape == (150, 150)
    assert tick_texts(ax, "x") == [str(t) for t in range(0, 150, 20)] and "index" in ax.get_xlabel()
    mf.plt.close("all")


def test_labels_are_drawn_in_the_results_palette():
    from common.datasets import spec_from_record
    from test_analyze_logits import SIX
    spec = spec_from_record(SIX)
    label = np.array([[0, 1, 2], [3, 4, 255]], np.uint8)
    fig, ax = mf.plt.subplots()
    drawing.show(ax, label, label=spec)
    want = np.array([SIX["palette"][c] if c < 6 else [255, 255, 255] for c in label.ravel()]).reshape(2, 3, 3)
    np.testing.assert_array_equal(ax.images[0].get_array(), want)
    drawing.class_legend(fig, [label], spec)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["background", "ant", "bee", "cat", "dog",
                                                                   "ignore (255)"]
    mf.plt.close("all")



@pytest.mark.slow
def test_cityscapes_sweep_end_to_end(tmp_path, capsys):
    # evaluate_corruptions.py --data cityscapes on the synthetic layout (a 19-class model), then analyze_logits.py
    # and every figure: the tables list Cityscapes' names, the label tiles are in its palette.
    from common.datasets import spec_from_record
    from common.synthetic_layouts import ensure_layout
    from test_evaluate_datasets import sweep
    root = ensure_layout("cityscapes", tmp_path / "cs", n_train=2, n_val=2, width=96, height=48, quiet=True)
    out = str(tmp_path / "results")
    assert sweep(root, out, "--corruptions", "gaussian", "brightness", "--severities", "0", "1", "2") == 0
    analyze_logits.main(analyze_logits.get_args_parser().parse_args(["--results", out, "--bootstrap", "10"]))
    run = json.load(open(os.path.join(out, "run.json")))
    spec = spec_from_record(run["dataset"])
    assert spec.name == "cityscapes" and spec.num_classes == 19
    tables = open(os.path.join(out, "tables.md")).read()
    assert all(f"| {i} {name} |" in tables for i, name in enumerate(spec.classes))
    assert "undefined: cityscapes has no background class" in tables
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    bench = [r["miou"] for r in rows if r["corruption"] != "clean"]
    analysis = json.load(open(os.path.join(out, "analysis.json")))
    model = analysis["models"][0]
    assert analysis["per_model"][model]["mpc"]["value"] == pytest.approx(np.mean(bench))
    capsys.readouterr()
    draw("--results", out, "--out", str(tmp_path / "figs"), "--index", "0", "--qualitative-index", "1",
         "--contact-start", "0")
    assert sorted(os.listdir(tmp_path / "figs")) == sorted(f"{f}.png" for f in mf.FIGURES)
    # As reproduce.sh --data cityscapes calls it: the val set from --data and its root flag.
    draw("--results", out, "--out", str(tmp_path / "figs2"), "--data", "cityscapes", "--cityscapes-root", root,
         "--only", "qualitative_grid", "--qualitative-index", "1")
    assert os.listdir(tmp_path / "figs2") == ["qualitative_grid.png"]
    # voc_sample's label tile: its colours are Cityscapes' (and white for 255), not VOC's.
    args = mf.get_args_parser().parse_args(["--results", out, "--only", "voc_sample", "--index", "0"])
    ctx = mf.read_results(args, args.only)
    mf.read_images(args, ctx, args.only)
    fig = mf.fig_voc_sample(ctx)
    shown = fig.axes[1].images[0].get_array().reshape(-1, 3)
    allowed = {tuple(c) for c in spec.palette.tolist()} | {(255, 255, 255)}
    assert {tuple(c) for c in shown.tolist()} <= allowed and len({tuple(c) for c in shown.tolist()}) > 2
    assert fig._suptitle.get_text().startswith("cityscapes val image 0")
    mf.plt.close("all")
