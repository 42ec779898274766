"""Fixtures for the detection tests: a small generated data set in VOC's layout (experiments/data/make_voc_like.py)."""

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_voc_like", ROOT / "experiments" / "data" / "make_voc_like.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_voc_like = _load_generator()

#: Split sizes of the shared tree: small, so that every test stays fast.
COUNTS = {("2007", "trainval"): 12, ("2007", "test"): 8, ("2012", "trainval"): 12}


@pytest.fixture(scope="session")
def voc_tree(tmp_path_factory) -> Path:
    """A read-only generated VOC tree (the folder that holds VOCdevkit/); copy it before changing it."""
    out = tmp_path_factory.mktemp("voc")
    make_voc_like.make_voc_like(out, COUNTS, seed=0, size_range=(64, 96))
    return out


@pytest.fixture
def voc_copy(voc_tree, tmp_path) -> Path:
    """A private copy of :func:`voc_tree` that a test may break."""
    dst = tmp_path / "data"
    shutil.copytree(voc_tree, dst)
    return dst


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One thread (tests/conftest.py): these tensors are tiny, and on a busy machine a second thread only waits."""
