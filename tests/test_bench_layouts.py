"""fastopt.bench_layouts: the real models' params (their published counts) and the --layout
option of fastopt bench."""

from __future__ import annotations

import json

import pytest

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
