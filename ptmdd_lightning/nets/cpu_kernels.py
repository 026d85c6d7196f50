"""Hand-written CPU kernels for the training path of ConvNet-3 (conv -> instance norm -> ReLU -> 2x2 average pool).

Why: in a training step of ConvNet-3 on 28x28 images (Fashion-MNIST/MNIST) the blocks' maps are written, read
and differentiated several times by memory-bound passes (im2col matmul, norm, ReLU, pool and their backward);
measured on the 2-core CPU, 100 images, bf16, 2 threads: about 57 of the ~100 ms of a forward + backward went to
the first block alone (docs/speed.md, lever 12). Three kernels:

* :func:`pooled_relu_affine`, the first block. Its conv has few input channels (``k = C_in * 9 <= 64`` patch
  values per position), so with the instance-norm statistics folded into a per-image affine map (see
  :func:`ptmdd_lightning.nets.fast.first_block_kernel`) the whole block is

      ``out[n, i, j, c] = 1/4 * sum_{a, b in {0, 1}} relu(B[n, c] + sum_k A[n, k, c] * cols[n, 2i + a, 2j + b, k])``

  computed in one pass per image, writing only the pooled map (float32 or bf16) and the ReLU mask (1 bit per
  value); its backward (``dA``, ``dB`` and, when asked, ``dcols``) is one pass of ``k + 1`` multiply-adds per
  value.
* :func:`instance_norm_relu_pool`, every later block after its (oneDNN) convolution: the statistics, the
  normalisation, ReLU and the pooling of channels-last float32/bf16 maps in one pass each way.
* :func:`conv3x3_weight_grad`, the weight (and bias) gradient of the later blocks' 3x3 convolutions on bf16
  channels-last maps, on the CPU's AMX tile units where it has them (:func:`amx_available`); oneDNN's own
  weight gradient was the largest single cost of a training step. :func:`channels_last_conv3x3` is the convolution
  that uses it (oneDNN's forward and input gradient).

Everything else (the statistics of the first block, ``A`` and ``B`` from the weights, the convolutions' forward
and input gradient, the chain rule to the weights) is ordinary autograd.

The kernels are C++ compiled once per machine with the system C++ compiler (the one ``torch.compile`` uses on
the CPU; ``-O3 -march=native -fopenmp``), cached under ``$PTMDD_CACHE`` (default ``~/.cache/ptmdd``) by a hash of
the source, the compiler flags and the CPU's feature flags, and loaded with ``ctypes``. Threads split the images
(the weight gradient: the positions); the result does not depend on the thread count except for the float32
summation order of the weight gradient (every image is computed by one thread, sums over images happen in torch).

The threads are OpenMP's: the library needs ``libgomp.so.1``, which the dynamic loader resolves to the copy torch
has already loaded, so the kernels run on torch's own intra-op thread pool. Threads of their own (``std::thread``,
the fallback when the compiler has no OpenMP) compete with torch's OpenMP workers, which keep spinning for a while
after every parallel op: on the 2-core CPU a 100-image bf16 training step of ConvNet-3 took a median 51-72 ms with
``std::thread`` and 32-34 ms with OpenMP (three process pairs; docs/speed.md, lever 17).

:func:`available` says whether the kernels could be built (``PTMDD_CPU_KERNELS=0`` turns them off; ``PTMDD_AMX=0``
only the AMX kernel); the callers fall back to the compiled tensor formulation, oneDNN or the module.

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

__all__ = [
    "ChannelsLastConv3x3",
    "InstanceNormReluPool",
    "PooledReluAffine",
    "amx_available",
    "available",
    "channels_last_conv3x3",
    "conv3x3_shapes_ok",
    "conv3x3_weight_grad",
    "instance_norm_relu_pool",
    "pooled_relu_affine",
]

_SOURCE = r"""
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#include <algorithm>
#include <cmath>
#if defined(_OPENMP)
#include <omp.h>
#endif
#include <memory>
#include <new>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BW__) && defined(__linux__)
#define PTMDD_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
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

