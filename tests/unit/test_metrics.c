/*
 * test_metrics.c — the metrics registry (rendering, bucket math, concurrent
 * updates, registration rules) and the HTTP endpoint (/metrics, /healthz,
 * /readyz, errors, port reuse after stop).
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "http/http.h"
#include "meta/kv.h"
#include "metrics/metrics.h"
#include "storage/objstore.h"
#include "test.h"
#include "util/log.h"

static const char *const colors[] = { "red", "green", "blue" };

static size_t pair_format(int s, char *buf, size_t len)
{
        if (s == 1)
                return 0; /* left out */
        int n = snprintf(buf, len, "a=\"%d\",b=\"x\"", s);
        return n > 0 && (size_t)n < len ? (size_t)n : 0;
}

TEST(metrics_render_exact_text)
{
        ks_metrics_t *r = ks_metrics_new();
        REQUIRE(r != NULL);
        ks_metric_t *c = ks_metrics_counter(r, "t_things_total", "Things done.", NULL);
        ks_metric_labels_t lab = { .nseries = 3, .name = "color", .values = colors };
        ks_metric_t *g = ks_metrics_gauge(r, "t_level", "Level\nwith \\ newline.", &lab);
        ks_metric_t *d = ks_metrics_gauge_double(r, "t_ratio", "A ratio.", NULL);
        ks_metric_labels_t fl = { .nseries = 3, .format = pair_format, .skip_zero = true };
        ks_metric_t *f = ks_metrics_counter(r, "t_pairs_total", "Pairs.", &fl);
        const double bounds[] = { 0.1, 1, 10 };
        ks_metric_t *h = ks_metrics_histogram(r, "t_wait_seconds", "Wait.", NULL, bounds, 3);
        REQUIRE(c && g && d && f && h);

        ks_metric_add(c, 0, 41);
        ks_metric_inc(c, 0);
        ks_metric_set(g, 0, 7);
        ks_metric_add(g, 2, -3);
        ks_metric_set_double(d, 0, 0.25);
        ks_metric_inc(f, 2); /* series 0 stays zero (skipped), 1 is left out */
        ks_metric_inc(f, 1);
        ks_metric_observe(h, 0, 0.05);
        ks_metric_observe(h, 0, 1);   /* le is inclusive */
        ks_metric_observe(h, 0, 100); /* +Inf only */

        size_t len = 0;
        char *text = ks_metrics_render(r, &len);
        REQUIRE(text != NULL);
        const char *want = "# HELP t_things_total Things done.\n"
                           "# TYPE t_things_total counter\n"
                           "t_things_total 42\n"
                           "# HELP t_level Level\\nwith \\\\ newline.\n"
                           "# TYPE t_level gauge\n"
                           "t_level{color=\"red\"} 7\n"
                           "t_level{color=\"green\"} 0\n"
                           "t_level{color=\"blue\"} -3\n"
                           "# HELP t_ratio A ratio.\n"
                           "# TYPE t_ratio gauge\n"
                           "t_ratio 0.25\n"
                           "# HELP t_pairs_total Pairs.\n"
                           "# TYPE t_pairs_total counter\n"
                           "t_pairs_total{a=\"2\",b=\"x\"} 1\n"
                           "# HELP t_wait_seconds Wait.\n"
                           "# TYPE t_wait_seconds histogram\n"
                           "t_wait_seconds_bucket{le=\"0.1\"} 1\n"
                           "t_wait_seconds_bucket{le=\"1\"} 2\n"
                           "t_wait_seconds_bucket{le=\"10\"} 2\n"
                           "t_wait_seconds_bucket{le=\"+Inf\"} 3\n"
                           "t_wait_seconds_sum 101.05\n"
                           "t_wait_seconds_count 3\n";
        CHECK_EQ_STR(text, want);
        CHECK_EQ_INT(len, strlen(want));
        free(text);
        ks_metrics_destroy(r);
}

