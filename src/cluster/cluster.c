/*
 * cluster.c — see cluster.h; the protocol is described in docs/cluster.md.
 *
 * Threads and locks:
 *  - `mu` protects everything mutable in ks_cluster_t: the session (lease,
 *    lost, last_ok_ms, next_ka_ms, prev_lease), the caches (brokers, topics,
 *    partition states, partition and group leases), what this broker owns
 *    (owned_p, owned_g), the group-request queue, the flags and counters.
 *    It is never held across a store call or a hook.
 *  - Watch callbacks (the store's thread) apply events to the caches under
 *    `mu` and signal `cv`; after a compaction they reload that cache with one
 *    range read (outside `mu`) and swap it in.
 *  - `ks-cluster` (cluster_main) registers, plans and executes rebalance
 *    passes, serves ks_cluster_acquire_group requests and calls every hook.
 *  - `ks-cluster-ka` (ka_main) sends keepalives and moves last_ok_ms.
 *
 * Cache consistency: every cache entry carries the store revision that made
 * it (mod_rev).  An event older than the entry is ignored, and so is any
 * event at or below the revision of the cache's last full load (`floor`),
 * so the watch, a reload after a compaction and this broker's own direct
 * updates (after its own transactions, so that it never sees a lease key it
 * just created as absent) can meet in any order.
 */
#include "cluster/cluster.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kafscale_metadata.pb-c.h"
#include "meta/metadata.h"
#include "util/log.h"

#define TOPICS_PREFIX "/kafscale/topics/"
#define TICK_FAKE_MS 5          /* how often threads look at a fake clock */
#define WAIT_MAX_MS 1000        /* longest sleep of either thread */
#define PASS_PERIOD_MS 1000     /* real time: a full pass even without events (retries) */
#define REGISTER_RETRY_MS 500   /* real time: registration retry after a failure */
#define KA_RETRY_MS 500         /* clock time: keepalive retry after a failure (capped by TTL/3) */
#define ACQUIRE_ATTEMPTS 4      /* compare failures before a pass gives a partition up */
#define KEY_MAX 320

/* ------------------------------------------------------------------------ */
/* Hashing and placement                                                     */

static uint64_t fnv1a64(const void *p, size_t n)
{
        const uint8_t *b = p;
        uint64_t h = 0xcbf29ce484222325ULL;
        for (size_t i = 0; i < n; i++) {
                h ^= b[i];
                h *= 0x100000001b3ULL;
        }
        return h;
}

static uint64_t fmix64(uint64_t k)
{
        k ^= k >> 33;
        k *= 0xff51afd7ed558ccdULL;
        k ^= k >> 33;
        k *= 0xc4ceb9fe1a85ec53ULL;
        k ^= k >> 33;
        return k;
}

static uint64_t score_h(uint64_t keyhash, int32_t id)
{
        return fmix64(keyhash ^ fmix64((uint64_t)(uint32_t)id + 0x9e3779b97f4a7c15ULL));
}

uint64_t ks_cluster_score(const char *key, int32_t id)
{
        return score_h(fnv1a64(key, strlen(key)), id);
}

static int32_t place_h(uint64_t keyhash, const int32_t *ids, int n)
{
        int32_t best = -1;
        uint64_t best_score = 0;
        for (int i = 0; i < n; i++) {
                uint64_t s = score_h(keyhash, ids[i]);
                if (best < 0 || s > best_score || (s == best_score && ids[i] < best)) {
                        best = ids[i];
                        best_score = s;
                }
        }
        return best;
}

int32_t ks_cluster_place(const char *key, const int32_t *ids, int n)
{
        return place_h(fnv1a64(key, strlen(key)), ids, n);
}

/* ------------------------------------------------------------------------ */
/* A small string-keyed hash map (chained).  One entry type serves every
 * cache; each uses the fields it needs.                                     */

typedef struct entry {
        int32_t owner;         /* lease caches: holder id parsed from the value (-1: unparsable) */
        int64_t lease;         /* lease caches: the lease the key is attached to */
        int64_t create_rev;    /* leases, partition states */
        int64_t mod_rev;       /* every cache: revision of the entry */
        int32_t epoch;         /* partition states: leader epoch; owned partitions: epoch of the term */
        int32_t partitions;    /* topics: partition count */
        int32_t partition;     /* owned partitions */
        int64_t term_rev;      /* owned: create revision of our lease key (= the acquiring txn) */
        int64_t ps_create_rev; /* owned partitions: create revision of the PartitionState */
        bool releasing;        /* owned: hand-over under way */
} entry_t;

typedef struct hnode {
        struct hnode *next;
        uint64_t hash;
        entry_t v;
        size_t klen;
        char key[]; /* NUL-terminated */
} hnode_t;

typedef struct hmap {
        hnode_t **b;
        size_t nb, n;
} hmap_t;

static hnode_t *hmap_find(const hmap_t *m, const char *key, size_t klen)
{
        if (!m->nb)
                return NULL;
        uint64_t h = fnv1a64(key, klen);
        for (hnode_t *x = m->b[h & (m->nb - 1)]; x; x = x->next)
                if (x->hash == h && x->klen == klen && !memcmp(x->key, key, klen))
                        return x;
        return NULL;
}

static bool hmap_grow(hmap_t *m)
{
        size_t nb = m->nb ? m->nb * 2 : 64;
        hnode_t **b = calloc(nb, sizeof(*b));
        if (!b)
                return false;
        for (size_t i = 0; i < m->nb; i++) {
                hnode_t *x = m->b[i];
                while (x) {
                        hnode_t *next = x->next;
                        x->next = b[x->hash & (nb - 1)];
                        b[x->hash & (nb - 1)] = x;
                        x = next;
                }
        }
        free(m->b);
        m->b = b;
        m->nb = nb;
        return true;
}

/* The entry for key, created zeroed if absent; NULL if out of memory. */
static hnode_t *hmap_upsert(hmap_t *m, const char *key, size_t klen)
{
        hnode_t *x = hmap_find(m, key, klen);
        if (x)
                return x;
        if (m->n + 1 > m->nb && !hmap_grow(m))
                return NULL;
        x = calloc(1, sizeof(*x) + klen + 1);
        if (!x)
                return NULL;
        x->hash = fnv1a64(key, klen);
        x->klen = klen;
        memcpy(x->key, key, klen);
        x->key[klen] = '\0';
        x->next = m->b[x->hash & (m->nb - 1)];
        m->b[x->hash & (m->nb - 1)] = x;
        m->n++;
        return x;
}

static void hmap_remove(hmap_t *m, const char *key, size_t klen)
{
        if (!m->nb)
                return;
        uint64_t h = fnv1a64(key, klen);
        for (hnode_t **pp = &m->b[h & (m->nb - 1)]; *pp; pp = &(*pp)->next) {
                hnode_t *x = *pp;
                if (x->hash == h && x->klen == klen && !memcmp(x->key, key, klen)) {
                        *pp = x->next;
                        free(x);
                        m->n--;
                        return;
                }
        }
}

static void hmap_clear(hmap_t *m)
{
        for (size_t i = 0; i < m->nb; i++) {
                hnode_t *x = m->b[i];
                while (x) {
                        hnode_t *next = x->next;
                        free(x);
                        x = next;
                }
        }
        free(m->b);
        m->b = NULL;
        m->nb = m->n = 0;
}

/* Moves src's content into dst (dst cleared first); src ends empty. */
static void hmap_swap_in(hmap_t *dst, hmap_t *src)
{
        hmap_clear(dst);
        *dst = *src;
        memset(src, 0, sizeof(*src));
}

#define HMAP_FOREACH(m, x)                                                                                  \
        for (size_t hi_ = 0; hi_ < (m)->nb; hi_++)                                                          \
                for (hnode_t *x = (m)->b[hi_]; x; x = x->next)

/* ------------------------------------------------------------------------ */
/* The module                                                                */

typedef struct broker_ent {
        ks_broker_info_t info;
        int64_t lease;
        int64_t mod_rev;
} broker_ent_t;

/* One ks_cluster_acquire_group() call waiting for the thread.  Freed by the
 * caller once done, or by the thread if the caller gave up (abandoned). */
typedef struct greq {
        struct greq *next;
        ks_err_t result;
        bool done, abandoned;
        char group[];
} greq_t;

struct ks_cluster {
        /* Immutable after start. */
        int32_t id;
        char idstr[16];
        size_t idlen;
        char host[256];
        int32_t port;
        char rack[64];
        char version[64];
        int64_t ttl_s, ttl_ms, ka_interval_ms, register_wait_ms;
        bool exclusive;
        bool membership_only;
        const ks_clock_t *clock;
        bool fake_clock;
        int64_t started_at_wall;
        ks_kv_t *kv;
        ks_cluster_hooks_t hooks;
        void *opaque;

        pthread_mutex_t mu;
        pthread_cond_t cv;      /* wakes ks-cluster */
        pthread_cond_t ka_cv;   /* wakes ks-cluster-ka */
        pthread_cond_t done_cv; /* a group request is done */

        bool stop, killed, ka_stop, dirty;

        /* Session. */
        int64_t lease;       /* 0: none */
        bool lost;           /* the keepalive said the lease is gone */
        int64_t last_ok_ms;  /* clock: when the last confirmed keepalive (or the grant) was sent */
        int64_t next_ka_ms;  /* clock: next keepalive due */
        int64_t prev_lease;  /* a lost session's lease, revoked before registering again */

        /* Caches. */
        broker_ent_t *brokers; /* sorted by id */
        int nbrokers, cap_brokers;
        int64_t brokers_floor;
        hmap_t topics;  /* topic -> partitions */
        hmap_t pstates; /* "t/p" -> epoch, create_rev */
        int64_t topics_floor;
        hmap_t pleases; /* "t/p" -> owner, lease, create_rev */
        int64_t pleases_floor;
        hmap_t gleases; /* group -> owner, lease, create_rev */
        int64_t gleases_floor;

        /* Ownership. */
        hmap_t owned_p; /* "t/p" */
        hmap_t owned_g; /* group */

        greq_t *greq_head, *greq_tail;

        /* Counters. */
        int64_t sessions, passes, n_acquired, n_released, n_lost;

        ks_kv_watch_t *w_brokers, *w_pleases, *w_gleases, *w_topics;
        pthread_t thr, ka_thr;
        bool thr_started, ka_started;
};

static int64_t now_clock(const ks_cluster_t *c)
{
        return ks_clock_mono_ms(c->clock);
}

static int64_t now_real(void)
{
        return ks_clock_mono_ms(ks_clock_system());
}

/* A session this broker may act on: a lease, not reported gone, and within
 * its TTL since the last confirmed keepalive.  mu held. */
static bool session_valid_locked(const ks_cluster_t *c)
{
        return c->lease != 0 && !c->lost && now_clock(c) - c->last_ok_ms < c->ttl_ms;
}

static bool session_expired_locked(const ks_cluster_t *c)
{
        return c->lease != 0 && (c->lost || now_clock(c) - c->last_ok_ms >= c->ttl_ms);
}

/* Sleeps on cv for at most ms (real time), less with a fake clock.  mu held. */
static void wait_locked(ks_cluster_t *c, pthread_cond_t *cv, int64_t ms)
{
        if (c->fake_clock && ms > TICK_FAKE_MS)
                ms = TICK_FAKE_MS;
        if (ms > WAIT_MAX_MS)
                ms = WAIT_MAX_MS;
        if (ms < 1)
                ms = 1;
        struct timespec ts;
        ks_deadline_after_ms(&ts, ms);
        pthread_cond_timedwait(cv, &c->mu, &ts);
}

/* ------------------------------------------------------------------------ */
/* Keys and small parsers                                                    */

