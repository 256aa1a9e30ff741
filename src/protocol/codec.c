/*
 * codec.c — generic table-driven Kafka encoder/decoder (see codec.h).
 *
 * Wire rules implemented here (Kafka's protocol guide, KIP-482):
 *  - integers big-endian; bool one byte (non-zero = true); uuid 16 bytes;
 *  - string: int16 length (-1 null) | compact: uvarint length+1 (0 null);
 *  - bytes/records: int32 length (-1 null) | compact: uvarint length+1;
 *  - array: int32 count (-1 null) | compact: uvarint count+1;
 *  - nullable struct: int8 marker (-1 null, 1 present) in nullable versions;
 *  - flexible versions end every struct with a tagged-field section:
 *    uvarint count, then per field uvarint tag, uvarint size, data.
 */
#include "protocol/codec.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/gen/kafka_msgs.h"

#define MAX_STRING_LEN 0x7fff

/* ------------------------------------------------------------------ */
/* Field access helpers                                               */
/* ------------------------------------------------------------------ */

static bool f_present(const ks_field_desc_t *f, int16_t v)
{
        return ks_vrange_has(f->versions, v);
}

static bool f_tagged(const ks_field_desc_t *f, int16_t v, bool flexible)
{
        return flexible && f->tag >= 0 && ks_vrange_has(f->tagged, v);
}

static bool f_nullable(const ks_field_desc_t *f, int16_t v)
{
        return ks_vrange_has(f->nullable, v);
}

static bool f_compact(const ks_field_desc_t *f, bool flexible)
{
        return flexible && !(f->flags & KS_FF_NEVER_FLEX);
}

/* Array members are { T *items; int32_t count; }: same layout as ks_array_t
 * (asserted in kafka_msgs.c); copy through memcpy to stay alias-clean. */
static ks_array_t arr_get(const void *p)
{
        ks_array_t a;
        memcpy(&a, p, sizeof(a));
        return a;
}

static void arr_set(void *p, void *items, int32_t count)
{
        ks_array_t a = { items, count };
        memcpy(p, &a, sizeof(a));
}

/* ------------------------------------------------------------------ */
/* Initialisation                                                     */
/* ------------------------------------------------------------------ */

static void init_value(const ks_field_desc_t *f, uint8_t *p)
{
        if (f->is_array) {
                arr_set(p, NULL, f->def_null ? -1 : 0);
                return;
        }
        switch ((ks_ftype_t)f->type) {
        case KS_FT_BOOL:    *(bool *)p = f->def_int != 0; break;
        case KS_FT_INT8:    *(int8_t *)p = (int8_t)f->def_int; break;
        case KS_FT_INT16:   *(int16_t *)p = (int16_t)f->def_int; break;
        case KS_FT_UINT16:  *(uint16_t *)p = (uint16_t)f->def_int; break;
        case KS_FT_INT32:   *(int32_t *)p = (int32_t)f->def_int; break;
        case KS_FT_UINT32:  *(uint32_t *)p = (uint32_t)f->def_int; break;
        case KS_FT_INT64:   *(int64_t *)p = f->def_int; break;
        case KS_FT_FLOAT64: *(double *)p = f->def_float; break;
        case KS_FT_UUID:    memset(p, 0, sizeof(ks_uuid_t)); break;
        case KS_FT_STRING:
                if (f->def_null)
                        *(ks_str_t *)p = KS_STR_NULL;
                else
                        *(ks_str_t *)p = (ks_str_t){ f->def_str ? f->def_str : "", f->def_str_len };
                break;
        case KS_FT_BYTES:
        case KS_FT_RECORDS:
                *(ks_bytes_t *)p = (ks_bytes_t){ NULL, f->def_null ? -1 : 0 };
                break;
        case KS_FT_STRUCT:
                if (f->flags & KS_FF_PTR)
                        *(void **)p = NULL;
                else
                        ks_msg_init(f->sub, p);
                break;
        }
}

void ks_msg_init(const ks_struct_desc_t *d, void *msg)
{
        memset(msg, 0, d->size);
        for (unsigned i = 0; i < d->field_count; i++)
                init_value(&d->fields[i], (uint8_t *)msg + d->fields[i].offset);
}

void *ks_array_new(size_t elem_size, int32_t n, ks_arena_t *arena)
{
        if (n < 0 || (elem_size && (size_t)n > SIZE_MAX / elem_size))
                return NULL;
        return ks_arena_calloc(arena, elem_size * (size_t)n);
}

void *ks_msg_new_array(const ks_struct_desc_t *d, int32_t n, ks_arena_t *arena)
{
        uint8_t *items = ks_array_new(d->size, n, arena);
        if (!items)
                return NULL;
        for (int32_t i = 0; i < n; i++)
                ks_msg_init(d, items + (size_t)i * d->size);
        return items;
}

