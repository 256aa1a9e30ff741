/*
 * test_batch.c — record batch validation, patching and record decoding.
 *
 * Batches are built byte by byte here (ks_test_batch_build, also used by
 * test_segment.c), with the CRC from the portable CRC path, so the code
 * under test is checked against an independent writer.
 *
 * Setting KS_FUZZ_CORPUS_ROOT=<dir> (e.g. tests/fuzz/corpus) makes the
 * batch_write_fuzz_corpus test write seeds for tests/fuzz/fuzz_batches.c
 * into <dir>/fuzz_batches/.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log/batch.h"
#include "test.h"
#include "util/bytes.h"
#include "util/crc32c.h"

#define BASE_TS 1700000000000LL

size_t ks_test_batch_build(uint8_t *out, size_t cap, int64_t base_offset, int nrecords, int16_t attributes);
void ks_test_batch_fix_crc(uint8_t *batch, size_t size);

static size_t put_varint(uint8_t *p, int64_t v)
{
        return ks_uvarint_put(p, ks_zigzag64(v));
}

static size_t put_bytes(uint8_t *p, const char *s)
{
        if (!s)
                return put_varint(p, -1);
        size_t n = strlen(s);
        size_t k = put_varint(p, (int64_t)n);
        memcpy(p + k, s, n);
        return k + n;
}

void ks_test_batch_fix_crc(uint8_t *batch, size_t size)
{
        ks_be32_put(batch + 17, ks_crc32c_update_sw(0, batch + 21, size - 21));
}

/* A v2 batch at @base_offset with @nrecords records: record i has key
 * "key-i" (record 1: null key), value "value-i" (record 2: null value),
 * timestamp BASE_TS + i, and odd records one header "h-i": "hv-i".
 * Returns its size, or 0 if @cap is too small. */
size_t ks_test_batch_build(uint8_t *out, size_t cap, int64_t base_offset, int nrecords, int16_t attributes)
{
        uint8_t rec[256];
        size_t pos = 61;

        for (int i = 0; i < nrecords; i++) {
                char key[32], val[32], hk[32], hv[32];
                size_t r = 0;
                snprintf(key, sizeof(key), "key-%d", i);
                snprintf(val, sizeof(val), "value-%d", i);
                snprintf(hk, sizeof(hk), "h-%d", i);
                snprintf(hv, sizeof(hv), "hv-%d", i);
                rec[r++] = 0;                       /* attributes */
                r += put_varint(rec + r, i);        /* timestampDelta */
                r += put_varint(rec + r, i);        /* offsetDelta */
                r += put_bytes(rec + r, i == 1 ? NULL : key);
                r += put_bytes(rec + r, i == 2 ? NULL : val);
                if (i % 2) {
                        r += put_varint(rec + r, 1);
                        r += put_bytes(rec + r, hk);
                        r += put_bytes(rec + r, hv);
                } else {
                        r += put_varint(rec + r, 0);
                }
                if (pos + 5 + r > cap)
                        return 0;
                pos += put_varint(out + pos, (int64_t)r);
                memcpy(out + pos, rec, r);
                pos += r;
        }
        if (cap < 61)
                return 0;
        ks_be64_put(out, (uint64_t)base_offset);
        ks_be32_put(out + 8, (uint32_t)(pos - 12));
        ks_be32_put(out + 12, (uint32_t)-1); /* partitionLeaderEpoch */
        out[16] = 2;
        ks_be16_put(out + 21, (uint16_t)attributes);
        ks_be32_put(out + 23, (uint32_t)(nrecords - 1));
        ks_be64_put(out + 27, (uint64_t)BASE_TS);
        ks_be64_put(out + 35, (uint64_t)(BASE_TS + (nrecords > 0 ? nrecords - 1 : 0)));
        ks_be64_put(out + 43, (uint64_t)-1); /* producerId */
        ks_be16_put(out + 51, (uint16_t)-1); /* producerEpoch */
        ks_be32_put(out + 53, (uint32_t)-1); /* baseSequence */
        ks_be32_put(out + 57, (uint32_t)nrecords);
        ks_test_batch_fix_crc(out, pos);
        return pos;
}

static ks_err_t validate(const uint8_t *buf, size_t len, int32_t max, char *msg, size_t msglen)
{
        int count = -1;
        return ks_batches_validate(buf, len, max, NULL, 0, &count, msg, msglen);
}

