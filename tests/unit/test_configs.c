/*
 * test_configs.c — the metadata side of the config and partition APIs:
 * ks_meta_topic_load / ks_meta_topic_update (read-modify-write guarded by
 * the config record's mod_rev, read-your-writes in the registry, the
 * explicit-config map of the record) and ks_meta_topic_add_partitions (one
 * transaction, existing partitions untouched), on every in-process backend;
 * and the log taking a topic's segment.bytes as its flush target
 * (ks_log_topic_configure, and partitions opened after growing).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kafscale_metadata.pb-c.h"
#include "log/batch.h"
#include "log/log.h"
#include "meta/metadata.h"
#include "test.h"
#include "util/bytes.h"

typedef struct cfg_backend {
        char dir[64];
        ks_kv_t *kv;
} cfg_backend_t;

static bool cfg_backend_open(cfg_backend_t *be, const char *name)
{
        memset(be, 0, sizeof(*be));
        if (!strcmp(name, "memory"))
                return ks_kv_memory_new(NULL, &be->kv) == 0;
        snprintf(be->dir, sizeof(be->dir), "/tmp/ks-configs-test-XXXXXX");
        if (!mkdtemp(be->dir))
                return false;
        char path[128];
        snprintf(path, sizeof(path), "%s/metadata.db", be->dir);
        return ks_kv_sqlite_open(path, NULL, &be->kv) == 0;
}

static bool cfg_backend_reopen(cfg_backend_t *be)
{
        ks_kv_destroy(be->kv);
        be->kv = NULL;
        char path[128];
        snprintf(path, sizeof(path), "%s/metadata.db", be->dir);
        return ks_kv_sqlite_open(path, NULL, &be->kv) == 0;
}

static void cfg_backend_close(cfg_backend_t *be)
{
        ks_kv_destroy(be->kv);
        if (be->dir[0]) {
                char cmd[160];
                snprintf(cmd, sizeof(cmd), "rm -rf '%s'", be->dir);
                if (system(cmd) != 0)
                        fprintf(stderr, "cannot remove %s\n", be->dir);
        }
}

static ks_topic_t new_topic(const char *name, int32_t partitions)
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

/* The `config` map of the stored record, as "k=v;k=v" in record order. */
static void stored_config_map(ks_kv_t *kv, const char *topic, char *out, size_t outlen)
{
        char key[300];
        snprintf(key, sizeof(key), "/kafscale/topics/%s/config", topic);
        out[0] = '\0';
        ks_kv_result_t res;
        if (ks_kv_range(kv, key, strlen(key), NULL, 0, &res) != 0)
                return;
        if (res.count == 1) {
                Kafscale__Metadata__TopicConfig *tc =
                        kafscale__metadata__topic_config__unpack(NULL, res.kvs[0].value_len, res.kvs[0].value);
                if (tc) {
                        size_t used = 0;
                        for (size_t i = 0; i < tc->n_config && used < outlen; i++) {
                                int w = snprintf(out + used, outlen - used, "%s%s=%s", i ? ";" : "",
                                                 tc->config[i]->key, tc->config[i]->value);
                                if (w < 0)
                                        break;
                                used += (size_t)w;
                        }
                        kafscale__metadata__topic_config__free_unpacked(tc, NULL);
                }
        }
        ks_kv_result_free(&res);
}

/* The ASCII value of `key`, or "" if absent. */
static void stored_value(ks_kv_t *kv, const char *key, char *out, size_t outlen)
{
        out[0] = '\0';
        ks_kv_result_t res;
        if (ks_kv_range(kv, key, strlen(key), NULL, 0, &res) != 0)
                return;
        if (res.count == 1)
                snprintf(out, outlen, "%.*s", (int)res.kvs[0].value_len, (const char *)res.kvs[0].value);
        ks_kv_result_free(&res);
}

