/* Instruction sets: the multiversioning macro of cconv's plain C loops, the level of its
 * explicitly vectorised kernels (_pool_simd.h, _conv_direct.h): 2 = AVX-512F, 1 = AVX2 with
 * FMA (on aarch64: NEON), 0 = generic loops only, and the vector helpers those kernels are
 * written with.
 *
 * The kernels are compiled for their instruction set with target attributes, whatever the
 * build's baseline, and chosen at run time from cconv._cpu's simd_level().
 */
#ifndef CCONV_SIMD_H
#define CCONV_SIMD_H

/* Plain C loops that gain from wider vectors are compiled for several instruction sets on
   x86-64 Linux with gcc (the loader picks the best one at run time); elsewhere for the
   build's baseline. The one definition: _pool_rows.h, _elementwise.h and _winograd.h use it.
   The loader's choice ignores simd_level(), so a build made with
   CFLAGS=-DCCONV_CLONES_MAX_AVX2 leaves out the AVX-512 clone: with it and simd_level(1),
   nothing of cconv runs AVX-512 (bench/bench_isa.py's simulation of a CPU without it).
   CCONV_MULTIVERSION_TARGETS names the clones, for the benchmarks' logs. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#ifdef CCONV_CLONES_MAX_AVX2
#define CCONV_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#define CCONV_MULTIVERSION_TARGETS "avx2,default"
#else
#define CCONV_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#define CCONV_MULTIVERSION_TARGETS "avx512f,avx2,default"
#endif
#else
#define CCONV_MULTIVERSION
#define CCONV_MULTIVERSION_TARGETS ""
#endif

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CCONV_X86 1
#include <immintrin.h>
#define CCONV_AVX512 __attribute__((target("avx512f")))
#define CCONV_AVX2 __attribute__((target("avx2")))
#define CCONV_AVX2FMA __attribute__((target("avx2,fma")))
#else
#define CCONV_X86 0
#endif

#if defined(__aarch64__) && defined(__ARM_NEON)
#define CCONV_NEON 1
#include <arm_neon.h>
#else
#define CCONV_NEON 0
#endif

/* A hint that the cache line at p will be read soon; it changes no result. */
#if defined(__GNUC__) || defined(__clang__)
#define CCONV_PREFETCH(p) __builtin_prefetch(p)
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <xmmintrin.h>
#define CCONV_PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)
#else
#define CCONV_PREFETCH(p) ((void)(p))
#endif

/* What the CPU and the build support: 2 (AVX-512F), 1 (AVX2 and FMA; NEON, which every
   aarch64 CPU has) or 0. The level in use, which the tests lower to reach every path, is
   kept by cconv._cpu (simd_level). */
static inline int cconv_simd_detect(void) {
    int level = 0;
#if CCONV_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) level = 1;
    if (__builtin_cpu_supports("avx512f")) level = 2;
#elif CCONV_NEON
    level = 1;
#endif
    return level;
}

/* Vector helpers over float32 lanes, one set per instruction set, so that a kernel is
   written once, in terms of VEC(op), and compiled for each set (see _conv_direct.h):

     CCONV_V<lanes>_load(p) / _store(p, v)     unaligned load / store of all lanes
     _loadm(p, m) / _storem(p, m, v)           the first lanes only, m = _mask(n), 0 < n < lanes
                                               (masked loads read nothing past them and give 0)
     _set1(x), _zero(), _add(a, b), _mul(a, b), _fma(a, b, c) = a * b + c
     _pmax(best, v), _relu(v)                  the max pool's step and the fused pools' ReLU

   and, for the max pool's argmax (_pool_simd_kern.h), a lane predicate (cconv_p<lanes>_t)
   and a vector of int32 (cconv_i<lanes>_t):

     _take(best, v)                            the predicate v > best or v is a NaN
     _sel(k, v, best) / _isel(k, a, arg)       v (a) where k, else best (arg)
     _iset1(i), _istore(p, a)                  an int32 in every lane; store to int *p
     _stream(p, v) / _istream(p, a)            non-temporal stores (aligned p; x86 only)
     _ieq(p, a)                                the predicate int *p == a, lane by lane
     _keep(k, v)                               v where k, else +0
     _count(k)                                 how many lanes k holds

   A port to another vector ISA (SVE, RISC-V V, AVX10) is one more such set.

   A kernel template (a header included once per set) defines VLANES (16, 8 or 4) and KSFX
   (the name suffix) before each inclusion and uses CCONV_VEC(load)(p), which is then
   CCONV_V16_load(p) etc., CCONV_VTYPE, CCONV_VMASK and CCONV_KNAME(f) (f with the suffix). */
