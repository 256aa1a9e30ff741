/*
 * test_kv.c — one behavioural suite for every metadata KV backend (kv.h).
 *
 * Each case is a function kv_case_<name>(kv_fx_t *) that opens its store
 * through the fixture's backend descriptor, so it runs unchanged against the
 * memory, SQLite and etcd backends; the TEST() lines at the bottom
 * instantiate every case per backend.  Cases assert revisions relative to
 * the revision they start at, so a shared store (etcd) works too.
 *
 * Threads: CHECKs run on the test thread only.  Watch callbacks (backend
 * thread) and writer threads record into mutex-protected collectors that the
 * test thread inspects; every wait has a deadline (KV_WAIT_MS).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "etcd_harness.h"
#include "meta/kv_engine.h"
#include "test.h"
#include "util/clock.h"
#include "util/log.h"

#define KV_WAIT_MS 10000

#define K(s) (s), strlen(s) /* C string as (ptr, len) */

/* ------------------------------------------------------------ backends */

/* How the suite reaches one backend.  Adding one (etcd) = one descriptor plus
 * a TEST() line per case.  A shared store must give each case a clean
 * keyspace in setup(): cases write keys under "/" (and one delete runs from
 * "/d/b" to the end of the keyspace).  compact() makes every revision so far
 * unavailable to watches (etcd: a compaction at the current revision).
 * fake_clock = false skips the cases that move a ks_clock_fake_t to expire
 * leases (etcd keeps its own time). */
typedef struct kv_backend {
        const char *name;
        void *(*setup)(void);                                 /* per-test state, may be NULL */
        ks_kv_t *(*make)(const ks_clock_t *clock, void *arg); /* opens the store (again) */
        void (*cleanup)(void *arg);
        void (*compact)(ks_kv_t *kv, void *arg); /* drop watch history up to now */
        bool fake_clock;                         /* lease expiry follows the clock given to make() */
} kv_backend_t;

static ks_kv_t *mem_make(const ks_clock_t *clock, void *arg)
{
        ks_kv_t *kv = NULL;
        return ks_kv_memory_new(clock, &kv) == KS_ERR_NONE ? kv : NULL;
}

static void engine_compact(ks_kv_t *kv, void *arg)
{
        ks_kv_engine_compact(kv);
}

static const kv_backend_t kv_memory = {
    .name = "memory",
    .make = mem_make,
    .compact = engine_compact,
    .fake_clock = true,
};

typedef struct sq_dir {
        char dir[256];
        char path[320];
} sq_dir_t;

static void *sq_setup(void)
{
        sq_dir_t *d = calloc(1, sizeof(*d));
        const char *tmp = getenv("TMPDIR");
        if (!d)
                return NULL;
        snprintf(d->dir, sizeof(d->dir), "%s/kafscale-kvtest-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(d->dir)) {
                perror("mkdtemp");
                free(d);
                return NULL;
        }
        snprintf(d->path, sizeof(d->path), "%s/meta.db", d->dir);
        return d;
}

static ks_kv_t *sq_make(const ks_clock_t *clock, void *arg)
{
        sq_dir_t *d = arg;
        ks_kv_t *kv = NULL;
        return d && ks_kv_sqlite_open(d->path, clock, &kv) == KS_ERR_NONE ? kv : NULL;
}

static void sq_cleanup(void *arg)
{
        sq_dir_t *d = arg;
        static const char *const sfx[] = {"", "-wal", "-shm", "-journal"};
        char p[400];
        if (!d)
                return;
        for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++) {
                snprintf(p, sizeof(p), "%s%s", d->path, sfx[i]);
                unlink(p);
        }
        if (rmdir(d->dir) != 0)
                fprintf(stderr, "test_kv: cannot remove %s\n", d->dir);
        free(d);
}

static const kv_backend_t kv_sqlite = {
    .name = "sqlite",
    .setup = sq_setup,
    .make = sq_make,
    .cleanup = sq_cleanup,
    .compact = engine_compact,
    .fake_clock = true,
};

/* etcd: the harness's shared single-node etcd (started on first use),
 * its whole keyspace deleted before each case.  Its leases follow real
 * time, so the fake-clock case is skipped (real expiry: test_kv_etcd.c). */
static void *etcd_setup(void)
{
        ks_test_etcd_wipe(); /* reports its own failure */
        return NULL;
}

static ks_kv_t *etcd_make(const ks_clock_t *clock, void *arg)
{
        return ks_test_etcd_open();
}

static void etcd_compact(ks_kv_t *kv, void *arg)
{
        ks_err_t err = ks_kv_etcd_compact(kv);
        if (err != KS_ERR_NONE)
                ks_test_fail(__FILE__, __LINE__, "ks_kv_etcd_compact: %s", ks_err_name(err));
}

static const kv_backend_t kv_etcd = {
    .name = "etcd",
    .setup = etcd_setup,
    .make = etcd_make,
    .compact = etcd_compact,
    .fake_clock = false,
};

/* ------------------------------------------------------------ fixture */

typedef struct kv_ev {
        ks_kv_ev_type_t type;
        int64_t rev, create_rev, mod_rev, version, lease;
        char *key; /* NUL-terminated copies */
        size_t key_len;
        char *value;
        size_t value_len;
        size_t call; /* index of the callback call that delivered it */
} kv_ev_t;

/* Records what a watch delivers.  All fields under mu. */
typedef struct kv_col {
        pthread_mutex_t mu;
        pthread_cond_t cv;
        kv_ev_t *ev;
        size_t n, cap;
        size_t calls;
        bool mixed_rev;    /* a call carried several revisions */
        bool out_of_order; /* a call's revision <= the previous call's */
        int64_t last_rev;
        /* cancel-while-running test */
        bool block;               /* callbacks wait while set */
        size_t entered;           /* callbacks started */
        bool cancel_started;      /* set by the cancelling thread */
        bool cancel_returned;     /* set after ks_kv_watch_cancel returned */
        bool returned_seen_in_cb; /* cancel_returned was true inside a callback */
} kv_col_t;

#define KV_FX_MAX_OPEN 4
#define KV_FX_MAX_COLS 16

typedef struct kv_fx {
        const kv_backend_t *be;
        void *arg;
        ks_clock_fake_t clock;
        ks_kv_t *open[KV_FX_MAX_OPEN];
        kv_col_t *cols[KV_FX_MAX_COLS];
        size_t ncols;
} kv_fx_t;

static ks_kv_t *fx_open(kv_fx_t *fx)
{
        ks_kv_t *kv = fx->be->make(&fx->clock.base, fx->arg);
        if (!kv)
                return NULL;
        for (size_t i = 0; i < KV_FX_MAX_OPEN; i++) {
                if (!fx->open[i]) {
                        fx->open[i] = kv;
                        return kv;
                }
        }
        ks_kv_destroy(kv);
        return NULL;
}

static void fx_close(kv_fx_t *fx, ks_kv_t *kv)
{
        for (size_t i = 0; i < KV_FX_MAX_OPEN; i++)
                if (fx->open[i] == kv)
                        fx->open[i] = NULL;
        ks_kv_destroy(kv);
}

static kv_col_t *fx_col(kv_fx_t *fx)
{
        if (fx->ncols == KV_FX_MAX_COLS)
                return NULL;
        kv_col_t *c = calloc(1, sizeof(*c));
        pthread_condattr_t a;
        pthread_condattr_init(&a);
        pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
        pthread_mutex_init(&c->mu, NULL);
        pthread_cond_init(&c->cv, &a);
        pthread_condattr_destroy(&a);
        fx->cols[fx->ncols++] = c;
        return c;
}

static void col_free(kv_col_t *c)
{
        for (size_t i = 0; i < c->n; i++) {
                free(c->ev[i].key);
                free(c->ev[i].value);
        }
        free(c->ev);
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        free(c);
}

/* Runs one case against one backend; stores and collectors are released
 * here even when the case returned early. */
static void kv_run(const kv_backend_t *be, void (*fn)(kv_fx_t *))
{
        kv_fx_t *fx = calloc(1, sizeof(*fx));
        ks_log_level_t saved = ks_log_level;

        ks_log_set_level(KS_LOG_WARN);
        fx->be = be;
        ks_clock_fake_init(&fx->clock, 1767225600000LL /* 2026-01-01 */);
        fx->arg = be->setup ? be->setup() : NULL;
        fn(fx);
        for (size_t i = 0; i < KV_FX_MAX_OPEN; i++)
                if (fx->open[i])
                        ks_kv_destroy(fx->open[i]);
        for (size_t i = 0; i < fx->ncols; i++)
                col_free(fx->cols[i]);
        if (be->cleanup)
                be->cleanup(fx->arg);
        free(fx);
        ks_log_set_level(saved);
}

static char *dupn(const void *p, size_t n)
{
        char *d = malloc(n + 1);
        if (n)
                memcpy(d, p, n);
        d[n] = 0;
        return d;
}

