/*
 * test_offsets.c — committed offsets in the metadata store (meta/offsets.h),
 * run against every backend (etcd: the harness's shared instance, its
 * keyspace deleted before each case).  A wrapper backend counts the
 * transactions a commit makes and their size, to check the 128-op chunking.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "etcd_harness.h"
#include "meta/offsets.h"
#include "test.h"
#include "util/clock.h"

static const char *const backends[] = { "memory", "sqlite", "etcd" };

/* --- a counting wrapper around a real backend ------------------------------ */

typedef struct counting_kv {
        ks_kv_t base;
        ks_kv_t *inner;
        int txns;
        size_t max_ops;    /* largest number of ops in one txn */
        size_t max_bytes;  /* largest keys+values of one txn */
} counting_kv_t;

static ks_kv_t *inner_of(ks_kv_t *kv)
{
        return ((counting_kv_t *)kv)->inner;
}

static ks_err_t c_range(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                        ks_kv_result_t *out)
{
        return ks_kv_range(inner_of(kv), key, key_len, range_end, range_end_len, out);
}

static ks_err_t c_put(ks_kv_t *kv, const void *key, size_t key_len, const void *value, size_t value_len, int64_t lease,
                      int64_t *revision)
{
        return ks_kv_put(inner_of(kv), key, key_len, value, value_len, lease, revision);
}

static ks_err_t c_delete_range(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end,
                               size_t range_end_len, int64_t *deleted, int64_t *revision)
{
        return ks_kv_delete_range(inner_of(kv), key, key_len, range_end, range_end_len, deleted, revision);
}

static ks_err_t c_txn(ks_kv_t *kv, const ks_kv_cmp_t *cmps, size_t ncmps, const ks_kv_op_t *success, size_t nsuccess,
                      const ks_kv_op_t *failure, size_t nfailure, bool *succeeded, int64_t *revision)
{
        counting_kv_t *c = (counting_kv_t *)kv;
        size_t bytes = 0;
        for (size_t i = 0; i < nsuccess; i++)
                bytes += success[i].key_len + success[i].value_len;
        c->txns++;
        if (nsuccess > c->max_ops)
                c->max_ops = nsuccess;
        if (bytes > c->max_bytes)
                c->max_bytes = bytes;
        return ks_kv_txn(c->inner, cmps, ncmps, success, nsuccess, failure, nfailure, succeeded, revision);
}

static ks_err_t c_lease_grant(ks_kv_t *kv, int64_t ttl, int64_t *id)
{
        return ks_kv_lease_grant(inner_of(kv), ttl, id);
}

static ks_err_t c_lease_keepalive(ks_kv_t *kv, int64_t id, int64_t *ttl)
{
        return ks_kv_lease_keepalive(inner_of(kv), id, ttl);
}

static ks_err_t c_lease_revoke(ks_kv_t *kv, int64_t id)
{
        return ks_kv_lease_revoke(inner_of(kv), id);
}

static ks_err_t c_watch(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                        int64_t start_rev, ks_kv_watch_cb *cb, void *opaque, ks_kv_watch_t **out)
{
        return ks_kv_watch(inner_of(kv), key, key_len, range_end, range_end_len, start_rev, cb, opaque, out);
}

static void c_watch_cancel(ks_kv_t *kv, ks_kv_watch_t *w)
{
        ks_kv_watch_cancel(inner_of(kv), w);
}

static void c_destroy(ks_kv_t *kv)
{
        ks_kv_destroy(inner_of(kv));
}

static const ks_kv_ops_t counting_ops = {
        .name = "counting",
        .range = c_range,
        .put = c_put,
        .delete_range = c_delete_range,
        .txn = c_txn,
        .lease_grant = c_lease_grant,
        .lease_keepalive = c_lease_keepalive,
        .lease_revoke = c_lease_revoke,
        .watch = c_watch,
        .watch_cancel = c_watch_cancel,
        .destroy = c_destroy,
};

/* --- backends -------------------------------------------------------------- */

typedef struct backend {
        char dir[64];
        counting_kv_t c; /* c.base is what the tests use */
        ks_kv_t *kv;
} backend_t;