static int plkey(char *buf, size_t len, const char *topic, int32_t partition)
{
        return snprintf(buf, len, KS_CLUSTER_PARTITION_LEASES_PREFIX "%s/%d", topic, partition);
}

static int pskey(char *buf, size_t len, const char *topic, int32_t partition, const char *suffix)
{
        return snprintf(buf, len, TOPICS_PREFIX "%s/partitions/%d%s", topic, partition, suffix);
}

/* Parses n bytes of ASCII decimal (no sign) into *out; false if malformed. */
static bool parse_dec(const void *p, size_t n, int64_t max, int64_t *out)
{
        const uint8_t *s = p;
        int64_t v = 0;
        if (n == 0 || n > 19)
                return false;
        for (size_t i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return false;
                v = v * 10 + (s[i] - '0');
        }
        if (v > max)
                return false;
        *out = v;
        return true;
}

static int32_t parse_owner(const void *p, size_t n)
{
        int64_t v;
        return parse_dec(p, n, INT32_MAX, &v) ? (int32_t)v : -1;
}

/* Splits "t/p" (the map key of a partition) into topic length and partition. */
static bool split_tp(const char *key, size_t klen, size_t *tlen, int32_t *partition)
{
        const char *slash = NULL;
        for (size_t i = klen; i > 0; i--)
                if (key[i - 1] == '/') {
                        slash = key + i - 1;
                        break;
                }
        int64_t p;
        if (!slash || slash == key || !parse_dec(slash + 1, (size_t)(key + klen - slash - 1), INT32_MAX, &p))
                return false;
        *tlen = (size_t)(slash - key);
        *partition = (int32_t)p;
        return true;
}

static bool group_name_ok(const char *g)
{
        size_t n = g ? strlen(g) : 0;
        return n > 0 && n <= KS_CLUSTER_GROUP_MAX;
}

/* ------------------------------------------------------------------------ */
/* Caches: applying records and events (mu held)                             */

static int broker_find_locked(const ks_cluster_t *c, int32_t id, bool *found)
{
        int lo = 0, hi = c->nbrokers;
        while (lo < hi) {
                int mid = lo + (hi - lo) / 2;
                if (c->brokers[mid].info.id < id)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        *found = lo < c->nbrokers && c->brokers[lo].info.id == id;
        return lo;
}

static void broker_remove_at_locked(ks_cluster_t *c, int i)
{
        memmove(&c->brokers[i], &c->brokers[i + 1], (size_t)(c->nbrokers - i - 1) * sizeof(*c->brokers));
        c->nbrokers--;
}

/* Puts or replaces a broker entry.  False if out of memory. */
static bool broker_put_locked(ks_cluster_t *c, const broker_ent_t *b)
{
        bool found;
        int i = broker_find_locked(c, b->info.id, &found);
        if (found) {
                c->brokers[i] = *b;
                return true;
        }
        if (c->nbrokers == c->cap_brokers) {
                int cap = c->cap_brokers ? c->cap_brokers * 2 : 8;
                broker_ent_t *n = realloc(c->brokers, (size_t)cap * sizeof(*n));
                if (!n)
                        return false;
                c->brokers = n;
                c->cap_brokers = cap;
        }
        memmove(&c->brokers[i + 1], &c->brokers[i], (size_t)(c->nbrokers - i) * sizeof(*c->brokers));
        c->brokers[i] = *b;
        c->nbrokers++;
        return true;
}

/* Decodes a registration record; false (logged) if it does not decode or
 * names another broker than its key. */
static bool registration_decode(const ks_kv_pair_t *kv, int32_t id, broker_ent_t *out)
{
        Kafscale__Metadata__BrokerRegistration *r =
                kafscale__metadata__broker_registration__unpack(NULL, kv->value_len, kv->value);
        if (!r) {
                ks_log_warn("broker_registration_corrupt", "key=\"%.*s\" action=ignored", (int)kv->key_len,
                            (const char *)kv->key);
                return false;
        }
        int64_t rid;
        bool ok = r->broker_id && parse_dec(r->broker_id, strlen(r->broker_id), INT32_MAX, &rid) && rid == id &&
                  r->host && r->host[0];
        if (ok) {
                memset(out, 0, sizeof(*out));
                out->info.id = id;
                snprintf(out->info.host, sizeof(out->info.host), "%s", r->host);
                out->info.port = r->port;
                snprintf(out->info.rack, sizeof(out->info.rack), "%s", r->rack ? r->rack : "");
                out->lease = kv->lease;
                out->mod_rev = kv->mod_rev;
        } else {
                ks_log_warn("broker_registration_invalid", "key=\"%.*s\" action=ignored", (int)kv->key_len,
                            (const char *)kv->key);
        }
        kafscale__metadata__broker_registration__free_unpacked(r, NULL);
        return ok;
}

/* Applies one brokers event; true if the live set changed. */
static bool brokers_apply_locked(ks_cluster_t *c, ks_kv_ev_type_t type, const ks_kv_pair_t *kv, int64_t rev)
{
        const size_t plen = sizeof(KS_CLUSTER_BROKERS_PREFIX) - 1;
        int64_t id;
        if (rev <= c->brokers_floor || kv->key_len <= plen ||
            !parse_dec(kv->key + plen, kv->key_len - plen, INT32_MAX, &id))
                return false;
        bool found;
        int i = broker_find_locked(c, (int32_t)id, &found);
        if (type == KS_KV_EV_PUT) {
                if (found && c->brokers[i].mod_rev >= kv->mod_rev)
                        return false;
                broker_ent_t b;
                if (!registration_decode(kv, (int32_t)id, &b)) {
                        if (found)
                                broker_remove_at_locked(c, i);
                        return found;
                }
                if (!broker_put_locked(c, &b))
                        ks_log_error("cluster_cache_nomem", "cache=brokers");
                return true;
        }
        if (!found || c->brokers[i].mod_rev >= rev)
                return false;
        broker_remove_at_locked(c, i);
        return true;
}

/* Applies one lease-key event to a lease cache; true if it changed. */
static bool lease_apply_locked(hmap_t *m, int64_t floor, size_t plen, ks_kv_ev_type_t type, const ks_kv_pair_t *kv,
                               int64_t rev)
{
        if (rev <= floor || kv->key_len <= plen)
                return false;
        const char *k = (const char *)kv->key + plen;
        size_t klen = kv->key_len - plen;
        hnode_t *x = hmap_find(m, k, klen);
        if (type == KS_KV_EV_PUT) {
                if (x && x->v.mod_rev >= kv->mod_rev)
                        return false;
                if (!x && !(x = hmap_upsert(m, k, klen))) {
                        ks_log_error("cluster_cache_nomem", "cache=leases");
                        return false;
                }
                x->v.owner = parse_owner(kv->value, kv->value_len);
                x->v.lease = kv->lease;
                x->v.create_rev = kv->create_rev;
                x->v.mod_rev = kv->mod_rev;
                return true;
        }
        if (!x || x->v.mod_rev >= rev)
                return false;
        hmap_remove(m, k, klen);
        return true;
}

/* What a key under /kafscale/topics/ is: a config record (1), a
 * PartitionState (2) or something else (0).  *tlen: topic length; *p. */
static int topic_key_kind(const uint8_t *key, size_t len, size_t *tlen, int32_t *p)
{
        const size_t plen = sizeof(TOPICS_PREFIX) - 1;
        if (len <= plen || memcmp(key, TOPICS_PREFIX, plen) != 0)
                return 0;
        const char *t = (const char *)key + plen;
        size_t rest = len - plen;
        const char *slash = memchr(t, '/', rest);
        if (!slash || slash == t || (size_t)(slash - t) > KS_TOPIC_NAME_MAX)
                return 0;
        *tlen = (size_t)(slash - t);
        const char *s = slash + 1;
        size_t slen = rest - *tlen - 1;
        if (slen == 6 && !memcmp(s, "config", 6))
                return 1;
        static const char parts[] = "partitions/";
        int64_t v;
        if (slen > sizeof(parts) - 1 && !memcmp(s, parts, sizeof(parts) - 1) &&
            parse_dec(s + sizeof(parts) - 1, slen - (sizeof(parts) - 1), INT32_MAX, &v)) {
                *p = (int32_t)v;
                return 2;
        }
        return 0;
}

/* Applies one event under /kafscale/topics/; true if ownership may change
 * (a topic appeared, changed or went; a partition state was created or
 * deleted). */
static bool topics_apply_locked(ks_cluster_t *c, ks_kv_ev_type_t type, const ks_kv_pair_t *kv, int64_t rev)
{
        size_t tlen;
        int32_t p = 0;
        int kind = topic_key_kind(kv->key, kv->key_len, &tlen, &p);
        if (!kind || rev <= c->topics_floor)
                return false;
        const char *t = (const char *)kv->key + sizeof(TOPICS_PREFIX) - 1;
        if (kind == 1) {
                hnode_t *x = hmap_find(&c->topics, t, tlen);
                if (type == KS_KV_EV_DELETE) {
                        if (!x || x->v.mod_rev >= rev)
                                return false;
                        hmap_remove(&c->topics, t, tlen);
                        return true;
                }
                if (x && x->v.mod_rev >= kv->mod_rev)
                        return false;
                ks_topic_t tc;
                if (ks_meta_topic_decode(kv->value, kv->value_len, &tc) != 0 || strlen(tc.name) != tlen ||
                    memcmp(tc.name, t, tlen) != 0 || tc.partitions < 0 || tc.partitions > KS_MAX_PARTITIONS) {
                        ks_log_warn("cluster_topic_record_invalid", "key=\"%.*s\" action=ignored", (int)kv->key_len,
                                    (const char *)kv->key);
                        return false;
                }
                if (!x && !(x = hmap_upsert(&c->topics, t, tlen))) {
                        ks_log_error("cluster_cache_nomem", "cache=topics");
                        return false;
                }
                bool changed = x->v.partitions != tc.partitions || x->v.create_rev != kv->create_rev;
                x->v.partitions = tc.partitions;
                x->v.create_rev = kv->create_rev;
                x->v.mod_rev = kv->mod_rev;
                return changed;
        }
        char k[KEY_MAX];
        int klen = snprintf(k, sizeof(k), "%.*s/%d", (int)tlen, t, p);
        hnode_t *x = hmap_find(&c->pstates, k, (size_t)klen);
        if (type == KS_KV_EV_DELETE) {
                if (!x || x->v.mod_rev >= rev)
                        return false;
                hmap_remove(&c->pstates, k, (size_t)klen);
                return true;
        }
        if (x && x->v.mod_rev >= kv->mod_rev)
                return false;
        Kafscale__Metadata__PartitionState *ps =
                kafscale__metadata__partition_state__unpack(NULL, kv->value_len, kv->value);
        int32_t epoch = -1, owner = -1;
        if (ps) {
                epoch = ps->leader_epoch;
                if (ps->leader_broker)
                        owner = parse_owner(ps->leader_broker, strlen(ps->leader_broker));
                kafscale__metadata__partition_state__free_unpacked(ps, NULL);
        } else {
                ks_log_warn("cluster_partition_state_corrupt", "key=\"%.*s\"", (int)kv->key_len,
                            (const char *)kv->key);
        }
        bool created = !x || x->v.create_rev != kv->create_rev;
        if (!x && !(x = hmap_upsert(&c->pstates, k, (size_t)klen))) {
                ks_log_error("cluster_cache_nomem", "cache=partition_states");
                return false;
        }
        x->v.epoch = epoch;
        x->v.owner = owner;
        x->v.create_rev = kv->create_rev;
        x->v.mod_rev = kv->mod_rev;
        return created;
}

/* ------------------------------------------------------------------------ */
/* Loads (start-up, and after a compaction) and watches                      */

typedef enum { CACHE_BROKERS, CACHE_PLEASES, CACHE_GLEASES, CACHE_TOPICS } cache_kind_t;

static const char *cache_prefix(cache_kind_t k)
{
        switch (k) {
        case CACHE_BROKERS:
                return KS_CLUSTER_BROKERS_PREFIX;
        case CACHE_PLEASES:
                return KS_CLUSTER_PARTITION_LEASES_PREFIX;
        case CACHE_GLEASES:
                return KS_CLUSTER_GROUP_LEASES_PREFIX;
        default:
                return TOPICS_PREFIX;
        }
}

/* Reads one cache's whole range and replaces the cache with it; *rev
 * receives the read's revision.  BLOCKING; takes mu itself. */
static ks_err_t cache_load(ks_cluster_t *c, cache_kind_t kind, int64_t *rev)
{
        const char *prefix = cache_prefix(kind);
        size_t plen = strlen(prefix);
        uint8_t end[64];
        size_t elen = ks_kv_prefix_end(prefix, plen, end);
        ks_kv_result_t res;
        ks_err_t err = ks_kv_range(c->kv, prefix, plen, end, elen, &res);
        if (err)
                return err;

        pthread_mutex_lock(&c->mu);
        switch (kind) {
        case CACHE_BROKERS:
                c->nbrokers = 0;
                c->brokers_floor = 0;
                for (size_t i = 0; i < res.count; i++)
                        brokers_apply_locked(c, KS_KV_EV_PUT, &res.kvs[i], res.kvs[i].mod_rev);
                /* Our own registration, put after this read, must survive a
                 * reload that raced with it. */
                c->brokers_floor = res.revision;
                break;
        case CACHE_PLEASES:
        case CACHE_GLEASES: {
                hmap_t fresh = {0};
                for (size_t i = 0; i < res.count; i++)
                        lease_apply_locked(&fresh, 0, plen, KS_KV_EV_PUT, &res.kvs[i], res.kvs[i].mod_rev);
                hmap_t *m = kind == CACHE_PLEASES ? &c->pleases : &c->gleases;
                /* Keep entries from our own transactions newer than the read. */
                HMAP_FOREACH(m, x)
                {
                        if (x->v.mod_rev > res.revision) {
                                hnode_t *y = hmap_upsert(&fresh, x->key, x->klen);
                                if (y)
                                        y->v = x->v;
                        }
                }
                hmap_swap_in(m, &fresh);
                if (kind == CACHE_PLEASES)
                        c->pleases_floor = res.revision;
                else
                        c->gleases_floor = res.revision;
                break;
        }
        case CACHE_TOPICS: {
                hmap_t old_ps = c->pstates;
                memset(&c->pstates, 0, sizeof(c->pstates));
                hmap_clear(&c->topics);
                c->topics_floor = 0;
                for (size_t i = 0; i < res.count; i++)
                        topics_apply_locked(c, KS_KV_EV_PUT, &res.kvs[i], res.kvs[i].mod_rev);
                HMAP_FOREACH(&old_ps, x)
                {
                        if (x->v.mod_rev > res.revision) {
                                hnode_t *y = hmap_upsert(&c->pstates, x->key, x->klen);
                                if (y)
                                        y->v = x->v;
                        }
                }
                hmap_clear(&old_ps);
                c->topics_floor = res.revision;
                break;
        }
        }
        c->dirty = true;
        pthread_cond_signal(&c->cv);
        pthread_mutex_unlock(&c->mu);
        *rev = res.revision;
        ks_kv_result_free(&res);
        return 0;
}

static void watch_events(ks_cluster_t *c, cache_kind_t kind, const ks_kv_event_t *evs, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                if (evs[i].type != KS_KV_EV_COMPACTED)
                        continue;
                int64_t rev;
                ks_log_warn("cluster_watch_compacted", "prefix=%s revision=%lld action=reload", cache_prefix(kind),
                            (long long)evs[i].revision);
                ks_err_t err = cache_load(c, kind, &rev);
                if (err)
                        ks_log_error("cluster_reload_failed", "prefix=%s err=%s", cache_prefix(kind),
                                     ks_err_name(err));
        }
        bool changed = false;
        pthread_mutex_lock(&c->mu);
        for (size_t i = 0; i < n; i++) {
                const ks_kv_event_t *ev = &evs[i];
                if (ev->type == KS_KV_EV_COMPACTED)
                        continue;
                switch (kind) {
                case CACHE_BROKERS:
                        changed |= brokers_apply_locked(c, ev->type, &ev->kv, ev->revision);
                        break;
                case CACHE_PLEASES:
                        changed |= lease_apply_locked(&c->pleases, c->pleases_floor,
                                                      sizeof(KS_CLUSTER_PARTITION_LEASES_PREFIX) - 1, ev->type,
                                                      &ev->kv, ev->revision);
                        break;
                case CACHE_GLEASES:
                        changed |= lease_apply_locked(&c->gleases, c->gleases_floor,
                                                      sizeof(KS_CLUSTER_GROUP_LEASES_PREFIX) - 1, ev->type, &ev->kv,
                                                      ev->revision);
                        break;
                case CACHE_TOPICS:
                        changed |= topics_apply_locked(c, ev->type, &ev->kv, ev->revision);
                        break;
                }
        }
        if (changed) {
                c->dirty = true;
                pthread_cond_signal(&c->cv);
        }
        pthread_mutex_unlock(&c->mu);
}

