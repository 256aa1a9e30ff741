/*
 * test_codec.c — tests of the generated Kafka codec (protocol/codec.h,
 * the generated tables in protocol/gen), the arena, the output buffer and the
 * error table.
 *
 * Setting KS_FUZZ_CORPUS_DIR=<dir> makes the codec_write_fuzz_corpus test
 * write seed request frames for tests/fuzz/fuzz_request.c into <dir>.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "protocol/codec.h"
#include "protocol/gen/kafka_errors.h"
#include "protocol/gen/kafka_msgs.h"
#include "test.h"
#include "util/arena.h"
#include "util/bytes.h"
#include "util/wbuf.h"

/* ------------------------------------------------------------------ */
/* Helpers                                                            */
/* ------------------------------------------------------------------ */

typedef struct {
        uint64_t s;
} rng_t;

static uint64_t rnd(rng_t *r)
{
        /* xorshift64* */
        r->s ^= r->s >> 12;
        r->s ^= r->s << 25;
        r->s ^= r->s >> 27;
        return r->s * 0x2545F4914F6CDD1DULL;
}

static uint32_t rnd_below(rng_t *r, uint32_t n)
{
        return (uint32_t)(rnd(r) % n);
}

/* Encodes @msg into a malloc'ed flat buffer; returns NULL on error (and
 * stores the error in *err). */
static uint8_t *encode_flat(const ks_struct_desc_t *d, int16_t v, bool flex, const void *msg,
                            size_t *len, ks_err_t *err)
{
        ks_wbuf_t w;
        ks_wbuf_init(&w);
        *err = ks_msg_encode(d, v, flex, msg, &w);
        if (*err) {
                ks_wbuf_destroy(&w);
                return NULL;
        }
        *len = ks_wbuf_len(&w);
        uint8_t *buf = malloc(*len ? *len : 1);
        if (buf)
                ks_wbuf_copyout(&w, buf);
        ks_wbuf_destroy(&w);
        return buf;
}

/* ------------------------------------------------------------------ */
/* Descriptor-driven random message generator                        */
/* ------------------------------------------------------------------ */

typedef struct {
        rng_t rng;
        ks_arena_t *arena;
        int16_t version;
        bool flexible;
} gen_t;

static void gen_struct(gen_t *g, const ks_struct_desc_t *d, void *msg);

static ks_str_t gen_str(gen_t *g, int32_t min_len)
{
        static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789-._";
        int32_t len = (int32_t)rnd_below(&g->rng, 6);
        if (rnd_below(&g->rng, 16) == 0)
                len = 120 + (int32_t)rnd_below(&g->rng, 40); /* 2-byte varint lengths */
        if (len < min_len)
                len = min_len;
        char *p = ks_arena_alloc(g->arena, (size_t)len + 1);
        for (int32_t i = 0; i < len; i++)
                p[i] = alphabet[rnd_below(&g->rng, sizeof(alphabet) - 1)];
        p[len] = '\0';
        return (ks_str_t){ p, len };
}

static ks_bytes_t gen_bytes(gen_t *g, int32_t min_len)
{
        int32_t len = (int32_t)rnd_below(&g->rng, 8);
        if (rnd_below(&g->rng, 8) == 0)
                len = 500 + (int32_t)rnd_below(&g->rng, 200); /* exercises wbuf refs */
        if (len < min_len)
                len = min_len;
        uint8_t *p = ks_arena_alloc(g->arena, (size_t)len);
        for (int32_t i = 0; i < len; i++)
                p[i] = (uint8_t)rnd(&g->rng);
        return (ks_bytes_t){ p, len };
}

/* Random value for one scalar / element.  @nonnull: never null;
 * @nondefault: must differ from the field's default (tagged fields). */
static void gen_value(gen_t *g, const ks_field_desc_t *f, uint8_t *p, bool nullable,
                      bool nondefault)
{
        bool make_null = nullable && rnd_below(&g->rng, 4) == 0;
        uint64_t x = rnd(&g->rng);

        switch ((ks_ftype_t)f->type) {
        case KS_FT_BOOL:
                *(bool *)p = nondefault ? f->def_int == 0 : (x & 1);
                break;
        case KS_FT_INT8:
                *(int8_t *)p = (int8_t)x;
                if (nondefault && *(int8_t *)p == (int8_t)f->def_int)
                        *(int8_t *)p = (int8_t)(f->def_int + 1);
                break;
        case KS_FT_INT16:
                *(int16_t *)p = (int16_t)x;
                if (nondefault && *(int16_t *)p == (int16_t)f->def_int)
                        *(int16_t *)p = (int16_t)(f->def_int + 1);
                break;
        case KS_FT_UINT16:
                *(uint16_t *)p = (uint16_t)x;
                if (nondefault && *(uint16_t *)p == (uint16_t)f->def_int)
                        *(uint16_t *)p = (uint16_t)(f->def_int + 1);
                break;
        case KS_FT_INT32:
                *(int32_t *)p = (int32_t)x;
                if (nondefault && *(int32_t *)p == (int32_t)f->def_int)
                        *(int32_t *)p = (int32_t)(f->def_int + 1);
                break;
        case KS_FT_UINT32:
                *(uint32_t *)p = (uint32_t)x;
                if (nondefault && *(uint32_t *)p == (uint32_t)f->def_int)
                        *(uint32_t *)p = (uint32_t)(f->def_int + 1);
                break;
        case KS_FT_INT64:
                *(int64_t *)p = (int64_t)x;
                if (nondefault && *(int64_t *)p == f->def_int)
                        *(int64_t *)p = (int64_t)((uint64_t)f->def_int + 1);
                break;
        case KS_FT_FLOAT64:
                *(double *)p = (double)(int32_t)x / 7.0 + 0.5;
                break;
        case KS_FT_UUID:
                for (int i = 0; i < 16; i++)
                        ((ks_uuid_t *)p)->b[i] = (uint8_t)rnd(&g->rng);
                break;
        case KS_FT_STRING:
                if (make_null && !(nondefault && f->def_null))
                        *(ks_str_t *)p = KS_STR_NULL;
                else
                        *(ks_str_t *)p = gen_str(g, nondefault ? f->def_str_len + 1 : 0);
                break;
        case KS_FT_BYTES:
        case KS_FT_RECORDS:
                if (make_null && !(nondefault && f->def_null))
                        *(ks_bytes_t *)p = KS_BYTES_NULL;
                else
                        *(ks_bytes_t *)p = gen_bytes(g, nondefault ? 1 : 0);
                break;
        case KS_FT_STRUCT:
                if (f->flags & KS_FF_PTR) {
                        if (make_null && !nondefault) {
                                *(void **)p = NULL;
                        } else {
                                void *sub = ks_msg_new(f->sub, g->arena);
                                gen_struct(g, f->sub, sub);
                                *(void **)p = sub;
                        }
                } else {
                        ks_msg_init(f->sub, p);
                        gen_struct(g, f->sub, p);
                }
                break;
        }
}

static void gen_field(gen_t *g, const ks_field_desc_t *f, void *msg)
{
        uint8_t *p = (uint8_t *)msg + f->offset;
        bool nullable = ks_vrange_has(f->nullable, g->version);
        bool tagged = g->flexible && f->tag >= 0 && ks_vrange_has(f->tagged, g->version);

        if (!f->is_array) {
                gen_value(g, f, p, nullable, tagged);
                return;
        }
        ks_array_t a = { NULL, (int32_t)rnd_below(&g->rng, 4) };
        if (tagged && a.count == 0)
                a.count = 1;
        if (nullable && !tagged && rnd_below(&g->rng, 4) == 0)
                a.count = -1;
        if (a.count > 0) {
                a.items = ks_array_new(f->elem_size, a.count, g->arena);
                for (int32_t i = 0; i < a.count; i++)
                        gen_value(g, f, (uint8_t *)a.items + (size_t)i * f->elem_size, false,
                                  false);
        }
        memcpy(p, &a, sizeof(a));
}

