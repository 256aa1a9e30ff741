/*
 * group.c — Kafka's classic group protocol (JoinGroup, SyncGroup,
 * Heartbeat, LeaveGroup) as a state machine per group.
 *
 * Locking: `lock` protects every group and member.  Parked requests (a
 * member's join_req / sync_req) belong to the coordinator while parked and
 * are answered under the lock; ks_req_respond() only encodes and posts to
 * the request's loop, so no other lock is taken inside.  Nothing here does
 * I/O under the lock: persistence copies an encoded snapshot out and writes
 * it from the coordinator thread afterwards.
 *
 * Time: the coordinator thread ticks every TICK_MS and runs the deadlines
 * (session expiry, end of a join phase, end of a sync phase, the initial
 * rebalance delay of a new group).
 *
 * Cluster mode (cfg.owns set): `coords` is the set of groups coordinated
 * here, each with the term (the fence's compare number) it was loaded in; a
 * request for a group outside it is answered NOT_COORDINATOR under the same
 * lock that ks_groups_unload takes, so no request slips in after an unload.
 * Every group in `buckets` is in `coords`.
 *
 * Record writes: `write_lock` is held from taking a snapshot of a group
 * record until its write returned (coalesced persistence, unload with
 * persist, delete), so the store sees them in snapshot order.  Lock order:
 * write_lock, then lock.
 */
#include "group/group.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "kafscale_metadata.pb-c.h"
#include "meta/offsets.h"
#include "metrics/metrics.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/clock.h"
#include "util/log.h"

#define TICK_MS 100
#define NBUCKETS 1024

enum { ST_EMPTY, ST_PREPARING, ST_COMPLETING, ST_STABLE, ST_DEAD };

static const char *const state_names[] = { "empty", "preparing_rebalance", "completing_rebalance", "stable",
                                           "dead" };
/* Kafka's names (ListGroups, DescribeGroups, the metrics' state label). */
static const char *const kafka_state_names[ST_DEAD + 1] = { "Empty", "PreparingRebalance",
                                                            "CompletingRebalance", "Stable", "Dead" };

typedef struct proto {
        char *name;
        uint8_t *meta;
        size_t len;
} proto_t;

typedef struct member {
        struct member *next;
        char *id;
        char *instance_id; /* NULL: dynamic member */
        char *client_id;
        char *client_host;
        int32_t session_timeout_ms;
        int32_t rebalance_timeout_ms;
        proto_t *protos;
        int nprotos;
        uint8_t *assignment;
        size_t assignment_len;
        ks_req_t *join_req; /* parked JoinGroup */
        ks_req_t *sync_req; /* parked SyncGroup */
        int64_t last_seen;  /* monotonic ms */
} member_t;

typedef struct pending {
        struct pending *next;
        char *id;
        int64_t expires;
} pending_t;

typedef struct group {
        struct group *next; /* bucket chain */
        char *id;
        int state;
        int32_t generation;
        char *protocol_type;
        char *protocol;
        char *leader;
        member_t *members;
        int nmembers;
        pending_t *pending;
        int64_t deadline;      /* end of the current join or sync phase */
        int64_t initial_until; /* a new group waits this long for more members */
        bool dirty;            /* metadata to persist */
} group_t;

/* Cluster mode: one group coordinated here. */
typedef struct coord {
        struct coord *next; /* bucket chain */
        char *id;
        int64_t term;       /* the fence's compare number when loaded (0: writes not fenced) */
} coord_t;

struct ks_groups {
        ks_groups_config_t cfg;
        ks_meta_t *meta;
        pthread_mutex_t lock;
        group_t *buckets[NBUCKETS];
        coord_t *coords[NBUCKETS]; /* cluster mode: the groups coordinated here (lock) */
        pthread_mutex_t write_lock; /* serialises record writes (see above) */
        pthread_t thread;
        pthread_cond_t cond;
        bool stopping;
        ks_metric_t *m_groups;  /* kafscale_consumer_groups{state}, computed at scrape */
        ks_metric_t *m_members; /* kafscale_consumer_group_members, computed at scrape */
};

static int64_t now_ms(void)
{
        return ks_clock_mono_ms(ks_clock_system());
}

static char *dup_str(ks_str_t s)
{
        size_t n = s.len > 0 ? (size_t)s.len : 0;
        char *p = malloc(n + 1);
        if (p) {
                if (n)
                        memcpy(p, s.ptr, n);
                p[n] = '\0';
        }
        return p;
}

static bool str_is(ks_str_t s, const char *c)
{
        return c && ks_str_eq_c(s, c);
}

static bool str_empty(ks_str_t s)
{
        return s.len <= 0;
}

ks_err_t ks_group_id_check(ks_str_t group)
{
        /* One rule for every place a group id becomes a key. */
        return ks_offsets_group_invalid(group) ? KS_ERR_INVALID_GROUP_ID : 0;
}

/* ------------------------------------------------------------------------ */
/* Groups and members                                                        */

static uint32_t hash(const char *p, size_t n)
{
        uint32_t h = 2166136261u;
        for (size_t i = 0; i < n; i++)
                h = (h ^ (uint8_t)p[i]) * 16777619u;
        return h % NBUCKETS;
}

static group_t *group_find(ks_groups_t *g, ks_str_t id)
{
        if (id.len <= 0)
                return NULL;
        for (group_t *gr = g->buckets[hash(id.ptr, (size_t)id.len)]; gr; gr = gr->next)
                if (ks_str_eq_c(id, gr->id))
                        return gr;
        return NULL;
}

static group_t *group_create(ks_groups_t *g, ks_str_t id)
{
        group_t *gr = calloc(1, sizeof(*gr));
        if (!gr || !(gr->id = dup_str(id))) {
                free(gr);
                return NULL;
        }
        gr->state = ST_EMPTY;
        uint32_t h = hash(id.ptr, (size_t)id.len);
        gr->next = g->buckets[h];
        g->buckets[h] = gr;
        return gr;
}

/* Frees a group that has no members left (caller unlinked it). */
static void group_free(group_t *gr)
{
        while (gr->pending) {
                pending_t *pd = gr->pending;
                gr->pending = pd->next;
                free(pd->id);
                free(pd);
        }
        free(gr->id);
        free(gr->protocol_type);
        free(gr->protocol);
        free(gr->leader);
        free(gr);
}

static coord_t *coord_find(ks_groups_t *g, ks_str_t id)
{
        if (id.len <= 0)
                return NULL;
        for (coord_t *c = g->coords[hash(id.ptr, (size_t)id.len)]; c; c = c->next)
                if (ks_str_eq_c(id, c->id))
                        return c;
        return NULL;
}

/* Are requests for `id` served here?  Lock held. */
static bool coordinated(ks_groups_t *g, ks_str_t id)
{
        return !g->cfg.owns || coord_find(g, id) != NULL;
}

/* The term a snapshot of `id` is taken in (0: writes not fenced).  Lock
 * held. */
static int64_t term_of(ks_groups_t *g, ks_str_t id)
{
        const coord_t *c = g->cfg.owns ? coord_find(g, id) : NULL;
        return c ? c->term : 0;
}

static member_t *member_find(group_t *gr, ks_str_t id)
{
        if (id.len <= 0)
                return NULL;
        for (member_t *m = gr->members; m; m = m->next)
                if (ks_str_eq_c(id, m->id))
                        return m;
        return NULL;
}

static member_t *member_find_instance(group_t *gr, ks_str_t instance)
{
        if (instance.len <= 0)
                return NULL;
        for (member_t *m = gr->members; m; m = m->next)
                if (m->instance_id && ks_str_eq_c(instance, m->instance_id))
                        return m;
        return NULL;
}

static void protos_free(member_t *m)
{
        for (int i = 0; i < m->nprotos; i++) {
                free(m->protos[i].name);
                free(m->protos[i].meta);
        }
        free(m->protos);
        m->protos = NULL;
        m->nprotos = 0;
}

static void member_free(member_t *m)
{
        protos_free(m);
        free(m->id);
        free(m->instance_id);
        free(m->client_id);
        free(m->client_host);
        free(m->assignment);
        free(m);
}

static bool member_set_protocols(member_t *m, const ks_JoinGroupRequest *rq)
{
        protos_free(m);
        m->protos = calloc((size_t)rq->Protocols.count, sizeof(*m->protos));
        if (!m->protos)
                return false;
        for (int32_t i = 0; i < rq->Protocols.count; i++) {
                const ks_JoinGroupRequest_JoinGroupRequestProtocol *p = &rq->Protocols.items[i];
                proto_t *d = &m->protos[m->nprotos++];
                d->name = dup_str(p->Name);
                d->len = p->Metadata.len > 0 ? (size_t)p->Metadata.len : 0;
                d->meta = malloc(d->len ? d->len : 1);
                if (!d->name || !d->meta)
                        return false;
                if (d->len)
                        memcpy(d->meta, p->Metadata.ptr, d->len);
        }
        return true;
}

static const proto_t *member_proto(const member_t *m, const char *name)
{
        for (int i = 0; i < m->nprotos; i++)
                if (!strcmp(m->protos[i].name, name))
                        return &m->protos[i];
        return NULL;
}