static void watch_brokers_cb(void *opaque, const ks_kv_event_t *evs, size_t n)
{
        watch_events(opaque, CACHE_BROKERS, evs, n);
}
static void watch_pleases_cb(void *opaque, const ks_kv_event_t *evs, size_t n)
{
        watch_events(opaque, CACHE_PLEASES, evs, n);
}
static void watch_gleases_cb(void *opaque, const ks_kv_event_t *evs, size_t n)
{
        watch_events(opaque, CACHE_GLEASES, evs, n);
}
static void watch_topics_cb(void *opaque, const ks_kv_event_t *evs, size_t n)
{
        watch_events(opaque, CACHE_TOPICS, evs, n);
}

static ks_err_t load_and_watch(ks_cluster_t *c, cache_kind_t kind, ks_kv_watch_cb *cb, ks_kv_watch_t **w)
{
        int64_t rev;
        ks_err_t err = cache_load(c, kind, &rev);
        if (err)
                return err;
        const char *prefix = cache_prefix(kind);
        size_t plen = strlen(prefix);
        uint8_t end[64];
        size_t elen = ks_kv_prefix_end(prefix, plen, end);
        return ks_kv_watch(c->kv, prefix, plen, end, elen, rev + 1, cb, c, w);
}

/* ------------------------------------------------------------------------ */
/* Placement over the cached live set (mu held)                              */

static int32_t place_locked(const ks_cluster_t *c, const char *key, size_t klen)
{
        uint64_t h = fnv1a64(key, klen);
        int32_t best = -1;
        uint64_t best_score = 0;
        for (int i = 0; i < c->nbrokers; i++) {
                int32_t id = c->brokers[i].info.id;
                uint64_t s = score_h(h, id);
                if (best < 0 || s > best_score || (s == best_score && id < best)) {
                        best = id;
                        best_score = s;
                }
        }
        return best;
}

static bool broker_live_locked(const ks_cluster_t *c, int32_t id)
{
        bool found;
        broker_find_locked(c, id, &found);
        return found;
}

static int group_place_key(char *buf, size_t len, const char *group)
{
        return snprintf(buf, len, "group:%s", group);
}

/* ------------------------------------------------------------------------ */
/* Registration                                                              */

static ks_err_t registration_encode(ks_cluster_t *c, uint8_t **buf, size_t *len)
{
        char started[40];
        Kafscale__Metadata__BrokerRegistration r = KAFSCALE__METADATA__BROKER_REGISTRATION__INIT;
        r.broker_id = c->idstr;
        r.host = c->host;
        r.port = c->port;
        r.rack = c->rack;
        r.started_at = ks_time_rfc3339(c->started_at_wall, started, sizeof(started));
        r.last_heartbeat = r.started_at; /* not rewritten per keepalive: the lease says it is alive */
        r.version = c->version;
        *len = kafscale__metadata__broker_registration__get_packed_size(&r);
        *buf = malloc(*len ? *len : 1);
        if (!*buf)
                return KS_ERR__NOMEM;
        kafscale__metadata__broker_registration__pack(&r, *buf);
        return 0;
}

/* Sleeps ms of real time unless the module is told to stop; false if it was. */
static bool sleep_unless_stopped(ks_cluster_t *c, int64_t ms)
{
        pthread_mutex_lock(&c->mu);
        int64_t until = now_real() + ms;
        while (!c->stop && now_real() < until) {
                struct timespec ts;
                ks_deadline_after_ms(&ts, until - now_real());
                pthread_cond_timedwait(&c->cv, &c->mu, &ts);
        }
        bool stopped = c->stop;
        pthread_mutex_unlock(&c->mu);
        return !stopped;
}

/* Grants a lease and puts our registration under it.  At start-up
 * (`startup`), a live registration of our id under another lease is waited
 * for (register_wait_ms) and then refused with KS_ERR__EXISTS; later (a
 * re-registration) it is refused at once (the caller retries).  BLOCKING;
 * ks-cluster thread or start-up. */
