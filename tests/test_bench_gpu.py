"""bench.py --gpu driven on this CPU through tests/fake_cuda.py, at --tiny size (its numbers mean nothing;
what is tested is that every group runs, reports and is kept), and device_check.sh's command lines."""
import json
import os
import shlex
import subprocess
import sys
import time

import pytest
import torch

import bench
import evaluate_corruptions
import train
from benchmarks import corruption
from fake_cuda import FakeCuda
from helpers import ROOT, cli


def run_bench(tmp_path, *argv):
    """bench.main in-process; returns (exit status, the JSON lines of --out)."""
    out = tmp_path / "bench.jsonl"
    args = bench.get_args_parser().parse_args(["--tiny", "--root", str(tmp_path / "root"), "--out", str(out), *argv])
    rc = bench.main(args)
    return rc, [json.loads(line) for line in open(out)] if out.exists() else []


def stub_fresh_processes(monkeypatch):
    """The dump group runs dump_voc_c.py in fresh processes and times corrupt_image alone in another (five
    interpreter starts, a minute here; the dump itself is tested in test_dump_voc_c.py, the real processes by
    `python bench.py --tiny`). Stand-ins with the same outputs keep its arithmetic running: the seconds a dump
    reports, and (seconds, per corruption) of corrupt_image alone."""
    def fake_run_dump(argv, images, log):
        return 1.0 + images * 0.2 / int(argv[argv.index("--workers") + 1])
    monkeypatch.setattr(corruption, "run_dump", fake_run_dump)
    monkeypatch.setattr(corruption, "in_fresh_process", lambda fn, *args: (0.18 * len(args[2]), {"zoom_blur": 0.18}))


# What each group must report (the JSON keys of BENCHMARKS.md), listed here independently of bench.py.
KEYS = {"machine": {"machine_forward_s"},
        "quick_step": {f"quick_{p}_speedup_{m}" for p in ("train", "eval")
                       for m in ("fp32_channels_last", "bf16_contiguous", "bf16_channels_last")},
        "train_v3": {"train_bf16_speedup_v3", "train_images_per_s_v3", "mfu_fp32_v3", "mfu_bf16_channels_last_v3"},
        "train_v3plus": {"train_bf16_speedup_v3plus", "train_images_per_s_v3plus", "mfu_fp32_v3plus",
                         "mfu_bf16_channels_last_v3plus"},
        "infer_v3": {f"infer_images_per_s_{k}_v3" for k in ("baseline", "ibe", "scribe")},
        "infer_v3plus": {f"infer_images_per_s_{k}_v3plus" for k in ("baseline", "ibe", "scribe")},
        "deterministic": {"deterministic_cost_v3"}, "logits": {"logits_vs_forward", "logits_vs_loop"},
        "calibration": {"calibration_vs_forward", "calibration_alone_vs_forward", "condition_stats_vs_forward",
                        "calibration_softmax_vs_forward", "calibration_sigmoid_vs_forward",
                        "calibration_every_pixel_vs_forward"},
        "corrupt": {"corrupt_all_75_per_image"}, "study": {"study_projected_minutes", "study_projected_minutes_v3plus"},
        "sweep_v3": {"sweep_efficiency_v3", "shared_calls_v3", "shared_time_v3"},
        "sweep_v3plus": {"sweep_efficiency_v3plus", "shared_calls_v3plus", "shared_time_v3plus"},
        "dump": {"dump_scaling", "dump_overhead"}, "train": {"train_vs_decode", "train_16_workers"},
        "video": {"video_render", "video_end_to_end"},
        "gradients": {f"ce_over_bce_gradient_{on}_{a}" for on in ("logits", "params") for a in ("v3", "v3plus")},
        "slide": {"slide_vs_whole"}}
ROW = {"measured", "target", "rule", "ok", "seconds"}


