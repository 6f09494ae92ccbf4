"""Make the code believe it runs on CUDA, on a machine without a GPU, so its CUDA set-up can be tested here.

    with FakeCuda(count=2) as fake:
        train.main(args)                       # --device cuda, --amp bf16, ...
    fake.set_device_calls, fake.autocasts, fake.scalers, fake.devices, fake.memory_formats

What is faked, and how strictly:
- ``torch.cuda.is_available`` / ``device_count`` / ``current_device`` / ``get_device_name`` / ``synchronize`` /
  memory statistics: a machine with ``count`` GPUs.
- ``torch.cuda.set_device``: as strict as the real one. It parses its argument with torch's own
  ``_get_device_index`` (which raises ``ValueError: Expected a torch.device with a specified index or an
  integer`` for a bare ``torch.device("cuda")``) and refuses an ordinal the machine does not have.
- Every tensor or module sent to a CUDA device (``.to``, ``device=`` of a factory function) is checked the
  same way (an index beyond ``count`` raises as CUDA's "invalid device ordinal" does), recorded, and kept on
  the CPU, through a ``TorchFunctionMode`` that sees every torch call of this thread.
- ``Tensor.pin_memory`` (the DataLoader's, for a CUDA device) returns the tensor as it is.
- ``torch.autocast`` and ``torch.amp.GradScaler``: recorded with the device type and dtype asked for, then
  run as their CPU versions, so bf16 / fp16 arithmetic really happens.
"""
import pytest
import torch
from torch.cuda._utils import _get_device_index
from torch.overrides import TorchFunctionMode

_REAL_AUTOCAST = torch.autocast
_REAL_SCALER = torch.amp.GradScaler


class FakeCuda:
    def __init__(self, count: int = 1, name: str = "NVIDIA H100 80GB HBM3"):
        self.monkeypatch, self.count, self.name = pytest.MonkeyPatch(), count, name
        self.current = 0
        self.set_device_calls, self.devices, self.memory_formats = [], [], []
        self.autocasts, self.scalers = [], []
        self._mode = _CpuForCuda(self)

    # ------------------------------------------------------------------ what the fake checks

    def index_of(self, device) -> int:
        """The CUDA ordinal ``device`` names (None: the current one); refuses one this machine lacks."""
        device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        index = self.current if device.index is None else device.index
        if not 0 <= index < self.count:
            raise RuntimeError(f"CUDA error: invalid device ordinal (asked for {device}, have {self.count})")
        return index

    def redirect(self, device):
        """A CUDA device becomes the CPU, after the checks; anything else passes through unchanged."""
        if isinstance(device, (str, torch.device)) and torch.device(device).type == "cuda":
            self.devices.append(torch.device("cuda", self.index_of(device)))
            return torch.device("cpu")
        return device

    def set_device(self, device):
        index = _get_device_index(device)   # torch's own parsing, which refuses a bare torch.device("cuda")
        if index >= 0:
            self.index_of(index)
            self.current = index
            self.set_device_calls.append(index)

    # ------------------------------------------------------------------ installing it

    def __enter__(self):
        mp, cuda = self.monkeypatch, torch.cuda
        mp.setattr(cuda, "is_available", lambda: True)
        mp.setattr(cuda, "device_count", lambda: self.count)
        mp.setattr(cuda, "current_device", lambda: self.current)
        mp.setattr(cuda, "set_device", self.set_device)
        mp.setattr(cuda, "get_device_name", lambda device=None: self.name)
        mp.setattr(cuda, "get_device_capability", lambda device=None: (9, 0))
        mp.setattr(cuda, "is_bf16_supported", lambda *a, **k: True)
        mp.setattr(cuda, "synchronize", lambda device=None: None)
        mp.setattr(cuda, "max_memory_allocated", lambda device=None: 0)
        mp.setattr(cuda, "reset_peak_memory_stats", lambda device=None: None)
        mp.setattr(cuda, "empty_cache", lambda: None)
        fake = self

        def autocast(device_type, dtype=None, enabled=True, cache_enabled=None):
            if device_type not in ("cuda", "cpu"):
                raise RuntimeError(f"autocast: unexpected device type {device_type!r}")
            fake.autocasts.append((device_type, dtype if enabled else None))
            return _REAL_AUTOCAST("cpu", dtype=dtype, enabled=enabled)

        def grad_scaler(device="cuda", *args, **kwargs):
            fake.scalers.append((device, kwargs.get("enabled", True)))
            return _REAL_SCALER("cpu", *args, **kwargs)

        mp.setattr(torch, "autocast", autocast)
        mp.setattr(torch.amp, "GradScaler", grad_scaler)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        self.monkeypatch.undo()
        return False


class _CpuForCuda(TorchFunctionMode):
    """Every torch call of this thread: CUDA devices in ``device=`` and in ``.to(...)`` become the CPU."""

    def __init__(self, fake: FakeCuda):
        super().__init__()
        self.fake = fake

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs:
            kwargs["device"] = self.fake.redirect(kwargs["device"])
        if func is torch.Tensor.to:
            args = tuple(self.fake.redirect(a) for a in args)
            if kwargs.get("memory_format") is not None:
                self.fake.memory_formats.append(kwargs["memory_format"])
        elif func is torch.Tensor.cuda:
            self.fake.redirect(args[1] if len(args) > 1 else kwargs.pop("device", "cuda"))
            return args[0]
        elif func in (torch.Tensor.pin_memory, torch.Tensor.is_pinned):
            # The DataLoader pins batches for a CUDA device (pin_memory=True): page-locked host memory needs
            # the driver, and makes no difference to the values.
            return args[0] if func is torch.Tensor.pin_memory else True
        return func(*args, **kwargs)
