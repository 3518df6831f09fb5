/* approxbp's fused CPU loops, built on first use by approxbp.ops.native (cc -O3, no fast-math) and called through
 * ctypes on contiguous CPU tensors.  Each computes exactly what the pure-PyTorch reference of its op computes
 * (approxbp.ops.approx_act, approxbp.ops.packed_dropout), in one pass instead of several:
 *
 *   approx_codes_*   code(x) = #{j : t_j <= x} (x in the compute dtype: fp32 for fp16/bf16/fp32, fp64 for fp64;
 *                    NaN -> 0), packed 8 / pack_bits codes a byte, little end first; returns 1 when every x is
 *                    finite, else 0
 *   approx_step_*    dx = dy * L[code], one multiply in the compute dtype, rounded once to dy's dtype
 *   dropout_fwd_*    y = x * noise (torch's CPU dropout: noise is 0 or 1 / (1 - p) in x's dtype) and the keep bits
 *                    (noise != 0), 8 a byte, little end first
 *
 * A product of two fp16 (bf16) values is exact in fp32, so multiplying in fp32 and rounding once to nearest even is
 * the correctly rounded 16-bit product torch computes.  Dropout's backward is approx_step with 1-bit codes and the
 * levels (0, 1 / (1 - p)).  Built with -march=native, the step has an AVX2 loop (8 elements at once: the codes by
 * variable shifts, the levels by one permute, F16C for fp16) and a scalar one for the rest.  Ranges [begin, end) let the host split a call over threads;
 * begin is a multiple of 8 elements, so every thread writes whole bytes.
 */
#include <stdint.h>
#include <string.h>

typedef uint16_t bf16;

static inline float bf16_load(bf16 h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline bf16 bf16_store(float f) { /* c10::BFloat16's round to nearest even, NaN -> 0x7FC0 */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
    return (bf16)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

#define ID(v) (v)
#define F16_LOAD(v) ((float)(v))
#define F16_STORE(v) ((_Float16)(v))

/* code of one element against NT thresholds; finiteness as a flag that stays 0 once an element is not finite */
#define CODE_LOOP(C, NT)                                                                    \
    for (int64_t i = 0; i < m; i++) {                                                       \
        C v = wide[i];                                                                      \
        uint8_t c = 0;                                                                      \
        for (int j = 0; j < NT; j++) c += (uint8_t)(v >= t[j]);                             \
        codes[i] = c;                                                                       \
        finite &= (v - v == 0);                                                             \
    }


#if defined(__AVX2__)
#include <immintrin.h>

/* the codes of the 8 elements from element i (a multiple of 8): pack_bits bytes, shifted apart and masked */
static inline __m256i codes8(const uint8_t *packed, int64_t i, int pack_bits) {
    const uint8_t *p = packed + i / 8 * pack_bits;
    uint32_t word = pack_bits == 1 ? p[0] : pack_bits == 2 ? (uint32_t)p[0] | (uint32_t)p[1] << 8
                                                          : (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    __m256i shifts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(pack_bits));
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), shifts),
                            _mm256_set1_epi32((1 << pack_bits) - 1));
}

/* L[code] for 8 codes: levels 0..7 by one permute, 8..15 by a second one and a blend */
static inline __m256 levels8(__m256i code, __m256 low, __m256 high, int nl) {
    __m256 level = _mm256_permutevar8x32_ps(low, code);
    if (nl <= 8) return level;
    __m256 upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(code, _mm256_set1_epi32(7)));
    return _mm256_blendv_ps(level, _mm256_permutevar8x32_ps(high, code), upper);
}

static inline __m256 bf16_load8(const bf16 *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

static inline void bf16_store8(bf16 *p, __m256 v) { /* bf16_store on 8 lanes */
    __m256i u = _mm256_castps_si256(v);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd), 16);
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128((__m128i *)p, _mm256_castsi256_si128(packed));
}