static bool backend_open(backend_t *be, const char *name)
{
        memset(be, 0, sizeof(*be));
        ks_kv_t *inner = NULL;
        if (!strcmp(name, "memory")) {
                if (ks_kv_memory_new(NULL, &inner) != 0)
                        return false;
        } else if (!strcmp(name, "etcd")) {
                /* The shared test etcd, emptied first. */
                if (!ks_test_etcd_wipe() || !(inner = ks_test_etcd_open()))
                        return false;
        } else {
                snprintf(be->dir, sizeof(be->dir), "/tmp/ks-offsets-test-XXXXXX");
                if (!mkdtemp(be->dir))
                        return false;
                char path[128];
                snprintf(path, sizeof(path), "%s/metadata.db", be->dir);
                if (ks_kv_sqlite_open(path, NULL, &inner) != 0)
                        return false;
        }
        be->c.base.ops = &counting_ops;
        be->c.inner = inner;
        be->kv = &be->c.base;
        return true;
}

static void backend_close(backend_t *be)
{
        ks_kv_destroy(be->kv);
        if (be->dir[0]) {
                char cmd[160];
                snprintf(cmd, sizeof(cmd), "rm -rf '%s'", be->dir);
                if (system(cmd) != 0)
                        fprintf(stderr, "cannot remove %s\n", be->dir);
        }
}

static void reset_counts(backend_t *be)
{
        be->c.txns = 0;
        be->c.max_ops = 0;
        be->c.max_bytes = 0;
}

static ks_offset_commit_t item(const char *topic, int32_t p, int64_t off, int32_t epoch, const char *md)
{
        return (ks_offset_commit_t){ .topic = ks_str_c(topic), .partition = p, .offset = off, .leader_epoch = epoch,
                                     .metadata = ks_str_c(md) };
}

/* Number of stored keys under a prefix (raw). */
static size_t count_keys(ks_kv_t *kv, const char *prefix)
{
        uint8_t end[256];
        size_t elen = ks_kv_prefix_end(prefix, strlen(prefix), end);
        ks_kv_result_t res;
        if (ks_kv_range(kv, prefix, strlen(prefix), end, elen, &res) != 0)
                return (size_t)-1;
        size_t n = res.count;
        ks_kv_result_free(&res);
        return n;
}

static void put_raw(ks_kv_t *kv, const char *key, const char *value)
{
        CHECK_EQ_INT(ks_kv_put(kv, key, strlen(key), value, strlen(value), 0, NULL), 0);
}

/* --- tests ----------------------------------------------------------------- */

static void check_round_trip(const char *name)
{
        backend_t be;
        REQUIRE(backend_open(&be, name));
        int64_t before = ks_clock_wall_ms(ks_clock_system());
        ks_offset_commit_t items[] = {
                item("orders", 1, 42, 3, "m1"),
                item("orders", 0, 7, -1, NULL),
                item("payments", 0, 0, 0, ""),
        };
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "g1", items, 3, NULL), 0);
        CHECK_EQ_INT(be.c.txns, 1);
        int64_t after = ks_clock_wall_ms(ks_clock_system());

        ks_offset_list_t l;
        REQUIRE_EQ_INT(ks_offsets_fetch(be.kv, "g1", NULL, &l), 0);
        REQUIRE_EQ_INT(l.count, 3);
        /* Sorted by topic then partition. */
        CHECK_EQ_STR(l.items[0].topic, "orders");
        CHECK_EQ_INT(l.items[0].partition, 0);
        CHECK_EQ_INT(l.items[0].offset, 7);
        CHECK_EQ_INT(l.items[0].leader_epoch, -1);
        CHECK_EQ_STR(l.items[0].metadata, ""); /* null is stored as "" */
        CHECK_EQ_STR(l.items[1].topic, "orders");
        CHECK_EQ_INT(l.items[1].partition, 1);
        CHECK_EQ_INT(l.items[1].offset, 42);
        CHECK_EQ_INT(l.items[1].leader_epoch, 3);
        CHECK_EQ_STR(l.items[1].metadata, "m1");
        CHECK_EQ_INT(l.items[1].metadata_len, 2);
        CHECK_EQ_STR(l.items[2].topic, "payments");
        CHECK_EQ_INT(l.items[2].leader_epoch, 0);
        for (size_t i = 0; i < l.count; i++) {
                CHECK_EQ_INT(l.items[i].err, 0);
                /* committed_at has millisecond precision. */
                CHECK(l.items[i].committed_at_ms >= before && l.items[i].committed_at_ms <= after);
        }
        const ks_offset_entry_t *e = ks_offset_list_find(&l, KS_STR("orders"), 1);
        CHECK(e == &l.items[1]);
        CHECK(ks_offset_list_find(&l, KS_STR("orders"), 2) == NULL);
        CHECK(ks_offset_list_find(&l, KS_STR("order"), 0) == NULL);
        CHECK(ks_offset_list_find(&l, KS_STR("payments"), 0) == &l.items[2]);
        ks_offset_list_free(&l);

        /* Another group sees nothing; a group with no commits is empty. */
        REQUIRE_EQ_INT(ks_offsets_fetch(be.kv, "g2", NULL, &l), 0);
        CHECK_EQ_INT(l.count, 0);
        ks_offset_list_free(&l);
        REQUIRE_EQ_INT(ks_offsets_fetch(be.kv, "g1", "nothing", &l), 0);
        CHECK_EQ_INT(l.count, 0);
        ks_offset_list_free(&l);
        backend_close(&be);
}

