// reste's compiled extension: the binary activation and the binary weight as C++ autograd nodes.
//
// Written in Python (torch.autograd.Function), each binary layer adds two autograd nodes whose
// forward and backward run Python and launch Triton kernels from it; on a GPU that host time,
// not the arithmetic, is what a binary layer costs beyond a float one. Here the nodes are C++:
//
//   reste_ext::binary_sign(x, ...)   forward sign(x) (sign(0) = +1, NaN kept); backward grad * g(x)
//   reste_ext::scaled_sign(w, ...)   forward sign(w) * mean(abs(w)) per group; backward the
//                                    estimator's g for the sign plus the derivative of the mean
//   binary_layer(x, w, ...)          a binary conv's or linear layer's forward in one call: both of the
//                                    above under one node (BinaryLayerBackward), then the op
//
// with one kernel launch each way (two for a weight group above kGroupMax elements; a layer's two share
// one where kernels.cu allows). The kernels are in kernels.cu (built with RESTE_WITH_CUDA); CPU tensors
// take the serial loops below, which evaluate the same g (estimators.h) and exist so that the nodes are
// tested without a GPU.
//
// Python calls them through this module's pybind11 entry points (binary_sign(x, estimator),
// scaled_sign(w, groups, dtype, estimator), binary_layer(...), with an Estimator built once per schedule
// value); the first two are also registered as torch.ops.reste_ext.* with the estimator spelled out in
// the schema.
//
// A double backward (create_graph=True) calls reste_ext::reference_grad, which reste.cuda_ext
// defines in Python as the differentiable PyTorch expression.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <pybind11/stl.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "estimators.h"

namespace reste_ext {

// kernels.cu
#ifdef RESTE_WITH_CUDA
void sign_cuda(const at::Tensor& x, const at::Tensor& y);
void backward_cuda(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& out, const Params& p);
void scaled_sign_cuda(const at::Tensor& w, int64_t groups, const at::Tensor& y, const at::Tensor& alpha);
void scaled_sign_backward_cuda(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& alpha,
                               int64_t groups, const at::Tensor& out, const Params& p);
bool layer_forward_cuda(const at::Tensor& x, const at::Tensor& xb, const at::Tensor& w, int64_t groups,
                        const at::Tensor& wb, const at::Tensor& alpha);
bool layer_backward_cuda(const at::Tensor& x, const at::Tensor& gx, const at::Tensor& outx, const Params& px,
                         const at::Tensor& w, const at::Tensor& gw, const at::Tensor& alpha, int64_t groups,
                         const at::Tensor& outw, const Params& pw);
#endif

namespace {

// Numbers, shapes and devices in error messages are made into text here, never streamed into TORCH_CHECK's
// message: on the H200 image of 2026-12-04 (torch 2.11, nvcc 13) an integer streamed there crashed this library
// (a segmentation fault in its copy of std::ostream's number formatting, reached through a locale facet),
// while strings streamed fine. std::to_string uses no locale.
std::string number(int64_t n) { return std::to_string(n); }

std::string shape(at::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}

const char* const kNames[kKinds] = {"ste", "reste", "approx_sign", "sign_swish", "ede", "rbnn", "dsq", "fda"};

Params make_params(c10::string_view kind, at::ArrayRef<double> scalars, int64_t count) {
  Params p{};
  p.kind = -1;
  for (int k = 0; k < kKinds; ++k) {
    if (kind.size() == std::strlen(kNames[k]) && std::memcmp(kind.data(), kNames[k], kind.size()) == 0) p.kind = k;
  }
  TORCH_CHECK(p.kind >= 0, "reste_ext: unknown estimator kind '", std::string(kind), "'");
  TORCH_CHECK(scalars.size() == 5, "reste_ext: 5 scalars expected, got ",
              number(static_cast<int64_t>(scalars.size())));
  for (int i = 0; i < 5; ++i) p.s[i] = static_cast<float>(scalars[i]);
  p.w = scalars[0] + scalars[1];  // FDA passes w as float32 part + rest: exact in float64
  p.count = static_cast<int>(count);
  return p;
}

void check_float(const at::Tensor& t, const char* what) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, "reste_ext: ", what,
              " must be float32, bfloat16 or float16, got ", c10::toString(s));
}

