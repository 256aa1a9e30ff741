/*
 * test_kv_etcd.c — what is specific to the etcd metadata backend
 * (meta/kv_etcd.c); its kv.h behaviour is test_kv.c's shared suite.
 *
 * Sections:
 *  1. The JSON decoders and helpers of kv_etcd_json.h (no etcd needed).
 *  2. Configuration: malformed endpoint lists, no endpoint answering.
 *  3. Failover against the shared test etcd: a dead first endpoint, and a
 *     scripted HTTP server in this process as first endpoint that hangs,
 *     answers "no leader" / "request timed out", or sends garbage — reads go
 *     on to the next endpoint, writes only when certainly not applied.
 *  4. Limits (KS_ERR__TOO_LARGE), real lease expiry, prompt watch cancel.
 *  5. Private etcds: watch resume across a kill -9 and restart; a
 *     three-member cluster losing the member in use; authentication
 *     (on its own instance, so the shared one stays open).
 *
 * Threads: CHECKs run on the test thread; watch callbacks record into a
 * mutex-protected collector; the scripted server has its own thread.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "etcd_harness.h"
#include "meta/kv_engine.h"
#include "meta/kv_etcd_json.h"
#include "test.h"
#include "util/log.h"

#define K(s) (s), strlen(s)
#define WAIT_MS 15000

static int64_t now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void quiet(ks_log_level_t *saved)
{
        *saved = ks_log_level;
        ks_log_set_level((ks_log_level_t)(KS_LOG_ERROR + 1)); /* expected errors: quiet */
}

/* ------------------------------------------------------------ collector */

typedef struct ev {
        ks_kv_ev_type_t type;
        int64_t rev;
        char key[64];
} ev_t;

typedef struct col {
        pthread_mutex_t mu;
        pthread_cond_t cv;
        ev_t ev[4096];
        size_t n, calls;
        bool mixed_rev, out_of_order;
        int64_t last_rev;
} col_t;

static col_t *col_new(void)
{
        col_t *c = calloc(1, sizeof(*c));
        pthread_mutex_init(&c->mu, NULL);
        pthread_cond_init(&c->cv, NULL);
        return c;
}

static void col_free(col_t *c)
{
        if (!c)
                return;
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        free(c);
}

static void col_cb(void *opaque, const ks_kv_event_t *evs, size_t n)
{
        col_t *c = opaque;
        pthread_mutex_lock(&c->mu);
        if (n && c->calls && evs[0].revision <= c->last_rev)
                c->out_of_order = true;
        for (size_t i = 0; i < n; i++) {
                if (evs[i].revision != evs[0].revision)
                        c->mixed_rev = true;
                if (c->n < sizeof(c->ev) / sizeof(c->ev[0])) {
                        ev_t *e = &c->ev[c->n++];
                        e->type = evs[i].type;
                        e->rev = evs[i].revision;
                        snprintf(e->key, sizeof(e->key), "%.*s", (int)evs[i].kv.key_len,
                                 evs[i].kv.key ? (const char *)evs[i].kv.key : "");
                }
        }
        if (n)
                c->last_rev = evs[0].revision;
        c->calls++;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
}

static bool col_wait(col_t *c, size_t n, int64_t ms)
{
        int64_t deadline = now_ms() + ms;
        pthread_mutex_lock(&c->mu);
        while (c->n < n && now_ms() < deadline) {
                pthread_mutex_unlock(&c->mu);
                usleep(5000);
                pthread_mutex_lock(&c->mu);
        }
        bool ok = c->n >= n;
        pthread_mutex_unlock(&c->mu);
        return ok;
}

static bool exists(ks_kv_t *kv, const char *k)
{
        ks_kv_result_t r;
        if (ks_kv_range(kv, K(k), NULL, 0, &r) != KS_ERR_NONE)
                return false;
        bool f = r.count == 1;
        ks_kv_result_free(&r);
        return f;
}

static ks_kv_t *open_eps(const char *eps, int64_t timeout_ms, char *err, size_t errlen, ks_err_t *rc)
{
        ks_kv_etcd_config_t cfg = {.endpoints = eps, .request_timeout_ms = timeout_ms};
        ks_kv_t *kv = NULL;
        *rc = ks_kv_etcd_open(&cfg, err, errlen, &kv);
        return kv;
}

/* A loopback port nobody listens on. */
static int dead_port(void)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t sl = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM, 0), port = 0;
        if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
            getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
                port = ntohs(sa.sin_port);
        if (fd >= 0)
                close(fd);
        return port;
}

/* ============================================================ 1. JSON */

TEST(kv_etcd_json_range)
{
        ks_kv_result_t r;
        /* Keys "/a" (L2E=) and "/b" (L2I=), value "v1" (djE=). */
        const char *ok = "{\"header\":{\"cluster_id\":\"1\",\"revision\":\"7\"},\"kvs\":["
                         "{\"key\":\"L2E=\",\"create_revision\":\"2\",\"mod_revision\":\"5\",\"version\":\"3\","
                         "\"value\":\"djE=\",\"lease\":\"694d\"},"
                         "{\"key\":\"L2I=\",\"create_revision\":6,\"mod_revision\":\"6\",\"version\":\"1\"}],"
                         "\"count\":\"2\"}\n";
        /* lease "694d" is not an int64: rejected. */
        CHECK_EQ_INT(ks_etcd_json_range(ok, strlen(ok), &r), KS_ERR__PARSE);
        CHECK_EQ_INT(r.count, 0);
        char fixed[512];
        snprintf(fixed, sizeof(fixed), "%s", ok);
        memcpy(strstr(fixed, "694d"), "6940", 4);
        REQUIRE_EQ_INT(ks_etcd_json_range(fixed, strlen(fixed), &r), KS_ERR_NONE);
        REQUIRE_EQ_INT(r.count, 2);
        CHECK_EQ_INT(r.revision, 7);
        CHECK_EQ_STR((const char *)r.kvs[0].key, "/a");
        CHECK_EQ_STR((const char *)r.kvs[0].value, "v1");
        CHECK_EQ_INT(r.kvs[0].create_rev, 2);
        CHECK_EQ_INT(r.kvs[0].mod_rev, 5);
        CHECK_EQ_INT(r.kvs[0].version, 3);
        CHECK_EQ_INT(r.kvs[0].lease, 6940);
        CHECK_EQ_STR((const char *)r.kvs[1].key, "/b");
        CHECK_EQ_INT(r.kvs[1].value_len, 0);
        CHECK(r.kvs[1].value && r.kvs[1].value[0] == 0);
        CHECK_EQ_INT(r.kvs[1].create_rev, 6);
        ks_kv_result_free(&r);

        /* Empty answer (no kvs): fine.  No header: not a range answer. */
        const char *empty = "{\"header\":{\"revision\":\"3\"}}";
        REQUIRE_EQ_INT(ks_etcd_json_range(empty, strlen(empty), &r), KS_ERR_NONE);
        CHECK_EQ_INT(r.count, 0);
        CHECK_EQ_INT(r.revision, 3);
        ks_kv_result_free(&r);

        static const char *const bad[] = {
            "",
            "   ",
            "{}",
            "[]",
            "{\"header\":{\"revision\":\"3\"}} x",
            "{\"header\":{\"revision\":\"3\"}",
            "{\"header\":{\"revision\":\"-3\"}}",
            "{\"header\":{\"revision\":3.5}}",
            "{\"header\":{\"revision\":\"99999999999999999999\"}}",
            "{\"header\":{\"revision\":\"3\"},\"kvs\":{}}",
            "{\"header\":{\"revision\":\"3\"},\"kvs\":[1]}",
            "{\"header\":{\"revision\":\"3\"},\"kvs\":[{\"value\":\"djE=\"}]}",
            "{\"header\":{\"revision\":\"3\"},\"kvs\":[{\"key\":\"L2F\"}]}",
            "{\"header\":{\"revision\":\"3\"},\"kvs\":[{\"key\":\"L2E=\",\"version\":\"-1\"}]}",
            "{\"header\":{\"revision\":\"3\"},\"kvs\":[{\"key\":\"L2E=\",\"value\":7}]}",
            "{\"header\":{\"revision\":\"3\"},\"kvs\":[{\"key\":\"L2E=\",\"value\":\"d@E=\"}]}",
            "{\"header\":\"x\"}",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                ks_err_t err = ks_etcd_json_range(bad[i], strlen(bad[i]), &r);
                if (err != KS_ERR__PARSE)
                        fprintf(stderr, "  bad range answer %zu accepted\n", i);
                CHECK_EQ_INT(err, KS_ERR__PARSE);
                CHECK(r.count == 0 && r.kvs == NULL);
        }
        /* Embedded NUL. */
        CHECK_EQ_INT(ks_etcd_json_range("{\"a\":\0}", 7, &r), KS_ERR__PARSE);
}

