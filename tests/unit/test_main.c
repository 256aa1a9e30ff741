/*
 * test_main.c — runner for the unit tests registered with TEST() (test.h).
 *
 * Usage: kafscale-unit-tests [-v] [substring]
 *   runs every test whose name contains the substring (all if omitted);
 *   -v also prints each test's name as it runs.
 */
#include "test.h"
#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
        const char *name;
        ks_test_fn_t fn;
        const char *file;
        int line;
} test_ent_t;

static test_ent_t *tests;
static size_t ntests, cap_tests;

static const char *cur_name = "(none)";
static int cur_failures;

void ks_test_register(const char *name, ks_test_fn_t fn, const char *file, int line)
{
        if (ntests == cap_tests) {
                size_t ncap = cap_tests ? cap_tests * 2 : 64;
                test_ent_t *n = realloc(tests, ncap * sizeof(*n));
                if (!n) {
                        fprintf(stderr, "test registry: out of memory\n");
                        abort();
                }
                tests = n;
                cap_tests = ncap;
        }
        tests[ntests++] = (test_ent_t){ name, fn, file, line };
}

void ks_test_fail(const char *file, int line, const char *fmt, ...)
{
        va_list ap;
        cur_failures++;
        fprintf(stdout, "%s:%d: %s: ", file, line, cur_name);
        va_start(ap, fmt);
        vfprintf(stdout, fmt, ap);
        va_end(ap);
        fputc('\n', stdout);
        fflush(stdout);
}

int ks_test_failed(void)
{
        return cur_failures > 0;
}

static void hex_window(char *out, size_t outsz, const unsigned char *p, size_t len, size_t at)
{
        size_t from = at > 8 ? at - 8 : 0, to = at + 8 < len ? at + 8 : len;
        size_t o = 0;
        out[0] = '\0';
        for (size_t i = from; i < to && o + 4 < outsz; i++)
                o += (size_t)snprintf(out + o, outsz - o, i == at ? "[%02x]" : "%02x ", p[i]);
}

int ks_test_mem_eq(const char *file, int line, const char *what, const void *a, size_t alen,
                   const void *b, size_t blen)
{
        const unsigned char *x = a, *y = b;
        size_t n = alen < blen ? alen : blen, i = 0;
        while (i < n && x[i] == y[i])
                i++;
        if (i == n && alen == blen)
                return 1;
        char ha[128], hb[128];
        hex_window(ha, sizeof(ha), x, alen, i);
        hex_window(hb, sizeof(hb), y, blen, i);
        ks_test_fail(file, line, "%s: lengths %zu/%zu, first difference at %zu: %s vs %s", what,
                     alen, blen, i, ha, hb);
        return 0;
}

static int cmp_tests(const void *pa, const void *pb)
{
        const test_ent_t *a = pa, *b = pb;
        int c = strcmp(a->file, b->file);
        if (c)
                return c;
        return (a->line > b->line) - (a->line < b->line);
}

int main(int argc, char **argv)
{
        /* Only warnings and errors from the code under test, unless asked. */
        if (!getenv("KAFSCALE_LOG_LEVEL"))
                ks_log_set_level(KS_LOG_WARN);
        const char *filter = NULL;
        int verbose = 0;
        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "-v") == 0)
                        verbose = 1;
                else
                        filter = argv[i];
        }
        if (ntests)
                qsort(tests, ntests, sizeof(*tests), cmp_tests);

        size_t run = 0, failed = 0;
        for (size_t i = 0; i < ntests; i++) {
                if (filter && !strstr(tests[i].name, filter))
                        continue;
                cur_name = tests[i].name;
                cur_failures = 0;
                if (verbose) {
                        printf("RUN  %s\n", cur_name);
                        fflush(stdout);
                }
                tests[i].fn();
                run++;
                if (cur_failures) {
                        failed++;
                        printf("FAIL %s (%s:%d, %d failed checks)\n", cur_name, tests[i].file,
                               tests[i].line, cur_failures);
                }
        }
        printf("%zu tests run, %zu passed, %zu failed\n", run, run - failed, failed);
        free(tests);
        if (run == 0 && filter) {
                printf("no test matches \"%s\"\n", filter);
                return 1;
        }
        return failed ? 1 : 0;
}
