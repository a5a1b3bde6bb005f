"""How ZeroOptimizer lays params out: per-dtype flat buckets, cut into pieces, shared by ranks.

A bucket holds the params of one dtype back to back, in param order. Each param is cut into
pieces of at most ``PIECE`` elements from its start: the super-blocks of fastopt's canonical
reductions (``src/cpp/include/fastopt/reduce.h``), and a multiple of 8-bit state's blocks. A
rank owns a contiguous run of whole pieces of each bucket, so a param cut across ranks is cut
where its canonical sums are cut: a piece's sum of squares is one super-block's, and folding
its pieces' sums in order gives the param's sum bit for bit, whatever the world size.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import _core

PIECE = _core.task_elems  # reduce.h's kSuper


@dataclass(frozen=True)
class Piece:
    param: int   # the param's index (in param order, across groups)
    start: int   # its first element in the param (a multiple of PIECE)
    numel: int
    offset: int  # its first element in the bucket


@dataclass(frozen=True)
class Bucket:
    dtype: str
    params: tuple[int, ...]   # in param order
    offsets: tuple[int, ...]  # each param's first element in the bucket
    numel: int
    pieces: tuple[Piece, ...]
    bounds: tuple[int, ...]   # rank r owns pieces[bounds[r]:bounds[r + 1]]

    def shard(self, rank: int) -> tuple[int, int]:
        """The elements [begin, end) of the bucket that rank owns."""
        first, last = self.bounds[rank], self.bounds[rank + 1]
        begin = self.pieces[first].offset if first < len(self.pieces) else self.numel
        end = self.pieces[last].offset if last < len(self.pieces) else self.numel
        return begin, end


def balanced_bounds(sizes: list[int], world: int) -> tuple[int, ...]:
    """Cuts a run of pieces (their sizes) into ``world`` contiguous runs: run r starts at the
    piece whose start is nearest r / world of the total (each run within a piece of its share)."""
    starts, at = [], 0
    for n in sizes:
        starts.append(at)
        at += n
    bounds = [0]
    for r in range(1, world):
        target = at * r / world
        k = bounds[-1]
        while k < len(sizes) and abs(starts[k] + sizes[k] - target) <= abs(starts[k] - target):
            k += 1
        bounds.append(k)
    bounds.append(len(sizes))
    return tuple(bounds)


def plan(shapes: list[tuple[int, ...]], dtypes: list[str], world: int) -> list[Bucket]:
    """The buckets of params of these shapes and dtype names (in param order), one per dtype in
    the order the dtypes first appear, each shared among ``world`` ranks."""
    buckets = []
    for dtype in dict.fromkeys(dtypes):
        params = tuple(i for i, d in enumerate(dtypes) if d == dtype)
        offsets, pieces, at = [], [], 0
        for i in params:
            numel = 1
            for n in shapes[i]:
                numel *= n
            offsets.append(at)
            pieces += [Piece(i, s, min(PIECE, numel - s), at + s) for s in range(0, numel, PIECE)]
            at += numel
        buckets.append(Bucket(dtype, params, tuple(offsets), at, tuple(pieces),
                              balanced_bounds([p.numel for p in pieces], world)))
    return buckets
