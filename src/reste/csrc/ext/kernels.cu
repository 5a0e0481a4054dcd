// CUDA kernels of reste's extension (ops.cpp): sign, grad * g(x), and the binary weight
// sign(w) * mean(abs(w)) per group with its backward. Every kernel reads its inputs once and writes
// its output once, computing in float32 (16-bit values are widened exactly and rounded once, to
// nearest even, when stored). Sums over a group are reduced in a fixed order: deterministic. A binary
// layer's input sign and weight share one launch each way (layer_forward_kernel, layer_backward_kernel).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

#include "estimators.h"

namespace reste_ext {

namespace {

constexpr int kThreads = 256;        // threads of an elementwise block
constexpr int kGroupThreads = 512;   // threads of a block that owns a whole weight group
constexpr int64_t kGroupMax = 65536; // groups up to this size take one block each (one launch)
constexpr int kPartial = 4096;       // elements per partial sum of a larger group

#define RESTE_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

__device__ __forceinline__ int64_t first_index() { return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; }
__device__ __forceinline__ int64_t stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// enough blocks to fill any GPU (a grid-stride loop covers the rest)
int elementwise_blocks(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 8192)));
}

// The sum of v over the block, in a fixed order, returned to every thread (blockDim.x a multiple of 32).
__device__ float block_sum(float v, float* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? shared[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) shared[32] = v;
  }
  __syncthreads();
  const float total = shared[32];
  __syncthreads();  // shared may be reused by the caller's next sum
  return total;
}

// The elementwise kernels move 16 bytes a thread at a time (8 bf16 or fp16 values, 4 float32) where every pointer
// is 16-byte aligned: one 2-byte load a thread keeps too few bytes in flight to fill the GPU's memory bandwidth
// (on an H200 the ext's scalar kernels made an ImageNet ResNet-18 step 1.8 ms slower than the Triton ones). The
// elements past the last whole 16 bytes, and every element of a tensor not so aligned, go one at a time, in the
// same launch. Each element's arithmetic is the same either way.
template <typename T>
constexpr int kPack = 16 / static_cast<int>(sizeof(T));

__host__ __device__ inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
__device__ __forceinline__ void load16(const T* p, T (&v)[kPack<T>]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  memcpy(v, &raw, 16);
}

template <typename T>
__device__ __forceinline__ void store16(T* p, const T (&v)[kPack<T>]) {
  uint4 raw;
  memcpy(&raw, v, 16);
  *reinterpret_cast<uint4*>(p) = raw;
}

// sign over the elements of x that block `block` of `blocks` takes (a grid-stride loop); the element's result does
// not depend on the split, so a launch of its own and a share of a layer's launch give the same values
template <typename T>
__device__ __forceinline__ void sign_range(const T* __restrict__ x, T* __restrict__ y, int64_t n, bool packed,
                                           int64_t block, int64_t blocks) {
  constexpr int kN = kPack<T>;
  const int64_t first = block * blockDim.x + threadIdx.x, step = blocks * blockDim.x;
  const int64_t whole = packed ? n / kN * kN : 0;
  for (int64_t i = first * kN; i < whole; i += step * kN) {
    T v[kN];
    load16(x + i, v);
#pragma unroll
    for (int k = 0; k < kN; ++k) v[k] = static_cast<T>(sign1(static_cast<float>(v[k])));
    store16(y + i, v);
  }
  for (int64_t i = whole + first; i < n; i += step) y[i] = static_cast<T>(sign1(static_cast<float>(x[i])));
}