/* The watch callback (backend thread). */
static void col_cb(void *opaque, const ks_kv_event_t *evs, size_t n)
{
        kv_col_t *c = opaque;

        pthread_mutex_lock(&c->mu);
        c->entered++;
        pthread_cond_broadcast(&c->cv);
        while (c->block)
                pthread_cond_wait(&c->cv, &c->mu);
        if (c->cancel_returned)
                c->returned_seen_in_cb = true;
        if (n > 0) {
                if (c->calls > 0 && evs[0].revision <= c->last_rev)
                        c->out_of_order = true;
                c->last_rev = evs[0].revision;
        }
        for (size_t i = 0; i < n; i++) {
                if (evs[i].revision != evs[0].revision)
                        c->mixed_rev = true;
                if (c->n == c->cap) {
                        c->cap = c->cap ? c->cap * 2 : 64;
                        c->ev = realloc(c->ev, c->cap * sizeof(*c->ev));
                }
                kv_ev_t *e = &c->ev[c->n++];
                e->type = evs[i].type;
                e->rev = evs[i].revision;
                e->create_rev = evs[i].kv.create_rev;
                e->mod_rev = evs[i].kv.mod_rev;
                e->version = evs[i].kv.version;
                e->lease = evs[i].kv.lease;
                e->key = dupn(evs[i].kv.key, evs[i].kv.key_len);
                e->key_len = evs[i].kv.key_len;
                e->value = dupn(evs[i].kv.value, evs[i].kv.value_len);
                e->value_len = evs[i].kv.value_len;
                e->call = c->calls;
        }
        c->calls++;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
}

/* Waits until the collector holds at least n events; false on deadline. */
static bool col_wait(kv_col_t *c, size_t n)
{
        struct timespec ts;
        bool ok;

        ks_deadline_after_ms(&ts, KV_WAIT_MS);
        pthread_mutex_lock(&c->mu);
        while (c->n < n && pthread_cond_timedwait(&c->cv, &c->mu, &ts) == 0)
                ;
        ok = c->n >= n;
        pthread_mutex_unlock(&c->mu);
        return ok;
}

static size_t col_count(kv_col_t *c)
{
        pthread_mutex_lock(&c->mu);
        size_t n = c->n;
        pthread_mutex_unlock(&c->mu);
        return n;
}

/* Watches [key, end) (end NULL: the key; "" : prefix of key) into a new
 * collector. */
static kv_col_t *watch_into(kv_fx_t *fx, ks_kv_t *kv, const char *key, const char *prefix_or_null, int64_t start,
                            ks_kv_watch_t **w)
{
        kv_col_t *c = fx_col(fx);
        uint8_t end[256];
        size_t end_len = 0;
        const void *endp = NULL;

        if (!c)
                return NULL;
        if (prefix_or_null) {
                end_len = ks_kv_prefix_end(key, strlen(key), end);
                endp = end;
        }
        if (ks_kv_watch(kv, K(key), endp, end_len, start, col_cb, c, w) != KS_ERR_NONE)
                return NULL;
        return c;
}

/* The store revision now. */
static int64_t cur_rev(ks_kv_t *kv)
{
        ks_kv_result_t r;
        if (ks_kv_range(kv, K("\x01probe"), NULL, 0, &r) != KS_ERR_NONE)
                return -1;
        int64_t rev = r.revision;
        ks_kv_result_free(&r);
        return rev;
}

static ks_err_t put_s(ks_kv_t *kv, const char *k, const char *v, int64_t lease, int64_t *rev)
{
        return ks_kv_put(kv, K(k), v, strlen(v), lease, rev);
}

/* Reads one key: 1 found (r filled, caller frees), 0 absent, -1 error. */
static int get1(ks_kv_t *kv, const char *k, ks_kv_result_t *r)
{
        if (ks_kv_range(kv, K(k), NULL, 0, r) != KS_ERR_NONE)
                return -1;
        if (r->count == 1)
                return 1;
        ks_kv_result_free(r);
        return 0;
}

static bool exists(ks_kv_t *kv, const char *k)
{
        ks_kv_result_t r;
        int f = get1(kv, k, &r);
        if (f == 1)
                ks_kv_result_free(&r);
        return f == 1;
}

/* Number of keys with the given prefix, -1 on error. */
static int64_t count_prefix(ks_kv_t *kv, const char *prefix)
{
        uint8_t end[256];
        size_t n = ks_kv_prefix_end(prefix, strlen(prefix), end);
        ks_kv_result_t r;
        if (ks_kv_range(kv, K(prefix), end, n, &r) != KS_ERR_NONE)
                return -1;
        int64_t c = (int64_t)r.count;
        ks_kv_result_free(&r);
        return c;
}

/* ------------------------------------------------------------ cases */

