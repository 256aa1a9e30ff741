/*
 * configs.c — DescribeConfigs (v0-v4), AlterConfigs (v0-v2) and
 * IncrementalAlterConfigs (v0-v1).
 *
 * The config surface is the ops specification's: a topic has exactly the
 * whitelist of topic_config.h (retention.ms, retention.bytes,
 * segment.bytes), stored in its TopicConfig record; the broker exposes
 * read-only keys taken from its start-up configuration.  Unknown keys are
 * ignored by DescribeConfigs and rejected with INVALID_CONFIG by the alter
 * APIs; every broker resource mutation is rejected with INVALID_CONFIG.
 *
 * Kafka's behaviour where the specification is silent (Apache Kafka's
 * ConfigHelper.describeConfigs and ConfigAdminManager.preprocess):
 *  - DescribeConfigs: a null or empty key list means every key.  An invalid
 *    topic name is INVALID_TOPIC_EXCEPTION, an unknown topic
 *    UNKNOWN_TOPIC_OR_PARTITION (null message).  A BROKER resource named ""
 *    describes the cluster-wide dynamic broker defaults — Kafscale has none,
 *    so the list is empty; a name that is not an integer or not this
 *    broker's id is INVALID_REQUEST ("Broker id must be an integer, but it
 *    is: x" / "Unexpected broker id, expected N or empty string, but
 *    received x").  Other resource types (BROKER_LOGGER, CLIENT_METRICS,
 *    GROUP, unknown) are INVALID_REQUEST with a message.
 *  - A topic value's source is DYNAMIC_TOPIC_CONFIG when the topic sets it,
 *    DEFAULT_CONFIG otherwise; its synonyms are the topic's own value (when
 *    set) followed by the broker default Kafka lists for it (log.retention.
 *    hours, log.retention.bytes, log.segment.bytes).  Broker keys are
 *    read-only, STATIC_BROKER_CONFIG, with themselves as the one synonym.
 *    v0's IsDefault is "source is DEFAULT_CONFIG".
 *  - Alter APIs: a resource named twice gets INVALID_REQUEST "Each resource
 *    must appear at most once." (both entries); a key named twice
 *    INVALID_REQUEST "Error due to duplicate config keys"; a null value
 *    (other than in a DELETE) INVALID_REQUEST "Null value not supported for
 *    : k"; an unknown IncrementalAlterConfigs operation INVALID_REQUEST.
 *    AlterConfigs replaces the whole set (keys not given return to their
 *    defaults); APPEND/SUBTRACT on these scalar keys is INVALID_CONFIG
 *    ("Can't APPEND to key k because its type is not LIST.", the KRaft
 *    controller's answer).  A key outside the whitelist is INVALID_CONFIG
 *    whatever the operation (Kafka would accept a DELETE of a key that is
 *    not set; the ops specification admits whitelisted keys only).  A
 *    missing topic is UNKNOWN_TOPIC_OR_PARTITION "The topic 'x' does not
 *    exist.".  A BROKER resource, whatever its name, is INVALID_CONFIG
 *    before any other check (the specification's rule).
 *
 * A topic change is read-modify-write on the TopicConfig record: read from
 * the store, apply, write in one transaction guarded by the record's
 * mod_rev (ks_meta_topic_update), re-done from a fresh read on a conflict.
 * The registry shows the new values at once, and the log picks up
 * segment.bytes as its flush target (ks_log_topic_configure).
 *
 * DescribeConfigs answers from memory on the I/O thread; the alter APIs run
 * on a worker.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker.h"
#include "broker/topic_config.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/log.h"

/* Kafka's ConfigResource.Type. */
enum {
        RES_UNKNOWN = 0,
        RES_TOPIC = 2,
        RES_BROKER = 4,
        RES_BROKER_LOGGER = 8,
        RES_CLIENT_METRICS = 16,
        RES_GROUP = 32,
};

/* Kafka's DescribeConfigsResponse.ConfigType. */
enum {
        TYPE_STRING = 2,
        TYPE_INT = 3,
        TYPE_LONG = 5,
};