TEST(kv_etcd_json_others)
{
        bool ok;
        int64_t rev, n, id, ttl;
        ks_etcd_error_t ee;
        char *tok;

        const char *txn = "{\"header\":{\"revision\":\"9\"},\"succeeded\":true,\"responses\":[{}]}";
        CHECK_EQ_INT(ks_etcd_json_txn(txn, strlen(txn), &ok, &rev), KS_ERR_NONE);
        CHECK(ok);
        CHECK_EQ_INT(rev, 9);
        const char *txn_f = "{\"header\":{\"revision\":\"9\"}}";
        CHECK_EQ_INT(ks_etcd_json_txn(txn_f, strlen(txn_f), &ok, &rev), KS_ERR_NONE);
        CHECK(!ok);
        const char *txn_bad = "{\"header\":{\"revision\":\"9\"},\"succeeded\":\"true\"}";
        CHECK_EQ_INT(ks_etcd_json_txn(txn_bad, strlen(txn_bad), &ok, &rev), KS_ERR__PARSE);

        const char *del = "{\"header\":{\"revision\":\"4\"},\"deleted\":\"2\"}";
        CHECK_EQ_INT(ks_etcd_json_delete(del, strlen(del), &n, &rev), KS_ERR_NONE);
        CHECK_EQ_INT(n, 2);
        CHECK_EQ_INT(rev, 4);

        const char *grant = "{\"header\":{\"revision\":\"3\"},\"ID\":\"2324035585415677964\",\"TTL\":\"30\"}";
        CHECK_EQ_INT(ks_etcd_json_lease_grant(grant, strlen(grant), &id, &ttl), KS_ERR_NONE);
        CHECK_EQ_INT(id, 2324035585415677964LL);
        CHECK_EQ_INT(ttl, 30);
        const char *grant_err = "{\"header\":{\"revision\":\"3\"},\"ID\":\"5\",\"TTL\":\"30\",\"error\":\"x\"}";
        CHECK_EQ_INT(ks_etcd_json_lease_grant(grant_err, strlen(grant_err), &id, &ttl), KS_ERR__PARSE);

        const char *ka = "{\"result\":{\"header\":{\"revision\":\"3\"},\"ID\":\"5\",\"TTL\":\"30\"}}\n";
        CHECK_EQ_INT(ks_etcd_json_keepalive(ka, strlen(ka), &ttl, &ee), KS_ERR_NONE);
        CHECK_EQ_INT(ttl, 30);
        const char *ka_gone = "{\"result\":{\"header\":{\"revision\":\"3\"},\"ID\":\"5\"}}";
        CHECK_EQ_INT(ks_etcd_json_keepalive(ka_gone, strlen(ka_gone), &ttl, &ee), KS_ERR_NONE);
        CHECK_EQ_INT(ttl, 0);
        const char *ka_err = "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"etcdserver: no leader\"}}";
        CHECK_EQ_INT(ks_etcd_json_keepalive(ka_err, strlen(ka_err), &ttl, &ee), KS_ERR__NOT_FOUND);
        CHECK_EQ_INT(ee.code, 14);
        CHECK_EQ_STR(ee.message, "etcdserver: no leader");

        const char *unary = "{\"error\":\"etcdserver: requested lease not found\",\"message\":\"etcdserver: "
                            "requested lease \\\"x\\\" not found\",\"code\":5}";
        CHECK_EQ_INT(ks_etcd_json_error(unary, strlen(unary), &ee), KS_ERR_NONE);
        CHECK_EQ_INT(ee.code, 5);
        CHECK_EQ_STR(ee.message, "etcdserver: requested lease 'x' not found"); /* quotes cleaned */
        CHECK_EQ_INT(ks_etcd_json_error(del, strlen(del), &ee), KS_ERR__PARSE);

        const char *auth = "{\"header\":{},\"token\":\"uiLJQahYolQEFxGd.10\"}";
        REQUIRE_EQ_INT(ks_etcd_json_auth(auth, strlen(auth), &tok), KS_ERR_NONE);
        CHECK_EQ_STR(tok, "uiLJQahYolQEFxGd.10");
        free(tok);
        const char *auth_bad = "{\"token\":\"a\\r\\nX-Evil: 1\"}";
        CHECK_EQ_INT(ks_etcd_json_auth(auth_bad, strlen(auth_bad), &tok), KS_ERR__PARSE);
        CHECK(tok == NULL);

        /* base64 round trips and rejects. */
        uint8_t all[256], *d;
        size_t dl;
        char enc[KS_ETCD_B64_LEN(256) + 1];
        for (int i = 0; i < 256; i++)
                all[i] = (uint8_t)i;
        for (size_t len = 0; len <= 256; len += 37) {
                size_t el = ks_etcd_b64_encode(all, len, enc);
                CHECK_EQ_INT(el, KS_ETCD_B64_LEN(len));
                REQUIRE_EQ_INT(ks_etcd_b64_decode(enc, el, &d, &dl), KS_ERR_NONE);
                CHECK_EQ_MEM(d, dl, all, len);
                CHECK_EQ_INT(d[dl], 0);
                free(d);
        }
        CHECK_EQ_INT(ks_etcd_b64_decode("AA==", 4, &d, &dl), KS_ERR_NONE);
        CHECK_EQ_INT(dl, 1);
        free(d);
        CHECK_EQ_INT(ks_etcd_b64_decode("AA", 2, &d, &dl), KS_ERR_NONE); /* unpadded */
        free(d);
        CHECK_EQ_INT(ks_etcd_b64_decode("A", 1, &d, &dl), KS_ERR__PARSE);
        CHECK_EQ_INT(ks_etcd_b64_decode("AB==", 4, &d, &dl), KS_ERR__PARSE); /* stray bits */
        CHECK_EQ_INT(ks_etcd_b64_decode("AA=", 3, &d, &dl), KS_ERR__PARSE);
        CHECK_EQ_INT(ks_etcd_b64_decode("A A=", 4, &d, &dl), KS_ERR__PARSE);
        CHECK_EQ_INT(ks_etcd_b64_decode("====", 4, &d, &dl), KS_ERR__PARSE);
}

