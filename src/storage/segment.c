/*
 * segment.c — KafScale .kfs/.index formats and keys (see segment.h).
 */
#include "storage/segment.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log/batch.h"
#include "util/bytes.h"
#include "util/crc32c.h"

static const uint8_t SEGMENT_MAGIC[4] = { 'K', 'A', 'F', 'S' };
static const uint8_t FOOTER_MAGIC[4] = { 'E', 'N', 'D', '!' };
static const uint8_t INDEX_MAGIC[4] = { 'I', 'D', 'X', '\0' };

#define SEGMENT_PREFIX "segment-"
#define DIGITS         20

/* ---- keys ---- */

int ks_segment_key_epoch(char *buf, size_t len, const char *ns, const char *topic, int32_t partition,
                         int64_t base_offset, int32_t epoch, const char *ext)
{
        if (!buf || !ns || !topic || !ext || partition < 0 || base_offset < 0 || epoch < 0)
                return -1;
        if (strcmp(ext, KS_SEGMENT_EXT_KFS) != 0 && strcmp(ext, KS_SEGMENT_EXT_INDEX) != 0)
                return -1;
        char sfx[16] = "";
        if (epoch > 0)
                snprintf(sfx, sizeof(sfx), "-e%" PRId32, epoch);
        int n = snprintf(buf, len, "%s/%s/%" PRId32 "/" SEGMENT_PREFIX "%020" PRId64 "%s.%s", ns, topic, partition,
                         base_offset, sfx, ext);
        if (n < 0 || (size_t)n >= len)
                return -1;
        return n;
}

int ks_segment_key(char *buf, size_t len, const char *ns, const char *topic, int32_t partition, int64_t base_offset,
                   const char *ext)
{
        return ks_segment_key_epoch(buf, len, ns, topic, partition, base_offset, 0, ext);
}

ks_err_t ks_segment_key_parse(const char *key, int64_t *base_offset, int32_t *epoch, const char **ext)
{
        if (!key)
                return KS_ERR__PARSE;
        const char *name = strrchr(key, '/');
        name = name ? name + 1 : key;
        if (strncmp(name, SEGMENT_PREFIX, sizeof(SEGMENT_PREFIX) - 1) != 0)
                return KS_ERR__PARSE;
        const char *d = name + sizeof(SEGMENT_PREFIX) - 1;
        uint64_t v = 0;
        for (int i = 0; i < DIGITS; i++) {
                if (d[i] < '0' || d[i] > '9')
                        return KS_ERR__PARSE;
                uint64_t digit = (uint64_t)(d[i] - '0');
                if (v > ((uint64_t)INT64_MAX - digit) / 10)
                        return KS_ERR__PARSE;
                v = v * 10 + digit;
        }
        const char *e = d + DIGITS;
        uint32_t ep = 0;
        if (e[0] == '-' && e[1] == 'e') {
                /* "-e" + 1..10 digits, no leading zero, at most INT32_MAX, above 0 */
                e += 2;
                int nd = 0;
                if (*e < '1' || *e > '9')
                        return KS_ERR__PARSE;
                while (*e >= '0' && *e <= '9') {
                        uint32_t digit = (uint32_t)(*e - '0');
                        if (++nd > 10 || ep > ((uint32_t)INT32_MAX - digit) / 10)
                                return KS_ERR__PARSE;
                        ep = ep * 10 + digit;
                        e++;
                }
        }
        const char *which;
        if (strcmp(e, "." KS_SEGMENT_EXT_KFS) == 0)
                which = KS_SEGMENT_EXT_KFS;
        else if (strcmp(e, "." KS_SEGMENT_EXT_INDEX) == 0)
                which = KS_SEGMENT_EXT_INDEX;
        else
                return KS_ERR__PARSE;
        *base_offset = (int64_t)v;
        if (epoch)
                *epoch = (int32_t)ep;
        if (ext)
                *ext = which;
        return KS_ERR_NONE;
}

/* ---- builder ---- */

void ks_segment_builder_init(ks_segment_builder_t *b, int32_t interval, int64_t created_ms)
{
        memset(b, 0, sizeof(*b));
        b->base_offset = -1;
        b->last_offset = -1;
        b->created_ms = created_ms;
        b->interval = interval > 0 ? interval : 1;
        b->segment_len = KS_SEGMENT_HEADER_SIZE + KS_SEGMENT_FOOTER_SIZE;
}