TEST(offsets_round_trip)
{
        for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
                check_round_trip(backends[i]);
}

static void check_overwrite_and_duplicates(const char *name)
{
        backend_t be;
        REQUIRE(backend_open(&be, name));
        ks_offset_commit_t a[] = { item("t", 0, 1, 1, "old"), item("t", 1, 10, 1, "x") };
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "g", a, 2, NULL), 0);
        ks_offset_commit_t b[] = { item("t", 0, 5, 2, "new") };
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "g", b, 1, NULL), 0);
        /* The same partition twice in one commit: the last one wins. */
        ks_offset_commit_t c[] = { item("t", 1, 11, 1, "first"), item("u", 0, 1, -1, ""), item("t", 1, 12, 2, "last") };
        reset_counts(&be);
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "g", c, 3, NULL), 0);
        CHECK_EQ_INT(be.c.txns, 1);
        CHECK_EQ_INT(be.c.max_ops, 2);

        ks_offset_list_t l;
        REQUIRE_EQ_INT(ks_offsets_fetch(be.kv, "g", NULL, &l), 0);
        REQUIRE_EQ_INT(l.count, 3);
        CHECK_EQ_INT(l.items[0].offset, 5);
        CHECK_EQ_INT(l.items[0].leader_epoch, 2);
        CHECK_EQ_STR(l.items[0].metadata, "new");
        CHECK_EQ_INT(l.items[1].offset, 12);
        CHECK_EQ_STR(l.items[1].metadata, "last");
        CHECK_EQ_STR(l.items[2].topic, "u");
        ks_offset_list_free(&l);
        CHECK_EQ_INT(count_keys(be.kv, "/kafscale/consumers/g/offsets/"), 3);
        backend_close(&be);
}

TEST(offsets_overwrite_and_duplicates)
{
        for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
                check_overwrite_and_duplicates(backends[i]);
}

static void check_fetch_one_topic(const char *name)
{
        backend_t be;
        REQUIRE(backend_open(&be, name));
        /* Names that share a prefix, and '-' / '.' which sort before '/'. */
        ks_offset_commit_t items[] = {
                item("orders", 0, 1, -1, ""),  item("orders", 10, 2, -1, ""), item("orders", 2, 3, -1, ""),
                item("orders2", 0, 4, -1, ""), item("orders-x", 0, 5, -1, ""), item("orders.y", 0, 6, -1, ""),
                item("order", 0, 7, -1, ""),
        };
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "g", items, 7, NULL), 0);

        ks_offset_list_t l;
        REQUIRE_EQ_INT(ks_offsets_fetch(be.kv, "g", "orders", &l), 0);
        REQUIRE_EQ_INT(l.count, 3);
        CHECK_EQ_INT(l.items[0].partition, 0); /* numeric order, not "10" < "2" */
        CHECK_EQ_INT(l.items[1].partition, 2);
        CHECK_EQ_INT(l.items[2].partition, 10);
        for (size_t i = 0; i < l.count; i++)
                CHECK_EQ_STR(l.items[i].topic, "orders");
        ks_offset_list_free(&l);

        REQUIRE_EQ_INT(ks_offsets_fetch(be.kv, "g", NULL, &l), 0);
        REQUIRE_EQ_INT(l.count, 7);
        const char *want[] = { "order", "orders", "orders", "orders", "orders-x", "orders.y", "orders2" };
        for (size_t i = 0; i < l.count; i++)
                CHECK_EQ_STR(l.items[i].topic, want[i]);
        /* Binary search agrees with the sort for every entry. */
        for (size_t i = 0; i < l.count; i++)
                CHECK(ks_offset_list_find(&l, ks_str_c(l.items[i].topic), l.items[i].partition) == &l.items[i]);
        ks_offset_list_free(&l);
        backend_close(&be);
}

