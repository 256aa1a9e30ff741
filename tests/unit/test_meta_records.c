/*
 * test_meta_records.c — the typed metadata layer with records it did not
 * write itself and changes larger than one store transaction:
 *  - a topic larger than one transaction (KS_KV_TXN_MAX_OPS) is created and
 *    grown in several, and appears only complete;
 *  - a TopicConfig written by another tool (no topic id, proto3 zeros, a
 *    config map) is read with derived id and Kafka's defaults, and its
 *    partitions start empty;
 *  - a partition commit retried after an unknown outcome succeeds, while a
 *    different segment at the same place is still a conflict.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "kafscale_metadata.pb-c.h"
#include "meta/kv_faulty.h"
#include "meta/metadata.h"
#include "test.h"
#include "util/log.h"

static ks_topic_t topic_named(const char *name, int32_t parts)
{
        ks_topic_t t;
        memset(&t, 0, sizeof(t));
        snprintf(t.name, sizeof(t.name), "%s", name);
        t.partitions = parts;
        t.replication_factor = 1;
        t.retention_ms = KS_DEFAULT_RETENTION_MS;
        t.retention_bytes = KS_DEFAULT_RETENTION_BYTES;
        t.segment_bytes = KS_DEFAULT_SEGMENT_BYTES;
        return t;
}

/* Keys under a prefix. */
static size_t count_prefix(ks_kv_t *kv, const char *prefix)
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

TEST(meta_large_topic_takes_several_transactions)
{
        ks_kv_t *kv = NULL;
        ks_meta_t *m = NULL;
        REQUIRE_EQ_INT(ks_kv_memory_new(NULL, &kv), 0);
        REQUIRE_EQ_INT(ks_meta_open(kv, &m), 0);

        /* 300 partitions: 600 partition keys + the config, > 128 per txn. */
        ks_topic_t t = topic_named("wide", 300);
        REQUIRE_EQ_INT(ks_meta_topic_create(m, &t), 0);
        CHECK_EQ_INT(count_prefix(kv, "/kafscale/topics/wide/"), 601);
        ks_topic_t again = topic_named("wide", 2);
        CHECK_EQ_INT(ks_meta_topic_create(m, &again), KS_ERR__EXISTS);

        REQUIRE_EQ_INT(ks_meta_topic_add_partitions(m, &t, 1000), 0);
        CHECK_EQ_INT(count_prefix(kv, "/kafscale/topics/wide/"), 2001);
        ks_topic_t got;
        REQUIRE_EQ_INT(ks_meta_topic_load(m, "wide", &got), 0);
        CHECK_EQ_INT(got.partitions, 1000);
        ks_partition_meta_t pm;
        REQUIRE_EQ_INT(ks_meta_partition_load(m, "wide", 999, &pm), 0);
        CHECK_EQ_INT(pm.next_offset, 0);
        ks_partition_meta_free(&pm);

        /* A stale grow (old mod_rev) writes nothing visible. */
        ks_topic_t stale = t;
        stale.mod_rev = 1;
        CHECK_EQ_INT(ks_meta_topic_add_partitions(m, &stale, 1200), KS_ERR__CONFLICT);
        REQUIRE_EQ_INT(ks_meta_topic_load(m, "wide", &got), 0);
        CHECK_EQ_INT(got.partitions, 1000);

        /* Trimming more segments than one transaction holds. */
        int64_t bases[300];
        for (int i = 0; i < 300; i++)
                bases[i] = i;
        CHECK_EQ_INT(ks_meta_partition_trim(m, "wide", 0, bases, 300), 0);

        REQUIRE_EQ_INT(ks_meta_topic_delete(m, "wide", NULL), 0);
        CHECK_EQ_INT(count_prefix(kv, "/kafscale/topics/wide/"), 0);
        ks_meta_close(m);
        ks_kv_destroy(kv);
}

