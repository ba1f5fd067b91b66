// C++ test of the hopscotch_ext ops, run by ctest (see CMakeLists.txt). Each op is called through the
// dispatcher, as torch.ops.hopscotch_ext.<op> calls it, and compared with a plain float64 loop on odd shapes
// (7 x 769: the scalar paths) and aligned ones (5 x 1024: the 16-byte paths of the CUDA kernels), in float32
// and bfloat16; then a bad input must raise the shared error message. CPU always; CUDA when a GPU is visible.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace {

int g_checks = 0;
int g_failures = 0;

#define EXPECT(cond, ...)                                                            \
  do {                                                                              \
    ++g_checks;                                                                     \
    if (!(cond)) {                                                                  \
      ++g_failures;                                                                 \
      std::fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond);        \
      std::fprintf(stderr, __VA_ARGS__);                                            \
      std::fprintf(stderr, "\n");                                                   \
    }                                                                               \
  } while (0)

constexpr double kEps = 1e-6;

// ---- the ops, through the dispatcher (signatures exactly as registered: csrc/ops.h) ---------------------------

template <typename Fn>
c10::TypedOperatorHandle<Fn> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  static auto h = op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>("hopscotch_ext::rms_norm");
  return h.call(x, w, eps);
}

std::tuple<at::Tensor, at::Tensor> scaled_add_rms_norm(const at::Tensor& x, const at::Tensor& r, const at::Tensor& w,
                                                       const at::Tensor& b, const at::Tensor& s, double eps) {
  static auto h = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, const at::Tensor&, double)>(
      "hopscotch_ext::scaled_add_rms_norm");
  return h.call(x, r, w, b, s, eps);
}

void scaled_add_rms_norm_(at::Tensor& x, at::Tensor& r, const at::Tensor& w, const at::Tensor& b,
                          const at::Tensor& s, double eps) {
  static auto h = op<void(at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          double)>("hopscotch_ext::scaled_add_rms_norm_");
  h.call(x, r, w, b, s, eps);
}

at::Tensor silu_and_mul(const at::Tensor& gate_up) {
  static auto h = op<at::Tensor(const at::Tensor&)>("hopscotch_ext::silu_and_mul");
  return h.call(gate_up);
}

void rotary_embedding(const at::Tensor& pos, at::Tensor& q, const std::optional<at::Tensor>& k,
                      const at::Tensor& cache) {
  static auto h = op<void(const at::Tensor&, at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&)>(
      "hopscotch_ext::rotary_embedding");
  h.call(pos, q, k, cache);
}

at::Tensor silu_gate_up(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  static auto h = op<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>(
      "hopscotch_ext::silu_gate_up");
  return h.call(x, w, b);
}

at::Tensor rotary_embedding_out(const at::Tensor& pos, const at::Tensor& x, const at::Tensor& cache, bool inverse) {
  static auto h = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>(
      "hopscotch_ext::rotary_embedding_out");
  return h.call(pos, x, cache, inverse);
}

// ---- float64 references: plain loops over CPU double tensors -----------------------------------------------

at::Tensor f64(const at::Tensor& t) {
  return t.to(at::kCPU).to(at::kDouble).contiguous();
}

at::Tensor rms_norm_ref(const at::Tensor& x, const at::Tensor& w) {  // x: [rows, hidden]
  at::Tensor out = at::empty_like(x);
  auto xa = x.accessor<double, 2>();
  auto wa = w.accessor<double, 1>();
  auto oa = out.accessor<double, 2>();
  for (int64_t r = 0; r < x.size(0); ++r) {
    double sumsq = 0;
    for (int64_t i = 0; i < x.size(1); ++i) sumsq += xa[r][i] * xa[r][i];
    const double rstd = 1.0 / std::sqrt(sumsq / static_cast<double>(x.size(1)) + kEps);
    for (int64_t i = 0; i < x.size(1); ++i) oa[r][i] = xa[r][i] * rstd * wa[i];
  }
  return out;
}

at::Tensor silu_and_mul_ref(const at::Tensor& gu) {  // gu: [rows, 2 * d]
  const int64_t d = gu.size(1) / 2;
  at::Tensor out = at::empty({gu.size(0), d}, gu.options());
  auto ga = gu.accessor<double, 2>();
  auto oa = out.accessor<double, 2>();
  for (int64_t r = 0; r < gu.size(0); ++r) {
    for (int64_t j = 0; j < d; ++j) oa[r][j] = ga[r][j] / (1.0 + std::exp(-ga[r][j])) * ga[r][d + j];
  }
  return out;
}