static ks_err_t register_session(ks_cluster_t *c, bool startup)
{
        char key[64];
        int klen = snprintf(key, sizeof(key), KS_CLUSTER_BROKERS_PREFIX "%s", c->idstr);
        int64_t prev;
        pthread_mutex_lock(&c->mu);
        prev = c->prev_lease;
        pthread_mutex_unlock(&c->mu);
        if (prev) {
                /* Our lost session's lease: if the store still has it (we
                 * could not reach it), its keys go now. */
                ks_err_t e = ks_kv_lease_revoke(c->kv, prev);
                if (e == KS_ERR__UNAVAILABLE || e == KS_ERR__TIMEOUT)
                        return e; /* the store is still out of reach: retried */
                if (e && e != KS_ERR__LEASE_LOST)
                        ks_log_warn("cluster_lease_revoke_failed", "broker=%d lease=%lld err=%s", c->id,
                                    (long long)prev, ks_err_name(e));
                pthread_mutex_lock(&c->mu);
                c->prev_lease = 0;
                pthread_mutex_unlock(&c->mu);
        }

        uint8_t *val = NULL;
        size_t vlen = 0;
        ks_err_t err = registration_encode(c, &val, &vlen);
        if (err)
                return err;
        int64_t lease = 0, sent = 0;
        int64_t deadline = now_real() + (startup && c->register_wait_ms > 0 ? c->register_wait_ms : 0);
        int64_t waiting_for = 0;
        for (int round = 0;; round++) {
                ks_kv_result_t cur;
                if ((err = ks_kv_range(c->kv, key, (size_t)klen, NULL, 0, &cur)))
                        break;
                int64_t other = cur.count ? cur.kvs[0].lease : 0;
                int64_t mod = cur.count ? cur.kvs[0].mod_rev : 0;
                ks_kv_result_free(&cur);
                if (other && other != lease) {
                        if (c->exclusive && round < 8) {
                                /* Embedded: nobody else uses this store, so
                                 * it is a previous run's; its partition and
                                 * group leases go with it. */
                                ks_log_info("cluster_stale_registration_revoked",
                                            "broker=%d lease=%lld reason=exclusive_store", c->id, (long long)other);
                                err = ks_kv_lease_revoke(c->kv, other);
                                if (err && err != KS_ERR__LEASE_LOST)
                                        break;
                                err = 0;
                                continue;
                        }
                        if (now_real() < deadline) {
                                if (waiting_for != other)
                                        ks_log_warn("cluster_registration_waiting",
                                                    "broker=%d other_lease=%lld wait_ms=%lld reason=\"broker id "
                                                    "registered under another lease; waiting for it to expire\"",
                                                    c->id, (long long)other, (long long)c->register_wait_ms);
                                waiting_for = other;
                                if (!sleep_unless_stopped(c, 100)) {
                                        err = KS_ERR__CLOSED;
                                        break;
                                }
                                continue;
                        }
                        ks_log_error("cluster_broker_id_in_use",
                                     "broker=%d other_lease=%lld msg=\"another live broker is registered with "
                                     "id %d (key %s); give this broker another KAFSCALE_BROKER_ID or stop the "
                                     "other one\"",
                                     c->id, (long long)other, c->id, key);
                        err = KS_ERR__EXISTS;
                        break;
                }
                /* The lease is granted only once the id is free, so a long
                 * wait cannot outlive it. */
                if (!lease) {
                        sent = now_clock(c);
                        if ((err = ks_kv_lease_grant(c->kv, c->ttl_s, &lease)))
                                break;
                }
                const ks_kv_cmp_t cmp = { .key = key, .key_len = (size_t)klen, .target = KS_KV_CMP_MOD,
                                          .op = KS_KV_EQUAL, .number = mod };
                const ks_kv_op_t put = { .type = KS_KV_OP_PUT, .key = key, .key_len = (size_t)klen, .value = val,
                                         .value_len = vlen, .lease = lease };
                bool ok = false;
                int64_t rev = 0;
                err = ks_kv_txn(c->kv, &cmp, 1, &put, 1, NULL, 0, &ok, &rev);
                if (err == KS_ERR__LEASE_LOST && round < 50) {
                        lease = 0; /* expired before it was used: a new one */
                        err = 0;
                        continue;
                }
                if (err)
                        break;
                if (!ok) {
                        if (round > 50) {
                                err = KS_ERR__CONFLICT;
                                break;
                        }
                        continue;
                }
                broker_ent_t self = { .lease = lease, .mod_rev = rev };
                self.info.id = c->id;
                snprintf(self.info.host, sizeof(self.info.host), "%s", c->host);
                self.info.port = c->port;
                snprintf(self.info.rack, sizeof(self.info.rack), "%s", c->rack);
                pthread_mutex_lock(&c->mu);
                c->lease = lease;
                c->lost = false;
                c->last_ok_ms = sent;
                c->next_ka_ms = sent + c->ka_interval_ms;
                c->sessions++;
                bool found;
                int i = broker_find_locked(c, c->id, &found);
                if (!found || c->brokers[i].mod_rev < rev)
                        broker_put_locked(c, &self);
                c->dirty = true;
                pthread_cond_signal(&c->cv);
                pthread_cond_signal(&c->ka_cv);
                pthread_mutex_unlock(&c->mu);
                ks_log_info("cluster_registered",
                            "broker=%d lease=%lld ttl_s=%lld host=%s port=%d rack=\"%s\" revision=%lld", c->id,
                            (long long)lease, (long long)c->ttl_s, c->host, c->port, c->rack, (long long)rev);
                free(val);
                return 0;
        }
        free(val);
        if (lease)
                ks_kv_lease_revoke(c->kv, lease); /* best effort: nothing is attached */
        return err;
}

/* ------------------------------------------------------------------------ */
/* Keepalive thread                                                          */

static void *ka_main(void *arg)
{
        ks_cluster_t *c = arg;
        pthread_setname_np(pthread_self(), "ks-cluster-ka");
        pthread_mutex_lock(&c->mu);
        while (!c->ka_stop) {
                int64_t now = now_clock(c);
                if (c->lease == 0 || c->lost) {
                        wait_locked(c, &c->ka_cv, WAIT_MAX_MS);
                        continue;
                }
                if (now < c->next_ka_ms) {
                        wait_locked(c, &c->ka_cv, c->next_ka_ms - now);
                        continue;
                }
                int64_t lease = c->lease;
                pthread_mutex_unlock(&c->mu);
                int64_t sent = now_clock(c);
                int64_t ttl = 0;
                ks_err_t err = ks_kv_lease_keepalive(c->kv, lease, &ttl);
                pthread_mutex_lock(&c->mu);
                if (c->lease != lease || c->lost)
                        continue; /* the session changed meanwhile */
                if (!err) {
                        if (sent > c->last_ok_ms)
                                c->last_ok_ms = sent;
                        c->next_ka_ms = sent + c->ka_interval_ms;
                } else if (err == KS_ERR__LEASE_LOST) {
                        ks_log_warn("cluster_lease_lost", "broker=%d lease=%lld reason=keepalive", c->id,
                                    (long long)lease);
                        c->lost = true;
                        pthread_cond_signal(&c->cv);
                } else {
                        int64_t retry = c->ka_interval_ms < KA_RETRY_MS ? c->ka_interval_ms : KA_RETRY_MS;
                        ks_log_warn("cluster_keepalive_failed",
                                    "broker=%d lease=%lld err=%s since_last_ok_ms=%lld ttl_ms=%lld", c->id,
                                    (long long)lease, ks_err_name(err), (long long)(sent - c->last_ok_ms),
                                    (long long)c->ttl_ms);
                        c->next_ka_ms = sent + retry;
                }
        }
        pthread_mutex_unlock(&c->mu);
        return NULL;
}

/* ------------------------------------------------------------------------ */
/* Store operations of the ks-cluster thread                                 */

/* Deletes a lease key if it is still the one created at revision `rev`. */
static ks_err_t delete_lease_key(ks_cluster_t *c, const char *key, size_t klen, int64_t rev)
{
        const ks_kv_cmp_t cmp = { .key = key, .key_len = klen, .target = KS_KV_CMP_CREATE, .op = KS_KV_EQUAL,
                                  .number = rev };
        const ks_kv_op_t del = { .type = KS_KV_OP_DELETE, .key = key, .key_len = klen };
        bool ok;
        ks_err_t err = ks_kv_txn(c->kv, &cmp, 1, &del, 1, NULL, 0, &ok, NULL);
        if (err)
                ks_log_warn("cluster_lease_key_delete_failed", "key=%.*s err=%s action=retry", (int)klen, key,
                            ks_err_name(err));
        return err;
}

static void note_lease_lost(ks_cluster_t *c, int64_t lease)
{
        pthread_mutex_lock(&c->mu);
        if (c->lease == lease && !c->lost) {
                ks_log_warn("cluster_lease_lost", "broker=%d lease=%lld reason=write_refused", c->id,
                            (long long)lease);
                c->lost = true;
        }
        pthread_mutex_unlock(&c->mu);
}

/* The new epoch history: entries that began before `start` (Kafka's
 * LeaderEpochFileCache.assign drops the others: those epochs wrote
 * nothing), then {epoch, start}; at most KS_CLUSTER_EPOCH_HISTORY_MAX,
 * dropping the oldest.  Fills ents/ptrs; returns the count. */
static size_t epoch_history_extend(const Kafscale__Metadata__PartitionState *ps, int32_t epoch, int64_t start,
                                   Kafscale__Metadata__EpochEntry *ents, Kafscale__Metadata__EpochEntry **ptrs)
{
        size_t keep = 0;
        if (ps)
                while (keep < ps->n_epoch_history && ps->epoch_history[keep] &&
                       ps->epoch_history[keep]->start_offset < start && ps->epoch_history[keep]->epoch < epoch)
                        keep++;
        size_t from = keep + 1 > KS_CLUSTER_EPOCH_HISTORY_MAX ? keep + 1 - KS_CLUSTER_EPOCH_HISTORY_MAX : 0;
        size_t n = 0;
        for (size_t i = from; i < keep; i++) {
                Kafscale__Metadata__EpochEntry e = KAFSCALE__METADATA__EPOCH_ENTRY__INIT;
                e.epoch = ps->epoch_history[i]->epoch;
                e.start_offset = ps->epoch_history[i]->start_offset;
                ents[n] = e;
                n++;
        }
        Kafscale__Metadata__EpochEntry e = KAFSCALE__METADATA__EPOCH_ENTRY__INIT;
        e.epoch = epoch;
        e.start_offset = start;
        ents[n++] = e;
        for (size_t i = 0; i < n; i++)
                ptrs[i] = &ents[i];
        return n;
}

typedef enum { ACQ_DONE, ACQ_TAKEN, ACQ_RETRY, ACQ_FAILED } acq_result_t;

/* One attempt to take a partition: reads its PartitionState and committed
 * next offset, then in one transaction — lease key absent, both records
 * unchanged since read — creates the lease key under our lease and writes
 * the PartitionState with leader = us, epoch + 1 and the history extended.
 * ks-cluster thread.  BLOCKING. */