@pytest.mark.slow   # several bench groups or a fresh interpreter: ~5-13 s
def test_gpu_bench_runs_every_group_and_keeps_each_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    stub_fresh_processes(monkeypatch)
    with FakeCuda() as fake:
        rc, lines = run_bench(tmp_path, "--gpu")
    assert rc == 0
    # All but the opt-in dump_full (only --only runs it), in the documented order.
    assert [line["group"] for line in lines] == [g for g in bench.GROUPS if g != "dump_full"] == list(KEYS)
    assert all("results" in line and "error" not in line for line in lines), [line.get("error") for line in lines]
    for line in lines:   # each group its own keys, each row the row schema, each line the line schema
        assert set(line["results"]) == KEYS[line["group"]], line["group"]
        assert all(ROW <= set(row) for row in line["results"].values())
        assert {"group", "estimate_s", "seconds", "max_memory_allocated_mib", "results", "notes"} <= set(line)
    # The sweep's one seam counted every corruption of the 3-model sweep, once for all three models.
    calls = {k: v for line in lines for k, v in line["results"].items()}["shared_calls_v3"]
    assert calls["calls_3_models"] == calls["calls_1_model"] == calls["calls_expected"] > 0
    # Printed as each group ended, the same lines as in --out; the last stdout line holds every target.
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"group"')]
    assert printed == lines
    # set_device got an index (a bare "cuda" raises in the fake as on a GPU); bf16 reached autocast on cuda.
    assert fake.set_device_calls and all(isinstance(i, int) for i in fake.set_device_calls)
    assert ("cuda", torch.bfloat16) in fake.autocasts and ("cuda", None) in fake.autocasts
    assert set(fake.devices) == {torch.device("cuda", 0)}
    assert torch.channels_last in fake.memory_formats
    res = {k: v for line in lines for k, v in line["results"].items()}
    # The fake is "NVIDIA H100 80GB HBM3": the SXM board, bf16 1,979 TFLOP/s with sparsity in the datasheet.
    assert res["mfu_bf16_channels_last_v3"]["peak_tflops"] == pytest.approx(989.5)
    assert res["mfu_fp32_v3plus"]["peak_tflops"] == pytest.approx(494.5)
    # CPU-calibrated ratios are information on a GPU, never misses.
    for key in ("shared_time_v3", "shared_time_v3plus", "logits_vs_forward"):
        assert res[key]["rule"] == "info" and res[key]["ok"] is None and res[key]["cpu_target"]
    # The study's headline is the notebook recipe's model; DeepLabV3+ beside it.
    assert res["study_projected_minutes"]["arch"] == "deeplabv3"
    assert res["study_projected_minutes"]["recipe"] == "notebook"
    assert res["study_projected_minutes_v3plus"]["arch"] == "deeplabv3plus"
    assert "lower_bound" not in res["study_projected_minutes"]     # the corrupt group ran before it
    # Both sweeps and both model families measured; per-group peak memory reported.
    assert {"sweep_efficiency_v3", "sweep_efficiency_v3plus", "train_images_per_s_v3",
            "train_images_per_s_v3plus", "infer_images_per_s_scribe_v3", "deterministic_cost_v3"} <= set(res)
    assert all(line["max_memory_allocated_mib"] == 0.0 for line in lines)   # the fake's allocator: nothing
    # --deterministic's global switches are put back for whatever runs next.
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


def test_a_failing_group_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    def broken(ctx, arch):
        raise ValueError(f"no kernel for {arch}")

    monkeypatch.setattr(bench, "bench_infer_model", broken)
    with FakeCuda():
        rc, lines = run_bench(tmp_path, "--gpu", "--only", "train_v3", "infer_v3", "logits", "study")
    assert rc == 1                                                       # non-zero because one group failed
    by = {line["group"]: line for line in lines}
    assert list(by) == ["train_v3", "infer_v3", "logits", "study"]
    assert by["infer_v3"]["error"] == "ValueError: no kernel for deeplabv3"   # the traceback's last line
    assert "results" not in by["infer_v3"]
    assert set(by["train_v3"]["results"]) == KEYS["train_v3"]           # before and after it: measured
    assert set(by["logits"]["results"]) == KEYS["logits"]
    assert "needs" in by["study"]["skipped"]                            # its inputs are missing: not a failure


