/*
 * test_log.c — the partition log: group commit, acknowledgements after
 * durability, retries under injected object-store failures (no gaps, no
 * offsets handed out twice), recovery by a new log over the same stores,
 * cold reads through the object store.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log/batch.h"
#include "log/log.h"
#include "log_fixture.h"
#include "net/loop.h"
#include "storage/segment.h"
#include "test.h"
#include "util/bytes.h"

TEST(log_acks_only_after_commit_and_reads_back)
{
        fixture_t f;
        REQUIRE(fixture_init(&f, 64 << 20));
        acks_t a = { 0, 0 };
        int64_t base = -1, expect = 0;
        for (int i = 0; i < 50; i++) {
                REQUIRE_EQ_INT(append(&f, 0, 10, &a, &base), 0);
                CHECK_EQ_INT(base, expect); /* offsets handed out in order, no gaps */
                expect += 10;
        }
        REQUIRE(wait_acks(&a, 50));
        CHECK_EQ_INT(a.ok, 50);
        ks_partition_t *p = ks_log_partition(f.log, KS_STR("t"), 0);
        ks_partition_offsets_t po;
        ks_partition_offsets(p, &po);
        CHECK_EQ_INT(po.high_watermark, 500);
        CHECK_EQ_INT(po.log_start, 0);
        ks_partition_release(p);
        bool contiguous;
        CHECK_EQ_INT(read_all(&f, 0, &contiguous), 500);
        CHECK(contiguous);
        /* Group commit: far fewer objects than appends (.kfs + .index each). */
        CHECK(__atomic_load_n(&f.faults.puts, __ATOMIC_SEQ_CST) < 50);
        /* Nothing above the high watermark is readable. */
        p = ks_log_partition(f.log, KS_STR("t"), 1);
        ks_read_t rd;
        CHECK_EQ_INT(ks_partition_read(p, 0, 100, &rd), 0);
        CHECK_EQ_INT((int)rd.len, 0);
        CHECK_EQ_INT(ks_partition_read(p, 1, 100, &rd), KS_ERR_OFFSET_OUT_OF_RANGE);
        ks_partition_release(p);
        fixture_destroy(&f);
}

TEST(log_retries_failed_uploads_without_gaps)
{
        fixture_t f;
        REQUIRE(fixture_init(&f, 64 << 20));
        __atomic_store_n(&f.faults.fail_puts, 3, __ATOMIC_SEQ_CST);
        acks_t a = { 0, 0 };
        int64_t base;
        REQUIRE_EQ_INT(append(&f, 0, 5, &a, &base), 0);
        CHECK_EQ_INT(base, 0);
        REQUIRE(wait_acks(&a, 1));
        CHECK_EQ_INT(a.ok, 1);
        CHECK_EQ_INT(__atomic_load_n(&f.faults.injected, __ATOMIC_SEQ_CST), 3);
        REQUIRE_EQ_INT(append(&f, 0, 5, &a, &base), 0);
        CHECK_EQ_INT(base, 5);
        REQUIRE(wait_acks(&a, 2));

        /* While uploads keep failing, new appends are refused with a
         * retriable error instead of piling up. */
        __atomic_store_n(&f.faults.fail_puts, 1000000, __ATOMIC_SEQ_CST);
        REQUIRE_EQ_INT(append(&f, 0, 5, &a, &base), 0);
        CHECK_EQ_INT(base, 10);
        ks_err_t err = 0;
        for (int i = 0; i < 500 && !err; i++) {
                usleep(10000);
                int64_t b2;
                err = append(&f, 0, 1, NULL, &b2);
        }
        CHECK_EQ_INT(err, KS_ERR_KAFKA_STORAGE_ERROR);
        /* Storage comes back: the pending chunk commits, nothing is lost. */
        __atomic_store_n(&f.faults.fail_puts, 0, __ATOMIC_SEQ_CST);
        REQUIRE(wait_acks(&a, 3));
        CHECK_EQ_INT(a.ok, 3);
        bool contiguous;
        int64_t n = read_all(&f, 0, &contiguous);
        CHECK(n >= 15);
        CHECK(contiguous);
        fixture_destroy(&f);
}