static void check_update(const char *backend)
{
        cfg_backend_t be;
        REQUIRE(cfg_backend_open(&be, backend));
        ks_meta_t *m = NULL;
        REQUIRE_EQ_INT(ks_meta_open(be.kv, &m), 0);
        ks_topic_t t = new_topic("cfg", 3);
        REQUIRE_EQ_INT(ks_meta_topic_create(m, &t), 0);

        ks_topic_t a, stale;
        REQUIRE_EQ_INT(ks_meta_topic_load(m, "cfg", &a), 0);
        CHECK_EQ_INT(a.mod_rev, t.mod_rev);
        CHECK(ks_uuid_eq(&a.id, &t.id));
        CHECK_EQ_INT(a.partitions, 3);
        CHECK_EQ_INT(a.explicit_configs, 0);
        stale = a;

        /* Read-modify-write: the new values are visible at once. */
        a.retention_ms = 1000;
        a.segment_bytes = 4096;
        a.explicit_configs = KS_TOPIC_CFG_RETENTION_MS | KS_TOPIC_CFG_SEGMENT_BYTES;
        int64_t before = a.mod_rev;
        REQUIRE_EQ_INT(ks_meta_topic_update(m, &a), 0);
        CHECK(a.mod_rev > before);
        ks_topic_t got;
        REQUIRE(ks_meta_topic_get(m, KS_STR("cfg"), &got));
        CHECK_EQ_INT(got.retention_ms, 1000);
        CHECK_EQ_INT(got.segment_bytes, 4096);
        CHECK_EQ_INT(got.retention_bytes, KS_DEFAULT_RETENTION_BYTES);
        CHECK_EQ_INT(got.explicit_configs, KS_TOPIC_CFG_RETENTION_MS | KS_TOPIC_CFG_SEGMENT_BYTES);
        CHECK_EQ_INT(got.mod_rev, a.mod_rev);
        CHECK_EQ_INT(got.partitions, 3);
        CHECK(ks_uuid_eq(&got.id, &t.id));
        char map[256];
        stored_config_map(be.kv, "cfg", map, sizeof(map));
        CHECK_EQ_STR(map, "retention.ms=1000;segment.bytes=4096");

        /* A writer that read before that change loses: nothing changes. */
        stale.retention_bytes = 5;
        stale.explicit_configs = KS_TOPIC_CFG_RETENTION_BYTES;
        CHECK_EQ_INT(ks_meta_topic_update(m, &stale), KS_ERR__CONFLICT);
        REQUIRE(ks_meta_topic_get(m, KS_STR("cfg"), &got));
        CHECK_EQ_INT(got.retention_bytes, KS_DEFAULT_RETENTION_BYTES);
        CHECK_EQ_INT(got.retention_ms, 1000);
        CHECK_EQ_INT(got.mod_rev, a.mod_rev);
        stored_config_map(be.kv, "cfg", map, sizeof(map));
        CHECK_EQ_STR(map, "retention.ms=1000;segment.bytes=4096");

        /* ...and succeeds after re-reading. */
        REQUIRE_EQ_INT(ks_meta_topic_load(m, "cfg", &stale), 0);
        CHECK_EQ_INT(stale.mod_rev, a.mod_rev);
        CHECK_EQ_INT(stale.retention_ms, 1000);
        stale.retention_bytes = 5;
        stale.explicit_configs |= KS_TOPIC_CFG_RETENTION_BYTES;
        CHECK_EQ_INT(ks_meta_topic_update(m, &stale), 0);
        stored_config_map(be.kv, "cfg", map, sizeof(map));
        CHECK_EQ_STR(map, "retention.ms=1000;retention.bytes=5;segment.bytes=4096");

        /* Back to defaults: the explicit map empties. */
        REQUIRE_EQ_INT(ks_meta_topic_load(m, "cfg", &a), 0);
        a.retention_ms = KS_DEFAULT_RETENTION_MS;
        a.retention_bytes = KS_DEFAULT_RETENTION_BYTES;
        a.segment_bytes = KS_DEFAULT_SEGMENT_BYTES;
        a.explicit_configs = 0;
        CHECK_EQ_INT(ks_meta_topic_update(m, &a), 0);
        stored_config_map(be.kv, "cfg", map, sizeof(map));
        CHECK_EQ_STR(map, "");
        REQUIRE(ks_meta_topic_get(m, KS_STR("cfg"), &got));
        CHECK_EQ_INT(got.explicit_configs, 0);
        CHECK_EQ_INT(got.retention_ms, KS_DEFAULT_RETENTION_MS);

        /* Persisted: a new metadata layer over the same store sees it. */
        a.retention_ms = 77;
        a.explicit_configs = KS_TOPIC_CFG_RETENTION_MS;
        REQUIRE_EQ_INT(ks_meta_topic_update(m, &a), 0);
        ks_meta_close(m);
        m = NULL;
        if (be.dir[0])
                REQUIRE(cfg_backend_reopen(&be));
        REQUIRE_EQ_INT(ks_meta_open(be.kv, &m), 0);
        REQUIRE(ks_meta_topic_get(m, KS_STR("cfg"), &got));
        CHECK_EQ_INT(got.retention_ms, 77);
        CHECK_EQ_INT(got.explicit_configs, KS_TOPIC_CFG_RETENTION_MS);
        CHECK_EQ_INT(got.partitions, 3);

        /* A deleted topic: load says so, an update conflicts (and does not
         * resurrect it). */
        REQUIRE_EQ_INT(ks_meta_topic_load(m, "cfg", &a), 0);
        REQUIRE_EQ_INT(ks_meta_topic_delete(m, "cfg", NULL), 0);
        CHECK_EQ_INT(ks_meta_topic_load(m, "cfg", &got), KS_ERR__NOT_FOUND);
        a.retention_ms = 1;
        CHECK_EQ_INT(ks_meta_topic_update(m, &a), KS_ERR__CONFLICT);
        CHECK(!ks_meta_topic_get(m, KS_STR("cfg"), &got));
        CHECK_EQ_INT(ks_meta_topic_load(m, "never", &got), KS_ERR__NOT_FOUND);

        ks_meta_close(m);
        cfg_backend_close(&be);
}