// t itself when its elements fill its memory in one block (contiguous, channels_last, any permutation)
at::Tensor dense(const at::Tensor& t) { return t.is_non_overlapping_and_dense() ? t : t.contiguous(); }

// w itself when each of its `groups` (consecutive slices of dim 0) is one consecutive block of its memory, in
// order (contiguous, channels_last: dim 0 outermost); else a contiguous copy. Any dense layout serves one group.
at::Tensor grouped(const at::Tensor& w, int64_t groups) {
  if (groups == 1) return dense(w);
  const bool outer = w.dim() >= 1 && w.size(0) % groups == 0 && w.stride(0) * w.size(0) == w.numel();
  return outer && w.is_non_overlapping_and_dense() ? w : w.contiguous();
}

// `other` laid out with x's strides (a copy only where they differ), so both are walked in one order
at::Tensor like(const at::Tensor& x, const at::Tensor& other) {
  if (other.strides() == x.strides()) return other;
  return at::empty_like(x, other.options()).copy_(other);
}

bool on_cuda(const at::Tensor& t) {
#ifdef RESTE_WITH_CUDA
  return t.is_cuda();
#else
  TORCH_CHECK(!t.is_cuda(), "reste_ext was built without CUDA");
  return false;
#endif
}

// The dtype dispatch of a 16-bit-or-float32 tensor (AT_DISPATCH with float64 left out).
#define RESTE_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

// ------------------------------------------------------------------------------ CPU loops

void sign_cpu(const at::Tensor& x, const at::Tensor& y) {
  RESTE_DISPATCH(x.scalar_type(), "reste_sign", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = y.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0, n = x.numel(); i < n; ++i) dst[i] = static_cast<scalar_t>(sign1(static_cast<float>(src[i])));
  });
}

void backward_cpu(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& out, const Params& p) {
  RESTE_DISPATCH(x.scalar_type(), "reste_backward", [&] {
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    const scalar_t* gs = grad.const_data_ptr<scalar_t>();
    scalar_t* os = out.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0, n = x.numel(); i < n; ++i) {
      os[i] = static_cast<scalar_t>(g(static_cast<float>(xs[i]), p) * static_cast<float>(gs[i]));
    }
  });
}

// group sums in float64, rounded once: within one rounding of the exact sum
template <typename T, typename F>
float group_mean(const T* v, int64_t size, F term) {
  double acc = 0.0;
  for (int64_t i = 0; i < size; ++i) acc += static_cast<double>(term(v, i));
  return static_cast<float>(acc) / static_cast<float>(size);
}

void scaled_sign_cpu(const at::Tensor& w, int64_t groups, const at::Tensor& y, const at::Tensor& alpha) {
  const int64_t size = w.numel() / groups;
  float* alphas = alpha.mutable_data_ptr<float>();
  RESTE_DISPATCH(w.scalar_type(), "reste_scaled_sign", [&] {
    using w_t = scalar_t;
    const w_t* ws = w.const_data_ptr<w_t>();
    RESTE_DISPATCH(y.scalar_type(), "reste_scaled_sign_out", [&] {
      scalar_t* ys = y.mutable_data_ptr<scalar_t>();
      for (int64_t grp = 0; grp < groups; ++grp) {
        const w_t* wg = ws + grp * size;
        const float a = group_mean(wg, size, [](const w_t* v, int64_t i) { return fabsf(static_cast<float>(v[i])); });
        alphas[grp] = a;
        for (int64_t i = 0; i < size; ++i) {
          ys[grp * size + i] = static_cast<scalar_t>(sign1(static_cast<float>(wg[i])) * a);
        }
      }
    });
  });
}