// grad * g(x) over block `block` of `blocks`'s share, as sign_range
template <typename T>
__device__ __forceinline__ void backward_range(const T* __restrict__ x, const T* __restrict__ grad, T* __restrict__ out,
                                               int64_t n, const Params& p, bool packed, int64_t block, int64_t blocks) {
  constexpr int kN = kPack<T>;
  const int64_t first = block * blockDim.x + threadIdx.x, step = blocks * blockDim.x;
  const int64_t whole = packed ? n / kN * kN : 0;
  for (int64_t i = first * kN; i < whole; i += step * kN) {
    T v[kN], d[kN];
    load16(x + i, v);
    load16(grad + i, d);
#pragma unroll
    for (int k = 0; k < kN; ++k) v[k] = static_cast<T>(g(static_cast<float>(v[k]), p) * static_cast<float>(d[k]));
    store16(out + i, v);
  }
  for (int64_t i = whole + first; i < n; i += step) {
    out[i] = static_cast<T>(g(static_cast<float>(x[i]), p) * static_cast<float>(grad[i]));
  }
}

template <typename T>
__global__ void sign_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, bool packed) {
  sign_range(x, y, n, packed, blockIdx.x, gridDim.x);
}

template <typename T>
__global__ void backward_kernel(const T* __restrict__ x, const T* __restrict__ grad, T* __restrict__ out, int64_t n,
                                Params p, bool packed) {
  backward_range(x, grad, out, n, p, packed, blockIdx.x, gridDim.x);
}

// ---------------------------------------------------------------- binary weight: one block per group

// group `group` of the binary weight, by the whole block: alpha = mean(abs(w)) over the group, y = sign(w) * alpha.
// The sum's order depends only on blockDim.x (kGroupThreads wherever it runs).
template <typename W, typename Y>
__device__ __forceinline__ void scaled_sign_group(const W* __restrict__ w, Y* __restrict__ y, float* __restrict__ alpha,
                                                  int64_t size, int64_t group, float* shared) {
  const int64_t base = group * size;
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < size; i += blockDim.x) acc += fabsf(static_cast<float>(w[base + i]));
  const float a = block_sum(acc, shared) / static_cast<float>(size);
  if (threadIdx.x == 0) alpha[group] = a;
  for (int64_t i = threadIdx.x; i < size; i += blockDim.x) {
    y[base + i] = static_cast<Y>(sign1(static_cast<float>(w[base + i])) * a);
  }
}

// the backward of group `group`, by the whole block, as scaled_sign_group
template <typename W, typename G>
__device__ __forceinline__ void scaled_sign_backward_group(const W* __restrict__ w, const G* __restrict__ grad,
                                                           const float* __restrict__ alpha, W* __restrict__ out,
                                                           int64_t size, const Params& p, int64_t group,
                                                           float* shared) {
  const int64_t base = group * size;
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < size; i += blockDim.x) {
    acc += static_cast<float>(grad[base + i]) * sign1(static_cast<float>(w[base + i]));
  }
  const float d_alpha = block_sum(acc, shared) / static_cast<float>(size);
  const float a = alpha[group];
  for (int64_t i = base + threadIdx.x; i < base + size; i += blockDim.x) {
    const float wi = static_cast<float>(w[i]);
    out[i] = static_cast<W>(g(wi, p) * (static_cast<float>(grad[i]) * a) + sgn0(wi) * d_alpha);
  }
}

template <typename W, typename Y>
__global__ void scaled_sign_group_kernel(const W* __restrict__ w, Y* __restrict__ y, float* __restrict__ alpha,
                                         int64_t size) {
  __shared__ float shared[33];
  scaled_sign_group(w, y, alpha, size, blockIdx.x, shared);
}

template <typename W, typename G>
__global__ void scaled_sign_backward_group_kernel(const W* __restrict__ w, const G* __restrict__ grad,
                                                  const float* __restrict__ alpha, W* __restrict__ out, int64_t size,
                                                  Params p) {
  __shared__ float shared[33];
  scaled_sign_backward_group(w, grad, alpha, out, size, p, blockIdx.x, shared);
}

// ---------------------------------------------------------------- a binary layer's two, in one launch
//
// A layer's binary input and binary weight are independent: its first `groups` blocks compute the weight's groups,
// the others the input's sign, so the layer costs one launch each way where it cost two. Each part computes what
// its own kernel computes (the same device functions, the group sums with kGroupThreads threads as there).

