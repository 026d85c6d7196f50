"""A hand-written CPU kernel for the first block of a ConvNet (conv -> instance norm -> ReLU -> 2x2 average pool).

Why: in a training step of ConvNet-3 on 28x28 images (Fashion-MNIST/MNIST) the first block's ``(N, 128, 32, 32)``
maps are written, read and differentiated several times by memory-bound passes (im2col matmul, norm, ReLU, pool
and their backward); measured on the 2-core CPU, 100 images, bf16, 2 threads: about 57 of the ~100 ms of a
forward + backward (docs/speed.md). Its conv has few input channels (``k = C_in * 9 <= 64`` patch values per
position), so with the instance-norm statistics folded into a per-image affine map (see
:func:`ptmdd_lightning.nets.fast.convnet_features_cl`) the whole block is

    ``out[n, i, j, c] = 1/4 * sum_{a, b in {0, 1}} relu(B[n, c] + sum_k A[n, k, c] * cols[n, k, 2i + a, 2j + b])``

which this kernel computes in one pass per image, writing only the pooled map; its backward (``dA``, ``dB`` and,
when asked, ``dcols``) is one pass as well. Everything else (the statistics, ``A`` and ``B`` from the weights,
the chain rule to the weights and the image) is ordinary autograd.

The kernel is C++ compiled once per machine with the system C++ compiler (the one ``torch.compile`` uses on the
CPU; ``-O3 -march=native``), cached under ``$PTMDD_CACHE`` (default ``~/.cache/ptmdd``) by a hash of the source,
the compiler flags and the CPU's feature flags, and loaded with ``ctypes``. Threads split the images; the result
does not depend on the thread count (every image is computed by one thread, sums over images happen in torch).
:func:`available` says whether it could be built; the callers fall back to the compiled tensor formulation.

Pure torch + ctypes; never imports Lightning.
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
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["PooledReluAffine", "available", "pooled_relu_affine"]

_SOURCE = r"""
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#include <algorithm>

// 16 floats (one AVX-512 register; two AVX2 registers elsewhere): GCC/Clang vector extension
typedef float v16 __attribute__((vector_size(64)));
static inline v16 ld(const float* p) { v16 v; std::memcpy(&v, p, sizeof(v)); return v; }
static inline void st(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }
static inline v16 splat(float x) { return v16{} + x; }
static inline v16 relu(v16 z) { v16 zero{}; return z > zero ? z : zero; }

// out[n, i, j, c] = 0.25 * sum_{a,b} relu(B[n,c] + sum_k A[n,k,c] * cols[n,k,2i+a,2j+b])
// cols: (N, K, H, W) float32, A: (N, K, C), B: (N, C), out: (N, H/2, W/2, C); H, W even, C % 16 == 0.
// KK > 0: K known at compile time (A's 16-channel slices stay in registers); KK == 0: any K.
template <int KK>
static void fwd_range(const float* __restrict cols, const float* __restrict A, const float* __restrict B,
                      float* __restrict out, int64_t n0, int64_t n1, int64_t Kr, int64_t C, int64_t H, int64_t W) {
    const int64_t K = KK > 0 ? KK : Kr;
    const int64_t H2 = H / 2, W2 = W / 2, P = H * W;
    std::vector<v16> a(K);
    std::vector<float> vk(4 * K);
    for (int64_t n = n0; n < n1; ++n) {
        const float* cn = cols + n * K * P;
        for (int64_t c0 = 0; c0 < C; c0 += 16) {
            for (int64_t k = 0; k < K; ++k) a[k] = ld(A + (n * K + k) * C + c0);
            const v16 b = ld(B + n * C + c0);
            for (int64_t i = 0; i < H2; ++i) {
                for (int64_t j = 0; j < W2; ++j) {
                    v16 acc{};
                    for (int64_t q = 0; q < 4; ++q) {
                        const int64_t p = (2 * i + (q >> 1)) * W + (2 * j + (q & 1));
                        v16 z = b;
                        for (int64_t k = 0; k < K; ++k) z += cn[k * P + p] * a[k];
                        acc += relu(z);
                    }
                    st(out + ((n * H2 + i) * W2 + j) * C + c0, acc * 0.25f);
                }
            }
        }
    }
}

