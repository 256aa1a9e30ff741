/*
 * test_cluster.c — cluster membership, placement and ownership leases
 * (cluster/cluster.h).
 *
 * Several ks_cluster_t on ONE store are several brokers sharing one etcd.
 * The in-process store (memory; SQLite once) runs on a ks_clock_fake_t that
 * also drives the module's lease timing, so lease expiry happens exactly when
 * a test moves the clock: advance() moves it in steps of TTL/3 and waits
 * until every healthy broker has sent its keepalive for the step, so only
 * the brokers a test silences can expire.  A broker is silenced by
 * ks_cluster_test_kill (kill -9: no hook, no revoke) or by cutting its
 * private store connection (a ks_kv_faulty_new() wrapper whose plan is
 * `down`: every call fails as in a network partition or a paused process;
 * watches still deliver).  One scenario runs
 * on a real etcd with real 2 s TTLs.
 *
 * Hooks record into one global journal (with a sequence number, so orders
 * across brokers can be checked).  Every wait is a condition polled against
 * a real-time deadline; nothing asserts after a fixed sleep.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cluster/cluster.h"
#include "etcd_harness.h"
#include "meta/kv_faulty.h"
#include "kafscale_metadata.pb-c.h"
#include "meta/metadata.h"
#include "test.h"
#include "util/log.h"

#define WAIT_MS 10000
#define TTL_MS 3000 /* fake-clock tests: keepalive every 1000 ms */
#define STEP_MS (TTL_MS / 3)
#define K(s) (s), strlen(s)

/* ------------------------------------------------------------ helpers */

static void sleep_ms(int ms)
{
        nanosleep(&(struct timespec){ ms / 1000, (long)(ms % 1000) * 1000000L }, NULL);
}

static int64_t real_ms(void)
{
        return ks_clock_mono_ms(ks_clock_system());
}

typedef bool (*cond_fn)(void *arg);

static bool wait_for(cond_fn fn, void *arg, int ms)
{
        int64_t until = real_ms() + ms;
        do {
                if (fn(arg))
                        return true;
                sleep_ms(2);
        } while (real_ms() < until);
        return fn(arg);
}

/* ------------------------------------------------------------ the hook journal */

typedef struct jev {
        char type; /* 'A' acquired, 'R' release, 'L' lost, 'D' lost as deleted; 'a', 'r', 'l' the same for groups */
        int32_t broker;
        char name[64];
        int32_t partition;
        int32_t epoch;
        int32_t holder_at_hook; /* release: owner in the lease key while the hook ran (-1: none) */
        int64_t seq;
} jev_t;

#define JOURNAL_MAX 20000

static struct {
        pthread_mutex_t mu;
        jev_t ev[JOURNAL_MAX];
        int n;
} journal = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void journal_reset(void)
{
        pthread_mutex_lock(&journal.mu);
        journal.n = 0;
        pthread_mutex_unlock(&journal.mu);
}

static void journal_add(jev_t e)
{
        pthread_mutex_lock(&journal.mu);
        if (journal.n < JOURNAL_MAX) {
                e.seq = journal.n;
                journal.ev[journal.n++] = e;
        }
        pthread_mutex_unlock(&journal.mu);
}

/* Count of events of `type` (by broker, -1: any) for name/partition (NULL: any). */
static int journal_count(char type, int32_t broker, const char *name, int32_t partition)
{
        int n = 0;
        pthread_mutex_lock(&journal.mu);
        for (int i = 0; i < journal.n; i++) {
                const jev_t *e = &journal.ev[i];
                if (e->type == type && (broker < 0 || e->broker == broker) &&
                    (!name || (!strcmp(e->name, name) && (partition < 0 || e->partition == partition))))
                        n++;
        }
        pthread_mutex_unlock(&journal.mu);
        return n;
}

/* The first event of `type` for name/partition; false if none. */
static bool journal_find(char type, const char *name, int32_t partition, jev_t *out)
{
        bool found = false;
        pthread_mutex_lock(&journal.mu);
        for (int i = 0; i < journal.n && !found; i++) {
                const jev_t *e = &journal.ev[i];
                if (e->type == type && !strcmp(e->name, name) && e->partition == partition) {
                        *out = *e;
                        found = true;
                }
        }
        pthread_mutex_unlock(&journal.mu);
        return found;
}

/* One test broker. */
typedef struct tb {
        int32_t id;
        ks_cluster_t *c;
        ks_kv_t *kv;   /* what the cluster uses (maybe a faulty wrapper) */
        ks_kv_t *look; /* for the hooks' own reads */
        bool cuttable;
        ks_kv_faults_t faults; /* the wrapper's plan (cuttable only) */
} tb_t;

/* Cuts broker b off its store, or reconnects it. */
static void cut_set(tb_t *b, bool cut)
{
        __atomic_store_n(&b->faults.down, cut ? 1 : 0, __ATOMIC_SEQ_CST);
}

static bool is_cut(tb_t *b)
{
        return b->cuttable && __atomic_load_n(&b->faults.down, __ATOMIC_SEQ_CST);
}

static int32_t lease_holder(ks_kv_t *kv, const char *key)
{
        ks_kv_result_t r;
        if (ks_kv_range(kv, key, strlen(key), NULL, 0, &r) != 0)
                return -2;
        int32_t h = r.count ? (int32_t)atoi((const char *)r.kvs[0].value) : -1;
        ks_kv_result_free(&r);
        return h;
}

static void h_p_acquired(void *o, const char *t, int32_t p, int32_t epoch)
{
        tb_t *b = o;
        jev_t e = { .type = 'A', .broker = b->id, .partition = p, .epoch = epoch, .holder_at_hook = -1 };
        snprintf(e.name, sizeof(e.name), "%s", t);
        journal_add(e);
}
static void h_p_release(void *o, const char *t, int32_t p)
{
        tb_t *b = o;
        char key[300];
        snprintf(key, sizeof(key), KS_CLUSTER_PARTITION_LEASES_PREFIX "%s/%d", t, p);
        jev_t e = { .type = 'R', .broker = b->id, .partition = p, .holder_at_hook = lease_holder(b->look, key) };
        snprintf(e.name, sizeof(e.name), "%s", t);
        journal_add(e);
}
static void h_p_lost(void *o, const char *t, int32_t p, bool deleted)
{
        tb_t *b = o;
        jev_t e = { .type = deleted ? 'D' : 'L', .broker = b->id, .partition = p, .holder_at_hook = -1 };
        snprintf(e.name, sizeof(e.name), "%s", t);
        journal_add(e);
}
static void h_g_acquired(void *o, const char *g)
{
        tb_t *b = o;
        jev_t e = { .type = 'a', .broker = b->id, .partition = -1, .holder_at_hook = -1 };
        snprintf(e.name, sizeof(e.name), "%s", g);
        journal_add(e);
}
static void h_g_release(void *o, const char *g)
{
        tb_t *b = o;
        char key[300];
        snprintf(key, sizeof(key), KS_CLUSTER_GROUP_LEASES_PREFIX "%s", g);
        jev_t e = { .type = 'r', .broker = b->id, .partition = -1, .holder_at_hook = lease_holder(b->look, key) };
        snprintf(e.name, sizeof(e.name), "%s", g);
        journal_add(e);
}
static void h_g_lost(void *o, const char *g)
{
        tb_t *b = o;
        jev_t e = { .type = 'l', .broker = b->id, .partition = -1, .holder_at_hook = -1 };
        snprintf(e.name, sizeof(e.name), "%s", g);
        journal_add(e);
}

static const ks_cluster_hooks_t hooks = { h_p_acquired, h_p_release, h_p_lost, h_g_acquired, h_g_release, h_g_lost };

