// Dense reference kernels of every available ISA vs a float64 reference.
#include <cmath>
#include <limits>

#include "data.h"
#include "harness.h"
#include "kernels/dense/dense.h"

namespace sparseops::test {

void test_dense(Harness& h) {
  std::mt19937 rng(4321);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t Ms[] = {1, 2, 3, 7, 16, 17, 33};
  const int64_t Ks[] = {1, 13, 270, 595};  // none a multiple of 32; 595 spans three 256-column blocks
  for (Isa isa : available_isas()) {
    const dense::LinearFn fn = dense::linear_kernel(isa);
    for (DType d : {DType::f32, DType::bf16, DType::f16}) {
      for (int64_t K : Ks) {
        const int64_t O = 11, ldw = K + 1;
        Buf w(d, O * ldw), bias(d, O);
        fill_uniform(w, rng);
        fill_uniform(bias, rng);
        Buf wc(d, O * K);
        for (int64_t o = 0; o < O; ++o)
          for (int64_t k = 0; k < K; ++k) wc.set(o * K + k, w.get(o * ldw + k));
        for (int64_t M : Ms) {
          for (int with_bias = 0; with_bias < 2; ++with_bias) {
            const int64_t ldx = K + 2, ldy = O + 1;
            Buf x(d, M * ldx), y(d, M * ldy), xc(d, M * K);
            fill_uniform(x, rng);
            const bool nonfinite = M >= 2 && with_bias && K > 1;
            if (nonfinite) { x.set(0 * ldx + K / 2, inf); x.set((M - 1) * ldx, nan); }
            for (int64_t i = 0; i < M; ++i)
              for (int64_t k = 0; k < K; ++k) xc.set(i * K + k, x.get(i * ldx + k));
            const Buf* b = with_bias ? &bias : nullptr;
            dense::LinearArgs a{d, M, K, O, x.data(), ldx, w.data(), ldw, b ? b->data() : nullptr, y.data(), ldy};
            fn(a, 0, 6);
            fn(a, 6, O);
            std::vector<double> ref, scale;
            reference(xc, K, wc, b, M, O, K, ref, scale);
            int bad = 0;
            for (int64_t i = 0; i < M; ++i)
              for (int64_t o = 0; o < O; ++o)
                bad += !close(y.get(i * ldy + o), ref[i * O + o], scale[i * O + o], d, K);
            h.check(bad == 0, "dense %s %s M=%lld K=%lld bias=%d nonfinite=%d: %d bad outputs", isa_name(isa),
                    dtype_name(d), (long long)M, (long long)K, with_bias, nonfinite, bad);
          }
        }
      }
    }
  }
}

}  // namespace sparseops::test