/* Kafka's AlterConfigOp.OpType. */
enum {
        OP_SET = 0,
        OP_DELETE = 1,
        OP_APPEND = 2,
        OP_SUBTRACT = 3,
};

#define ALTER_ATTEMPTS 5


static const char *resource_type_name(int8_t type)
{
        switch (type) {
        case RES_TOPIC:
                return "TOPIC";
        case RES_BROKER:
                return "BROKER";
        case RES_BROKER_LOGGER:
                return "BROKER_LOGGER";
        case RES_CLIENT_METRICS:
                return "CLIENT_METRICS";
        case RES_GROUP:
                return "GROUP";
        default:
                return "UNKNOWN";
        }
}

/* --- the topic whitelist: what DescribeConfigs says about each key --------- */

typedef struct topic_key_info {
        const char *name;     /* a key of ks_topic_config_keys */
        int8_t type;          /* Kafka's type of the key */
        const char *synonym;  /* the broker config Kafka lists as its default */
        int64_t unit;         /* the synonym's unit, in the key's unit */
        const char *doc;
} topic_key_info_t;

static const topic_key_info_t topic_key_info[KS_TOPIC_CONFIG_COUNT] = {
        { "retention.ms", TYPE_LONG, "log.retention.hours", 3600000,
          "How long records are kept before old segments may be deleted, in milliseconds; -1 keeps them forever." },
        { "retention.bytes", TYPE_LONG, "log.retention.bytes", 1,
          "The size a partition may reach before old segments may be deleted, in bytes; -1 means no limit." },
        { "segment.bytes", TYPE_INT, "log.segment.bytes", 1,
          "The largest segment object written for a partition, in bytes; the broker flushes a partition's "
          "buffered records once they reach min(segment.bytes, kafscale.segment.bytes)." },
};

_Static_assert(KS_DEFAULT_RETENTION_MS % 3600000 == 0, "log.retention.hours must describe the default");

static const topic_key_info_t *key_info(const char *name)
{
        for (int i = 0; i < KS_TOPIC_CONFIG_COUNT; i++)
                if (!strcmp(topic_key_info[i].name, name))
                        return &topic_key_info[i];
        return &topic_key_info[0]; /* not reached: the tables list the same keys */
}

static int topic_key_index(ks_str_t name)
{
        for (int i = 0; i < KS_TOPIC_CONFIG_COUNT; i++)
                if (ks_str_eq_c(name, ks_topic_config_keys[i].name))
                        return i;
        return -1;
}

/* --- DescribeConfigs ----------------------------------------------------------- */

typedef ks_DescribeConfigsResponse_DescribeConfigsResourceResult cfg_entry_t;
typedef ks_DescribeConfigsResponse_DescribeConfigsSynonym cfg_synonym_t;

typedef struct describe_ctx {
        ks_req_t *req;
        int16_t version;
        bool synonyms;
        bool docs;
} describe_ctx_t;

/* True if `name` is asked for (a null or empty key list asks for all). */
static bool key_requested(const ks_DescribeConfigsRequest_DescribeConfigsResource *r, const char *name)
{
        if (r->ConfigurationKeys.count <= 0)
                return true;
        for (int32_t i = 0; i < r->ConfigurationKeys.count; i++)
                if (ks_str_eq_c(r->ConfigurationKeys.items[i], name))
                        return true;
        return false;
}

/* Fills one entry; `synonyms` (n of them) is used only when asked for. */
static void fill_entry(const describe_ctx_t *c, cfg_entry_t *e, const char *name, ks_str_t value, bool read_only,
                       int8_t source, int8_t type, const char *doc, cfg_synonym_t *synonyms, int32_t n)
{
        e->Name = ks_str_c(name);
        e->Value = value;
        e->ReadOnly = read_only;
        e->IsDefault = source == KS_CONFIG_SOURCE_DEFAULT;
        e->ConfigSource = source;
        e->IsSensitive = false;
        e->ConfigType = type;
        e->Documentation = c->docs ? ks_str_c(doc) : KS_STR_NULL;
        if (c->synonyms && synonyms) {
                e->Synonyms.items = synonyms;
                e->Synonyms.count = n;
        }
}

