/*
 * offsets.c — committed consumer offsets: keys, JSON values, commit in
 * transactions of at most 128 puts, range reads.
 *
 * Keys are built here and only here; every name is validated first, so a
 * key always has exactly the shape /kafscale/consumers/{g}/offsets/{t}/{p}
 * with {g} and {t} single path segments and {p} a canonical decimal.
 */
#include "meta/offsets.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "meta/metadata.h"
#include "util/clock.h"
#include "util/log.h"

#define CONSUMERS_PREFIX "/kafscale/consumers/"
#define OFFSETS_SEGMENT "/offsets/"

/* Longest metadata string the store takes: what a Kafka string can carry
 * back out in an OffsetFetch response. */
#define STORE_METADATA_MAX 32767

/* Room for the longest key: prefix, group, "/offsets/", topic, "/", an
 * int32 and the NUL. */
#define KEY_MAX (sizeof(CONSUMERS_PREFIX) + KS_GROUP_ID_MAX + sizeof(OFFSETS_SEGMENT) + KS_TOPIC_NAME_MAX + 16)

/* ------------------------------------------------------------------------ */
/* Names and keys                                                            */

/* Length of the well-formed UTF-8 sequence (2..4 bytes) starting at p, or 0. */
static int utf8_seq_len(const unsigned char *p, size_t left)
{
        unsigned char c = p[0];
        int n;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
                n = 2;
                cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
                n = 3;
                cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
                n = 4;
                cp = c & 0x07;
        } else {
                return 0;
        }
        if ((size_t)n > left)
                return 0;
        for (int i = 1; i < n; i++) {
                if ((p[i] & 0xc0) != 0x80)
                        return 0;
                cp = (cp << 6) | (p[i] & 0x3f);
        }
        /* Overlong forms, surrogates, beyond U+10FFFF, C1 controls. */
        if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff ||
            (cp >= 0x80 && cp <= 0x9f))
                return 0;
        return n;
}

const char *ks_offsets_group_invalid(ks_str_t group)
{
        if (group.len <= 0 || !group.ptr)
                return "group id is empty";
        if (group.len > KS_GROUP_ID_MAX)
                return "group id is longer than 249 bytes";
        const unsigned char *p = (const unsigned char *)group.ptr;
        size_t n = (size_t)group.len;
        for (size_t i = 0; i < n;) {
                unsigned char c = p[i];
                if (c == '/')
                        return "group id contains '/'";
                if (c < 0x20 || c == 0x7f)
                        return "group id contains a control character";
                if (c < 0x80) {
                        i++;
                        continue;
                }
                int l = utf8_seq_len(p + i, n - i);
                if (l == 0)
                        return "group id is not well-formed UTF-8";
                i += (size_t)l;
        }
        return NULL;
}

static bool group_ok(const char *group)
{
        if (!group)
                return false;
        size_t n = strlen(group);
        return n <= KS_GROUP_ID_MAX && !ks_offsets_group_invalid((ks_str_t){ group, (int32_t)n });
}

static bool topic_ok(ks_str_t topic)
{
        return topic.len > 0 && topic.ptr && !ks_topic_name_invalid(topic);
}

static bool topic_ok_c(const char *topic)
{
        if (!topic)
                return false;
        size_t n = strlen(topic);
        return n <= KS_TOPIC_NAME_MAX && topic_ok((ks_str_t){ topic, (int32_t)n });
}

/* Appends n bytes at buf[*at] (callers size buf with KEY_MAX; every part
 * is bounded by validation). */
static void put(char *buf, size_t *at, const char *s, size_t n)
{
        memcpy(buf + *at, s, n);
        *at += n;
}

/* Builds "/kafscale/consumers/{g}/offsets/", then "{t}/" if topic is not
 * null, then "{p}" if partition >= 0.  Returns the length (NUL-terminated). */