void *ks_msg_new(const ks_struct_desc_t *d, ks_arena_t *arena)
{
        return ks_msg_new_array(d, 1, arena);
}

/* ------------------------------------------------------------------ */
/* Decoding                                                           */
/* ------------------------------------------------------------------ */

typedef struct {
        ks_rbuf_t r;
        ks_arena_t *arena;
        int16_t version;
        bool flexible;
        int depth;
} dec_t;

static ks_err_t dec_struct(dec_t *dc, const ks_struct_desc_t *d, void *msg);

/* Reads a length/count: compact uvarint (N+1, 0 = null) or a classic signed
 * int16/int32 (-1 = null).  *len is -1 for null. */
static ks_err_t dec_len(dec_t *dc, bool compact, int width, int32_t *len)
{
        if (compact) {
                uint32_t u;
                if (ks_rbuf_uvarint(&dc->r, &u))
                        goto err_parse;
                if (u == 0) {
                        *len = -1;
                        return 0;
                }
                if (u - 1 > (uint32_t)INT32_MAX)
                        goto err_parse;
                *len = (int32_t)(u - 1);
                return 0;
        }
        if (width == 2) {
                int16_t v;
                if (ks_rbuf_i16(&dc->r, &v) || v < -1)
                        goto err_parse;
                *len = v;
        } else {
                int32_t v;
                if (ks_rbuf_i32(&dc->r, &v) || v < -1)
                        goto err_parse;
                *len = v;
        }
        return 0;
err_parse:
        return KS_ERR__PARSE;
}

/* Minimum wire size of one value of @f (one element for arrays) in the
 * current version; used to reject impossible array counts before
 * allocating. */
static size_t min_struct_size(const ks_struct_desc_t *d, int16_t v, bool flexible, int depth);

static size_t min_value_size(const ks_field_desc_t *f, int16_t v, bool flexible, int depth)
{
        bool compact = f_compact(f, flexible);
        switch ((ks_ftype_t)f->type) {
        case KS_FT_BOOL:
        case KS_FT_INT8:    return 1;
        case KS_FT_INT16:
        case KS_FT_UINT16:  return 2;
        case KS_FT_INT32:
        case KS_FT_UINT32:  return 4;
        case KS_FT_INT64:
        case KS_FT_FLOAT64: return 8;
        case KS_FT_UUID:    return 16;
        case KS_FT_STRING:  return compact ? 1 : 2;
        case KS_FT_BYTES:
        case KS_FT_RECORDS: return compact ? 1 : 4;
        case KS_FT_STRUCT:
                if ((f->flags & KS_FF_PTR) && f_nullable(f, v))
                        return 1;
                return min_struct_size(f->sub, v, flexible, depth + 1);
        }
        return 1;
}

static size_t min_struct_size(const ks_struct_desc_t *d, int16_t v, bool flexible, int depth)
{
        size_t n = flexible ? 1 : 0;
        if (depth > KS_CODEC_MAX_DEPTH)
                return n;
        for (unsigned i = 0; i < d->field_count; i++) {
                const ks_field_desc_t *f = &d->fields[i];
                if (!f_present(f, v) || f_tagged(f, v, flexible))
                        continue;
                if (f->is_array)
                        n += f_compact(f, flexible) ? 1 : 4;
                else
                        n += min_value_size(f, v, flexible, depth);
        }
        return n;
}