TEST(offsets_fetch_all_vs_one_topic)
{
        for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
                check_fetch_one_topic(backends[i]);
}

static void check_json_value(const char *name)
{
        backend_t be;
        REQUIRE(backend_open(&be, name));
        /* Metadata that needs escaping: quotes, backslash, newline, NUL,
         * non-ASCII. */
        static const char md[] = "a\"b\\c\nd\0e \xc3\xa9";
        ks_offset_commit_t it = { .topic = KS_STR("orders"), .partition = 3, .offset = 123456789012LL,
                                  .leader_epoch = 9, .metadata = { md, (int32_t)sizeof(md) - 1 } };
        int64_t before = ks_clock_wall_ms(ks_clock_system());
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "group-1", &it, 1, NULL), 0);

        const char *key = "/kafscale/consumers/group-1/offsets/orders/3";
        ks_kv_result_t res;
        REQUIRE_EQ_INT(ks_kv_range(be.kv, key, strlen(key), NULL, 0, &res), 0);
        REQUIRE_EQ_INT(res.count, 1);
        json_tokener *tok = json_tokener_new();
        json_object *o = json_tokener_parse_ex(tok, (const char *)res.kvs[0].value, (int)res.kvs[0].value_len);
        CHECK(json_tokener_get_error(tok) == json_tokener_success);
        CHECK_EQ_INT(json_tokener_get_parse_end(tok), res.kvs[0].value_len);
        json_tokener_free(tok);
        ks_kv_result_free(&res);
        REQUIRE(o != NULL && json_object_is_type(o, json_type_object));
        CHECK_EQ_INT(json_object_object_length(o), 4);
        json_object *v;
        REQUIRE(json_object_object_get_ex(o, "offset", &v));
        CHECK(json_object_is_type(v, json_type_int));
        CHECK_EQ_INT(json_object_get_int64(v), 123456789012LL);
        REQUIRE(json_object_object_get_ex(o, "metadata", &v));
        CHECK(json_object_is_type(v, json_type_string));
        CHECK_EQ_MEM(json_object_get_string(v), (size_t)json_object_get_string_len(v), md, sizeof(md) - 1);
        REQUIRE(json_object_object_get_ex(o, "leader_epoch", &v));
        CHECK(json_object_is_type(v, json_type_int));
        CHECK_EQ_INT(json_object_get_int(v), 9);
        REQUIRE(json_object_object_get_ex(o, "committed_at", &v));
        CHECK(json_object_is_type(v, json_type_string));
        const char *ts = json_object_get_string(v);
        int64_t ms = 0;
        CHECK_EQ_INT(ks_offsets_parse_rfc3339(ts, strlen(ts), &ms), 0);
        CHECK(ms >= before && ms <= ks_clock_wall_ms(ks_clock_system()));
        CHECK(ts[strlen(ts) - 1] == 'Z'); /* UTC */
        json_object_put(o);

        /* And it reads back byte for byte. */
        ks_offset_list_t l;
        REQUIRE_EQ_INT(ks_offsets_fetch(be.kv, "group-1", "orders", &l), 0);
        REQUIRE_EQ_INT(l.count, 1);
        CHECK_EQ_MEM(l.items[0].metadata, l.items[0].metadata_len, md, sizeof(md) - 1);
        CHECK_EQ_INT(l.items[0].offset, 123456789012LL);
        ks_offset_list_free(&l);
        backend_close(&be);
}

TEST(offsets_json_value)
{
        for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
                check_json_value(backends[i]);
}