#define VECTOR_LEVELS                                                                                              \
    int nl = 1 << pack_bits;                                                                                       \
    float low_[8], high_[8];                                                                                       \
    for (int j = 0; j < 8; j++) {                                                                                  \
        low_[j] = levels[j < nl ? j : 0];                                                                          \
        high_[j] = levels[j + 8 < nl ? j + 8 : 0];                                                                 \
    }                                                                                                              \
    __m256 low = _mm256_loadu_ps(low_), high = _mm256_loadu_ps(high_);

#define VECTOR_STEP_f32                                                                                            \
    VECTOR_LEVELS                                                                                                  \
    for (; i + 8 <= end; i += 8)                                                                                   \
        _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(dy + i),                                           \
                                               levels8(codes8(packed, i, pack_bits), low, high, nl)));
#define VECTOR_STEP_bf16                                                                                           \
    VECTOR_LEVELS                                                                                                  \
    for (; i + 8 <= end; i += 8)                                                                                   \
        bf16_store8(dx + i, _mm256_mul_ps(bf16_load8(dy + i), levels8(codes8(packed, i, pack_bits), low, high, nl)));
#if defined(__F16C__)
#define VECTOR_STEP_f16                                                                                            \
    VECTOR_LEVELS                                                                                                  \
    for (; i + 8 <= end; i += 8) {                                                                                 \
        __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(dy + i)));                                   \
        __m256 v = _mm256_mul_ps(d, levels8(codes8(packed, i, pack_bits), low, high, nl));                        \
        _mm_storeu_si128((__m128i *)(dx + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); \
    }
#else
#define VECTOR_STEP_f16
#endif

/* the packed codes of 8 elements as one word (8 * pack_bits bits); *bad gets the lanes that are not finite */
static inline uint32_t codes_word8(__m256 v, const __m256 *t, int nt, int pack_bits, __m256i *bad) {
    __m256i c = _mm256_setzero_si256();
    for (int j = 0; j < nt; j++) /* ordered >=: false for NaN, as in C */
        c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(v, t[j], _CMP_GE_OQ)));
    *bad = _mm256_or_si256(*bad, _mm256_castps_si256(_mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(),
                                                                     _CMP_NEQ_UQ)));
    __m256i shifts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(pack_bits));
    __m256i fields = _mm256_sllv_epi32(c, shifts);
    __m128i o = _mm_or_si128(_mm256_castsi256_si128(fields), _mm256_extracti128_si256(fields, 1));
    o = _mm_or_si128(o, _mm_shuffle_epi32(o, 0x4E));
    o = _mm_or_si128(o, _mm_shuffle_epi32(o, 0xB1));
    return (uint32_t)_mm_cvtsi128_si32(o);
}

static inline void store_word(uint8_t *p, uint32_t word, int pack_bits) {
    for (int k = 0; k < pack_bits; k++) p[k] = (uint8_t)(word >> (8 * k));
}

#define VECTOR_CODES(LOAD8)                                                                                        \
    {                                                                                                              \
        __m256 tv[15];                                                                                             \
        for (int j = 0; j < nt && j < 15; j++) tv[j] = _mm256_set1_ps((float)t[j]);                               \
        __m256i bad = _mm256_setzero_si256();                                                                      \
        for (; i0 + 8 <= end; i0 += 8)                                                                             \
            store_word(packed + i0 / 8 * pack_bits, codes_word8(LOAD8(x + i0), tv, nt, pack_bits, &bad), pack_bits); \
        finite = _mm256_testz_si256(bad, bad);                                                                     \
    }
#define VECTOR_CODES_f32 VECTOR_CODES(_mm256_loadu_ps)
#define VECTOR_CODES_bf16 VECTOR_CODES(bf16_load8)
#if defined(__F16C__)
#define F16_LOAD8(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define VECTOR_CODES_f16 VECTOR_CODES(F16_LOAD8)
#else
#define VECTOR_CODES_f16
#endif
#else
#define VECTOR_CODES_f32
#define VECTOR_CODES_bf16
#define VECTOR_CODES_f16
#define VECTOR_STEP_f32
#define VECTOR_STEP_bf16
#define VECTOR_STEP_f16
#endif
#define VECTOR_STEP_f64
#define VECTOR_CODES_f64

