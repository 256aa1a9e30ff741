/*
 * bytes.h — small shared value types (strings, byte slices, UUIDs) and
 * bounds-checked big-endian / varint helpers.
 *
 * Everything here is header-only, allocation-free and reentrant.
 *
 * ks_str_t and ks_bytes_t are *views*: they never own their memory.  A
 * length of -1 means "null" (Kafka distinguishes null from empty); a null
 * view's ptr is NULL.  Strings are NOT NUL-terminated.  Whoever hands out a
 * view documents how long the memory behind it lives (decoded messages point
 * into the request buffer; see protocol/codec.h).
 */
#ifndef KS_UTIL_BYTES_H
#define KS_UTIL_BYTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
        const char *ptr;
        int32_t len; /* -1: null */
} ks_str_t;

typedef struct {
        const uint8_t *ptr;
        int32_t len; /* -1: null */
} ks_bytes_t;

typedef struct {
        uint8_t b[16];
} ks_uuid_t;

/* View of a string literal (KS_STR("abc")).  Only for literals/arrays. */
#define KS_STR(lit)  ((ks_str_t){ (lit), (int32_t)sizeof(lit) - 1 })
#define KS_STR_NULL  ((ks_str_t){ NULL, -1 })
#define KS_BYTES_NULL ((ks_bytes_t){ NULL, -1 })

/* View of a NUL-terminated C string; NULL gives the null string.  The view
 * borrows @s. */
static inline ks_str_t ks_str_c(const char *s)
{
        if (!s)
                return KS_STR_NULL;
        return (ks_str_t){ s, (int32_t)strlen(s) };
}

static inline bool ks_str_is_null(ks_str_t s) { return s.len < 0; }

/* 1 if both are null, or both non-null with identical bytes; else 0. */
static inline int ks_str_eq(ks_str_t a, ks_str_t b)
{
        if (a.len < 0 || b.len < 0)
                return a.len < 0 && b.len < 0;
        return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, (size_t)a.len) == 0);
}

/* Compares with a C string; a NULL @c equals only the null string. */
static inline int ks_str_eq_c(ks_str_t a, const char *c)
{
        return ks_str_eq(a, ks_str_c(c));
}

/* Same semantics as ks_str_eq for byte slices. */
static inline int ks_bytes_eq(ks_bytes_t a, ks_bytes_t b)
{
        if (a.len < 0 || b.len < 0)
                return a.len < 0 && b.len < 0;
        return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, (size_t)a.len) == 0);
}

static inline int ks_uuid_eq(const ks_uuid_t *a, const ks_uuid_t *b)
{
        return memcmp(a->b, b->b, sizeof(a->b)) == 0;
}

static inline int ks_uuid_is_zero(const ks_uuid_t *u)
{
        static const ks_uuid_t zero;
        return ks_uuid_eq(u, &zero);
}

/* ---- big-endian stores / loads on raw memory (caller guarantees room) ---- */

static inline void ks_be16_put(uint8_t *p, uint16_t v)
{
        p[0] = (uint8_t)(v >> 8);
        p[1] = (uint8_t)v;
}

static inline void ks_be32_put(uint8_t *p, uint32_t v)
{
        p[0] = (uint8_t)(v >> 24);
        p[1] = (uint8_t)(v >> 16);
        p[2] = (uint8_t)(v >> 8);
        p[3] = (uint8_t)v;
}

static inline void ks_be64_put(uint8_t *p, uint64_t v)
{
        ks_be32_put(p, (uint32_t)(v >> 32));
        ks_be32_put(p + 4, (uint32_t)v);
}

static inline uint16_t ks_be16_get(const uint8_t *p)
{
        return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}

