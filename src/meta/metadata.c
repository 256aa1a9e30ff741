/*
 * metadata.c — key layout, record encodings and the topic registry.
 *
 * Locking: `lock` (rwlock) protects `topics`, `ntopics` and `tombstones`.
 * Readers copy what they need out under the read lock.  Writers are this
 * broker's own create/delete (worker threads) and the watch callback (the
 * store's watch thread).  Every change carries the store revision that made
 * it; a change older than what the registry already holds for that name is
 * ignored, so the direct update after our own write and the later watch
 * event for it can arrive in any order.
 */
#include "meta/metadata.h"

#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <json-c/json.h>
#include <openssl/sha.h>

#include "kafscale_metadata.pb-c.h"
#include "util/clock.h"
#include "util/log.h"

#define TOPICS_PREFIX "/kafscale/topics/"
#define CLUSTER_ID_KEY "/kafscale/cluster/id"
#define TXN_MAX_OPS KS_KV_TXN_MAX_OPS

typedef struct tombstone {
        char name[KS_TOPIC_NAME_MAX + 1];
        int64_t rev;
} tombstone_t;

struct ks_meta {
        ks_kv_t *kv;
        char cluster_id[KS_CLUSTER_ID_LEN + 1];

        pthread_rwlock_t lock;
        ks_topic_t *topics; /* sorted by name */
        int ntopics, cap;
        tombstone_t *tombstones;
        int ntombstones, tcap;

        ks_kv_watch_t *watch;
        /* Told about changes the watch brings (lock protects the pair). */
        ks_meta_topic_listener_fn *listener;
        void *listener_opaque;
};

/* ------------------------------------------------------------------------ */
/* Keys                                                                      */

static int topic_key(char *buf, size_t len, const char *topic, const char *suffix)
{
        return snprintf(buf, len, TOPICS_PREFIX "%s/%s", topic, suffix);
}

/* "/kafscale/topics/{t}/config" -> t, or NULL if the key is another record. */
static const char *config_key_topic(const uint8_t *key, size_t len, size_t *tlen)
{
        const size_t plen = sizeof(TOPICS_PREFIX) - 1;
        const size_t slen = sizeof("/config") - 1;
        if (len <= plen + slen || memcmp(key, TOPICS_PREFIX, plen) != 0 ||
            memcmp(key + len - slen, "/config", slen) != 0)
                return NULL;
        const char *t = (const char *)key + plen;
        size_t n = len - plen - slen;
        if (n > KS_TOPIC_NAME_MAX || memchr(t, '/', n))
                return NULL;
        *tlen = n;
        return t;
}

/* ------------------------------------------------------------------------ */
/* Validation and ids                                                        */

const char *ks_topic_name_invalid(ks_str_t name)
{
        if (name.len <= 0 || !name.ptr)
                return "topic name is empty";
        if (name.len > KS_TOPIC_NAME_MAX)
                return "topic name is longer than 249 characters";
        if ((name.len == 1 && name.ptr[0] == '.') || (name.len == 2 && name.ptr[0] == '.' && name.ptr[1] == '.'))
                return "topic name cannot be \".\" or \"..\"";
        for (int32_t i = 0; i < name.len; i++) {
                char ch = name.ptr[i];
                if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                      ch == '_' || ch == '-'))
                        return "topic name contains a character other than ASCII alphanumerics, '.', '_' and '-'";
        }
        return NULL;
}

static void random_uuid(ks_uuid_t *u)
{
        do {
                size_t got = 0;
                while (got < sizeof(u->b)) {
                        ssize_t n = getrandom(u->b + got, sizeof(u->b) - got, 0);
                        if (n > 0)
                                got += (size_t)n;
                }
                /* RFC 4122 version 4, as Kafka's Uuid.randomUuid(). */
                u->b[6] = (uint8_t)((u->b[6] & 0x0f) | 0x40);
                u->b[8] = (uint8_t)((u->b[8] & 0x3f) | 0x80);
                /* Kafka reserves the all-zero id and id 1 (metadata topic); a
                 * version-4 UUID can be neither, but stay explicit. */
        } while (u->b[0] == 0 && u->b[1] == 0 && u->b[2] == 0 && u->b[3] == 0);
}

static void base64url_16(const uint8_t in[16], char out[KS_CLUSTER_ID_LEN + 1])
{
        static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        int o = 0;
        uint32_t acc = 0;
        int bits = 0;
        for (int i = 0; i < 16; i++) {
                acc = (acc << 8) | in[i];
                bits += 8;
                while (bits >= 6) {
                        out[o++] = tbl[(acc >> (bits - 6)) & 63];
                        bits -= 6;
                }
        }
        if (bits > 0)
                out[o++] = tbl[(acc << (6 - bits)) & 63];
        out[o] = '\0';
}

static int64_t parse_rfc3339_ms(const char *s)
{
        struct tm tm = { 0 };
        int ms = 0;
        if (!s || sscanf(s, "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
                         &tm.tm_sec) != 6)
                return 0;
        const char *dot = strchr(s, '.');
        if (dot)
                sscanf(dot + 1, "%3d", &ms);
        tm.tm_year -= 1900;
        tm.tm_mon -= 1;
        return (int64_t)timegm(&tm) * 1000 + ms;
}

/* ------------------------------------------------------------------------ */
/* Encodings                                                                 */

static const struct {
        const char *key;
        uint32_t bit;
} explicit_keys[] = {
        { "retention.ms", KS_TOPIC_CFG_RETENTION_MS },
        { "retention.bytes", KS_TOPIC_CFG_RETENTION_BYTES },
        { "segment.bytes", KS_TOPIC_CFG_SEGMENT_BYTES },
};

ks_err_t ks_meta_topic_encode(const ks_topic_t *t, uint8_t **buf, size_t *len)
{
        Kafscale__Metadata__TopicConfig tc = KAFSCALE__METADATA__TOPIC_CONFIG__INIT;
        char created[40];
        ks_time_rfc3339(t->created_at_ms, created, sizeof(created));
        tc.name = (char *)t->name;
        tc.partitions = t->partitions;
        tc.replication_factor = t->replication_factor;
        tc.retention_ms = t->retention_ms;
        tc.retention_bytes = t->retention_bytes;
        tc.segment_bytes = t->segment_bytes;
        tc.created_at = created;
        tc.topic_id.data = (uint8_t *)t->id.b;
        tc.topic_id.len = sizeof(t->id.b);

        /* The operator's explicit overrides, as Kafka keeps them: strings. */
        Kafscale__Metadata__TopicConfig__ConfigEntry entries[3], *eptrs[3];
        char vals[3][24];
        size_t n = 0;
        const int64_t values[3] = { t->retention_ms, t->retention_bytes, t->segment_bytes };
        for (size_t i = 0; i < 3; i++) {
                if (!(t->explicit_configs & explicit_keys[i].bit))
                        continue;
                kafscale__metadata__topic_config__config_entry__init(&entries[n]);
                snprintf(vals[n], sizeof(vals[n]), "%lld", (long long)values[i]);
                entries[n].key = (char *)explicit_keys[i].key;
                entries[n].value = vals[n];
                eptrs[n] = &entries[n];
                n++;
        }
        tc.n_config = n;
        tc.config = eptrs;

        *len = kafscale__metadata__topic_config__get_packed_size(&tc);
        *buf = malloc(*len ? *len : 1);
        if (!*buf)
                return KS_ERR__NOMEM;
        kafscale__metadata__topic_config__pack(&tc, *buf);
        return 0;
}