typedef struct start_opts {
        bool membership_only;
        int64_t ttl_ms;
        int64_t register_wait_ms;
        bool exclusive;
        bool cuttable;
        const ks_clock_t *clock;
} start_opts_t;

/* Starts broker `id` on `kv` (through a faulty wrapper if opts->cuttable). */
static ks_err_t tb_start(tb_t *b, ks_kv_t *kv, int32_t id, const start_opts_t *o)
{
        memset(b, 0, sizeof(*b));
        b->id = id;
        b->look = kv;
        b->cuttable = o->cuttable;
        b->kv = kv;
        if (o->cuttable && ks_kv_faulty_new(kv, &b->faults, &b->kv) != 0)
                return KS_ERR__NOMEM;
        char host[32];
        snprintf(host, sizeof(host), "broker-%d.test", id);
        ks_cluster_config_t cfg = { .broker_id = id,
                                    .host = host,
                                    .port = 9090 + id,
                                    .rack = id == 1 ? "rack-a" : NULL,
                                    .lease_ttl_ms = o->ttl_ms ? o->ttl_ms : TTL_MS,
                                    .register_wait_ms = o->register_wait_ms ? o->register_wait_ms : -1,
                                    .exclusive_store = o->exclusive,
                                    .membership_only = o->membership_only,
                                    .clock = o->clock };
        ks_err_t err = ks_cluster_start(&cfg, b->kv, &hooks, b, &b->c);
        if (err && b->cuttable) {
                ks_kv_destroy(b->kv);
                b->kv = NULL;
        }
        return err;
}

static void tb_done(tb_t *b, bool kill)
{
        if (!b->c)
                return;
        if (kill)
                ks_cluster_test_kill(b->c);
        else
                ks_cluster_stop(b->c);
        b->c = NULL;
        if (b->cuttable)
                ks_kv_destroy(b->kv);
        b->kv = NULL;
}

/* Moves the fake clock by ms in steps of at most STEP_MS; after each step,
 * waits until every running broker not cut off has confirmed a keepalive
 * (is no longer due), so healthy leases never expire. */
static bool advance(ks_clock_fake_t *clk, int64_t ms, tb_t **bs, int n)
{
        while (ms > 0) {
                int64_t step = ms < STEP_MS ? ms : STEP_MS;
                ks_clock_fake_advance(clk, step);
                ms -= step;
                int64_t until = real_ms() + WAIT_MS;
                for (int i = 0; i < n; i++) {
                        if (!bs[i]->c || is_cut(bs[i]))
                                continue;
                        for (;;) {
                                ks_cluster_stats_t st;
                                ks_cluster_get_stats(bs[i]->c, &st);
                                if (st.lease && ks_clock_mono_ms(&clk->base) - st.last_keepalive_ms < STEP_MS)
                                        break;
                                if (real_ms() > until)
                                        return false;
                                sleep_ms(1);
                        }
                }
        }
        return true;
}

static void make_topic(ks_kv_t *kv, const char *name, int32_t parts)
{
        ks_meta_t *m = NULL;
        if (ks_meta_open(kv, &m) != 0) {
                ks_test_fail(__FILE__, __LINE__, "ks_meta_open failed");
                return;
        }
        ks_topic_t t;
        memset(&t, 0, sizeof(t));
        snprintf(t.name, sizeof(t.name), "%s", name);
        t.partitions = parts;
        t.replication_factor = 1;
        t.retention_ms = -1;
        t.retention_bytes = -1;
        t.segment_bytes = 1 << 30;
        ks_err_t err = ks_meta_topic_create(m, &t);
        if (err)
                ks_test_fail(__FILE__, __LINE__, "ks_meta_topic_create(%s): %s", name, ks_err_name(err));
        ks_meta_close(m);
}

/* Ownership has converged: every partition of `topic` has a lease key held
 * by the placement's choice over ids[0..n), and that broker says it owns it. */
typedef struct conv {
        ks_kv_t *kv;
        const char *topic;
        int32_t parts;
        const int32_t *ids;
        int n;
        tb_t **bs;
        int nbs;
} conv_t;

static bool converged(void *arg)
{
        conv_t *cv = arg;
        char prefix[300];
        int pl = snprintf(prefix, sizeof(prefix), KS_CLUSTER_PARTITION_LEASES_PREFIX "%s/", cv->topic);
        uint8_t end[300];
        size_t el = ks_kv_prefix_end(prefix, (size_t)pl, end);
        ks_kv_result_t r;
        if (ks_kv_range(cv->kv, prefix, (size_t)pl, end, el, &r) != 0)
                return false;
        bool ok = r.count == (size_t)cv->parts;
        for (size_t i = 0; ok && i < r.count; i++) {
                int32_t p = atoi((const char *)r.kvs[i].key + pl);
                int32_t holder = atoi((const char *)r.kvs[i].value);
                char key[300];
                snprintf(key, sizeof(key), "%s/%d", cv->topic, p);
                ok = holder == ks_cluster_place(key, cv->ids, cv->n);
                for (int b = 0; ok && b < cv->nbs; b++)
                        if (cv->bs[b]->c && cv->bs[b]->id == holder)
                                ok = ks_cluster_owns_partition(cv->bs[b]->c, cv->topic, p, NULL);
        }
        ks_kv_result_free(&r);
        return ok;
}

/* Reads a partition's PartitionState; NULL after reporting. */
static Kafscale__Metadata__PartitionState *read_ps(ks_kv_t *kv, const char *topic, int32_t p)
{
        char key[300];
        snprintf(key, sizeof(key), "/kafscale/topics/%s/partitions/%d", topic, p);
        ks_kv_result_t r;
        if (ks_kv_range(kv, key, strlen(key), NULL, 0, &r) != 0 || r.count != 1) {
                ks_test_fail(__FILE__, __LINE__, "no PartitionState at %s", key);
                return NULL;
        }
        Kafscale__Metadata__PartitionState *ps =
                kafscale__metadata__partition_state__unpack(NULL, r.kvs[0].value_len, r.kvs[0].value);
        ks_kv_result_free(&r);
        if (!ps)
                ks_test_fail(__FILE__, __LINE__, "PartitionState at %s does not decode", key);
        return ps;
}

static int32_t ps_epoch(ks_kv_t *kv, const char *topic, int32_t p)
{
        Kafscale__Metadata__PartitionState *ps = read_ps(kv, topic, p);
        if (!ps)
                return -100;
        int32_t e = ps->leader_epoch;
        kafscale__metadata__partition_state__free_unpacked(ps, NULL);
        return e;
}

static int32_t lease_holder_tp(ks_kv_t *kv, const char *topic, int32_t p)
{
        char key[300];
        snprintf(key, sizeof(key), KS_CLUSTER_PARTITION_LEASES_PREFIX "%s/%d", topic, p);
        return lease_holder(kv, key);
}

typedef struct fx {
        ks_clock_fake_t clock;
        ks_kv_t *kv;
        ks_log_level_t saved;
        char dir[256], path[320];
} fx_t;