static acq_result_t acquire_partition_once(ks_cluster_t *c, const char *topic, int32_t partition, int64_t lease)
{
        char lk[KEY_MAX], psk[KEY_MAX], nk[KEY_MAX];
        int lkl = plkey(lk, sizeof(lk), topic, partition);
        int pskl = pskey(psk, sizeof(psk), topic, partition, "");
        int nkl = pskey(nk, sizeof(nk), topic, partition, "/next_offset");
        ks_kv_result_t psr = {0}, nr = {0};
        ks_err_t err;
        acq_result_t result = ACQ_FAILED;
        Kafscale__Metadata__PartitionState *ps = NULL;
        uint8_t *buf = NULL;

        if ((err = ks_kv_range(c->kv, psk, (size_t)pskl, NULL, 0, &psr)) ||
            (err = ks_kv_range(c->kv, nk, (size_t)nkl, NULL, 0, &nr))) {
                ks_log_warn("cluster_acquire_failed", "topic=%s partition=%d err=%s action=retry", topic, partition,
                            ks_err_name(err));
                goto out;
        }
        int64_t ps_mod = psr.count ? psr.kvs[0].mod_rev : 0;
        int64_t ps_create = psr.count ? psr.kvs[0].create_rev : 0;
        int64_t n_mod = nr.count ? nr.kvs[0].mod_rev : 0;
        int64_t next = 0;
        if (nr.count && !parse_dec(nr.kvs[0].value, nr.kvs[0].value_len, INT64_MAX, &next)) {
                ks_log_error("cluster_acquire_failed", "topic=%s partition=%d reason=\"next_offset is not a "
                             "decimal\" action=skipped", topic, partition);
                goto out;
        }
        Kafscale__Metadata__PartitionState fresh = KAFSCALE__METADATA__PARTITION_STATE__INIT;
        Kafscale__Metadata__PartitionState *w = &fresh;
        if (psr.count) {
                ps = kafscale__metadata__partition_state__unpack(NULL, psr.kvs[0].value_len, psr.kvs[0].value);
                if (!ps) {
                        ks_log_error("cluster_acquire_failed", "topic=%s partition=%d reason=\"PartitionState "
                                     "does not decode\" action=skipped", topic, partition);
                        goto out;
                }
                w = ps;
        } else {
                fresh.topic = (char *)topic;
                fresh.partition = partition;
                fresh.leader_broker = (char *)"";
                fresh.active_segment = (char *)"";
        }
        int32_t old = w->leader_epoch;
        if (w->n_epoch_history && w->epoch_history[w->n_epoch_history - 1] &&
            w->epoch_history[w->n_epoch_history - 1]->epoch > old)
                old = w->epoch_history[w->n_epoch_history - 1]->epoch;
        if (old < 0)
                old = 0;
        int32_t epoch = old + 1;
        Kafscale__Metadata__EpochEntry ents[KS_CLUSTER_EPOCH_HISTORY_MAX];
        Kafscale__Metadata__EpochEntry *ptrs[KS_CLUSTER_EPOCH_HISTORY_MAX];
        size_t nh = epoch_history_extend(w, epoch, next, ents, ptrs);

        /* Our fields into the (possibly decoded) record; the decoded ones
         * are put back before it is freed. */
        char *o_leader = w->leader_broker;
        int32_t o_epoch = w->leader_epoch;
        size_t o_nh = w->n_epoch_history;
        Kafscale__Metadata__EpochEntry **o_h = w->epoch_history;
        w->leader_broker = c->idstr;
        w->leader_epoch = epoch;
        w->n_epoch_history = nh;
        w->epoch_history = ptrs;
        size_t blen = kafscale__metadata__partition_state__get_packed_size(w);
        buf = malloc(blen ? blen : 1);
        if (buf)
                kafscale__metadata__partition_state__pack(w, buf);
        w->leader_broker = o_leader;
        w->leader_epoch = o_epoch;
        w->n_epoch_history = o_nh;
        w->epoch_history = o_h;
        if (!buf)
                goto out;

        const ks_kv_cmp_t cmps[3] = {
                { .key = lk, .key_len = (size_t)lkl, .target = KS_KV_CMP_VERSION, .op = KS_KV_EQUAL, .number = 0 },
                { .key = psk, .key_len = (size_t)pskl, .target = KS_KV_CMP_MOD, .op = KS_KV_EQUAL, .number = ps_mod },
                { .key = nk, .key_len = (size_t)nkl, .target = KS_KV_CMP_MOD, .op = KS_KV_EQUAL, .number = n_mod },
        };
        const ks_kv_op_t ops[2] = {
                { .type = KS_KV_OP_PUT, .key = lk, .key_len = (size_t)lkl, .value = c->idstr, .value_len = c->idlen,
                  .lease = lease },
                { .type = KS_KV_OP_PUT, .key = psk, .key_len = (size_t)pskl, .value = buf, .value_len = blen },
        };
        bool ok = false;
        int64_t rev = 0;
        err = ks_kv_txn(c->kv, cmps, 3, ops, 2, NULL, 0, &ok, &rev);
        if (err == KS_ERR__LEASE_LOST) {
                note_lease_lost(c, lease);
                goto out;
        }
        if (err) {
                /* Outcome unknown (store unreachable): if it applied, the
                 * next pass finds the key under our lease and adopts it. */
                ks_log_warn("cluster_acquire_failed", "topic=%s partition=%d err=%s action=retry", topic, partition,
                            ks_err_name(err));
                goto out;
        }
        if (!ok) {
                ks_kv_result_t lr;
                result = ACQ_RETRY;
                if (ks_kv_range(c->kv, lk, (size_t)lkl, NULL, 0, &lr) == 0) {
                        if (lr.count)
                                result = ACQ_TAKEN;
                        ks_kv_result_free(&lr);
                }
                goto out;
        }

        char k[KEY_MAX];
        int kl = snprintf(k, sizeof(k), "%s/%d", topic, partition);
        pthread_mutex_lock(&c->mu);
        hnode_t *o = hmap_upsert(&c->owned_p, k, (size_t)kl);
        hnode_t *l = hmap_upsert(&c->pleases, k, (size_t)kl);
        hnode_t *s = hmap_upsert(&c->pstates, k, (size_t)kl);
        if (o) {
                memset(&o->v, 0, sizeof(o->v));
                o->v.partition = partition;
                o->v.epoch = epoch;
                o->v.term_rev = rev;
                o->v.ps_create_rev = ps_create ? ps_create : rev;
        }
        if (l && l->v.mod_rev < rev)
                l->v = (entry_t){ .owner = c->id, .lease = lease, .create_rev = rev, .mod_rev = rev };
        if (s && s->v.mod_rev < rev)
                s->v = (entry_t){ .owner = c->id, .epoch = epoch, .create_rev = ps_create ? ps_create : rev,
                                  .mod_rev = rev };
        c->n_acquired++;
        pthread_mutex_unlock(&c->mu);
        if (!o) {
                ks_log_error("cluster_cache_nomem", "cache=owned");
                goto out; /* the next pass adopts it */
        }
        ks_log_debug("partition_acquired", "topic=%s partition=%d epoch=%d start_offset=%lld revision=%lld", topic,
                     partition, epoch, (long long)next, (long long)rev);
        if (c->hooks.partition_acquired)
                c->hooks.partition_acquired(c->opaque, topic, partition, epoch);
        result = ACQ_DONE;
out:
        if (ps)
                kafscale__metadata__partition_state__free_unpacked(ps, NULL);
        free(buf);
        ks_kv_result_free(&psr);
        ks_kv_result_free(&nr);
        return result;
}

static bool acquire_partition(ks_cluster_t *c, const char *topic, int32_t partition, int64_t lease)
{
        for (int i = 0; i < ACQUIRE_ATTEMPTS; i++) {
                acq_result_t r = acquire_partition_once(c, topic, partition, lease);
                if (r != ACQ_RETRY)
                        return r == ACQ_DONE;
        }
        return false;
}

/* A lease key under our current lease that we do not track (an acquisition
 * whose outcome was unknown): take it over as it is, at the epoch its
 * PartitionState names.  BLOCKING. */
static bool adopt_partition(ks_cluster_t *c, const char *topic, int32_t partition, int64_t term_rev)
{
        char psk[KEY_MAX];
        int pskl = pskey(psk, sizeof(psk), topic, partition, "");
        ks_kv_result_t r;
        if (ks_kv_range(c->kv, psk, (size_t)pskl, NULL, 0, &r) != 0)
                return false;
        bool ok = false;
        int32_t epoch = 0;
        int64_t ps_create = 0;
        if (r.count) {
                Kafscale__Metadata__PartitionState *ps =
                        kafscale__metadata__partition_state__unpack(NULL, r.kvs[0].value_len, r.kvs[0].value);
                if (ps) {
                        ok = ps->leader_broker && !strcmp(ps->leader_broker, c->idstr) &&
                             r.kvs[0].mod_rev >= term_rev;
                        epoch = ps->leader_epoch;
                        ps_create = r.kvs[0].create_rev;
                        kafscale__metadata__partition_state__free_unpacked(ps, NULL);
                }
        }
        ks_kv_result_free(&r);
        if (!ok)
                return false;
        char k[KEY_MAX];
        int kl = snprintf(k, sizeof(k), "%s/%d", topic, partition);
        pthread_mutex_lock(&c->mu);
        hnode_t *o = hmap_upsert(&c->owned_p, k, (size_t)kl);
        if (o) {
                memset(&o->v, 0, sizeof(o->v));
                o->v.partition = partition;
                o->v.epoch = epoch;
                o->v.term_rev = term_rev;
                o->v.ps_create_rev = ps_create;
                c->n_acquired++;
        }
        pthread_mutex_unlock(&c->mu);
        if (!o)
                return false;
        ks_log_info("partition_adopted", "topic=%s partition=%d epoch=%d", topic, partition, epoch);
        if (c->hooks.partition_acquired)
                c->hooks.partition_acquired(c->opaque, topic, partition, epoch);
        return true;
}

/* ------------------------------------------------------------------------ */
/* Groups                                                                    */

/* Serves one ks_cluster_acquire_group request.  ks-cluster thread. */
static ks_err_t acquire_group(ks_cluster_t *c, const char *group)
{
        char lk[KS_CLUSTER_GROUP_MAX + 64], pk[KS_CLUSTER_GROUP_MAX + 16];
        int lkl = snprintf(lk, sizeof(lk), KS_CLUSTER_GROUP_LEASES_PREFIX "%s", group);
        int pkl = group_place_key(pk, sizeof(pk), group);
        size_t glen = strlen(group);

        pthread_mutex_lock(&c->mu);
        if (!session_valid_locked(c)) {
                pthread_mutex_unlock(&c->mu);
                return KS_ERR__UNAVAILABLE;
        }
        int64_t lease = c->lease;
        hnode_t *o = hmap_find(&c->owned_g, group, glen);
        if (o && !o->v.releasing) {
                pthread_mutex_unlock(&c->mu);
                return 0;
        }
        int32_t place = place_locked(c, pk, (size_t)pkl);
        hnode_t *l = hmap_find(&c->gleases, group, glen);
        int64_t adopt_rev = 0;
        if (l && l->v.lease == lease && l->v.owner == c->id && place == c->id)
                adopt_rev = l->v.create_rev;
        else if (o || l || place != c->id) {
                pthread_mutex_unlock(&c->mu);
                return KS_ERR_NOT_COORDINATOR;
        }
        pthread_mutex_unlock(&c->mu);

        int64_t rev = adopt_rev;
        if (!adopt_rev) {
                const ks_kv_cmp_t cmp = { .key = lk, .key_len = (size_t)lkl, .target = KS_KV_CMP_VERSION,
                                          .op = KS_KV_EQUAL, .number = 0 };
                const ks_kv_op_t put = { .type = KS_KV_OP_PUT, .key = lk, .key_len = (size_t)lkl, .value = c->idstr,
                                         .value_len = c->idlen, .lease = lease };
                bool ok = false;
                ks_err_t err = ks_kv_txn(c->kv, &cmp, 1, &put, 1, NULL, 0, &ok, &rev);
                if (err == KS_ERR__LEASE_LOST)
                        note_lease_lost(c, lease);
                if (err) {
                        ks_log_warn("cluster_group_acquire_failed", "group=\"%s\" err=%s", group, ks_err_name(err));
                        return KS_ERR__UNAVAILABLE;
                }
                if (!ok) {
                        /* Held already: by us (an earlier attempt whose
                         * outcome was unknown) or by someone else. */
                        ks_kv_result_t r;
                        if (ks_kv_range(c->kv, lk, (size_t)lkl, NULL, 0, &r) != 0)
                                return KS_ERR__UNAVAILABLE;
                        bool ours = r.count && r.kvs[0].lease == lease;
                        rev = ours ? r.kvs[0].create_rev : 0;
                        ks_kv_result_free(&r);
                        if (!ours)
                                return KS_ERR_NOT_COORDINATOR;
                }
        }
        pthread_mutex_lock(&c->mu);
        o = hmap_upsert(&c->owned_g, group, glen);
        hnode_t *lc = hmap_upsert(&c->gleases, group, glen);
        if (o) {
                memset(&o->v, 0, sizeof(o->v));
                o->v.term_rev = rev;
                c->n_acquired++;
        }
        if (lc && lc->v.mod_rev < rev)
                lc->v = (entry_t){ .owner = c->id, .lease = lease, .create_rev = rev, .mod_rev = rev };
        pthread_mutex_unlock(&c->mu);
        if (!o)
                return KS_ERR__NOMEM;
        ks_log_debug("group_acquired", "group=\"%s\" revision=%lld", group, (long long)rev);
        if (c->hooks.group_acquired)
                c->hooks.group_acquired(c->opaque, group);
        return 0;
}

/* Serves queued group requests.  ks-cluster thread. */
static void serve_group_requests(ks_cluster_t *c)
{
        for (;;) {
                pthread_mutex_lock(&c->mu);
                greq_t *r = c->greq_head;
                if (!r || c->stop) {
                        pthread_mutex_unlock(&c->mu);
                        return;
                }
                c->greq_head = r->next;
                if (!c->greq_head)
                        c->greq_tail = NULL;
                pthread_mutex_unlock(&c->mu);

                ks_err_t err = acquire_group(c, r->group);

                pthread_mutex_lock(&c->mu);
                r->result = err;
                r->done = true;
                bool free_it = r->abandoned;
                pthread_cond_broadcast(&c->done_cv);
                pthread_mutex_unlock(&c->mu);
                if (free_it)
                        free(r);
        }
}

/* ------------------------------------------------------------------------ */
/* Rebalance: plan (under mu) then act (without it)                          */

typedef enum {
        ACT_ACQUIRE,     /* placed on us, lease key free */
        ACT_ADOPT,       /* our lease key, not tracked */
        ACT_RELEASE,     /* owned, placed elsewhere: hook, then delete the key */
        ACT_LOST,        /* owned, but the key or the partition is gone */
        ACT_DELETE_KEY,  /* our lease key, not owned, placed elsewhere or partition gone */
        ACT_G_RELEASE,
        ACT_G_LOST,
        ACT_G_DELETE_KEY,
        ACT_REREGISTER,  /* our registration vanished while the lease lives */
} act_type_t;

