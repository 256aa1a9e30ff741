/*
 * test_group.c — the group coordinator's cluster mode (group/group.h):
 * groups loaded one at a time from their stored record, unloaded on
 * hand-over (record written first) or loss, requests for groups not
 * coordinated here answered NOT_COORDINATOR, parked JoinGroup requests
 * answered NOT_COORDINATOR when their group goes, and a write the store
 * refuses because of the fence drops the group.  Embedded mode (no owns
 * callback) still loads every stored group at open.
 *
 * A real server (net/server.h) on a loopback port carries the JoinGroup
 * requests, so that parked requests are answered exactly as in the broker;
 * the dispatcher here hands them straight to the coordinator.  The cluster
 * module is played by two callbacks over a test-owned lease key in an
 * in-process store.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "group/group.h"
#include "kafscale_metadata.pb-c.h"
#include "meta/metadata.h"
#include "meta/offsets.h"
#include "protocol/gen/kafka_msgs.h"
#include "test.h"

#define LEASE_KEY "/kafscale/group-leases/any"

/* --- the cluster module, played by the test --------------------------------- */

typedef struct fake_cluster {
        pthread_mutex_t mu;
        bool owned;   /* owns() for every group */
        bool holds;   /* fence() returns true */
        ks_kv_cmp_t cmp; /* what fence() gives */
} fake_cluster_t;

static bool fake_owns(void *opaque, const char *group)
{
        fake_cluster_t *fc = opaque;
        pthread_mutex_lock(&fc->mu);
        bool o = fc->owned && group && group[0];
        pthread_mutex_unlock(&fc->mu);
        return o;
}

static bool fake_fence(void *opaque, const char *group, char *keybuf, size_t keylen, ks_kv_cmp_t *cmp)
{
        fake_cluster_t *fc = opaque;
        snprintf(keybuf, keylen, "%s", LEASE_KEY);
        pthread_mutex_lock(&fc->mu);
        *cmp = fc->cmp;
        bool h = fc->holds;
        pthread_mutex_unlock(&fc->mu);
        cmp->key = keybuf;
        if (!h)
                cmp->number = -1;
        return h;
}

/* A new term: the lease key created again; fence() gives its compare. */
static void fake_new_term(fake_cluster_t *fc, ks_kv_t *kv)
{
        CHECK_EQ_INT(ks_kv_delete_range(kv, LEASE_KEY, strlen(LEASE_KEY), NULL, 0, NULL, NULL), 0);
        int64_t rev = 0;
        CHECK_EQ_INT(ks_kv_put(kv, LEASE_KEY, strlen(LEASE_KEY), "0", 1, 0, &rev), 0);
        pthread_mutex_lock(&fc->mu);
        fc->cmp = (ks_kv_cmp_t){ .key = LEASE_KEY, .key_len = strlen(LEASE_KEY), .target = KS_KV_CMP_CREATE,
                                 .op = KS_KV_EQUAL, .number = rev };
        fc->owned = fc->holds = true;
        pthread_mutex_unlock(&fc->mu);
}

/* --- fixture: store, coordinator, server ------------------------------------ */

typedef struct fixture {
        ks_kv_t *kv;
        ks_meta_t *meta;
        fake_cluster_t fc;
        ks_groups_t *groups;
        ks_config_t cfg;
        ks_server_t *srv;
} fixture_t;

static void dispatch(void *ctx, ks_req_t *req)
{
        fixture_t *f = ctx;
        if (!req->api || ks_request_decode(req->api, req->hdr.RequestApiVersion, req->body, req->body_len,
                                           &req->arena, &req->request) != 0) {
                ks_req_close(req, "test dispatcher: cannot decode");
                return;
        }
        switch (req->hdr.RequestApiKey) {
        case KS_API_JOIN_GROUP:
                ks_groups_join(f->groups, req);
                return;
        case KS_API_HEARTBEAT:
                ks_groups_heartbeat(f->groups, req);
                return;
        default:
                ks_req_close(req, "test dispatcher: unexpected API");
        }
}