/* A TopicConfig as a tool that knows only KafScale's schema writes it. */
static size_t foreign_config(uint8_t *buf, size_t cap, const char *name, int32_t parts, const char *cfg_key,
                             const char *cfg_val)
{
        Kafscale__Metadata__TopicConfig tc = KAFSCALE__METADATA__TOPIC_CONFIG__INIT;
        Kafscale__Metadata__TopicConfig__ConfigEntry e = KAFSCALE__METADATA__TOPIC_CONFIG__CONFIG_ENTRY__INIT;
        Kafscale__Metadata__TopicConfig__ConfigEntry *ep = &e;
        tc.name = (char *)name;
        tc.partitions = parts;
        if (cfg_key) {
                e.key = (char *)cfg_key;
                e.value = (char *)cfg_val;
                tc.n_config = 1;
                tc.config = &ep;
        }
        size_t len = kafscale__metadata__topic_config__get_packed_size(&tc);
        if (len > cap)
                return 0;
        kafscale__metadata__topic_config__pack(&tc, buf);
        return len;
}

TEST(meta_topic_written_by_another_tool)
{
        ks_log_level_t saved = ks_log_level;
        ks_log_set_level(KS_LOG_ERROR);
        ks_kv_t *kv = NULL;
        ks_meta_t *m = NULL;
        REQUIRE_EQ_INT(ks_kv_memory_new(NULL, &kv), 0);
        REQUIRE_EQ_INT(ks_meta_open(kv, &m), 0);

        uint8_t buf[256];
        size_t len = foreign_config(buf, sizeof(buf), "ext", 3, "retention.bytes", "1048576");
        REQUIRE(len > 0);
        const char *key = "/kafscale/topics/ext/config";
        REQUIRE_EQ_INT(ks_kv_put(kv, key, strlen(key), buf, len, 0, NULL), 0);
        ks_topic_t t;
        REQUIRE_EQ_INT(ks_meta_topic_load(m, "ext", &t), 0);
        CHECK_EQ_INT(t.partitions, 3);
        CHECK_EQ_INT(t.replication_factor, 1);
        CHECK_EQ_INT(t.retention_ms, KS_DEFAULT_RETENTION_MS);   /* 0 = absent */
        CHECK_EQ_INT(t.retention_bytes, 1048576);                /* the map wins */
        CHECK_EQ_INT(t.explicit_configs, KS_TOPIC_CFG_RETENTION_BYTES);
        CHECK_EQ_INT(t.segment_bytes, KS_DEFAULT_SEGMENT_BYTES);
        static const ks_uuid_t zero;
        CHECK(!ks_uuid_eq(&t.id, &zero));

        /* The derived id is stable (every broker derives the same). */
        ks_meta_t *other = NULL;
        REQUIRE_EQ_INT(ks_meta_open(kv, &other), 0);
        ks_topic_t t2;
        REQUIRE(ks_meta_topic_get(other, (ks_str_t){ "ext", 3 }, &t2));
        CHECK(ks_uuid_eq(&t.id, &t2.id));
        CHECK(ks_meta_topic_get_by_id(other, t.id, &t2));
        ks_meta_close(other);

        /* Its partitions have no records yet: initialised empty, they can
         * be committed to. */
        ks_partition_meta_t pm;
        CHECK_EQ_INT(ks_meta_partition_load(m, "ext", 2, &pm), KS_ERR__NOT_FOUND);
        CHECK_EQ_INT(ks_meta_partition_init(m, "ext", 2), 0);
        CHECK_EQ_INT(ks_meta_partition_init(m, "ext", 2), 0); /* exists: unchanged */
        REQUIRE_EQ_INT(ks_meta_partition_load(m, "ext", 2, &pm), 0);
        CHECK_EQ_INT(pm.next_offset, 0);
        ks_partition_meta_free(&pm);
        ks_seg_meta_t seg = { .base_offset = 0, .last_offset = 9, .size_bytes = 500, .record_count = 10 };
        CHECK_EQ_INT(ks_meta_partition_commit(m, "ext", 2, 0, &seg, NULL), 0);

        /* A record naming another topic than its key, or with a bad config
         * value, is not a topic. */
        len = foreign_config(buf, sizeof(buf), "other", 1, NULL, NULL);
        const char *k2 = "/kafscale/topics/mismatch/config";
        REQUIRE_EQ_INT(ks_kv_put(kv, k2, strlen(k2), buf, len, 0, NULL), 0);
        CHECK_EQ_INT(ks_meta_topic_load(m, "mismatch", &t), KS_ERR__CORRUPT);
        len = foreign_config(buf, sizeof(buf), "badcfg", 1, "retention.ms", "soon");
        const char *k3 = "/kafscale/topics/badcfg/config";
        REQUIRE_EQ_INT(ks_kv_put(kv, k3, strlen(k3), buf, len, 0, NULL), 0);
        CHECK_EQ_INT(ks_meta_topic_load(m, "badcfg", &t), KS_ERR__CORRUPT);

        ks_meta_close(m);
        ks_kv_destroy(kv);
        ks_log_set_level(saved);
}