TEST(log_random_faults_keep_every_acknowledged_record)
{
        fixture_t f;
        REQUIRE(fixture_init(&f, 64 << 20));
        __atomic_store_n(&f.faults.put_fail_pct, 30, __ATOMIC_SEQ_CST);
        acks_t a = { 0, 0 };
        int appended = 0;
        for (int i = 0; i < 200; i++) {
                int64_t base;
                if (append(&f, i % 2, 3, &a, &base) == 0)
                        appended++;
                if (i % 20 == 0)
                        usleep(5000);
        }
        __atomic_store_n(&f.faults.put_fail_pct, 0, __ATOMIC_SEQ_CST);
        REQUIRE(wait_acks(&a, appended));
        CHECK_EQ_INT(a.ok, appended);
        CHECK_EQ_INT(a.failed, 0);
        bool c0, c1;
        int64_t n = read_all(&f, 0, &c0) + read_all(&f, 1, &c1);
        CHECK_EQ_INT(n, 3 * appended);
        CHECK(c0 && c1);
        fixture_destroy(&f);
}

TEST(log_recovers_from_metadata_and_reads_cold_segments)
{
        fixture_t f;
        REQUIRE(fixture_init(&f, 0)); /* no cache: every read goes to the store */
        acks_t a = { 0, 0 };
        int64_t base;
        for (int i = 0; i < 30; i++)
                REQUIRE_EQ_INT(append(&f, 1, 7, &a, &base), 0);
        REQUIRE(wait_acks(&a, 30));
        ks_log_close(f.log);

        /* A new log over the same stores: what was acknowledged is there. */
        REQUIRE(fixture_open_log(&f));
        ks_partition_t *p = ks_log_partition(f.log, KS_STR("t"), 1);
        REQUIRE(p != NULL);
        ks_partition_offsets_t po;
        ks_partition_offsets(p, &po);
        CHECK_EQ_INT(po.high_watermark, 210);
        ks_read_t rd;
        CHECK_EQ_INT(ks_partition_read(p, 100, 1 << 20, &rd), KS_ERR__NOT_FOUND);
        ks_partition_release(p);
        int gets0 = __atomic_load_n(&f.faults.gets, __ATOMIC_SEQ_CST);
        bool contiguous;
        CHECK_EQ_INT(read_all(&f, 1, &contiguous), 210);
        CHECK(contiguous);
        CHECK(__atomic_load_n(&f.faults.gets, __ATOMIC_SEQ_CST) > gets0);
        /* The next offset continues after the recovered end. */
        REQUIRE_EQ_INT(append(&f, 1, 1, &a, &base), 0);
        CHECK_EQ_INT(base, 210);
        REQUIRE(wait_acks(&a, 31));

        /* ListOffsets-by-timestamp: the record with timestamp base+3 of the
         * first batch is offset 3. */
        p = ks_log_partition(f.log, KS_STR("t"), 1);
        int64_t off = -1, ts = -1;
        ks_err_t err = ks_partition_offset_for_timestamp(p, 1700000000003LL, &off, &ts);
        if (err == KS_ERR__NOT_FOUND) {
                REQUIRE_EQ_INT(ks_partition_load_for_timestamp(p, 1700000000003LL), 0);
                err = ks_partition_offset_for_timestamp(p, 1700000000003LL, &off, &ts);
        }
        CHECK(err == 0 || err == KS_ERR__NOT_FOUND); /* cache 0 may evict at once */
        if (err == 0) {
                CHECK_EQ_INT(off, 3);
                CHECK_EQ_INT(ts, 1700000000003LL);
        }
        ks_partition_release(p);
        fixture_destroy(&f);
}

TEST(log_topic_drop_fails_waiters_and_deletes_objects)
{
        fixture_t f;
        REQUIRE(fixture_init(&f, 64 << 20));
        acks_t a = { 0, 0 };
        int64_t base;
        REQUIRE_EQ_INT(append(&f, 0, 3, &a, &base), 0);
        REQUIRE(wait_acks(&a, 1));
        __atomic_store_n(&f.faults.put_delay_ms, 50, __ATOMIC_SEQ_CST);
        REQUIRE_EQ_INT(append(&f, 0, 3, &a, &base), 0);
        REQUIRE_EQ_INT(ks_meta_topic_delete(f.meta, "t", NULL), 0);
        ks_log_topic_drop(f.log, "t", &f.topic.id);
        REQUIRE(wait_acks(&a, 2));
        CHECK(ks_log_partition(f.log, KS_STR("t"), 0) == NULL);
        ks_objlist_t l;
        REQUIRE_EQ_INT(ks_objstore_list(f.inner, "default/t/", &l), 0);
        CHECK_EQ_INT((int)l.count, 0);
        ks_objlist_free(&l);
        fixture_destroy(&f);
}