void scaled_sign_backward_cpu(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& alpha, int64_t groups,
                              const at::Tensor& out, const Params& p) {
  const int64_t size = w.numel() / groups;
  const float* alphas = alpha.const_data_ptr<float>();
  RESTE_DISPATCH(w.scalar_type(), "reste_scaled_sign_backward", [&] {
    using w_t = scalar_t;
    const w_t* ws = w.const_data_ptr<w_t>();
    w_t* os = out.mutable_data_ptr<w_t>();
    RESTE_DISPATCH(grad.scalar_type(), "reste_scaled_sign_backward_grad", [&] {
      const scalar_t* gs = grad.const_data_ptr<scalar_t>();
      for (int64_t grp = 0; grp < groups; ++grp) {
        const int64_t base = grp * size;
        const float d_alpha = group_mean(ws + base, size, [&](const w_t* v, int64_t i) {
          return static_cast<float>(gs[base + i]) * sign1(static_cast<float>(v[i]));
        });
        const float a = alphas[grp];
        for (int64_t i = base; i < base + size; ++i) {
          const float wi = static_cast<float>(ws[i]);
          os[i] = static_cast<w_t>(g(wi, p) * (static_cast<float>(gs[i]) * a) + sgn0(wi) * d_alpha);
        }
      }
    });
  });
}

// ------------------------------------------------------------------------------ the ops, no autograd

// Each op in two parts: its checks and its tensors (the input laid out for the kernel, the output allocated), then
// its kernel. A binary layer prepares its input's op and its weight's, then runs both in one launch on a GPU.
struct Prepared {
  at::Tensor in, grad, out, alpha;
};

Prepared sign_prepared(const at::Tensor& x_in) {
  check_float(x_in, "x");
  const at::Tensor x = dense(x_in);
  return {x, at::Tensor(), at::empty_like(x), at::Tensor()};
}

void sign_run(const Prepared& s) {
  if (s.in.numel() == 0) return;
  if (on_cuda(s.in)) {
#ifdef RESTE_WITH_CUDA
    sign_cuda(s.in, s.out);
#endif
  } else {
    sign_cpu(s.in, s.out);
  }
}

Prepared backward_prepared(const at::Tensor& x_in, const at::Tensor& grad_in) {
  check_float(x_in, "x");
  const at::Tensor x = dense(x_in);
  TORCH_CHECK(grad_in.sizes() == x.sizes(), "reste_ext: grad has shape ", shape(grad_in.sizes()), ", x ",
              shape(x.sizes()));
  TORCH_CHECK(grad_in.device() == x.device(), "reste_ext: grad is on ", grad_in.device().str(), ", x on ",
              x.device().str());
  return {x, like(x, grad_in.to(x.scalar_type())), at::empty_like(x), at::Tensor()};
}

void backward_run(const Prepared& b, const Params& p) {
  if (b.in.numel() == 0) return;
  if (on_cuda(b.in)) {
#ifdef RESTE_WITH_CUDA
    backward_cuda(b.in, b.grad, b.out, p);
#endif
  } else {
    backward_cpu(b.in, b.grad, b.out, p);
  }
}

void check_groups(const at::Tensor& w, int64_t groups) {
  TORCH_CHECK(groups >= 1 && groups <= 65535 && w.numel() % groups == 0 && w.numel() > 0,
              "reste_ext: groups must divide w's ", number(w.numel()), " elements (1 to 65535), got ", number(groups));
}

// (sign(w) * alpha in dtype, alpha per group as float32)
Prepared scaled_sign_prepared(const at::Tensor& w_in, int64_t groups, std::optional<at::ScalarType> dtype) {
  check_float(w_in, "w");
  check_groups(w_in, groups);
  const at::Tensor w = grouped(w_in, groups);
  at::Tensor y = at::empty_like(w, w.options().dtype(dtype.value_or(w.scalar_type())));
  check_float(y, "the result");
  return {w, at::Tensor(), y, at::empty({groups}, w.options().dtype(at::kFloat))};
}

