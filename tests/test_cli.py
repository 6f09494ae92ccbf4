"""common/cli.py: the names that become paths (check_plain_name). run_cli's one error line and exit 2 are checked
through every script in test_error_lines.py and test_failure_modes.py."""
import pytest

from common.cli import UsageError, check_plain_name


@pytest.mark.parametrize("name", ["baseline", "ibe_seed1", "2007_000032", "SCrIBE-v2.final", "a b"])
def test_plain_names_pass(name):
    assert check_plain_name(name, "x") == name


@pytest.mark.parametrize("name", ["", ".", "..", "../escaped", "a/b", "/abs", "a\\b", ".hidden", " pad", "tab\t",
                                  "nul\0", "line\nbreak", None, 3])
def test_path_like_names_refused(name):
    with pytest.raises(UsageError, match="checkpoint m.pt"):
        check_plain_name(name, "checkpoint m.pt")