TEST(kv_etcd_json_watch)
{
        ks_etcd_watch_msg_t m;
        /* Two revisions; a DELETE keeps key and mod_revision only. */
        const char *evs = "{\"result\":{\"header\":{\"revision\":\"12\"},\"events\":["
                          "{\"kv\":{\"key\":\"L2E=\",\"create_revision\":\"10\",\"mod_revision\":\"10\","
                          "\"version\":\"1\",\"value\":\"djE=\"}},"
                          "{\"type\":\"DELETE\",\"kv\":{\"key\":\"L2I=\",\"mod_revision\":\"11\",\"version\":\"4\"}},"
                          "{\"type\":1,\"kv\":{\"key\":\"L2M=\",\"mod_revision\":\"11\"}}]}}";
        REQUIRE_EQ_INT(ks_etcd_json_watch(evs, strlen(evs), &m), KS_ERR_NONE);
        CHECK(!m.is_error && !m.created && !m.canceled);
        CHECK_EQ_INT(m.header_rev, 12);
        REQUIRE_EQ_INT(m.nevents, 3);
        CHECK(m.events[0].type == KS_KV_EV_PUT);
        CHECK_EQ_INT(m.events[0].revision, 10);
        CHECK_EQ_STR((const char *)m.events[0].kv.value, "v1");
        CHECK(m.events[1].type == KS_KV_EV_DELETE);
        CHECK_EQ_STR((const char *)m.events[1].kv.key, "/b");
        CHECK_EQ_INT(m.events[1].kv.mod_rev, 11);
        CHECK_EQ_INT(m.events[1].kv.version, 0);
        CHECK_EQ_INT(m.events[1].kv.value_len, 0);
        CHECK(m.events[2].type == KS_KV_EV_DELETE);
        ks_etcd_watch_msg_free(&m);

        const char *compacted = "{\"result\":{\"header\":{\"cluster_id\":\"3\"},\"canceled\":true,"
                                "\"compact_revision\":\"6\"}}";
        REQUIRE_EQ_INT(ks_etcd_json_watch(compacted, strlen(compacted), &m), KS_ERR_NONE);
        CHECK(m.canceled);
        CHECK_EQ_INT(m.compact_rev, 6);
        CHECK_EQ_INT(m.header_rev, 0);
        ks_etcd_watch_msg_free(&m);

        const char *err = "{\"error\":{\"grpc_code\":14,\"message\":\"etcdserver: no leader\"}}";
        REQUIRE_EQ_INT(ks_etcd_json_watch(err, strlen(err), &m), KS_ERR_NONE);
        CHECK(m.is_error);
        CHECK_EQ_INT(m.error.code, 14);
        ks_etcd_watch_msg_free(&m);

        static const char *const bad[] = {
            "{\"result\":3}",
            "{\"nothing\":{}}",
            "{\"result\":{\"events\":[{\"kv\":{\"key\":\"L2E=\"}}]}}", /* no mod_revision */
            "{\"result\":{\"events\":[{\"type\":\"PATCH\",\"kv\":{\"key\":\"L2E=\",\"mod_revision\":\"1\"}}]}}",
            "{\"result\":{\"events\":[{\"type\":2,\"kv\":{\"key\":\"L2E=\",\"mod_revision\":\"1\"}}]}}",
            "{\"result\":{\"events\":[{\"type\":\"PUT\"}]}}",
            "{\"result\":{\"events\":[{\"kv\":{\"key\":\"L2E=\",\"mod_revision\":\"5\"}},"
            "{\"kv\":{\"key\":\"L2E=\",\"mod_revision\":\"4\"}}]}}", /* revisions go back */
            "{\"result\":{\"created\":\"yes\"}}",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                ks_err_t e = ks_etcd_json_watch(bad[i], strlen(bad[i]), &m);
                if (e != KS_ERR__PARSE)
                        fprintf(stderr, "  bad watch message %zu accepted\n", i);
                CHECK_EQ_INT(e, KS_ERR__PARSE);
                CHECK(m.nevents == 0 && m.events == NULL);
        }
}

typedef struct lines_rec {
        char out[512];
        int n;
} lines_rec_t;

static int lines_fn(void *opaque, const char *line, size_t len)
{
        lines_rec_t *r = opaque;
        size_t o = strlen(r->out);
        snprintf(r->out + o, sizeof(r->out) - o, "[%.*s]", (int)len, line);
        r->n++;
        return 0;
}

static int lines_stop(void *opaque, const char *line, size_t len)
{
        (void)opaque;
        return len == 4 && !memcmp(line, "stop", 4) ? 7 : 0;
}

TEST(kv_etcd_lines)
{
        const char *in = "one\ntwo\r\n\nthree-is-long\nfour";
        /* Every split point gives the same lines. */
        for (size_t cut = 0; cut <= strlen(in); cut++) {
                ks_etcd_lines_t l = {.max = 64};
                lines_rec_t r = {"", 0};
                CHECK_EQ_INT(ks_etcd_lines_feed(&l, in, cut, lines_fn, &r), 0);
                CHECK_EQ_INT(ks_etcd_lines_feed(&l, in + cut, strlen(in) - cut, lines_fn, &r), 0);
                CHECK_EQ_STR(r.out, "[one][two][three-is-long]");
                CHECK_EQ_INT(ks_etcd_lines_feed(&l, "\n", 1, lines_fn, &r), 0);
                CHECK_EQ_STR(r.out, "[one][two][three-is-long][four]");
                ks_etcd_lines_free(&l);
        }
        /* Byte by byte. */
        ks_etcd_lines_t l = {.max = 64};
        lines_rec_t r = {"", 0};
        for (size_t i = 0; i < strlen(in); i++)
                CHECK_EQ_INT(ks_etcd_lines_feed(&l, in + i, 1, lines_fn, &r), 0);
        CHECK_EQ_STR(r.out, "[one][two][three-is-long]");
        ks_etcd_lines_free(&l);

        /* A line over max is refused; a callback's value stops the feed. */
        ks_etcd_lines_t s = {.max = 8};
        CHECK_EQ_INT(ks_etcd_lines_feed(&s, "12345", 5, lines_fn, &r), 0);
        CHECK_EQ_INT(ks_etcd_lines_feed(&s, "6789", 4, lines_fn, &r), -1);
        CHECK_EQ_INT(ks_etcd_lines_feed(&s, "a\nstop\nb\n", 9, lines_stop, NULL), 7);
        ks_etcd_lines_free(&s);
}