TEST(metrics_histogram_labels_and_default_buckets)
{
        ks_metrics_t *r = ks_metrics_new();
        REQUIRE(r != NULL);
        ks_metric_labels_t lab = { .nseries = 3, .name = "color", .values = colors, .skip_zero = true };
        ks_metric_t *h = ks_metrics_histogram(r, "t_latency_seconds", "Latency.", &lab, NULL, 0);
        REQUIRE(h != NULL);
        CHECK_EQ_INT(h->nbounds, ks_metrics_latency_nbounds);
        CHECK(h->bounds[0] == 0.0005 && h->bounds[h->nbounds - 1] == 30);
        ks_metric_observe(h, 1, 0.003);
        char *text = ks_metrics_render(r, NULL);
        REQUIRE(text != NULL);
        CHECK(strstr(text, "t_latency_seconds_bucket{color=\"green\",le=\"0.0005\"} 0\n") != NULL);
        CHECK(strstr(text, "t_latency_seconds_bucket{color=\"green\",le=\"0.0025\"} 0\n") != NULL);
        CHECK(strstr(text, "t_latency_seconds_bucket{color=\"green\",le=\"0.005\"} 1\n") != NULL);
        CHECK(strstr(text, "t_latency_seconds_bucket{color=\"green\",le=\"30\"} 1\n") != NULL);
        CHECK(strstr(text, "t_latency_seconds_bucket{color=\"green\",le=\"+Inf\"} 1\n") != NULL);
        CHECK(strstr(text, "t_latency_seconds_sum{color=\"green\"} 0.003\n") != NULL);
        CHECK(strstr(text, "t_latency_seconds_count{color=\"green\"} 1\n") != NULL);
        CHECK(strstr(text, "color=\"red\"") == NULL); /* skip_zero */
        CHECK(strstr(text, "color=\"blue\"") == NULL);
        free(text);
        ks_metrics_destroy(r);
}

TEST(metrics_bucket_math)
{
        const double b[] = { 0.001, 0.01, 0.1, 1 };
        CHECK_EQ_INT(ks_metrics_bucket_index(b, 4, -5), 0);
        CHECK_EQ_INT(ks_metrics_bucket_index(b, 4, 0), 0);
        CHECK_EQ_INT(ks_metrics_bucket_index(b, 4, 0.001), 0); /* inclusive upper bound */
        CHECK_EQ_INT(ks_metrics_bucket_index(b, 4, 0.0010001), 1);
        CHECK_EQ_INT(ks_metrics_bucket_index(b, 4, 0.01), 1);
        CHECK_EQ_INT(ks_metrics_bucket_index(b, 4, 0.05), 2);
        CHECK_EQ_INT(ks_metrics_bucket_index(b, 4, 1), 3);
        CHECK_EQ_INT(ks_metrics_bucket_index(b, 4, 1.5), 4); /* +Inf */
        CHECK_EQ_INT(ks_metrics_bucket_index(b, 4, INFINITY), 4);
        CHECK_EQ_INT(ks_metrics_bucket_index(b, 1, 0.5), 1);

        ks_metrics_t *r = ks_metrics_new();
        REQUIRE(r != NULL);
        ks_metric_t *h = ks_metrics_histogram(r, "t_h_seconds", "H.", NULL, b, 4);
        REQUIRE(h != NULL);
        /* 1000 observations spread evenly over 0.000 .. 0.999 s. */
        for (int i = 0; i < 1000; i++)
                ks_metric_observe(h, 0, i / 1000.0);
        ks_metric_observe(h, 0, NAN); /* ignored */
        CHECK_EQ_INT(ks_metric_hist_count(h, 0), 1000);
        CHECK(fabs(ks_metric_hist_sum(h, 0) - 499.5) < 1e-9);
        char *text = ks_metrics_render(r, NULL);
        REQUIRE(text != NULL);
        CHECK(strstr(text, "t_h_seconds_bucket{le=\"0.001\"} 2\n") != NULL);  /* 0, 0.001 */
        CHECK(strstr(text, "t_h_seconds_bucket{le=\"0.01\"} 11\n") != NULL);  /* 0 .. 0.010 */
        CHECK(strstr(text, "t_h_seconds_bucket{le=\"0.1\"} 101\n") != NULL);  /* 0 .. 0.100 */
        CHECK(strstr(text, "t_h_seconds_bucket{le=\"1\"} 1000\n") != NULL);
        CHECK(strstr(text, "t_h_seconds_bucket{le=\"+Inf\"} 1000\n") != NULL);
        CHECK(strstr(text, "t_h_seconds_count 1000\n") != NULL);
        CHECK(strstr(text, "t_h_seconds_sum 499.5\n") != NULL);
        free(text);
        ks_metrics_destroy(r);
}