static int index_reserve(ks_segment_builder_t *b, size_t need)
{
        if (need <= b->index_cap)
                return 0;
        size_t ncap = b->index_cap ? b->index_cap * 2 : KS_INDEX_HEADER_SIZE + 16 * KS_INDEX_ENTRY_SIZE;
        while (ncap < need)
                ncap *= 2;
        uint8_t *n = realloc(b->index, ncap);
        if (!n)
                return -1;
        b->index = n;
        b->index_cap = ncap;
        return 0;
}

ks_err_t ks_segment_builder_add(ks_segment_builder_t *b, const uint8_t *batch, size_t len)
{
        ks_batch_info_t info;

        if (b->finished || !batch || ks_batch_header_parse(batch, len, &info) != KS_ERR_NONE || info.size != len)
                return KS_ERR__INVALID_ARG;
        /* Offsets strictly increase through a segment. */
        if (info.base_offset < 0 || info.last_offset_delta < 0 ||
            info.base_offset > INT64_MAX - info.last_offset_delta ||
            (b->batch_count > 0 && info.base_offset <= b->last_offset))
                return KS_ERR__INVALID_ARG;
        if (info.records_count < 0)
                return KS_ERR__INVALID_ARG;
        if (info.records_count > INT32_MAX - b->record_count)
                return KS_ERR__TOO_LARGE;
        /* The whole object must stay addressable by i32 index positions. */
        if (len > (size_t)INT32_MAX - b->segment_len)
                return KS_ERR__TOO_LARGE;

        /* Room for the header, every batch including this one, and the
         * footer. */
        if (b->batch_count + 3 > b->iov_cap) {
                int ncap = b->iov_cap ? b->iov_cap * 2 : 64;
                struct iovec *n = realloc(b->iov, (size_t)ncap * sizeof(*n));
                if (!n)
                        return KS_ERR__NOMEM;
                b->iov = n;
                b->iov_cap = ncap;
        }
        int index_it = b->batch_count == 0 || b->since_last >= b->interval;
        if (index_it) {
                size_t need = b->index_len ? b->index_len + KS_INDEX_ENTRY_SIZE
                                           : KS_INDEX_HEADER_SIZE + KS_INDEX_ENTRY_SIZE;
                if (index_reserve(b, need))
                        return KS_ERR__NOMEM;
                if (b->index_len == 0)
                        b->index_len = KS_INDEX_HEADER_SIZE; /* written at finish */
                uint8_t *e = b->index + b->index_len;
                ks_be64_put(e, (uint64_t)info.base_offset);
                ks_be32_put(e + 8, (uint32_t)(KS_SEGMENT_HEADER_SIZE + b->body_len));
                b->index_len += KS_INDEX_ENTRY_SIZE;
                b->index_entries++;
                b->since_last = 0;
        }
        b->since_last += info.records_count;

        b->iov[1 + b->batch_count] = (struct iovec){ .iov_base = (void *)batch, .iov_len = len };
        if (b->batch_count == 0)
                b->base_offset = info.base_offset;
        b->batch_count++;
        b->last_offset = info.base_offset + info.last_offset_delta;
        b->record_count += info.records_count;
        b->body_crc = ks_crc32c_update(b->body_crc, batch, len);
        b->body_len += len;
        b->segment_len += len;
        return KS_ERR_NONE;
}

ks_err_t ks_segment_builder_finish(ks_segment_builder_t *b, const struct iovec **iov, int *iovcnt,
                                   const uint8_t **index, size_t *index_len)
{
        if (b->batch_count == 0)
                return KS_ERR__INVALID_ARG;

        uint8_t *h = b->header;
        memcpy(h, SEGMENT_MAGIC, 4);
        ks_be16_put(h + 4, KS_SEGMENT_VERSION);
        ks_be16_put(h + 6, 0);
        ks_be64_put(h + 8, (uint64_t)b->base_offset);
        ks_be32_put(h + 16, (uint32_t)b->record_count);
        ks_be64_put(h + 20, (uint64_t)b->created_ms);
        ks_be32_put(h + 28, 0);

        uint8_t *f = b->footer;
        ks_be32_put(f, b->body_crc);
        ks_be64_put(f + 4, (uint64_t)b->last_offset);
        memcpy(f + 12, FOOTER_MAGIC, 4);

        uint8_t *x = b->index;
        memcpy(x, INDEX_MAGIC, 4);
        ks_be16_put(x + 4, KS_INDEX_VERSION);
        ks_be32_put(x + 6, (uint32_t)b->index_entries);
        ks_be32_put(x + 10, (uint32_t)b->interval);
        ks_be16_put(x + 14, 0);

        b->iov[0] = (struct iovec){ .iov_base = b->header, .iov_len = KS_SEGMENT_HEADER_SIZE };
        b->iov[1 + b->batch_count] = (struct iovec){ .iov_base = b->footer, .iov_len = KS_SEGMENT_FOOTER_SIZE };
        b->finished = 1;

        if (iov)
                *iov = b->iov;
        if (iovcnt)
                *iovcnt = b->batch_count + 2;
        if (index)
                *index = b->index;
        if (index_len)
                *index_len = b->index_len;
        return KS_ERR_NONE;
}