TEST(meta_commit_retried_after_unknown_outcome)
{
        ks_log_level_t saved = ks_log_level;
        ks_log_set_level(KS_LOG_WARN);
        ks_kv_t *kv = NULL;
        ks_meta_t *m = NULL;
        REQUIRE_EQ_INT(ks_kv_memory_new(NULL, &kv), 0);
        REQUIRE_EQ_INT(ks_meta_open(kv, &m), 0);
        ks_topic_t t = topic_named("c", 1);
        REQUIRE_EQ_INT(ks_meta_topic_create(m, &t), 0);

        ks_seg_meta_t seg = { .base_offset = 0, .last_offset = 99, .size_bytes = 4096, .record_count = 100,
                              .created_at_ms = 1767225600000LL };
        REQUIRE_EQ_INT(ks_meta_partition_commit(m, "c", 0, 0, &seg, NULL), 0);
        /* The same commit again (the first answer was lost): done. */
        seg.created_at_ms += 250; /* a retry rebuilds the record */
        CHECK_EQ_INT(ks_meta_partition_commit(m, "c", 0, 0, &seg, NULL), 0);
        /* Another segment at the same place: someone else wrote here. */
        ks_seg_meta_t other = seg;
        other.size_bytes = 4000;
        CHECK_EQ_INT(ks_meta_partition_commit(m, "c", 0, 0, &other, NULL), KS_ERR__CONFLICT);
        other = seg;
        other.last_offset = 49;
        other.record_count = 50;
        CHECK_EQ_INT(ks_meta_partition_commit(m, "c", 0, 0, &other, NULL), KS_ERR__CONFLICT);

        ks_partition_meta_t pm;
        REQUIRE_EQ_INT(ks_meta_partition_load(m, "c", 0, &pm), 0);
        CHECK_EQ_INT(pm.next_offset, 100);
        CHECK_EQ_INT(pm.nsegs, 1);
        ks_partition_meta_free(&pm);
        ks_meta_close(m);
        ks_kv_destroy(kv);
        ks_log_set_level(saved);
}

/* A commit whose outcome was unknown, retried while the store cannot be
 * read: the store's error (retriable), not a conflict that would make the
 * partition stop serving; once it can be read, the retry succeeds. */