TEST(log_retention_deletes_oldest_segments)
{
        fixture_t f;
        REQUIRE(fixture_init(&f, 64 << 20));
        acks_t a = { 0, 0 };
        int64_t base;
        /* Five segments of 10 records each (one flush per acknowledged append). */
        for (int i = 0; i < 5; i++) {
                REQUIRE_EQ_INT(append(&f, 0, 10, &a, &base), 0);
                REQUIRE(wait_acks(&a, i + 1));
        }
        ks_objlist_t l;
        REQUIRE_EQ_INT(ks_objstore_list(f.inner, "default/t/0/", &l), 0);
        CHECK_EQ_INT((int)l.count, 10);
        int64_t seg_size = 0;
        for (size_t i = 0; i < l.count; i++)
                if (strstr(l.items[i].key, ".kfs"))
                        seg_size = l.items[i].size; /* all five are the same size */
        ks_objlist_free(&l);

        /* retention.bytes = two segments: Kafka deletes the oldest segments
         * while what remains is still at least retention.bytes. */
        f.topic.retention_bytes = 2 * seg_size;
        ks_log_topic_configure(f.log, &f.topic);
        ks_log_enforce_retention(f.log);
        ks_partition_t *p = ks_log_partition(f.log, KS_STR("t"), 0);
        ks_partition_offsets_t po;
        ks_partition_offsets(p, &po);
        CHECK_EQ_INT(po.log_start, 30);
        CHECK_EQ_INT(po.high_watermark, 50);
        ks_read_t rd;
        CHECK_EQ_INT(ks_partition_read(p, 0, 1 << 20, &rd), KS_ERR_OFFSET_OUT_OF_RANGE);
        REQUIRE_EQ_INT(ks_partition_read(p, 30, 1 << 20, &rd), 0);
        CHECK(rd.len > 0);
        ks_segref_release(rd.ref);
        REQUIRE_EQ_INT(ks_objstore_list(f.inner, "default/t/0/", &l), 0);
        CHECK_EQ_INT((int)l.count, 4);
        ks_objlist_free(&l);

        /* The manifest in the metadata store agrees (what a restart sees). */
        ks_partition_meta_t pm;
        REQUIRE_EQ_INT(ks_meta_partition_load(f.meta, "t", 0, &pm), 0);
        CHECK_EQ_INT(pm.nsegs, 2);
        CHECK_EQ_INT(pm.segs[0].base_offset, 30);
        ks_partition_meta_free(&pm);

        /* retention.ms: the records are from 2023, far older than a second. */
        f.topic.retention_bytes = -1;
        f.topic.retention_ms = 1000;
        ks_log_topic_configure(f.log, &f.topic);
        ks_log_enforce_retention(f.log);
        ks_partition_offsets(p, &po);
        CHECK_EQ_INT(po.log_start, 50);
        CHECK_EQ_INT(po.high_watermark, 50);
        /* New records keep their offsets after the trimmed ones. */
        REQUIRE_EQ_INT(append(&f, 0, 1, &a, &base), 0);
        CHECK_EQ_INT(base, 50);
        REQUIRE(wait_acks(&a, 6));
        ks_partition_release(p);
        fixture_destroy(&f);
}

static bool has_object(ks_objstore_t *s, const char *key)
{
        ks_objbuf_t b = { 0 };
        ks_err_t err = ks_objstore_get(s, key, 0, -1, &b);
        ks_objbuf_free(&b);
        return err == 0;
}