/* Does every member (and the candidate request) support protocol `name`? */
static bool all_support(const group_t *gr, const char *name, const ks_JoinGroupRequest *rq, const member_t *skip)
{
        for (const member_t *m = gr->members; m; m = m->next)
                if (m != skip && !member_proto(m, name))
                        return false;
        if (rq) {
                for (int32_t i = 0; i < rq->Protocols.count; i++)
                        if (str_is(rq->Protocols.items[i].Name, name))
                                return true;
                return false;
        }
        return true;
}

/* Kafka's check: a joining member must share a protocol with the group. */
static bool protocols_compatible(const group_t *gr, const ks_JoinGroupRequest *rq, const member_t *self)
{
        bool others = false;
        for (const member_t *m = gr->members; m; m = m->next)
                if (m != self)
                        others = true;
        if (!others)
                return true;
        for (int32_t i = 0; i < rq->Protocols.count; i++) {
                char name[256];
                snprintf(name, sizeof(name), "%.*s", (int)rq->Protocols.items[i].Name.len,
                         rq->Protocols.items[i].Name.ptr ? rq->Protocols.items[i].Name.ptr : "");
                if (all_support(gr, name, NULL, self))
                        return true;
        }
        return false;
}

/* Protocol chosen by vote: each member votes for its most preferred
 * protocol that every member supports. */
static const char *select_protocol(const group_t *gr)
{
        const char *best = NULL;
        int best_votes = 0;
        const member_t *first = gr->members;
        if (!first)
                return NULL;
        for (int c = 0; c < first->nprotos; c++) {
                const char *cand = first->protos[c].name;
                if (!all_support(gr, cand, NULL, NULL))
                        continue;
                int votes = 0;
                for (const member_t *m = gr->members; m; m = m->next) {
                        for (int i = 0; i < m->nprotos; i++) {
                                if (all_support(gr, m->protos[i].name, NULL, NULL)) {
                                        if (!strcmp(m->protos[i].name, cand))
                                                votes++;
                                        break;
                                }
                        }
                }
                if (votes > best_votes) {
                        best = cand;
                        best_votes = votes;
                }
        }
        return best;
}

static char *new_member_id(ks_str_t client_id)
{
        uint8_t r[16];
        size_t got = 0;
        while (got < sizeof(r)) {
                ssize_t n = getrandom(r + got, sizeof(r) - got, 0);
                if (n > 0)
                        got += (size_t)n;
        }
        char *id = malloc((size_t)(client_id.len > 0 ? client_id.len : 0) + 40);
        if (!id)
                return NULL;
        int n = snprintf(id, 40 + (size_t)(client_id.len > 0 ? client_id.len : 0), "%.*s-", (int)client_id.len,
                         client_id.ptr ? client_id.ptr : "");
        for (int i = 0; i < 16; i++) {
                static const char hex[] = "0123456789abcdef";
                id[n++] = hex[r[i] >> 4];
                id[n++] = hex[r[i] & 15];
                if (i == 3 || i == 5 || i == 7 || i == 9)
                        id[n++] = '-';
        }
        id[n] = '\0';
        return id;
}

/* ------------------------------------------------------------------------ */
/* Answers                                                                   */

/* `member_id` must live as long as the request (a view of it, or of its
 * arena). */
static void answer_join_error_str(ks_req_t *req, int16_t err, ks_str_t member_id)
{
        ks_JoinGroupResponse *resp = ks_msg_new(&ks_JoinGroupResponse_desc, &req->arena);
        if (!resp) {
                ks_req_close(req, "out of memory");
                return;
        }
        resp->ErrorCode = err;
        resp->GenerationId = -1;
        resp->MemberId = member_id.len > 0 ? member_id : KS_STR("");
        resp->ProtocolName = req->hdr.RequestApiVersion >= 7 ? KS_STR_NULL : KS_STR("");
        resp->ProtocolType = KS_STR_NULL;
        ks_req_respond(req, resp);
}

static void answer_join_error(ks_req_t *req, int16_t err, const char *member_id)
{
        answer_join_error_str(req, err, member_id ? ks_arena_str(&req->arena, "%s", member_id) : KS_STR(""));
}

/* Answers m's parked JoinGroup.  `leader_shown` is the leader id put in
 * the response, `with_members` whether the member list is included and
 * `skip` the SkipAssignment flag (a static leader rejoining a Stable
 * group, KIP-345/KIP-814). */
static void answer_join_as(group_t *gr, member_t *m, const char *leader_shown, bool with_members, bool skip)
{
        ks_req_t *req = m->join_req;
        m->join_req = NULL;
        ks_JoinGroupResponse *resp = ks_msg_new(&ks_JoinGroupResponse_desc, &req->arena);
        if (!resp) {
                ks_req_close(req, "out of memory");
                return;
        }
        resp->ErrorCode = 0;
        resp->GenerationId = gr->generation;
        resp->ProtocolType = ks_arena_str(&req->arena, "%s", gr->protocol_type ? gr->protocol_type : "");
        resp->ProtocolName = ks_arena_str(&req->arena, "%s", gr->protocol ? gr->protocol : "");
        resp->Leader = ks_arena_str(&req->arena, "%s", leader_shown ? leader_shown : "");
        resp->MemberId = ks_arena_str(&req->arena, "%s", m->id);
        resp->SkipAssignment = skip;
        if (with_members) {
                ks_JoinGroupResponse_JoinGroupResponseMember *ms =
                        ks_msg_new_array(&ks_JoinGroupResponse_JoinGroupResponseMember_desc, gr->nmembers,
                                         &req->arena);
                int n = 0;
                for (member_t *o = gr->members; ms && o; o = o->next) {
                        const proto_t *p = member_proto(o, gr->protocol);
                        ms[n].MemberId = ks_arena_str(&req->arena, "%s", o->id);
                        ms[n].GroupInstanceId =
                                o->instance_id ? ks_arena_str(&req->arena, "%s", o->instance_id) : KS_STR_NULL;
                        /* The member's metadata, untouched (copied: the
                         * member may change after this call). */
                        uint8_t *meta = p && p->len ? ks_arena_alloc(&req->arena, p->len) : NULL;
                        if (meta)
                                memcpy(meta, p->meta, p->len);
                        ms[n].Metadata = (ks_bytes_t){ meta, p && meta ? (int32_t)p->len : 0 };
                        n++;
                }
                resp->Members.items = ms;
                resp->Members.count = ms ? n : 0;
        }
        ks_req_respond(req, resp);
}

static void answer_join(group_t *gr, member_t *m)
{
        bool leader = gr->leader && !strcmp(gr->leader, m->id);
        answer_join_as(gr, m, gr->leader, leader, false);
}

static void answer_sync(ks_req_t *req, int16_t err, const group_t *gr, const member_t *m)
{
        ks_SyncGroupResponse *resp = ks_msg_new(&ks_SyncGroupResponse_desc, &req->arena);
        if (!resp) {
                ks_req_close(req, "out of memory");
                return;
        }
        resp->ErrorCode = err;
        resp->ProtocolType = KS_STR_NULL;
        resp->ProtocolName = KS_STR_NULL;
        resp->Assignment = (ks_bytes_t){ NULL, 0 };
        if (!err && gr) {
                resp->ProtocolType = ks_arena_str(&req->arena, "%s", gr->protocol_type ? gr->protocol_type : "");
                resp->ProtocolName = ks_arena_str(&req->arena, "%s", gr->protocol ? gr->protocol : "");
                if (m && m->assignment_len) {
                        uint8_t *a = ks_arena_alloc(&req->arena, m->assignment_len);
                        if (a) {
                                memcpy(a, m->assignment, m->assignment_len);
                                resp->Assignment = (ks_bytes_t){ a, (int32_t)m->assignment_len };
                        }
                }
        }
        ks_req_respond(req, resp);
}

static void answer_heartbeat(ks_req_t *req, int16_t err)
{
        ks_HeartbeatResponse *resp = ks_msg_new(&ks_HeartbeatResponse_desc, &req->arena);
        if (!resp) {
                ks_req_close(req, "out of memory");
                return;
        }
        resp->ErrorCode = err;
        ks_req_respond(req, resp);
}

void ks_groups_refuse(ks_req_t *req, int16_t err)
{
        switch (req->hdr.RequestApiKey) {
        case KS_API_JOIN_GROUP:
                answer_join_error_str(req, err, ((const ks_JoinGroupRequest *)req->request)->MemberId);
                return;
        case KS_API_SYNC_GROUP:
                answer_sync(req, err, NULL, NULL);
                return;
        case KS_API_HEARTBEAT:
                answer_heartbeat(req, err);
                return;
        case KS_API_LEAVE_GROUP: {
                ks_LeaveGroupResponse *resp = ks_msg_new(&ks_LeaveGroupResponse_desc, &req->arena);
                if (!resp) {
                        ks_req_close(req, "out of memory");
                        return;
                }
                resp->ErrorCode = err;
                resp->Members.count = 0;
                ks_req_respond(req, resp);
                return;
        }
        default:
                ks_req_close(req, "not a group membership request");
                return;
        }
}