/* ============================================================ 2. config */

TEST(kv_etcd_bad_config)
{
        static const char *const bad[] = {
            "",
            ",",
            "http://",
            "ftp://127.0.0.1:2379",
            "127.0.0.1:notaport",
            "127.0.0.1:99999",
            "127.0.0.1:0",
            "http://a b:2379",
            "http://user@127.0.0.1:2379",
            "http://127.0.0.1:2379,,http://127.0.0.1:2380",
            "http://127.0.0.1:2379/v3",
            "http://[::1:2379",
            "http://127.0.0.1:2379?x",
        };
        ks_log_level_t saved;
        char err[512];
        ks_err_t rc;
        ks_kv_t *kv;

        quiet(&saved);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                err[0] = 0;
                kv = open_eps(bad[i], 0, err, sizeof(err), &rc);
                if (rc != KS_ERR__INVALID_ARG)
                        fprintf(stderr, "  endpoint list \"%s\" accepted\n", bad[i]);
                CHECK_EQ_INT(rc, KS_ERR__INVALID_ARG);
                CHECK(kv == NULL);
                CHECK(err[0] != 0);
        }
        ks_kv_etcd_config_t cfg = {.endpoints = NULL};
        CHECK_EQ_INT(ks_kv_etcd_open(&cfg, err, sizeof(err), &kv), KS_ERR__INVALID_ARG);
        cfg = (ks_kv_etcd_config_t){.endpoints = "127.0.0.1:2379", .request_timeout_ms = -1};
        CHECK_EQ_INT(ks_kv_etcd_open(&cfg, err, sizeof(err), &kv), KS_ERR__INVALID_ARG);
        cfg = (ks_kv_etcd_config_t){.endpoints = "127.0.0.1:2379", .password = "pw"};
        CHECK_EQ_INT(ks_kv_etcd_open(&cfg, err, sizeof(err), &kv), KS_ERR__INVALID_ARG);
        CHECK(strstr(err, "user name") != NULL);
        CHECK_EQ_INT(ks_kv_etcd_open(NULL, err, sizeof(err), &kv), KS_ERR__INVALID_ARG);

        /* Nobody listening anywhere: unavailable, quickly, with a message. */
        char eps[128];
        snprintf(eps, sizeof(eps), "127.0.0.1:%d, http://127.0.0.1:%d/", dead_port(), dead_port());
        int64_t t0 = now_ms();
        kv = open_eps(eps, 0, err, sizeof(err), &rc);
        CHECK_EQ_INT(rc, KS_ERR__UNAVAILABLE);
        CHECK(kv == NULL);
        CHECK(strstr(err, "no etcd endpoint answered") != NULL);
        CHECK(now_ms() - t0 < 3000);
        ks_log_set_level(saved);
}

/* ============================================================ 3. failover */

TEST(kv_etcd_failover_dead_first)
{
        const char *live = ks_test_etcd_endpoints();
        char eps[256], err[512];
        ks_err_t rc;
        ks_kv_watch_t *w = NULL;
        int64_t rev = 0;

        REQUIRE(live && !strncmp(live, "http://", 7));
        REQUIRE(ks_test_etcd_wipe());
        /* The live one written bare (host:port means http://). */
        snprintf(eps, sizeof(eps), "http://127.0.0.1:%d,%s", dead_port(), live + 7);
        ks_kv_t *kv = open_eps(eps, 0, err, sizeof(err), &rc);
        REQUIRE_EQ_INT(rc, KS_ERR_NONE);
        col_t *c = col_new();
        CHECK_EQ_INT(ks_kv_watch(kv, K("/fd/"), "/fd0", 4, 0, col_cb, c, &w), KS_ERR_NONE);
        CHECK_EQ_INT(ks_kv_put(kv, K("/fd/a"), "1", 1, 0, &rev), KS_ERR_NONE);
        CHECK(exists(kv, "/fd/a"));
        CHECK(col_wait(c, 1, WAIT_MS));
        ks_kv_watch_cancel(kv, w);
        ks_kv_destroy(kv);
        col_free(c);
}

/* A scripted HTTP server standing in for a broken etcd member. */
typedef enum { FAKE_OK, FAKE_HANG, FAKE_NO_LEADER, FAKE_TIMED_OUT, FAKE_GARBAGE } fake_mode_t;

typedef struct fake {
        int lfd, port;
        int stop[2];
        pthread_t thread;
        int mode;     /* __atomic */
        int requests; /* __atomic: requests read */
} fake_t;

static void fake_reply(int fd, const char *status, const char *body)
{
        char buf[1024];
        int n = snprintf(buf, sizeof(buf),
                         "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                         "Connection: close\r\n\r\n%s",
                         status, strlen(body), body);
        if (write(fd, buf, (size_t)n) < 0)
                return;
}

static void fake_serve(fake_t *f, int fd)
{
        char buf[65536];
        size_t got = 0;
        /* Read headers and a Content-Length body. */
        for (;;) {
                struct pollfd p[2] = {{fd, POLLIN, 0}, {f->stop[0], POLLIN, 0}};
                if (poll(p, 2, 5000) <= 0 || p[1].revents)
                        return;
                ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);
                if (n <= 0)
                        return;
                got += (size_t)n;
                buf[got] = 0;
                char *eoh = strstr(buf, "\r\n\r\n");
                if (!eoh)
                        continue;
                const char *cl = strcasestr(buf, "content-length:");
                size_t want = cl ? (size_t)strtoul(cl + 15, NULL, 10) : 0;
                if (got >= (size_t)(eoh + 4 - buf) + want)
                        break;
        }
        __atomic_add_fetch(&f->requests, 1, __ATOMIC_SEQ_CST);
        switch (__atomic_load_n(&f->mode, __ATOMIC_SEQ_CST)) {
        case FAKE_OK:
                fake_reply(fd, "200 OK", "{\"header\":{\"revision\":\"1\"}}");
                break;
        case FAKE_HANG: {
                struct pollfd p[2] = {{fd, POLLIN, 0}, {f->stop[0], POLLIN, 0}};
                poll(p, 2, 20000); /* until the client gives up */
                break;
        }
        case FAKE_NO_LEADER:
                fake_reply(fd, "503 Service Unavailable",
                           "{\"error\":\"etcdserver: no leader\",\"message\":\"etcdserver: no leader\",\"code\":14}");
                break;
        case FAKE_TIMED_OUT:
                fake_reply(fd, "503 Service Unavailable",
                           "{\"error\":\"etcdserver: request timed out\",\"message\":\"etcdserver: request timed "
                           "out\",\"code\":14}");
                break;
        case FAKE_GARBAGE:
                fake_reply(fd, "200 OK", "{\"result\":{\"events\":[{\"kv\":{\"key\":\"%%%\"}}]}\n");
                break;
        }
}

