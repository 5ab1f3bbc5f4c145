// The per-pixel arithmetic of the fused photometric augmentation (photometric.cpp on the CPU, and any device port),
// kept in one place so every implementation computes the same thing. Torch-free and CUDA-free.
//
// Order (torchvision's, methods.md §12.2): brightness (clamped at 255), contrast about the mean luma m of the brightened
// image (clamped), then one 3x3 colour matrix for saturation, hue and grayscale (clamped), Gaussian blur, solarisation,
// normalisation. Values stay in float on the 0..255 scale from the uint8 input to the normalised output: no rounding
// between steps, so the result is a continuous function of the parameters and a float64 reference can check it.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FSSL_HD __host__ __device__ __forceinline__
#else
#define FSSL_HD inline
#endif

namespace fusedssl {
namespace photo {

// ITU-R 601 luma: the grayscale of every pipeline (engine/data/augment.py LUMA).
constexpr float kLumaR = 0.299f, kLumaG = 0.587f, kLumaB = 0.114f;

FSSL_HD float clamp255(float v) { return v < 0.f ? 0.f : (v > 255.f ? 255.f : v); }

FSSL_HD float brighten(float x, float b) {  // x >= 0, b > 0: only the top clamp can act
  float v = x * b;
  return v > 255.f ? 255.f : v;
}

// The continuous form of ImageOps.solarize(threshold=128): identical on integers (127 -> 127, 128 -> 127), and no
// jump at the threshold, so float implementations agree near it.
FSSL_HD float solarize(float v) { return v > 127.5f ? 255.f - v : v; }

// Index of tap position i in a line of n pixels, mirrored without repeating the edge (DALI's and OpenCV's
// reflect-101 border), for any i (repeated reflection where the window is wider than the line).
FSSL_HD int64_t reflect101(int64_t i, int64_t n) {
  if (n == 1) return 0;
  while (i < 0 || i >= n) i = i < 0 ? -i : 2 * (n - 1) - i;  // one reflection unless the window is wider than n
  return i;
}

}  // namespace photo
}  // namespace fusedssl
