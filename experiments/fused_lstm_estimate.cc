// How fast could a hand-written fused kernel run the learned optimizer's LSTM step here?
//
// The step of the default optimizer (2 x 20 coordinatewise LSTM, LogAndSign k = 20) on the
// MNIST MLP's 15,910 coordinates, fused per coordinate (preprocess, both layers, output) and
// vectorized by hand with AVX-512, 4 coordinates at a time, over OpenMP threads. Not part of
// the library: it answers BUILD_NOTES.md's question whether a custom op could meet the fit
// target that TensorFlow's own ops cannot (see "Speed and memory"). Random weights: the cost
// does not depend on them. It checks itself against a plain scalar version of the same math.
//
//   g++ -O3 -march=native -fopenmp experiments/fused_lstm_estimate.cc -o /tmp/fused_lstm
//   OMP_NUM_THREADS=2 /tmp/fused_lstm
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

constexpr int kUnits = 20, kGates = 4 * kUnits, kRows = 4, kRepeats = 300;
constexpr float kLogAndSignK = 20.f, kExpK = 4.85165195e8f, kScale = 0.1f;  // e^20

struct Weights {
  std::vector<float> w1, b1, w2, b2, linear;  // [22, 80], [80], [40, 80], [80], [20]
};

struct State {  // per coordinate, as LearnedOptimizer's slots: [n, 20] each
  explicit State(int n) : h1(n * kUnits), c1(n * kUnits), h2(n * kUnits), c2(n * kUnits) {}
  std::vector<float> h1, c1, h2, c2;
};

