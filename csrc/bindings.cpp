// Python bindings: onebit._engine.  Arrays cross as NumPy buffers (torch tensors via .numpy());
// nothing here links against PyTorch.  The GIL is released while the kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>

#include "engine.h"

namespace py = pybind11;
using namespace onebit;

namespace {

template <typename T>
using CArr = py::array_t<T, py::array::c_style | py::array::forcecast>;
using FArr = py::array_t<float, py::array::forcecast>;  // any strides

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

Kernel parse_kernel(const std::string& k) {
  if (k == "auto") return Kernel::Auto;
  if (k == "rows") return Kernel::Rows;
  if (k == "panels") return Kernel::Panels;
  throw std::invalid_argument("unknown kernel '" + k + "'; allowed: auto, rows, panels");
}

int check_threads(int n) {
  require(n >= 1, "num_threads must be >= 1, got " + std::to_string(n));
  return n > 1024 ? 1024 : n;
}

const float* opt_ptr(const std::optional<CArr<float>>& a, int64_t size, const char* what) {
  if (!a) return nullptr;
  require(a->ndim() == 1 && a->shape(0) == size,
          std::string(what) + " must be a 1-D float32 array of length " + std::to_string(size));
  return a->data();
}

py::dict features() {
  const CpuFeatures& f = cpu_features();
  py::dict d;
  d["popcnt"] = f.popcnt;
  d["avx2"] = f.avx2;
  d["avx512_vpopcntdq"] = f.avx512_vpopcntdq;
  d["fma"] = f.fma;
  d["x86_64"] = static_cast<bool>(ONEBIT_X86);
  return d;
}

py::list available_paths() {
  py::list l;
  for (Path p : {Path::AVX512, Path::AVX2, Path::Portable})
    if (path_available(p)) l.append(path_name(p));
  return l;
}

py::array_t<uint64_t> py_pack_rows(const CArr<float>& a, const std::optional<CArr<float>>& shift,
                                   const std::string& path, int num_threads) {
  require(a.ndim() == 2, "pack_rows expects a 2-D float32 array [M, K]");
  const int64_t M = a.shape(0), K = a.shape(1);
  const float* sh = opt_ptr(shift, K, "shift");
  const Path p = parse_path(path);
  const int64_t nw = words_for(K);
  py::array_t<uint64_t> out({M, nw});
  uint64_t* o = out.mutable_data();
  const float* src = a.data();
  const int nt = check_threads(num_threads);
  {
    py::gil_scoped_release nogil;
    pack_rows(src, M, K, K, sh, o, nw, pack_isa(p) != Path::Portable, nt);
  }
  return out;
}

py::array_t<uint64_t> py_pack_nchw(const FArr& x, const std::optional<CArr<float>>& shift, int64_t groups,
                                   const std::string& path, int num_threads) {
  require(x.ndim() == 4, "pack_nchw expects a 4-D float32 array [N, C, H, W]");
  const int64_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
  require(groups >= 1 && C % groups == 0, "groups must divide the channels");
  int64_t s[4];
  for (int d = 0; d < 4; ++d) {
    require(x.strides(d) % static_cast<py::ssize_t>(sizeof(float)) == 0, "unaligned strides");
    s[d] = x.strides(d) / static_cast<py::ssize_t>(sizeof(float));
  }
  const float* sh = opt_ptr(shift, C, "shift");
  const Path p = parse_path(path);
  const int64_t ldp = groups * words_for(C / groups);
  py::array_t<uint64_t> out({N, H, W, ldp});
  uint64_t* o = out.mutable_data();
  const float* src = x.data();
  const int nt = check_threads(num_threads);
  {
    py::gil_scoped_release nogil;
    pack_nchw(src, N, C, H, W, s, sh, groups, o, pack_isa(p), nt);
  }
  return out;
}

py::tuple py_pack_conv_weight(const CArr<float>& w, int64_t align) {
  require(w.ndim() == 4, "pack_conv_weight expects a 4-D float32 array [F, C/groups, KH, KW]");
  require(align >= 1, "align must be >= 1");
  const int64_t F = w.shape(0), Cg = w.shape(1), KH = w.shape(2), KW = w.shape(3);
  const int64_t ldb = round_up(KH * KW * words_for(Cg), align);
  py::array_t<uint64_t> bits({F, ldb});
  py::array_t<int32_t> tapsum({F, KH * KW});
  pack_conv_weight(w.data(), F, Cg, KH, KW, bits.mutable_data(), ldb, tapsum.mutable_data());
  return py::make_tuple(bits, tapsum);
}

// nibble-split copy of packed weights [F, >= kw] for the paths that read that layout
py::array_t<uint64_t> py_split_weights(const CArr<uint64_t>& bits, int64_t kw) {
  require(bits.ndim() == 2 && kw >= 1 && bits.shape(1) >= kw, "split_weights expects uint64 [F, >= kw] and kw >= 1");
  const int64_t F = bits.shape(0);
  py::array_t<uint64_t> out({F, 2 * kw});
  split_rows(bits.data(), F, bits.shape(1), kw, out.mutable_data(), 1);
  return out;
}

const uint64_t* split_ptr(const std::optional<CArr<uint64_t>>& ws, Path path, int64_t F, int64_t kw) {
  if (!ws || !panel_kernel(path).split) return nullptr;
  require(ws->ndim() == 2 && ws->shape(0) == F && ws->shape(1) == 2 * kw,
          "wsplit must be uint64 [F, 2 * kw] from split_weights(wbits, kw)");
  return ws->data();
}

py::array_t<int32_t> py_bgemm(const CArr<uint64_t>& A, const CArr<uint64_t>& B, int64_t K, const std::string& path,
                              int num_threads, const std::string& kernel) {
  require(A.ndim() == 2 && B.ndim() == 2, "bgemm expects 2-D uint64 arrays A [M, W] and B [N, W]");
  const int64_t M = A.shape(0), N = B.shape(0), W = A.shape(1);
  require(B.shape(1) == W, "bgemm: A and B must have the same number of words per row");
  require(K >= 0 && K <= 64 * W, "bgemm: K must be in [0, 64 * words]");
  const Path p = parse_path(path);
  const Kernel kern = parse_kernel(kernel);
  py::array_t<int32_t> out({M, N});
  int32_t* o = out.mutable_data();
  const uint64_t *a = A.data(), *b = B.data();
  const int nt = check_threads(num_threads);
  {
    py::gil_scoped_release nogil;
    bgemm(a, M, W, b, N, W, K, o, p, nt, kern);
  }
  return out;
}

// A binary convolution bound to its packed weights, its parameters and one input shape (float32 NCHW x,
// or x_bits: the input sign-packed channels-last [N, H, W, words] as pack_nchw leaves it, with
// in_channels = C): everything but the per-call arrays is checked once here, so a layer that runs the
// same shape again and again (PackedBinaryConv2d) pays the checks and argument conversions once.
// run() returns the float output, the packed signs of the output (emit_bits; with want_float as well:
// a tuple (float, bits)), or the int32 accumulators (accumulate).
struct BoundConv2d {
  ConvParams p{};
  bool packed_input = false;
  Path path = Path::Portable;
  CArr<uint64_t> wbits;
  CArr<int32_t> tapsum;
  std::optional<CArr<float>> shift, scale, bias;
  std::optional<CArr<uint64_t>> wsplit;
  const float *sh = nullptr, *sc = nullptr, *bi = nullptr;
  const uint64_t* ws = nullptr;