static ks_err_t describe_topic(const describe_ctx_t *c, ks_broker_t *b,
                               const ks_DescribeConfigsRequest_DescribeConfigsResource *r,
                               ks_DescribeConfigsResponse_DescribeConfigsResult *out)
{
        const char *why = ks_topic_name_invalid(r->ResourceName);
        if (why) {
                out->ErrorCode = KS_ERR_INVALID_TOPIC_EXCEPTION;
                out->ErrorMessage = ks_str_c(why);
                return 0;
        }
        ks_topic_t t;
        if (!ks_meta_topic_get(b->meta, r->ResourceName, &t)) {
                out->ErrorCode = KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
                return 0;
        }
        cfg_entry_t *es = ks_msg_new_array(&ks_DescribeConfigsResponse_DescribeConfigsResourceResult_desc,
                                           KS_TOPIC_CONFIG_COUNT, &c->req->arena);
        if (!es)
                return KS_ERR__NOMEM;
        int32_t n = 0;
        for (int i = 0; i < KS_TOPIC_CONFIG_COUNT; i++) {
                const ks_topic_config_key_t *k = &ks_topic_config_keys[i];
                if (!key_requested(r, k->name))
                        continue;
                const topic_key_info_t *info = key_info(k->name);
                bool set = (t.explicit_configs & k->bit) != 0;
                ks_str_t value = ks_arena_str(&c->req->arena, "%lld", (long long)ks_topic_config_value(&t, i));
                cfg_synonym_t *syn = NULL;
                int32_t nsyn = 0;
                if (c->synonyms) {
                        syn = ks_msg_new_array(&ks_DescribeConfigsResponse_DescribeConfigsSynonym_desc, 2,
                                               &c->req->arena);
                        if (!syn)
                                return KS_ERR__NOMEM;
                        if (set)
                                syn[nsyn++] = (cfg_synonym_t){ ks_str_c(k->name), value,
                                                               KS_CONFIG_SOURCE_DYNAMIC_TOPIC };
                        syn[nsyn++] = (cfg_synonym_t){
                                ks_str_c(info->synonym),
                                ks_arena_str(&c->req->arena, "%lld", (long long)(k->def / info->unit)),
                                KS_CONFIG_SOURCE_DEFAULT };
                }
                fill_entry(c, &es[n++], k->name, value, false,
                           set ? KS_CONFIG_SOURCE_DYNAMIC_TOPIC : KS_CONFIG_SOURCE_DEFAULT, info->type, info->doc,
                           syn, nsyn);
        }
        out->Configs.items = es;
        out->Configs.count = n;
        return 0;
}

/* The broker's read-only keys. */
enum {
        BK_BROKER_ID,
        BK_ADVERTISED_LISTENERS,
        BK_S3_BUCKET,
        BK_S3_REGION,
        BK_S3_ENDPOINT,
        BK_CACHE_BYTES,
        BK_READAHEAD_SEGMENTS,
        BK_SEGMENT_BYTES,
        BK_FLUSH_INTERVAL_MS,
        BK_PRODUCE_BUFFER_BYTES,
        BK_COUNT
};

