/*
 * ops_example.c — the programmatic example of the Ops API spec
 * (docs: "Kafscale Ops API v1", section "Franz-go (Programmatic)"), in C.
 *
 *   build/examples/ops_example [bootstrap [topic [group]]]
 *       bootstrap  host:port of a broker (default 127.0.0.1:9092;
 *                  "[::1]:9092" for IPv6; the port defaults to 9092)
 *       topic      default "orders"
 *       group      default "my-group"
 *
 * It sends, on one TCP connection, ApiVersions v3 and then exactly the
 * requests of the spec's franz-go listing, in its order:
 *
 *   ListGroups v5            StatesFilter ["Stable"], TypesFilter ["classic"]
 *   DescribeGroups v5        [group]
 *   OffsetForLeaderEpoch v3  ReplicaId -1; topic partition 0,
 *                            CurrentLeaderEpoch -1, LeaderEpoch 0
 *   DescribeConfigs v4       TOPIC topic, ["retention.ms"]
 *   AlterConfigs v1          TOPIC topic, retention.ms=120000
 *   CreatePartitions v3      topic to 6 partitions
 *   DeleteGroups v2          [group]
 *
 * Other fields keep franz-go's defaults (CreatePartitions: TimeoutMs 60000,
 * null Assignments; everything else false/empty).  A request whose version
 * the broker does not advertise in ApiVersions is not sent: its section says
 * "not supported by this broker" and the program goes on.
 *
 * Each response is printed as one section, "== <Api> v<N> ==", followed by
 * key=value lines (error codes as "<code> (<NAME>)", null strings as
 * "null").  A Kafka error code in a response is printed, not fatal.
 *
 * Exit status: 0 when every request sent got a decodable response; 1 when
 * the connection or a response failed (connect, I/O, timeout, framing,
 * correlation id, decoding); 2 on bad arguments.
 *
 * Unlike franz-go, which routes each request (group requests to the group
 * coordinator, CreatePartitions to the controller, ...), everything goes to
 * the bootstrap broker; a broker that is not the right one answers with an
 * error code (e.g. NOT_COORDINATOR), which is printed.
 *
 * The client is the project's generated codec (protocol/codec.h) over a
 * blocking socket: a request struct is encoded behind a request header into
 * a ks_wbuf_t, written with writev, and the size-prefixed response is read,
 * its header parsed and its body decoded into an arena.
 */
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#include "protocol/codec.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/arena.h"
#include "util/bytes.h"
#include "util/err.h"
#include "util/wbuf.h"

#define CLIENT_ID "kafscale-ops-example"
#define SOFTWARE_NAME "kafscale-ops-example"
#define SOFTWARE_VERSION "1.0"
#define IO_TIMEOUT_S 70              /* > CreatePartitions' TimeoutMs (60 s) */
#define MAX_RESPONSE_BYTES (100 << 20)

#define RESOURCE_TOPIC 2             /* ConfigResource type TOPIC */

/* printf("%.*s", STR(s)) prints a ks_str_t, "null" for a null string. */
#define STR(s) ((s).len < 0 ? 4 : (int)(s).len), ((s).len < 0 ? "null" : (s).ptr)

/* --- the tiny blocking client ------------------------------------------------ */

typedef struct client {
        int fd;
        int32_t next_corr;
        const ks_ApiVersionsResponse *versions; /* after ApiVersions */
} client_t;

static int split_host_port(const char *bootstrap, char *host, size_t hostcap, char *port, size_t portcap)
{
        const char *h = bootstrap, *p = NULL;
        size_t hlen;
        if (bootstrap[0] == '[') {
                const char *end = strchr(bootstrap, ']');
                if (!end)
                        return -1;
                h = bootstrap + 1;
                hlen = (size_t)(end - h);
                if (end[1] == ':')
                        p = end + 2;
                else if (end[1] != '\0')
                        return -1;
        } else {
                const char *colon = strrchr(bootstrap, ':');
                hlen = colon ? (size_t)(colon - bootstrap) : strlen(bootstrap);
                p = colon ? colon + 1 : NULL;
        }
        if (hlen == 0 || hlen >= hostcap)
                return -1;
        memcpy(host, h, hlen);
        host[hlen] = '\0';
        snprintf(port, portcap, "%s", p && *p ? p : "9092");
        return 0;
}

