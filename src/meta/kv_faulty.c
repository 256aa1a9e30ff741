/*
 * kv_faulty.c — a wrapper backend that injects faults into another
 * metadata store, for tests (see kv_faulty.h for the plan and the order in
 * which faults are chosen).  Calls go to the inner backend's vtable
 * directly, so the metrics of kv.c count each request once.
 */
#include "meta/kv_faulty.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct faulty {
        ks_kv_t base;
        ks_kv_t *inner;
        ks_kv_faults_t *f;
} faulty_t;

typedef enum { F_NONE, F_FAIL, F_UNKNOWN, F_CONFLICT, F_LEASE_LOST } fault_t;

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_SEQ_CST)
#define INC(x) __atomic_add_fetch(&(x), 1, __ATOMIC_SEQ_CST)

static bool take_one(int *counter)
{
        int v = __atomic_load_n(counter, __ATOMIC_SEQ_CST);
        while (v > 0) {
                if (__atomic_compare_exchange_n(counter, &v, v - 1, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
                        return true;
        }
        return false;
}

/* xorshift32 on the shared seed, advanced atomically: 0..99. */
static int draw(ks_kv_faults_t *f)
{
        uint32_t x = LOAD(f->seed), next;
        do {
                next = x ? x : 1;
                next ^= next << 13;
                next ^= next >> 17;
                next ^= next << 5;
        } while (!__atomic_compare_exchange_n(&f->seed, &x, next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
        return (int)(next % 100);
}

/* Counts the call, waits the delay, and picks this call's fault. */
static fault_t choose(faulty_t *fk, ks_kv_fault_kind_t kind)
{
        ks_kv_faults_t *f = fk->f;
        INC(f->calls[kind]);
        int delay = LOAD(f->delay_ms);
        if (delay > 0) {
                struct timespec ts = { delay / 1000, (long)(delay % 1000) * 1000000L };
                nanosleep(&ts, NULL);
        }
        if (LOAD(f->down) || take_one(&f->fail_next[kind]))
                return F_FAIL;
        if (kind == KS_KV_FAULT_LEASE_KEEPALIVE && take_one(&f->lose_leases))
                return F_LEASE_LOST;
        if (kind == KS_KV_FAULT_TXN && take_one(&f->conflict_next))
                return F_CONFLICT;
        if (take_one(&f->unknown_next[kind]))
                return F_UNKNOWN;
        int fail = LOAD(f->fail_pct), unknown = LOAD(f->unknown_pct);
        int conflict = kind == KS_KV_FAULT_TXN ? LOAD(f->conflict_pct) : 0;
        if (fail + unknown + conflict <= 0)
                return F_NONE;
        int r = draw(f);
        if (r < fail)
                return F_FAIL;
        if (r < fail + unknown)
                return F_UNKNOWN;
        if (r < fail + unknown + conflict)
                return F_CONFLICT;
        return F_NONE;
}

static ks_err_t failed(faulty_t *fk)
{
        INC(fk->f->failed);
        return KS_ERR__UNAVAILABLE;
}

/* The inner call's answer, replaced by an error if it applied and the
 * outcome is to be unknown. */
static ks_err_t outcome(faulty_t *fk, fault_t ft, ks_err_t err)
{
        if (ft != F_UNKNOWN || err)
                return err;
        INC(fk->f->unknown);
        return KS_ERR__UNAVAILABLE;
}

static ks_err_t f_range(ks_kv_t *kv, const void *key, size_t key_len, const void *end, size_t end_len,
                        ks_kv_result_t *out)
{
        faulty_t *fk = (faulty_t *)kv;
        fault_t ft = choose(fk, KS_KV_FAULT_RANGE);
        if (ft == F_FAIL) {
                memset(out, 0, sizeof(*out));
                return failed(fk);
        }
        ks_err_t err = fk->inner->ops->range(fk->inner, key, key_len, end, end_len, out);
        if (ft == F_UNKNOWN && !err) {
                ks_kv_result_free(out);
                memset(out, 0, sizeof(*out));
        }
        return outcome(fk, ft, err);
}

static ks_err_t f_put(ks_kv_t *kv, const void *key, size_t key_len, const void *value, size_t value_len,
                      int64_t lease, int64_t *revision)
{
        faulty_t *fk = (faulty_t *)kv;
        fault_t ft = choose(fk, KS_KV_FAULT_PUT);
        if (ft == F_FAIL)
                return failed(fk);
        return outcome(fk, ft, fk->inner->ops->put(fk->inner, key, key_len, value, value_len, lease, revision));
}

static ks_err_t f_delete(ks_kv_t *kv, const void *key, size_t key_len, const void *end, size_t end_len,
                         int64_t *deleted, int64_t *revision)
{
        faulty_t *fk = (faulty_t *)kv;
        fault_t ft = choose(fk, KS_KV_FAULT_DELETE);
        if (ft == F_FAIL)
                return failed(fk);
        return outcome(fk, ft,
                       fk->inner->ops->delete_range(fk->inner, key, key_len, end, end_len, deleted, revision));
}

static ks_err_t f_txn(ks_kv_t *kv, const ks_kv_cmp_t *cmps, size_t ncmps, const ks_kv_op_t *success,
                      size_t nsuccess, const ks_kv_op_t *failure, size_t nfailure, bool *succeeded,
                      int64_t *revision)
{
        faulty_t *fk = (faulty_t *)kv;
        fault_t ft = choose(fk, KS_KV_FAULT_TXN);
        if (ft == F_FAIL)
                return failed(fk);
        if (ft == F_CONFLICT) {
                /* As if a compare failed: the failure branch, unconditionally. */
                bool ignored;
                ks_err_t err = fk->inner->ops->txn(fk->inner, NULL, 0, failure, nfailure, NULL, 0, &ignored, revision);
                if (err)
                        return err;
                INC(fk->f->conflicts);
                *succeeded = false;
                return 0;
        }
        return outcome(fk, ft,
                       fk->inner->ops->txn(fk->inner, cmps, ncmps, success, nsuccess, failure, nfailure, succeeded,
                                           revision));
}

static ks_err_t f_grant(ks_kv_t *kv, int64_t ttl, int64_t *id)
{
        faulty_t *fk = (faulty_t *)kv;
        fault_t ft = choose(fk, KS_KV_FAULT_LEASE_GRANT);
        if (ft == F_FAIL)
                return failed(fk);
        return outcome(fk, ft, fk->inner->ops->lease_grant(fk->inner, ttl, id));
}

static ks_err_t f_keepalive(ks_kv_t *kv, int64_t id, int64_t *ttl)
{
        faulty_t *fk = (faulty_t *)kv;
        fault_t ft = choose(fk, KS_KV_FAULT_LEASE_KEEPALIVE);
        if (ft == F_FAIL)
                return failed(fk);
        if (ft == F_LEASE_LOST) {
                fk->inner->ops->lease_revoke(fk->inner, id); /* already gone is as good */
                INC(fk->f->leases_lost);
                return KS_ERR__LEASE_LOST;
        }
        return outcome(fk, ft, fk->inner->ops->lease_keepalive(fk->inner, id, ttl));
}

static ks_err_t f_revoke(ks_kv_t *kv, int64_t id)
{
        faulty_t *fk = (faulty_t *)kv;
        fault_t ft = choose(fk, KS_KV_FAULT_LEASE_REVOKE);
        if (ft == F_FAIL)
                return failed(fk);
        return outcome(fk, ft, fk->inner->ops->lease_revoke(fk->inner, id));
}

static ks_err_t f_watch(ks_kv_t *kv, const void *key, size_t key_len, const void *end, size_t end_len,
                        int64_t start_rev, ks_kv_watch_cb *cb, void *opaque, ks_kv_watch_t **out)
{
        faulty_t *fk = (faulty_t *)kv;
        return fk->inner->ops->watch(fk->inner, key, key_len, end, end_len, start_rev, cb, opaque, out);
}

static void f_watch_cancel(ks_kv_t *kv, ks_kv_watch_t *w)
{
        faulty_t *fk = (faulty_t *)kv;
        fk->inner->ops->watch_cancel(fk->inner, w);
}

static void f_destroy(ks_kv_t *kv)
{
        free(kv); /* the inner store belongs to the caller */
}

static const ks_kv_ops_t faulty_ops = {
        .name = "faulty",
        .range = f_range,
        .put = f_put,
        .delete_range = f_delete,
        .txn = f_txn,
        .lease_grant = f_grant,
        .lease_keepalive = f_keepalive,
        .lease_revoke = f_revoke,
        .watch = f_watch,
        .watch_cancel = f_watch_cancel,
        .destroy = f_destroy,
};

ks_err_t ks_kv_faulty_new(ks_kv_t *inner, ks_kv_faults_t *faults, ks_kv_t **out)
{
        faulty_t *fk = calloc(1, sizeof(*fk));
        if (!fk)
                return KS_ERR__NOMEM;
        fk->base.ops = &faulty_ops;
        fk->inner = inner;
        fk->f = faults;
        *out = &fk->base;
        return 0;
}

int ks_kv_faults_injected(const ks_kv_faults_t *faults)
{
        return LOAD(faults->failed) + LOAD(faults->unknown) + LOAD(faults->conflicts) + LOAD(faults->leases_lost);
}