/* ------------------------------------------------------------------------ */
/* State machine                                                             */

static void set_state(group_t *gr, int st)
{
        if (gr->state != st)
                ks_log_debug("group_state", "group=\"%s\" from=%s to=%s generation=%d", gr->id,
                             state_names[gr->state], state_names[st], gr->generation);
        gr->state = st;
}

static int32_t max_rebalance_timeout(const group_t *gr)
{
        int32_t t = 0;
        for (const member_t *m = gr->members; m; m = m->next)
                if (m->rebalance_timeout_ms > t)
                        t = m->rebalance_timeout_ms;
        return t;
}

static void remove_member(group_t *gr, member_t *m, int16_t join_err)
{
        member_t **pp = &gr->members;
        while (*pp && *pp != m)
                pp = &(*pp)->next;
        if (!*pp)
                return;
        *pp = m->next;
        gr->nmembers--;
        if (m->join_req)
                answer_join_error(m->join_req, join_err, m->id);
        if (m->sync_req)
                answer_sync(m->sync_req, join_err, NULL, NULL);
        m->join_req = m->sync_req = NULL;
        if (gr->leader && !strcmp(gr->leader, m->id)) {
                free(gr->leader);
                gr->leader = NULL;
        }
        member_free(m);
}

static void complete_join(ks_groups_t *g, group_t *gr);

static void prepare_rebalance(ks_groups_t *g, group_t *gr, const char *why)
{
        if (gr->state == ST_COMPLETING) {
                /* Parked syncs learn the rebalance restarted. */
                for (member_t *m = gr->members; m; m = m->next) {
                        if (m->sync_req) {
                                answer_sync(m->sync_req, KS_ERR_REBALANCE_IN_PROGRESS, NULL, NULL);
                                m->sync_req = NULL;
                        }
                }
        }
        int64_t now = now_ms();
        if (gr->state == ST_EMPTY)
                gr->initial_until = now + g->cfg.initial_rebalance_delay_ms;
        if (gr->state != ST_PREPARING) {
                gr->deadline = now + max_rebalance_timeout(gr);
                ks_log_info("group_rebalance", "group=\"%s\" generation=%d members=%d reason=\"%s\"", gr->id,
                            gr->generation, gr->nmembers, why);
                ks_metric_inc(ks_std_metrics.group_rebalances, 0);
        }
        set_state(gr, ST_PREPARING);
}

static bool all_joined(const group_t *gr)
{
        for (const member_t *m = gr->members; m; m = m->next)
                if (!m->join_req)
                        return false;
        return true;
}

static void maybe_complete_join(ks_groups_t *g, group_t *gr)
{
        if (gr->state == ST_PREPARING && all_joined(gr) && now_ms() >= gr->initial_until)
                complete_join(g, gr);
}

static void complete_join(ks_groups_t *g, group_t *gr)
{
        (void)g;
        /* Members that did not rejoin in time are out. */
        for (member_t *m = gr->members, *next; m; m = next) {
                next = m->next;
                if (!m->join_req) {
                        ks_log_info("group_member_removed", "group=\"%s\" member=\"%s\" reason=\"did not rejoin in "
                                                            "time\"",
                                    gr->id, m->id);
                        remove_member(gr, m, KS_ERR_UNKNOWN_MEMBER_ID);
                }
        }
        gr->generation++;
        gr->dirty = true;
        free(gr->protocol);
        gr->protocol = NULL;
        if (gr->nmembers == 0) {
                free(gr->leader);
                gr->leader = NULL;
                set_state(gr, ST_EMPTY);
                return;
        }
        const char *p = select_protocol(gr);
        gr->protocol = p ? strdup(p) : NULL;
        if (!gr->leader) {
                /* The longest-standing member leads (list is newest-first). */
                member_t *last = gr->members;
                while (last->next)
                        last = last->next;
                gr->leader = strdup(last->id);
        }
        for (member_t *m = gr->members; m; m = m->next) {
                free(m->assignment);
                m->assignment = NULL;
                m->assignment_len = 0;
        }
        set_state(gr, ST_COMPLETING);
        gr->deadline = now_ms() + max_rebalance_timeout(gr);
        int64_t now = now_ms();
        for (member_t *m = gr->members; m; m = m->next) {
                m->last_seen = now;
                answer_join(gr, m);
        }
        ks_log_info("group_joined", "group=\"%s\" generation=%d members=%d protocol=\"%s\" leader=\"%s\"", gr->id,
                    gr->generation, gr->nmembers, gr->protocol ? gr->protocol : "", gr->leader);
}

/* ------------------------------------------------------------------------ */
/* JoinGroup                                                                 */