TEST(batch_validate_single)
{
        uint8_t buf[4096];
        ks_batch_info_t info[4];
        char msg[200] = "x";
        int count = -1;
        size_t n = ks_test_batch_build(buf, sizeof(buf), 0, 5, 0);
        REQUIRE(n > 61);

        REQUIRE_EQ_INT(ks_batches_validate(buf, n, 1 << 20, info, 4, &count, msg, sizeof(msg)), KS_ERR_NONE);
        CHECK_EQ_INT(count, 1);
        CHECK_EQ_STR(msg, "");
        CHECK_EQ_INT(info[0].base_offset, 0);
        CHECK_EQ_INT(info[0].batch_length, (int64_t)n - 12);
        CHECK_EQ_INT(info[0].partition_leader_epoch, -1);
        CHECK_EQ_INT(info[0].magic, 2);
        CHECK_EQ_INT(info[0].crc, ks_be32_get(buf + 17));
        CHECK_EQ_INT(info[0].attributes, 0);
        CHECK_EQ_INT(info[0].last_offset_delta, 4);
        CHECK_EQ_INT(info[0].base_timestamp, BASE_TS);
        CHECK_EQ_INT(info[0].max_timestamp, BASE_TS + 4);
        CHECK_EQ_INT(info[0].producer_id, -1);
        CHECK_EQ_INT(info[0].producer_epoch, -1);
        CHECK_EQ_INT(info[0].base_sequence, -1);
        CHECK_EQ_INT(info[0].records_count, 5);
        CHECK_EQ_INT(info[0].pos, 0);
        CHECK_EQ_INT(info[0].size, n);
        /* Exactly at the size limit passes. */
        CHECK_EQ_INT(validate(buf, n, (int32_t)n, NULL, 0), KS_ERR_NONE);
        /* No limit. */
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_NONE);
}

TEST(batch_validate_multiple)
{
        uint8_t buf[8192];
        ks_batch_info_t info[4];
        size_t sizes[3], len = 0;
        int count = -1;
        for (int i = 0; i < 3; i++) {
                sizes[i] = ks_test_batch_build(buf + len, sizeof(buf) - len, 0, 1 + 3 * i, 0);
                REQUIRE(sizes[i] > 0);
                len += sizes[i];
        }
        REQUIRE_EQ_INT(ks_batches_validate(buf, len, 1 << 20, info, 4, &count, NULL, 0), KS_ERR_NONE);
        CHECK_EQ_INT(count, 3);
        CHECK_EQ_INT(info[0].pos, 0);
        CHECK_EQ_INT(info[1].pos, sizes[0]);
        CHECK_EQ_INT(info[2].pos, sizes[0] + sizes[1]);
        CHECK_EQ_INT(info[2].size, sizes[2]);
        CHECK_EQ_INT(info[2].records_count, 7);

        /* Without infos: no limit on the count. */
        CHECK_EQ_INT(ks_batches_validate(buf, len, 1 << 20, NULL, 0, &count, NULL, 0), KS_ERR_NONE);
        CHECK_EQ_INT(count, 3);

        /* Kafka's one-batch rule via max_infos = 1. */
        char msg[200];
        CHECK_EQ_INT(ks_batches_validate(buf, len, 1 << 20, info, 1, &count, msg, sizeof(msg)),
                     KS_ERR_INVALID_RECORD);
        CHECK_EQ_INT(count, 1);
        CHECK(strstr(msg, "at most 1") != NULL);
}

TEST(batch_validate_empty_and_truncated)
{
        uint8_t buf[4096];
        char msg[200];
        size_t n = ks_test_batch_build(buf, sizeof(buf), 0, 3, 0);
        REQUIRE(n > 0);

        CHECK_EQ_INT(validate(NULL, 0, 0, msg, sizeof(msg)), KS_ERR_INVALID_RECORD);
        CHECK(msg[0] != '\0');
        /* Every proper prefix is refused as corrupt. */
        int bad = 0;
        for (size_t len = 1; len < n; len++)
                if (validate(buf, len, 0, NULL, 0) != KS_ERR_CORRUPT_MESSAGE)
                        bad++;
        CHECK_EQ_INT(bad, 0);
        /* A truncated header in particular. */
        CHECK_EQ_INT(validate(buf, 40, 0, msg, sizeof(msg)), KS_ERR_CORRUPT_MESSAGE);
        CHECK(strstr(msg, "truncated") != NULL);
}