void scaled_sign_run(const Prepared& s, int64_t groups) {
  if (on_cuda(s.in)) {
#ifdef RESTE_WITH_CUDA
    scaled_sign_cuda(s.in, groups, s.out, s.alpha);
#endif
  } else {
    scaled_sign_cpu(s.in, groups, s.out, s.alpha);
  }
}

Prepared scaled_sign_backward_prepared(const at::Tensor& w_in, const at::Tensor& grad_in, const at::Tensor& alpha,
                                       int64_t groups) {
  check_float(w_in, "w");
  check_groups(w_in, groups);
  TORCH_CHECK(alpha.scalar_type() == at::kFloat && alpha.numel() == groups && alpha.is_contiguous() &&
                  alpha.device() == w_in.device(),
              "reste_ext: alpha must be the forward's ", number(groups), " float32 scales on w's device, got ",
              number(alpha.numel()), " ", c10::toString(alpha.scalar_type()), " on ", alpha.device().str());
  const at::Tensor w = grouped(w_in, groups);
  TORCH_CHECK(grad_in.sizes() == w.sizes(), "reste_ext: grad has shape ", shape(grad_in.sizes()), ", w ",
              shape(w.sizes()));
  TORCH_CHECK(grad_in.device() == w.device(), "reste_ext: grad is on ", grad_in.device().str(), ", w on ",
              w.device().str());
  check_float(grad_in, "grad");
  return {w, like(w, grad_in), at::empty_like(w), alpha};
}

void scaled_sign_backward_run(const Prepared& b, int64_t groups, const Params& p) {
  if (on_cuda(b.in)) {
#ifdef RESTE_WITH_CUDA
    scaled_sign_backward_cuda(b.in, b.grad, b.alpha, groups, b.out, p);
#endif
  } else {
    scaled_sign_backward_cpu(b.in, b.grad, b.alpha, groups, b.out, p);
  }
}

at::Tensor sign_impl(const at::Tensor& x) {
  const Prepared s = sign_prepared(x);
  sign_run(s);
  return s.out;
}

at::Tensor backward_with(const at::Tensor& x, const at::Tensor& grad, const Params& p) {
  const Prepared b = backward_prepared(x, grad);
  backward_run(b, p);
  return b.out;
}

std::tuple<at::Tensor, at::Tensor> scaled_sign_both(const at::Tensor& w, int64_t groups,
                                                    std::optional<at::ScalarType> dtype) {
  const Prepared s = scaled_sign_prepared(w, groups, dtype);
  scaled_sign_run(s, groups);
  return {s.out, s.alpha};
}

at::Tensor scaled_sign_backward_with(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& alpha,
                                     int64_t groups, const Params& p) {
  const Prepared b = scaled_sign_backward_prepared(w, grad, alpha, groups);
  scaled_sign_backward_run(b, groups, p);
  return b.out;
}

// Whether a layer's two prepared ops may share one launch: CUDA tensors of one device (layer_forward_cuda and
// layer_backward_cuda then check the dtypes and sizes that the shared kernel takes).
bool one_launch(const Prepared& a, const Prepared& b) {
  return on_cuda(a.in) && a.in.numel() > 0 && a.in.device() == b.in.device();
}

// A binary layer's binary input (where x_too) and binary weight: (sign(x), sign(w) * alpha, alpha), in one launch
// on a GPU where the kernels allow.
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_both(const at::Tensor& x, bool x_too, const at::Tensor& w,
                                                          int64_t groups, std::optional<at::ScalarType> dtype) {
  const Prepared sw = scaled_sign_prepared(w, groups, dtype);
  if (!x_too) {
    scaled_sign_run(sw, groups);
    return {x, sw.out, sw.alpha};
  }
  const Prepared sx = sign_prepared(x);
  bool done = false;
#ifdef RESTE_WITH_CUDA
  done = one_launch(sx, sw) && layer_forward_cuda(sx.in, sx.out, sw.in, groups, sw.out, sw.alpha);
#endif
  if (!done) {
    sign_run(sx);
    scaled_sign_run(sw, groups);
  }
  return {sx.out, sw.out, sw.alpha};
}

