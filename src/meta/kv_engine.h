/*
 * kv_engine.h — private to the metadata-store backends (kv.c, kv_memory.c,
 * kv_sqlite.c) and their tests.  Callers use meta/kv.h only.
 */
#ifndef KS_META_KV_ENGINE_H
#define KS_META_KV_ENGINE_H

#include "meta/kv.h"

/* ------------------------------------------------------------------------
 * Backend kit (kv.c) — for backend implementations only, not for callers.
 *
 * The in-process backends (memory, sqlite) share one engine in kv.c that owns
 * everything except storage: the revision counter, etcd bookkeeping
 * (create_rev/mod_rev/version), txn compare evaluation, leases and the thread
 * that expires them, the watch history ring and the watch dispatcher thread.
 * A backend supplies only a ks_kv_store_ops_t.
 * ------------------------------------------------------------------------ */

/* Events the engine keeps for watch replay (start_rev in the past). */
#define KS_KV_HISTORY_EVENTS 10000

/* Storage behind the engine.  Called only with the engine lock held (so one
 * call at a time).  Ranges arrive normalised: end == NULL is the single key
 * `key`; end != NULL with end_len == 0 is [key, end of keyspace); otherwise
 * [key, end).  range/lease_keys append to `out` (ks_kv_result_add), sorted by
 * key, values only when `values`.  put/del/lease_save/lease_drop happen only
 * between begin and commit (revision = the store revision to persist, which
 * may be unchanged) or rollback.  lease_save/lease_drop may be NULL. */
typedef struct ks_kv_store_ops {
        const char *name;
        ks_err_t (*range)(void *st, const uint8_t *key, size_t key_len, const uint8_t *end, size_t end_len,
                          bool values, ks_kv_result_t *out);
        ks_err_t (*lease_keys)(void *st, int64_t lease, ks_kv_result_t *out); /* keys only */
        ks_err_t (*begin)(void *st);
        ks_err_t (*put)(void *st, const ks_kv_pair_t *kv); /* insert or replace; kv borrowed */
        ks_err_t (*del)(void *st, const uint8_t *key, size_t key_len);
        ks_err_t (*lease_save)(void *st, int64_t id, int64_t ttl_seconds, int64_t expires_wall_ms);
        ks_err_t (*lease_drop)(void *st, int64_t id);
        ks_err_t (*commit)(void *st, int64_t revision);
        void (*rollback)(void *st);
        void (*destroy)(void *st);
} ks_kv_store_ops_t;

/* Builds a backend from a store holding `revision` whose lease ids so far are
 * <= lease_seq.  Takes ownership of `st` (destroyed on failure too). */
ks_err_t ks_kv_engine_new(const ks_kv_store_ops_t *sops, void *st, int64_t revision, int64_t lease_seq,
                          const ks_clock_t *clock, ks_kv_t **out);

/* Drops the engine's watch history up to the current revision (as an etcd
 * compaction does for watches).  No-op on a kv that is not an engine. */
void ks_kv_engine_compact(ks_kv_t *kv);

/* A normalised range: end == NULL: the single key; end_len == 0: to the end
 * of the keyspace; else [key, end).  Pointers borrowed. */
typedef struct ks_kv_span {
        const uint8_t *key;
        size_t key_len;
        const uint8_t *end;
        size_t end_len;
} ks_kv_span_t;

/* Normalises kv.h's (key, range_end) convention (range_end NULL: the key
 * alone; "" or "\0": to the end of the keyspace).  KS_ERR__INVALID_ARG for
 * an empty key. */
ks_err_t ks_kv_span_make(ks_kv_span_t *s, const void *key, size_t key_len, const void *end, size_t end_len);

/* The argument checks every backend makes, as etcd: at most
 * KS_KV_TXN_MAX_OPS (else KS_ERR__TOO_LARGE); keys present, targets and
 * operators known; within one branch no key put twice, or put and deleted
 * (KS_ERR__INVALID_ARG). */
ks_err_t ks_kv_check_cmps(const ks_kv_cmp_t *cmps, size_t n);
ks_err_t ks_kv_check_ops(const ks_kv_op_t *ops, size_t n);

/* Appends a copy of `kv` (value only when `values`) to `res`. */
ks_err_t ks_kv_result_add(ks_kv_result_t *res, const ks_kv_pair_t *kv, bool values);

/* Byte-order comparison of two keys (memcmp, then shorter first). */
int ks_kv_key_cmp(const void *a, size_t alen, const void *b, size_t blen);

#endif
