/*
 * codec.h — generic, table-driven Kafka protocol encoder/decoder.
 *
 * Every request/response message is a plain C struct generated from Apache
 * Kafka's JSON schemas (protocol/gen/kafka_msgs.h) together with a
 * descriptor table saying, per field, where it lives in the struct, its wire
 * type, and in which versions it is present / nullable / tagged.  The
 * functions here walk those tables; there is no per-message code.
 *
 * Memory and ownership
 *  - Decoding is zero-copy: ks_str_t / ks_bytes_t values in a decoded message
 *    (strings, bytes, records) point INTO the input buffer, which must
 *    outlive the message.  Arrays and nullable sub-structs are allocated in
 *    the caller's arena; nothing is ever freed individually — reset the
 *    arena when done with the message.
 *  - Encoding appends to a ks_wbuf_t.  Records fields are appended by
 *    reference (ks_wbuf_ref: no copy), so the memory behind them must stay
 *    valid until the buffer has been sent or destroyed.  Everything else is
 *    copied.
 *  - The codec itself never allocates with malloc except through the arena
 *    and the wbuf (and a short-lived temporary in one lenient encoding case,
 *    see ks_msg_encode).
 *
 * Thread-safety: all descriptor tables are immutable; every function here is
 * reentrant and may be called from any thread, as long as the arena / wbuf /
 * message passed in are not used concurrently by someone else.
 */
#ifndef KS_PROTOCOL_CODEC_H
#define KS_PROTOCOL_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/arena.h"
#include "util/bytes.h"
#include "util/err.h"
#include "util/wbuf.h"

/* Maximum nesting of structs the decoder accepts (the schemas need ~6). */
#define KS_CODEC_MAX_DEPTH 16

/* ---------------------------------------------------------------------
 * Descriptors (instances are generated into protocol/gen/kafka_msgs.c)
 * ------------------------------------------------------------------- */

/* Wire/storage type of a field (of each element, for arrays). */
typedef enum ks_ftype {
        KS_FT_BOOL = 1, /* bool */
        KS_FT_INT8,     /* int8_t */
        KS_FT_INT16,    /* int16_t */
        KS_FT_UINT16,   /* uint16_t */
        KS_FT_INT32,    /* int32_t */
        KS_FT_UINT32,   /* uint32_t */
        KS_FT_INT64,    /* int64_t */
        KS_FT_FLOAT64,  /* double */
        KS_FT_UUID,     /* ks_uuid_t */
        KS_FT_STRING,   /* ks_str_t */
        KS_FT_BYTES,    /* ks_bytes_t */
        KS_FT_RECORDS,  /* ks_bytes_t: one opaque slice, never parsed here */
        KS_FT_STRUCT,   /* embedded struct, or pointer if KS_FF_PTR */
} ks_ftype_t;

/* Inclusive version range; empty when min > max.  "N+" is {N, INT16_MAX}. */
typedef struct ks_vrange {
        int16_t min, max;
} ks_vrange_t;

#define KS_VNONE ((ks_vrange_t){ 1, 0 })

static inline bool ks_vrange_has(ks_vrange_t r, int16_t v)
{
        return v >= r.min && v <= r.max;
}

/* Field flags. */
#define KS_FF_PTR        0x01 /* non-array struct held by pointer (nullable) */
#define KS_FF_NEVER_FLEX 0x02 /* classic string/bytes/array encoding even in
                               * flexible versions (field "flexibleVersions": "none") */

struct ks_struct_desc;

typedef struct ks_field_desc {
        const char *name;       /* Kafka's field name */
        uint32_t offset;        /* offsetof the member */
        uint32_t elem_size;     /* in-memory size of one value (array element) */
        uint8_t type;           /* ks_ftype_t of the value / each element */
        bool is_array;          /* member is { T *items; int32_t count; } */
        uint8_t flags;          /* KS_FF_* */
        bool def_null;          /* default is null (strings, bytes, records,
                                 * arrays, pointer structs) */
        ks_vrange_t versions;   /* versions the field exists in */
        ks_vrange_t nullable;   /* versions in which it may be null */
        ks_vrange_t tagged;     /* versions in which it is a tagged field */
        int32_t tag;            /* tag number, -1 if never tagged */
        const struct ks_struct_desc *sub; /* KS_FT_STRUCT: element/struct type */
        int64_t def_int;        /* default of bool / integer types */
        double def_float;       /* default of float64 */
        const char *def_str;    /* default of a non-null string (def_str_len bytes) */
        int32_t def_str_len;
} ks_field_desc_t;

