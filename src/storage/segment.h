/*
 * segment.h — the KafScale segment (.kfs) and sparse index (.index) object
 * formats of SYSTEM.md §4, byte for byte compatible with the Go KafScale
 * implementation (pkg/storage/segment.go and index.go), plus object keys.
 *
 * .kfs, all integers big-endian:
 *
 *   header (32)  "KAFS" | u16 version = 1 | u16 flags = 0 | i64 base offset |
 *                i32 record count | i64 created-at (unix ms) | u32 reserved = 0
 *   body   (n)   Kafka v2 record batches exactly as produced, base offsets
 *                patched (each batch's own CRC is untouched and valid)
 *   footer (16)  u32 CRC-32C of the body | i64 last offset (absolute) | "END!"
 *
 * The header's record count is the sum of the batches' recordsCount; the
 * footer's last offset is the last batch's baseOffset + lastOffsetDelta.
 *
 * .index:
 *
 *   header (16)  "IDX\0" | u16 version = 1 | i32 entry count |
 *                i32 interval (records) | u16 reserved = 0
 *   entries      i64 absolute offset of a batch start | i32 byte position
 *                of that batch in the .kfs object (12 bytes each)
 *
 * Positions count from the start of the .kfs object, header included: the
 * first batch is at position 32.  Source: KafScale's BuildSegment computes
 * `position := headerLen + body.Len()` with headerLen = 32 (scalytics/
 * kafscale, pkg/storage/segment.go).  Entry rule, as its IndexBuilder
 * MaybeAdd: the first batch is always indexed; a later batch is indexed
 * when the batches since the last entry (that entry's batch included) hold
 * at least `interval` records; an interval <= 0 counts as 1.
 *
 * Keys: {ns}/{topic}/{partition}/segment-{base offset:%020d}.{kfs|index}.
 *
 * Readers verify: a mismatch is KS_ERR__CORRUPT with a static reason
 * string, never data.  Nothing here does I/O; nothing but the builder
 * allocates.  Every function is reentrant; a builder is used by one thread
 * at a time.
 */
#ifndef KS_STORAGE_SEGMENT_H
#define KS_STORAGE_SEGMENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "util/err.h"

#define KS_SEGMENT_HEADER_SIZE 32
#define KS_SEGMENT_FOOTER_SIZE 16
#define KS_SEGMENT_VERSION     1
#define KS_INDEX_HEADER_SIZE   16
#define KS_INDEX_ENTRY_SIZE    12
#define KS_INDEX_VERSION       1

#define KS_SEGMENT_EXT_KFS   "kfs"
#define KS_SEGMENT_EXT_INDEX "index"

/* Longest key ks_segment_key_epoch writes beyond the namespace and topic:
 * "/" + partition (10) + "/segment-" + 20 digits + "-e" + 10 digits +
 * ".index" + NUL. */
#define KS_SEGMENT_KEY_EXTRA 59

/* ---- keys ---- */

/* Writes "{ns}/{topic}/{partition}/segment-{base:%020d}.{ext}" into @buf
 * (@len bytes, NUL-terminated) for a segment written at leader epoch 0, and
 * "…/segment-{base:%020d}-e{epoch}.{ext}" for one written at a later epoch:
 * two owners of a partition (a new one and a paused one that does not know
 * it lost the partition yet) never write the same key, so a late write of
 * the old owner cannot replace an object the new one committed.  The
 * manifest records each segment's epoch.  Returns the key's length, or -1
 * if it does not fit, @partition, @base_offset or @epoch is negative, or
 * @ext is not "kfs" or "index". */
int ks_segment_key_epoch(char *buf, size_t len, const char *ns, const char *topic, int32_t partition,
                         int64_t base_offset, int32_t epoch, const char *ext);

/* ks_segment_key_epoch() at epoch 0. */
int ks_segment_key(char *buf, size_t len, const char *ns, const char *topic, int32_t partition, int64_t base_offset,
                   const char *ext);

/* Parses the last path component of @key ("segment-" + exactly 20 digits,
 * optionally "-e" + an epoch above 0 without leading zeros, then ".kfs" or
 * ".index"); the directories before it are not looked at.  *@base_offset
 * gets the offset, *@epoch (may be NULL) the epoch (0 without suffix), *@ext
 * (may be NULL) the static string KS_SEGMENT_EXT_KFS or
 * KS_SEGMENT_EXT_INDEX.  KS_ERR__PARSE for anything else (including values
 * beyond INT64_MAX / INT32_MAX). */
ks_err_t ks_segment_key_parse(const char *key, int64_t *base_offset, int32_t *epoch, const char **ext);

/* ---- builder ---- */

/* Builds one .kfs object and its .index from patched batches without
 * copying them: the segment is handed out as an iovec list (header, each
 * batch as given, footer) for ks_objstore put().
 *
 *     ks_segment_builder_t b;
 *     ks_segment_builder_init(&b, interval, now_ms);
 *     for each batch: ks_segment_builder_add(&b, ptr, len);
 *     ks_segment_builder_finish(&b, &iov, &iovcnt, &index, &index_len);
 *     put(kfs_key, iov, iovcnt); put(index_key, index...);
 *     ks_segment_builder_destroy(&b);
 *
 * Ownership: the builder borrows the batches (they must stay unchanged
 * until the puts are done) and owns the iovec array, the header/footer
 * bytes and the index bytes, all freed by destroy. */