static const struct {
        const char *name;
        int8_t type;
        const char *doc;
} broker_keys[BK_COUNT] = {
        [BK_BROKER_ID] = { "broker.id", TYPE_INT, "This broker's node id (KAFSCALE_BROKER_ID)." },
        [BK_ADVERTISED_LISTENERS] = { "advertised.listeners", TYPE_STRING,
                                      "The listener clients are told to use, PLAINTEXT://host:port "
                                      "(KAFSCALE_BROKER_HOST, KAFSCALE_BROKER_PORT)." },
        [BK_S3_BUCKET] = { "kafscale.s3.bucket", TYPE_STRING,
                           "The S3 bucket holding the segments (KAFSCALE_S3_BUCKET); null when S3 is not used." },
        [BK_S3_REGION] = { "kafscale.s3.region", TYPE_STRING,
                           "The S3 region (KAFSCALE_S3_REGION); null when S3 is not used." },
        [BK_S3_ENDPOINT] = { "kafscale.s3.endpoint", TYPE_STRING,
                             "The S3 endpoint URL (KAFSCALE_S3_ENDPOINT); null for AWS or when S3 is not used." },
        [BK_CACHE_BYTES] = { "kafscale.cache.bytes", TYPE_LONG,
                             "Memory for cached segments, in bytes (KAFSCALE_CACHE_BYTES)." },
        [BK_READAHEAD_SEGMENTS] = { "kafscale.readahead.segments", TYPE_INT,
                                    "Segments read ahead for sequential consumers (KAFSCALE_READAHEAD_SEGMENTS)." },
        [BK_SEGMENT_BYTES] = { "kafscale.segment.bytes", TYPE_LONG,
                               "Target segment object size: a partition flushes when its buffered records "
                               "reach it (KAFSCALE_SEGMENT_BYTES)." },
        [BK_FLUSH_INTERVAL_MS] = { "kafscale.flush.interval.ms", TYPE_LONG,
                                   "The longest a produced record waits before its flush starts, in "
                                   "milliseconds (KAFSCALE_FLUSH_INTERVAL_MS or the backend's default)." },
        [BK_PRODUCE_BUFFER_BYTES] = { "kafscale.produce.buffer.bytes", TYPE_LONG,
                                      "Memory for produced records not yet in the object store, in bytes; at "
                                      "it, producer connections are not read (KAFSCALE_PRODUCE_BUFFER_BYTES)." },
};

static ks_str_t opt_str(ks_req_t *req, const char *s)
{
        return s && *s ? ks_arena_str(&req->arena, "%s", s) : KS_STR_NULL;
}

static ks_str_t broker_value(ks_req_t *req, const ks_broker_t *b, int k)
{
        const ks_config_t *cfg = b->cfg;
        bool s3 = cfg->s3.bucket != NULL;
        switch (k) {
        case BK_BROKER_ID:
                return ks_arena_str(&req->arena, "%d", cfg->broker_id);
        case BK_ADVERTISED_LISTENERS:
                /* An IPv6 literal is bracketed, as Kafka writes it. */
                return strchr(cfg->advertised_host, ':')
                               ? ks_arena_str(&req->arena, "PLAINTEXT://[%s]:%d", cfg->advertised_host,
                                              cfg->advertised_port)
                               : ks_arena_str(&req->arena, "PLAINTEXT://%s:%d", cfg->advertised_host,
                                              cfg->advertised_port);
        case BK_S3_BUCKET:
                return opt_str(req, s3 ? cfg->s3.bucket : NULL);
        case BK_S3_REGION:
                return opt_str(req, s3 ? cfg->s3.region : NULL);
        case BK_S3_ENDPOINT:
                return opt_str(req, s3 ? cfg->s3.endpoint : NULL);
        case BK_CACHE_BYTES:
                return ks_arena_str(&req->arena, "%lld", (long long)b->log_cfg.cache_bytes);
        case BK_READAHEAD_SEGMENTS:
                return ks_arena_str(&req->arena, "%d", b->log_cfg.readahead_segments);
        case BK_SEGMENT_BYTES:
                return ks_arena_str(&req->arena, "%lld", (long long)b->log_cfg.segment_bytes);
        case BK_PRODUCE_BUFFER_BYTES:
                return ks_arena_str(&req->arena, "%lld", (long long)cfg->produce_buffer_bytes);
        default:
                return ks_arena_str(&req->arena, "%lld", (long long)b->log_cfg.flush_interval_ms);
        }
}

/* Java's Integer.parseInt: optional sign, decimal digits, 32 bits. */
static bool parse_int32(ks_str_t s, int32_t *out)
{
        char buf[16];
        if (s.len <= 0 || s.len >= (int32_t)sizeof(buf))
                return false;
        memcpy(buf, s.ptr, (size_t)s.len);
        buf[s.len] = '\0';
        const char *d = buf + (buf[0] == '-' || buf[0] == '+');
        if (*d < '0' || *d > '9')
                return false;
        char *end;
        errno = 0;
        long long v = strtoll(buf, &end, 10);
        if (errno || *end != '\0' || v < INT32_MIN || v > INT32_MAX)
                return false;
        *out = (int32_t)v;
        return true;
}