// the backward of layer_both for both: (grad * g(x), dL/dw), in one launch on a GPU where the kernels allow
std::tuple<at::Tensor, at::Tensor> layer_backward_both(const at::Tensor& x, const at::Tensor& gx, const Params& px,
                                                       const at::Tensor& w, const at::Tensor& gw,
                                                       const at::Tensor& alpha, int64_t groups, const Params& pw) {
  const Prepared bx = backward_prepared(x, gx);
  const Prepared bw = scaled_sign_backward_prepared(w, gw, alpha, groups);
  bool done = false;
#ifdef RESTE_WITH_CUDA
  done = one_launch(bx, bw) && layer_backward_cuda(bx.in, bx.grad, bx.out, px, bw.in, bw.grad, bw.alpha, groups,
                                                   bw.out, pw);
#endif
  if (!done) {
    backward_run(bx, px);
    scaled_sign_backward_run(bw, groups, pw);
  }
  return {bx.out, bw.out};
}

at::Tensor backward_impl(const at::Tensor& x, const at::Tensor& grad, c10::string_view kind,
                         at::ArrayRef<double> scalars, int64_t count) {
  return backward_with(x, grad, make_params(kind, scalars, count));
}

at::Tensor scaled_sign_backward_impl(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& alpha,
                                     int64_t groups, c10::string_view kind, at::ArrayRef<double> scalars,
                                     int64_t count) {
  return scaled_sign_backward_with(w, grad, alpha, groups, make_params(kind, scalars, count));
}

// ------------------------------------------------------------------------------ autograd
//
// The nodes are plain autograd Nodes, as PyTorch's generated ones are, not torch::autograd::Function,
// whose apply (its context, the IValues it stores, the checks on its outputs) costs several
// microseconds of host time a call more.

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// An estimator as the nodes take it: its kernel arguments, parsed once, and its parameters by name
// for the reference. Python builds one per estimator and schedule value (reste.cuda_ext caches it).
struct Estimator {
  Params params;
  std::string kind, names;
  std::vector<double> values;
};
using EstimatorRef = std::shared_ptr<const Estimator>;

std::shared_ptr<Estimator> make_estimator(std::string kind, std::vector<double> scalars, int64_t count,
                                          std::string names, std::vector<double> values) {
  Params p = make_params(kind, scalars, count);
  return std::make_shared<Estimator>(Estimator{p, std::move(kind), std::move(names), std::move(values)});
}

// How a Node is owned changed between PyTorch versions (std::shared_ptr, later c10::intrusive_ptr);
// an Edge's pointer says which this build has.
using NodePtr = decltype(torch::autograd::Edge::function);

template <class T, class P = NodePtr>
P make_node() {
  if constexpr (std::is_same_v<P, std::shared_ptr<Node>>) {
    return std::make_shared<T>();
  } else {
    return c10::make_intrusive<T>();
  }
}

// The differentiable PyTorch expression (reste.cuda_ext._define_reference), for create_graph=True.
at::Tensor reference_grad(const Estimator& est, const at::Tensor& x, const at::Tensor& grad, int64_t groups) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("reste_ext::reference_grad", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, c10::string_view,
                                         c10::string_view, at::ArrayRef<double>)>();
  return op.call(x, grad, groups, est.kind, est.names, est.values);
}

// y gets `node` as its gradient function, with `input` as the node's one input.
void record(const at::Tensor& y, const NodePtr& node, const at::Tensor& input) {
  TORCH_CHECK(!input._fw_grad(/*level=*/0).defined(), "reste_ext: forward-mode AD is not supported");
  node->set_next_edges(torch::autograd::collect_next_edges(input));
  torch::autograd::set_history(y, node);
}

// A gradient that takes the differentiable PyTorch expression: in a double backward, or batched
// (is_grads_batched=True: legacy vmap), where it has no storage to walk.
bool by_expression(const at::Tensor& grad) { return at::GradMode::is_enabled() || !grad.has_storage(); }