static void gen_struct(gen_t *g, const ks_struct_desc_t *d, void *msg)
{
        for (unsigned i = 0; i < d->field_count; i++) {
                const ks_field_desc_t *f = &d->fields[i];
                if (ks_vrange_has(f->versions, g->version))
                        gen_field(g, f, msg);
        }
}

static void *gen_message(ks_arena_t *arena, const ks_struct_desc_t *d, int16_t v, bool flex,
                         uint64_t seed)
{
        gen_t g = { { seed * 0x9E3779B97F4A7C15ULL + 1 }, arena, v, flex };
        void *msg = ks_msg_new(d, arena);
        gen_struct(&g, d, msg);
        return msg;
}

/* ------------------------------------------------------------------ */
/* Round trips for every API x version x {request, response}          */
/* ------------------------------------------------------------------ */

static int roundtrip_one(const ks_api_desc_t *api, bool response, int16_t v, uint64_t seed)
{
        const ks_struct_desc_t *d = response ? api->response : api->request;
        bool flex = ks_api_flexible(api, v);
        ks_arena_t arena;
        ks_err_t err;
        size_t len1 = 0, len2 = 0, consumed = 0, sz = 0;
        int ok = 1;

        ks_arena_init(&arena, 0);
        void *msg = gen_message(&arena, d, v, flex, seed);
        uint8_t *b1 = encode_flat(d, v, flex, msg, &len1, &err);
        if (!b1) {
                ks_test_fail(__FILE__, __LINE__, "%s %s v%d: encode failed: %d", api->name,
                             response ? "response" : "request", v, err);
                ks_arena_destroy(&arena);
                return 0;
        }
        if (ks_msg_encoded_size(d, v, flex, msg, &sz) != 0 || sz != len1) {
                ks_test_fail(__FILE__, __LINE__, "%s v%d: encoded_size %zu != %zu", api->name, v,
                             sz, len1);
                ok = 0;
        }

        void *msg2 = ks_arena_alloc(&arena, d->size);
        err = ks_msg_decode(d, v, flex, b1, len1, &arena, msg2, &consumed);
        if (err || consumed != len1) {
                ks_test_fail(__FILE__, __LINE__,
                             "%s %s v%d seed %llu: decode failed: err %d, consumed %zu of %zu",
                             api->name, response ? "response" : "request", v,
                             (unsigned long long)seed, err, consumed, len1);
                ok = 0;
        } else {
                if (!ks_msg_equal(d, v, msg, msg2)) {
                        ks_test_fail(__FILE__, __LINE__, "%s %s v%d seed %llu: decoded != original",
                                     api->name, response ? "response" : "request", v,
                                     (unsigned long long)seed);
                        ok = 0;
                }
                uint8_t *b2 = encode_flat(d, v, flex, msg2, &len2, &err);
                if (!b2 || !ks_test_mem_eq(__FILE__, __LINE__, api->name, b1, len1, b2, len2))
                        ok = 0;
                free(b2);
        }

        /* The API-level wrappers must agree with the generic calls. */
        void *msg3 = NULL;
        err = response ? ks_response_decode(api, v, b1, len1, &arena, &msg3)
                       : ks_request_decode(api, v, b1, len1, &arena, &msg3);
        if (err || !msg3 || !ks_msg_equal(d, v, msg, msg3)) {
                ks_test_fail(__FILE__, __LINE__, "%s v%d: api-level decode failed (%d)",
                             api->name, v, err);
                ok = 0;
        }
        free(b1);
        ks_arena_destroy(&arena);
        return ok;
}

TEST(codec_roundtrip_all_apis)
{
        int combos = 0;
        for (int i = 0; i < ks_api_descs_count; i++) {
                const ks_api_desc_t *api = &ks_api_descs[i];
                for (int16_t v = api->min_version; v <= api->max_version; v++) {
                        for (int resp = 0; resp <= 1; resp++) {
                                for (uint64_t seed = 1; seed <= 25; seed++) {
                                        if (!roundtrip_one(api, resp, v, seed + (uint64_t)v * 1000))
                                                break;
                                }
                                combos++;
                        }
                }
        }
        CHECK(combos > 300);
}

TEST(codec_api_table)
{
        CHECK_EQ_INT(ks_api_descs_count, 30);
        for (int i = 0; i < ks_api_descs_count; i++) {
                const ks_api_desc_t *a = &ks_api_descs[i];
                CHECK(ks_api_desc(a->api_key) == a);
                CHECK(a->request && a->response);
                CHECK(a->min_version <= a->max_version);
                if (i > 0)
                        CHECK(ks_api_descs[i - 1].api_key < a->api_key);
        }
        CHECK(ks_api_desc(-1) == NULL);
        CHECK(ks_api_desc(4) == NULL); /* LeaderAndIsr: not generated */
        CHECK(ks_api_desc(1000) == NULL);
        const ks_api_desc_t *p = ks_api_desc(KS_API_PRODUCE);
        REQUIRE(p != NULL);
        CHECK_EQ_STR(p->name, "Produce");
        CHECK_EQ_INT(p->first_flexible, 9);
        CHECK_EQ_INT(ks_api_desc(KS_API_SASL_HANDSHAKE)->first_flexible, INT16_MAX);
        CHECK_EQ_INT(KS_API_DESCRIBE_CLUSTER, 60);
        CHECK_EQ_INT(KS_API_API_VERSIONS, 18);
        CHECK_EQ_INT(KS_API_OFFSET_FOR_LEADER_EPOCH, 23);
        CHECK_EQ_INT(KS_API_CONSUMER_GROUP_HEARTBEAT, 68);
}

/* ------------------------------------------------------------------ */
/* Truncation: every strict prefix of a valid encoding is a parse error */
/* ------------------------------------------------------------------ */

TEST(codec_truncated_prefixes)
{
        long prefixes = 0;
        for (int i = 0; i < ks_api_descs_count; i++) {
                const ks_api_desc_t *api = &ks_api_descs[i];
                for (int16_t v = api->min_version; v <= api->max_version; v++) {
                        for (int resp = 0; resp <= 1; resp++) {
                                const ks_struct_desc_t *d = resp ? api->response : api->request;
                                bool flex = ks_api_flexible(api, v);
                                ks_arena_t arena;
                                ks_err_t err;
                                size_t len = 0;
                                ks_arena_init(&arena, 0);
                                void *msg = gen_message(&arena, d, v, flex, 77 + (uint64_t)v);
                                uint8_t *full = encode_flat(d, v, flex, msg, &len, &err);
                                void *out = ks_arena_alloc(&arena, d->size);
                                for (size_t n = 0; full && n < len; n++) {
                                        /* Exact-size copy so ASan sees any over-read. */
                                        uint8_t *pre = malloc(n ? n : 1);
                                        memcpy(pre, full, n);
                                        size_t used = 0;
                                        err = ks_msg_decode(d, v, flex, n ? pre : NULL, n, &arena,
                                                            out, &used);
                                        if (err != KS_ERR__PARSE) {
                                                ks_test_fail(__FILE__, __LINE__,
                                                             "%s %s v%d prefix %zu/%zu: err %d",
                                                             api->name, resp ? "resp" : "req", v,
                                                             n, len, err);
                                                free(pre);
                                                break;
                                        }
                                        free(pre);
                                        prefixes++;
                                }
                                CHECK(full != NULL);
                                free(full);
                                ks_arena_destroy(&arena);
                        }
                }
        }
        CHECK(prefixes > 10000);
}