TEST(metrics_special_values_and_escaping)
{
        ks_metrics_t *r = ks_metrics_new();
        REQUIRE(r != NULL);
        static const char *const odd[] = { "a\"b\\c\nd" };
        ks_metric_labels_t lab = { .nseries = 1, .name = "v", .values = odd };
        ks_metric_t *g = ks_metrics_gauge_double(r, "t_odd", "Odd.", &lab);
        REQUIRE(g != NULL);
        ks_metric_set_double(g, 0, INFINITY);
        char *text = ks_metrics_render(r, NULL);
        REQUIRE(text != NULL);
        CHECK(strstr(text, "t_odd{v=\"a\\\"b\\\\c\\nd\"} +Inf\n") != NULL);
        free(text);
        ks_metric_set_double(g, 0, NAN);
        ks_metric_add_double(g, 0, 1); /* NaN stays NaN */
        text = ks_metrics_render(r, NULL);
        REQUIRE(text != NULL);
        CHECK(strstr(text, "} NaN\n") != NULL);
        free(text);
        ks_metric_set_double(g, 0, 0.1);
        ks_metric_add_double(g, 0, 0.2);
        text = ks_metrics_render(r, NULL);
        REQUIRE(text != NULL);
        CHECK(strstr(text, "} 0.30000000000000004\n") != NULL); /* round-trips exactly */
        free(text);

        char esc[8];
        CHECK_EQ_INT(ks_metrics_escape_label("\"\"\"\"", esc, sizeof(esc)), 6); /* truncated before a pair */
        CHECK_EQ_STR(esc, "\\\"\\\"\\\"");
        ks_metrics_destroy(r);
}

TEST(metrics_registration_rules)
{
        ks_metrics_t *r = ks_metrics_new();
        REQUIRE(r != NULL);
        ks_log_level_t saved = ks_log_level;
        ks_log_set_level((ks_log_level_t)(KS_LOG_ERROR + 1)); /* expected errors: quiet */
        ks_metric_t *a = ks_metrics_counter(r, "t_a_total", "A.", NULL);
        REQUIRE(a != NULL);
        CHECK(ks_metrics_counter(r, "t_a_total", "A again.", NULL) == a); /* get or create */
        CHECK(ks_metrics_gauge(r, "t_a_total", "A.", NULL) == NULL);      /* other type */
        ks_metric_labels_t lab = { .nseries = 3, .name = "color", .values = colors };
        CHECK(ks_metrics_counter(r, "t_a_total", "A.", &lab) == NULL); /* other shape */
        CHECK(ks_metrics_counter(r, "9bad", "x", NULL) == NULL);
        CHECK(ks_metrics_counter(r, "bad-name", "x", NULL) == NULL);
        CHECK(ks_metrics_counter(r, "", "x", NULL) == NULL);
        ks_metric_labels_t nolab = { .nseries = 2 };
        CHECK(ks_metrics_counter(r, "t_b_total", "x", &nolab) == NULL); /* several series need labels */
        const double desc[] = { 1, 0.5 };
        CHECK(ks_metrics_histogram(r, "t_c_seconds", "x", NULL, desc, 2) == NULL);
        const double nanb[] = { NAN };
        CHECK(ks_metrics_histogram(r, "t_c_seconds", "x", NULL, nanb, 1) == NULL);
        ks_metric_labels_t le = { .nseries = 3, .name = "le", .values = colors };
        CHECK(ks_metrics_histogram(r, "t_c_seconds", "x", &le, NULL, 0) == NULL);
        CHECK(ks_metrics_counter(NULL, "t_d_total", "x", NULL) == NULL);
        ks_log_set_level(saved);

        /* Updates on NULL families, wrong types and out-of-range series are
         * ignored. */
        ks_metric_inc(NULL, 0);
        ks_metric_observe(NULL, 0, 1);
        ks_metric_set_double(NULL, 0, 1);
        ks_metric_inc(a, 1);
        ks_metric_inc(a, -1);
        ks_metric_observe(a, 0, 1);
        ks_metric_set(a, 0, 99); /* counters cannot be set */
        CHECK_EQ_INT(ks_metric_value(a, 0), 0);
        ks_metrics_destroy(r);
}

typedef struct collect_ctx {
        int calls;
} collect_ctx_t;

static void collect_three(void *ctx, double *values, int n)
{
        collect_ctx_t *c = ctx;
        c->calls++;
        for (int i = 0; i < n; i++)
                values[i] = i * 1.5;
}