#define CCONV_CAT_(a, b) a##b
#define CCONV_CAT(a, b) CCONV_CAT_(a, b)
#define CCONV_VEC_(n, op) CCONV_V##n##_##op
#define CCONV_VEC__(n, op) CCONV_VEC_(n, op)
#define CCONV_VEC(op) CCONV_VEC__(VLANES, op)
#define CCONV_VTYPE CCONV_CAT(CCONV_CAT(cconv_v, VLANES), _t)
#define CCONV_VMASK CCONV_CAT(CCONV_CAT(cconv_m, VLANES), _t)
#define CCONV_PTYPE CCONV_CAT(CCONV_CAT(cconv_p, VLANES), _t)
#define CCONV_ITYPE CCONV_CAT(CCONV_CAT(cconv_i, VLANES), _t)
#define CCONV_KNAME(f) CCONV_CAT(f, KSFX)
#if CCONV_X86
typedef __m512 cconv_v16_t;                                    /* AVX-512F: 16 lanes */
typedef __mmask16 cconv_m16_t;
#define CCONV_V16_load(p) _mm512_loadu_ps(p)
#define CCONV_V16_store(p, v) _mm512_storeu_ps((p), (v))
#define CCONV_V16_mask(n) ((__mmask16)((1u << (n)) - 1u))
#define CCONV_V16_loadm(p, m) _mm512_maskz_loadu_ps((m), (p))
#define CCONV_V16_storem(p, m, v) _mm512_mask_storeu_ps((p), (m), (v))
#define CCONV_V16_set1(x) _mm512_set1_ps(x)
#define CCONV_V16_zero() _mm512_setzero_ps()
#define CCONV_V16_add(a, b) _mm512_add_ps((a), (b))
#define CCONV_V16_mul(a, b) _mm512_mul_ps((a), (b))
#define CCONV_V16_fma(a, b, c) _mm512_fmadd_ps((a), (b), (c))
/* the max pool's step: v where v > best or v is a NaN, else best (lane by lane) */
#define CCONV_V16_pmax(best, v) CCONV_V16_sel(CCONV_V16_take((best), (v)), (v), (best))
/* ReLU as the fused pools apply it: +0 where v <= 0, v elsewhere (a NaN kept) */
#define CCONV_V16_relu(v) _mm512_maskz_mov_ps(_mm512_cmp_ps_mask((v), _mm512_setzero_ps(), \
    _CMP_NLE_UQ), (v))
typedef __mmask16 cconv_p16_t;
typedef __m512i cconv_i16_t;
#define CCONV_V16_take(best, v) (_mm512_cmp_ps_mask((v), (best), _CMP_GT_OQ)               \
    | _mm512_cmp_ps_mask((v), (v), _CMP_UNORD_Q))
#define CCONV_V16_sel(k, v, best) _mm512_mask_mov_ps((best), (k), (v))
#define CCONV_V16_isel(k, a, arg) _mm512_mask_mov_epi32((arg), (k), (a))
#define CCONV_V16_iset1(i) _mm512_set1_epi32(i)
#define CCONV_V16_istore(p, a) _mm512_storeu_si512((void *)(p), (a))
#define CCONV_V16_stream(p, v) _mm512_stream_ps((p), (v))
#define CCONV_V16_istream(p, a) _mm512_stream_si512((void *)(p), (a))
#define CCONV_V16_ieq(p, a) _mm512_cmpeq_epi32_mask(_mm512_loadu_si512(p), (a))
#define CCONV_V16_keep(k, v) _mm512_maskz_mov_ps((k), (v))
#define CCONV_V16_count(k) __builtin_popcount((unsigned)(k))

typedef __m256 cconv_v8_t;                                     /* AVX2 + FMA: 8 lanes */
typedef __m256i cconv_m8_t;
__attribute__((unused)) static const int cconv_m8_table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
#define CCONV_V8_load(p) _mm256_loadu_ps(p)
#define CCONV_V8_store(p, v) _mm256_storeu_ps((p), (v))
#define CCONV_V8_mask(n) _mm256_loadu_si256((const __m256i *)(cconv_m8_table + 8 - (n)))
#define CCONV_V8_loadm(p, m) _mm256_maskload_ps((p), (m))
#define CCONV_V8_storem(p, m, v) _mm256_maskstore_ps((p), (m), (v))
#define CCONV_V8_set1(x) _mm256_set1_ps(x)
#define CCONV_V8_zero() _mm256_setzero_ps()
#define CCONV_V8_add(a, b) _mm256_add_ps((a), (b))
#define CCONV_V8_mul(a, b) _mm256_mul_ps((a), (b))
#define CCONV_V8_fma(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define CCONV_V8_pmax(best, v) CCONV_V8_sel(CCONV_V8_take((best), (v)), (v), (best))
#define CCONV_V8_relu(v) _mm256_and_ps((v), _mm256_cmp_ps((v), _mm256_setzero_ps(),          \
    _CMP_NLE_UQ))