TEST(batch_validate_trailing_garbage)
{
        uint8_t buf[4096];
        int count = -1;
        size_t n = ks_test_batch_build(buf, sizeof(buf), 0, 3, 0);
        REQUIRE(n > 0);
        memset(buf + n, 0, 64);
        for (size_t extra = 1; extra <= 64; extra++) {
                ks_err_t err = ks_batches_validate(buf, n + extra, 0, NULL, 0, &count, NULL, 0);
                if (err != KS_ERR_CORRUPT_MESSAGE)
                        ks_test_fail(__FILE__, __LINE__, "extra %zu: %d", extra, err);
        }
        CHECK_EQ_INT(count, 1);
}

TEST(batch_validate_crc_and_structure)
{
        uint8_t buf[4096];
        char msg[200];
        size_t n = ks_test_batch_build(buf, sizeof(buf), 0, 4, 0);
        REQUIRE(n > 0);

        buf[17] ^= 0x01; /* flipped CRC byte */
        CHECK_EQ_INT(validate(buf, n, 0, msg, sizeof(msg)), KS_ERR_CORRUPT_MESSAGE);
        CHECK(strstr(msg, "crc") != NULL);
        buf[17] ^= 0x01;
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_NONE);

        /* batch_length overrunning the buffer. */
        ks_be32_put(buf + 8, (uint32_t)(n - 12 + 1));
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_CORRUPT_MESSAGE);
        ks_be32_put(buf + 8, 0x7fffffff);
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_CORRUPT_MESSAGE);
        ks_be32_put(buf + 8, 0xffffffff); /* negative */
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_CORRUPT_MESSAGE);
        ks_be32_put(buf + 8, 48); /* below the minimum */
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_CORRUPT_MESSAGE);
        ks_be32_put(buf + 8, (uint32_t)(n - 12));
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_NONE);
}

TEST(batch_validate_every_covered_byte_flip_is_caught)
{
        uint8_t buf[4096];
        size_t n = ks_test_batch_build(buf, sizeof(buf), 0, 4, 0);
        REQUIRE(n > 0);
        int missed = 0;
        for (size_t i = 0; i < n; i++) {
                buf[i] ^= 0x20;
                ks_err_t err = validate(buf, n, 0, NULL, 0);
                buf[i] ^= 0x20;
                int is_epoch = i >= 12 && i < 16;
                if (is_epoch ? err != KS_ERR_NONE : err == KS_ERR_NONE)
                        missed++;
        }
        CHECK_EQ_INT(missed, 0);
}

TEST(batch_validate_magic)
{
        uint8_t buf[4096];
        char msg[200];
        size_t n = ks_test_batch_build(buf, sizeof(buf), 0, 2, 0);
        REQUIRE(n > 0);
        for (int m = 0; m <= 1; m++) {
                buf[16] = (uint8_t)m;
                CHECK_EQ_INT(validate(buf, n, 0, msg, sizeof(msg)), KS_ERR_INVALID_RECORD);
                CHECK(strstr(msg, "magic version 2") != NULL);
        }
        buf[16] = 3;
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_CORRUPT_MESSAGE);
        buf[16] = 0xff;
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_CORRUPT_MESSAGE);
        /* A short but whole legacy message is recognised as such... */
        buf[16] = 1;
        ks_be32_put(buf + 8, 14);
        CHECK_EQ_INT(validate(buf, 26, 0, NULL, 0), KS_ERR_INVALID_RECORD);
        /* ...a cut-off one is just corrupt, as is one below the legacy
         * minimum. */
        CHECK_EQ_INT(validate(buf, 25, 0, NULL, 0), KS_ERR_CORRUPT_MESSAGE);
        ks_be32_put(buf + 8, 13);
        CHECK_EQ_INT(validate(buf, 25, 0, NULL, 0), KS_ERR_CORRUPT_MESSAGE);
}

TEST(batch_validate_too_large)
{
        uint8_t buf[4096];
        char msg[200];
        size_t n = ks_test_batch_build(buf, sizeof(buf), 0, 10, 0);
        REQUIRE(n > 0);
        CHECK_EQ_INT(validate(buf, n, (int32_t)n - 1, msg, sizeof(msg)), KS_ERR_MESSAGE_TOO_LARGE);
        CHECK(strstr(msg, "max") != NULL);
        /* The second of two batches too large. */
        size_t m = ks_test_batch_build(buf + n, sizeof(buf) - n, 0, 1, 0);
        int count = -1;
        CHECK_EQ_INT(ks_batches_validate(buf + n, m, (int32_t)m, NULL, 0, &count, NULL, 0), KS_ERR_NONE);
        memmove(buf + m, buf, n);
        ks_test_batch_build(buf, sizeof(buf), 0, 1, 0);
        CHECK_EQ_INT(ks_batches_validate(buf, n + m, (int32_t)m, NULL, 0, &count, NULL, 0), KS_ERR_MESSAGE_TOO_LARGE);
        CHECK_EQ_INT(count, 1);
}

