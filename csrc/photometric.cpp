// Fused photometric augmentation on the CPU: colour jitter, grayscale, Gaussian blur, solarisation and normalisation of
// a batch of uint8 NHWC views in one pass over each image (two where the contrast needs the mean luma first, plus the
// vertical blur pass where the sample is blurred), writing the normalised float NHWC (= channels-last NCHW) views.
//
// Why: on a CPU, DALI runs these steps as five to seven separate operators (brightness, mean, colour twist, two filter
// passes, lookup table, then torch's normalisation), each a full read and write of the image with its own scheduling;
// measured on 2 cores they cost more than the decode and the resize together. Here each row stays interleaved (RGBRGB...)
// in a float buffer and every step is a contiguous loop over it: the channel-dependent ones (luma, the 3x3 colour
// matrix, the normalisation) use weight patterns of period 24 (= 3 channels x 8 lanes), the colour matrix as a 5-tap
// filter along the row (out[q] = sum_d W_d[q mod 3] y[q + d], zero where q + d leaves the pixel), the horizontal blur
// as taps 3 apart. Written with GCC/Clang vector extensions, 8 floats wide.
//
// Torch-free: bindings.cpp calls photometric_host over ranges of samples from at::parallel_for.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vectors passed between the clones: intended
#endif
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace fusedssl {
namespace {

// ITU-R 601 luma: the grayscale of every pipeline (kernels/photometric.py LUMA).
constexpr float kLumaR = 0.299f, kLumaG = 0.587f, kLumaB = 0.114f;

// The continuous form of ImageOps.solarize(threshold=128): identical on integers (127 -> 127, 128 -> 127), and no
// jump at the threshold, so float implementations agree near it.
inline float solarize(float v) { return v > 127.5f ? 255.f - v : v; }

// Index of tap position i in a line of n pixels, mirrored without repeating the edge (DALI's and OpenCV's
// reflect-101 border), for any i (repeated reflection where the window is wider than the line).
inline int64_t reflect101(int64_t i, int64_t n) {
  if (n == 1) return 0;
  while (i < 0 || i >= n) i = i < 0 ? -i : 2 * (n - 1) - i;  // one reflection unless the window is wider than n
  return i;
}

// On x86-64 with GCC the hot loops are compiled twice, for AVX2 and the baseline, and picked at load time,
// so one binary runs everywhere and uses 8-wide vectors where it can.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FSSL_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FSSL_CLONES
#endif

typedef float f8 __attribute__((vector_size(32)));
typedef uint8_t u8x8 __attribute__((vector_size(8)));
typedef int32_t i8 __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8, kPeriod = 24;  // 24 = lcm(3 channels, 8 lanes): weight patterns repeat every 3 vectors
constexpr int64_t kGuard = 8;                 // zero floats either side of a row buffer (the matrix taps reach +-2)

inline f8 load(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, f8 v) { std::memcpy(p, &v, sizeof v); }
inline f8 load_u8(const uint8_t* p) {  // through int32 lanes: one zero-extend and one convert with AVX2
  u8x8 v;
  std::memcpy(&v, p, sizeof v);
  return __builtin_convertvector(__builtin_convertvector(v, i8), f8);
}
inline f8 splat(float v) { return f8{} + v; }
inline f8 vmin(f8 a, f8 b) { return a < b ? a : b; }
inline f8 vmax(f8 a, f8 b) { return a > b ? a : b; }
inline f8 clamp255(f8 v) { return vmin(vmax(v, splat(0.f)), splat(255.f)); }

// Per-sample constants as period-24 patterns: pattern[u] belongs to channel u mod 3.
struct Patterns {
  float luma[kPeriod], scale[kPeriod], shift[kPeriod];
  float mix[5][kPeriod];  // mix[d + 2][u] = matrix[c][c + d] (c = u mod 3), 0 where c + d is not a channel

  Patterns(const float* matrix, const float* sc, const float* sh) {
    const float l[3] = {kLumaR, kLumaG, kLumaB};
    for (int u = 0; u < kPeriod; ++u) {
      const int c = u % 3;
      luma[u] = l[c];
      scale[u] = sc[c];
      shift[u] = sh[c];
      for (int d = -2; d <= 2; ++d) mix[d + 2][u] = (c + d >= 0 && c + d < 3) ? matrix[3 * c + c + d] : 0.f;
    }
  }
};

// Mean luma of min(b x, 255) over the image (q runs over n = 3 h w interleaved values).
FSSL_CLONES float mean_luma(const uint8_t* x, int64_t n, float b, const Patterns& pat) {
  const f8 vb = splat(b), top = splat(255.f);
  double total = 0.0;
  int64_t q = 0;
  for (; q + kPeriod <= n;) {  // float partial sums over blocks of 3072 values, double across blocks
    f8 acc = {};
    const int64_t end = std::min(n - kPeriod, q + 128 * kPeriod);
    for (; q <= end; q += kPeriod) {
      for (int u = 0; u < kPeriod; u += kLanes) acc += load(pat.luma + u) * vmin(load_u8(x + q + u) * vb, top);
    }
    for (int l = 0; l < kLanes; ++l) total += acc[l];
  }
  for (; q < n; ++q) total += pat.luma[q % kPeriod] * std::min(x[q] * b, 255.f);
  return static_cast<float>(total / static_cast<double>(n / 3));
}

// One row of n = 3 w values: uint8 -> float into y (n rounded up to kPeriod, zero guards either side), and where
// ``colour``, brightness and contrast in place, then the colour matrix into ``mixed``. Returns the row's buffer.
FSSL_CLONES float* colour_row(const uint8_t* x, int64_t n, int64_t np, float* y, float* mixed, bool colour, float b,
                              float c, float m, const Patterns& pat) {
  int64_t q = 0;
  for (; q + kLanes <= n; q += kLanes) store(y + q, load_u8(x + q));
  for (; q < np; ++q) y[q] = q < n ? x[q] : 0.f;
  if (!colour) return y;
  const f8 vb = splat(b), vc = splat(c), off = splat((1.f - c) * m), top = splat(255.f);
  for (q = 0; q < np; q += kLanes) store(y + q, clamp255(vc * vmin(load(y + q) * vb, top) + off));
  for (q = 0; q < np; q += kPeriod) {
    for (int u = 0; u < kPeriod; u += kLanes) {
      f8 acc = {};
      for (int d = -2; d <= 2; ++d) acc += load(pat.mix[d + 2] + u) * load(y + q + u + d);
      store(mixed + q + u, clamp255(acc));
    }
  }
  return mixed;
}

// Horizontal pass of the separable blur over one interleaved row of w pixels (taps g[0..2r], 3 values apart): the row
// is copied with r reflected pixels either side into ``pad`` (3 w + 6 r values and a vector of slack), so one vector
// loop covers the whole row, borders included.
FSSL_CLONES void blur_row(const float* in, float* pad, float* out, int64_t w, const float* g, int64_t r) {
  const int64_t n = 3 * w;
  std::memcpy(pad + 3 * r, in, n * sizeof(float));
  for (int64_t j = 1; j <= r; ++j) {
    const int64_t left = reflect101(-j, w), right = reflect101(w - 1 + j, w);
    for (int ch = 0; ch < 3; ++ch) {
      pad[3 * (r - j) + ch] = in[3 * left + ch];
      pad[3 * (r + w - 1 + j) + ch] = in[3 * right + ch];
    }
  }
  for (int64_t q = 0; q < n; q += kLanes) {
    f8 acc = {};
    for (int64_t t = 0; t <= 2 * r; ++t) acc += splat(g[t]) * load(pad + q + 3 * t);
    store(out + q, acc);
  }
}

// acc = sum_t g[t] rows[t] over np values (the vertical pass of the blur for one output row).
FSSL_CLONES void blur_column(const float* const* rows, const float* g, int64_t taps, int64_t np, float* acc) {
  for (int64_t q = 0; q < np; q += kLanes) {
    f8 s = {};
    for (int64_t t = 0; t < taps; ++t) s += splat(g[t]) * load(rows[t] + q);
    store(acc + q, s);
  }
}

// Solarisation where asked and the normalisation, into the output row (n values; the buffer holds np).
FSSL_CLONES void store_row(const float* v, int64_t n, bool sol, const Patterns& pat, float* out) {
  const f8 half = splat(127.5f), full = splat(255.f);
  int64_t q = 0;
  for (; q + kPeriod <= n; q += kPeriod) {
    for (int u = 0; u < kPeriod; u += kLanes) {
      f8 x = load(v + q + u);
      if (sol) x = x > half ? full - x : x;
      store(out + q + u, x * load(pat.scale + u) + load(pat.shift + u));
    }
  }
  for (int u = 0; q < n; ++q, ++u) {
    const float x = sol ? solarize(v[q]) : v[q];
    out[q] = x * pat.scale[u] + pat.shift[u];
  }
}

void one_sample(const uint8_t* x, float* out, int64_t h, int64_t w, const PhotoArgs& a, int64_t k,
                std::vector<float>& work, std::vector<const float*>& rows) {
  const bool colour = a.colour[k] != 0, sol = a.solarize[k] != 0;
  const int64_t r = a.radius[k];
  const float b = a.bright[k], c = a.contrast[k];
  const float* g = a.taps + a.taps_stride * k;
  const Patterns pat(a.matrix + 9 * k, a.scale, a.shift);
  const int64_t n = 3 * w, np = (n + kPeriod - 1) / kPeriod * kPeriod, stride = np + 2 * kGuard;
  const float m = colour ? mean_luma(x, h * n, b, pat) : 0.f;
  const int64_t images = r == 0 ? 0 : h;  // blurred: the colour-mixed, horizontally blurred image, kept for the
  const int64_t padded = np + 6 * r + kLanes;  // vertical pass, and the reflected row of the horizontal pass
  // Grown, never cleared: the guards around y, mixed and acc are never written (zero since allocation), and every
  // other value read is written first for this sample, or only reaches the padding lanes past n, which are not stored.
  const size_t need = static_cast<size_t>(stride) * (3 + images) + (r ? padded : 0);
  if (work.size() < need) work.resize(need, 0.f);
  float* y = work.data() + kGuard;
  float* mixed = y + stride;
  float* acc = mixed + stride;
  float* image = acc + stride;
  float* pad = image + stride * images;
  for (int64_t i = 0; i < h; ++i) {
    const float* row = colour_row(x + i * n, n, np, y, mixed, colour, b, c, m, pat);
    if (r == 0) {
      store_row(row, n, sol, pat, out + i * n);
    } else {
      blur_row(row, pad, image + i * stride, w, g, r);
    }
  }
  if (r == 0) return;
  rows.resize(2 * r + 1);
  for (int64_t i = 0; i < h; ++i) {
    for (int64_t t = 0; t <= 2 * r; ++t) rows[t] = image + reflect101(i + t - r, h) * stride;
    blur_column(rows.data(), g, 2 * r + 1, np, acc);
    store_row(acc, n, sol, pat, out + i * n);
  }
}

}  // namespace

void photometric_host(const uint8_t* x, float* out, int64_t h, int64_t w, const PhotoArgs& a, int64_t begin,
                      int64_t end) {
  std::vector<float> work;
  std::vector<const float*> rows;
  for (int64_t k = begin; k < end; ++k) one_sample(x + k * h * w * 3, out + k * h * w * 3, h, w, a, k, work, rows);
}

}  // namespace fusedssl