#define APPROX(SUFFIX, T, C, LOAD, STORE)                                                                          \
    int approx_codes_##SUFFIX(const T *x, int64_t begin, int64_t end, const C *t, int nt, int pack_bits,           \
                              uint8_t *packed) {                                                                   \
        enum { CHUNK = 2048 };                                                                                     \
        C wide[CHUNK];                                                                                             \
        uint8_t codes[CHUNK];                                                                                      \
        int finite = 1, per = 8 / pack_bits;                                                                       \
        int64_t i0 = begin;                                                                                        \
        VECTOR_CODES_##SUFFIX                                                                                      \
        for (int64_t s = i0; s < end; s += CHUNK) {                                                                \
            int64_t m = end - s < CHUNK ? end - s : CHUNK;                                                         \
            for (int64_t i = 0; i < m; i++) wide[i] = LOAD(x[s + i]);                                              \
            switch (nt) {                                                                                          \
                case 1: CODE_LOOP(C, 1) break;                                                                     \
                case 3: CODE_LOOP(C, 3) break;                                                                     \
                case 7: CODE_LOOP(C, 7) break;                                                                     \
                default: CODE_LOOP(C, nt) break;                                                                   \
            }                                                                                                      \
            int64_t padded = (m + per - 1) / per * per;                                                            \
            for (int64_t i = m; i < padded; i++) codes[i] = 0;                                                     \
            uint8_t *out = packed + s / per;                                                                       \
            for (int64_t b = 0; b < padded / per; b++) {                                                           \
                unsigned byte = 0;                                                                                 \
                for (int k = 0; k < per; k++) byte |= (unsigned)codes[b * per + k] << (k * pack_bits);             \
                out[b] = (uint8_t)byte;                                                                            \
            }                                                                                                      \
        }                                                                                                          \
        return finite;                                                                                             \
    }                                                                                                              \
                                                                                                                   \
    void approx_step_##SUFFIX(const T *dy, const uint8_t *packed, const C *levels, int pack_bits, int64_t begin,   \
                              int64_t end, T *dx) {                                                                \
        int64_t i = begin;                                                                                         \
        VECTOR_STEP_##SUFFIX                                                                                       \
        int per = 8 / pack_bits;                                                                                   \
        for (; i < end; i++) {                                                                                     \
            unsigned code = (packed[i / per] >> ((i % per) * pack_bits)) & ((1u << pack_bits) - 1u);               \
            dx[i] = STORE((C)LOAD(dy[i]) * levels[code]);                                                          \
        }                                                                                                          \
    }                                                                                                              \
                                                                                                                   \
    void dropout_fwd_##SUFFIX(const T *x, const T *noise, int64_t begin, int64_t end, T *y, uint8_t *bits) {      \
        for (int64_t s = begin; s < end; s += 8) {                                                                 \
            int64_t m = end - s < 8 ? end - s : 8;                                                                 \
            unsigned byte = 0;                                                                                     \
            for (int64_t k = 0; k < m; k++) {                                                                      \
                C n = LOAD(noise[s + k]);                                                                          \
                y[s + k] = STORE((C)LOAD(x[s + k]) * n);                                                           \
                byte |= (unsigned)(n != 0) << k;                                                                   \
            }                                                                                                      \
            bits[s / 8] = (uint8_t)byte;                                                                           \
        }                                                                                                          \
    }                                                                                                              \

APPROX(f32, float, float, ID, ID)
APPROX(f64, double, double, ID, ID)
APPROX(f16, _Float16, float, F16_LOAD, F16_STORE)
APPROX(bf16, bf16, float, bf16_load, bf16_store)