static inline uint32_t ks_be32_get(const uint8_t *p)
{
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t ks_be64_get(const uint8_t *p)
{
        return (uint64_t)ks_be32_get(p) << 32 | ks_be32_get(p + 4);
}

/* Maximum encoded size of an unsigned varint of 32 / 64 bits. */
#define KS_UVARINT32_MAX 5
#define KS_UVARINT64_MAX 10

/* Writes @v as an unsigned LEB128 varint into @p (room for
 * KS_UVARINT64_MAX bytes); returns the number of bytes written. */
static inline size_t ks_uvarint_put(uint8_t *p, uint64_t v)
{
        size_t n = 0;
        while (v >= 0x80) {
                p[n++] = (uint8_t)(v | 0x80);
                v >>= 7;
        }
        p[n++] = (uint8_t)v;
        return n;
}

/* Encoded size of @v as an unsigned varint. */
static inline size_t ks_uvarint_size(uint64_t v)
{
        size_t n = 1;
        while (v >= 0x80) {
                v >>= 7;
                n++;
        }
        return n;
}

/* Zig-zag mapping used by Kafka's signed varints (record format). */
static inline uint64_t ks_zigzag64(int64_t v)
{
        return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static inline int64_t ks_unzigzag64(uint64_t v)
{
        return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
}

/* ---- bounds-checked reader ----
 *
 * A cursor over borrowed memory.  Every read returns 0 on success or -1 if
 * the remaining input is too short / malformed; on failure the cursor does
 * not advance past the end (its position is unspecified but within bounds),
 * and the caller is expected to give up on the buffer. */
typedef struct {
        const uint8_t *p;   /* next unread byte */
        const uint8_t *end; /* one past the last byte */
} ks_rbuf_t;

static inline ks_rbuf_t ks_rbuf_make(const void *buf, size_t len)
{
        const uint8_t *p = (const uint8_t *)buf;
        return (ks_rbuf_t){ p, p ? p + len : p };
}

static inline size_t ks_rbuf_left(const ks_rbuf_t *r)
{
        return (size_t)(r->end - r->p);
}

/* Borrows the next @n bytes (returned in *out) and advances. */
static inline int ks_rbuf_take(ks_rbuf_t *r, size_t n, const uint8_t **out)
{
        if (ks_rbuf_left(r) < n)
                return -1;
        *out = r->p;
        r->p += n;
        return 0;
}

static inline int ks_rbuf_skip(ks_rbuf_t *r, size_t n)
{
        if (ks_rbuf_left(r) < n)
                return -1;
        r->p += n;
        return 0;
}

static inline int ks_rbuf_u8(ks_rbuf_t *r, uint8_t *v)
{
        if (r->p >= r->end)
                return -1;
        *v = *r->p++;
        return 0;
}

static inline int ks_rbuf_be16(ks_rbuf_t *r, uint16_t *v)
{
        if (ks_rbuf_left(r) < 2)
                return -1;
        *v = ks_be16_get(r->p);
        r->p += 2;
        return 0;
}

static inline int ks_rbuf_be32(ks_rbuf_t *r, uint32_t *v)
{
        if (ks_rbuf_left(r) < 4)
                return -1;
        *v = ks_be32_get(r->p);
        r->p += 4;
        return 0;
}

static inline int ks_rbuf_be64(ks_rbuf_t *r, uint64_t *v)
{
        if (ks_rbuf_left(r) < 8)
                return -1;
        *v = ks_be64_get(r->p);
        r->p += 8;
        return 0;
}

static inline int ks_rbuf_i16(ks_rbuf_t *r, int16_t *v)
{
        uint16_t u;
        if (ks_rbuf_be16(r, &u))
                return -1;
        *v = (int16_t)u;
        return 0;
}

static inline int ks_rbuf_i32(ks_rbuf_t *r, int32_t *v)
{
        uint32_t u;
        if (ks_rbuf_be32(r, &u))
                return -1;
        *v = (int32_t)u;
        return 0;
}

static inline int ks_rbuf_i64(ks_rbuf_t *r, int64_t *v)
{
        uint64_t u;
        if (ks_rbuf_be64(r, &u))
                return -1;
        *v = (int64_t)u;
        return 0;
}

/* Unsigned varint of at most 64 bits (10 bytes); rejects longer encodings
 * and bits beyond 64. */
static inline int ks_rbuf_uvarint64(ks_rbuf_t *r, uint64_t *v)
{
        uint64_t x = 0;
        for (unsigned shift = 0; shift < 70; shift += 7) {
                uint8_t b;
                if (ks_rbuf_u8(r, &b))
                        return -1;
                if (shift == 63 && b > 1)
                        return -1;
                x |= (uint64_t)(b & 0x7f) << shift;
                if (!(b & 0x80)) {
                        *v = x;
                        return 0;
                }
        }
        return -1;
}

/* Unsigned varint of at most 32 bits (5 bytes, as Kafka's
 * readUnsignedVarint); rejects values that do not fit in 32 bits. */
static inline int ks_rbuf_uvarint(ks_rbuf_t *r, uint32_t *v)
{
        uint32_t x = 0;
        for (unsigned shift = 0; shift < 35; shift += 7) {
                uint8_t b;
                if (ks_rbuf_u8(r, &b))
                        return -1;
                if (shift == 28 && b > 0x0f)
                        return -1;
                x |= (uint32_t)(b & 0x7f) << shift;
                if (!(b & 0x80)) {
                        *v = x;
                        return 0;
                }
        }
        return -1;
}

/* Zig-zag signed varints (record format "varint" / "varlong"). */
static inline int ks_rbuf_varint(ks_rbuf_t *r, int32_t *v)
{
        uint32_t u;
        if (ks_rbuf_uvarint(r, &u))
                return -1;
        *v = (int32_t)(u >> 1) ^ -(int32_t)(u & 1);
        return 0;
}

static inline int ks_rbuf_varlong(ks_rbuf_t *r, int64_t *v)
{
        uint64_t u;
        if (ks_rbuf_uvarint64(r, &u))
                return -1;
        *v = ks_unzigzag64(u);
        return 0;
}

#endif
