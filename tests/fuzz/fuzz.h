/*
 * fuzz.h — shared by the libFuzzer targets in tests/fuzz/.
 */
#ifndef KS_TESTS_FUZZ_FUZZ_H
#define KS_TESTS_FUZZ_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An invariant of the code under test: report it and abort, so libFuzzer
 * keeps the input as a crash. */
#define FUZZ_ASSERT(cond)                                                                \
        do {                                                                             \
                if (!(cond)) {                                                           \
                        fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__,       \
                                __LINE__, #cond);                                        \
                        abort();                                                         \
                }                                                                        \
        } while (0)

#endif