// exp by range reduction to 2^f, f in [-0.5, 0.5], degree-6 polynomial: ~1e-7 relative;
// |x| <= 80 keeps every result a normal float (denormals would cost microcode assists).
static inline __m512 Exp(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(80.f)), _mm512_set1_ps(-80.f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.535336188e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

static inline __m512 Sigmoid(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  return _mm512_div_ps(one, _mm512_add_ps(one, Exp(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

// One LSTM layer for kRows coordinates: inputs [kRows][size], h and c [kRows][kUnits].
static inline void Layer(const float* inputs, int size, const float* w, const float* b,
                         float* h, float* c) {
  __m512 gates[kRows][5];
  for (auto& row : gates)
    for (int q = 0; q < 5; ++q) row[q] = _mm512_loadu_ps(b + 16 * q);
  for (int k = 0; k < size; ++k) {  // kRows x 5 independent FMA chains hide the latency
    __m512 wk[5];
    for (int q = 0; q < 5; ++q) wk[q] = _mm512_loadu_ps(w + k * kGates + 16 * q);
    for (int r = 0; r < kRows; ++r) {
      const __m512 a = _mm512_set1_ps(inputs[r * size + k]);
      for (int q = 0; q < 5; ++q) gates[r][q] = _mm512_fmadd_ps(a, wk[q], gates[r][q]);
    }
  }
  const __m512 two = _mm512_set1_ps(2.f), one = _mm512_set1_ps(1.f);
  for (int r = 0; r < kRows; ++r) {
    alignas(64) float g[kGates];
    for (int q = 0; q < 5; ++q) _mm512_store_ps(g + 16 * q, Sigmoid(gates[r][q]));
    for (int offset = 0; offset < kUnits; offset += 16) {
      const __mmask16 m = kUnits - offset >= 16 ? 0xFFFF : (1u << (kUnits - offset)) - 1;
      const __m512 i = _mm512_maskz_loadu_ps(m, g + offset);
      const __m512 j = _mm512_maskz_loadu_ps(m, g + kUnits + offset);  // tanh = 2 sigm(2x) - 1
      const __m512 f = _mm512_maskz_loadu_ps(m, g + 2 * kUnits + offset);
      const __m512 o = _mm512_maskz_loadu_ps(m, g + 3 * kUnits + offset);
      __m512 cell = _mm512_maskz_loadu_ps(m, c + r * kUnits + offset);
      cell = _mm512_fmadd_ps(cell, f, _mm512_mul_ps(i, _mm512_fmsub_ps(two, j, one)));
      const __m512 tanh_cell = _mm512_fmsub_ps(two, Sigmoid(_mm512_mul_ps(two, cell)), one);
      _mm512_mask_storeu_ps(c + r * kUnits + offset, m, cell);
      _mm512_mask_storeu_ps(h + r * kUnits + offset, m, _mm512_mul_ps(tanh_cell, o));
    }
  }
}

static inline void Features(float gradient, float* out) {
  out[0] = std::max(std::log(std::fabs(gradient) + 1.1920929e-7f) / kLogAndSignK, -1.f);
  out[1] = std::clamp(gradient * kExpK, -1.f, 1.f);
}

// The fused step on rows [0, n), n a multiple of kRows.
void FusedStep(const Weights& w, const float* gradient, int n, State& state, float* update) {
  float *h1 = state.h1.data(), *c1 = state.c1.data(), *h2 = state.h2.data(),
        *c2 = state.c2.data();
#pragma omp parallel for schedule(static)
  for (int row = 0; row < n; row += kRows) {
    alignas(64) float in1[kRows * 22], in2[kRows * 40];
    for (int r = 0; r < kRows; ++r) {
      const int x = row + r;
      Features(gradient[x], in1 + r * 22);
      std::copy_n(h1 + x * kUnits, kUnits, in1 + r * 22 + 2);
    }
    Layer(in1, 22, w.w1.data(), w.b1.data(), h1 + row * kUnits, c1 + row * kUnits);
    for (int r = 0; r < kRows; ++r) {
      const int x = row + r;
      std::copy_n(h1 + x * kUnits, kUnits, in2 + r * 40);
      std::copy_n(h2 + x * kUnits, kUnits, in2 + r * 40 + kUnits);
    }
    Layer(in2, 40, w.w2.data(), w.b2.data(), h2 + row * kUnits, c2 + row * kUnits);
    for (int r = 0; r < kRows; ++r) {
      float sum = 0.f;
      for (int u = 0; u < kUnits; ++u) sum += h2[(row + r) * kUnits + u] * w.linear[u];
      update[row + r] = kScale * sum;
    }
  }
}

// The same math, one coordinate at a time with libm: the check.
void ReferenceLayer(const float* in, int size, const float* w, const float* b, float* h,
                    float* c) {
  float g[kGates];
  for (int j = 0; j < kGates; ++j) {
    g[j] = b[j];
    for (int k = 0; k < size; ++k) g[j] += in[k] * w[k * kGates + j];
    g[j] = 1.f / (1.f + std::exp(-g[j]));
  }
  for (int u = 0; u < kUnits; ++u) {
    c[u] = c[u] * g[2 * kUnits + u] + g[u] * (2.f * g[kUnits + u] - 1.f);
    h[u] = std::tanh(c[u]) * g[3 * kUnits + u];
  }
}

void ReferenceStep(const Weights& w, const float* gradient, int n, State& state,
                   float* update) {
  float *h1 = state.h1.data(), *c1 = state.c1.data(), *h2 = state.h2.data(),
        *c2 = state.c2.data();
  for (int x = 0; x < n; ++x) {
    float in1[22], in2[40];
    Features(gradient[x], in1);
    std::copy_n(h1 + x * kUnits, kUnits, in1 + 2);
    ReferenceLayer(in1, 22, w.w1.data(), w.b1.data(), h1 + x * kUnits, c1 + x * kUnits);
    std::copy_n(h1 + x * kUnits, kUnits, in2);
    std::copy_n(h2 + x * kUnits, kUnits, in2 + kUnits);
    ReferenceLayer(in2, 40, w.w2.data(), w.b2.data(), h2 + x * kUnits, c2 + x * kUnits);
    float sum = 0.f;
    for (int u = 0; u < kUnits; ++u) sum += h2[x * kUnits + u] * w.linear[u];
    update[x] = kScale * sum;
  }
}

int main() {
  const int coordinates = 15910;  // the MNIST MLP 784-20-10
  const int n = (coordinates + kRows - 1) / kRows * kRows;
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.f, 0.3f);
  auto draw = [&](int size, float factor) {
    std::vector<float> v(size);
    for (float& x : v) x = factor * normal(rng);
    return v;
  };
  const Weights w{draw(22 * kGates, 1.f), draw(kGates, 1.f), draw(40 * kGates, 1.f),
                  draw(kGates, 1.f), draw(kUnits, 1.f)};
  const std::vector<float> gradient = draw(n, 1e-3f);
  State state(n), reference_state(n);
  std::vector<float> update(n), reference_update(n);
  for (int step = 0; step < 3; ++step) {  // a few steps so the states are not zero
    FusedStep(w, gradient.data(), n, state, update.data());
    ReferenceStep(w, gradient.data(), n, reference_state, reference_update.data());
  }
  float max_difference = 0.f;
  for (int x = 0; x < n; ++x)
    max_difference = std::max(max_difference, std::fabs(update[x] - reference_update[x]));
  double best = 1e9, total = 0.0;
  for (int repeat = 0; repeat < kRepeats; ++repeat) {
    const auto start = std::chrono::steady_clock::now();
    FusedStep(w, gradient.data(), n, state, update.data());
    const double ms = std::chrono::duration<double, std::milli>(
        std::chrono::steady_clock::now() - start).count();
    best = std::min(best, ms);
    total += ms;
  }
  std::printf("fused LSTM step, %d coordinates: min %.2f ms, mean %.2f ms over %d calls; "
              "max |update - scalar reference| after 3 steps %.1e\n",
              coordinates, best, total / kRepeats, kRepeats, max_difference);
  return max_difference < 1e-5f ? 0 : 1;
}