// grad * g(x): the binary input's gradient
at::Tensor input_grad(const Estimator& est, const at::Tensor& x, const at::Tensor& grad) {
  return by_expression(grad) ? reference_grad(est, x, grad, 0) : backward_with(x, grad, est.params);
}

// dL/dw of the binary weight sign(w) * alpha over `groups`
at::Tensor weight_grad(const Estimator& est, const at::Tensor& w, const at::Tensor& grad, const at::Tensor& alpha,
                       int64_t groups) {
  if (by_expression(grad)) return reference_grad(est, w, grad, groups);
  TORCH_CHECK(alpha.defined(), "reste_ext: the binary weight's backward ran twice without retain_graph=True");
  return scaled_sign_backward_with(w, grad, alpha, groups, est.params);
}

struct BinarySignBackward : public Node {
  SavedVariable x;
  EstimatorRef est;

  std::string name() const override { return "reste_ext::BinarySignBackward"; }
  void release_variables() override { x.reset_data(); }

  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return {at::Tensor()};
    return {input_grad(*est, x.unpack(), grads[0])};
  }
};

struct ScaledSignBackward : public Node {
  SavedVariable w;
  at::Tensor alpha;  // float32, never requires grad
  int64_t groups = 1;
  EstimatorRef est;

  std::string name() const override { return "reste_ext::ScaledSignBackward"; }
  void release_variables() override {
    w.reset_data();
    alpha.reset();
  }

  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return {at::Tensor()};
    return {weight_grad(*est, w.unpack(), grads[0], alpha, groups)};
  }
};

// sign(x) whose backward is grad * g(x) of `est`
at::Tensor binary_sign_node(const at::Tensor& x, const EstimatorRef& est) {
  at::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    y = sign_impl(x);
  }
  if (torch::autograd::compute_requires_grad(x)) {
    NodePtr node = make_node<BinarySignBackward>();
    auto* n = static_cast<BinarySignBackward*>(node.get());
    n->x = SavedVariable(x, /*is_output=*/false);
    n->est = est;
    record(y, node, x);
  }
  return y;
}

// sign(w) * mean(abs(w)) per group (in `dtype`), whose backward is `est`'s for the sign plus that of the mean
at::Tensor scaled_sign_node(const at::Tensor& w, int64_t groups, std::optional<at::ScalarType> dtype,
                            const EstimatorRef& est) {
  at::Tensor y, alpha;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(y, alpha) = scaled_sign_both(w, groups, dtype);
  }
  if (torch::autograd::compute_requires_grad(w)) {
    NodePtr node = make_node<ScaledSignBackward>();
    auto* n = static_cast<ScaledSignBackward*>(node.get());
    n->w = SavedVariable(w, /*is_output=*/false);
    n->alpha = alpha;
    n->groups = groups;
    n->est = est;
    record(y, node, w);
  }
  return y;
}

// the ops' Autograd kernels: the same nodes, the estimator given by its arguments
at::Tensor binary_sign_autograd(const at::Tensor& x, c10::string_view kind, at::ArrayRef<double> scalars,
                                int64_t count, c10::string_view names, at::ArrayRef<double> values) {
  return binary_sign_node(x, make_estimator(std::string(kind), scalars.vec(), count, std::string(names), values.vec()));
}

at::Tensor binary_sign_plain(const at::Tensor& x, c10::string_view, at::ArrayRef<double>, int64_t,
                             c10::string_view, at::ArrayRef<double>) {
  return sign_impl(x);
}

at::Tensor scaled_sign_autograd(const at::Tensor& w, int64_t groups, std::optional<at::ScalarType> dtype,
                                c10::string_view kind, at::ArrayRef<double> scalars, int64_t count,
                                c10::string_view names, at::ArrayRef<double> values) {
  return scaled_sign_node(w, groups, dtype,
                          make_estimator(std::string(kind), scalars.vec(), count, std::string(names), values.vec()));
}