static ks_err_t describe_broker(const describe_ctx_t *c, ks_broker_t *b,
                                const ks_DescribeConfigsRequest_DescribeConfigsResource *r,
                                ks_DescribeConfigsResponse_DescribeConfigsResult *out)
{
        ks_req_t *req = c->req;
        if (ks_str_is_null(r->ResourceName) || r->ResourceName.len == 0)
                return 0; /* cluster-wide dynamic defaults: there are none */
        int32_t id;
        if (!parse_int32(r->ResourceName, &id)) {
                out->ErrorCode = KS_ERR_INVALID_REQUEST;
                out->ErrorMessage = ks_arena_str(&req->arena, "Broker id must be an integer, but it is: %.*s",
                                                 (int)r->ResourceName.len, r->ResourceName.ptr);
                return 0;
        }
        if (id != b->cfg->broker_id) {
                out->ErrorCode = KS_ERR_INVALID_REQUEST;
                out->ErrorMessage = ks_arena_str(&req->arena,
                                                 "Unexpected broker id, expected %d or empty string, but received "
                                                 "%.*s",
                                                 b->cfg->broker_id, (int)r->ResourceName.len, r->ResourceName.ptr);
                return 0;
        }
        cfg_entry_t *es =
                ks_msg_new_array(&ks_DescribeConfigsResponse_DescribeConfigsResourceResult_desc, BK_COUNT, &req->arena);
        if (!es)
                return KS_ERR__NOMEM;
        int32_t n = 0;
        for (int k = 0; k < BK_COUNT; k++) {
                if (!key_requested(r, broker_keys[k].name))
                        continue;
                ks_str_t value = broker_value(req, b, k);
                cfg_synonym_t *syn = NULL;
                if (c->synonyms) {
                        syn = ks_msg_new_array(&ks_DescribeConfigsResponse_DescribeConfigsSynonym_desc, 1,
                                               &req->arena);
                        if (!syn)
                                return KS_ERR__NOMEM;
                        syn[0] = (cfg_synonym_t){ ks_str_c(broker_keys[k].name), value,
                                                  KS_CONFIG_SOURCE_STATIC_BROKER };
                }
                fill_entry(c, &es[n++], broker_keys[k].name, value, true, KS_CONFIG_SOURCE_STATIC_BROKER,
                           broker_keys[k].type, broker_keys[k].doc, syn, 1);
        }
        out->Configs.items = es;
        out->Configs.count = n;
        return 0;
}

void ks_handle_describe_configs(ks_broker_t *b, ks_req_t *req)
{
        const ks_DescribeConfigsRequest *rq = req->request;
        int16_t version = req->hdr.RequestApiVersion;
        int32_t n = rq->Resources.count > 0 ? rq->Resources.count : 0;
        ks_DescribeConfigsResponse *resp = ks_msg_new(&ks_DescribeConfigsResponse_desc, &req->arena);
        ks_DescribeConfigsResponse_DescribeConfigsResult *res =
                ks_msg_new_array(&ks_DescribeConfigsResponse_DescribeConfigsResult_desc, n, &req->arena);
        if (!resp || !res) {
                ks_req_close(req, "out of memory");
                return;
        }
        describe_ctx_t c = { req, version, version >= 1 && rq->IncludeSynonyms,
                             version >= 3 && rq->IncludeDocumentation };
        for (int32_t i = 0; i < n; i++) {
                const ks_DescribeConfigsRequest_DescribeConfigsResource *r = &rq->Resources.items[i];
                ks_DescribeConfigsResponse_DescribeConfigsResult *out = &res[i];
                out->ResourceType = r->ResourceType;
                out->ResourceName = r->ResourceName;
                out->ErrorCode = 0;
                out->ErrorMessage = KS_STR_NULL;
                ks_err_t err = 0;
                if (r->ResourceType == RES_TOPIC) {
                        err = describe_topic(&c, b, r, out);
                } else if (r->ResourceType == RES_BROKER) {
                        err = describe_broker(&c, b, r, out);
                } else {
                        out->ErrorCode = KS_ERR_INVALID_REQUEST;
                        out->ErrorMessage = ks_arena_str(&req->arena,
                                                         "Unsupported resource type: %s (%d); Kafscale describes "
                                                         "TOPIC (2) and BROKER (4) configs",
                                                         resource_type_name(r->ResourceType), r->ResourceType);
                }
                if (err) {
                        ks_req_close(req, "out of memory");
                        return;
                }
        }
        resp->Results.items = res;
        resp->Results.count = n;
        ks_req_respond(req, resp);
}