static int build_key(char buf[KEY_MAX], const char *group, ks_str_t topic, int32_t partition)
{
        size_t at = 0;
        put(buf, &at, CONSUMERS_PREFIX, sizeof(CONSUMERS_PREFIX) - 1);
        put(buf, &at, group, strlen(group));
        put(buf, &at, OFFSETS_SEGMENT, sizeof(OFFSETS_SEGMENT) - 1);
        if (topic.len > 0) {
                put(buf, &at, topic.ptr, (size_t)topic.len);
                put(buf, &at, "/", 1);
                if (partition >= 0) {
                        char digits[12];
                        size_t n = 0;
                        uint32_t v = (uint32_t)partition;
                        do {
                                digits[n++] = (char)('0' + v % 10);
                                v /= 10;
                        } while (v);
                        while (n)
                                buf[at++] = digits[--n];
                }
        }
        buf[at] = '\0';
        return (int)at;
}

/* "/kafscale/consumers/{g}/offsets/" */
static int group_prefix(char buf[KEY_MAX], const char *group)
{
        return build_key(buf, group, KS_STR_NULL, -1);
}

/* "/kafscale/consumers/{g}/offsets/{t}/" */
static int topic_prefix(char buf[KEY_MAX], const char *group, ks_str_t topic)
{
        return build_key(buf, group, topic, -1);
}

/* "/kafscale/consumers/{g}/offsets/{t}/{p}" */
static int offset_key(char buf[KEY_MAX], const char *group, ks_str_t topic, int32_t partition)
{
        return build_key(buf, group, topic, partition);
}

/* Canonical non-negative int32 decimal ("0", "17"; not "017", "+1"). */
static bool parse_partition(const char *s, size_t n, int32_t *out)
{
        if (n == 0 || n > 10 || (n > 1 && s[0] == '0'))
                return false;
        int64_t v = 0;
        for (size_t i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return false;
                v = v * 10 + (s[i] - '0');
        }
        if (v > INT32_MAX)
                return false;
        *out = (int32_t)v;
        return true;
}

/* ------------------------------------------------------------------------ */
/* Time                                                                      */

/* Days since 1970-01-01 of a proleptic Gregorian date. */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
        y -= m <= 2;
        int64_t era = (y >= 0 ? y : y - 399) / 400;
        int64_t yoe = y - era * 400;
        int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
        int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        return era * 146097 + doe - 719468;
}

static bool digits(const char *s, size_t len, size_t at, size_t n, int *out)
{
        if (at + n > len)
                return false;
        int v = 0;
        for (size_t i = at; i < at + n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return false;
                v = v * 10 + (s[i] - '0');
        }
        *out = v;
        return true;
}

int ks_offsets_parse_rfc3339(const char *s, size_t len, int64_t *ms)
{
        int y, mo, d, h, mi, sec;
        if (!s || !digits(s, len, 0, 4, &y) || len < 19 || s[4] != '-' || !digits(s, len, 5, 2, &mo) || s[7] != '-' ||
            !digits(s, len, 8, 2, &d) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
            !digits(s, len, 11, 2, &h) || s[13] != ':' || !digits(s, len, 14, 2, &mi) || s[16] != ':' ||
            !digits(s, len, 17, 2, &sec))
                return -1;
        static const int mdays[12] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
        bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || (mo == 2 && d == 29 && !leap) || h > 23 || mi > 59 ||
            sec > 60)
                return -1;
        size_t i = 19;
        int frac_ms = 0;
        if (i < len && s[i] == '.') {
                size_t start = ++i;
                int scale = 100;
                while (i < len && s[i] >= '0' && s[i] <= '9') {
                        frac_ms += (s[i] - '0') * scale;
                        scale /= 10;
                        i++;
                }
                if (i == start)
                        return -1;
        }
        int64_t off_min = 0;
        if (i < len && (s[i] == 'Z' || s[i] == 'z')) {
                i++;
        } else if (i < len && (s[i] == '+' || s[i] == '-')) {
                int oh, om;
                if (!digits(s, len, i + 1, 2, &oh) || i + 3 >= len || s[i + 3] != ':' ||
                    !digits(s, len, i + 4, 2, &om) || oh > 23 || om > 59)
                        return -1;
                off_min = (s[i] == '-' ? -1 : 1) * (int64_t)(oh * 60 + om);
                i += 6;
        } else {
                return -1;
        }
        if (i != len)
                return -1;
        int64_t secs = days_from_civil(y, mo, d) * 86400 + (int64_t)h * 3600 + (int64_t)mi * 60 + sec - off_min * 60;
        *ms = secs * 1000 + frac_ms;
        return 0;
}

