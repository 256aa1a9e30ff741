/*
 * fuzz_request.c — libFuzzer target for the protocol codec.
 *
 * Input: a request frame body (what follows the 4-byte size): request header,
 * then the body.  For a generated API and a version in its range, the body is
 * decoded as the request (and, for extra coverage, as the response) of that
 * API/version; whatever decodes is encoded again, the encoding decoded again
 * and encoded once more.  Invariants checked (abort on violation):
 *   - decoding never crashes, never reads outside the input (ASan);
 *   - a decoded message always re-encodes;
 *   - that encoding decodes strictly (no trailing bytes), to an equal
 *     message, and re-encodes to identical bytes;
 *   - ks_msg_encoded_size agrees with the encoder.
 *
 * Build: make fuzz   (or clang -g -O1 -fsanitize=fuzzer,address,undefined ...)
 * Seeds: tests/fuzz/corpus/fuzz_request/ (written by the unit test
 *        codec_write_fuzz_corpus with KS_FUZZ_CORPUS_DIR set).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "protocol/codec.h"
#include "util/arena.h"
#include "util/wbuf.h"

static uint8_t *flatten(ks_wbuf_t *w, size_t *len)
{
        *len = ks_wbuf_len(w);
        uint8_t *buf = malloc(*len ? *len : 1);
        FUZZ_ASSERT(buf != NULL);
        ks_wbuf_copyout(w, buf);
        return buf;
}

static void roundtrip(const ks_struct_desc_t *d, int16_t version, bool flexible,
                      const uint8_t *body, size_t len)
{
        ks_arena_t arena;
        ks_wbuf_t w1, w2;
        size_t consumed = 0, len1 = 0, len2 = 0, sz = 0;

        ks_arena_init(&arena, 0);
        ks_wbuf_init(&w1);
        ks_wbuf_init(&w2);

        void *msg = ks_arena_alloc(&arena, d->size);
        FUZZ_ASSERT(msg != NULL);
        ks_err_t err = ks_msg_decode(d, version, flexible, body, len, &arena, msg, &consumed);
        if (err) {
                FUZZ_ASSERT(err == KS_ERR__PARSE);
                goto out;
        }
        FUZZ_ASSERT(consumed <= len);

        FUZZ_ASSERT(ks_msg_encode(d, version, flexible, msg, &w1) == 0);
        uint8_t *b1 = flatten(&w1, &len1);
        FUZZ_ASSERT(ks_msg_encoded_size(d, version, flexible, msg, &sz) == 0 && sz == len1);

        void *msg2 = ks_arena_alloc(&arena, d->size);
        FUZZ_ASSERT(msg2 != NULL);
        FUZZ_ASSERT(ks_msg_decode(d, version, flexible, b1, len1, &arena, msg2, NULL) == 0);
        FUZZ_ASSERT(ks_msg_equal(d, version, msg, msg2));

        FUZZ_ASSERT(ks_msg_encode(d, version, flexible, msg2, &w2) == 0);
        uint8_t *b2 = flatten(&w2, &len2);
        FUZZ_ASSERT(len1 == len2 && memcmp(b1, b2, len1) == 0);
        free(b1);
        free(b2);
out:
        ks_wbuf_destroy(&w1);
        ks_wbuf_destroy(&w2);
        ks_arena_destroy(&arena);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        ks_req_header_t h;
        size_t off = 0;

        /* Header versions of every key/version must be sane. */
        if (ks_req_header_parse(data, size, &h, &off) != 0)
                return 0;
        FUZZ_ASSERT(off <= size);
        int hv = ks_request_header_version(h.RequestApiKey, h.RequestApiVersion);
        FUZZ_ASSERT(hv == 1 || hv == 2);

        const ks_api_desc_t *api = ks_api_desc(h.RequestApiKey);
        if (!api)
                return 0;
        const uint8_t *body = data + off;
        size_t len = size - off;
        int16_t v = h.RequestApiVersion;

        if (v < api->min_version || v > api->max_version) {
                ks_arena_t arena;
                void *out = (void *)1;
                ks_arena_init(&arena, 0);
                FUZZ_ASSERT(ks_request_decode(api, v, body, len, &arena, &out) ==
                            KS_ERR_UNSUPPORTED_VERSION);
                FUZZ_ASSERT(out == NULL);
                ks_arena_destroy(&arena);
                return 0;
        }
        bool flex = ks_api_flexible(api, v);
        roundtrip(api->request, v, flex, body, len);
        roundtrip(api->response, v, flex, body, len);

        /* The strict API-level decoder must agree with the generic one. */
        ks_arena_t arena;
        void *req = NULL;
        ks_arena_init(&arena, 0);
        ks_err_t err = ks_request_decode(api, v, body, len, &arena, &req);
        FUZZ_ASSERT(err == 0 || err == KS_ERR__PARSE);
        FUZZ_ASSERT((err == 0) == (req != NULL));
        ks_arena_destroy(&arena);
        return 0;
}
