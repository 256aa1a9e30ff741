/*
 * batch.c — record batch (magic 2) validation and access (see batch.h).
 */
#include "log/batch.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

#include "util/crc32c.h"

/* Smallest batchLength: the header after the log overhead. */
#define MIN_BATCH_LENGTH (KS_BATCH_HEADER_SIZE - KS_BATCH_LOG_OVERHEAD)
/* Bytes up to and including magic. */
#define HEADER_UP_TO_MAGIC 17
/* Smallest length of a legacy (magic 0/1) message: Kafka's
 * RECORD_OVERHEAD_V0, its floor for any batch before it reads the magic. */
#define LEGACY_MIN_LENGTH 14

static void read_header(const uint8_t *p, ks_batch_info_t *i)
{
        i->base_offset = (int64_t)ks_be64_get(p);
        i->batch_length = (int32_t)ks_be32_get(p + 8);
        i->partition_leader_epoch = (int32_t)ks_be32_get(p + 12);
        i->magic = (int8_t)p[16];
        i->crc = ks_be32_get(p + 17);
        i->attributes = (int16_t)ks_be16_get(p + 21);
        i->last_offset_delta = (int32_t)ks_be32_get(p + 23);
        i->base_timestamp = (int64_t)ks_be64_get(p + 27);
        i->max_timestamp = (int64_t)ks_be64_get(p + 35);
        i->producer_id = (int64_t)ks_be64_get(p + 43);
        i->producer_epoch = (int16_t)ks_be16_get(p + 51);
        i->base_sequence = (int32_t)ks_be32_get(p + 53);
        i->records_count = (int32_t)ks_be32_get(p + 57);
}

/* Zig-zag varints with a fast path for the one-byte case (most lengths,
 * deltas and counts in real batches); the general case is bytes.h's. */
static inline int rd_varint(ks_rbuf_t *r, int32_t *v)
{
        if (r->p < r->end && *r->p < 0x80) {
                uint8_t b = *r->p++;
                *v = (int32_t)(b >> 1) ^ -(int32_t)(b & 1);
                return 0;
        }
        return ks_rbuf_varint(r, v);
}

static inline int rd_varlong(ks_rbuf_t *r, int64_t *v)
{
        if (r->p < r->end && *r->p < 0x80) {
                uint8_t b = *r->p++;
                *v = (int64_t)(b >> 1) ^ -(int64_t)(b & 1);
                return 0;
        }
        return ks_rbuf_varlong(r, v);
}

/* Reads a length-prefixed nullable byte field (varint length, -1: null). */
static inline int read_nullable(ks_rbuf_t *r, ks_bytes_t *out)
{
        int32_t n;
        if (rd_varint(r, &n) || n < -1)
                return -1;
        if (n == -1) {
                *out = KS_BYTES_NULL;
                return 0;
        }
        out->len = n;
        return ks_rbuf_take(r, (size_t)n, &out->ptr);
}

/* Walks @count records in [p, end).  With @cb, each record is handed out
 * after it has been checked; with @strict_deltas, offsetDelta must equal the
 * record's index.  Returns 0 when all records were read and end exactly at
 * @end, 1 when @cb asked to stop, -1 on malformed input (*why says what). */