static bool fx_init(fx_t *f, bool sqlite)
{
        memset(f, 0, sizeof(*f));
        f->saved = ks_log_level;
        ks_log_set_level(KS_LOG_ERROR);
        ks_clock_fake_init(&f->clock, 1767225600000LL /* 2026-01-01 */);
        journal_reset();
        if (!sqlite)
                return ks_kv_memory_new(&f->clock.base, &f->kv) == 0;
        const char *tmp = getenv("TMPDIR");
        snprintf(f->dir, sizeof(f->dir), "%s/kafscale-cluster-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(f->dir))
                return false;
        snprintf(f->path, sizeof(f->path), "%s/meta.db", f->dir);
        return ks_kv_sqlite_open(f->path, &f->clock.base, &f->kv) == 0;
}

static void fx_destroy(fx_t *f)
{
        ks_kv_destroy(f->kv);
        if (f->dir[0]) {
                static const char *const sfx[] = { "", "-wal", "-shm", "-journal" };
                char p[400];
                for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++) {
                        snprintf(p, sizeof(p), "%s%s", f->path, sfx[i]);
                        unlink(p);
                }
                rmdir(f->dir);
        }
        ks_log_set_level(f->saved);
}

/* ------------------------------------------------------------ placement (pure) */

TEST(cluster_placement_is_deterministic_and_spreads)
{
        /* The hash is a contract between brokers (and versions): pinned
         * (values cross-checked with an independent implementation of the
         * formula in cluster.h / docs/cluster.md). */
        CHECK(ks_cluster_score("orders/0", 1) == 0xe1f23dd676351b8fULL);
        CHECK(ks_cluster_score("group:payments", 7) == 0xb2ba859a0b96b892ULL);
        const int32_t five[] = { 0, 1, 2, 3, 4 };
        CHECK_EQ_INT(ks_cluster_place("orders/0", five, 5), 1);
        CHECK_EQ_INT(ks_cluster_place("orders/1", five, 5), 0);
        CHECK_EQ_INT(ks_cluster_place("orders/2", five, 5), 4);
        CHECK_EQ_INT(ks_cluster_place("orders/3", five, 5), 2);
        CHECK_EQ_INT(ks_cluster_place("group:g", five, 5), 1);
        CHECK_EQ_INT(ks_cluster_place("x", NULL, 0), -1);

        const int32_t three[] = { 1, 2, 3 }, shuffled[] = { 3, 1, 2 }, four[] = { 1, 2, 3, 4 };
        int count[5] = { 0 }, moved = 0, moved_elsewhere = 0, gcount[5] = { 0 };
        for (int p = 0; p < 300; p++) {
                char key[32];
                snprintf(key, sizeof(key), "orders/%d", p);
                int32_t o3 = ks_cluster_place(key, three, 3);
                CHECK_EQ_INT(o3, ks_cluster_place(key, shuffled, 3)); /* order of the live set is irrelevant */
                REQUIRE(o3 >= 1 && o3 <= 3);
                count[o3]++;
                int32_t o4 = ks_cluster_place(key, four, 4);
                if (o4 != o3) {
                        moved++;
                        if (o4 != 4)
                                moved_elsewhere++;
                }
                snprintf(key, sizeof(key), "group:g-%d", p);
                gcount[ks_cluster_place(key, three, 3)]++;
        }
        for (int b = 1; b <= 3; b++) {
                CHECK(count[b] >= 60 && count[b] <= 140);
                CHECK(gcount[b] >= 60 && gcount[b] <= 140);
        }
        /* A fourth broker takes ~1/4, only from the others, nothing else moves. */
        CHECK(moved >= 40 && moved <= 110);
        CHECK_EQ_INT(moved_elsewhere, 0);
}

/* ------------------------------------------------------------ registration */

TEST(cluster_registers_and_lists_live_brokers)
{
        fx_t f;
        REQUIRE(fx_init(&f, false));
        start_opts_t o = { .clock = &f.clock.base };
        tb_t b[3];
        for (int i = 0; i < 3; i++)
                REQUIRE_EQ_INT(tb_start(&b[i], f.kv, i + 1, &o), 0);

        for (int i = 0; i < 3; i++) {
                ks_cluster_t *c = b[i].c;
                int64_t until = real_ms() + WAIT_MS;
                ks_broker_info_t *v = NULL;
                int n = 0;
                while ((n = ks_cluster_brokers(c, &v)) != 3 && real_ms() < until) {
                        free(v);
                        v = NULL;
                        sleep_ms(2);
                }
                REQUIRE_EQ_INT(n, 3);
                for (int k = 0; k < 3; k++) {
                        char host[32];
                        snprintf(host, sizeof(host), "broker-%d.test", k + 1);
                        CHECK_EQ_INT(v[k].id, k + 1);
                        CHECK_EQ_STR(v[k].host, host);
                        CHECK_EQ_INT(v[k].port, 9091 + k);
                        CHECK_EQ_STR(v[k].rack, k == 0 ? "rack-a" : "");
                }
                free(v);
        }

        /* The registration record: protobuf BrokerRegistration under the lease. */
        ks_kv_result_t r;
        REQUIRE_EQ_INT(ks_kv_range(f.kv, K(KS_CLUSTER_BROKERS_PREFIX "2"), NULL, 0, &r), 0);
        REQUIRE_EQ_INT(r.count, 1);
        CHECK_EQ_INT(r.kvs[0].lease, ks_cluster_lease(b[1].c));
        Kafscale__Metadata__BrokerRegistration *reg =
                kafscale__metadata__broker_registration__unpack(NULL, r.kvs[0].value_len, r.kvs[0].value);
        ks_kv_result_free(&r);
        REQUIRE(reg != NULL);
        CHECK_EQ_STR(reg->broker_id, "2");
        CHECK_EQ_STR(reg->host, "broker-2.test");
        CHECK_EQ_INT(reg->port, 9092);
        CHECK_EQ_STR(reg->started_at, "2026-01-01T00:00:00.000Z");
        CHECK_EQ_STR(reg->version, "kafscale-c");
        kafscale__metadata__broker_registration__free_unpacked(reg, NULL);

        /* A clean stop revokes the lease: the others see two brokers at once. */
        tb_done(&b[1], false);
        int64_t until = real_ms() + WAIT_MS;
        while ((ks_cluster_broker_get(b[0].c, 2, NULL) || ks_cluster_broker_get(b[2].c, 2, NULL)) &&
               real_ms() < until)
                sleep_ms(2);
        CHECK(!ks_cluster_broker_get(b[0].c, 2, NULL));
        CHECK(!ks_cluster_broker_get(b[2].c, 2, NULL));
        ks_broker_info_t info;
        CHECK(ks_cluster_broker_get(b[2].c, 1, &info) && info.port == 9091);

        tb_done(&b[0], false);
        tb_done(&b[2], false);
        fx_destroy(&f);
}

typedef struct advancer {
        ks_clock_fake_t *clk;
        int delay_ms;
        int64_t by;
} advancer_t;

static void *advance_later(void *arg)
{
        advancer_t *a = arg;
        sleep_ms(a->delay_ms);
        ks_clock_fake_advance(a->clk, a->by);
        return NULL;
}

TEST(cluster_duplicate_live_broker_id_is_refused)
{
        fx_t f;
        REQUIRE(fx_init(&f, false));
        start_opts_t o = { .clock = &f.clock.base };
        tb_t a, dup;
        REQUIRE_EQ_INT(tb_start(&a, f.kv, 1, &o), 0);
        int64_t lease = ks_cluster_lease(a.c);

        /* A second process with id 1 while the first lives: refused after
         * its wait (the first keeps its registration). */
        start_opts_t wait = { .clock = &f.clock.base, .register_wait_ms = 200 };
        ks_log_set_level((ks_log_level_t)(KS_LOG_ERROR + 1)); /* the refusal is logged as an error */
        int64_t t0 = real_ms();
        CHECK_EQ_INT(tb_start(&dup, f.kv, 1, &wait), KS_ERR__EXISTS);
        ks_log_set_level(KS_LOG_ERROR);
        CHECK(real_ms() - t0 >= 200);
        CHECK(dup.c == NULL);
        ks_kv_result_t r;
        REQUIRE_EQ_INT(ks_kv_range(f.kv, K(KS_CLUSTER_BROKERS_PREFIX "1"), NULL, 0, &r), 0);
        CHECK(r.count == 1 && r.kvs[0].lease == lease);
        ks_kv_result_free(&r);

        /* The first one killed (its lease lingers): a restart waits until
         * the old registration expires, then starts. */
        tb_done(&a, true);
        advancer_t adv = { &f.clock, 100, TTL_MS };
        pthread_t th;
        pthread_create(&th, NULL, advance_later, &adv);
        start_opts_t patient = { .clock = &f.clock.base, .register_wait_ms = WAIT_MS };
        CHECK_EQ_INT(tb_start(&dup, f.kv, 1, &patient), 0);
        pthread_join(th, NULL);
        CHECK(dup.c && ks_cluster_lease(dup.c) != lease);
        tb_done(&dup, false);
        fx_destroy(&f);
}