/* --- AlterConfigs and IncrementalAlterConfigs ----------------------------------- */

/* One requested change, from either request. */
typedef struct cfg_change {
        ks_str_t name;
        ks_str_t value;
        int8_t op;
} cfg_change_t;

/* One resource of either request. */
typedef struct alter_resource {
        int8_t type;
        ks_str_t name;
        cfg_change_t *changes;
        int32_t nchanges;
        int16_t err; /* result */
        ks_str_t msg;
} alter_resource_t;

/* Applies one change to *t.  0, or INVALID_CONFIG with msg. */
static ks_err_t apply_change(ks_topic_t *t, const cfg_change_t *ch, char *msg, size_t msglen)
{
        int i = topic_key_index(ch->name);
        if (i < 0) {
                /* Outside the whitelist: the whitelist's own message. */
                ks_topic_t scratch = *t;
                ks_err_t err = ks_topic_config_set(&scratch, ch->name, ch->value, msg, msglen);
                return err ? err : KS_ERR_INVALID_CONFIG;
        }
        switch (ch->op) {
        case OP_SET:
                return ks_topic_config_set(t, ch->name, ch->value, msg, msglen);
        case OP_DELETE: {
                /* Back to the default: set it, then drop the explicit bit. */
                char def[24];
                int dl = snprintf(def, sizeof(def), "%lld", (long long)ks_topic_config_keys[i].def);
                ks_err_t err = ks_topic_config_set(t, ch->name, (ks_str_t){ def, dl }, msg, msglen);
                t->explicit_configs &= ~ks_topic_config_keys[i].bit;
                return err;
        }
        default:
                snprintf(msg, msglen, "Can't %s to key %s because its type is not LIST.",
                         ch->op == OP_APPEND ? "APPEND" : "SUBTRACT", ks_topic_config_keys[i].name);
                return KS_ERR_INVALID_CONFIG;
        }
}

/* Everything that can be said about a resource without reading the store.
 * 0 if the topic change may proceed. */
static ks_err_t precheck(const alter_resource_t *r, bool incremental, char *msg, size_t msglen)
{
        if (r->type == RES_BROKER) {
                snprintf(msg, msglen, "Broker configs are read-only: Kafscale takes them from its KAFSCALE_* "
                                      "environment at start-up");
                return KS_ERR_INVALID_CONFIG;
        }
        if (r->type != RES_TOPIC) {
                snprintf(msg, msglen, "Unsupported resource type: %s (%d); Kafscale alters TOPIC (2) configs only",
                         resource_type_name(r->type), r->type);
                return KS_ERR_INVALID_REQUEST;
        }
        for (int32_t i = 0; i < r->nchanges; i++)
                for (int32_t j = 0; j < i; j++)
                        if (ks_str_eq(r->changes[i].name, r->changes[j].name)) {
                                snprintf(msg, msglen, "Error due to duplicate config keys");
                                return KS_ERR_INVALID_REQUEST;
                        }
        size_t used = 0;
        for (int32_t i = 0; i < r->nchanges; i++) {
                const cfg_change_t *ch = &r->changes[i];
                if (ch->op == OP_DELETE || !ks_str_is_null(ch->value))
                        continue;
                const char *name = ch->name.ptr ? ch->name.ptr : "";
                int nl = ch->name.len > 0 ? (int)ch->name.len : 0;
                int w = used == 0 ? snprintf(msg, msglen, "Null value not supported for : %.*s", nl, name)
                                  : snprintf(msg + used, msglen - used, ", %.*s", nl, name);
                used = w < 0 || used + (size_t)w >= msglen ? msglen - 1 : used + (size_t)w;
        }
        if (used)
                return KS_ERR_INVALID_REQUEST;
        if (incremental)
                for (int32_t i = 0; i < r->nchanges; i++)
                        if (r->changes[i].op < OP_SET || r->changes[i].op > OP_SUBTRACT) {
                                snprintf(msg, msglen, "Unknown operation type %d", r->changes[i].op);
                                return KS_ERR_INVALID_REQUEST;
                        }
        return 0;
}