typedef struct action {
        act_type_t type;
        int32_t partition;
        int64_t rev;      /* the lease key's create revision (deletes compare it) */
        bool delete_key;  /* ACT_LOST / ACT_G_LOST: the key is still ours, delete it */
        char *name;       /* topic or group */
} action_t;

typedef struct plan {
        action_t *a;
        size_t n, cap;
        bool nomem;
} plan_t;

static void plan_add(plan_t *pl, act_type_t type, const char *name, size_t nlen, int32_t partition, int64_t rev,
                     bool delete_key)
{
        if (pl->n == pl->cap) {
                size_t cap = pl->cap ? pl->cap * 2 : 32;
                action_t *n = realloc(pl->a, cap * sizeof(*n));
                if (!n) {
                        pl->nomem = true;
                        return;
                }
                pl->a = n;
                pl->cap = cap;
        }
        char *s = malloc(nlen + 1);
        if (!s) {
                pl->nomem = true;
                return;
        }
        memcpy(s, name, nlen);
        s[nlen] = '\0';
        pl->a[pl->n++] = (action_t){ type, partition, rev, delete_key, s };
}

static void plan_free(plan_t *pl)
{
        for (size_t i = 0; i < pl->n; i++)
                free(pl->a[i].name);
        free(pl->a);
        memset(pl, 0, sizeof(*pl));
}

/* Is "t/p" (key) a partition of a topic the cache has?  mu held. */
static bool partition_exists_locked(const ks_cluster_t *c, const char *key, size_t klen)
{
        size_t tlen;
        int32_t p;
        if (!split_tp(key, klen, &tlen, &p))
                return false;
        hnode_t *t = hmap_find(&c->topics, key, tlen);
        return t && p < t->v.partitions;
}

static void plan_locked(ks_cluster_t *c, plan_t *pl)
{
        const int32_t self = c->id;
        const int64_t lease = c->lease;
        bool self_live = broker_live_locked(c, self);
        char k[KEY_MAX];

        if (!self_live)
                plan_add(pl, ACT_REREGISTER, "", 0, 0, 0, false);

        /* What we own. */
        HMAP_FOREACH(&c->owned_p, x)
        {
                if (x->v.releasing)
                        continue;
                size_t tlen;
                int32_t p;
                split_tp(x->key, x->klen, &tlen, &p);
                hnode_t *l = hmap_find(&c->pleases, x->key, x->klen);
                hnode_t *s = hmap_find(&c->pstates, x->key, x->klen);
                bool key_ours = l && l->v.create_rev == x->v.term_rev;
                bool valid = key_ours && partition_exists_locked(c, x->key, x->klen) && s &&
                             s->v.create_rev == x->v.ps_create_rev;
                if (!valid)
                        plan_add(pl, ACT_LOST, x->key, tlen, p, x->v.term_rev, key_ours);
                else if (self_live && place_locked(c, x->key, x->klen) != self)
                        plan_add(pl, ACT_RELEASE, x->key, tlen, p, x->v.term_rev, false);
        }
        /* Partitions placed on us whose lease key is free; our own keys we
         * do not track. */
        HMAP_FOREACH(&c->topics, t)
        {
                for (int32_t p = 0; p < t->v.partitions; p++) {
                        int kl = snprintf(k, sizeof(k), "%s/%d", t->key, p);
                        if (hmap_find(&c->owned_p, k, (size_t)kl))
                                continue;
                        hnode_t *l = hmap_find(&c->pleases, k, (size_t)kl);
                        bool placed_here = self_live && place_locked(c, k, (size_t)kl) == self;
                        if (!l) {
                                if (placed_here)
                                        plan_add(pl, ACT_ACQUIRE, t->key, t->klen, p, 0, false);
                        } else if (l->v.lease == lease && l->v.owner == self) {
                                plan_add(pl, placed_here ? ACT_ADOPT : ACT_DELETE_KEY, t->key, t->klen, p,
                                         l->v.create_rev, false);
                        }
                }
        }
        /* Our lease keys of partitions that no longer exist. */
        HMAP_FOREACH(&c->pleases, l)
        {
                if (l->v.lease != lease || hmap_find(&c->owned_p, l->key, l->klen) ||
                    partition_exists_locked(c, l->key, l->klen))
                        continue;
                size_t tlen;
                int32_t p;
                if (split_tp(l->key, l->klen, &tlen, &p))
                        plan_add(pl, ACT_DELETE_KEY, l->key, tlen, p, l->v.create_rev, false);
        }
        /* Groups. */
        HMAP_FOREACH(&c->owned_g, x)
        {
                if (x->v.releasing)
                        continue;
                hnode_t *l = hmap_find(&c->gleases, x->key, x->klen);
                int kl = group_place_key(k, sizeof(k), x->key);
                if (!l || l->v.create_rev != x->v.term_rev)
                        plan_add(pl, ACT_G_LOST, x->key, x->klen, 0, x->v.term_rev, false);
                else if (self_live && (size_t)kl < sizeof(k) && place_locked(c, k, (size_t)kl) != self)
                        plan_add(pl, ACT_G_RELEASE, x->key, x->klen, 0, x->v.term_rev, false);
        }
        HMAP_FOREACH(&c->gleases, l)
        {
                if (l->v.lease != lease || l->v.owner != self || hmap_find(&c->owned_g, l->key, l->klen))
                        continue;
                int kl = group_place_key(k, sizeof(k), l->key);
                if (self_live && (size_t)kl < sizeof(k) && place_locked(c, k, (size_t)kl) != self)
                        plan_add(pl, ACT_G_DELETE_KEY, l->key, l->klen, 0, l->v.create_rev, false);
        }
}

/* Should a pass stop early?  Takes mu. */
static bool pass_interrupted(ks_cluster_t *c)
{
        pthread_mutex_lock(&c->mu);
        bool stop = c->stop || !session_valid_locked(c);
        pthread_mutex_unlock(&c->mu);
        return stop;
}

static void do_release_partition(ks_cluster_t *c, const char *topic, int32_t partition, int64_t rev)
{
        char k[KEY_MAX], lk[KEY_MAX];
        int kl = snprintf(k, sizeof(k), "%s/%d", topic, partition);
        int lkl = plkey(lk, sizeof(lk), topic, partition);
        pthread_mutex_lock(&c->mu);
        hnode_t *o = hmap_find(&c->owned_p, k, (size_t)kl);
        if (o)
                o->v.releasing = true;
        pthread_mutex_unlock(&c->mu);
        if (!o)
                return;
        ks_log_debug("partition_release", "topic=%s partition=%d", topic, partition);
        if (c->hooks.partition_release)
                c->hooks.partition_release(c->opaque, topic, partition);
        delete_lease_key(c, lk, (size_t)lkl, rev); /* on failure: a later pass deletes it (ACT_DELETE_KEY) */
        pthread_mutex_lock(&c->mu);
        hmap_remove(&c->owned_p, k, (size_t)kl);
        c->n_released++;
        pthread_mutex_unlock(&c->mu);
}

static void do_release_group(ks_cluster_t *c, const char *group, int64_t rev)
{
        char lk[KS_CLUSTER_GROUP_MAX + 64];
        int lkl = snprintf(lk, sizeof(lk), KS_CLUSTER_GROUP_LEASES_PREFIX "%s", group);
        size_t glen = strlen(group);
        pthread_mutex_lock(&c->mu);
        hnode_t *o = hmap_find(&c->owned_g, group, glen);
        if (o)
                o->v.releasing = true;
        pthread_mutex_unlock(&c->mu);
        if (!o)
                return;
        ks_log_debug("group_release", "group=\"%s\"", group);
        if (c->hooks.group_release)
                c->hooks.group_release(c->opaque, group);
        delete_lease_key(c, lk, (size_t)lkl, rev);
        pthread_mutex_lock(&c->mu);
        hmap_remove(&c->owned_g, group, glen);
        c->n_released++;
        pthread_mutex_unlock(&c->mu);
}

/* Puts our registration again under the current lease (an operator or a
 * tool deleted it while the lease lives). */
static void reput_registration(ks_cluster_t *c, int64_t lease)
{
        char key[64];
        int klen = snprintf(key, sizeof(key), KS_CLUSTER_BROKERS_PREFIX "%s", c->idstr);
        uint8_t *val;
        size_t vlen;
        if (registration_encode(c, &val, &vlen))
                return;
        const ks_kv_cmp_t cmp = { .key = key, .key_len = (size_t)klen, .target = KS_KV_CMP_VERSION,
                                  .op = KS_KV_EQUAL, .number = 0 };
        const ks_kv_op_t put = { .type = KS_KV_OP_PUT, .key = key, .key_len = (size_t)klen, .value = val,
                                 .value_len = vlen, .lease = lease };
        bool ok = false;
        int64_t rev = 0;
        ks_err_t err = ks_kv_txn(c->kv, &cmp, 1, &put, 1, NULL, 0, &ok, &rev);
        free(val);
        if (err == KS_ERR__LEASE_LOST)
                note_lease_lost(c, lease);
        else if (!err && ok)
                ks_log_warn("cluster_registration_restored", "broker=%d lease=%lld revision=%lld", c->id,
                            (long long)lease, (long long)rev);
}

/* One rebalance pass.  ks-cluster thread. */
static void rebalance_pass(ks_cluster_t *c)
{
        if (c->membership_only)
                return;
        plan_t pl = {0};
        pthread_mutex_lock(&c->mu);
        if (!session_valid_locked(c)) {
                pthread_mutex_unlock(&c->mu);
                return;
        }
        int64_t lease = c->lease;
        plan_locked(c, &pl);
        int live = c->nbrokers;
        pthread_mutex_unlock(&c->mu);

        int acquired = 0, released = 0, lost = 0, failed = 0;
        for (size_t i = 0; i < pl.n; i++) {
                action_t *a = &pl.a[i];
                if (pass_interrupted(c)) {
                        failed++;
                        break;
                }
                char lk[KS_CLUSTER_GROUP_MAX + 64];
                int lkl;
                switch (a->type) {
                case ACT_REREGISTER:
                        reput_registration(c, lease);
                        break;
                case ACT_ACQUIRE:
                        if (acquire_partition(c, a->name, a->partition, lease))
                                acquired++;
                        else
                                failed++;
                        break;
                case ACT_ADOPT:
                        if (adopt_partition(c, a->name, a->partition, a->rev)) {
                                acquired++;
                        } else {
                                lkl = plkey(lk, sizeof(lk), a->name, a->partition);
                                delete_lease_key(c, lk, (size_t)lkl, a->rev);
                        }
                        break;
                case ACT_RELEASE:
                        do_release_partition(c, a->name, a->partition, a->rev);
                        released++;
                        break;
                case ACT_LOST: {
                        char k[KEY_MAX];
                        int kl = snprintf(k, sizeof(k), "%s/%d", a->name, a->partition);
                        pthread_mutex_lock(&c->mu);
                        hmap_remove(&c->owned_p, k, (size_t)kl);
                        c->n_lost++;
                        pthread_mutex_unlock(&c->mu);
                        ks_log_warn("partition_lost", "topic=%s partition=%d reason=%s", a->name, a->partition,
                                    a->delete_key ? "partition_deleted" : "lease_key_gone");
                        if (c->hooks.partition_lost)
                                c->hooks.partition_lost(c->opaque, a->name, a->partition, a->delete_key);
                        if (a->delete_key) {
                                lkl = plkey(lk, sizeof(lk), a->name, a->partition);
                                delete_lease_key(c, lk, (size_t)lkl, a->rev);
                        }
                        lost++;
                        break;
                }
                case ACT_DELETE_KEY:
                        lkl = plkey(lk, sizeof(lk), a->name, a->partition);
                        delete_lease_key(c, lk, (size_t)lkl, a->rev);
                        break;
                case ACT_G_RELEASE:
                        do_release_group(c, a->name, a->rev);
                        released++;
                        break;
                case ACT_G_LOST:
                        pthread_mutex_lock(&c->mu);
                        hmap_remove(&c->owned_g, a->name, strlen(a->name));
                        c->n_lost++;
                        pthread_mutex_unlock(&c->mu);
                        ks_log_warn("group_lost", "group=\"%s\" reason=lease_key_gone", a->name);
                        if (c->hooks.group_lost)
                                c->hooks.group_lost(c->opaque, a->name);
                        lost++;
                        break;
                case ACT_G_DELETE_KEY:
                        lkl = snprintf(lk, sizeof(lk), KS_CLUSTER_GROUP_LEASES_PREFIX "%s", a->name);
                        delete_lease_key(c, lk, (size_t)lkl, a->rev);
                        break;
                }
                serve_group_requests(c);
        }
        if (acquired || released || lost)
                ks_log_info("cluster_rebalance", "broker=%d live=%d acquired=%d released=%d lost=%d failed=%d",
                            c->id, live, acquired, released, lost, failed);
        pthread_mutex_lock(&c->mu);
        c->passes++;
        if (pl.nomem)
                c->dirty = true;
        pthread_mutex_unlock(&c->mu);
        plan_free(&pl);
}

