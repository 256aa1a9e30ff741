/*
 * fuzz_segment.c — libFuzzer target for the KafScale segment and index
 * readers, the index lookup and the key parser (src/storage/segment.c).
 *
 * Input: any bytes, given to every reader (a .kfs object — as is and with
 * its footer CRC recomputed —, a .index object, a header range, a footer
 * range, an object key).  Invariants checked
 * (abort on violation):
 *   - nothing crashes or reads outside the input (ASan/UBSan);
 *   - a failed parse always has a reason;
 *   - a segment that parses is rebuilt byte for byte by the builder from
 *     its own batches (all but the reserved header word, which readers
 *     ignore), and its header/footer ranged parsers agree with it;
 *   - for an index that parses, looking up each entry's offset finds that
 *     entry, the offset just below finds the previous one (or none), and
 *     every position is inside a segment-sized range;
 *   - a key that parses is regenerated identically by ks_segment_key.
 *
 * Build: make fuzz   (clang -g -O1 -fsanitize=fuzzer,address,undefined ...)
 * Seeds: tests/fuzz/corpus/fuzz_segment/ (written by the unit test
 *        segment_write_fuzz_corpus with KS_FUZZ_CORPUS_ROOT=tests/fuzz/corpus).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "log/batch.h"
#include "storage/segment.h"
#include "util/bytes.h"
#include "util/crc32c.h"

static void check_segment(const uint8_t *buf, size_t len)
{
        ks_segment_view_t v;
        if (ks_segment_parse(buf, len, &v) != KS_ERR_NONE) {
                FUZZ_ASSERT(v.reason != NULL);
                return;
        }
        FUZZ_ASSERT(v.batch_count >= 1);
        FUZZ_ASSERT(v.body == buf + KS_SEGMENT_HEADER_SIZE);
        FUZZ_ASSERT(v.body_len == len - KS_SEGMENT_HEADER_SIZE - KS_SEGMENT_FOOTER_SIZE);

        ks_segment_header_t h;
        ks_segment_footer_t f;
        FUZZ_ASSERT(ks_segment_header_parse(buf, KS_SEGMENT_HEADER_SIZE, &h, NULL) == KS_ERR_NONE);
        FUZZ_ASSERT(h.base_offset == v.header.base_offset && h.record_count == v.header.record_count &&
                    h.created_ms == v.header.created_ms);
        FUZZ_ASSERT(ks_segment_footer_parse(buf + len - KS_SEGMENT_FOOTER_SIZE, KS_SEGMENT_FOOTER_SIZE, &f, NULL) ==
                    KS_ERR_NONE);
        FUZZ_ASSERT(f.body_crc == v.footer.body_crc && f.last_offset == v.footer.last_offset);

        /* Rebuild from the batches. */
        ks_segment_builder_t b;
        const struct iovec *iov;
        const uint8_t *idx;
        size_t idx_len, pos = 0;
        int iovcnt;
        ks_segment_builder_init(&b, 2, v.header.created_ms);
        for (int32_t i = 0; i < v.batch_count; i++) {
                ks_batch_info_t bi;
                FUZZ_ASSERT(ks_batch_header_parse(v.body + pos, v.body_len - pos, &bi) == KS_ERR_NONE);
                FUZZ_ASSERT(ks_segment_builder_add(&b, v.body + pos, bi.size) == KS_ERR_NONE);
                pos += bi.size;
        }
        FUZZ_ASSERT(pos == v.body_len);
        FUZZ_ASSERT(ks_segment_builder_finish(&b, &iov, &iovcnt, &idx, &idx_len) == KS_ERR_NONE);
        FUZZ_ASSERT(iovcnt == v.batch_count + 2 && b.segment_len == len);
        size_t off = 0;
        for (int i = 0; i < iovcnt; i++) {
                const uint8_t *p = iov[i].iov_base;
                for (size_t k = 0; k < iov[i].iov_len; k++, off++)
                        if (off < 28 || off >= 32) /* the reserved word is not checked */
                                FUZZ_ASSERT(p[k] == buf[off]);
        }
        FUZZ_ASSERT(off == len);

        /* Its index parses and every entry points at a batch start. */
        ks_index_view_t iv;
        FUZZ_ASSERT(ks_index_parse(idx, idx_len, &iv) == KS_ERR_NONE);
        FUZZ_ASSERT(iv.entry_count >= 1);
        for (int32_t i = 0; i < iv.entry_count; i++) {
                int64_t eo;
                int32_t ep;
                ks_batch_info_t bi;
                ks_index_entry(&iv, i, &eo, &ep);
                FUZZ_ASSERT(ep >= KS_SEGMENT_HEADER_SIZE && (size_t)ep < len - KS_SEGMENT_FOOTER_SIZE);
                FUZZ_ASSERT(ks_batch_header_parse(buf + ep, len - KS_SEGMENT_FOOTER_SIZE - (size_t)ep, &bi) ==
                            KS_ERR_NONE);
                FUZZ_ASSERT(bi.base_offset == eo);
        }
        ks_segment_builder_destroy(&b);
}