/* ------------------------------------------------------------------ */
/* Known byte vectors                                                 */
/* ------------------------------------------------------------------ */

static void check_encoding(const char *file, int line, const ks_api_desc_t *api, bool response,
                           int16_t v, const void *msg, const uint8_t *expect, size_t expect_len)
{
        ks_wbuf_t w;
        ks_wbuf_init(&w);
        ks_err_t err = response ? ks_response_encode(api, v, msg, &w)
                                : ks_request_encode(api, v, msg, &w);
        if (err) {
                ks_test_fail(file, line, "encode failed: %d", err);
        } else {
                size_t len = ks_wbuf_len(&w);
                uint8_t *buf = malloc(len ? len : 1);
                ks_wbuf_copyout(&w, buf);
                ks_test_mem_eq(file, line, "encoding", buf, len, expect, expect_len);
                free(buf);
        }
        ks_wbuf_destroy(&w);
}

#define CHECK_ENCODING(api, resp, v, msg, ...)                                           \
        do {                                                                             \
                static const uint8_t exp_[] = { __VA_ARGS__ };                           \
                check_encoding(__FILE__, __LINE__, api, resp, v, msg, exp_, sizeof(exp_)); \
        } while (0)

TEST(codec_vector_api_versions_request_v3)
{
        const ks_api_desc_t *api = ks_api_desc(KS_API_API_VERSIONS);
        ks_ApiVersionsRequest req;
        ks_msg_init(api->request, &req);
        req.ClientSoftwareName = KS_STR("a");
        /* compact "a" = 02 'a'; compact "" = 01; no tagged fields = 00 */
        CHECK_ENCODING(api, false, 3, &req, 0x02, 'a', 0x01, 0x00);
        /* v0-2 have no fields at all */
        size_t sz = 1;
        CHECK_EQ_INT(ks_msg_encoded_size(api->request, 2, false, &req, &sz), 0);
        CHECK_EQ_INT(sz, 0);

        ks_arena_t arena;
        ks_arena_init(&arena, 0);
        static const uint8_t wire[] = { 0x03, 'k', 's', 0x04, '1', '.', '0', 0x00 };
        ks_ApiVersionsRequest *dec = NULL;
        REQUIRE_EQ_INT(ks_request_decode(api, 3, wire, sizeof(wire), &arena, (void **)&dec), 0);
        CHECK(ks_str_eq_c(dec->ClientSoftwareName, "ks"));
        CHECK(ks_str_eq_c(dec->ClientSoftwareVersion, "1.0"));
        CHECK(dec->ClientSoftwareName.ptr == (const char *)wire + 1); /* zero copy */
        /* bytes after a request body are ignored, as Kafka does (librdkafka
         * 2.0's ListGroups v4 sends one); after a response they are an error */
        static const uint8_t trailing[] = { 0x01, 0x01, 0x00, 0x00 };
        CHECK_EQ_INT(ks_request_decode(api, 3, trailing, sizeof(trailing), &arena, (void **)&dec), 0);
        void *rdec = NULL;
        static const uint8_t resp_trailing[] = { 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00 };
        CHECK_EQ_INT(ks_response_decode(api, 3, resp_trailing, sizeof(resp_trailing), &arena, &rdec),
                     KS_ERR__PARSE);
        /* unsupported version */
        CHECK_EQ_INT(ks_request_decode(api, 5, wire, sizeof(wire), &arena, (void **)&dec),
                     KS_ERR_UNSUPPORTED_VERSION);
        CHECK(dec == NULL);
        ks_arena_destroy(&arena);
}

TEST(codec_vector_metadata_null_topics)
{
        const ks_api_desc_t *api = ks_api_desc(KS_API_METADATA);
        ks_MetadataRequest req;
        ks_msg_init(api->request, &req);
        CHECK(req.AllowAutoTopicCreation == true); /* schema default "true" */
        CHECK_EQ_INT(req.Topics.count, 0);
        req.Topics.count = -1;
        CHECK_ENCODING(api, false, 1, &req, 0xff, 0xff, 0xff, 0xff);
        /* v0 does not allow null: encoded leniently as empty */
        CHECK_ENCODING(api, false, 0, &req, 0x00, 0x00, 0x00, 0x00);
        /* v9 (flexible): compact null array = 00, AllowAutoTopicCreation,
         * IncludeClusterAuthorizedOperations, IncludeTopicAuthorizedOperations,
         * then no tags */
        CHECK_ENCODING(api, false, 9, &req, 0x00, 0x01, 0x00, 0x00, 0x00);

        ks_arena_t arena;
        ks_arena_init(&arena, 0);
        static const uint8_t null_v1[] = { 0xff, 0xff, 0xff, 0xff };
        ks_MetadataRequest *dec = NULL;
        REQUIRE_EQ_INT(ks_request_decode(api, 1, null_v1, 4, &arena, (void **)&dec), 0);
        CHECK_EQ_INT(dec->Topics.count, -1);
        CHECK(dec->Topics.items == NULL);
        /* null is not allowed in v0 */
        CHECK_EQ_INT(ks_request_decode(api, 0, null_v1, 4, &arena, (void **)&dec), KS_ERR__PARSE);
        /* one topic "t" in v1 */
        static const uint8_t one_v1[] = { 0, 0, 0, 1, 0, 1, 't' };
        REQUIRE_EQ_INT(ks_request_decode(api, 1, one_v1, sizeof(one_v1), &arena, (void **)&dec), 0);
        REQUIRE_EQ_INT(dec->Topics.count, 1);
        CHECK(ks_str_eq_c(dec->Topics.items[0].Name, "t"));
        CHECK(dec->AllowAutoTopicCreation == true); /* absent in v1: default */
        ks_arena_destroy(&arena);
}

TEST(codec_vector_compact_string_varint_length)
{
        const ks_api_desc_t *api = ks_api_desc(KS_API_API_VERSIONS);
        char name[200];
        memset(name, 'x', sizeof(name));
        ks_ApiVersionsRequest req;
        ks_msg_init(api->request, &req);
        req.ClientSoftwareName = (ks_str_t){ name, 200 };
        uint8_t expect[200 + 4];
        expect[0] = 0xc9; /* 201 = 0xc9 0x01 as uvarint */
        expect[1] = 0x01;
        memset(expect + 2, 'x', 200);
        expect[202] = 0x01;
        expect[203] = 0x00;
        check_encoding(__FILE__, __LINE__, api, false, 3, &req, expect, sizeof(expect));

        ks_arena_t arena;
        ks_arena_init(&arena, 0);
        ks_ApiVersionsRequest *dec = NULL;
        REQUIRE_EQ_INT(ks_request_decode(api, 3, expect, sizeof(expect), &arena, (void **)&dec), 0);
        CHECK_EQ_INT(dec->ClientSoftwareName.len, 200);
        /* over-long varint (6 bytes) is rejected */
        static const uint8_t bad[] = { 0x81, 0x80, 0x80, 0x80, 0x80, 0x00, 0x01, 0x00 };
        CHECK_EQ_INT(ks_request_decode(api, 3, bad, sizeof(bad), &arena, (void **)&dec),
                     KS_ERR__PARSE);
        ks_arena_destroy(&arena);
}