TEST(meta_commit_retry_unreadable_store_is_not_a_conflict)
{
        ks_log_level_t saved = ks_log_level;
        ks_log_set_level(KS_LOG_ERROR);
        ks_kv_t *inner = NULL, *kv = NULL;
        ks_meta_t *m = NULL;
        ks_kv_faults_t f = { .seed = 1 };
        REQUIRE_EQ_INT(ks_kv_memory_new(NULL, &inner), 0);
        REQUIRE_EQ_INT(ks_kv_faulty_new(inner, &f, &kv), 0);
        REQUIRE_EQ_INT(ks_meta_open(kv, &m), 0);
        ks_topic_t t = topic_named("u", 1);
        REQUIRE_EQ_INT(ks_meta_topic_create(m, &t), 0);

        ks_seg_meta_t seg = { .base_offset = 0, .last_offset = 9, .size_bytes = 512, .record_count = 10,
                              .created_at_ms = 1767225600000LL };
        __atomic_store_n(&f.unknown_next[KS_KV_FAULT_TXN], 1, __ATOMIC_SEQ_CST);
        CHECK_EQ_INT(ks_meta_partition_commit(m, "u", 0, 0, &seg, NULL), KS_ERR__UNAVAILABLE);
        __atomic_store_n(&f.fail_next[KS_KV_FAULT_RANGE], 1, __ATOMIC_SEQ_CST);
        CHECK_EQ_INT(ks_meta_partition_commit(m, "u", 0, 0, &seg, NULL), KS_ERR__UNAVAILABLE);
        CHECK_EQ_INT(ks_meta_partition_commit(m, "u", 0, 0, &seg, NULL), 0);

        ks_partition_meta_t pm;
        REQUIRE_EQ_INT(ks_meta_partition_load(m, "u", 0, &pm), 0);
        CHECK_EQ_INT(pm.next_offset, 10);
        CHECK_EQ_INT(pm.nsegs, 1);
        ks_partition_meta_free(&pm);
        ks_meta_close(m);
        ks_kv_destroy(kv);
        ks_kv_destroy(inner);
        ks_log_set_level(saved);
}

/* A fenced commit applies only while the fence compare holds (cluster mode:
 * the committing broker still holds the partition's ownership lease). */
TEST(meta_commit_fenced_by_a_lease)
{
        ks_kv_t *kv = NULL;
        ks_meta_t *m = NULL;
        REQUIRE_EQ_INT(ks_kv_memory_new(NULL, &kv), 0);
        REQUIRE_EQ_INT(ks_meta_open(kv, &m), 0);
        ks_topic_t t = topic_named("f", 1);
        REQUIRE_EQ_INT(ks_meta_topic_create(m, &t), 0);
        int64_t lease = 0, other = 0;
        REQUIRE_EQ_INT(ks_kv_lease_grant(kv, 30, &lease), 0);
        REQUIRE_EQ_INT(ks_kv_lease_grant(kv, 30, &other), 0);
        const char *lk = "/kafscale/partition-leases/f/0";
        REQUIRE_EQ_INT(ks_kv_put(kv, lk, strlen(lk), "1", 1, lease, NULL), 0);
        ks_kv_cmp_t fence = { .key = lk, .key_len = strlen(lk), .target = KS_KV_CMP_LEASE, .op = KS_KV_EQUAL,
                              .number = lease };
        ks_seg_meta_t seg = { .base_offset = 0, .last_offset = 9, .size_bytes = 100, .record_count = 10,
                              .leader_epoch = 1 };
        CHECK_EQ_INT(ks_meta_partition_commit(m, "f", 0, 0, &seg, &fence), 0);
        /* The lease is gone (expired, revoked): the next commit is refused. */
        REQUIRE_EQ_INT(ks_kv_lease_revoke(kv, lease), 0);
        ks_seg_meta_t next = { .base_offset = 10, .last_offset = 19, .size_bytes = 100, .record_count = 10,
                               .leader_epoch = 1 };
        CHECK_EQ_INT(ks_meta_partition_commit(m, "f", 0, 10, &next, &fence), KS_ERR__CONFLICT);
        /* Another broker took the partition: still refused. */
        REQUIRE_EQ_INT(ks_kv_put(kv, lk, strlen(lk), "2", 1, other, NULL), 0);
        CHECK_EQ_INT(ks_meta_partition_commit(m, "f", 0, 10, &next, &fence), KS_ERR__CONFLICT);
        ks_partition_meta_t pm;
        REQUIRE_EQ_INT(ks_meta_partition_load(m, "f", 0, &pm), 0);
        CHECK_EQ_INT(pm.next_offset, 10);
        ks_partition_meta_free(&pm);
        ks_meta_close(m);
        ks_kv_destroy(kv);
}