void ks_groups_join(ks_groups_t *g, ks_req_t *req)
{
        const ks_JoinGroupRequest *rq = req->request;
        int16_t v = req->hdr.RequestApiVersion;
        if (ks_group_id_check(rq->GroupId)) {
                answer_join_error(req, KS_ERR_INVALID_GROUP_ID, NULL);
                return;
        }
        if (g->cfg.owns && !ks_groups_coordinates(g, rq->GroupId)) {
                /* Early answer; checked again under the lock below. */
                answer_join_error_str(req, KS_ERR_NOT_COORDINATOR, rq->MemberId);
                return;
        }
        if (rq->SessionTimeoutMs < g->cfg.min_session_timeout_ms ||
            rq->SessionTimeoutMs > g->cfg.max_session_timeout_ms) {
                answer_join_error(req, KS_ERR_INVALID_SESSION_TIMEOUT, NULL);
                return;
        }
        if (str_empty(rq->ProtocolType) || rq->Protocols.count <= 0) {
                answer_join_error(req, KS_ERR_INCONSISTENT_GROUP_PROTOCOL, NULL);
                return;
        }
        ks_str_t instance = v >= 5 ? rq->GroupInstanceId : KS_STR_NULL;
        bool is_static = instance.len > 0;

        pthread_mutex_lock(&g->lock);
        if (!coordinated(g, rq->GroupId)) {
                pthread_mutex_unlock(&g->lock);
                answer_join_error_str(req, KS_ERR_NOT_COORDINATOR, rq->MemberId);
                return;
        }
        group_t *gr = group_find(g, rq->GroupId);
        if (!gr) {
                if (!str_empty(rq->MemberId)) {
                        pthread_mutex_unlock(&g->lock);
                        answer_join_error(req, KS_ERR_UNKNOWN_MEMBER_ID, NULL);
                        return;
                }
                gr = group_create(g, rq->GroupId);
                if (!gr) {
                        pthread_mutex_unlock(&g->lock);
                        ks_req_close(req, "out of memory");
                        return;
                }
        }
        int16_t err = 0;
        if (gr->state == ST_DEAD)
                err = KS_ERR_COORDINATOR_NOT_AVAILABLE;
        else if (gr->nmembers > 0 && gr->protocol_type && !str_is(rq->ProtocolType, gr->protocol_type))
                err = KS_ERR_INCONSISTENT_GROUP_PROTOCOL;
        if (err) {
                pthread_mutex_unlock(&g->lock);
                answer_join_error(req, err, NULL);
                return;
        }

        member_t *m = NULL;
        bool is_new = false;
        if (str_empty(rq->MemberId)) {
                member_t *old = is_static ? member_find_instance(gr, instance) : NULL;
                char *id = new_member_id(req->hdr.ClientId);
                if (!id) {
                        pthread_mutex_unlock(&g->lock);
                        ks_req_close(req, "out of memory");
                        return;
                }
                if (old) {
                        /* A static member restarted: it takes over its old
                         * place under a new member id (KIP-345). */
                        if (!protocols_compatible(gr, rq, old)) {
                                free(id);
                                pthread_mutex_unlock(&g->lock);
                                answer_join_error(req, KS_ERR_INCONSISTENT_GROUP_PROTOCOL, NULL);
                                return;
                        }
                        if (old->join_req) {
                                answer_join_error(old->join_req, KS_ERR_FENCED_INSTANCE_ID, old->id);
                                old->join_req = NULL;
                        }
                        if (old->sync_req) {
                                answer_sync(old->sync_req, KS_ERR_FENCED_INSTANCE_ID, NULL, NULL);
                                old->sync_req = NULL;
                        }
                        bool was_leader = gr->leader && !strcmp(gr->leader, old->id);
                        /* Kafka rebalances only if the group's selected
                         * protocol is no longer supported; changed metadata
                         * alone (e.g. cooperative owned partitions) is just
                         * recorded. */
                        bool unchanged = false;
                        for (int32_t i = 0; gr->protocol && i < rq->Protocols.count; i++)
                                if (str_is(rq->Protocols.items[i].Name, gr->protocol))
                                        unchanged = true;
                        char *old_id = old->id;
                        old->id = id;
                        if (was_leader) {
                                free(gr->leader);
                                gr->leader = strdup(id);
                        }
                        m = old;
                        ks_log_info("group_static_member_rejoined", "group=\"%s\" instance=\"%s\" member=\"%s\"",
                                    gr->id, old->instance_id, id);
                        if (gr->state == ST_STABLE && unchanged) {
                                /* No rebalance (KIP-345): answer with the
                                 * current generation; SyncGroup returns the
                                 * old assignment.  A rejoining leader must
                                 * not reassign: v9+ says so with
                                 * SkipAssignment, older versions name the
                                 * old member id as leader. */
                                m->session_timeout_ms = rq->SessionTimeoutMs;
                                m->rebalance_timeout_ms = v >= 1 ? rq->RebalanceTimeoutMs : rq->SessionTimeoutMs;
                                m->last_seen = now_ms();
                                if (!member_set_protocols(m, rq)) {
                                        free(old_id);
                                        remove_member(gr, m, KS_ERR_UNKNOWN_SERVER_ERROR);
                                        pthread_mutex_unlock(&g->lock);
                                        ks_req_close(req, "out of memory");
                                        return;
                                }
                                m->join_req = req;
                                if (!was_leader)
                                        answer_join(gr, m);
                                else if (v >= 9)
                                        answer_join_as(gr, m, gr->leader, true, true);
                                else
                                        answer_join_as(gr, m, old_id, false, false);
                                free(old_id);
                                gr->dirty = true;
                                pthread_mutex_unlock(&g->lock);
                                return;
                        }
                        free(old_id);
                } else if (!is_static && v >= 4) {
                        /* KIP-394: hand out the id and wait for the rejoin. */
                        pending_t *pd = calloc(1, sizeof(*pd));
                        if (pd) {
                                pd->id = strdup(id);
                                pd->expires = now_ms() + rq->SessionTimeoutMs;
                                pd->next = gr->pending;
                                gr->pending = pd;
                        }
                        pthread_mutex_unlock(&g->lock);
                        answer_join_error(req, KS_ERR_MEMBER_ID_REQUIRED, id);
                        free(id);
                        return;
                } else {
                        if (!protocols_compatible(gr, rq, NULL)) {
                                free(id);
                                pthread_mutex_unlock(&g->lock);
                                answer_join_error(req, KS_ERR_INCONSISTENT_GROUP_PROTOCOL, NULL);
                                return;
                        }
                        m = calloc(1, sizeof(*m));
                        if (!m) {
                                free(id);
                                pthread_mutex_unlock(&g->lock);
                                ks_req_close(req, "out of memory");
                                return;
                        }
                        m->id = id;
                        is_new = true;
                }
        } else {
                m = member_find(gr, rq->MemberId);
                if (!m) {
                        /* The rejoin of a KIP-394 pending member. */
                        pending_t **pp = &gr->pending;
                        while (*pp && !ks_str_eq_c(rq->MemberId, (*pp)->id))
                                pp = &(*pp)->next;
                        if (!*pp) {
                                pthread_mutex_unlock(&g->lock);
                                answer_join_error(req, KS_ERR_UNKNOWN_MEMBER_ID, NULL);
                                return;
                        }
                        pending_t *pd = *pp;
                        if (!protocols_compatible(gr, rq, NULL)) {
                                pthread_mutex_unlock(&g->lock);
                                answer_join_error(req, KS_ERR_INCONSISTENT_GROUP_PROTOCOL, NULL);
                                return;
                        }
                        m = calloc(1, sizeof(*m));
                        if (!m) {
                                pthread_mutex_unlock(&g->lock);
                                ks_req_close(req, "out of memory");
                                return;
                        }
                        *pp = pd->next;
                        m->id = pd->id;
                        free(pd);
                        is_new = true;
                } else {
                        if (is_static && (!m->instance_id || !str_is(instance, m->instance_id))) {
                                pthread_mutex_unlock(&g->lock);
                                answer_join_error(req, KS_ERR_FENCED_INSTANCE_ID, NULL);
                                return;
                        }
                        if (!protocols_compatible(gr, rq, m)) {
                                pthread_mutex_unlock(&g->lock);
                                answer_join_error(req, KS_ERR_INCONSISTENT_GROUP_PROTOCOL, NULL);
                                return;
                        }
                }
        }

        /* Record the member's join. */
        if (is_new) {
                m->instance_id = is_static ? dup_str(instance) : NULL;
                m->next = gr->members;
                gr->members = m;
                gr->nmembers++;
                ks_log_info("group_member_added", "group=\"%s\" member=\"%s\" client=\"%.*s\" peer=%s", gr->id, m->id,
                            (int)(req->hdr.ClientId.len > 0 ? req->hdr.ClientId.len : 0),
                            req->hdr.ClientId.ptr ? req->hdr.ClientId.ptr : "", req->peer);
        }
        if (!gr->protocol_type || gr->nmembers == 1) {
                free(gr->protocol_type);
                gr->protocol_type = dup_str(rq->ProtocolType);
        }
        free(m->client_id);
        m->client_id = dup_str(req->hdr.ClientId);
        /* Kafka reports the client's address as "/ip". */
        free(m->client_host);
        const char *colon = strrchr(req->peer, ':');
        int hl = colon ? (int)(colon - req->peer) : (int)strlen(req->peer);
        m->client_host = malloc((size_t)hl + 2);
        if (m->client_host)
                snprintf(m->client_host, (size_t)hl + 2, "/%.*s", hl, req->peer);
        m->session_timeout_ms = rq->SessionTimeoutMs;
        m->rebalance_timeout_ms = v >= 1 ? rq->RebalanceTimeoutMs : rq->SessionTimeoutMs;
        m->last_seen = now_ms();
        if (!member_set_protocols(m, rq)) {
                remove_member(gr, m, KS_ERR_UNKNOWN_SERVER_ERROR);
                pthread_mutex_unlock(&g->lock);
                ks_req_close(req, "out of memory");
                return;
        }
        if (m->join_req) /* a duplicate join replaces the parked one */
                answer_join_error(m->join_req, KS_ERR_UNKNOWN_MEMBER_ID, m->id);
        m->join_req = req;

        switch (gr->state) {
        case ST_EMPTY:
        case ST_STABLE:
        case ST_COMPLETING:
                prepare_rebalance(g, gr, is_new ? "member joined" : "member rejoined");
                break;
        default:
                break;
        }
        maybe_complete_join(g, gr);
        pthread_mutex_unlock(&g->lock);
}

/* ------------------------------------------------------------------------ */
/* SyncGroup                                                                 */

void ks_groups_sync(ks_groups_t *g, ks_req_t *req)
{
        const ks_SyncGroupRequest *rq = req->request;
        int16_t v = req->hdr.RequestApiVersion;
        pthread_mutex_lock(&g->lock);
        group_t *gr = group_find(g, rq->GroupId);
        member_t *m = gr ? member_find(gr, rq->MemberId) : NULL;
        int16_t err = 0;
        if (ks_group_id_check(rq->GroupId))
                err = KS_ERR_INVALID_GROUP_ID;
        else if (!coordinated(g, rq->GroupId))
                err = KS_ERR_NOT_COORDINATOR;
        else if (gr && !m && v >= 3 && member_find_instance(gr, rq->GroupInstanceId))
                err = KS_ERR_FENCED_INSTANCE_ID; /* an old id of a static member that rejoined */
        else if (!gr || !m || gr->state == ST_EMPTY)
                err = KS_ERR_UNKNOWN_MEMBER_ID;
        else if (v >= 3 && rq->GroupInstanceId.len > 0 &&
                 (!m->instance_id || !str_is(rq->GroupInstanceId, m->instance_id)))
                err = KS_ERR_FENCED_INSTANCE_ID;
        else if (rq->GenerationId != gr->generation)
                err = KS_ERR_ILLEGAL_GENERATION;
        else if (v >= 5 && ((rq->ProtocolType.len >= 0 && !str_is(rq->ProtocolType, gr->protocol_type)) ||
                            (rq->ProtocolName.len >= 0 && !str_is(rq->ProtocolName, gr->protocol))))
                err = KS_ERR_INCONSISTENT_GROUP_PROTOCOL;
        else if (gr->state == ST_PREPARING)
                err = KS_ERR_REBALANCE_IN_PROGRESS;
        if (err) {
                pthread_mutex_unlock(&g->lock);
                answer_sync(req, err, NULL, NULL);
                return;
        }
        m->last_seen = now_ms();
        if (gr->state == ST_STABLE) {
                answer_sync(req, 0, gr, m);
                pthread_mutex_unlock(&g->lock);
                return;
        }
        /* CompletingRebalance: park; the leader's sync completes everyone. */
        if (m->sync_req)
                answer_sync(m->sync_req, KS_ERR_REBALANCE_IN_PROGRESS, NULL, NULL);
        m->sync_req = req;
        if (gr->leader && !strcmp(gr->leader, m->id)) {
                for (int32_t i = 0; i < rq->Assignments.count; i++) {
                        const ks_SyncGroupRequest_SyncGroupRequestAssignment *a = &rq->Assignments.items[i];
                        member_t *t = member_find(gr, a->MemberId);
                        if (!t || a->Assignment.len <= 0)
                                continue;
                        uint8_t *copy = malloc((size_t)a->Assignment.len);
                        if (!copy)
                                continue;
                        memcpy(copy, a->Assignment.ptr, (size_t)a->Assignment.len);
                        free(t->assignment);
                        t->assignment = copy;
                        t->assignment_len = (size_t)a->Assignment.len;
                }
                set_state(gr, ST_STABLE);
                gr->dirty = true;
                for (member_t *o = gr->members; o; o = o->next) {
                        if (o->sync_req) {
                                answer_sync(o->sync_req, 0, gr, o);
                                o->sync_req = NULL;
                        }
                }
        }
        pthread_mutex_unlock(&g->lock);
}