TEST(codec_vector_tagged_fields)
{
        const ks_api_desc_t *api = ks_api_desc(KS_API_API_VERSIONS);
        ks_ApiVersionsResponse resp;
        ks_msg_init(api->response, &resp);
        CHECK_EQ_INT(resp.FinalizedFeaturesEpoch, -1);
        /* all tagged fields default: none written */
        CHECK_ENCODING(api, true, 3, &resp, 0, 0, 0x01, 0, 0, 0, 0, 0x00);
        resp.FinalizedFeaturesEpoch = 5;
        resp.ZkMigrationReady = true;
        resp.ThrottleTimeMs = 7;
        CHECK_ENCODING(api, true, 3, &resp,
                       0, 0,                      /* ErrorCode */
                       0x01,                      /* ApiKeys: empty compact array */
                       0, 0, 0, 7,                /* ThrottleTimeMs */
                       0x02,                      /* two tagged fields */
                       0x01, 0x08, 0, 0, 0, 0, 0, 0, 0, 5, /* tag 1, size 8 */
                       0x03, 0x01, 0x01);         /* tag 3, size 1, true */
        /* v0: tagged fields and ThrottleTimeMs do not exist; skipped silently */
        CHECK_ENCODING(api, true, 0, &resp, 0, 0, 0, 0, 0, 0);

        ks_arena_t arena;
        ks_arena_init(&arena, 0);
        ks_ApiVersionsResponse *dec = NULL;
        /* unknown tag 7 skipped, known tag 1 decoded */
        static const uint8_t unk[] = { 0, 0, 0x01, 0, 0, 0, 0, 0x02, 0x01, 0x08, 0, 0, 0, 0, 0,
                                       0, 0, 9, 0x07, 0x02, 0xaa, 0xbb };
        REQUIRE_EQ_INT(ks_response_decode(api, 3, unk, sizeof(unk), &arena, (void **)&dec), 0);
        CHECK_EQ_INT(dec->FinalizedFeaturesEpoch, 9);
        CHECK(dec->ZkMigrationReady == false);
        /* out-of-order tags */
        static const uint8_t order[] = { 0, 0, 0x01, 0, 0, 0, 0, 0x02, 0x03, 0x01, 0x01, 0x01,
                                         0x08, 0, 0, 0, 0, 0, 0, 0, 9 };
        CHECK_EQ_INT(ks_response_decode(api, 3, order, sizeof(order), &arena, (void **)&dec),
                     KS_ERR__PARSE);
        /* duplicate tags */
        static const uint8_t dup[] = { 0, 0, 0x01, 0, 0, 0, 0, 0x02, 0x03, 0x01, 0x01, 0x03,
                                       0x01, 0x00 };
        CHECK_EQ_INT(ks_response_decode(api, 3, dup, sizeof(dup), &arena, (void **)&dec),
                     KS_ERR__PARSE);
        /* known tag whose payload is shorter than its size */
        static const uint8_t sz[] = { 0, 0, 0x01, 0, 0, 0, 0, 0x01, 0x03, 0x02, 0x01, 0x00 };
        CHECK_EQ_INT(ks_response_decode(api, 3, sz, sizeof(sz), &arena, (void **)&dec),
                     KS_ERR__PARSE);
        /* tag size beyond the buffer */
        static const uint8_t big[] = { 0, 0, 0x01, 0, 0, 0, 0, 0x01, 0x07, 0x7f, 0x01 };
        CHECK_EQ_INT(ks_response_decode(api, 3, big, sizeof(big), &arena, (void **)&dec),
                     KS_ERR__PARSE);
        ks_arena_destroy(&arena);
}

TEST(codec_tagged_embedded_struct_default)
{
        /* FetchRequest.ReplicaState is a tagged embedded struct (tag 1, v15+)
         * whose fields default to -1: written only when not all-default. */
        const ks_api_desc_t *api = ks_api_desc(KS_API_FETCH);
        ks_FetchRequest req;
        ks_msg_init(api->request, &req);
        CHECK_EQ_INT(req.ReplicaId, -1);
        CHECK_EQ_INT(req.MaxBytes, 0x7fffffff);
        CHECK_EQ_INT(req.SessionEpoch, -1);
        CHECK_EQ_INT(req.ReplicaState.ReplicaId, -1);
        CHECK_EQ_INT(req.ReplicaState.ReplicaEpoch, -1);
        CHECK(req.ClusterId.len == -1 && req.ClusterId.ptr == NULL);
        CHECK(req.RackId.len == 0 && req.RackId.ptr != NULL);
        size_t plain = 0, tagged = 0;
        REQUIRE_EQ_INT(ks_msg_encoded_size(api->request, 15, true, &req, &plain), 0);
        req.ReplicaState.ReplicaEpoch = 3;
        REQUIRE_EQ_INT(ks_msg_encoded_size(api->request, 15, true, &req, &tagged), 0);
        /* + tag(1) + size(1) + 4 + 8 + struct's own empty tag section(1) */
        CHECK_EQ_INT(tagged, plain + 1 + 1 + 4 + 8 + 1);

        ks_wbuf_t w;
        ks_wbuf_init(&w);
        REQUIRE_EQ_INT(ks_request_encode(api, 15, &req, &w), 0);
        size_t len = ks_wbuf_len(&w);
        uint8_t *buf = malloc(len);
        ks_wbuf_copyout(&w, buf);
        ks_arena_t arena;
        ks_arena_init(&arena, 0);
        ks_FetchRequest *dec = NULL;
        REQUIRE_EQ_INT(ks_request_decode(api, 15, buf, len, &arena, (void **)&dec), 0);
        CHECK_EQ_INT(dec->ReplicaState.ReplicaEpoch, 3);
        CHECK_EQ_INT(dec->ReplicaState.ReplicaId, -1);
        free(buf);
        ks_arena_destroy(&arena);
        ks_wbuf_destroy(&w);
}

TEST(codec_nullable_struct_pointer)
{
        const ks_api_desc_t *api = ks_api_desc(KS_API_CONSUMER_GROUP_HEARTBEAT);
        ks_ConsumerGroupHeartbeatResponse resp;
        ks_msg_init(api->response, &resp);
        CHECK(resp.Assignment == NULL);
        CHECK(resp.ErrorMessage.len == -1);
        CHECK_ENCODING(api, true, 0, &resp,
                       0, 0, 0, 0,   /* ThrottleTimeMs */
                       0, 0,         /* ErrorCode */
                       0x00,         /* ErrorMessage null */
                       0x00,         /* MemberId null */
                       0, 0, 0, 0,   /* MemberEpoch */
                       0, 0, 0, 0,   /* HeartbeatIntervalMs */
                       0xff,         /* Assignment: null marker */
                       0x00);        /* tags */
        ks_ConsumerGroupHeartbeatResponse_Assignment asg;
        ks_msg_init(&ks_ConsumerGroupHeartbeatResponse_Assignment_desc, &asg);
        resp.Assignment = &asg;
        CHECK_ENCODING(api, true, 0, &resp, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0,
                       0x01,         /* present */
                       0x01,         /* TopicPartitions: empty */
                       0x00,         /* Assignment's tags */
                       0x00);
}

TEST(codec_lenient_null_encoding)
{
        /* MetadataResponse topic Name is nullable only from v12. */
        const ks_api_desc_t *api = ks_api_desc(KS_API_METADATA);
        ks_arena_t arena;
        ks_arena_init(&arena, 0);
        ks_MetadataResponse *resp = ks_msg_new(api->response, &arena);
        resp->Topics.items = ks_msg_new_array(&ks_MetadataResponse_MetadataResponseTopic_desc, 1,
                                              &arena);
        resp->Topics.count = 1;
        resp->Topics.items[0].Name = KS_STR_NULL;
        for (int16_t v = 0; v <= 12; v++) {
                ks_wbuf_t w;
                ks_wbuf_init(&w);
                CHECK_EQ_INT(ks_response_encode(api, v, resp, &w), 0);
                size_t len = ks_wbuf_len(&w);
                uint8_t *buf = malloc(len);
                ks_wbuf_copyout(&w, buf);
                ks_MetadataResponse *dec = NULL;
                CHECK_EQ_INT(ks_response_decode(api, v, buf, len, &arena, (void **)&dec), 0);
                if (dec && dec->Topics.count == 1)
                        CHECK_EQ_INT(dec->Topics.items[0].Name.len, v >= 12 ? -1 : 0);
                else
                        CHECK(0);
                free(buf);
                ks_wbuf_destroy(&w);
        }
        ks_arena_destroy(&arena);
}