static void put_record(ks_meta_t *meta, const char *group, int32_t generation, const char *protocol_type)
{
        Kafscale__Metadata__ConsumerGroup cg = KAFSCALE__METADATA__CONSUMER_GROUP__INIT;
        cg.group_id = (char *)group;
        cg.state = (char *)"stable";
        cg.protocol_type = (char *)protocol_type;
        cg.generation_id = generation;
        uint8_t buf[256];
        size_t len = kafscale__metadata__consumer_group__pack(&cg, buf);
        CHECK_EQ_INT(ks_meta_group_put(meta, group, buf, len, NULL), 0);
}

/* Opens the store and the coordinator (cluster mode unless `embedded`) and,
 * with `server`, a server on 127.0.0.1. */
static bool fixture_open(fixture_t *f, bool embedded, bool server)
{
        memset(f, 0, sizeof(*f));
        pthread_mutex_init(&f->fc.mu, NULL);
        if (ks_kv_memory_new(NULL, &f->kv) != 0 || ks_meta_open(f->kv, &f->meta) != 0)
                return false;
        fake_new_term(&f->fc, f->kv);
        put_record(f->meta, "stored", 7, "consumer");
        ks_groups_config_t gc = { .min_session_timeout_ms = 1000,
                                  .max_session_timeout_ms = 60000,
                                  .initial_rebalance_delay_ms = 60000, /* joins stay parked */
                                  .owns = embedded ? NULL : fake_owns,
                                  .fence = embedded ? NULL : fake_fence,
                                  .opaque = &f->fc };
        if (ks_groups_open(&gc, f->meta, &f->groups) != 0)
                return false;
        if (!server)
                return true;
        snprintf(f->cfg.listen_host, sizeof(f->cfg.listen_host), "127.0.0.1");
        f->cfg.listen_port = 0;
        f->cfg.io_threads = 1;
        f->cfg.max_request_bytes = 1 << 20;
        f->cfg.idle_timeout_ms = 60000;
        f->cfg.max_connections = 16;
        f->cfg.max_inflight_per_conn = 16;
        f->srv = ks_server_new(&f->cfg, dispatch, f);
        return f->srv && ks_server_start(f->srv) == 0;
}

/* f->groups may be NULL (closed by the test). */
static void fixture_close(fixture_t *f)
{
        /* The coordinator first: it answers what is parked while the
         * server still delivers. */
        ks_groups_close(f->groups);
        if (f->srv) {
                ks_server_barrier(f->srv);
                ks_server_destroy(f->srv);
        }
        ks_meta_close(f->meta);
        ks_kv_destroy(f->kv);
        pthread_mutex_destroy(&f->fc.mu);
}

/* --- a tiny client ------------------------------------------------------------ */

static int client_connect(fixture_t *f)
{
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)ks_server_port(f->srv)) };
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        struct timeval tv = { .tv_sec = 10 };
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
                if (fd >= 0)
                        close(fd);
                return -1;
        }
        return fd;
}

static bool send_all(int fd, const uint8_t *p, size_t n)
{
        while (n > 0) {
                ssize_t w = write(fd, p, n);
                if (w <= 0)
                        return false;
                p += w;
                n -= (size_t)w;
        }
        return true;
}

static bool recv_all(int fd, uint8_t *p, size_t n)
{
        while (n > 0) {
                ssize_t r = read(fd, p, n);
                if (r <= 0)
                        return false;
                p += r;
                n -= (size_t)r;
        }
        return true;
}

/* Sends a JoinGroup v3 (non-flexible; no KIP-394 round trip) for `group`
 * without a member id. */