/* Decodes one value (a scalar field, or one array element) into @p. */
static ks_err_t dec_value(dec_t *dc, const ks_field_desc_t *f, uint8_t *p, bool nullable)
{
        ks_rbuf_t *r = &dc->r;
        const uint8_t *data;
        int32_t len;
        ks_err_t err;

        switch ((ks_ftype_t)f->type) {
        case KS_FT_BOOL: {
                uint8_t b;
                if (ks_rbuf_u8(r, &b))
                        goto err_parse;
                *(bool *)p = b != 0;
                return 0;
        }
        case KS_FT_INT8: {
                uint8_t b;
                if (ks_rbuf_u8(r, &b))
                        goto err_parse;
                *(int8_t *)p = (int8_t)b;
                return 0;
        }
        case KS_FT_INT16:
                return ks_rbuf_i16(r, (int16_t *)p) ? KS_ERR__PARSE : 0;
        case KS_FT_UINT16:
                return ks_rbuf_be16(r, (uint16_t *)p) ? KS_ERR__PARSE : 0;
        case KS_FT_INT32:
                return ks_rbuf_i32(r, (int32_t *)p) ? KS_ERR__PARSE : 0;
        case KS_FT_UINT32:
                return ks_rbuf_be32(r, (uint32_t *)p) ? KS_ERR__PARSE : 0;
        case KS_FT_INT64:
                return ks_rbuf_i64(r, (int64_t *)p) ? KS_ERR__PARSE : 0;
        case KS_FT_FLOAT64: {
                uint64_t u;
                double dv;
                if (ks_rbuf_be64(r, &u))
                        goto err_parse;
                memcpy(&dv, &u, sizeof(dv));
                *(double *)p = dv;
                return 0;
        }
        case KS_FT_UUID:
                if (ks_rbuf_take(r, 16, &data))
                        goto err_parse;
                memcpy(p, data, 16);
                return 0;
        case KS_FT_STRING:
                if ((err = dec_len(dc, f_compact(f, dc->flexible), 2, &len)))
                        return err;
                if (len < 0) {
                        if (!nullable)
                                goto err_parse;
                        *(ks_str_t *)p = KS_STR_NULL;
                        return 0;
                }
                if (len > MAX_STRING_LEN || ks_rbuf_take(r, (size_t)len, &data))
                        goto err_parse;
                *(ks_str_t *)p = (ks_str_t){ (const char *)data, len };
                return 0;
        case KS_FT_BYTES:
        case KS_FT_RECORDS:
                if ((err = dec_len(dc, f_compact(f, dc->flexible), 4, &len)))
                        return err;
                if (len < 0) {
                        if (!nullable)
                                goto err_parse;
                        *(ks_bytes_t *)p = KS_BYTES_NULL;
                        return 0;
                }
                if (ks_rbuf_take(r, (size_t)len, &data))
                        goto err_parse;
                *(ks_bytes_t *)p = (ks_bytes_t){ data, len };
                return 0;
        case KS_FT_STRUCT:
                if (f->flags & KS_FF_PTR) {
                        if (nullable) {
                                uint8_t marker;
                                if (ks_rbuf_u8(r, &marker))
                                        goto err_parse;
                                if ((int8_t)marker < 0) {
                                        *(void **)p = NULL;
                                        return 0;
                                }
                        }
                        void *sub = ks_arena_alloc(dc->arena, f->sub->size);
                        if (!sub)
                                return KS_ERR__NOMEM;
                        ks_msg_init(f->sub, sub);
                        *(void **)p = sub;
                        return dec_struct(dc, f->sub, sub);
                }
                ks_msg_init(f->sub, p);
                return dec_struct(dc, f->sub, p);
        }
err_parse:
        return KS_ERR__PARSE;
}

static ks_err_t dec_field(dec_t *dc, const ks_field_desc_t *f, void *msg)
{
        uint8_t *p = (uint8_t *)msg + f->offset;
        bool nullable = f_nullable(f, dc->version);
        int32_t count;
        ks_err_t err;

        if (!f->is_array)
                return dec_value(dc, f, p, nullable);

        if ((err = dec_len(dc, f_compact(f, dc->flexible), 4, &count)))
                return err;
        if (count < 0) {
                if (!nullable)
                        goto err_parse;
                arr_set(p, NULL, -1);
                return 0;
        }
        if (count == 0) {
                arr_set(p, NULL, 0);
                return 0;
        }
        /* Every element needs at least min bytes: reject impossible counts
         * before allocating anything. */
        size_t min = min_value_size(f, dc->version, dc->flexible, dc->depth);
        if (min == 0)
                min = 1;
        if ((size_t)count > ks_rbuf_left(&dc->r) / min)
                goto err_parse;

        uint8_t *items = ks_arena_alloc(dc->arena, (size_t)count * f->elem_size);
        if (!items)
                return KS_ERR__NOMEM;
        for (int32_t i = 0; i < count; i++) {
                if ((err = dec_value(dc, f, items + (size_t)i * f->elem_size, false)))
                        return err;
        }
        arr_set(p, items, count);
        return 0;
err_parse:
        return KS_ERR__PARSE;
}

static const ks_field_desc_t *find_tagged(const ks_struct_desc_t *d, uint32_t tag, int16_t v)
{
        for (unsigned i = 0; i < d->tagged_count; i++) {
                const ks_field_desc_t *f = &d->fields[d->tagged[i]];
                if ((uint32_t)f->tag == tag && f_present(f, v) && ks_vrange_has(f->tagged, v))
                        return f;
        }
        return NULL;
}

