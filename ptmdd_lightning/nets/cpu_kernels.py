"""Hand-written CPU kernels for the training path of ConvNet-3 (conv -> instance norm -> ReLU -> 2x2 average pool).

Why: in a training step of ConvNet-3 on 28x28 images (Fashion-MNIST/MNIST) the blocks' maps are written, read
and differentiated several times by memory-bound passes (im2col matmul, norm, ReLU, pool and their backward);
measured on the 2-core CPU, 100 images, bf16, 2 threads: about 57 of the ~100 ms of a forward + backward went to
the first block alone (docs/speed.md, lever 12). Two kernels:

* :func:`pooled_relu_affine`, the first block. Its conv has few input channels (``k = C_in * 9 <= 64`` patch
  values per position), so with the instance-norm statistics folded into a per-image affine map (see
  :func:`ptmdd_lightning.nets.fast.first_block_kernel`) the whole block is

      ``out[n, i, j, c] = 1/4 * sum_{a, b in {0, 1}} relu(B[n, c] + sum_k A[n, k, c] * cols[n, 2i + a, 2j + b, k])``

  computed in one pass per image, writing only the pooled map (float32 or bf16) and the ReLU mask (1 bit per
  value); its backward (``dA``, ``dB`` and, when asked, ``dcols``) is one pass of ``k + 1`` multiply-adds per
  value.
* :func:`instance_norm_relu_pool`, every later block after its (oneDNN) convolution: the statistics, the
  normalisation, ReLU and the pooling of channels-last float32/bf16 maps in one pass each way.

Everything else (the statistics of the first block, ``A`` and ``B`` from the weights, the convolutions, the chain
rule to the weights) is ordinary autograd.

The kernels are C++ compiled once per machine with the system C++ compiler (the one ``torch.compile`` uses on
the CPU; ``-O3 -march=native``), cached under ``$PTMDD_CACHE`` (default ``~/.cache/ptmdd``) by a hash of the
source, the compiler flags and the CPU's feature flags, and loaded with ``ctypes``. Threads split the images; the
result does not depend on the thread count (every image is computed by one thread, sums over images happen in
torch). :func:`available` says whether they could be built (``PTMDD_CPU_KERNELS=0`` turns them off); the callers
fall back to the compiled tensor formulation or the module.

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

__all__ = ["InstanceNormReluPool", "PooledReluAffine", "available", "instance_norm_relu_pool", "pooled_relu_affine"]

_SOURCE = r"""
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#include <algorithm>
#include <cmath>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// 16 floats (one AVX-512 register; two AVX2 registers elsewhere): GCC/Clang vector extension
typedef float v16 __attribute__((vector_size(64)));
static inline v16 ld(const float* p) { v16 v; std::memcpy(&v, p, sizeof(v)); return v; }
static inline void st(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }
static inline v16 splat(float x) { return v16{} + x; }
static inline v16 relu(v16 z) { v16 zero{}; return z > zero ? z : zero; }
typedef int32_t i16v __attribute__((vector_size(64)));
// bit l = (z[l] > 0), and back: lane l of the result is on when bit l is set
static inline uint16_t positive_bits(v16 z) {
#if defined(__AVX512F__)
    __m512 x; std::memcpy(&x, &z, sizeof(x));
    return (uint16_t)_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
#else
    uint16_t bits = 0;
    for (int l = 0; l < 16; ++l) bits |= (uint16_t)(z[l] > 0.f) << l;
    return bits;
#endif
}
static inline v16 select_bits(uint16_t bits, v16 x) {
    const i16v sel = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
    const i16v on = (sel & (int32_t)bits) != 0;
    return on ? x : v16{};
}