typedef struct jwait {
        char type;
        int32_t broker;
        const char *name;
        int32_t partition;
        int count;
} jwait_t;

static bool journal_has(void *arg)
{
        jwait_t *w = arg;
        return journal_count(w->type, w->broker, w->name, w->partition) >= w->count;
}

/* journal_count once it reaches n (a hook runs just after the store shows
 * what it reports), or after WAIT_MS whatever it is. */
static int journal_await(char type, int32_t broker, const char *name, int32_t partition, int n)
{
        jwait_t w = { type, broker, name, partition, n };
        wait_for(journal_has, &w, WAIT_MS);
        return journal_count(type, broker, name, partition);
}

TEST(cluster_exclusive_store_revokes_a_previous_runs_lease)
{
        fx_t f;
        REQUIRE(fx_init(&f, false));
        make_topic(f.kv, "ex", 4);
        start_opts_t o = { .clock = &f.clock.base, .exclusive = true };
        tb_t a;
        REQUIRE_EQ_INT(tb_start(&a, f.kv, 1, &o), 0);
        const int32_t one[] = { 1 };
        tb_t *bs[] = { &a };
        conv_t cv = { f.kv, "ex", 4, one, 1, bs, 1 };
        CHECK(wait_for(converged, &cv, WAIT_MS));
        int64_t old = ks_cluster_lease(a.c);
        tb_done(&a, true); /* kill -9: registration and partition leases stay */
        CHECK_EQ_INT(lease_holder_tp(f.kv, "ex", 0), 1);

        /* Embedded restart: no wait for the TTL, the old lease is revoked. */
        journal_reset();
        int64_t t0 = real_ms();
        REQUIRE_EQ_INT(tb_start(&a, f.kv, 1, &o), 0);
        CHECK(real_ms() - t0 < TTL_MS);
        CHECK(ks_cluster_lease(a.c) != old);
        CHECK_EQ_INT(ks_kv_lease_keepalive(f.kv, old, NULL), KS_ERR__LEASE_LOST);
        CHECK(wait_for(converged, &cv, WAIT_MS));
        for (int p = 0; p < 4; p++) {
                CHECK_EQ_INT(ps_epoch(f.kv, "ex", p), 2);
                CHECK_EQ_INT(journal_await('A', 1, "ex", p, 1), 1);
        }
        tb_done(&a, false);
        fx_destroy(&f);
}

/* ------------------------------------------------------------ epochs */

static void put_next_offset(ks_kv_t *kv, const char *topic, int32_t p, int64_t next)
{
        char key[300], val[24];
        snprintf(key, sizeof(key), "/kafscale/topics/%s/partitions/%d/next_offset", topic, p);
        snprintf(val, sizeof(val), "%lld", (long long)next);
        CHECK_EQ_INT(ks_kv_put(kv, key, strlen(key), val, strlen(val), 0, NULL), 0);
}

TEST(cluster_acquisition_bumps_epoch_and_extends_history)
{
        fx_t f;
        REQUIRE(fx_init(&f, false));
        make_topic(f.kv, "ep", 1);
        put_next_offset(f.kv, "ep", 0, 42);
        start_opts_t o = { .clock = &f.clock.base };
        tb_t a, b;

        REQUIRE_EQ_INT(tb_start(&a, f.kv, 1, &o), 0);
        jwait_t w = { 'A', 1, "ep", 0, 1 };
        REQUIRE(wait_for(journal_has, &w, WAIT_MS));
        jev_t e;
        REQUIRE(journal_find('A', "ep", 0, &e));
        CHECK_EQ_INT(e.epoch, 1);
        int32_t epoch = -1;
        CHECK(ks_cluster_owns_partition(a.c, "ep", 0, &epoch));
        CHECK_EQ_INT(epoch, 1);
        CHECK_EQ_INT(ks_cluster_partition_leader(a.c, "ep", 0, &epoch), 1);
        CHECK_EQ_INT(epoch, 1);
        Kafscale__Metadata__PartitionState *ps = read_ps(f.kv, "ep", 0);
        REQUIRE(ps != NULL);
        CHECK_EQ_STR(ps->topic, "ep");
        CHECK_EQ_STR(ps->leader_broker, "1");
        CHECK_EQ_INT(ps->leader_epoch, 1);
        REQUIRE_EQ_INT(ps->n_epoch_history, 2);
        CHECK(ps->epoch_history[0]->epoch == 0 && ps->epoch_history[0]->start_offset == 0);
        CHECK(ps->epoch_history[1]->epoch == 1 && ps->epoch_history[1]->start_offset == 42);
        kafscale__metadata__partition_state__free_unpacked(ps, NULL);

        /* Clean stop: released, then broker 2 takes it at epoch 2 from the
         * same offset (epoch 1 wrote nothing: Kafka drops such an entry). */
        tb_done(&a, false);
        CHECK_EQ_INT(journal_await('R', 1, "ep", 0, 1), 1);
        REQUIRE_EQ_INT(tb_start(&b, f.kv, 2, &o), 0);
        w = (jwait_t){ 'A', 2, "ep", 0, 1 };
        REQUIRE(wait_for(journal_has, &w, WAIT_MS));
        ps = read_ps(f.kv, "ep", 0);
        REQUIRE(ps != NULL);
        CHECK_EQ_STR(ps->leader_broker, "2");
        CHECK_EQ_INT(ps->leader_epoch, 2);
        REQUIRE_EQ_INT(ps->n_epoch_history, 2);
        CHECK(ps->epoch_history[0]->epoch == 0 && ps->epoch_history[0]->start_offset == 0);
        CHECK(ps->epoch_history[1]->epoch == 2 && ps->epoch_history[1]->start_offset == 42);
        kafscale__metadata__partition_state__free_unpacked(ps, NULL);
        tb_done(&b, false);

        /* Many owners, each after some records: the history keeps the
         * newest KS_CLUSTER_EPOCH_HISTORY_MAX entries, ascending. */
        for (int i = 0; i < KS_CLUSTER_EPOCH_HISTORY_MAX + 6; i++) {
                put_next_offset(f.kv, "ep", 0, 100 + i);
                tb_t x;
                w = (jwait_t){ 'A', 1 + i % 2, "ep", 0, journal_count('A', 1 + i % 2, "ep", 0) + 1 };
                REQUIRE_EQ_INT(tb_start(&x, f.kv, 1 + i % 2, &o), 0);
                REQUIRE(wait_for(journal_has, &w, WAIT_MS));
                tb_done(&x, false);
        }
        ps = read_ps(f.kv, "ep", 0);
        REQUIRE(ps != NULL);
        int32_t last = 2 + KS_CLUSTER_EPOCH_HISTORY_MAX + 6;
        CHECK_EQ_INT(ps->leader_epoch, last);
        REQUIRE_EQ_INT(ps->n_epoch_history, KS_CLUSTER_EPOCH_HISTORY_MAX);
        CHECK_EQ_INT(ps->epoch_history[KS_CLUSTER_EPOCH_HISTORY_MAX - 1]->epoch, last);
        CHECK_EQ_INT(ps->epoch_history[KS_CLUSTER_EPOCH_HISTORY_MAX - 1]->start_offset,
                     100 + KS_CLUSTER_EPOCH_HISTORY_MAX + 5);
        for (size_t i = 1; i < ps->n_epoch_history; i++)
                CHECK(ps->epoch_history[i]->epoch > ps->epoch_history[i - 1]->epoch &&
                      ps->epoch_history[i]->start_offset > ps->epoch_history[i - 1]->start_offset);
        kafscale__metadata__partition_state__free_unpacked(ps, NULL);
        fx_destroy(&f);
}