static int walk_records(const uint8_t *p, const uint8_t *end, int32_t count, int64_t base_offset,
                        int64_t base_timestamp, int strict_deltas, int (*cb)(void *, const ks_record_view_t *),
                        void *opaque, const char **why)
{
        ks_rbuf_t r = ks_rbuf_make(p, (size_t)(end - p));
        ks_record_view_t v;

        for (int32_t i = 0; i < count; i++) {
                int32_t len;
                const uint8_t *rec;
                if (rd_varint(&r, &len) || len < 0) {
                        *why = "a record length is malformed or missing";
                        return -1;
                }
                if (ks_rbuf_take(&r, (size_t)len, &rec)) {
                        *why = "a record runs past the end of the batch";
                        return -1;
                }
                ks_rbuf_t f = ks_rbuf_make(rec, (size_t)len);
                uint8_t attr;
                if (ks_rbuf_u8(&f, &attr) || rd_varlong(&f, &v.timestamp_delta) ||
                    rd_varint(&f, &v.offset_delta) || read_nullable(&f, &v.key) ||
                    read_nullable(&f, &v.value) || rd_varint(&f, &v.headers_count) || v.headers_count < 0)
                        goto bad_record;
                v.headers = f.p;
                for (int32_t h = 0; h < v.headers_count; h++) {
                        int32_t klen;
                        ks_bytes_t hv;
                        if (rd_varint(&f, &klen) || klen < 0 || ks_rbuf_skip(&f, (size_t)klen) ||
                            read_nullable(&f, &hv))
                                goto bad_record;
                }
                if (ks_rbuf_left(&f) != 0)
                        goto bad_record;
                if (strict_deltas && v.offset_delta != i) {
                        *why = "a record's offsetDelta is not its position in the batch";
                        return -1;
                }
                if (cb) {
                        v.headers_len = (size_t)(f.p - v.headers);
                        v.index = i;
                        v.attributes = (int8_t)attr;
                        v.offset = (int64_t)((uint64_t)base_offset + (uint64_t)(int64_t)v.offset_delta);
                        v.timestamp = (int64_t)((uint64_t)base_timestamp + (uint64_t)v.timestamp_delta);
                        if (cb(opaque, &v))
                                return 1;
                }
        }
        if (ks_rbuf_left(&r) != 0) {
                *why = "bytes remain after the last record (recordsCount too small)";
                return -1;
        }
        return 0;

bad_record:
        *why = "a record's fields do not match its length";
        return -1;
}

/* The client-facing sentence of a failed validation (truncated to fit). */
__attribute__((format(printf, 3, 4))) static void set_msg(char *msg, size_t msglen, const char *fmt, ...)
{
        va_list ap;
        if (!msg || !msglen)
                return;
        va_start(ap, fmt);
        vsnprintf(msg, msglen, fmt, ap);
        va_end(ap);
}

uint32_t ks_batch_crc_compute(const uint8_t *batch, size_t size)
{
        return ks_crc32c(batch + KS_BATCH_CRC_START, size - KS_BATCH_CRC_START);
}