TEST(configs_topic_update_memory) { check_update("memory"); }
TEST(configs_topic_update_sqlite) { check_update("sqlite"); }

/* Another broker's metadata layer over the same store sees an update
 * through its watch. */
TEST(configs_topic_update_reaches_watchers)
{
        cfg_backend_t be;
        REQUIRE(cfg_backend_open(&be, "memory"));
        ks_meta_t *m1 = NULL, *m2 = NULL;
        REQUIRE_EQ_INT(ks_meta_open(be.kv, &m1), 0);
        REQUIRE_EQ_INT(ks_meta_open(be.kv, &m2), 0);
        ks_topic_t t = new_topic("seen", 1);
        REQUIRE_EQ_INT(ks_meta_topic_create(m1, &t), 0);
        ks_topic_t a;
        REQUIRE_EQ_INT(ks_meta_topic_load(m1, "seen", &a), 0);
        a.segment_bytes = 12345;
        a.explicit_configs = KS_TOPIC_CFG_SEGMENT_BYTES;
        REQUIRE_EQ_INT(ks_meta_topic_update(m1, &a), 0);
        REQUIRE_EQ_INT(ks_meta_topic_add_partitions(m1, &a, 4), 0);
        ks_topic_t got;
        bool seen = false;
        for (int i = 0; i < 500 && !seen; i++) {
                seen = ks_meta_topic_get(m2, KS_STR("seen"), &got) && got.mod_rev == a.mod_rev;
                if (!seen)
                        usleep(10000);
        }
        REQUIRE(seen);
        CHECK_EQ_INT(got.segment_bytes, 12345);
        CHECK_EQ_INT(got.explicit_configs, KS_TOPIC_CFG_SEGMENT_BYTES);
        CHECK_EQ_INT(got.partitions, 4);
        ks_meta_close(m2);
        ks_meta_close(m1);
        cfg_backend_close(&be);
}

