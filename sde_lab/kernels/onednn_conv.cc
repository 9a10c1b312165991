// oneDNN convolutions (forward, input gradient, kernel gradient) as XLA FFI handlers.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

bool ToDnnl(ffi::DataType t, memory::data_type* out) {
  if (t == ffi::DataType::F32) { *out = memory::data_type::f32; return true; }
  if (t == ffi::DataType::BF16) { *out = memory::data_type::bf16; return true; }
  return false;
}

struct Geometry {
  memory::dim n, h, w, c, kh, kw, o, ho, wo;
  memory::dims pad_l, pad_r;
  memory::data_type src_t, wei_t, dst_t;
  std::string Key(char op) const {
    std::string k(1, op);
    for (auto v : {n, h, w, c, kh, kw, o, ho, wo, pad_l[0], pad_l[1], pad_r[0], pad_r[1],
                   (memory::dim)src_t, (memory::dim)wei_t, (memory::dim)dst_t})
      k += "," + std::to_string(v);
    return k;
  }
  memory::desc Src(bool any = false) const { return {{n, c, h, w}, src_t, any ? tag::any : tag::nhwc}; }
  memory::desc Dst(bool any = false) const { return {{n, o, ho, wo}, dst_t, any ? tag::any : tag::nhwc}; }
  memory::desc Wei(bool any) const { return {{o, c, kh, kw}, wei_t, any ? tag::any : tag::hwio}; }
  memory::desc WeiUser() const { return {{o, c, kh, kw}, wei_t, tag::hwio}; }
};

dnnl::primitive_attr Attr() {
  dnnl::primitive_attr a;
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return a;
}

dnnl::convolution_forward::primitive_desc FwdPd(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      g.Src(), g.Wei(true), g.Dst(), {1, 1}, g.pad_l, g.pad_r, Attr());
}

struct Entry {
  dnnl::primitive prim;
  memory::desc wei;      // the primitive's weight layout
  memory::desc scratch;
};

std::mutex mu;
std::unordered_map<std::string, std::shared_ptr<Entry>> cache;

std::shared_ptr<Entry> Get(char op, const Geometry& g) {
  std::string key = g.Key(op);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto e = std::make_shared<Entry>();
  if (op == 'f') {
    auto pd = FwdPd(g);
    e->prim = dnnl::convolution_forward(pd);
    e->wei = pd.weights_desc();
    e->scratch = pd.scratchpad_desc();
  } else if (op == 'd') {  // input gradient: src <- dst
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.Wei(true), g.Dst(), {1, 1},
        g.pad_l, g.pad_r, FwdPd(g), Attr());
    e->prim = dnnl::convolution_backward_data(pd);
    e->wei = pd.weights_desc();
    e->scratch = pd.scratchpad_desc();
  } else {  // kernel gradient
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.Wei(true), g.Dst(), {1, 1},
        g.pad_l, g.pad_r, FwdPd(g), Attr());
    e->prim = dnnl::convolution_backward_weights(pd);
    e->wei = pd.diff_weights_desc();
    e->scratch = pd.scratchpad_desc();
  }
  cache.emplace(key, e);
  return e;
}

struct Buffer {  // aligned scratch memory
  void* p = nullptr;
  explicit Buffer(size_t bytes) { if (bytes) p = std::aligned_alloc(64, (bytes + 63) / 64 * 64); }
  ~Buffer() { std::free(p); }
};