static int client_connect(client_t *c, const char *bootstrap)
{
        char host[256], port[16];
        if (split_host_port(bootstrap, host, sizeof(host), port, sizeof(port))) {
                fprintf(stderr, "ops_example: bad bootstrap address '%s' (want host:port)\n", bootstrap);
                return -1;
        }
        struct addrinfo hints = { 0 }, *res = NULL;
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        int rc = getaddrinfo(host, port, &hints, &res);
        if (rc) {
                fprintf(stderr, "ops_example: cannot resolve %s:%s: %s\n", host, port, gai_strerror(rc));
                return -1;
        }
        int fd = -1, err = 0;
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
                if (fd < 0) {
                        err = errno;
                        continue;
                }
                if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
                        break;
                err = errno;
                close(fd);
                fd = -1;
        }
        freeaddrinfo(res);
        if (fd < 0) {
                fprintf(stderr, "ops_example: cannot connect to %s:%s: %s\n", host, port, strerror(err));
                return -1;
        }
        struct timeval tv = { .tv_sec = IO_TIMEOUT_S };
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->fd = fd;
        c->next_corr = 1;
        c->versions = NULL;
        return 0;
}

static int write_all(int fd, ks_wbuf_t *w)
{
        while (ks_wbuf_len(w) > 0) {
                struct iovec *iov;
                int n;
                ks_wbuf_iov(w, &iov, &n);
                ssize_t k = writev(fd, iov, n > IOV_MAX ? IOV_MAX : n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0) {
                        fprintf(stderr, "ops_example: write failed: %s\n",
                                errno == EAGAIN ? "timed out" : strerror(errno));
                        return -1;
                }
                ks_wbuf_consume(w, (size_t)k);
        }
        return 0;
}

static int read_all(int fd, uint8_t *buf, size_t n)
{
        size_t got = 0;
        while (got < n) {
                ssize_t k = read(fd, buf + got, n - got);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0) {
                        fprintf(stderr, "ops_example: read failed: %s\n",
                                errno == EAGAIN ? "timed out" : strerror(errno));
                        return -1;
                }
                if (k == 0) {
                        fprintf(stderr, "ops_example: the broker closed the connection\n");
                        return -1;
                }
                got += (size_t)k;
        }
        return 0;
}

/* Sends `req` (a request struct of `api_key`) at `version` and decodes the
 * response into `arena`.  0, or -1 after printing why (transport or
 * decoding failure). */
