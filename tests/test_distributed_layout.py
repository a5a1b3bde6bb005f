"""fastopt.distributed.layout: buckets per dtype, pieces on the canonical reductions'
super-blocks, contiguous and balanced shards."""

import pytest

from fastopt.distributed.layout import PIECE, balanced_bounds, plan


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
def test_every_element_is_in_one_piece_and_one_shard(world):
    shapes = [(3 * PIECE + 5,), (10, 7), (PIECE,), (1,), (2, PIECE // 2 + 3), (0,)]
    dtypes = ["float32", "bfloat16", "float32", "bfloat16", "float32", "float32"]
    buckets = plan(shapes, dtypes, world)
    assert [b.dtype for b in buckets] == ["float32", "bfloat16"]
    for b in buckets:
        assert list(b.params) == [i for i, d in enumerate(dtypes) if d == b.dtype]
        at = 0
        for piece in b.pieces:  # back to back, each within PIECE, starting on a super-block
            assert piece.offset == at and 0 < piece.numel <= PIECE and piece.start % PIECE == 0
            assert piece.offset == b.offsets[b.params.index(piece.param)] + piece.start
            at += piece.numel
        assert at == b.numel
        shards = [b.shard(r) for r in range(world)]
        assert shards[0][0] == 0 and shards[-1][1] == b.numel
        assert all(shards[r][1] == shards[r + 1][0] for r in range(world - 1))


def test_shards_are_balanced_within_a_piece():
    sizes = [PIECE] * 10 + [17] * 40 + [PIECE // 3] * 7
    total = sum(sizes)
    for world in (2, 3, 4, 7):
        bounds = balanced_bounds(sizes, world)
        for r in range(world):
            share = sum(sizes[bounds[r]:bounds[r + 1]])
            assert abs(share - total / world) <= 2 * PIECE, (world, r, share)
