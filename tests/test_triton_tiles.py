"""The Triton backend's work, counted (bench/triton_tiles.py, under the interpreter): each tile of
S is formed once per pass, pass 2 evaluates each element's two probabilities once, and a
forward+backward costs 5 GEMM-equivalents in streaming (the floor's 3 plus two passes) and the
floor's 3 in materialised. And the partials buffer's bound at the sizes it matters."""

from __future__ import annotations

import pytest
import torch

triton_kernels = pytest.importorskip("srem_kernels.backends.triton.kernels")
pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"),
              pytest.mark.skipif(not triton_kernels.INTERPRET, reason="counts under the interpreter")]  # fmt: skip


@pytest.mark.parametrize("B,tiles", [(64, dict(block=32, block_n=16, split=2, splits=2)),
                                     (96, dict(block=32, block_n=16, split=1, splits=3)),
                                     (37, dict(block=16, block_n=16, split=1, splits=2))])  # fmt: skip
def test_each_tile_once_per_pass(B, tiles):
    from bench import triton_tiles

    c = triton_tiles.count("streaming", B, 16, **tiles, panel_rows=32)
    assert c["dots"] == {"_pass1_kernel": 1.0, "_pass2_kernel": 1.0, "_dsim_kernel": 1.0}, c
    assert c["torch_matmuls"] == 2.0 and c["total"] == 5.0 and c["ratio_to_floor"] <= 5 / 3, c
    if B % 32 == 0:  # no padded edge tiles: per element exactly
        assert c["pass2_nlp_per_element"] == 2.0, c  # -log Pr and -log Pc once each (was 4)
    m = triton_tiles.count("materialised", B, 16, **tiles)
    assert m["dots"] == {} and m["total"] == 3.0, m
    if B % 32 == 0:
        assert m["pass2_nlp_per_element"] == 2.0, m


@pytest.mark.parametrize("B", [65536, 262144])
def test_partials_buffer_bound(monkeypatch, B):
    """At most 1 % of one B×B fp32 matrix on a 132-SM device (the plan's K), staging included."""
    monkeypatch.setattr(triton_kernels, "_sm_count", lambda device: 132)
    k = triton_kernels.TritonKernels("streaming")
    for dtype in (torch.bfloat16, torch.float32):
        tiles = k.tiles(dtype, False)
        G, K, grid = k.plan(B, B, torch.device("cuda"), tiles, pairs=True)
        assert K * (K + 1) // 2 >= 4 * 132 and grid == (K, K // 2 + 1)
        size = triton_kernels.partials_bytes(B, K, dtype) + K * 2 * tiles["BM"] ** 2 * 4  # + the staging
        assert size <= 0.01 * 4 * B * B, (K, size)


def test_plan_fills_a_device_at_4096(monkeypatch):
    monkeypatch.setattr(triton_kernels, "_sm_count", lambda device: 132)
    k = triton_kernels.TritonKernels("streaming")
    G, K, grid = k.plan(4096, 4096, torch.device("cuda"), k.tiles(torch.bfloat16, False), pairs=True)
    assert K * (K + 1) // 2 >= 132, K