// x: [N, H, W, C] (src), w: [KH, KW, C, O] (weights), y: [N, HO, WO, O] (dst).
ffi::Error Run(char op, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
               int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t threads) {
  // OpenMP threads of this call's parallel regions. The setting belongs to the calling
  // thread (XLA's pool, or the caller's own thread), so it is restored on return: other
  // OpenMP code on that thread (PyTorch, say) keeps its own.
  struct Threads {
    int saved = omp_get_max_threads();
    explicit Threads(int64_t n) { if (n > 0) omp_set_num_threads(static_cast<int>(n)); }
    ~Threads() { omp_set_num_threads(saved); }
  } scoped_threads(threads);
  const ffi::AnyBuffer* x; const ffi::AnyBuffer* w = nullptr; const ffi::AnyBuffer* y = nullptr;
  Geometry g;
  g.pad_l = {pt, pl};
  g.pad_r = {pb, pr};
  void *xp, *wp, *yp;
  ffi::AnyBuffer::Dimensions xd, wd, yd;
  ffi::DataType xt, wt, yt;
  if (op == 'f') {  // a = x, b = w, out = y
    xd = a.dimensions(); wd = b.dimensions(); yd = out->dimensions();
    xt = a.element_type(); wt = b.element_type(); yt = out->element_type();
    xp = a.untyped_data(); wp = b.untyped_data(); yp = out->untyped_data();
  } else if (op == 'd') {  // a = dy, b = w, out = dx
    xd = out->dimensions(); wd = b.dimensions(); yd = a.dimensions();
    xt = out->element_type(); wt = b.element_type(); yt = a.element_type();
    xp = out->untyped_data(); wp = b.untyped_data(); yp = a.untyped_data();
  } else {  // a = x, b = dy, out = dw
    xd = a.dimensions(); wd = out->dimensions(); yd = b.dimensions();
    xt = a.element_type(); wt = out->element_type(); yt = b.element_type();
    xp = a.untyped_data(); wp = out->untyped_data(); yp = b.untyped_data();
  }
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: operands must be rank 4 (NHWC, HWIO)");
  if (!ToDnnl(xt, &g.src_t) || !ToDnnl(wt, &g.wei_t) || !ToDnnl(yt, &g.dst_t))
    return ffi::Error::InvalidArgument("onednn conv: dtypes must be float32 or bfloat16");
  g.n = xd[0]; g.h = xd[1]; g.w = xd[2]; g.c = xd[3];
  g.kh = wd[0]; g.kw = wd[1]; g.o = wd[3];
  g.ho = yd[1]; g.wo = yd[2];
  try {
    auto e = Get(op, g);
    dnnl::stream s(Engine());
    memory src(g.Src(), Engine(), xp), dst(g.Dst(), Engine(), yp);
    memory user_w(g.WeiUser(), Engine(), wp);
    bool reorder_w = e->wei != g.WeiUser();
    Buffer wbuf(reorder_w ? e->wei.get_size() : 0), sbuf(e->scratch.get_size());
    memory prim_w = reorder_w ? memory(e->wei, Engine(), wbuf.p) : user_w;
    memory scratch(e->scratch, Engine(), sbuf.p);
    if (op == 'f') {
      if (reorder_w) dnnl::reorder(user_w, prim_w).execute(s, user_w, prim_w);
      e->prim.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, prim_w}, {DNNL_ARG_DST, dst},
                          {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (op == 'd') {
      if (reorder_w) dnnl::reorder(user_w, prim_w).execute(s, user_w, prim_w);
      e->prim.execute(s, {{DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_WEIGHTS, prim_w},
                          {DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      e->prim.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dst},
                          {DNNL_ARG_DIFF_WEIGHTS, prim_w}, {DNNL_ARG_SCRATCHPAD, scratch}});
      if (reorder_w) dnnl::reorder(prim_w, user_w).execute(s, prim_w, user_w);
    }
    s.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("onednn conv: ") + err.what());
  }
  return ffi::Error::Success();
}

#define SDE_LAB_BIND                                                                     \
  ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()     \
      .Attr<int64_t>("pad_t").Attr<int64_t>("pad_b").Attr<int64_t>("pad_l")               \
      .Attr<int64_t>("pad_r").Attr<int64_t>("threads")

ffi::Error Fwd(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y, int64_t pt,
               int64_t pb, int64_t pl, int64_t pr, int64_t threads) {
  return Run('f', x, w, y, pt, pb, pl, pr, threads);
}
ffi::Error BwdData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                   int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t threads) {
  return Run('d', dy, w, dx, pt, pb, pl, pr, threads);
}
ffi::Error BwdWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                      int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t threads) {
  return Run('w', x, dy, dw, pt, pb, pl, pr, threads);
}

// Both gradients in one call, input gradient first: see `_conv_bwd` in sde_lab/onednn.py.
ffi::Error Bwd(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer dy,
               ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dw, int64_t pt,
               int64_t pb, int64_t pl, int64_t pr, int64_t threads) {
  ffi::Error status = Run('d', dy, w, dx, pt, pb, pl, pr, threads);
  if (status.failure()) return status;
  return Run('w', x, dy, dw, pt, pb, pl, pr, threads);
}

}  // namespace

// 1 if this CPU has oneDNN convolutions (all three directions) for the dtype, else 0:
// oneDNN 3.x computes bf16 only on AVX-512 or AVX2-VNNI-2 machines.
extern "C" int SdeLabConvSupported(int bf16) {
  Geometry g;
  g.n = 1; g.h = g.w = g.ho = g.wo = 8; g.c = g.o = 16; g.kh = g.kw = 3;
  g.pad_l = {1, 1};
  g.pad_r = {1, 1};
  g.src_t = g.wei_t = g.dst_t = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  try {
    Get('f', g);
    Get('d', g);
    Get('w', g);
  } catch (const dnnl::error&) {
    return 0;
  }
  return 1;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(SdeLabConvFwd, Fwd, SDE_LAB_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SdeLabConvBwdData, BwdData, SDE_LAB_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SdeLabConvBwdWeights, BwdWeights, SDE_LAB_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SdeLabConvBwd, Bwd,
    ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
        .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
        .Attr<int64_t>("pad_t").Attr<int64_t>("pad_b").Attr<int64_t>("pad_l")
        .Attr<int64_t>("pad_r").Attr<int64_t>("threads"));