#if defined(PTMDD_AMX)
// ---- conv3x3 (stride 1, zero padding 1) weight gradient on AMX (bf16 products, float32 sums) ----
// dW[o, i, kh, kw] = sum_{n,h,w} go[n,h,w,o] * x[n, h+kh-1, w+kw-1, i], db[o] = sum_{n,h,w} go[n,h,w,o].
// Positions m live on a flat grid of rows of R = W + 1 (one zero column shared by neighbouring rows) and H + 1 rows
// per image (one zero row shared by neighbouring images) after one leading zero row: (n, h, w) is
// m = R + n (H + 1) R + h R + w and tap k = (kh, kw) reads m + s_k, s_k = (kh - 1) R + (kw - 1). So every tap is one
// matrix product over m: dW_k = sum_m G[m] X[m + s_k]^T, G = go and X = x on the grid (zero off the images).
// AMX: A = G transposed (rows o, 32 consecutive m), B = X as bf16 pairs of consecutive m (rows (2p, 2p + 1), 16
// channels i), C = 16 x 16 float32 tiles of dW_k. Writing s_k = q + r (q even, r in {0, 1}), dW_k = sum_m G[m - r]
// X[m + q]: the odd part shifts G (a second copy, g1, shifted by one position) so every tile load is 64-byte
// aligned. Threads split the m range into chunks of MC positions; per chunk G (transposed) and X (paired) are built
// in L2-sized buffers and multiplied at once; every thread sums its own dW, added up at the end (a fixed order:
// the result does not depend on timing, only on the thread count).
alignas(64) static const uint8_t kTileCfg[64] = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  // palette 1
    64, 0, 64, 0, 64, 0, 64, 0, 64, 0, 64, 0, 64, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0};  // tiles 0-7: 16 rows x 64 bytes (a constant: GCC
                                                                 // may drop stores to a config built at run time)