typedef __m256 cconv_p8_t;           /* all-ones lanes */
typedef __m256 cconv_i8_t;           /* the int32 bits in float lanes: one blend moves them */
#define CCONV_V8_take(best, v) _mm256_or_ps(_mm256_cmp_ps((v), (best), _CMP_GT_OQ),         \
    _mm256_cmp_ps((v), (v), _CMP_UNORD_Q))
#define CCONV_V8_sel(k, v, best) _mm256_blendv_ps((best), (v), (k))
#define CCONV_V8_isel(k, a, arg) _mm256_blendv_ps((arg), (a), (k))
#define CCONV_V8_iset1(i) _mm256_castsi256_ps(_mm256_set1_epi32(i))
#define CCONV_V8_istore(p, a) _mm256_storeu_ps((float *)(p), (a))
#define CCONV_V8_stream(p, v) _mm256_stream_ps((p), (v))
#define CCONV_V8_istream(p, a) _mm256_stream_ps((float *)(p), (a))
#define CCONV_V8_ieq(p, a) _mm256_castsi256_ps(_mm256_cmpeq_epi32(                           \
    _mm256_loadu_si256((const __m256i *)(p)), _mm256_castps_si256(a)))
#define CCONV_V8_keep(k, v) _mm256_and_ps((k), (v))
#define CCONV_V8_count(k) __builtin_popcount((unsigned)_mm256_movemask_ps(k))
#endif

#if CCONV_NEON
typedef float32x4_t cconv_v4_t;                                /* NEON: 4 lanes */
typedef int cconv_m4_t;                                        /* the lane count */
static inline float32x4_t cconv_v4_loadm(const float *p, int n) {
    float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; i < n; i++) t[i] = p[i];
    return vld1q_f32(t);
}
static inline void cconv_v4_storem(float *p, int n, float32x4_t v) {
    float t[4];
    vst1q_f32(t, v);
    for (int i = 0; i < n; i++) p[i] = t[i];
}
#define CCONV_V4_load(p) vld1q_f32(p)
#define CCONV_V4_store(p, v) vst1q_f32((p), (v))
#define CCONV_V4_mask(n) (n)
#define CCONV_V4_loadm(p, m) cconv_v4_loadm((p), (m))
#define CCONV_V4_storem(p, m, v) cconv_v4_storem((p), (m), (v))
#define CCONV_V4_set1(x) vdupq_n_f32(x)
#define CCONV_V4_zero() vdupq_n_f32(0.0f)
#define CCONV_V4_add(a, b) vaddq_f32((a), (b))
#define CCONV_V4_mul(a, b) vmulq_f32((a), (b))
#define CCONV_V4_fma(a, b, c) vfmaq_f32((c), (a), (b))
#define CCONV_V4_pmax(best, v) CCONV_V4_sel(CCONV_V4_take((best), (v)), (v), (best))
#define CCONV_V4_relu(v) vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v),           \
    vmvnq_u32(vcleq_f32((v), vdupq_n_f32(0.0f)))))
typedef uint32x4_t cconv_p4_t;
typedef int32x4_t cconv_i4_t;
#define CCONV_V4_take(best, v) vorrq_u32(vcgtq_f32((v), (best)), vmvnq_u32(vceqq_f32((v), (v))))
#define CCONV_V4_sel(k, v, best) vbslq_f32((k), (v), (best))
#define CCONV_V4_isel(k, a, arg) vbslq_s32((k), (a), (arg))
#define CCONV_V4_iset1(i) vdupq_n_s32(i)
#define CCONV_V4_istore(p, a) vst1q_s32((p), (a))
#define CCONV_V4_stream(p, v) vst1q_f32((p), (v))     /* never asked for: no hint taken */
#define CCONV_V4_istream(p, a) vst1q_s32((p), (a))
#define CCONV_V4_ieq(p, a) vceqq_s32(vld1q_s32(p), (a))
#define CCONV_V4_keep(k, v) vreinterpretq_f32_u32(vandq_u32((k), vreinterpretq_u32_f32(v)))
#define CCONV_V4_count(k) vaddvq_u32(vshrq_n_u32((k), 31))
#endif

#endif  /* CCONV_SIMD_H */
