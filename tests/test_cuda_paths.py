"""The scripts' CUDA set-up (device choice, set_device, autocast, GradScaler, channels_last), driven on this
CPU machine through tests/fake_cuda.py, which refuses what a real GPU would refuse."""
import json
import os

import pytest
import torch

import evaluate_corruptions
import make_video
import train
from common.checkpoint import read_checkpoint
from common.device import resolve_device
from common.cli import UsageError
from fake_cuda import FakeCuda
from helpers import run_tiny_train



@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


def run_train(data, out, *extra):
    return run_tiny_train(data, out, "--epochs", "1", *extra)


def test_the_fake_is_as_strict_as_torch_about_set_device(monkeypatch):
    with FakeCuda(count=2) as fake:
        with pytest.raises(ValueError, match="specified index"):
            torch.cuda.set_device(torch.device("cuda"))      # what train.py used to call
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            torch.cuda.set_device(2)
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            torch.zeros(2, device="cuda:5")
        torch.cuda.set_device(torch.device("cuda", 1))
        assert fake.set_device_calls == [1] and torch.zeros(1, device="cuda").device.type == "cpu"
        assert fake.devices == [torch.device("cuda", 1)]     # a bare "cuda" is the current device


@pytest.mark.parametrize("requested", [None, "cuda"])
def test_single_gpu_training_with_a_bare_cuda_device(data, tmp_path, monkeypatch, requested):
    # python train.py --model ibe on a one-GPU machine: the device defaults to cuda. This raised
    # "ValueError: Expected a torch.device with a specified index or an integer" before any work was done.
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    extra = ["--model", "ibe"] + (["--device", requested] if requested else [])
    with FakeCuda() as fake:
        run_train(data, tmp_path, *extra)
    assert fake.set_device_calls == [0]
    assert set(fake.devices) == {torch.device("cuda", 0)}
    assert torch.channels_last in fake.memory_formats          # the model and batches, for cuDNN
    ckpt = read_checkpoint(str(tmp_path / "ibe" / "checkpoint.pt"))
    assert ckpt["args"]["device"] == "cuda:0"
    assert fake.autocasts and all(a == ("cuda", None) for a in fake.autocasts)   # --amp none: fp32
    assert fake.scalers == [("cuda", False)]


def test_explicit_ordinal_and_local_rank_pick_that_gpu(data, tmp_path, monkeypatch):
    with FakeCuda(count=2) as fake:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
        run_train(data, tmp_path / "a", "--model", "baseline", "--device", "cuda:1")
        assert fake.set_device_calls == [1] and set(fake.devices) == {torch.device("cuda", 1)}
        # torchrun's environment: a bare cuda is the process's own GPU.
        monkeypatch.setenv("LOCAL_RANK", "1")
        assert resolve_device("cuda") == torch.device("cuda", 1)
        assert resolve_device("cuda:0") == torch.device("cuda", 0)   # an explicit ordinal wins
        monkeypatch.setenv("LOCAL_RANK", "3")
        with pytest.raises(UsageError, match="LOCAL_RANK=3"):
            resolve_device("cuda")
        with pytest.raises(UsageError, match="2 CUDA device"):
            resolve_device("cuda:2")
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda")   # the fake is gone: this machine has none
    with pytest.raises(UsageError, match="not a device"):
        resolve_device("gpu0")


def test_amp_choices_reach_autocast_and_the_scaler_and_a_run_resumes_in_another_precision(data, tmp_path,
                                                                                           monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    real, calls = train.train_one_epoch, []

    def stop_in_second_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("interrupted")
        return real(*a, **k)

    with FakeCuda() as fake:
        monkeypatch.setattr(train, "train_one_epoch", stop_in_second_epoch)
        with pytest.raises(KeyboardInterrupt):
            run_train(data, tmp_path, "--model", "baseline", "--device", "cuda", "--amp", "bf16", "--epochs", "2")
        monkeypatch.setattr(train, "train_one_epoch", real)
        assert ("cuda", torch.bfloat16) in fake.autocasts and fake.scalers == [("cuda", False)]
        fake.autocasts.clear(), fake.scalers.clear()
        # fp16 needs the loss scaler; a resume may change the precision (a bf16 run has no scaler state).
        run_train(data, tmp_path, "--model", "baseline", "--device", "cuda", "--amp", "fp16", "--epochs", "2",
                  "--resume")
        assert ("cuda", torch.float16) in fake.autocasts and fake.scalers == [("cuda", True)]
    rows = [json.loads(line) for line in open(tmp_path / "baseline" / "log.jsonl")]
    assert [r["amp"] for r in rows] == ["bf16", "fp16"]
    assert read_checkpoint(str(tmp_path / "baseline" / "checkpoint.pt"))["scaler"]["scale"] > 0


def test_sweep_on_cuda_with_bf16(data, tmp_path, monkeypatch, tiny_ckpt):
    ckpt = tiny_ckpt("baseline", 0)
    args = evaluate_corruptions.get_args_parser().parse_args(
        ["--checkpoints", ckpt, "--data", "synthetic", "--synthetic-root", data, "--corruptions", "brightness",
         "--severities", "0", "1", "--size", "32", "--workers", "0", "--device", "cuda", "--amp", "bf16",
         "--out", str(tmp_path / "res")])
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with FakeCuda() as fake:
        assert evaluate_corruptions.main(args) == 0
    assert fake.set_device_calls == [0] and set(fake.devices) == {torch.device("cuda", 0)}
    assert fake.autocasts and set(fake.autocasts) == {("cuda", torch.bfloat16)}
    assert torch.channels_last in fake.memory_formats
    rows = [json.loads(line) for line in open(tmp_path / "res" / "metrics.jsonl")]
    assert len(rows) == 2 and all(0 <= r["miou"] <= 1 for r in rows)


def test_video_on_cuda(tmp_path, monkeypatch, tiny_ckpt):
    a, b = tiny_ckpt("baseline", 0), tiny_ckpt("scribe", 1)
    out = tmp_path / "demo.mp4"
    args = make_video.get_args_parser().parse_args(
        ["--synthetic", "--frames", "4", "--baseline", a, "--robust", b, "--out", str(out), "--device", "cuda",
         "--size", "64", "--batch-size", "2"])
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with FakeCuda() as fake:
        assert make_video.main(args) in (0, None)
    assert fake.set_device_calls == [0] and torch.device("cuda", 0) in fake.devices
    assert os.path.getsize(out) > 0


def test_training_and_the_sweep_import_without_pyav_or_zlib_ng():
    # A GPU machine without registry access may lack them: only the video (PyAV) and the PNG encoder of the
    # dump (zlib-ng) need them, and they import them where they are used.
    import subprocess
    import sys
    from helpers import ROOT
    code = ("import sys; sys.modules['av'] = None; sys.modules['zlib_ng'] = None\n"
            "import train, evaluate_corruptions, analyze_logits\n"
            "import common.vocc\n"
            "try:\n    common.vocc.rgb_png(__import__('numpy').zeros((2, 2, 3), 'uint8'))\n"
            "except ImportError:\n    print('encoder needs zlib_ng')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "encoder needs zlib_ng"   # the block is real: the encoder does import it


def test_sync_bn_under_torchrun_needs_cuda(monkeypatch, tmp_path):
    # Torch's SyncBatchNorm runs on GPUs only: on CPU processes it is refused up front, not by a torch traceback.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    args = train.get_args_parser().parse_args(["--model", "ibe", "--device", "cpu", "--sync-bn", "--out",
                                               str(tmp_path)])
    with pytest.raises(UsageError, match="--sync-bn needs CUDA"):
        train.init_distributed(args)
