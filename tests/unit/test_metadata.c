/*
 * test_metadata.c — the typed metadata layer (topics, cluster id, record
 * encodings, registry ordering), run against every backend (etcd: the
 * harness's shared instance, its keyspace deleted before each case).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "etcd_harness.h"
#include "kafscale_metadata.pb-c.h"
#include "meta/metadata.h"
#include "test.h"

typedef struct backend {
        const char *name;
        char dir[64];
        ks_kv_t *kv;
} backend_t;

static bool backend_open(backend_t *be, const char *name)
{
        memset(be, 0, sizeof(*be));
        be->name = name;
        if (!strcmp(name, "memory"))
                return ks_kv_memory_new(NULL, &be->kv) == 0;
        if (!strcmp(name, "etcd")) /* the shared test etcd, emptied first */
                return ks_test_etcd_wipe() && (be->kv = ks_test_etcd_open()) != NULL;
        snprintf(be->dir, sizeof(be->dir), "/tmp/ks-meta-test-XXXXXX");
        if (!mkdtemp(be->dir))
                return false;
        char path[128];
        snprintf(path, sizeof(path), "%s/metadata.db", be->dir);
        return ks_kv_sqlite_open(path, NULL, &be->kv) == 0;
}

static bool backend_reopen(backend_t *be)
{
        ks_kv_destroy(be->kv);
        be->kv = NULL;
        char path[128];
        snprintf(path, sizeof(path), "%s/metadata.db", be->dir);
        return ks_kv_sqlite_open(path, NULL, &be->kv) == 0;
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

static ks_topic_t topic(const char *name, int32_t partitions)
{
        ks_topic_t t;
        memset(&t, 0, sizeof(t));
        snprintf(t.name, sizeof(t.name), "%s", name);
        t.partitions = partitions;
        t.replication_factor = 1;
        t.retention_ms = KS_DEFAULT_RETENTION_MS;
        t.retention_bytes = KS_DEFAULT_RETENTION_BYTES;
        t.segment_bytes = KS_DEFAULT_SEGMENT_BYTES;
        return t;
}

static void check_topic_lifecycle(const char *backend)
{
        backend_t be;
        REQUIRE(backend_open(&be, backend));
        ks_meta_t *m = NULL;
        REQUIRE_EQ_INT(ks_meta_open(be.kv, &m), 0);
        CHECK_EQ_INT((int)strlen(ks_meta_cluster_id(m)), KS_CLUSTER_ID_LEN);

        ks_topic_t t = topic("orders", 3);
        t.retention_ms = 1000;
        t.explicit_configs = KS_TOPIC_CFG_RETENTION_MS;
        CHECK_EQ_INT(ks_meta_topic_create(m, &t), 0);
        CHECK(!ks_uuid_is_zero(&t.id));
        ks_topic_t again = topic("orders", 1);
        CHECK_EQ_INT(ks_meta_topic_create(m, &again), KS_ERR__EXISTS);

        /* Visible at once (read-your-writes), by name and by id. */
        ks_topic_t got;
        REQUIRE(ks_meta_topic_get(m, KS_STR("orders"), &got));
        CHECK_EQ_INT(got.partitions, 3);
        CHECK_EQ_INT(got.retention_ms, 1000);
        CHECK_EQ_INT(got.explicit_configs, KS_TOPIC_CFG_RETENTION_MS);
        CHECK(ks_uuid_eq(&got.id, &t.id));
        CHECK(ks_meta_topic_get_by_id(m, t.id, &got));
        CHECK(!ks_meta_topic_get(m, KS_STR("order"), &got));

        /* Every partition has a PartitionState and a next offset of 0. */
        ks_kv_result_t res;
        REQUIRE_EQ_INT(ks_kv_range(be.kv, "/kafscale/topics/orders/partitions/2/next_offset",
                                   strlen("/kafscale/topics/orders/partitions/2/next_offset"), NULL, 0, &res),
                       0);
        REQUIRE_EQ_INT((int)res.count, 1);
        CHECK_EQ_MEM(res.kvs[0].value, res.kvs[0].value_len, "0", 1);
        ks_kv_result_free(&res);
        REQUIRE_EQ_INT(ks_kv_range(be.kv, "/kafscale/topics/orders/partitions/1",
                                   strlen("/kafscale/topics/orders/partitions/1"), NULL, 0, &res),
                       0);
        REQUIRE_EQ_INT((int)res.count, 1);
        Kafscale__Metadata__PartitionState *ps =
                kafscale__metadata__partition_state__unpack(NULL, res.kvs[0].value_len, res.kvs[0].value);
        REQUIRE(ps != NULL);
        CHECK_EQ_STR(ps->topic, "orders");
        CHECK_EQ_INT(ps->partition, 1);
        kafscale__metadata__partition_state__free_unpacked(ps, NULL);
        ks_kv_result_free(&res);

        ks_topic_t other = topic("other", 1);
        CHECK_EQ_INT(ks_meta_topic_create(m, &other), 0);
        ks_topic_t *all = NULL;
        int n = ks_meta_topics_snapshot(m, &all);
        REQUIRE_EQ_INT(n, 2);
        CHECK_EQ_STR(all[0].name, "orders");
        CHECK_EQ_STR(all[1].name, "other");
        free(all);

        /* Delete by a stale id does nothing; by name removes every key. */
        ks_uuid_t wrong = t.id;
        wrong.b[15] ^= 1;
        CHECK_EQ_INT(ks_meta_topic_delete(m, "orders", &wrong), KS_ERR__NOT_FOUND);
        CHECK_EQ_INT(ks_meta_topic_delete(m, "orders", &t.id), 0);
        CHECK_EQ_INT(ks_meta_topic_delete(m, "orders", NULL), KS_ERR__NOT_FOUND);
        CHECK(!ks_meta_topic_get(m, KS_STR("orders"), &got));
        REQUIRE_EQ_INT(ks_kv_range(be.kv, "/kafscale/topics/orders/", strlen("/kafscale/topics/orders/"),
                                   "/kafscale/topics/orders0", strlen("/kafscale/topics/orders0"), &res),
                       0);
        CHECK_EQ_INT((int)res.count, 0);
        ks_kv_result_free(&res);
        CHECK(ks_meta_topic_get(m, KS_STR("other"), &got));

        /* Re-created: a new incarnation with a new id. */
        ks_topic_t re = topic("orders", 1);
        CHECK_EQ_INT(ks_meta_topic_create(m, &re), 0);
        CHECK(!ks_uuid_eq(&re.id, &t.id));

        char cluster_id[KS_CLUSTER_ID_LEN + 1];
        snprintf(cluster_id, sizeof(cluster_id), "%s", ks_meta_cluster_id(m));
        ks_meta_close(m);

        if (!strcmp(backend, "sqlite")) {
                /* Everything survives a restart. */
                REQUIRE(backend_reopen(&be));
                REQUIRE_EQ_INT(ks_meta_open(be.kv, &m), 0);
                CHECK_EQ_STR(ks_meta_cluster_id(m), cluster_id);
                CHECK(ks_meta_topic_get(m, KS_STR("orders"), &got));
                CHECK(ks_uuid_eq(&got.id, &re.id));
                CHECK(ks_meta_topic_get(m, KS_STR("other"), &got));
                ks_meta_close(m);
        }
        backend_close(&be);
}

TEST(meta_topic_lifecycle_memory) { check_topic_lifecycle("memory"); }
TEST(meta_topic_lifecycle_sqlite) { check_topic_lifecycle("sqlite"); }
TEST(meta_topic_lifecycle_etcd) { check_topic_lifecycle("etcd"); }

/* A topic written by someone else (another broker, a tool) shows up through
 * the watch; a deletion likewise. */
static void check_external_writes(const char *backend)
{
        backend_t be;
        REQUIRE(backend_open(&be, backend));
        ks_meta_t *m = NULL;
        REQUIRE_EQ_INT(ks_meta_open(be.kv, &m), 0);
        ks_topic_t t = topic("external", 4);
        uint8_t *buf;
        size_t len;
        REQUIRE_EQ_INT(ks_meta_topic_encode(&t, &buf, &len), 0);
        const char *key = "/kafscale/topics/external/config";
        REQUIRE_EQ_INT(ks_kv_put(be.kv, key, strlen(key), buf, len, 0, NULL), 0);
        free(buf);
        ks_topic_t got;
        bool seen = false;
        for (int i = 0; i < 500 && !seen; i++) {
                seen = ks_meta_topic_get(m, KS_STR("external"), &got);
                if (!seen)
                        usleep(10000);
        }
        CHECK(seen);
        CHECK_EQ_INT(got.partitions, 4);
        REQUIRE_EQ_INT(ks_kv_delete_range(be.kv, key, strlen(key), NULL, 0, NULL, NULL), 0);
        for (int i = 0; i < 500 && seen; i++) {
                seen = ks_meta_topic_get(m, KS_STR("external"), &got);
                if (seen)
                        usleep(10000);
        }
        CHECK(!seen);
        ks_meta_close(m);
        backend_close(&be);
}

TEST(meta_external_writes_memory) { check_external_writes("memory"); }
TEST(meta_external_writes_sqlite) { check_external_writes("sqlite"); }
TEST(meta_external_writes_etcd) { check_external_writes("etcd"); }

TEST(meta_topic_record_roundtrip)
{
        ks_topic_t t = topic("a.b-c_d", 7);
        t.replication_factor = 1;
        t.retention_bytes = 12345;
        t.explicit_configs = KS_TOPIC_CFG_RETENTION_BYTES;
        t.created_at_ms = 1700000000123LL;
        for (int i = 0; i < 16; i++)
                t.id.b[i] = (uint8_t)(i * 7 + 1);
        uint8_t *buf;
        size_t len;
        REQUIRE_EQ_INT(ks_meta_topic_encode(&t, &buf, &len), 0);

        /* The fields of the KafScale schema are where other tools read them. */
        Kafscale__Metadata__TopicConfig *tc = kafscale__metadata__topic_config__unpack(NULL, len, buf);
        REQUIRE(tc != NULL);
        CHECK_EQ_STR(tc->name, "a.b-c_d");
        CHECK_EQ_INT(tc->partitions, 7);
        CHECK_EQ_INT(tc->retention_bytes, 12345);
        CHECK_EQ_STR(tc->created_at, "2023-11-14T22:13:20.123Z");
        REQUIRE_EQ_INT((int)tc->n_config, 1);
        CHECK_EQ_STR(tc->config[0]->key, "retention.bytes");
        CHECK_EQ_STR(tc->config[0]->value, "12345");
        kafscale__metadata__topic_config__free_unpacked(tc, NULL);

        ks_topic_t back;
        REQUIRE_EQ_INT(ks_meta_topic_decode(buf, len, &back), 0);
        CHECK_EQ_STR(back.name, t.name);
        CHECK_EQ_INT(back.partitions, 7);
        CHECK_EQ_INT(back.retention_bytes, 12345);
        CHECK_EQ_INT(back.retention_ms, t.retention_ms);
        CHECK_EQ_INT(back.explicit_configs, KS_TOPIC_CFG_RETENTION_BYTES);
        CHECK_EQ_INT(back.created_at_ms, t.created_at_ms);
        CHECK(ks_uuid_eq(&back.id, &t.id));
        free(buf);

        CHECK_EQ_INT(ks_meta_topic_decode((const uint8_t *)"\xff\xff\xff", 3, &back), KS_ERR__CORRUPT);
}

TEST(meta_topic_name_rules)
{
        CHECK(ks_topic_name_invalid(KS_STR("")) != NULL);
        CHECK(ks_topic_name_invalid(KS_STR(".")) != NULL);
        CHECK(ks_topic_name_invalid(KS_STR("..")) != NULL);
        CHECK(ks_topic_name_invalid(KS_STR("a/b")) != NULL);
        CHECK(ks_topic_name_invalid(KS_STR("a b")) != NULL);
        CHECK(ks_topic_name_invalid(KS_STR_NULL) != NULL);
        CHECK(ks_topic_name_invalid(KS_STR("...")) == NULL);
        CHECK(ks_topic_name_invalid(KS_STR("Orders_2024-01.v2")) == NULL);
        char longname[251];
        memset(longname, 'x', 250);
        longname[250] = '\0';
        CHECK(ks_topic_name_invalid((ks_str_t){ longname, 250 }) != NULL);
        CHECK(ks_topic_name_invalid((ks_str_t){ longname, 249 }) == NULL);
}