/* ------------------------------------------------------------------------ */
/* Heartbeat and LeaveGroup                                                  */

void ks_groups_heartbeat(ks_groups_t *g, ks_req_t *req)
{
        const ks_HeartbeatRequest *rq = req->request;
        int16_t v = req->hdr.RequestApiVersion;
        int16_t err = 0;
        pthread_mutex_lock(&g->lock);
        group_t *gr = group_find(g, rq->GroupId);
        member_t *m = gr ? member_find(gr, rq->MemberId) : NULL;
        if (ks_group_id_check(rq->GroupId))
                err = KS_ERR_INVALID_GROUP_ID;
        else if (!coordinated(g, rq->GroupId))
                err = KS_ERR_NOT_COORDINATOR;
        else if (gr && !m && v >= 3 && member_find_instance(gr, rq->GroupInstanceId))
                err = KS_ERR_FENCED_INSTANCE_ID; /* an old id of a static member that rejoined */
        else if (!gr || !m || gr->state == ST_EMPTY || gr->state == ST_DEAD)
                err = KS_ERR_UNKNOWN_MEMBER_ID;
        else if (v >= 3 && rq->GroupInstanceId.len > 0 &&
                 (!m->instance_id || !str_is(rq->GroupInstanceId, m->instance_id)))
                err = KS_ERR_FENCED_INSTANCE_ID;
        else if (rq->GenerationId != gr->generation)
                err = KS_ERR_ILLEGAL_GENERATION;
        else if (gr->state == ST_PREPARING)
                err = KS_ERR_REBALANCE_IN_PROGRESS;
        if (m && err != KS_ERR_UNKNOWN_MEMBER_ID && err != KS_ERR_FENCED_INSTANCE_ID && err != KS_ERR_NOT_COORDINATOR)
                m->last_seen = now_ms();
        pthread_mutex_unlock(&g->lock);
        answer_heartbeat(req, err);
}

void ks_groups_leave(ks_groups_t *g, ks_req_t *req)
{
        const ks_LeaveGroupRequest *rq = req->request;
        int16_t v = req->hdr.RequestApiVersion;
        ks_LeaveGroupResponse *resp = ks_msg_new(&ks_LeaveGroupResponse_desc, &req->arena);
        int32_t n = v >= 3 ? (rq->Members.count > 0 ? rq->Members.count : 0) : 1;
        ks_LeaveGroupResponse_MemberResponse *rs =
                v >= 3 ? ks_msg_new_array(&ks_LeaveGroupResponse_MemberResponse_desc, n, &req->arena) : NULL;
        if (!resp || (v >= 3 && !rs)) {
                ks_req_close(req, "out of memory");
                return;
        }
        pthread_mutex_lock(&g->lock);
        group_t *gr = group_find(g, rq->GroupId);
        int16_t top = 0;
        int removed = 0;
        if (ks_group_id_check(rq->GroupId))
                top = KS_ERR_INVALID_GROUP_ID;
        else if (!coordinated(g, rq->GroupId))
                top = KS_ERR_NOT_COORDINATOR;
        else if (!gr || gr->state == ST_DEAD)
                top = v >= 3 ? KS_ERR_UNKNOWN_MEMBER_ID : KS_ERR_UNKNOWN_MEMBER_ID;
        for (int32_t i = 0; !top && i < n; i++) {
                ks_str_t mid = v >= 3 ? rq->Members.items[i].MemberId : rq->MemberId;
                ks_str_t inst = v >= 3 ? rq->Members.items[i].GroupInstanceId : KS_STR_NULL;
                member_t *m = NULL;
                int16_t err = 0;
                if (inst.len > 0) {
                        m = member_find_instance(gr, inst);
                        if (!m)
                                err = KS_ERR_UNKNOWN_MEMBER_ID;
                        else if (mid.len > 0 && !str_is(mid, m->id))
                                err = KS_ERR_FENCED_INSTANCE_ID;
                } else {
                        m = member_find(gr, mid);
                        if (!m)
                                err = KS_ERR_UNKNOWN_MEMBER_ID;
                }
                if (!err) {
                        ks_log_info("group_member_left", "group=\"%s\" member=\"%s\"", gr->id, m->id);
                        remove_member(gr, m, KS_ERR_UNKNOWN_MEMBER_ID);
                        removed++;
                }
                if (v >= 3) {
                        rs[i].MemberId = mid;
                        rs[i].GroupInstanceId = inst;
                        rs[i].ErrorCode = err;
                } else {
                        top = err;
                }
        }
        if (removed > 0) {
                if (gr->nmembers == 0) {
                        /* Everyone left: an Empty group of a new generation. */
                        gr->generation++;
                        free(gr->leader);
                        gr->leader = NULL;
                        free(gr->protocol);
                        gr->protocol = NULL;
                        set_state(gr, ST_EMPTY);
                        gr->dirty = true;
                } else if (gr->state == ST_STABLE || gr->state == ST_COMPLETING) {
                        prepare_rebalance(g, gr, "member left");
                } else {
                        maybe_complete_join(g, gr);
                }
        }
        pthread_mutex_unlock(&g->lock);
        resp->ErrorCode = top;
        if (v >= 3) {
                resp->Members.items = rs;
                resp->Members.count = top ? 0 : n;
        }
        ks_req_respond(req, resp);
}

/* ------------------------------------------------------------------------ */
/* Offsets                                                                   */

ks_err_t ks_groups_check_commit(ks_groups_t *g, ks_str_t group, ks_str_t member_id, ks_str_t instance_id,
                                int32_t generation)
{
        ks_err_t err = ks_group_id_check(group);
        if (err)
                return err;
        pthread_mutex_lock(&g->lock);
        if (!coordinated(g, group)) {
                pthread_mutex_unlock(&g->lock);
                return KS_ERR_NOT_COORDINATOR;
        }
        group_t *gr = group_find(g, group);
        if (!gr) {
                if (generation >= 0 || member_id.len > 0) {
                        err = KS_ERR_ILLEGAL_GENERATION;
                } else if (!(gr = group_create(g, group))) {
                        err = KS_ERR__NOMEM;
                } else {
                        gr->dirty = true; /* a standalone/admin commit creates an Empty group */
                }
                pthread_mutex_unlock(&g->lock);
                return err;
        }
        member_t *m = member_find(gr, member_id);
        if (gr->state == ST_DEAD)
                err = KS_ERR_COORDINATOR_NOT_AVAILABLE;
        else if (instance_id.len > 0 && m && (!m->instance_id || !str_is(instance_id, m->instance_id)))
                err = KS_ERR_FENCED_INSTANCE_ID;
        else if (instance_id.len > 0 && !m && member_find_instance(gr, instance_id))
                err = KS_ERR_FENCED_INSTANCE_ID;
        else if (member_id.len > 0 && !m)
                err = KS_ERR_UNKNOWN_MEMBER_ID;
        else if (generation < 0 && member_id.len <= 0 && gr->state != ST_EMPTY)
                /* An admin commit while the group has live members. */
                err = KS_ERR_UNKNOWN_MEMBER_ID;
        else if (generation >= 0 && generation != gr->generation)
                err = KS_ERR_ILLEGAL_GENERATION;
        else if (gr->state == ST_COMPLETING)
                err = KS_ERR_REBALANCE_IN_PROGRESS;
        if (!err && m)
                m->last_seen = now_ms();
        pthread_mutex_unlock(&g->lock);
        return err;
}

/* ------------------------------------------------------------------------ */
/* Persistence                                                               */