static void *fake_main(void *arg)
{
        fake_t *f = arg;
        for (;;) {
                struct pollfd p[2] = {{f->lfd, POLLIN, 0}, {f->stop[0], POLLIN, 0}};
                if (poll(p, 2, -1) < 0 && errno != EINTR)
                        break;
                if (p[1].revents)
                        break;
                if (!(p[0].revents & POLLIN))
                        continue;
                int fd = accept(f->lfd, NULL, NULL);
                if (fd < 0)
                        continue;
                fake_serve(f, fd);
                close(fd);
        }
        return NULL;
}

static bool fake_start(fake_t *f)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t sl = sizeof(sa);
        memset(f, 0, sizeof(*f));
        f->lfd = socket(AF_INET, SOCK_STREAM, 0);
        if (f->lfd < 0 || bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(f->lfd, 16) != 0 ||
            getsockname(f->lfd, (struct sockaddr *)&sa, &sl) != 0 || pipe(f->stop) != 0)
                return false;
        f->port = ntohs(sa.sin_port);
        return pthread_create(&f->thread, NULL, fake_main, f) == 0;
}

static void fake_stop(fake_t *f)
{
        if (write(f->stop[1], "x", 1) < 0)
                return;
        pthread_join(f->thread, NULL);
        close(f->lfd);
        close(f->stop[0]);
        close(f->stop[1]);
}

/* Opens "fake,live" with the fake answering the open probe, so that calls
 * start on the fake; then switches the fake to `mode`. */
static ks_kv_t *open_via_fake(fake_t *f, const char *live, fake_mode_t mode)
{
        char eps[256], err[512];
        ks_err_t rc;
        __atomic_store_n(&f->mode, FAKE_OK, __ATOMIC_SEQ_CST);
        snprintf(eps, sizeof(eps), "http://127.0.0.1:%d,%s", f->port, live);
        ks_kv_t *kv = open_eps(eps, 400, err, sizeof(err), &rc);
        if (rc != KS_ERR_NONE)
                ks_test_fail(__FILE__, __LINE__, "open via fake: %s: %s", ks_err_name(rc), err);
        __atomic_store_n(&f->mode, mode, __ATOMIC_SEQ_CST);
        __atomic_store_n(&f->requests, 0, __ATOMIC_SEQ_CST);
        return kv;
}

TEST(kv_etcd_failover_reads_and_writes)
{
        const char *live = ks_test_etcd_endpoints();
        ks_log_level_t saved;
        ks_kv_result_t r;
        fake_t f;
        ks_kv_t *kv, *check;
        int64_t t0;

        REQUIRE(live);
        REQUIRE(ks_test_etcd_wipe());
        REQUIRE(check = ks_test_etcd_open());
        REQUIRE(fake_start(&f));
        quiet(&saved);

        /* A member that accepts and never answers: a write times out and is
         * not sent elsewhere (its outcome is unknown)... */
        if ((kv = open_via_fake(&f, live, FAKE_HANG))) {
                t0 = now_ms();
                CHECK_EQ_INT(ks_kv_put(kv, K("/fo/hang"), "1", 1, 0, NULL), KS_ERR__TIMEOUT);
                CHECK(now_ms() - t0 < 3000);
                CHECK_EQ_INT(__atomic_load_n(&f.requests, __ATOMIC_SEQ_CST), 1);
                CHECK(!exists(check, "/fo/hang"));
                ks_kv_destroy(kv);
        }
        /* ...a read goes on to the next endpoint. */
        if ((kv = open_via_fake(&f, live, FAKE_HANG))) {
                CHECK_EQ_INT(ks_kv_put(check, K("/fo/r"), "x", 1, 0, NULL), KS_ERR_NONE);
                CHECK_EQ_INT(ks_kv_range(kv, K("/fo/r"), NULL, 0, &r), KS_ERR_NONE);
                CHECK_EQ_INT(r.count, 1);
                ks_kv_result_free(&r);
                /* The endpoint that answered is remembered. */
                CHECK_EQ_INT(ks_kv_range(kv, K("/fo/r"), NULL, 0, &r), KS_ERR_NONE);
                ks_kv_result_free(&r);
                CHECK_EQ_INT(__atomic_load_n(&f.requests, __ATOMIC_SEQ_CST), 1);
                ks_kv_destroy(kv);
        }
        /* "no leader" means not applied: the write goes to the next one. */
        if ((kv = open_via_fake(&f, live, FAKE_NO_LEADER))) {
                CHECK_EQ_INT(ks_kv_put(kv, K("/fo/nl"), "1", 1, 0, NULL), KS_ERR_NONE);
                CHECK_EQ_INT(__atomic_load_n(&f.requests, __ATOMIC_SEQ_CST), 1);
                CHECK(exists(check, "/fo/nl"));
                bool ok = false;
                ks_kv_op_t op = {.type = KS_KV_OP_PUT, .key = "/fo/nl2", .key_len = 7, .value = "1", .value_len = 1};
                ks_kv_destroy(kv);
                if ((kv = open_via_fake(&f, live, FAKE_NO_LEADER))) {
                        CHECK_EQ_INT(ks_kv_txn(kv, NULL, 0, &op, 1, NULL, 0, &ok, NULL), KS_ERR_NONE);
                        CHECK(ok && exists(check, "/fo/nl2"));
                        ks_kv_destroy(kv);
                }
        }
        /* "request timed out": outcome unknown, not retried (the next call
         * starts with another endpoint). */
        if ((kv = open_via_fake(&f, live, FAKE_TIMED_OUT))) {
                CHECK_EQ_INT(ks_kv_put(kv, K("/fo/to"), "1", 1, 0, NULL), KS_ERR__TIMEOUT);
                CHECK_EQ_INT(__atomic_load_n(&f.requests, __ATOMIC_SEQ_CST), 1);
                CHECK(!exists(check, "/fo/to"));
                CHECK(!exists(kv, "/fo/to"));
                CHECK_EQ_INT(__atomic_load_n(&f.requests, __ATOMIC_SEQ_CST), 1);
                ks_kv_destroy(kv);
        }
        if ((kv = open_via_fake(&f, live, FAKE_TIMED_OUT))) {
                CHECK_EQ_INT(ks_kv_delete_range(kv, K("/fo/r"), NULL, 0, NULL, NULL), KS_ERR__TIMEOUT);
                CHECK_EQ_INT(__atomic_load_n(&f.requests, __ATOMIC_SEQ_CST), 1);
                CHECK(exists(check, "/fo/r"));
                ks_kv_destroy(kv);
        }
        /* ...but a read is. */
        if ((kv = open_via_fake(&f, live, FAKE_TIMED_OUT))) {
                CHECK_EQ_INT(ks_kv_range(kv, K("/fo/r"), NULL, 0, &r), KS_ERR_NONE);
                CHECK_EQ_INT(r.count, 1);
                ks_kv_result_free(&r);
                ks_kv_destroy(kv);
        }
        /* A malformed answer: KS_ERR__PARSE, no crash; a watch whose stream
         * sends garbage goes on with the next endpoint. */
        if ((kv = open_via_fake(&f, live, FAKE_GARBAGE))) {
                CHECK_EQ_INT(ks_kv_range(kv, K("/fo/r"), NULL, 0, &r), KS_ERR__PARSE);
                CHECK(r.count == 0 && r.kvs == NULL);
                CHECK_EQ_INT(ks_kv_put(kv, K("/fo/g"), "1", 1, 0, NULL), KS_ERR__PARSE);
                ks_kv_watch_t *w = NULL;
                int64_t rev = 0;
                col_t *c = col_new();
                CHECK_EQ_INT(ks_kv_range(check, K("/fo/w"), NULL, 0, &r), KS_ERR_NONE);
                int64_t start = r.revision + 1;
                ks_kv_result_free(&r);
                CHECK_EQ_INT(ks_kv_watch(kv, K("/fo/w"), NULL, 0, start, col_cb, c, &w), KS_ERR_NONE);
                CHECK_EQ_INT(ks_kv_put(check, K("/fo/w"), "1", 1, 0, &rev), KS_ERR_NONE);
                CHECK(col_wait(c, 1, WAIT_MS));
                CHECK(__atomic_load_n(&f.requests, __ATOMIC_SEQ_CST) >= 3); /* range, put, watch */
                pthread_mutex_lock(&c->mu);
                CHECK(c->n == 1 && c->ev[0].rev == rev);
                pthread_mutex_unlock(&c->mu);
                ks_kv_watch_cancel(kv, w);
                ks_kv_destroy(kv);
                col_free(c);
        }
        ks_log_set_level(saved);
        fake_stop(&f);
        ks_kv_destroy(check);
}