  BoundConv2d(std::vector<int64_t> in_shape, bool packed_input_, const CArr<uint64_t>& wbits_,
              const CArr<int32_t>& tapsum_, int64_t groups, std::pair<int64_t, int64_t> kernel,
              std::pair<int64_t, int64_t> stride, std::pair<int64_t, int64_t> padding,
              std::pair<int64_t, int64_t> dilation, std::pair<int64_t, int64_t> out_size,
              const std::optional<CArr<float>>& shift_, const std::optional<CArr<float>>& scale_,
              const std::optional<CArr<float>>& bias_, const std::string& path_name_,
              const std::optional<CArr<uint64_t>>& wsplit_)
      : packed_input(packed_input_), wbits(wbits_), tapsum(tapsum_), shift(shift_), scale(scale_), bias(bias_),
        wsplit(wsplit_) {
    require(in_shape.size() == 4, "conv2d: the input shape must be [N, C, H, W]");
    p.N = in_shape[0], p.C = in_shape[1], p.H = in_shape[2], p.W = in_shape[3];
    require(p.N >= 0 && p.C >= 1 && p.H >= 0 && p.W >= 0, "conv2d: bad input shape");
    require(wbits.ndim() == 2, "conv2d: packed weights must be a 2-D uint64 array [F, words]");
    p.F = wbits.shape(0), p.ldb = wbits.shape(1);
    p.KH = kernel.first, p.KW = kernel.second, p.groups = groups;
    p.sh = stride.first, p.sw = stride.second, p.ph = padding.first, p.pw = padding.second;
    p.dh = dilation.first, p.dw = dilation.second, p.OH = out_size.first, p.OW = out_size.second;
    require(groups >= 1 && p.C % groups == 0 && p.F % groups == 0, "conv2d: groups must divide channels and filters");
    require(p.KH >= 1 && p.KW >= 1 && p.sh >= 1 && p.sw >= 1 && p.dh >= 1 && p.dw >= 1 && p.ph >= 0 && p.pw >= 0,
            "conv2d: bad kernel / stride / padding / dilation");
    require(p.OH >= 1 && p.OW >= 1, "conv2d: the output would be empty");
    require(p.ldb >= p.KH * p.KW * words_for(p.C / groups), "conv2d: packed weights have too few words per filter");
    require(tapsum.ndim() == 2 && tapsum.shape(0) == p.F && tapsum.shape(1) == p.KH * p.KW,
            "conv2d: tapsum must be int32 [F, KH*KW]");
    require(p.KH * p.KW * (p.C / groups) < (int64_t{1} << 30), "conv2d: reduction too long for int32");
    require(!(packed_input && shift), "conv2d: shift is applied when packing x; x_bits comes packed already");
    sh = packed_input ? nullptr : opt_ptr(shift, p.C, "shift");
    sc = opt_ptr(scale, p.F, "scale");
    bi = opt_ptr(bias, p.F, "bias");
    path = parse_path(path_name_);
    ws = split_ptr(wsplit, path, p.F, p.KH * p.KW * words_for(p.C / groups));
  }