def test_minutes_skips_the_groups_that_no_longer_fit(tmp_path, monkeypatch):
    # Under --tiny every estimate is 1 s: 2.4 s fit train_v3, which is made to take longer than that (on a fast
    # machine its two tiny train.py runs take ~1.2 s), so nothing fits after it.
    real = bench.bench_train_model

    def slow_train(*a, **kw):
        time.sleep(2.5)
        return real(*a, **kw)
    monkeypatch.setattr(bench, "bench_train_model", slow_train)
    with FakeCuda():
        rc, lines = run_bench(tmp_path, "--gpu", "--minutes", "0.04", "--only", "train_v3", "logits")
    assert rc == 0
    ran, skipped = lines
    assert skipped["group"] == "logits" and skipped["skipped"] == "budget" and skipped["left_s"] < 1
    assert ran["group"] == "train_v3" and "results" in ran


def test_the_budget_rule_by_hand():
    # 4 minutes, 200 s spent: 40 s left.
    assert bench.fits(40, 4, 200) and not bench.fits(41, 4, 200)
    assert not bench.fits(1, 4, 240)
    assert bench.fits(10**9, None, 10**6)            # no --minutes: no budget
    assert bench.last_line("Traceback (most recent call last):\n  File x\nKeyError: 'a'\n") == "KeyError: 'a'"


@pytest.mark.slow   # several bench groups or a fresh interpreter: ~5-13 s
def test_model_groups_need_none_of_the_optional_packages(tmp_path, monkeypatch):
    # The GPU image has torch, torchvision, numpy, Pillow, OpenCV and scipy, but no PyAV, zlib-ng or
    # imagecorruptions: "--only model logits" must run there.
    for name in ("av", "zlib_ng", "imagecorruptions"):
        monkeypatch.setitem(sys.modules, name, None)    # import raises ImportError
    with FakeCuda():
        rc, lines = run_bench(tmp_path, "--gpu", "--only", "model", "logits")
    assert rc == 0
    assert [line["group"] for line in lines] == ["machine", "quick_step", "train_v3", "train_v3plus", "infer_v3",
                                                 "infer_v3plus", "deterministic", "logits", "study"]
    study = lines[-1]["results"]["study_projected_minutes"]
    assert "lower_bound" in study                        # no corruption timing: said so, not hidden


@pytest.mark.slow   # several bench groups or a fresh interpreter: ~5-13 s
def test_bench_imports_without_pyav_and_zlib_ng():
    code = "import sys; sys.modules['av'] = None; sys.modules['zlib_ng'] = None; import bench"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-500:]


def test_gpu_mode_refuses_on_a_cpu_machine_with_one_line():
    proc = cli("bench.py", "--gpu", timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --gpu needs CUDA, which this torch build or machine does "
                                                "not have; use --quick"]
    assert "Traceback" not in proc.stderr


def test_device_check_parses_and_its_command_lines_are_valid(tmp_path):
    script = os.path.join(ROOT, "device_check.sh")
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    env = dict(os.environ, DEVICE_CHECK_DRY="1", OUT=str(tmp_path / "out"), PYTHON="python3")
    proc = subprocess.run(["bash", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert not (tmp_path / "out").exists()                 # a dry run writes nothing
    parsers = {"bench.py": bench.get_args_parser(), "train.py": train.get_args_parser(),
               "evaluate_corruptions.py": evaluate_corruptions.get_args_parser()}
    parsed = {}
    for cmd in commands:
        if len(cmd) > 1 and cmd[1] in parsers:
            assert cmd[0] == "python3"                     # $PYTHON honoured
            parsed.setdefault(cmd[1], []).append(parsers[cmd[1]].parse_args(cmd[2:]))   # SystemExit if not
    assert ["nvidia-smi"] in commands
    (b,) = parsed["bench.py"]
    assert b.gpu and b.minutes == 4 and b.out == str(tmp_path / "out" / "bench.jsonl")
    trains = parsed["train.py"]
    assert [a.model for a in trains] == ["baseline", "ibe", "scribe"]
    for a in trains:
        train.resolve_recipe(a)
        assert (a.recipe, a.arch, a.output_stride, a.amp, a.epochs, a.data) == ("notebook", "deeplabv3", 8, "bf16",
                                                                                 2, "synthetic")
    (sweep,) = parsed["evaluate_corruptions.py"]
    assert sweep.checkpoints == [os.path.join(trains[0].out, k, "checkpoint.pt") for k in ("baseline", "ibe", "scribe")]
    assert sweep.limit and sweep.amp == "bf16"