/* Encodes the group's metadata record (caller holds the lock). */
static uint8_t *group_encode(const group_t *gr, size_t *len)
{
        Kafscale__Metadata__ConsumerGroup cg = KAFSCALE__METADATA__CONSUMER_GROUP__INIT;
        cg.group_id = gr->id;
        cg.state = (char *)state_names[gr->state];
        cg.protocol_type = gr->protocol_type ? gr->protocol_type : (char *)"";
        cg.protocol = gr->protocol ? gr->protocol : (char *)"";
        cg.leader = gr->leader ? gr->leader : (char *)"";
        cg.generation_id = gr->generation;
        cg.rebalance_timeout_ms = max_rebalance_timeout(gr);
        Kafscale__Metadata__ConsumerGroup__MembersEntry *entries = calloc((size_t)gr->nmembers + 1, sizeof(*entries));
        Kafscale__Metadata__ConsumerGroup__MembersEntry **eptrs = calloc((size_t)gr->nmembers + 1, sizeof(*eptrs));
        Kafscale__Metadata__GroupMember *gms = calloc((size_t)gr->nmembers + 1, sizeof(*gms));
        uint8_t *buf = NULL;
        if (entries && eptrs && gms) {
                int i = 0;
                for (const member_t *m = gr->members; m; m = m->next, i++) {
                        kafscale__metadata__consumer_group__members_entry__init(&entries[i]);
                        kafscale__metadata__group_member__init(&gms[i]);
                        gms[i].client_id = m->client_id ? m->client_id : (char *)"";
                        gms[i].client_host = m->client_host ? m->client_host : (char *)"";
                        gms[i].heartbeat_at = (char *)"";
                        gms[i].session_timeout_ms = m->session_timeout_ms;
                        entries[i].key = m->id;
                        entries[i].value = &gms[i];
                        eptrs[i] = &entries[i];
                }
                cg.n_members = (size_t)i;
                cg.members = eptrs;
                *len = kafscale__metadata__consumer_group__get_packed_size(&cg);
                buf = malloc(*len ? *len : 1);
                if (buf)
                        kafscale__metadata__consumer_group__pack(&cg, buf);
        }
        free(entries);
        free(eptrs);
        free(gms);
        return buf;
}

/* Unlinks and frees group `gr` (lock held): its members go, parked
 * requests answered `err`. */
static void group_remove(ks_groups_t *g, group_t *gr, int16_t err)
{
        uint32_t h = hash(gr->id, strlen(gr->id));
        for (group_t **pp = &g->buckets[h]; *pp; pp = &(*pp)->next) {
                if (*pp == gr) {
                        *pp = gr->next;
                        break;
                }
        }
        while (gr->members)
                remove_member(gr, gr->members, err);
        group_free(gr);
}

/* Cluster mode: stops coordinating `id` (lock held) — its coord entry and
 * its group go, parked requests are answered NOT_COORDINATOR.  Returns
 * whether it was coordinated. */
static bool drop_locked(ks_groups_t *g, ks_str_t id)
{
        bool had = false;
        uint32_t h = hash(id.ptr, (size_t)id.len);
        for (coord_t **pp = &g->coords[h]; *pp; pp = &(*pp)->next) {
                coord_t *c = *pp;
                if (ks_str_eq_c(id, c->id)) {
                        *pp = c->next;
                        free(c->id);
                        free(c);
                        had = true;
                        break;
                }
        }
        group_t *gr = group_find(g, id);
        if (gr)
                group_remove(g, gr, KS_ERR_NOT_COORDINATOR);
        return had;
}

/* The compare for a write of `id`'s state snapshotted in `term`: 0 with
 * *use NULL (writes not fenced) or pointing at *cmp; KS_ERR_NOT_COORDINATOR
 * when this broker no longer holds the group in that term.  Called without
 * the lock. */
static ks_err_t write_fence(ks_groups_t *g, const char *id, int64_t term, char keybuf[KS_GROUPS_FENCE_KEY_MAX],
                            ks_kv_cmp_t *cmp, const ks_kv_cmp_t **use)
{
        *use = NULL;
        if (!g->cfg.fence)
                return 0;
        if (!g->cfg.fence(g->cfg.opaque, id, keybuf, KS_GROUPS_FENCE_KEY_MAX, cmp) || cmp->number != term)
                return KS_ERR_NOT_COORDINATOR;
        *use = cmp;
        return 0;
}

/* Did a write under *use fail because of the fence? */
static bool write_fenced(ks_err_t err, const ks_kv_cmp_t *use)
{
        return err == KS_ERR_NOT_COORDINATOR || (err == KS_ERR__CONFLICT && use);
}

/* Writes one snapshot of a group record, fenced.  write_lock held. */
static ks_err_t record_put(ks_groups_t *g, const char *id, int64_t term, const uint8_t *buf, size_t len)
{
        char kb[KS_GROUPS_FENCE_KEY_MAX];
        ks_kv_cmp_t cmp;
        const ks_kv_cmp_t *use;
        ks_err_t err = write_fence(g, id, term, kb, &cmp, &use);
        if (!err)
                err = ks_meta_group_put(g->meta, id, buf, len, use);
        return write_fenced(err, use) ? KS_ERR_NOT_COORDINATOR : err;
}

typedef struct dirty {
        struct dirty *next;
        char *id;
        int64_t term;
        uint8_t *buf;
        size_t len;
} dirty_t;

static void persist_dirty(ks_groups_t *g)
{
        dirty_t *list = NULL;
        pthread_mutex_lock(&g->write_lock);
        pthread_mutex_lock(&g->lock);
        for (int b = 0; b < NBUCKETS; b++) {
                for (group_t *gr = g->buckets[b]; gr; gr = gr->next) {
                        if (!gr->dirty || gr->state == ST_DEAD)
                                continue; /* a Dead group is being deleted */
                        dirty_t *d = calloc(1, sizeof(*d));
                        if (!d)
                                continue;
                        d->id = strdup(gr->id);
                        d->term = term_of(g, ks_str_c(gr->id));
                        d->buf = group_encode(gr, &d->len);
                        if (!d->id || !d->buf) {
                                free(d->id);
                                free(d->buf);
                                free(d);
                                continue;
                        }
                        gr->dirty = false;
                        d->next = list;
                        list = d;
                }
        }
        pthread_mutex_unlock(&g->lock);
        while (list) {
                dirty_t *d = list;
                list = d->next;
                ks_err_t err = record_put(g, d->id, d->term, d->buf, d->len);
                if (err == KS_ERR_NOT_COORDINATOR) {
                        /* The group's lease is gone: another broker
                         * coordinates it (or will). */
                        ks_log_warn("group_persist_fenced", "group=\"%s\" action=unload", d->id);
                        ks_groups_fenced(g, d->id, d->term);
                } else if (err) {
                        ks_log_warn("group_persist_failed", "group=\"%s\" err=%s action=retry", d->id,
                                    ks_err_name(err));
                        pthread_mutex_lock(&g->lock);
                        group_t *gr = group_find(g, ks_str_c(d->id));
                        if (gr && term_of(g, ks_str_c(d->id)) == d->term)
                                gr->dirty = true;
                        pthread_mutex_unlock(&g->lock);
                }
                free(d->id);
                free(d->buf);
                free(d);
        }
        pthread_mutex_unlock(&g->write_lock);
}

/* Installs a stored record as an Empty group with its generation (lock
 * held, or before the coordinator thread starts).  False if memory ran
 * out. */
static bool group_install(ks_groups_t *g, const char *group, const Kafscale__Metadata__ConsumerGroup *cg)
{
        group_t *gr = group_create(g, ks_str_c(group));
        if (!gr)
                return false;
        /* Members do not survive a change of coordinator: they rejoin. */
        gr->generation = cg->generation_id;
        if (cg->protocol_type && cg->protocol_type[0])
                gr->protocol_type = strdup(cg->protocol_type);
        return true;
}

static int load_one(void *opaque, const char *group, const uint8_t *buf, size_t len)
{
        ks_groups_t *g = opaque;
        Kafscale__Metadata__ConsumerGroup *cg = kafscale__metadata__consumer_group__unpack(NULL, len, buf);
        if (!cg) {
                ks_log_warn("group_record_corrupt", "group=\"%s\" action=ignored", group);
                return 0;
        }
        group_install(g, group, cg);
        kafscale__metadata__consumer_group__free_unpacked(cg, NULL);
        return 0;
}

/* ------------------------------------------------------------------------ */
/* Cluster mode: loading and unloading one group                             */

bool ks_groups_coordinates(ks_groups_t *g, ks_str_t group)
{
        if (!g->cfg.owns)
                return true;
        pthread_mutex_lock(&g->lock);
        bool c = coord_find(g, group) != NULL;
        pthread_mutex_unlock(&g->lock);
        return c;
}