ks_err_t ks_batches_validate(const uint8_t *buf, size_t len, int32_t max_batch_bytes, ks_batch_info_t *infos,
                             int max_infos, int *count, char *msg, size_t msglen)
{
        ks_batch_info_t local;
        size_t pos = 0;
        int n = 0;
        ks_err_t err;

#define FAIL(code, ...)                                                                  \
        do {                                                                             \
                err = (code);                                                            \
                set_msg(msg, msglen, __VA_ARGS__);                                       \
                goto out;                                                                \
        } while (0)

        if (len == 0)
                FAIL(KS_ERR_INVALID_RECORD, "Produce requests must have at least one record batch per partition");

        while (pos < len) {
                const uint8_t *b = buf + pos;
                size_t left = len - pos;

                if (infos && n >= max_infos)
                        FAIL(KS_ERR_INVALID_RECORD,
                             "Produce requests may contain at most %d record batch(es) per partition", max_infos);
                /* Framing first, in the order Kafka's batch iterator
                 * reads it: length, magic, completeness. */
                if (left < HEADER_UP_TO_MAGIC)
                        FAIL(KS_ERR_CORRUPT_MESSAGE,
                             "Record batch %d is truncated: %zu bytes left, fewer than its header needs", n, left);
                int32_t blen = (int32_t)ks_be32_get(b + 8);
                if (blen < LEGACY_MIN_LENGTH)
                        FAIL(KS_ERR_CORRUPT_MESSAGE,
                             "Record batch %d has batchLength %" PRId32 ", less than the minimum %d", n, blen,
                             LEGACY_MIN_LENGTH);
                int8_t magic = (int8_t)b[16];
                if (magic < 0 || magic > KS_BATCH_MAGIC_V2)
                        FAIL(KS_ERR_CORRUPT_MESSAGE, "Record batch %d has invalid magic %d", n, magic);
                size_t size = KS_BATCH_LOG_OVERHEAD + (size_t)blen;
                if (size > left)
                        FAIL(KS_ERR_CORRUPT_MESSAGE,
                             "Record batch %d is truncated: batchLength %" PRId32 " needs %zu bytes, %zu left", n,
                             blen, size, left);
                if (magic != KS_BATCH_MAGIC_V2)
                        FAIL(KS_ERR_INVALID_RECORD,
                             "Record batch %d has magic %d: produce requests (v3+) may only contain record batches "
                             "with magic version 2",
                             n, magic);
                if (blen < MIN_BATCH_LENGTH)
                        FAIL(KS_ERR_CORRUPT_MESSAGE,
                             "Record batch %d has batchLength %" PRId32 ", less than the minimum %d", n, blen,
                             MIN_BATCH_LENGTH);

                ks_batch_info_t *info = infos ? &infos[n] : &local;
                if (max_batch_bytes > 0 && size > (size_t)max_batch_bytes)
                        FAIL(KS_ERR_MESSAGE_TOO_LARGE,
                             "Record batch %d is %zu bytes, more than the maximum %" PRId32
                             " bytes allowed (max.message.bytes)",
                             n, size, max_batch_bytes);

                read_header(b, info);
                info->pos = pos;
                info->size = size;

                uint32_t crc = ks_batch_crc_compute(b, size);
                if (crc != info->crc)
                        FAIL(KS_ERR_CORRUPT_MESSAGE,
                             "Record batch %d is corrupt (stored crc = 0x%08" PRIx32 ", computed 0x%08" PRIx32 ")", n,
                             info->crc, crc);

                /* Semantic checks, as LogValidator.validateBatch does for
                 * client batches. */
                if (info->base_offset != 0)
                        FAIL(KS_ERR_INVALID_RECORD,
                             "The baseOffset of record batch %d should be 0, but it is %" PRId64, n,
                             info->base_offset);
                int codec = ks_batch_compression(info);
                if (codec > KS_BATCH_COMPRESSION_ZSTD)
                        FAIL(KS_ERR_INVALID_RECORD, "Record batch %d uses unknown compression type %d", n, codec);
                if (info->attributes & KS_BATCH_ATTR_CONTROL)
                        FAIL(KS_ERR_INVALID_RECORD, "Clients are not allowed to write control records");
                if (info->attributes & KS_BATCH_ATTR_TRANSACTIONAL)
                        FAIL(KS_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT,
                             "Transactional records are not supported by this broker");
                /* The record count must agree with the offset range.  Kafka
                 * enforces this for every batch a client produces,
                 * compressed or not.  (Batches *stored* in a compacted log
                 * may legitimately hold fewer records than
                 * lastOffsetDelta + 1 — compaction keeps lastOffsetDelta so
                 * producer state survives — which is why readers of stored
                 * data, ks_batch_header_parse and the segment parser, do not
                 * check it.) */
                if (info->last_offset_delta < 0)
                        FAIL(KS_ERR_INVALID_RECORD, "Record batch %d has an invalid lastOffsetDelta %" PRId32, n,
                             info->last_offset_delta);
                if (info->records_count <= 0)
                        FAIL(KS_ERR_INVALID_RECORD, "Invalid reported count for record batch %d: %" PRId32, n,
                             info->records_count);
                if ((int64_t)info->last_offset_delta + 1 != info->records_count)
                        FAIL(KS_ERR_INVALID_RECORD,
                             "Inconsistent offset range [0, %" PRId32 "] and count of records %" PRId32
                             " in record batch %d",
                             info->last_offset_delta, info->records_count, n);
                if (info->producer_id >= 0 && info->base_sequence < 0)
                        FAIL(KS_ERR_INVALID_RECORD,
                             "Invalid sequence number %" PRId32 " in record batch %d with producerId %" PRId64,
                             info->base_sequence, n, info->producer_id);

                /* Uncompressed records are walked (framing only, no copy):
                 * a batch whose CRC is right but whose records do not parse
                 * would otherwise poison every consumer of the partition. */
                if (codec == KS_BATCH_COMPRESSION_NONE) {
                        const char *why = NULL;
                        if (walk_records(b + KS_BATCH_HEADER_SIZE, b + size, info->records_count, 0, 0, 1, NULL,
                                         NULL, &why) < 0)
                                FAIL(KS_ERR_INVALID_RECORD, "Record batch %d has invalid records: %s", n, why);
                }

                pos += size;
                n++;
        }
        err = KS_ERR_NONE;
        if (msg && msglen)
                msg[0] = '\0';
out:
        if (count)
                *count = n;
        return err;
#undef FAIL
}

