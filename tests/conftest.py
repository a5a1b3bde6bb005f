"""GPU tests carry the ``cuda`` marker: they run where fastopt's CUDA engine and a device
are present, and are skipped (and reported as skipped) everywhere else; with
``FASTOPT_REQUIRE_CUDA=1`` (the GPU check) each of them fails instead, with the reason.

Kernels load eagerly (CUDA_MODULE_LOADING=EAGER, read when CUDA initialises, after this runs):
with lazy loading the first launch of each kernel synchronises, which the tests that a step
never waits for the GPU would take for a wait."""

import os

import pytest

os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")

import fastopt  # noqa: E402


def pytest_collection_modifyitems(config, items):
    reason = fastopt.cuda.unavailable_reason()
    if reason == "" or fastopt.cuda._required():
        return
    skip = pytest.mark.skip(reason=f"no CUDA GPU here: {reason}")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_setup(item):
    if "cuda" in item.keywords and fastopt.cuda._required():
        fastopt.cuda.engine()  # raises with the reason the engine is missing