TEST(log_retention_pass_deletes_orphan_objects)
{
        fixture_t f;
        REQUIRE(fixture_init(&f, 64 << 20));
        acks_t a = { 0, 0 };
        int64_t base;
        for (int i = 0; i < 3; i++) { /* segments at 0, 10, 20; committed end 30 */
                REQUIRE_EQ_INT(append(&f, 0, 10, &a, &base), 0);
                REQUIRE(wait_acks(&a, i + 1));
        }
        /* Orphans: an upload at another epoch whose commit failed, below the
         * end offset, and a .index whose deletion failed.  Not orphans: an
         * object at the end offset (an upload may be in flight), keys that
         * are not segments, a nested key. */
        const char *orphans[] = { "default/t/0/segment-00000000000000000010-e3.kfs",
                                  "default/t/0/segment-00000000000000000005.index" };
        const char *kept[] = { "default/t/0/segment-00000000000000000030-e3.kfs", "default/t/0/notes.txt",
                               "default/t/0/x/segment-00000000000000000001.kfs",
                               "default/t/1/segment-00000000000000000001.kfs" };
        struct iovec v = { (void *)"x", 1 };
        for (size_t i = 0; i < 2; i++)
                REQUIRE_EQ_INT(ks_objstore_put(f.inner, orphans[i], &v, 1), 0);
        for (size_t i = 0; i < 4; i++)
                REQUIRE_EQ_INT(ks_objstore_put(f.inner, kept[i], &v, 1), 0);
        ks_log_enforce_retention(f.log); /* no retention configured: only the sweep */
        for (size_t i = 0; i < 2; i++)
                CHECK(!has_object(f.inner, orphans[i]));
        for (size_t i = 0; i < 4; i++)
                CHECK(has_object(f.inner, kept[i]));
        /* The committed segments are untouched and readable. */
        for (int64_t b = 0; b < 30; b += 10) {
                char key[256];
                ks_segment_key(key, sizeof(key), "default", "t", 0, b, KS_SEGMENT_EXT_KFS);
                CHECK(has_object(f.inner, key));
                ks_segment_key(key, sizeof(key), "default", "t", 0, b, KS_SEGMENT_EXT_INDEX);
                CHECK(has_object(f.inner, key));
        }
        fixture_destroy(&f);
}

TEST(log_segments_stay_near_target_while_uploads_are_slow)
{
        fixture_t f;
        REQUIRE(fixture_init(&f, 64 << 20));
        /* Small target, slow uploads: appends keep arriving while a flush
         * is in flight; full chunks are sealed and wait their turn. */
        f.topic.segment_bytes = 4096;
        ks_log_topic_configure(f.log, &f.topic);
        __atomic_store_n(&f.faults.put_delay_ms, 20, __ATOMIC_SEQ_CST);
        acks_t a = { 0, 0 };
        int64_t base, expect = 0;
        for (int i = 0; i < 60; i++) {
                REQUIRE_EQ_INT(append(&f, 1, 20, &a, &base), 0);
                CHECK_EQ_INT(base, expect);
                expect += 20;
        }
        REQUIRE(wait_acks(&a, 60));
        CHECK_EQ_INT(a.ok, 60);
        ks_objlist_t l;
        REQUIRE_EQ_INT(ks_objstore_list(f.inner, "default/t/1/", &l), 0);
        int kfs = 0;
        int64_t biggest = 0, batch = 0;
        uint8_t probe[4096];
        batch = (int64_t)build_batch(probe, 20, 0);
        for (size_t i = 0; i < l.count; i++) {
                if (!strstr(l.items[i].key, ".kfs"))
                        continue;
                kfs++;
                if (l.items[i].size > biggest)
                        biggest = l.items[i].size;
        }
        ks_objlist_free(&l);
        /* At most one batch over the target, plus header and footer. */
        CHECK(biggest <= 4096 + batch + 48);
        CHECK(kfs >= 60 * batch / (4096 + batch));
        bool contiguous;
        CHECK_EQ_INT(read_all(&f, 1, &contiguous), 1200);
        CHECK(contiguous);
        fixture_destroy(&f);
}

TEST(log_cold_reads_of_large_segments_use_ranged_gets)
{
        fixture_t f;
        REQUIRE(fixture_init(&f, 0));
        acks_t a = { 0, 0 };
        int64_t base;
        /* One big segment: 40 batches flushed together. */
        __atomic_store_n(&f.faults.put_delay_ms, 30, __ATOMIC_SEQ_CST);
        REQUIRE_EQ_INT(append(&f, 0, 5, &a, &base), 0); /* occupies the uploader */
        for (int i = 0; i < 40; i++)
                REQUIRE_EQ_INT(append(&f, 0, 10, &a, &base), 0);
        REQUIRE(wait_acks(&a, 41));
        __atomic_store_n(&f.faults.put_delay_ms, 0, __ATOMIC_SEQ_CST);
        ks_log_close(f.log);

        /* Reopen: segments above 1000 bytes are read in 600-byte windows. */
        f.cfg.ranged_read_min_bytes = 1000;
        f.cfg.ranged_read_window = 600;
        REQUIRE(fixture_open_log(&f));
        int gets0 = __atomic_load_n(&f.faults.gets, __ATOMIC_SEQ_CST);
        bool contiguous;
        CHECK_EQ_INT(read_all(&f, 0, &contiguous), 405);
        CHECK(contiguous);
        /* Many small GETs (index + windows), not one per segment. */
        CHECK(__atomic_load_n(&f.faults.gets, __ATOMIC_SEQ_CST) - gets0 > 4);
        fixture_destroy(&f);
}