  py::object run(const std::optional<FArr>& x, const std::optional<CArr<uint64_t>>& x_bits, int num_threads,
                 bool accumulate, const std::optional<py::array>& residual, const std::optional<py::array>& out_arr,
                 const std::optional<CArr<float>>& rprelu, bool emit_bits, bool want_float,
                 const std::optional<CArr<float>>& out_shift, const std::optional<CArr<float>>& bn,
                 bool bn_fma, bool pre_relu) const {
    ConvParams q = p;
    if (!packed_input) {
      require(x.has_value() && !x_bits, "conv2d: this convolution reads a float32 input x, not x_bits");
      require(x->ndim() == 4 && x->shape(0) == p.N && x->shape(1) == p.C && x->shape(2) == p.H && x->shape(3) == p.W,
              "conv2d: the input has another shape than the one the convolution was bound to");
      for (int d = 0; d < 4; ++d) {
        require(x->strides(d) % static_cast<py::ssize_t>(sizeof(float)) == 0, "unaligned strides");
        q.xstrides[d] = x->strides(d) / static_cast<py::ssize_t>(sizeof(float));
      }
    } else {
      require(x_bits.has_value() && !x, "conv2d: this convolution reads packed x_bits, not a float input");
      require(x_bits->ndim() == 4 && x_bits->shape(0) == p.N && x_bits->shape(1) == p.H && x_bits->shape(2) == p.W,
              "conv2d: x_bits must be a 4-D uint64 array [N, H, W, words] of the bound shape");
      require(x_bits->shape(3) == p.groups * words_for(p.C / p.groups),
              "conv2d: x_bits has " + std::to_string(x_bits->shape(3)) + " words per pixel, the layer reads " +
                  std::to_string(p.groups * words_for(p.C / p.groups)) + " (" + std::to_string(p.C) +
                  " channels in " + std::to_string(p.groups) + " groups)");
    }
    const float* osh = opt_ptr(out_shift, p.F, "out_shift");
    const int nt = check_threads(num_threads);
    const float* xd = x ? x->data() : nullptr;
    const uint64_t* xb = x_bits ? x_bits->data() : nullptr;
    const std::vector<py::ssize_t> shape{p.N, p.F, p.OH, p.OW};
    require(!accumulate || (!residual && !out_arr && !rprelu && !emit_bits && !bn && !pre_relu), "conv2d: residual, "
            "out, rprelu, bn, pre_relu and emit_bits are for the float output, not with accumulate=True");
    require(emit_bits || (want_float && !out_shift), "conv2d: out_shift (and want_float=False) go with emit_bits=True");
    require(want_float || !out_arr, "conv2d: out is the float output; it cannot go with want_float=False");
    const float* act = nullptr;
    if (rprelu) {
      require(rprelu->ndim() == 2 && rprelu->shape(0) == 3 && rprelu->shape(1) == p.F,
              "conv2d: rprelu must be float32 [3, F] (gamma, slope, zeta)");
      act = rprelu->data();
    }
    const float* bnp = nullptr;
    if (bn) {
      require(bn->ndim() == 2 && bn->shape(0) == 2 && bn->shape(1) == p.F,
              "conv2d: bn must be float32 [2, F] (alpha, beta from bn_terms)");
      bnp = bn->data();
    }
    if (accumulate) {
      py::array_t<int32_t> out(shape);
      int32_t* o = out.mutable_data();
      {
        py::gil_scoped_release nogil;
        conv2d(q, xd, sh, wbits.data(), ws, tapsum.data(), nullptr, nullptr, nullptr, o, path, nt, nullptr, nullptr,
               xb);
      }
      return std::move(out);
    }
    // residual / out: float32 C-contiguous [N, F, OH, OW], taken as they are (no conversion or copy:
    // out must be written in place, and a silent copy of the residual would cost a pass over memory)
    auto exact = [&](const py::array& a, const char* what) {
      require(a.dtype().is(py::dtype::of<float>()) && (a.flags() & py::array::c_style) && a.ndim() == 4,
              std::string("conv2d: ") + what + " must be a C-contiguous float32 array [N, F, OH, OW]");
      for (int d = 0; d < 4; ++d)
        require(a.shape(d) == shape[d], std::string("conv2d: ") + what + " has the wrong shape");
    };
    const float* res = nullptr;
    if (residual) {
      exact(*residual, "residual");
      res = static_cast<const float*>(residual->data());
    }
    py::array_t<float> out;
    if (out_arr) {
      exact(*out_arr, "out");
      require(out_arr->writeable(), "conv2d: out must be writeable");
      out = py::reinterpret_borrow<py::array_t<float>>(*out_arr);
      const auto* ob = static_cast<const char*>(out_arr->data());
      const py::ssize_t on = out_arr->nbytes();
      const auto* xbeg = x ? reinterpret_cast<const char*>(x->data()) : reinterpret_cast<const char*>(xb);
      py::ssize_t xn = x ? static_cast<py::ssize_t>(sizeof(float)) : x_bits->nbytes();  // bytes of the input
      if (x)
        for (int d = 0; d < 4; ++d) xn += (x->shape(d) - 1) * x->strides(d);
      require(ob + on <= xbeg || xbeg + xn <= ob, "conv2d: out must not overlap the input");
    } else if (want_float) {
      out = py::array_t<float>(shape);
    }
    float* o = want_float ? static_cast<float*>(out.mutable_data()) : nullptr;
    py::array_t<uint64_t> bits;
    uint64_t* ob = nullptr;
    if (emit_bits) {
      bits = py::array_t<uint64_t>(std::vector<py::ssize_t>{p.N, p.OH, p.OW, words_for(p.F)});
      ob = bits.mutable_data();
    }
    {
      py::gil_scoped_release nogil;
      conv2d(q, xd, sh, wbits.data(), ws, tapsum.data(), sc, bi, o, nullptr, path, nt, res, act, xb, ob, osh, bnp,
             bn_fma ? 2 : 1, pre_relu);
    }
    if (!emit_bits) return std::move(out);
    if (!want_float) return std::move(bits);
    return py::make_tuple(out, bits);
  }
};

// One-off call: bind to x's (or x_bits') shape and run.
py::object py_conv2d(const std::optional<FArr>& x, const CArr<uint64_t>& wbits, const CArr<int32_t>& tapsum,
                     int64_t groups, std::pair<int64_t, int64_t> kernel, std::pair<int64_t, int64_t> stride,
                     std::pair<int64_t, int64_t> padding, std::pair<int64_t, int64_t> dilation,
                     std::pair<int64_t, int64_t> out_size, const std::optional<CArr<float>>& shift,
                     const std::optional<CArr<float>>& scale, const std::optional<CArr<float>>& bias,
                     bool accumulate, const std::string& path, int num_threads,
                     const std::optional<CArr<uint64_t>>& wsplit, const std::optional<py::array>& residual,
                     const std::optional<py::array>& out_arr, const std::optional<CArr<float>>& rprelu,
                     const std::optional<CArr<uint64_t>>& x_bits, int64_t in_channels, bool emit_bits,
                     bool want_float, const std::optional<CArr<float>>& out_shift,
                     const std::optional<CArr<float>>& bn, bool bn_fma, bool pre_relu) {
  require(x.has_value() != x_bits.has_value(), "conv2d: give exactly one of x (float32) and x_bits (packed)");
  std::vector<int64_t> shape;
  if (x) {
    require(x->ndim() == 4, "conv2d expects a 4-D float32 input [N, C, H, W]");
    shape = {x->shape(0), x->shape(1), x->shape(2), x->shape(3)};
  } else {
    require(x_bits->ndim() == 4, "conv2d: x_bits must be a 4-D uint64 array [N, H, W, words]");
    require(in_channels >= 1, "conv2d: x_bits needs in_channels >= 1");
    shape = {x_bits->shape(0), in_channels, x_bits->shape(1), x_bits->shape(2)};
  }
  const BoundConv2d conv(shape, x_bits.has_value(), wbits, tapsum, groups, kernel, stride, padding, dilation, out_size,
                         shift, scale, bias, path, wsplit);
  return conv.run(x, x_bits, num_threads, accumulate, residual, out_arr, rprelu, emit_bits, want_float, out_shift, bn,
                  bn_fma, pre_relu);
}

// [2, F]: alpha, beta of an eval BatchNorm as torch's CPU kernel derives them (see engine.h)
py::array_t<float> py_bn_terms(const CArr<float>& weight, const CArr<float>& bias, const CArr<float>& mean,
                               const CArr<float>& var, double eps, bool fma) {
  const int64_t F = mean.size();
  require(mean.ndim() == 1 && weight.ndim() == 1 && bias.ndim() == 1 && var.ndim() == 1 && weight.size() == F &&
              bias.size() == F && var.size() == F,
          "bn_terms: weight, bias, mean and var must be 1-D float32 arrays of one length");
  py::array_t<float> out(std::vector<py::ssize_t>{2, F});
  float* o = out.mutable_data();
  bn_terms(weight.data(), bias.data(), mean.data(), var.data(), static_cast<float>(eps), F, fma, o, o + F);
  return out;
}

py::array py_linear(const CArr<float>& x, const CArr<uint64_t>& wbits, int64_t K,
                    const std::optional<CArr<float>>& shift, const std::optional<CArr<float>>& scale,
                    const std::optional<CArr<float>>& bias, bool accumulate, const std::string& path,
                    int num_threads, const std::string& kernel, const std::optional<CArr<uint64_t>>& wsplit) {
  require(x.ndim() == 2 && x.shape(1) == K, "linear expects a 2-D float32 input [M, K]");
  require(wbits.ndim() == 2 && wbits.shape(1) >= words_for(K), "linear: packed weights must be uint64 [N, >= K/64]");
  const int64_t M = x.shape(0), N = wbits.shape(0), ldb = wbits.shape(1);
  const float* sh = opt_ptr(shift, K, "shift");
  const float* sc = opt_ptr(scale, N, "scale");
  const float* bi = opt_ptr(bias, N, "bias");
  const Path p = parse_path(path);
  const Kernel kern = parse_kernel(kernel);
  const uint64_t* ws = split_ptr(wsplit, p, N, words_for(K));
  const int nt = check_threads(num_threads);
  const std::vector<py::ssize_t> shape{M, N};
  if (accumulate) {
    py::array_t<int32_t> out(shape);
    int32_t* o = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      linear(x.data(), M, K, K, sh, wbits.data(), ws, N, ldb, nullptr, nullptr, nullptr, o, p, nt, kern);
    }
    return std::move(out);
  }
  py::array_t<float> out(shape);
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    linear(x.data(), M, K, K, sh, wbits.data(), ws, N, ldb, sc, bi, o, nullptr, p, nt, kern);
  }
  return std::move(out);
}