TEST(codec_encode_invalid_args)
{
        const ks_api_desc_t *api = ks_api_desc(KS_API_METADATA);
        ks_MetadataRequest req;
        ks_msg_init(api->request, &req);
        ks_wbuf_t w;
        ks_wbuf_init(&w);
        req.Topics.count = 2; /* items NULL */
        CHECK_EQ_INT(ks_request_encode(api, 1, &req, &w), KS_ERR__INVALID_ARG);
        req.Topics.count = -2;
        CHECK_EQ_INT(ks_request_encode(api, 1, &req, &w), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_request_encode(api, 13, &req, &w), KS_ERR_UNSUPPORTED_VERSION);
        ks_MetadataRequest_MetadataRequestTopic t;
        ks_msg_init(&ks_MetadataRequest_MetadataRequestTopic_desc, &t);
        static char longname[40000];
        t.Name = (ks_str_t){ longname, (int32_t)sizeof(longname) };
        req.Topics.items = &t;
        req.Topics.count = 1;
        ks_wbuf_reset(&w);
        CHECK_EQ_INT(ks_request_encode(api, 1, &req, &w), KS_ERR__INVALID_ARG);
        ks_wbuf_destroy(&w);
}

/* A hand-made descriptor exercising features the 30 generated APIs do not use
 * (uint32, float64 and non-empty string defaults, a never-flexible string). */
typedef struct {
        uint32_t U;
        double F;
        ks_str_t S;
        ks_str_t Classic;
        uint16_t T;
} hand_msg_t;

static const ks_field_desc_t hand_fields[] = {
        { .name = "U", .offset = offsetof(hand_msg_t, U), .elem_size = 4, .type = KS_FT_UINT32,
          .versions = { 0, INT16_MAX }, .nullable = { 1, 0 }, .tagged = { 1, 0 }, .tag = -1,
          .def_int = 0xffffffffLL },
        { .name = "F", .offset = offsetof(hand_msg_t, F), .elem_size = 8, .type = KS_FT_FLOAT64,
          .versions = { 0, INT16_MAX }, .nullable = { 1, 0 }, .tagged = { 1, 0 }, .tag = -1,
          .def_float = 1.5 },
        { .name = "S", .offset = offsetof(hand_msg_t, S), .elem_size = sizeof(ks_str_t),
          .type = KS_FT_STRING, .versions = { 1, INT16_MAX }, .nullable = { 1, 0 },
          .tagged = { 1, INT16_MAX }, .tag = 4, .def_str = "abc", .def_str_len = 3 },
        { .name = "Classic", .offset = offsetof(hand_msg_t, Classic),
          .elem_size = sizeof(ks_str_t), .type = KS_FT_STRING, .flags = KS_FF_NEVER_FLEX,
          .versions = { 0, INT16_MAX }, .nullable = { 0, INT16_MAX }, .tagged = { 1, 0 },
          .tag = -1, .def_null = true },
        { .name = "T", .offset = offsetof(hand_msg_t, T), .elem_size = 2, .type = KS_FT_UINT16,
          .versions = { 1, INT16_MAX }, .nullable = { 1, 0 }, .tagged = { 1, INT16_MAX },
          .tag = 2, .def_int = 7 },
};
static const uint16_t hand_tagged[] = { 4, 2 }; /* ascending tag: T (2), S (4) */
static const ks_struct_desc_t hand_desc = { "Hand", sizeof(hand_msg_t), hand_fields, 5,
                                            hand_tagged, 2 };

TEST(codec_handmade_descriptor)
{
        hand_msg_t m;
        ks_msg_init(&hand_desc, &m);
        CHECK_EQ_INT(m.U, 0xffffffffu);
        CHECK(m.F == 1.5);
        CHECK(ks_str_eq_c(m.S, "abc"));
        CHECK_EQ_INT(m.Classic.len, -1);
        CHECK_EQ_INT(m.T, 7);

        static const uint8_t defaults_v1[] = {
                0xff, 0xff, 0xff, 0xff,                         /* U */
                0x3f, 0xf8, 0, 0, 0, 0, 0, 0,                   /* F = 1.5 */
                0xff, 0xff,                                     /* Classic: int16 null */
                0x00,                                           /* no tagged fields */
        };
        ks_wbuf_t w;
        ks_wbuf_init(&w);
        REQUIRE_EQ_INT(ks_msg_encode(&hand_desc, 1, true, &m, &w), 0);
        uint8_t buf[64];
        REQUIRE(ks_wbuf_len(&w) <= sizeof(buf));
        size_t len = ks_wbuf_len(&w);
        ks_wbuf_copyout(&w, buf);
        CHECK_EQ_MEM(buf, len, defaults_v1, sizeof(defaults_v1));

        m.S = KS_STR("xy");
        m.T = 9;
        m.Classic = KS_STR("c");
        static const uint8_t tagged_v1[] = {
                0xff, 0xff, 0xff, 0xff, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0,
                0x00, 0x01, 'c',                                /* classic string */
                0x02,                                           /* two tags */
                0x02, 0x02, 0x00, 0x09,                         /* tag 2: T */
                0x04, 0x03, 0x03, 'x', 'y',                     /* tag 4: S compact */
        };
        ks_wbuf_reset(&w);
        REQUIRE_EQ_INT(ks_msg_encode(&hand_desc, 1, true, &m, &w), 0);
        REQUIRE(ks_wbuf_len(&w) <= sizeof(buf));
        len = ks_wbuf_len(&w);
        ks_wbuf_copyout(&w, buf);
        CHECK_EQ_MEM(buf, len, tagged_v1, sizeof(tagged_v1));

        ks_arena_t arena;
        ks_arena_init(&arena, 0);
        hand_msg_t back;
        REQUIRE_EQ_INT(ks_msg_decode(&hand_desc, 1, true, buf, len, &arena, &back, NULL), 0);
        CHECK(ks_msg_equal(&hand_desc, 1, &m, &back));
        CHECK_EQ_INT(back.T, 9);
        /* v0 (non-flexible): S and T do not exist, decode gives defaults */
        ks_wbuf_reset(&w);
        REQUIRE_EQ_INT(ks_msg_encode(&hand_desc, 0, false, &m, &w), 0);
        len = ks_wbuf_len(&w);
        CHECK_EQ_INT(len, 4 + 8 + 3);
        ks_wbuf_copyout(&w, buf);
        REQUIRE_EQ_INT(ks_msg_decode(&hand_desc, 0, false, buf, len, &arena, &back, NULL), 0);
        CHECK(ks_str_eq_c(back.S, "abc"));
        CHECK_EQ_INT(back.T, 7);
        ks_arena_destroy(&arena);
        ks_wbuf_destroy(&w);
}

/* ------------------------------------------------------------------ */
/* Hostile inputs                                                     */
/* ------------------------------------------------------------------ */

