// oneDNN's convolutions as XLA FFI handlers on CPU: forward, backward data, backward weights.
//
// Activations are NHWC and kernels HWIO, as JAX lays them out; oneDNN reads and writes the
// activations in place and the kernel too where the layout it prefers is HWIO's in memory
// (often: its blocks span the output width), else a reordered copy (a small array).
// Primitives are built once per shape and dtype and cached. Each call brings its own
// scratchpad (user mode), so one primitive may run on several XLA threads at once (one
// device per thread with fake CPU devices). Built by `experiments/models/conv/onednn.py`.
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using tag = dnnl::memory::format_tag;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// A thread's grow-only buffer: scratchpads and reordered kernels, never shared.
void* Buffer(std::vector<char>& buffer, size_t bytes) {
  constexpr size_t kAlign = 64;
  if (buffer.size() < bytes + kAlign) buffer.resize(bytes + kAlign);
  auto address = reinterpret_cast<uintptr_t>(buffer.data());
  return buffer.data() + (kAlign - address % kAlign) % kAlign;
}

dnnl::memory Temporary(std::vector<char>& buffer, const dnnl::memory::desc& desc) {
  return dnnl::memory(desc, Engine(), Buffer(buffer, desc.get_size()));
}

template <ffi::DataType T> constexpr dnnl::memory::data_type kType = dnnl::memory::data_type::f32;
template <> constexpr dnnl::memory::data_type kType<ffi::BF16> = dnnl::memory::data_type::bf16;

// One convolution: input n x h x w x c, kernel kh x kw x c x o, output n x oh x ow x o.
struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pl, pb, pr;
  dnnl::memory::data_type type;

  auto Key() const { return std::make_tuple(n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pl,
                                            pb, pr, static_cast<int>(type)); }
  dnnl::memory::desc Src() const { return {{n, c, h, w}, type, tag::nhwc}; }
  dnnl::memory::desc Dst() const { return {{n, o, oh, ow}, type, tag::nhwc}; }
  dnnl::memory::desc AnyWeights() const { return {{o, c, kh, kw}, type, tag::any}; }
  dnnl::memory::desc Hwio() const { return {{o, c, kh, kw}, type, tag::hwio}; }
  dnnl::memory::dims Strides() const { return {sh, sw}; }
  dnnl::memory::dims PadLo() const { return {pt, pl}; }
  dnnl::memory::dims PadHi() const { return {pb, pr}; }
};

Geometry GeometryOf(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                    ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                    dnnl::memory::data_type type) {
  Geometry g{x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2], sh, sw, pt, pl, 0, 0, type};
  g.pb = (g.oh - 1) * sh + g.kh - g.h - pt;  // what XLA's output size implies
  g.pr = (g.ow - 1) * sw + g.kw - g.w - pl;
  return g;
}

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardPd(const Geometry& g) {
  return {Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
          g.Src(), g.AnyWeights(), g.Dst(), g.Strides(), g.PadLo(), g.PadHi(),
          UserScratchpad()};
}

// Where element `index` of a plain or blocked layout lies, in elements.
int64_t Offset(const dnnl::memory::desc& desc, const dnnl::memory::dims& index) {
  const auto strides = desc.get_strides(), blocks = desc.get_inner_blks(),
             block_dims = desc.get_inner_idxs();
  dnnl::memory::dims block(index.size(), 1);
  for (size_t k = 0; k < blocks.size(); ++k) block[block_dims[k]] *= blocks[k];
  int64_t offset = 0, inner = 1;
  for (size_t d = 0; d < index.size(); ++d) offset += index[d] / block[d] * strides[d];
  dnnl::memory::dims divisor(index.size(), 1);
  for (size_t k = blocks.size(); k-- > 0;) {  // the innermost block last
    const int64_t d = block_dims[k];
    offset += index[d] / divisor[d] % blocks[k] * inner;
    divisor[d] *= blocks[k];
    inner *= blocks[k];
  }
  return offset;
}

// Whether two descriptions of a kernel put every element at the same place (Acdb16a is
// HWIO itself for 16 outputs, and oneDNN's blocks are often the whole output width), so
// that the kernel needs no reorder.
bool SameLayout(const dnnl::memory::desc& a, const dnnl::memory::desc& b) {
  if (a == b) return true;
  const auto dims = a.get_dims();
  if (a.get_format_kind() != dnnl::memory::format_kind::blocked ||
      b.get_format_kind() != dnnl::memory::format_kind::blocked ||
      a.get_data_type() != b.get_data_type() || dims.size() != 4 || dims != b.get_dims() ||
      a.get_padded_dims() != dims || b.get_padded_dims() != dims) {
    return false;
  }
  dnnl::memory::dims i(4);
  for (i[0] = 0; i[0] < dims[0]; ++i[0])
    for (i[1] = 0; i[1] < dims[1]; ++i[1])
      for (i[2] = 0; i[2] < dims[2]; ++i[2])
        for (i[3] = 0; i[3] < dims[3]; ++i[3])
          if (Offset(a, i) != Offset(b, i)) return false;
  return true;
}