static bool send_join(int fd, const char *group, int32_t correlation)
{
        ks_arena_t arena;
        ks_arena_init(&arena, 1024);
        ks_JoinGroupRequest *rq = ks_msg_new(&ks_JoinGroupRequest_desc, &arena);
        ks_JoinGroupRequest_JoinGroupRequestProtocol *p =
                ks_msg_new_array(&ks_JoinGroupRequest_JoinGroupRequestProtocol_desc, 1, &arena);
        rq->GroupId = ks_str_c(group);
        rq->SessionTimeoutMs = 10000;
        rq->RebalanceTimeoutMs = 10000;
        rq->MemberId = KS_STR("");
        rq->ProtocolType = KS_STR("consumer");
        p[0].Name = KS_STR("range");
        p[0].Metadata = (ks_bytes_t){ (const uint8_t *)"m", 1 };
        rq->Protocols.items = p;
        rq->Protocols.count = 1;
        ks_wbuf_t w;
        ks_wbuf_init(&w);
        uint8_t hdr[4 + 2 + 2 + 4 + 2 + 4] = { 0 };
        const int16_t v = 3;
        hdr[4] = 0;
        hdr[5] = KS_API_JOIN_GROUP;
        hdr[6] = 0;
        hdr[7] = (uint8_t)v;
        hdr[8] = (uint8_t)(correlation >> 24);
        hdr[9] = (uint8_t)(correlation >> 16);
        hdr[10] = (uint8_t)(correlation >> 8);
        hdr[11] = (uint8_t)correlation;
        hdr[12] = 0;
        hdr[13] = 4;
        memcpy(hdr + 14, "test", 4);
        bool ok = ks_wbuf_put(&w, hdr, sizeof(hdr)) == 0 &&
                  ks_request_encode(ks_api_desc(KS_API_JOIN_GROUP), v, rq, &w) == 0;
        size_t n = ks_wbuf_len(&w);
        uint8_t *frame = malloc(n);
        if (ok && frame) {
                ks_wbuf_copyout(&w, frame);
                uint32_t size = (uint32_t)(n - 4);
                frame[0] = (uint8_t)(size >> 24);
                frame[1] = (uint8_t)(size >> 16);
                frame[2] = (uint8_t)(size >> 8);
                frame[3] = (uint8_t)size;
                ok = send_all(fd, frame, n);
        }
        free(frame);
        ks_wbuf_destroy(&w);
        ks_arena_destroy(&arena);
        return ok && frame;
}

/* Reads one JoinGroup v3 response: its error code and generation, or -1. */
static int recv_join(int fd, int32_t correlation, int32_t *generation)
{
        uint8_t sz[4];
        if (!recv_all(fd, sz, 4))
                return -1;
        uint32_t n = (uint32_t)sz[0] << 24 | (uint32_t)sz[1] << 16 | (uint32_t)sz[2] << 8 | sz[3];
        if (n < 4 || n > (1u << 20))
                return -1;
        uint8_t *body = malloc(n);
        int err = -1;
        ks_arena_t arena;
        ks_arena_init(&arena, 1024);
        void *resp = NULL;
        if (body && recv_all(fd, body, n)) {
                int32_t corr = (int32_t)((uint32_t)body[0] << 24 | (uint32_t)body[1] << 16 |
                                         (uint32_t)body[2] << 8 | body[3]);
                if (corr == correlation &&
                    ks_response_decode(ks_api_desc(KS_API_JOIN_GROUP), 3, body + 4, n - 4, &arena, &resp) == 0) {
                        const ks_JoinGroupResponse *r = resp;
                        err = r->ErrorCode;
                        *generation = r->GenerationId;
                }
        }
        free(body);
        ks_arena_destroy(&arena);
        return err;
}

/* --- helpers ------------------------------------------------------------------- */

static const char *state_of(fixture_t *f, const char *group, int16_t *err)
{
        static char state[64];
        ks_arena_t arena;
        ks_arena_init(&arena, 1024);
        ks_DescribeGroupsResponse_DescribedGroup *d =
                ks_msg_new(&ks_DescribeGroupsResponse_DescribedGroup_desc, &arena);
        ks_groups_describe(f->groups, ks_str_c(group), false, &arena, d);
        snprintf(state, sizeof(state), "%.*s", d->GroupState.len > 0 ? (int)d->GroupState.len : 0,
                 d->GroupState.ptr ? d->GroupState.ptr : "");
        *err = d->ErrorCode;
        ks_arena_destroy(&arena);
        return state;
}

static bool wait_state(fixture_t *f, const char *group, const char *want)
{
        int16_t err;
        for (int i = 0; i < 500; i++) {
                if (!strcmp(state_of(f, group, &err), want))
                        return true;
                usleep(10000);
        }
        return false;
}