/* ------------------------------------------------------------------------ */
/* Values                                                                    */

ks_err_t ks_offsets_value_encode(int64_t offset, int32_t leader_epoch, ks_str_t metadata, int64_t committed_at_ms,
                                 char **json, size_t *len)
{
        char ts[40];
        ks_time_rfc3339(committed_at_ms, ts, sizeof(ts));
        const char *md = metadata.len > 0 && metadata.ptr ? metadata.ptr : "";
        int mdlen = metadata.len > 0 && metadata.ptr ? (int)metadata.len : 0;

        *json = NULL;
        json_object *o = json_object_new_object();
        if (!o)
                return KS_ERR__NOMEM;
        json_object *fields[4] = {
                json_object_new_int64(offset),
                json_object_new_string_len(md, mdlen),
                json_object_new_string(ts),
                json_object_new_int(leader_epoch < 0 ? -1 : leader_epoch),
        };
        static const char *const names[4] = { "offset", "metadata", "committed_at", "leader_epoch" };
        ks_err_t err = 0;
        for (int i = 0; i < 4; i++) {
                if (err || !fields[i] || json_object_object_add(o, names[i], fields[i]) != 0) {
                        json_object_put(fields[i]); /* NULL-safe; ownership passes only on success */
                        err = KS_ERR__NOMEM;
                }
        }
        size_t l = 0;
        const char *s = err ? NULL
                            : json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
                                                                &l);
        if (!err && !s)
                err = KS_ERR__NOMEM;
        if (!err) {
                *json = malloc(l + 1);
                if (*json) {
                        memcpy(*json, s, l + 1);
                        *len = l;
                } else {
                        err = KS_ERR__NOMEM;
                }
        }
        json_object_put(o);
        return err;
}

ks_err_t ks_offsets_value_decode(const uint8_t *buf, size_t len, int64_t *offset, int32_t *leader_epoch,
                                 char **metadata, size_t *metadata_len, int64_t *committed_at_ms)
{
        if (metadata)
                *metadata = NULL;
        if (!buf || len == 0 || len > INT_MAX)
                return KS_ERR__CORRUPT;
        json_tokener *tok = json_tokener_new();
        if (!tok)
                return KS_ERR__NOMEM;
        json_object *o = json_tokener_parse_ex(tok, (const char *)buf, (int)len);
        ks_err_t err = 0;
        if (!o || json_tokener_get_error(tok) != json_tokener_success || !json_object_is_type(o, json_type_object))
                err = KS_ERR__CORRUPT;
        if (!err) {
                /* Only whitespace may follow the object. */
                for (size_t i = json_tokener_get_parse_end(tok); i < len; i++)
                        if (buf[i] != ' ' && buf[i] != '\t' && buf[i] != '\r' && buf[i] != '\n')
                                err = KS_ERR__CORRUPT;
        }
        json_object *v = NULL;
        if (!err && (!json_object_object_get_ex(o, "offset", &v) || !json_object_is_type(v, json_type_int)))
                err = KS_ERR__CORRUPT;
        if (!err && offset)
                *offset = json_object_get_int64(v);
        if (!err && leader_epoch) {
                *leader_epoch = -1;
                if (json_object_object_get_ex(o, "leader_epoch", &v) && json_object_is_type(v, json_type_int)) {
                        int64_t e = json_object_get_int64(v);
                        if (e >= 0 && e <= INT32_MAX)
                                *leader_epoch = (int32_t)e;
                }
        }
        if (!err && metadata) {
                const char *md = "";
                size_t mdlen = 0;
                if (json_object_object_get_ex(o, "metadata", &v) && json_object_is_type(v, json_type_string)) {
                        md = json_object_get_string(v);
                        mdlen = (size_t)json_object_get_string_len(v);
                }
                *metadata = malloc(mdlen + 1);
                if (!*metadata) {
                        err = KS_ERR__NOMEM;
                } else {
                        memcpy(*metadata, md, mdlen);
                        (*metadata)[mdlen] = '\0';
                        if (metadata_len)
                                *metadata_len = mdlen;
                }
        }
        if (!err && committed_at_ms) {
                *committed_at_ms = -1;
                int64_t ms;
                if (json_object_object_get_ex(o, "committed_at", &v) && json_object_is_type(v, json_type_string) &&
                    ks_offsets_parse_rfc3339(json_object_get_string(v), (size_t)json_object_get_string_len(v), &ms) ==
                            0)
                        *committed_at_ms = ms;
        }
        json_object_put(o);
        json_tokener_free(tok);
        return err;
}