TEST(codec_huge_array_count_fails_fast)
{
        const ks_api_desc_t *api = ks_api_desc(KS_API_METADATA);
        ks_arena_t arena;
        ks_arena_init(&arena, 0);
        void *out = NULL;
        uint8_t buf[14] = { 0x7f, 0xff, 0xff, 0xff };
        CHECK_EQ_INT(ks_request_decode(api, 1, buf, sizeof(buf), &arena, &out), KS_ERR__PARSE);
        /* flexible: uvarint 2^31 (count 2^31 - 1) with a few bytes left */
        uint8_t fbuf[16] = { 0x80, 0x80, 0x80, 0x80, 0x08 };
        CHECK_EQ_INT(ks_request_decode(api, 9, fbuf, sizeof(fbuf), &arena, &out), KS_ERR__PARSE);
        /* uvarint 0xffffffff: count would not fit in int32 */
        uint8_t xbuf[16] = { 0xff, 0xff, 0xff, 0xff, 0x0f };
        CHECK_EQ_INT(ks_request_decode(api, 9, xbuf, sizeof(xbuf), &arena, &out), KS_ERR__PARSE);
        /* count 3 with 4 bytes left: rejected by the per-element minimum (2) */
        uint8_t cbuf[8] = { 0, 0, 0, 3, 0, 1, 'a', 0 };
        CHECK_EQ_INT(ks_request_decode(api, 1, cbuf, sizeof(cbuf), &arena, &out), KS_ERR__PARSE);
        /* only the message struct itself was allocated */
        CHECK(arena.allocated < 1024);

        /* bytes length beyond the buffer */
        const ks_api_desc_t *sg = ks_api_desc(KS_API_SYNC_GROUP);
        static const uint8_t bbuf[] = { 0, 0, 0x7f, 0xff, 0xff, 0xff, 1, 2, 3 };
        CHECK_EQ_INT(ks_response_decode(sg, 0, bbuf, sizeof(bbuf), &arena, &out), KS_ERR__PARSE);
        /* negative length other than -1 */
        static const uint8_t nbuf[] = { 0, 0, 0xff, 0xff, 0xff, 0xfe };
        CHECK_EQ_INT(ks_response_decode(sg, 0, nbuf, sizeof(nbuf), &arena, &out), KS_ERR__PARSE);
        ks_arena_destroy(&arena);
}

TEST(codec_string_limits)
{
        /* A classic string longer than 0x7fff cannot be expressed; a compact
         * one can, and is rejected like Kafka does. */
        const ks_api_desc_t *api = ks_api_desc(KS_API_API_VERSIONS);
        size_t n = 0x8000;
        uint8_t *buf = malloc(n + 8);
        size_t o = ks_uvarint_put(buf, (uint32_t)n + 1);
        memset(buf + o, 'a', n);
        buf[o + n] = 0x01;
        buf[o + n + 1] = 0x00;
        ks_arena_t arena;
        ks_arena_init(&arena, 0);
        void *out = NULL;
        CHECK_EQ_INT(ks_request_decode(api, 3, buf, o + n + 2, &arena, &out), KS_ERR__PARSE);
        free(buf);
        ks_arena_destroy(&arena);
}

/* ------------------------------------------------------------------ */
/* Headers and framing                                                */
/* ------------------------------------------------------------------ */

TEST(codec_header_versions)
{
        CHECK_EQ_INT(ks_response_header_version(KS_API_API_VERSIONS, 0), 0);
        CHECK_EQ_INT(ks_response_header_version(KS_API_API_VERSIONS, 3), 0);
        CHECK_EQ_INT(ks_response_header_version(KS_API_API_VERSIONS, 4), 0);
        CHECK_EQ_INT(ks_request_header_version(KS_API_API_VERSIONS, 3), 2);
        CHECK_EQ_INT(ks_request_header_version(KS_API_API_VERSIONS, 2), 1);
        CHECK_EQ_INT(ks_request_header_version(KS_API_API_VERSIONS, 9), 2); /* future */
        CHECK_EQ_INT(ks_request_header_version(KS_API_METADATA, 8), 1);
        CHECK_EQ_INT(ks_request_header_version(KS_API_METADATA, 9), 2);
        CHECK_EQ_INT(ks_response_header_version(KS_API_METADATA, 8), 0);
        CHECK_EQ_INT(ks_response_header_version(KS_API_METADATA, 9), 1);
        CHECK_EQ_INT(ks_request_header_version(KS_API_SASL_HANDSHAKE, 1), 1);
        CHECK_EQ_INT(ks_response_header_version(KS_API_SASL_HANDSHAKE, 1), 0);
        CHECK_EQ_INT(ks_request_header_version(KS_API_DESCRIBE_CLUSTER, 0), 2);
        CHECK_EQ_INT(ks_request_header_version(4, 7), 1); /* unknown api */
        CHECK_EQ_INT(ks_response_header_version(4, 7), 0);
}

TEST(codec_req_header_parse_v1)
{
        /* Metadata v1: header v1 */
        static const uint8_t buf[] = { 0, 3, 0, 1, 0, 0, 0, 7, 0, 2, 'a', 'b', 0xff, 0xff, 0xff, 0xff };
        ks_req_header_t h;
        size_t off = 0;
        REQUIRE_EQ_INT(ks_req_header_parse(buf, sizeof(buf), &h, &off), 0);
        CHECK_EQ_INT(h.RequestApiKey, 3);
        CHECK_EQ_INT(h.RequestApiVersion, 1);
        CHECK_EQ_INT(h.CorrelationId, 7);
        CHECK(ks_str_eq_c(h.ClientId, "ab"));
        CHECK_EQ_INT(off, 12);
        /* null client id */
        static const uint8_t nul[] = { 0, 3, 0, 1, 0, 0, 0, 8, 0xff, 0xff };
        REQUIRE_EQ_INT(ks_req_header_parse(nul, sizeof(nul), &h, &off), 0);
        CHECK_EQ_INT(h.ClientId.len, -1);
        CHECK_EQ_INT(off, 10);
        /* truncated at every length */
        for (size_t n = 0; n < 12; n++)
                CHECK_EQ_INT(ks_req_header_parse(buf, n, &h, &off), KS_ERR__PARSE);
        /* bad client id length */
        static const uint8_t bad[] = { 0, 3, 0, 1, 0, 0, 0, 8, 0xff, 0xfe };
        CHECK_EQ_INT(ks_req_header_parse(bad, sizeof(bad), &h, &off), KS_ERR__PARSE);
        /* unknown api key: parsed as v1 */
        static const uint8_t unk[] = { 0x03, 0xe7, 0, 0, 0, 0, 0, 9, 0, 0, 0x01 };
        REQUIRE_EQ_INT(ks_req_header_parse(unk, sizeof(unk), &h, &off), 0);
        CHECK_EQ_INT(h.RequestApiKey, 999);
        CHECK_EQ_INT(off, 10);
}

TEST(codec_req_header_parse_v2)
{
        /* ApiVersions v3: header v2, classic client id, tagged section */
        static const uint8_t buf[] = { 0, 18, 0, 3, 0, 0, 0, 42, 0, 1, 'c', 0x00, 0x02, 'a', 0x01,
                                       0x00 };
        ks_req_header_t h;
        size_t off = 0;
        REQUIRE_EQ_INT(ks_req_header_parse(buf, sizeof(buf), &h, &off), 0);
        CHECK_EQ_INT(h.RequestApiKey, 18);
        CHECK_EQ_INT(h.CorrelationId, 42);
        CHECK(ks_str_eq_c(h.ClientId, "c"));
        CHECK_EQ_INT(off, 12);
        for (size_t n = 0; n < 12; n++)
                CHECK_EQ_INT(ks_req_header_parse(buf, n, &h, &off), KS_ERR__PARSE);
        /* header tagged fields are skipped */
        static const uint8_t tags[] = { 0, 18, 0, 3, 0, 0, 0, 42, 0xff, 0xff, 0x02, 0x00, 0x01,
                                        0xaa, 0x05, 0x00, 0x01 };
        REQUIRE_EQ_INT(ks_req_header_parse(tags, sizeof(tags), &h, &off), 0);
        CHECK_EQ_INT(off, 16);
        /* descending header tags rejected */
        static const uint8_t desc[] = { 0, 18, 0, 3, 0, 0, 0, 42, 0xff, 0xff, 0x02, 0x05, 0x00,
                                        0x01, 0x00 };
        CHECK_EQ_INT(ks_req_header_parse(desc, sizeof(desc), &h, &off), KS_ERR__PARSE);
        /* body decodes from body_off */
        ks_arena_t arena;
        ks_arena_init(&arena, 0);
        ks_ApiVersionsRequest *req = NULL;
        REQUIRE_EQ_INT(ks_req_header_parse(buf, sizeof(buf), &h, &off), 0);
        REQUIRE_EQ_INT(ks_request_decode(ks_api_desc(h.RequestApiKey), h.RequestApiVersion,
                                         buf + off, sizeof(buf) - off, &arena, (void **)&req),
                       0);
        CHECK(ks_str_eq_c(req->ClientSoftwareName, "a"));
        ks_arena_destroy(&arena);
}