static bool wait_not_coordinated(fixture_t *f, const char *group)
{
        for (int i = 0; i < 500; i++) {
                if (!ks_groups_coordinates(f->groups, ks_str_c(group)))
                        return true;
                usleep(10000);
        }
        return false;
}

static bool has_record(fixture_t *f, const char *group)
{
        uint8_t *buf = NULL;
        size_t len = 0;
        ks_err_t err = ks_meta_group_get(f->meta, group, &buf, &len);
        free(buf);
        return err == 0;
}

static ks_err_t commit_check(fixture_t *f, const char *group, int32_t generation)
{
        return ks_groups_check_commit(f->groups, ks_str_c(group), KS_STR(""), KS_STR_NULL, generation);
}

/* --- tests ----------------------------------------------------------------------- */

TEST(group_cluster_load_one_group_as_empty_with_its_generation)
{
        fixture_t f;
        REQUIRE(fixture_open(&f, false, false));
        int16_t err;

        /* Nothing is loaded at open: not coordinated here yet. */
        CHECK(!ks_groups_coordinates(f.groups, KS_STR("stored")));
        CHECK_EQ_INT(commit_check(&f, "stored", 7), KS_ERR_NOT_COORDINATOR);
        state_of(&f, "stored", &err);
        CHECK_EQ_INT(err, KS_ERR_NOT_COORDINATOR);
        ks_group_summary_t *sums = NULL;
        CHECK_EQ_INT(ks_groups_list(f.groups, &sums), 0);
        ks_group_summaries_free(sums, 0);

        /* Loaded from its record: Empty, its generation, its protocol type. */
        CHECK_EQ_INT(ks_groups_load(f.groups, "stored"), 0);
        CHECK(ks_groups_coordinates(f.groups, KS_STR("stored")));
        CHECK_EQ_STR(state_of(&f, "stored", &err), "Empty");
        CHECK_EQ_INT(err, 0);
        CHECK_EQ_INT(commit_check(&f, "stored", 6), KS_ERR_ILLEGAL_GENERATION);
        CHECK_EQ_INT(commit_check(&f, "stored", 7), 0);
        int n = ks_groups_list(f.groups, &sums);
        REQUIRE(n == 1);
        CHECK_EQ_STR(sums[0].id, "stored");
        CHECK_EQ_STR(sums[0].protocol_type, "consumer");
        CHECK_EQ_STR(sums[0].state, "Empty");
        ks_group_summaries_free(sums, n);
        /* Loading again reads nothing and changes nothing. */
        CHECK_EQ_INT(ks_groups_load(f.groups, "stored"), 0);
        CHECK_EQ_INT(commit_check(&f, "stored", 7), 0);

        /* A group without a record: coordinated, unknown until used. */
        CHECK_EQ_INT(ks_groups_load(f.groups, "fresh"), 0);
        CHECK_EQ_STR(state_of(&f, "fresh", &err), "Dead");
        CHECK_EQ_INT(err, 0);

        /* Not held (any more): nothing is installed. */
        pthread_mutex_lock(&f.fc.mu);
        f.fc.owned = false;
        pthread_mutex_unlock(&f.fc.mu);
        CHECK_EQ_INT(ks_groups_load(f.groups, "other"), KS_ERR_NOT_COORDINATOR);
        CHECK(!ks_groups_coordinates(f.groups, KS_STR("other")));
        CHECK_EQ_INT(ks_groups_load(f.groups, "bad/id"), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_groups_load(f.groups, ""), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_groups_load(f.groups, NULL), KS_ERR__INVALID_ARG);

        /* Lost: gone at once, nothing written. */
        ks_groups_unload(f.groups, "stored", false);
        CHECK(!ks_groups_coordinates(f.groups, KS_STR("stored")));
        CHECK_EQ_INT(commit_check(&f, "stored", 7), KS_ERR_NOT_COORDINATOR);
        ks_groups_unload(f.groups, "never-loaded", true); /* no-op */
        ks_groups_unload(f.groups, NULL, true);
        fixture_close(&f);
}