struct Free64 { void operator()(uint16_t* p) const { ::operator delete[](p, std::align_val_t(64)); } };
static std::unique_ptr<uint16_t[], Free64> alloc64(int64_t n) {
    return std::unique_ptr<uint16_t[], Free64>(new (std::align_val_t(64)) uint16_t[n]);
}
// r[0..31]: 32 x 32 16-bit values, transposed in place (stage b swaps bit b of the row and the column index)
static inline void transpose32x32_16(__m512i* r) {
    for (int b = 1; b < 32; b <<= 1) {
        alignas(64) int16_t lo[32], hi[32];
        for (int c = 0; c < 32; ++c) { lo[c] = (c & b) ? 32 + c - b : c; hi[c] = (c & b) ? 32 + c : c + b; }
        const __m512i il = _mm512_load_si512(lo), ih = _mm512_load_si512(hi);
        for (int i = 0; i < 32; ++i) {
            if (i & b) continue;
            const __m512i a = r[i], c = r[i | b];
            r[i] = _mm512_permutex2var_epi16(a, il, c);
            r[i | b] = _mm512_permutex2var_epi16(a, ih, c);
        }
    }
}
static inline __m512 bf16_to_f32(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static void wgrad_chunks(const uint16_t* x, const uint16_t* go, float* acc, float* dbt, int64_t c_a, int64_t c_b,
                         int64_t N, int64_t H, int64_t W, int64_t Ci, int64_t Co, int64_t MC) {
    const int64_t R = W + 1, PI = (H + 1) * R;
    static const uint16_t zeros[1024] = {0};
    auto src = [&](const uint16_t* base, int64_t C, int64_t m) -> const uint16_t* {
        const int64_t q = m - R;
        if (q < 0 || q >= N * PI) return zeros;
        const int64_t n = q / PI, r = q % PI, h = r / R, w = r % R;
        if (h >= H || w >= W) return zeros;
        return base + ((n * H + h) * W + w) * C;
    };
    int64_t q2[9]; int rr[9];
    for (int k = 0; k < 9; ++k) {
        const int64_t s = (k / 3 - 1) * R + (k % 3 - 1);
        rr[k] = (int)(s & 1);
        q2[k] = s - rr[k];
    }
    const int64_t half = (R + 2 + 1) / 2 * 2, qlo = -half, qhi = half + 32;  // B rows read: m0 + q .. m0 + q + 32
    const int64_t LD = MC + 32;  // row stride of the G chunks (not a multiple of 4 KiB: no cache-set conflicts)
    const int64_t XR = MC + qhi - qlo;  // positions in the X chunk
    auto g0 = alloc64(Co * LD), g1 = alloc64(Co * LD), xv = alloc64(XR * Ci);
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                        37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi = _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24, 55, 23, 54,
                                        22, 53, 21, 52, 20, 51, 19, 50, 18, 49, 17, 48, 16);
    _tile_loadconfig(kTileCfg);
    __m512i r[32];
    for (int64_t ch = c_a; ch < c_b; ++ch) {
        const int64_t c0 = ch * MC;
        // g0[o][j] = G[c0 + j], g1[o][j] = G[c0 + j - 1]; db over this chunk's positions
        for (int64_t j0 = 0; j0 < MC; j0 += 32) {
            const uint16_t* gp[32];
            for (int j = 0; j < 32; ++j) gp[j] = src(go, Co, c0 + j0 + j);
            for (int64_t o0 = 0; o0 < Co; o0 += 32) {
                __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
                for (int j = 0; j < 32; ++j) {
                    r[j] = _mm512_loadu_si512(gp[j] + o0);
                    s0 = _mm512_add_ps(s0, bf16_to_f32(_mm512_castsi512_si256(r[j])));
                    s1 = _mm512_add_ps(s1, bf16_to_f32(_mm512_extracti64x4_epi64(r[j], 1)));
                }
                _mm512_storeu_ps(dbt + o0, _mm512_add_ps(_mm512_loadu_ps(dbt + o0), s0));
                _mm512_storeu_ps(dbt + o0 + 16, _mm512_add_ps(_mm512_loadu_ps(dbt + o0 + 16), s1));
                transpose32x32_16(r);
                for (int c = 0; c < 32; ++c) {
                    _mm512_store_si512(g0.get() + (o0 + c) * LD + j0, r[c]);
                    _mm512_storeu_si512(g1.get() + (o0 + c) * LD + j0 + 1, r[c]);
                }
            }
        }
        const uint16_t* gprev = src(go, Co, c0 - 1);
        for (int64_t o = 0; o < Co; ++o) g1[o * LD] = gprev[o];
        // xv[(p - qlo) Ci + 2 i + e] = X[c0 + p + e][i] for even p in [qlo, MC + qhi)
        for (int64_t p = 0; p < XR; p += 2) {
            const uint16_t* s0 = src(x, Ci, c0 + qlo + p);
            const uint16_t* s1 = src(x, Ci, c0 + qlo + p + 1);
            uint16_t* d = xv.get() + p * Ci;
            for (int64_t i = 0; i < Ci; i += 32) {
                const __m512i a = _mm512_loadu_si512(s0 + i), c = _mm512_loadu_si512(s1 + i);
                _mm512_store_si512(d + 2 * i, _mm512_permutex2var_epi16(a, lo, c));
                _mm512_store_si512(d + 2 * i + 32, _mm512_permutex2var_epi16(a, hi, c));
            }
        }
        // 2 x 2 tiles of C (32 o x 32 i) per tap, A and B streamed over the chunk
        for (int64_t ip = 0; ip < Ci; ip += 32)
        for (int64_t op = 0; op < Co; op += 32)
        for (int k = 0; k < 9; ++k) {
            float* c00 = acc + (k * Co + op) * Ci + ip;
            float* c10 = c00 + 16 * Ci;
            _tile_loadd(0, c00, Ci * 4); _tile_loadd(1, c00 + 16, Ci * 4);
            _tile_loadd(2, c10, Ci * 4); _tile_loadd(3, c10 + 16, Ci * 4);
            const uint16_t* a = (rr[k] ? g1.get() : g0.get()) + op * LD;
            const uint16_t* bp = xv.get() + (q2[k] - qlo) * Ci + 2 * ip;
            for (int64_t m0 = 0; m0 < MC; m0 += 32) {
                _tile_loadd(4, a + m0, LD * 2);
                _tile_loadd(5, a + 16 * LD + m0, LD * 2);
                _tile_loadd(6, bp + m0 * Ci, Ci * 4);
                _tile_loadd(7, bp + m0 * Ci + 32, Ci * 4);
                _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
            }
            _tile_stored(0, c00, Ci * 4); _tile_stored(1, c00 + 16, Ci * 4);
            _tile_stored(2, c10, Ci * 4); _tile_stored(3, c10 + 16, Ci * 4);
        }
    }
    _tile_release();
}
#endif