TEST(codec_frames)
{
        ks_wbuf_t w;
        ks_wbuf_init(&w);
        /* Two responses back to back in one buffer. */
        size_t f1 = ks_frame_begin_response(&w, KS_API_API_VERSIONS, 3, 0x01020304);
        REQUIRE_EQ_INT(f1, 0);
        ks_ApiVersionsResponse avr;
        ks_msg_init(ks_api_desc(KS_API_API_VERSIONS)->response, &avr);
        REQUIRE_EQ_INT(ks_response_encode(ks_api_desc(KS_API_API_VERSIONS), 3, &avr, &w), 0);
        ks_frame_finish(&w, f1);
        size_t f2 = ks_frame_begin_response(&w, KS_API_METADATA, 9, 5);
        REQUIRE(f2 != (size_t)-1);
        uint8_t body[3] = { 1, 2, 3 };
        ks_wbuf_put(&w, body, 3);
        ks_frame_finish(&w, f2);
        size_t len = ks_wbuf_len(&w);
        uint8_t *buf = malloc(len);
        ks_wbuf_copyout(&w, buf);
        static const uint8_t expect[] = {
                0, 0, 0, 12, 1, 2, 3, 4, /* size, corr id (header v0) */
                0, 0, 0x01, 0, 0, 0, 0, 0x00, /* ApiVersionsResponse v3 */
                0, 0, 0, 8, 0, 0, 0, 5, 0x00, /* size, corr, header v1 tags */
                1, 2, 3,
        };
        CHECK_EQ_MEM(buf, len, expect, sizeof(expect));
        int32_t corr = 0;
        size_t off = 0;
        CHECK_EQ_INT(ks_resp_header_parse(buf + 20, len - 20, 1, &corr, &off), 0);
        CHECK_EQ_INT(corr, 5);
        CHECK_EQ_INT(off, 5);
        free(buf);
        ks_wbuf_destroy(&w);

        /* request frame */
        ks_wbuf_init(&w);
        ks_req_header_t h = { KS_API_API_VERSIONS, 3, 9, KS_STR("id") };
        size_t f = ks_frame_begin_request(&w, &h);
        REQUIRE_EQ_INT(f, 0);
        ks_frame_finish(&w, f);
        static const uint8_t rexp[] = { 0, 0, 0, 13, 0, 18, 0, 3, 0, 0, 0, 9, 0, 2, 'i', 'd', 0 };
        len = ks_wbuf_len(&w);
        buf = malloc(len);
        ks_wbuf_copyout(&w, buf);
        CHECK_EQ_MEM(buf, len, rexp, sizeof(rexp));
        ks_req_header_t back;
        CHECK_EQ_INT(ks_req_header_parse(buf + 4, len - 4, &back, &off), 0);
        CHECK_EQ_INT(off, 13);
        CHECK_EQ_INT(back.CorrelationId, 9);
        free(buf);
        ks_wbuf_destroy(&w);
}

/* ------------------------------------------------------------------ */
/* Error table                                                        */
/* ------------------------------------------------------------------ */