TEST(metrics_gauge_fn_and_detach)
{
        ks_metrics_t *r = ks_metrics_new();
        REQUIRE(r != NULL);
        collect_ctx_t cc = { 0 };
        ks_metric_labels_t lab = { .nseries = 3, .name = "color", .values = colors };
        ks_metric_t *g = ks_metrics_gauge_fn(r, "t_fn", "Computed.", &lab, collect_three, &cc);
        REQUIRE(g != NULL);
        ks_log_level_t saved = ks_log_level;
        ks_log_set_level((ks_log_level_t)(KS_LOG_ERROR + 1));
        CHECK(ks_metrics_gauge_double(r, "t_fn", "x", &lab) == NULL); /* a stored gauge cannot take it over */
        ks_log_set_level(saved);
        char *text = ks_metrics_render(r, NULL);
        REQUIRE(text != NULL);
        CHECK_EQ_INT(cc.calls, 1);
        CHECK(strstr(text, "t_fn{color=\"green\"} 1.5\n") != NULL);
        CHECK(strstr(text, "t_fn{color=\"blue\"} 3\n") != NULL);
        free(text);
        ks_metric_detach(r, g);
        text = ks_metrics_render(r, NULL);
        REQUIRE(text != NULL);
        CHECK_EQ_INT(cc.calls, 1);
        CHECK(strstr(text, "t_fn{color=\"blue\"} 0\n") != NULL);
        free(text);
        /* Re-registering attaches a new callback to the same family. */
        CHECK(ks_metrics_gauge_fn(r, "t_fn", "Computed.", &lab, collect_three, &cc) == g);
        free(ks_metrics_render(r, NULL));
        CHECK_EQ_INT(cc.calls, 2);
        ks_metrics_destroy(r);
}

TEST(metrics_gauge_fn_detach_ctx_leaves_a_newer_owner)
{
        ks_metrics_t *r = ks_metrics_new();
        REQUIRE(r != NULL);
        collect_ctx_t a = { 0 }, b = { 0 };
        ks_metric_labels_t lab = { .nseries = 3, .name = "color", .values = colors };
        ks_metric_t *g = ks_metrics_gauge_fn(r, "t_fn", "Computed.", &lab, collect_three, &a);
        REQUIRE(g != NULL);
        CHECK(ks_metrics_gauge_fn(r, "t_fn", "Computed.", &lab, collect_three, &b) == g);
        ks_metric_detach_ctx(r, g, &a); /* the older owner closes: b stays */
        free(ks_metrics_render(r, NULL));
        CHECK_EQ_INT(a.calls, 0);
        CHECK_EQ_INT(b.calls, 1);
        ks_metric_detach_ctx(r, g, &b);
        free(ks_metrics_render(r, NULL));
        CHECK_EQ_INT(b.calls, 1);
        ks_metrics_destroy(r);
}

static void emit_two(void *ctx, ks_metric_emitter_t *e)
{
        collect_ctx_t *cc = ctx;
        cc->calls++;
        char esc[64], labels[128];
        ks_metrics_escape_label("a\"b", esc, sizeof(esc));
        snprintf(labels, sizeof(labels), "group=\"%s\",partition=\"0\"", esc);
        ks_metric_emit(e, labels, 42);
        ks_metric_emit(e, "group=\"g\",partition=\"1\"", 0.5);
}

TEST(metrics_gauge_series_built_at_scrape)
{
        ks_metrics_t *r = ks_metrics_new();
        REQUIRE(r != NULL);
        collect_ctx_t cc = { 0 };
        ks_metric_t *g = ks_metrics_gauge_series(r, "t_lag", "Lag.", emit_two, &cc);
        REQUIRE(g != NULL);
        char *text = ks_metrics_render(r, NULL);
        REQUIRE(text != NULL);
        CHECK_EQ_INT(cc.calls, 1);
        CHECK(strstr(text, "# TYPE t_lag gauge\n") != NULL);
        CHECK(strstr(text, "t_lag{group=\"a\\\"b\",partition=\"0\"} 42\n") != NULL);
        CHECK(strstr(text, "t_lag{group=\"g\",partition=\"1\"} 0.5\n") != NULL);
        free(text);
        /* Detached: the family stays, without samples. */
        ks_metric_detach_ctx(r, g, &cc);
        text = ks_metrics_render(r, NULL);
        REQUIRE(text != NULL);
        CHECK_EQ_INT(cc.calls, 1);
        CHECK(strstr(text, "# TYPE t_lag gauge\n") != NULL);
        CHECK(strstr(text, "t_lag{") == NULL);
        free(text);
        CHECK(ks_metrics_gauge_series(r, "t_lag", "Lag.", emit_two, &cc) == g);
        free(ks_metrics_render(r, NULL));
        CHECK_EQ_INT(cc.calls, 2);
        ks_log_level_t saved = ks_log_level;
        ks_log_set_level((ks_log_level_t)(KS_LOG_ERROR + 1));
        CHECK(ks_metrics_gauge(r, "t_lag", "x", NULL) == NULL);
        ks_log_set_level(saved);
        ks_metrics_destroy(r);
}

/* --- store requests ------------------------------------------------------- */

#define OBJ(op, ok) ((op) * 2 + ((ok) ? 0 : 1))