/* ------------------------------------------------------------ hand-over on join */

static void join_scenario(bool sqlite)
{
        fx_t f;
        REQUIRE(fx_init(&f, sqlite));
        const int32_t parts = 30;
        make_topic(f.kv, "j", parts);
        start_opts_t o = { .clock = &f.clock.base };
        tb_t a, b, c;
        tb_t *bs[] = { &a, &b, &c };
        REQUIRE_EQ_INT(tb_start(&a, f.kv, 1, &o), 0);
        REQUIRE_EQ_INT(tb_start(&b, f.kv, 2, &o), 0);
        const int32_t two[] = { 1, 2 }, three[] = { 1, 2, 3 };
        conv_t cv = { f.kv, "j", parts, two, 2, bs, 2 };
        REQUIRE(wait_for(converged, &cv, WAIT_MS));
        /* Broker 1 may have taken everything before it saw broker 2, and
         * handed half over: each acquisition is one epoch, no more. */
        int32_t before[30], epoch0[30];
        for (int p = 0; p < parts; p++) {
                before[p] = lease_holder_tp(f.kv, "j", p);
                epoch0[p] = ps_epoch(f.kv, "j", p);
                CHECK(epoch0[p] >= 1 && epoch0[p] <= 2);
                CHECK_EQ_INT(journal_await('A', -1, "j", p, epoch0[p]), epoch0[p]);
        }

        /* A third broker joins: its share is handed over cleanly, without
         * any lease expiring (the clock does not move). */
        journal_reset();
        REQUIRE_EQ_INT(tb_start(&c, f.kv, 3, &o), 0);
        cv = (conv_t){ f.kv, "j", parts, three, 3, bs, 3 };
        REQUIRE(wait_for(converged, &cv, WAIT_MS));
        int moved = 0;
        for (int p = 0; p < parts; p++) {
                char key[16];
                snprintf(key, sizeof(key), "j/%d", p);
                int32_t now = ks_cluster_place(key, three, 3);
                jev_t rel, acq;
                if (now == before[p]) {
                        CHECK_EQ_INT(journal_count('R', -1, "j", p) + journal_count('A', -1, "j", p), 0);
                        CHECK_EQ_INT(ps_epoch(f.kv, "j", p), epoch0[p]);
                        continue;
                }
                moved++;
                CHECK_EQ_INT(now, 3);
                REQUIRE(journal_find('R', "j", p, &rel));
                REQUIRE(journal_find('A', "j", p, &acq));
                CHECK_EQ_INT(rel.broker, before[p]);
                CHECK_EQ_INT(rel.holder_at_hook, before[p]); /* the key moves only after the hook */
                CHECK(rel.seq < acq.seq);
                CHECK_EQ_INT(acq.broker, 3);
                CHECK_EQ_INT(acq.epoch, epoch0[p] + 1);
                CHECK_EQ_INT(ps_epoch(f.kv, "j", p), epoch0[p] + 1);
        }
        CHECK(moved > 0);
        CHECK_EQ_INT(journal_count('L', -1, NULL, -1), 0);
        /* Every broker names the lease holder as leader, with its epoch
         * (once its watches delivered the last changes). */
        for (int p = 0; p < parts; p++) {
                int32_t holder = lease_holder_tp(f.kv, "j", p), epoch = ps_epoch(f.kv, "j", p);
                for (int i = 0; i < 3; i++) {
                        int32_t e = -1, l = -1;
                        int64_t until = real_ms() + WAIT_MS;
                        while (((l = ks_cluster_partition_leader(bs[i]->c, "j", p, &e)) != holder || e != epoch) &&
                               real_ms() < until)
                                sleep_ms(1);
                        CHECK_EQ_INT(l, holder);
                        CHECK_EQ_INT(e, epoch);
                }
        }

        /* A clean stop hands its partitions back at once. */
        journal_reset();
        int owned_by_c = 0;
        for (int p = 0; p < parts; p++)
                owned_by_c += lease_holder_tp(f.kv, "j", p) == 3;
        tb_done(&c, false);
        CHECK_EQ_INT(journal_await('R', 3, "j", -1, owned_by_c), owned_by_c);
        cv = (conv_t){ f.kv, "j", parts, two, 2, bs, 2 };
        CHECK(wait_for(converged, &cv, WAIT_MS));
        CHECK_EQ_INT(journal_count('L', -1, NULL, -1), 0);

        tb_done(&a, false);
        tb_done(&b, false);
        fx_destroy(&f);
}

TEST(cluster_join_hands_over_cleanly)
{
        join_scenario(false);
}

TEST(cluster_join_hands_over_cleanly_sqlite)
{
        join_scenario(true);
}

/* ------------------------------------------------------------ failover */

static bool txn_with(ks_kv_t *kv, const ks_kv_cmp_t *cmp)
{
        const ks_kv_op_t put = { .type = KS_KV_OP_PUT, .key = "/fence-probe", .key_len = 12, .value = "x",
                                 .value_len = 1 };
        bool ok = false;
        if (ks_kv_txn(kv, cmp, 1, &put, 1, NULL, 0, &ok, NULL) != 0)
                return false;
        return ok;
}

