#pragma once
// Host stand-ins for the e4m3 conversions kv.cuh uses.
#include <cuda_fp16.h>
typedef uint8_t __nv_fp8_storage_t;
enum __nv_fp8_interpretation_t { __NV_E4M3, __NV_E5M2 };
enum __nv_saturation_t { __NV_NOSAT, __NV_SATFINITE };
inline float emu_fp8_to_float(uint8_t b) {
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    float v = (e == 15 && m == 7) ? NAN : e == 0 ? std::ldexp((float)m, -9) : std::ldexp((float)(8 | m), e - 10);
    return s ? -v : v;
}
inline __half_raw __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t b, __nv_fp8_interpretation_t) {
    return __half_raw{__float2half(emu_fp8_to_float(b)).x};
}
// Nearest e4m3 by search (ties to the even code), saturating at 448.
inline __nv_fp8_storage_t __nv_cvt_float_to_fp8(float x, __nv_saturation_t, __nv_fp8_interpretation_t) {
    uint8_t best = 0; float bd = INFINITY;
    for (int c = 0; c < 256; c++) {
        float v = emu_fp8_to_float((uint8_t)c);
        if (v != v) continue;
        float d = std::fabs(v - x);
        if (d < bd || (d == bd && (c & 1) == 0)) { bd = d; best = (uint8_t)c; }
    }
    return best;
}