/* ============================================================ 4. limits */

TEST(kv_etcd_too_large)
{
        ks_kv_t *kv;
        ks_kv_op_t ops[KS_KV_TXN_MAX_OPS + 1];
        ks_kv_cmp_t cmps[KS_KV_TXN_MAX_OPS + 1];
        char keys[KS_KV_TXN_MAX_OPS + 1][16];
        bool ok = false;
        int64_t r0, rev = 0;
        ks_kv_result_t r;

        REQUIRE(ks_test_etcd_wipe());
        REQUIRE(kv = ks_test_etcd_open());
        for (int i = 0; i <= KS_KV_TXN_MAX_OPS; i++) {
                snprintf(keys[i], sizeof(keys[i]), "/tl/%03d", i);
                ops[i] = (ks_kv_op_t){
                    .type = KS_KV_OP_PUT, .key = keys[i], .key_len = strlen(keys[i]), .value = "v", .value_len = 1};
                cmps[i] = (ks_kv_cmp_t){.key = keys[i],
                                        .key_len = strlen(keys[i]),
                                        .target = KS_KV_CMP_VERSION,
                                        .op = KS_KV_EQUAL,
                                        .number = 0};
        }
        REQUIRE_EQ_INT(ks_kv_range(kv, K("/tl/"), NULL, 0, &r), KS_ERR_NONE);
        r0 = r.revision;
        ks_kv_result_free(&r);

        /* 129 ops, compares, or failure ops: refused, nothing sent. */
        CHECK_EQ_INT(ks_kv_txn(kv, NULL, 0, ops, KS_KV_TXN_MAX_OPS + 1, NULL, 0, &ok, &rev), KS_ERR__TOO_LARGE);
        CHECK_EQ_INT(ks_kv_txn(kv, cmps, KS_KV_TXN_MAX_OPS + 1, NULL, 0, NULL, 0, &ok, &rev), KS_ERR__TOO_LARGE);
        CHECK_EQ_INT(ks_kv_txn(kv, NULL, 0, NULL, 0, ops, KS_KV_TXN_MAX_OPS + 1, &ok, &rev), KS_ERR__TOO_LARGE);
        /* As the other backends: the count is checked first. */
        ops[5].key_len = 0;
        CHECK_EQ_INT(ks_kv_txn(kv, NULL, 0, ops, KS_KV_TXN_MAX_OPS + 1, NULL, 0, &ok, &rev), KS_ERR__TOO_LARGE);
        CHECK_EQ_INT(ks_kv_txn(kv, NULL, 0, ops, KS_KV_TXN_MAX_OPS, NULL, 0, &ok, &rev), KS_ERR__INVALID_ARG);
        ops[5].key_len = strlen(keys[5]);
        /* 128 of each: fine, one revision. */
        CHECK_EQ_INT(ks_kv_txn(kv, cmps, KS_KV_TXN_MAX_OPS, ops, KS_KV_TXN_MAX_OPS, NULL, 0, &ok, &rev), KS_ERR_NONE);
        CHECK(ok);
        CHECK_EQ_INT(rev, r0 + 1);

        /* Bytes: one value over the limit, two that add up over it. */
        size_t big = KS_KV_ETCD_MAX_REQUEST_BYTES;
        char *v = malloc(big);
        REQUIRE(v);
        memset(v, 'x', big);
        CHECK_EQ_INT(ks_kv_put(kv, K("/tl/big"), v, big, 0, NULL), KS_ERR__TOO_LARGE);
        ks_kv_op_t two[2] = {
            {.type = KS_KV_OP_PUT, .key = "/tl/b1", .key_len = 6, .value = v, .value_len = big / 2},
            {.type = KS_KV_OP_PUT, .key = "/tl/b2", .key_len = 6, .value = v, .value_len = big / 2},
        };
        CHECK_EQ_INT(ks_kv_txn(kv, NULL, 0, two, 2, NULL, 0, &ok, NULL), KS_ERR__TOO_LARGE);
        CHECK(!exists(kv, "/tl/big") && !exists(kv, "/tl/b1"));
        /* 1 MiB goes through (base64 makes it 1.33 MiB of JSON). */
        CHECK_EQ_INT(ks_kv_put(kv, K("/tl/mib"), v, 1024 * 1024, 0, &rev), KS_ERR_NONE);
        CHECK_EQ_INT(rev, r0 + 2);
        REQUIRE_EQ_INT(ks_kv_range(kv, K("/tl/mib"), NULL, 0, &r), KS_ERR_NONE);
        REQUIRE_EQ_INT(r.count, 1);
        CHECK_EQ_INT(r.kvs[0].value_len, 1024 * 1024);
        CHECK(memcmp(r.kvs[0].value, v, 1024 * 1024) == 0);
        ks_kv_result_free(&r);
        free(v);
        ks_kv_destroy(kv);
}