/* Tagged-field section at the end of a struct in flexible versions. */
static ks_err_t dec_tagged(dec_t *dc, const ks_struct_desc_t *d, void *msg)
{
        uint32_t n, tag, size;
        int64_t last = -1;
        ks_err_t err;

        if (ks_rbuf_uvarint(&dc->r, &n))
                goto err_parse;
        for (uint32_t i = 0; i < n; i++) {
                if (ks_rbuf_uvarint(&dc->r, &tag) || ks_rbuf_uvarint(&dc->r, &size))
                        goto err_parse;
                if ((int64_t)tag <= last || size > ks_rbuf_left(&dc->r))
                        goto err_parse;
                last = tag;
                const ks_field_desc_t *f = find_tagged(d, tag, dc->version);
                if (f) {
                        /* Decode the known field from exactly @size bytes. */
                        dec_t sub = *dc;
                        sub.r.end = sub.r.p + size;
                        if ((err = dec_field(&sub, f, msg)))
                                return err;
                        if (sub.r.p != sub.r.end)
                                goto err_parse;
                }
                dc->r.p += size; /* unknown tags are skipped */
        }
        return 0;
err_parse:
        return KS_ERR__PARSE;
}

static ks_err_t dec_struct(dec_t *dc, const ks_struct_desc_t *d, void *msg)
{
        ks_err_t err;

        if (dc->depth >= KS_CODEC_MAX_DEPTH)
                goto err_parse;
        dc->depth++;
        for (unsigned i = 0; i < d->field_count; i++) {
                const ks_field_desc_t *f = &d->fields[i];
                if (!f_present(f, dc->version) || f_tagged(f, dc->version, dc->flexible))
                        continue;
                if ((err = dec_field(dc, f, msg)))
                        return err;
        }
        if (dc->flexible && (err = dec_tagged(dc, d, msg)))
                return err;
        dc->depth--;
        return 0;
err_parse:
        return KS_ERR__PARSE;
}

ks_err_t ks_msg_decode(const ks_struct_desc_t *d, int16_t version, bool flexible,
                       const uint8_t *buf, size_t len, ks_arena_t *arena, void *msg,
                       size_t *consumed)
{
        dec_t dc = {
                .r = ks_rbuf_make(buf, len),
                .arena = arena,
                .version = version,
                .flexible = flexible,
                .depth = 0,
        };
        ks_err_t err;

        ks_msg_init(d, msg);
        if ((err = dec_struct(&dc, d, msg)))
                return err;
        size_t used = len - ks_rbuf_left(&dc.r);
        if (consumed)
                *consumed = used;
        else if (used != len)
                return KS_ERR__PARSE;
        return 0;
}

/* ------------------------------------------------------------------ */
/* Encoding                                                           */
/* ------------------------------------------------------------------ */

typedef struct {
        ks_wbuf_t *w; /* NULL: only count bytes */
        size_t n;     /* bytes produced so far */
        int16_t version;
        bool flexible;
        int depth;
} enc_t;

static ks_err_t enc_struct(enc_t *e, const ks_struct_desc_t *d, const void *msg);

static ks_err_t put(enc_t *e, const void *p, size_t n)
{
        e->n += n;
        if (e->w && ks_wbuf_put(e->w, p, n))
                return KS_ERR__NOMEM;
        return 0;
}

static ks_err_t put_ref(enc_t *e, const void *p, size_t n)
{
        e->n += n;
        if (e->w && ks_wbuf_ref(e->w, p, n))
                return KS_ERR__NOMEM;
        return 0;
}

static ks_err_t put_uvarint(enc_t *e, uint32_t v)
{
        uint8_t b[KS_UVARINT64_MAX];
        return put(e, b, ks_uvarint_put(b, v));
}

/* Writes a length/count (-1 = null) in compact or classic form. */
static ks_err_t put_len(enc_t *e, bool compact, int width, int32_t len)
{
        uint8_t b[4];
        if (compact)
                return put_uvarint(e, (uint32_t)len + 1);
        if (width == 2) {
                ks_be16_put(b, (uint16_t)(int16_t)len);
                return put(e, b, 2);
        }
        ks_be32_put(b, (uint32_t)len);
        return put(e, b, 4);
}