// A primitive, its kernel layout and the reorder between that layout and HWIO.
struct Plan {
  dnnl::primitive primitive;
  dnnl::memory::desc weights, scratchpad;
  dnnl::reorder reorder;  // empty when the primitive's layout is HWIO's
};

template <typename Primitive, typename Pd>
Plan MakePlan(const Pd& pd, const dnnl::memory::desc& weights, const Geometry& g,
              bool to_hwio) {
  Plan plan{Primitive(pd), weights, pd.scratchpad_desc(), {}};
  if (!SameLayout(weights, g.Hwio())) {
    plan.reorder = to_hwio ? dnnl::reorder(dnnl::reorder::primitive_desc(
                                 Engine(), weights, Engine(), g.Hwio()))
                           : dnnl::reorder(dnnl::reorder::primitive_desc(
                                 Engine(), g.Hwio(), Engine(), weights));
  }
  return plan;
}

enum class Op { kForward, kBackwardData, kBackwardWeights };

const Plan& PlanFor(Op op, const Geometry& g) {
  static std::mutex mutex;
  static std::map<std::tuple<int, decltype(g.Key())>, Plan> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_tuple(static_cast<int>(op), g.Key());
  auto it = plans.find(key);
  if (it != plans.end()) return it->second;
  auto forward = ForwardPd(g);
  Plan plan;
  if (op == Op::kForward) {
    plan = MakePlan<dnnl::convolution_forward>(forward, forward.weights_desc(), g, false);
  } else if (op == Op::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.AnyWeights(), g.Dst(),
        g.Strides(), g.PadLo(), g.PadHi(), forward, UserScratchpad());
    plan = MakePlan<dnnl::convolution_backward_data>(pd, pd.weights_desc(), g, false);
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.AnyWeights(), g.Dst(),
        g.Strides(), g.PadLo(), g.PadHi(), forward, UserScratchpad());
    plan = MakePlan<dnnl::convolution_backward_weights>(pd, pd.diff_weights_desc(), g, true);
  }
  return plans.emplace(key, std::move(plan)).first->second;
}