/* Rewrites a header field and recomputes the CRC, so only the semantic
 * check can object. */
static void set32(uint8_t *b, size_t n, size_t off, int32_t v)
{
        ks_be32_put(b + off, (uint32_t)v);
        ks_test_batch_fix_crc(b, n);
}

TEST(batch_validate_counts)
{
        uint8_t buf[4096];
        char msg[200];
        size_t n = ks_test_batch_build(buf, sizeof(buf), 0, 3, 0);
        REQUIRE(n > 0);

        set32(buf, n, 57, 0); /* recordsCount 0 */
        CHECK_EQ_INT(validate(buf, n, 0, msg, sizeof(msg)), KS_ERR_INVALID_RECORD);
        set32(buf, n, 23, -1); /* and lastOffsetDelta -1: still empty */
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_INVALID_RECORD);
        set32(buf, n, 57, 3);
        set32(buf, n, 23, 1); /* lastOffsetDelta != count - 1 */
        CHECK_EQ_INT(validate(buf, n, 0, msg, sizeof(msg)), KS_ERR_INVALID_RECORD);
        CHECK(strstr(msg, "Inconsistent") != NULL);
        set32(buf, n, 23, 2);
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_NONE);

        /* recordsCount says more (or fewer) records than the bytes hold:
         * the walk of the uncompressed records catches it. */
        set32(buf, n, 57, 4);
        set32(buf, n, 23, 3);
        CHECK_EQ_INT(validate(buf, n, 0, msg, sizeof(msg)), KS_ERR_INVALID_RECORD);
        CHECK(strstr(msg, "records") != NULL);
        set32(buf, n, 57, 2);
        set32(buf, n, 23, 1);
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_INVALID_RECORD);

        /* Compressed: the payload is opaque, counts still must agree. */
        size_t c = ks_test_batch_build(buf, sizeof(buf), 0, 3, KS_BATCH_COMPRESSION_ZSTD);
        memset(buf + 61, 0xAB, c - 61); /* not records at all */
        ks_test_batch_fix_crc(buf, c);
        CHECK_EQ_INT(validate(buf, c, 0, NULL, 0), KS_ERR_NONE);
        set32(buf, c, 57, 5);
        CHECK_EQ_INT(validate(buf, c, 0, NULL, 0), KS_ERR_INVALID_RECORD);
}

TEST(batch_validate_attributes_and_producer)
{
        uint8_t buf[4096];
        char msg[200];
        size_t n = ks_test_batch_build(buf, sizeof(buf), 0, 2, KS_BATCH_ATTR_CONTROL);
        CHECK_EQ_INT(validate(buf, n, 0, msg, sizeof(msg)), KS_ERR_INVALID_RECORD);
        CHECK(strstr(msg, "control") != NULL);
        n = ks_test_batch_build(buf, sizeof(buf), 0, 2, KS_BATCH_ATTR_CONTROL | KS_BATCH_ATTR_TRANSACTIONAL);
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_INVALID_RECORD);
        n = ks_test_batch_build(buf, sizeof(buf), 0, 2, KS_BATCH_ATTR_TRANSACTIONAL);
        CHECK_EQ_INT(validate(buf, n, 0, msg, sizeof(msg)), KS_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT);
        n = ks_test_batch_build(buf, sizeof(buf), 0, 2, 5); /* undefined codec */
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_INVALID_RECORD);
        n = ks_test_batch_build(buf, sizeof(buf), 0, 2, KS_BATCH_ATTR_TIMESTAMP_TYPE);
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_NONE);

        /* Idempotent producer: sequence must be set. */
        n = ks_test_batch_build(buf, sizeof(buf), 0, 2, 0);
        ks_be64_put(buf + 43, 1000);
        ks_be16_put(buf + 51, 0);
        ks_test_batch_fix_crc(buf, n);
        CHECK_EQ_INT(validate(buf, n, 0, msg, sizeof(msg)), KS_ERR_INVALID_RECORD);
        CHECK(strstr(msg, "sequence") != NULL);
        set32(buf, n, 53, 0);
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_NONE);

        /* baseOffset must be 0 from clients (not covered by the CRC). */
        ks_be64_put(buf, 5);
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_INVALID_RECORD);
}

