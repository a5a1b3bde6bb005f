"""fastopt.bench_layouts: the real models' params (their published counts) and the --layout
option of fastopt bench."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastopt import bench_layouts
from fastopt.bench import SPECS
from fastopt.bench_layouts import MODELS, layout_sizes, named_layouts
from fastopt.cli import main

PUBLISHED = {"gpt2-small": 124_439_808, "bert-base": 109_482_240, "resnet-50": 25_557_032,
             "vit-b16": 86_567_656, "llama-1b": 1_235_814_400}


@pytest.mark.parametrize("name", list(MODELS))
def test_a_models_params_add_up_to_its_published_count(name):
    assert sum(layout_sizes(name)) == PUBLISHED[name]


def test_named_layouts():
    single, mixed, resnet = named_layouts(("single", "mixed", "resnet-50"), 100, (60, 40), "cpu")
    assert (single.sizes, mixed.sizes, len(resnet.sizes)) == ((100,), (60, 40), 161)
    assert single.shapes is None and resnet.shapes == tuple(MODELS["resnet-50"]())
    views = resnet.views(np.arange(sum(resnet.sizes), dtype=np.float32))
    assert [v.shape for v in views] == list(resnet.shapes) and views[1][0] == 64 * 3 * 7 * 7
    assert len(named_layouts(("llama-1b",), 100, (), "cuda")[0].sizes) == 146
    with pytest.raises(ValueError, match="layout llama-1b is GPU only"):
        named_layouts(("llama-1b",), 100, (), "cpu")


def test_bench_on_a_model_layout(capsys):
    argv = ["bench", "--layout", "resnet-50,single", "--size", "2**10", "--optimizers", "sgd", "--no-torch",
            "--repeats", "1", "--warmup", "0"]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layouts"] == {"resnet-50": [161, PUBLISHED["resnet-50"]], "single": [1, 1024]}
    probes = [r for r in report["rows"] if r["impl"] == "probe"]
    assert len(probes) == 2  # one per layout
    resnet = next(r for r in report["rows"] if r["layout"] == "resnet-50" and r["impl"] == "fastopt")
    assert resnet["num_tensors"] == 161
    assert main(argv) == 0
    assert "resnet-50 (161 tensors)" in capsys.readouterr().out


def test_unknown_layouts_and_the_gpu_only_one_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--layout", "gpt3"])
    assert "unknown layout 'gpt3'" in capsys.readouterr().err
    assert main(["bench", "--layout", "llama-1b", "--optimizers", "sgd"]) == 2
    assert "GPU only" in capsys.readouterr().err


def test_adafactor_moves_other_bytes_over_matrices():
    # a matrix: param r+w 8, grad read by the factor pass, the first pass and the update 12,
    # the first pass's param read 4 (its row and column values are no stream); a vector: 32
    spec, f32 = SPECS["adafactor"], np.dtype(np.float32)
    assert spec.bytes_per_param(f32) == 32 and spec.bytes_per_param(f32, [(8,)]) == 32
    assert spec.bytes_per_param(f32, [(4, 8)]) == spec.bytes_per_param(f32, [(2, 3, 4, 8)]) == 24
    assert spec.bytes_per_param(f32, [(4, 8), (8,)]) == (32 * 24 + 8 * 32) / 40
    assert SPECS["adamw"].bytes_per_param(f32, [(4, 8), (8,)]) == 28
    assert "params of >= 2 dims 24 B" in spec.describe(f32)


def test_adafactor_on_a_model_layout_factors_its_matrices(capsys, monkeypatch):
    # A model of a batch of conv kernels, a matrix and a bias: fastopt's and torch's Adafactor
    # both keep row and column values for the first two (same results), at its bytes per param.
    pytest.importorskip("torch")
    shapes = [(8, 4, 3, 3), (16, 40), (40,)]
    monkeypatch.setitem(bench_layouts.MODELS, "tiny", lambda: list(shapes))
    argv = ["bench", "--layout", "tiny", "--optimizers", "adafactor", "--repeats", "1", "--warmup", "0", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["impl"]: r for r in report["rows"] if r["layout"] == "tiny"}
    n = [8 * 4 * 3 * 3, 16 * 40, 40]
    assert rows["fastopt"]["bytes_per_param"] == round((24 * (n[0] + n[1]) + 32 * n[2]) / sum(n), 3)
    assert rows["torch-forloop"]["max_abs_diff"] < 1e-6
