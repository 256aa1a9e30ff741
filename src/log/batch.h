/*
 * batch.h — Kafka record batches (magic 2): validation of what producers
 * send, header access, the two broker-assigned fields, and a record walker.
 *
 * Layout (all integers big-endian; Kafka protocol guide §5.3.1):
 *
 *   off  size  field
 *     0     8  baseOffset              } not covered by the CRC;
 *     8     4  batchLength             } "log overhead" = first 12 bytes
 *    12     4  partitionLeaderEpoch    not covered by the CRC
 *    16     1  magic (2)
 *    17     4  crc (CRC-32C of bytes 21 .. end)
 *    21     2  attributes
 *    23     4  lastOffsetDelta
 *    27     8  baseTimestamp
 *    35     8  maxTimestamp
 *    43     8  producerId
 *    51     2  producerEpoch
 *    53     4  baseSequence
 *    57     4  recordsCount
 *    61     …  records (compressed as a whole when attributes say so)
 *
 * A batch occupies 12 + batchLength bytes.  Offsets and epochs are assigned
 * by patching bytes 0..7 and 12..15 in place: neither is covered by the
 * CRC, so the producer's CRC stays valid and the batch is stored exactly as
 * received.
 *
 * Memory: nothing here allocates or copies; views point into the caller's
 * buffer and live as long as it does.  Every function is reentrant.
 */
#ifndef KS_LOG_BATCH_H
#define KS_LOG_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "util/bytes.h"
#include "util/err.h"

#define KS_BATCH_LOG_OVERHEAD   12 /* baseOffset + batchLength */
#define KS_BATCH_HEADER_SIZE    61 /* everything before the records */
#define KS_BATCH_MAGIC_V2       2
#define KS_BATCH_CRC_OFFSET     17 /* the crc field */
#define KS_BATCH_CRC_START      21 /* the CRC covers [21, 12 + batchLength) */

/* attributes */
#define KS_BATCH_ATTR_COMPRESSION_MASK 0x07 /* 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd */
#define KS_BATCH_ATTR_TIMESTAMP_TYPE   0x08 /* 1: LogAppendTime */
#define KS_BATCH_ATTR_TRANSACTIONAL    0x10
#define KS_BATCH_ATTR_CONTROL          0x20
#define KS_BATCH_ATTR_DELETE_HORIZON   0x40

enum {
        KS_BATCH_COMPRESSION_NONE   = 0,
        KS_BATCH_COMPRESSION_GZIP   = 1,
        KS_BATCH_COMPRESSION_SNAPPY = 2,
        KS_BATCH_COMPRESSION_LZ4    = 3,
        KS_BATCH_COMPRESSION_ZSTD   = 4,
};

/* The header fields of one batch and where it sits in the buffer it was
 * read from. */
typedef struct ks_batch_info {
        int64_t base_offset;
        int32_t batch_length;
        int32_t partition_leader_epoch;
        int8_t magic;
        uint32_t crc;
        int16_t attributes;
        int32_t last_offset_delta;
        int64_t base_timestamp;
        int64_t max_timestamp;
        int64_t producer_id;
        int16_t producer_epoch;
        int32_t base_sequence;
        int32_t records_count;
        size_t pos;  /* offset of the batch within the buffer */
        size_t size; /* 12 + batch_length */
} ks_batch_info_t;

static inline int ks_batch_compression(const ks_batch_info_t *b)
{
        return b->attributes & KS_BATCH_ATTR_COMPRESSION_MASK;
}

