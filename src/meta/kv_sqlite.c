/*
 * kv_sqlite.c — the embedded metadata store: SQLite storage for the kv.c
 * engine (revisions, txns, leases and watches are the engine's).
 *
 * File layout (one database file plus its -wal):
 *   kv(key BLOB PRIMARY KEY, value BLOB, create_rev, mod_rev, version, lease)
 *   meta(name TEXT PRIMARY KEY, value INTEGER): 'format' = 1, 'revision' = the
 *        store revision, 'lease_seq' = the highest lease id ever granted
 *   leases(id INTEGER PRIMARY KEY, ttl, expires_at): live leases; expires_at
 *        is wall-clock ms (informational: deadlines are kept in memory)
 * Keys are compared as BLOBs (memcmp, then length), i.e. etcd byte order.
 *
 * Durability: WAL with synchronous=FULL, so a write is on disk when the call
 * returns.  Every write (put, delete, txn, lease grant/keepalive/revoke) is
 * one BEGIN IMMEDIATE ... COMMIT transaction that also stores the revision.
 * The database is opened in EXCLUSIVE locking mode: one process at a time;
 * a second opener fails ("database is locked").
 *
 * Leases do not survive the process: at open, every lease of a previous
 * process is expired — its keys deleted, one revision per lease, as etcd
 * would when the holder stopped renewing — and the leases table emptied.
 * Lease ids continue from lease_seq, so an old id is never handed out again.
 *
 * Threads and locks: none of its own.  The store functions run with the
 * engine lock held (kv.c), one at a time, on the thread of the operation; the
 * connection is used by one thread at a time.  Open runs on the caller.
 */
#include "meta/kv_engine.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

#define SQ_FORMAT 1
#define SQ_BUSY_TIMEOUT_MS 2000

enum {
        SQ_GET,
        SQ_RANGE,
        SQ_RANGE_TO_END,
        SQ_LEASE_KEYS,
        SQ_PUT,
        SQ_DEL,
        SQ_BEGIN,
        SQ_COMMIT,
        SQ_ROLLBACK,
        SQ_SET_REV,
        SQ_LEASE_SAVE,
        SQ_LEASE_DROP,
        SQ_SET_LEASE_SEQ,
        SQ_NSTMT
};

#define SQ_COLS "key, value, create_rev, mod_rev, version, lease"

static const char *const sq_sql[SQ_NSTMT] = {
    [SQ_GET] = "SELECT " SQ_COLS " FROM kv WHERE key = ?1",
    [SQ_RANGE] = "SELECT " SQ_COLS " FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key",
    [SQ_RANGE_TO_END] = "SELECT " SQ_COLS " FROM kv WHERE key >= ?1 ORDER BY key",
    [SQ_LEASE_KEYS] = "SELECT " SQ_COLS " FROM kv WHERE lease = ?1 AND lease != 0 ORDER BY key",
    [SQ_PUT] = "INSERT OR REPLACE INTO kv (" SQ_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [SQ_DEL] = "DELETE FROM kv WHERE key = ?1",
    [SQ_BEGIN] = "BEGIN IMMEDIATE",
    [SQ_COMMIT] = "COMMIT",
    [SQ_ROLLBACK] = "ROLLBACK",
    [SQ_SET_REV] = "UPDATE meta SET value = ?1 WHERE name = 'revision'",
    [SQ_LEASE_SAVE] = "INSERT OR REPLACE INTO leases (id, ttl, expires_at) VALUES (?1, ?2, ?3)",
    [SQ_LEASE_DROP] = "DELETE FROM leases WHERE id = ?1",
    [SQ_SET_LEASE_SEQ] = "UPDATE meta SET value = max(value, ?1) WHERE name = 'lease_seq'",
};