using Pair = std::pair<int64_t, int64_t>;

// float32 C-contiguous NCHW x -> pooled float32 NCHW [N, C, OH, OW]
py::array_t<float> py_pool2d(bool is_max, const CArr<float>& x, Pair kernel, Pair stride, Pair padding,
                             Pair out_size, const std::string& path, int num_threads) {
  require(x.ndim() == 4, "pool2d expects a 4-D float32 array [N, C, H, W]");
  const int64_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3);
  const int64_t KH = kernel.first, KW = kernel.second, sh = stride.first, sw = stride.second;
  const int64_t ph = padding.first, pw = padding.second, OH = out_size.first, OW = out_size.second;
  require(KH >= 1 && KW >= 1 && sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0 && 2 * ph <= KH && 2 * pw <= KW,
          "pool2d: bad kernel / stride / padding");
  require(OH >= 1 && OW >= 1 && (OH - 1) * sh - ph < H && (OW - 1) * sw - pw < W &&
              (OH - 1) * sh - ph + KH <= H + 2 * ph && (OW - 1) * sw - pw + KW <= W + 2 * pw,
          "pool2d: output size does not fit the input");
  require(is_max || (ph == 0 && pw == 0), "avgpool2d: padding is not supported");
  const Path p = parse_path(path);
  const int nt = check_threads(num_threads);
  py::array_t<float> out(std::vector<py::ssize_t>{N, C, OH, OW});
  float* o = out.mutable_data();
  const float* xs = x.data();
  {
    py::gil_scoped_release nogil;
    if (is_max) maxpool2d(xs, N * C, H, W, KH, KW, sh, sw, ph, pw, OH, OW, o, p, nt);
    else avgpool2d(xs, N * C, H, W, KH, KW, sh, sw, OH, OW, o, p, nt);
  }
  return out;
}