static void check_foreign_values(const char *name)
{
        backend_t be;
        REQUIRE(backend_open(&be, name));
        /* What the Go implementation writes (no leader_epoch, nanosecond
         * timestamp), plus keys nobody knows. */
        put_raw(be.kv, "/kafscale/consumers/g/offsets/t/0",
                "{\"offset\":7,\"metadata\":\"m\",\"committed_at\":\"2025-01-02T03:04:05.123456789Z\","
                "\"extra\":{\"a\":[1,2,{\"b\":null}]},\"foo\":\"bar\"}");
        /* Only an offset; a timestamp with a zone offset. */
        put_raw(be.kv, "/kafscale/consumers/g/offsets/t/1", " {\"offset\":8} \n");
        put_raw(be.kv, "/kafscale/consumers/g/offsets/t/2",
                "{\"leader_epoch\":\"x\",\"offset\":9,\"metadata\":5,\"committed_at\":\"2026-11-24T08:00:00-00:30\"}");
        /* Not decodable: reported as corrupt, not dropped. */
        put_raw(be.kv, "/kafscale/consumers/g/offsets/t/3", "{\"offset\":\"12\"}");
        put_raw(be.kv, "/kafscale/consumers/g/offsets/t/4", "not json");
        put_raw(be.kv, "/kafscale/consumers/g/offsets/t/5", "{\"offset\":1} trailing");
        /* Keys that are not offset records: skipped. */
        put_raw(be.kv, "/kafscale/consumers/g/offsets/t/01", "{\"offset\":1}");
        put_raw(be.kv, "/kafscale/consumers/g/offsets/t/x", "{\"offset\":1}");
        put_raw(be.kv, "/kafscale/consumers/g/offsets/bad name/0", "{\"offset\":1}");
        put_raw(be.kv, "/kafscale/consumers/g/offsets/t", "{\"offset\":1}");
        put_raw(be.kv, "/kafscale/consumers/g/metadata", "protobuf");

        ks_offset_list_t l;
        REQUIRE_EQ_INT(ks_offsets_fetch(be.kv, "g", NULL, &l), 0);
        REQUIRE_EQ_INT(l.count, 6);
        CHECK_EQ_INT(l.items[0].offset, 7);
        CHECK_EQ_INT(l.items[0].leader_epoch, -1);
        CHECK_EQ_STR(l.items[0].metadata, "m");
        CHECK_EQ_INT(l.items[0].committed_at_ms, 1735787045123LL);
        CHECK_EQ_INT(l.items[0].err, 0);
        CHECK_EQ_INT(l.items[1].offset, 8);
        CHECK_EQ_STR(l.items[1].metadata, "");
        CHECK_EQ_INT(l.items[1].committed_at_ms, -1);
        CHECK_EQ_INT(l.items[1].err, 0);
        CHECK_EQ_INT(l.items[2].offset, 9);
        CHECK_EQ_INT(l.items[2].leader_epoch, -1);
        CHECK_EQ_STR(l.items[2].metadata, "");
        CHECK_EQ_INT(l.items[2].committed_at_ms, 1795509000000LL);
        for (size_t i = 3; i < 6; i++) {
                CHECK_EQ_INT(l.items[i].partition, (int)i);
                CHECK_EQ_INT(l.items[i].err, KS_ERR__CORRUPT);
                CHECK_EQ_INT(l.items[i].offset, -1);
                CHECK_EQ_STR(l.items[i].metadata, "");
        }
        ks_offset_list_free(&l);

        /* A commit repairs a corrupt record. */
        ks_offset_commit_t it = item("t", 4, 40, -1, "");
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "g", &it, 1, NULL), 0);
        REQUIRE_EQ_INT(ks_offsets_fetch(be.kv, "g", "t", &l), 0);
        const ks_offset_entry_t *e = ks_offset_list_find(&l, KS_STR("t"), 4);
        REQUIRE(e != NULL);
        CHECK_EQ_INT(e->err, 0);
        CHECK_EQ_INT(e->offset, 40);
        ks_offset_list_free(&l);
        backend_close(&be);
}

TEST(offsets_unknown_json_keys_ignored)
{
        for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
                check_foreign_values(backends[i]);
}