TEST(cluster_expired_lease_is_taken_over_after_ttl_and_fenced)
{
        fx_t f;
        REQUIRE(fx_init(&f, false));
        const int32_t parts = 24;
        make_topic(f.kv, "x", parts);
        start_opts_t o = { .clock = &f.clock.base }, oc = { .clock = &f.clock.base, .cuttable = true };
        tb_t a, b, c;
        tb_t *bs[] = { &a, &b, &c };
        REQUIRE_EQ_INT(tb_start(&a, f.kv, 1, &o), 0);
        REQUIRE_EQ_INT(tb_start(&b, f.kv, 2, &o), 0);
        REQUIRE_EQ_INT(tb_start(&c, f.kv, 3, &oc), 0);
        const int32_t two[] = { 1, 2 }, three[] = { 1, 2, 3 };
        conv_t cv = { f.kv, "x", parts, three, 3, bs, 3 };
        REQUIRE(wait_for(converged, &cv, WAIT_MS));

        int32_t pc = -1, nc = 0;
        for (int p = 0; p < parts; p++)
                if (lease_holder_tp(f.kv, "x", p) == 3) {
                        nc++;
                        if (pc < 0)
                                pc = p;
                }
        REQUIRE(pc >= 0);
        int32_t epoch = -1;
        REQUIRE(ks_cluster_owns_partition(c.c, "x", pc, &epoch));
        char zkey[300];
        ks_kv_cmp_t zombie;
        CHECK(ks_cluster_fence_cmp(c.c, "x", pc, epoch, zkey, sizeof(zkey), &zombie));
        CHECK(txn_with(f.kv, &zombie)); /* the owner's commit passes */
        char okey[300];
        ks_kv_cmp_t other;
        CHECK(!ks_cluster_fence_cmp(a.c, "x", pc, -1, okey, sizeof(okey), &other)); /* not a's */
        CHECK(!txn_with(f.kv, &other));
        CHECK(!ks_cluster_fence_cmp(c.c, "x", pc, epoch + 1, okey, sizeof(okey), &other)); /* not that epoch */

        /* Broker 3 also coordinates a group. */
        char grp[32] = "";
        for (int i = 0; !grp[0]; i++) {
                char key[48];
                snprintf(key, sizeof(key), "group:cg-%d", i);
                if (ks_cluster_place(key, three, 3) == 3)
                        snprintf(grp, sizeof(grp), "cg-%d", i);
        }
        CHECK_EQ_INT(ks_cluster_acquire_group(c.c, grp), 0);

        /* Broker 3 is cut off (paused / partitioned): its keepalives fail. */
        journal_reset();
        cut_set(&c, true);
        REQUIRE(advance(&f.clock, TTL_MS - STEP_MS, bs, 3));
        /* TTL not yet passed: nothing moves, broker 3 still believes. */
        for (int p = 0; p < parts; p++) {
                char key[16];
                snprintf(key, sizeof(key), "x/%d", p);
                CHECK_EQ_INT(lease_holder_tp(f.kv, "x", p), ks_cluster_place(key, three, 3));
        }
        CHECK_EQ_INT(journal_count('A', -1, NULL, -1), 0);
        CHECK_EQ_INT(journal_count('L', -1, NULL, -1), 0);
        CHECK(ks_cluster_owns_partition(c.c, "x", pc, NULL));
        CHECK(txn_with(f.kv, &zombie));

        /* TTL passed: broker 3 gives everything up on its own (lost hooks),
         * the store expires its lease, the others take over at epoch + 1. */
        REQUIRE(advance(&f.clock, STEP_MS, bs, 3));
        jwait_t w = { 'L', 3, NULL, -1, nc };
        CHECK(wait_for(journal_has, &w, WAIT_MS));
        w = (jwait_t){ 'l', 3, grp, -1, 1 };
        CHECK(wait_for(journal_has, &w, WAIT_MS));
        CHECK(!ks_cluster_owns_partition(c.c, "x", pc, NULL));
        CHECK(!ks_cluster_owns_group(c.c, grp));
        cv = (conv_t){ f.kv, "x", parts, two, 2, bs, 2 };
        CHECK(wait_for(converged, &cv, WAIT_MS));
        CHECK_EQ_INT(journal_await('A', -1, NULL, -1, nc), nc);
        CHECK_EQ_INT(journal_count('R', -1, NULL, -1), 0);
        CHECK_EQ_INT(ps_epoch(f.kv, "x", pc), epoch + 1);

        /* Fencing: the zombie's commit compare fails; the new owner's holds. */
        CHECK(!txn_with(f.kv, &zombie));
        CHECK(!ks_cluster_fence_cmp(c.c, "x", pc, epoch, okey, sizeof(okey), &other));
        tb_t *nowner = lease_holder_tp(f.kv, "x", pc) == 1 ? &a : &b;
        CHECK(ks_cluster_fence_cmp(nowner->c, "x", pc, epoch + 1, okey, sizeof(okey), &other));
        CHECK(txn_with(f.kv, &other));

        /* The partition heals: broker 3 registers a new session and gets its
         * share back by clean hand-over. */
        journal_reset();
        cut_set(&c, false);
        cv = (conv_t){ f.kv, "x", parts, three, 3, bs, 3 };
        CHECK(wait_for(converged, &cv, WAIT_MS));
        ks_cluster_stats_t st;
        ks_cluster_get_stats(c.c, &st);
        CHECK_EQ_INT(st.sessions, 2);
        CHECK_EQ_INT(journal_await('R', -1, NULL, -1, nc), nc);
        CHECK_EQ_INT(journal_await('A', 3, NULL, -1, nc), nc);
        CHECK_EQ_INT(journal_count('L', -1, NULL, -1), 0);
        CHECK_EQ_INT(ps_epoch(f.kv, "x", pc), epoch + 2);

        tb_done(&a, false);
        tb_done(&b, false);
        tb_done(&c, false);
        fx_destroy(&f);
}

TEST(cluster_killed_broker_is_taken_over_after_ttl)
{
        fx_t f;
        REQUIRE(fx_init(&f, false));
        const int32_t parts = 12;
        make_topic(f.kv, "k", parts);
        start_opts_t o = { .clock = &f.clock.base };
        tb_t a, b;
        tb_t *bs[] = { &a, &b };
        REQUIRE_EQ_INT(tb_start(&a, f.kv, 1, &o), 0);
        REQUIRE_EQ_INT(tb_start(&b, f.kv, 2, &o), 0);
        const int32_t one[] = { 1 }, two[] = { 1, 2 };
        conv_t cv = { f.kv, "k", parts, two, 2, bs, 2 };
        REQUIRE(wait_for(converged, &cv, WAIT_MS));
        int nb = 0;
        for (int p = 0; p < parts; p++)
                nb += lease_holder_tp(f.kv, "k", p) == 2;
        REQUIRE(nb > 0);

        journal_reset();
        tb_done(&b, true);
        REQUIRE(advance(&f.clock, TTL_MS - 1, bs, 2));
        CHECK_EQ_INT(journal_count('A', -1, NULL, -1), 0);
        CHECK(ks_cluster_broker_get(a.c, 2, NULL)); /* still registered */
        REQUIRE(advance(&f.clock, 1, bs, 2));
        cv = (conv_t){ f.kv, "k", parts, one, 1, bs, 1 };
        CHECK(wait_for(converged, &cv, WAIT_MS));
        CHECK_EQ_INT(journal_await('A', 1, "k", -1, nb), nb);
        CHECK(!ks_cluster_broker_get(a.c, 2, NULL));
        tb_done(&a, false);
        fx_destroy(&f);
}

/* A keepalive that finds the session's lease gone (revoked in the store, as
 * an etcd operator or a compaction of leases would): the broker gives its
 * partitions up at once, without waiting for the TTL, the others take them
 * at the next epoch, and the broker comes back with a new session. */
TEST(cluster_lease_revoked_under_a_live_broker_is_given_up_and_renewed)
{
        fx_t f;
        REQUIRE(fx_init(&f, false));
        const int32_t parts = 12;
        make_topic(f.kv, "r", parts);
        start_opts_t o = { .clock = &f.clock.base }, oc = { .clock = &f.clock.base, .cuttable = true };
        tb_t a, b;
        tb_t *bs[] = { &a, &b };
        REQUIRE_EQ_INT(tb_start(&a, f.kv, 1, &o), 0);
        REQUIRE_EQ_INT(tb_start(&b, f.kv, 2, &oc), 0);
        const int32_t two[] = { 1, 2 };
        conv_t cv = { f.kv, "r", parts, two, 2, bs, 2 };
        REQUIRE(wait_for(converged, &cv, WAIT_MS));
        int32_t pb = -1, nb = 0;
        for (int p = 0; p < parts; p++)
                if (lease_holder_tp(f.kv, "r", p) == 2) {
                        nb++;
                        pb = p;
                }
        REQUIRE(nb > 0);
        int32_t epoch = ps_epoch(f.kv, "r", pb);

        journal_reset();
        __atomic_store_n(&b.faults.lose_leases, 1, __ATOMIC_SEQ_CST);
        REQUIRE(advance(&f.clock, STEP_MS, bs, 2)); /* well within the TTL */
        jwait_t w = { 'L', 2, NULL, -1, nb };
        CHECK(wait_for(journal_has, &w, WAIT_MS));
        CHECK_EQ_INT(__atomic_load_n(&b.faults.leases_lost, __ATOMIC_SEQ_CST), 1);
        CHECK(wait_for(converged, &cv, WAIT_MS));
        ks_cluster_stats_t st;
        ks_cluster_get_stats(b.c, &st);
        CHECK_EQ_INT(st.sessions, 2);
        CHECK_EQ_INT(journal_count('L', 1, NULL, -1), 0);
        CHECK(ps_epoch(f.kv, "r", pb) >= epoch + 1);
        tb_done(&a, false);
        tb_done(&b, false);
        fx_destroy(&f);
}