static const char sq_schema[] =
    "CREATE TABLE IF NOT EXISTS kv ("
    " key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL,"
    " create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL,"
    " version INTEGER NOT NULL, lease INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease != 0;"
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS leases ("
    " id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL, expires_at INTEGER NOT NULL);"
    "INSERT OR IGNORE INTO meta (name, value) VALUES ('format', 1), ('revision', 0), ('lease_seq', 0);";

typedef struct sq_store {
        sqlite3 *db;
        char *path;
        sqlite3_stmt *stmt[SQ_NSTMT];
} sq_store_t;

/* Logs the failure of `op` with SQLite's message; maps the code. */
static ks_err_t sq_fail(sq_store_t *s, const char *op, int rc)
{
        ks_log_error("kv_sqlite_error", "path=\"%s\" op=%s rc=%d err=\"%s\"%s", s->path, op, rc,
                     s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc),
                     (rc & 0xff) == SQLITE_BUSY ? " hint=\"another process has this database open\"" : "");
        return rc == SQLITE_NOMEM ? KS_ERR__NOMEM : KS_ERR__IO;
}

static void sq_done(sqlite3_stmt *st)
{
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
}

/* Binds a BLOB that is never NULL (a zero-length blob for n == 0). */
static int sq_bind_blob(sqlite3_stmt *st, int i, const void *p, size_t n)
{
        if (n == 0)
                return sqlite3_bind_zeroblob(st, i, 0);
        return sqlite3_bind_blob64(st, i, p, (sqlite3_uint64)n, SQLITE_STATIC);
}

/* Runs a statement that returns no rows; resets it. */
static ks_err_t sq_exec_stmt(sq_store_t *s, int which, const char *op)
{
        sqlite3_stmt *st = s->stmt[which];
        int rc = sqlite3_step(st);
        ks_err_t err = rc == SQLITE_DONE ? KS_ERR_NONE : sq_fail(s, op, rc);
        sq_done(st);
        return err;
}

/* Steps a bound SELECT of SQ_COLS, appending every row to out. */
static ks_err_t sq_collect(sq_store_t *s, sqlite3_stmt *st, const char *op, bool values, ks_kv_result_t *out)
{
        ks_err_t err = KS_ERR_NONE;
        int rc;

        while (!err && (rc = sqlite3_step(st)) == SQLITE_ROW) {
                /* blob before bytes, in sequence, as SQLite asks */
                ks_kv_pair_t p = {0};
                p.key = (uint8_t *)sqlite3_column_blob(st, 0);
                p.key_len = (size_t)sqlite3_column_bytes(st, 0);
                if (values) {
                        p.value = (uint8_t *)sqlite3_column_blob(st, 1);
                        p.value_len = (size_t)sqlite3_column_bytes(st, 1);
                }
                p.create_rev = sqlite3_column_int64(st, 2);
                p.mod_rev = sqlite3_column_int64(st, 3);
                p.version = sqlite3_column_int64(st, 4);
                p.lease = sqlite3_column_int64(st, 5);
                if ((p.key_len && !p.key) || (p.value_len && !p.value))
                        err = KS_ERR__NOMEM; /* sqlite3_column_blob failed to allocate */
                else
                        err = ks_kv_result_add(out, &p, values);
        }
        if (!err && rc != SQLITE_DONE)
                err = sq_fail(s, op, rc);
        sq_done(st);
        return err;
}

static ks_err_t sq_range(void *stp, const uint8_t *key, size_t key_len, const uint8_t *end, size_t end_len, bool values,
                         ks_kv_result_t *out)
{
        sq_store_t *s = stp;
        int which = !end ? SQ_GET : end_len == 0 ? SQ_RANGE_TO_END : SQ_RANGE;
        sqlite3_stmt *st = s->stmt[which];
        int rc = sq_bind_blob(st, 1, key, key_len);

        if (rc == SQLITE_OK && which == SQ_RANGE)
                rc = sq_bind_blob(st, 2, end, end_len);
        if (rc != SQLITE_OK) {
                sq_done(st);
                return sq_fail(s, "range_bind", rc);
        }
        return sq_collect(s, st, "range", values, out);
}

