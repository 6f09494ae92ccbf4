"""common/cli.py: the names that become paths (check_plain_name), and an interrupt that lands inside torch.save.
run_cli's one error line and exit 2 are checked through every script in test_error_lines.py and
test_failure_modes.py."""
import argparse
import io
import os
import sys

import pytest
import torch

from common import checkpoint
from common.cli import UsageError, check_plain_name, run_cli


@pytest.mark.parametrize("name", ["baseline", "ibe_seed1", "2007_000032", "SCrIBE-v2.final", "a b"])
def test_plain_names_pass(name):
    assert check_plain_name(name, "x") == name


@pytest.mark.parametrize("name", ["", ".", "..", "../escaped", "a/b", "/abs", "a\\b", ".hidden", " pad", "tab\t",
                                  "nul\0", "line\nbreak", None, 3])
def test_path_like_names_refused(name):
    with pytest.raises(UsageError, match="checkpoint m.pt"):
        check_plain_name(name, "checkpoint m.pt")


class CutFile(io.FileIO):
    """A real file whose third write is cut by Ctrl-C, as a signal landing inside torch.save's zip writer."""
    writes = 0

    def write(self, b):
        CutFile.writes += 1
        if CutFile.writes == 3:
            raise KeyboardInterrupt
        return super().write(b)


def test_ctrl_c_inside_torch_save_is_the_interrupt_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    # torch's writer, cut mid-record, raises RuntimeError("unexpected pos") from its __exit__: the save must
    # still end as the KeyboardInterrupt, with no temporary file and the previous checkpoint untouched.
    path = str(tmp_path / "checkpoint.pt")
    checkpoint.save_checkpoint(path, {"w": torch.zeros(3)})
    before = open(path, "rb").read()
    CutFile.writes = 0
    monkeypatch.setattr(checkpoint, "open", lambda p, mode: CutFile(p, mode), raising=False)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, {"w": torch.ones(1000), "v": torch.ones(1000)})
    assert CutFile.writes == 3 and os.listdir(tmp_path) == ["checkpoint.pt"] and open(path, "rb").read() == before


def test_an_error_raised_while_an_interrupt_unwinds_exits_as_the_interrupt(monkeypatch, capsys):
    def main(args):
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("unexpected pos 46 vs 0")   # a clean-up that fails because of the interrupt

    monkeypatch.setattr(sys, "argv", ["x.py"])
    with pytest.raises(SystemExit) as e:
        run_cli(main, argparse.ArgumentParser(), kept=lambda args: "nothing to keep")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 130 and err == ["interrupted (Ctrl-C): nothing to keep"]


def test_an_error_with_no_interrupt_behind_it_is_not_taken_for_one(monkeypatch):
    def main(args):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(sys, "argv", ["x.py"])
    with pytest.raises(RuntimeError, match="a real bug"):
        run_cli(main, argparse.ArgumentParser())