/* etcd's own clock: a lease that is not kept alive expires, its keys are
 * deleted in one revision (seen by a watch). */
TEST(kv_etcd_lease_expiry)
{
        ks_kv_t *kv;
        ks_kv_watch_t *w = NULL;
        int64_t lease = 0, ttl = 0;

        REQUIRE(ks_test_etcd_wipe());
        REQUIRE(kv = ks_test_etcd_open());
        col_t *c = col_new();
        CHECK_EQ_INT(ks_kv_lease_grant(kv, 1, &lease), KS_ERR_NONE); /* etcd raises it to its minimum */
        CHECK_EQ_INT(ks_kv_put(kv, K("/le/a"), "1", 1, lease, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(ks_kv_put(kv, K("/le/b"), "1", 1, lease, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(ks_kv_watch(kv, K("/le/"), "/le0", 4, 0, col_cb, c, &w), KS_ERR_NONE);
        CHECK_EQ_INT(ks_kv_lease_keepalive(kv, lease, &ttl), KS_ERR_NONE);
        CHECK(ttl >= 1);
        CHECK(col_wait(c, 2, 10000));
        pthread_mutex_lock(&c->mu);
        CHECK_EQ_INT(c->n, 2);
        CHECK_EQ_INT(c->calls, 1);
        CHECK(c->ev[0].type == KS_KV_EV_DELETE && c->ev[1].type == KS_KV_EV_DELETE);
        CHECK_EQ_INT(c->ev[0].rev, c->ev[1].rev);
        pthread_mutex_unlock(&c->mu);
        CHECK_EQ_INT(ks_kv_lease_keepalive(kv, lease, &ttl), KS_ERR__LEASE_LOST);
        CHECK_EQ_INT(ks_kv_put(kv, K("/le/c"), "1", 1, lease, NULL), KS_ERR__LEASE_LOST);
        CHECK_EQ_INT(ks_kv_lease_revoke(kv, lease), KS_ERR__LEASE_LOST);
        ks_log_level_t saved;
        quiet(&saved);
        CHECK_EQ_INT(ks_kv_lease_grant(kv, 10000000000LL, &lease), KS_ERR__INVALID_ARG); /* over etcd's max */
        ks_log_set_level(saved);
        ks_kv_watch_cancel(kv, w);
        ks_kv_destroy(kv);
        col_free(c);
}

/* Cancel returns at once, idle or not; destroy cancels what is left. */
TEST(kv_etcd_watch_cancel_prompt)
{
        ks_kv_t *kv;
        ks_kv_watch_t *w[4] = {0};

        REQUIRE(ks_test_etcd_wipe());
        REQUIRE(kv = ks_test_etcd_open());
        col_t *c = col_new();
        for (int i = 0; i < 4; i++)
                CHECK_EQ_INT(ks_kv_watch(kv, K("/wc/"), "/wc0", 4, 0, col_cb, c, &w[i]), KS_ERR_NONE);
        CHECK_EQ_INT(ks_kv_put(kv, K("/wc/a"), "1", 1, 0, NULL), KS_ERR_NONE);
        CHECK(col_wait(c, 4, WAIT_MS));
        usleep(100 * 1000); /* the threads now sit in poll */
        for (int i = 0; i < 2; i++) {
                int64_t t0 = now_ms();
                ks_kv_watch_cancel(kv, w[i]);
                CHECK(now_ms() - t0 < 500);
        }
        /* Invalid arguments. */
        ks_kv_watch_t *x = NULL;
        CHECK_EQ_INT(ks_kv_watch(kv, "", 0, NULL, 0, 0, col_cb, c, &x), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_kv_watch(kv, K("/wc/"), NULL, 0, -1, col_cb, c, &x), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_kv_watch(kv, K("/wc/"), NULL, 0, 0, NULL, c, &x), KS_ERR__INVALID_ARG);
        int64_t t0 = now_ms();
        ks_kv_destroy(kv); /* w[2], w[3] still open */
        CHECK(now_ms() - t0 < 1000);
        col_free(c);
}

/* ============================================================ 5. private etcds */

/* The member dies (kill -9) and comes back on the same port and data: the
 * watch delivers every change, once, in order, including those made while
 * it was reconnecting. */
TEST(kv_etcd_watch_resume_after_restart)
{
        ks_test_etcd_t m;
        ks_log_level_t saved;
        ks_kv_watch_t *w = NULL;
        int64_t revs[8];
        char err[512];
        ks_err_t rc;
        int nrev = 0;

        REQUIRE(ks_test_etcd_start(&m, 1));
        quiet(&saved);
        ks_kv_t *kv = open_eps(m.endpoint, 1000, err, sizeof(err), &rc);
        if (!kv) {
                ks_test_fail(__FILE__, __LINE__, "open: %s", err);
                goto out;
        }
        col_t *c = col_new();
        CHECK_EQ_INT(ks_kv_watch(kv, K("/rs/"), "/rs0", 4, 0, col_cb, c, &w), KS_ERR_NONE);
        for (int i = 0; i < 3; i++)
                CHECK_EQ_INT(ks_kv_put(kv, K("/rs/before"), "1", 1, 0, &revs[nrev++]), KS_ERR_NONE);
        CHECK(col_wait(c, 3, WAIT_MS));

        ks_test_etcd_kill(&m);
        int64_t t0 = now_ms();
        CHECK_EQ_INT(ks_kv_put(kv, K("/rs/down"), "1", 1, 0, NULL), KS_ERR__UNAVAILABLE);
        CHECK(now_ms() - t0 < 1000);
        usleep(300 * 1000); /* the watch is now retrying */
        REQUIRE(ks_test_etcd_restart(&m, true));
        for (int i = 0; i < 3; i++)
                CHECK_EQ_INT(ks_kv_put(kv, K("/rs/after"), "2", 1, 0, &revs[nrev++]), KS_ERR_NONE);
        CHECK(col_wait(c, 6, WAIT_MS));
        CHECK_EQ_INT(ks_kv_put(kv, K("/rs/last"), "3", 1, 0, &revs[nrev++]), KS_ERR_NONE);
        CHECK(col_wait(c, 7, WAIT_MS));
        usleep(100 * 1000);
        pthread_mutex_lock(&c->mu);
        CHECK_EQ_INT(c->n, 7);
        CHECK(!c->out_of_order && !c->mixed_rev);
        for (size_t i = 0; i < c->n && i < 7; i++) {
                CHECK_EQ_INT(c->ev[i].rev, revs[i]);
                CHECK(c->ev[i].type == KS_KV_EV_PUT);
        }
        pthread_mutex_unlock(&c->mu);

        /* Cancel while the member is gone (thread in its backoff). */
        ks_test_etcd_kill(&m);
        usleep(200 * 1000);
        t0 = now_ms();
        ks_kv_watch_cancel(kv, w);
        CHECK(now_ms() - t0 < 500);
        ks_kv_destroy(kv);
        col_free(c);
out:
        ks_log_set_level(saved);
        ks_test_etcd_stop(&m, 1);
}

/* Three members; the one in use is killed: reads and writes go on through
 * the others and the watch continues without gap or duplicate. */
TEST(kv_etcd_cluster_member_killed)
{
        ks_test_etcd_t ms[3];
        ks_log_level_t saved;
        ks_kv_watch_t *w = NULL;
        char eps[256], err[512];
        int64_t revs[64];
        int nrev = 0;
        ks_err_t rc;

        REQUIRE(ks_test_etcd_start(ms, 3));
        quiet(&saved);
        ks_kv_t *kv = open_eps(ks_test_etcd_join(ms, 3, eps, sizeof(eps)), 2000, err, sizeof(err), &rc);
        if (!kv) {
                ks_test_fail(__FILE__, __LINE__, "open: %s", err);
                goto out;
        }
        col_t *c = col_new();
        CHECK_EQ_INT(ks_kv_watch(kv, K("/cl/"), "/cl0", 4, 0, col_cb, c, &w), KS_ERR_NONE);
        for (int i = 0; i < 5; i++)
                CHECK_EQ_INT(ks_kv_put(kv, K("/cl/a"), "1", 1, 0, &revs[nrev++]), KS_ERR_NONE);
        CHECK(col_wait(c, 5, WAIT_MS));

        ks_test_etcd_kill(&ms[0]); /* the first endpoint: the one in use */
        int64_t deadline = now_ms() + WAIT_MS;
        int done = 0, unknown = 0;
        while (done < 10 && now_ms() < deadline) {
                int64_t rev = 0;
                ks_err_t e = ks_kv_put(kv, K("/cl/b"), "2", 1, 0, &rev);
                if (e == KS_ERR_NONE) {
                        revs[nrev++] = rev;
                        done++;
                } else {
                        /* An election in progress: unavailable or unknown outcome. */
                        CHECK(e == KS_ERR__UNAVAILABLE || e == KS_ERR__TIMEOUT);
                        unknown++;
                        usleep(50 * 1000);
                }
        }
        CHECK_EQ_INT(done, 10);
        ks_kv_result_t r;
        CHECK_EQ_INT(ks_kv_range(kv, K("/cl/b"), NULL, 0, &r), KS_ERR_NONE);
        CHECK_EQ_INT(r.count, 1);
        ks_kv_result_free(&r);
        /* Every acknowledged put is seen, in order, once; a put whose outcome
         * was unknown may show up too. */
        CHECK(col_wait(c, (size_t)nrev, WAIT_MS));
        usleep(100 * 1000);
        pthread_mutex_lock(&c->mu);
        CHECK(!c->out_of_order && !c->mixed_rev);
        CHECK(c->n >= (size_t)nrev && c->n <= (size_t)(nrev + unknown));
        size_t j = 0;
        for (size_t i = 0; i < c->n && j < (size_t)nrev; i++)
                if (c->ev[i].rev == revs[j])
                        j++;
        CHECK_EQ_INT(j, nrev);
        pthread_mutex_unlock(&c->mu);
        ks_kv_watch_cancel(kv, w);
        ks_kv_destroy(kv);
        col_free(c);
out:
        ks_log_set_level(saved);
        ks_test_etcd_stop(ms, 3);
}

/* Authentication, on its own etcd: required, refused, accepted, and
 * renewed after the member restarts (its tokens die with it). */
TEST(kv_etcd_auth)
{
        ks_test_etcd_t m;
        ks_log_level_t saved;
        ks_kv_watch_t *w = NULL;
        char err[512];
        ks_kv_t *kv = NULL;
        ks_err_t rc;

        REQUIRE(ks_test_etcd_start(&m, 1));
        quiet(&saved);
        static const char *const add[] = {"user", "add", "root:pw", NULL};
        static const char *const enable[] = {"auth", "enable", NULL};
        if (ks_test_etcdctl(&m, add) != 0 || ks_test_etcdctl(&m, enable) != 0) {
                ks_test_fail(__FILE__, __LINE__, "etcdctl could not enable authentication");
                goto out;
        }

        /* No credentials: refused, and the message says why. */
        kv = open_eps(m.endpoint, 0, err, sizeof(err), &rc);
        CHECK_EQ_INT(rc, KS_ERR__INVALID_ARG);
        CHECK(kv == NULL);
        CHECK(strstr(err, "authentication enabled") != NULL);
        /* Wrong password. */
        ks_kv_etcd_config_t cfg = {.endpoints = m.endpoint, .username = "root", .password = "nope"};
        CHECK_EQ_INT(ks_kv_etcd_open(&cfg, err, sizeof(err), &kv), KS_ERR__INVALID_ARG);
        CHECK(strstr(err, "rejected user \"root\"") != NULL);
        /* Right password. */
        cfg.password = "pw";
        REQUIRE_EQ_INT(ks_kv_etcd_open(&cfg, err, sizeof(err), &kv), KS_ERR_NONE);
        col_t *c = col_new();
        int64_t lease = 0;
        CHECK_EQ_INT(ks_kv_watch(kv, K("/au/"), "/au0", 4, 0, col_cb, c, &w), KS_ERR_NONE);
        CHECK_EQ_INT(ks_kv_put(kv, K("/au/a"), "1", 1, 0, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(ks_kv_lease_grant(kv, 30, &lease), KS_ERR_NONE);
        CHECK(exists(kv, "/au/a"));
        CHECK(col_wait(c, 1, WAIT_MS));

        /* Restart: the token is gone; the next calls authenticate again. */
        ks_test_etcd_kill(&m);
        REQUIRE(ks_test_etcd_restart(&m, true));
        CHECK_EQ_INT(ks_kv_put(kv, K("/au/b"), "2", 1, 0, NULL), KS_ERR_NONE);
        CHECK(exists(kv, "/au/b"));
        CHECK_EQ_INT(ks_kv_put(kv, K("/au/c"), "3", 1, 0, NULL), KS_ERR_NONE);
        CHECK(col_wait(c, 3, WAIT_MS));
        pthread_mutex_lock(&c->mu);
        CHECK_EQ_INT(c->n, 3);
        CHECK(!c->out_of_order);
        pthread_mutex_unlock(&c->mu);
        ks_kv_watch_cancel(kv, w);
        ks_kv_destroy(kv);
        col_free(c);
out:
        ks_log_set_level(saved);
        ks_test_etcd_stop(&m, 1);
}
