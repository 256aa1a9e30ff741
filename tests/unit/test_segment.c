/*
 * test_segment.c — KafScale .kfs/.index formats: builder, verifying
 * readers, index lookup, object keys.
 *
 * Setting KS_FUZZ_CORPUS_ROOT=<dir> (e.g. tests/fuzz/corpus) makes the
 * segment_write_fuzz_corpus test write seeds for tests/fuzz/fuzz_segment.c
 * into <dir>/fuzz_segment/.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log/batch.h"
#include "storage/segment.h"
#include "test.h"
#include "util/bytes.h"
#include "util/crc32c.h"

/* From test_batch.c. */
size_t ks_test_batch_build(uint8_t *out, size_t cap, int64_t base_offset, int nrecords, int16_t attributes);

#define CREATED_MS 1712345678901LL

/* A partition tail: batches with the given record counts, offsets
 * assigned from @base like the produce path does (build at 0, patch). */
typedef struct {
        uint8_t buf[16384];
        size_t pos[16], size[16];
        int64_t base[16];
        int n;
} tail_t;

static void tail_make(tail_t *t, int64_t base, const int *counts, int n)
{
        size_t len = 0;
        t->n = n;
        for (int i = 0; i < n; i++) {
                size_t s = ks_test_batch_build(t->buf + len, sizeof(t->buf) - len, 0, counts[i], 0);
                ks_batch_set_base_offset(t->buf + len, base);
                ks_batch_set_leader_epoch(t->buf + len, 3);
                t->pos[i] = len;
                t->size[i] = s;
                t->base[i] = base;
                base += counts[i];
                len += s;
        }
}

/* Builds the segment of @t into a flat malloc'ed buffer (and the index). */
static uint8_t *build_flat(const tail_t *t, int32_t interval, size_t *len, uint8_t **index, size_t *index_len)
{
        ks_segment_builder_t b;
        const struct iovec *iov;
        const uint8_t *idx;
        int iovcnt;

        ks_segment_builder_init(&b, interval, CREATED_MS);
        for (int i = 0; i < t->n; i++)
                if (ks_segment_builder_add(&b, t->buf + t->pos[i], t->size[i]) != KS_ERR_NONE)
                        goto fail;
        if (ks_segment_builder_finish(&b, &iov, &iovcnt, &idx, index_len) != KS_ERR_NONE)
                goto fail;
        if (iovcnt != t->n + 2)
                goto fail;
        uint8_t *out = malloc(b.segment_len);
        size_t off = 0;
        for (int i = 0; i < iovcnt; i++) {
                memcpy(out + off, iov[i].iov_base, iov[i].iov_len);
                off += iov[i].iov_len;
        }
        *len = off;
        *index = malloc(*index_len);
        memcpy(*index, idx, *index_len);
        if (off != b.segment_len) {
                free(out);
                free(*index);
                goto fail;
        }
        ks_segment_builder_destroy(&b);
        return out;
fail:
        ks_segment_builder_destroy(&b);
        return NULL;
}