// bf16 <-> float32 (bf16 as its uint16_t bit pattern; rounding to nearest even, as PyTorch)
typedef uint16_t h16 __attribute__((vector_size(32)));
typedef uint32_t u16v __attribute__((vector_size(64)));
static inline v16 ldt(const float* p) { return ld(p); }
static inline v16 ldt(const uint16_t* p) {
    h16 h; std::memcpy(&h, p, sizeof(h));
    u16v w = __builtin_convertvector(h, u16v) << 16;
    v16 f; std::memcpy(&f, &w, sizeof(f)); return f;
}
static inline void stt(float* p, v16 f) { st(p, f); }
static inline void stt(uint16_t* p, v16 f) {
    u16v u; std::memcpy(&u, &f, sizeof(u));
    u16v r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    i16v nan = f != f;
    r = (u16v)((i16v)r & ~nan) | ((u16v)nan & 0x7FC0u);
    h16 h = __builtin_convertvector(r, h16); std::memcpy(p, &h, sizeof(h));
}


// out[n, i, j, c] = 0.25 * sum_{a,b} relu(B[n,c] + sum_k A[n,k,c] * cols[n,2i+a,2j+b,k])
// cols: (N, H, W, K) float32 (patch values last: one position's K values are contiguous), A: (N, K, C), B: (N, C),
// out: (N, H/2, W/2, C) as T (float or bf16); H, W even, C % 16 == 0, K <= 64. mask (N, C/16, H*W) uint16: bit l of
// mask[n, c/16, p] = (pre-activation of channel c + l at position p > 0), written when MASK, for the backward.
// KK > 0: K known at compile time (the 16-channel slices of A live in registers); KK == 0: any K <= 64.
constexpr int64_t KMAX = 64;
template <int KK, typename T, bool MASK>
static void fwd_range(const float* __restrict cols, const float* __restrict A, const float* __restrict B,
                      T* __restrict out, uint16_t* __restrict mask, int64_t n0, int64_t n1, int64_t Kr, int64_t C,
                      int64_t H, int64_t W) {
    const int64_t K = KK > 0 ? KK : Kr;
    const int64_t H2 = H / 2, W2 = W / 2, P = H * W;
    v16 a[KK > 0 ? KK : KMAX];
    for (int64_t n = n0; n < n1; ++n) {
        const float* cn = cols + n * P * K;
        for (int64_t c0 = 0; c0 < C; c0 += 16) {
            for (int64_t k = 0; k < K; ++k) a[k] = ld(A + (n * K + k) * C + c0);
            const v16 b = ld(B + n * C + c0);
            uint16_t* mk = MASK ? mask + (n * (C / 16) + c0 / 16) * P : nullptr;
            T* on = out + n * H2 * W2 * C + c0;
            for (int64_t i = 0; i < H2; ++i) {
                const float* r0 = cn + 2 * i * W * K;
                const float* r1 = r0 + W * K;
                for (int64_t j = 0; j < W2; ++j) {
                    const float* p00 = r0 + 2 * j * K;
                    const float* p01 = p00 + K;
                    const float* p10 = r1 + 2 * j * K;
                    const float* p11 = p10 + K;
                    v16 z00 = b, z01 = b, z10 = b, z11 = b;
                    for (int64_t k = 0; k < K; ++k) {
                        z00 += p00[k] * a[k];
                        z01 += p01[k] * a[k];
                        z10 += p10[k] * a[k];
                        z11 += p11[k] * a[k];
                    }
                    stt(on + (i * W2 + j) * C, (relu(z00) + relu(z01) + relu(z10) + relu(z11)) * 0.25f);
                    if (MASK) {
                        const int64_t p = 2 * i * W + 2 * j;
                        mk[p] = positive_bits(z00);
                        mk[p + 1] = positive_bits(z01);
                        mk[p + W] = positive_bits(z10);
                        mk[p + W + 1] = positive_bits(z11);
                    }
                }
            }
        }
    }
}