template <typename X>
__global__ void layer_forward_kernel(const X* __restrict__ x, X* __restrict__ xb, int64_t n, bool packed,
                                     const float* __restrict__ w, X* __restrict__ wb, float* __restrict__ alpha,
                                     int64_t size, int64_t groups) {
  __shared__ float shared[33];
  if (blockIdx.x < groups) {
    scaled_sign_group(w, wb, alpha, size, blockIdx.x, shared);
    return;
  }
  sign_range(x, xb, n, packed, blockIdx.x - groups, gridDim.x - groups);
}

template <typename X>
__global__ void layer_backward_kernel(const X* __restrict__ x, const X* __restrict__ gx, X* __restrict__ outx,
                                      int64_t n, bool packed, Params px, const float* __restrict__ w,
                                      const X* __restrict__ gw, const float* __restrict__ alpha,
                                      float* __restrict__ outw, int64_t size, int64_t groups, Params pw) {
  __shared__ float shared[33];
  if (blockIdx.x < groups) {
    scaled_sign_backward_group(w, gw, alpha, outw, size, pw, blockIdx.x, shared);
    return;
  }
  backward_range(x, gx, outx, n, px, packed, blockIdx.x - groups, gridDim.x - groups);
}

// ---------------------------------------------------------------- binary weight: larger groups, two launches

// partials[group, block] = sum over one kPartial slice of the group of term(i) (grid: slices x groups)
template <typename W, typename G, bool DOT>
__global__ void partial_kernel(const W* __restrict__ w, const G* __restrict__ grad, float* __restrict__ partials,
                               int64_t size) {
  __shared__ float shared[33];
  const int64_t base = blockIdx.y * size;
  const int64_t begin = blockIdx.x * static_cast<int64_t>(kPartial);
  const int64_t end = (begin + kPartial < size ? begin + kPartial : size);
  float acc = 0.0f;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float wi = static_cast<float>(w[base + i]);
    acc += DOT ? static_cast<float>(grad[base + i]) * sign1(wi) : fabsf(wi);
  }
  const float total = block_sum(acc, shared);
  if (threadIdx.x == 0) partials[blockIdx.y * gridDim.x + blockIdx.x] = total;
}

// the group's total of its partial sums, reduced by the whole block in a fixed order (not one thread's serial
// loop: a 2.36M-element group has 576 partial sums), returned to every thread
__device__ float group_total(const float* partials, int64_t nparts, float* shared) {
  const float* part = partials + blockIdx.y * nparts;
  float acc = 0.0f;
  for (int64_t k = threadIdx.x; k < nparts; k += blockDim.x) acc += part[k];
  return block_sum(acc, shared);
}

template <typename W, typename Y>
__global__ void scaled_sign_apply_kernel(const W* __restrict__ w, const float* __restrict__ partials,
                                         Y* __restrict__ y, float* __restrict__ alpha, int64_t size, int64_t nparts) {
  __shared__ float shared[33];
  const float a = group_total(partials, nparts, shared) / static_cast<float>(size);
  if (blockIdx.x == 0 && threadIdx.x == 0) alpha[blockIdx.y] = a;
  const int64_t base = blockIdx.y * size;
  for (int64_t i = first_index(); i < size; i += stride()) {
    y[base + i] = static_cast<Y>(sign1(static_cast<float>(w[base + i])) * a);
  }
}

template <typename W, typename G>
__global__ void scaled_sign_backward_apply_kernel(const W* __restrict__ w, const G* __restrict__ grad,
                                                  const float* __restrict__ partials, const float* __restrict__ alpha,
                                                  W* __restrict__ out, int64_t size, int64_t nparts, Params p) {
  __shared__ float shared[33];
  const float d_alpha = group_total(partials, nparts, shared) / static_cast<float>(size);
  const float a = alpha[blockIdx.y];
  const int64_t base = blockIdx.y * size;
  for (int64_t i = first_index(); i < size; i += stride()) {
    const float wi = static_cast<float>(w[base + i]);
    out[base + i] = static_cast<W>(g(wi, p) * (static_cast<float>(grad[base + i]) * a) + sgn0(wi) * d_alpha);
  }
}