static int client_call(client_t *c, int16_t api_key, int16_t version, const void *req, ks_arena_t *arena,
                       void **resp_out)
{
        const ks_api_desc_t *api = ks_api_desc(api_key);
        if (!api) {
                fprintf(stderr, "ops_example: api key %d is not in the codec\n", api_key);
                return -1;
        }
        int32_t corr = c->next_corr++;
        ks_req_header_t h = { api_key, version, corr, KS_STR(CLIENT_ID) };
        ks_wbuf_t w;
        ks_wbuf_init(&w);
        size_t start = ks_frame_begin_request(&w, &h);
        ks_err_t err = start == (size_t)-1 ? KS_ERR__NOMEM : ks_request_encode(api, version, req, &w);
        if (err) {
                fprintf(stderr, "ops_example: cannot encode %s v%d: %s\n", api->name, version, ks_err_name(err));
                ks_wbuf_destroy(&w);
                return -1;
        }
        ks_frame_finish(&w, start);
        int rc = write_all(c->fd, &w);
        ks_wbuf_destroy(&w);
        if (rc)
                return -1;

        uint8_t size_be[4];
        if (read_all(c->fd, size_be, sizeof(size_be)))
                return -1;
        int32_t size = (int32_t)ks_be32_get(size_be);
        if (size < 4 || size > MAX_RESPONSE_BYTES) {
                fprintf(stderr, "ops_example: %s v%d: bad response size %d\n", api->name, version, size);
                return -1;
        }
        /* The decoded response points into this buffer: it lives in the arena. */
        uint8_t *buf = ks_arena_alloc(arena, (size_t)size);
        if (!buf) {
                fprintf(stderr, "ops_example: out of memory\n");
                return -1;
        }
        if (read_all(c->fd, buf, (size_t)size))
                return -1;
        int32_t got_corr = 0;
        size_t off = 0;
        if (ks_resp_header_parse(buf, (size_t)size, ks_response_header_version(api_key, version), &got_corr, &off)) {
                fprintf(stderr, "ops_example: %s v%d: malformed response header\n", api->name, version);
                return -1;
        }
        if (got_corr != corr) {
                fprintf(stderr, "ops_example: %s v%d: correlation id %d, expected %d\n", api->name, version,
                        got_corr, corr);
                return -1;
        }
        err = ks_response_decode(api, version, buf + off, (size_t)size - off, arena, resp_out);
        if (err) {
                fprintf(stderr, "ops_example: %s v%d: cannot decode the response: %s\n", api->name, version,
                        ks_err_name(err));
                return -1;
        }
        return 0;
}

/* The range the broker advertised for `api_key`; false if not listed. */
static bool advertised(const client_t *c, int16_t api_key, int16_t *min, int16_t *max)
{
        for (int32_t i = 0; c->versions && i < c->versions->ApiKeys.count; i++) {
                const ks_ApiVersionsResponse_ApiVersion *k = &c->versions->ApiKeys.items[i];
                if (k->ApiKey == api_key) {
                        *min = k->MinVersion;
                        *max = k->MaxVersion;
                        return true;
                }
        }
        return false;
}

/* Prints the section header; returns false (after saying so) if the broker
 * does not advertise `version` of `api_key`. */
static bool section(const client_t *c, int16_t api_key, int16_t version)
{
        const ks_api_desc_t *api = ks_api_desc(api_key);
        printf("\n== %s v%d ==\n", api ? api->name : "?", version);
        int16_t min = -1, max = -1;
        if (!advertised(c, api_key, &min, &max)) {
                printf("not supported by this broker (api key %d not advertised)\n", api_key);
                return false;
        }
        if (min < 0 || max < 0 || version < min || version > max) {
                printf("not supported by this broker (advertised versions %d..%d)\n", min, max);
                return false;
        }
        return true;
}

/* --- printing helpers --------------------------------------------------------- */

static void print_err(const char *key, int16_t code)
{
        printf("%s=%d (%s)", key, code, code == 0 ? "NONE" : ks_err_name(code));
}

static const char *resource_type_name(int8_t t)
{
        switch (t) {
        case 2: return "TOPIC";
        case 4: return "BROKER";
        case 8: return "BROKER_LOGGER";
        case 16: return "CLIENT_METRICS";
        case 32: return "GROUP";
        default: return "UNKNOWN";
        }
}

static const char *config_source_name(int8_t s)
{
        static const char *const names[] = {
                "UNKNOWN", "DYNAMIC_TOPIC_CONFIG", "DYNAMIC_BROKER_CONFIG", "DYNAMIC_DEFAULT_BROKER_CONFIG",
                "STATIC_BROKER_CONFIG", "DEFAULT_CONFIG", "DYNAMIC_BROKER_LOGGER_CONFIG", "CLIENT_METRICS_CONFIG",
                "GROUP_CONFIG",
        };
        return s >= 0 && s < (int8_t)(sizeof(names) / sizeof(names[0])) ? names[s] : "UNKNOWN";
}