/* A partition written at leader epoch 3: batches carry the epoch, objects
 * are keyed by it, the manifest records it, cold reads and retention find
 * them; records written before the change keep their epoch-0 keys. */
TEST(log_segments_written_at_a_leader_epoch)
{
        fixture_t f;
        REQUIRE(fixture_init(&f, 0));
        acks_t a = { 0, 0 };
        int64_t base;
        REQUIRE_EQ_INT(append(&f, 0, 5, &a, &base), 0);
        REQUIRE(wait_acks(&a, 1));
        ks_partition_t *p = ks_log_partition(f.log, KS_STR("t"), 0);
        REQUIRE(p != NULL);
        ks_partition_set_leader_epoch(p, 3);
        ks_partition_release(p);
        for (int i = 0; i < 3; i++) {
                REQUIRE_EQ_INT(append(&f, 0, 5, &a, &base), 0);
                REQUIRE(wait_acks(&a, i + 2));
        }
        CHECK_EQ_INT(a.ok, 4);

        ks_objlist_t l;
        REQUIRE_EQ_INT(ks_objstore_list(f.inner, "default/t/0/", &l), 0);
        int plain = 0, at3 = 0;
        for (size_t i = 0; i < l.count; i++) {
                int64_t b;
                int32_t e;
                REQUIRE_EQ_INT(ks_segment_key_parse(l.items[i].key, &b, &e, NULL), 0);
                if (e == 0)
                        plain++;
                else if (e == 3)
                        at3++;
        }
        ks_objlist_free(&l);
        CHECK_EQ_INT(plain, 2); /* the first segment, .kfs + .index */
        CHECK_EQ_INT(at3, 6);

        ks_partition_meta_t pm;
        REQUIRE_EQ_INT(ks_meta_partition_load(f.meta, "t", 0, &pm), 0);
        REQUIRE_EQ_INT(pm.nsegs, 4);
        CHECK_EQ_INT(pm.segs[0].leader_epoch, 0);
        CHECK_EQ_INT(pm.segs[3].leader_epoch, 3);
        ks_partition_meta_free(&pm);

        /* Cold reads (no cache) after a restart find every segment, and the
         * batches of epoch 3 say so. */
        ks_log_close(f.log);
        REQUIRE(fixture_open_log(&f));
        bool contiguous;
        CHECK_EQ_INT(read_all(&f, 0, &contiguous), 20);
        CHECK(contiguous);
        p = ks_log_partition(f.log, KS_STR("t"), 0);
        ks_segref_t *pin = NULL;
        REQUIRE_EQ_INT(ks_partition_load_for_read(p, 15, &pin), 0);
        ks_read_t rd;
        REQUIRE_EQ_INT(ks_segref_read(pin, 15, 1 << 20, &rd), 0);
        ks_batch_info_t bi;
        REQUIRE_EQ_INT(ks_batch_header_parse(rd.data, rd.len, &bi), 0);
        CHECK_EQ_INT(bi.partition_leader_epoch, 3);
        ks_segref_release(rd.ref);
        ks_segref_release(pin);

        /* Retention removes the epoch-keyed objects too. */
        f.topic.retention_ms = 1000; /* the records are from 2023 */
        ks_log_topic_configure(f.log, &f.topic);
        ks_log_enforce_retention(f.log);
        REQUIRE_EQ_INT(ks_objstore_list(f.inner, "default/t/0/", &l), 0);
        CHECK_EQ_INT((int)l.count, 0);
        ks_objlist_free(&l);
        ks_partition_release(p);
        fixture_destroy(&f);
}

/* The fence of the ownership test: the partition's lease key must carry
 * the lease in `opaque`. */
static void lease_fence(void *opaque, const char *topic, int32_t partition, int32_t epoch, char *keybuf,
                        size_t keylen, ks_kv_cmp_t *cmp)
{
        int n = snprintf(keybuf, keylen, "/kafscale/partition-leases/%s/%d", topic, partition);
        *cmp = (ks_kv_cmp_t){ .key = keybuf, .key_len = (size_t)n, .target = KS_KV_CMP_LEASE, .op = KS_KV_EQUAL,
                              .number = *(const int64_t *)opaque };
}

/* Two logs over one metadata store and one object store, as two brokers in
 * cluster mode: partitions serve only while owned; a hand-over flushes and
 * commits first; a new owner continues after everything committed, at its
 * own epoch; an owner whose lease is gone acknowledges nothing more. */