ks_err_t ks_groups_load(ks_groups_t *g, const char *group)
{
        if (!g->cfg.owns)
                return 0;
        if (!group || ks_group_id_check(ks_str_c(group)))
                return KS_ERR__INVALID_ARG;
        const ks_str_t id = ks_str_c(group);
        if (ks_groups_coordinates(g, id))
                return 0;

        uint8_t *buf = NULL;
        size_t len = 0;
        ks_err_t err = ks_meta_group_get(g->meta, group, &buf, &len);
        if (err && err != KS_ERR__NOT_FOUND) {
                ks_log_warn("group_load_failed", "group=\"%s\" err=%s action=\"retried by the next request\"", group,
                            ks_err_name(err));
                return err;
        }
        Kafscale__Metadata__ConsumerGroup *cg = NULL;
        if (buf) {
                cg = kafscale__metadata__consumer_group__unpack(NULL, len, buf);
                if (!cg)
                        ks_log_warn("group_record_corrupt", "group=\"%s\" action=ignored", group);
        }
        free(buf);

        char kb[KS_GROUPS_FENCE_KEY_MAX];
        ks_kv_cmp_t cmp;
        int64_t term = 0;
        bool installed = false;
        err = 0;
        pthread_mutex_lock(&g->lock);
        if (coord_find(g, id)) {
                /* Loaded meanwhile by another caller: what it read is as
                 * current as ours (nothing writes the record unless it is
                 * coordinated here). */
        } else if (!g->cfg.owns(g->cfg.opaque, group)) {
                err = KS_ERR_NOT_COORDINATOR;
        } else if (g->cfg.fence && !g->cfg.fence(g->cfg.opaque, group, kb, sizeof(kb), &cmp)) {
                err = KS_ERR_NOT_COORDINATOR;
        } else {
                term = g->cfg.fence ? cmp.number : 0;
                group_t *stale = group_find(g, id);
                if (stale) /* cannot happen: every group in memory is coordinated */
                        group_remove(g, stale, KS_ERR_NOT_COORDINATOR);
                coord_t *c = calloc(1, sizeof(*c));
                if (c && (c->id = strdup(group)) != NULL && (!cg || group_install(g, group, cg))) {
                        uint32_t h = hash(id.ptr, (size_t)id.len);
                        c->term = term;
                        c->next = g->coords[h];
                        g->coords[h] = c;
                        installed = true;
                } else {
                        if (c)
                                free(c->id);
                        free(c);
                        err = KS_ERR__NOMEM;
                }
        }
        pthread_mutex_unlock(&g->lock);
        if (installed)
                ks_log_info("group_loaded", "group=\"%s\" stored=%s generation=%d term=%lld", group,
                            cg ? "true" : "false", cg ? cg->generation_id : 0, (long long)term);
        if (cg)
                kafscale__metadata__consumer_group__free_unpacked(cg, NULL);
        return err;
}

void ks_groups_unload(ks_groups_t *g, const char *group, bool persist)
{
        if (!g->cfg.owns || !group || ks_group_id_check(ks_str_c(group)))
                return;
        const ks_str_t id = ks_str_c(group);
        uint8_t *buf = NULL;
        size_t len = 0;
        int64_t term = 0;
        if (persist)
                pthread_mutex_lock(&g->write_lock);
        pthread_mutex_lock(&g->lock);
        const coord_t *c = coord_find(g, id);
        bool had = c != NULL;
        if (c) {
                term = c->term;
                group_t *gr = group_find(g, id);
                if (persist && gr && gr->dirty && gr->state != ST_DEAD)
                        buf = group_encode(gr, &len);
                drop_locked(g, id);
        }
        pthread_mutex_unlock(&g->lock);
        ks_err_t err = 0;
        bool wrote = buf != NULL;
        if (buf) {
                err = record_put(g, group, term, buf, len);
                free(buf);
        }
        if (persist)
                pthread_mutex_unlock(&g->write_lock);
        if (err)
                ks_log_warn("group_unload_persist_failed", "group=\"%s\" err=%s", group, ks_err_name(err));
        if (had)
                ks_log_info("group_unloaded", "group=\"%s\" persisted=%s", group,
                            !persist ? "no" : err ? "failed" : wrote ? "yes" : "unchanged");
}

void ks_groups_fenced(ks_groups_t *g, const char *group, int64_t term)
{
        if (!g->cfg.owns || !group || ks_group_id_check(ks_str_c(group)))
                return;
        const ks_str_t id = ks_str_c(group);
        pthread_mutex_lock(&g->lock);
        const coord_t *c = coord_find(g, id);
        bool drop = c && c->term == term;
        if (drop)
                drop_locked(g, id);
        pthread_mutex_unlock(&g->lock);
        if (drop)
                ks_log_warn("group_fenced", "group=\"%s\" term=%lld action=unloaded", group, (long long)term);
}

/* ------------------------------------------------------------------------ */
/* Coordinator thread                                                        */

static void tick(ks_groups_t *g)
{
        int64_t now = now_ms();
        pthread_mutex_lock(&g->lock);
        for (int b = 0; b < NBUCKETS; b++) {
                for (group_t *gr = g->buckets[b]; gr; gr = gr->next) {
                        if (gr->state == ST_DEAD)
                                continue;
                        for (pending_t **pp = &gr->pending; *pp;) {
                                if ((*pp)->expires <= now) {
                                        pending_t *pd = *pp;
                                        *pp = pd->next;
                                        free(pd->id);
                                        free(pd);
                                } else {
                                        pp = &(*pp)->next;
                                }
                        }
                        bool changed = false;
                        for (member_t *m = gr->members, *next; m; m = next) {
                                next = m->next;
                                if (m->join_req || m->sync_req)
                                        continue; /* parked requests keep a member alive */
                                if (now - m->last_seen > m->session_timeout_ms) {
                                        ks_log_info("group_member_expired", "group=\"%s\" member=\"%s\" "
                                                                            "session_timeout_ms=%d",
                                                    gr->id, m->id, m->session_timeout_ms);
                                        remove_member(gr, m, KS_ERR_UNKNOWN_MEMBER_ID);
                                        changed = true;
                                }
                        }
                        if (gr->state == ST_COMPLETING && now >= gr->deadline) {
                                /* The leader never sent its assignment. */
                                for (member_t *m = gr->members, *next; m; m = next) {
                                        next = m->next;
                                        if (!m->sync_req) {
                                                remove_member(gr, m, KS_ERR_UNKNOWN_MEMBER_ID);
                                                changed = true;
                                        }
                                }
                        }
                        if (changed) {
                                if (gr->nmembers == 0 && gr->state != ST_PREPARING) {
                                        gr->generation++;
                                        set_state(gr, ST_EMPTY);
                                        gr->dirty = true;
                                } else if (gr->state == ST_STABLE || gr->state == ST_COMPLETING) {
                                        prepare_rebalance(g, gr, "member expired");
                                }
                        }
                        if (gr->state == ST_PREPARING) {
                                if (now >= gr->deadline)
                                        complete_join(g, gr);
                                else
                                        maybe_complete_join(g, gr);
                        }
                }
        }
        pthread_mutex_unlock(&g->lock);
}

static void *groups_main(void *arg)
{
        ks_groups_t *g = arg;
        pthread_mutex_lock(&g->lock);
        while (!g->stopping) {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                ts.tv_nsec += TICK_MS * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&g->cond, &g->lock, &ts);
                if (g->stopping)
                        break;
                pthread_mutex_unlock(&g->lock);
                tick(g);
                persist_dirty(g);
                pthread_mutex_lock(&g->lock);
        }
        pthread_mutex_unlock(&g->lock);
        return NULL;
}

/* Scrape-time gauges (registry lock held, then the coordinator lock; nothing
 * here calls into the registry with the coordinator lock held). */
static void collect_groups(void *ctx, double *values, int n)
{
        ks_groups_t *g = ctx;
        pthread_mutex_lock(&g->lock);
        for (int b = 0; b < NBUCKETS; b++)
                for (const group_t *gr = g->buckets[b]; gr; gr = gr->next)
                        if (gr->state >= 0 && gr->state < n)
                                values[gr->state] += 1;
        pthread_mutex_unlock(&g->lock);
}

static void collect_members(void *ctx, double *values, int n)
{
        ks_groups_t *g = ctx;
        int64_t members = 0;
        pthread_mutex_lock(&g->lock);
        for (int b = 0; b < NBUCKETS; b++)
                for (const group_t *gr = g->buckets[b]; gr; gr = gr->next)
                        members += gr->nmembers;
        pthread_mutex_unlock(&g->lock);
        values[0] = (double)members;
}

static void metrics_attach(ks_groups_t *g)
{
        const ks_metric_labels_t by_state = { .nseries = ST_DEAD + 1, .name = "state", .values = kafka_state_names };
        ks_metrics_t *r = ks_metrics_default();
        g->m_groups = ks_metrics_gauge_fn(r, "kafscale_consumer_groups",
                                          "Consumer groups coordinated by this broker, by state.", &by_state,
                                          collect_groups, g);
        g->m_members = ks_metrics_gauge_fn(r, "kafscale_consumer_group_members",
                                           "Members of the consumer groups coordinated by this broker.", NULL,
                                           collect_members, g);
}

ks_err_t ks_groups_open(const ks_groups_config_t *cfg, ks_meta_t *meta, ks_groups_t **out)
{
        ks_groups_t *g = calloc(1, sizeof(*g));
        if (!g)
                return KS_ERR__NOMEM;
        g->cfg = *cfg;
        g->meta = meta;
        pthread_mutex_init(&g->lock, NULL);
        pthread_mutex_init(&g->write_lock, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&g->cond, &ca);
        pthread_condattr_destroy(&ca);
        /* Cluster mode loads each group when this broker acquires it. */
        ks_err_t err = cfg->owns ? 0 : ks_meta_groups_load(meta, load_one, g);
        if (err || pthread_create(&g->thread, NULL, groups_main, g) != 0) {
                ks_groups_close(g);
                return err ? err : KS_ERR__NOMEM;
        }
        pthread_setname_np(g->thread, "ks-groups");
        metrics_attach(g);
        *out = g;
        return 0;
}

