// ptmdd's CPU kernels for the training path of ConvNet-3 (conv -> instance norm -> ReLU -> 2x2 average pool),
// registered as torch.library custom ops in the namespace "ptmdd" (the TORCH_LIBRARY block at the end).
//
// Built by torch.utils.cpp_extension.load (ptmdd_lightning/backends/cpu/kernels.py) with -O3 -march=native
// -fopenmp; the Python side registers the autograd formulas and the fake (meta) implementations. What each kernel
// computes, and why it exists, is in the docstrings of ptmdd_lightning/backends/cpu/kernels.py and in
// docs/speed.md (levers 12, 14, 17, 18). The threads are OpenMP's, i.e. torch's intra-op pool (at::get_num_threads).
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

// ---- the ATen interface: tensors in, tensors out (checked here; the Python wrappers give the friendlier errors) ----
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace {

void check_cpu(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "ptmdd: ", name, " must be a contiguous CPU tensor");
}

// (out (N, H/2, W/2, C) float32/bf16, mask (N, C/16, H*W) int16 or an empty tensor when keep_mask is false)
std::tuple<at::Tensor, at::Tensor> pooled_relu_affine(const at::Tensor& cols, const at::Tensor& a,
                                                      const at::Tensor& b, bool bf16_out, bool keep_mask) {
    check_cpu(cols, "cols"); check_cpu(a, "A"); check_cpu(b, "B");
    TORCH_CHECK(cols.dim() == 4 && a.dim() == 3 && b.dim() == 2 && cols.scalar_type() == at::kFloat &&
                a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat, "ptmdd: pooled_relu_affine shapes");
    const int64_t n = cols.size(0), h = cols.size(1), w = cols.size(2), k = cols.size(3), c = a.size(2);
    TORCH_CHECK(a.size(0) == n && a.size(1) == k && b.size(0) == n && b.size(1) == c && h % 2 == 0 && w % 2 == 0 &&
                c % 16 == 0 && k <= KMAX, "ptmdd: pooled_relu_affine shapes");
    at::Tensor out = at::empty({n, h / 2, w / 2, c}, cols.options().dtype(bf16_out ? at::kBFloat16 : at::kFloat));
    at::Tensor mask = keep_mask ? at::empty({n, c / 16, h * w}, cols.options().dtype(at::kShort))
                                : at::empty({0}, cols.options().dtype(at::kShort));
    ptmdd_pooled_relu_affine_fwd(cols.data_ptr<float>(), a.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr(),
                                 keep_mask ? reinterpret_cast<uint16_t*>(mask.data_ptr()) : nullptr, n, k, c, h, w,
                                 bf16_out, at::get_num_threads());
    return {out, mask};
}

// (dA (N, K, C), dB (N, C), dcols (N, H, W, K) or an empty tensor when need_dcols is false), float32
std::tuple<at::Tensor, at::Tensor, at::Tensor> pooled_relu_affine_backward(
        const at::Tensor& cols, const at::Tensor& a, const at::Tensor& gout, const at::Tensor& mask,
        bool need_dcols) {
    check_cpu(cols, "cols"); check_cpu(a, "A"); check_cpu(gout, "gout"); check_cpu(mask, "mask");
    const int64_t n = cols.size(0), h = cols.size(1), w = cols.size(2), k = cols.size(3), c = a.size(2);
    const bool bf16 = gout.scalar_type() == at::kBFloat16;
    TORCH_CHECK(bf16 || gout.scalar_type() == at::kFloat, "ptmdd: pooled_relu_affine_backward gout dtype");
    TORCH_CHECK(mask.numel() == n * (c / 16) * h * w, "ptmdd: pooled_relu_affine_backward needs the forward's mask");
    at::Tensor da = at::empty_like(a);
    at::Tensor db = at::empty({n, c}, a.options());
    at::Tensor dcols = need_dcols ? at::empty_like(cols) : at::empty({0}, cols.options());
    ptmdd_pooled_relu_affine_bwd(cols.data_ptr<float>(), a.data_ptr<float>(), gout.data_ptr(),
                                 reinterpret_cast<const uint16_t*>(mask.data_ptr()), da.data_ptr<float>(),
                                 db.data_ptr<float>(), need_dcols ? dcols.data_ptr<float>() : nullptr, n, k, c, h, w,
                                 bf16, at::get_num_threads());
    return {da, db, dcols};
}

