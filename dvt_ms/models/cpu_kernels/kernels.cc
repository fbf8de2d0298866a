// Fused CPU kernels for MindSpore ops.Custom(func_type="aot"): exact GELU and LayerNorm, forward
// and backward (dvt_ms/models/cpu_kernels/__init__.py builds and loads them). MindSpore AOT interface:
//   int f(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra)
// with the inputs first, then the outputs; a non-zero return is an error.
#include <cstdint>
#include <cstring>
#include <cmath>
#include <vector>
#include <thread>
#include <algorithm>
#include <cstdlib>

namespace {

// erf: Eigen's float rational approximation on clamp(x, -4, 4) (<= 7 ulp in float arithmetic).
inline float erf_f(float a) {
  const float x = a < -4.f ? -4.f : (a > 4.f ? 4.f : a);
  const float x2 = x * x;
  float p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
  p = x2 * p + -2.10102402082508e-06f;
  p = x2 * p + -5.69250639462346e-05f;
  p = x2 * p + -7.34990630326855e-04f;
  p = x2 * p + -2.95459980854025e-03f;
  p = x2 * p + -1.60960333262415e-02f;
  p = x * p;
  float q = x2 * -1.45660718464996e-05f + -2.13374055278905e-04f;
  q = x2 * q + -1.68282697438203e-03f;
  q = x2 * q + -7.37332916720468e-03f;
  q = x2 * q + -1.42647390514189e-02f;
  return p / q;
}

// exp: Cephes expf (Cody-Waite reduction + degree-6 polynomial), ~1 ulp. Written so GCC vectorises it:
// ternary clamps (std::fmin/fmax and std::floor block vectorisation without -ffast-math) and
// round-to-nearest through the 1.5 * 2^23 trick.
inline float exp_f(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float t = x * 1.44269504088896341f + 12582912.f;
  const float n = t - 12582912.f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (__builtin_bit_cast(int32_t, t) - 0x4B400000 + 127) << 23;   // 2^n
  return y * __builtin_bit_cast(float, bits);
}

inline int64_t numel(int nd, const int64_t *s) {
  int64_t n = 1;
  for (int i = 0; i < nd; ++i) n *= s[i];
  return n;
}

// Threads: plain std::thread per call (no OpenMP runtime: libgomp's spinning workers fight MindSpore's own
// thread pool on a small machine). DVT_KERNEL_THREADS overrides the count.
inline int max_threads() {
  static const int n = [] {
    const char *env = std::getenv("DVT_KERNEL_THREADS");
    int v = env ? std::atoi(env) : static_cast<int>(std::thread::hardware_concurrency());
    return std::max(1, std::min(v, 64));
  }();
  return n;
}

inline int threads_for(int64_t work) { return work < (1 << 16) ? 1 : max_threads(); }

// fn(begin, end) over [0, n) split into nt contiguous chunks; chunk t runs on thread t (0 = caller).
template <class F>
void parallel_for(int64_t n, int nt, F fn) {
  if (nt <= 1 || n < 2) { fn(int64_t(0), n, 0); return; }
  nt = static_cast<int>(std::min<int64_t>(nt, n));
  std::vector<std::thread> pool;
  pool.reserve(nt - 1);
  for (int t = 1; t < nt; ++t)
    pool.emplace_back([=] { fn(n * t / nt, n * (t + 1) / nt, t); });
  fn(int64_t(0), n / nt, 0);
  for (auto &th : pool) th.join();
}

inline bool all_f32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  return true;
}

}  // namespace

// y = x * 0.5 * (1 + erf(x / sqrt 2))
extern "C" int GeluErf(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                       void *, void *) {
  if (nparam != 2 || !all_f32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t n = numel(ndims[0], shapes[0]);
  parallel_for(n, threads_for(n), [=](int64_t lo, int64_t hi, int) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) {
      const float v = x[i];
      y[i] = v * 0.5f * (1.f + erf_f(v * 0.70710678118654752f));
    }
  });
  return 0;
}

// dx = dy * (Phi(x) + x * phi(x))
extern "C" int GeluErfGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *, void *) {
  if (nparam != 3 || !all_f32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t n = numel(ndims[0], shapes[0]);
  parallel_for(n, threads_for(n), [=](int64_t lo, int64_t hi, int) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) {
      const float v = x[i];
      const float cdf = 0.5f * (1.f + erf_f(v * 0.70710678118654752f));
      const float pdf = exp_f(-0.5f * v * v) * 0.39894228040143268f;
      dx[i] = dy[i] * (cdf + v * pdf);
    }
  });
  return 0;
}