static void kv_case_put_get(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        ks_kv_result_t r;
        int64_t r0, rev = 0;

        REQUIRE(kv);
        CHECK_EQ_STR(kv->ops->name, fx->be->name);
        r0 = cur_rev(kv);
        REQUIRE(r0 >= 0);

        CHECK_EQ_INT(put_s(kv, "/t/a", "one", 0, &rev), KS_ERR_NONE);
        CHECK_EQ_INT(rev, r0 + 1);
        REQUIRE(get1(kv, "/t/a", &r) == 1);
        CHECK_EQ_STR((const char *)r.kvs[0].key, "/t/a"); /* NUL-terminated copies */
        CHECK_EQ_INT(r.kvs[0].key_len, 4);
        CHECK_EQ_STR((const char *)r.kvs[0].value, "one");
        CHECK_EQ_INT(r.kvs[0].value_len, 3);
        CHECK_EQ_INT(r.kvs[0].create_rev, r0 + 1);
        CHECK_EQ_INT(r.kvs[0].mod_rev, r0 + 1);
        CHECK_EQ_INT(r.kvs[0].version, 1);
        CHECK_EQ_INT(r.kvs[0].lease, 0);
        CHECK_EQ_INT(r.revision, r0 + 1);
        ks_kv_result_free(&r);

        CHECK_EQ_INT(put_s(kv, "/t/a", "two", 0, &rev), KS_ERR_NONE);
        CHECK_EQ_INT(rev, r0 + 2);
        REQUIRE(get1(kv, "/t/a", &r) == 1);
        CHECK_EQ_STR((const char *)r.kvs[0].value, "two");
        CHECK_EQ_INT(r.kvs[0].create_rev, r0 + 1);
        CHECK_EQ_INT(r.kvs[0].mod_rev, r0 + 2);
        CHECK_EQ_INT(r.kvs[0].version, 2);
        ks_kv_result_free(&r);

        /* Empty value, binary key and value with NUL bytes. */
        CHECK_EQ_INT(ks_kv_put(kv, K("/t/empty"), NULL, 0, 0, NULL), KS_ERR_NONE);
        REQUIRE(get1(kv, "/t/empty", &r) == 1);
        CHECK_EQ_INT(r.kvs[0].value_len, 0);
        CHECK(r.kvs[0].value != NULL && r.kvs[0].value[0] == 0);
        ks_kv_result_free(&r);
        static const uint8_t bkey[] = {'/', 't', '/', 0, 0xff, 1};
        static const uint8_t bval[] = {0, 1, 2, 0, 0xfe};
        CHECK_EQ_INT(ks_kv_put(kv, bkey, sizeof(bkey), bval, sizeof(bval), 0, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(ks_kv_range(kv, bkey, sizeof(bkey), NULL, 0, &r), KS_ERR_NONE);
        REQUIRE(r.count == 1);
        CHECK(r.kvs[0].key_len == sizeof(bkey) && memcmp(r.kvs[0].key, bkey, sizeof(bkey)) == 0);
        CHECK(r.kvs[0].value_len == sizeof(bval) && memcmp(r.kvs[0].value, bval, sizeof(bval)) == 0);
        ks_kv_result_free(&r);

        /* Missing key; the read does not move the revision. */
        CHECK_EQ_INT(get1(kv, "/t/missing", &r), 0);
        CHECK_EQ_INT(cur_rev(kv), r0 + 4);

        /* Invalid arguments. */
        CHECK_EQ_INT(ks_kv_put(kv, "", 0, "x", 1, 0, NULL), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_kv_put(kv, NULL, 0, "x", 1, 0, NULL), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_kv_range(kv, "", 0, NULL, 0, &r), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_kv_delete_range(kv, "", 0, NULL, 0, NULL, NULL), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(cur_rev(kv), r0 + 4);
}

static void kv_case_range_prefix(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        ks_kv_result_t r;
        uint8_t end[16];
        static const char *const keys[] = {"/r/b/1", "/r/a/2", "/r/a", "/r/a/1", "/r/a/3", "/r/a0", "/r/c"};

        REQUIRE(kv);
        /* ks_kv_prefix_end */
        CHECK_EQ_INT(ks_kv_prefix_end("/r/a/", 5, end), 5);
        CHECK(memcmp(end, "/r/a0", 5) == 0);
        CHECK_EQ_INT(ks_kv_prefix_end("a\xff\xff", 3, end), 1);
        CHECK_EQ_INT(end[0], 'b');
        CHECK_EQ_INT(ks_kv_prefix_end("\xff\xff", 2, end), 0);
        CHECK_EQ_INT(ks_kv_prefix_end("", 0, end), 0);

        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
                CHECK_EQ_INT(put_s(kv, keys[i], keys[i], 0, NULL), KS_ERR_NONE);

        /* Prefix: sorted, excludes "/r/a" and "/r/a0". */
        size_t n = ks_kv_prefix_end("/r/a/", 5, end);
        CHECK_EQ_INT(ks_kv_range(kv, K("/r/a/"), end, n, &r), KS_ERR_NONE);
        REQUIRE(r.count == 3);
        CHECK_EQ_STR((const char *)r.kvs[0].key, "/r/a/1");
        CHECK_EQ_STR((const char *)r.kvs[1].key, "/r/a/2");
        CHECK_EQ_STR((const char *)r.kvs[2].key, "/r/a/3");
        CHECK_EQ_STR((const char *)r.kvs[2].value, "/r/a/3");
        ks_kv_result_free(&r);

        /* [key, end) is half-open. */
        CHECK_EQ_INT(ks_kv_range(kv, K("/r/a/1"), K("/r/a/3"), &r), KS_ERR_NONE);
        REQUIRE(r.count == 2);
        CHECK_EQ_STR((const char *)r.kvs[0].key, "/r/a/1");
        CHECK_EQ_STR((const char *)r.kvs[1].key, "/r/a/2");
        ks_kv_result_free(&r);

        /* Whole "/r/" prefix in byte order. */
        n = ks_kv_prefix_end("/r/", 3, end);
        CHECK_EQ_INT(ks_kv_range(kv, K("/r/"), end, n, &r), KS_ERR_NONE);
        REQUIRE(r.count == 7);
        static const char *const sorted[] = {"/r/a", "/r/a/1", "/r/a/2", "/r/a/3", "/r/a0", "/r/b/1", "/r/c"};
        for (size_t i = 0; i < 7; i++)
                CHECK_EQ_STR((const char *)r.kvs[i].key, sorted[i]);
        ks_kv_result_free(&r);

        /* range_end "\0": everything from key on. */
        CHECK_EQ_INT(ks_kv_range(kv, K("/r/a0"), "\0", 1, &r), KS_ERR_NONE);
        REQUIRE(r.count >= 3);
        CHECK_EQ_STR((const char *)r.kvs[0].key, "/r/a0");
        CHECK_EQ_STR((const char *)r.kvs[1].key, "/r/b/1");
        CHECK_EQ_STR((const char *)r.kvs[2].key, "/r/c");
        ks_kv_result_free(&r);

        /* end <= key: empty. */
        CHECK_EQ_INT(ks_kv_range(kv, K("/r/c"), K("/r/a"), &r), KS_ERR_NONE);
        CHECK_EQ_INT(r.count, 0);
        ks_kv_result_free(&r);
}

static void kv_case_revisions(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        ks_kv_result_t r;
        int64_t r0, rev = 0, deleted = -1;

        REQUIRE(kv);
        r0 = cur_rev(kv);
        CHECK_EQ_INT(put_s(kv, "/v/k", "1", 0, &rev), KS_ERR_NONE);     /* r0+1 */
        CHECK_EQ_INT(put_s(kv, "/v/other", "x", 0, &rev), KS_ERR_NONE); /* r0+2 */
        CHECK_EQ_INT(put_s(kv, "/v/k", "2", 0, &rev), KS_ERR_NONE);     /* r0+3 */
        CHECK_EQ_INT(rev, r0 + 3);

        CHECK_EQ_INT(ks_kv_delete_range(kv, K("/v/k"), NULL, 0, &deleted, &rev), KS_ERR_NONE);
        CHECK_EQ_INT(deleted, 1);
        CHECK_EQ_INT(rev, r0 + 4);
        CHECK_EQ_INT(get1(kv, "/v/k", &r), 0);

        /* Deleting nothing: no new revision. */
        CHECK_EQ_INT(ks_kv_delete_range(kv, K("/v/k"), NULL, 0, &deleted, &rev), KS_ERR_NONE);
        CHECK_EQ_INT(deleted, 0);
        CHECK_EQ_INT(rev, r0 + 4);

        /* Re-created: version starts again at 1, new create_rev. */
        CHECK_EQ_INT(put_s(kv, "/v/k", "3", 0, &rev), KS_ERR_NONE);
        CHECK_EQ_INT(rev, r0 + 5);
        REQUIRE(get1(kv, "/v/k", &r) == 1);
        CHECK_EQ_INT(r.kvs[0].version, 1);
        CHECK_EQ_INT(r.kvs[0].create_rev, r0 + 5);
        CHECK_EQ_INT(r.kvs[0].mod_rev, r0 + 5);
        ks_kv_result_free(&r);

        /* The untouched key keeps its bookkeeping. */
        REQUIRE(get1(kv, "/v/other", &r) == 1);
        CHECK_EQ_INT(r.kvs[0].version, 1);
        CHECK_EQ_INT(r.kvs[0].create_rev, r0 + 2);
        CHECK_EQ_INT(r.kvs[0].mod_rev, r0 + 2);
        CHECK_EQ_INT(r.revision, r0 + 5);
        ks_kv_result_free(&r);
}

static void kv_case_delete_range(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        int64_t r0, rev = 0, deleted = -1;
        uint8_t end[16];

        REQUIRE(kv);
        CHECK_EQ_INT(put_s(kv, "/d/a/1", "", 0, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/d/a/2", "", 0, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/d/a/3", "", 0, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/d/b", "", 0, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/d/c", "", 0, NULL), KS_ERR_NONE);
        r0 = cur_rev(kv);

        /* A prefix delete is one revision whatever it removes. */
        size_t n = ks_kv_prefix_end("/d/a/", 5, end);
        CHECK_EQ_INT(ks_kv_delete_range(kv, K("/d/a/"), end, n, &deleted, &rev), KS_ERR_NONE);
        CHECK_EQ_INT(deleted, 3);
        CHECK_EQ_INT(rev, r0 + 1);
        CHECK_EQ_INT(count_prefix(kv, "/d/"), 2);

        /* [key, "\0"): to the end of the keyspace. */
        CHECK_EQ_INT(ks_kv_delete_range(kv, K("/d/b"), "\0", 1, &deleted, &rev), KS_ERR_NONE);
        CHECK(deleted >= 2); /* /d/b, /d/c, and anything after them */
        CHECK_EQ_INT(rev, r0 + 2);
        CHECK_EQ_INT(count_prefix(kv, "/d/"), 0);

        /* Empty range. */
        CHECK_EQ_INT(ks_kv_delete_range(kv, K("/d/"), end, n, &deleted, &rev), KS_ERR_NONE);
        CHECK_EQ_INT(deleted, 0);
        CHECK_EQ_INT(rev, r0 + 2);
}

typedef struct cmp_case {
        const char *key;
        ks_kv_cmp_target_t target;
        ks_kv_cmp_op_t op;
        int which;         /* number operand: 0 literal, 1 create_rev, 2 mod_rev, 3 lease */
        int64_t number;    /* literal, or offset added to `which` */
        const char *value; /* VALUE operand */
        bool expect;
} cmp_case_t;

static void kv_case_txn_compare(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        int64_t lease = 0, c_rev = 0, m_rev = 0;
        ks_kv_result_t r;

        REQUIRE(kv);
        CHECK_EQ_INT(ks_kv_lease_grant(kv, 60, &lease), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/c/k", "b", 0, &c_rev), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/c/k", "m", lease, &m_rev), KS_ERR_NONE);
        /* /c/k: version 2, create c_rev, mod m_rev, value "m", lease `lease` */

        static const cmp_case_t cases[] = {
            {"/c/k", KS_KV_CMP_VERSION, KS_KV_EQUAL, 0, 2, NULL, true},
            {"/c/k", KS_KV_CMP_VERSION, KS_KV_EQUAL, 0, 1, NULL, false},
            {"/c/k", KS_KV_CMP_VERSION, KS_KV_NOT_EQUAL, 0, 2, NULL, false},
            {"/c/k", KS_KV_CMP_VERSION, KS_KV_NOT_EQUAL, 0, 0, NULL, true},
            {"/c/k", KS_KV_CMP_VERSION, KS_KV_LESS, 0, 3, NULL, true},
            {"/c/k", KS_KV_CMP_VERSION, KS_KV_LESS, 0, 2, NULL, false},
            {"/c/k", KS_KV_CMP_VERSION, KS_KV_GREATER, 0, 1, NULL, true},
            {"/c/k", KS_KV_CMP_VERSION, KS_KV_GREATER, 0, 2, NULL, false},
            {"/c/k", KS_KV_CMP_CREATE, KS_KV_EQUAL, 1, 0, NULL, true},
            {"/c/k", KS_KV_CMP_CREATE, KS_KV_NOT_EQUAL, 1, 0, NULL, false},
            {"/c/k", KS_KV_CMP_CREATE, KS_KV_LESS, 1, 0, NULL, false},
            {"/c/k", KS_KV_CMP_CREATE, KS_KV_LESS, 1, 1, NULL, true},
            {"/c/k", KS_KV_CMP_CREATE, KS_KV_GREATER, 1, -1, NULL, true},
            {"/c/k", KS_KV_CMP_MOD, KS_KV_EQUAL, 2, 0, NULL, true},
            {"/c/k", KS_KV_CMP_MOD, KS_KV_EQUAL, 1, 0, NULL, false},
            {"/c/k", KS_KV_CMP_MOD, KS_KV_NOT_EQUAL, 1, 0, NULL, true},
            {"/c/k", KS_KV_CMP_MOD, KS_KV_LESS, 2, 0, NULL, false},
            {"/c/k", KS_KV_CMP_MOD, KS_KV_GREATER, 1, 0, NULL, true},
            {"/c/k", KS_KV_CMP_LEASE, KS_KV_EQUAL, 3, 0, NULL, true},
            {"/c/k", KS_KV_CMP_LEASE, KS_KV_EQUAL, 0, 0, NULL, false},
            {"/c/k", KS_KV_CMP_LEASE, KS_KV_NOT_EQUAL, 0, 0, NULL, true},
            {"/c/k", KS_KV_CMP_LEASE, KS_KV_GREATER, 0, 0, NULL, true},
            {"/c/k", KS_KV_CMP_LEASE, KS_KV_LESS, 3, 0, NULL, false},
            {"/c/k", KS_KV_CMP_VALUE, KS_KV_EQUAL, 0, 0, "m", true},
            {"/c/k", KS_KV_CMP_VALUE, KS_KV_EQUAL, 0, 0, "b", false},
            {"/c/k", KS_KV_CMP_VALUE, KS_KV_NOT_EQUAL, 0, 0, "b", true},
            {"/c/k", KS_KV_CMP_VALUE, KS_KV_NOT_EQUAL, 0, 0, "m", false},
            {"/c/k", KS_KV_CMP_VALUE, KS_KV_LESS, 0, 0, "n", true},
            {"/c/k", KS_KV_CMP_VALUE, KS_KV_LESS, 0, 0, "ma", true}, /* shorter sorts first */
            {"/c/k", KS_KV_CMP_VALUE, KS_KV_LESS, 0, 0, "m", false},
            {"/c/k", KS_KV_CMP_VALUE, KS_KV_GREATER, 0, 0, "a", true},
            {"/c/k", KS_KV_CMP_VALUE, KS_KV_GREATER, 0, 0, "", true},
            {"/c/k", KS_KV_CMP_VALUE, KS_KV_GREATER, 0, 0, "ma", false},
            /* An absent key: 0 for numbers; a VALUE compare always fails. */
            {"/c/none", KS_KV_CMP_VERSION, KS_KV_EQUAL, 0, 0, NULL, true},
            {"/c/none", KS_KV_CMP_CREATE, KS_KV_EQUAL, 0, 0, NULL, true},
            {"/c/none", KS_KV_CMP_MOD, KS_KV_LESS, 0, 1, NULL, true},
            {"/c/none", KS_KV_CMP_LEASE, KS_KV_EQUAL, 0, 0, NULL, true},
            {"/c/none", KS_KV_CMP_VERSION, KS_KV_GREATER, 0, 0, NULL, false},
            {"/c/none", KS_KV_CMP_VALUE, KS_KV_EQUAL, 0, 0, "", false},
            {"/c/none", KS_KV_CMP_VALUE, KS_KV_NOT_EQUAL, 0, 0, "x", false},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                const cmp_case_t *t = &cases[i];
                int64_t base = t->which == 1 ? c_rev : t->which == 2 ? m_rev : t->which == 3 ? lease : 0;
                ks_kv_cmp_t cmp = {.key = t->key,
                                   .key_len = strlen(t->key),
                                   .target = t->target,
                                   .op = t->op,
                                   .number = base + t->number,
                                   .value = t->value,
                                   .value_len = t->value ? strlen(t->value) : 0};
                ks_kv_op_t ok = {.type = KS_KV_OP_PUT, .key = "/c/res", .key_len = 6, .value = "s", .value_len = 1};
                ks_kv_op_t ko = {.type = KS_KV_OP_PUT, .key = "/c/res", .key_len = 6, .value = "f", .value_len = 1};
                bool succeeded = !t->expect;
                int64_t rev = 0, before = cur_rev(kv);
                CHECK_EQ_INT(ks_kv_txn(kv, &cmp, 1, &ok, 1, &ko, 1, &succeeded, &rev), KS_ERR_NONE);
                if (succeeded != t->expect)
                        fprintf(stderr, "  txn compare case %zu: expected %d\n", i, t->expect);
                CHECK(succeeded == t->expect);
                CHECK_EQ_INT(rev, before + 1);
                REQUIRE(get1(kv, "/c/res", &r) == 1);
                CHECK_EQ_STR((const char *)r.kvs[0].value, t->expect ? "s" : "f");
                ks_kv_result_free(&r);
        }

        /* Several compares: all must hold. */
        ks_kv_cmp_t two[2] = {
            {.key = "/c/k", .key_len = 4, .target = KS_KV_CMP_VERSION, .op = KS_KV_EQUAL, .number = 2},
            {.key = "/c/k", .key_len = 4, .target = KS_KV_CMP_MOD, .op = KS_KV_EQUAL, .number = m_rev},
        };
        bool succeeded = false;
        CHECK_EQ_INT(ks_kv_txn(kv, two, 2, NULL, 0, NULL, 0, &succeeded, NULL), KS_ERR_NONE);
        CHECK(succeeded);
        two[1].number = m_rev + 1;
        CHECK_EQ_INT(ks_kv_txn(kv, two, 2, NULL, 0, NULL, 0, &succeeded, NULL), KS_ERR_NONE);
        CHECK(!succeeded);
        /* No compares: success. */
        CHECK_EQ_INT(ks_kv_txn(kv, NULL, 0, NULL, 0, NULL, 0, &succeeded, NULL), KS_ERR_NONE);
        CHECK(succeeded);
}

static void kv_case_txn_branches(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        ks_kv_result_t r;
        int64_t r0, rev = 0;
        bool succeeded = false;

        REQUIRE(kv);
        CHECK_EQ_INT(put_s(kv, "/x/old1", "o", 0, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/x/old2", "o", 0, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/x/keep", "o", 0, NULL), KS_ERR_NONE);
        r0 = cur_rev(kv);

        /* Success branch: two puts and a range delete, one revision. */
        ks_kv_cmp_t cmp = {
            .key = "/x/keep", .key_len = 7, .target = KS_KV_CMP_VALUE, .op = KS_KV_EQUAL, .value = "o", .value_len = 1};
        ks_kv_op_t succ[] = {
            {.type = KS_KV_OP_PUT, .key = "/x/a", .key_len = 4, .value = "A", .value_len = 1},
            {.type = KS_KV_OP_PUT, .key = "/x/keep", .key_len = 7, .value = "K", .value_len = 1},
            {.type = KS_KV_OP_DELETE, .key = "/x/old", .key_len = 6, .range_end = "/x/old\xff", .range_end_len = 7},
        };
        ks_kv_op_t fail[] = {
            {.type = KS_KV_OP_PUT, .key = "/x/failed", .key_len = 9, .value = "F", .value_len = 1},
        };
        CHECK_EQ_INT(ks_kv_txn(kv, &cmp, 1, succ, 3, fail, 1, &succeeded, &rev), KS_ERR_NONE);
        CHECK(succeeded);
        CHECK_EQ_INT(rev, r0 + 1);
        REQUIRE(get1(kv, "/x/a", &r) == 1);
        CHECK_EQ_INT(r.kvs[0].mod_rev, r0 + 1);
        ks_kv_result_free(&r);
        REQUIRE(get1(kv, "/x/keep", &r) == 1);
        CHECK_EQ_STR((const char *)r.kvs[0].value, "K");
        CHECK_EQ_INT(r.kvs[0].mod_rev, r0 + 1);
        CHECK_EQ_INT(r.kvs[0].version, 2);
        ks_kv_result_free(&r);
        CHECK(!exists(kv, "/x/old1"));
        CHECK(!exists(kv, "/x/old2"));
        CHECK(!exists(kv, "/x/failed"));

        /* Same compare now fails: the failure branch runs. */
        CHECK_EQ_INT(ks_kv_txn(kv, &cmp, 1, succ, 3, fail, 1, &succeeded, &rev), KS_ERR_NONE);
        CHECK(!succeeded);
        CHECK_EQ_INT(rev, r0 + 2);
        CHECK(exists(kv, "/x/failed"));
        REQUIRE(get1(kv, "/x/keep", &r) == 1);
        CHECK_EQ_STR((const char *)r.kvs[0].value, "K");
        ks_kv_result_free(&r);

        /* A failing compare with an empty failure branch writes nothing. */
        CHECK_EQ_INT(ks_kv_txn(kv, &cmp, 1, succ, 3, NULL, 0, &succeeded, &rev), KS_ERR_NONE);
        CHECK(!succeeded);
        CHECK_EQ_INT(rev, r0 + 2);
        /* A delete that removes nothing is no write either. */
        ks_kv_op_t nodel = {.type = KS_KV_OP_DELETE, .key = "/x/none", .key_len = 7};
        CHECK_EQ_INT(ks_kv_txn(kv, NULL, 0, &nodel, 1, NULL, 0, &succeeded, &rev), KS_ERR_NONE);
        CHECK(succeeded);
        CHECK_EQ_INT(rev, r0 + 2);

        /* Invalid branches (as etcd: a key put twice, or put and deleted). */
        ks_kv_op_t dup[] = {
            {.type = KS_KV_OP_PUT, .key = "/x/d", .key_len = 4, .value = "1", .value_len = 1},
            {.type = KS_KV_OP_PUT, .key = "/x/d", .key_len = 4, .value = "2", .value_len = 1},
        };
        CHECK_EQ_INT(ks_kv_txn(kv, NULL, 0, dup, 2, NULL, 0, &succeeded, &rev), KS_ERR__INVALID_ARG);
        ks_kv_op_t overlap[] = {
            {.type = KS_KV_OP_PUT, .key = "/x/a", .key_len = 4, .value = "1", .value_len = 1},
            {.type = KS_KV_OP_DELETE, .key = "/x/", .key_len = 3, .range_end = "/x0", .range_end_len = 3},
        };
        CHECK_EQ_INT(ks_kv_txn(kv, NULL, 0, overlap, 2, NULL, 0, &succeeded, &rev), KS_ERR__INVALID_ARG);
        ks_kv_op_t nokey = {.type = KS_KV_OP_PUT, .key = "", .key_len = 0, .value = "1", .value_len = 1};
        CHECK_EQ_INT(ks_kv_txn(kv, NULL, 0, NULL, 0, &nokey, 1, &succeeded, &rev), KS_ERR__INVALID_ARG);
        ks_kv_cmp_t badcmp = {.key = "", .key_len = 0, .target = KS_KV_CMP_VERSION, .op = KS_KV_EQUAL};
        CHECK_EQ_INT(ks_kv_txn(kv, &badcmp, 1, NULL, 0, NULL, 0, &succeeded, &rev), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(cur_rev(kv), r0 + 2);
        CHECK(!exists(kv, "/x/d"));
}

/* Create-if-absent: compare version == 0 (a lock / registration pattern). */
static void kv_case_txn_create_if_absent(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        ks_kv_result_t r;
        int64_t rev1 = 0, rev2 = 0;
        bool succeeded = false;

        REQUIRE(kv);
        ks_kv_cmp_t absent = {
            .key = "/l/owner", .key_len = 8, .target = KS_KV_CMP_VERSION, .op = KS_KV_EQUAL, .number = 0};
        ks_kv_op_t take1 = {.type = KS_KV_OP_PUT, .key = "/l/owner", .key_len = 8, .value = "b1", .value_len = 2};
        ks_kv_op_t take2 = {.type = KS_KV_OP_PUT, .key = "/l/owner", .key_len = 8, .value = "b2", .value_len = 2};

        CHECK_EQ_INT(ks_kv_txn(kv, &absent, 1, &take1, 1, NULL, 0, &succeeded, &rev1), KS_ERR_NONE);
        CHECK(succeeded);
        CHECK_EQ_INT(ks_kv_txn(kv, &absent, 1, &take2, 1, NULL, 0, &succeeded, &rev2), KS_ERR_NONE);
        CHECK(!succeeded);
        CHECK_EQ_INT(rev2, rev1);
        REQUIRE(get1(kv, "/l/owner", &r) == 1);
        CHECK_EQ_STR((const char *)r.kvs[0].value, "b1");
        CHECK_EQ_INT(r.kvs[0].version, 1);
        int64_t mod = r.kvs[0].mod_rev;
        ks_kv_result_free(&r);

        /* Read-modify-write guarded by mod_rev: a stale writer loses. */
        ks_kv_cmp_t guard = {
            .key = "/l/owner", .key_len = 8, .target = KS_KV_CMP_MOD, .op = KS_KV_EQUAL, .number = mod};
        CHECK_EQ_INT(ks_kv_txn(kv, &guard, 1, &take2, 1, NULL, 0, &succeeded, NULL), KS_ERR_NONE);
        CHECK(succeeded);
        CHECK_EQ_INT(ks_kv_txn(kv, &guard, 1, &take1, 1, NULL, 0, &succeeded, NULL), KS_ERR_NONE);
        CHECK(!succeeded);

        /* After a delete the key can be taken again, at version 1. */
        CHECK_EQ_INT(ks_kv_delete_range(kv, K("/l/owner"), NULL, 0, NULL, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(ks_kv_txn(kv, &absent, 1, &take1, 1, NULL, 0, &succeeded, NULL), KS_ERR_NONE);
        CHECK(succeeded);
        REQUIRE(get1(kv, "/l/owner", &r) == 1);
        CHECK_EQ_INT(r.kvs[0].version, 1);
        ks_kv_result_free(&r);
}

static void kv_case_lease_basic(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        ks_kv_result_t r;
        int64_t lease = 0, lease2 = 0, ttl = 0, rev = 0, r0;

        REQUIRE(kv);
        CHECK_EQ_INT(ks_kv_lease_grant(kv, 0, &lease), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_kv_lease_grant(kv, -5, &lease), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_kv_lease_grant(kv, 30, &lease), KS_ERR_NONE);
        CHECK(lease > 0);
        CHECK_EQ_INT(ks_kv_lease_grant(kv, 30, &lease2), KS_ERR_NONE);
        CHECK(lease2 > 0 && lease2 != lease);

        CHECK_EQ_INT(put_s(kv, "/lb/a", "1", lease, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/lb/b", "1", lease, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/lb/c", "1", lease2, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/lb/d", "1", lease, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/lb/d", "2", 0, NULL), KS_ERR_NONE); /* detached again */
        REQUIRE(get1(kv, "/lb/a", &r) == 1);
        CHECK_EQ_INT(r.kvs[0].lease, lease);
        ks_kv_result_free(&r);

        CHECK_EQ_INT(ks_kv_lease_keepalive(kv, lease, &ttl), KS_ERR_NONE);
        CHECK_EQ_INT(ttl, 30);

        /* Revoke: its keys go in one revision; others stay. */
        r0 = cur_rev(kv);
        CHECK_EQ_INT(ks_kv_lease_revoke(kv, lease), KS_ERR_NONE);
        CHECK_EQ_INT(cur_rev(kv), r0 + 1);
        CHECK(!exists(kv, "/lb/a"));
        CHECK(!exists(kv, "/lb/b"));
        CHECK(exists(kv, "/lb/c"));
        CHECK(exists(kv, "/lb/d"));

        CHECK_EQ_INT(ks_kv_lease_keepalive(kv, lease, &ttl), KS_ERR__LEASE_LOST);
        CHECK_EQ_INT(ks_kv_lease_revoke(kv, lease), KS_ERR__LEASE_LOST);
        CHECK_EQ_INT(put_s(kv, "/lb/e", "1", lease, &rev), KS_ERR__LEASE_LOST);
        CHECK(!exists(kv, "/lb/e"));
        CHECK_EQ_INT(put_s(kv, "/lb/e", "1", 987654321, &rev), KS_ERR__LEASE_LOST);

        /* A lease with no keys: revoking it writes nothing. */
        int64_t lease3 = 0;
        CHECK_EQ_INT(ks_kv_lease_grant(kv, 30, &lease3), KS_ERR_NONE);
        r0 = cur_rev(kv);
        CHECK_EQ_INT(ks_kv_lease_revoke(kv, lease3), KS_ERR_NONE);
        CHECK_EQ_INT(cur_rev(kv), r0);

        /* A txn putting with a dead lease fails as a whole. */
        ks_kv_op_t ops[] = {
            {.type = KS_KV_OP_PUT, .key = "/lb/f", .key_len = 5, .value = "1", .value_len = 1},
            {.type = KS_KV_OP_PUT, .key = "/lb/g", .key_len = 5, .value = "1", .value_len = 1, .lease = lease},
        };
        bool succeeded = false;
        CHECK_EQ_INT(ks_kv_txn(kv, NULL, 0, ops, 2, NULL, 0, &succeeded, NULL), KS_ERR__LEASE_LOST);
        CHECK(!exists(kv, "/lb/f"));
}

/* Expiry driven by the fake clock: by the backend's own thread (waited for
 * through the watch), and checked on the next call. */
static void kv_case_lease_expiry(kv_fx_t *fx)
{
        if (!fx->be->fake_clock)
                return;
        ks_kv_t *kv = fx_open(fx);
        ks_kv_watch_t *w = NULL;
        int64_t lease = 0, ttl = 0, r0;

        REQUIRE(kv);
        CHECK_EQ_INT(ks_kv_lease_grant(kv, 2, &lease), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/le/a", "1", lease, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/le/b", "1", lease, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/le/c", "1", 0, NULL), KS_ERR_NONE);
        kv_col_t *c = watch_into(fx, kv, "/le/", "", 0, &w);
        REQUIRE(c);
        r0 = cur_rev(kv);

        /* Keepalive in time extends the deadline. */
        ks_clock_fake_advance(&fx->clock, 1500);
        CHECK_EQ_INT(ks_kv_lease_keepalive(kv, lease, &ttl), KS_ERR_NONE);
        CHECK_EQ_INT(ttl, 2);
        ks_clock_fake_advance(&fx->clock, 1500); /* 3 s after grant, 1.5 s after keepalive */
        CHECK(exists(kv, "/le/a"));
        CHECK_EQ_INT(cur_rev(kv), r0);

        /* Past the TTL: the backend deletes both keys in one revision. */
        ks_clock_fake_advance(&fx->clock, 600);
        REQUIRE(col_wait(c, 2));
        pthread_mutex_lock(&c->mu);
        CHECK_EQ_INT(c->n, 2);
        CHECK_EQ_INT(c->calls, 1);
        CHECK(c->ev[0].type == KS_KV_EV_DELETE && c->ev[1].type == KS_KV_EV_DELETE);
        CHECK_EQ_STR(c->ev[0].key, "/le/a");
        CHECK_EQ_STR(c->ev[1].key, "/le/b");
        CHECK_EQ_INT(c->ev[0].rev, r0 + 1);
        CHECK_EQ_INT(c->ev[1].rev, r0 + 1);
        CHECK_EQ_INT(c->ev[0].mod_rev, r0 + 1);
        pthread_mutex_unlock(&c->mu);
        CHECK(!exists(kv, "/le/a"));
        CHECK(!exists(kv, "/le/b"));
        CHECK(exists(kv, "/le/c"));
        CHECK_EQ_INT(cur_rev(kv), r0 + 1);
        CHECK_EQ_INT(ks_kv_lease_keepalive(kv, lease, &ttl), KS_ERR__LEASE_LOST);
        CHECK_EQ_INT(put_s(kv, "/le/d", "1", lease, NULL), KS_ERR__LEASE_LOST);

        /* Expiry is also checked by every call: no waiting needed. */
        int64_t l2 = 0;
        CHECK_EQ_INT(ks_kv_lease_grant(kv, 1, &l2), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/le/e", "1", l2, NULL), KS_ERR_NONE);
        ks_clock_fake_advance(&fx->clock, 1001);
        CHECK_EQ_INT(ks_kv_lease_keepalive(kv, l2, &ttl), KS_ERR__LEASE_LOST);
        CHECK(!exists(kv, "/le/e"));
        CHECK(col_wait(c, 4)); /* PUT /le/e, DELETE /le/e */
        ks_kv_watch_cancel(kv, w);
}

static void kv_case_watch_events(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        ks_kv_watch_t *w = NULL, *w1 = NULL;
        int64_t r0;
        bool succeeded = false;

        REQUIRE(kv);
        CHECK_EQ_INT(put_s(kv, "/w/before", "0", 0, NULL), KS_ERR_NONE);
        kv_col_t *c = watch_into(fx, kv, "/w/", "", 0, &w);
        kv_col_t *one = watch_into(fx, kv, "/w/b", NULL, 0, &w1);
        REQUIRE(c && one);
        r0 = cur_rev(kv);

        CHECK_EQ_INT(put_s(kv, "/w/a", "1", 0, NULL), KS_ERR_NONE);                        /* r0+1 */
        CHECK_EQ_INT(put_s(kv, "/other", "x", 0, NULL), KS_ERR_NONE);                      /* r0+2, not watched */
        CHECK_EQ_INT(put_s(kv, "/w/a", "2", 0, NULL), KS_ERR_NONE);                        /* r0+3 */
        CHECK_EQ_INT(ks_kv_delete_range(kv, K("/w/a"), NULL, 0, NULL, NULL), KS_ERR_NONE); /* r0+4 */
        ks_kv_op_t ops[] = {
            {.type = KS_KV_OP_PUT, .key = "/w/b", .key_len = 4, .value = "B", .value_len = 1},
            {.type = KS_KV_OP_PUT, .key = "/w/c", .key_len = 4, .value = "C", .value_len = 1},
            {.type = KS_KV_OP_PUT, .key = "/zz", .key_len = 3, .value = "Z", .value_len = 1},
            {.type = KS_KV_OP_DELETE, .key = "/w/before", .key_len = 9},
        };
        CHECK_EQ_INT(ks_kv_txn(kv, NULL, 0, ops, 4, NULL, 0, &succeeded, NULL), KS_ERR_NONE); /* r0+5 */

        REQUIRE(col_wait(c, 6));
        REQUIRE(col_wait(one, 1));
        pthread_mutex_lock(&c->mu);
        CHECK_EQ_INT(c->n, 6);
        CHECK(!c->mixed_rev && !c->out_of_order);
        CHECK_EQ_INT(c->calls, 4);
        /* put /w/a v1 */
        CHECK(c->ev[0].type == KS_KV_EV_PUT);
        CHECK_EQ_STR(c->ev[0].key, "/w/a");
        CHECK_EQ_STR(c->ev[0].value, "1");
        CHECK_EQ_INT(c->ev[0].rev, r0 + 1);
        CHECK_EQ_INT(c->ev[0].create_rev, r0 + 1);
        CHECK_EQ_INT(c->ev[0].mod_rev, r0 + 1);
        CHECK_EQ_INT(c->ev[0].version, 1);
        /* put /w/a v2 */
        CHECK_EQ_STR(c->ev[1].value, "2");
        CHECK_EQ_INT(c->ev[1].rev, r0 + 3);
        CHECK_EQ_INT(c->ev[1].create_rev, r0 + 1);
        CHECK_EQ_INT(c->ev[1].version, 2);
        /* delete /w/a: key and deletion revision */
        CHECK(c->ev[2].type == KS_KV_EV_DELETE);
        CHECK_EQ_STR(c->ev[2].key, "/w/a");
        CHECK_EQ_INT(c->ev[2].rev, r0 + 4);
        CHECK_EQ_INT(c->ev[2].mod_rev, r0 + 4);
        /* the txn: one call, one revision, only the watched keys, op order */
        CHECK_EQ_INT(c->ev[3].call, 3);
        CHECK_EQ_INT(c->ev[4].call, 3);
        CHECK_EQ_INT(c->ev[5].call, 3);
        CHECK_EQ_STR(c->ev[3].key, "/w/b");
        CHECK_EQ_STR(c->ev[4].key, "/w/c");
        CHECK_EQ_STR(c->ev[5].key, "/w/before");
        CHECK(c->ev[5].type == KS_KV_EV_DELETE);
        for (int i = 3; i < 6; i++)
                CHECK_EQ_INT(c->ev[i].rev, r0 + 5);
        pthread_mutex_unlock(&c->mu);

        pthread_mutex_lock(&one->mu);
        CHECK_EQ_INT(one->n, 1);
        CHECK_EQ_STR(one->ev[0].key, "/w/b");
        CHECK_EQ_INT(one->ev[0].rev, r0 + 5);
        pthread_mutex_unlock(&one->mu);

        ks_kv_watch_cancel(kv, w);
        ks_kv_watch_cancel(kv, w1);
}

/* start_rev in the past, within the retained history: replay, then live. */
static void kv_case_watch_replay(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        ks_kv_watch_t *w1 = NULL, *w2 = NULL;
        int64_t r1 = 0, r2 = 0, r3 = 0, r4 = 0;

        REQUIRE(kv);
        CHECK_EQ_INT(put_s(kv, "/p/a", "1", 0, &r1), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/p/b", "1", 0, &r2), KS_ERR_NONE);
        CHECK_EQ_INT(ks_kv_delete_range(kv, K("/p/a"), NULL, 0, NULL, &r3), KS_ERR_NONE);

        kv_col_t *all = watch_into(fx, kv, "/p/", "", r1, &w1);
        kv_col_t *late = watch_into(fx, kv, "/p/", "", r2, &w2);
        REQUIRE(all && late);
        REQUIRE(col_wait(all, 3));
        REQUIRE(col_wait(late, 2));
        CHECK_EQ_INT(put_s(kv, "/p/c", "1", 0, &r4), KS_ERR_NONE);
        REQUIRE(col_wait(all, 4));
        REQUIRE(col_wait(late, 3));

        pthread_mutex_lock(&all->mu);
        CHECK_EQ_INT(all->n, 4);
        CHECK(!all->out_of_order && !all->mixed_rev);
        CHECK_EQ_INT(all->ev[0].rev, r1);
        CHECK_EQ_STR(all->ev[0].key, "/p/a");
        CHECK_EQ_INT(all->ev[1].rev, r2);
        CHECK_EQ_INT(all->ev[2].rev, r3);
        CHECK(all->ev[2].type == KS_KV_EV_DELETE);
        CHECK_EQ_INT(all->ev[3].rev, r4);
        pthread_mutex_unlock(&all->mu);

        pthread_mutex_lock(&late->mu);
        CHECK_EQ_INT(late->n, 3);
        CHECK_EQ_INT(late->ev[0].rev, r2);
        CHECK_EQ_STR(late->ev[0].key, "/p/b");
        CHECK_EQ_INT(late->ev[1].rev, r3);
        CHECK_EQ_INT(late->ev[2].rev, r4);
        pthread_mutex_unlock(&late->mu);
        ks_kv_watch_cancel(kv, w1);
        ks_kv_watch_cancel(kv, w2);
}

/* start_rev older than the retained history: one COMPACTED, then live. */
static void kv_case_watch_compacted(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        ks_kv_watch_t *w = NULL, *w2 = NULL;
        int64_t r1 = 0, rc = 0, r5 = 0;

        REQUIRE(kv);
        REQUIRE(fx->be->compact);
        CHECK_EQ_INT(put_s(kv, "/q/a", "1", 0, &r1), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/q/a", "2", 0, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/q/b", "1", 0, &rc), KS_ERR_NONE);
        fx->be->compact(kv, fx->arg); /* history up to rc is gone */

        kv_col_t *c = watch_into(fx, kv, "/q/", "", r1, &w);
        REQUIRE(c);
        REQUIRE(col_wait(c, 1));
        pthread_mutex_lock(&c->mu);
        CHECK(c->ev[0].type == KS_KV_EV_COMPACTED);
        CHECK_EQ_INT(c->ev[0].rev, rc);
        pthread_mutex_unlock(&c->mu);

        /* The watch stays open. */
        CHECK_EQ_INT(put_s(kv, "/q/c", "1", 0, &r5), KS_ERR_NONE);
        REQUIRE(col_wait(c, 2));
        pthread_mutex_lock(&c->mu);
        CHECK_EQ_INT(c->n, 2);
        CHECK(c->ev[1].type == KS_KV_EV_PUT);
        CHECK_EQ_STR(c->ev[1].key, "/q/c");
        CHECK_EQ_INT(c->ev[1].rev, r5);
        pthread_mutex_unlock(&c->mu);

        /* Starting right after the compaction point is still complete. */
        kv_col_t *c2 = watch_into(fx, kv, "/q/", "", rc + 1, &w2);
        REQUIRE(c2);
        REQUIRE(col_wait(c2, 1));
        pthread_mutex_lock(&c2->mu);
        CHECK(c2->ev[0].type == KS_KV_EV_PUT);
        CHECK_EQ_INT(c2->ev[0].rev, r5);
        pthread_mutex_unlock(&c2->mu);
        ks_kv_watch_cancel(kv, w);
        ks_kv_watch_cancel(kv, w2);
}

typedef struct cancel_arg {
        ks_kv_t *kv;
        ks_kv_watch_t *w;
        kv_col_t *c;
} cancel_arg_t;

static void *cancel_thread(void *p)
{
        cancel_arg_t *a = p;
        pthread_mutex_lock(&a->c->mu);
        a->c->cancel_started = true;
        pthread_cond_broadcast(&a->c->cv);
        pthread_mutex_unlock(&a->c->mu);
        ks_kv_watch_cancel(a->kv, a->w);
        pthread_mutex_lock(&a->c->mu);
        a->c->cancel_returned = true;
        pthread_mutex_unlock(&a->c->mu);
        return NULL;
}

/* After watch_cancel returns no callback runs, even when one was running. */
static void kv_case_watch_cancel(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        ks_kv_watch_t *w = NULL, *ws = NULL;

        REQUIRE(kv);
        kv_col_t *c = watch_into(fx, kv, "/cx/", "", 0, &w);
        REQUIRE(c);

        /* Block the callback, cancel from another thread, release. */
        pthread_mutex_lock(&c->mu);
        c->block = true;
        pthread_mutex_unlock(&c->mu);
        CHECK_EQ_INT(put_s(kv, "/cx/a", "1", 0, NULL), KS_ERR_NONE);
        struct timespec ts;
        ks_deadline_after_ms(&ts, KV_WAIT_MS);
        pthread_mutex_lock(&c->mu);
        while (c->entered == 0 && pthread_cond_timedwait(&c->cv, &c->mu, &ts) == 0)
                ;
        bool entered = c->entered > 0;
        pthread_mutex_unlock(&c->mu);
        REQUIRE(entered);

        cancel_arg_t a = {kv, w, c};
        pthread_t t;
        REQUIRE(pthread_create(&t, NULL, cancel_thread, &a) == 0);
        pthread_mutex_lock(&c->mu);
        while (!c->cancel_started)
                pthread_cond_wait(&c->cv, &c->mu);
        pthread_mutex_unlock(&c->mu);
        /* Give the canceller time to block inside cancel.  This only widens
         * what the test covers; it passes either way if cancel is correct. */
        usleep(50 * 1000);
        pthread_mutex_lock(&c->mu);
        bool returned_while_blocked = c->cancel_returned;
        c->block = false;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        pthread_join(t, NULL);
        CHECK(!returned_while_blocked);

        /* More writes: a later watch sees them, the cancelled one does not. */
        kv_col_t *s = watch_into(fx, kv, "/cx/", "", 0, &ws);
        REQUIRE(s);
        size_t n_before = col_count(c);
        for (int i = 0; i < 5; i++)
                CHECK_EQ_INT(put_s(kv, "/cx/b", "1", 0, NULL), KS_ERR_NONE);
        REQUIRE(col_wait(s, 5));
        pthread_mutex_lock(&c->mu);
        CHECK_EQ_INT(c->n, n_before);
        CHECK_EQ_INT(c->n, 1);
        CHECK(c->cancel_returned);
        CHECK(!c->returned_seen_in_cb);
        pthread_mutex_unlock(&c->mu);
        ks_kv_watch_cancel(kv, ws);
}

/* A callback may call back into the store (it runs on a backend thread). */
typedef struct echo {
        ks_kv_t *kv;
        int done;
        ks_err_t err;
} echo_t;

static void echo_cb(void *opaque, const ks_kv_event_t *evs, size_t n)
{
        echo_t *e = opaque;
        if (__atomic_load_n(&e->done, __ATOMIC_SEQ_CST))
                return;
        ks_kv_result_t r;
        ks_err_t err = ks_kv_range(e->kv, K("/e/src"), NULL, 0, &r);
        if (!err) {
                ks_kv_result_free(&r);
                err = put_s(e->kv, "/e/dst", "echo", 0, NULL);
        }
        e->err = err;
        __atomic_store_n(&e->done, 1, __ATOMIC_SEQ_CST);
}

static void kv_case_watch_reentrant(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        ks_kv_watch_t *w = NULL, *wd = NULL;
        echo_t e = {kv, 0, 0};

        REQUIRE(kv);
        kv_col_t *dst = watch_into(fx, kv, "/e/dst", NULL, 0, &wd);
        REQUIRE(dst);
        REQUIRE(ks_kv_watch(kv, K("/e/src"), NULL, 0, 0, echo_cb, &e, &w) == KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/e/src", "x", 0, NULL), KS_ERR_NONE);
        REQUIRE(col_wait(dst, 1));
        CHECK_EQ_INT(__atomic_load_n(&e.done, __ATOMIC_SEQ_CST), 1);
        CHECK_EQ_INT(e.err, KS_ERR_NONE);
        ks_kv_watch_cancel(kv, w);
        ks_kv_watch_cancel(kv, wd);
}

#define KV_WRITERS 4
#define KV_WRITES 100

typedef struct writer {
        ks_kv_t *kv;
        int id;
        int64_t revs[KV_WRITES];
        int errors;
} writer_t;

static void *writer_main(void *p)
{
        writer_t *wr = p;
        char key[64];
        for (int i = 0; i < KV_WRITES; i++) {
                if (i % 10 == 0)
                        snprintf(key, sizeof(key), "/cw/shared");
                else
                        snprintf(key, sizeof(key), "/cw/%d/%03d", wr->id, i);
                if (put_s(wr->kv, key, "v", 0, &wr->revs[i]) != KS_ERR_NONE)
                        wr->errors++;
        }
        return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
        int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
        return x < y ? -1 : x > y;
}

/* Concurrent writers: every write gets its own revision, and a watch sees
 * them strictly increasing. */
static void kv_case_concurrent_writers(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        ks_kv_watch_t *w = NULL;
        writer_t wr[KV_WRITERS];
        pthread_t t[KV_WRITERS];
        int64_t r0;

        REQUIRE(kv);
        kv_col_t *c = watch_into(fx, kv, "/cw/", "", 0, &w);
        REQUIRE(c);
        r0 = cur_rev(kv);
        for (int i = 0; i < KV_WRITERS; i++) {
                memset(&wr[i], 0, sizeof(wr[i]));
                wr[i].kv = kv;
                wr[i].id = i;
                REQUIRE(pthread_create(&t[i], NULL, writer_main, &wr[i]) == 0);
        }
        for (int i = 0; i < KV_WRITERS; i++)
                pthread_join(t[i], NULL);

        const size_t total = KV_WRITERS * KV_WRITES;
        int64_t *all = malloc(total * sizeof(*all));
        size_t n = 0;
        for (int i = 0; i < KV_WRITERS; i++) {
                CHECK_EQ_INT(wr[i].errors, 0);
                for (int j = 0; j < KV_WRITES; j++) {
                        if (j > 0)
                                CHECK(wr[i].revs[j] > wr[i].revs[j - 1]);
                        all[n++] = wr[i].revs[j];
                }
        }
        qsort(all, n, sizeof(*all), cmp_i64);
        bool dense = true;
        for (size_t i = 0; i < n; i++)
                if (all[i] != r0 + 1 + (int64_t)i)
                        dense = false;
        CHECK(dense); /* unique, and exactly r0+1 .. r0+total */

        REQUIRE(col_wait(c, total));
        pthread_mutex_lock(&c->mu);
        CHECK_EQ_INT(c->n, total);
        CHECK(!c->out_of_order && !c->mixed_rev);
        bool increasing = true;
        for (size_t i = 0; i < c->n; i++) {
                if (c->ev[i].rev != all[i])
                        increasing = false;
        }
        CHECK(increasing);
        pthread_mutex_unlock(&c->mu);
        free(all);

        ks_kv_result_t r;
        REQUIRE(get1(kv, "/cw/shared", &r) == 1);
        CHECK_EQ_INT(r.kvs[0].version, KV_WRITERS * (KV_WRITES / 10));
        ks_kv_result_free(&r);
        CHECK_EQ_INT(count_prefix(kv, "/cw/"), 1 + KV_WRITERS * (KV_WRITES - KV_WRITES / 10));
        ks_kv_watch_cancel(kv, w);
}

/* ---------------------------------------------- backend-specific cases */

/* The in-process engine keeps KS_KV_HISTORY_EVENTS events; older start
 * revisions report COMPACTED at (oldest retained - 1). */
static void kv_case_history_overflow(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        ks_kv_watch_t *w = NULL, *w2 = NULL;
        const int extra = 5;
        int64_t r0;

        REQUIRE(kv);
        r0 = cur_rev(kv);
        for (int i = 0; i < KS_KV_HISTORY_EVENTS + extra; i++)
                REQUIRE(put_s(kv, "/h/k", "v", 0, NULL) == KS_ERR_NONE);

        kv_col_t *old = watch_into(fx, kv, "/h/", "", r0 + 1, &w);
        kv_col_t *edge = watch_into(fx, kv, "/h/", "", r0 + extra + 1, &w2);
        REQUIRE(old && edge);
        REQUIRE(col_wait(old, 1));
        REQUIRE(col_wait(edge, KS_KV_HISTORY_EVENTS));
        pthread_mutex_lock(&old->mu);
        CHECK_EQ_INT(old->n, 1);
        CHECK(old->ev[0].type == KS_KV_EV_COMPACTED);
        CHECK_EQ_INT(old->ev[0].rev, r0 + extra);
        pthread_mutex_unlock(&old->mu);
        pthread_mutex_lock(&edge->mu);
        CHECK(edge->ev[0].type == KS_KV_EV_PUT);
        CHECK_EQ_INT(edge->ev[0].rev, r0 + extra + 1);
        CHECK_EQ_INT(edge->ev[edge->n - 1].rev, r0 + extra + KS_KV_HISTORY_EVENTS);
        CHECK(!edge->out_of_order);
        pthread_mutex_unlock(&edge->mu);

        CHECK_EQ_INT(put_s(kv, "/h/k", "v", 0, NULL), KS_ERR_NONE);
        REQUIRE(col_wait(old, 2));
        pthread_mutex_lock(&old->mu);
        CHECK(old->ev[1].type == KS_KV_EV_PUT);
        CHECK_EQ_INT(old->ev[1].rev, r0 + extra + KS_KV_HISTORY_EVENTS + 1);
        pthread_mutex_unlock(&old->mu);
        ks_kv_watch_cancel(kv, w);
        ks_kv_watch_cancel(kv, w2);
}

/* The SQLite file survives reopen: revision continues, keys intact, leases
 * of the previous process expired at open, old lease ids never reused. */
static void kv_case_sqlite_reopen(kv_fx_t *fx)
{
        ks_kv_t *kv = fx_open(fx);
        ks_kv_result_t r;
        ks_kv_watch_t *w = NULL;
        int64_t lease = 0, rev = 0, ttl = 0, r1 = 0;
        static const uint8_t bkey[] = {'/', 's', 0, 0xff};

        REQUIRE(kv);
        CHECK_EQ_INT(put_s(kv, "/s/a", "1", 0, &r1), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/s/a", "2", 0, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(ks_kv_put(kv, bkey, sizeof(bkey), "", 0, 0, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/s/gone", "x", 0, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(ks_kv_delete_range(kv, K("/s/gone"), NULL, 0, NULL, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(ks_kv_lease_grant(kv, 60, &lease), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/s/l1", "x", lease, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(put_s(kv, "/s/l2", "x", lease, &rev), KS_ERR_NONE);
        fx_close(fx, kv);

        kv = fx_open(fx);
        REQUIRE(kv);
        /* One revision for expiring the old process's lease. */
        CHECK_EQ_INT(cur_rev(kv), rev + 1);
        REQUIRE(get1(kv, "/s/a", &r) == 1);
        CHECK_EQ_STR((const char *)r.kvs[0].value, "2");
        CHECK_EQ_INT(r.kvs[0].version, 2);
        CHECK_EQ_INT(r.kvs[0].create_rev, r1);
        CHECK_EQ_INT(r.kvs[0].mod_rev, r1 + 1);
        ks_kv_result_free(&r);
        CHECK_EQ_INT(ks_kv_range(kv, bkey, sizeof(bkey), NULL, 0, &r), KS_ERR_NONE);
        CHECK_EQ_INT(r.count, 1);
        ks_kv_result_free(&r);
        CHECK(!exists(kv, "/s/gone"));
        CHECK(!exists(kv, "/s/l1"));
        CHECK(!exists(kv, "/s/l2"));
        CHECK_EQ_INT(ks_kv_lease_keepalive(kv, lease, &ttl), KS_ERR__LEASE_LOST);
        int64_t lease2 = 0;
        CHECK_EQ_INT(ks_kv_lease_grant(kv, 60, &lease2), KS_ERR_NONE);
        CHECK(lease2 > lease);

        /* History is not persisted: older start revisions are compacted. */
        kv_col_t *c = watch_into(fx, kv, "/s/", "", r1, &w);
        REQUIRE(c);
        REQUIRE(col_wait(c, 1));
        pthread_mutex_lock(&c->mu);
        CHECK(c->ev[0].type == KS_KV_EV_COMPACTED);
        CHECK_EQ_INT(c->ev[0].rev, rev + 1);
        pthread_mutex_unlock(&c->mu);
        CHECK_EQ_INT(put_s(kv, "/s/b", "1", lease2, &rev), KS_ERR_NONE);
        REQUIRE(col_wait(c, 2));
        ks_kv_watch_cancel(kv, w);
        fx_close(fx, kv);

        /* And once more: the revision keeps counting. */
        kv = fx_open(fx);
        REQUIRE(kv);
        CHECK_EQ_INT(cur_rev(kv), rev + 1);
        CHECK(!exists(kv, "/s/b"));
        CHECK_EQ_INT(put_s(kv, "/s/a", "3", 0, &r1), KS_ERR_NONE);
        CHECK_EQ_INT(r1, rev + 2);
        REQUIRE(get1(kv, "/s/a", &r) == 1);
        CHECK_EQ_INT(r.kvs[0].version, 3);
        ks_kv_result_free(&r);
}

/* ------------------------------------------------------------ instances */

TEST(kv_memory_put_get)
{
        kv_run(&kv_memory, kv_case_put_get);
}
TEST(kv_memory_range_prefix)
{
        kv_run(&kv_memory, kv_case_range_prefix);
}
TEST(kv_memory_revisions)
{
        kv_run(&kv_memory, kv_case_revisions);
}
TEST(kv_memory_delete_range)
{
        kv_run(&kv_memory, kv_case_delete_range);
}
TEST(kv_memory_txn_compare)
{
        kv_run(&kv_memory, kv_case_txn_compare);
}
TEST(kv_memory_txn_branches)
{
        kv_run(&kv_memory, kv_case_txn_branches);
}
TEST(kv_memory_txn_create_if_absent)
{
        kv_run(&kv_memory, kv_case_txn_create_if_absent);
}
TEST(kv_memory_lease_basic)
{
        kv_run(&kv_memory, kv_case_lease_basic);
}
TEST(kv_memory_lease_expiry)
{
        kv_run(&kv_memory, kv_case_lease_expiry);
}
TEST(kv_memory_watch_events)
{
        kv_run(&kv_memory, kv_case_watch_events);
}
TEST(kv_memory_watch_replay)
{
        kv_run(&kv_memory, kv_case_watch_replay);
}
TEST(kv_memory_watch_compacted)
{
        kv_run(&kv_memory, kv_case_watch_compacted);
}
TEST(kv_memory_watch_cancel)
{
        kv_run(&kv_memory, kv_case_watch_cancel);
}
TEST(kv_memory_watch_reentrant)
{
        kv_run(&kv_memory, kv_case_watch_reentrant);
}
TEST(kv_memory_concurrent_writers)
{
        kv_run(&kv_memory, kv_case_concurrent_writers);
}
TEST(kv_memory_history_overflow)
{
        kv_run(&kv_memory, kv_case_history_overflow);
}

TEST(kv_sqlite_put_get)
{
        kv_run(&kv_sqlite, kv_case_put_get);
}
TEST(kv_sqlite_range_prefix)
{
        kv_run(&kv_sqlite, kv_case_range_prefix);
}
TEST(kv_sqlite_revisions)
{
        kv_run(&kv_sqlite, kv_case_revisions);
}
TEST(kv_sqlite_delete_range)
{
        kv_run(&kv_sqlite, kv_case_delete_range);
}
TEST(kv_sqlite_txn_compare)
{
        kv_run(&kv_sqlite, kv_case_txn_compare);
}
TEST(kv_sqlite_txn_branches)
{
        kv_run(&kv_sqlite, kv_case_txn_branches);
}
TEST(kv_sqlite_txn_create_if_absent)
{
        kv_run(&kv_sqlite, kv_case_txn_create_if_absent);
}
TEST(kv_sqlite_lease_basic)
{
        kv_run(&kv_sqlite, kv_case_lease_basic);
}
TEST(kv_sqlite_lease_expiry)
{
        kv_run(&kv_sqlite, kv_case_lease_expiry);
}
TEST(kv_sqlite_watch_events)
{
        kv_run(&kv_sqlite, kv_case_watch_events);
}
TEST(kv_sqlite_watch_replay)
{
        kv_run(&kv_sqlite, kv_case_watch_replay);
}
TEST(kv_sqlite_watch_compacted)
{
        kv_run(&kv_sqlite, kv_case_watch_compacted);
}
TEST(kv_sqlite_watch_cancel)
{
        kv_run(&kv_sqlite, kv_case_watch_cancel);
}
TEST(kv_sqlite_watch_reentrant)
{
        kv_run(&kv_sqlite, kv_case_watch_reentrant);
}
TEST(kv_sqlite_concurrent_writers)
{
        kv_run(&kv_sqlite, kv_case_concurrent_writers);
}
TEST(kv_sqlite_reopen)
{
        kv_run(&kv_sqlite, kv_case_sqlite_reopen);
}

TEST(kv_etcd_put_get)
{
        kv_run(&kv_etcd, kv_case_put_get);
}
TEST(kv_etcd_range_prefix)
{
        kv_run(&kv_etcd, kv_case_range_prefix);
}
TEST(kv_etcd_revisions)
{
        kv_run(&kv_etcd, kv_case_revisions);
}
TEST(kv_etcd_delete_range)
{
        kv_run(&kv_etcd, kv_case_delete_range);
}
TEST(kv_etcd_txn_compare)
{
        kv_run(&kv_etcd, kv_case_txn_compare);
}
TEST(kv_etcd_txn_branches)
{
        kv_run(&kv_etcd, kv_case_txn_branches);
}
TEST(kv_etcd_txn_create_if_absent)
{
        kv_run(&kv_etcd, kv_case_txn_create_if_absent);
}
TEST(kv_etcd_lease_basic)
{
        kv_run(&kv_etcd, kv_case_lease_basic);
}
TEST(kv_etcd_watch_events)
{
        kv_run(&kv_etcd, kv_case_watch_events);
}
TEST(kv_etcd_watch_replay)
{
        kv_run(&kv_etcd, kv_case_watch_replay);
}
TEST(kv_etcd_watch_compacted)
{
        kv_run(&kv_etcd, kv_case_watch_compacted);
}
TEST(kv_etcd_watch_cancel)
{
        kv_run(&kv_etcd, kv_case_watch_cancel);
}
TEST(kv_etcd_watch_reentrant)
{
        kv_run(&kv_etcd, kv_case_watch_reentrant);
}
TEST(kv_etcd_concurrent_writers)
{
        kv_run(&kv_etcd, kv_case_concurrent_writers);
}