/* Encodes one value (a scalar field, or one array element) from @p. */
static ks_err_t enc_value(enc_t *e, const ks_field_desc_t *f, const uint8_t *p, bool nullable)
{
        uint8_t b[8];
        ks_err_t err;

        switch ((ks_ftype_t)f->type) {
        case KS_FT_BOOL:
                b[0] = *(const bool *)p ? 1 : 0;
                return put(e, b, 1);
        case KS_FT_INT8:
                b[0] = (uint8_t)*(const int8_t *)p;
                return put(e, b, 1);
        case KS_FT_INT16:
                ks_be16_put(b, (uint16_t)*(const int16_t *)p);
                return put(e, b, 2);
        case KS_FT_UINT16:
                ks_be16_put(b, *(const uint16_t *)p);
                return put(e, b, 2);
        case KS_FT_INT32:
                ks_be32_put(b, (uint32_t)*(const int32_t *)p);
                return put(e, b, 4);
        case KS_FT_UINT32:
                ks_be32_put(b, *(const uint32_t *)p);
                return put(e, b, 4);
        case KS_FT_INT64:
                ks_be64_put(b, (uint64_t)*(const int64_t *)p);
                return put(e, b, 8);
        case KS_FT_FLOAT64: {
                uint64_t u;
                memcpy(&u, p, sizeof(u));
                ks_be64_put(b, u);
                return put(e, b, 8);
        }
        case KS_FT_UUID:
                return put(e, p, 16);
        case KS_FT_STRING: {
                ks_str_t s = *(const ks_str_t *)p;
                if (s.len < -1 || s.len > MAX_STRING_LEN || (s.len > 0 && !s.ptr))
                        return KS_ERR__INVALID_ARG;
                if (s.len < 0 && !nullable)
                        s.len = 0; /* lenient: null where not allowed -> "" */
                if ((err = put_len(e, f_compact(f, e->flexible), 2, s.len)))
                        return err;
                return s.len > 0 ? put(e, s.ptr, (size_t)s.len) : 0;
        }
        case KS_FT_BYTES:
        case KS_FT_RECORDS: {
                ks_bytes_t v = *(const ks_bytes_t *)p;
                if (v.len < -1 || (v.len > 0 && !v.ptr))
                        return KS_ERR__INVALID_ARG;
                if (v.len < 0 && !nullable)
                        v.len = 0;
                if ((err = put_len(e, f_compact(f, e->flexible), 4, v.len)))
                        return err;
                if (v.len <= 0)
                        return 0;
                if (f->type == KS_FT_RECORDS)
                        return put_ref(e, v.ptr, (size_t)v.len);
                return put(e, v.ptr, (size_t)v.len);
        }
        case KS_FT_STRUCT:
                if (f->flags & KS_FF_PTR) {
                        const void *sub = *(const void *const *)p;
                        if (nullable) {
                                b[0] = sub ? 1 : 0xff;
                                if ((err = put(e, b, 1)) || !sub)
                                        return err;
                        }
                        if (sub)
                                return enc_struct(e, f->sub, sub);
                        /* Lenient: NULL where not nullable -> a default struct. */
                        void *tmp = malloc(f->sub->size);
                        if (!tmp)
                                return KS_ERR__NOMEM;
                        ks_msg_init(f->sub, tmp);
                        err = enc_struct(e, f->sub, tmp);
                        free(tmp);
                        return err;
                }
                return enc_struct(e, f->sub, p);
        }
        return KS_ERR__INVALID_ARG;
}

static ks_err_t enc_field(enc_t *e, const ks_field_desc_t *f, const void *msg)
{
        const uint8_t *p = (const uint8_t *)msg + f->offset;
        bool nullable = f_nullable(f, e->version);
        ks_err_t err;

        if (!f->is_array)
                return enc_value(e, f, p, nullable);

        ks_array_t a = arr_get(p);
        if (a.count < -1 || (a.count > 0 && !a.items))
                return KS_ERR__INVALID_ARG;
        if (a.count < 0 && !nullable)
                a.count = 0; /* lenient: null where not allowed -> empty */
        if ((err = put_len(e, f_compact(f, e->flexible), 4, a.count)))
                return err;
        for (int32_t i = 0; i < a.count; i++) {
                if ((err = enc_value(e, f, (const uint8_t *)a.items + (size_t)i * f->elem_size, false)))
                        return err;
        }
        return 0;
}

static bool struct_is_default(const ks_struct_desc_t *d, const void *msg, int depth);

/* Whether a field holds its default value (tagged fields are only written
 * when they do not). */
static bool value_is_default(const ks_field_desc_t *f, const uint8_t *p, int depth)
{
        if (f->is_array) {
                ks_array_t a = arr_get(p);
                return f->def_null ? a.count == -1 : a.count == 0;
        }
        switch ((ks_ftype_t)f->type) {
        case KS_FT_BOOL:    return *(const bool *)p == (f->def_int != 0);
        case KS_FT_INT8:    return *(const int8_t *)p == (int8_t)f->def_int;
        case KS_FT_INT16:   return *(const int16_t *)p == (int16_t)f->def_int;
        case KS_FT_UINT16:  return *(const uint16_t *)p == (uint16_t)f->def_int;
        case KS_FT_INT32:   return *(const int32_t *)p == (int32_t)f->def_int;
        case KS_FT_UINT32:  return *(const uint32_t *)p == (uint32_t)f->def_int;
        case KS_FT_INT64:   return *(const int64_t *)p == f->def_int;
        case KS_FT_FLOAT64: return memcmp(p, &f->def_float, sizeof(double)) == 0;
        case KS_FT_UUID:    return ks_uuid_is_zero((const ks_uuid_t *)p);
        case KS_FT_STRING: {
                ks_str_t s = *(const ks_str_t *)p;
                if (f->def_null)
                        return s.len < 0;
                ks_str_t def = { f->def_str ? f->def_str : "", f->def_str_len };
                return ks_str_eq(s, def);
        }
        case KS_FT_BYTES:
        case KS_FT_RECORDS: {
                ks_bytes_t v = *(const ks_bytes_t *)p;
                return f->def_null ? v.len < 0 : v.len == 0;
        }
        case KS_FT_STRUCT:
                if (f->flags & KS_FF_PTR)
                        return *(const void *const *)p == NULL;
                return struct_is_default(f->sub, p, depth + 1);
        }
        return false;
}