/* ------------------------------------------------------------ topics deleted */

TEST(cluster_follows_topics_deleted_recreated_and_grown)
{
        fx_t f;
        REQUIRE(fx_init(&f, false));
        make_topic(f.kv, "d", 3);
        start_opts_t o = { .clock = &f.clock.base };
        tb_t a;
        tb_t *bs[] = { &a };
        REQUIRE_EQ_INT(tb_start(&a, f.kv, 1, &o), 0);
        const int32_t one[] = { 1 };
        conv_t cv = { f.kv, "d", 3, one, 1, bs, 1 };
        REQUIRE(wait_for(converged, &cv, WAIT_MS));

        journal_reset();
        ks_meta_t *m;
        REQUIRE_EQ_INT(ks_meta_open(f.kv, &m), 0);
        REQUIRE_EQ_INT(ks_meta_topic_delete(m, "d", NULL), 0);
        jwait_t w = { 'D', 1, NULL, -1, 3 }; /* lost because deleted */
        CHECK(wait_for(journal_has, &w, WAIT_MS));
        cv = (conv_t){ f.kv, "d", 0, one, 1, bs, 1 }; /* no lease key left */
        CHECK(wait_for(converged, &cv, WAIT_MS));

        ks_meta_close(m);
        make_topic(f.kv, "d", 2);
        cv = (conv_t){ f.kv, "d", 2, one, 1, bs, 1 };
        CHECK(wait_for(converged, &cv, WAIT_MS));
        CHECK_EQ_INT(ps_epoch(f.kv, "d", 0), 1); /* a new incarnation starts over */
        CHECK_EQ_INT(journal_await('A', 1, "d", -1, 2), 2);

        /* Grown elsewhere: the new partitions are acquired too. */
        REQUIRE_EQ_INT(ks_meta_open(f.kv, &m), 0);
        ks_topic_t t;
        REQUIRE_EQ_INT(ks_meta_topic_load(m, "d", &t), 0);
        REQUIRE_EQ_INT(ks_meta_topic_add_partitions(m, &t, 5), 0);
        ks_meta_close(m);
        cv = (conv_t){ f.kv, "d", 5, one, 1, bs, 1 };
        CHECK(wait_for(converged, &cv, WAIT_MS));
        CHECK_EQ_INT(journal_await('A', 1, "d", -1, 5), 5);
        tb_done(&a, false);
        fx_destroy(&f);
}

/* ------------------------------------------------------------ groups */

TEST(cluster_groups_are_acquired_on_demand_and_move_on_join)
{
        fx_t f;
        REQUIRE(fx_init(&f, false));
        start_opts_t o = { .clock = &f.clock.base };
        tb_t a, b, c;
        tb_t *bs[] = { &a, &b, &c };
        REQUIRE_EQ_INT(tb_start(&a, f.kv, 1, &o), 0);
        REQUIRE_EQ_INT(tb_start(&b, f.kv, 2, &o), 0);
        const int32_t two[] = { 1, 2 }, three[] = { 1, 2, 3 };
        /* Both know both brokers. */
        int64_t until = real_ms() + WAIT_MS;
        while ((!ks_cluster_broker_get(a.c, 2, NULL) || !ks_cluster_broker_get(b.c, 1, NULL)) && real_ms() < until)
                sleep_ms(2);

        enum { NG = 40 };
        char g[NG][16];
        int32_t coord[NG];
        for (int i = 0; i < NG; i++) {
                snprintf(g[i], sizeof(g[i]), "grp-%d", i);
                char key[32];
                snprintf(key, sizeof(key), "group:%.15s", g[i]);
                coord[i] = ks_cluster_place(key, two, 2);
                CHECK_EQ_INT(ks_cluster_group_coordinator(a.c, g[i]), coord[i]);
                CHECK_EQ_INT(ks_cluster_group_coordinator(b.c, g[i]), coord[i]);
                tb_t *mine = bs[coord[i] - 1], *theirs = bs[2 - coord[i]];
                CHECK(!ks_cluster_owns_group(mine->c, g[i]));
                CHECK_EQ_INT(ks_cluster_acquire_group(theirs->c, g[i]), KS_ERR_NOT_COORDINATOR);
                CHECK_EQ_INT(ks_cluster_acquire_group(mine->c, g[i]), 0);
                CHECK(ks_cluster_owns_group(mine->c, g[i]));
                CHECK_EQ_INT(ks_cluster_acquire_group(mine->c, g[i]), 0); /* idempotent */
                CHECK_EQ_INT(journal_await('a', coord[i], g[i], -1, 1), 1);
                char lk[64];
                snprintf(lk, sizeof(lk), KS_CLUSTER_GROUP_LEASES_PREFIX "%.15s", g[i]);
                CHECK_EQ_INT(lease_holder(f.kv, lk), coord[i]);
        }
        CHECK_EQ_INT(ks_cluster_acquire_group(a.c, ""), KS_ERR__INVALID_ARG);

        /* A third broker: the groups placed on it are released (hook while
         * the key is still held) and become acquirable there. */
        journal_reset();
        REQUIRE_EQ_INT(tb_start(&c, f.kv, 3, &o), 0);
        int moved = 0;
        for (int i = 0; i < NG; i++) {
                char key[32], lk[64];
                snprintf(key, sizeof(key), "group:%.15s", g[i]);
                snprintf(lk, sizeof(lk), KS_CLUSTER_GROUP_LEASES_PREFIX "%.15s", g[i]);
                int32_t now = ks_cluster_place(key, three, 3);
                if (now == coord[i])
                        continue;
                moved++;
                until = real_ms() + WAIT_MS;
                while (lease_holder(f.kv, lk) != -1 && real_ms() < until)
                        sleep_ms(2);
                CHECK_EQ_INT(lease_holder(f.kv, lk), -1);
                jev_t rel;
                REQUIRE(journal_find('r', g[i], -1, &rel));
                CHECK_EQ_INT(rel.broker, coord[i]);
                CHECK_EQ_INT(rel.holder_at_hook, coord[i]);
                CHECK(!ks_cluster_owns_group(bs[coord[i] - 1]->c, g[i]));
                until = real_ms() + WAIT_MS;
                while (ks_cluster_group_coordinator(a.c, g[i]) != 3 && real_ms() < until)
                        sleep_ms(2);
                CHECK_EQ_INT(ks_cluster_group_coordinator(a.c, g[i]), 3);
                CHECK_EQ_INT(ks_cluster_acquire_group(c.c, g[i]), 0);
                CHECK(ks_cluster_owns_group(c.c, g[i]));
        }
        CHECK(moved > 0);
        CHECK_EQ_INT(journal_await('r', -1, NULL, -1, moved), moved);
        CHECK_EQ_INT(journal_count('l', -1, NULL, -1), 0);

        /* Kill the coordinator of some group: after the TTL it is lost
         * there... and acquirable by the new placement's choice. */
        int victim = -1;
        for (int i = 0; i < NG && victim < 0; i++) {
                char key[32];
                snprintf(key, sizeof(key), "group:%.15s", g[i]);
                if (ks_cluster_place(key, three, 3) == 3)
                        victim = i;
        }
        REQUIRE(victim >= 0);
        char zkey[KS_CLUSTER_GROUP_MAX + 32], okey[KS_CLUSTER_GROUP_MAX + 32];
        ks_kv_cmp_t zombie, other;
        CHECK(ks_cluster_group_fence_cmp(c.c, g[victim], zkey, sizeof(zkey), &zombie));
        CHECK(txn_with(f.kv, &zombie));
        CHECK(!ks_cluster_group_fence_cmp(a.c, g[victim], okey, sizeof(okey), &other));
        CHECK(!txn_with(f.kv, &other));
        tb_done(&c, true);
        REQUIRE(advance(&f.clock, TTL_MS, bs, 3));
        until = real_ms() + WAIT_MS;
        while (ks_cluster_acquire_group(bs[coord[victim] - 1]->c, g[victim]) != 0 && real_ms() < until)
                sleep_ms(2);
        CHECK(ks_cluster_owns_group(bs[coord[victim] - 1]->c, g[victim]));
        CHECK(!txn_with(f.kv, &zombie)); /* the old coordinator's writes are fenced */
        CHECK(ks_cluster_group_fence_cmp(bs[coord[victim] - 1]->c, g[victim], okey, sizeof(okey), &other));
        CHECK(txn_with(f.kv, &other));

        tb_done(&a, false);
        tb_done(&b, false);
        fx_destroy(&f);
}