TEST(batch_validate_bad_records)
{
        uint8_t buf[4096];
        size_t n = ks_test_batch_build(buf, sizeof(buf), 0, 1, 0);
        REQUIRE(n > 0);
        /* Record 0: [len][attr][tsDelta][offsetDelta][keyLen]... at 61. */
        uint8_t saved = buf[61];
        buf[61] = (uint8_t)ks_zigzag64(-3); /* negative record length */
        ks_test_batch_fix_crc(buf, n);
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_INVALID_RECORD);
        buf[61] = (uint8_t)(saved - 2); /* record length shorter than its fields */
        ks_test_batch_fix_crc(buf, n);
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_INVALID_RECORD);
        buf[61] = saved;
        buf[64] = (uint8_t)ks_zigzag64(3); /* offsetDelta 3 for record 0 */
        ks_test_batch_fix_crc(buf, n);
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_INVALID_RECORD);
        buf[64] = 0;
        buf[65] = (uint8_t)ks_zigzag64(-2); /* key length -2 */
        ks_test_batch_fix_crc(buf, n);
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_INVALID_RECORD);
        buf[65] = (uint8_t)ks_zigzag64(5);
        ks_test_batch_fix_crc(buf, n);
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_NONE);
}

TEST(batch_patch_keeps_crc)
{
        uint8_t buf[4096];
        ks_batch_info_t info;
        size_t n = ks_test_batch_build(buf, sizeof(buf), 0, 3, 0);
        uint32_t crc = ks_be32_get(buf + 17);

        ks_batch_set_leader_epoch(buf, 7);
        CHECK_EQ_INT(validate(buf, n, 0, NULL, 0), KS_ERR_NONE);
        ks_batch_set_base_offset(buf, 42);
        CHECK_EQ_INT(ks_be32_get(buf + 17), crc);
        CHECK_EQ_INT(ks_batch_crc_compute(buf, n), crc);
        REQUIRE_EQ_INT(ks_batch_header_parse(buf, n, &info), KS_ERR_NONE);
        CHECK_EQ_INT(info.base_offset, 42);
        CHECK_EQ_INT(info.partition_leader_epoch, 7);
        CHECK_EQ_INT(info.size, n);
        CHECK_EQ_INT(ks_be64_get(buf), 42);
        CHECK_EQ_INT((int32_t)ks_be32_get(buf + 12), 7);
        ks_batch_set_base_offset(buf, INT64_MAX);
        ks_batch_set_leader_epoch(buf, -1);
        CHECK_EQ_INT(ks_batch_crc_compute(buf, n), crc);

        /* header_parse is the stored-data reader: it does not care about
         * baseOffset but refuses what cannot be walked. */
        CHECK_EQ_INT(ks_batch_header_parse(buf, n - 1, &info), KS_ERR__CORRUPT);
        CHECK_EQ_INT(ks_batch_header_parse(buf, 60, &info), KS_ERR__CORRUPT);
        buf[16] = 1;
        CHECK_EQ_INT(ks_batch_header_parse(buf, n, &info), KS_ERR__CORRUPT);
}

typedef struct {
        int seen;
        int stop_after;
        int bad;
} rec_ctx_t;

static int check_record(void *opaque, const ks_record_view_t *r)
{
        rec_ctx_t *c = opaque;
        char want[32];
        int i = c->seen++;
        int bad = 0;

        bad |= r->index != i;
        bad |= r->offset_delta != i;
        bad |= r->offset != 100 + i;
        bad |= r->timestamp != BASE_TS + i;
        bad |= r->timestamp_delta != i;
        if (i == 1) {
                bad |= r->key.len != -1 || r->key.ptr != NULL;
        } else {
                snprintf(want, sizeof(want), "key-%d", i);
                bad |= !ks_bytes_eq(r->key, (ks_bytes_t){ (const uint8_t *)want, (int32_t)strlen(want) });
        }
        if (i == 2) {
                bad |= r->value.len != -1;
        } else {
                snprintf(want, sizeof(want), "value-%d", i);
                bad |= !ks_bytes_eq(r->value, (ks_bytes_t){ (const uint8_t *)want, (int32_t)strlen(want) });
        }
        ks_record_header_iter_t it;
        ks_str_t hk;
        ks_bytes_t hv;
        int nh = 0;
        ks_record_headers_begin(r, &it);
        while (ks_record_headers_next(&it, &hk, &hv)) {
                snprintf(want, sizeof(want), "h-%d", i);
                bad |= !ks_str_eq_c(hk, want);
                snprintf(want, sizeof(want), "hv-%d", i);
                bad |= !ks_bytes_eq(hv, (ks_bytes_t){ (const uint8_t *)want, (int32_t)strlen(want) });
                nh++;
        }
        bad |= nh != (i % 2) || r->headers_count != (i % 2);
        if (bad)
                c->bad++;
        return c->stop_after && c->seen >= c->stop_after;
}