// f(t, a, b) on thread t for the range [a, b) of [0, N), t < threads
template <typename F>
static void split_indexed(int64_t N, int64_t threads, F f) {
    threads = std::max<int64_t>(1, std::min<int64_t>(threads, N));
    const int64_t per = (N + threads - 1) / threads;
    if (threads == 1) { f(0, 0, N); return; }
#if defined(_OPENMP)
    // the OpenMP runtime torch uses (same soname: the loader shares torch's libgomp), so these threads are torch's
    // intra-op pool and never compete with its spinning workers
#pragma omp parallel num_threads(threads)
    {
        const int64_t t = omp_get_thread_num();
        const int64_t a = std::min(N, t * per), b = std::min(N, (t + 1) * per);
        if (a < b) f(t, a, b);
    }
#else
    std::vector<std::thread> pool;
    for (int64_t t = 1; t < threads; ++t) {
        const int64_t a = std::min(N, t * per), b = std::min(N, (t + 1) * per);
        if (a < b) pool.emplace_back(f, t, a, b);
    }
    f(0, 0, std::min(N, per));
    for (auto& th : pool) th.join();
#endif
}
// f(a, b) for the ranges [a, b) that split [0, N) among the threads
template <typename F>
static void split(int64_t N, int64_t threads, F f) {
    split_indexed(N, threads, [&f](int64_t, int64_t a, int64_t b) { f(a, b); });
}

extern "C" {
int ptmdd_abi_version() { return 4; }
// 1 when this library has the AMX kernel, the CPU has AMX and Linux grants this process the AMX tile state
int ptmdd_amx_ready() {
#if defined(PTMDD_AMX)
    static const int ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
    return ok;
#else
    return 0;
#endif
}
// x: (N, H, W, Ci) bf16, go: (N, H, W, Co) bf16; dw: (Co, Ci, 3, 3) float32, db: (Co,) float32 (written).
// Ci, Co multiples of 32, at most 1024. Returns 0, or -1 (nothing written) when AMX is not usable.
int ptmdd_conv3x3_wgrad_bf16(const uint16_t* x, const uint16_t* go, float* dw, float* db, int64_t N, int64_t H,
                             int64_t W, int64_t Ci, int64_t Co, int64_t threads) {
#if defined(PTMDD_AMX)
    if (!ptmdd_amx_ready() || Ci % 32 || Co % 32 || Ci > 1024 || Co > 1024 || N < 1 || H < 1 || W < 1) return -1;
    const int64_t MC = 512;
    const int64_t nchunk = ((W + 1) + N * (H + 1) * (W + 1) + MC - 1) / MC;
    const int64_t T = std::max<int64_t>(1, std::min(threads, nchunk));
    std::vector<std::vector<float>> acc(T, std::vector<float>(9 * Co * Ci, 0.f)), dbt(T, std::vector<float>(Co, 0.f));
    split_indexed(nchunk, T, [&](int64_t t, int64_t a, int64_t b) {
        wgrad_chunks(x, go, acc[t].data(), dbt[t].data(), a, b, N, H, W, Ci, Co, MC);
    });
    split(Co, threads, [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) {
            float s = 0.f;
            for (int64_t t = 0; t < T; ++t) s += dbt[t][o];
            db[o] = s;
            for (int64_t i = 0; i < Ci; ++i)
                for (int k = 0; k < 9; ++k) {
                    float v = 0.f;
                    for (int64_t t = 0; t < T; ++t) v += acc[t][(k * Co + o) * Ci + i];
                    dw[(o * Ci + i) * 9 + k] = v;
                }
        }
    });
    return 0;
#else
    (void)x; (void)go; (void)dw; (void)db; (void)N; (void)H; (void)W; (void)Ci; (void)Co; (void)threads;
    return -1;
#endif
}
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

_FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC", "-pthread"]


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
        if proc.returncode != 0:  # no OpenMP for this compiler: std::thread instead (slower next to torch's pool)
            flags = [f for f in _FLAGS if f != "-fopenmp"] + ["-fopenmp-simd"]
            proc = subprocess.run([cxx, *flags, str(src), "-o", str(out)], capture_output=True, text=True, check=False)
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
    lib.ptmdd_amx_ready.argtypes = []
    lib.ptmdd_conv3x3_wgrad_bf16.argtypes = [ptr] * 4 + [i64] * 6
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


@functools.lru_cache(maxsize=1)
def amx_available() -> bool:
    """Whether :func:`conv3x3_weight_grad` runs here: the kernels are built, the library was compiled for a CPU with
    AMX (``amx_tile``, ``amx_bf16``; Intel Sapphire Rapids and later) and Linux grants this process the AMX tile
    state (``arch_prctl(ARCH_REQ_XCOMP_PERM)``). ``PTMDD_AMX=0`` turns it off."""
    lib = _library()
    if lib is None or os.environ.get("PTMDD_AMX", "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    return bool(lib.ptmdd_amx_ready())


def conv3x3_weight_grad(x: Tensor, gout: Tensor) -> tuple[Tensor, Tensor]:
    """The weight and bias gradients of a 3x3 convolution (stride 1, zero padding 1) on channels-last bf16 maps, on
    the CPU's AMX units: bf16 products summed in float32.

    ``dw[o, i, kh, kw] = sum_{n, h, w} gout[n, h, w, o] * x[n, h + kh - 1, w + kw - 1, i]`` (zero outside the
    image) and ``db[o] = sum_{n, h, w} gout[n, h, w, o]``: what ``torch.ops.aten.convolution_backward`` returns for
    the weight and the bias of ``conv2d(x, w, b, padding=1)``, with float32 instead of bf16 sums.

    Why: in a 100-image bf16 training step of ConvNet-3 (2-core Sapphire Rapids), oneDNN's weight gradients of the
    two 128 -> 128 convolutions took about 17 of 38 ms; this kernel takes about 8 (docs/speed.md, lever 18).

    Args:
        x: ``(N, H, W, Ci)`` bfloat16 CPU maps (the conv input, channels last, contiguous).
        gout: ``(N, H, W, Co)`` bfloat16 CPU maps (the gradient of the conv output). ``Ci`` and ``Co`` multiples
            of 32, at most 1024.

    Returns:
        ``(dw, db)``: ``(Co, Ci, 3, 3)`` and ``(Co,)`` float32.

    Raises:
        ValueError: other shapes, dtypes or devices. RuntimeError: AMX is not :func:`amx_available`.
    """
    if (x.dim() != 4 or gout.dim() != 4 or x.shape[:3] != gout.shape[:3] or x.dtype != torch.bfloat16
            or gout.dtype != torch.bfloat16 or x.device.type != "cpu" or gout.device.type != "cpu"
            or x.shape[-1] % 32 or gout.shape[-1] % 32 or x.shape[-1] > 1024 or gout.shape[-1] > 1024
            or min(x.shape) < 1):
        raise ValueError(f"conv3x3_weight_grad needs bfloat16 CPU maps x (N, H, W, Ci) and gout (N, H, W, Co) with Ci "
                         f"and Co multiples of 32 (at most 1024); got {tuple(x.shape)} {x.dtype} {x.device}, "
                         f"{tuple(gout.shape)} {gout.dtype} {gout.device}")
    if not amx_available():
        raise RuntimeError("conv3x3_weight_grad needs AMX (amx_available() is False); use "
                           "torch.ops.aten.convolution_backward instead")
    x, gout = x.contiguous(), gout.contiguous()
    n, h, w, ci = x.shape
    co = gout.shape[-1]
    dw = torch.empty(co, ci, 3, 3, dtype=torch.float32)
    db = torch.empty(co, dtype=torch.float32)
    rc = _library().ptmdd_conv3x3_wgrad_bf16(x.data_ptr(), gout.data_ptr(), dw.data_ptr(), db.data_ptr(), n, h, w, ci,
                                             co, torch.get_num_threads())
    if rc != 0:
        raise RuntimeError("conv3x3_weight_grad: the AMX kernel refused the call (AMX not usable in this process)")
    return dw, db


def conv3x3_shapes_ok(x: Tensor, weight: Tensor, bias: Tensor, padding: int = 1) -> bool:
    """Whether :func:`channels_last_conv3x3` takes these: ``x`` bfloat16 CPU maps ``(N, H, W, Ci)``, ``weight``
    ``(Co, Ci, 3, 3)``, ``bias`` ``(Co,)``, ``padding`` 1, ``Ci`` and ``Co`` multiples of 32 and at most 1024 (what
    :func:`conv3x3_weight_grad` takes). Shapes only: whether AMX runs here is :func:`amx_available`."""
    if x.dim() != 4 or weight.dim() != 4 or min(x.shape) < 1:
        return False
    co, ci = weight.shape[0], x.shape[-1]
    return (padding == 1 and x.dtype == torch.bfloat16 and x.device.type == "cpu"
            and tuple(weight.shape) == (co, ci, 3, 3) and tuple(bias.shape) == (co,)
            and ci % 32 == 0 and co % 32 == 0 and ci <= 1024 and co <= 1024)


class ChannelsLastConv3x3(torch.autograd.Function):
    """``conv2d(x, w, b, padding=1)`` on channels-last bf16 maps: oneDNN's forward and input gradient, and the weight
    and bias gradients from :func:`conv3x3_weight_grad` (AMX). See :func:`channels_last_conv3x3`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        wb = weight.detach().to(torch.bfloat16)
        z = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), wb, bias.detach().to(torch.bfloat16), padding=1)
        ctx.save_for_backward(x, wb)
        ctx.param_dtypes = (weight.dtype, bias.dtype)
        return z.permute(0, 2, 3, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[override]
        x, wb = ctx.saved_tensors
        gout = gout.to(torch.bfloat16).contiguous()
        gx = dw = db = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(
                gout.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2), wb, [wb.shape[0]], [1, 1], [1, 1], [1, 1], False,
                [0, 0], 1, [True, False, False])[0].permute(0, 2, 3, 1)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dw, db = conv3x3_weight_grad(x, gout)
            dw, db = dw.to(ctx.param_dtypes[0]), db.to(ctx.param_dtypes[1])
        return gx, dw, db


def channels_last_conv3x3(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """A 3x3 convolution (stride 1, zero padding 1) of channels-last bf16 maps whose weight gradient runs on AMX.

    The forward and the input gradient are oneDNN's (``torch.nn.functional.conv2d`` in bf16, as under bf16
    autocast); the weight and bias gradients come from :func:`conv3x3_weight_grad` (bf16 products, float32 sums,
    returned in the parameters' dtype). Used by ConvNet-3's later blocks on the CPU kernel path
    (:func:`ptmdd_lightning.nets.fast._kernel_features`). Once differentiable (no double backward).

    Args:
        x: ``(N, H, W, Ci)`` bfloat16 CPU maps (contiguous channels last).
        weight: ``(Co, Ci, 3, 3)`` (any float dtype; used in bf16); bias: ``(Co,)``.

    Returns:
        ``(N, H, W, Co)`` bfloat16, contiguous in that order (oneDNN writes the NCHW result channels last).

    Raises:
        ValueError: shapes or dtypes :func:`conv3x3_weight_grad` does not take. RuntimeError: no AMX.
    """
    if not conv3x3_shapes_ok(x, weight, bias):
        raise ValueError(f"channels_last_conv3x3 needs bfloat16 CPU maps (N, H, W, Ci), weight (Co, Ci, 3, 3) and bias "
                         f"(Co,) with Ci, Co multiples of 32 (at most 1024); got {tuple(x.shape)} {x.dtype}, "
                         f"{tuple(weight.shape)}, {tuple(bias.shape)}")
    if not amx_available():
        raise RuntimeError("channels_last_conv3x3 needs AMX (amx_available() is False)")
    return ChannelsLastConv3x3.apply(x, weight, bias)
