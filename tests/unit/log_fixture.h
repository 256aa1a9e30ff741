/*
 * log_fixture.h — a partition log for tests (test_log.c, test_faults.c):
 * topic "t" with two partitions, an event loop on its own thread, and both
 * stores behind their fault-injecting wrappers (storage/objstore_faulty.h,
 * meta/kv_faulty.h), plans empty until a test fills them.
 */
#ifndef KS_TESTS_UNIT_LOG_FIXTURE_H
#define KS_TESTS_UNIT_LOG_FIXTURE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "log/log.h"
#include "meta/kv_faulty.h"
#include "net/loop.h"
#include "storage/objstore_faulty.h"

typedef struct fixture {
        ks_kv_t *kv_inner, *kv; /* kv: the faulty wrapper over kv_inner */
        ks_kv_faults_t kv_faults;
        ks_meta_t *meta;
        ks_objstore_t *inner, *store; /* store: the faulty wrapper over inner */
        ks_objstore_faults_t faults;
        ks_log_t *log;
        ks_log_config_t cfg;
        ks_loop_t *loop;
        pthread_t loop_thread;
        ks_topic_t topic;
} fixture_t;

/* A v2 batch of n uncompressed records with null keys and values
 * "v<first_value + i>", timestamps ts + i; returns its size (buf: 4096
 * bytes hold 100 records). */
size_t build_batch_from(uint8_t *buf, int n, int64_t ts, int first_value);

/* The same with values "v0".."v<n-1>". */
size_t build_batch(uint8_t *buf, int n, int64_t ts);

/* Memory stores (SQLite at sqlite_path if not NULL), topic "t" created,
 * loop started, log opened (cache_bytes of segment cache). */
bool fixture_init_on(fixture_t *f, int64_t cache_bytes, const char *sqlite_path);
bool fixture_init(fixture_t *f, int64_t cache_bytes);

/* Opens a log over the fixture's stores (after ks_log_close(f->log)). */
bool fixture_open_log(fixture_t *f);

void fixture_destroy(fixture_t *f);

/* Acknowledgements, counted on the loop thread, read with atomics. */
typedef struct acks {
        int ok, failed;
} acks_t;

/* A ks_produce_done_fn counting into the acks_t `opaque`. */
void on_durable(void *opaque, ks_err_t err);

/* Waits (10 s at most) until n acknowledgements, good or bad, came. */
bool wait_acks(acks_t *a, int n);

/* Validates and appends the batch buf[0..len) to partition `partition` of
 * "t"; `done` (may be NULL) called on the fixture's loop. */
ks_err_t append_buf(fixture_t *f, int partition, uint8_t *buf, size_t len, int64_t *base, ks_produce_done_fn *done,
                    void *opaque);

/* Appends a batch of nrec records (build_batch), counted in a (may be NULL). */
ks_err_t append(fixture_t *f, int partition, int nrec, acks_t *a, int64_t *base);

/* Calls fn for every batch of a partition from offset 0 up to its high
 * watermark (loading cold segments); *contiguous false if a batch does not
 * start where the previous ended or fails its CRC.  Returns the record
 * count. */
typedef void(batch_fn)(void *opaque, const uint8_t *batch, size_t len, const ks_batch_info_t *bi);
int64_t read_batches(fixture_t *f, int partition, bool *contiguous, batch_fn *fn, void *opaque);

/* read_batches() without a callback. */
int64_t read_all(fixture_t *f, int partition, bool *contiguous);

#endif
