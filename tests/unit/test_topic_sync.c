/*
 * test_topic_sync.c — the partition logs follow topic changes made by
 * someone else.  Two typed metadata layers share one store, as two brokers
 * share one etcd: "ours" has a log kept in step by broker/topic_sync; the
 * changes come through "theirs", so ours learns of them only through the
 * store's watch.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/topic_sync.h"
#include "storage/objstore.h"
#include "test.h"
#include "util/log.h"

/* Well under KS_TOPIC_SYNC_PERIOD_MS: the watch, not the periodic pass,
 * must bring each change. */
#define WAIT_MS (KS_TOPIC_SYNC_PERIOD_MS / 3)

typedef struct sync_fx {
        ks_kv_t *kv;
        ks_meta_t *ours, *theirs;
        ks_objstore_t *store;
        ks_log_t *log;
        ks_topic_sync_t *sync;
} sync_fx_t;

static bool fx_init(sync_fx_t *f)
{
        memset(f, 0, sizeof(*f));
        ks_log_config_t cfg = { .ns = "default", .flush_interval_ms = 2, .segment_bytes = 65536,
                                .cache_bytes = 1 << 20, .readahead_segments = 1, .upload_threads = 1,
                                .max_batch_bytes = 1 << 20 };
        return ks_kv_memory_new(NULL, &f->kv) == 0 && ks_meta_open(f->kv, &f->ours) == 0 &&
               ks_meta_open(f->kv, &f->theirs) == 0 && ks_objstore_memory_new(&f->store) == 0 &&
               ks_log_open(&cfg, f->store, f->ours, &f->log) == 0 &&
               ks_topic_sync_start(f->log, f->ours, &f->sync) == 0;
}

static void fx_destroy(sync_fx_t *f)
{
        ks_topic_sync_stop(f->sync);
        if (f->log)
                ks_log_close(f->log);
        ks_objstore_destroy(f->store);
        ks_meta_close(f->theirs);
        ks_meta_close(f->ours);
        ks_kv_destroy(f->kv);
}

/* Waits until our log has `topic` open with `parts` partitions (0: closed)
 * and, when id is given, as that incarnation. */
static bool wait_open(sync_fx_t *f, const char *topic, int32_t parts, const ks_uuid_t *id)
{
        for (int waited = 0; waited < WAIT_MS; waited += 5) {
                ks_uuid_t have_id;
                int32_t have = 0;
                bool open = ks_log_topic_info(f->log, topic, &have_id, &have);
                if (parts == 0 ? !open : open && have == parts && (!id || ks_uuid_eq(&have_id, id)))
                        return true;
                nanosleep(&(struct timespec){ 0, 5000000 }, NULL);
        }
        return false;
}

static ks_topic_t new_topic(const char *name, int32_t parts)
{
        ks_topic_t t;
        memset(&t, 0, sizeof(t));
        snprintf(t.name, sizeof(t.name), "%s", name);
        t.partitions = parts;
        t.replication_factor = 1;
        t.retention_ms = -1;
        t.retention_bytes = -1;
        t.segment_bytes = 1 << 30;
        return t;
}

TEST(topic_sync_follows_changes_made_elsewhere)
{
        ks_log_level_t saved = ks_log_level;
        ks_log_set_level(KS_LOG_WARN);
        sync_fx_t f;
        REQUIRE(fx_init(&f));

        /* Created elsewhere: opened here with every partition. */
        ks_topic_t t = new_topic("orders", 3);
        REQUIRE_EQ_INT(ks_meta_topic_create(f.theirs, &t), 0);
        CHECK(wait_open(&f, "orders", 3, &t.id));
        ks_partition_t *p = ks_log_partition(f.log, (ks_str_t){ "orders", 6 }, 2);
        CHECK(p != NULL);
        if (p)
                ks_partition_release(p);

        /* Grown elsewhere (beyond one store transaction): the new
         * partitions open here. */
        REQUIRE_EQ_INT(ks_meta_topic_add_partitions(f.theirs, &t, 200), 0);
        CHECK(wait_open(&f, "orders", 200, &t.id));

        /* Deleted and re-created elsewhere: the old incarnation is closed,
         * the new one opened. */
        ks_uuid_t old_id = t.id;
        REQUIRE_EQ_INT(ks_meta_topic_delete(f.theirs, "orders", NULL), 0);
        CHECK(wait_open(&f, "orders", 0, NULL));
        t = new_topic("orders", 2);
        REQUIRE_EQ_INT(ks_meta_topic_create(f.theirs, &t), 0);
        CHECK(!ks_uuid_eq(&old_id, &t.id));
        CHECK(wait_open(&f, "orders", 2, &t.id));

        /* A delete and re-create both done before we look: the full pass
         * (ks_topic_sync_all) brings the log to the newest incarnation. */
        ks_topic_sync_stop(f.sync);
        f.sync = NULL;
        REQUIRE_EQ_INT(ks_meta_topic_delete(f.theirs, "orders", NULL), 0);
        t = new_topic("orders", 4);
        REQUIRE_EQ_INT(ks_meta_topic_create(f.theirs, &t), 0);
        ks_topic_t created_here = new_topic("local", 1);
        REQUIRE_EQ_INT(ks_meta_topic_create(f.ours, &created_here), 0);
        REQUIRE_EQ_INT(ks_topic_sync_start(f.log, f.ours, &f.sync), 0);
        /* Our registry has the newest incarnation once the watch delivered it. */
        for (int waited = 0; waited < WAIT_MS; waited += 5) {
                ks_topic_t cur;
                if (ks_meta_topic_get(f.ours, (ks_str_t){ "orders", 6 }, &cur) && ks_uuid_eq(&cur.id, &t.id))
                        break;
                nanosleep(&(struct timespec){ 0, 5000000 }, NULL);
        }
        CHECK_EQ_INT(ks_topic_sync_all(f.sync), 0);
        CHECK(wait_open(&f, "orders", 4, &t.id));
        CHECK(wait_open(&f, "local", 1, &created_here.id));

        fx_destroy(&f);
        ks_log_set_level(saved);
}