/* Validates and (unless validate_only) applies the changes of one topic
 * resource.  0, or a Kafka error with msg. */
static ks_err_t alter_topic(ks_broker_t *b, const alter_resource_t *r, bool replace, bool validate_only, char *msg,
                            size_t msglen)
{
        char name[KS_TOPIC_NAME_MAX + 1];
        if (ks_topic_name_invalid(r->name)) {
                snprintf(msg, msglen, "The topic '%.*s' does not exist.", r->name.len > 0 ? (int)r->name.len : 0,
                         r->name.ptr ? r->name.ptr : "");
                return KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
        }
        memcpy(name, r->name.ptr, (size_t)r->name.len);
        name[r->name.len] = '\0';
        ks_err_t e = KS_ERR__CONFLICT;
        for (int attempt = 0; attempt < ALTER_ATTEMPTS && e == KS_ERR__CONFLICT; attempt++) {
                ks_topic_t t;
                e = ks_meta_topic_load(b->meta, name, &t);
                if (e == KS_ERR__NOT_FOUND) {
                        snprintf(msg, msglen, "The topic '%s' does not exist.", name);
                        return KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
                }
                if (e)
                        break;
                if (replace)
                        ks_topic_config_defaults(&t);
                for (int32_t i = 0; i < r->nchanges; i++) {
                        ks_err_t err = apply_change(&t, &r->changes[i], msg, msglen);
                        if (err)
                                return err;
                }
                if (validate_only)
                        return 0;
                e = ks_meta_topic_update(b->meta, &t);
                if (!e)
                        ks_topic_sync_one(b->topics, t.name);
        }
        if (e) {
                ks_log_warn("topic_config_update_failed", "topic=%s err=%s", name, ks_err_name(e));
                snprintf(msg, msglen, "Metadata store error: %s", ks_err_str(e));
                return ks_err_to_wire(e);
        }
        return 0;
}

/* Runs the resources of either request; fills err/msg of each. */
static void alter_all(ks_broker_t *b, ks_req_t *req, alter_resource_t *rs, int32_t n, bool incremental,
                      bool validate_only)
{
        for (int32_t i = 0; i < n; i++) {
                alter_resource_t *r = &rs[i];
                char msg[512] = "";
                ks_err_t err = 0;
                for (int32_t j = 0; j < n && !err; j++)
                        if (j != i && rs[j].type == r->type && ks_str_eq(rs[j].name, r->name)) {
                                err = KS_ERR_INVALID_REQUEST;
                                snprintf(msg, sizeof(msg), "Each resource must appear at most once.");
                        }
                if (!err)
                        err = precheck(r, incremental, msg, sizeof(msg));
                if (!err)
                        err = alter_topic(b, r, !incremental, validate_only, msg, sizeof(msg));
                r->err = (int16_t)err;
                r->msg = err ? ks_arena_str(&req->arena, "%s", msg) : KS_STR_NULL;
        }
}