// Runs `op`: `a` and `b` are its two operands, `out` its result, each NHWC or HWIO.
ffi::Error Run(Op op, const Geometry& g, void* a, void* b, void* out) {
  try {
    const Plan& plan = PlanFor(op, g);
    thread_local std::vector<char> scratch_buffer, weights_buffer;
    auto& stream = Stream();
    dnnl::memory scratchpad = Temporary(scratch_buffer, plan.scratchpad);
    auto in_plan_layout = [&](void* hwio) {
      if (!plan.reorder) return dnnl::memory(plan.weights, Engine(), hwio);
      dnnl::memory reordered = Temporary(weights_buffer, plan.weights);
      dnnl::memory given(g.Hwio(), Engine(), hwio);
      plan.reorder.execute(stream, given, reordered);
      return reordered;
    };
    if (op == Op::kForward) {  // a: x, b: w, out: y
      plan.primitive.execute(stream, {{DNNL_ARG_SRC, dnnl::memory(g.Src(), Engine(), a)},
                                      {DNNL_ARG_WEIGHTS, in_plan_layout(b)},
                                      {DNNL_ARG_DST, dnnl::memory(g.Dst(), Engine(), out)},
                                      {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else if (op == Op::kBackwardData) {  // a: dy, b: w, out: dx
      plan.primitive.execute(stream, {{DNNL_ARG_DIFF_DST, dnnl::memory(g.Dst(), Engine(), a)},
                                      {DNNL_ARG_WEIGHTS, in_plan_layout(b)},
                                      {DNNL_ARG_DIFF_SRC, dnnl::memory(g.Src(), Engine(), out)},
                                      {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else {  // a: x, b: dy, out: dw
      dnnl::memory dw = plan.reorder ? Temporary(weights_buffer, plan.weights)
                                     : dnnl::memory(plan.weights, Engine(), out);
      plan.primitive.execute(stream, {{DNNL_ARG_SRC, dnnl::memory(g.Src(), Engine(), a)},
                                      {DNNL_ARG_DIFF_DST, dnnl::memory(g.Dst(), Engine(), b)},
                                      {DNNL_ARG_DIFF_WEIGHTS, dw},
                                      {DNNL_ARG_SCRATCHPAD, scratchpad}});
      if (plan.reorder) {
        dnnl::memory hwio(g.Hwio(), Engine(), out);
        plan.reorder.execute(stream, dw, hwio);
      }
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

template <ffi::DataType T>
ffi::Error Forward(ffi::Buffer<T> x, ffi::Buffer<T> w, ffi::ResultBuffer<T> y, int64_t sh,
                   int64_t sw, int64_t pt, int64_t pl) {
  Geometry g = GeometryOf(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pl,
                          kType<T>);
  return Run(Op::kForward, g, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

template <ffi::DataType T>
ffi::Error BackwardData(ffi::Buffer<T> dy, ffi::Buffer<T> w, ffi::ResultBuffer<T> dx,
                        int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  Geometry g = GeometryOf(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pl,
                          kType<T>);
  return Run(Op::kBackwardData, g, dy.untyped_data(), w.untyped_data(), dx->untyped_data());
}

template <ffi::DataType T>
ffi::Error BackwardWeights(ffi::Buffer<T> x, ffi::Buffer<T> dy, ffi::ResultBuffer<T> dw,
                           int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  Geometry g = GeometryOf(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pl,
                          kType<T>);
  return Run(Op::kBackwardWeights, g, x.untyped_data(), dy.untyped_data(), dw->untyped_data());
}

template <ffi::DataType T>
auto Binding() {
  return ffi::Ffi::Bind()
      .template Arg<ffi::Buffer<T>>()
      .template Arg<ffi::Buffer<T>>()
      .template Ret<ffi::Buffer<T>>()
      .template Attr<int64_t>("stride_h")
      .template Attr<int64_t>("stride_w")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_left");
}

// Batch norm over groups of a batch: x is b x h x w x c (NHWC), normalised with the statistics
// of each group of `group` consecutive examples (ghost batch norm; group == b for plain batch
// norm); one primitive call per group, at its offset. Statistics are float32 (k x c, k = b /
// group), biased variance; scale and shift are c floats.
// oneDNN 3.2 on CPU has no fuse_norm_add_relu in training: the residual add stays XLA's.

struct NormGeometry {
  int64_t group, h, w, c;
  float epsilon;
  bool relu;  // the forward's y = relu(bn(x)) rather than bn(x)

  auto Key() const { return std::make_tuple(group, h, w, c, epsilon, relu); }
  dnnl::memory::desc Data() const { return {{group, c, h, w}, kType<ffi::F32>, tag::nhwc}; }
  dnnl::memory::desc Channels() const { return {{c}, kType<ffi::F32>, tag::a}; }
  size_t GroupElements() const { return static_cast<size_t>(group * h * w * c); }
};

dnnl::normalization_flags FlagsOf(bool relu) {
  auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  if (relu) flags |= dnnl::normalization_flags::fuse_norm_relu;
  return flags;
}

dnnl::batch_normalization_forward::primitive_desc NormForwardPd(const NormGeometry& g,
                                                                bool relu) {
  return {Engine(), dnnl::prop_kind::forward_training, g.Data(), g.Data(), g.epsilon,
          FlagsOf(relu), UserScratchpad()};
}

struct NormPlan {
  dnnl::primitive primitive;
  dnnl::memory::desc scratchpad, workspace;
};

const NormPlan& NormPlanFor(bool backward, const NormGeometry& g) {
  static std::mutex mutex;
  static std::map<std::tuple<bool, decltype(g.Key())>, NormPlan> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_tuple(backward, g.Key());
  auto it = plans.find(key);
  if (it != plans.end()) return it->second;
  NormPlan plan;
  if (!backward) {
    auto pd = NormForwardPd(g, g.relu);
    plan = {dnnl::batch_normalization_forward(pd), pd.scratchpad_desc(), pd.workspace_desc()};
  } else {  // the gradient of the normalisation alone: the caller masks dy by the ReLU
    dnnl::batch_normalization_backward::primitive_desc pd(
        Engine(), dnnl::prop_kind::backward, g.Data(), g.Data(), g.Data(), g.epsilon,
        FlagsOf(false), NormForwardPd(g, false), UserScratchpad());
    plan = {dnnl::batch_normalization_backward(pd), pd.scratchpad_desc(), {}};
  }
  return plans.emplace(key, std::move(plan)).first->second;
}

template <typename Body>
ffi::Error EachGroup(int64_t batch, const NormGeometry& g, bool backward, Body body) {
  if (g.group <= 0 || batch % g.group) {
    return ffi::Error::InvalidArgument("batch norm: the batch is not a multiple of the group");
  }
  try {
    const NormPlan& plan = NormPlanFor(backward, g);
    thread_local std::vector<char> scratch_buffer, workspace_buffer;
    auto& stream = Stream();
    dnnl::memory scratchpad = Temporary(scratch_buffer, plan.scratchpad);
    dnnl::memory workspace;  // forward_training wants one for the ReLU; backward does not
    if (plan.workspace.get_size()) workspace = Temporary(workspace_buffer, plan.workspace);
    for (int64_t k = 0; k < batch / g.group; ++k) {
      std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SCRATCHPAD, scratchpad}};
      if (workspace) args[DNNL_ARG_WORKSPACE] = workspace;
      body(k, args);
      plan.primitive.execute(stream, args);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN batch norm: ") + e.what());
  }
  return ffi::Error::Success();
}

NormGeometry NormGeometryOf(ffi::Span<const int64_t> x, int64_t group, float epsilon,
                            bool relu) {
  return {group, x[1], x[2], x[3], epsilon, relu};
}

dnnl::memory At(const dnnl::memory::desc& desc, void* base, size_t offset) {
  return dnnl::memory(desc, Engine(), static_cast<float*>(base) + offset);
}

ffi::Error NormForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                       ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> y,
                       ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> var,
                       int64_t group, float epsilon, int64_t relu) {
  NormGeometry g = NormGeometryOf(x.dimensions(), group, epsilon, relu != 0);
  return EachGroup(x.dimensions()[0], g, false, [&](int64_t k, auto& args) {
    size_t data = k * g.GroupElements(), stats = k * g.c;
    args[DNNL_ARG_SRC] = At(g.Data(), x.untyped_data(), data);
    args[DNNL_ARG_DST] = At(g.Data(), y->untyped_data(), data);
    args[DNNL_ARG_SCALE] = At(g.Channels(), scale.untyped_data(), 0);
    args[DNNL_ARG_SHIFT] = At(g.Channels(), shift.untyped_data(), 0);
    args[DNNL_ARG_MEAN] = At(g.Channels(), mean->untyped_data(), stats);
    args[DNNL_ARG_VARIANCE] = At(g.Channels(), var->untyped_data(), stats);
  });
}

ffi::Error NormBackward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                        ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> var,
                        ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> dx,
                        ffi::ResultBuffer<ffi::F32> dscale, ffi::ResultBuffer<ffi::F32> dshift,
                        int64_t group, float epsilon) {
  NormGeometry g = NormGeometryOf(x.dimensions(), group, epsilon, false);
  return EachGroup(x.dimensions()[0], g, true, [&](int64_t k, auto& args) {
    size_t data = k * g.GroupElements(), stats = k * g.c;
    args[DNNL_ARG_SRC] = At(g.Data(), x.untyped_data(), data);
    args[DNNL_ARG_DIFF_DST] = At(g.Data(), dy.untyped_data(), data);
    args[DNNL_ARG_DIFF_SRC] = At(g.Data(), dx->untyped_data(), data);
    args[DNNL_ARG_MEAN] = At(g.Channels(), mean.untyped_data(), stats);
    args[DNNL_ARG_VARIANCE] = At(g.Channels(), var.untyped_data(), stats);
    args[DNNL_ARG_SCALE] = At(g.Channels(), scale.untyped_data(), 0);
    args[DNNL_ARG_DIFF_SCALE] = At(g.Channels(), dscale->untyped_data(), stats);
    args[DNNL_ARG_DIFF_SHIFT] = At(g.Channels(), dshift->untyped_data(), stats);
  });
}

}  // namespace

// Exported names: lrsched_conv_{forward,backward_data,backward_weights}_{f32,bf16}.
XLA_FFI_DEFINE_HANDLER_SYMBOL(lrsched_conv_forward_f32, Forward<ffi::F32>, Binding<ffi::F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(lrsched_conv_backward_data_f32, BackwardData<ffi::F32>,
                              Binding<ffi::F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(lrsched_conv_backward_weights_f32, BackwardWeights<ffi::F32>,
                              Binding<ffi::F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(lrsched_conv_forward_bf16, Forward<ffi::BF16>,
                              Binding<ffi::BF16>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(lrsched_conv_backward_data_bf16, BackwardData<ffi::BF16>,
                              Binding<ffi::BF16>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(lrsched_conv_backward_weights_bf16, BackwardWeights<ffi::BF16>,
                              Binding<ffi::BF16>());

// Batch norm (float32): lrsched_norm_forward (relu = 0 or 1), lrsched_norm_backward.
using F32 = ffi::Buffer<ffi::F32>;
XLA_FFI_DEFINE_HANDLER_SYMBOL(lrsched_norm_forward, NormForward,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Attr<int64_t>("group").Attr<float>("epsilon")
                                  .Attr<int64_t>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(lrsched_norm_backward, NormBackward,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Attr<int64_t>("group").Attr<float>("epsilon"));