static void check_index(const uint8_t *buf, size_t len)
{
        ks_index_view_t iv;
        int64_t off;
        int32_t pos;

        if (ks_index_parse(buf, len, &iv) != KS_ERR_NONE) {
                FUZZ_ASSERT(iv.reason != NULL);
                return;
        }
        FUZZ_ASSERT(iv.entry_count >= 0);
        FUZZ_ASSERT(len == KS_INDEX_HEADER_SIZE + (size_t)iv.entry_count * KS_INDEX_ENTRY_SIZE);
        if (iv.entry_count == 0) {
                FUZZ_ASSERT(ks_index_lookup(&iv, 0, &off, &pos) == KS_ERR__NOT_FOUND);
                return;
        }
        for (int32_t i = 0; i < iv.entry_count; i++) {
                int64_t eo;
                int32_t ep;
                ks_index_entry(&iv, i, &eo, &ep);
                FUZZ_ASSERT(ep >= KS_SEGMENT_HEADER_SIZE);
                FUZZ_ASSERT(ks_index_lookup(&iv, eo, &off, &pos) == KS_ERR_NONE);
                FUZZ_ASSERT(off == eo && pos == ep);
                ks_err_t err = ks_index_lookup(&iv, eo - 1, &off, &pos);
                if (i == 0) {
                        FUZZ_ASSERT(err == KS_ERR__NOT_FOUND);
                } else {
                        int64_t po;
                        ks_index_entry(&iv, i - 1, &po, NULL);
                        FUZZ_ASSERT(err == KS_ERR_NONE && off == po);
                }
        }
        int64_t last;
        ks_index_entry(&iv, iv.entry_count - 1, &last, NULL);
        FUZZ_ASSERT(ks_index_lookup(&iv, INT64_MAX, &off, &pos) == KS_ERR_NONE && off == last);
        (void)ks_index_lookup(&iv, INT64_MIN, &off, &pos);
}

static void check_key(const uint8_t *data, size_t size)
{
        char key[300], again[400];
        size_t n = size < sizeof(key) - 1 ? size : sizeof(key) - 1;
        memcpy(key, data, n);
        key[n] = '\0';
        int64_t base;
        int32_t epoch;
        const char *ext;
        if (ks_segment_key_parse(key, &base, &epoch, &ext) != KS_ERR_NONE)
                return;
        FUZZ_ASSERT(base >= 0 && epoch >= 0);
        /* A parsed key is exactly the key its parts make (one spelling). */
        int k = ks_segment_key_epoch(again, sizeof(again), "ns", "topic", 0, base, epoch, ext);
        FUZZ_ASSERT(k > 0);
        const char *name = strrchr(key, '/');
        name = name ? name + 1 : key;
        FUZZ_ASSERT(strcmp(again + strlen("ns/topic/0/"), name) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        /* Exact-size heap copy so ASan catches any read past the end. */
        uint8_t *buf = malloc(size ? size : 1);
        FUZZ_ASSERT(buf != NULL);
        memcpy(buf, data, size);

        check_segment(buf, size);
        check_index(buf, size);

        /* Again with the footer's body CRC made right, so the fuzzer gets
         * past the CRC into the batch walk and the offset checks. */
        if (size >= KS_SEGMENT_HEADER_SIZE + KS_SEGMENT_FOOTER_SIZE) {
                size_t body_len = size - KS_SEGMENT_HEADER_SIZE - KS_SEGMENT_FOOTER_SIZE;
                ks_be32_put(buf + size - KS_SEGMENT_FOOTER_SIZE, ks_crc32c(buf + KS_SEGMENT_HEADER_SIZE, body_len));
                check_segment(buf, size);
                memcpy(buf, data, size);
        }

        ks_segment_header_t h;
        ks_segment_footer_t f;
        const char *why = NULL;
        if (ks_segment_header_parse(buf, size, &h, &why) != KS_ERR_NONE)
                FUZZ_ASSERT(why != NULL);
        why = NULL;
        if (ks_segment_footer_parse(buf, size, &f, &why) != KS_ERR_NONE)
                FUZZ_ASSERT(why != NULL);

        check_key(data, size);
        free(buf);
        return 0;
}