// gout: (N, H/2, W/2, C) as T; mask as written by fwd_range<..., true>. dA: (N, K, C), dB: (N, C) (overwritten);
// dcols (N, H, W, K) (overwritten) when DCOLS.
template <int KK, typename T, bool DCOLS>
static void bwd_range(const float* __restrict cols, const float* __restrict A, const T* __restrict gout,
                      const uint16_t* __restrict mask, float* __restrict dA, float* __restrict dB,
                      float* __restrict dcols, int64_t n0, int64_t n1, int64_t Kr, int64_t C, int64_t H, int64_t W) {
    const int64_t K = KK > 0 ? KK : Kr;
    const int64_t H2 = H / 2, W2 = W / 2, P = H * W;
    v16 a[KK > 0 ? KK : KMAX], da[KK > 0 ? KK : KMAX];
    for (int64_t n = n0; n < n1; ++n) {
        const float* cn = cols + n * P * K;
        float* dcn = DCOLS ? dcols + n * P * K : nullptr;
        if (DCOLS) std::fill(dcn, dcn + P * K, 0.f);
        for (int64_t c0 = 0; c0 < C; c0 += 16) {
            for (int64_t k = 0; k < K; ++k) { a[k] = ld(A + (n * K + k) * C + c0); da[k] = v16{}; }
            const uint16_t* mk = mask + (n * (C / 16) + c0 / 16) * P;
            const T* gn = gout + n * H2 * W2 * C + c0;
            v16 db{};
            for (int64_t i = 0; i < H2; ++i) {
                const float* r0 = cn + 2 * i * W * K;
                const float* r1 = r0 + W * K;
                for (int64_t j = 0; j < W2; ++j) {
                    const v16 go = ldt(gn + (i * W2 + j) * C) * 0.25f;
                    const int64_t p = 2 * i * W + 2 * j;
                    const v16 g00 = select_bits(mk[p], go), g01 = select_bits(mk[p + 1], go);
                    const v16 g10 = select_bits(mk[p + W], go), g11 = select_bits(mk[p + W + 1], go);
                    db += (g00 + g01) + (g10 + g11);
                    const float* p00 = r0 + 2 * j * K;
                    const float* p01 = p00 + K;
                    const float* p10 = r1 + 2 * j * K;
                    const float* p11 = p10 + K;
                    for (int64_t k = 0; k < K; ++k)
                        da[k] += (g00 * p00[k] + g01 * p01[k]) + (g10 * p10[k] + g11 * p11[k]);
                    if (DCOLS) {
                        const v16* gs[4] = {&g00, &g01, &g10, &g11};
                        const int64_t ps[4] = {p, p + 1, p + W, p + W + 1};
                        for (int q = 0; q < 4; ++q) {
                            for (int64_t k = 0; k < K; ++k) {
                                const v16 t = *gs[q] * a[k];
                                float s = 0.f;
                                for (int l = 0; l < 16; ++l) s += t[l];
                                dcn[ps[q] * K + k] += s;
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

// the template instance for K (9 and 27: 1- and 3-channel images; else the generic loop)
template <typename T, bool MASK>
static void fwd_k(const float* cols, const float* A, const float* B, T* out, uint16_t* mask, int64_t a, int64_t b,
                  int64_t K, int64_t C, int64_t H, int64_t W) {
    if (K == 9) fwd_range<9, T, MASK>(cols, A, B, out, mask, a, b, K, C, H, W);
    else if (K == 27) fwd_range<27, T, MASK>(cols, A, B, out, mask, a, b, K, C, H, W);
    else fwd_range<0, T, MASK>(cols, A, B, out, mask, a, b, K, C, H, W);
}
template <typename T, bool DCOLS>
static void bwd_k(const float* cols, const float* A, const T* gout, const uint16_t* mask, float* dA, float* dB,
                  float* dcols, int64_t a, int64_t b, int64_t K, int64_t C, int64_t H, int64_t W) {
    if (K == 9) bwd_range<9, T, DCOLS>(cols, A, gout, mask, dA, dB, dcols, a, b, K, C, H, W);
    else if (K == 27) bwd_range<27, T, DCOLS>(cols, A, gout, mask, dA, dB, dcols, a, b, K, C, H, W);
    else bwd_range<0, T, DCOLS>(cols, A, gout, mask, dA, dB, dcols, a, b, K, C, H, W);
}

// ---- instance norm -> ReLU -> 2x2 average pooling on channels-last maps (the later ConvNet blocks) ----
// T = float or bf16 (uint16_t bit pattern); statistics and arithmetic in float32, bf16 rounded to nearest even.
// z: (N, H, W, C); out: (N, H/2, W/2, C) (floor); mean, rstd: (N, C) float32 (written). C % 16 == 0.
// out = avgpool2x2(relu((z - mean) * rstd * gamma + beta)), mean/var (biased) over (H, W) per image and channel.
// Loops run over all channels of a position (contiguous memory); per image the maps stay in L1/L2.
template <typename T>
static void inrp_fwd_range(const T* __restrict z, const float* __restrict gamma, const float* __restrict beta,
                           T* __restrict out, float* __restrict mean, float* __restrict rstd, int64_t n0, int64_t n1,
                           int64_t H, int64_t W, int64_t C, float eps) {
    const int64_t H2 = H / 2, W2 = W / 2, P = H * W, CB = C / 16;
    const float inv = 1.f / (float)P;
    std::vector<v16> m(CB), v(CB), sc(CB), b(CB);
    for (int64_t n = n0; n < n1; ++n) {
        const T* zn = z + n * P * C;
        T* on = out + n * H2 * W2 * C;
        for (int64_t c = 0; c < CB; ++c) m[c] = v16{};
        for (int64_t p = 0; p < P; ++p)
            for (int64_t c = 0; c < CB; ++c) m[c] += ldt(zn + p * C + 16 * c);
        for (int64_t c = 0; c < CB; ++c) { m[c] *= inv; v[c] = v16{}; }
        for (int64_t p = 0; p < P; ++p)
            for (int64_t c = 0; c < CB; ++c) { const v16 d = ldt(zn + p * C + 16 * c) - m[c]; v[c] += d * d; }
        for (int64_t c = 0; c < CB; ++c) {
            v16 r;
            for (int l = 0; l < 16; ++l) r[l] = 1.f / std::sqrt(v[c][l] * inv + eps);
            sc[c] = r * ld(gamma + 16 * c);
            b[c] = ld(beta + 16 * c);
            st(mean + n * C + 16 * c, m[c]);
            st(rstd + n * C + 16 * c, r);
        }
        for (int64_t i = 0; i < H2; ++i) {
            for (int64_t j = 0; j < W2; ++j) {
                const T* q = zn + ((2 * i) * W + 2 * j) * C;
                T* o = on + (i * W2 + j) * C;
                for (int64_t c = 0; c < CB; ++c) {
                    const int64_t k = 16 * c;
                    const v16 acc = relu((ldt(q + k) - m[c]) * sc[c] + b[c])
                                  + relu((ldt(q + C + k) - m[c]) * sc[c] + b[c])
                                  + relu((ldt(q + W * C + k) - m[c]) * sc[c] + b[c])
                                  + relu((ldt(q + W * C + C + k) - m[c]) * sc[c] + b[c]);
                    stt(o + k, acc * 0.25f);
                }
            }
        }
    }
}

// gout: (N, H/2, W/2, C) as T; dz: (N, H, W, C) as T; dgamma, dbeta: (N, C) float32 per image (written).
template <typename T>
static void inrp_bwd_range(const T* __restrict z, const float* __restrict gamma, const float* __restrict beta,
                           const float* __restrict mean, const float* __restrict rstd, const T* __restrict gout,
                           T* __restrict dz, float* __restrict dgamma, float* __restrict dbeta, int64_t n0,
                           int64_t n1, int64_t H, int64_t W, int64_t C) {
    const int64_t H2 = H / 2, W2 = W / 2, P = H * W, CB = C / 16;
    const float inv = 1.f / (float)P;
    const v16 zero{};
    std::vector<v16> m(CB), r(CB), g(CB), b(CB), sdy(CB), sdyx(CB);
    for (int64_t n = n0; n < n1; ++n) {
        const T* zn = z + n * P * C;
        const T* gn = gout + n * H2 * W2 * C;
        T* dn = dz + n * P * C;
        for (int64_t c = 0; c < CB; ++c) {
            m[c] = ld(mean + n * C + 16 * c); r[c] = ld(rstd + n * C + 16 * c);
            g[c] = ld(gamma + 16 * c); b[c] = ld(beta + 16 * c);
            sdy[c] = v16{}; sdyx[c] = v16{};
        }
        for (int64_t i = 0; i < 2 * H2; ++i) {
            for (int64_t j = 0; j < 2 * W2; ++j) {
                const T* q = zn + (i * W + j) * C;
                const T* gq = gn + ((i / 2) * W2 + j / 2) * C;
                for (int64_t c = 0; c < CB; ++c) {
                    const v16 xh = (ldt(q + 16 * c) - m[c]) * r[c];
                    const v16 dy = xh * g[c] + b[c] > zero ? ldt(gq + 16 * c) * 0.25f : zero;
                    sdy[c] += dy;
                    sdyx[c] += dy * xh;
                }
            }
        }
        for (int64_t c = 0; c < CB; ++c) {
            st(dbeta + n * C + 16 * c, sdy[c]);
            st(dgamma + n * C + 16 * c, sdyx[c]);
            sdy[c] *= inv;  // now k1 = mean(dy), k2 = mean(dy * xh); g = r * gamma below
            sdyx[c] *= inv;
        }
        for (int64_t i = 0; i < H; ++i) {
            for (int64_t j = 0; j < W; ++j) {
                const T* q = zn + (i * W + j) * C;
                T* d = dn + (i * W + j) * C;
                const bool in = i < 2 * H2 && j < 2 * W2;
                const T* gq = gn + ((i / 2) * W2 + j / 2) * C;
                for (int64_t c = 0; c < CB; ++c) {
                    const v16 xh = (ldt(q + 16 * c) - m[c]) * r[c];
                    v16 dy = zero;
                    if (in) dy = xh * g[c] + b[c] > zero ? ldt(gq + 16 * c) * 0.25f : zero;
                    stt(d + 16 * c, r[c] * g[c] * (dy - sdy[c] - xh * sdyx[c]));
                }
            }
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
int ptmdd_abi_version() { return 3; }
void ptmdd_in_relu_pool_fwd(const void* z, const float* gamma, const float* beta, void* out, float* mean, float* rstd,
                            int64_t N, int64_t H, int64_t W, int64_t C, float eps, int64_t bf16, int64_t threads) {
    split(N, threads, [=](int64_t a, int64_t b) {
        if (bf16) inrp_fwd_range((const uint16_t*)z, gamma, beta, (uint16_t*)out, mean, rstd, a, b, H, W, C, eps);
        else inrp_fwd_range((const float*)z, gamma, beta, (float*)out, mean, rstd, a, b, H, W, C, eps);
    });
}
void ptmdd_in_relu_pool_bwd(const void* z, const float* gamma, const float* beta, const float* mean,
                            const float* rstd, const void* gout, void* dz, float* dgamma, float* dbeta, int64_t N,
                            int64_t H, int64_t W, int64_t C, int64_t bf16, int64_t threads) {
    split(N, threads, [=](int64_t a, int64_t b) {
        if (bf16) inrp_bwd_range((const uint16_t*)z, gamma, beta, mean, rstd, (const uint16_t*)gout, (uint16_t*)dz,
                                 dgamma, dbeta, a, b, H, W, C);
        else inrp_bwd_range((const float*)z, gamma, beta, mean, rstd, (const float*)gout, (float*)dz, dgamma, dbeta,
                            a, b, H, W, C);
    });
}
void ptmdd_pooled_relu_affine_fwd(const float* cols, const float* A, const float* B, void* out, uint16_t* mask,
                                  int64_t N, int64_t K, int64_t C, int64_t H, int64_t W, int64_t bf16,
                                  int64_t threads) {
    split(N, threads, [=](int64_t a, int64_t b) {
        if (bf16) {
            if (mask) fwd_k<uint16_t, true>(cols, A, B, (uint16_t*)out, mask, a, b, K, C, H, W);
            else fwd_k<uint16_t, false>(cols, A, B, (uint16_t*)out, mask, a, b, K, C, H, W);
        } else {
            if (mask) fwd_k<float, true>(cols, A, B, (float*)out, mask, a, b, K, C, H, W);
            else fwd_k<float, false>(cols, A, B, (float*)out, mask, a, b, K, C, H, W);
        }
    });
}
void ptmdd_pooled_relu_affine_bwd(const float* cols, const float* A, const void* gout, const uint16_t* mask,
                                  float* dA, float* dB, float* dcols, int64_t N, int64_t K, int64_t C, int64_t H,
                                  int64_t W, int64_t bf16, int64_t threads) {
    split(N, threads, [=](int64_t a, int64_t b) {
        if (bf16) {
            if (dcols) bwd_k<uint16_t, true>(cols, A, (const uint16_t*)gout, mask, dA, dB, dcols, a, b, K, C, H, W);
            else bwd_k<uint16_t, false>(cols, A, (const uint16_t*)gout, mask, dA, dB, dcols, a, b, K, C, H, W);
        } else {
            if (dcols) bwd_k<float, true>(cols, A, (const float*)gout, mask, dA, dB, dcols, a, b, K, C, H, W);
            else bwd_k<float, false>(cols, A, (const float*)gout, mask, dA, dB, dcols, a, b, K, C, H, W);
        }
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
        src = Path(tmp) / "convnet_kernels.cpp"
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
    target = _cache_dir() / f"ptmdd_convnet_kernels_{key}.so"
    try:
        if not target.exists():
            _build(target)
        lib = ctypes.CDLL(str(target))
    except Exception as e:  # noqa: BLE001 - any build/load failure: the tensor formulation is used instead
        warnings.warn(f"ptmdd: the CPU kernels for ConvNet-3 could not be built or loaded ({e}); using the compiled "
                      "tensor formulation or the module instead (slower).", stacklevel=3)
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.ptmdd_pooled_relu_affine_fwd.argtypes = [ptr] * 5 + [i64] * 7
    lib.ptmdd_pooled_relu_affine_bwd.argtypes = [ptr] * 7 + [i64] * 7
    lib.ptmdd_in_relu_pool_fwd.argtypes = [ptr] * 6 + [i64] * 4 + [ctypes.c_float, i64, i64]
    lib.ptmdd_in_relu_pool_bwd.argtypes = [ptr] * 9 + [i64] * 6
    return lib


def available() -> bool:
    """Whether the kernels are built and loaded (builds them on the first call: a few seconds with g++)."""
    return _library() is not None


def _check(cols: Tensor, a: Tensor, b: Tensor) -> tuple[int, int, int, int, int]:
    if cols.dim() != 4 or a.dim() != 3:
        raise ValueError(f"pooled_relu_affine needs cols (N, H, W, K) and A (N, K, C); got {tuple(cols.shape)}, "
                         f"{tuple(a.shape)}")
    n, h, w, k = cols.shape
    c = a.shape[-1]
    if (cols.device.type != "cpu" or cols.dtype != torch.float32 or a.shape != (n, k, c) or b.shape != (n, c)
            or h % 2 or w % 2 or c % 16 or k > 64):
        raise ValueError(f"pooled_relu_affine needs float32 CPU cols (N, H, W, K) with even H, W and K <= 64, A (N, K, "
                         f"C) with C a multiple of 16, B (N, C); got {tuple(cols.shape)} {cols.dtype} {cols.device}, "
                         f"{tuple(a.shape)}, {tuple(b.shape)}")
    return n, k, c, h, w


class PooledReluAffine(torch.autograd.Function):
    """``out = avgpool2x2(relu(B + A^T cols))`` per image; see the module docstring. Autograd function."""

    @staticmethod
    def forward(ctx, cols: Tensor, a: Tensor, b: Tensor, out_dtype: torch.dtype) -> Tensor:  # type: ignore[override]
        lib = _library()
        assert lib is not None
        cols, a, b = cols.contiguous(), a.float().contiguous(), b.float().contiguous()
        n, k, c, h, w = _check(cols, a, b)
        if out_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"pooled_relu_affine writes float32 or bfloat16, not {out_dtype}")
        out = torch.empty(n, h // 2, w // 2, c, dtype=out_dtype)
        # the ReLU mask for the backward: 1 bit per value, 1/32 of the float32 maps that are never written
        mask = torch.empty(n, c // 16, h * w, dtype=torch.int16) if any(ctx.needs_input_grad[:3]) else None
        lib.ptmdd_pooled_relu_affine_fwd(cols.data_ptr(), a.data_ptr(), b.data_ptr(), out.data_ptr(),
                                         0 if mask is None else mask.data_ptr(), n, k, c, h, w,
                                         int(out_dtype == torch.bfloat16), torch.get_num_threads())
        ctx.save_for_backward(cols, a, mask)
        return out

    @staticmethod
    def backward(ctx, gout: Tensor) -> tuple[Tensor | None, Tensor, Tensor, None]:  # type: ignore[override]
        lib = _library()
        assert lib is not None
        cols, a, mask = ctx.saved_tensors
        n, h, w, k = cols.shape
        c = a.shape[-1]
        bf16 = gout.dtype == torch.bfloat16
        gout = gout.contiguous() if bf16 else gout.float().contiguous()
        da = torch.empty_like(a)
        db = torch.empty(n, c, dtype=torch.float32)
        dcols = torch.empty_like(cols) if ctx.needs_input_grad[0] else None
        lib.ptmdd_pooled_relu_affine_bwd(cols.data_ptr(), a.data_ptr(), gout.data_ptr(), mask.data_ptr(), da.data_ptr(),
                                         db.data_ptr(), 0 if dcols is None else dcols.data_ptr(), n, k, c, h, w,
                                         int(bf16), torch.get_num_threads())
        return dcols, da, db, None


def pooled_relu_affine(cols: Tensor, a: Tensor, b: Tensor, out_dtype: torch.dtype = torch.float32) -> Tensor:
    """``out[n, i, j, c] = 1/4 sum_{a,b in {0,1}} relu(B[n, c] + sum_k A[n, k, c] cols[n, 2i+a, 2j+b, k])``.

    The forward keeps the ReLU mask (1 bit per value) for the backward, which is then one pass of ``K + 1``
    multiply-adds per value.

    Args:
        cols: ``(N, H, W, K)`` float32 CPU patch values, ``K <= 64`` per position last (``H``, ``W`` even).
        a: ``(N, K, C)`` per-image weights; b: ``(N, C)`` per-image offsets (cast to float32).
        out_dtype: ``torch.float32`` (default) or ``torch.bfloat16`` (computed in float32, rounded to nearest
            even once: what a bf16 autocast consumer would cast it to anyway).

    Returns:
        ``(N, H / 2, W / 2, C)`` in ``out_dtype`` (channels last). Differentiable w.r.t. all three inputs.

    Raises:
        ValueError: other dtypes/devices/shapes. RuntimeError: the kernel is not :func:`available`.
    """
    if _library() is None:
        raise RuntimeError("the ptmdd CPU kernel is not available (see the warning issued when building it)")
    return PooledReluAffine.apply(cols, a, b, out_dtype)


def _check_maps(z: Tensor, gamma: Tensor, beta: Tensor) -> tuple[int, int, int, int]:
    if (z.dim() != 4 or z.device.type != "cpu" or z.dtype not in (torch.float32, torch.bfloat16) or z.shape[-1] % 16
            or gamma.shape != (z.shape[-1],) or beta.shape != (z.shape[-1],) or z.shape[1] < 2 or z.shape[2] < 2):
        raise ValueError(f"instance_norm_relu_pool needs float32/bfloat16 CPU maps (N, H, W, C) with H, W >= 2 and C a "
                         f"multiple of 16, gamma and beta (C,); got {tuple(z.shape)} {z.dtype} {z.device}, "
                         f"{tuple(gamma.shape)}, {tuple(beta.shape)}")
    n, h, w, c = z.shape
    return n, h, w, c


class InstanceNormReluPool(torch.autograd.Function):
    """``avgpool2x2(relu(instance_norm(z) * gamma + beta))`` on channels-last maps; see
    :func:`instance_norm_relu_pool`. Autograd function."""

    @staticmethod
    def forward(ctx, z: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        lib = _library()
        assert lib is not None
        z = z.contiguous()
        n, h, w, c = _check_maps(z, gamma, beta)
        g32, b32 = gamma.detach().float().contiguous(), beta.detach().float().contiguous()
        out = torch.empty(n, h // 2, w // 2, c, dtype=z.dtype)
        mean = torch.empty(n, c, dtype=torch.float32)
        rstd = torch.empty(n, c, dtype=torch.float32)
        lib.ptmdd_in_relu_pool_fwd(z.data_ptr(), g32.data_ptr(), b32.data_ptr(), out.data_ptr(), mean.data_ptr(),
                                   rstd.data_ptr(), n, h, w, c, float(eps), int(z.dtype == torch.bfloat16),
                                   torch.get_num_threads())
        ctx.save_for_backward(z, g32, b32, mean, rstd)
        ctx.param_dtypes = (gamma.dtype, beta.dtype)
        return out

    @staticmethod
    def backward(ctx, gout: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:  # type: ignore[override]
        lib = _library()
        assert lib is not None
        z, g32, b32, mean, rstd = ctx.saved_tensors
        n, h, w, c = z.shape
        gout = gout.to(z.dtype).contiguous()
        dz = torch.empty_like(z)
        dgamma = torch.empty(n, c, dtype=torch.float32)
        dbeta = torch.empty(n, c, dtype=torch.float32)
        lib.ptmdd_in_relu_pool_bwd(z.data_ptr(), g32.data_ptr(), b32.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                                   gout.data_ptr(), dz.data_ptr(), dgamma.data_ptr(), dbeta.data_ptr(), n, h, w, c,
                                   int(z.dtype == torch.bfloat16), torch.get_num_threads())
        return dz, dgamma.sum(0).to(ctx.param_dtypes[0]), dbeta.sum(0).to(ctx.param_dtypes[1]), None


def instance_norm_relu_pool(z: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
    """Instance norm -> ReLU -> 2x2 average pooling of channels-last maps, in one pass each way (the later blocks of
    ConvNet-3: ``GroupNorm(C, C)`` -> ``ReLU`` -> ``AvgPool2d(2, 2)``, DC/DSA/DM ``networks.py``).

    ``out[n, i, j, c] = 1/4 sum_{a, b in {0, 1}} relu((z[n, 2i+a, 2j+b, c] - mu[n, c]) / sqrt(var[n, c] + eps)
    * gamma[c] + beta[c])`` with ``mu``, ``var`` the mean and biased variance over ``(H, W)`` (all positions, also
    the last row/column that odd sizes drop from the pooling, as ``AvgPool2d`` floors). Statistics and arithmetic
    in float32; a bfloat16 ``z`` gives a bfloat16 result (rounded to nearest even), as the compiled formulation's
    ``.to(bfloat16)``.

    Args:
        z: ``(N, H, W, C)`` float32 or bfloat16 CPU maps (``H, W >= 2``, ``C`` a multiple of 16), e.g. a conv
            output in ``channels_last`` memory, permuted to ``(N, H, W, C)``.
        gamma, beta: ``(C,)`` the norm's affine weight and bias.
        eps: the norm's epsilon.

    Returns:
        ``(N, H // 2, W // 2, C)`` in ``z``'s dtype. Differentiable w.r.t. ``z``, ``gamma`` and ``beta``.

    Raises:
        ValueError: other dtypes/devices/shapes. RuntimeError: the kernel is not :func:`available`.
    """
    if _library() is None:
        raise RuntimeError("the ptmdd CPU kernel is not available (see the warning issued when building it)")
    return InstanceNormReluPool.apply(z, gamma, beta, eps)