TEST(metrics_object_store_requests_counted_at_the_entry_points)
{
        REQUIRE(ks_metrics_std_init() == 0);
        ks_metric_t *c = ks_std_metrics.objstore_requests, *h = ks_std_metrics.objstore_duration;
        REQUIRE(c && h);
        int64_t put_ok = ks_metric_value(c, OBJ(KS_METRICS_OBJ_PUT, 1));
        int64_t put_err = ks_metric_value(c, OBJ(KS_METRICS_OBJ_PUT, 0));
        int64_t get_ok = ks_metric_value(c, OBJ(KS_METRICS_OBJ_GET, 1));
        int64_t list_ok = ks_metric_value(c, OBJ(KS_METRICS_OBJ_LIST, 1));
        int64_t del_ok = ks_metric_value(c, OBJ(KS_METRICS_OBJ_DELETE, 1));
        int64_t check_ok = ks_metric_value(c, OBJ(KS_METRICS_OBJ_CHECK, 1));
        int64_t put_n = ks_metric_hist_count(h, KS_METRICS_OBJ_PUT);
        ks_objstore_t *s = NULL;
        REQUIRE(ks_objstore_memory_new(&s) == 0);
        struct iovec iov = { .iov_base = "abc", .iov_len = 3 };
        CHECK_EQ_INT(ks_objstore_put(s, "t/a", &iov, 1), 0);
        CHECK_EQ_INT(ks_objstore_put(s, "t/b", &iov, 1), 0);
        CHECK(ks_objstore_put(s, "bad//key", &iov, 1) != 0);
        ks_objbuf_t buf = { 0 };
        CHECK_EQ_INT(ks_objstore_get(s, "t/a", 0, -1, &buf), 0);
        ks_objbuf_free(&buf);
        CHECK_EQ_INT(ks_objstore_get(s, "t/none", 0, -1, &buf), KS_ERR__NOT_FOUND); /* an answer, not an error */
        ks_objlist_t l = { 0 };
        CHECK_EQ_INT(ks_objstore_list(s, "t/", &l), 0);
        ks_objlist_free(&l);
        CHECK_EQ_INT(ks_objstore_del(s, "t/a"), 0);
        CHECK_EQ_INT(ks_objstore_check(s, NULL, 0), 0);
        ks_objstore_destroy(s);
        CHECK_EQ_INT(ks_metric_value(c, OBJ(KS_METRICS_OBJ_PUT, 1)) - put_ok, 2);
        CHECK_EQ_INT(ks_metric_value(c, OBJ(KS_METRICS_OBJ_PUT, 0)) - put_err, 1);
        CHECK_EQ_INT(ks_metric_value(c, OBJ(KS_METRICS_OBJ_GET, 1)) - get_ok, 2);
        CHECK_EQ_INT(ks_metric_value(c, OBJ(KS_METRICS_OBJ_LIST, 1)) - list_ok, 1);
        CHECK_EQ_INT(ks_metric_value(c, OBJ(KS_METRICS_OBJ_DELETE, 1)) - del_ok, 1);
        CHECK_EQ_INT(ks_metric_value(c, OBJ(KS_METRICS_OBJ_CHECK, 1)) - check_ok, 1);
        CHECK_EQ_INT(ks_metric_hist_count(h, KS_METRICS_OBJ_PUT) - put_n, 3);
        char *text = ks_metrics_render(ks_metrics_default(), NULL);
        REQUIRE(text != NULL);
        CHECK(strstr(text, "kafscale_object_store_requests_total{op=\"put\",result=\"error\"} ") != NULL);
        CHECK(strstr(text, "kafscale_object_store_request_duration_seconds_count{op=\"check\"} ") != NULL);
        free(text);
}