static ks_err_t sq_lease_keys(void *stp, int64_t lease, ks_kv_result_t *out)
{
        sq_store_t *s = stp;
        sqlite3_stmt *st = s->stmt[SQ_LEASE_KEYS];

        sqlite3_bind_int64(st, 1, lease);
        return sq_collect(s, st, "lease_keys", false, out);
}

static ks_err_t sq_begin(void *stp)
{
        return sq_exec_stmt(stp, SQ_BEGIN, "begin");
}

static ks_err_t sq_put(void *stp, const ks_kv_pair_t *kv)
{
        sq_store_t *s = stp;
        sqlite3_stmt *st = s->stmt[SQ_PUT];
        int rc = sq_bind_blob(st, 1, kv->key, kv->key_len);

        if (rc == SQLITE_OK)
                rc = sq_bind_blob(st, 2, kv->value, kv->value_len);
        if (rc == SQLITE_OK)
                rc = sqlite3_bind_int64(st, 3, kv->create_rev);
        if (rc == SQLITE_OK)
                rc = sqlite3_bind_int64(st, 4, kv->mod_rev);
        if (rc == SQLITE_OK)
                rc = sqlite3_bind_int64(st, 5, kv->version);
        if (rc == SQLITE_OK)
                rc = sqlite3_bind_int64(st, 6, kv->lease);
        if (rc != SQLITE_OK) {
                sq_done(st);
                return sq_fail(s, "put_bind", rc);
        }
        return sq_exec_stmt(s, SQ_PUT, "put");
}

static ks_err_t sq_del(void *stp, const uint8_t *key, size_t key_len)
{
        sq_store_t *s = stp;
        int rc = sq_bind_blob(s->stmt[SQ_DEL], 1, key, key_len);

        if (rc != SQLITE_OK) {
                sq_done(s->stmt[SQ_DEL]);
                return sq_fail(s, "delete_bind", rc);
        }
        return sq_exec_stmt(s, SQ_DEL, "delete");
}

static ks_err_t sq_lease_save(void *stp, int64_t id, int64_t ttl_seconds, int64_t expires_wall_ms)
{
        sq_store_t *s = stp;
        ks_err_t err;

        sqlite3_bind_int64(s->stmt[SQ_LEASE_SAVE], 1, id);
        sqlite3_bind_int64(s->stmt[SQ_LEASE_SAVE], 2, ttl_seconds);
        sqlite3_bind_int64(s->stmt[SQ_LEASE_SAVE], 3, expires_wall_ms);
        if ((err = sq_exec_stmt(s, SQ_LEASE_SAVE, "lease_save")))
                return err;
        sqlite3_bind_int64(s->stmt[SQ_SET_LEASE_SEQ], 1, id);
        return sq_exec_stmt(s, SQ_SET_LEASE_SEQ, "lease_seq");
}

static ks_err_t sq_lease_drop(void *stp, int64_t id)
{
        sq_store_t *s = stp;

        sqlite3_bind_int64(s->stmt[SQ_LEASE_DROP], 1, id);
        return sq_exec_stmt(s, SQ_LEASE_DROP, "lease_drop");
}

static ks_err_t sq_commit(void *stp, int64_t revision)
{
        sq_store_t *s = stp;
        ks_err_t err;

        sqlite3_bind_int64(s->stmt[SQ_SET_REV], 1, revision);
        if ((err = sq_exec_stmt(s, SQ_SET_REV, "set_revision")))
                return err;
        return sq_exec_stmt(s, SQ_COMMIT, "commit");
}

static void sq_rollback(void *stp)
{
        sq_store_t *s = stp;

        if (!sqlite3_get_autocommit(s->db)) /* a transaction is open */
                sq_exec_stmt(s, SQ_ROLLBACK, "rollback");
}

static void sq_destroy(void *stp)
{
        sq_store_t *s = stp;

        for (int i = 0; i < SQ_NSTMT; i++)
                sqlite3_finalize(s->stmt[i]);
        if (s->db && sqlite3_close(s->db) != SQLITE_OK)
                sq_fail(s, "close", sqlite3_errcode(s->db));
        free(s->path);
        free(s);
}

