// The estimators' backward g(x), shared by the CPU loops (ops.cpp) and the CUDA kernels (kernels.cu).
//
// Each g is the PyTorch expression of reste/estimators.py, written with the same float32 operations
// in the same order (the build turns off contraction into fused multiply-adds), so the regions
// (the comparisons that decide zeros, clipping and ReSTE's constant near 0) land on the same
// elements; only the transcendental functions (log2, exp2, exp, cos) come from another
// library. The scalars are those of reste/kernel_args.py, the same the Triton kernels receive.
#pragma once

#include <float.h>
#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define RESTE_HD __host__ __device__ __forceinline__
#else
#define RESTE_HD inline
#endif

namespace reste_ext {

// The estimators, in the order of reste.kernel_args.KINDS.
enum Kind : int { kSte = 0, kReste, kApproxSign, kSignSwish, kEde, kRbnn, kDsq, kFda, kKinds };

struct Params {
  int kind;
  float s[5];  // s0..s4 per kind (kernel_args.kernel_scalars)
  double w;    // FDA: w in float64, so each (2i+1) w is rounded once to float32, as Python computes it
  int count;   // FDA: n
};

// sign with sign(0) = sign(-0) = +1, NaN kept
RESTE_HD float sign1(float x) { return x != x ? x : (x < 0.0f ? -1.0f : 1.0f); }

// the derivative of abs: 0 at 0, NaN kept
RESTE_HD float sgn0(float x) { return x != x ? x : (x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f)); }

// 1 where a <= bound, else 0 (NaN: 0)
RESTE_HD float step_le(float a, float bound) { return a <= bound ? 1.0f : 0.0f; }

// max(v, lo) with NaN kept, as torch.clamp(min=)
RESTE_HD float clamp_min(float v, float lo) { return v < lo ? lo : v; }

// scale (1 - tanh(z)^2), as scale 4e / (1 + e)^2 with e = exp(-2 |z|): 1 - tanh^2 cancels where tanh is near 1
RESTE_HD float tanh_bump(float z, float scale) {
  const float e = expf(-2.0f * fabsf(z));
  return scale * (4.0f * e / ((1.0f + e) * (1.0f + e)));
}

RESTE_HD float g(float x, const Params& p) {
  const float a = fabsf(x);
  switch (p.kind) {
    case kSte:  // (a <= clip)
      return step_le(a, p.s[0]);
    case kReste: {  // max(a, m)^q ((a <= m)(1 - 1/o) + 1/o)(a <= t), q = (1 - o)/o; (a <= t) at o = 1
      const float inside_t = step_le(a, p.s[3]);
      if (p.s[0] == 0.0f) return inside_t;
      const float factor = (step_le(a, p.s[4]) * p.s[2] + p.s[1]) * inside_t;
      return exp2f(p.s[0] * log2f(clamp_min(a, p.s[4]))) * factor;
    }
    case kApproxSign:  // max(2 - 2a, 0)
      return clamp_min(2.0f - 2.0f * a, 0.0f);
    case kSignSwish: {  // even: 2 beta q (1 - q)(2 - v (1 - 2q)), v = abs(beta x), q = sigmoid(-v), no cancelling
      const float w = fabsf(p.s[0] * x);  // clamped to the finite floats: g = 0 at +-inf (its limit), NaN kept
      const float v = w > FLT_MAX ? FLT_MAX : w;
      const float q = 1.0f / (1.0f + expf(v));
      return p.s[1] * q * (1.0f - q) * (2.0f - v * (1.0f - 2.0f * q));
    }
    case kEde:  // k t (1 - tanh(t x)^2)
      return tanh_bump(p.s[0] * x, p.s[1]);
    case kRbnn:  // max(k sqrt(2) t - k t^2 a, 0)
      return clamp_min(p.s[0] - p.s[1] * a, 0.0f);
    case kDsq:  // s k (1 - tanh(k (x - mid))^2) (l <= x <= u)
      return tanh_bump(p.s[1] * (x - p.s[0]), p.s[2]) * ((x >= p.s[3] && x <= p.s[4]) ? 1.0f : 0.0f);
    default: {  // FDA: (4 w / pi) sum_{i<=n} cos((2i+1) w x) (a <= 1)
      float acc = 0.0f;
      const float c = x > 1.0f ? 1.0f : (x < -1.0f ? -1.0f : x);  // finite outside [-1, 1], where g is 0
      for (int i = 0; i <= p.count; ++i) acc += cosf(static_cast<float>((2 * i + 1) * p.w) * c);
      return acc * p.s[2] * step_le(a, 1.0f);
    }
  }
}

}  // namespace reste_ext
