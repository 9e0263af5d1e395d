// Wide-vector builds of the hot CPU loops. A function marked KDOPS_CPU_CLONES is compiled three times
// (AVX-512, AVX2 + FMA, baseline x86-64) and the dynamic loader binds the widest one the machine runs
// (GCC function multiversioning through an ifunc), so one wheel is both portable and fast: the extension
// itself is built for baseline x86-64, where the exp-heavy row loops run 2-3x slower than with AVX-512.
// Mark whole row ranges, never single elements: a clone is reached through an indirect call.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(KDOPS_NO_CPU_CLONES)
#define KDOPS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KDOPS_CPU_CLONES
#endif