/* ------------------------------------------------------------------------ */
/* Commit                                                                    */

static int cmp_commit(const ks_offset_commit_t *a, const ks_offset_commit_t *b)
{
        int32_t n = a->topic.len < b->topic.len ? a->topic.len : b->topic.len;
        int c = memcmp(a->topic.ptr, b->topic.ptr, (size_t)n);
        if (c)
                return c;
        if (a->topic.len != b->topic.len)
                return a->topic.len < b->topic.len ? -1 : 1;
        return a->partition < b->partition ? -1 : a->partition > b->partition;
}

typedef struct commit_ref {
        const ks_offset_commit_t *item;
        int index;
} commit_ref_t;

static int cmp_commit_ref(const void *pa, const void *pb)
{
        const commit_ref_t *a = pa, *b = pb;
        int c = cmp_commit(a->item, b->item);
        if (c)
                return c;
        return a->index < b->index ? -1 : a->index > b->index;
}

ks_err_t ks_offsets_commit(ks_kv_t *kv, const char *group, const ks_offset_commit_t *items, int n,
                           const ks_kv_cmp_t *fence)
{
        if (!group_ok(group) || n < 0 || (n > 0 && !items))
                return KS_ERR__INVALID_ARG;
        for (int i = 0; i < n; i++) {
                const ks_offset_commit_t *it = &items[i];
                if (!topic_ok(it->topic) || it->partition < 0 || it->metadata.len > STORE_METADATA_MAX ||
                    (it->metadata.len > 0 && !it->metadata.ptr))
                        return KS_ERR__INVALID_ARG;
        }
        if (n == 0)
                return 0;

        /* Same topic-partition more than once: the last one wins (a
         * transaction cannot put one key twice). */
        commit_ref_t *refs = malloc((size_t)n * sizeof(*refs));
        if (!refs)
                return KS_ERR__NOMEM;
        for (int i = 0; i < n; i++)
                refs[i] = (commit_ref_t){ &items[i], i };
        qsort(refs, (size_t)n, sizeof(*refs), cmp_commit_ref);
        int m = 0;
        for (int i = 0; i < n; i++) {
                if (i + 1 < n && cmp_commit(refs[i].item, refs[i + 1].item) == 0)
                        continue;
                refs[m++] = refs[i];
        }

        const int64_t now = ks_clock_wall_ms(ks_clock_system());
        ks_kv_op_t *ops = calloc((size_t)m, sizeof(*ops));
        char (*keys)[KEY_MAX] = calloc((size_t)m, sizeof(*keys));
        char **values = calloc((size_t)m, sizeof(*values));
        ks_err_t err = (!ops || !keys || !values) ? KS_ERR__NOMEM : 0;
        for (int i = 0; !err && i < m; i++) {
                const ks_offset_commit_t *it = refs[i].item;
                int kl = offset_key(keys[i], group, it->topic, it->partition);
                size_t vl = 0;
                err = ks_offsets_value_encode(it->offset, it->leader_epoch, it->metadata, now, &values[i], &vl);
                if (err)
                        break;
                ops[i] = (ks_kv_op_t){ .type = KS_KV_OP_PUT, .key = keys[i], .key_len = (size_t)kl,
                                       .value = values[i], .value_len = vl };
        }

        /* Transactions of at most KS_OFFSETS_TXN_MAX_OPS puts and about
         * KS_OFFSETS_TXN_MAX_BYTES, each atomic, in order. */
        int start = 0, chunks = 0;
        while (!err && start < m) {
                int end = start;
                size_t bytes = 0;
                while (end < m && end - start < KS_OFFSETS_TXN_MAX_OPS &&
                       (end == start || bytes + ops[end].key_len + ops[end].value_len <= KS_OFFSETS_TXN_MAX_BYTES)) {
                        bytes += ops[end].key_len + ops[end].value_len;
                        end++;
                }
                bool ok = false;
                err = ks_kv_txn(kv, fence, fence ? 1 : 0, &ops[start], (size_t)(end - start), NULL, 0, &ok, NULL);
                if (!err && !ok)
                        err = KS_ERR__CONFLICT; /* the fence did not hold (the only compare) */
                if (err)
                        ks_log_warn("offset_commit_failed",
                                    "group=\"%s\" items=%d written=%d err=%s", group, m, start, ks_err_name(err));
                start = end;
                chunks++;
        }
        if (!err)
                ks_log_debug("offsets_committed", "group=\"%s\" items=%d transactions=%d", group, m, chunks);

        if (values)
                for (int i = 0; i < m; i++)
                        free(values[i]);
        free(values);
        free(keys);
        free(ops);
        free(refs);
        return err;
}

