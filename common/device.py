"""Device, precision and reproducibility set-up shared by every script that runs a model.

    device = resolve_device(args.device)          # None -> cuda if available; "cuda" -> cuda:<index>
    with autocast(device, args.amp): logits = model(x)
    fmt = memory_format(device, args.amp)          # channels_last on CUDA, and on the CPU under bf16
    seed_everything(args.seed)                     # Python's, numpy's and torch's global generators

``torch.cuda.set_device`` refuses a device without an index (``torch.device("cuda")`` raises
``ValueError: Expected a torch.device with a specified index or an integer``), so a bare ``cuda`` is
turned into ``cuda:<LOCAL_RANK>`` under torchrun and into the current device otherwise, before anything
uses it. ``cuda:N`` is honoured as given.
"""
import os
import random

import numpy as np
import torch

from .cli import UsageError

# --amp choices -> autocast dtype ("none": fp32, as the paper trained).
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(requested=None) -> torch.device:
    """The ``--device`` string as a ``torch.device`` that always carries an index on CUDA.

    None means cuda when available, else cpu. Under torchrun (LOCAL_RANK set) a bare ``cuda`` is the
    process's own GPU. Refuses, with one line, a CUDA device that this machine does not have.
    """
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"--device {requested!r}: not a device ({e}); use cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise UsageError(f"--device {requested}: CUDA is not available here; use --device cpu")
    index = device.index
    if index is None:
        local = os.environ.get("LOCAL_RANK")
        index = int(local) if local is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise UsageError(f"--device {requested}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
                         + (f" (LOCAL_RANK={os.environ['LOCAL_RANK']})" if device.index is None else ""))
    return torch.device("cuda", index)


def use_device(device: torch.device, amp: str = "none") -> None:
    """Make ``device`` the current CUDA device (a no-op elsewhere; it must carry an index), with float32 arithmetic
    as ``set_float32_precision(amp)`` says."""
    set_float32_precision(amp)
    if device.type == "cuda":
        torch.cuda.set_device(device)


def set_float32_precision(amp: str = "none") -> None:
    """Float32 convolutions and matrix products in full precision under --amp none, TF32 allowed otherwise.

    The notebook ran torch 1.6, before TF32 existed; since 1.7 torch runs float32 convolutions in TF32 on Ampere
    and Hopper GPUs by default (10 mantissa bits). --amp none is the notebook's arithmetic, so it turns that off;
    --amp bf16 is the fast deviation and leaves TF32 on for what runs outside autocast. No effect on the CPU."""
    mode = "ieee" if amp == "none" else "tf32"
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        torch.backends.cudnn.conv.fp32_precision = mode
        torch.backends.cuda.matmul.fp32_precision = mode
    else:   # torch before the fp32_precision settings
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"


def autocast(device: torch.device, amp: str = "none"):
    """``torch.autocast`` for the --amp choice on ``device``'s type; disabled for "none"."""
    if amp not in AMP_DTYPES:
        raise UsageError(f"--amp {amp!r}: expected one of {', '.join(AMP_DTYPES)}")
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def memory_format(device: torch.device, amp: str = "none"):
    """The layout of the model and its batches: channels_last on CUDA (cuDNN's fast layout) and on the CPU under
    bf16 autocast (oneDNN's bf16 convolutions are faster in it); the default layout otherwise. In float32 on the
    CPU, channels_last did not speed up training (``bench.py --only quick_step``; BENCHMARKS.md, Decisions), so
    float32 CPU runs keep the layout, and the weights, they always had."""
    if device.type == "cuda" or (device.type == "cpu" and amp == "bf16"):
        return torch.channels_last
    return torch.contiguous_format


def set_deterministic(enabled: bool) -> None:
    """cuDNN's deterministic algorithms and torch's deterministic kernels, for bit-identical GPU reruns.

    cuBLAS needs CUBLAS_WORKSPACE_CONFIG set before its first call to be deterministic. Kernels that have
    no deterministic CUDA version (bilinear upsampling's backward, which every model here uses) warn
    instead of failing (``warn_only``): a rerun is then as repeatable as torch can make it. On the CPU
    every kernel used here is deterministic already.
    """
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's (which takes 32 bits) and torch's global generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
