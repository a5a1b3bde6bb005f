"""fastopt beyond one device, on torch.distributed: :class:`ZeroOptimizer` (ZeRO stage 1, the
optimizer state sharded over the ranks) and :class:`OffloadOptimizer` (GPU training stepped on
the CPU, the fp32 master and state in host memory)."""

from .offload import OffloadOptimizer
from .zero import ZeroOptimizer

__all__ = ["ZeroOptimizer", "OffloadOptimizer"]