static const char *config_type_name(int8_t t)
{
        static const char *const names[] = {
                "UNKNOWN", "BOOLEAN", "STRING", "INT", "SHORT", "LONG", "DOUBLE", "LIST", "CLASS", "PASSWORD",
        };
        return t >= 0 && t < (int8_t)(sizeof(names) / sizeof(names[0])) ? names[t] : "UNKNOWN";
}

/* Prints a consumer-protocol assignment (ConsumerProtocolAssignment: i16
 * version, [topic string, [partition i32]], user data) as
 * "topic[0,1],other[2]"; returns false if the bytes are not one. */
static bool print_consumer_assignment(ks_bytes_t a)
{
        if (a.len < 0)
                return false;
        ks_rbuf_t r = ks_rbuf_make(a.ptr, (size_t)a.len);
        const uint8_t *p;
        if (ks_rbuf_take(&r, 2, &p) || ks_rbuf_take(&r, 4, &p))
                return false;
        int32_t nt = (int32_t)ks_be32_get(p);
        if (nt < 0 || (size_t)nt > ks_rbuf_left(&r) / 6)
                return false;
        /* Check everything before printing anything. */
        ks_rbuf_t scan = r;
        for (int32_t i = 0; i < nt; i++) {
                if (ks_rbuf_take(&scan, 2, &p))
                        return false;
                int16_t tl = (int16_t)ks_be16_get(p);
                if (tl < 0 || ks_rbuf_skip(&scan, (size_t)tl) || ks_rbuf_take(&scan, 4, &p))
                        return false;
                int32_t np = (int32_t)ks_be32_get(p);
                if (np < 0 || (size_t)np > ks_rbuf_left(&scan) / 4 || ks_rbuf_skip(&scan, (size_t)np * 4))
                        return false;
        }
        if (nt == 0)
                printf("-");
        for (int32_t i = 0; i < nt; i++) {
                /* Cannot fail: the scan above checked every length. */
                const uint8_t *name = NULL;
                if (ks_rbuf_take(&r, 2, &p))
                        return false;
                int16_t tl = (int16_t)ks_be16_get(p);
                if (ks_rbuf_take(&r, (size_t)tl, &name) || ks_rbuf_take(&r, 4, &p))
                        return false;
                int32_t np = (int32_t)ks_be32_get(p);
                printf("%s%.*s[", i ? "," : "", (int)tl, (const char *)name);
                for (int32_t j = 0; j < np && !ks_rbuf_take(&r, 4, &p); j++)
                        printf("%s%d", j ? "," : "", (int32_t)ks_be32_get(p));
                printf("]");
        }
        return true;
}

/* --- the requests ------------------------------------------------------------- */

static int oom(void)
{
        fprintf(stderr, "ops_example: out of memory\n");
        return -1;
}

static int do_api_versions(client_t *c, ks_arena_t *arena)
{
        ks_ApiVersionsRequest *rq = ks_msg_new(&ks_ApiVersionsRequest_desc, arena);
        if (!rq)
                return oom();
        rq->ClientSoftwareName = KS_STR(SOFTWARE_NAME);
        rq->ClientSoftwareVersion = KS_STR(SOFTWARE_VERSION);
        ks_ApiVersionsResponse *resp;
        printf("== ApiVersions v3 ==\n");
        if (client_call(c, KS_API_API_VERSIONS, 3, rq, arena, (void **)&resp))
                return -1;
        print_err("error_code", resp->ErrorCode);
        printf(" apis=%d\n", resp->ApiKeys.count);
        if (resp->ErrorCode) {
                fprintf(stderr, "ops_example: ApiVersions failed: %s\n", ks_err_name(resp->ErrorCode));
                return -1;
        }
        c->versions = resp;
        static const int16_t used[] = {
                KS_API_LIST_GROUPS,       KS_API_DESCRIBE_GROUPS, KS_API_OFFSET_FOR_LEADER_EPOCH,
                KS_API_DESCRIBE_CONFIGS,  KS_API_ALTER_CONFIGS,   KS_API_CREATE_PARTITIONS,
                KS_API_DELETE_GROUPS,
        };
        for (size_t i = 0; i < sizeof(used) / sizeof(used[0]); i++) {
                int16_t min = -1, max = -1;
                bool listed = advertised(c, used[i], &min, &max);
                const ks_api_desc_t *api = ks_api_desc(used[i]);
                if (listed)
                        printf("api name=%s key=%d min_version=%d max_version=%d\n", api->name, used[i], min, max);
                else
                        printf("api name=%s key=%d not listed\n", api->name, used[i]);
        }
        return 0;
}