TEST(log_partition_ownership_moves_between_brokers)
{
        fixture_t f;
        REQUIRE(fixture_init(&f, 64 << 20));
        ks_log_close(f.log);
        int64_t lease1 = 0, lease2 = 0;
        REQUIRE_EQ_INT(ks_kv_lease_grant(f.kv, 60, &lease1), 0);
        REQUIRE_EQ_INT(ks_kv_lease_grant(f.kv, 60, &lease2), 0);
        const char *lk = "/kafscale/partition-leases/t/0";
        REQUIRE_EQ_INT(ks_kv_put(f.kv, lk, strlen(lk), "1", 1, lease1, NULL), 0);
        f.cfg.owned_only = true;
        f.cfg.fence = lease_fence;
        f.cfg.fence_opaque = &lease1;
        REQUIRE(fixture_open_log(&f)); /* broker 1 */
        ks_log_config_t cfg2 = f.cfg;
        cfg2.fence_opaque = &lease2;
        ks_log_t *log2 = NULL; /* broker 2 */
        REQUIRE_EQ_INT(ks_log_open(&cfg2, f.store, f.meta, &log2), 0);
        REQUIRE_EQ_INT(ks_log_topic_open(log2, &f.topic), 0);

        /* Not owned yet: refused. */
        acks_t a = { 0, 0 };
        int64_t base = -1;
        CHECK_EQ_INT(append(&f, 0, 5, &a, &base), KS_ERR_NOT_LEADER_OR_FOLLOWER);
        ks_partition_t *p1 = ks_log_partition(f.log, KS_STR("t"), 0);
        ks_partition_t *p2 = ks_log_partition(log2, KS_STR("t"), 0);
        REQUIRE(p1 && p2);
        ks_read_t rd;
        CHECK_EQ_INT(ks_partition_read(p1, 0, 100, &rd), KS_ERR_NOT_LEADER_OR_FOLLOWER);
        CHECK(!ks_partition_serving(p1, NULL));

        /* Broker 1 owns it at epoch 1. */
        REQUIRE_EQ_INT(ks_partition_take_ownership(p1, 1), 0);
        int32_t epoch = -1;
        CHECK(ks_partition_serving(p1, &epoch));
        CHECK_EQ_INT(epoch, 1);
        for (int i = 0; i < 4; i++)
                REQUIRE_EQ_INT(append(&f, 0, 5, &a, &base), 0);
        REQUIRE(wait_acks(&a, 4));
        CHECK_EQ_INT(a.ok, 4);

        /* Hand-over: buffered records are committed before broker 1 lets go. */
        f.cfg.flush_interval_ms = 60000; /* (only affects later opens) */
        REQUIRE_EQ_INT(append(&f, 0, 5, &a, &base), 0);
        CHECK_EQ_INT(base, 20);
        ks_partition_give_up_ownership(p1, KS_GIVE_UP_HAND_OVER, 5000);
        REQUIRE(wait_acks(&a, 5));
        CHECK_EQ_INT(a.ok, 5);
        CHECK_EQ_INT(append(&f, 0, 5, &a, &base), KS_ERR_NOT_LEADER_OR_FOLLOWER);

        /* Broker 2 takes over at epoch 2 and continues after offset 25. */
        REQUIRE_EQ_INT(ks_kv_put(f.kv, lk, strlen(lk), "2", 1, lease2, NULL), 0);
        REQUIRE_EQ_INT(ks_partition_take_ownership(p2, 2), 0);
        uint8_t buf[4096];
        size_t len = build_batch(buf, 5, 1700000000000LL);
        ks_batch_info_t bi;
        int nb = 0;
        REQUIRE_EQ_INT(ks_batches_validate(buf, len, 1 << 20, &bi, 1, &nb, NULL, 0), 0);
        acks_t a2 = { 0, 0 };
        REQUIRE_EQ_INT(ks_partition_append(p2, buf, len, &bi, 1, &base, f.loop, on_durable, &a2), 0);
        CHECK_EQ_INT(base, 25);
        REQUIRE(wait_acks(&a2, 1));
        CHECK_EQ_INT(a2.ok, 1);

        /* Broker 1 believes it owns it again (a zombie: its lease no longer
         * holds the key): it reloads, appends are taken, but the commit is
         * fenced: nothing acknowledged, the partition stops serving, and
         * broker 2's records are untouched. */
        REQUIRE_EQ_INT(ks_partition_take_ownership(p1, 1), 0);
        acks_t z = { 0, 0 };
        REQUIRE_EQ_INT(append(&f, 0, 5, &z, &base), 0);
        CHECK_EQ_INT(base, 30); /* it reloaded broker 2's end offset */
        REQUIRE(wait_acks(&z, 1));
        CHECK_EQ_INT(z.ok, 0);
        CHECK_EQ_INT(z.failed, 1);
        CHECK(!ks_partition_serving(p1, NULL));
        ks_partition_meta_t pm;
        REQUIRE_EQ_INT(ks_meta_partition_load(f.meta, "t", 0, &pm), 0);
        CHECK_EQ_INT(pm.next_offset, 30);
        CHECK_EQ_INT(pm.segs[pm.nsegs - 1].leader_epoch, 2);
        ks_partition_meta_free(&pm);

        /* Ownership lost without a hand-over: buffered records are dropped,
         * their producers told NOT_LEADER_OR_FOLLOWER. */
        ks_log_close(log2);
        cfg2.flush_interval_ms = 60000;
        REQUIRE_EQ_INT(ks_log_open(&cfg2, f.store, f.meta, &log2), 0);
        REQUIRE_EQ_INT(ks_log_topic_open(log2, &f.topic), 0);
        ks_partition_release(p2);
        p2 = ks_log_partition(log2, KS_STR("t"), 0);
        REQUIRE_EQ_INT(ks_partition_take_ownership(p2, 2), 0);
        acks_t lost = { 0, 0 };
        REQUIRE_EQ_INT(ks_partition_append(p2, buf, len, &bi, 1, &base, f.loop, on_durable, &lost), 0);
        ks_partition_give_up_ownership(p2, KS_GIVE_UP_LOST, 0);
        REQUIRE(wait_acks(&lost, 1));
        CHECK_EQ_INT(lost.failed, 1);
        REQUIRE_EQ_INT(ks_meta_partition_load(f.meta, "t", 0, &pm), 0);
        CHECK_EQ_INT(pm.next_offset, 30);
        ks_partition_meta_free(&pm);

        /* Lost because the partition was deleted: from then on it is
         * unknown, not merely led elsewhere. */
        REQUIRE_EQ_INT(ks_partition_take_ownership(p2, 2), 0);
        acks_t gone = { 0, 0 };
        REQUIRE_EQ_INT(ks_partition_append(p2, buf, len, &bi, 1, &base, f.loop, on_durable, &gone), 0);
        ks_partition_give_up_ownership(p2, KS_GIVE_UP_DELETED, 0);
        REQUIRE(wait_acks(&gone, 1));
        CHECK_EQ_INT(gone.failed, 1);
        CHECK_EQ_INT(ks_partition_read(p2, 0, 100, &rd), KS_ERR_UNKNOWN_TOPIC_OR_PARTITION);
        CHECK_EQ_INT(ks_partition_append(p2, buf, len, &bi, 1, &base, f.loop, on_durable, &gone),
                     KS_ERR_UNKNOWN_TOPIC_OR_PARTITION);
        CHECK_EQ_INT(ks_partition_take_ownership(p2, 3), KS_ERR_UNKNOWN_TOPIC_OR_PARTITION);
        CHECK(!ks_partition_serving(p2, NULL));

        ks_partition_release(p1);
        ks_partition_release(p2);
        ks_log_close(log2);
        fixture_destroy(&f);
}