typedef struct ks_struct_desc {
        const char *name;              /* e.g. "CreateTopicsRequest", "CreatableTopic" */
        uint32_t size;                 /* sizeof the C struct */
        const ks_field_desc_t *fields; /* in schema (= wire) order */
        uint16_t field_count;
        const uint16_t *tagged;        /* indices into fields of tagged fields, ascending tag */
        uint16_t tagged_count;
} ks_struct_desc_t;

/* Generic view of every array member: all generated array members have
 * exactly this layout ({ T *items; int32_t count; }), checked at compile
 * time in kafka_msgs.c.  count == -1: null array (items NULL). */
typedef struct ks_array {
        void *items;
        int32_t count;
} ks_array_t;

typedef struct ks_api_desc {
        int16_t api_key;
        const char *name;              /* e.g. "Produce" */
        int16_t min_version, max_version;
        int16_t first_flexible;        /* INT16_MAX if never flexible */
        const ks_struct_desc_t *request, *response;
} ks_api_desc_t;

/* The generated APIs, sorted by api key (defined in kafka_msgs.c). */
extern const ks_api_desc_t ks_api_descs[];
extern const int ks_api_descs_count;

/* Descriptor of @api_key, or NULL if that API is not generated. */
const ks_api_desc_t *ks_api_desc(int16_t api_key);

/* ---------------------------------------------------------------------
 * Generic message operations
 * ------------------------------------------------------------------- */

/* Sets every field of @msg (a struct described by @d) to its schema default:
 * numbers/bools per the schema "default" (else 0/false), strings to their
 * default ("" unless the schema says otherwise, null for "null"), bytes
 * empty (records: null), arrays empty (count 0, items NULL; count -1 if the
 * default is "null"), embedded structs recursively, pointer structs NULL. */
void ks_msg_init(const ks_struct_desc_t *d, void *msg);

/* Allocates one struct described by @d in @arena and ks_msg_init()s it.
 * NULL on allocation failure. */
void *ks_msg_new(const ks_struct_desc_t *d, ks_arena_t *arena);

/* Allocates @n consecutive initialised structs (array items) in @arena;
 * NULL on allocation failure (or n < 0).  n == 0 gives a valid pointer. */
void *ks_msg_new_array(const ks_struct_desc_t *d, int32_t n, ks_arena_t *arena);

/* Allocates an array of @n zeroed elements of @elem_size bytes (for arrays of
 * primitives: int32_t, ks_str_t, ...).  NULL on failure. */
void *ks_array_new(size_t elem_size, int32_t n, ks_arena_t *arena);

/* Decodes @version of the struct @d from buf[0..len) into @msg (caller-owned
 * memory of d->size bytes; it is ks_msg_init()ed first, so fields absent in
 * @version hold their defaults).  @flexible selects the compact/tagged
 * encoding (version >= the API's first flexible version).  Strings, bytes and
 * records point into @buf; arrays and pointer structs are allocated in
 * @arena.
 *
 * If @consumed is non-NULL it receives the number of bytes used and trailing
 * bytes are allowed; if NULL the message must span exactly @len bytes.
 *
 * Returns 0, KS_ERR__PARSE on malformed input (truncation, bad lengths, a
 * null where the version does not allow one, tags not strictly ascending,
 * a known tagged field whose payload does not match its size, nesting deeper
 * than KS_CODEC_MAX_DEPTH, strings longer than 32767 bytes), or
 * KS_ERR__NOMEM.  Never reads outside buf[0..len); lengths/counts are checked
 * against the remaining input before anything is allocated.  On error @msg
 * holds a partial decode that must not be used (but needs no cleanup). */
ks_err_t ks_msg_decode(const ks_struct_desc_t *d, int16_t version, bool flexible,
                       const uint8_t *buf, size_t len, ks_arena_t *arena, void *msg,
                       size_t *consumed);

/* Appends the encoding of @msg (version @version) to @out.
 *  - Fields that do not exist in @version are skipped silently, whatever
 *    their value (a response can be built once and encoded for any version).
 *  - Tagged fields are written only when different from their default, in
 *    ascending tag order.
 *  - A null value in a version where the field is not nullable is encoded as
 *    the empty value (empty string/bytes/array; a NULL pointer struct as a
 *    struct holding defaults).
 * Returns 0, KS_ERR__INVALID_ARG (string longer than 32767 bytes, negative
 * length other than -1, array count > 0 with NULL items, nesting too deep),
 * or KS_ERR__NOMEM.  On error @out may hold a partial encoding: truncate or
 * discard it. */
