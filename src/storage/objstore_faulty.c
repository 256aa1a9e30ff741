/*
 * objstore_faulty.c — a wrapper backend that injects faults into another
 * object store, for tests: the next N puts/gets fail, a share of puts fail
 * at random (seeded), every put is delayed.  The fault plan is read with
 * atomics, so a test may change it while the broker runs.
 */
#include "storage/objstore_faulty.h"

#include <stdlib.h>
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

static ks_err_t f_put(ks_objstore_t *s, const char *key, const struct iovec *iov, int iovcnt)
{
        faulty_t *fs = (faulty_t *)s;
        __atomic_add_fetch(&fs->f->puts, 1, __ATOMIC_SEQ_CST);
        int delay = __atomic_load_n(&fs->f->put_delay_ms, __ATOMIC_SEQ_CST);
        if (delay > 0) {
                struct timespec ts = { delay / 1000, (long)(delay % 1000) * 1000000L };
                nanosleep(&ts, NULL);
        }
        if (take_one(&fs->f->fail_puts) || random_fail(fs->f)) {
                __atomic_add_fetch(&fs->f->injected, 1, __ATOMIC_SEQ_CST);
                return KS_ERR__UNAVAILABLE;
        }
        return fs->inner->ops->put(fs->inner, key, iov, iovcnt);
}

static ks_err_t f_get(ks_objstore_t *s, const char *key, int64_t offset, int64_t len, ks_objbuf_t *out)
{
        faulty_t *fs = (faulty_t *)s;
        __atomic_add_fetch(&fs->f->gets, 1, __ATOMIC_SEQ_CST);
        if (take_one(&fs->f->fail_gets)) {
                __atomic_add_fetch(&fs->f->injected, 1, __ATOMIC_SEQ_CST);
                return KS_ERR__UNAVAILABLE;
        }
        return fs->inner->ops->get(fs->inner, key, offset, len, out);
}

static ks_err_t f_list(ks_objstore_t *s, const char *prefix, ks_objlist_t *out)
{
        return ((faulty_t *)s)->inner->ops->list(((faulty_t *)s)->inner, prefix, out);
}

static ks_err_t f_del(ks_objstore_t *s, const char *key)
{
        return ((faulty_t *)s)->inner->ops->del(((faulty_t *)s)->inner, key);
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