ks_err_t ks_meta_topic_decode(const uint8_t *buf, size_t len, ks_topic_t *t)
{
        Kafscale__Metadata__TopicConfig *tc = kafscale__metadata__topic_config__unpack(NULL, len, buf);
        if (!tc)
                return KS_ERR__CORRUPT;
        ks_err_t err = 0;
        memset(t, 0, sizeof(*t));
        size_t nl = tc->name ? strlen(tc->name) : 0;
        if (nl == 0 || ks_topic_name_invalid((ks_str_t){ tc->name, (int32_t)nl }) || tc->partitions < 1) {
                err = KS_ERR__CORRUPT;
                goto out;
        }
        memcpy(t->name, tc->name, nl + 1);
        if (tc->topic_id.len == sizeof(t->id.b))
                memcpy(t->id.b, tc->topic_id.data, sizeof(t->id.b));
        t->partitions = tc->partitions;
        t->replication_factor = tc->replication_factor > 0 ? tc->replication_factor : 1;
        /* proto3 cannot tell 0 from absent: a record written by another tool
         * that leaves these out gets the defaults, not "keep nothing".  A 0
         * an operator asked for is in the config map, which wins. */
        t->retention_ms = tc->retention_ms != 0 ? tc->retention_ms : KS_DEFAULT_RETENTION_MS;
        t->retention_bytes = tc->retention_bytes != 0 ? tc->retention_bytes : KS_DEFAULT_RETENTION_BYTES;
        t->segment_bytes = tc->segment_bytes > 0 ? tc->segment_bytes : KS_DEFAULT_SEGMENT_BYTES;
        t->created_at_ms = parse_rfc3339_ms(tc->created_at);
        int64_t *const fields[3] = { &t->retention_ms, &t->retention_bytes, &t->segment_bytes };
        for (size_t i = 0; i < tc->n_config; i++) {
                for (size_t k = 0; k < 3; k++) {
                        const char *v = tc->config[i]->value;
                        if (!tc->config[i]->key || strcmp(tc->config[i]->key, explicit_keys[k].key))
                                continue;
                        char *end;
                        long long x = v ? strtoll(v, &end, 10) : 0;
                        if (!v || end == v || *end || x < (k == 2 ? 1 : -1)) {
                                err = KS_ERR__CORRUPT;
                                goto out;
                        }
                        *fields[k] = x;
                        t->explicit_configs |= explicit_keys[k].bit;
                }
        }
out:
        kafscale__metadata__topic_config__free_unpacked(tc, NULL);
        return err;
}

static ks_err_t partition_state_encode(const char *topic, int32_t partition, uint8_t **buf, size_t *len)
{
        Kafscale__Metadata__PartitionState ps = KAFSCALE__METADATA__PARTITION_STATE__INIT;
        Kafscale__Metadata__EpochEntry e0 = KAFSCALE__METADATA__EPOCH_ENTRY__INIT;
        Kafscale__Metadata__EpochEntry *eptr = &e0;
        ps.topic = (char *)topic;
        ps.partition = partition;
        ps.leader_broker = (char *)"";
        ps.active_segment = (char *)"";
        ps.n_epoch_history = 1;
        ps.epoch_history = &eptr;
        *len = kafscale__metadata__partition_state__get_packed_size(&ps);
        *buf = malloc(*len ? *len : 1);
        if (!*buf)
                return KS_ERR__NOMEM;
        kafscale__metadata__partition_state__pack(&ps, *buf);
        return 0;
}

/* Fills the puts that create partitions [from, from + n) of `topic`: a
 * PartitionState and a next offset of 0 each (ops[2i], ops[2i+1]), keys in
 * keys[2i..], encoded states in bufs[i] (the caller frees them). */
static ks_err_t new_partition_ops(const char *topic, int32_t from, int32_t n, char (*keys)[300], uint8_t **bufs,
                                  ks_kv_op_t *ops)
{
        for (int32_t i = 0; i < n; i++) {
                int32_t p = from + i;
                char suffix[64];
                size_t plen;
                snprintf(suffix, sizeof(suffix), "partitions/%d", p);
                int kl = topic_key(keys[2 * i], sizeof(keys[0]), topic, suffix);
                ks_err_t err = partition_state_encode(topic, p, &bufs[i], &plen);
                if (err)
                        return err;
                ops[2 * i] = (ks_kv_op_t){ .type = KS_KV_OP_PUT, .key = keys[2 * i], .key_len = (size_t)kl,
                                           .value = bufs[i], .value_len = plen };
                snprintf(suffix, sizeof(suffix), "partitions/%d/next_offset", p);
                kl = topic_key(keys[2 * i + 1], sizeof(keys[0]), topic, suffix);
                ops[2 * i + 1] = (ks_kv_op_t){ .type = KS_KV_OP_PUT, .key = keys[2 * i + 1], .key_len = (size_t)kl,
                                               .value = "0", .value_len = 1 };
        }
        return 0;
}

/* Writes the records of partitions [from, from + n) of `topic` and then
 * `cfg_op` (the topic's config record), every transaction guarded by `cmp`.
 * etcd limits a transaction to TXN_MAX_OPS operations, so a large topic
 * takes several; the config record goes in the last one, so the topic (or
 * its new partition count) becomes visible only with all its partitions in
 * place.  If an earlier transaction applied and a later one did not, the
 * records written belong to partitions no config counts yet; the next
 * create or grow overwrites them.  *ok is false if `cmp` failed. */
static ks_err_t write_partitions_then_config(ks_meta_t *m, const ks_kv_cmp_t *cmp, const ks_kv_op_t *cfg_op,
                                             const char *topic, int32_t from, int32_t n, bool *ok, int64_t *rev)
{
        size_t nops = 2 * (size_t)n;
        ks_kv_op_t *ops = calloc(nops + 1, sizeof(*ops));
        char (*keys)[300] = calloc(nops + 1, sizeof(*keys));
        uint8_t **bufs = calloc((size_t)n + 1, sizeof(*bufs));
        ks_err_t err = (!ops || !keys || !bufs) ? KS_ERR__NOMEM : 0;
        if (!err)
                err = new_partition_ops(topic, from, n, keys, bufs, ops);
        *ok = false;
        size_t start = 0;
        while (!err) {
                size_t left = nops - start;
                bool last = left < TXN_MAX_OPS;
                size_t take = last ? left : (TXN_MAX_OPS & ~(size_t)1);
                if (last)
                        ops[start + take++] = *cfg_op;
                err = ks_kv_txn(m->kv, cmp, 1, ops + start, take, NULL, 0, ok, rev);
                if (err || !*ok || last)
                        break;
                start += take;
        }
        if (bufs)
                for (int32_t i = 0; i < n; i++)
                        free(bufs[i]);
        free(bufs);
        free(keys);
        free(ops);
        return err;
}

/* ------------------------------------------------------------------------ */
/* Registry (caller holds the write lock)                                    */

