"""The parameter shapes of real models, for ``fastopt bench --layout NAME``: every trainable
tensor of the published architecture, in module order (buffers such as batch-norm running
statistics are not params). Their totals are the models' published parameter counts."""

from __future__ import annotations

from typing import Callable

from .bench_measure import Layout

Shapes = list[tuple[int, ...]]


def gpt2_small() -> Shapes:
    """GPT-2 small (Radford et al. 2019; the released 124M checkpoint): vocab 50257, context
    1024, width 768, 12 blocks (LayerNorm, fused qkv projection, output projection, LayerNorm,
    4x MLP), a final LayerNorm; the output head is tied to the token embedding. 124,439,808."""
    d = 768
    shapes: Shapes = [(50257, d), (1024, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


def bert_base() -> Shapes:
    """BERT-base (Devlin et al. 2019), uncased: vocab 30522, 512 positions, 2 token types,
    width 768, 12 layers (query, key, value, output, LayerNorm, 3072-wide intermediate, output,
    LayerNorm), and the pooler. 109,482,240."""
    d, ff = 768, 3072
    shapes: Shapes = [(30522, d), (512, d), (2, d), (d,), (d,)]
    for _ in range(12):
        shapes += [(d, d), (d,)] * 4 + [(d,), (d,), (ff, d), (ff,), (d, ff), (d,), (d,), (d,)]
    return shapes + [(d, d), (d,)]


def resnet50() -> Shapes:
    """ResNet-50 (He et al. 2016), as torchvision builds it: a 7x7 stem, bottleneck stages of
    3, 4, 6 and 3 blocks (widths 64 to 512, expansion 4, a projection in each stage's first
    block), batch norms (weight and bias), a 1000-way classifier. 25,557,032."""
    shapes: Shapes = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, inplanes, 1, 1), (width,), (width,), (width, width, 3, 3), (width,), (width,),
                       (4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if b == 0:
                shapes += [(4 * width, inplanes, 1, 1), (4 * width,), (4 * width,)]
            inplanes = 4 * width
    return shapes + [(1000, 2048), (1000,)]


def vit_b16() -> Shapes:
    """ViT-B/16 (Dosovitskiy et al. 2021) at 224x224, as torchvision builds it: 16x16 patch
    projection, class token, 197 position embeddings, width 768, 12 blocks (LayerNorm, fused qkv,
    output projection, LayerNorm, 3072-wide MLP), a final LayerNorm and a 1000-way head.
    86,567,656."""
    d, ff = 768, 3072
    shapes: Shapes = [(d, 3, 16, 16), (d,), (1, 1, d), (1, 197, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (ff, d), (ff,), (d, ff), (d,)]
    return shapes + [(d,), (d,), (1000, d), (1000,)]


def llama_1b() -> Shapes:
    """A Llama-style 1B model, Llama 3.2 1B's shapes (Meta 2024): vocab 128256, width 2048, 16
    layers (RMSNorm, grouped-query attention with 32 query and 8 key/value heads of 64, RMSNorm,
    SwiGLU MLP 8192 wide), a final RMSNorm; the output head tied to the embedding.
    1,235,814,400."""
    d, kv, ff = 2048, 512, 8192
    shapes: Shapes = [(128256, d)]
    for _ in range(16):
        shapes += [(d,), (d, d), (kv, d), (kv, d), (d, d), (d,), (ff, d), (ff, d), (d, ff)]
    return shapes + [(d,)]


MODELS: dict[str, Callable[[], Shapes]] = {
    "gpt2-small": gpt2_small, "bert-base": bert_base, "resnet-50": resnet50, "vit-b16": vit_b16,
    "llama-1b": llama_1b,
}
GPU_ONLY = ("llama-1b",)  # (AdamW over it moves 35 GB per step: beyond the CPU machines' memory)


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def layout_sizes(name: str) -> list[int]:
    """The element counts of model ``name``'s params (a key of MODELS)."""
    return [numel(s) for s in MODELS[name]()]


def named_layouts(names: tuple[str, ...], size: int, mixed: tuple[int, ...], device: str) -> list[Layout]:
    """The layouts ``names`` (``single``: one tensor of ``size``; ``mixed``: tensors of the
    sizes ``mixed``; a model of MODELS: its params), or ValueError for an unknown name or a
    GPU-only model on the CPU."""
    out = []
    for name in names:
        if name == "single":
            out.append(Layout("single", (size,)))
        elif name == "mixed":
            out.append(Layout("multi", mixed))
        elif name in GPU_ONLY and device != "cuda":
            raise ValueError(f"layout {name} is GPU only (AdamW over its params moves 35 GB a step): use --device cuda")
        else:
            shapes = tuple(MODELS[name]())
            out.append(Layout(name, tuple(numel(s) for s in shapes), shapes))
    return out


def check_layout_names(names: tuple[str, ...]) -> None:
    for name in names:
        if name not in ("single", "mixed") and name not in MODELS:
            raise ValueError(f"unknown layout {name!r}; choose from single, mixed, {', '.join(MODELS)}")
