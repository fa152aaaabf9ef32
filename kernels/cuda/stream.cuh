// The one stream every kernel and copy goes on. A non-default stream, so that a decode step
// can be captured into a CUDA graph and replayed.
#pragma once

#include <cuda_runtime.h>

extern cudaStream_t wick_stream;
