/*
 * fuzz_batches.c — libFuzzer target for record batch validation and the
 * record walker (src/log/batch.c).
 *
 * Input: the `records` field of one partition of a Produce request.  It is
 * validated twice — as is, and as a copy whose batch CRCs have been
 * recomputed (so the fuzzer gets past the CRC check into the semantic
 * checks and the record walk) — and handed to ks_batch_records_foreach as
 * one batch.  Invariants checked (abort on violation):
 *   - nothing crashes or reads outside the input (ASan/UBSan);
 *   - an error is one of the documented wire codes with a non-empty
 *     message; success leaves an empty message;
 *   - accepted batches tile the input exactly, each re-parses with
 *     ks_batch_header_parse, its CRC recomputes, and for an uncompressed one
 *     ks_batch_records_foreach visits exactly recordsCount records with
 *     offsetDelta equal to their index;
 *   - validation with and without the infos array agrees.
 *
 * Build: make fuzz   (clang -g -O1 -fsanitize=fuzzer,address,undefined ...)
 * Seeds: tests/fuzz/corpus/fuzz_batches/ (written by the unit test
 *        batch_write_fuzz_corpus with KS_FUZZ_CORPUS_ROOT=tests/fuzz/corpus).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "log/batch.h"
#include "util/bytes.h"
#include "util/crc32c.h"

#define MAX_INFOS 8

typedef struct {
        int32_t seen;
        int strict;
        int bad;
} walk_ctx_t;

static int on_record(void *opaque, const ks_record_view_t *r)
{
        walk_ctx_t *c = opaque;
        if (c->strict && r->offset_delta != c->seen)
                c->bad = 1;
        if (r->index != c->seen)
                c->bad = 1;
        c->seen++;
        /* Touch every byte handed out, so ASan sees any bad view. */
        volatile uint8_t sink = 0;
        if (r->key.len > 0)
                sink ^= r->key.ptr[0] ^ r->key.ptr[r->key.len - 1];
        if (r->value.len > 0)
                sink ^= r->value.ptr[0] ^ r->value.ptr[r->value.len - 1];
        ks_record_header_iter_t it;
        ks_str_t k;
        ks_bytes_t v;
        int32_t nh = 0;
        ks_record_headers_begin(r, &it);
        while (ks_record_headers_next(&it, &k, &v)) {
                if (k.len > 0)
                        sink ^= (uint8_t)k.ptr[k.len - 1];
                if (v.len > 0)
                        sink ^= v.ptr[v.len - 1];
                nh++;
        }
        if (nh != r->headers_count)
                c->bad = 1;
        (void)sink;
        return 0;
}

static void check(const uint8_t *buf, size_t len)
{
        ks_batch_info_t infos[MAX_INFOS];
        char msg[160];
        int count = -1, count2 = -1;

        memset(msg, 'x', sizeof(msg));
        ks_err_t err = ks_batches_validate(buf, len, 1 << 20, infos, MAX_INFOS, &count, msg, sizeof(msg));
        FUZZ_ASSERT(memchr(msg, '\0', sizeof(msg)) != NULL);
        FUZZ_ASSERT(count >= 0 && count <= MAX_INFOS);

        ks_err_t err2 = ks_batches_validate(buf, len, 1 << 20, NULL, 0, &count2, NULL, 0);
        if (err == KS_ERR_NONE) {
                FUZZ_ASSERT(err2 == KS_ERR_NONE && count2 == count);
        } else if (count2 < MAX_INFOS || count < MAX_INFOS) {
                FUZZ_ASSERT(err2 == err && count2 == count);
        }

        if (err != KS_ERR_NONE) {
                FUZZ_ASSERT(err == KS_ERR_CORRUPT_MESSAGE || err == KS_ERR_INVALID_RECORD ||
                            err == KS_ERR_MESSAGE_TOO_LARGE || err == KS_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT);
                FUZZ_ASSERT(msg[0] != '\0');
                return;
        }
        FUZZ_ASSERT(msg[0] == '\0');
        FUZZ_ASSERT(count >= 1);
        size_t pos = 0;
        for (int i = 0; i < count; i++) {
                const ks_batch_info_t *b = &infos[i];
                ks_batch_info_t again;
                FUZZ_ASSERT(b->pos == pos);
                FUZZ_ASSERT(b->size >= KS_BATCH_HEADER_SIZE && b->size <= len - pos);
                FUZZ_ASSERT(ks_batch_header_parse(buf + pos, b->size, &again) == KS_ERR_NONE);
                FUZZ_ASSERT(again.size == b->size && again.crc == b->crc);
                FUZZ_ASSERT(ks_batch_crc_compute(buf + pos, b->size) == b->crc);
                FUZZ_ASSERT(b->base_offset == 0 && b->records_count >= 1);
                FUZZ_ASSERT(b->last_offset_delta == b->records_count - 1);
                if (ks_batch_compression(b) == KS_BATCH_COMPRESSION_NONE) {
                        walk_ctx_t c = { 0, 1, 0 };
                        FUZZ_ASSERT(ks_batch_records_foreach(buf + pos, b->size, on_record, &c) == KS_ERR_NONE);
                        FUZZ_ASSERT(c.seen == b->records_count && !c.bad);
                }
                pos += b->size;
        }
        FUZZ_ASSERT(pos == len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        /* Exact-size heap copy so ASan catches any read past the end. */
        uint8_t *buf = malloc(size ? size : 1);
        FUZZ_ASSERT(buf != NULL);
        memcpy(buf, data, size);

        check(buf, size);

        /* The record walker on arbitrary bytes. */
        walk_ctx_t c = { 0, 0, 0 };
        ks_err_t err = ks_batch_records_foreach(buf, size, on_record, &c);
        FUZZ_ASSERT(err == KS_ERR_NONE || err == KS_ERR__CORRUPT || err == KS_ERR__INVALID_ARG);
        FUZZ_ASSERT(!c.bad);

        /* Recompute the CRC of every framed batch, then validate again. */
        size_t pos = 0;
        while (size - pos >= KS_BATCH_HEADER_SIZE) {
                int32_t blen = (int32_t)ks_be32_get(buf + pos + 8);
                if (blen < KS_BATCH_HEADER_SIZE - KS_BATCH_LOG_OVERHEAD ||
                    (size_t)blen > size - pos - KS_BATCH_LOG_OVERHEAD)
                        break;
                size_t bsize = KS_BATCH_LOG_OVERHEAD + (size_t)blen;
                ks_be32_put(buf + pos + KS_BATCH_CRC_OFFSET, ks_batch_crc_compute(buf + pos, bsize));
                pos += bsize;
        }
        check(buf, size);

        /* Patching never disturbs the CRC. */
        if (size >= KS_BATCH_HEADER_SIZE) {
                ks_batch_info_t a, b;
                if (ks_batch_header_parse(buf, size, &a) == KS_ERR_NONE) {
                        uint32_t crc = ks_batch_crc_compute(buf, a.size);
                        ks_batch_set_base_offset(buf, 123456789);
                        ks_batch_set_leader_epoch(buf, 9);
                        FUZZ_ASSERT(ks_batch_header_parse(buf, size, &b) == KS_ERR_NONE);
                        FUZZ_ASSERT(b.base_offset == 123456789 && b.partition_leader_epoch == 9);
                        FUZZ_ASSERT(ks_batch_crc_compute(buf, b.size) == crc);
                }
        }
        free(buf);
        return 0;
}