TEST(group_cluster_unload_answers_parked_join_not_coordinator)
{
        fixture_t f;
        REQUIRE(fixture_open(&f, false, true));
        int fd = client_connect(&f);
        REQUIRE(fd >= 0);
        int32_t gen = 0;

        /* Not coordinated: refused at once. */
        REQUIRE(send_join(fd, "stored", 1));
        CHECK_EQ_INT(recv_join(fd, 1, &gen), KS_ERR_NOT_COORDINATOR);
        CHECK_EQ_INT(gen, -1);

        /* Hand-over: the parked join is answered NOT_COORDINATOR. */
        REQUIRE(ks_groups_load(f.groups, "stored") == 0);
        REQUIRE(send_join(fd, "stored", 2));
        CHECK(wait_state(&f, "stored", "PreparingRebalance"));
        ks_groups_unload(f.groups, "stored", true);
        CHECK_EQ_INT(recv_join(fd, 2, &gen), KS_ERR_NOT_COORDINATOR);
        CHECK_EQ_INT(gen, -1);
        REQUIRE(send_join(fd, "stored", 3));
        CHECK_EQ_INT(recv_join(fd, 3, &gen), KS_ERR_NOT_COORDINATOR);

        /* Loss: the same, without writing. */
        REQUIRE(ks_groups_load(f.groups, "stored") == 0);
        REQUIRE(send_join(fd, "stored", 4));
        CHECK(wait_state(&f, "stored", "PreparingRebalance"));
        ks_groups_unload(f.groups, "stored", false);
        CHECK_EQ_INT(recv_join(fd, 4, &gen), KS_ERR_NOT_COORDINATOR);

        /* Closing answers what is still parked (COORDINATOR_NOT_AVAILABLE). */
        REQUIRE(ks_groups_load(f.groups, "stored") == 0);
        REQUIRE(send_join(fd, "stored", 5));
        CHECK(wait_state(&f, "stored", "PreparingRebalance"));
        ks_groups_close(f.groups);
        f.groups = NULL;
        CHECK_EQ_INT(recv_join(fd, 5, &gen), KS_ERR_COORDINATOR_NOT_AVAILABLE);
        close(fd);
        fixture_close(&f);
}

TEST(group_cluster_release_writes_the_record_before_unloading)
{
        fixture_t f;
        REQUIRE(fixture_open(&f, false, false));
        REQUIRE(ks_groups_load(f.groups, "fresh") == 0);
        CHECK(!has_record(&f, "fresh"));
        /* A standalone commit creates the group: a record to write. */
        CHECK_EQ_INT(commit_check(&f, "fresh", -1), 0);
        ks_groups_unload(f.groups, "fresh", true);
        CHECK(has_record(&f, "fresh")); /* written by the time unload returned */
        CHECK(!ks_groups_coordinates(f.groups, KS_STR("fresh")));
        /* Loaded again (next term) it comes back from that record. */
        CHECK_EQ_INT(ks_groups_load(f.groups, "fresh"), 0);
        CHECK_EQ_INT(commit_check(&f, "fresh", 0), 0);
        fixture_close(&f);
}

TEST(group_cluster_fenced_write_drops_the_group)
{
        fixture_t f;
        REQUIRE(fixture_open(&f, false, false));

        /* Another term began in the store; this coordinator still uses
         * the old compare: the coalesced write is refused and the group
         * dropped. */
        REQUIRE(ks_groups_load(f.groups, "b") == 0);
        CHECK_EQ_INT(ks_kv_delete_range(f.kv, LEASE_KEY, strlen(LEASE_KEY), NULL, 0, NULL, NULL), 0);
        CHECK_EQ_INT(ks_kv_put(f.kv, LEASE_KEY, strlen(LEASE_KEY), "9", 1, 0, NULL), 0);
        CHECK_EQ_INT(commit_check(&f, "b", -1), 0); /* dirty: the writer tries */
        CHECK(wait_not_coordinated(&f, "b"));
        CHECK(!has_record(&f, "b"));
        CHECK_EQ_INT(commit_check(&f, "b", -1), KS_ERR_NOT_COORDINATOR);

        /* The cluster module says the term is over: nothing is written,
         * the group is dropped. */
        fake_new_term(&f.fc, f.kv);
        REQUIRE(ks_groups_load(f.groups, "c") == 0);
        pthread_mutex_lock(&f.fc.mu);
        f.fc.holds = false;
        pthread_mutex_unlock(&f.fc.mu);
        CHECK_EQ_INT(commit_check(&f, "c", -1), 0);
        CHECK(wait_not_coordinated(&f, "c"));
        CHECK(!has_record(&f, "c"));

        /* ks_groups_fenced drops only the term it names. */
        fake_new_term(&f.fc, f.kv);
        REQUIRE(ks_groups_load(f.groups, "d") == 0);
        ks_groups_fenced(f.groups, "d", f.fc.cmp.number - 1);
        CHECK(ks_groups_coordinates(f.groups, KS_STR("d")));
        ks_groups_fenced(f.groups, "d", f.fc.cmp.number);
        CHECK(!ks_groups_coordinates(f.groups, KS_STR("d")));
        fixture_close(&f);
}