static const ks_kv_store_ops_t sq_ops = {
    .name = "sqlite",
    .range = sq_range,
    .lease_keys = sq_lease_keys,
    .begin = sq_begin,
    .put = sq_put,
    .del = sq_del,
    .lease_save = sq_lease_save,
    .lease_drop = sq_lease_drop,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .destroy = sq_destroy,
};

/* Runs SQL text that returns no rows (schema, pragmas). */
static ks_err_t sq_exec(sq_store_t *s, const char *sql, const char *op)
{
        int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
        return rc == SQLITE_OK ? KS_ERR_NONE : sq_fail(s, op, rc);
}

/* Reads meta.<name> into *v. */
static ks_err_t sq_meta_get(sq_store_t *s, const char *name, int64_t *v)
{
        sqlite3_stmt *st = NULL;
        int rc = sqlite3_prepare_v2(s->db, "SELECT value FROM meta WHERE name = ?1", -1, &st, NULL);
        ks_err_t err = KS_ERR_NONE;

        if (rc != SQLITE_OK)
                return sq_fail(s, "meta_prepare", rc);
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
                *v = sqlite3_column_int64(st, 0);
        else if (rc == SQLITE_DONE)
                err = KS_ERR__CORRUPT;
        else
                err = sq_fail(s, "meta_read", rc);
        sqlite3_finalize(st);
        if (err == KS_ERR__CORRUPT)
                ks_log_error("kv_sqlite_corrupt", "path=\"%s\" missing_meta=%s", s->path, name);
        return err;
}

/* Expires every lease left by a previous process: deletes its keys (one
 * revision per lease) and empties the leases table.  Inside the open txn. */
static ks_err_t sq_expire_old_leases(sq_store_t *s, int64_t *rev)
{
        sqlite3_stmt *sel = NULL, *del = NULL;
        int rc =
            sqlite3_prepare_v2(s->db, "SELECT DISTINCT lease FROM kv WHERE lease != 0 ORDER BY lease", -1, &sel, NULL);
        ks_err_t err = KS_ERR_NONE;
        int64_t n = 0;

        if (rc == SQLITE_OK)
                rc = sqlite3_prepare_v2(s->db, "DELETE FROM kv WHERE lease = ?1", -1, &del, NULL);
        if (rc != SQLITE_OK) {
                err = sq_fail(s, "open_expire_prepare", rc);
                goto out;
        }
        /* Collect first: deleting while the SELECT is open is not allowed to
         * be relied on. */
        int64_t *ids = NULL;
        size_t nids = 0, cap = 0;
        while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
                if (nids == cap) {
                        size_t ncap = cap ? cap * 2 : 16;
                        int64_t *nb = realloc(ids, ncap * sizeof(*nb));
                        if (!nb) {
                                err = KS_ERR__NOMEM;
                                break;
                        }
                        ids = nb;
                        cap = ncap;
                }
                ids[nids++] = sqlite3_column_int64(sel, 0);
        }
        if (!err && rc != SQLITE_DONE)
                err = sq_fail(s, "open_expire_select", rc);
        for (size_t i = 0; !err && i < nids; i++) {
                sqlite3_bind_int64(del, 1, ids[i]);
                rc = sqlite3_step(del);
                sqlite3_reset(del);
                if (rc != SQLITE_DONE) {
                        err = sq_fail(s, "open_expire_delete", rc);
                        break;
                }
                if (sqlite3_changes(s->db) > 0) {
                        ++*rev;
                        n += sqlite3_changes(s->db);
                }
        }
        free(ids);
        if (!err)
                err = sq_exec(s, "DELETE FROM leases", "open_expire_leases");
        if (!err && nids)
                ks_log_info("kv_sqlite_leases_expired", "path=\"%s\" leases=%zu keys=%lld", s->path, nids,
                            (long long)n);
out:
        sqlite3_finalize(sel);
        sqlite3_finalize(del);
        return err;
}

/* Creates or checks the schema, expires old leases; reads revision and
 * lease_seq.  One transaction. */
