"""Which `lax.conv_general_dilated` calls the custom convolutions take over: a stride-1,
undilated, ungrouped NHWC/HWIO convolution, with its padding made explicit. Shared by
`layers.gemm_backward_conv` and `sde_lab.onednn.conv` (imports nothing of sde_lab, so
both can import it)."""

from __future__ import annotations

from typing import Sequence

import jax

NHWC = ("NHWC", "HWIO", "NHWC")


def explicit_padding(padding, kernel_hw: Sequence[int]) -> tuple[tuple[int, int], ...] | None:
    """Stride-1 padding as ((lo, hi), (lo, hi)); None for a mode not mapped here."""
    if isinstance(padding, str):
        if padding == "VALID":
            return ((0, 0), (0, 0))
        if padding == "SAME":
            return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_hw)
        return None
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def stride1_padding(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                    dimension_numbers=None, feature_group_count=1, **kwargs):
    """((top, bottom), (left, right)) if `lax.conv_general_dilated` with these arguments is
    a stride-1, undilated, ungrouped NHWC/HWIO convolution without preferred_element_type,
    else None."""
    simple = (tuple(window_strides) == (1, 1) and lhs.ndim == 4 and feature_group_count == 1
              and all(d == 1 for d in (lhs_dilation or (1, 1)))
              and all(d == 1 for d in (rhs_dilation or (1, 1)))
              and not kwargs.get("preferred_element_type")
              and dimension_numbers == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                                                      NHWC))
    return explicit_padding(padding, rhs.shape[:2]) if simple else None
