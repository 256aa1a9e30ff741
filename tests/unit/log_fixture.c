/*
 * log_fixture.c — see log_fixture.h.
 */
#include "log_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log/batch.h"
#include "util/bytes.h"

static size_t put_varint(uint8_t *p, int64_t v)
{
        return ks_uvarint_put(p, ks_zigzag64(v));
}

size_t build_batch_from(uint8_t *buf, int n, int64_t ts, int first_value)
{
        uint8_t *p = buf + 61;
        for (int i = 0; i < n; i++) {
                uint8_t rec[64];
                size_t r = 0;
                char val[16];
                int vl = snprintf(val, sizeof(val), "v%d", first_value + i);
                rec[r++] = 0;                     /* attributes */
                r += put_varint(rec + r, i);      /* timestamp delta */
                r += put_varint(rec + r, i);      /* offset delta */
                r += put_varint(rec + r, -1);     /* null key */
                r += put_varint(rec + r, vl);
                memcpy(rec + r, val, (size_t)vl);
                r += (size_t)vl;
                r += put_varint(rec + r, 0); /* headers */
                p += put_varint(p, (int64_t)r);
                memcpy(p, rec, r);
                p += r;
        }
        size_t total = (size_t)(p - buf);
        memset(buf, 0, 61);
        ks_be32_put(buf + 8, (uint32_t)(total - 12));
        buf[16] = 2;
        ks_be32_put(buf + 23, (uint32_t)(n - 1));
        ks_be64_put(buf + 27, (uint64_t)ts);
        ks_be64_put(buf + 35, (uint64_t)(ts + n - 1));
        ks_be64_put(buf + 43, (uint64_t)-1);
        ks_be16_put(buf + 51, (uint16_t)-1);
        ks_be32_put(buf + 53, (uint32_t)-1);
        ks_be32_put(buf + 57, (uint32_t)n);
        ks_be32_put(buf + 17, ks_batch_crc_compute(buf, total));
        return total;
}

size_t build_batch(uint8_t *buf, int n, int64_t ts)
{
        return build_batch_from(buf, n, ts, 0);
}

static void *loop_main(void *arg)
{
        ks_loop_run(arg);
        return NULL;
}

bool fixture_open_log(fixture_t *f)
{
        if (ks_log_open(&f->cfg, f->store, f->meta, &f->log) != 0)
                return false;
        return ks_log_topic_open(f->log, &f->topic) == 0;
}

bool fixture_init_on(fixture_t *f, int64_t cache_bytes, const char *sqlite_path)
{
        memset(f, 0, sizeof(*f));
        ks_err_t err = sqlite_path ? ks_kv_sqlite_open(sqlite_path, NULL, &f->kv_inner)
                                   : ks_kv_memory_new(NULL, &f->kv_inner);
        if (err || ks_kv_faulty_new(f->kv_inner, &f->kv_faults, &f->kv) || ks_meta_open(f->kv, &f->meta) ||
            ks_objstore_memory_new(&f->inner) || ks_objstore_faulty_new(f->inner, &f->faults, &f->store))
                return false;
        f->faults.seed = 12345;
        f->kv_faults.seed = 54321;
        f->cfg = (ks_log_config_t){ .ns = "default", .flush_interval_ms = 2, .segment_bytes = 65536,
                                    .cache_bytes = cache_bytes, .readahead_segments = 1, .upload_threads = 2,
                                    .max_batch_bytes = 1 << 20 };
        snprintf(f->topic.name, sizeof(f->topic.name), "t");
        f->topic.partitions = 2;
        f->topic.replication_factor = 1;
        f->topic.retention_ms = -1;
        f->topic.retention_bytes = -1;
        f->topic.segment_bytes = 1 << 30;
        if (ks_meta_topic_create(f->meta, &f->topic))
                return false;
        f->loop = ks_loop_new(0);
        if (!f->loop || pthread_create(&f->loop_thread, NULL, loop_main, f->loop))
                return false;
        return fixture_open_log(f);
}

bool fixture_init(fixture_t *f, int64_t cache_bytes)
{
        return fixture_init_on(f, cache_bytes, NULL);
}

void fixture_destroy(fixture_t *f)
{
        ks_log_close(f->log);
        ks_loop_stop(f->loop);
        pthread_join(f->loop_thread, NULL);
        ks_loop_destroy(f->loop);
        ks_objstore_destroy(f->store);
        ks_objstore_destroy(f->inner);
        ks_meta_close(f->meta);
        ks_kv_destroy(f->kv);
        ks_kv_destroy(f->kv_inner);
}

void on_durable(void *opaque, ks_err_t err)
{
        acks_t *a = opaque;
        __atomic_add_fetch(err ? &a->failed : &a->ok, 1, __ATOMIC_SEQ_CST);
}

bool wait_acks(acks_t *a, int n)
{
        for (int i = 0; i < 1000; i++) {
                if (__atomic_load_n(&a->ok, __ATOMIC_SEQ_CST) + __atomic_load_n(&a->failed, __ATOMIC_SEQ_CST) >= n)
                        return true;
                usleep(10000);
        }
        return false;
}

ks_err_t append_buf(fixture_t *f, int partition, uint8_t *buf, size_t len, int64_t *base, ks_produce_done_fn *done,
                    void *opaque)
{
        ks_batch_info_t bi;
        int n = 0;
        ks_err_t err = ks_batches_validate(buf, len, 1 << 20, &bi, 1, &n, NULL, 0);
        if (err)
                return err;
        ks_partition_t *p = ks_log_partition(f->log, KS_STR("t"), partition);
        if (!p)
                return KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
        err = ks_partition_append(p, buf, len, &bi, 1, base, f->loop, done, opaque);
        ks_partition_release(p);
        return err;
}

ks_err_t append(fixture_t *f, int partition, int nrec, acks_t *a, int64_t *base)
{
        uint8_t buf[4096];
        size_t len = build_batch(buf, nrec, 1700000000000LL);
        return append_buf(f, partition, buf, len, base, a ? on_durable : NULL, a);
}

int64_t read_batches(fixture_t *f, int partition, bool *contiguous, batch_fn *fn, void *opaque)
{
        ks_partition_t *p = ks_log_partition(f->log, KS_STR("t"), partition);
        if (!p)
                return -1;
        int64_t off = 0, count = 0;
        *contiguous = true;
        for (;;) {
                ks_read_t rd;
                ks_err_t err = ks_partition_read(p, off, 1 << 20, &rd);
                if (err == KS_ERR__NOT_FOUND) {
                        ks_segref_t *pin = NULL;
                        if (ks_partition_load_for_read(p, off, &pin) != 0)
                                break;
                        err = ks_segref_read(pin, off, 1 << 20, &rd);
                        ks_segref_release(pin);
                }
                if (err || rd.len == 0)
                        break;
                size_t pos = 0;
                while (pos < rd.len) {
                        ks_batch_info_t bi;
                        if (ks_batch_header_parse(rd.data + pos, rd.len - pos, &bi) != 0) {
                                *contiguous = false;
                                break;
                        }
                        if (bi.base_offset != off || ks_batch_crc_compute(rd.data + pos, bi.size) != bi.crc)
                                *contiguous = false;
                        if (fn)
                                fn(opaque, rd.data + pos, bi.size, &bi);
                        off = bi.base_offset + bi.last_offset_delta + 1;
                        count += bi.records_count;
                        pos += bi.size;
                }
                ks_segref_release(rd.ref);
        }
        ks_partition_release(p);
        return count;
}

int64_t read_all(fixture_t *f, int partition, bool *contiguous)
{
        return read_batches(f, partition, contiguous, NULL, NULL);
}
