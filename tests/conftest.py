"""GPU tests carry the ``cuda`` marker: they run where fastopt's CUDA engine and a device
are present, and are skipped (and reported as skipped) everywhere else."""

import pytest

import fastopt


def pytest_collection_modifyitems(config, items):
    if fastopt.cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU (or fastopt's CUDA engine not built)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
