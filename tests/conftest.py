"""Fixtures every test module shares: the tiny synthetic dataset and the tiny checkpoints, made once a session.

Tests may read them and copy them, never change them in place: other modules use the same files.
"""
import pytest

from helpers import tiny_checkpoint


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """``synthetic(n_voc_train=2, n_sbd=2, n_val=3, max_side=80)``: the root (a str) of a small synthetic VOC + SBD
    set of that size, generated on first use and shared by every test that asks for the same size."""
    from common.synthetic import ensure_synthetic

    made = {}

    def get(n_voc_train=2, n_sbd=2, n_val=3, max_side=80):
        key = (n_voc_train, n_sbd, n_val, max_side)
        if key not in made:
            root = tmp_path_factory.mktemp("data") / "synthetic"
            ensure_synthetic(root, n_voc_train=n_voc_train, n_sbd=n_sbd, n_val=n_val, max_side=max_side, quiet=True)
            made[key] = str(root)
        return made[key]

    return get


@pytest.fixture(scope="session")
def tiny_data(synthetic):
    """The default tiny set: 2 VOC train, 2 SBD, 3 val images, at most 80 px a side."""
    return synthetic()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """``tiny_ckpt(kind, seed=0)``: the path of a random ResNet-18 model with 8-channel heads, saved as train.py
    saves it, made on first use and shared."""
    folder = tmp_path_factory.mktemp("checkpoints")
    made = {}

    def get(kind, seed=0):
        if (kind, seed) not in made:
            made[kind, seed] = tiny_checkpoint(folder / f"{kind}-{seed}.pt", kind, seed)
        return made[kind, seed]

    return get


@pytest.fixture(scope="session")
def tiny_ckpts(tiny_ckpt):
    """One tiny checkpoint of each structure: {"baseline": seed 1, "ibe": seed 2, "scribe": seed 3}."""
    return {"baseline": tiny_ckpt("baseline", 1), "ibe": tiny_ckpt("ibe", 2), "scribe": tiny_ckpt("scribe", 3)}