TEST(group_cluster_delete_is_fenced)
{
        fixture_t f;
        REQUIRE(fixture_open(&f, false, false));
        bool known;
        /* Held: the record goes. */
        REQUIRE(ks_groups_load(f.groups, "stored") == 0);
        CHECK_EQ_INT(ks_groups_delete_begin(f.groups, KS_STR("stored"), &known), 0);
        CHECK(known);
        CHECK_EQ_INT(ks_groups_delete_finish(f.groups, KS_STR("stored")), 0);
        CHECK(!has_record(&f, "stored"));
        CHECK(ks_groups_coordinates(f.groups, KS_STR("stored"))); /* still its coordinator */

        /* Refused by the store: NOT_COORDINATOR, the group dropped, the
         * record kept. */
        put_record(f.meta, "kept", 3, "consumer");
        REQUIRE(ks_groups_load(f.groups, "kept") == 0);
        CHECK_EQ_INT(ks_groups_delete_begin(f.groups, KS_STR("kept"), &known), 0);
        CHECK_EQ_INT(ks_kv_delete_range(f.kv, LEASE_KEY, strlen(LEASE_KEY), NULL, 0, NULL, NULL), 0);
        CHECK_EQ_INT(ks_groups_delete_finish(f.groups, KS_STR("kept")), KS_ERR_NOT_COORDINATOR);
        CHECK(has_record(&f, "kept"));
        CHECK(!ks_groups_coordinates(f.groups, KS_STR("kept")));

        /* Not coordinated here at all. */
        CHECK_EQ_INT(ks_groups_delete_begin(f.groups, KS_STR("elsewhere"), &known), KS_ERR_NOT_COORDINATOR);

        /* Abort: a group marked Dead is Empty again. */
        fake_new_term(&f.fc, f.kv);
        REQUIRE(ks_groups_load(f.groups, "kept") == 0);
        CHECK_EQ_INT(ks_groups_delete_begin(f.groups, KS_STR("kept"), &known), 0);
        int16_t err;
        CHECK_EQ_STR(state_of(&f, "kept", &err), "Dead");
        ks_groups_delete_abort(f.groups, KS_STR("kept"));
        CHECK_EQ_STR(state_of(&f, "kept", &err), "Empty");
        CHECK_EQ_INT(commit_check(&f, "kept", 3), 0);
        fixture_close(&f);
}

TEST(group_embedded_mode_loads_every_group_and_serves_all)
{
        fixture_t f;
        REQUIRE(fixture_open(&f, true, false));
        /* Opened after the record was written: loaded at open. */
        CHECK(ks_groups_coordinates(f.groups, KS_STR("stored")));
        CHECK(ks_groups_coordinates(f.groups, KS_STR("anything")));
        int16_t err;
        CHECK_EQ_STR(state_of(&f, "stored", &err), "Empty");
        CHECK_EQ_INT(commit_check(&f, "stored", 7), 0);
        CHECK_EQ_INT(ks_groups_load(f.groups, "x"), 0);
        ks_groups_unload(f.groups, "stored", true); /* no-op outside cluster mode */
        CHECK_EQ_INT(commit_check(&f, "stored", 7), 0);
        CHECK_EQ_INT(commit_check(&f, "new", -1), 0);
        fixture_close(&f);
}