static void check_delete(const char *name)
{
        backend_t be;
        REQUIRE(backend_open(&be, name));
        ks_offset_commit_t items[] = { item("t", 0, 1, -1, ""), item("t", 1, 2, -1, ""), item("u", 0, 3, -1, "") };
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "g1", items, 3, NULL), 0);
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "g2", items, 3, NULL), 0);
        /* "g1x" shares a prefix with "g1" and must survive. */
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "g1x", items, 1, NULL), 0);
        put_raw(be.kv, "/kafscale/consumers/g1/metadata", "protobuf");
        CHECK(ks_offsets_group_has_any(be.kv, "g1"));
        CHECK(!ks_offsets_group_has_any(be.kv, "nobody"));
        CHECK(!ks_offsets_group_has_any(be.kv, "bad/group"));

        /* One partition. */
        CHECK_EQ_INT(ks_offsets_delete(be.kv, "g1", "t", 1, NULL), 0);
        CHECK_EQ_INT(ks_offsets_delete(be.kv, "g1", "t", 7, NULL), 0); /* nothing there: fine */
        ks_offset_list_t l;
        REQUIRE_EQ_INT(ks_offsets_fetch(be.kv, "g1", NULL, &l), 0);
        CHECK_EQ_INT(l.count, 2);
        CHECK(ks_offset_list_find(&l, KS_STR("t"), 1) == NULL);
        ks_offset_list_free(&l);

        /* The whole group: its offsets go, its metadata record and the
         * other groups stay. */
        CHECK_EQ_INT(ks_offsets_delete_group(be.kv, "g1", NULL), 0);
        CHECK(!ks_offsets_group_has_any(be.kv, "g1"));
        CHECK_EQ_INT(count_keys(be.kv, "/kafscale/consumers/g1/"), 1);
        CHECK_EQ_INT(count_keys(be.kv, "/kafscale/consumers/g2/offsets/"), 3);
        CHECK_EQ_INT(count_keys(be.kv, "/kafscale/consumers/g1x/offsets/"), 1);
        CHECK_EQ_INT(ks_offsets_delete_group(be.kv, "g1", NULL), 0); /* again: nothing to delete */
        CHECK_EQ_INT(ks_offsets_delete_group(be.kv, "a/b", NULL), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_offsets_delete(be.kv, "g2", "a/b", 0, NULL), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_offsets_delete(be.kv, "g2", "t", -1, NULL), KS_ERR__INVALID_ARG);
        backend_close(&be);
}

TEST(offsets_delete_group)
{
        for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
                check_delete(backends[i]);
}

static void check_delete_topic(const char *name)
{
        backend_t be;
        REQUIRE(backend_open(&be, name));
        ks_offset_commit_t items[] = { item("t", 0, 1, -1, ""), item("t", 1, 2, -1, ""), item("t2", 0, 3, -1, ""),
                                       item("t-a", 0, 4, -1, "") };
        const char *groups[] = { "a", "b", "b-c", "d" };
        for (int i = 0; i < 4; i++)
                CHECK_EQ_INT(ks_offsets_commit(be.kv, groups[i], items, i == 3 ? 1 : 4, NULL), 0);
        put_raw(be.kv, "/kafscale/consumers/a/metadata", "protobuf");
        reset_counts(&be);
        CHECK_EQ_INT(ks_offsets_delete_topic(be.kv, "t"), 0);
        CHECK_EQ_INT(be.c.txns, 1);
        CHECK_EQ_INT(be.c.max_ops, 4); /* one range delete per group */
        for (int i = 0; i < 4; i++) {
                ks_offset_list_t l;
                REQUIRE_EQ_INT(ks_offsets_fetch(be.kv, groups[i], NULL, &l), 0);
                CHECK_EQ_INT(l.count, i == 3 ? 0 : 2);
                for (size_t k = 0; k < l.count; k++)
                        CHECK(strcmp(l.items[k].topic, "t") != 0);
                ks_offset_list_free(&l);
        }
        CHECK_EQ_INT(count_keys(be.kv, "/kafscale/consumers/a/metadata"), 1);
        reset_counts(&be);
        CHECK_EQ_INT(ks_offsets_delete_topic(be.kv, "t"), 0);
        CHECK_EQ_INT(be.c.txns, 0); /* nothing left to delete */
        backend_close(&be);
}

TEST(offsets_delete_topic_in_every_group)
{
        for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
                check_delete_topic(backends[i]);
}