static void check_add_partitions(const char *backend)
{
        cfg_backend_t be;
        REQUIRE(cfg_backend_open(&be, backend));
        ks_meta_t *m = NULL;
        REQUIRE_EQ_INT(ks_meta_open(be.kv, &m), 0);
        ks_topic_t t = new_topic("grow", 2);
        t.retention_ms = 5000;
        t.explicit_configs = KS_TOPIC_CFG_RETENTION_MS;
        REQUIRE_EQ_INT(ks_meta_topic_create(m, &t), 0);

        /* Partition 1 has data: growing must not touch it. */
        ks_seg_meta_t seg = { .base_offset = 0, .last_offset = 9, .size_bytes = 100, .record_count = 10 };
        REQUIRE_EQ_INT(ks_meta_partition_commit(m, "grow", 1, 0, &seg, NULL), 0);

        ks_topic_t a, stale;
        REQUIRE_EQ_INT(ks_meta_topic_load(m, "grow", &a), 0);
        stale = a;
        CHECK_EQ_INT(ks_meta_topic_add_partitions(m, &a, 2), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_meta_topic_add_partitions(m, &a, 1), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_meta_topic_add_partitions(m, &a, KS_MAX_PARTITIONS + 1), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(a.partitions, 2);

        int64_t before = a.mod_rev;
        REQUIRE_EQ_INT(ks_meta_topic_add_partitions(m, &a, 5), 0);
        CHECK_EQ_INT(a.partitions, 5);
        CHECK(a.mod_rev > before);
        ks_topic_t got;
        REQUIRE(ks_meta_topic_get(m, KS_STR("grow"), &got));
        CHECK_EQ_INT(got.partitions, 5);
        CHECK_EQ_INT(got.mod_rev, a.mod_rev);
        CHECK(ks_uuid_eq(&got.id, &t.id));
        CHECK_EQ_INT(got.retention_ms, 5000); /* configs kept */
        CHECK_EQ_INT(got.explicit_configs, KS_TOPIC_CFG_RETENTION_MS);

        /* Every new partition has its records, written in the same revision
         * as the config. */
        for (int32_t p = 2; p < 5; p++) {
                char key[128];
                snprintf(key, sizeof(key), "/kafscale/topics/grow/partitions/%d", p);
                ks_kv_result_t res;
                REQUIRE_EQ_INT(ks_kv_range(be.kv, key, strlen(key), NULL, 0, &res), 0);
                REQUIRE_EQ_INT((int)res.count, 1);
                CHECK_EQ_INT(res.kvs[0].mod_rev, a.mod_rev);
                Kafscale__Metadata__PartitionState *ps =
                        kafscale__metadata__partition_state__unpack(NULL, res.kvs[0].value_len, res.kvs[0].value);
                REQUIRE(ps != NULL);
                CHECK_EQ_STR(ps->topic, "grow");
                CHECK_EQ_INT(ps->partition, p);
                kafscale__metadata__partition_state__free_unpacked(ps, NULL);
                ks_kv_result_free(&res);
                ks_partition_meta_t pm;
                REQUIRE_EQ_INT(ks_meta_partition_load(m, "grow", p, &pm), 0);
                CHECK_EQ_INT(pm.next_offset, 0);
                CHECK_EQ_INT(pm.nsegs, 0);
                ks_partition_meta_free(&pm);
        }
        ks_partition_meta_t pm;
        REQUIRE_EQ_INT(ks_meta_partition_load(m, "grow", 1, &pm), 0);
        CHECK_EQ_INT(pm.next_offset, 10);
        CHECK_EQ_INT(pm.nsegs, 1);
        ks_partition_meta_free(&pm);
        CHECK_EQ_INT(ks_meta_partition_load(m, "grow", 5, &pm), KS_ERR__NOT_FOUND);

        /* A grower that read the old count loses, writing nothing. */
        CHECK_EQ_INT(ks_meta_topic_add_partitions(m, &stale, 7), KS_ERR__CONFLICT);
        CHECK_EQ_INT(stale.partitions, 2);
        CHECK_EQ_INT(ks_meta_partition_load(m, "grow", 5, &pm), KS_ERR__NOT_FOUND);
        REQUIRE(ks_meta_topic_get(m, KS_STR("grow"), &got));
        CHECK_EQ_INT(got.partitions, 5);
        /* A config update from the old read conflicts too. */
        stale.retention_ms = 1;
        CHECK_EQ_INT(ks_meta_topic_update(m, &stale), KS_ERR__CONFLICT);

        /* Survives a restart of the metadata layer (and of the store). */
        ks_meta_close(m);
        m = NULL;
        if (be.dir[0])
                REQUIRE(cfg_backend_reopen(&be));
        REQUIRE_EQ_INT(ks_meta_open(be.kv, &m), 0);
        REQUIRE(ks_meta_topic_get(m, KS_STR("grow"), &got));
        CHECK_EQ_INT(got.partitions, 5);
        CHECK_EQ_INT(got.retention_ms, 5000);
        REQUIRE_EQ_INT(ks_meta_partition_load(m, "grow", 4, &pm), 0);
        CHECK_EQ_INT(pm.next_offset, 0);
        ks_partition_meta_free(&pm);

        /* Deleting the grown topic removes every partition's keys. */
        REQUIRE_EQ_INT(ks_meta_topic_delete(m, "grow", NULL), 0);
        char v[32];
        stored_value(be.kv, "/kafscale/topics/grow/partitions/4/next_offset", v, sizeof(v));
        CHECK_EQ_STR(v, "");
        ks_meta_close(m);
        cfg_backend_close(&be);
}

TEST(configs_add_partitions_memory) { check_add_partitions("memory"); }
TEST(configs_add_partitions_sqlite) { check_add_partitions("sqlite"); }

/* --- the log's flush target follows segment.bytes ---------------------------- */

static size_t cfg_put_varint(uint8_t *p, int64_t v)
{
        return ks_uvarint_put(p, ks_zigzag64(v));
}

/* A v2 batch of n uncompressed records with `vlen`-byte values. */
static size_t cfg_build_batch(uint8_t *buf, int n, int vlen)
{
        uint8_t *p = buf + 61;
        for (int i = 0; i < n; i++) {
                uint8_t rec[256];
                size_t r = 0;
                rec[r++] = 0;
                r += cfg_put_varint(rec + r, i);
                r += cfg_put_varint(rec + r, i);
                r += cfg_put_varint(rec + r, -1);
                r += cfg_put_varint(rec + r, vlen);
                memset(rec + r, 'x', (size_t)vlen);
                r += (size_t)vlen;
                r += cfg_put_varint(rec + r, 0);
                p += cfg_put_varint(p, (int64_t)r);
                memcpy(p, rec, r);
                p += r;
        }
        size_t total = (size_t)(p - buf);
        memset(buf, 0, 61);
        ks_be32_put(buf + 8, (uint32_t)(total - 12));
        buf[16] = 2;
        ks_be32_put(buf + 23, (uint32_t)(n - 1));
        ks_be64_put(buf + 27, (uint64_t)1000);
        ks_be64_put(buf + 35, (uint64_t)(1000 + n - 1));
        ks_be64_put(buf + 43, (uint64_t)-1);
        ks_be16_put(buf + 51, (uint16_t)-1);
        ks_be32_put(buf + 53, (uint32_t)-1);
        ks_be32_put(buf + 57, (uint32_t)n);
        ks_be32_put(buf + 17, ks_batch_crc_compute(buf, total));
        return total;
}

static ks_err_t append_records(ks_log_t *log, const char *topic, int32_t partition, int n)
{
        uint8_t buf[8192];
        size_t len = cfg_build_batch(buf, n, 100);
        ks_batch_info_t info;
        int n_ok = 0;
        ks_err_t err = ks_batches_validate(buf, len, 1 << 20, &info, 1, &n_ok, NULL, 0);
        if (err)
                return err;
        ks_partition_t *p = ks_log_partition(log, ks_str_c(topic), partition);
        if (!p)
                return KS_ERR__NOT_FOUND;
        int64_t base;
        err = ks_partition_append(p, buf, len, &info, 1, &base, NULL, NULL, NULL);
        ks_partition_release(p);
        return err;
}

static int64_t hwm_of(ks_log_t *log, const char *topic, int32_t partition)
{
        ks_partition_t *p = ks_log_partition(log, ks_str_c(topic), partition);
        if (!p)
                return -1;
        ks_partition_offsets_t o;
        ks_partition_offsets(p, &o);
        ks_partition_release(p);
        return o.high_watermark;
}

static bool wait_hwm(ks_log_t *log, const char *topic, int32_t partition, int64_t want)
{
        for (int i = 0; i < 500; i++) {
                if (hwm_of(log, topic, partition) >= want)
                        return true;
                usleep(10000);
        }
        return false;
}

TEST(configs_segment_bytes_caps_flush_target)
{
        ks_kv_t *kv = NULL;
        ks_meta_t *m = NULL;
        ks_objstore_t *store = NULL;
        ks_log_t *log = NULL;
        REQUIRE_EQ_INT(ks_kv_memory_new(NULL, &kv), 0);
        REQUIRE_EQ_INT(ks_meta_open(kv, &m), 0);
        REQUIRE_EQ_INT(ks_objstore_memory_new(&store), 0);
        /* Only size can trigger a flush within the test: the interval is a
         * minute. */
        ks_log_config_t cfg = { .ns = "default", .flush_interval_ms = 60000, .segment_bytes = 65536,
                                .cache_bytes = 1 << 20, .readahead_segments = 1, .upload_threads = 2,
                                .max_batch_bytes = 1 << 20 };
        REQUIRE_EQ_INT(ks_log_open(&cfg, store, m, &log), 0);
        ks_topic_t t = new_topic("seg", 1);
        REQUIRE_EQ_INT(ks_meta_topic_create(m, &t), 0);
        REQUIRE_EQ_INT(ks_log_topic_open(log, &t), 0);

        /* 5 records of ~100 bytes: far below 64 KiB, nothing flushes. */
        REQUIRE_EQ_INT(append_records(log, "seg", 0, 5), 0);
        usleep(200000);
        CHECK_EQ_INT(hwm_of(log, "seg", 0), 0);

        /* segment.bytes = 256: the buffered tail is already past it and is
         * flushed at once; later appends past it too. */
        REQUIRE_EQ_INT(ks_meta_topic_load(m, "seg", &t), 0);
        t.segment_bytes = 256;
        t.explicit_configs = KS_TOPIC_CFG_SEGMENT_BYTES;
        REQUIRE_EQ_INT(ks_meta_topic_update(m, &t), 0);
        ks_log_topic_configure(log, &t);
        CHECK(wait_hwm(log, "seg", 0, 5));
        REQUIRE_EQ_INT(append_records(log, "seg", 0, 5), 0);
        CHECK(wait_hwm(log, "seg", 0, 10));

        /* Partitions added later take the topic's value when opened. */
        REQUIRE_EQ_INT(ks_meta_topic_add_partitions(m, &t, 3), 0);
        REQUIRE_EQ_INT(ks_log_topic_open(log, &t), 0);
        REQUIRE_EQ_INT(append_records(log, "seg", 2, 5), 0);
        CHECK(wait_hwm(log, "seg", 2, 5));

        /* Back to a value above the log's own target: size flushes stop
         * again (the log's 64 KiB applies). */
        t.segment_bytes = KS_DEFAULT_SEGMENT_BYTES;
        t.explicit_configs = 0;
        REQUIRE_EQ_INT(ks_meta_topic_update(m, &t), 0);
        ks_log_topic_configure(log, &t);
        REQUIRE_EQ_INT(append_records(log, "seg", 1, 5), 0);
        usleep(200000);
        CHECK_EQ_INT(hwm_of(log, "seg", 1), 0);

        ks_log_close(log); /* flushes what is buffered */
        ks_objstore_destroy(store);
        ks_meta_close(m);
        ks_kv_destroy(kv);
}