TEST(segment_roundtrip)
{
        static const int counts[] = { 3, 1, 1, 5, 2 };
        tail_t t;
        size_t len, ilen;
        uint8_t *idx;
        tail_make(&t, 1000, counts, 5);
        uint8_t *seg = build_flat(&t, 4, &len, &idx, &ilen);
        REQUIRE(seg != NULL);

        size_t body = 0;
        for (int i = 0; i < t.n; i++)
                body += t.size[i];
        CHECK_EQ_INT(len, 32 + body + 16);

        /* Byte layout of the header and footer. */
        static const uint8_t hdr[32] = { 'K', 'A', 'F', 'S', 0, 1, 0, 0,
                                         0, 0, 0, 0, 0, 0, 0x03, 0xE8, /* base 1000 */
                                         0, 0, 0, 12,                  /* 12 records */
                                         0, 0, 0x01, 0x8E, 0xAF, 0xC1, 0x84, 0x35, /* created */
                                         0, 0, 0, 0 };
        CHECK_EQ_MEM(seg, 32, hdr, 32);
        CHECK_EQ_MEM(seg + 32, body, t.buf, body);
        CHECK_EQ_INT(ks_be32_get(seg + len - 16), ks_crc32c_update_sw(0, t.buf, body));
        CHECK_EQ_INT(ks_be64_get(seg + len - 12), 1011);
        CHECK_EQ_MEM(seg + len - 4, 4, "END!", 4);

        ks_segment_view_t v;
        REQUIRE_EQ_INT(ks_segment_parse(seg, len, &v), KS_ERR_NONE);
        CHECK_EQ_INT(v.header.version, 1);
        CHECK_EQ_INT(v.header.flags, 0);
        CHECK_EQ_INT(v.header.base_offset, 1000);
        CHECK_EQ_INT(v.header.record_count, 12);
        CHECK_EQ_INT(v.header.created_ms, CREATED_MS);
        CHECK_EQ_INT(v.footer.last_offset, 1011);
        CHECK_EQ_INT(v.batch_count, 5);
        CHECK(v.body == seg + 32);
        CHECK_EQ_INT(v.body_len, body);

        /* Ranged reads: just the header, just the footer. */
        ks_segment_header_t h;
        ks_segment_footer_t f;
        CHECK_EQ_INT(ks_segment_header_parse(seg, 32, &h, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(h.base_offset, 1000);
        CHECK_EQ_INT(ks_segment_footer_parse(seg + len - 16, 16, &f, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(f.last_offset, 1011);
        CHECK_EQ_INT(f.body_crc, v.footer.body_crc);

        /* The index: interval 4 over batches of 3,1,1,5,2 records indexes
         * batches 0, 2 and 4 (KafScale's MaybeAdd rule). */
        static const uint8_t ihdr[16] = { 'I', 'D', 'X', 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0 };
        REQUIRE_EQ_INT(ilen, 16 + 3 * 12);
        CHECK_EQ_MEM(idx, 16, ihdr, 16);
        ks_index_view_t iv;
        REQUIRE_EQ_INT(ks_index_parse(idx, ilen, &iv), KS_ERR_NONE);
        CHECK_EQ_INT(iv.entry_count, 3);
        CHECK_EQ_INT(iv.interval, 4);
        static const int want_batch[3] = { 0, 2, 4 };
        for (int i = 0; i < 3; i++) {
                int64_t off;
                int32_t pos;
                ks_index_entry(&iv, i, &off, &pos);
                CHECK_EQ_INT(off, t.base[want_batch[i]]);
                CHECK_EQ_INT(pos, 32 + t.pos[want_batch[i]]); /* from the start of the object */
        }
        free(seg);
        free(idx);
}

TEST(segment_index_lookup_every_offset)
{
        static const int counts[] = { 2, 3, 1, 1, 1, 4, 2, 6, 1 };
        tail_t t;
        size_t len, ilen;
        uint8_t *idx;
        tail_make(&t, 42, counts, 9);
        for (int32_t interval = 0; interval <= 8; interval++) {
                uint8_t *seg = build_flat(&t, interval, &len, &idx, &ilen);
                REQUIRE(seg != NULL);
                ks_index_view_t iv;
                REQUIRE_EQ_INT(ks_index_parse(idx, ilen, &iv), KS_ERR_NONE);
                CHECK_EQ_INT(iv.interval, interval > 0 ? interval : 1);
                if (interval <= 1)
                        CHECK_EQ_INT(iv.entry_count, 9); /* every batch */
                int64_t last = t.base[8] + counts[8] - 1;
                for (int64_t o = 40; o <= last + 2; o++) {
                        int64_t boff = -1;
                        int32_t pos = -1;
                        ks_err_t err = ks_index_lookup(&iv, o, &boff, &pos);
                        if (o < 42) {
                                CHECK_EQ_INT(err, KS_ERR__NOT_FOUND);
                                continue;
                        }
                        REQUIRE_EQ_INT(err, KS_ERR_NONE);
                        /* Greatest entry <= o, by linear scan. */
                        int64_t want = -1;
                        for (int32_t i = 0; i < iv.entry_count; i++) {
                                int64_t eo;
                                ks_index_entry(&iv, i, &eo, NULL);
                                if (eo <= o)
                                        want = eo;
                        }
                        CHECK_EQ_INT(boff, want);
                        /* The position holds the batch starting at that offset,
                         * and walking on from there reaches o. */
                        ks_batch_info_t bi;
                        REQUIRE(pos >= 32 && (size_t)pos < len - 16);
                        REQUIRE_EQ_INT(ks_batch_header_parse(seg + pos, len - 16 - (size_t)pos, &bi), KS_ERR_NONE);
                        CHECK_EQ_INT(bi.base_offset, boff);
                        size_t p = (size_t)pos;
                        while (o > bi.base_offset + bi.last_offset_delta && p + bi.size < len - 16) {
                                p += bi.size;
                                REQUIRE_EQ_INT(ks_batch_header_parse(seg + p, len - 16 - p, &bi), KS_ERR_NONE);
                        }
                        if (o <= last)
                                CHECK(o >= bi.base_offset && o <= bi.base_offset + bi.last_offset_delta);
                }
                free(seg);
                free(idx);
        }
}

TEST(segment_corruption_detected)
{
        static const int counts[] = { 2, 2, 3 };
        tail_t t;
        size_t len, ilen;
        uint8_t *idx;
        ks_segment_view_t v;
        tail_make(&t, 0, counts, 3);
        uint8_t *seg = build_flat(&t, 1, &len, &idx, &ilen);
        REQUIRE(seg != NULL);
        REQUIRE_EQ_INT(ks_segment_parse(seg, len, &v), KS_ERR_NONE);

        /* Every single body byte flipped. */
        int missed = 0;
        for (size_t i = 32; i < len - 16; i++) {
                seg[i] ^= 0x04;
                if (ks_segment_parse(seg, len, &v) != KS_ERR__CORRUPT || !v.reason)
                        missed++;
                seg[i] ^= 0x04;
        }
        CHECK_EQ_INT(missed, 0);

        /* Truncated anywhere. */
        missed = 0;
        for (size_t n = 0; n < len; n++)
                if (ks_segment_parse(seg, n, &v) != KS_ERR__CORRUPT)
                        missed++;
        CHECK_EQ_INT(missed, 0);
        CHECK_EQ_INT(ks_segment_parse(seg, len - 1, &v), KS_ERR__CORRUPT);
        CHECK(strstr(v.reason, "END!") != NULL);

        /* Header and footer fields (outside the body CRC). */
        seg[0] = 'k';
        CHECK_EQ_INT(ks_segment_parse(seg, len, &v), KS_ERR__CORRUPT);
        seg[0] = 'K';
        seg[5] = 2; /* version */
        CHECK_EQ_INT(ks_segment_parse(seg, len, &v), KS_ERR__CORRUPT);
        seg[5] = 1;
        seg[19] ^= 1; /* record count */
        CHECK_EQ_INT(ks_segment_parse(seg, len, &v), KS_ERR__CORRUPT);
        seg[19] ^= 1;
        seg[15] ^= 1; /* base offset */
        CHECK_EQ_INT(ks_segment_parse(seg, len, &v), KS_ERR__CORRUPT);
        seg[15] ^= 1;
        seg[len - 5] ^= 1; /* last offset */
        CHECK_EQ_INT(ks_segment_parse(seg, len, &v), KS_ERR__CORRUPT);
        CHECK(strstr(v.reason, "last offset") != NULL);
        seg[len - 5] ^= 1;
        seg[len - 16] ^= 1; /* stored CRC */
        CHECK_EQ_INT(ks_segment_parse(seg, len, &v), KS_ERR__CORRUPT);
        seg[len - 16] ^= 1;
        CHECK_EQ_INT(ks_segment_parse(seg, len, &v), KS_ERR_NONE);

        /* Header-only segment (no batch) is refused. */
        uint8_t empty[48];
        memcpy(empty, seg, 32);
        memcpy(empty + 32, seg + len - 16, 16);
        ks_be32_put(empty + 32, ks_crc32c(NULL, 0));
        CHECK_EQ_INT(ks_segment_parse(empty, sizeof(empty), &v), KS_ERR__CORRUPT);

        /* Index: wrong size, bad magic, positions inside the header,
         * entries out of order. */
        ks_index_view_t iv;
        REQUIRE_EQ_INT(ks_index_parse(idx, ilen, &iv), KS_ERR_NONE);
        CHECK_EQ_INT(ks_index_parse(idx, ilen - 1, &iv), KS_ERR__CORRUPT);
        CHECK_EQ_INT(ks_index_parse(idx, 15, &iv), KS_ERR__CORRUPT);
        idx[3] = 'X';
        CHECK_EQ_INT(ks_index_parse(idx, ilen, &iv), KS_ERR__CORRUPT);
        idx[3] = 0;
        ks_be32_put(idx + 16 + 8, 16); /* first position inside the header */
        CHECK_EQ_INT(ks_index_parse(idx, ilen, &iv), KS_ERR__CORRUPT);
        ks_be32_put(idx + 16 + 8, 32);
        ks_be64_put(idx + 28, 0); /* second offset == first */
        CHECK_EQ_INT(ks_index_parse(idx, ilen, &iv), KS_ERR__CORRUPT);
        ks_be64_put(idx + 28, 2);
        CHECK_EQ_INT(ks_index_parse(idx, ilen, &iv), KS_ERR_NONE);
        ks_be32_put(idx + 6, 0xffffffff); /* negative count */
        CHECK_EQ_INT(ks_index_parse(idx, ilen, &iv), KS_ERR__CORRUPT);

        free(seg);
        free(idx);
}

TEST(segment_builder_rejects_bad_input)
{
        static const int counts[] = { 2, 2 };
        tail_t t;
        ks_segment_builder_t b;
        const struct iovec *iov;
        int iovcnt;
        tail_make(&t, 10, counts, 2);

        ks_segment_builder_init(&b, 10, CREATED_MS);
        CHECK_EQ_INT(ks_segment_builder_finish(&b, &iov, &iovcnt, NULL, NULL), KS_ERR__INVALID_ARG);
        /* Length must be exactly the batch. */
        CHECK_EQ_INT(ks_segment_builder_add(&b, t.buf, t.size[0] - 1), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_segment_builder_add(&b, t.buf, t.size[0] + 1), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_segment_builder_add(&b, t.buf, 10), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(b.batch_count, 0);
        CHECK_EQ_INT(ks_segment_builder_add(&b, t.buf + t.pos[1], t.size[1]), KS_ERR_NONE);
        /* Offsets must go up. */
        CHECK_EQ_INT(ks_segment_builder_add(&b, t.buf, t.size[0]), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_segment_builder_add(&b, t.buf + t.pos[1], t.size[1]), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(b.batch_count, 1);
        CHECK_EQ_INT(b.base_offset, 12);
        CHECK_EQ_INT(b.last_offset, 13);
        CHECK_EQ_INT(ks_segment_builder_finish(&b, &iov, &iovcnt, NULL, NULL), KS_ERR_NONE);
        CHECK_EQ_INT(iovcnt, 3);
        CHECK_EQ_INT(iov[0].iov_len, 32);
        CHECK(iov[1].iov_base == t.buf + t.pos[1]); /* no copy */
        CHECK_EQ_INT(iov[2].iov_len, 16);
        /* No add after finish. */
        ks_batch_set_base_offset(t.buf, 100);
        CHECK_EQ_INT(ks_segment_builder_add(&b, t.buf, t.size[0]), KS_ERR__INVALID_ARG);
        ks_segment_builder_destroy(&b);
}

/* @n one-record batches from offset 500, index interval 10: checks the
 * object and every lookup; returns the number of failed checks. */
static int many_batches(int n)
{
        uint8_t *buf = malloc((size_t)n * 128);
        size_t *pos = malloc((size_t)n * sizeof(*pos)), len = 0, ilen = 0;
        ks_segment_builder_t b;
        const struct iovec *iov;
        const uint8_t *idx;
        int iovcnt = 0, bad = 0;
        uint8_t *seg = NULL;

        ks_segment_builder_init(&b, 10, CREATED_MS);
        if (!buf || !pos)
                goto fail;
        for (int i = 0; i < n; i++) {
                size_t s = ks_test_batch_build(buf + len, (size_t)n * 128 - len, 0, 1, 0);
                ks_batch_set_base_offset(buf + len, 500 + i);
                pos[i] = len;
                if (s == 0 || ks_segment_builder_add(&b, buf + len, s) != KS_ERR_NONE)
                        goto fail;
                len += s;
        }
        if (ks_segment_builder_finish(&b, &iov, &iovcnt, &idx, &ilen) != KS_ERR_NONE)
                goto fail;
        bad += iovcnt != n + 2;
        bad += b.segment_len != 32 + len + 16;
        bad += b.record_count != n || b.last_offset != 500 + n - 1;
        seg = malloc(b.segment_len);
        if (!seg)
                goto fail;
        size_t off = 0;
        for (int i = 0; i < iovcnt; i++) {
                memcpy(seg + off, iov[i].iov_base, iov[i].iov_len);
                off += iov[i].iov_len;
        }
        ks_segment_view_t v;
        bad += ks_segment_parse(seg, off, &v) != KS_ERR_NONE || v.batch_count != n;
        ks_index_view_t iv;
        if (ks_index_parse(idx, ilen, &iv) != KS_ERR_NONE)
                goto fail;
        bad += iv.entry_count != (n + 9) / 10;
        for (int i = 0; i < n; i++) {
                int64_t eo;
                int32_t ep;
                if (ks_index_lookup(&iv, 500 + i, &eo, &ep) != KS_ERR_NONE || eo != 500 + i / 10 * 10 ||
                    (size_t)ep != 32 + pos[i / 10 * 10])
                        bad++;
        }
        goto out;
fail:
        bad++;
out:
        ks_segment_builder_destroy(&b);
        free(seg);
        free(pos);
        free(buf);
        return bad;
}

TEST(segment_many_batches)
{
        /* Around every growth of the iovec array (64, 128, 256 slots: the
         * header, the batches and the footer must all fit) and well past. */
        static const int ns[] = { 1, 61, 62, 63, 64, 65, 125, 126, 127, 128, 254, 255, 256, 300 };
        for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++)
                if (many_batches(ns[i]) != 0)
                        ks_test_fail(__FILE__, __LINE__, "%d batches", ns[i]);
}

TEST(segment_keys)
{
        char buf[256];
        int64_t base = -1;
        const char *ext = NULL;

        int n = ks_segment_key(buf, sizeof(buf), "default", "orders", 3, 42, "kfs");
        CHECK_EQ_STR(buf, "default/orders/3/segment-00000000000000000042.kfs");
        CHECK_EQ_INT(n, (int)strlen(buf));
        ks_segment_key(buf, sizeof(buf), "default", "orders", 3, 42, KS_SEGMENT_EXT_INDEX);
        CHECK_EQ_STR(buf, "default/orders/3/segment-00000000000000000042.index");
        ks_segment_key(buf, sizeof(buf), "ns/deep", "t.x-y_z", 0, INT64_MAX, "kfs");
        CHECK_EQ_STR(buf, "ns/deep/t.x-y_z/0/segment-09223372036854775807.kfs");

        /* Too small (exactly one byte short), bad arguments. */
        CHECK_EQ_INT(ks_segment_key(buf, 49, "default", "orders", 3, 42, "kfs"), -1);
        CHECK_EQ_INT(ks_segment_key(buf, 50, "default", "orders", 3, 42, "kfs"), 49);
        CHECK_EQ_INT(ks_segment_key(buf, sizeof(buf), "default", "orders", -1, 42, "kfs"), -1);
        CHECK_EQ_INT(ks_segment_key(buf, sizeof(buf), "default", "orders", 3, -42, "kfs"), -1);
        CHECK_EQ_INT(ks_segment_key(buf, sizeof(buf), "default", "orders", 3, 42, "log"), -1);

        CHECK_EQ_INT(ks_segment_key_parse("default/orders/3/segment-00000000000000000042.kfs", &base, NULL, &ext),
                     KS_ERR_NONE);
        CHECK_EQ_INT(base, 42);
        CHECK_EQ_STR(ext, "kfs");
        CHECK_EQ_INT(ks_segment_key_parse("segment-09223372036854775807.index", &base, NULL, &ext), KS_ERR_NONE);
        CHECK_EQ_INT(base, INT64_MAX);
        CHECK_EQ_STR(ext, KS_SEGMENT_EXT_INDEX);
        static const char *bad[] = {
                "default/orders/3/segment-42.kfs",
                "segment-0000000000000000042.kfs",   /* 19 digits */
                "segment-000000000000000000042.kfs", /* 21 digits */
                "segment-00000000000000000042.kfsx",
                "segment-00000000000000000042.",
                "segment-00000000000000000042",
                "segment-0000000000000000004x.kfs",
                "segment-09223372036854775808.kfs", /* INT64_MAX + 1 */
                "segment-99999999999999999999.kfs",
                "a/segment-00000000000000000042.kfs/",
                "Segment-00000000000000000042.kfs",
                "",
                "segment-00000000000000000042-e0.kfs",          /* epoch 0 has no suffix */
                "segment-00000000000000000042-e07.kfs",         /* leading zero */
                "segment-00000000000000000042-e.kfs",
                "segment-00000000000000000042-e2147483648.kfs", /* INT32_MAX + 1 */
                "segment-00000000000000000042-e12345678901.kfs",
                "segment-00000000000000000042-x5.kfs",
                "segment-00000000000000000042-e5x.kfs",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                if (ks_segment_key_parse(bad[i], &base, NULL, &ext) != KS_ERR__PARSE)
                        ks_test_fail(__FILE__, __LINE__, "accepted %s", bad[i]);
        /* Epochs above 0 are part of the key. */
        int32_t epoch = -1;
        CHECK_EQ_INT(ks_segment_key_epoch(buf, sizeof(buf), "default", "orders", 3, 42, 7, "kfs"), 52);
        CHECK_EQ_STR(buf, "default/orders/3/segment-00000000000000000042-e7.kfs");
        CHECK_EQ_INT(ks_segment_key_parse(buf, &base, &epoch, &ext), KS_ERR_NONE);
        CHECK_EQ_INT(base, 42);
        CHECK_EQ_INT(epoch, 7);
        CHECK_EQ_STR(ext, "kfs");
        ks_segment_key_epoch(buf, sizeof(buf), "default", "orders", 3, 42, 0, "index");
        CHECK_EQ_STR(buf, "default/orders/3/segment-00000000000000000042.index");
        CHECK_EQ_INT(ks_segment_key_parse(buf, &base, &epoch, &ext), KS_ERR_NONE);
        CHECK_EQ_INT(epoch, 0);
        CHECK_EQ_INT(ks_segment_key_epoch(buf, sizeof(buf), "default", "orders", 3, 42, -1, "kfs"), -1);
        int n_max = ks_segment_key_epoch(buf, sizeof(buf), "n", "t", INT32_MAX, INT64_MAX, INT32_MAX, "index");
        CHECK_EQ_INT(n_max, (int)strlen("n/t") + KS_SEGMENT_KEY_EXTRA - 1);
        CHECK_EQ_INT(ks_segment_key_parse(buf, &base, &epoch, &ext), KS_ERR_NONE);
        CHECK_EQ_INT(epoch, INT32_MAX);
        /* Round trip. */
        for (int64_t b = 1; b > 0 && b < INT64_MAX / 3; b = b * 3 + 1) {
                ks_segment_key(buf, sizeof(buf), "default", "t", 7, b, "kfs");
                if (ks_segment_key_parse(buf, &base, NULL, NULL) != KS_ERR_NONE || base != b)
                        ks_test_fail(__FILE__, __LINE__, "round trip of %lld", (long long)b);
        }
}

static void seg_write_file(const char *dir, const char *name, const uint8_t *p, size_t n)
{
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(p, 1, n, f) != n)
                ks_test_fail(__FILE__, __LINE__, "cannot write %s", path);
        if (f)
                fclose(f);
}

TEST(segment_write_fuzz_corpus)
{
        static const int counts1[] = { 1 };
        static const int counts2[] = { 3, 1, 2, 4 };
        const char *root = getenv("KS_FUZZ_CORPUS_ROOT");
        char dir[400];
        tail_t t;
        size_t len, ilen;
        uint8_t *idx, *seg;

        if (!root)
                return;
        snprintf(dir, sizeof(dir), "%s/fuzz_segment", root);
        if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
                ks_test_fail(__FILE__, __LINE__, "mkdir %s failed", dir);
                return;
        }
        tail_make(&t, 0, counts1, 1);
        seg = build_flat(&t, 1, &len, &idx, &ilen);
        REQUIRE(seg != NULL);
        seg_write_file(dir, "one-batch.kfs", seg, len);
        seg_write_file(dir, "one-batch.index", idx, ilen);
        free(seg);
        free(idx);
        tail_make(&t, 1234567, counts2, 4);
        seg = build_flat(&t, 3, &len, &idx, &ilen);
        REQUIRE(seg != NULL);
        seg_write_file(dir, "four-batches.kfs", seg, len);
        seg_write_file(dir, "four-batches.index", idx, ilen);
        free(seg);
        free(idx);
        static const char key[] = "default/orders/3/segment-00000000000000000042.kfs";
        seg_write_file(dir, "key", (const uint8_t *)key, sizeof(key) - 1);
}