static ks_err_t sq_init(sq_store_t *s, int64_t *rev, int64_t *lease_seq)
{
        int64_t format = 0;
        ks_err_t err;

        if ((err = sq_exec(s, "BEGIN IMMEDIATE", "open_begin")))
                return err;
        if ((err = sq_exec(s, sq_schema, "open_schema")) || (err = sq_meta_get(s, "format", &format)) ||
            (err = sq_meta_get(s, "revision", rev)) || (err = sq_meta_get(s, "lease_seq", lease_seq)))
                goto fail;
        if (format != SQ_FORMAT) {
                ks_log_error("kv_sqlite_format", "path=\"%s\" format=%lld expected=%d", s->path, (long long)format,
                             SQ_FORMAT);
                err = KS_ERR__CORRUPT;
                goto fail;
        }
        if ((err = sq_expire_old_leases(s, rev)))
                goto fail;
        char sql[96];
        snprintf(sql, sizeof(sql), "UPDATE meta SET value = %lld WHERE name = 'revision'", (long long)*rev);
        if ((err = sq_exec(s, sql, "open_set_revision")) || (err = sq_exec(s, "COMMIT", "open_commit")))
                goto fail;
        return KS_ERR_NONE;
fail:
        if (!sqlite3_get_autocommit(s->db))
                sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return err;
}

ks_err_t ks_kv_sqlite_open(const char *path, const ks_clock_t *clock, ks_kv_t **out)
{
        sq_store_t *s;
        int64_t rev = 0, lease_seq = 0;
        ks_err_t err;
        int rc;

        if (!path || !*path || !out)
                return KS_ERR__INVALID_ARG;
        if (!(s = calloc(1, sizeof(*s))) || !(s->path = strdup(path))) {
                free(s);
                return KS_ERR__NOMEM;
        }
        rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
        if (rc != SQLITE_OK) {
                err = sq_fail(s, "open", rc);
                goto fail;
        }
        sqlite3_extended_result_codes(s->db, 1);
        sqlite3_busy_timeout(s->db, SQ_BUSY_TIMEOUT_MS);
        /* Exclusive first: WAL then needs no shared-memory index, and the
         * lock taken by the first transaction below is kept until close. */
        if ((err = sq_exec(s, "PRAGMA locking_mode = EXCLUSIVE", "pragma_locking_mode")))
                goto fail;
        {
                sqlite3_stmt *st = NULL;
                rc = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
                if (rc == SQLITE_OK)
                        rc = sqlite3_step(st);
                bool wal = rc == SQLITE_ROW && sqlite3_stricmp((const char *)sqlite3_column_text(st, 0), "wal") == 0;
                if (rc != SQLITE_ROW) {
                        sqlite3_finalize(st);
                        err = sq_fail(s, "pragma_journal_mode", rc);
                        goto fail;
                }
                sqlite3_finalize(st);
                if (!wal) {
                        ks_log_error("kv_sqlite_error", "path=\"%s\" op=pragma_journal_mode err=\"WAL refused\"", path);
                        err = KS_ERR__IO;
                        goto fail;
                }
        }
        if ((err = sq_exec(s, "PRAGMA synchronous = FULL", "pragma_synchronous")) ||
            (err = sq_exec(s, "PRAGMA foreign_keys = OFF", "pragma_foreign_keys")))
                goto fail;
        if ((err = sq_init(s, &rev, &lease_seq)))
                goto fail;
        for (int i = 0; i < SQ_NSTMT; i++) {
                rc = sqlite3_prepare_v3(s->db, sq_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[i], NULL);
                if (rc != SQLITE_OK) {
                        err = sq_fail(s, "prepare", rc);
                        goto fail;
                }
        }
        ks_log_info("kv_sqlite_open", "path=\"%s\" revision=%lld", path, (long long)rev);
        return ks_kv_engine_new(&sq_ops, s, rev, lease_seq, clock, out);
fail:
        sq_destroy(s);
        return err;
}