static int topic_find_locked(const ks_meta_t *m, const char *name, size_t nlen, bool *found)
{
        int lo = 0, hi = m->ntopics;
        while (lo < hi) {
                int mid = (lo + hi) / 2;
                const char *mn = m->topics[mid].name;
                size_t ml = strlen(mn);
                int c = memcmp(mn, name, ml < nlen ? ml : nlen);
                if (c == 0)
                        c = ml < nlen ? -1 : (ml > nlen ? 1 : 0);
                if (c == 0) {
                        *found = true;
                        return mid;
                }
                if (c < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        *found = false;
        return lo;
}

static int64_t tombstone_rev_locked(const ks_meta_t *m, const char *name)
{
        for (int i = 0; i < m->ntombstones; i++)
                if (!strcmp(m->tombstones[i].name, name))
                        return m->tombstones[i].rev;
        return 0;
}

static void tombstone_set_locked(ks_meta_t *m, const char *name, int64_t rev)
{
        for (int i = 0; i < m->ntombstones; i++)
                if (!strcmp(m->tombstones[i].name, name)) {
                        if (rev > m->tombstones[i].rev)
                                m->tombstones[i].rev = rev;
                        return;
                }
        if (m->ntombstones == m->tcap) {
                int cap = m->tcap ? m->tcap * 2 : 16;
                tombstone_t *nt = realloc(m->tombstones, (size_t)cap * sizeof(*nt));
                if (!nt)
                        return; /* only weakens stale-event filtering */
                m->tombstones = nt;
                m->tcap = cap;
        }
        snprintf(m->tombstones[m->ntombstones].name, sizeof(m->tombstones[0].name), "%s", name);
        m->tombstones[m->ntombstones].rev = rev;
        m->ntombstones++;
}

/* Applies "topic t exists as of revision t->mod_rev". */
static void registry_put_locked(ks_meta_t *m, const ks_topic_t *t)
{
        if (t->mod_rev <= tombstone_rev_locked(m, t->name))
                return;
        bool found;
        int i = topic_find_locked(m, t->name, strlen(t->name), &found);
        if (found) {
                if (t->mod_rev > m->topics[i].mod_rev)
                        m->topics[i] = *t;
                return;
        }
        if (m->ntopics == m->cap) {
                int cap = m->cap ? m->cap * 2 : 64;
                ks_topic_t *nt = realloc(m->topics, (size_t)cap * sizeof(*nt));
                if (!nt) {
                        ks_log_error("topic_registry_oom", "topic=%s", t->name);
                        return;
                }
                m->topics = nt;
                m->cap = cap;
        }
        memmove(&m->topics[i + 1], &m->topics[i], (size_t)(m->ntopics - i) * sizeof(*m->topics));
        m->topics[i] = *t;
        m->ntopics++;
}

/* Applies "topic `name` was deleted at revision rev". */
static void registry_delete_locked(ks_meta_t *m, const char *name, size_t nlen, int64_t rev)
{
        char buf[KS_TOPIC_NAME_MAX + 1];
        memcpy(buf, name, nlen);
        buf[nlen] = '\0';
        bool found;
        int i = topic_find_locked(m, buf, nlen, &found);
        if (found && m->topics[i].mod_rev < rev) {
                memmove(&m->topics[i], &m->topics[i + 1], (size_t)(m->ntopics - i - 1) * sizeof(*m->topics));
                m->ntopics--;
        }
        tombstone_set_locked(m, buf, rev);
}

/* A topic id for a record that has none (written by a tool that does not
 * know Kafscale's topic_id field): derived from the name and the record's
 * creation revision, so every broker derives the same one and a re-created
 * topic gets another. */
static void derive_topic_id(const char *name, int64_t create_rev, ks_uuid_t *id)
{
        char seed[KS_TOPIC_NAME_MAX + 64];
        int n = snprintf(seed, sizeof(seed), "kafscale-topic-id/%s/%lld", name, (long long)create_rev);
        uint8_t h[SHA256_DIGEST_LENGTH];
        SHA256((const uint8_t *)seed, (size_t)n, h);
        memcpy(id->b, h, sizeof(id->b));
        id->b[6] = (uint8_t)((id->b[6] & 0x0f) | 0x80); /* RFC 9562 version 8: custom */
        id->b[8] = (uint8_t)((id->b[8] & 0x3f) | 0x80);
}

/* Decodes the config record `kv` of the topic its key names: the record
 * must name the same topic; a missing topic id is derived; mod_rev set. */
static ks_err_t decode_config_pair(const ks_kv_pair_t *kv, ks_topic_t *t)
{
        size_t tlen;
        const char *kt = config_key_topic(kv->key, kv->key_len, &tlen);
        if (!kt)
                return KS_ERR__INVALID_ARG;
        if (ks_meta_topic_decode(kv->value, kv->value_len, t) != 0 || strlen(t->name) != tlen ||
            memcmp(t->name, kt, tlen) != 0)
                return KS_ERR__CORRUPT;
        static const ks_uuid_t zero;
        if (ks_uuid_eq(&t->id, &zero))
                derive_topic_id(t->name, kv->create_rev, &t->id);
        t->mod_rev = kv->mod_rev;
        return 0;
}

static void registry_apply_pair(ks_meta_t *m, const ks_kv_pair_t *kv)
{
        ks_topic_t t;
        ks_err_t err = decode_config_pair(kv, &t);
        if (err == KS_ERR__INVALID_ARG)
                return; /* another record under the topic */
        if (err) {
                ks_log_warn("topic_record_corrupt", "key=\"%.*s\" action=ignored", (int)kv->key_len,
                            (const char *)kv->key);
                return;
        }
        registry_put_locked(m, &t);
}

static ks_err_t registry_load(ks_meta_t *m, int64_t *revision)
{
        uint8_t end[sizeof(TOPICS_PREFIX)];
        size_t elen = ks_kv_prefix_end(TOPICS_PREFIX, sizeof(TOPICS_PREFIX) - 1, end);
        ks_kv_result_t res;
        ks_err_t err = ks_kv_range(m->kv, TOPICS_PREFIX, sizeof(TOPICS_PREFIX) - 1, end, elen, &res);
        if (err)
                return err;
        pthread_rwlock_wrlock(&m->lock);
        /* Drop topics that are gone as of this read. */
        for (int i = m->ntopics - 1; i >= 0; i--) {
                bool present = false;
                char key[300];
                int kl = topic_key(key, sizeof(key), m->topics[i].name, "config");
                for (size_t k = 0; k < res.count && !present; k++)
                        present = res.kvs[k].key_len == (size_t)kl && !memcmp(res.kvs[k].key, key, (size_t)kl);
                if (!present && m->topics[i].mod_rev <= res.revision)
                        registry_delete_locked(m, m->topics[i].name, strlen(m->topics[i].name), res.revision);
        }
        for (size_t k = 0; k < res.count; k++)
                registry_apply_pair(m, &res.kvs[k]);
        pthread_rwlock_unlock(&m->lock);
        *revision = res.revision;
        ks_kv_result_free(&res);
        return 0;
}

/* Tells the listener (if any) that `topic` (NULL: possibly every topic)
 * may have changed.  Watch thread.  The read lock is held across the call
 * so that once ks_meta_set_topic_listener() returned, the old listener is
 * not running and will not run. */
static void notify_listener(ks_meta_t *m, const char *topic)
{
        pthread_rwlock_rdlock(&m->lock);
        if (m->listener)
                m->listener(m->listener_opaque, topic);
        pthread_rwlock_unlock(&m->lock);
}

static void topics_watch_cb(void *opaque, const ks_kv_event_t *evs, size_t n)
{
        ks_meta_t *m = opaque;
        for (size_t i = 0; i < n; i++) {
                const ks_kv_event_t *ev = &evs[i];
                if (ev->type == KS_KV_EV_COMPACTED) {
                        int64_t rev;
                        ks_log_warn("topic_watch_compacted", "revision=%lld action=reload", (long long)ev->revision);
                        if (registry_load(m, &rev) != 0)
                                ks_log_error("topic_reload_failed", "revision=%lld", (long long)ev->revision);
                        notify_listener(m, NULL);
                        continue;
                }
                size_t tlen;
                const char *t = config_key_topic(ev->kv.key, ev->kv.key_len, &tlen);
                if (!t || tlen > KS_TOPIC_NAME_MAX)
                        continue;
                char name[KS_TOPIC_NAME_MAX + 1];
                memcpy(name, t, tlen);
                name[tlen] = '\0';
                pthread_rwlock_wrlock(&m->lock);
                if (ev->type == KS_KV_EV_PUT)
                        registry_apply_pair(m, &ev->kv);
                else
                        registry_delete_locked(m, t, tlen, ev->revision);
                pthread_rwlock_unlock(&m->lock);
                notify_listener(m, name);
        }
}

void ks_meta_set_topic_listener(ks_meta_t *m, ks_meta_topic_listener_fn *fn, void *opaque)
{
        pthread_rwlock_wrlock(&m->lock);
        m->listener = fn;
        m->listener_opaque = opaque;
        pthread_rwlock_unlock(&m->lock);
}

/* ------------------------------------------------------------------------ */
/* Open / close                                                              */

static ks_err_t ensure_cluster_id(ks_meta_t *m)
{
        ks_uuid_t u;
        random_uuid(&u);
        char id[KS_CLUSTER_ID_LEN + 1];
        base64url_16(u.b, id);
        const ks_kv_cmp_t cmp = { .key = CLUSTER_ID_KEY, .key_len = sizeof(CLUSTER_ID_KEY) - 1,
                                  .target = KS_KV_CMP_VERSION, .op = KS_KV_EQUAL, .number = 0 };
        const ks_kv_op_t put = { .type = KS_KV_OP_PUT, .key = CLUSTER_ID_KEY, .key_len = sizeof(CLUSTER_ID_KEY) - 1,
                                 .value = id, .value_len = KS_CLUSTER_ID_LEN };
        bool ok;
        ks_err_t err = ks_kv_txn(m->kv, &cmp, 1, &put, 1, NULL, 0, &ok, NULL);
        if (err)
                return err;
        ks_kv_result_t res;
        err = ks_kv_range(m->kv, CLUSTER_ID_KEY, sizeof(CLUSTER_ID_KEY) - 1, NULL, 0, &res);
        if (err)
                return err;
        if (res.count != 1 || res.kvs[0].value_len == 0 || res.kvs[0].value_len > KS_CLUSTER_ID_LEN) {
                ks_kv_result_free(&res);
                return KS_ERR__CORRUPT;
        }
        memcpy(m->cluster_id, res.kvs[0].value, res.kvs[0].value_len);
        m->cluster_id[res.kvs[0].value_len] = '\0';
        ks_kv_result_free(&res);
        return 0;
}

ks_err_t ks_meta_open(ks_kv_t *kv, ks_meta_t **out)
{
        ks_meta_t *m = calloc(1, sizeof(*m));
        if (!m)
                return KS_ERR__NOMEM;
        m->kv = kv;
        pthread_rwlock_init(&m->lock, NULL);
        ks_err_t err = ensure_cluster_id(m);
        int64_t rev = 0;
        if (!err)
                err = registry_load(m, &rev);
        if (!err) {
                uint8_t end[sizeof(TOPICS_PREFIX)];
                size_t elen = ks_kv_prefix_end(TOPICS_PREFIX, sizeof(TOPICS_PREFIX) - 1, end);
                err = ks_kv_watch(kv, TOPICS_PREFIX, sizeof(TOPICS_PREFIX) - 1, end, elen, rev + 1, topics_watch_cb,
                                  m, &m->watch);
        }
        if (err) {
                ks_meta_close(m);
                return err;
        }
        *out = m;
        return 0;
}

void ks_meta_close(ks_meta_t *m)
{
        if (!m)
                return;
        if (m->watch)
                ks_kv_watch_cancel(m->kv, m->watch);
        pthread_rwlock_destroy(&m->lock);
        free(m->topics);
        free(m->tombstones);
        free(m);
}

const char *ks_meta_cluster_id(const ks_meta_t *m)
{
        return m->cluster_id;
}

/* ------------------------------------------------------------------------ */
/* Topic operations                                                          */

ks_err_t ks_meta_topic_create(ks_meta_t *m, ks_topic_t *t)
{
        random_uuid(&t->id);
        t->created_at_ms = ks_clock_wall_ms(ks_clock_system());

        char cfg_key[300];
        int cfg_len = topic_key(cfg_key, sizeof(cfg_key), t->name, "config");
        uint8_t *buf = NULL;
        size_t len;
        ks_err_t err = ks_meta_topic_encode(t, &buf, &len);
        bool ok = false;
        int64_t rev = 0;
        if (!err) {
                const ks_kv_op_t put = { .type = KS_KV_OP_PUT, .key = cfg_key, .key_len = (size_t)cfg_len,
                                         .value = buf, .value_len = len };
                const ks_kv_cmp_t cmp = { .key = cfg_key, .key_len = (size_t)cfg_len, .target = KS_KV_CMP_VERSION,
                                          .op = KS_KV_EQUAL, .number = 0 };
                err = write_partitions_then_config(m, &cmp, &put, t->name, 0, t->partitions, &ok, &rev);
                if (!err && !ok)
                        err = KS_ERR__EXISTS;
        }
        free(buf);
        if (!err) {
                t->mod_rev = rev;
                pthread_rwlock_wrlock(&m->lock);
                registry_put_locked(m, t);
                pthread_rwlock_unlock(&m->lock);
                ks_log_info("topic_created", "topic=%s partitions=%d revision=%lld", t->name, t->partitions,
                            (long long)rev);
        }
        return err;
}

ks_err_t ks_meta_topic_delete(ks_meta_t *m, const char *name, const ks_uuid_t *id)
{
        char cfg_key[300], prefix[300];
        int cfg_len = topic_key(cfg_key, sizeof(cfg_key), name, "config");
        int plen = topic_key(prefix, sizeof(prefix), name, "");
        uint8_t end[300];
        size_t elen = ks_kv_prefix_end(prefix, (size_t)plen, end);

        for (int attempt = 0; attempt < 8; attempt++) {
                ks_kv_result_t res;
                ks_err_t err = ks_kv_range(m->kv, cfg_key, (size_t)cfg_len, NULL, 0, &res);
                if (err)
                        return err;
                if (res.count == 0) {
                        ks_kv_result_free(&res);
                        return KS_ERR__NOT_FOUND;
                }
                int64_t mod_rev = res.kvs[0].mod_rev;
                ks_topic_t cur;
                err = decode_config_pair(&res.kvs[0], &cur);
                ks_kv_result_free(&res);
                if (!err && id && memcmp(cur.id.b, id->b, sizeof(id->b)) != 0)
                        return KS_ERR__NOT_FOUND;
                const ks_kv_cmp_t cmp = { .key = cfg_key, .key_len = (size_t)cfg_len, .target = KS_KV_CMP_MOD,
                                          .op = KS_KV_EQUAL, .number = mod_rev };
                const ks_kv_op_t del = { .type = KS_KV_OP_DELETE, .key = prefix, .key_len = (size_t)plen,
                                         .range_end = end, .range_end_len = elen };
                bool ok;
                int64_t rev;
                err = ks_kv_txn(m->kv, &cmp, 1, &del, 1, NULL, 0, &ok, &rev);
                if (err)
                        return err;
                if (ok) {
                        pthread_rwlock_wrlock(&m->lock);
                        registry_delete_locked(m, name, strlen(name), rev);
                        pthread_rwlock_unlock(&m->lock);
                        ks_log_info("topic_deleted", "topic=%s revision=%lld", name, (long long)rev);
                        return 0;
                }
                /* Changed under us (config altered concurrently): re-read. */
        }
        return KS_ERR__CONFLICT;
}

ks_err_t ks_meta_topic_load(ks_meta_t *m, const char *name, ks_topic_t *out)
{
        char cfg_key[300];
        int cfg_len = topic_key(cfg_key, sizeof(cfg_key), name, "config");
        if (cfg_len < 0 || (size_t)cfg_len >= sizeof(cfg_key))
                return KS_ERR__NOT_FOUND;
        ks_kv_result_t res;
        ks_err_t err = ks_kv_range(m->kv, cfg_key, (size_t)cfg_len, NULL, 0, &res);
        if (err)
                return err;
        if (res.count == 0) {
                ks_kv_result_free(&res);
                return KS_ERR__NOT_FOUND;
        }
        err = decode_config_pair(&res.kvs[0], out);
        if (!err) {
                pthread_rwlock_wrlock(&m->lock);
                registry_put_locked(m, out);
                pthread_rwlock_unlock(&m->lock);
        }
        ks_kv_result_free(&res);
        return err;
}

ks_err_t ks_meta_topic_update(ks_meta_t *m, ks_topic_t *t)
{
        char cfg_key[300];
        int cfg_len = topic_key(cfg_key, sizeof(cfg_key), t->name, "config");
        uint8_t *buf = NULL;
        size_t len;
        ks_err_t err = ks_meta_topic_encode(t, &buf, &len);
        if (err)
                return err;
        const ks_kv_cmp_t cmp = { .key = cfg_key, .key_len = (size_t)cfg_len, .target = KS_KV_CMP_MOD,
                                  .op = KS_KV_EQUAL, .number = t->mod_rev };
        const ks_kv_op_t put = { .type = KS_KV_OP_PUT, .key = cfg_key, .key_len = (size_t)cfg_len, .value = buf,
                                 .value_len = len };
        bool ok = false;
        int64_t rev = 0;
        err = ks_kv_txn(m->kv, &cmp, 1, &put, 1, NULL, 0, &ok, &rev);
        free(buf);
        if (err)
                return err;
        if (!ok)
                return KS_ERR__CONFLICT;
        t->mod_rev = rev;
        pthread_rwlock_wrlock(&m->lock);
        registry_put_locked(m, t);
        pthread_rwlock_unlock(&m->lock);
        ks_log_info("topic_config_updated",
                    "topic=%s retention_ms=%lld retention_bytes=%lld segment_bytes=%lld explicit=0x%x revision=%lld",
                    t->name, (long long)t->retention_ms, (long long)t->retention_bytes, (long long)t->segment_bytes,
                    t->explicit_configs, (long long)rev);
        return 0;
}

ks_err_t ks_meta_topic_add_partitions(ks_meta_t *m, ks_topic_t *t, int32_t count)
{
        if (t->partitions < 1 || count <= t->partitions || count > KS_MAX_PARTITIONS)
                return KS_ERR__INVALID_ARG;
        const int32_t from = t->partitions;
        char cfg_key[300];
        int cfg_len = topic_key(cfg_key, sizeof(cfg_key), t->name, "config");
        ks_topic_t grown = *t;
        grown.partitions = count;

        uint8_t *buf = NULL;
        size_t len;
        ks_err_t err = ks_meta_topic_encode(&grown, &buf, &len);
        bool ok = false;
        int64_t rev = 0;
        if (!err) {
                const ks_kv_op_t put = { .type = KS_KV_OP_PUT, .key = cfg_key, .key_len = (size_t)cfg_len,
                                         .value = buf, .value_len = len };
                const ks_kv_cmp_t cmp = { .key = cfg_key, .key_len = (size_t)cfg_len, .target = KS_KV_CMP_MOD,
                                          .op = KS_KV_EQUAL, .number = t->mod_rev };
                err = write_partitions_then_config(m, &cmp, &put, t->name, from, count - from, &ok, &rev);
                if (!err && !ok)
                        err = KS_ERR__CONFLICT;
        }
        free(buf);
        if (!err) {
                grown.mod_rev = rev;
                *t = grown;
                pthread_rwlock_wrlock(&m->lock);
                registry_put_locked(m, t);
                pthread_rwlock_unlock(&m->lock);
                ks_log_info("topic_partitions_added", "topic=%s partitions=%d previous=%d revision=%lld", t->name,
                            count, from, (long long)rev);
        }
        return err;
}

bool ks_meta_topic_get(ks_meta_t *m, ks_str_t name, ks_topic_t *out)
{
        if (name.len <= 0 || name.len > KS_TOPIC_NAME_MAX)
                return false;
        pthread_rwlock_rdlock(&m->lock);
        bool found;
        int i = topic_find_locked(m, name.ptr, (size_t)name.len, &found);
        if (found)
                *out = m->topics[i];
        pthread_rwlock_unlock(&m->lock);
        return found;
}

bool ks_meta_topic_get_by_id(ks_meta_t *m, ks_uuid_t id, ks_topic_t *out)
{
        bool found = false;
        pthread_rwlock_rdlock(&m->lock);
        for (int i = 0; i < m->ntopics && !found; i++) {
                if (!memcmp(m->topics[i].id.b, id.b, sizeof(id.b))) {
                        *out = m->topics[i];
                        found = true;
                }
        }
        pthread_rwlock_unlock(&m->lock);
        return found;
}

int ks_meta_topics_snapshot(ks_meta_t *m, ks_topic_t **out)
{
        pthread_rwlock_rdlock(&m->lock);
        int n = m->ntopics;
        ks_topic_t *copy = malloc((size_t)(n ? n : 1) * sizeof(*copy));
        if (copy && n)
                memcpy(copy, m->topics, (size_t)n * sizeof(*copy));
        pthread_rwlock_unlock(&m->lock);
        if (!copy)
                return -1;
        *out = copy;
        return n;
}

/* ------------------------------------------------------------------------ */
/* Partitions: committed end offset and segment manifest                     */

static int partition_key(char *buf, size_t len, const char *topic, int32_t partition, const char *suffix)
{
        return snprintf(buf, len, TOPICS_PREFIX "%s/partitions/%d%s", topic, partition, suffix);
}

static int parse_i64(const uint8_t *p, size_t n, int64_t *out)
{
        char buf[24];
        if (n == 0 || n >= sizeof(buf))
                return -1;
        memcpy(buf, p, n);
        buf[n] = '\0';
        char *end;
        long long v = strtoll(buf, &end, 10);
        if (*end != '\0' || v < 0)
                return -1;
        *out = v;
        return 0;
}

static int seg_cmp(const void *a, const void *b)
{
        const ks_seg_meta_t *x = a, *y = b;
        return x->base_offset < y->base_offset ? -1 : x->base_offset > y->base_offset;
}

/* Appends a segment's producer records to out->producers.  Records that
 * could not have been written by a broker (more batches than kept,
 * sequences or offsets out of order) make the segment record corrupt. */
static ks_err_t producers_decode(const Kafscale__Metadata__SegmentInfo *si, int64_t created_ms,
                                 ks_partition_meta_t *out)
{
        if (si->n_producers == 0)
                return 0;
        ks_seg_producer_t *v = realloc(out->producers, (size_t)(out->nproducers + (int)si->n_producers) * sizeof(*v));
        if (!v)
                return KS_ERR__NOMEM;
        out->producers = v;
        for (size_t i = 0; i < si->n_producers; i++) {
                const Kafscale__Metadata__ProducerBatches *pb = si->producers[i];
                if (pb->n_batches == 0 || pb->n_batches > KS_SEG_PRODUCER_BATCHES || pb->producer_id < 0 ||
                    pb->producer_epoch < 0 || pb->producer_epoch > INT16_MAX)
                        return KS_ERR__CORRUPT;
                ks_seg_producer_t *e = &out->producers[out->nproducers];
                memset(e, 0, sizeof(*e));
                e->id = pb->producer_id;
                e->epoch = (int16_t)pb->producer_epoch;
                e->seg_base = si->base_offset;
                e->seg_created_ms = created_ms;
                for (size_t j = 0; j < pb->n_batches; j++) {
                        const Kafscale__Metadata__ProducerBatch *b = pb->batches[j];
                        if (b->first_offset < si->base_offset || b->last_offset < b->first_offset ||
                            b->last_offset > si->last_offset ||
                            (j > 0 && b->first_offset <= e->batches[j - 1].last_offset))
                                return KS_ERR__CORRUPT;
                        e->batches[j].first_seq = b->first_sequence;
                        e->batches[j].last_seq = b->last_sequence;
                        e->batches[j].first_offset = b->first_offset;
                        e->batches[j].last_offset = b->last_offset;
                }
                e->nbatches = (int)pb->n_batches;
                out->nproducers++;
        }
        return 0;
}

static int seg_producer_cmp(const void *a, const void *b)
{
        const ks_seg_producer_t *x = a, *y = b;
        return x->seg_base < y->seg_base ? -1 : x->seg_base > y->seg_base;
}

/* The leader epoch and epoch history of a PartitionState record into
 * *out.  Entries that break the order (epochs and start offsets ascending)
 * make the record corrupt: an answer built on them would mislead clients. */
static ks_err_t partition_state_history(const uint8_t *buf, size_t len, ks_partition_meta_t *out)
{
        Kafscale__Metadata__PartitionState *ps = kafscale__metadata__partition_state__unpack(NULL, len, buf);
        if (!ps)
                return KS_ERR__CORRUPT;
        ks_err_t err = 0;
        out->leader_epoch = ps->leader_epoch;
        size_t n = ps->n_epoch_history;
        size_t from = n > KS_EPOCH_HISTORY_MAX ? n - KS_EPOCH_HISTORY_MAX : 0;
        out->nhistory = 0;
        for (size_t i = from; i < n && !err; i++) {
                const Kafscale__Metadata__EpochEntry *e = ps->epoch_history[i];
                ks_epoch_entry_t *prev = out->nhistory ? &out->history[out->nhistory - 1] : NULL;
                if (e->epoch < 0 || e->start_offset < 0 ||
                    (prev && (e->epoch <= prev->epoch || e->start_offset < prev->start_offset)))
                        err = KS_ERR__CORRUPT;
                else
                        out->history[out->nhistory++] = (ks_epoch_entry_t){ e->epoch, e->start_offset };
        }
        if (!err && out->nhistory > 0 && out->history[out->nhistory - 1].epoch > out->leader_epoch)
                out->leader_epoch = out->history[out->nhistory - 1].epoch;
        if (err)
                ks_log_error("partition_state_corrupt", "topic=%s partition=%d reason=\"epoch history out of order\"",
                             ps->topic ? ps->topic : "", ps->partition);
        kafscale__metadata__partition_state__free_unpacked(ps, NULL);
        return err;
}

void ks_partition_meta_free(ks_partition_meta_t *pm)
{
        free(pm->segs);
        free(pm->producers);
        pm->segs = NULL;
        pm->producers = NULL;
        pm->nsegs = pm->nproducers = 0;
}

ks_err_t ks_meta_partition_load(ks_meta_t *m, const char *topic, int32_t partition, ks_partition_meta_t *out)
{
        char prefix[320];
        int plen = partition_key(prefix, sizeof(prefix), topic, partition, "/");
        uint8_t end[320];
        size_t elen = ks_kv_prefix_end(prefix, (size_t)plen, end);
        char next_key[320];
        int nlen = partition_key(next_key, sizeof(next_key), topic, partition, "/next_offset");
        const size_t seg_plen = (size_t)plen + sizeof("segments/") - 1;
        /* The range starts at the PartitionState key itself (the prefix
         * without its slash): ["…/{p}", "…/{p}0") holds it and "…/{p}/…". */
        const size_t state_len = (size_t)plen - 1;

        memset(out, 0, sizeof(*out));
        ks_kv_result_t res;
        ks_err_t err = ks_kv_range(m->kv, prefix, state_len, end, elen, &res);
        if (err)
                return err;
        bool have_next = false;
        out->segs = malloc((res.count ? res.count : 1) * sizeof(*out->segs));
        if (!out->segs) {
                ks_kv_result_free(&res);
                return KS_ERR__NOMEM;
        }
        for (size_t i = 0; i < res.count && !err; i++) {
                const ks_kv_pair_t *kv = &res.kvs[i];
                if (kv->key_len == state_len && !memcmp(kv->key, prefix, state_len)) {
                        err = partition_state_history(kv->value, kv->value_len, out);
                        continue;
                }
                if (kv->key_len == (size_t)nlen && !memcmp(kv->key, next_key, (size_t)nlen)) {
                        if (parse_i64(kv->value, kv->value_len, &out->next_offset) != 0)
                                err = KS_ERR__CORRUPT;
                        have_next = true;
                        continue;
                }
                if (kv->key_len <= seg_plen || memcmp(kv->key + plen, "segments/", sizeof("segments/") - 1) != 0)
                        continue;
                Kafscale__Metadata__SegmentInfo *si =
                        kafscale__metadata__segment_info__unpack(NULL, kv->value_len, kv->value);
                if (!si) {
                        err = KS_ERR__CORRUPT;
                        break;
                }
                ks_seg_meta_t *s = &out->segs[out->nsegs++];
                s->base_offset = si->base_offset;
                s->last_offset = si->last_offset;
                s->size_bytes = si->size_bytes;
                s->index_size_bytes = si->index_size_bytes;
                s->max_timestamp = si->max_timestamp;
                s->max_timestamp_offset = si->max_timestamp_offset;
                s->record_count = si->record_count;
                s->leader_epoch = si->leader_epoch;
                s->created_at_ms = parse_rfc3339_ms(si->created_at);
                err = producers_decode(si, s->created_at_ms, out);
                kafscale__metadata__segment_info__free_unpacked(si, NULL);
        }
        ks_kv_result_free(&res);
        if (!err && !have_next)
                err = KS_ERR__NOT_FOUND;
        if (!err && out->nproducers > 1)
                qsort(out->producers, (size_t)out->nproducers, sizeof(*out->producers), seg_producer_cmp);
        if (!err && out->nhistory == 0) {
                out->history[0] = (ks_epoch_entry_t){ out->leader_epoch, 0 };
                out->nhistory = 1;
        }
        if (err) {
                if (err != KS_ERR__NOT_FOUND)
                        ks_log_error("partition_load_failed", "topic=%s partition=%d err=%s", topic, partition,
                                     ks_err_name(err));
                free(out->segs);
                free(out->producers);
                memset(out, 0, sizeof(*out));
                return err;
        }
        qsort(out->segs, (size_t)out->nsegs, sizeof(*out->segs), seg_cmp);
        /* Invariant: segments are contiguous, non-overlapping and end at the
         * committed end offset. */
        for (int i = 0; i < out->nsegs; i++) {
                const ks_seg_meta_t *s = &out->segs[i];
                bool ok = s->last_offset >= s->base_offset && s->last_offset < out->next_offset &&
                          (i == 0 || s->base_offset == out->segs[i - 1].last_offset + 1);
                if (!ok) {
                        ks_log_error("partition_manifest_inconsistent",
                                     "topic=%s partition=%d segment_base=%lld segment_last=%lld next_offset=%lld",
                                     topic, partition, (long long)s->base_offset, (long long)s->last_offset,
                                     (long long)out->next_offset);
                        free(out->segs);
                        free(out->producers);
                        memset(out, 0, sizeof(*out));
                        return KS_ERR__CORRUPT;
                }
        }
        return 0;
}

ks_err_t ks_meta_partition_trim(ks_meta_t *m, const char *topic, int32_t partition, const int64_t *bases, int n)
{
        if (n <= 0)
                return 0;
        char (*keys)[360] = calloc((size_t)n, sizeof(*keys));
        ks_kv_op_t *ops = calloc((size_t)n, sizeof(*ops));
        ks_err_t err = (!keys || !ops) ? KS_ERR__NOMEM : 0;
        for (int i = 0; !err && i < n; i++) {
                char suffix[48];
                snprintf(suffix, sizeof(suffix), "/segments/%020lld", (long long)bases[i]);
                int kl = partition_key(keys[i], sizeof(keys[i]), topic, partition, suffix);
                ops[i] = (ks_kv_op_t){ .type = KS_KV_OP_DELETE, .key = keys[i], .key_len = (size_t)kl };
        }
        bool ok;
        /* Each chunk atomic; a segment record left by a failed chunk is
         * trimmed again on the next pass (its object is already gone). */
        for (int start = 0; !err && start < n; start += TXN_MAX_OPS) {
                int take = n - start < TXN_MAX_OPS ? n - start : TXN_MAX_OPS;
                err = ks_kv_txn(m->kv, NULL, 0, ops + start, (size_t)take, NULL, 0, &ok, NULL);
        }
        free(keys);
        free(ops);
        return err;
}

ks_err_t ks_meta_partition_init(ks_meta_t *m, const char *topic, int32_t partition)
{
        char next_key[320];
        int nlen = partition_key(next_key, sizeof(next_key), topic, partition, "/next_offset");
        const ks_kv_cmp_t absent = { .key = next_key, .key_len = (size_t)nlen, .target = KS_KV_CMP_VERSION,
                                     .op = KS_KV_EQUAL, .number = 0 };
        const ks_kv_op_t put = { .type = KS_KV_OP_PUT, .key = next_key, .key_len = (size_t)nlen, .value = "0",
                                 .value_len = 1 };
        bool created = false;
        ks_err_t err = ks_kv_txn(m->kv, &absent, 1, &put, 1, NULL, 0, &created, NULL);
        if (!err && created)
                ks_log_info("partition_initialised", "topic=%s partition=%d next_offset=0", topic, partition);
        return err;
}

/* Does the store hold next offset `next` and a segment record at seg_key
 * for the same records as `seg` (base, last offset, size, count)?  0 if so,
 * KS_ERR__CONFLICT if not, or the store's error if it could not be read. */
static ks_err_t commit_already_applied(ks_meta_t *m, const char *next_key, size_t nlen, const char *next,
                                       size_t xlen, const char *seg_key, size_t slen, const ks_seg_meta_t *seg)
{
        ks_kv_result_t res;
        ks_err_t err = ks_kv_range(m->kv, next_key, nlen, NULL, 0, &res);
        if (err)
                return err; /* unknown either way: the caller retries */
        bool same_end = res.count == 1 && res.kvs[0].value_len == xlen && !memcmp(res.kvs[0].value, next, xlen);
        ks_kv_result_free(&res);
        if (!same_end)
                return KS_ERR__CONFLICT;
        err = ks_kv_range(m->kv, seg_key, slen, NULL, 0, &res);
        if (err)
                return err;
        bool same_seg = false;
        if (res.count == 1) {
                Kafscale__Metadata__SegmentInfo *si =
                        kafscale__metadata__segment_info__unpack(NULL, res.kvs[0].value_len, res.kvs[0].value);
                same_seg = si && si->base_offset == seg->base_offset && si->last_offset == seg->last_offset &&
                           si->size_bytes == seg->size_bytes && si->record_count == seg->record_count &&
                           si->leader_epoch == seg->leader_epoch;
                if (si)
                        kafscale__metadata__segment_info__free_unpacked(si, NULL);
        }
        ks_kv_result_free(&res);
        if (same_seg)
                ks_log_info("segment_commit_already_applied", "key=%.*s", (int)slen, seg_key);
        return same_seg ? 0 : KS_ERR__CONFLICT;
}

/* SegmentInfo.producers for packing: the messages and the pointer arrays
 * protobuf-c wants, in one allocation each. */
typedef struct producers_msg {
        Kafscale__Metadata__ProducerBatches *pbs;
        Kafscale__Metadata__ProducerBatches **ptrs;
        Kafscale__Metadata__ProducerBatch *bs;
        Kafscale__Metadata__ProducerBatch **bptrs;
} producers_msg_t;

static void producers_msg_free(producers_msg_t *pm)
{
        free(pm->pbs);
        free(pm->ptrs);
        free(pm->bs);
        free(pm->bptrs);
        memset(pm, 0, sizeof(*pm));
}

static int producers_msg_build(producers_msg_t *pm, const ks_seg_producer_t *v, int n)
{
        memset(pm, 0, sizeof(*pm));
        if (n <= 0)
                return 0;
        size_t nb = 0;
        for (int i = 0; i < n; i++)
                nb += (size_t)v[i].nbatches;
        pm->pbs = calloc((size_t)n, sizeof(*pm->pbs));
        pm->ptrs = calloc((size_t)n, sizeof(*pm->ptrs));
        pm->bs = calloc(nb ? nb : 1, sizeof(*pm->bs));
        pm->bptrs = calloc(nb ? nb : 1, sizeof(*pm->bptrs));
        if (!pm->pbs || !pm->ptrs || !pm->bs || !pm->bptrs) {
                producers_msg_free(pm);
                return -1;
        }
        size_t k = 0;
        for (int i = 0; i < n; i++) {
                Kafscale__Metadata__ProducerBatches *pb = &pm->pbs[i];
                kafscale__metadata__producer_batches__init(pb);
                pb->producer_id = v[i].id;
                pb->producer_epoch = v[i].epoch;
                pb->n_batches = (size_t)v[i].nbatches;
                pb->batches = &pm->bptrs[k];
                for (int j = 0; j < v[i].nbatches; j++, k++) {
                        Kafscale__Metadata__ProducerBatch *b = &pm->bs[k];
                        kafscale__metadata__producer_batch__init(b);
                        b->first_sequence = v[i].batches[j].first_seq;
                        b->last_sequence = v[i].batches[j].last_seq;
                        b->first_offset = v[i].batches[j].first_offset;
                        b->last_offset = v[i].batches[j].last_offset;
                        pm->bptrs[k] = b;
                }
                pm->ptrs[i] = pb;
        }
        return 0;
}

ks_err_t ks_meta_partition_commit(ks_meta_t *m, const char *topic, int32_t partition, int64_t expect_next,
                                  const ks_seg_meta_t *seg, const ks_kv_cmp_t *fence)
{
        char next_key[320], seg_key[360], expect[24], next[24], created[40];
        int nlen = partition_key(next_key, sizeof(next_key), topic, partition, "/next_offset");
        char suffix[48];
        snprintf(suffix, sizeof(suffix), "/segments/%020lld", (long long)seg->base_offset);
        int slen = partition_key(seg_key, sizeof(seg_key), topic, partition, suffix);
        int elen = snprintf(expect, sizeof(expect), "%lld", (long long)expect_next);
        int xlen = snprintf(next, sizeof(next), "%lld", (long long)(seg->last_offset + 1));

        Kafscale__Metadata__SegmentInfo si = KAFSCALE__METADATA__SEGMENT_INFO__INIT;
        si.base_offset = seg->base_offset;
        si.size_bytes = seg->size_bytes;
        si.created_at = ks_time_rfc3339(seg->created_at_ms, created, sizeof(created));
        si.last_offset = seg->last_offset;
        si.max_timestamp = seg->max_timestamp;
        si.max_timestamp_offset = seg->max_timestamp_offset;
        si.index_size_bytes = seg->index_size_bytes;
        si.record_count = seg->record_count;
        si.leader_epoch = seg->leader_epoch;
        producers_msg_t pm;
        if (producers_msg_build(&pm, seg->producers, seg->nproducers) != 0)
                return KS_ERR__NOMEM;
        si.n_producers = (size_t)seg->nproducers;
        si.producers = pm.ptrs;
        size_t sl = kafscale__metadata__segment_info__get_packed_size(&si);
        uint8_t *sbuf = malloc(sl ? sl : 1);
        if (!sbuf) {
                producers_msg_free(&pm);
                return KS_ERR__NOMEM;
        }
        kafscale__metadata__segment_info__pack(&si, sbuf);
        producers_msg_free(&pm);

        ks_kv_cmp_t cmps[2] = { { .key = next_key, .key_len = (size_t)nlen, .target = KS_KV_CMP_VALUE,
                                  .op = KS_KV_EQUAL, .value = expect, .value_len = (size_t)elen } };
        size_t ncmps = 1;
        if (fence)
                cmps[ncmps++] = *fence;
        const ks_kv_op_t ops[2] = {
                { .type = KS_KV_OP_PUT, .key = next_key, .key_len = (size_t)nlen, .value = next,
                  .value_len = (size_t)xlen },
                { .type = KS_KV_OP_PUT, .key = seg_key, .key_len = (size_t)slen, .value = sbuf, .value_len = sl },
        };
        bool ok;
        ks_err_t err = ks_kv_txn(m->kv, cmps, ncmps, ops, 2, NULL, 0, &ok, NULL);
        free(sbuf);
        if (err)
                return err;
        if (ok)
                return 0;
        /* An earlier attempt whose outcome was unknown (the store timed out
         * or became unreachable after taking it) may have applied: then the
         * end offset is already ours and the segment record describes this
         * very segment, and the commit is done.  If that cannot be read
         * now, the store's error (retriable), not a conflict. */
        return commit_already_applied(m, next_key, (size_t)nlen, next, (size_t)xlen, seg_key, (size_t)slen, seg);
}

/* ------------------------------------------------------------------------ */
/* Consumer groups                                                           */

#define CONSUMERS_PREFIX "/kafscale/consumers/"

/* "/kafscale/consumers/{group}/metadata"; -1 if the group id cannot be a
 * single path segment of a key (empty, '/', too long). */
static int group_key(char *buf, size_t len, const char *group)
{
        if (!group || !group[0] || strchr(group, '/'))
                return -1;
        int kl = snprintf(buf, len, CONSUMERS_PREFIX "%s/metadata", group);
        return kl < 0 || (size_t)kl >= len ? -1 : kl;
}

/* One write of a group record, with the coordinator's fence when given. */
static ks_err_t group_write(ks_meta_t *m, const ks_kv_op_t *op, const ks_kv_cmp_t *fence)
{
        if (!fence) {
                if (op->type == KS_KV_OP_PUT)
                        return ks_kv_put(m->kv, op->key, op->key_len, op->value, op->value_len, 0, NULL);
                return ks_kv_delete_range(m->kv, op->key, op->key_len, NULL, 0, NULL, NULL);
        }
        bool ok = false;
        ks_err_t err = ks_kv_txn(m->kv, fence, 1, op, 1, NULL, 0, &ok, NULL);
        return err ? err : ok ? 0 : KS_ERR__CONFLICT;
}

ks_err_t ks_meta_group_put(ks_meta_t *m, const char *group, const uint8_t *buf, size_t len,
                           const ks_kv_cmp_t *fence)
{
        char key[400];
        int kl = group_key(key, sizeof(key), group);
        if (kl < 0)
                return KS_ERR__INVALID_ARG;
        const ks_kv_op_t op = { .type = KS_KV_OP_PUT, .key = key, .key_len = (size_t)kl, .value = buf,
                                .value_len = len };
        return group_write(m, &op, fence);
}

ks_err_t ks_meta_group_delete(ks_meta_t *m, const char *group, const ks_kv_cmp_t *fence)
{
        char key[400];
        int kl = group_key(key, sizeof(key), group);
        if (kl < 0)
                return KS_ERR__INVALID_ARG;
        const ks_kv_op_t op = { .type = KS_KV_OP_DELETE, .key = key, .key_len = (size_t)kl };
        return group_write(m, &op, fence);
}

ks_err_t ks_meta_group_get(ks_meta_t *m, const char *group, uint8_t **buf, size_t *len)
{
        *buf = NULL;
        *len = 0;
        char key[400];
        int kl = group_key(key, sizeof(key), group);
        if (kl < 0)
                return KS_ERR__INVALID_ARG;
        ks_kv_result_t res;
        ks_err_t err = ks_kv_range(m->kv, key, (size_t)kl, NULL, 0, &res);
        if (err)
                return err;
        if (res.count == 0) {
                ks_kv_result_free(&res);
                return KS_ERR__NOT_FOUND;
        }
        *len = res.kvs[0].value_len;
        *buf = malloc(*len ? *len : 1);
        if (*buf && *len)
                memcpy(*buf, res.kvs[0].value, *len);
        ks_kv_result_free(&res);
        if (!*buf) {
                *len = 0;
                return KS_ERR__NOMEM;
        }
        return 0;
}

ks_err_t ks_meta_groups_load(ks_meta_t *m, int (*cb)(void *opaque, const char *group, const uint8_t *buf, size_t len),
                             void *opaque)
{
        uint8_t end[sizeof(CONSUMERS_PREFIX)];
        size_t elen = ks_kv_prefix_end(CONSUMERS_PREFIX, sizeof(CONSUMERS_PREFIX) - 1, end);
        ks_kv_result_t res;
        ks_err_t err = ks_kv_range(m->kv, CONSUMERS_PREFIX, sizeof(CONSUMERS_PREFIX) - 1, end, elen, &res);
        if (err)
                return err;
        const size_t plen = sizeof(CONSUMERS_PREFIX) - 1, slen = sizeof("/metadata") - 1;
        for (size_t i = 0; i < res.count; i++) {
                const ks_kv_pair_t *kv = &res.kvs[i];
                if (kv->key_len <= plen + slen || memcmp(kv->key + kv->key_len - slen, "/metadata", slen) != 0)
                        continue;
                size_t gl = kv->key_len - plen - slen;
                char group[256];
                if (gl >= sizeof(group) || memchr(kv->key + plen, '/', gl))
                        continue;
                memcpy(group, kv->key + plen, gl);
                group[gl] = '\0';
                if (cb(opaque, group, kv->value, kv->value_len) != 0)
                        break;
        }
        ks_kv_result_free(&res);
        return 0;
}

/* ------------------------------------------------------------------------ */
/* The cluster snapshot                                                      */

static json_object *snapshot_build(ks_meta_t *m, const ks_snapshot_broker_t *brokers, int nbrokers,
                                   int32_t controller_id, ks_snapshot_leader_fn *leader, void *opaque)
{
        ks_topic_t *topics = NULL;
        int n = ks_meta_topics_snapshot(m, &topics);
        if (n < 0)
                return NULL;
        json_object *root = json_object_new_object();
        json_object *jb = json_object_new_array();
        for (int i = 0; i < nbrokers; i++) {
                json_object *b = json_object_new_object();
                json_object_object_add(b, "NodeID", json_object_new_int(brokers[i].id));
                json_object_object_add(b, "Host", json_object_new_string(brokers[i].host ? brokers[i].host : ""));
                json_object_object_add(b, "Port", json_object_new_int(brokers[i].port));
                json_object_object_add(b, "Rack",
                                       brokers[i].rack && brokers[i].rack[0] ? json_object_new_string(brokers[i].rack)
                                                                             : NULL);
                json_object_array_add(jb, b);
        }
        json_object_object_add(root, "Brokers", jb);
        json_object_object_add(root, "ControllerID", json_object_new_int(controller_id));
        json_object *jt = json_object_new_array();
        for (int i = 0; i < n; i++) {
                const ks_topic_t *t = &topics[i];
                json_object *o = json_object_new_object();
                json_object_object_add(o, "ErrorCode", json_object_new_int(0));
                json_object_object_add(o, "Topic", json_object_new_string(t->name));
                json_object *id = json_object_new_array();
                for (size_t k = 0; k < sizeof(t->id.b); k++)
                        json_object_array_add(id, json_object_new_int(t->id.b[k]));
                json_object_object_add(o, "TopicID", id);
                json_object_object_add(o, "IsInternal", json_object_new_boolean(0));
                json_object *parts = json_object_new_array();
                for (int32_t p = 0; p < t->partitions; p++) {
                        int32_t epoch = 0;
                        int32_t l = leader ? leader(opaque, t->name, p, &epoch) : -1;
                        json_object *jp = json_object_new_object();
                        json_object_object_add(jp, "ErrorCode", json_object_new_int(l < 0 ? 5 /* LEADER_NOT_AVAILABLE */ : 0));
                        json_object_object_add(jp, "Partition", json_object_new_int(p));
                        json_object_object_add(jp, "Leader", json_object_new_int(l));
                        json_object_object_add(jp, "LeaderEpoch", json_object_new_int(epoch));
                        json_object *rep = json_object_new_array(), *isr = json_object_new_array();
                        if (l >= 0) {
                                json_object_array_add(rep, json_object_new_int(l));
                                json_object_array_add(isr, json_object_new_int(l));
                        }
                        json_object_object_add(jp, "Replicas", rep);
                        json_object_object_add(jp, "ISR", isr);
                        json_object_object_add(jp, "OfflineReplicas", json_object_new_array());
                        json_object_array_add(parts, jp);
                }
                json_object_object_add(o, "Partitions", parts);
                json_object_array_add(jt, o);
        }
        free(topics);
        json_object_object_add(root, "Topics", jt);
        json_object_object_add(root, "ClusterName", NULL);
        json_object_object_add(root, "ClusterID", json_object_new_string(m->cluster_id));
        return root;
}

ks_err_t ks_meta_producer_ids_reserve(ks_meta_t *m, int64_t count, int64_t *first)
{
        const size_t klen = sizeof(KS_PRODUCER_IDS_KEY) - 1;
        if (count <= 0)
                return KS_ERR__INVALID_ARG;
        for (int attempt = 0; attempt < 16; attempt++) {
                ks_kv_result_t res;
                ks_err_t err = ks_kv_range(m->kv, KS_PRODUCER_IDS_KEY, klen, NULL, 0, &res);
                if (err)
                        return err;
                int64_t next = 0, mod = 0;
                if (res.count) {
                        mod = res.kvs[0].mod_rev;
                        if (parse_i64(res.kvs[0].value, res.kvs[0].value_len, &next) != 0 || next > INT64_MAX - count)
                                err = KS_ERR__CORRUPT;
                }
                ks_kv_result_free(&res);
                if (err) {
                        ks_log_error("producer_ids_corrupt", "key=%s fix=\"put the next free producer id (a "
                                     "decimal number above every id handed out) at the key\"",
                                     KS_PRODUCER_IDS_KEY);
                        return err;
                }
                char val[24];
                int vlen = snprintf(val, sizeof(val), "%lld", (long long)(next + count));
                const ks_kv_cmp_t cmp = { .key = KS_PRODUCER_IDS_KEY, .key_len = klen, .target = KS_KV_CMP_MOD,
                                          .op = KS_KV_EQUAL, .number = mod };
                const ks_kv_op_t put = { .type = KS_KV_OP_PUT, .key = KS_PRODUCER_IDS_KEY, .key_len = klen,
                                         .value = val, .value_len = (size_t)vlen };
                bool ok = false;
                err = ks_kv_txn(m->kv, &cmp, 1, &put, 1, NULL, 0, &ok, NULL);
                if (err)
                        return err;
                if (ok) {
                        *first = next;
                        return 0;
                }
        }
        return KS_ERR__CONFLICT;
}

ks_err_t ks_meta_snapshot_write(ks_meta_t *m, const ks_snapshot_broker_t *brokers, int nbrokers,
                                int32_t controller_id, ks_snapshot_leader_fn *leader, void *opaque)
{
        const size_t klen = sizeof(KS_SNAPSHOT_KEY) - 1;
        for (int attempt = 0; attempt < 8; attempt++) {
                ks_kv_result_t res;
                ks_err_t err = ks_kv_range(m->kv, KS_SNAPSHOT_KEY, klen, NULL, 0, &res);
                if (err)
                        return err;
                int64_t mod = res.count ? res.kvs[0].mod_rev : 0;
                ks_kv_result_free(&res);
                json_object *root = snapshot_build(m, brokers, nbrokers, controller_id, leader, opaque);
                if (!root)
                        return KS_ERR__NOMEM;
                size_t len = 0;
                const char *js = json_object_to_json_string_length(root, JSON_C_TO_STRING_PLAIN, &len);
                const ks_kv_cmp_t cmp = { .key = KS_SNAPSHOT_KEY, .key_len = klen, .target = KS_KV_CMP_MOD,
                                          .op = KS_KV_EQUAL, .number = mod };
                const ks_kv_op_t put = { .type = KS_KV_OP_PUT, .key = KS_SNAPSHOT_KEY, .key_len = klen,
                                         .value = js, .value_len = len };
                bool ok = false;
                err = js ? ks_kv_txn(m->kv, &cmp, 1, &put, 1, NULL, 0, &ok, NULL) : KS_ERR__NOMEM;
                json_object_put(root);
                if (err || ok)
                        return err;
        }
        return KS_ERR__CONFLICT;
}