/* ------------------------------------------------------------------------ */
/* Fetch                                                                     */

void ks_offset_list_free(ks_offset_list_t *list)
{
        if (!list)
                return;
        for (size_t i = 0; i < list->count; i++) {
                free(list->items[i].topic);
                free(list->items[i].metadata);
        }
        free(list->items);
        memset(list, 0, sizeof(*list));
}

static int cmp_entry(const void *pa, const void *pb)
{
        const ks_offset_entry_t *a = pa, *b = pb;
        int c = strcmp(a->topic, b->topic);
        if (c)
                return c;
        return a->partition < b->partition ? -1 : a->partition > b->partition;
}

const ks_offset_entry_t *ks_offset_list_find(const ks_offset_list_t *list, ks_str_t topic, int32_t partition)
{
        if (!list || topic.len < 0)
                return NULL;
        size_t lo = 0, hi = list->count;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                const ks_offset_entry_t *e = &list->items[mid];
                size_t el = strlen(e->topic);
                size_t n = el < (size_t)topic.len ? el : (size_t)topic.len;
                int c = n ? memcmp(e->topic, topic.ptr, n) : 0;
                if (!c && el != (size_t)topic.len)
                        c = el < (size_t)topic.len ? -1 : 1;
                if (!c)
                        c = e->partition < partition ? -1 : e->partition > partition;
                if (!c)
                        return e;
                if (c < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return NULL;
}

/* Fills *e from one stored pair whose key starts with the group prefix of
 * length plen.  Returns 0, 1 to skip the key (not an offset record), or -1
 * when memory ran out. */
static int entry_from_pair(const char *group, const ks_kv_pair_t *kv, size_t plen, ks_offset_entry_t *e)
{
        const char *rest = (const char *)kv->key + plen;
        size_t rlen = kv->key_len - plen;
        const char *slash = rlen ? memrchr(rest, '/', rlen) : NULL;
        int32_t partition;
        size_t tlen = slash ? (size_t)(slash - rest) : 0;
        if (!slash || tlen == 0 || tlen > KS_TOPIC_NAME_MAX || !topic_ok((ks_str_t){ rest, (int32_t)tlen }) ||
            !parse_partition(slash + 1, rlen - tlen - 1, &partition)) {
                ks_log_warn("offset_key_skipped", "group=\"%s\" key=\"%.*s\"", group, (int)kv->key_len,
                            (const char *)kv->key);
                return 1;
        }
        memset(e, 0, sizeof(*e));
        e->topic = malloc(tlen + 1);
        if (!e->topic)
                return -1;
        memcpy(e->topic, rest, tlen);
        e->topic[tlen] = '\0';
        e->partition = partition;
        ks_err_t err = ks_offsets_value_decode(kv->value, kv->value_len, &e->offset, &e->leader_epoch, &e->metadata,
                                               &e->metadata_len, &e->committed_at_ms);
        if (err == KS_ERR__NOMEM) {
                free(e->topic);
                e->topic = NULL;
                return -1;
        }
        if (err) {
                ks_log_error("offset_record_corrupt", "group=\"%s\" topic=%s partition=%d value_bytes=%zu", group,
                             e->topic, partition, kv->value_len);
                free(e->metadata);
                e->metadata = calloc(1, 1);
                if (!e->metadata) {
                        free(e->topic);
                        e->topic = NULL;
                        return -1;
                }
                e->metadata_len = 0;
                e->offset = -1;
                e->leader_epoch = -1;
                e->committed_at_ms = -1;
                e->err = KS_ERR__CORRUPT;
        }
        return 0;
}

ks_err_t ks_offsets_fetch(ks_kv_t *kv, const char *group, const char *topic, ks_offset_list_t *out)
{
        memset(out, 0, sizeof(*out));
        if (!group_ok(group) || (topic && !topic_ok_c(topic)))
                return KS_ERR__INVALID_ARG;
        char prefix[KEY_MAX];
        int glen = group_prefix(prefix, group);
        int plen = topic ? topic_prefix(prefix, group, ks_str_c(topic)) : glen;
        uint8_t end[KEY_MAX];
        size_t elen = ks_kv_prefix_end(prefix, (size_t)plen, end);

        ks_kv_result_t res;
        ks_err_t err = ks_kv_range(kv, prefix, (size_t)plen, end, elen, &res);
        if (err)
                return err;
        out->revision = res.revision;
        out->items = calloc(res.count ? res.count : 1, sizeof(*out->items));
        if (!out->items) {
                ks_kv_result_free(&res);
                return KS_ERR__NOMEM;
        }
        for (size_t i = 0; i < res.count; i++) {
                int r = entry_from_pair(group, &res.kvs[i], (size_t)glen, &out->items[out->count]);
                if (r < 0) {
                        err = KS_ERR__NOMEM;
                        break;
                }
                if (r == 0)
                        out->count++;
        }
        ks_kv_result_free(&res);
        if (err) {
                ks_offset_list_free(out);
                return err;
        }
        if (out->count > 1)
                qsort(out->items, out->count, sizeof(*out->items), cmp_entry);
        return 0;
}

/* ------------------------------------------------------------------------ */
/* Delete                                                                    */

/* Deletes [key, range_end) (one key when range_end is NULL), in one
 * transaction with `fence` when given.  *deleted (may be NULL) is the count
 * removed, -1 when unknown (a fenced delete does not report it). */
static ks_err_t fenced_delete(ks_kv_t *kv, const char *key, size_t key_len, const uint8_t *range_end,
                              size_t range_end_len, const ks_kv_cmp_t *fence, int64_t *deleted)
{
        if (!fence)
                return ks_kv_delete_range(kv, key, key_len, range_end, range_end_len, deleted, NULL);
        if (deleted)
                *deleted = -1;
        const ks_kv_op_t op = { .type = KS_KV_OP_DELETE, .key = key, .key_len = key_len, .range_end = range_end,
                                .range_end_len = range_end_len };
        bool ok = false;
        ks_err_t err = ks_kv_txn(kv, fence, 1, &op, 1, NULL, 0, &ok, NULL);
        return err ? err : ok ? 0 : KS_ERR__CONFLICT;
}

ks_err_t ks_offsets_delete_group(ks_kv_t *kv, const char *group, const ks_kv_cmp_t *fence)
{
        if (!group_ok(group))
                return KS_ERR__INVALID_ARG;
        char prefix[KEY_MAX];
        int plen = group_prefix(prefix, group);
        uint8_t end[KEY_MAX];
        size_t elen = ks_kv_prefix_end(prefix, (size_t)plen, end);
        int64_t deleted = 0;
        ks_err_t err = fenced_delete(kv, prefix, (size_t)plen, end, elen, fence, &deleted);
        if (!err && deleted >= 0)
                ks_log_info("group_offsets_deleted", "group=\"%s\" offsets=%lld", group, (long long)deleted);
        else if (!err)
                ks_log_info("group_offsets_deleted", "group=\"%s\" fenced=true", group);
        return err;
}

ks_err_t ks_offsets_delete(ks_kv_t *kv, const char *group, const char *topic, int32_t partition,
                           const ks_kv_cmp_t *fence)
{
        if (!group_ok(group) || !topic_ok_c(topic) || partition < 0)
                return KS_ERR__INVALID_ARG;
        char key[KEY_MAX];
        int kl = offset_key(key, group, ks_str_c(topic), partition);
        return fenced_delete(kv, key, (size_t)kl, NULL, 0, fence, NULL);
}

ks_err_t ks_offsets_delete_topic(ks_kv_t *kv, const char *topic)
{
        if (!topic_ok_c(topic))
                return KS_ERR__INVALID_ARG;
        const size_t cplen = sizeof(CONSUMERS_PREFIX) - 1, slen = sizeof(OFFSETS_SEGMENT) - 1;
        const size_t tlen = strlen(topic);
        uint8_t end[sizeof(CONSUMERS_PREFIX)];
        size_t elen = ks_kv_prefix_end(CONSUMERS_PREFIX, cplen, end);
        ks_kv_result_t res;
        ks_err_t err = ks_kv_range(kv, CONSUMERS_PREFIX, cplen, end, elen, &res);
        if (err)
                return err;

        /* Keys are sorted, so one group's keys are contiguous: collect each
         * group with an offset of this topic once. */
        char (*prefixes)[KEY_MAX] = calloc(res.count ? res.count : 1, sizeof(*prefixes));
        uint8_t (*ends)[KEY_MAX] = calloc(res.count ? res.count : 1, sizeof(*ends));
        ks_kv_op_t *ops = calloc(res.count ? res.count : 1, sizeof(*ops));
        size_t nops = 0;
        if (!prefixes || !ends || !ops)
                err = KS_ERR__NOMEM;
        for (size_t i = 0; !err && i < res.count; i++) {
                const char *k = (const char *)res.kvs[i].key + cplen;
                size_t kl = res.kvs[i].key_len - cplen;
                const char *gs = memchr(k, '/', kl);
                if (!gs)
                        continue;
                size_t gl = (size_t)(gs - k);
                size_t rest = kl - gl;
                /* "{g}/offsets/{topic}/..." */
                if (gl == 0 || gl > KS_GROUP_ID_MAX || rest < slen + tlen + 1 || memcmp(gs, OFFSETS_SEGMENT, slen) ||
                    memcmp(gs + slen, topic, tlen) || gs[slen + tlen] != '/')
                        continue;
                char group[KS_GROUP_ID_MAX + 1];
                memcpy(group, k, gl);
                group[gl] = '\0';
                if (!group_ok(group))
                        continue;
                int pl = topic_prefix(prefixes[nops], group, ks_str_c(topic));
                if (nops > 0 && ops[nops - 1].key_len == (size_t)pl && !memcmp(prefixes[nops - 1], prefixes[nops], (size_t)pl))
                        continue;
                size_t el = ks_kv_prefix_end(prefixes[nops], (size_t)pl, ends[nops]);
                ops[nops] = (ks_kv_op_t){ .type = KS_KV_OP_DELETE, .key = prefixes[nops], .key_len = (size_t)pl,
                                          .range_end = ends[nops], .range_end_len = el };
                nops++;
        }
        ks_kv_result_free(&res);
        for (size_t start = 0; !err && start < nops; start += KS_OFFSETS_TXN_MAX_OPS) {
                size_t n = nops - start < KS_OFFSETS_TXN_MAX_OPS ? nops - start : KS_OFFSETS_TXN_MAX_OPS;
                bool ok;
                err = ks_kv_txn(kv, NULL, 0, &ops[start], n, NULL, 0, &ok, NULL);
        }
        if (!err && nops)
                ks_log_info("topic_offsets_deleted", "topic=%s groups=%zu", topic, nops);
        else if (err)
                ks_log_warn("topic_offsets_delete_failed", "topic=%s err=%s", topic, ks_err_name(err));
        free(ops);
        free(ends);
        free(prefixes);
        return err;
}

bool ks_offsets_group_has_any(ks_kv_t *kv, const char *group)
{
        if (!group_ok(group))
                return false;
        char prefix[KEY_MAX];
        int plen = group_prefix(prefix, group);
        uint8_t end[KEY_MAX];
        size_t elen = ks_kv_prefix_end(prefix, (size_t)plen, end);
        ks_kv_result_t res;
        ks_err_t err = ks_kv_range(kv, prefix, (size_t)plen, end, elen, &res);
        if (err) {
                ks_log_warn("group_offsets_read_failed", "group=\"%s\" err=%s assume=has_offsets", group,
                            ks_err_name(err));
                return true;
        }
        bool any = res.count > 0;
        ks_kv_result_free(&res);
        return any;
}
