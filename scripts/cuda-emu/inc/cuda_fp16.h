#pragma once
#include <cuda_runtime.h>
#include <cstdint>
#include <cstring>
#include <cmath>
struct __half_raw { uint16_t x; };
struct __half {
    uint16_t x;
    __half() = default;
    __half(uint16_t v) : x(v) {}
    __half(__half_raw r) : x(r.x) {}
};
// f32 to f16, rounded to nearest even (normals, subnormals, overflow to infinity).
inline __half __float2half(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    uint16_t sign = (u >> 16) & 0x8000;
    float a = std::fabs(f);
    if (a != a) return __half((uint16_t)0x7e00);
    if (a >= 65520.f) return __half((uint16_t)(sign | 0x7c00));
    int e; std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
    int ulp_exp = std::max(e - 11, -24);  // f16 has 11 significant bits, subnormal step 2^-24
    float q = std::nearbyint(std::ldexp(a, -ulp_exp));  // default rounding: to nearest even
    float r = std::ldexp(q, ulp_exp);
    // Re-encode r exactly.
    if (r == 0) return __half(sign);
    int re; std::frexp(r, &re);
    uint16_t bits;
    if (re - 1 < -14) bits = (uint16_t)std::ldexp(r, 24);
    else bits = (uint16_t)(((re - 1 + 15) << 10) | ((uint32_t)std::ldexp(r, 11 - re) & 1023));
    return __half((uint16_t)(sign | bits));
}
inline float __half2float(__half h) {
    int s = h.x >> 15, e = (h.x >> 10) & 31, m = h.x & 1023;
    float v = e == 0 ? std::ldexp((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp((float)(m | 1024), e - 25);
    return s ? -v : v;
}
inline __half __ushort_as_half(unsigned short v) { return __half((uint16_t)v); }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
struct __half2 { __half x, y; };
inline float2 __half22float2(__half2 h);