/* ------------------------------------------------------------------------ */
/* Session loss and shutdown                                                 */

typedef struct namelist {
        char **v;
        int32_t *p;
        size_t n;
} namelist_t;

/* Moves every owned entry of `m` into a list (names, partitions) and
 * empties the map.  mu held. */
static void take_owned_locked(hmap_t *m, bool partitions, namelist_t *out)
{
        memset(out, 0, sizeof(*out));
        out->v = calloc(m->n ? m->n : 1, sizeof(*out->v));
        out->p = calloc(m->n ? m->n : 1, sizeof(*out->p));
        if (!out->v || !out->p) {
                free(out->v);
                free(out->p);
                memset(out, 0, sizeof(*out));
                hmap_clear(m);
                return;
        }
        HMAP_FOREACH(m, x)
        {
                size_t len = x->klen;
                if (partitions) {
                        int32_t p;
                        if (!split_tp(x->key, x->klen, &len, &p))
                                continue;
                        out->p[out->n] = p;
                }
                char *s = malloc(len + 1);
                if (!s)
                        continue;
                memcpy(s, x->key, len);
                s[len] = '\0';
                out->v[out->n++] = s;
        }
        hmap_clear(m);
}

static void namelist_free(namelist_t *l)
{
        for (size_t i = 0; i < l->n; i++)
                free(l->v[i]);
        free(l->v);
        free(l->p);
}

/* The session is gone (keepalive said so, or TTL passed since the last
 * confirmed keepalive): everything owned is lost.  ks-cluster thread. */
static void session_lost(ks_cluster_t *c)
{
        namelist_t parts, groups;
        pthread_mutex_lock(&c->mu);
        int64_t lease = c->lease;
        int64_t since = now_clock(c) - c->last_ok_ms;
        bool said = c->lost;
        c->prev_lease = lease;
        c->lease = 0;
        c->lost = false;
        take_owned_locked(&c->owned_p, true, &parts);
        take_owned_locked(&c->owned_g, false, &groups);
        c->n_lost += (int64_t)(parts.n + groups.n);
        pthread_mutex_unlock(&c->mu);

        ks_log_warn("cluster_session_lost",
                    "broker=%d lease=%lld reason=%s since_last_keepalive_ms=%lld ttl_ms=%lld partitions=%zu "
                    "groups=%zu action=reregister",
                    c->id, (long long)lease, said ? "lease_gone" : "keepalive_timeout", (long long)since,
                    (long long)c->ttl_ms, parts.n, groups.n);
        for (size_t i = 0; i < parts.n; i++)
                if (c->hooks.partition_lost)
                        c->hooks.partition_lost(c->opaque, parts.v[i], parts.p[i], false);
        for (size_t i = 0; i < groups.n; i++)
                if (c->hooks.group_lost)
                        c->hooks.group_lost(c->opaque, groups.v[i]);
        namelist_free(&parts);
        namelist_free(&groups);
}

/* Clean shutdown: hand everything over, then revoke the lease.  ks-cluster
 * thread. */
static void shutdown_release(ks_cluster_t *c)
{
        pthread_mutex_lock(&c->mu);
        bool expired = session_expired_locked(c);
        pthread_mutex_unlock(&c->mu);
        if (expired)
                session_lost(c);

        pthread_mutex_lock(&c->mu);
        /* Copy (not take): the entries stay, marked releasing, so commits
         * still pass the fence while the hooks flush. */
        hmap_t tmp_p = {0}, tmp_g = {0};
        HMAP_FOREACH(&c->owned_p, x)
        {
                hnode_t *y = hmap_upsert(&tmp_p, x->key, x->klen);
                if (y)
                        y->v = x->v;
        }
        HMAP_FOREACH(&c->owned_g, x)
        {
                hnode_t *y = hmap_upsert(&tmp_g, x->key, x->klen);
                if (y)
                        y->v = x->v;
        }
        int64_t lease = c->lease;
        pthread_mutex_unlock(&c->mu);

        size_t np = 0, ng = 0;
        HMAP_FOREACH(&tmp_p, x)
        {
                size_t tlen;
                int32_t p;
                if (!split_tp(x->key, x->klen, &tlen, &p))
                        continue;
                char topic[KS_TOPIC_NAME_MAX + 1];
                snprintf(topic, sizeof(topic), "%.*s", (int)tlen, x->key);
                do_release_partition(c, topic, p, x->v.term_rev);
                np++;
        }
        HMAP_FOREACH(&tmp_g, x)
        {
                do_release_group(c, x->key, x->v.term_rev);
                ng++;
        }
        hmap_clear(&tmp_p);
        hmap_clear(&tmp_g);
        if (lease) {
                ks_err_t err = ks_kv_lease_revoke(c->kv, lease);
                if (err && err != KS_ERR__LEASE_LOST)
                        ks_log_warn("cluster_lease_revoke_failed", "broker=%d lease=%lld err=%s "
                                    "msg=\"others take over when it expires\"", c->id, (long long)lease,
                                    ks_err_name(err));
        }
        pthread_mutex_lock(&c->mu);
        c->lease = 0;
        pthread_mutex_unlock(&c->mu);
        ks_log_info("cluster_stopped", "broker=%d released_partitions=%zu released_groups=%zu lease=%lld", c->id, np,
                    ng, (long long)lease);
}

/* ------------------------------------------------------------------------ */
/* The ks-cluster thread                                                     */

static void *cluster_main(void *arg)
{
        ks_cluster_t *c = arg;
        int64_t next_pass = 0, next_register = 0;
        pthread_setname_np(pthread_self(), "ks-cluster");

        pthread_mutex_lock(&c->mu);
        for (;;) {
                if (c->stop)
                        break;
                if (session_expired_locked(c)) {
                        pthread_mutex_unlock(&c->mu);
                        session_lost(c);
                        pthread_mutex_lock(&c->mu);
                        next_register = 0;
                        continue;
                }
                int64_t real = now_real();
                if (c->lease == 0) {
                        if (real >= next_register) {
                                pthread_mutex_unlock(&c->mu);
                                ks_err_t err = register_session(c, false);
                                if (err && err != KS_ERR__CLOSED)
                                        ks_log_warn("cluster_register_failed", "broker=%d err=%s action=retry_in_%dms",
                                                    c->id, ks_err_name(err), REGISTER_RETRY_MS);
                                pthread_mutex_lock(&c->mu);
                                next_register = now_real() + REGISTER_RETRY_MS;
                                continue;
                        }
                        /* Without a session nobody can acquire anything. */
                        while (c->greq_head) {
                                greq_t *r = c->greq_head;
                                c->greq_head = r->next;
                                r->result = KS_ERR__UNAVAILABLE;
                                r->done = true;
                                if (r->abandoned)
                                        free(r);
                        }
                        c->greq_tail = NULL;
                        pthread_cond_broadcast(&c->done_cv);
                        wait_locked(c, &c->cv, next_register - real);
                        continue;
                }
                if (c->greq_head) {
                        pthread_mutex_unlock(&c->mu);
                        serve_group_requests(c);
                        pthread_mutex_lock(&c->mu);
                        continue;
                }
                if (c->dirty || real >= next_pass) {
                        c->dirty = false;
                        next_pass = real + PASS_PERIOD_MS;
                        pthread_mutex_unlock(&c->mu);
                        rebalance_pass(c);
                        pthread_mutex_lock(&c->mu);
                        continue;
                }
                int64_t wait = next_pass - real;
                int64_t to_expiry = c->last_ok_ms + c->ttl_ms - now_clock(c);
                if (to_expiry < wait)
                        wait = to_expiry;
                wait_locked(c, &c->cv, wait);
        }
        bool killed = c->killed;
        /* Requests nobody will serve any more. */
        while (c->greq_head) {
                greq_t *r = c->greq_head;
                c->greq_head = r->next;
                r->result = KS_ERR__CLOSED;
                r->done = true;
                if (r->abandoned)
                        free(r);
        }
        c->greq_tail = NULL;
        pthread_cond_broadcast(&c->done_cv);
        pthread_mutex_unlock(&c->mu);
        if (!killed)
                shutdown_release(c);
        return NULL;
}

/* ------------------------------------------------------------------------ */
/* Start / stop                                                              */

static void cluster_free(ks_cluster_t *c)
{
        if (c->w_brokers)
                ks_kv_watch_cancel(c->kv, c->w_brokers);
        if (c->w_pleases)
                ks_kv_watch_cancel(c->kv, c->w_pleases);
        if (c->w_gleases)
                ks_kv_watch_cancel(c->kv, c->w_gleases);
        if (c->w_topics)
                ks_kv_watch_cancel(c->kv, c->w_topics);
        free(c->brokers);
        hmap_clear(&c->topics);
        hmap_clear(&c->pstates);
        hmap_clear(&c->pleases);
        hmap_clear(&c->gleases);
        hmap_clear(&c->owned_p);
        hmap_clear(&c->owned_g);
        pthread_cond_destroy(&c->cv);
        pthread_cond_destroy(&c->ka_cv);
        pthread_cond_destroy(&c->done_cv);
        pthread_mutex_destroy(&c->mu);
        free(c);
}