TEST(metrics_metadata_store_requests_counted_at_the_entry_points)
{
        REQUIRE(ks_metrics_std_init() == 0);
        ks_metric_t *c = ks_std_metrics.metastore_requests, *h = ks_std_metrics.metastore_duration;
        REQUIRE(c && h);
        int64_t before[KS_METRICS_KV_OPS * 2];
        for (int i = 0; i < KS_METRICS_KV_OPS * 2; i++)
                before[i] = ks_metric_value(c, i);
        int64_t txn_n = ks_metric_hist_count(h, KS_METRICS_KV_TXN);
        ks_kv_t *kv = NULL;
        REQUIRE(ks_kv_memory_new(NULL, &kv) == 0);
        CHECK_EQ_INT(ks_kv_put(kv, "k", 1, "v", 1, 0, NULL), 0);
        ks_kv_result_t res = { 0 };
        CHECK_EQ_INT(ks_kv_range(kv, "k", 1, NULL, 0, &res), 0);
        ks_kv_result_free(&res);
        ks_kv_cmp_t cmp = { .key = "k", .key_len = 1, .target = KS_KV_CMP_VERSION, .op = KS_KV_EQUAL, .number = 7 };
        bool ok = true;
        CHECK_EQ_INT(ks_kv_txn(kv, &cmp, 1, NULL, 0, NULL, 0, &ok, NULL), 0); /* compare fails: still "ok" */
        CHECK(!ok);
        int64_t lease = 0;
        CHECK_EQ_INT(ks_kv_lease_grant(kv, 10, &lease), 0);
        CHECK_EQ_INT(ks_kv_lease_keepalive(kv, lease, NULL), 0);
        CHECK_EQ_INT(ks_kv_lease_revoke(kv, lease), 0);
        CHECK_EQ_INT(ks_kv_lease_keepalive(kv, lease, NULL), KS_ERR__LEASE_LOST);
        CHECK_EQ_INT(ks_kv_delete_range(kv, "k", 1, NULL, 0, NULL, NULL), 0);
        ks_kv_destroy(kv);
        const struct {
                int op;
                bool ok;
                int64_t n;
        } want[] = {
                { KS_METRICS_KV_PUT, true, 1 },          { KS_METRICS_KV_RANGE, true, 1 },
                { KS_METRICS_KV_TXN, true, 1 },          { KS_METRICS_KV_LEASE_GRANT, true, 1 },
                { KS_METRICS_KV_LEASE_KEEPALIVE, true, 1 }, { KS_METRICS_KV_LEASE_KEEPALIVE, false, 1 },
                { KS_METRICS_KV_LEASE_REVOKE, true, 1 }, { KS_METRICS_KV_DELETE, true, 1 },
                { KS_METRICS_KV_WATCH, true, 0 },
        };
        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
                int sr = OBJ(want[i].op, want[i].ok);
                CHECK_EQ_INT(ks_metric_value(c, sr) - before[sr], want[i].n);
        }
        CHECK_EQ_INT(ks_metric_hist_count(h, KS_METRICS_KV_TXN) - txn_n, 1);
        char *text = ks_metrics_render(ks_metrics_default(), NULL);
        REQUIRE(text != NULL);
        CHECK(strstr(text, "kafscale_metadata_store_requests_total{op=\"lease_keepalive\",result=\"error\"} ") !=
              NULL);
        CHECK(strstr(text, "kafscale_metadata_store_request_duration_seconds_bucket{op=\"txn\",le=\"+Inf\"} ") !=
              NULL);
        free(text);
}

/* --- concurrency ---------------------------------------------------------- */

#define THREADS 8
#define ITERS   200000

typedef struct hammer {
        ks_metric_t *c, *g, *h, *d;
        int id;
} hammer_t;

static void *hammer_main(void *arg)
{
        hammer_t *hm = arg;
        for (int i = 0; i < ITERS; i++) {
                ks_metric_inc(hm->c, hm->id % 2);
                ks_metric_add(hm->g, 0, (i & 1) ? -1 : 2);
                ks_metric_observe(hm->h, 0, (i % 4) * 0.5); /* 0, 0.5, 1, 1.5 */
                ks_metric_add_double(hm->d, 0, 0.5);
        }
        return NULL;
}

typedef struct scraper {
        ks_metrics_t *r;
        volatile int stop;
        int renders;
} scraper_t;

static void *scraper_main(void *arg)
{
        scraper_t *s = arg;
        while (!__atomic_load_n(&s->stop, __ATOMIC_RELAXED)) {
                char *t = ks_metrics_render(s->r, NULL);
                if (t)
                        s->renders++;
                free(t);
        }
        return NULL;
}

