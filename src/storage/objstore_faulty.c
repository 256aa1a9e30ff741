/*
 * objstore_faulty.c — a wrapper backend that injects faults into another
 * object store, for tests: the next N puts/gets/lists fail, calls are
 * throttled, a share of puts fail at random (seeded), puts and gets are
 * delayed, gets come back short or corrupt.  The fault plan is read with
 * atomics, so a test may change it while the broker runs.
 */
#include "storage/objstore_faulty.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct faulty {
        ks_objstore_t base;
        ks_objstore_t *inner;
        ks_objstore_faults_t *f;
} faulty_t;

static bool take_one(int *counter)
{
        int v = __atomic_load_n(counter, __ATOMIC_SEQ_CST);
        while (v > 0) {
                if (__atomic_compare_exchange_n(counter, &v, v - 1, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
                        return true;
        }
        return false;
}

static bool random_fail(ks_objstore_faults_t *f)
{
        int pct = __atomic_load_n(&f->put_fail_pct, __ATOMIC_SEQ_CST);
        if (pct <= 0)
                return false;
        /* xorshift32 on a shared seed: deterministic for one thread. */
        uint32_t x = __atomic_load_n(&f->seed, __ATOMIC_SEQ_CST);
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        __atomic_store_n(&f->seed, x ? x : 1, __ATOMIC_SEQ_CST);
        return (int)(x % 100) < pct;
}

static void delay(int *ms)
{
        int d = __atomic_load_n(ms, __ATOMIC_SEQ_CST);
        if (d > 0) {
                struct timespec ts = { d / 1000, (long)(d % 1000) * 1000000L };
                nanosleep(&ts, NULL);
        }
}

/* The call fails with an injected error (counted). */
static bool injected(ks_objstore_faults_t *f, int *fail_next)
{
        if (take_one(&f->slow_down)) {
                __atomic_add_fetch(&f->throttled, 1, __ATOMIC_SEQ_CST);
                __atomic_add_fetch(&f->injected, 1, __ATOMIC_SEQ_CST);
                return true;
        }
        if (fail_next && take_one(fail_next)) {
                __atomic_add_fetch(&f->injected, 1, __ATOMIC_SEQ_CST);
                return true;
        }
        return false;
}

static ks_err_t f_put(ks_objstore_t *s, const char *key, const struct iovec *iov, int iovcnt)
{
        faulty_t *fs = (faulty_t *)s;
        __atomic_add_fetch(&fs->f->puts, 1, __ATOMIC_SEQ_CST);
        delay(&fs->f->put_delay_ms);
        if (injected(fs->f, &fs->f->fail_puts))
                return KS_ERR__UNAVAILABLE;
        if (random_fail(fs->f)) {
                __atomic_add_fetch(&fs->f->injected, 1, __ATOMIC_SEQ_CST);
                return KS_ERR__UNAVAILABLE;
        }
        return fs->inner->ops->put(fs->inner, key, iov, iovcnt);
}

static ks_err_t f_get(ks_objstore_t *s, const char *key, int64_t offset, int64_t len, ks_objbuf_t *out)
{
        faulty_t *fs = (faulty_t *)s;
        __atomic_add_fetch(&fs->f->gets, 1, __ATOMIC_SEQ_CST);
        delay(&fs->f->get_delay_ms);
        if (injected(fs->f, &fs->f->fail_gets))
                return KS_ERR__UNAVAILABLE;
        ks_err_t err = fs->inner->ops->get(fs->inner, key, offset, len, out);
        if (err || out->len == 0)
                return err;
        if (take_one(&fs->f->short_gets)) {
                out->len /= 2; /* the buffer stays as allocated; only fewer bytes count */
                __atomic_add_fetch(&fs->f->injected, 1, __ATOMIC_SEQ_CST);
        } else if (take_one(&fs->f->corrupt_gets)) {
                out->data[out->len / 2] ^= 0x10;
                __atomic_add_fetch(&fs->f->injected, 1, __ATOMIC_SEQ_CST);
        }
        return 0;
}

static ks_err_t f_list(ks_objstore_t *s, const char *prefix, ks_objlist_t *out)
{
        faulty_t *fs = (faulty_t *)s;
        __atomic_add_fetch(&fs->f->lists, 1, __ATOMIC_SEQ_CST);
        if (injected(fs->f, &fs->f->fail_lists)) {
                memset(out, 0, sizeof(*out));
                return KS_ERR__UNAVAILABLE;
        }
        return fs->inner->ops->list(fs->inner, prefix, out);
}

static ks_err_t f_del(ks_objstore_t *s, const char *key)
{
        faulty_t *fs = (faulty_t *)s;
        if (injected(fs->f, NULL))
                return KS_ERR__UNAVAILABLE;
        return fs->inner->ops->del(fs->inner, key);
}

static ks_err_t f_check(ks_objstore_t *s, char *msg, size_t len)
{
        return ((faulty_t *)s)->inner->ops->check(((faulty_t *)s)->inner, msg, len);
}

static void f_destroy(ks_objstore_t *s)
{
        free(s); /* the inner store belongs to the caller */
}

static const ks_objstore_ops_t faulty_ops = {
        .name = "faulty",
        .put = f_put,
        .get = f_get,
        .list = f_list,
        .del = f_del,
        .check = f_check,
        .destroy = f_destroy,
};

ks_err_t ks_objstore_faulty_new(ks_objstore_t *inner, ks_objstore_faults_t *faults, ks_objstore_t **out)
{
        faulty_t *fs = calloc(1, sizeof(*fs));
        if (!fs)
                return KS_ERR__NOMEM;
        fs->base.ops = &faulty_ops;
        fs->inner = inner;
        fs->f = faults;
        *out = &fs->base;
        return 0;
}