static bool struct_is_default(const ks_struct_desc_t *d, const void *msg, int depth)
{
        if (depth > KS_CODEC_MAX_DEPTH)
                return false;
        for (unsigned i = 0; i < d->field_count; i++) {
                const ks_field_desc_t *f = &d->fields[i];
                if (!value_is_default(f, (const uint8_t *)msg + f->offset, depth))
                        return false;
        }
        return true;
}

static bool tagged_to_write(const ks_field_desc_t *f, const void *msg, int16_t v, int depth)
{
        return f_present(f, v) && ks_vrange_has(f->tagged, v) &&
               !value_is_default(f, (const uint8_t *)msg + f->offset, depth);
}

static ks_err_t enc_struct(enc_t *e, const ks_struct_desc_t *d, const void *msg)
{
        ks_err_t err;

        if (e->depth >= KS_CODEC_MAX_DEPTH)
                return KS_ERR__INVALID_ARG;
        e->depth++;
        for (unsigned i = 0; i < d->field_count; i++) {
                const ks_field_desc_t *f = &d->fields[i];
                if (!f_present(f, e->version) || f_tagged(f, e->version, e->flexible))
                        continue;
                if ((err = enc_field(e, f, msg)))
                        return err;
        }
        if (e->flexible) {
                uint32_t n = 0;
                for (unsigned i = 0; i < d->tagged_count; i++)
                        if (tagged_to_write(&d->fields[d->tagged[i]], msg, e->version, e->depth))
                                n++;
                if ((err = put_uvarint(e, n)))
                        return err;
                for (unsigned i = 0; i < d->tagged_count && n > 0; i++) {
                        const ks_field_desc_t *f = &d->fields[d->tagged[i]];
                        if (!tagged_to_write(f, msg, e->version, e->depth))
                                continue;
                        /* Size first (counting pass), then the data. */
                        enc_t sizer = { NULL, 0, e->version, e->flexible, e->depth };
                        if ((err = enc_field(&sizer, f, msg)))
                                return err;
                        if (sizer.n > UINT32_MAX)
                                return KS_ERR__INVALID_ARG;
                        if ((err = put_uvarint(e, (uint32_t)f->tag)) ||
                            (err = put_uvarint(e, (uint32_t)sizer.n)) ||
                            (err = enc_field(e, f, msg)))
                                return err;
                }
        }
        e->depth--;
        return 0;
}

ks_err_t ks_msg_encode(const ks_struct_desc_t *d, int16_t version, bool flexible,
                       const void *msg, ks_wbuf_t *out)
{
        enc_t e = { out, 0, version, flexible, 0 };
        return enc_struct(&e, d, msg);
}

ks_err_t ks_msg_encoded_size(const ks_struct_desc_t *d, int16_t version, bool flexible,
                             const void *msg, size_t *size)
{
        enc_t e = { NULL, 0, version, flexible, 0 };
        ks_err_t err = enc_struct(&e, d, msg);
        if (!err)
                *size = e.n;
        return err;
}

/* ------------------------------------------------------------------ */
/* Comparison                                                         */
/* ------------------------------------------------------------------ */

static bool struct_equal(const ks_struct_desc_t *d, int16_t v, const void *a, const void *b,
                         int depth);