static int do_list_groups(client_t *c, ks_arena_t *arena)
{
        const int16_t v = 5;
        if (!section(c, KS_API_LIST_GROUPS, v))
                return 0;
        ks_ListGroupsRequest *rq = ks_msg_new(&ks_ListGroupsRequest_desc, arena);
        ks_str_t *states = ks_array_new(sizeof(ks_str_t), 1, arena);
        ks_str_t *types = ks_array_new(sizeof(ks_str_t), 1, arena);
        if (!rq || !states || !types)
                return oom();
        states[0] = KS_STR("Stable");
        types[0] = KS_STR("classic");
        rq->StatesFilter.items = states;
        rq->StatesFilter.count = 1;
        rq->TypesFilter.items = types;
        rq->TypesFilter.count = 1;
        ks_ListGroupsResponse *resp;
        if (client_call(c, KS_API_LIST_GROUPS, v, rq, arena, (void **)&resp))
                return -1;
        print_err("error_code", resp->ErrorCode);
        printf(" throttle_time_ms=%d groups=%d\n", resp->ThrottleTimeMs, resp->Groups.count);
        for (int32_t i = 0; i < resp->Groups.count; i++) {
                const ks_ListGroupsResponse_ListedGroup *g = &resp->Groups.items[i];
                printf("group group_id=%.*s protocol_type=%.*s state=%.*s type=%.*s\n", STR(g->GroupId),
                       STR(g->ProtocolType), STR(g->GroupState), STR(g->GroupType));
        }
        return 0;
}

static int do_describe_groups(client_t *c, ks_arena_t *arena, const char *group)
{
        const int16_t v = 5;
        if (!section(c, KS_API_DESCRIBE_GROUPS, v))
                return 0;
        ks_DescribeGroupsRequest *rq = ks_msg_new(&ks_DescribeGroupsRequest_desc, arena);
        ks_str_t *groups = ks_array_new(sizeof(ks_str_t), 1, arena);
        if (!rq || !groups)
                return oom();
        groups[0] = ks_str_c(group);
        rq->Groups.items = groups;
        rq->Groups.count = 1;
        ks_DescribeGroupsResponse *resp;
        if (client_call(c, KS_API_DESCRIBE_GROUPS, v, rq, arena, (void **)&resp))
                return -1;
        printf("throttle_time_ms=%d groups=%d\n", resp->ThrottleTimeMs, resp->Groups.count);
        for (int32_t i = 0; i < resp->Groups.count; i++) {
                const ks_DescribeGroupsResponse_DescribedGroup *g = &resp->Groups.items[i];
                printf("group group_id=%.*s ", STR(g->GroupId));
                print_err("error_code", g->ErrorCode);
                printf(" state=%.*s protocol_type=%.*s protocol=%.*s members=%d\n", STR(g->GroupState),
                       STR(g->ProtocolType), STR(g->ProtocolData), g->Members.count);
                bool consumer = ks_str_eq_c(g->ProtocolType, "consumer");
                for (int32_t j = 0; j < g->Members.count; j++) {
                        const ks_DescribeGroupsResponse_DescribedGroupMember *m = &g->Members.items[j];
                        printf("  member member_id=%.*s group_instance_id=%.*s client_id=%.*s client_host=%.*s "
                               "metadata_bytes=%d assignment=",
                               STR(m->MemberId), STR(m->GroupInstanceId), STR(m->ClientId), STR(m->ClientHost),
                               m->MemberMetadata.len < 0 ? 0 : m->MemberMetadata.len);
                        if (!consumer || !print_consumer_assignment(m->MemberAssignment))
                                printf("%d bytes", m->MemberAssignment.len < 0 ? 0 : m->MemberAssignment.len);
                        printf("\n");
                }
        }
        return 0;
}

