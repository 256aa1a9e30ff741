/*
 * test.h — Kafscale's tiny unit-test framework.
 *
 *     #include "test.h"
 *
 *     TEST(arena_grows) {
 *             ks_arena_t a;
 *             ks_arena_init(&a, 64);
 *             char *p = ks_arena_alloc(&a, 1000);
 *             REQUIRE(p != NULL);            // fails and returns from the test
 *             CHECK_EQ_INT(a.allocated, 1008); // fails, continues
 *             ks_arena_destroy(&a);
 *     }
 *
 * TEST(name) defines and registers (via a constructor) a test; names must be
 * unique across the binary.  CHECK* macros report "file:line: test: what"
 * and mark the current test failed but keep running it; REQUIRE* also
 * return from the test function (use them before dereferencing).
 *
 * The runner (test_main.c) runs every test, or only those whose name
 * contains argv[1]; it prints one line per failed check plus a summary and
 * exits non-zero if anything failed.  Tests run sequentially in one process,
 * ordered by file then line.
 */
#ifndef KS_TESTS_UNIT_TEST_H
#define KS_TESTS_UNIT_TEST_H

#include <stddef.h>
#include <string.h>

typedef void (*ks_test_fn_t)(void);

/* Registration and reporting (implemented in test_main.c). */
void ks_test_register(const char *name, ks_test_fn_t fn, const char *file, int line);
void ks_test_fail(const char *file, int line, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
/* Non-zero if the running test has failed so far. */
int ks_test_failed(void);
/* Hex-dump comparison helper behind CHECK_EQ_MEM; returns 1 if equal. */
int ks_test_mem_eq(const char *file, int line, const char *what, const void *a, size_t alen,
                   const void *b, size_t blen);

#define TEST(name)                                                                       \
        static void ks_tcase_##name(void);                                               \
        __attribute__((constructor)) static void ks_treg_##name(void)                    \
        {                                                                                \
                ks_test_register(#name, ks_tcase_##name, __FILE__, __LINE__);            \
        }                                                                                \
        static void ks_tcase_##name(void)

#define CHECK(cond)                                                                      \
        do {                                                                             \
                if (!(cond))                                                             \
                        ks_test_fail(__FILE__, __LINE__, "CHECK(%s) failed", #cond);     \
        } while (0)

#define CHECK_EQ_INT(a, b)                                                               \
        do {                                                                             \
                long long ks_a_ = (long long)(a), ks_b_ = (long long)(b);                \
                if (ks_a_ != ks_b_)                                                      \
                        ks_test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a,   \
                                     #b, ks_a_, ks_b_);                                  \
        } while (0)

/* Compares NUL-terminated strings; NULL equals only NULL. */
#define CHECK_EQ_STR(a, b)                                                               \
        do {                                                                             \
                const char *ks_a_ = (a), *ks_b_ = (b);                                   \
                if ((ks_a_ == NULL || ks_b_ == NULL) ? ks_a_ != ks_b_                    \
                                                     : strcmp(ks_a_, ks_b_) != 0)        \
                        ks_test_fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"",   \
                                     #a, #b, ks_a_ ? ks_a_ : "(null)",                   \
                                     ks_b_ ? ks_b_ : "(null)");                          \
        } while (0)

/* Compares two byte ranges; on mismatch prints the first differing offset
 * and hex dumps around it. */
#define CHECK_EQ_MEM(a, alen, b, blen)                                                   \
        ((void)ks_test_mem_eq(__FILE__, __LINE__, #a " == " #b, (a), (alen), (b), (blen)))

#define REQUIRE(cond)                                                                    \
        do {                                                                             \
                if (!(cond)) {                                                           \
                        ks_test_fail(__FILE__, __LINE__, "REQUIRE(%s) failed", #cond);   \
                        return;                                                          \
                }                                                                        \
        } while (0)

#define REQUIRE_EQ_INT(a, b)                                                             \
        do {                                                                             \
                long long ks_a_ = (long long)(a), ks_b_ = (long long)(b);                \
                if (ks_a_ != ks_b_) {                                                    \
                        ks_test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a,   \
                                     #b, ks_a_, ks_b_);                                  \
                        return;                                                          \
                }                                                                        \
        } while (0)

#endif