TEST(batch_records_foreach)
{
        uint8_t buf[8192];
        size_t n = ks_test_batch_build(buf, sizeof(buf), 100, 12, 0);
        REQUIRE(n > 0);

        rec_ctx_t c = { 0, 0, 0 };
        REQUIRE_EQ_INT(ks_batch_records_foreach(buf, n, check_record, &c), KS_ERR_NONE);
        CHECK_EQ_INT(c.seen, 12);
        CHECK_EQ_INT(c.bad, 0);

        /* Early stop is not an error. */
        c = (rec_ctx_t){ 0, 5, 0 };
        CHECK_EQ_INT(ks_batch_records_foreach(buf, n, check_record, &c), KS_ERR_NONE);
        CHECK_EQ_INT(c.seen, 5);

        /* Compressed batches are the caller's to decompress. */
        uint8_t z[4096];
        size_t zn = ks_test_batch_build(z, sizeof(z), 0, 2, KS_BATCH_COMPRESSION_GZIP);
        c = (rec_ctx_t){ 0, 0, 0 };
        CHECK_EQ_INT(ks_batch_records_foreach(z, zn, check_record, &c), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(c.seen, 0);

        /* Truncations and a wrong count: never out of bounds, always CORRUPT. */
        int bad = 0;
        for (size_t len = 0; len < n; len++) {
                c = (rec_ctx_t){ 0, 0, 0 };
                if (ks_batch_records_foreach(buf, len, check_record, &c) != KS_ERR__CORRUPT)
                        bad++;
        }
        CHECK_EQ_INT(bad, 0);
        ks_be32_put(buf + 57, 13);
        c = (rec_ctx_t){ 0, 0, 0 };
        CHECK_EQ_INT(ks_batch_records_foreach(buf, n, check_record, &c), KS_ERR__CORRUPT);
        CHECK_EQ_INT(c.seen, 12);
        ks_be32_put(buf + 57, 11);
        CHECK_EQ_INT(ks_batch_records_foreach(buf, n, NULL, NULL), KS_ERR__CORRUPT);
}

static void write_seed(const char *dir, const char *name, const uint8_t *p, size_t n)
{
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(p, 1, n, f) != n)
                ks_test_fail(__FILE__, __LINE__, "cannot write %s", path);
        if (f)
                fclose(f);
}

TEST(batch_write_fuzz_corpus)
{
        const char *root = getenv("KS_FUZZ_CORPUS_ROOT");
        char dir[400];
        uint8_t buf[8192];
        size_t n, m;

        if (!root)
                return;
        snprintf(dir, sizeof(dir), "%s/fuzz_batches", root);
        if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
                ks_test_fail(__FILE__, __LINE__, "mkdir %s failed", dir);
                return;
        }
        n = ks_test_batch_build(buf, sizeof(buf), 0, 1, 0);
        write_seed(dir, "one-record", buf, n);
        n = ks_test_batch_build(buf, sizeof(buf), 0, 7, 0);
        write_seed(dir, "seven-records", buf, n);
        m = ks_test_batch_build(buf + n, sizeof(buf) - n, 0, 3, 0);
        m += ks_test_batch_build(buf + n + m, sizeof(buf) - n - m, 0, 2, KS_BATCH_ATTR_TIMESTAMP_TYPE);
        write_seed(dir, "three-batches", buf, n + m);
        n = ks_test_batch_build(buf, sizeof(buf), 0, 2, KS_BATCH_COMPRESSION_LZ4);
        write_seed(dir, "lz4-flagged", buf, n);
        n = ks_test_batch_build(buf, sizeof(buf), 0, 2, KS_BATCH_ATTR_TRANSACTIONAL);
        write_seed(dir, "transactional", buf, n);
        n = ks_test_batch_build(buf, sizeof(buf), 0, 3, 0);
        ks_be64_put(buf + 43, 77);
        ks_be16_put(buf + 51, 1);
        ks_be32_put(buf + 53, 10);
        ks_test_batch_fix_crc(buf, n);
        write_seed(dir, "idempotent", buf, n);
}