TEST(metrics_concurrent_updates_are_exact)
{
        ks_metrics_t *r = ks_metrics_new();
        REQUIRE(r != NULL);
        static const char *const parity[] = { "even", "odd" };
        ks_metric_labels_t lab = { .nseries = 2, .name = "thread", .values = parity };
        const double b[] = { 0.25, 1 };
        hammer_t hm[THREADS];
        ks_metric_t *c = ks_metrics_counter(r, "t_c_total", "C.", &lab);
        ks_metric_t *g = ks_metrics_gauge(r, "t_g", "G.", NULL);
        ks_metric_t *h = ks_metrics_histogram(r, "t_h_seconds", "H.", NULL, b, 2);
        ks_metric_t *d = ks_metrics_gauge_double(r, "t_d", "D.", NULL);
        REQUIRE(c && g && h && d);
        scraper_t sc = { .r = r };
        pthread_t st, th[THREADS];
        REQUIRE(pthread_create(&st, NULL, scraper_main, &sc) == 0);
        for (int i = 0; i < THREADS; i++) {
                hm[i] = (hammer_t){ c, g, h, d, i };
                REQUIRE(pthread_create(&th[i], NULL, hammer_main, &hm[i]) == 0);
        }
        for (int i = 0; i < THREADS; i++)
                pthread_join(th[i], NULL);
        __atomic_store_n(&sc.stop, 1, __ATOMIC_RELAXED);
        pthread_join(st, NULL);

        CHECK_EQ_INT(ks_metric_value(c, 0), (int64_t)ITERS * THREADS / 2);
        CHECK_EQ_INT(ks_metric_value(c, 1), (int64_t)ITERS * THREADS / 2);
        CHECK_EQ_INT(ks_metric_value(g, 0), (int64_t)ITERS / 2 * THREADS); /* +2 -1 per pair */
        CHECK_EQ_INT(ks_metric_hist_count(h, 0), (int64_t)ITERS * THREADS);
        /* Sums of multiples of 0.5 are exact in binary floating point. */
        CHECK(ks_metric_hist_sum(h, 0) == 0.75 * ITERS * THREADS);
        CHECK(ks_metric_value_double(d, 0) == 0.5 * ITERS * THREADS);
        char *text = ks_metrics_render(r, NULL);
        REQUIRE(text != NULL);
        char want[128];
        snprintf(want, sizeof(want), "t_h_seconds_bucket{le=\"0.25\"} %d\n", ITERS * THREADS / 4);
        CHECK(strstr(text, want) != NULL);
        snprintf(want, sizeof(want), "t_h_seconds_bucket{le=\"1\"} %d\n", ITERS * THREADS / 4 * 3);
        CHECK(strstr(text, want) != NULL);
        snprintf(want, sizeof(want), "t_h_seconds_bucket{le=\"+Inf\"} %d\n", ITERS * THREADS);
        CHECK(strstr(text, want) != NULL);
        free(text);
        CHECK(sc.renders > 0);
        ks_metrics_destroy(r);
}

/* --- the broker's families ------------------------------------------------ */

TEST(metrics_std_families_and_api_labels)
{
        REQUIRE(ks_metrics_std_init() == 0);
        REQUIRE(ks_metrics_std_init() == 0); /* idempotent */
        ks_std_metrics_t *m = &ks_std_metrics;
        REQUIRE(m->requests && m->request_duration && m->fetch_bytes && m->start_time);
        CHECK(ks_metric_value_double(m->start_time, 0) > 1.5e9);
        int s = ks_metrics_api_version_series(0, 9);
        int64_t before = ks_metric_value(m->requests, s);
        ks_metric_inc(m->requests, s);
        ks_metric_inc(m->request_errors, ks_metrics_api_version_series(1000, 3)); /* "other" */
        ks_metric_observe(m->request_duration, ks_metrics_api_series(1), 0.002);
        CHECK_EQ_INT(ks_metric_value(m->requests, s), before + 1);
        CHECK_EQ_INT(ks_metrics_api_version_series(-1, 0), KS_METRICS_API_KEYS * KS_METRICS_API_VERSIONS);
        CHECK_EQ_INT(ks_metrics_api_version_series(3, 32), KS_METRICS_API_KEYS * KS_METRICS_API_VERSIONS);
        CHECK_EQ_INT(ks_metrics_api_series(200), KS_METRICS_API_KEYS);
        char *text = ks_metrics_render(ks_metrics_default(), NULL);
        REQUIRE(text != NULL);
        char want[160];
        snprintf(want, sizeof(want), "kafscale_requests_total{api=\"Produce\",api_key=\"0\",version=\"9\"} %lld\n",
                 (long long)(before + 1));
        CHECK(strstr(text, want) != NULL);
        CHECK(strstr(text, "kafscale_request_errors_total{api=\"other\",api_key=\"-1\",version=\"-1\"} ") != NULL);
        CHECK(strstr(text, "kafscale_request_duration_seconds_bucket{api=\"Fetch\",api_key=\"1\",le=\"0.0025\"} ") !=
              NULL);
        CHECK(strstr(text, "# TYPE kafscale_connections_open gauge\n") != NULL);
        CHECK(strstr(text, "# TYPE kafscale_request_duration_seconds histogram\n") != NULL);
        /* skip_zero: of the 4097 request series only those used appear. */
        int lines = 0;
        for (const char *p = strstr(text, "\nkafscale_requests_total{"); p;
             p = strstr(p + 1, "\nkafscale_requests_total{")) {
                const char *eol = strchr(p + 1, '\n');
                REQUIRE(eol != NULL);
                CHECK(!(eol[-1] == '0' && eol[-2] == ' '));
                lines++;
        }
        CHECK(lines >= 1 && lines < 100);
        free(text);
}