at::Tensor scaled_sign_plain(const at::Tensor& w, int64_t groups, std::optional<at::ScalarType> dtype,
                             c10::string_view, at::ArrayRef<double>, int64_t, c10::string_view,
                             at::ArrayRef<double>) {
  return std::get<0>(scaled_sign_both(w, groups, dtype));
}

std::tuple<at::Tensor, at::Tensor> scaled_sign_forward(const at::Tensor& w, int64_t groups,
                                                       std::optional<at::ScalarType> dtype) {
  return scaled_sign_both(w, groups, dtype);
}

// Both binary inputs of a layer's op as one node: the activation sign(x) (where the layer has binary inputs) and
// the weight sign(w) * alpha. Its backward takes the op's two gradients at once (a convolution's backward gives
// both together) and runs the two nodes' kernels above: one node for the autograd engine to run where there were
// two, which on a GPU is host time an eager step saves.
struct BinaryLayerBackward : public Node {
  SavedVariable x, w;
  at::Tensor alpha;  // float32, never requires grad
  int64_t groups = 1;
  EstimatorRef est_x, est_w;
  int x_slot = -1, w_slot = -1;  // the node's input (a gradient of an output) for each; -1 where none

  std::string name() const override { return "reste_ext::BinaryLayerBackward"; }
  void release_variables() override {
    x.reset_data();
    w.reset_data();
    alpha.reset();
  }

  variable_list apply(variable_list&& grads) override {
    variable_list out(2);
    const at::Tensor gx = x_slot >= 0 ? grads[x_slot] : at::Tensor();
    const at::Tensor gw = w_slot >= 0 ? grads[w_slot] : at::Tensor();
    const at::Tensor xs = gx.defined() ? x.unpack() : at::Tensor();  // (torch's error after a release)
    const at::Tensor ws = gw.defined() ? w.unpack() : at::Tensor();
    if (gx.defined() && gw.defined() && !by_expression(gx) && !by_expression(gw) && alpha.defined()) {
      std::tie(out[0], out[1]) = layer_backward_both(xs, gx, est_x->params, ws, gw, alpha, groups, est_w->params);
      return out;  // (both kernels in one launch)
    }
    if (gx.defined()) out[0] = input_grad(*est_x, xs, gx);
    if (gw.defined()) out[1] = weight_grad(*est_w, ws, gw, alpha, groups);
    return out;
  }
};

// A binary layer's whole forward in one call from Python: op(Q_a(x), Q_w(w) * alpha) with `op` linear (0) or
// a convolution of `op` spatial dimensions (1 to 3), called through the dispatcher, so that autocast and
// autograd take the op as they take torch.nn's. Q_a is est_x's (none where it is null: real inputs), Q_w est_w's,
// both under one BinaryLayerBackward node. What this saves over the two nodes called from Python one by one is
// host time: two calls into Python and their checks, and one node.
at::Tensor binary_layer(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                        const EstimatorRef& est_x, const EstimatorRef& est_w, int64_t groups,
                        std::optional<at::ScalarType> dtype, int64_t op, std::vector<int64_t> stride,
                        std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t conv_groups) {
  TORCH_CHECK(est_w, "reste_ext: the weight's estimator is missing");
  TORCH_CHECK(op >= 0 && op <= 3, "reste_ext: op must be 0 (linear) or 1 to 3 (a convolution's dimensions), got ",
              number(op));
  at::Tensor xb, wb, alpha;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(xb, wb, alpha) = layer_both(x, static_cast<bool>(est_x), w, groups, dtype);
  }
  const bool grad_x = est_x && torch::autograd::compute_requires_grad(x);
  const bool grad_w = torch::autograd::compute_requires_grad(w);
  if (grad_x || grad_w) {
    TORCH_CHECK(!x._fw_grad(/*level=*/0).defined() && !w._fw_grad(/*level=*/0).defined(),
                "reste_ext: forward-mode AD is not supported");
    NodePtr node = make_node<BinaryLayerBackward>();
    auto* n = static_cast<BinaryLayerBackward*>(node.get());
    n->set_next_edges(torch::autograd::collect_next_edges(grad_x ? x : at::Tensor(), grad_w ? w : at::Tensor()));
    int slot = 0;
    if (grad_x) {
      n->x = SavedVariable(x, /*is_output=*/false);
      n->est_x = est_x;
      n->x_slot = slot++;
      torch::autograd::set_history(xb, node);
    }
    if (grad_w) {
      n->w = SavedVariable(w, /*is_output=*/false);
      n->alpha = alpha;
      n->groups = groups;
      n->est_w = est_w;
      n->w_slot = slot++;
      torch::autograd::set_history(wb, node);
    }
  }
  switch (op) {
    case 0:
      return at::linear(xb, wb, bias);
    case 1:
      return at::conv1d(xb, wb, bias, stride, padding, dilation, conv_groups);
    case 2:
      return at::conv2d(xb, wb, bias, stride, padding, dilation, conv_groups);
    default:
      return at::conv3d(xb, wb, bias, stride, padding, dilation, conv_groups);
  }
}

}  // namespace