typedef struct ks_segment_builder {
        /* read-only for callers */
        int64_t base_offset;   /* first batch's baseOffset; -1 while empty */
        int64_t last_offset;   /* last batch's baseOffset + lastOffsetDelta; -1 while empty */
        int32_t record_count;  /* sum of recordsCount */
        int32_t batch_count;
        size_t segment_len;    /* header + body + footer bytes */
        /* private */
        int64_t created_ms;
        int32_t interval;
        int64_t since_last;    /* records since the last index entry */
        uint32_t body_crc;
        size_t body_len;
        struct iovec *iov;     /* [0] header, [1..batch_count] batches, then footer */
        int iov_cap;
        uint8_t *index;        /* header + entries, malloc'ed */
        size_t index_len, index_cap;
        int32_t index_entries;
        int finished;
        uint8_t header[KS_SEGMENT_HEADER_SIZE];
        uint8_t footer[KS_SEGMENT_FOOTER_SIZE];
} ks_segment_builder_t;

/* @interval: index interval in records (<= 0 counts as 1, as in KafScale).
 * @created_ms: the header's created-at.  Does not allocate. */
void ks_segment_builder_init(ks_segment_builder_t *b, int32_t interval, int64_t created_ms);

/* Appends the whole batch @batch of @len bytes (base offset already
 * patched); the body CRC advances over its bytes.  Checks that @len is
 * exactly 12 + batchLength of a magic-2 batch header and that offsets go
 * strictly up (baseOffset > the previous last offset, lastOffsetDelta >= 0)
 * — KS_ERR__INVALID_ARG otherwise, and the builder is unchanged.
 * KS_ERR__TOO_LARGE if the object would pass 2 GiB (index positions are
 * i32) or the record count i32; KS_ERR__NOMEM; KS_ERR__INVALID_ARG after
 * finish. */
ks_err_t ks_segment_builder_add(ks_segment_builder_t *b, const uint8_t *batch, size_t len);

/* Completes header and footer and hands out the segment as @iov/@iovcnt
 * (1 + batches + 1 entries, totalling segment_len bytes) and the index
 * bytes; all stay owned by the builder.  KS_ERR__INVALID_ARG if no batch
 * was added.  May be called again (same result); no add afterwards. */
ks_err_t ks_segment_builder_finish(ks_segment_builder_t *b, const struct iovec **iov, int *iovcnt,
                                   const uint8_t **index, size_t *index_len);

/* Frees what the builder owns; it may be re-initialised afterwards. */
void ks_segment_builder_destroy(ks_segment_builder_t *b);

/* ---- readers ---- */

typedef struct ks_segment_header {
        uint16_t version;
        uint16_t flags;
        int64_t base_offset;
        int32_t record_count;
        int64_t created_ms;
        uint32_t reserved;
} ks_segment_header_t;

typedef struct ks_segment_footer {
        uint32_t body_crc;
        int64_t last_offset;
} ks_segment_footer_t;

/* Parses the header from the first 32 of @len bytes at @buf (a ranged read
 * of the object's start, or the whole object): magic, version 1, flags 0,
 * base offset >= 0, record count >= 0 (the reserved word is not looked
 * at).  KS_ERR__CORRUPT otherwise, with
 * *@reason (may be NULL) set to a static sentence. */
ks_err_t ks_segment_header_parse(const uint8_t *buf, size_t len, ks_segment_header_t *h, const char **reason);

/* Parses the footer from the LAST 16 of @len bytes at @buf (a ranged read
 * of the object's tail, or the whole object): magic "END!".  The CRC cannot
 * be checked without the body.  KS_ERR__CORRUPT as above. */
ks_err_t ks_segment_footer_parse(const uint8_t *buf, size_t len, ks_segment_footer_t *f, const char **reason);

/* A verified whole segment; views point into the caller's buffer. */
typedef struct ks_segment_view {
        ks_segment_header_t header;
        ks_segment_footer_t footer;
        const uint8_t *body;    /* the record batches */
        size_t body_len;
        int32_t batch_count;
        const char *reason;     /* static; set when parse fails */
} ks_segment_view_t;

/* Verifies a whole .kfs object: header and footer as above, body CRC,
 * every batch walkable (magic 2, batchLength >= 49, batches exactly fill
 * the body), the first batch at the header's base offset, offsets strictly
 * increasing from batch to batch, the footer's last offset equal to the last
 * batch's, the header's record count equal to the batches' sum, and at
 * least one batch.  Batch CRCs are not recomputed (the body CRC covers
 * them).  KS_ERR_NONE or KS_ERR__CORRUPT (v->reason says why). */
ks_err_t ks_segment_parse(const uint8_t *buf, size_t len, ks_segment_view_t *v);

/* A verified .index object; entries point into the caller's buffer. */
typedef struct ks_index_view {
        int32_t entry_count;
        int32_t interval;
        const uint8_t *entries; /* entry_count * 12 bytes, big-endian */
        const char *reason;     /* static; set when parse fails */
} ks_index_view_t;

/* Verifies a .index object: magic "IDX\0", version 1, exactly
 * 16 + 12 * entry count bytes, offsets >= 0 and strictly increasing,
 * positions >= 32 and strictly increasing.  KS_ERR__CORRUPT otherwise. */
ks_err_t ks_index_parse(const uint8_t *buf, size_t len, ks_index_view_t *v);

/* Entry @i (0 <= i < entry_count) of a parsed index. */
void ks_index_entry(const ks_index_view_t *v, int32_t i, int64_t *offset, int32_t *pos);

/* Finds the entry with the greatest offset <= @offset (binary search):
 * *@batch_offset gets its offset and *@pos its position in the .kfs object;
 * the batch holding @offset starts there or later.  KS_ERR__NOT_FOUND if
 * @offset is below the first entry (or the index is empty). */
ks_err_t ks_index_lookup(const ks_index_view_t *v, int64_t offset, int64_t *batch_offset, int32_t *pos);

#endif