static void check_chunking(const char *name)
{
        backend_t be;
        REQUIRE(backend_open(&be, name));
        enum { N = 300 };
        ks_offset_commit_t *items = calloc(N, sizeof(*items));
        REQUIRE(items != NULL);
        for (int i = 0; i < N; i++)
                items[i] = item(i % 2 ? "odd" : "even", i, 1000 + i, i, "md");
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "big", items, N, NULL), 0);
        CHECK_EQ_INT(be.c.txns, 3); /* 128 + 128 + 44 */
        CHECK_EQ_INT(be.c.max_ops, KS_OFFSETS_TXN_MAX_OPS);
        ks_offset_list_t l;
        REQUIRE_EQ_INT(ks_offsets_fetch(be.kv, "big", NULL, &l), 0);
        REQUIRE_EQ_INT(l.count, N);
        for (int i = 0; i < N; i++) {
                const ks_offset_entry_t *e = ks_offset_list_find(&l, ks_str_c(i % 2 ? "odd" : "even"), i);
                REQUIRE(e != NULL);
                CHECK_EQ_INT(e->offset, 1000 + i);
                CHECK_EQ_INT(e->leader_epoch, i);
        }
        ks_offset_list_free(&l);

        /* Large values: transactions are also closed by size. */
        static char md[KS_OFFSET_METADATA_MAX];
        memset(md, 'x', sizeof(md));
        for (int i = 0; i < 200; i++)
                items[i].metadata = (ks_str_t){ md, (int32_t)sizeof(md) };
        reset_counts(&be);
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "big", items, 200, NULL), 0);
        CHECK(be.c.txns >= 2);
        CHECK(be.c.max_bytes <= KS_OFFSETS_TXN_MAX_BYTES);
        CHECK(be.c.max_ops <= KS_OFFSETS_TXN_MAX_OPS);
        REQUIRE_EQ_INT(ks_offsets_fetch(be.kv, "big", "even", &l), 0);
        CHECK_EQ_INT(l.count, N / 2);
        CHECK_EQ_INT(l.items[0].metadata_len, KS_OFFSET_METADATA_MAX);
        ks_offset_list_free(&l);
        free(items);
        backend_close(&be);
}

TEST(offsets_commit_300_items_in_chunks)
{
        for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
                check_chunking(backends[i]);
}

static void check_bad_names(const char *name)
{
        backend_t be;
        REQUIRE(backend_open(&be, name));
        char long_group[KS_GROUP_ID_MAX + 2];
        memset(long_group, 'g', sizeof(long_group) - 1);
        long_group[sizeof(long_group) - 1] = '\0';
        const char *bad_groups[] = { "", "a/b", "/", "tab\there", "new\nline", "del\x7f", "\xff", "\xc3",
                                     "\xc0\xaf" /* overlong '/' */, "\xed\xa0\x80" /* surrogate */, long_group };
        ks_offset_commit_t ok = item("t", 0, 1, -1, "");
        ks_offset_list_t l;
        for (size_t i = 0; i < sizeof(bad_groups) / sizeof(bad_groups[0]); i++) {
                CHECK(ks_offsets_group_invalid(ks_str_c(bad_groups[i])) != NULL);
                CHECK_EQ_INT(ks_offsets_commit(be.kv, bad_groups[i], &ok, 1, NULL), KS_ERR__INVALID_ARG);
                CHECK_EQ_INT(ks_offsets_fetch(be.kv, bad_groups[i], NULL, &l), KS_ERR__INVALID_ARG);
                ks_offset_list_free(&l);
        }
        CHECK_EQ_INT(ks_offsets_commit(be.kv, NULL, &ok, 1, NULL), KS_ERR__INVALID_ARG);
        /* An embedded NUL (possible on the wire). */
        CHECK(ks_offsets_group_invalid((ks_str_t){ "a\0b", 3 }) != NULL);
        CHECK(ks_offsets_group_invalid(KS_STR_NULL) != NULL);

        /* Kafka-legal names that are fine as one key segment. */
        long_group[KS_GROUP_ID_MAX] = '\0';
        const char *good_groups[] = { "g", "my group", "a.b-c_d:e@f", "..", "gr\xc3\xbcppe", "\xe3\x82\xb0",
                                      "\xf0\x9f\x98\x80", long_group };
        for (size_t i = 0; i < sizeof(good_groups) / sizeof(good_groups[0]); i++) {
                CHECK(ks_offsets_group_invalid(ks_str_c(good_groups[i])) == NULL);
                CHECK_EQ_INT(ks_offsets_commit(be.kv, good_groups[i], &ok, 1, NULL), 0);
                REQUIRE_EQ_INT(ks_offsets_fetch(be.kv, good_groups[i], NULL, &l), 0);
                CHECK_EQ_INT(l.count, 1);
                ks_offset_list_free(&l);
        }

        /* Bad topics or partitions: nothing of the commit is written. */
        size_t before = count_keys(be.kv, "/kafscale/consumers/");
        const char *bad_topics[] = { "", "a/b", ".", "..", "sp ace", "x\xc3\xa9" };
        for (size_t i = 0; i < sizeof(bad_topics) / sizeof(bad_topics[0]); i++) {
                ks_offset_commit_t two[] = { item("fine", 0, 1, -1, ""), item(bad_topics[i], 0, 1, -1, "") };
                CHECK_EQ_INT(ks_offsets_commit(be.kv, "h", two, 2, NULL), KS_ERR__INVALID_ARG);
                CHECK_EQ_INT(ks_offsets_fetch(be.kv, "h", bad_topics[i], &l), KS_ERR__INVALID_ARG);
                ks_offset_list_free(&l);
        }
        ks_offset_commit_t neg[] = { item("fine", 0, 1, -1, ""), item("fine", -1, 1, -1, "") };
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "h", neg, 2, NULL), KS_ERR__INVALID_ARG);
        ks_offset_commit_t huge = item("fine", 0, 1, -1, "");
        huge.metadata = (ks_str_t){ "x", 40000 };
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "h", &huge, 1, NULL), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(count_keys(be.kv, "/kafscale/consumers/"), before);
        CHECK_EQ_INT(ks_offsets_commit(be.kv, "h", NULL, 0, NULL), 0); /* nothing to do */
        backend_close(&be);
}