/* ------------------------------------------------------------ etcd */

TEST(cluster_etcd_hand_over_and_failover)
{
        ks_log_level_t saved = ks_log_level;
        ks_log_set_level(KS_LOG_ERROR);
        journal_reset();
        REQUIRE(ks_test_etcd_wipe());
        ks_kv_t *kvs[4] = { 0 };
        for (int i = 0; i < 4; i++)
                REQUIRE((kvs[i] = ks_test_etcd_open()) != NULL);
        const int32_t parts = 12;
        make_topic(kvs[0], "ef", parts);
        start_opts_t o = { .ttl_ms = 2000 }; /* system clock, real etcd TTLs */
        tb_t a, b, c;
        tb_t *bs[] = { &a, &b, &c };
        const int32_t two[] = { 1, 2 }, three[] = { 1, 2, 3 };
        int64_t t0 = real_ms();
        REQUIRE_EQ_INT(tb_start(&a, kvs[1], 1, &o), 0);
        REQUIRE_EQ_INT(tb_start(&b, kvs[2], 2, &o), 0);
        conv_t cv = { kvs[0], "ef", parts, two, 2, bs, 2 };
        REQUIRE(wait_for(converged, &cv, WAIT_MS));
        int32_t before[12], epoch0[12];
        for (int p = 0; p < parts; p++) {
                before[p] = lease_holder_tp(kvs[0], "ef", p);
                epoch0[p] = ps_epoch(kvs[0], "ef", p);
        }

        /* Join: clean hand-over. */
        journal_reset();
        REQUIRE_EQ_INT(tb_start(&c, kvs[3], 3, &o), 0);
        cv = (conv_t){ kvs[0], "ef", parts, three, 3, bs, 3 };
        REQUIRE(wait_for(converged, &cv, WAIT_MS));
        int nc = 0, pc = -1;
        for (int p = 0; p < parts; p++) {
                if (lease_holder_tp(kvs[0], "ef", p) != 3)
                        continue;
                nc++;
                pc = p;
                jev_t rel, acq;
                REQUIRE(journal_find('R', "ef", p, &rel));
                REQUIRE(journal_find('A', "ef", p, &acq));
                CHECK_EQ_INT(rel.broker, before[p]);
                CHECK_EQ_INT(rel.holder_at_hook, before[p]);
                CHECK(rel.seq < acq.seq);
                CHECK_EQ_INT(acq.epoch, epoch0[p] + 1);
        }
        REQUIRE(pc >= 0);
        int32_t epoch = -1;
        REQUIRE(ks_cluster_owns_partition(c.c, "ef", pc, &epoch));
        char zkey[300];
        ks_kv_cmp_t zombie;
        CHECK(ks_cluster_fence_cmp(c.c, "ef", pc, epoch, zkey, sizeof(zkey), &zombie));
        CHECK(txn_with(kvs[0], &zombie));

        /* kill -9 of broker 3: taken over once its lease expired (2 s after
         * its last keepalive, sent at most TTL/3 before the kill). */
        journal_reset();
        int64_t killed_at = real_ms();
        tb_done(&c, true);
        cv = (conv_t){ kvs[0], "ef", parts, two, 2, bs, 2 };
        CHECK(wait_for(converged, &cv, WAIT_MS));
        int64_t took = real_ms() - killed_at;
        CHECK(took >= 2000 - 2000 / 3 - 100);
        CHECK(took <= 6000);
        CHECK_EQ_INT(journal_await('A', -1, "ef", -1, nc), nc);
        CHECK(!txn_with(kvs[0], &zombie));
        CHECK_EQ_INT(ps_epoch(kvs[0], "ef", pc), epoch + 1);
        if (ks_test_failed() || getenv("KS_TEST_TIMINGS"))
                fprintf(stdout, "cluster_etcd: takeover after kill took %lld ms\n", (long long)took);

        tb_done(&a, false);
        tb_done(&b, false);
        CHECK(real_ms() - t0 < 15000);
        for (int i = 0; i < 4; i++)
                ks_kv_destroy(kvs[i]);
        ks_log_set_level(saved);
}

/* membership_only: brokers register and see each other, but nothing is
 * acquired: no partition lease keys, no epoch bumps, no hooks. */
TEST(cluster_membership_only_acquires_nothing)
{
        fx_t f;
        REQUIRE(fx_init(&f, false));
        journal_reset();
        make_topic(f.kv, "orders", 4);
        start_opts_t o = { .clock = &f.clock.base, .membership_only = true };
        tb_t b[2];
        REQUIRE_EQ_INT(tb_start(&b[0], f.kv, 1, &o), 0);
        REQUIRE_EQ_INT(tb_start(&b[1], f.kv, 2, &o), 0);
        int64_t until = real_ms() + WAIT_MS;
        ks_broker_info_t *v = NULL;
        int n = 0;
        while ((n = ks_cluster_brokers(b[0].c, &v)) != 2 && real_ms() < until) {
                free(v);
                v = NULL;
                sleep_ms(2);
        }
        free(v);
        CHECK_EQ_INT(n, 2);
        /* Several periods of the module's own passes. */
        tb_t *bs[2] = { &b[0], &b[1] };
        CHECK(advance(&f.clock, 3 * TTL_MS, bs, 2));
        sleep_ms(50);
        ks_kv_result_t r;
        uint8_t end[64];
        size_t elen = ks_kv_prefix_end(KS_CLUSTER_PARTITION_LEASES_PREFIX, strlen(KS_CLUSTER_PARTITION_LEASES_PREFIX),
                                       end);
        REQUIRE_EQ_INT(ks_kv_range(f.kv, K(KS_CLUSTER_PARTITION_LEASES_PREFIX), end, elen, &r), 0);
        CHECK_EQ_INT(r.count, 0);
        ks_kv_result_free(&r);
        CHECK_EQ_INT(journal_count('A', -1, NULL, -1), 0);
        tb_done(&b[0], false);
        tb_done(&b[1], false);
        fx_destroy(&f);
}