// gout: (N, H/2, W/2, C). dA: (N, K, C), dB: (N, C) (overwritten); dcols (N, K, H, W) (overwritten) or null.
template <int KK>
static void bwd_range(const float* __restrict cols, const float* __restrict A, const float* __restrict B,
                      const float* __restrict gout, float* __restrict dA, float* __restrict dB,
                      float* __restrict dcols, int64_t n0, int64_t n1, int64_t Kr, int64_t C, int64_t H, int64_t W) {
    const int64_t K = KK > 0 ? KK : Kr;
    const int64_t H2 = H / 2, W2 = W / 2, P = H * W;
    std::vector<v16> a(K), da(K);
    for (int64_t n = n0; n < n1; ++n) {
        const float* cn = cols + n * K * P;
        float* dcn = dcols ? dcols + n * K * P : nullptr;
        if (dcn) std::fill(dcn, dcn + K * P, 0.f);
        for (int64_t c0 = 0; c0 < C; c0 += 16) {
            for (int64_t k = 0; k < K; ++k) { a[k] = ld(A + (n * K + k) * C + c0); da[k] = v16{}; }
            const v16 b = ld(B + n * C + c0);
            v16 db{};
            for (int64_t i = 0; i < H2; ++i) {
                for (int64_t j = 0; j < W2; ++j) {
                    const v16 go = ld(gout + ((n * H2 + i) * W2 + j) * C + c0) * 0.25f;
                    for (int64_t q = 0; q < 4; ++q) {
                        const int64_t p = (2 * i + (q >> 1)) * W + (2 * j + (q & 1));
                        v16 z = b;
                        for (int64_t k = 0; k < K; ++k) z += cn[k * P + p] * a[k];
                        v16 zero{};
                        const v16 g = z > zero ? go : zero;
                        db += g;
                        for (int64_t k = 0; k < K; ++k) da[k] += g * cn[k * P + p];
                        if (dcn) {
                            for (int64_t k = 0; k < K; ++k) {
                                const v16 t = g * a[k];
                                float s = 0.f;
                                for (int l = 0; l < 16; ++l) s += t[l];
                                dcn[k * P + p] += s;
                            }
                        }
                    }
                }
            }
            for (int64_t k = 0; k < K; ++k) st(dA + (n * K + k) * C + c0, da[k]);
            st(dB + n * C + c0, db);
        }
    }
}

template <typename F>
static void split(int64_t N, int64_t threads, F f) {
    threads = std::max<int64_t>(1, std::min<int64_t>(threads, N));
    if (threads == 1) { f(0, N); return; }
    std::vector<std::thread> pool;
    const int64_t per = (N + threads - 1) / threads;
    for (int64_t t = 1; t < threads; ++t) {
        const int64_t a = std::min(N, t * per), b = std::min(N, (t + 1) * per);
        if (a < b) pool.emplace_back(f, a, b);
    }
    f(0, std::min(N, per));
    for (auto& th : pool) th.join();
}

extern "C" {
int ptmdd_abi_version() { return 2; }
void ptmdd_pooled_relu_affine_fwd(const float* cols, const float* A, const float* B, float* out, int64_t N,
                                  int64_t K, int64_t C, int64_t H, int64_t W, int64_t threads) {
    split(N, threads, [=](int64_t a, int64_t b) {
        if (K == 9) fwd_range<9>(cols, A, B, out, a, b, K, C, H, W);
        else if (K == 27) fwd_range<27>(cols, A, B, out, a, b, K, C, H, W);
        else fwd_range<0>(cols, A, B, out, a, b, K, C, H, W);
    });
}
void ptmdd_pooled_relu_affine_bwd(const float* cols, const float* A, const float* B, const float* gout, float* dA,
                                  float* dB, float* dcols, int64_t N, int64_t K, int64_t C, int64_t H, int64_t W,
                                  int64_t threads) {
    split(N, threads, [=](int64_t a, int64_t b) {
        if (K == 9) bwd_range<9>(cols, A, B, gout, dA, dB, dcols, a, b, K, C, H, W);
        else if (K == 27) bwd_range<27>(cols, A, B, gout, dA, dB, dcols, a, b, K, C, H, W);
        else bwd_range<0>(cols, A, B, gout, dA, dB, dcols, a, b, K, C, H, W);
    });
}
}
"""

_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-pthread"]


def _cpu_signature() -> str:
    """The CPU model and feature flags (a library built with ``-march=native`` on one CPU may not run on another)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("flags", "model name"))][:2]
        return "\n".join(lines)
    except OSError:
        import platform

        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("PTMDD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ptmdd")
    return Path(root) / "kernels"