TEST(offsets_odd_names_rejected)
{
        for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
                check_bad_names(backends[i]);
}

TEST(offsets_rfc3339)
{
        int64_t ms = 0;
        const char *s = "1970-01-01T00:00:00Z";
        CHECK_EQ_INT(ks_offsets_parse_rfc3339(s, strlen(s), &ms), 0);
        CHECK_EQ_INT(ms, 0);
        s = "2025-01-02T03:04:05.123456789Z";
        CHECK_EQ_INT(ks_offsets_parse_rfc3339(s, strlen(s), &ms), 0);
        CHECK_EQ_INT(ms, 1735787045123LL);
        s = "2000-02-29t12:00:00.5+01:00";
        CHECK_EQ_INT(ks_offsets_parse_rfc3339(s, strlen(s), &ms), 0);
        CHECK_EQ_INT(ms, 951822000500LL);
        s = "1969-12-31T23:59:59z";
        CHECK_EQ_INT(ks_offsets_parse_rfc3339(s, strlen(s), &ms), 0);
        CHECK_EQ_INT(ms, -1000);
        /* What ks_time_rfc3339 writes parses back. */
        char buf[40];
        ks_time_rfc3339(1795509000123LL, buf, sizeof(buf));
        CHECK_EQ_INT(ks_offsets_parse_rfc3339(buf, strlen(buf), &ms), 0);
        CHECK_EQ_INT(ms, 1795509000123LL);
        const char *bad[] = { "", "2025-01-02", "2025-01-02T03:04:05", "2025-13-02T03:04:05Z",
                              "2001-02-29T00:00:00Z", "2025-01-02T24:00:00Z", "2025-01-02T03:04:05.Z",
                              "2025-01-02T03:04:05+0100", "2025-01-02T03:04:05Zjunk", "2025-01-02X03:04:05Z" };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                CHECK_EQ_INT(ks_offsets_parse_rfc3339(bad[i], strlen(bad[i]), &ms), -1);
}

TEST(offsets_value_codec)
{
        char *json = NULL;
        size_t len = 0;
        REQUIRE_EQ_INT(ks_offsets_value_encode(-1, -7, KS_STR_NULL, 0, &json, &len), 0);
        CHECK_EQ_STR(json,
                     "{\"offset\":-1,\"metadata\":\"\",\"committed_at\":\"1970-01-01T00:00:00.000Z\",\"leader_epoch\":-1}");
        CHECK_EQ_INT(len, strlen(json));
        int64_t off = 0, at = 0;
        int32_t epoch = 0;
        char *md = NULL;
        size_t mdlen = 9;
        CHECK_EQ_INT(ks_offsets_value_decode((const uint8_t *)json, len, &off, &epoch, &md, &mdlen, &at), 0);
        CHECK_EQ_INT(off, -1);
        CHECK_EQ_INT(epoch, -1);
        CHECK_EQ_STR(md, "");
        CHECK_EQ_INT(mdlen, 0);
        CHECK_EQ_INT(at, 0);
        free(md);
        free(json);
        const char *bad[] = { "[]", "{}", "{\"offset\":1.5}", "{\"offset\":null}", "{\"offset\":1", "", "{\"offset\":1}{" };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                CHECK_EQ_INT(ks_offsets_value_decode((const uint8_t *)bad[i], strlen(bad[i]), &off, NULL, NULL, NULL,
                                                     NULL),
                             KS_ERR__CORRUPT);
}