static int do_offset_for_leader_epoch(client_t *c, ks_arena_t *arena, const char *topic)
{
        const int16_t v = 3;
        if (!section(c, KS_API_OFFSET_FOR_LEADER_EPOCH, v))
                return 0;
        ks_OffsetForLeaderEpochRequest *rq = ks_msg_new(&ks_OffsetForLeaderEpochRequest_desc, arena);
        ks_OffsetForLeaderEpochRequest_OffsetForLeaderTopic *t =
                ks_msg_new_array(&ks_OffsetForLeaderEpochRequest_OffsetForLeaderTopic_desc, 1, arena);
        ks_OffsetForLeaderEpochRequest_OffsetForLeaderPartition *p =
                ks_msg_new_array(&ks_OffsetForLeaderEpochRequest_OffsetForLeaderPartition_desc, 1, arena);
        if (!rq || !t || !p)
                return oom();
        p[0].Partition = 0;
        p[0].CurrentLeaderEpoch = -1;
        p[0].LeaderEpoch = 0;
        t[0].Topic = ks_str_c(topic);
        t[0].Partitions.items = p;
        t[0].Partitions.count = 1;
        rq->ReplicaId = -1;
        rq->Topics.items = t;
        rq->Topics.count = 1;
        ks_OffsetForLeaderEpochResponse *resp;
        if (client_call(c, KS_API_OFFSET_FOR_LEADER_EPOCH, v, rq, arena, (void **)&resp))
                return -1;
        printf("throttle_time_ms=%d topics=%d\n", resp->ThrottleTimeMs, resp->Topics.count);
        for (int32_t i = 0; i < resp->Topics.count; i++) {
                const ks_OffsetForLeaderEpochResponse_OffsetForLeaderTopicResult *tr = &resp->Topics.items[i];
                for (int32_t j = 0; j < tr->Partitions.count; j++) {
                        const ks_OffsetForLeaderEpochResponse_EpochEndOffset *pr = &tr->Partitions.items[j];
                        printf("partition topic=%.*s partition=%d ", STR(tr->Topic), pr->Partition);
                        print_err("error_code", pr->ErrorCode);
                        printf(" leader_epoch=%d end_offset=%lld\n", pr->LeaderEpoch, (long long)pr->EndOffset);
                }
        }
        return 0;
}

