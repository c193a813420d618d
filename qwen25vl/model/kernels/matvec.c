/* Few-row products (decode) with int8 or bf16 weights, AVX2 + FMA, threads from the OpenMP runtime torch loaded.

   y[r, n] = scale[n] * sum_k x[r, k] * w[n, k]  (+ bias[n])     x: (rows, K) fp32, w: (N, K) int8 or bf16,
                                                                y: (rows, N) fp32; scale NULL for bf16 (1)

   The weights stream from memory once: each thread takes a range of output channels, and for every block of four
   channels (4 x K bytes, in L1) runs all rows. Each int8 or bf16 weight is widened to fp32 exactly, so the sums are fp32 dot
   products of the exact dequantised values (fused multiply-adds, 16 partial sums per channel), scaled once at the
   end. Built and loaded by qwen25vl/model/native.py; anything it cannot build falls back to torch's kernels. */

#include <immintrin.h>
#include <omp.h>
#include <stdint.h>

#ifndef PF
#define PF 512 /* bytes ahead each weight row is prefetched (256-1024 measured within noise; none: ~10% slower) */
#endif

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

static inline __m256 widen_i8(const int8_t *p) { /* 8 int8 -> 8 fp32, exact */
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

static inline __m256 widen_bf16(const uint16_t *p) { /* 8 bf16 -> 8 fp32, exact: the bits moved up 16 */
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

static inline float scalar_i8(int8_t v) { return (float)v; }

static inline float scalar_bf16(uint16_t v) {
    union { uint32_t u; float f; } b = {.u = (uint32_t)v << 16};
    return b.f;
}

/* DEFINE_MATVEC(name, type, widen, scalar): four output channels at a time (dot products of one x row with
   w0..w3, 16 partial sums each), then the last N % 4 channels one at a time; threads split the channel blocks. */
#define DEFINE_MATVEC(NAME, T, WIDEN, SCALAR)                                                                     \
    static inline void NAME##_dot4(const float *x, const T *w0, const T *w1, const T *w2, const T *w3, int64_t K, \
                                   float out[4]) {                                                                \
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps();                      \
        __m256 a3 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();                      \
        __m256 b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();                                                \
        int64_t k = 0;                                                                                            \
        for (; k + 16 <= K; k += 16) {                                                                            \
            __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);                                  \
            _mm_prefetch((const char *)(w0 + k + PF), _MM_HINT_T0);                                               \
            _mm_prefetch((const char *)(w1 + k + PF), _MM_HINT_T0);                                               \
            _mm_prefetch((const char *)(w2 + k + PF), _MM_HINT_T0);                                               \
            _mm_prefetch((const char *)(w3 + k + PF), _MM_HINT_T0);                                               \
            a0 = _mm256_fmadd_ps(WIDEN(w0 + k), x0, a0);                                                          \
            b0 = _mm256_fmadd_ps(WIDEN(w0 + k + 8), x1, b0);                                                      \
            a1 = _mm256_fmadd_ps(WIDEN(w1 + k), x0, a1);                                                          \
            b1 = _mm256_fmadd_ps(WIDEN(w1 + k + 8), x1, b1);                                                      \
            a2 = _mm256_fmadd_ps(WIDEN(w2 + k), x0, a2);                                                          \
            b2 = _mm256_fmadd_ps(WIDEN(w2 + k + 8), x1, b2);                                                      \
            a3 = _mm256_fmadd_ps(WIDEN(w3 + k), x0, a3);                                                          \
            b3 = _mm256_fmadd_ps(WIDEN(w3 + k + 8), x1, b3);                                                      \
        }                                                                                                         \
        float s0 = hsum(_mm256_add_ps(a0, b0)), s1 = hsum(_mm256_add_ps(a1, b1));                                 \
        float s2 = hsum(_mm256_add_ps(a2, b2)), s3 = hsum(_mm256_add_ps(a3, b3));                                 \
        for (; k < K; k++) {                                                                                      \
            s0 += x[k] * SCALAR(w0[k]);                                                                           \
            s1 += x[k] * SCALAR(w1[k]);                                                                           \
            s2 += x[k] * SCALAR(w2[k]);                                                                           \
            s3 += x[k] * SCALAR(w3[k]);                                                                           \
        }                                                                                                         \
        out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;                                                       \
    }                                                                                                             \
                                                                                                                  \
    static inline float NAME##_dot1(const float *x, const T *w, int64_t K) {                                      \
        __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();                                                  \
        int64_t k = 0;                                                                                            \
        for (; k + 16 <= K; k += 16) {                                                                            \
            a = _mm256_fmadd_ps(WIDEN(w + k), _mm256_loadu_ps(x + k), a);                                         \
            b = _mm256_fmadd_ps(WIDEN(w + k + 8), _mm256_loadu_ps(x + k + 8), b);                                 \
        }                                                                                                         \
        float s = hsum(_mm256_add_ps(a, b));                                                                      \
        for (; k < K; k++) s += x[k] * SCALAR(w[k]);                                                              \
        return s;                                                                                                 \
    }                                                                                                             \
                                                                                                                  \
    void qw_##NAME##_matvec(const float *x, int64_t rows, const T *w, const float *scale, const float *bias,      \
                            float *y, int64_t N, int64_t K, int threads) {                                        \
        int64_t blocks = N / 4;                                                                                   \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                                         \
        for (int64_t blk = 0; blk < blocks; blk++) {                                                              \
            int64_t n = blk * 4;                                                                                  \
            const T *w0 = w + n * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;                                    \
            for (int64_t r = 0; r < rows; r++) {                                                                  \
                float s[4];                                                                                       \
                NAME##_dot4(x + r * K, w0, w1, w2, w3, K, s);                                                     \
                float *out = y + r * N + n;                                                                       \
                for (int c = 0; c < 4; c++)                                                                       \
                    out[c] = s[c] * (scale ? scale[n + c] : 1.0f) + (bias ? bias[n + c] : 0.0f);                  \
            }                                                                                                     \
        }                                                                                                         \
        for (int64_t n = blocks * 4; n < N; n++)                                                                  \
            for (int64_t r = 0; r < rows; r++)                                                                    \
                y[r * N + n] = NAME##_dot1(x + r * K, w + n * K, K) * (scale ? scale[n] : 1.0f) +                 \
                               (bias ? bias[n] : 0.0f);                                                           \
    }

/* qw_int8_matvec(x, rows, w int8, scale, bias, y, N, K, threads) and qw_bf16_matvec(x, rows, w bf16 bits, NULL,
   bias, ...); `threads` is passed (torch's count) since a thread other than torch's main one has its own default */
DEFINE_MATVEC(int8, int8_t, widen_i8, scalar_i8)
DEFINE_MATVEC(bf16, uint16_t, widen_bf16, scalar_bf16)

int qw_max_threads(void) { return omp_get_max_threads(); }