void ks_segment_builder_destroy(ks_segment_builder_t *b)
{
        free(b->iov);
        free(b->index);
        ks_segment_builder_init(b, b->interval, b->created_ms);
}

/* ---- readers ---- */

ks_err_t ks_segment_header_parse(const uint8_t *buf, size_t len, ks_segment_header_t *h, const char **reason)
{
        const char *why;

        if (len < KS_SEGMENT_HEADER_SIZE) {
                why = "segment shorter than its 32-byte header";
                goto corrupt;
        }
        if (memcmp(buf, SEGMENT_MAGIC, 4) != 0) {
                why = "segment header magic is not \"KAFS\"";
                goto corrupt;
        }
        h->version = ks_be16_get(buf + 4);
        h->flags = ks_be16_get(buf + 6);
        h->base_offset = (int64_t)ks_be64_get(buf + 8);
        h->record_count = (int32_t)ks_be32_get(buf + 16);
        h->created_ms = (int64_t)ks_be64_get(buf + 20);
        h->reserved = ks_be32_get(buf + 28);
        if (h->version != KS_SEGMENT_VERSION) {
                why = "unsupported segment version";
                goto corrupt;
        }
        if (h->flags != 0) {
                why = "unsupported segment flags";
                goto corrupt;
        }
        if (h->base_offset < 0 || h->record_count < 0) {
                why = "negative base offset or record count in segment header";
                goto corrupt;
        }
        return KS_ERR_NONE;

corrupt:
        if (reason)
                *reason = why;
        return KS_ERR__CORRUPT;
}

ks_err_t ks_segment_footer_parse(const uint8_t *buf, size_t len, ks_segment_footer_t *f, const char **reason)
{
        if (len < KS_SEGMENT_FOOTER_SIZE) {
                if (reason)
                        *reason = "segment shorter than its 16-byte footer";
                return KS_ERR__CORRUPT;
        }
        const uint8_t *p = buf + len - KS_SEGMENT_FOOTER_SIZE;
        if (memcmp(p + 12, FOOTER_MAGIC, 4) != 0) {
                if (reason)
                        *reason = "segment footer magic is not \"END!\" (truncated or not a segment)";
                return KS_ERR__CORRUPT;
        }
        f->body_crc = ks_be32_get(p);
        f->last_offset = (int64_t)ks_be64_get(p + 4);
        return KS_ERR_NONE;
}

