// LP_MULTIVERSION marks a hot loop function to be compiled for x86-64-v4
// (AVX-512), x86-64-v3 (AVX2, FMA) and baseline x86-64, the best chosen at
// load time (GCC/Clang target_clones, ifunc). Elsewhere it is empty.
//
// Vector width changes the order of floating-point reductions, so results
// are bit-reproducible on one kind of CPU (the tests hold there), not across
// CPUs of different vector widths.
#ifndef LLAMAPRO_BASE_MULTIVERSION_H_
#define LLAMAPRO_BASE_MULTIVERSION_H_

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) && \
    !defined(__SANITIZE_ADDRESS__)
#define LP_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LP_MULTIVERSION
#endif

#endif  // LLAMAPRO_BASE_MULTIVERSION_H_
