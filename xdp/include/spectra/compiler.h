/* compiler.h - code-generation helpers every Spectra BPF program needs.
 *
 * barrier_var(x): an empty asm that claims to read and write `x`, so clang cannot
 * fold two bounds checks of the same register into one range test on a copy; the
 * verifier must see each bound on the register the helper call then uses (libbpf's
 * bpf_helpers.h has the same macro; bcc does not ship it).
 */
#ifndef SPECTRA_COMPILER_H
#define SPECTRA_COMPILER_H

#ifndef barrier_var
#define barrier_var(x) asm volatile("" : "+r"(x))
#endif

#endif /* SPECTRA_COMPILER_H */