ks_err_t ks_segment_parse(const uint8_t *buf, size_t len, ks_segment_view_t *v)
{
        const char *why = NULL;

        memset(v, 0, sizeof(*v));
        if (len < KS_SEGMENT_HEADER_SIZE + KS_SEGMENT_FOOTER_SIZE) {
                why = "segment shorter than header and footer";
                goto corrupt;
        }
        if (ks_segment_header_parse(buf, len, &v->header, &why) ||
            ks_segment_footer_parse(buf, len, &v->footer, &why))
                goto corrupt;
        v->body = buf + KS_SEGMENT_HEADER_SIZE;
        v->body_len = len - KS_SEGMENT_HEADER_SIZE - KS_SEGMENT_FOOTER_SIZE;
        if (v->body_len == 0) {
                why = "segment holds no record batch";
                goto corrupt;
        }
        if (ks_crc32c(v->body, v->body_len) != v->footer.body_crc) {
                why = "segment body CRC-32C does not match the footer";
                goto corrupt;
        }

        int64_t last = -1, records = 0;
        size_t pos = 0;
        while (pos < v->body_len) {
                ks_batch_info_t b;
                if (ks_batch_header_parse(v->body + pos, v->body_len - pos, &b)) {
                        why = "segment body holds a truncated or malformed record batch";
                        goto corrupt;
                }
                if (v->batch_count == 0 ? b.base_offset != v->header.base_offset : b.base_offset <= last) {
                        why = v->batch_count == 0 ? "first batch offset differs from the segment header"
                                                  : "batch offsets do not increase within the segment";
                        goto corrupt;
                }
                if (b.last_offset_delta < 0 || b.base_offset > INT64_MAX - b.last_offset_delta || b.records_count < 0) {
                        why = "batch with an invalid offset range or record count";
                        goto corrupt;
                }
                last = b.base_offset + b.last_offset_delta;
                records += b.records_count;
                if (v->batch_count == INT32_MAX) {
                        why = "too many batches";
                        goto corrupt;
                }
                v->batch_count++;
                pos += b.size;
        }
        if (last != v->footer.last_offset) {
                why = "footer last offset differs from the last batch";
                goto corrupt;
        }
        if (records != v->header.record_count) {
                why = "header record count differs from the batches";
                goto corrupt;
        }
        return KS_ERR_NONE;

corrupt:
        v->reason = why;
        return KS_ERR__CORRUPT;
}

ks_err_t ks_index_parse(const uint8_t *buf, size_t len, ks_index_view_t *v)
{
        const char *why;

        memset(v, 0, sizeof(*v));
        if (len < KS_INDEX_HEADER_SIZE) {
                why = "index shorter than its 16-byte header";
                goto corrupt;
        }
        if (memcmp(buf, INDEX_MAGIC, 4) != 0) {
                why = "index magic is not \"IDX\\0\"";
                goto corrupt;
        }
        if (ks_be16_get(buf + 4) != KS_INDEX_VERSION) {
                why = "unsupported index version";
                goto corrupt;
        }
        int32_t count = (int32_t)ks_be32_get(buf + 6);
        int32_t interval = (int32_t)ks_be32_get(buf + 10);
        if (count < 0 || (len - KS_INDEX_HEADER_SIZE) / KS_INDEX_ENTRY_SIZE != (size_t)count ||
            (len - KS_INDEX_HEADER_SIZE) % KS_INDEX_ENTRY_SIZE != 0) {
                why = "index size does not match its entry count";
                goto corrupt;
        }
        const uint8_t *e = buf + KS_INDEX_HEADER_SIZE;
        int64_t prev_off = -1;
        int32_t prev_pos = KS_SEGMENT_HEADER_SIZE - 1;
        for (int32_t i = 0; i < count; i++, e += KS_INDEX_ENTRY_SIZE) {
                int64_t off = (int64_t)ks_be64_get(e);
                int32_t pos = (int32_t)ks_be32_get(e + 8);
                if (off <= prev_off || pos <= prev_pos) {
                        why = "index entries are not strictly increasing (or point into the segment header)";
                        goto corrupt;
                }
                prev_off = off;
                prev_pos = pos;
        }
        v->entry_count = count;
        v->interval = interval;
        v->entries = buf + KS_INDEX_HEADER_SIZE;
        return KS_ERR_NONE;

corrupt:
        v->reason = why;
        return KS_ERR__CORRUPT;
}

void ks_index_entry(const ks_index_view_t *v, int32_t i, int64_t *offset, int32_t *pos)
{
        const uint8_t *e = v->entries + (size_t)i * KS_INDEX_ENTRY_SIZE;
        if (offset)
                *offset = (int64_t)ks_be64_get(e);
        if (pos)
                *pos = (int32_t)ks_be32_get(e + 8);
}

ks_err_t ks_index_lookup(const ks_index_view_t *v, int64_t offset, int64_t *batch_offset, int32_t *pos)
{
        /* Greatest i with entry[i].offset <= offset: search [lo, hi). */
        int32_t lo = 0, hi = v->entry_count;
        while (lo < hi) {
                int32_t mid = lo + (hi - lo) / 2;
                int64_t off;
                ks_index_entry(v, mid, &off, NULL);
                if (off <= offset)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (lo == 0)
                return KS_ERR__NOT_FOUND;
        ks_index_entry(v, lo - 1, batch_offset, pos);
        return KS_ERR_NONE;
}
