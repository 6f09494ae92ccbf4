"""Put the repository root on sys.path so tests import the scripts and ``common`` as users do."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_configure(config):
    # Long end-to-end cases (torchrun, whole sweeps by hand). They run by default, as in CI
    # (`python -m pytest -q tests`); `-m "not slow"` leaves them out for a quick local pass.
    config.addinivalue_line("markers", "slow: a long end-to-end case (runs by default; deselect with -m 'not slow')")