TEST(codec_kafka_errors)
{
        CHECK_EQ_INT(KS_ERR_UNKNOWN_SERVER_ERROR, -1);
        CHECK_EQ_INT(KS_ERR_NONE, 0);
        CHECK_EQ_INT(KS_ERR_OFFSET_OUT_OF_RANGE, 1);
        CHECK_EQ_INT(KS_ERR_UNKNOWN_TOPIC_OR_PARTITION, 3);
        CHECK_EQ_INT(KS_ERR_UNSUPPORTED_VERSION, 35);
        CHECK_EQ_STR(ks_kafka_err_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        CHECK_EQ_STR(ks_kafka_err_name(-1), "UNKNOWN_SERVER_ERROR");
        CHECK_EQ_STR(ks_kafka_err_msg(0), "No error.");
        CHECK(ks_kafka_err_name(99) == NULL); /* gap in the table */
        CHECK(ks_kafka_err_msg(99) == NULL);
        CHECK(ks_kafka_err_name(-2) == NULL);
        CHECK(ks_kafka_err_name(KS_KAFKA_ERR_MAX + 1) == NULL);
        CHECK(ks_kafka_err_name(KS_KAFKA_ERR_MAX) != NULL);
        CHECK(ks_kafka_err_name(-1001) == NULL);
}

/* ------------------------------------------------------------------ */
/* Arena and output buffer                                            */
/* ------------------------------------------------------------------ */

TEST(arena_basics)
{
        ks_arena_t a;
        ks_arena_init(&a, 256);
        for (int i = 0; i < 1000; i++) {
                size_t n = (size_t)(i % 37) + 1;
                uint8_t *p = ks_arena_alloc(&a, n);
                REQUIRE(p != NULL);
                CHECK_EQ_INT((uintptr_t)p % KS_ARENA_ALIGN, 0);
                memset(p, 0xab, n);
        }
        uint8_t *big = ks_arena_alloc(&a, 100000); /* own chunk */
        REQUIRE(big != NULL);
        memset(big, 1, 100000);
        uint8_t *z = ks_arena_calloc(&a, 64);
        REQUIRE(z != NULL);
        for (int i = 0; i < 64; i++)
                CHECK_EQ_INT(z[i], 0);
        CHECK(ks_arena_alloc(&a, 0) != NULL);
        char *s = ks_arena_strndup(&a, "hello world", 5);
        CHECK_EQ_STR(s, "hello");
        ks_str_t f = ks_arena_str(&a, "%s-%d", "topic", 42);
        CHECK(ks_str_eq_c(f, "topic-42"));
        CHECK_EQ_INT(f.ptr[f.len], 0);
        ks_str_t d = ks_arena_str_dup(&a, KS_STR("abc"));
        CHECK(ks_str_eq_c(d, "abc"));
        CHECK(ks_arena_str_dup(&a, KS_STR_NULL).len == -1);
        ks_arena_reset(&a);
        CHECK_EQ_INT(a.allocated, 0);
        CHECK(a.chunks != NULL && a.cur == a.chunks);
        CHECK(ks_arena_alloc(&a, 10) != NULL);
        ks_arena_destroy(&a);
        CHECK(a.chunks == NULL);
}

TEST(wbuf_segments_and_consume)
{
        ks_wbuf_t w;
        ks_wbuf_init(&w);
        static uint8_t big[3000];
        for (size_t i = 0; i < sizeof(big); i++)
                big[i] = (uint8_t)(i * 7);
        uint8_t *r = ks_wbuf_reserve(&w, 4);
        REQUIRE(r != NULL);
        memset(r, 0, 4);
        CHECK_EQ_INT(ks_wbuf_put(&w, "abc", 3), 0);
        CHECK_EQ_INT(ks_wbuf_ref(&w, big, sizeof(big)), 0);  /* referenced */
        CHECK_EQ_INT(ks_wbuf_ref(&w, "xyz", 3), 0);           /* small: copied */
        for (int i = 0; i < 3000; i++)                          /* spills chunks */
                CHECK_EQ_INT(ks_wbuf_put(&w, "0123456789", 10), 0);
        size_t total = 4 + 3 + sizeof(big) + 3 + 30000;
        CHECK_EQ_INT(ks_wbuf_len(&w), total);
        ks_wbuf_patch_be32(&w, 0, (uint32_t)(total - 4));

        struct iovec *iov;
        int cnt;
        ks_wbuf_iov(&w, &iov, &cnt);
        CHECK(cnt >= 3);
        CHECK(iov[1].iov_base == (void *)big); /* no copy */
        size_t sum = 0;
        for (int i = 0; i < cnt; i++)
                sum += iov[i].iov_len;
        CHECK_EQ_INT(sum, total);

        uint8_t *flat = malloc(total);
        ks_wbuf_copyout(&w, flat);
        CHECK_EQ_INT(ks_be32_get(flat), total - 4);
        CHECK(memcmp(flat + 4, "abc", 3) == 0);
        CHECK(memcmp(flat + 7, big, sizeof(big)) == 0);
        CHECK(memcmp(flat + 7 + sizeof(big), "xyz", 3) == 0);

        /* consume in odd steps and check the remaining content each time */
        size_t gone = 0;
        while (ks_wbuf_len(&w) > 0) {
                size_t step = 997;
                ks_wbuf_consume(&w, step);
                gone = gone + step > total ? total : gone + step;
                CHECK_EQ_INT(ks_wbuf_len(&w), total - gone);
                ks_wbuf_iov(&w, &iov, &cnt);
                if (cnt > 0)
                        CHECK(memcmp(iov[0].iov_base, flat + gone, 1) == 0);
        }
        ks_wbuf_iov(&w, &iov, &cnt);
        CHECK_EQ_INT(cnt, 0);
        /* reusable after draining */
        CHECK_EQ_INT(ks_wbuf_put(&w, "q", 1), 0);
        CHECK_EQ_INT(ks_wbuf_len(&w), 1);
        free(flat);
        ks_wbuf_destroy(&w);
}

TEST(wbuf_interleaved_model)
{
        /* Random appends (put/ref/reserve) interleaved with partial consumes,
         * as on a pipelined connection; content checked against a flat model. */
        static uint8_t src[8192];
        rng_t rng = { 12345 };
        for (size_t i = 0; i < sizeof(src); i++)
                src[i] = (uint8_t)rnd(&rng);
        size_t cap = 1 << 20, mlen = 0;
        uint8_t *model = malloc(cap), *flat = malloc(cap);
        ks_wbuf_t w;
        ks_wbuf_init(&w);
        for (int step = 0; step < 3000; step++) {
                uint32_t op = rnd_below(&rng, 4);
                size_t off = rnd_below(&rng, 4096), n = rnd_below(&rng, 4096);
                if (mlen + n > cap)
                        op = 3;
                if (op == 0) {
                        CHECK_EQ_INT(ks_wbuf_put(&w, src + off, n), 0);
                } else if (op == 1) {
                        CHECK_EQ_INT(ks_wbuf_ref(&w, src + off, n), 0);
                } else if (op == 2) {
                        uint8_t *p = ks_wbuf_reserve(&w, n);
                        REQUIRE(p != NULL || n == 0);
                        if (n)
                                memcpy(p, src + off, n);
                } else {
                        size_t c = rnd_below(&rng, (uint32_t)mlen + 100);
                        ks_wbuf_consume(&w, c);
                        c = c > mlen ? mlen : c;
                        memmove(model, model + c, mlen - c);
                        mlen -= c;
                        n = 0;
                }
                if (op != 3) {
                        memcpy(model + mlen, src + off, n);
                        mlen += n;
                }
                REQUIRE_EQ_INT(ks_wbuf_len(&w), mlen);
                if (step % 97 == 0) {
                        ks_wbuf_copyout(&w, flat);
                        CHECK(memcmp(flat, model, mlen) == 0);
                }
        }
        ks_wbuf_copyout(&w, flat);
        CHECK(memcmp(flat, model, mlen) == 0);
        ks_wbuf_destroy(&w);
        free(model);
        free(flat);
}

TEST(bytes_helpers)
{
        uint8_t b[10];
        CHECK_EQ_INT(ks_uvarint_put(b, 0), 1);
        CHECK_EQ_INT(ks_uvarint_put(b, 300), 2);
        CHECK_EQ_INT(b[0], 0xac);
        CHECK_EQ_INT(b[1], 0x02);
        ks_rbuf_t r = ks_rbuf_make(b, 2);
        uint32_t v = 0;
        CHECK_EQ_INT(ks_rbuf_uvarint(&r, &v), 0);
        CHECK_EQ_INT(v, 300);
        CHECK_EQ_INT(ks_rbuf_left(&r), 0);
        CHECK_EQ_INT(ks_rbuf_uvarint(&r, &v), -1);
        static const uint8_t zz[] = { 0x03 }; /* zigzag -2 */
        r = ks_rbuf_make(zz, 1);
        int32_t sv = 0;
        CHECK_EQ_INT(ks_rbuf_varint(&r, &sv), 0);
        CHECK_EQ_INT(sv, -2);
        CHECK(ks_str_eq(KS_STR_NULL, KS_STR_NULL));
        CHECK(!ks_str_eq(KS_STR_NULL, KS_STR("")));
        CHECK(ks_str_eq(ks_str_c("x"), KS_STR("x")));
        CHECK(ks_str_eq_c(KS_STR_NULL, NULL));
        CHECK(!ks_str_eq_c(KS_STR(""), NULL));
}

/* ------------------------------------------------------------------ */
/* Seed corpus for tests/fuzz/fuzz_request.c                          */
/* ------------------------------------------------------------------ */

static void write_seed(const char *dir, const ks_api_desc_t *api, int16_t v, uint64_t seed)
{
        ks_arena_t arena;
        ks_wbuf_t w;
        ks_arena_init(&arena, 0);
        ks_wbuf_init(&w);
        void *req = gen_message(&arena, api->request, v, ks_api_flexible(api, v), seed);
        ks_req_header_t h = { api->api_key, v, (int32_t)seed, KS_STR("seed") };
        size_t start = ks_frame_begin_request(&w, &h);
        if (start == (size_t)-1 || ks_request_encode(api, v, req, &w)) {
                ks_test_fail(__FILE__, __LINE__, "seed encode failed");
        } else {
                ks_wbuf_consume(&w, 4); /* the fuzzer gets the frame body */
                size_t len = ks_wbuf_len(&w);
                uint8_t *buf = malloc(len);
                ks_wbuf_copyout(&w, buf);
                char path[512];
                snprintf(path, sizeof(path), "%s/%s-v%d", dir, api->name, v);
                FILE *fp = fopen(path, "wb");
                if (!fp || fwrite(buf, 1, len, fp) != len)
                        ks_test_fail(__FILE__, __LINE__, "cannot write %s", path);
                if (fp)
                        fclose(fp);
                free(buf);
        }
        ks_wbuf_destroy(&w);
        ks_arena_destroy(&arena);
}

TEST(codec_write_fuzz_corpus)
{
        const char *dir = getenv("KS_FUZZ_CORPUS_DIR");
        if (!dir)
                return;
        if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
                ks_test_fail(__FILE__, __LINE__, "mkdir %s failed", dir);
                return;
        }
        for (int i = 0; i < ks_api_descs_count; i++) {
                const ks_api_desc_t *api = &ks_api_descs[i];
                write_seed(dir, api, api->max_version, 3);
                if (api->first_flexible > api->min_version && api->first_flexible <= api->max_version)
                        write_seed(dir, api, (int16_t)(api->first_flexible - 1), 4);
        }
}
