"""Convolutions by oneDNN on the CPU, called from XLA through `jax.ffi`.

jaxlib 0.10's XLA:CPU converts bfloat16 convolutions to float32 before any kernel library
sees them (its Eigen and YNNPACK paths alike), so on a CPU with bf16 matrix units (AVX-512
BF16, AMX) a bf16 train step is barely faster than a float32 one, although 70% of a U-Net's
step is convolutions. oneDNN (the library PyTorch's CPU convolutions use) runs them in
bfloat16 with float32 accumulation on those units. This module builds a small FFI library
(`kernels/onednn_conv.cc`: forward, input gradient and kernel gradient of a stride-1 NHWC /
HWIO convolution, float32 or bfloat16) against an installed oneDNN the first time it is
needed, caches the build, and registers its handlers with XLA.

`conv` is a drop-in `lax.conv_general_dilated` for `flax.linen.Conv` (the networks'
`conv_backward="onednn"`): stride-1, undilated, ungrouped NHWC convolutions go to oneDNN,
with a custom VJP whose two gradients are oneDNN's as well; any other convolution stays
XLA's. A network built with it is reverse-mode only (the custom VJP has no JVP), so the
runner samples and evaluates likelihoods with XLA's convolutions (same parameters).

Needs, on the CPU backend only: oneDNN's library and headers (`pip install
"sde_lab[onednn]"`: Intel's onednn-cpu-gomp and onednn-devel-cpu-gomp wheels, or any oneDNN
3.x under `SDE_LAB_ONEDNN_ROOT`), a C++17 compiler (`CXX`, else g++ or c++), and jaxlib's
FFI headers (shipped with jaxlib). `unavailable()` says what is missing.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

from sde_lab.models import conv_args

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "onednn_conv.cc")
TARGETS = {"fwd": "SdeLabConvFwd", "bwd_data": "SdeLabConvBwdData",
           "bwd_weights": "SdeLabConvBwdWeights", "bwd": "SdeLabConvBwd"}
INSTALL_HINT = ('pip install "sde_lab[onednn]" (oneDNN), or point SDE_LAB_ONEDNN_ROOT at a '
                "oneDNN 3.x install with include/ and lib/")
_lock = threading.Lock()
_registered: str | None = None   # path of the loaded library once registered


def _roots() -> list[str]:
    env = os.environ.get("SDE_LAB_ONEDNN_ROOT")
    return [env] if env else [sys.prefix, "/usr/local", "/usr"]


def _find_onednn() -> tuple[str, str] | None:
    """(include dir, lib dir) of a oneDNN install, or None."""
    for root in _roots():
        include = os.path.join(root, "include")
        if not os.path.exists(os.path.join(include, "oneapi", "dnnl", "dnnl.hpp")):
            continue
        for lib in ("lib", "lib64", os.path.join("lib", "x86_64-linux-gnu")):
            if os.path.exists(os.path.join(root, lib, "libdnnl.so")):
                return include, os.path.join(root, lib)
    return None


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def unavailable(dtype=None) -> str | None:
    """None if the oneDNN kernels can be built here (and, given `dtype`, run convolutions
    of that dtype on this CPU), else why not, in one line. Builds the kernels if need be;
    does not start JAX's backends (the runner asks before it sets XLA's flags)."""
    if _find_onednn() is None:
        return f"oneDNN was not found under {', '.join(_roots())}: {INSTALL_HINT}"
    if _compiler() is None:
        return "no C++ compiler to build the oneDNN kernels (set CXX, or install g++)"
    dtype = jnp.dtype(dtype or jnp.float32)
    try:
        supported = _supported(dtype == jnp.bfloat16)
    except (RuntimeError, OSError) as e:  # the build failed, or its cache is not writable
        return str(e).splitlines()[0]
    if not supported:
        return (f"oneDNN has no {dtype.name} convolution for this CPU (bfloat16 "
                "needs AVX-512 or AVX2-VNNI-2): train in float32 with it, or leave "
                "conv_backward at 'auto'")
    return None


@functools.cache
def _supported(bf16: bool) -> bool:
    """Whether oneDNN creates the three convolution primitives for the dtype on this CPU
    (asked of the built library through ctypes, without JAX)."""
    return bool(ctypes.CDLL(build()).SdeLabConvSupported(int(bf16)))


def _jaxlib_version() -> str:
    from importlib import metadata
    return metadata.version("jaxlib")


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sde_lab", "onednn")


def build() -> str:
    """Builds (once per source, oneDNN, jaxlib and compiler) and returns the FFI library."""
    found, cxx = _find_onednn(), _compiler()
    if found is None or cxx is None:
        raise RuntimeError(unavailable())
    include, libdir = found
    with open(SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(b"\0".join([source, include.encode(), libdir.encode(), cxx.encode(),
                                     _jaxlib_version().encode()])).hexdigest()[:16]
    out_dir = os.path.join(_cache_dir(), key)
    path = os.path.join(out_dir, "libsde_lab_onednn.so")
    if os.path.exists(path):
        return path
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise RuntimeError(f"cannot create the oneDNN build cache {out_dir} ({e.strerror}): "
                           "set XDG_CACHE_HOME to a writable directory") from e
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w", SOURCE, "-o", tmp,
           f"-I{jax.ffi.include_dir()}", f"-I{include}", f"-L{libdir}", "-ldnnl",
           f"-Wl,-rpath,{libdir}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"building the oneDNN kernels failed ({' '.join(cmd)}):\n"
                           f"{done.stderr[-2000:]}")
    os.replace(tmp, path)  # atomic: concurrent builders each write their own tmp
    return path


def register() -> None:
    """Builds if needed and registers the FFI handlers with XLA (once per process)."""
    global _registered
    with _lock:
        if _registered:
            return
        path = build()
        lib = ctypes.CDLL(path)
        for name in TARGETS.values():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)),
                                        platform="cpu")
        _registered = path


def threads(dtype) -> int:
    """OpenMP threads per oneDNN call: `SDE_LAB_ONEDNN_THREADS` if set, else 1 for
    bfloat16 and every CPU of the process for float32.

    XLA:CPU's own thread pool is busy around each call (it spins between its kernels) and
    runs independent convolutions side by side, so a team of OpenMP threads competes with
    it for the cores. On a 2-core AMX Xeon the DDPM++ bfloat16 train step took 1.52 s with
    one thread per call and 1.7-3.6 s (unstable) with two; float32 convolutions, 4x longer,
    still gained from two threads (2.85 s against 3.77 s with one). Read at trace time.
    """
    env = os.environ.get("SDE_LAB_ONEDNN_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"SDE_LAB_ONEDNN_THREADS={env!r} is not valid: a positive integer "
                             "(OpenMP threads per oneDNN convolution), or unset for the default")
        return int(env)
    if jnp.dtype(dtype) == jnp.bfloat16:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _attrs(padding, dtype) -> dict:
    (top, bottom), (left, right) = padding
    return dict(pad_t=np.int64(top), pad_b=np.int64(bottom), pad_l=np.int64(left),
                pad_r=np.int64(right), threads=np.int64(threads(dtype)))


def _call(target: str, results, *operands, padding):
    """One FFI call; `results` are the ShapeDtypeStruct(s) of its output(s)."""
    # Under vmap, one call per mapped element (the handlers take rank-4 operands).
    return jax.ffi.ffi_call(TARGETS[target], results, vmap_method="sequential")(
        *operands, **_attrs(padding, operands[0].dtype))


def _out_hw(x_shape, w_shape, padding) -> tuple[int, int]:
    (top, bottom), (left, right) = padding
    return (x_shape[1] + top + bottom - w_shape[0] + 1,
            x_shape[2] + left + right - w_shape[1] + 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, w, padding):
    out = (x.shape[0], *_out_hw(x.shape, w.shape, padding), w.shape[3])
    return _call("fwd", jax.ShapeDtypeStruct(out, x.dtype), x, w, padding=padding)


def _conv_fwd(x, w, padding):
    return _conv(x, w, padding), (x, w)


def _conv_bwd(padding, residuals, dy):
    x, w = residuals
    dy = dy.astype(x.dtype)
    dx_out, dw_out = jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(w.shape, w.dtype)
    if threads(x.dtype) > 1:
        # A team of OpenMP threads per call uses every core, and XLA would run the two
        # independent gradients side by side, two teams on the same cores. The kernel
        # gradient (barriers between its threads) then ran at half its rate in DDPM++'s
        # float32 step (170 GFLOP/s against 330 alone): one call runs them in turn.
        return _call("bwd", (dx_out, dw_out), x, w, dy, padding=padding)
    return (_call("bwd_data", dx_out, dy, w, padding=padding),
            _call("bwd_weights", dw_out, x, dy, padding=padding))


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated` with stride-1 NHWC/HWIO convolutions on oneDNN (see the
    module docstring); pass it as `flax.linen.Conv(..., conv_general_dilated=conv)`."""
    explicit = None
    if (jax.default_backend() == "cpu"  # elsewhere the platform's own convolutions
            and lhs.dtype == rhs.dtype and lhs.dtype in (jnp.float32, jnp.bfloat16)):
        explicit = conv_args.stride1_padding(lhs, rhs, window_strides, padding,
                                             lhs_dilation, rhs_dilation, dimension_numbers,
                                             feature_group_count, **kwargs)
    if explicit is not None and min(min(p) for p in explicit) >= 0:
        why = unavailable(lhs.dtype)
        if why:
            raise ValueError(f"conv_backward='onednn': {why}")
        register()
        return _conv(lhs, rhs, explicit)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        precision=precision, **kwargs)