static void alter_configs_work(ks_broker_t *b, ks_req_t *req)
{
        const ks_AlterConfigsRequest *rq = req->request;
        int32_t n = rq->Resources.count > 0 ? rq->Resources.count : 0;
        ks_AlterConfigsResponse *resp = ks_msg_new(&ks_AlterConfigsResponse_desc, &req->arena);
        ks_AlterConfigsResponse_AlterConfigsResourceResponse *res =
                ks_msg_new_array(&ks_AlterConfigsResponse_AlterConfigsResourceResponse_desc, n, &req->arena);
        alter_resource_t *rs = ks_array_new(sizeof(*rs), n, &req->arena);
        if (!resp || !res || !rs) {
                ks_req_close(req, "out of memory");
                return;
        }
        for (int32_t i = 0; i < n; i++) {
                const ks_AlterConfigsRequest_AlterConfigsResource *r = &rq->Resources.items[i];
                int32_t nc = r->Configs.count > 0 ? r->Configs.count : 0;
                rs[i] = (alter_resource_t){ r->ResourceType, r->ResourceName, NULL, nc, 0, KS_STR_NULL };
                rs[i].changes = ks_array_new(sizeof(cfg_change_t), nc, &req->arena);
                if (!rs[i].changes) {
                        ks_req_close(req, "out of memory");
                        return;
                }
                for (int32_t j = 0; j < nc; j++)
                        rs[i].changes[j] = (cfg_change_t){ r->Configs.items[j].Name, r->Configs.items[j].Value,
                                                           OP_SET };
        }
        alter_all(b, req, rs, n, false, rq->ValidateOnly);
        for (int32_t i = 0; i < n; i++) {
                res[i].ErrorCode = rs[i].err;
                res[i].ErrorMessage = rs[i].msg;
                res[i].ResourceType = rs[i].type;
                res[i].ResourceName = rs[i].name;
        }
        resp->Responses.items = res;
        resp->Responses.count = n;
        ks_req_respond(req, resp);
}

void ks_handle_alter_configs(ks_broker_t *b, ks_req_t *req)
{
        ks_broker_offload(b, req, alter_configs_work);
}

static void incremental_alter_configs_work(ks_broker_t *b, ks_req_t *req)
{
        const ks_IncrementalAlterConfigsRequest *rq = req->request;
        int32_t n = rq->Resources.count > 0 ? rq->Resources.count : 0;
        ks_IncrementalAlterConfigsResponse *resp = ks_msg_new(&ks_IncrementalAlterConfigsResponse_desc, &req->arena);
        ks_IncrementalAlterConfigsResponse_AlterConfigsResourceResponse *res = ks_msg_new_array(
                &ks_IncrementalAlterConfigsResponse_AlterConfigsResourceResponse_desc, n, &req->arena);
        alter_resource_t *rs = ks_array_new(sizeof(*rs), n, &req->arena);
        if (!resp || !res || !rs) {
                ks_req_close(req, "out of memory");
                return;
        }
        for (int32_t i = 0; i < n; i++) {
                const ks_IncrementalAlterConfigsRequest_AlterConfigsResource *r = &rq->Resources.items[i];
                int32_t nc = r->Configs.count > 0 ? r->Configs.count : 0;
                rs[i] = (alter_resource_t){ r->ResourceType, r->ResourceName, NULL, nc, 0, KS_STR_NULL };
                rs[i].changes = ks_array_new(sizeof(cfg_change_t), nc, &req->arena);
                if (!rs[i].changes) {
                        ks_req_close(req, "out of memory");
                        return;
                }
                for (int32_t j = 0; j < nc; j++) {
                        const ks_IncrementalAlterConfigsRequest_AlterableConfig *c = &r->Configs.items[j];
                        rs[i].changes[j] = (cfg_change_t){ c->Name, c->Value, c->ConfigOperation };
                }
        }
        alter_all(b, req, rs, n, true, rq->ValidateOnly);
        for (int32_t i = 0; i < n; i++) {
                res[i].ErrorCode = rs[i].err;
                res[i].ErrorMessage = rs[i].msg;
                res[i].ResourceType = rs[i].type;
                res[i].ResourceName = rs[i].name;
        }
        resp->Responses.items = res;
        resp->Responses.count = n;
        ks_req_respond(req, resp);
}

void ks_handle_incremental_alter_configs(ks_broker_t *b, ks_req_t *req)
{
        ks_broker_offload(b, req, incremental_alter_configs_work);
}