static bool value_equal(const ks_field_desc_t *f, int16_t v, const uint8_t *a, const uint8_t *b,
                        int depth)
{
        switch ((ks_ftype_t)f->type) {
        case KS_FT_BOOL:    return *(const bool *)a == *(const bool *)b;
        case KS_FT_INT8:    return *(const int8_t *)a == *(const int8_t *)b;
        case KS_FT_INT16:   return *(const int16_t *)a == *(const int16_t *)b;
        case KS_FT_UINT16:  return *(const uint16_t *)a == *(const uint16_t *)b;
        case KS_FT_INT32:   return *(const int32_t *)a == *(const int32_t *)b;
        case KS_FT_UINT32:  return *(const uint32_t *)a == *(const uint32_t *)b;
        case KS_FT_INT64:   return *(const int64_t *)a == *(const int64_t *)b;
        case KS_FT_FLOAT64: return memcmp(a, b, sizeof(double)) == 0;
        case KS_FT_UUID:    return memcmp(a, b, sizeof(ks_uuid_t)) == 0;
        case KS_FT_STRING:  return ks_str_eq(*(const ks_str_t *)a, *(const ks_str_t *)b);
        case KS_FT_BYTES:
        case KS_FT_RECORDS: return ks_bytes_eq(*(const ks_bytes_t *)a, *(const ks_bytes_t *)b);
        case KS_FT_STRUCT:
                if (f->flags & KS_FF_PTR) {
                        const void *pa = *(const void *const *)a, *pb = *(const void *const *)b;
                        if (!pa || !pb)
                                return pa == pb;
                        return struct_equal(f->sub, v, pa, pb, depth + 1);
                }
                return struct_equal(f->sub, v, a, b, depth + 1);
        }
        return false;
}

static bool struct_equal(const ks_struct_desc_t *d, int16_t v, const void *a, const void *b,
                         int depth)
{
        if (depth > KS_CODEC_MAX_DEPTH)
                return false;
        for (unsigned i = 0; i < d->field_count; i++) {
                const ks_field_desc_t *f = &d->fields[i];
                const uint8_t *pa = (const uint8_t *)a + f->offset;
                const uint8_t *pb = (const uint8_t *)b + f->offset;
                if (!f_present(f, v))
                        continue;
                if (!f->is_array) {
                        if (!value_equal(f, v, pa, pb, depth))
                                return false;
                        continue;
                }
                ks_array_t x = arr_get(pa), y = arr_get(pb);
                if (x.count != y.count)
                        return false;
                for (int32_t k = 0; k < x.count; k++) {
                        size_t off = (size_t)k * f->elem_size;
                        if (!value_equal(f, v, (const uint8_t *)x.items + off,
                                         (const uint8_t *)y.items + off, depth))
                                return false;
                }
        }
        return true;
}

bool ks_msg_equal(const ks_struct_desc_t *d, int16_t version, const void *a, const void *b)
{
        return struct_equal(d, version, a, b, 0);
}

/* ------------------------------------------------------------------ */
/* API-level wrappers                                                 */
/* ------------------------------------------------------------------ */

static bool api_version_ok(const ks_api_desc_t *api, int16_t version)
{
        return api && version >= api->min_version && version <= api->max_version;
}

static ks_err_t api_decode(const ks_api_desc_t *api, const ks_struct_desc_t *d, int16_t version,
                           const uint8_t *buf, size_t len, bool allow_trailing, ks_arena_t *arena, void **out)
{
        *out = NULL;
        if (!api_version_ok(api, version))
                return KS_ERR_UNSUPPORTED_VERSION;
        void *msg = ks_arena_alloc(arena, d->size);
        if (!msg)
                return KS_ERR__NOMEM;
        size_t used = 0;
        ks_err_t err = ks_msg_decode(d, version, ks_api_flexible(api, version), buf, len,
                                     arena, msg, allow_trailing ? &used : NULL);
        if (err)
                return err;
        *out = msg;
        return 0;
}

ks_err_t ks_request_decode(const ks_api_desc_t *api, int16_t version, const uint8_t *buf,
                           size_t len, ks_arena_t *arena, void **req_out)
{
        /* Apache Kafka ignores bytes after a request body, and some clients
         * send them (librdkafka 2.0's ListGroups v4 adds a stray 0). */
        return api_decode(api, api ? api->request : NULL, version, buf, len, true, arena, req_out);
}

ks_err_t ks_response_decode(const ks_api_desc_t *api, int16_t version, const uint8_t *buf,
                            size_t len, ks_arena_t *arena, void **resp_out)
{
        return api_decode(api, api ? api->response : NULL, version, buf, len, false, arena, resp_out);
}

ks_err_t ks_request_encode(const ks_api_desc_t *api, int16_t version, const void *req,
                           ks_wbuf_t *out)
{
        if (!api_version_ok(api, version))
                return KS_ERR_UNSUPPORTED_VERSION;
        return ks_msg_encode(api->request, version, ks_api_flexible(api, version), req, out);
}

ks_err_t ks_response_encode(const ks_api_desc_t *api, int16_t version, const void *resp,
                            ks_wbuf_t *out)
{
        if (!api_version_ok(api, version))
                return KS_ERR_UNSUPPORTED_VERSION;
        return ks_msg_encode(api->response, version, ks_api_flexible(api, version), resp, out);
}

/* ------------------------------------------------------------------ */
/* Headers and framing                                                */
/* ------------------------------------------------------------------ */