ks_err_t ks_cluster_start(const ks_cluster_config_t *cfg, ks_kv_t *kv, const ks_cluster_hooks_t *hooks, void *opaque,
                          ks_cluster_t **out)
{
        *out = NULL;
        if (!cfg || !kv || cfg->broker_id < 0 || !cfg->host || !cfg->host[0] || strlen(cfg->host) >= 256 ||
            cfg->port < 0 || cfg->port > 65535 || (cfg->rack && strlen(cfg->rack) >= 64) || cfg->lease_ttl_ms < 0)
                return KS_ERR__INVALID_ARG;
        ks_cluster_t *c = calloc(1, sizeof(*c));
        if (!c)
                return KS_ERR__NOMEM;
        c->id = cfg->broker_id;
        c->idlen = (size_t)snprintf(c->idstr, sizeof(c->idstr), "%d", c->id);
        snprintf(c->host, sizeof(c->host), "%s", cfg->host);
        c->port = cfg->port;
        snprintf(c->rack, sizeof(c->rack), "%s", cfg->rack ? cfg->rack : "");
        snprintf(c->version, sizeof(c->version), "%s", cfg->version ? cfg->version : "kafscale-c");
        int64_t ttl_ms = cfg->lease_ttl_ms ? cfg->lease_ttl_ms : KS_CLUSTER_DEFAULT_LEASE_TTL_MS;
        c->ttl_s = (ttl_ms + 999) / 1000;
        if (c->ttl_s < KS_CLUSTER_MIN_LEASE_TTL_S)
                c->ttl_s = KS_CLUSTER_MIN_LEASE_TTL_S;
        c->ttl_ms = c->ttl_s * 1000;
        c->ka_interval_ms = c->ttl_ms / 3;
        c->register_wait_ms = cfg->register_wait_ms == 0 ? c->ttl_ms + 2000 : cfg->register_wait_ms;
        c->exclusive = cfg->exclusive_store;
        c->membership_only = cfg->membership_only;
        c->clock = cfg->clock ? cfg->clock : ks_clock_system();
        c->fake_clock = c->clock != ks_clock_system();
        c->started_at_wall = ks_clock_wall_ms(c->clock);
        c->kv = kv;
        if (hooks)
                c->hooks = *hooks;
        c->opaque = opaque;
        pthread_mutex_init(&c->mu, NULL);
        if (ks_cond_init_monotonic(&c->cv) || ks_cond_init_monotonic(&c->ka_cv) || ks_cond_init_monotonic(&c->done_cv)) {
                free(c);
                return KS_ERR__NOMEM;
        }

        ks_err_t err;
        if ((err = load_and_watch(c, CACHE_BROKERS, watch_brokers_cb, &c->w_brokers)) ||
            (err = load_and_watch(c, CACHE_TOPICS, watch_topics_cb, &c->w_topics)) ||
            (err = load_and_watch(c, CACHE_PLEASES, watch_pleases_cb, &c->w_pleases)) ||
            (err = load_and_watch(c, CACHE_GLEASES, watch_gleases_cb, &c->w_gleases))) {
                ks_log_error("cluster_start_failed", "broker=%d stage=load err=%s", c->id, ks_err_name(err));
                cluster_free(c);
                return err;
        }
        if ((err = register_session(c, true))) {
                if (err != KS_ERR__EXISTS)
                        ks_log_error("cluster_start_failed", "broker=%d stage=register err=%s", c->id,
                                     ks_err_name(err));
                cluster_free(c);
                return err;
        }
        /* Published before the hooks' thread starts: a hook may use it. */
        *out = c;
        int rc = pthread_create(&c->ka_thr, NULL, ka_main, c);
        if (!rc) {
                c->ka_started = true;
                rc = pthread_create(&c->thr, NULL, cluster_main, c);
        }
        if (rc) {
                *out = NULL;
                ks_log_error("cluster_thread_failed", "err=\"%s\"", strerror(rc));
                pthread_mutex_lock(&c->mu);
                c->ka_stop = true;
                pthread_cond_signal(&c->ka_cv);
                int64_t lease = c->lease;
                pthread_mutex_unlock(&c->mu);
                if (c->ka_started)
                        pthread_join(c->ka_thr, NULL);
                ks_kv_lease_revoke(kv, lease);
                cluster_free(c);
                return KS_ERR__NOMEM;
        }
        c->thr_started = true;
        return 0;
}

static void cluster_halt(ks_cluster_t *c, bool killed)
{
        pthread_mutex_lock(&c->mu);
        c->stop = true;
        c->killed = killed;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        if (c->thr_started)
                pthread_join(c->thr, NULL);
        pthread_mutex_lock(&c->mu);
        c->ka_stop = true;
        pthread_cond_broadcast(&c->ka_cv);
        pthread_mutex_unlock(&c->mu);
        if (c->ka_started)
                pthread_join(c->ka_thr, NULL);
        cluster_free(c);
}

void ks_cluster_stop(ks_cluster_t *c)
{
        if (c)
                cluster_halt(c, false);
}

void ks_cluster_test_kill(ks_cluster_t *c)
{
        if (c)
                cluster_halt(c, true);
}

/* ------------------------------------------------------------------------ */
/* Queries                                                                   */

int32_t ks_cluster_broker_id(const ks_cluster_t *c)
{
        return c->id;
}

int ks_cluster_brokers(ks_cluster_t *c, ks_broker_info_t **out)
{
        pthread_mutex_lock(&c->mu);
        int n = c->nbrokers;
        ks_broker_info_t *v = malloc((size_t)(n ? n : 1) * sizeof(*v));
        if (v)
                for (int i = 0; i < n; i++)
                        v[i] = c->brokers[i].info;
        pthread_mutex_unlock(&c->mu);
        *out = v;
        return v ? n : -1;
}

bool ks_cluster_broker_get(ks_cluster_t *c, int32_t id, ks_broker_info_t *out)
{
        pthread_mutex_lock(&c->mu);
        bool found;
        int i = broker_find_locked(c, id, &found);
        if (found && out)
                *out = c->brokers[i].info;
        pthread_mutex_unlock(&c->mu);
        return found;
}

int32_t ks_cluster_partition_leader(ks_cluster_t *c, const char *topic, int32_t partition, int32_t *epoch)
{
        char k[KEY_MAX];
        int kl = snprintf(k, sizeof(k), "%s/%d", topic, partition);
        if (kl <= 0 || (size_t)kl >= sizeof(k)) {
                if (epoch)
                        *epoch = -1;
                return -1;
        }
        pthread_mutex_lock(&c->mu);
        hnode_t *l = hmap_find(&c->pleases, k, (size_t)kl);
        int32_t leader = l && broker_live_locked(c, l->v.owner) ? l->v.owner : place_locked(c, k, (size_t)kl);
        if (epoch) {
                hnode_t *s = hmap_find(&c->pstates, k, (size_t)kl);
                *epoch = s ? s->v.epoch : -1;
        }
        pthread_mutex_unlock(&c->mu);
        return leader;
}

bool ks_cluster_owns_partition(ks_cluster_t *c, const char *topic, int32_t partition, int32_t *epoch)
{
        char k[KEY_MAX];
        int kl = snprintf(k, sizeof(k), "%s/%d", topic, partition);
        if (kl <= 0 || (size_t)kl >= sizeof(k))
                return false;
        pthread_mutex_lock(&c->mu);
        hnode_t *o = hmap_find(&c->owned_p, k, (size_t)kl);
        bool owns = o && !o->v.releasing && session_valid_locked(c);
        if (owns && epoch)
                *epoch = o->v.epoch;
        pthread_mutex_unlock(&c->mu);
        return owns;
}

bool ks_cluster_fence_cmp(ks_cluster_t *c, const char *topic, int32_t partition, int32_t epoch, char *keybuf,
                          size_t keylen, ks_kv_cmp_t *cmp)
{
        char k[KEY_MAX];
        int kl = snprintf(k, sizeof(k), "%s/%d", topic, partition);
        int lkl = plkey(keybuf, keylen, topic, partition);
        if (lkl < 0 || (size_t)lkl >= keylen)
                lkl = keylen ? (int)keylen - 1 : 0; /* truncated: cannot match a real key's create revision */
        int64_t rev = -1;
        if (kl > 0 && (size_t)kl < sizeof(k)) {
                pthread_mutex_lock(&c->mu);
                hnode_t *o = hmap_find(&c->owned_p, k, (size_t)kl);
                if (o && session_valid_locked(c) && (epoch < 0 || o->v.epoch == epoch))
                        rev = o->v.term_rev;
                pthread_mutex_unlock(&c->mu);
        }
        *cmp = (ks_kv_cmp_t){ .key = keybuf, .key_len = (size_t)lkl, .target = KS_KV_CMP_CREATE, .op = KS_KV_EQUAL,
                              .number = rev };
        return rev > 0;
}

int32_t ks_cluster_group_coordinator(ks_cluster_t *c, const char *group)
{
        if (!group_name_ok(group))
                return -1;
        char pk[KS_CLUSTER_GROUP_MAX + 16];
        int pkl = group_place_key(pk, sizeof(pk), group);
        pthread_mutex_lock(&c->mu);
        hnode_t *l = hmap_find(&c->gleases, group, strlen(group));
        int32_t coord = l && broker_live_locked(c, l->v.owner) ? l->v.owner : place_locked(c, pk, (size_t)pkl);
        pthread_mutex_unlock(&c->mu);
        return coord;
}

bool ks_cluster_owns_group(ks_cluster_t *c, const char *group)
{
        if (!group_name_ok(group))
                return false;
        pthread_mutex_lock(&c->mu);
        hnode_t *o = hmap_find(&c->owned_g, group, strlen(group));
        bool owns = o && !o->v.releasing && session_valid_locked(c);
        pthread_mutex_unlock(&c->mu);
        return owns;
}

bool ks_cluster_group_fence_cmp(ks_cluster_t *c, const char *group, char *keybuf, size_t keylen, ks_kv_cmp_t *cmp)
{
        int lkl = snprintf(keybuf, keylen, KS_CLUSTER_GROUP_LEASES_PREFIX "%s", group ? group : "");
        if (lkl < 0 || (size_t)lkl >= keylen)
                lkl = keylen ? (int)keylen - 1 : 0;
        int64_t rev = -1;
        if (group_name_ok(group)) {
                pthread_mutex_lock(&c->mu);
                hnode_t *o = hmap_find(&c->owned_g, group, strlen(group));
                if (o && session_valid_locked(c))
                        rev = o->v.term_rev;
                pthread_mutex_unlock(&c->mu);
        }
        *cmp = (ks_kv_cmp_t){ .key = keybuf, .key_len = (size_t)lkl, .target = KS_KV_CMP_CREATE, .op = KS_KV_EQUAL,
                              .number = rev };
        return rev > 0;
}

int64_t ks_cluster_lease(ks_cluster_t *c)
{
        pthread_mutex_lock(&c->mu);
        int64_t l = c->lease;
        pthread_mutex_unlock(&c->mu);
        return l;
}

ks_err_t ks_cluster_acquire_group(ks_cluster_t *c, const char *group)
{
        if (!group_name_ok(group))
                return KS_ERR__INVALID_ARG;
        if (ks_cluster_owns_group(c, group))
                return 0;
        size_t glen = strlen(group);
        greq_t *r = calloc(1, sizeof(*r) + glen + 1);
        if (!r)
                return KS_ERR__NOMEM;
        memcpy(r->group, group, glen + 1);
        struct timespec ts;
        ks_deadline_after_ms(&ts, KS_CLUSTER_ACQUIRE_TIMEOUT_MS);
        pthread_mutex_lock(&c->mu);
        if (c->stop) {
                pthread_mutex_unlock(&c->mu);
                free(r);
                return KS_ERR__CLOSED;
        }
        if (c->greq_tail)
                c->greq_tail->next = r;
        else
                c->greq_head = r;
        c->greq_tail = r;
        pthread_cond_signal(&c->cv);
        while (!r->done) {
                if (pthread_cond_timedwait(&c->done_cv, &c->mu, &ts) == ETIMEDOUT && !r->done) {
                        r->abandoned = true; /* the thread frees it */
                        pthread_mutex_unlock(&c->mu);
                        return KS_ERR__TIMEOUT;
                }
        }
        ks_err_t err = r->result;
        pthread_mutex_unlock(&c->mu);
        free(r);
        return err;
}

void ks_cluster_get_stats(ks_cluster_t *c, ks_cluster_stats_t *out)
{
        pthread_mutex_lock(&c->mu);
        out->lease = c->lease;
        out->sessions = c->sessions;
        out->last_keepalive_ms = c->last_ok_ms;
        out->passes = c->passes;
        out->live_brokers = c->nbrokers;
        out->owned_partitions = (int32_t)c->owned_p.n;
        out->owned_groups = (int32_t)c->owned_g.n;
        out->acquired = c->n_acquired;
        out->released = c->n_released;
        out->lost = c->n_lost;
        pthread_mutex_unlock(&c->mu);
}