// g * s(x) for ReSTE ("reste", with o, t, m) or Bi-Real's ApproxSign ("approx_sign")
py::array_t<float> py_surrogate_grad(const std::string& kind, const CArr<float>& x, const CArr<float>& g, double o,
                                     double t, double m, const std::string& path, int num_threads) {
  require(kind == "reste" || kind == "approx_sign",
          "surrogate_grad: unknown kind '" + kind + "'; allowed: reste, approx_sign");
  require(x.ndim() == g.ndim() && std::equal(x.shape(), x.shape() + x.ndim(), g.shape()),
          "surrogate_grad: x and g must have the same shape");
  const Surrogate k = kind == "reste" ? Surrogate::ReSTE : Surrogate::ApproxSign;
  SurrogateParams q;
  if (k == Surrogate::ReSTE) {
    // the power's range reduction needs normal floats: 2^-100 <= m keeps every |x| in (m, t] normal
    require(std::isfinite(o) && o >= 1 && o <= 1e6, "surrogate_grad: ReSTE o must be in [1, 1e6]");
    require(m >= 0x1p-100 && t > m && t <= 0x1p100, "surrogate_grad: ReSTE needs 2^-100 <= m < t <= 2^100");
    q = reste_params(o, t, m);
  }
  const Path p = parse_path(path);
  const int nt = check_threads(num_threads);
  py::array_t<float> out(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  float* dst = out.mutable_data();
  const float *xs = x.data(), *gs = g.data();
  const int64_t n = x.size();
  {
    py::gil_scoped_release nogil;
    surrogate_grad(k, xs, gs, dst, n, q, p, nt);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_engine, m) {
  m.doc() = "onebit XNOR-popcount engine (bit-packed binary GEMM and convolution)";
  m.def("cpu_features", &features, "CPU features the engine can use: popcnt, avx2, avx512_vpopcntdq, fma, x86_64");
  m.def("available_paths", &available_paths, "Kernel paths usable on this CPU, fastest first");
  m.def("thread_backend", &thread_backend, "Where parallel work runs: 'openmp:<library>' or 'pool'");
  m.def("set_thread_backend", &set_thread_backend, py::arg("name"),
        "'auto': the OpenMP runtime already loaded (torch's) when there is one; 'pool': the engine's own threads");
  m.def("best_path", [] { return std::string(path_name(best_path())); }, "The path 'auto' selects");
  m.def("pack_rows", &py_pack_rows, py::arg("a"), py::arg("shift") = py::none(), py::arg("path") = "auto",
        py::arg("num_threads") = 1,
        "float32 [M, K] -> uint64 [M, ceil(K/64)]: bit k of row m is 1 iff a[m, k] + shift[k] >= 0");
  m.def("pack_nchw", &py_pack_nchw, py::arg("x"), py::arg("shift") = py::none(), py::arg("groups") = 1,
        py::arg("path") = "auto", py::arg("num_threads") = 1,
        "float32 [N, C, H, W] (any strides) -> uint64 [N, H, W, groups * ceil(C/groups/64)]");
  m.def("pack_conv_weight", &py_pack_conv_weight, py::arg("w"), py::arg("align") = 8,
        "float32 [F, C/groups, KH, KW] -> (uint64 bits [F, words], int32 tapsum [F, KH*KW])");
  m.def("split_weights", &py_split_weights, py::arg("wbits"), py::arg("kw"),
        "Nibble-split copy [F, 2 kw] of packed weights, for the paths with weight_layout(path) == 'split'");
  m.def("weight_layout", [](const std::string& path) {
        return std::string(panel_kernel(parse_path(path)).split ? "split" : "plain"); }, py::arg("path") = "auto",
        "'split' if the path's panel kernels read nibble-split weights (pass wsplit= to skip splitting per call)");
  m.def("bgemm", &py_bgemm, py::arg("a"), py::arg("b"), py::arg("k"), py::arg("path") = "auto",
        py::arg("num_threads") = 1, py::arg("kernel") = "auto",
        "uint64 A [M, W], B [N, W] -> int32 [M, N] = K - 2 popcount(A xor B); kernel: auto, rows or panels");
  py::class_<BoundConv2d>(m, "BoundConv2d",
                          "conv2d's checks and parameters bound once to packed weights and one input shape "
                          "[N, C, H, W] (packed_input: x_bits of that shape comes instead of x); call it per input")
      .def(py::init<std::vector<int64_t>, bool, const CArr<uint64_t>&, const CArr<int32_t>&, int64_t,
                    std::pair<int64_t, int64_t>, std::pair<int64_t, int64_t>, std::pair<int64_t, int64_t>,
                    std::pair<int64_t, int64_t>, std::pair<int64_t, int64_t>, const std::optional<CArr<float>>&,
                    const std::optional<CArr<float>>&, const std::optional<CArr<float>>&, const std::string&,
                    const std::optional<CArr<uint64_t>>&>(),
           py::arg("in_shape"), py::arg("packed_input"), py::arg("wbits"), py::arg("tapsum"), py::arg("groups"),
           py::arg("kernel_size"), py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("out_size"),
           py::arg("shift") = py::none(), py::arg("scale") = py::none(), py::arg("bias") = py::none(),
           py::arg("path") = "auto", py::arg("wsplit") = py::none())
      .def("__call__", &BoundConv2d::run, py::arg("x"), py::arg("x_bits") = py::none(), py::arg("num_threads") = 1,
           py::arg("accumulate") = false, py::arg("residual") = py::none(), py::arg("out") = py::none(),
           py::arg("rprelu") = py::none(), py::arg("emit_bits") = false, py::arg("want_float") = true,
           py::arg("out_shift") = py::none(), py::arg("bn") = py::none(), py::arg("bn_fma") = false,
           py::arg("pre_relu") = false, "conv2d on one input of the bound shape (see conv2d)");
  m.def("bn_terms", &py_bn_terms, py::arg("weight"), py::arg("bias"), py::arg("mean"), py::arg("var"),
        py::arg("eps"), py::arg("fma"),
        "float32 [2, F]: alpha and beta of an eval BatchNorm as torch's CPU kernel derives them "
        "(alpha = weight / sqrt(var + eps) in its float steps; beta = bias - mean * alpha, fused when fma)");
  m.def("conv2d", &py_conv2d, py::arg("x"), py::arg("wbits"), py::arg("tapsum"), py::arg("groups"),
        py::arg("kernel_size"), py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("out_size"),
        py::arg("shift") = py::none(), py::arg("scale") = py::none(), py::arg("bias") = py::none(),
        py::arg("accumulate") = false, py::arg("path") = "auto", py::arg("num_threads") = 1,
        py::arg("wsplit") = py::none(), py::arg("residual") = py::none(), py::arg("out") = py::none(),
        py::arg("rprelu") = py::none(), py::arg("x_bits") = py::none(), py::arg("in_channels") = -1,
        py::arg("emit_bits") = false, py::arg("want_float") = true, py::arg("out_shift") = py::none(),
        py::arg("bn") = py::none(), py::arg("bn_fma") = false, py::arg("pre_relu") = false,
        "Binary convolution of float32 NCHW x (or of x_bits, its signs packed channels-last, with in_channels) "
        "against packed weights; float32 NCHW output "
        "(acc * scale + bias) [-> ReLU with pre_relu] [-> BatchNorm with bn = [alpha, beta]] [+ residual] [-> RPReLU with rprelu = [gamma, slope, zeta] of shape [3, F]], written "
        "into out if given (it may be the residual), or the exact int32 accumulators with accumulate=True; "
        "emit_bits=True also returns the output's signs (y + out_shift >= 0) packed channels-last "
        "[N, OH, OW, ceil(F/64)] for the next binary layer: (float, bits), or the bits alone with want_float=False");
  m.def("linear", &py_linear, py::arg("x"), py::arg("wbits"), py::arg("k"), py::arg("shift") = py::none(),
        py::arg("scale") = py::none(), py::arg("bias") = py::none(), py::arg("accumulate") = false,
        py::arg("path") = "auto", py::arg("num_threads") = 1, py::arg("kernel") = "auto",
        py::arg("wsplit") = py::none(), "Binary linear layer of float32 [M, K] x against packed weights [N, words]");
  m.def("maxpool2d", [](const CArr<float>& x, Pair k, Pair s, Pair p, Pair o, const std::string& path, int nt) {
        return py_pool2d(true, x, k, s, p, o, path, nt); }, py::arg("x"), py::arg("kernel_size"), py::arg("stride"),
        py::arg("padding"), py::arg("out_size"), py::arg("path") = "auto", py::arg("num_threads") = 1,
        "Exact max pooling of float32 NCHW x (torch's max_pool2d, no dilation, bit for bit)");
  m.def("avgpool2d", [](const CArr<float>& x, Pair k, Pair s, Pair o, const std::string& path, int nt) {
        return py_pool2d(false, x, k, s, {0, 0}, o, path, nt); }, py::arg("x"), py::arg("kernel_size"),
        py::arg("stride"), py::arg("out_size"), py::arg("path") = "auto", py::arg("num_threads") = 1,
        "Exact average pooling of float32 NCHW x without padding (torch's avg_pool2d order, bit for bit)");
  m.def("surrogate_grad", &py_surrogate_grad, py::arg("kind"), py::arg("x"), py::arg("g"), py::arg("o") = 1.0,
        py::arg("t") = 1.5, py::arg("m") = 0.1, py::arg("path") = "auto", py::arg("num_threads") = 1,
        "Training-time backward of sign in one pass: g * s(x), s ReSTE's rectified power derivative (o, t, m) or "
        "Bi-Real's ApproxSign max(0, 2 - 2|x|); float32 arrays of one shape; the same bits on every path");
}