at::Tensor rotary_ref(const at::Tensor& x, const at::Tensor& pos, const at::Tensor& cache) {  // x: [T, H, D]
  at::Tensor out = x.clone();
  const int64_t half = cache.size(1) / 2;
  auto xa = x.accessor<double, 3>();
  auto oa = out.accessor<double, 3>();
  auto ca = cache.accessor<double, 2>();
  const at::Tensor p = pos.to(at::kCPU).to(at::kLong).contiguous();
  auto pa = p.accessor<int64_t, 1>();
  for (int64_t t = 0; t < x.size(0); ++t) {
    for (int64_t h = 0; h < x.size(1); ++h) {
      for (int64_t j = 0; j < half; ++j) {
        const double c = ca[pa[t]][j], s = ca[pa[t]][half + j];
        const double x1 = xa[t][h][j], x2 = xa[t][h][half + j];
        oa[t][h][j] = x1 * c - x2 * s;
        oa[t][h][half + j] = x2 * c + x1 * s;
      }
    }
  }
  return out;
}

at::Tensor silu_gate_up_ref(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {  // float64, CPU
  return silu_and_mul_ref((at::matmul(x, w.t()) + b).contiguous());
}

// |out - ref| <= atol + rtol * |ref| everywhere. rtol: float32 sums a row in another order than the float64 loop
// (1e-4 is far above that, far below any indexing bug); bfloat16 rounds the result once: half an ulp, 2^-9.
bool close(const char* what, const at::Tensor& out, const at::Tensor& ref, at::ScalarType dtype,
           double bf16_atol = 1e-4) {
  const double rtol = dtype == at::kFloat ? 1e-4 : 1.0 / 256;
  const double atol = dtype == at::kFloat ? 1e-6 : bf16_atol;
  const at::Tensor o = f64(out);
  const at::Tensor err = (o - ref).abs();
  const bool ok = o.sizes() == ref.sizes() && (err <= atol + rtol * ref.abs()).all().item<bool>() &&
                  !o.isnan().any().item<bool>();
  EXPECT(ok, "%s (%s): max abs error %.3e", what, c10::toString(dtype), err.max().item<double>());
  return ok;
}

bool equal(const char* what, const at::Tensor& a, const at::Tensor& b) {
  const bool ok = at::equal(a.cpu(), b.cpu());
  EXPECT(ok, "%s: not bit-identical", what);
  return ok;
}

// ---- the tests ----------------------------------------------------------------------------------------------

void test_norms(at::Device dev, at::ScalarType dtype, int64_t rows, int64_t hidden) {
  const auto opt = at::TensorOptions().dtype(dtype).device(dev);
  const at::Tensor x = at::randn({rows, hidden}).to(opt);
  const at::Tensor res = (at::randn({rows, hidden}) * 2).to(opt);
  const at::Tensor w = (at::rand({hidden}) + 0.5).to(opt);
  const at::Tensor b = at::full({}, 0.75, at::TensorOptions().device(dev));
  const at::Tensor s = at::full({}, 1.25, at::TensorOptions().dtype(at::kBFloat16).device(dev));  // any float dtype

  close("rms_norm", rms_norm(x, w, kEps), rms_norm_ref(f64(x), f64(w)), dtype);

  auto [normed, new_res] = scaled_add_rms_norm(x, res, w, b, s, kEps);
  const at::Tensor ref_res = 1.25 * f64(res) + 0.75 * f64(x);
  close("scaled_add_rms_norm new_residual", new_res, ref_res, dtype);
  // The op normalises the residual sum as stored (rounded to dtype): so does the reference.
  close("scaled_add_rms_norm normed", normed, rms_norm_ref(f64(ref_res.to(dtype)), f64(w)), dtype);

  at::Tensor x2 = x.clone(), res2 = res.clone();
  scaled_add_rms_norm_(x2, res2, w, b, s, kEps);
  equal("scaled_add_rms_norm_ residual", res2, new_res);
  equal("scaled_add_rms_norm_ x", x2, normed);
  // Through strided views (column slices of wider buffers): written back, padding untouched.
  at::Tensor xw = at::zeros({rows, hidden + 3}, opt), rw = at::zeros({rows, hidden + 3}, opt);
  at::Tensor xv = xw.narrow(1, 0, hidden), rv = rw.narrow(1, 0, hidden);
  xv.copy_(x);
  rv.copy_(res);
  scaled_add_rms_norm_(xv, rv, w, b, s, kEps);
  equal("scaled_add_rms_norm_ strided x", xv, normed);
  equal("scaled_add_rms_norm_ strided residual", rv, new_res);
  EXPECT(xw.narrow(1, hidden, 3).eq(0).all().item<bool>(), "padding columns were written");
}

void test_silu_and_mul(at::Device dev, at::ScalarType dtype, int64_t rows, int64_t d) {
  const at::Tensor gu = (at::randn({rows, 2 * d}) * 3).to(at::TensorOptions().dtype(dtype).device(dev));
  close("silu_and_mul", silu_and_mul(gu), silu_and_mul_ref(f64(gu)), dtype);
}

// Both paths: the fused decode kernel (CPU: up to 2 tokens, CUDA: 16) and GEMM + silu_and_mul, with and without
// bias.
void test_silu_gate_up(at::Device dev, at::ScalarType dtype, int64_t hidden) {
  const auto opt = at::TensorOptions().dtype(dtype).device(dev);
  const int64_t inter = 37;
  const at::Tensor w = (at::randn({2 * inter, hidden}) / std::sqrt(static_cast<double>(hidden))).to(opt);
  const at::Tensor b = at::randn({2 * inter}).to(opt);
  const int64_t fused_max = dev.is_cpu() ? 2 : 16;
  for (int64_t tokens : {int64_t{1}, int64_t{2}, int64_t{16}, int64_t{17}}) {
    // Through the GEMM, gate and up are rounded to bfloat16 (as in the unfused model): an error of about
    // 2^-9 |gate| |up|, not relative to the output, which is small where gate is near zero.
    const double bf16_atol = tokens > fused_max ? 0.1 : 1e-4;
    const at::Tensor x = at::randn({tokens, hidden}).to(opt);
    close("silu_gate_up", silu_gate_up(x, w, b), silu_gate_up_ref(f64(x), f64(w), f64(b)), dtype, bf16_atol);
    close("silu_gate_up (no bias)", silu_gate_up(x, w, std::nullopt),
          silu_gate_up_ref(f64(x), f64(w), at::zeros({2 * inter}, at::kDouble)), dtype, bf16_atol);
  }
}

// q and k as views into one fused qkv buffer (token stride (qh + 2 kh) * hs), as an attention layer makes them.
void test_rotary(at::Device dev, at::ScalarType dtype, at::ScalarType cache_dtype, at::ScalarType pos_dtype,
                 int64_t rot_dim) {
  const int64_t tokens = 7, qh = 3, kh = 1, hs = 80, max_pos = 32;
  const auto opt = at::TensorOptions().dtype(dtype).device(dev);
  const at::Tensor qkv = at::randn({tokens, (qh + 2 * kh) * hs}).to(opt);
  at::Tensor q = qkv.narrow(1, 0, qh * hs).view({tokens, qh, hs});
  at::Tensor k = qkv.narrow(1, qh * hs, kh * hs).view({tokens, kh, hs});
  const at::Tensor v_before = qkv.narrow(1, (qh + kh) * hs, kh * hs).clone();
  const at::Tensor pos = at::randint(0, max_pos, {tokens}).to(at::TensorOptions().dtype(pos_dtype).device(dev));
  const at::Tensor cache =
      at::randn({max_pos, rot_dim}).to(at::TensorOptions().dtype(cache_dtype).device(dev));
  const at::Tensor q_expect = rotary_ref(f64(q), pos, f64(cache));
  const at::Tensor k_expect = rotary_ref(f64(k), pos, f64(cache));
  // Out of place from the same views: the in-place op's bits; inverse: the rotation with sin negated.
  const at::Tensor q_out = rotary_embedding_out(pos, q, cache, false);
  const at::Tensor c64 = f64(cache);
  const at::Tensor neg_sin = at::cat({c64.narrow(1, 0, rot_dim / 2), -c64.narrow(1, rot_dim / 2, rot_dim / 2)}, 1);
  close("rotary_embedding_out inverse", rotary_embedding_out(pos, q, cache, true), rotary_ref(f64(q), pos, neg_sin),
        dtype);
  rotary_embedding(pos, q, k, cache);
  equal("rotary_embedding_out == rotary_embedding", q_out, q);
  close("rotary_embedding q", q, q_expect, dtype);
  close("rotary_embedding k", k, k_expect, dtype);
  equal("rotary_embedding leaves v alone", qkv.narrow(1, (qh + kh) * hs, kh * hs), v_before);
}

void expect_error(const char* what, const std::function<void()>& fn, const std::string& needle) {
  std::string msg = "(no error raised)";
  try {
    fn();
  } catch (const c10::Error& e) {
    msg = e.what_without_backtrace();
  }
  EXPECT(msg.find(needle) != std::string::npos, "%s: expected an error containing \"%s\", got \"%s\"", what,
        needle.c_str(), msg.c_str());
}

void test_errors(at::Device dev) {
  const auto opt = at::TensorOptions().device(dev);
  expect_error("rms_norm weight shape", [&] { rms_norm(at::randn({4, 8}, opt), at::rand({9}, opt), kEps); },
               "rms_norm: weight has shape [9]; expected [8] (the last dimension of x)");
  expect_error("silu_and_mul odd width", [&] { silu_and_mul(at::randn({3, 7}, opt)); },
               "gate_up has shape [3, 7]; expected an even last dimension");
  expect_error("silu_gate_up weight shape",
               [&] { silu_gate_up(at::randn({3, 8}, opt), at::randn({6, 9}, opt), std::nullopt); },
               "silu_gate_up: gate_up_weight has shape [6, 9]; expected [2 * intermediate, 8]");
  // Written arguments (csrc/checks.h check_written_args): stored twice, or shared with another argument.
  expect_error("rotary_embedding expanded query",
               [&] {
                 at::Tensor q = at::randn({1, 2, 8}, opt).expand({3, 2, 8});
                 rotary_embedding(at::arange(3, opt.dtype(at::kLong)), q, std::nullopt, at::randn({16, 8}, opt));
               },
               "rotary_embedding: query has shape [3, 2, 8] and strides [0, 8, 1]; the op writes it");
  expect_error("scaled_add_rms_norm_ x as residual",
               [&] {
                 at::Tensor x = at::randn({3, 8}, opt);
                 scaled_add_rms_norm_(x, x, at::rand({8}, opt), at::ones({}, opt), at::ones({}, opt), kEps);
               },
               "scaled_add_rms_norm_: x and residual share memory");
}

void run_device(at::Device dev) {
  const int before = g_failures;
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    for (auto [rows, hidden] : std::vector<std::pair<int64_t, int64_t>>{{7, 769}, {5, 1024}}) {
      test_norms(dev, dtype, rows, hidden);
      test_silu_and_mul(dev, dtype, rows, hidden);
      test_silu_gate_up(dev, dtype, hidden);
    }
    for (at::ScalarType cache_dtype : {at::kFloat, dtype}) {
      test_rotary(dev, dtype, cache_dtype, at::kLong, 64);  // rot_dim 64 of head 80: partial, 16-byte path
      test_rotary(dev, dtype, cache_dtype, at::kInt, 20);   // half = 10: scalar path on CUDA
    }
  }
  test_errors(dev);
  std::printf("%s: %s\n", dev.str().c_str(), g_failures == before ? "ok" : "FAILED");
}

}  // namespace

int main() {
  at::manual_seed(0);
  run_device(at::Device(at::kCPU));
  expect_error(
      "rotary position out of range (CPU)",
      [] {
        at::Tensor q = at::randn({2, 1, 8});
        rotary_embedding(at::tensor({3, 16}), q, std::nullopt, at::randn({16, 8}));
      },
      "positions holds 16; expected 0 <= position < 16");
#ifdef HOPSCOTCH_WITH_CUDA
  if (torch::cuda::is_available()) {
    run_device(at::Device(at::kCUDA, 0));
  } else {
    std::printf("cuda: skipped: no GPU\n");
  }
#else
  std::printf("cuda: skipped: built without the CUDA kernels (HOPSCOTCH_WITH_CUDA=OFF)\n");
#endif
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