void ks_groups_close(ks_groups_t *g)
{
        if (!g)
                return;
        ks_metric_detach_ctx(ks_metrics_default(), g->m_groups, g);
        ks_metric_detach_ctx(ks_metrics_default(), g->m_members, g);
        pthread_mutex_lock(&g->lock);
        bool running = g->thread != 0;
        g->stopping = true;
        pthread_cond_signal(&g->cond);
        pthread_mutex_unlock(&g->lock);
        if (running)
                pthread_join(g->thread, NULL);
        persist_dirty(g);
        for (int b = 0; b < NBUCKETS; b++) {
                group_t *gr = g->buckets[b];
                while (gr) {
                        group_t *next = gr->next;
                        while (gr->members)
                                remove_member(gr, gr->members, KS_ERR_COORDINATOR_NOT_AVAILABLE);
                        group_free(gr);
                        gr = next;
                }
                for (coord_t *c = g->coords[b], *next; c; c = next) {
                        next = c->next;
                        free(c->id);
                        free(c);
                }
        }
        pthread_cond_destroy(&g->cond);
        pthread_mutex_destroy(&g->write_lock);
        pthread_mutex_destroy(&g->lock);
        free(g);
}

/* ------------------------------------------------------------------------ */
/* Ops APIs                                                                  */


static int summary_cmp(const void *a, const void *b)
{
        return strcmp(((const ks_group_summary_t *)a)->id, ((const ks_group_summary_t *)b)->id);
}

void ks_group_summaries_free(ks_group_summary_t *s, int n)
{
        for (int i = 0; s && i < n; i++) {
                free(s[i].id);
                free(s[i].protocol_type);
        }
        free(s);
}

int ks_groups_list(ks_groups_t *g, ks_group_summary_t **out)
{
        pthread_mutex_lock(&g->lock);
        int n = 0, cap = 16;
        ks_group_summary_t *s = malloc((size_t)cap * sizeof(*s));
        for (int b = 0; s && b < NBUCKETS; b++) {
                for (group_t *gr = g->buckets[b]; gr; gr = gr->next) {
                        if (gr->state == ST_DEAD)
                                continue;
                        if (n == cap) {
                                cap *= 2;
                                ks_group_summary_t *ns = realloc(s, (size_t)cap * sizeof(*s));
                                if (!ns) {
                                        ks_group_summaries_free(s, n);
                                        s = NULL;
                                        break;
                                }
                                s = ns;
                        }
                        s[n].id = strdup(gr->id);
                        s[n].protocol_type = strdup(gr->protocol_type ? gr->protocol_type : "");
                        s[n].state = kafka_state_names[gr->state];
                        n++;
                }
        }
        pthread_mutex_unlock(&g->lock);
        if (!s)
                return -1;
        qsort(s, (size_t)n, sizeof(*s), summary_cmp);
        *out = s;
        return n;
}

static ks_bytes_t arena_bytes(ks_arena_t *a, const uint8_t *p, size_t n)
{
        uint8_t *c = n ? ks_arena_alloc(a, n) : NULL;
        if (c)
                memcpy(c, p, n);
        return (ks_bytes_t){ c, c ? (int32_t)n : 0 };
}

void ks_groups_describe(ks_groups_t *g, ks_str_t group, bool include_ops, ks_arena_t *a, void *described)
{
        ks_DescribeGroupsResponse_DescribedGroup *d = described;
        d->GroupId = group;
        d->ErrorCode = 0;
        d->ProtocolType = KS_STR("");
        d->ProtocolData = KS_STR("");
        d->Members.count = 0;
        if (ks_group_id_check(group)) {
                d->ErrorCode = KS_ERR_INVALID_GROUP_ID;
                d->GroupState = KS_STR("");
                return; /* Kafka reports operations only without an error */
        }
        pthread_mutex_lock(&g->lock);
        if (!coordinated(g, group)) {
                pthread_mutex_unlock(&g->lock);
                d->ErrorCode = KS_ERR_NOT_COORDINATOR;
                d->GroupState = KS_STR("");
                return;
        }
        if (include_ops)
                d->AuthorizedOperations = KS_GROUP_AUTHORIZED_OPS;
        group_t *gr = group_find(g, group);
        if (!gr) {
                pthread_mutex_unlock(&g->lock);
                d->GroupState = KS_STR("Dead");
                return;
        }
        d->GroupState = ks_str_c(kafka_state_names[gr->state]);
        d->ProtocolType = ks_arena_str(a, "%s", gr->protocol_type ? gr->protocol_type : "");
        bool stable = gr->state == ST_STABLE;
        if (stable)
                d->ProtocolData = ks_arena_str(a, "%s", gr->protocol ? gr->protocol : "");
        ks_DescribeGroupsResponse_DescribedGroupMember *ms =
                ks_msg_new_array(&ks_DescribeGroupsResponse_DescribedGroupMember_desc, gr->nmembers, a);
        int n = 0;
        for (member_t *m = gr->members; ms && m; m = m->next, n++) {
                ms[n].MemberId = ks_arena_str(a, "%s", m->id);
                ms[n].GroupInstanceId = m->instance_id ? ks_arena_str(a, "%s", m->instance_id) : KS_STR_NULL;
                ms[n].ClientId = ks_arena_str(a, "%s", m->client_id ? m->client_id : "");
                ms[n].ClientHost = ks_arena_str(a, "%s", m->client_host ? m->client_host : "");
                /* Kafka shows metadata and assignment only once Stable. */
                const proto_t *p = stable && gr->protocol ? member_proto(m, gr->protocol) : NULL;
                ms[n].MemberMetadata = p ? arena_bytes(a, p->meta, p->len) : (ks_bytes_t){ NULL, 0 };
                ms[n].MemberAssignment =
                        stable ? arena_bytes(a, m->assignment, m->assignment_len) : (ks_bytes_t){ NULL, 0 };
        }
        d->Members.items = ms;
        d->Members.count = ms ? n : 0;
        pthread_mutex_unlock(&g->lock);
}

ks_err_t ks_groups_delete_begin(ks_groups_t *g, ks_str_t group, bool *known)
{
        *known = false;
        if (ks_group_id_check(group))
                return KS_ERR_INVALID_GROUP_ID;
        pthread_mutex_lock(&g->lock);
        if (!coordinated(g, group)) {
                pthread_mutex_unlock(&g->lock);
                return KS_ERR_NOT_COORDINATOR;
        }
        group_t *gr = group_find(g, group);
        ks_err_t err = 0;
        if (gr) {
                *known = true;
                if (gr->state == ST_DEAD)
                        err = KS_ERR_GROUP_ID_NOT_FOUND;
                else if (gr->nmembers > 0 || gr->state != ST_EMPTY)
                        err = KS_ERR_NON_EMPTY_GROUP;
                else
                        set_state(gr, ST_DEAD);
        }
        pthread_mutex_unlock(&g->lock);
        return err;
}

/* A Dead group whose deletion did not complete is Empty again.  Lock held. */
static void undelete_locked(ks_groups_t *g, ks_str_t group)
{
        group_t *gr = group_find(g, group);
        if (gr && gr->state == ST_DEAD)
                set_state(gr, ST_EMPTY);
}

ks_err_t ks_groups_delete_finish(ks_groups_t *g, ks_str_t group)
{
        if (ks_group_id_check(group))
                return KS_ERR_INVALID_GROUP_ID;
        char name[KS_GROUP_ID_MAX + 1];
        memcpy(name, group.ptr, (size_t)group.len);
        name[group.len] = '\0';
        char kb[KS_GROUPS_FENCE_KEY_MAX];
        ks_kv_cmp_t cmp;
        const ks_kv_cmp_t *use = NULL;

        pthread_mutex_lock(&g->write_lock);
        pthread_mutex_lock(&g->lock);
        bool coord = coordinated(g, group);
        int64_t term = term_of(g, group);
        pthread_mutex_unlock(&g->lock);
        ks_err_t err = coord ? write_fence(g, name, term, kb, &cmp, &use) : KS_ERR_NOT_COORDINATOR;
        if (!err)
                err = ks_meta_group_delete(g->meta, name, use);
        bool fenced = coord && write_fenced(err, use);
        pthread_mutex_lock(&g->lock);
        if (!err) {
                group_t *gr = group_find(g, group);
                if (gr && gr->state == ST_DEAD)
                        group_remove(g, gr, KS_ERR_COORDINATOR_NOT_AVAILABLE);
        } else if (fenced) {
                const coord_t *c = coord_find(g, group);
                if (c && c->term == term)
                        drop_locked(g, group);
        } else {
                undelete_locked(g, group);
        }
        pthread_mutex_unlock(&g->lock);
        pthread_mutex_unlock(&g->write_lock);
        if (!err)
                ks_log_info("group_deleted", "group=\"%s\"", name);
        else
                ks_log_warn("group_delete_failed", "group=\"%s\" err=%s%s", name, ks_err_name(err),
                            fenced ? " action=unloaded" : "");
        return fenced ? KS_ERR_NOT_COORDINATOR : err;
}

void ks_groups_delete_abort(ks_groups_t *g, ks_str_t group)
{
        pthread_mutex_lock(&g->lock);
        undelete_locked(g, group);
        pthread_mutex_unlock(&g->lock);
}