dim3 apply_grid(int64_t size, int64_t groups) {
  const int64_t per_group = std::min<int64_t>((size + kThreads - 1) / kThreads, 1024);
  return dim3(static_cast<unsigned>(per_group), static_cast<unsigned>(groups));
}

}  // namespace

void sign_cuda(const at::Tensor& x, const at::Tensor& y) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  RESTE_DISPATCH(x.scalar_type(), "reste_sign_cuda", [&] {
    const bool packed = aligned16(x.const_data_ptr()) && aligned16(y.const_data_ptr());
    sign_kernel<scalar_t><<<elementwise_blocks(packed ? n / kPack<scalar_t> : n), kThreads, 0,
                            c10::cuda::getCurrentCUDAStream()>>>(x.const_data_ptr<scalar_t>(),
                                                                 y.mutable_data_ptr<scalar_t>(), n, packed);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void backward_cuda(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& out, const Params& p) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  RESTE_DISPATCH(x.scalar_type(), "reste_backward_cuda", [&] {
    const bool packed = aligned16(x.const_data_ptr()) && aligned16(grad.const_data_ptr()) &&
                        aligned16(out.const_data_ptr());
    backward_kernel<scalar_t><<<elementwise_blocks(packed ? n / kPack<scalar_t> : n), kThreads, 0,
                                c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, p,
        packed);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// the blocks of kGroupThreads threads that a layer launch gives the input's n elements (as elementwise_blocks)
int64_t layer_sign_blocks(int64_t n, bool packed, int64_t pack) {
  const int64_t units = packed ? n / pack : n;
  return std::max<int64_t>(1, std::min<int64_t>((units + kGroupThreads - 1) / kGroupThreads, 8192));
}

// whether a layer's input and weight go in one launch: a float32 weight of groups up to kGroupMax, and the input,
// its sign and the binary weight of one dtype (fp32 training; bf16 or fp16 autocast after a 16-bit layer)
bool layer_fusable(const at::Tensor& x, const at::Tensor& w, int64_t groups, at::ScalarType y) {
  return w.scalar_type() == at::kFloat && x.scalar_type() == y && x.numel() > 0 && w.numel() / groups <= kGroupMax;
}

bool layer_forward_cuda(const at::Tensor& x, const at::Tensor& xb, const at::Tensor& w, int64_t groups,
                        const at::Tensor& wb, const at::Tensor& alpha) {
  if (!layer_fusable(x, w, groups, wb.scalar_type())) return false;
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  RESTE_DISPATCH(x.scalar_type(), "reste_layer_forward_cuda", [&] {
    const bool packed = aligned16(x.const_data_ptr()) && aligned16(xb.const_data_ptr());
    const int64_t blocks = groups + layer_sign_blocks(n, packed, kPack<scalar_t>);
    layer_forward_kernel<scalar_t><<<static_cast<unsigned>(blocks), kGroupThreads, 0,
                                     c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), xb.mutable_data_ptr<scalar_t>(), n, packed, w.const_data_ptr<float>(),
        wb.mutable_data_ptr<scalar_t>(), alpha.mutable_data_ptr<float>(), w.numel() / groups, groups);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return true;
}

bool layer_backward_cuda(const at::Tensor& x, const at::Tensor& gx, const at::Tensor& outx, const Params& px,
                         const at::Tensor& w, const at::Tensor& gw, const at::Tensor& alpha, int64_t groups,
                         const at::Tensor& outw, const Params& pw) {
  if (!layer_fusable(x, w, groups, gw.scalar_type()) || gx.scalar_type() != x.scalar_type()) return false;
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  RESTE_DISPATCH(x.scalar_type(), "reste_layer_backward_cuda", [&] {
    const bool packed = aligned16(x.const_data_ptr()) && aligned16(gx.const_data_ptr()) &&
                        aligned16(outx.const_data_ptr());
    const int64_t blocks = groups + layer_sign_blocks(n, packed, kPack<scalar_t>);
    layer_backward_kernel<scalar_t><<<static_cast<unsigned>(blocks), kGroupThreads, 0,
                                      c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), gx.const_data_ptr<scalar_t>(), outx.mutable_data_ptr<scalar_t>(), n, packed,
        px, w.const_data_ptr<float>(), gw.const_data_ptr<scalar_t>(), alpha.const_data_ptr<float>(),
        outw.mutable_data_ptr<float>(), w.numel() / groups, groups, pw);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return true;
}

void scaled_sign_cuda(const at::Tensor& w, int64_t groups, const at::Tensor& y, const at::Tensor& alpha) {
  const c10::cuda::CUDAGuard guard(w.device());
  const int64_t size = w.numel() / groups;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  RESTE_DISPATCH(w.scalar_type(), "reste_scaled_sign_cuda", [&] {
    using w_t = scalar_t;
    RESTE_DISPATCH(y.scalar_type(), "reste_scaled_sign_cuda_out", [&] {
      if (size <= kGroupMax) {
        scaled_sign_group_kernel<w_t, scalar_t><<<static_cast<unsigned>(groups), kGroupThreads, 0, stream>>>(
            w.const_data_ptr<w_t>(), y.mutable_data_ptr<scalar_t>(), alpha.mutable_data_ptr<float>(), size);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      const int64_t nparts = (size + kPartial - 1) / kPartial;
      at::Tensor partials = at::empty({groups * nparts}, alpha.options());
      partial_kernel<w_t, w_t, false><<<dim3(nparts, groups), kThreads, 0, stream>>>(
          w.const_data_ptr<w_t>(), nullptr, partials.mutable_data_ptr<float>(), size);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      scaled_sign_apply_kernel<w_t, scalar_t><<<apply_grid(size, groups), kThreads, 0, stream>>>(
          w.const_data_ptr<w_t>(), partials.const_data_ptr<float>(), y.mutable_data_ptr<scalar_t>(),
          alpha.mutable_data_ptr<float>(), size, nparts);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void scaled_sign_backward_cuda(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& alpha, int64_t groups,
                               const at::Tensor& out, const Params& p) {
  const c10::cuda::CUDAGuard guard(w.device());
  const int64_t size = w.numel() / groups;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  RESTE_DISPATCH(w.scalar_type(), "reste_scaled_sign_backward_cuda", [&] {
    using w_t = scalar_t;
    RESTE_DISPATCH(grad.scalar_type(), "reste_scaled_sign_backward_cuda_grad", [&] {
      if (size <= kGroupMax) {
        scaled_sign_backward_group_kernel<w_t, scalar_t><<<static_cast<unsigned>(groups), kGroupThreads, 0, stream>>>(
            w.const_data_ptr<w_t>(), grad.const_data_ptr<scalar_t>(), alpha.const_data_ptr<float>(),
            out.mutable_data_ptr<w_t>(), size, p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      const int64_t nparts = (size + kPartial - 1) / kPartial;
      at::Tensor partials = at::empty({groups * nparts}, alpha.options());
      partial_kernel<w_t, scalar_t, true><<<dim3(nparts, groups), kThreads, 0, stream>>>(
          w.const_data_ptr<w_t>(), grad.const_data_ptr<scalar_t>(), partials.mutable_data_ptr<float>(), size);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      scaled_sign_backward_apply_kernel<w_t, scalar_t><<<apply_grid(size, groups), kThreads, 0, stream>>>(
          w.const_data_ptr<w_t>(), grad.const_data_ptr<scalar_t>(), partials.const_data_ptr<float>(),
          alpha.const_data_ptr<float>(), out.mutable_data_ptr<w_t>(), size, nparts, p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace reste_ext