static int do_describe_configs(client_t *c, ks_arena_t *arena, const char *topic)
{
        const int16_t v = 4;
        if (!section(c, KS_API_DESCRIBE_CONFIGS, v))
                return 0;
        ks_DescribeConfigsRequest *rq = ks_msg_new(&ks_DescribeConfigsRequest_desc, arena);
        ks_DescribeConfigsRequest_DescribeConfigsResource *res =
                ks_msg_new_array(&ks_DescribeConfigsRequest_DescribeConfigsResource_desc, 1, arena);
        ks_str_t *keys = ks_array_new(sizeof(ks_str_t), 1, arena);
        if (!rq || !res || !keys)
                return oom();
        keys[0] = KS_STR("retention.ms");
        res[0].ResourceType = RESOURCE_TOPIC;
        res[0].ResourceName = ks_str_c(topic);
        res[0].ConfigurationKeys.items = keys;
        res[0].ConfigurationKeys.count = 1;
        rq->Resources.items = res;
        rq->Resources.count = 1;
        ks_DescribeConfigsResponse *resp;
        if (client_call(c, KS_API_DESCRIBE_CONFIGS, v, rq, arena, (void **)&resp))
                return -1;
        printf("throttle_time_ms=%d resources=%d\n", resp->ThrottleTimeMs, resp->Results.count);
        for (int32_t i = 0; i < resp->Results.count; i++) {
                const ks_DescribeConfigsResponse_DescribeConfigsResult *r = &resp->Results.items[i];
                printf("resource type=%d (%s) name=%.*s ", r->ResourceType, resource_type_name(r->ResourceType),
                       STR(r->ResourceName));
                print_err("error_code", r->ErrorCode);
                printf(" error_message=%.*s configs=%d\n", STR(r->ErrorMessage), r->Configs.count);
                for (int32_t j = 0; j < r->Configs.count; j++) {
                        const ks_DescribeConfigsResponse_DescribeConfigsResourceResult *e = &r->Configs.items[j];
                        printf("  config name=%.*s value=%.*s source=%d (%s) read_only=%s sensitive=%s "
                               "type=%s synonyms=%d\n",
                               STR(e->Name), STR(e->Value), e->ConfigSource, config_source_name(e->ConfigSource),
                               e->ReadOnly ? "true" : "false", e->IsSensitive ? "true" : "false",
                               config_type_name(e->ConfigType), e->Synonyms.count);
                }
        }
        return 0;
}

static int do_alter_configs(client_t *c, ks_arena_t *arena, const char *topic)
{
        const int16_t v = 1;
        if (!section(c, KS_API_ALTER_CONFIGS, v))
                return 0;
        ks_AlterConfigsRequest *rq = ks_msg_new(&ks_AlterConfigsRequest_desc, arena);
        ks_AlterConfigsRequest_AlterConfigsResource *res =
                ks_msg_new_array(&ks_AlterConfigsRequest_AlterConfigsResource_desc, 1, arena);
        ks_AlterConfigsRequest_AlterableConfig *cfg =
                ks_msg_new_array(&ks_AlterConfigsRequest_AlterableConfig_desc, 1, arena);
        if (!rq || !res || !cfg)
                return oom();
        cfg[0].Name = KS_STR("retention.ms");
        cfg[0].Value = KS_STR("120000");
        res[0].ResourceType = RESOURCE_TOPIC;
        res[0].ResourceName = ks_str_c(topic);
        res[0].Configs.items = cfg;
        res[0].Configs.count = 1;
        rq->Resources.items = res;
        rq->Resources.count = 1;
        rq->ValidateOnly = false;
        ks_AlterConfigsResponse *resp;
        if (client_call(c, KS_API_ALTER_CONFIGS, v, rq, arena, (void **)&resp))
                return -1;
        printf("throttle_time_ms=%d resources=%d\n", resp->ThrottleTimeMs, resp->Responses.count);
        for (int32_t i = 0; i < resp->Responses.count; i++) {
                const ks_AlterConfigsResponse_AlterConfigsResourceResponse *r = &resp->Responses.items[i];
                printf("resource type=%d (%s) name=%.*s ", r->ResourceType, resource_type_name(r->ResourceType),
                       STR(r->ResourceName));
                print_err("error_code", r->ErrorCode);
                printf(" error_message=%.*s\n", STR(r->ErrorMessage));
        }
        return 0;
}