TORCH_LIBRARY(reste_ext, m) {
  m.def("sign(Tensor x) -> Tensor");
  m.def("backward(Tensor x, Tensor grad, str kind, float[] scalars, int count) -> Tensor");
  m.def("scaled_sign_forward(Tensor w, int groups, ScalarType? dtype) -> (Tensor, Tensor)");
  m.def("scaled_sign_backward(Tensor w, Tensor grad, Tensor alpha, int groups, str kind, float[] scalars, "
        "int count) -> Tensor");
  m.def("binary_sign(Tensor x, str kind, float[] scalars, int count, str names, float[] values) -> Tensor");
  m.def("scaled_sign(Tensor w, int groups, ScalarType? dtype, str kind, float[] scalars, int count, str names, "
        "float[] values) -> Tensor");
}

#define RESTE_BACKEND_IMPLS(m)                                      \
  m.impl("sign", sign_impl);                                        \
  m.impl("backward", backward_impl);                                \
  m.impl("scaled_sign_forward", scaled_sign_forward);               \
  m.impl("scaled_sign_backward", scaled_sign_backward_impl);        \
  m.impl("binary_sign", binary_sign_plain);                         \
  m.impl("scaled_sign", scaled_sign_plain)

TORCH_LIBRARY_IMPL(reste_ext, CPU, m) { RESTE_BACKEND_IMPLS(m); }

#ifdef RESTE_WITH_CUDA
TORCH_LIBRARY_IMPL(reste_ext, CUDA, m) { RESTE_BACKEND_IMPLS(m); }
#endif

TORCH_LIBRARY_IMPL(reste_ext, Autograd, m) {
  m.impl("binary_sign", binary_sign_autograd);
  m.impl("scaled_sign", scaled_sign_autograd);
}

}  // namespace reste_ext

// The Python entry points reste.cuda_ext calls (cheaper than a torch.ops call, which boxes its arguments).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  py::class_<reste_ext::Estimator, std::shared_ptr<reste_ext::Estimator>>(m, "Estimator")
      .def(py::init(&reste_ext::make_estimator), py::arg("kind"), py::arg("scalars"), py::arg("count"),
           py::arg("names"), py::arg("values"));
  m.def("sign", &reste_ext::sign_impl, py::arg("x"));
  m.def("binary_sign", &reste_ext::binary_sign_node, py::arg("x"), py::arg("estimator"));
  m.def("scaled_sign", &reste_ext::scaled_sign_node, py::arg("w"), py::arg("groups"), py::arg("dtype"),
        py::arg("estimator"));
  m.def("binary_layer", &reste_ext::binary_layer, py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("est_x"),
        py::arg("est_w"), py::arg("groups"), py::arg("dtype"), py::arg("op"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("conv_groups"));
}
