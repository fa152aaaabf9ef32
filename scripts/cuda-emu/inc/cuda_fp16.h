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