/* --- idempotent producers ------------------------------------------------------ */

/* Appends one batch of `nrec` records from producer (pid, epoch) starting
 * at sequence `seq`. */
static ks_err_t append_idem(fixture_t *f, int64_t pid, int16_t epoch, int32_t seq, int nrec, acks_t *a,
                            int64_t *base)
{
        uint8_t buf[4096];
        size_t len = build_batch(buf, nrec, 1700000000000LL);
        ks_be64_put(buf + 43, (uint64_t)pid);
        ks_be16_put(buf + 51, (uint16_t)epoch);
        ks_be32_put(buf + 53, (uint32_t)seq);
        ks_be32_put(buf + 17, ks_batch_crc_compute(buf, len));
        ks_batch_info_t bi;
        int n = 0;
        ks_err_t err = ks_batches_validate(buf, len, 1 << 20, &bi, 1, &n, NULL, 0);
        if (err)
                return err;
        ks_partition_t *p = ks_log_partition(f->log, KS_STR("t"), 0);
        if (!p)
                return KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
        err = ks_partition_append(p, buf, len, &bi, 1, base, f->loop, a ? on_durable : NULL, a);
        ks_partition_release(p);
        return err;
}

static int64_t hwm_of(fixture_t *f, int partition)
{
        ks_partition_t *p = ks_log_partition(f->log, KS_STR("t"), partition);
        ks_partition_offsets_t po;
        ks_partition_offsets(p, &po);
        ks_partition_release(p);
        return po.high_watermark;
}

