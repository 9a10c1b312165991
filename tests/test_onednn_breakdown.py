"""benchmarks/onednn_breakdown.py's reading of oneDNN's verbose lines (no oneDNN needed)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import onednn_breakdown  # noqa: E402

CONV = ("onednn_verbose,exec,cpu,convolution,jit:avx512_core,backward_weights,src_f32::blocked:"
        "acdb::f0 wei_f32:a:blocked:ABcd16b16a::f0 bia_undef::undef::: dst_f32::blocked:acdb::"
        "f0,attr-scratchpad:user ,alg:convolution_direct,mb8_ic256oc128_ih32oh32kh3sh1dh0ph1_"
        "iw32ow32kw3sw1dw0pw1,{ms}")
GEMM = ("onednn_verbose,v1,primitive,exec,cpu,gemm_api,,undef,src_f32::blocked:ab:f0 wei_f32::"
        "blocked:ab:f0 dst_f32::blocked:ab:f0,,,112x256:256x192,{ms}")
REORDER = ("onednn_verbose,exec,cpu,reorder,jit:uni,undef,src_f32::blocked:cdba::f0 dst_f32::"
           "blocked:Bcda64b::f0,,,128x128x3x3,{ms}")


def test_sums_only_the_timed_steps_and_rates_convolutions_by_their_macs():
    mark = onednn_breakdown.MARK
    lines = [CONV.format(ms=99.0), "onednn_verbose,info,cpu,runtime:OpenMP",  # warm-up: left out
             f"{mark} timed", CONV.format(ms=20.0), REORDER.format(ms=1.0), f"{mark} step 2.5",
             CONV.format(ms=30.0), REORDER.format(ms=3.0), GEMM.format(ms=0.5),
             f"{mark} step 3.5"]
    step_s, rows = onednn_breakdown.parse(lines, steps=2)
    assert step_s == [2.5, 3.5]
    by_kind = {(kind, impl): (calls, ms, rate) for kind, impl, calls, ms, rate in rows}
    calls, ms, rate = by_kind[("convolution backward_weights", "jit:avx512_core")]
    assert (calls, ms) == (1, 25.0)
    # 2 * 8 * 256 * 128 * 32 * 32 * 9 FLOP per call, two calls in 50 ms.
    assert rate == pytest.approx(2 * 2 * 8 * 256 * 128 * 32 * 32 * 9 / 50e-3 / 1e9)
    assert by_kind[("reorder", "jit:uni")] == (1, 2.0, None)
    # jaxlib's own oneDNN (a newer version, another line format) runs XLA's matrix products.
    assert by_kind[("gemm_api", "jaxlib's oneDNN (XLA's products)")] == (0.5, 0.25, None)
    assert [r[0] for r in rows] == ["convolution backward_weights", "reorder", "gemm_api"]


def test_reads_the_newer_format_of_pytorchs_own_onednn():
    """PyTorch's oneDNN (3.x, `--reference-dir`) prints v1 lines with the implementation."""
    line = ("onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512_core,backward_weights,"
            "src:f32:a:blocked:aBcd16b::f0 wei:f32:a:blocked:ABcd16b16a::f0 bia:f32:a:blocked:a"
            "::f0 dst:f32:a:blocked:aBcd16b::f0,attr-scratchpad:user,alg:convolution_direct,"
            "mb8_ic256oc256_ih16oh16kh3sh1dh0ph1_iw16ow16kw3sw1dw0pw1,{ms}")
    mark = onednn_breakdown.MARK
    step_s, rows = onednn_breakdown.parse(
        [f"{mark} timed", line.format(ms=7.0), line.format(ms=9.0), f"{mark} step 2.6"], steps=1)
    assert step_s == [2.6]
    [(kind, impl, calls, ms, rate)] = rows
    assert (kind, impl, calls, ms) == ("convolution backward_weights", "jit:avx512_core", 2, 16.0)
    assert rate == pytest.approx(2 * 2 * 8 * 256 * 256 * 16 * 16 * 9 / 16e-3 / 1e9)