/* --- HTTP endpoint -------------------------------------------------------- */

/* One HTTP/1.0 exchange with 127.0.0.1:port; returns the status (-1 on
 * failure) and the body in body (NUL-terminated, truncated). */
static int http_get(int port, const char *method, const char *path, char *body, size_t len)
{
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
                return -1;
        struct timeval tv = { 5, 0 };
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        struct sockaddr_in a = { 0 };
        a.sin_family = AF_INET;
        a.sin_port = htons((uint16_t)port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
                close(fd);
                return -1;
        }
        char req[256];
        int n = snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: localhost\r\n\r\n", method, path);
        if (write(fd, req, (size_t)n) != n) {
                close(fd);
                return -1;
        }
        static char buf[1 << 20];
        size_t got = 0;
        ssize_t r;
        while (got < sizeof(buf) - 1 && (r = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
                got += (size_t)r;
        close(fd);
        buf[got] = '\0';
        int status = -1;
        if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
                return -1;
        const char *b = strstr(buf, "\r\n\r\n");
        snprintf(body, len, "%s", b ? b + 4 : "");
        if (strstr(buf, "Content-Type: text/plain; version=0.0.4") && strcmp(path, "/metrics") != 0)
                return -2; /* only /metrics carries the exposition content type */
        return status;
}

typedef struct ready_ctx {
        bool ready;
        int calls;
} ready_ctx_t;

static bool test_ready(void *opaque, char *why, size_t len)
{
        ready_ctx_t *rc = opaque;
        __atomic_add_fetch(&rc->calls, 1, __ATOMIC_SEQ_CST);
        if (!__atomic_load_n(&rc->ready, __ATOMIC_SEQ_CST)) {
                snprintf(why, len, "object store unavailable: test");
                return false;
        }
        return true;
}

TEST(http_endpoints)
{
        ks_metrics_t *r = ks_metrics_new();
        REQUIRE(r != NULL);
        ks_metric_t *c = ks_metrics_counter(r, "t_http_total", "H.", NULL);
        ks_metric_add(c, 0, 5);
        ready_ctx_t rc = { false, 0 };
        ks_http_t *h = ks_http_start("127.0.0.1", 0, r, test_ready, &rc);
        REQUIRE(h != NULL);
        int port = ks_http_port(h);
        CHECK(port > 0);
        static char body[1 << 20];
        CHECK_EQ_INT(http_get(port, "GET", "/metrics", body, sizeof(body)), 200);
        CHECK(strstr(body, "# TYPE t_http_total counter\nt_http_total 5\n") != NULL);
        CHECK_EQ_INT(http_get(port, "GET", "/healthz", body, sizeof(body)), 200);
        CHECK_EQ_STR(body, "ok\n");
        CHECK_EQ_INT(http_get(port, "GET", "/readyz", body, sizeof(body)), 503);
        CHECK_EQ_STR(body, "not ready: object store unavailable: test\n");
        __atomic_store_n(&rc.ready, true, __ATOMIC_SEQ_CST);
        CHECK_EQ_INT(http_get(port, "GET", "/readyz", body, sizeof(body)), 200);
        CHECK_EQ_INT(rc.calls, 2);
        CHECK_EQ_INT(http_get(port, "HEAD", "/healthz", body, sizeof(body)), 200);
        CHECK_EQ_STR(body, "");
        CHECK_EQ_INT(http_get(port, "GET", "/nope", body, sizeof(body)), 404);
        CHECK_EQ_INT(http_get(port, "POST", "/metrics", body, sizeof(body)), 405);
        ks_http_stop(h);
        CHECK_EQ_INT(http_get(port, "GET", "/healthz", body, sizeof(body)), -1); /* listener closed */

        /* The port is free again after stop; a taken port fails start-up. */
        h = ks_http_start("127.0.0.1", port, r, NULL, NULL);
        REQUIRE(h != NULL);
        CHECK_EQ_INT(http_get(port, "GET", "/readyz", body, sizeof(body)), 200); /* no callback: ready */
        ks_log_level_t saved = ks_log_level;
        ks_log_set_level((ks_log_level_t)(KS_LOG_ERROR + 1));
        ks_http_t *h2 = ks_http_start("127.0.0.1", port, r, NULL, NULL);
        CHECK(h2 == NULL);
        CHECK(ks_http_start("no-such-host.invalid", 0, r, NULL, NULL) == NULL);
        ks_log_set_level(saved);
        ks_http_stop(h2);
        ks_http_stop(h);
        ks_metrics_destroy(r);
}