TEST(log_idempotent_retry_of_a_batch_in_flight_waits_for_it)
{
        fixture_t f;
        REQUIRE(fixture_init(&f, 1 << 20));
        f.faults.put_delay_ms = 300; /* the original is still uploading when the retry arrives */
        acks_t a1 = { 0, 0 }, a2 = { 0, 0 };
        int64_t base = -1;
        REQUIRE_EQ_INT(append_idem(&f, 7, 0, 0, 5, &a1, &base), 0);
        CHECK_EQ_INT(base, 0);
        base = -1;
        CHECK_EQ_INT(append_idem(&f, 7, 0, 0, 5, &a2, &base), KS_ERR__EXISTS);
        CHECK_EQ_INT(base, 0);
        usleep(50000);
        CHECK_EQ_INT(__atomic_load_n(&a2.ok, __ATOMIC_SEQ_CST), 0); /* not durable yet: no answer */
        REQUIRE(wait_acks(&a1, 1) && wait_acks(&a2, 1));
        CHECK_EQ_INT(a1.ok + a2.ok, 2);
        CHECK_EQ_INT(hwm_of(&f, 0), 5); /* appended once */

        f.faults.put_delay_ms = 0;
        acks_t a3 = { 0, 0 };
        CHECK_EQ_INT(append_idem(&f, 7, 0, 7, 2, &a3, &base), KS_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER);
        REQUIRE_EQ_INT(append_idem(&f, 7, 1, 0, 2, &a3, &base), 0); /* new epoch from 0 */
        CHECK_EQ_INT(base, 5);
        CHECK_EQ_INT(append_idem(&f, 7, 0, 5, 2, &a3, &base), KS_ERR_INVALID_PRODUCER_EPOCH);
        REQUIRE(wait_acks(&a3, 1));
        CHECK_EQ_INT(hwm_of(&f, 0), 7);
        fixture_destroy(&f);
}

TEST(log_idempotent_state_rebuilt_from_the_manifest)
{
        fixture_t f;
        REQUIRE(fixture_init(&f, 1 << 20));
        acks_t a = { 0, 0 };
        int64_t base;
        /* Seven batches in separate segments: the last five are remembered. */
        for (int i = 0; i < 7; i++) {
                REQUIRE_EQ_INT(append_idem(&f, 99, 2, 3 * i, 3, &a, &base), 0);
                REQUIRE(wait_acks(&a, i + 1));
        }
        /* Another producer, and one that moved to a newer epoch. */
        REQUIRE_EQ_INT(append_idem(&f, 5, 0, 0, 1, &a, &base), 0);
        REQUIRE_EQ_INT(append_idem(&f, 5, 1, 0, 1, &a, &base), 0);
        REQUIRE(wait_acks(&a, 9));
        CHECK_EQ_INT(a.failed, 0);
        ks_log_close(f.log);

        REQUIRE(fixture_open_log(&f)); /* a restart: state from the manifest */
        acks_t b = { 0, 0 };
        for (int i = 2; i < 7; i++) {
                base = -1;
                CHECK_EQ_INT(append_idem(&f, 99, 2, 3 * i, 3, &b, &base), KS_ERR__EXISTS);
                CHECK_EQ_INT(base, 3 * i);
        }
        CHECK_EQ_INT(append_idem(&f, 99, 2, 3, 3, &b, &base), KS_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER);
        CHECK_EQ_INT(append_idem(&f, 5, 0, 1, 1, &b, &base), KS_ERR_INVALID_PRODUCER_EPOCH);
        CHECK_EQ_INT(append_idem(&f, 5, 1, 0, 1, &b, &base), KS_ERR__EXISTS);
        CHECK_EQ_INT(base, 22);
        REQUIRE_EQ_INT(append_idem(&f, 99, 2, 21, 3, &b, &base), 0);
        CHECK_EQ_INT(base, 23);
        REQUIRE(wait_acks(&b, 7));
        CHECK_EQ_INT(b.failed, 0);
        CHECK_EQ_INT(hwm_of(&f, 0), 26);
        fixture_destroy(&f);
}