ks_err_t ks_msg_encode(const ks_struct_desc_t *d, int16_t version, bool flexible,
                       const void *msg, ks_wbuf_t *out);

/* Number of bytes ks_msg_encode() would append (no allocation).  Returns 0
 * and sets *size, or KS_ERR__INVALID_ARG as ks_msg_encode. */
ks_err_t ks_msg_encoded_size(const ks_struct_desc_t *d, int16_t version, bool flexible,
                             const void *msg, size_t *size);

/* Field-by-field comparison of two messages in @version (fields absent in
 * @version are ignored; nulls compare equal only to nulls).  For tests. */
bool ks_msg_equal(const ks_struct_desc_t *d, int16_t version, const void *a, const void *b);

static inline bool ks_api_flexible(const ks_api_desc_t *api, int16_t version)
{
        return version >= api->first_flexible;
}

/* Convenience wrappers taking an API descriptor (flexible = version >=
 * api->first_flexible).  The *_decode functions allocate the message struct
 * in @arena, decode the buffer and return it in *out.  Bytes after a
 * request body are ignored, as Apache Kafka does (some clients send them);
 * bytes after a response body are a parse error.  A version outside [min_version, max_version] returns
 * KS_ERR_UNSUPPORTED_VERSION without touching the input. */
ks_err_t ks_request_decode(const ks_api_desc_t *api, int16_t version, const uint8_t *buf,
                           size_t len, ks_arena_t *arena, void **req_out);
ks_err_t ks_response_decode(const ks_api_desc_t *api, int16_t version, const uint8_t *buf,
                            size_t len, ks_arena_t *arena, void **resp_out);
ks_err_t ks_request_encode(const ks_api_desc_t *api, int16_t version, const void *req,
                           ks_wbuf_t *out);
ks_err_t ks_response_encode(const ks_api_desc_t *api, int16_t version, const void *resp,
                            ks_wbuf_t *out);

/* ---------------------------------------------------------------------
 * Framing and headers
 * ------------------------------------------------------------------- */

/* Request header (RequestHeader.json v1/v2; v0 is only for
 * ControlledShutdown v0 and not supported).  ClientId points into the
 * parsed buffer. */
typedef struct ks_req_header {
        int16_t RequestApiKey;
        int16_t RequestApiVersion;
        int32_t CorrelationId;
        ks_str_t ClientId; /* nullable */
} ks_req_header_t;

/* Request header version for an API/version: 2 if flexible, else 1.  API
 * keys we do not generate get 1 (enough to read the correlation id and
 * answer with an error). */
int ks_request_header_version(int16_t api_key, int16_t api_version);

/* Response header version: 1 if flexible, else 0.  ApiVersions responses
 * always use 0 (so clients can parse them before knowing our versions). */
int ks_response_header_version(int16_t api_key, int16_t api_version);

/* Parses the request header at the start of a frame body (the bytes after
 * the 4-byte size).  ClientId is a classic (int16-length) nullable string in
 * both header versions; in v2 the header's tagged fields are skipped.
 * *body_off receives the offset of the request body in @buf.  Returns 0 or
 * KS_ERR__PARSE.  Does not check that the API/version is supported. */
ks_err_t ks_req_header_parse(const uint8_t *buf, size_t len, ks_req_header_t *h,
                             size_t *body_off);

/* Starts a response frame: appends a 4-byte size placeholder and the
 * response header for @api_key/@api_version.  Returns the frame start (the
 * position of the size field) to pass to ks_frame_finish() after the body
 * has been appended, or (size_t)-1 on allocation failure. */
size_t ks_frame_begin_response(ks_wbuf_t *out, int16_t api_key, int16_t api_version,
                               int32_t correlation_id);

/* Starts a request frame (clients, tests): size placeholder + request header
 * (v1 or v2 per ks_request_header_version).  Returns the frame start or
 * (size_t)-1 on allocation failure. */
size_t ks_frame_begin_request(ks_wbuf_t *out, const ks_req_header_t *h);

/* Patches the size field of the frame started at @frame_start to cover
 * everything appended since.  Nothing may be consumed from @out in between. */
void ks_frame_finish(ks_wbuf_t *out, size_t frame_start);

/* Parses a response header (for clients/tests): correlation id, plus tagged
 * fields if @header_version is 1.  0 or KS_ERR__PARSE. */
ks_err_t ks_resp_header_parse(const uint8_t *buf, size_t len, int header_version,
                              int32_t *correlation_id, size_t *body_off);

#endif
