"""Launch configuration of the GPU kernels: the one place that sets block shapes and work per block.

Every public function reads :data:`CONFIG` when it is called, so a test can shrink the blocks (and make tiny
inputs span several blocks with a partial last one) with ``monkeypatch.setattr(launch, "CONFIG", ...)`` or
:func:`configured`. Sizes here are in threads or elements; the kernels derive their tiles from them.
"""

import contextlib
import dataclasses


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Block shapes and work sizes.

    Attributes
    ----------
    tile_threads : (int, int)
        Threads (along W, along H) of a depthwise forward / grad-input block. 32 along W: one warp reads a
        row segment, so loads and stores are coalesced.
    rows_per_thread : int
        Output rows each of those threads computes (1-8): the tile is ``tile_threads[0]`` wide and
        ``tile_threads[1] * rows_per_thread`` high, and its halo is loaded once for all of them.
    shared_bytes : int
        Dynamic shared memory a depthwise block may use. A tile that does not fit is shrunk; a kernel too
        large for even the smallest tile reads global memory directly.
    reduce_threads : int
        Threads of a reduction block (grad-weight, bias gradient); a power of two up to 256.
    reduce_elements : int
        Products a reduction block sums before its partial result is written.
    gemm_threads : (int, int)
        Threads (along pixels, along rows) of a pointwise block; each computes a 4x4 patch of outputs, so
        the tile is ``4 * gemm_threads`` outputs.
    gemm_tile_k : int
        Depth of the shared-memory slices of the pointwise product.
    gemm_target_blocks : int
        Blocks the pointwise grad-weight aims for when it splits its long reduction (N*H*W) into chunks.
    """

    tile_threads: tuple = (32, 8)
    rows_per_thread: int = 4
    shared_bytes: int = 48 * 1024
    reduce_threads: int = 256
    reduce_elements: int = 8192
    gemm_threads: tuple = (16, 16)
    gemm_tile_k: int = 16
    gemm_target_blocks: int = 1024

    def __post_init__(self):
        for name in ("rows_per_thread", "shared_bytes", "reduce_threads", "reduce_elements", "gemm_tile_k",
                     "gemm_target_blocks"):  # fmt: skip
            if int(getattr(self, name)) < 1:
                raise ValueError(f"LaunchConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("tile_threads", "gemm_threads"):
            bx, by = getattr(self, name)
            if bx < 1 or by < 1 or bx * by > 1024:
                raise ValueError(f"LaunchConfig.{name} must be two sizes >= 1 with a product <= 1024, got {(bx, by)}")
        if self.rows_per_thread > MAX_ROWS_PER_THREAD:
            raise ValueError(f"LaunchConfig.rows_per_thread must be <= {MAX_ROWS_PER_THREAD}")
        r = self.reduce_threads
        if r > 256 or r & (r - 1):
            raise ValueError(f"LaunchConfig.reduce_threads must be a power of two <= 256, got {r}")


# Compile-time sizes of the per-thread arrays (registers or local memory) the kernels declare.
MAX_ROWS_PER_THREAD = 8

CONFIG = LaunchConfig()


@contextlib.contextmanager
def configured(**changes):
    """Run a block of code with some launch settings changed, e.g. ``configured(reduce_threads=64)``."""
    global CONFIG
    saved = CONFIG
    CONFIG = dataclasses.replace(saved, **changes)
    try:
        yield CONFIG
    finally:
        CONFIG = saved


def blocks(count, per_block):
    """Blocks needed to cover ``count`` items, ``per_block`` at a time."""
    return -(-count // per_block)