int ks_request_header_version(int16_t api_key, int16_t api_version)
{
        const ks_api_desc_t *api = ks_api_desc(api_key);
        return api && ks_api_flexible(api, api_version) ? 2 : 1;
}

int ks_response_header_version(int16_t api_key, int16_t api_version)
{
        if (api_key == KS_API_API_VERSIONS)
                return 0;
        const ks_api_desc_t *api = ks_api_desc(api_key);
        return api && ks_api_flexible(api, api_version) ? 1 : 0;
}

/* Skips a header's tagged-field section (tags must ascend). */
static int skip_tagged(ks_rbuf_t *r)
{
        uint32_t n, tag, size;
        int64_t last = -1;
        if (ks_rbuf_uvarint(r, &n))
                return -1;
        for (uint32_t i = 0; i < n; i++) {
                if (ks_rbuf_uvarint(r, &tag) || ks_rbuf_uvarint(r, &size) ||
                    (int64_t)tag <= last || ks_rbuf_skip(r, size))
                        return -1;
                last = tag;
        }
        return 0;
}

ks_err_t ks_req_header_parse(const uint8_t *buf, size_t len, ks_req_header_t *h,
                             size_t *body_off)
{
        ks_rbuf_t r = ks_rbuf_make(buf, len);
        int16_t clen;
        const uint8_t *cid;

        if (ks_rbuf_i16(&r, &h->RequestApiKey) || ks_rbuf_i16(&r, &h->RequestApiVersion) ||
            ks_rbuf_i32(&r, &h->CorrelationId) || ks_rbuf_i16(&r, &clen) || clen < -1)
                goto err_parse;
        if (clen < 0) {
                h->ClientId = KS_STR_NULL;
        } else {
                if (ks_rbuf_take(&r, (size_t)clen, &cid))
                        goto err_parse;
                h->ClientId = (ks_str_t){ (const char *)cid, clen };
        }
        if (ks_request_header_version(h->RequestApiKey, h->RequestApiVersion) >= 2 &&
            skip_tagged(&r))
                goto err_parse;
        *body_off = len - ks_rbuf_left(&r);
        return 0;
err_parse:
        return KS_ERR__PARSE;
}

ks_err_t ks_resp_header_parse(const uint8_t *buf, size_t len, int header_version,
                              int32_t *correlation_id, size_t *body_off)
{
        ks_rbuf_t r = ks_rbuf_make(buf, len);
        if (ks_rbuf_i32(&r, correlation_id))
                return KS_ERR__PARSE;
        if (header_version >= 1 && skip_tagged(&r))
                return KS_ERR__PARSE;
        *body_off = len - ks_rbuf_left(&r);
        return 0;
}

size_t ks_frame_begin_response(ks_wbuf_t *out, int16_t api_key, int16_t api_version,
                               int32_t correlation_id)
{
        size_t start = ks_wbuf_len(out);
        int hv = ks_response_header_version(api_key, api_version);
        uint8_t *p = ks_wbuf_reserve(out, hv >= 1 ? 9 : 8);
        if (!p)
                return (size_t)-1;
        ks_be32_put(p, 0);
        ks_be32_put(p + 4, (uint32_t)correlation_id);
        if (hv >= 1)
                p[8] = 0; /* no header tagged fields */
        return start;
}

size_t ks_frame_begin_request(ks_wbuf_t *out, const ks_req_header_t *h)
{
        size_t start = ks_wbuf_len(out);
        int hv = ks_request_header_version(h->RequestApiKey, h->RequestApiVersion);
        int32_t clen = h->ClientId.len;
        if (clen < -1 || clen > MAX_STRING_LEN || (clen > 0 && !h->ClientId.ptr))
                return (size_t)-1;
        size_t n = 4 + 2 + 2 + 4 + 2 + (clen > 0 ? (size_t)clen : 0) + (hv >= 2 ? 1 : 0);
        uint8_t *p = ks_wbuf_reserve(out, n);
        if (!p)
                return (size_t)-1;
        ks_be32_put(p, 0);
        ks_be16_put(p + 4, (uint16_t)h->RequestApiKey);
        ks_be16_put(p + 6, (uint16_t)h->RequestApiVersion);
        ks_be32_put(p + 8, (uint32_t)h->CorrelationId);
        ks_be16_put(p + 12, (uint16_t)(int16_t)clen);
        if (clen > 0)
                memcpy(p + 14, h->ClientId.ptr, (size_t)clen);
        if (hv >= 2)
                p[n - 1] = 0;
        return start;
}

void ks_frame_finish(ks_wbuf_t *out, size_t frame_start)
{
        size_t len = ks_wbuf_len(out) - frame_start - 4;
        ks_wbuf_patch_be32(out, frame_start, (uint32_t)len);
}