// LayerNorm over the last axis. Inputs x (..., D), gamma (D), beta (D), eps (1,).
// Outputs y (..., D), mean (rows,), rstd (rows,). Row statistics accumulated in double.
extern "C" int LayerNormFwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *, void *) {
  if (nparam != 7 || !all_f32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *g = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  const float eps = static_cast<const float *>(params[3])[0];
  float *y = static_cast<float *>(params[4]);
  float *mean_out = static_cast<float *>(params[5]);
  float *rstd_out = static_cast<float *>(params[6]);
  const int64_t d = shapes[0][ndims[0] - 1];
  const int64_t rows = numel(ndims[0], shapes[0]) / d;
  parallel_for(rows, threads_for(rows * d), [=](int64_t lo, int64_t hi, int) {
  for (int64_t r = lo; r < hi; ++r) {
    const float *xr = x + r * d;
    float *yr = y + r * d;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < d; ++j) s += xr[j];
    const double mean = s / d;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < d; ++j) { const double c = xr[j] - mean; ss += c * c; }
    const float rstd = static_cast<float>(1.0 / std::sqrt(ss / d + static_cast<double>(eps)));
    const float m = static_cast<float>(mean);
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) yr[j] = (xr[j] - m) * rstd * g[j] + b[j];
    mean_out[r] = m;
    rstd_out[r] = rstd;
  }
  });
  return 0;
}

// Inputs x, gamma, mean, rstd, dy. Outputs dx, dgamma, dbeta.
// xhat = (x - mean) * rstd;  dxhat = dy * gamma;
// dx = rstd * (dxhat - mean_j(dxhat) - xhat * mean_j(dxhat * xhat));  dgamma = sum_rows dy*xhat; dbeta = sum_rows dy
extern "C" int LayerNormBwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *, void *) {
  if (nparam != 8 || !all_f32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *g = static_cast<const float *>(params[1]);
  const float *mean = static_cast<const float *>(params[2]);
  const float *rstd = static_cast<const float *>(params[3]);
  const float *dy = static_cast<const float *>(params[4]);
  float *dx = static_cast<float *>(params[5]);
  float *dg = static_cast<float *>(params[6]);
  float *db = static_cast<float *>(params[7]);
  const int64_t d = shapes[0][ndims[0] - 1];
  const int64_t rows = numel(ndims[0], shapes[0]) / d;
  const int nt = threads_for(rows * d);
  std::vector<double> part_g(static_cast<size_t>(nt) * d, 0.0), part_b(static_cast<size_t>(nt) * d, 0.0);
  double *part_g_data = part_g.data(), *part_b_data = part_b.data();
  parallel_for(rows, nt, [=](int64_t lo, int64_t hi, int t) {
    double *pg = part_g_data + static_cast<size_t>(t) * d;
    double *pb = part_b_data + static_cast<size_t>(t) * d;
    for (int64_t r = lo; r < hi; ++r) {
      const float *xr = x + r * d, *dyr = dy + r * d;
      float *dxr = dx + r * d;
      const float m = mean[r], rs = rstd[r];
      float s1 = 0.f, s2 = 0.f;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t j = 0; j < d; ++j) {
        const float xh = (xr[j] - m) * rs;
        const float dxh = dyr[j] * g[j];
        s1 += dxh;
        s2 += dxh * xh;
        pg[j] += static_cast<double>(dyr[j] * xh);
        pb[j] += static_cast<double>(dyr[j]);
      }
      const float a = s1 / d, c = s2 / d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) {
        const float xh = (xr[j] - m) * rs;
        dxr[j] = rs * (dyr[j] * g[j] - a - xh * c);
      }
    }
  });
  for (int64_t j = 0; j < d; ++j) {
    double sg = 0.0, sb = 0.0;
    for (int t = 0; t < nt; ++t) { sg += part_g[static_cast<size_t>(t) * d + j]; sb += part_b[static_cast<size_t>(t) * d + j]; }
    dg[j] = static_cast<float>(sg);
    db[j] = static_cast<float>(sb);
  }
  return 0;
}