def _build(target: Path) -> None:
    cxx = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if cxx is None:
        raise RuntimeError("no C++ compiler on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "block1.cpp"
        src.write_text(_SOURCE)
        out = Path(tmp) / target.name
        proc = subprocess.run([cxx, *_FLAGS, str(src), "-o", str(out)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {proc.stderr[-500:]}")
        os.replace(out, target)  # atomic: concurrent ranks/processes never load a half-written library


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if sys.platform.startswith("win") or os.environ.get("PTMDD_CPU_KERNELS", "1").strip().lower() in ("0", "off",
                                                                                                       "false", "no"):
        return None
    key = hashlib.sha256("\0".join([_SOURCE, " ".join(_FLAGS), _cpu_signature()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"ptmdd_block1_{key}.so"
    try:
        if not target.exists():
            _build(target)
        lib = ctypes.CDLL(str(target))
    except Exception as e:  # noqa: BLE001 - any build/load failure: the tensor formulation is used instead
        warnings.warn(f"ptmdd: the CPU kernel for the ConvNet first block could not be built or loaded ({e}); using "
                      "the compiled tensor formulation instead (slower).", stacklevel=3)
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.ptmdd_pooled_relu_affine_fwd.argtypes = [ptr, ptr, ptr, ptr] + [i64] * 6
    lib.ptmdd_pooled_relu_affine_bwd.argtypes = [ptr] * 7 + [i64] * 6
    return lib


def available() -> bool:
    """Whether the kernel is built and loaded (builds it on the first call: ~2 s with g++)."""
    return _library() is not None


def _check(cols: Tensor, a: Tensor, b: Tensor) -> tuple[int, int, int, int, int]:
    n, k, h, w = cols.shape
    c = a.shape[-1]
    if (cols.device.type != "cpu" or cols.dtype != torch.float32 or a.shape != (n, k, c) or b.shape != (n, c)
            or h % 2 or w % 2 or c % 16):
        raise ValueError(f"pooled_relu_affine needs float32 CPU cols (N, K, H, W) with even H, W, A (N, K, C) with C a "
                         f"multiple of 16, "
                         f"B (N, C); got {tuple(cols.shape)} {cols.dtype} {cols.device}, {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    return n, k, c, h, w


class PooledReluAffine(torch.autograd.Function):
    """``out = avgpool2x2(relu(B + A^T cols))`` per image; see the module docstring. Autograd function."""

    @staticmethod
    def forward(ctx, cols: Tensor, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        lib = _library()
        assert lib is not None
        cols, a, b = cols.contiguous(), a.float().contiguous(), b.float().contiguous()
        n, k, c, h, w = _check(cols, a, b)
        out = torch.empty(n, h // 2, w // 2, c, dtype=torch.float32)
        lib.ptmdd_pooled_relu_affine_fwd(cols.data_ptr(), a.data_ptr(), b.data_ptr(), out.data_ptr(), n, k, c, h, w,
                                         torch.get_num_threads())
        ctx.save_for_backward(cols, a, b)
        return out

    @staticmethod
    def backward(ctx, gout: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:  # type: ignore[override]
        lib = _library()
        assert lib is not None
        cols, a, b = ctx.saved_tensors
        n, k, c, h, w = _check(cols, a, b)
        gout = gout.float().contiguous()
        da = torch.empty_like(a)
        db = torch.empty_like(b)
        dcols = torch.empty_like(cols) if ctx.needs_input_grad[0] else None
        lib.ptmdd_pooled_relu_affine_bwd(cols.data_ptr(), a.data_ptr(), b.data_ptr(), gout.data_ptr(), da.data_ptr(),
                                         db.data_ptr(), 0 if dcols is None else dcols.data_ptr(), n, k, c, h, w,
                                         torch.get_num_threads())
        return dcols, da, db


def pooled_relu_affine(cols: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``out[n, i, j, c] = 1/4 sum_{a,b in {0,1}} relu(B[n, c] + sum_k A[n, k, c] cols[n, k, 2i+a, 2j+b])``.

    Args:
        cols: ``(N, K, H, W)`` float32 CPU patch maps (``H``, ``W`` even).
        a: ``(N, K, C)`` per-image weights; b: ``(N, C)`` per-image offsets (cast to float32).

    Returns:
        ``(N, H / 2, W / 2, C)`` float32 (channels last). Differentiable w.r.t. all three inputs.

    Raises:
        ValueError: other dtypes/devices/shapes. RuntimeError: the kernel is not :func:`available`.
    """
    if _library() is None:
        raise RuntimeError("the ptmdd CPU kernel is not available (see the warning issued when building it)")
    return PooledReluAffine.apply(cols, a, b)