static int32_t leader_is_7(void *opaque, const char *topic, int32_t partition, int32_t *epoch)
{
        *epoch = partition + 1;
        return 7;
}

/* The JSON cluster snapshot, as KafScale's tooling reads it. */
TEST(meta_cluster_snapshot)
{
        ks_kv_t *kv = NULL;
        ks_meta_t *m = NULL;
        REQUIRE_EQ_INT(ks_kv_memory_new(NULL, &kv), 0);
        REQUIRE_EQ_INT(ks_meta_open(kv, &m), 0);
        ks_topic_t a = topic_named("alpha", 2), z = topic_named("zeta", 1);
        REQUIRE_EQ_INT(ks_meta_topic_create(m, &z), 0);
        REQUIRE_EQ_INT(ks_meta_topic_create(m, &a), 0);
        const ks_snapshot_broker_t brokers[] = { { 7, "b7.example", 9092, NULL }, { 8, "b8.example", 9093, "r1" } };
        REQUIRE_EQ_INT(ks_meta_snapshot_write(m, brokers, 2, 7, leader_is_7, NULL), 0);
        REQUIRE_EQ_INT(ks_meta_snapshot_write(m, brokers, 2, 7, leader_is_7, NULL), 0); /* rewrite */

        ks_kv_result_t res;
        REQUIRE_EQ_INT(ks_kv_range(kv, KS_SNAPSHOT_KEY, strlen(KS_SNAPSHOT_KEY), NULL, 0, &res), 0);
        REQUIRE_EQ_INT(res.count, 1);
        json_object *root = json_tokener_parse((const char *)res.kvs[0].value);
        ks_kv_result_free(&res);
        REQUIRE(root != NULL);
        json_object *v, *b, *t, *p;
        REQUIRE(json_object_object_get_ex(root, "Brokers", &v));
        REQUIRE_EQ_INT(json_object_array_length(v), 2);
        b = json_object_array_get_idx(v, 1);
        CHECK(json_object_object_get_ex(b, "NodeID", &t) && json_object_get_int(t) == 8);
        CHECK(json_object_object_get_ex(b, "Host", &t) && !strcmp(json_object_get_string(t), "b8.example"));
        CHECK(json_object_object_get_ex(b, "Rack", &t) && !strcmp(json_object_get_string(t), "r1"));
        b = json_object_array_get_idx(v, 0);
        CHECK(json_object_object_get_ex(b, "Rack", &t) && t == NULL); /* null */
        CHECK(json_object_object_get_ex(root, "ControllerID", &v) && json_object_get_int(v) == 7);
        CHECK(json_object_object_get_ex(root, "ClusterID", &v) &&
              !strcmp(json_object_get_string(v), ks_meta_cluster_id(m)));
        REQUIRE(json_object_object_get_ex(root, "Topics", &v));
        REQUIRE_EQ_INT(json_object_array_length(v), 2);
        t = json_object_array_get_idx(v, 0); /* sorted by name */
        CHECK(json_object_object_get_ex(t, "Topic", &b) && !strcmp(json_object_get_string(b), "alpha"));
        CHECK(json_object_object_get_ex(t, "TopicID", &b) && json_object_array_length(b) == 16 &&
              json_object_get_int(json_object_array_get_idx(b, 0)) == a.id.b[0]);
        REQUIRE(json_object_object_get_ex(t, "Partitions", &b));
        REQUIRE_EQ_INT(json_object_array_length(b), 2);
        p = json_object_array_get_idx(b, 1);
        CHECK(json_object_object_get_ex(p, "Partition", &v) && json_object_get_int(v) == 1);
        CHECK(json_object_object_get_ex(p, "Leader", &v) && json_object_get_int(v) == 7);
        CHECK(json_object_object_get_ex(p, "LeaderEpoch", &v) && json_object_get_int(v) == 2);
        CHECK(json_object_object_get_ex(p, "ISR", &v) && json_object_array_length(v) == 1);
        json_object_put(root);
        ks_meta_close(m);
        ks_kv_destroy(kv);
}