// (out (N, H/2, W/2, C) in z's dtype, mean (N, C), rstd (N, C) float32)
std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_relu_pool(const at::Tensor& z, const at::Tensor& gamma,
                                                                       const at::Tensor& beta, double eps) {
    check_cpu(z, "z"); check_cpu(gamma, "gamma"); check_cpu(beta, "beta");
    const bool bf16 = z.scalar_type() == at::kBFloat16;
    TORCH_CHECK(z.dim() == 4 && (bf16 || z.scalar_type() == at::kFloat) && gamma.scalar_type() == at::kFloat &&
                beta.scalar_type() == at::kFloat, "ptmdd: instance_norm_relu_pool dtypes");
    const int64_t n = z.size(0), h = z.size(1), w = z.size(2), c = z.size(3);
    TORCH_CHECK(c % 16 == 0 && h >= 2 && w >= 2 && gamma.numel() == c && beta.numel() == c,
                "ptmdd: instance_norm_relu_pool shapes");
    at::Tensor out = at::empty({n, h / 2, w / 2, c}, z.options());
    at::Tensor mean = at::empty({n, c}, gamma.options());
    at::Tensor rstd = at::empty({n, c}, gamma.options());
    ptmdd_in_relu_pool_fwd(z.data_ptr(), gamma.data_ptr<float>(), beta.data_ptr<float>(), out.data_ptr(),
                           mean.data_ptr<float>(), rstd.data_ptr<float>(), n, h, w, c, static_cast<float>(eps), bf16,
                           at::get_num_threads());
    return {out, mean, rstd};
}

// (dz (N, H, W, C) in z's dtype, dgamma (N, C), dbeta (N, C) float32 per image)
std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_relu_pool_backward(
        const at::Tensor& z, const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& mean,
        const at::Tensor& rstd, const at::Tensor& gout) {
    check_cpu(z, "z"); check_cpu(gamma, "gamma"); check_cpu(beta, "beta"); check_cpu(mean, "mean");
    check_cpu(rstd, "rstd"); check_cpu(gout, "gout");
    TORCH_CHECK(gout.scalar_type() == z.scalar_type(), "ptmdd: instance_norm_relu_pool_backward gout dtype");
    const int64_t n = z.size(0), h = z.size(1), w = z.size(2), c = z.size(3);
    at::Tensor dz = at::empty_like(z);
    at::Tensor dgamma = at::empty({n, c}, gamma.options());
    at::Tensor dbeta = at::empty({n, c}, gamma.options());
    ptmdd_in_relu_pool_bwd(z.data_ptr(), gamma.data_ptr<float>(), beta.data_ptr<float>(), mean.data_ptr<float>(),
                           rstd.data_ptr<float>(), gout.data_ptr(), dz.data_ptr(), dgamma.data_ptr<float>(),
                           dbeta.data_ptr<float>(), n, h, w, c, z.scalar_type() == at::kBFloat16,
                           at::get_num_threads());
    return {dz, dgamma, dbeta};
}

// (dw (Co, Ci, 3, 3), db (Co,)) float32; raises when AMX is not usable in this process
std::tuple<at::Tensor, at::Tensor> conv3x3_weight_grad(const at::Tensor& x, const at::Tensor& gout) {
    check_cpu(x, "x"); check_cpu(gout, "gout");
    TORCH_CHECK(x.dim() == 4 && gout.dim() == 4 && x.scalar_type() == at::kBFloat16 &&
                gout.scalar_type() == at::kBFloat16, "ptmdd: conv3x3_weight_grad needs bf16 (N, H, W, C) maps");
    const int64_t n = x.size(0), h = x.size(1), w = x.size(2), ci = x.size(3), co = gout.size(3);
    at::Tensor dw = at::empty({co, ci, 3, 3}, x.options().dtype(at::kFloat));
    at::Tensor db = at::empty({co}, x.options().dtype(at::kFloat));
    const int rc = ptmdd_conv3x3_wgrad_bf16(reinterpret_cast<const uint16_t*>(x.data_ptr()),
                                            reinterpret_cast<const uint16_t*>(gout.data_ptr()), dw.data_ptr<float>(),
                                            db.data_ptr<float>(), n, h, w, ci, co, at::get_num_threads());
    TORCH_CHECK(rc == 0, "ptmdd: conv3x3_weight_grad: AMX is not usable in this process");
    return {dw, db};
}

bool amx_ready() { return ptmdd_amx_ready() != 0; }

}  // namespace

TORCH_LIBRARY(ptmdd, m) {
    m.def("pooled_relu_affine(Tensor cols, Tensor a, Tensor b, bool bf16_out, bool keep_mask) -> (Tensor, Tensor)");
    m.def("pooled_relu_affine_backward(Tensor cols, Tensor a, Tensor gout, Tensor mask, bool need_dcols) "
          "-> (Tensor, Tensor, Tensor)");
    m.def("instance_norm_relu_pool(Tensor z, Tensor gamma, Tensor beta, float eps) -> (Tensor, Tensor, Tensor)");
    m.def("instance_norm_relu_pool_backward(Tensor z, Tensor gamma, Tensor beta, Tensor mean, Tensor rstd, "
          "Tensor gout) -> (Tensor, Tensor, Tensor)");
    m.def("conv3x3_weight_grad(Tensor x, Tensor gout) -> (Tensor, Tensor)");
    m.def("amx_ready() -> bool", &amx_ready);
}

TORCH_LIBRARY_IMPL(ptmdd, CPU, m) {
    m.impl("pooled_relu_affine", &pooled_relu_affine);
    m.impl("pooled_relu_affine_backward", &pooled_relu_affine_backward);
    m.impl("instance_norm_relu_pool", &instance_norm_relu_pool);
    m.impl("instance_norm_relu_pool_backward", &instance_norm_relu_pool_backward);
    m.impl("conv3x3_weight_grad", &conv3x3_weight_grad);
}