ks_err_t ks_batch_header_parse(const uint8_t *p, size_t len, ks_batch_info_t *info)
{
        if (len < KS_BATCH_HEADER_SIZE)
                return KS_ERR__CORRUPT;
        read_header(p, info);
        if (info->magic != KS_BATCH_MAGIC_V2 || info->batch_length < MIN_BATCH_LENGTH ||
            (size_t)info->batch_length > len - KS_BATCH_LOG_OVERHEAD)
                return KS_ERR__CORRUPT;
        info->pos = 0;
        info->size = KS_BATCH_LOG_OVERHEAD + (size_t)info->batch_length;
        return KS_ERR_NONE;
}

void ks_batch_set_base_offset(uint8_t *batch, int64_t base_offset)
{
        ks_be64_put(batch, (uint64_t)base_offset);
}

void ks_batch_set_leader_epoch(uint8_t *batch, int32_t epoch)
{
        ks_be32_put(batch + 12, (uint32_t)epoch);
}

void ks_record_headers_begin(const ks_record_view_t *r, ks_record_header_iter_t *it)
{
        it->p = r->headers;
        it->end = r->headers + r->headers_len;
        it->left = r->headers_count;
}

int ks_record_headers_next(ks_record_header_iter_t *it, ks_str_t *key, ks_bytes_t *value)
{
        ks_rbuf_t r = ks_rbuf_make(it->p, (size_t)(it->end - it->p));
        int32_t klen;
        const uint8_t *k;

        if (it->left <= 0)
                return 0;
        /* Already checked by the walker; re-checked anyway so a forged view
         * cannot make this read out of bounds. */
        if (rd_varint(&r, &klen) || klen < 0 || ks_rbuf_take(&r, (size_t)klen, &k) ||
            read_nullable(&r, value)) {
                it->left = 0;
                return 0;
        }
        key->ptr = (const char *)k;
        key->len = klen;
        it->p = r.p;
        it->left--;
        return 1;
}

ks_err_t ks_batch_records_foreach(const uint8_t *batch, size_t size, int (*cb)(void *opaque, const ks_record_view_t *r),
                                  void *opaque)
{
        ks_batch_info_t info;
        const char *why = NULL;

        if (ks_batch_header_parse(batch, size, &info))
                return KS_ERR__CORRUPT;
        if (ks_batch_compression(&info) != KS_BATCH_COMPRESSION_NONE)
                return KS_ERR__INVALID_ARG;
        if (info.records_count < 0)
                return KS_ERR__CORRUPT;
        if (walk_records(batch + KS_BATCH_HEADER_SIZE, batch + info.size, info.records_count, info.base_offset,
                         info.base_timestamp, 0, cb, opaque, &why) < 0)
                return KS_ERR__CORRUPT;
        return KS_ERR_NONE;
}
