#pragma once
#include <cuda_runtime.h>
#include <cstdint>
#include <cstring>
#include <cmath>
struct __half { uint16_t x; };
inline float __half2float(__half h) {
    int s = h.x >> 15, e = (h.x >> 10) & 31, m = h.x & 1023;
    float v = e == 0 ? std::ldexp((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp((float)(m | 1024), e - 25);
    return s ? -v : v;
}
struct __half2 { __half x, y; };
inline float2 __half22float2(__half2 h);
// Round to nearest even, as the GPU's cvt.rn.f16.f32 (overflow to infinity).
inline __half __float2half(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    uint16_t s = (b >> 16) & 0x8000;
    float a = std::fabs(f);
    if (a != a) return {(uint16_t)(s | 0x7e00)};
    if (a >= 65520.f) return {(uint16_t)(s | 0x7c00)};
    if (a < 6.103515625e-05f) {  // subnormal: a multiple of 2^-24
        float q = std::nearbyint(a * 16777216.f);
        return {(uint16_t)(s | (uint16_t)q)};
    }
    int e;
    float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
    float q = std::nearbyint(m * 2048.f);  // 11 significant bits
    if (q == 2048.f) { q = 1024.f; e++; }
    return {(uint16_t)(s | ((e + 14) << 10) | ((uint16_t)q - 1024))};
}