/* Validates the `records` field of one partition of a Produce request
 * (v3+): @buf must be exactly a sequence of one or more whole magic-2
 * batches.  One pass over the batches: per batch the header is checked,
 * the CRC computed, and — for uncompressed batches — every record's
 * framing walked (no allocation, no copy; the walk reads only the record
 * headers, so a batch of large records costs little more than its CRC).
 *
 * Checks, in this order, and the error each failure returns (Kafka's
 * answer to the same input — ProduceRequest.validateRecords,
 * ByteBufferLogInputStream, UnifiedLog.analyzeAndValidateRecords,
 * LogValidator.validateBatch/validateRecord — unless noted):
 *
 *   no bytes at all                                         INVALID_RECORD
 *   framing: fewer than 17 bytes left, batchLength below
 *     14 (the legacy minimum), magic outside 0..2, or the
 *     batch running past the end of @buf — which includes
 *     trailing bytes after the last whole batch (Kafka drops
 *     a trailing partial batch silently; we refuse it, a
 *     correct client never sends one)                       CORRUPT_MESSAGE
 *   magic 0 or 1 (a whole legacy message set)               INVALID_RECORD
 *   batchLength below 49 (the v2 header)                    CORRUPT_MESSAGE
 *   12 + batchLength > @max_batch_bytes (if > 0)            MESSAGE_TOO_LARGE
 *   CRC-32C mismatch                                        CORRUPT_MESSAGE
 *   baseOffset != 0 (clients always send 0)                 INVALID_RECORD
 *   compression codec 5..7 (undefined; Kafka fails with an
 *     internal error — we answer the non-retriable code)    INVALID_RECORD
 *   control batch (attributes bit 5)                        INVALID_RECORD
 *   transactional batch (bit 4): this broker has no
 *     transactions; Kafka answers a log whose format cannot
 *     hold transactional records this way                   UNSUPPORTED_FOR_MESSAGE_FORMAT
 *   lastOffsetDelta < 0, recordsCount <= 0, or
 *     lastOffsetDelta + 1 != recordsCount                   INVALID_RECORD
 *   producerId >= 0 with baseSequence < 0                   INVALID_RECORD
 *   uncompressed records that do not parse, do not number
 *     recordsCount, do not end exactly at the batch end
 *     (all as Kafka), or whose offsetDelta is not their
 *     index (ours: Kafka stores such a batch as is)         INVALID_RECORD
 *   more than @max_infos batches (when @infos is given)     INVALID_RECORD
 *
 * CORRUPT_MESSAGE is retriable for clients (bytes damaged in transit may
 * arrive intact next time); INVALID_RECORD and the others are not (the
 * client built the batch wrong and a retry cannot help).
 *
 * Produce v3+ in Apache Kafka allows exactly one batch per partition;
 * this function accepts several back to back.  Pass @max_infos == 1 to get
 * Kafka's rule (a second batch then fails with INVALID_RECORD).
 *
 * @infos (may be NULL: validate without collecting, no limit on the count)
 * receives up to @max_infos batch headers; *@count (may be NULL) the number
 * of batches that passed — on failure, the index of the failing batch.
 * @msg (may be NULL) receives one sentence for the client's error message
 * (ProduceResponse ErrorMessage), NUL-terminated and truncated to @msglen.
 * Returns KS_ERR_NONE or one of the wire codes above. */
ks_err_t ks_batches_validate(const uint8_t *buf, size_t len, int32_t max_batch_bytes, ks_batch_info_t *infos,
                             int max_infos, int *count, char *msg, size_t msglen);

/* Reads the header of the batch at @p, @len bytes available, into @info
 * (pos 0, size 12 + batchLength).  Checks only what is needed to walk
 * batches safely: the header is complete, magic is 2, batchLength >= 49
 * and the batch fits in @len.  No CRC check.  KS_ERR__CORRUPT otherwise
 * (meant for stored data; produce input goes through ks_batches_validate). */
ks_err_t ks_batch_header_parse(const uint8_t *p, size_t len, ks_batch_info_t *info);

/* CRC-32C of the bytes the batch's crc field covers.  @batch holds a whole
 * batch of @size >= KS_BATCH_HEADER_SIZE bytes. */
uint32_t ks_batch_crc_compute(const uint8_t *batch, size_t size);

/* Patch the two broker-assigned fields in place (outside the CRC).
 * @batch points at the start of a batch with at least 16 bytes. */
void ks_batch_set_base_offset(uint8_t *batch, int64_t base_offset);
void ks_batch_set_leader_epoch(uint8_t *batch, int32_t epoch);

/* One record of an uncompressed batch, as seen by ks_batch_records_foreach.
 * Views point into the batch. */
typedef struct ks_record_view {
        int32_t index;           /* position within the batch, 0-based */
        int8_t attributes;       /* unused by Kafka so far */
        int64_t timestamp_delta;
        int32_t offset_delta;
        int64_t offset;          /* baseOffset + offsetDelta */
        int64_t timestamp;       /* baseTimestamp + timestampDelta (wrapping) */
        ks_bytes_t key;          /* len -1: null */
        ks_bytes_t value;        /* len -1: null */
        int32_t headers_count;
        const uint8_t *headers;  /* the encoded headers (already checked) */
        size_t headers_len;
} ks_record_view_t;

/* Iterator over a record's headers. */
typedef struct ks_record_header_iter {
        const uint8_t *p, *end;
        int32_t left;
} ks_record_header_iter_t;

void ks_record_headers_begin(const ks_record_view_t *r, ks_record_header_iter_t *it);

/* Next header: key (never null) and value (len -1: null).  Returns 1 while
 * there is one, 0 at the end. */
int ks_record_headers_next(ks_record_header_iter_t *it, ks_str_t *key, ks_bytes_t *value);

/* Calls @cb for each record of the uncompressed batch at @batch (@size
 * bytes available, at least 12 + batchLength); @cb returns 0 to go on or
 * non-zero to stop (not an error).  Every record is checked before it is
 * handed out: its framing, its fields within its length, headers well
 * formed; and the records must number recordsCount and end exactly at the
 * batch end (checked after the last record).  No CRC check.
 * Returns KS_ERR_NONE, KS_ERR__CORRUPT (malformed; records already handed
 * out stay valid views) or KS_ERR__INVALID_ARG (the batch is compressed:
 * decompress first). */
ks_err_t ks_batch_records_foreach(const uint8_t *batch, size_t size, int (*cb)(void *opaque, const ks_record_view_t *r),
                                  void *opaque);

#endif