static int do_create_partitions(client_t *c, ks_arena_t *arena, const char *topic)
{
        const int16_t v = 3;
        if (!section(c, KS_API_CREATE_PARTITIONS, v))
                return 0;
        ks_CreatePartitionsRequest *rq = ks_msg_new(&ks_CreatePartitionsRequest_desc, arena);
        ks_CreatePartitionsRequest_CreatePartitionsTopic *t =
                ks_msg_new_array(&ks_CreatePartitionsRequest_CreatePartitionsTopic_desc, 1, arena);
        if (!rq || !t)
                return oom();
        t[0].Name = ks_str_c(topic);
        t[0].Count = 6;
        t[0].Assignments.items = NULL;
        t[0].Assignments.count = -1; /* null: the broker places the new partitions */
        rq->Topics.items = t;
        rq->Topics.count = 1;
        rq->TimeoutMs = 60000; /* franz-go's default */
        rq->ValidateOnly = false;
        ks_CreatePartitionsResponse *resp;
        if (client_call(c, KS_API_CREATE_PARTITIONS, v, rq, arena, (void **)&resp))
                return -1;
        printf("throttle_time_ms=%d topics=%d\n", resp->ThrottleTimeMs, resp->Results.count);
        for (int32_t i = 0; i < resp->Results.count; i++) {
                const ks_CreatePartitionsResponse_CreatePartitionsTopicResult *r = &resp->Results.items[i];
                printf("topic name=%.*s ", STR(r->Name));
                print_err("error_code", r->ErrorCode);
                printf(" error_message=%.*s\n", STR(r->ErrorMessage));
        }
        return 0;
}

static int do_delete_groups(client_t *c, ks_arena_t *arena, const char *group)
{
        const int16_t v = 2;
        if (!section(c, KS_API_DELETE_GROUPS, v))
                return 0;
        ks_DeleteGroupsRequest *rq = ks_msg_new(&ks_DeleteGroupsRequest_desc, arena);
        ks_str_t *groups = ks_array_new(sizeof(ks_str_t), 1, arena);
        if (!rq || !groups)
                return oom();
        groups[0] = ks_str_c(group);
        rq->GroupsNames.items = groups;
        rq->GroupsNames.count = 1;
        ks_DeleteGroupsResponse *resp;
        if (client_call(c, KS_API_DELETE_GROUPS, v, rq, arena, (void **)&resp))
                return -1;
        printf("throttle_time_ms=%d groups=%d\n", resp->ThrottleTimeMs, resp->Results.count);
        for (int32_t i = 0; i < resp->Results.count; i++) {
                const ks_DeleteGroupsResponse_DeletableGroupResult *r = &resp->Results.items[i];
                printf("group group_id=%.*s ", STR(r->GroupId));
                print_err("error_code", r->ErrorCode);
                printf("\n");
        }
        return 0;
}

int main(int argc, char **argv)
{
        if (argc > 4 || (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")))) {
                fprintf(stderr, "usage: %s [bootstrap (127.0.0.1:9092) [topic (orders) [group (my-group)]]]\n",
                        argv[0]);
                return 2;
        }
        const char *bootstrap = argc > 1 ? argv[1] : "127.0.0.1:9092";
        const char *topic = argc > 2 ? argv[2] : "orders";
        const char *group = argc > 3 ? argv[3] : "my-group";
        if (!*topic || strlen(topic) > 249 || !*group || strlen(group) > 32767) {
                fprintf(stderr, "ops_example: bad topic or group name\n");
                return 2;
        }
        setvbuf(stdout, NULL, _IOLBF, 0);

        client_t c;
        if (client_connect(&c, bootstrap))
                return 1;
        ks_arena_t arena; /* everything, for the program's lifetime */
        ks_arena_init(&arena, 0);
        int rc = do_api_versions(&c, &arena);
        if (!rc)
                rc = do_list_groups(&c, &arena);
        if (!rc)
                rc = do_describe_groups(&c, &arena, group);
        if (!rc)
                rc = do_offset_for_leader_epoch(&c, &arena, topic);
        if (!rc)
                rc = do_describe_configs(&c, &arena, topic);
        if (!rc)
                rc = do_alter_configs(&c, &arena, topic);
        if (!rc)
                rc = do_create_partitions(&c, &arena, topic);
        if (!rc)
                rc = do_delete_groups(&c, &arena, group);
        close(c.fd);
        ks_arena_destroy(&arena);
        if (rc) {
                printf("\nfailed: see the error above\n");
                return 1;
        }
        printf("\ndone\n");
        return 0;
}
