#include "config/config.h"

#include "meta/kv.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

extern char **environ;

typedef enum { T_ADDR, T_STR, T_INT, T_BOOL, T_LEVEL } var_type_t;

typedef struct var {
        const char *name;
        const char *def;
        var_type_t type;
        int64_t min, max; /* T_INT */
        const char *help;
} var_t;

/* The configuration surface.  Keep README.md's table in step with this. */
static const var_t vars[] = {
        { "KAFSCALE_BROKER_ADDR", ":9092", T_ADDR, 0, 0,
          "Kafka listener, host:port (\":9092\" = all interfaces)" },
        { "KAFSCALE_BROKER_HOST", "", T_STR, 0, 0,
          "Advertised host (default: the listen host, or this machine's hostname when listening on all interfaces)" },
        { "KAFSCALE_BROKER_PORT", "0", T_INT, 0, 65535, "Advertised port (default: the listen port)" },
        { "KAFSCALE_BROKER_ID", "0", T_INT, 0, INT32_MAX, "Broker node id" },
        { "KAFSCALE_METRICS_ADDR", ":9093", T_ADDR, 0, 0, "HTTP listener for metrics and health, host:port" },
        { "KAFSCALE_DATA_DIR", "./kafscale-data", T_STR, 0, 0,
          "Embedded mode: directory holding the SQLite metadata and the local object store" },
        { "KAFSCALE_USE_MEMORY_METADATA", "0", T_BOOL, 0, 0,
          "Keep metadata in process memory (lost on exit; tests and demos)" },
        { "KAFSCALE_ETCD_ENDPOINTS", "", T_STR, 0, 0,
          "Cluster mode: comma-separated etcd client URLs (http://host:port) holding the metadata; needs "
          "KAFSCALE_S3_BUCKET" },
        { "KAFSCALE_ETCD_USERNAME", "", T_STR, 0, 0, "etcd user name (etcd authentication enabled)" },
        { "KAFSCALE_ETCD_PASSWORD", "", T_STR, 0, 0, "etcd password of KAFSCALE_ETCD_USERNAME" },
        { "KAFSCALE_ETCD_TIMEOUT_MS", "5000", T_INT, 100, 600000,
          "Longest one etcd request may take before the next endpoint is tried or the request fails" },
        { "KAFSCALE_LEASE_TTL_MS", "10000", T_INT, 2000, 600000,
          "Cluster mode: the broker's etcd session; a broker that stops renewing it is gone from the cluster "
          "this long after, and a broker restarted after a crash waits for its previous session to expire" },
        { "KAFSCALE_USE_MEMORY_S3", "0", T_BOOL, 0, 0,
          "Keep records in process memory instead of an object store (lost on exit; tests and demos)" },
        { "KAFSCALE_S3_NAMESPACE", "default", T_STR, 0, 0, "First component of every object key" },
        { "KAFSCALE_FLUSH_INTERVAL_MS", "", T_INT, 0, 60000,
          "Longest a produced batch waits before its partition is flushed (default: 2 memory, 5 local "
          "directory, 150 S3)" },
        { "KAFSCALE_SEGMENT_BYTES", "4194304", T_INT, 65536, 1073741824,
          "Target segment object size: a partition flushes when its tail reaches it" },
        { "KAFSCALE_CACHE_BYTES", "268435456", T_INT, 0, INT64_MAX / 2,
          "Segment cache budget (recently flushed and recently read segments)" },
        { "KAFSCALE_PRODUCE_BUFFER_BYTES", "134217728", T_INT, 1048576, INT64_MAX / 2,
          "Memory for produced data not yet in the object store; at it, producer connections are not read" },
        { "KAFSCALE_READAHEAD_SEGMENTS", "2", T_INT, 0, 16, "Segments read ahead for sequential consumers" },
        { "KAFSCALE_STORAGE_THREADS", "8", T_INT, 1, 256, "Parallel segment uploads and object-store reads" },
        { "KAFSCALE_MAX_MESSAGE_BYTES", "1048588", T_INT, 1024, 268435456,
          "Largest record batch accepted (Kafka's message.max.bytes)" },
        { "KAFSCALE_RETENTION_CHECK_INTERVAL_MS", "300000", T_INT, 0, INT64_MAX / 2,
          "How often retention.ms / retention.bytes are enforced (log.retention.check.interval.ms; 0: never)" },
        { "KAFSCALE_LAG_INTERVAL_MS", "10000", T_INT, 0, 3600000,
          "How often consumer lag metrics are recomputed (0: no kafscale_consumer_group_lag)" },
        { "KAFSCALE_GROUP_MIN_SESSION_TIMEOUT_MS", "6000", T_INT, 1, INT32_MAX,
          "Smallest session timeout a group member may ask for (Kafka's group.min.session.timeout.ms)" },
        { "KAFSCALE_GROUP_MAX_SESSION_TIMEOUT_MS", "1800000", T_INT, 1, INT32_MAX,
          "Largest session timeout a group member may ask for (group.max.session.timeout.ms)" },
        { "KAFSCALE_GROUP_INITIAL_REBALANCE_DELAY_MS", "3000", T_INT, 0, 600000,
          "How long a new group waits for more members before its first rebalance "
          "(group.initial.rebalance.delay.ms)" },
        { "KAFSCALE_AUTO_CREATE_TOPICS", "1", T_BOOL, 0, 0,
          "Create unknown topics on Metadata requests that allow it" },
        { "KAFSCALE_DEFAULT_PARTITIONS", "1", T_INT, 1, 100000,
          "Partitions of a topic created with -1 partitions or auto-created" },
        { "KAFSCALE_LOG_LEVEL", "info", T_LEVEL, 0, 0, "debug, info, warn or error" },
        { "KAFSCALE_IO_THREADS", "0", T_INT, 0, 256, "Network threads (0 = one per CPU core)" },
        { "KAFSCALE_MAX_REQUEST_BYTES", "104857600", T_INT, 1024, INT32_MAX,
          "Largest request frame accepted; a larger one closes the connection" },
        { "KAFSCALE_CONNECTION_IDLE_MS", "600000", T_INT, 100, INT64_MAX / 2,
          "Close connections idle for this long" },
        { "KAFSCALE_MAX_CONNECTIONS", "10000", T_INT, 1, 1000000, "Maximum open client connections" },
        { "KAFSCALE_MAX_INFLIGHT_PER_CONNECTION", "64", T_INT, 1, 4096,
          "Requests other than Produce read ahead from one connection before their responses are written "
          "(Produce: up to 1024, within KAFSCALE_PRODUCE_BUFFER_BYTES)" },
};

#define N_VARS (sizeof(vars) / sizeof(vars[0]))

const char *ks_env_getenv(void *opaque, const char *name)
{
        (void)opaque;
        return getenv(name);
}

/* Where this parse reads its variables. */
typedef struct env {
        ks_env_lookup_fn *lookup;
        void *opaque;
} env_t;

static const char *var_value(const env_t *e, const var_t *v)
{
        const char *s = e->lookup(e->opaque, v->name);
        return s ? s : v->def;
}

static int parse_int(const var_t *v, const char *s, int64_t *out, char *err, size_t errlen)
{
        char *end;
        errno = 0;
        long long x = strtoll(s, &end, 10);
        if (errno || end == s || *end != '\0' || x < v->min || x > v->max) {
                snprintf(err, errlen, "%s=\"%s\" is not valid: expected an integer from %lld to %lld", v->name, s,
                         (long long)v->min, (long long)v->max);
                return -1;
        }
        *out = x;
        return 0;
}

static int parse_bool(const var_t *v, const char *s, bool *out, char *err, size_t errlen)
{
        if (!strcmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on")) {
                *out = true;
                return 0;
        }
        if (!strcmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off")) {
                *out = false;
                return 0;
        }
        snprintf(err, errlen, "%s=\"%s\" is not valid: expected true/false (or 1/0)", v->name, s);
        return -1;
}

/* host:port, [v6]:port or :port. */
static int parse_addr(const var_t *v, const char *s, char *host, size_t hostlen, int *port, char *err,
                      size_t errlen)
{
        const char *colon = strrchr(s, ':');
        if (!colon)
                goto bad;
        size_t hl = (size_t)(colon - s);
        const char *h = s;
        if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
                h++;
                hl -= 2;
        }
        if (hl >= hostlen)
                goto bad;
        memcpy(host, h, hl);
        host[hl] = '\0';
        char *end;
        errno = 0;
        long p = strtol(colon + 1, &end, 10);
        if (errno || end == colon + 1 || *end || p < 0 || p > 65535)
                goto bad;
        *port = (int)p;
        return 0;
bad:
        snprintf(err, errlen, "%s=\"%s\" is not valid: expected host:port, [ipv6]:port or :port", v->name, s);
        return -1;
}

static const var_t *find_var(const char *name)
{
        for (size_t i = 0; i < N_VARS; i++)
                if (!strcmp(vars[i].name, name))
                        return &vars[i];
        return NULL;
}

static int get_int(const env_t *e, const char *name, int64_t *out, char *err, size_t errlen)
{
        const var_t *v = find_var(name);
        return parse_int(v, var_value(e, v), out, err, errlen);
}

static int get_bool(const env_t *e, const char *name, bool *out, char *err, size_t errlen)
{
        const var_t *v = find_var(name);
        return parse_bool(v, var_value(e, v), out, err, errlen);
}

static int get_str(const env_t *e, const char *name, char *out, size_t outlen, char *err, size_t errlen)
{
        const var_t *v = find_var(name);
        const char *s = var_value(e, v);
        if (strlen(s) >= outlen) {
                snprintf(err, errlen, "%s is too long (at most %zu characters)", name, outlen - 1);
                return -1;
        }
        strcpy(out, s);
        return 0;
}

int ks_config_from_env(ks_config_t *cfg, char *err, size_t errlen)
{
        return ks_config_from(cfg, ks_env_getenv, NULL, err, errlen);
}

int ks_config_from(ks_config_t *cfg, ks_env_lookup_fn *lookup, void *opaque, char *err, size_t errlen)
{
        const env_t env = { lookup, opaque }, *e = &env;
        memset(cfg, 0, sizeof(*cfg));
        int64_t x;
        const var_t *v;

        v = find_var("KAFSCALE_BROKER_ADDR");
        if (parse_addr(v, var_value(e, v), cfg->listen_host, sizeof(cfg->listen_host), &cfg->listen_port, err,
                       errlen))
                return -1;
        v = find_var("KAFSCALE_METRICS_ADDR");
        if (parse_addr(v, var_value(e, v), cfg->metrics_host, sizeof(cfg->metrics_host), &cfg->metrics_port, err,
                       errlen))
                return -1;
        if (get_str(e, "KAFSCALE_BROKER_HOST", cfg->advertised_host, sizeof(cfg->advertised_host), err, errlen))
                return -1;
        if (get_int(e, "KAFSCALE_BROKER_PORT", &x, err, errlen))
                return -1;
        cfg->advertised_port = (int)x;
        if (get_int(e, "KAFSCALE_BROKER_ID", &x, err, errlen))
                return -1;
        cfg->broker_id = (int32_t)x;
        if (get_str(e, "KAFSCALE_DATA_DIR", cfg->data_dir, sizeof(cfg->data_dir), err, errlen))
                return -1;
        if (get_bool(e, "KAFSCALE_USE_MEMORY_METADATA", &cfg->memory_metadata, err, errlen))
                return -1;
        if (get_str(e, "KAFSCALE_ETCD_ENDPOINTS", cfg->etcd_endpoints, sizeof(cfg->etcd_endpoints), err, errlen))
                return -1;
        if (get_str(e, "KAFSCALE_ETCD_USERNAME", cfg->etcd_username, sizeof(cfg->etcd_username), err, errlen))
                return -1;
        if (get_str(e, "KAFSCALE_ETCD_PASSWORD", cfg->etcd_password, sizeof(cfg->etcd_password), err, errlen))
                return -1;
        if (get_int(e, "KAFSCALE_ETCD_TIMEOUT_MS", &cfg->etcd_timeout_ms, err, errlen))
                return -1;
        if (get_int(e, "KAFSCALE_LEASE_TTL_MS", &cfg->lease_ttl_ms, err, errlen))
                return -1;
        if (get_bool(e, "KAFSCALE_USE_MEMORY_S3", &cfg->memory_s3, err, errlen))
                return -1;
        if (ks_s3_config_from(&cfg->s3, lookup, opaque, cfg->s3_storage, sizeof(cfg->s3_storage), err, errlen) != 0)
                return -1;
        if (get_str(e, "KAFSCALE_S3_NAMESPACE", cfg->s3_namespace, sizeof(cfg->s3_namespace), err, errlen))
                return -1;
        cfg->flush_interval_ms = -1;
        if (lookup(opaque, "KAFSCALE_FLUSH_INTERVAL_MS")) {
                if (get_int(e, "KAFSCALE_FLUSH_INTERVAL_MS", &cfg->flush_interval_ms, err, errlen))
                        return -1;
        }
        if (get_int(e, "KAFSCALE_SEGMENT_BYTES", &cfg->segment_bytes, err, errlen))
                return -1;
        if (get_int(e, "KAFSCALE_CACHE_BYTES", &cfg->cache_bytes, err, errlen))
                return -1;
        if (get_int(e, "KAFSCALE_PRODUCE_BUFFER_BYTES", &cfg->produce_buffer_bytes, err, errlen))
                return -1;
        if (get_int(e, "KAFSCALE_READAHEAD_SEGMENTS", &x, err, errlen))
                return -1;
        cfg->readahead_segments = (int)x;
        if (get_int(e, "KAFSCALE_STORAGE_THREADS", &x, err, errlen))
                return -1;
        cfg->storage_threads = (int)x;
        if (get_int(e, "KAFSCALE_MAX_MESSAGE_BYTES", &x, err, errlen))
                return -1;
        cfg->max_message_bytes = (int32_t)x;
        if (get_int(e, "KAFSCALE_RETENTION_CHECK_INTERVAL_MS", &cfg->retention_check_ms, err, errlen))
                return -1;
        if (get_int(e, "KAFSCALE_LAG_INTERVAL_MS", &cfg->lag_interval_ms, err, errlen))
                return -1;
        if (cfg->s3_namespace[0] == '\0' || strchr(cfg->s3_namespace, '/')) {
                snprintf(err, errlen, "KAFSCALE_S3_NAMESPACE=\"%s\" is not valid: use a non-empty name without '/'",
                         cfg->s3_namespace);
                return -1;
        }
        if (cfg->memory_s3 && cfg->s3.bucket) {
                snprintf(err, errlen, "KAFSCALE_USE_MEMORY_S3 and KAFSCALE_S3_BUCKET are both set: choose one "
                                      "(unset KAFSCALE_USE_MEMORY_S3 to store records in the bucket)");
                return -1;
        }
        if (get_int(e, "KAFSCALE_GROUP_MIN_SESSION_TIMEOUT_MS", &x, err, errlen))
                return -1;
        cfg->group_min_session_timeout_ms = (int32_t)x;
        if (get_int(e, "KAFSCALE_GROUP_MAX_SESSION_TIMEOUT_MS", &x, err, errlen))
                return -1;
        cfg->group_max_session_timeout_ms = (int32_t)x;
        if (get_int(e, "KAFSCALE_GROUP_INITIAL_REBALANCE_DELAY_MS", &x, err, errlen))
                return -1;
        cfg->group_initial_rebalance_delay_ms = (int32_t)x;
        if (cfg->group_min_session_timeout_ms > cfg->group_max_session_timeout_ms) {
                snprintf(err, errlen, "KAFSCALE_GROUP_MIN_SESSION_TIMEOUT_MS (%d) is larger than "
                                      "KAFSCALE_GROUP_MAX_SESSION_TIMEOUT_MS (%d)",
                         cfg->group_min_session_timeout_ms, cfg->group_max_session_timeout_ms);
                return -1;
        }
        if (get_bool(e, "KAFSCALE_AUTO_CREATE_TOPICS", &cfg->auto_create_topics, err, errlen))
                return -1;
        if (get_int(e, "KAFSCALE_DEFAULT_PARTITIONS", &x, err, errlen))
                return -1;
        cfg->default_partitions = (int32_t)x;
        v = find_var("KAFSCALE_LOG_LEVEL");
        if (ks_log_parse_level(var_value(e, v), &cfg->log_level) != 0) {
                snprintf(err, errlen, "KAFSCALE_LOG_LEVEL=\"%s\" is not valid: expected debug, info, warn or error",
                         var_value(e, v));
                return -1;
        }
        if (get_int(e, "KAFSCALE_IO_THREADS", &x, err, errlen))
                return -1;
        cfg->io_threads = (int)x;
        if (cfg->io_threads == 0) {
                long n = sysconf(_SC_NPROCESSORS_ONLN);
                cfg->io_threads = n > 0 ? (int)(n > 64 ? 64 : n) : 1;
        }
        if (get_int(e, "KAFSCALE_MAX_REQUEST_BYTES", &cfg->max_request_bytes, err, errlen))
                return -1;
        if (get_int(e, "KAFSCALE_CONNECTION_IDLE_MS", &cfg->idle_timeout_ms, err, errlen))
                return -1;
        if (get_int(e, "KAFSCALE_MAX_CONNECTIONS", &x, err, errlen))
                return -1;
        cfg->max_connections = (int)x;
        if (get_int(e, "KAFSCALE_MAX_INFLIGHT_PER_CONNECTION", &x, err, errlen))
                return -1;
        cfg->max_inflight_per_conn = (int)x;

        if (cfg->listen_port == 0) {
                snprintf(err, errlen, "KAFSCALE_BROKER_ADDR needs a port other than 0");
                return -1;
        }
        if (cfg->advertised_port == 0)
                cfg->advertised_port = cfg->listen_port;
        if (cfg->advertised_host[0] == '\0') {
                if (cfg->listen_host[0] && strcmp(cfg->listen_host, "0.0.0.0") && strcmp(cfg->listen_host, "::")) {
                        snprintf(cfg->advertised_host, sizeof(cfg->advertised_host), "%s", cfg->listen_host);
                } else if (gethostname(cfg->advertised_host, sizeof(cfg->advertised_host) - 1) != 0 ||
                           cfg->advertised_host[0] == '\0') {
                        snprintf(err, errlen,
                                 "cannot determine the advertised host: set KAFSCALE_BROKER_HOST to the host name "
                                 "clients should connect to");
                        return -1;
                }
        }
        if (cfg->etcd_endpoints[0]) {
                char why[256] = "";
                if (ks_kv_etcd_endpoints_check(cfg->etcd_endpoints, why, sizeof(why)) != 0) {
                        snprintf(err, errlen, "KAFSCALE_ETCD_ENDPOINTS=\"%s\" is not valid: %s (expected a "
                                              "comma-separated list of http://host:port)",
                                 cfg->etcd_endpoints, why);
                        return -1;
                }
                if (cfg->memory_metadata) {
                        snprintf(err, errlen, "KAFSCALE_ETCD_ENDPOINTS and KAFSCALE_USE_MEMORY_METADATA are both set: "
                                              "choose one (unset KAFSCALE_USE_MEMORY_METADATA for cluster mode)");
                        return -1;
                }
                if (!cfg->s3.bucket && !cfg->memory_s3) {
                        snprintf(err, errlen, "KAFSCALE_ETCD_ENDPOINTS is set but KAFSCALE_S3_BUCKET is not: in "
                                              "cluster mode records live in S3, shared by every broker; set "
                                              "KAFSCALE_S3_BUCKET (and KAFSCALE_S3_ENDPOINT for a store other than "
                                              "AWS), or unset KAFSCALE_ETCD_ENDPOINTS for embedded mode");
                        return -1;
                }
        } else if (cfg->etcd_username[0] || cfg->etcd_password[0]) {
                snprintf(err, errlen, "KAFSCALE_ETCD_USERNAME/KAFSCALE_ETCD_PASSWORD are set but "
                                      "KAFSCALE_ETCD_ENDPOINTS is not: set the endpoints or unset the credentials");
                return -1;
        }
        if (!cfg->etcd_username[0] != !cfg->etcd_password[0]) {
                snprintf(err, errlen, "set both KAFSCALE_ETCD_USERNAME and KAFSCALE_ETCD_PASSWORD, or neither");
                return -1;
        }
        if (!cfg->memory_metadata && !cfg->etcd_endpoints[0] && cfg->data_dir[0] == '\0') {
                snprintf(err, errlen, "KAFSCALE_DATA_DIR is empty: set it to a writable directory");
                return -1;
        }
        return 0;
}

int64_t ks_config_default_flush_interval(const char *backend)
{
        if (!strcmp(backend, "s3"))
                return 150;
        if (!strcmp(backend, "local"))
                return 5;
        return 2;
}

void ks_config_print_help(FILE *out)
{
        fprintf(out, "Usage: kafscale-broker [--help]\n\n"
                     "Kafscale is configured through environment variables:\n\n");
        for (size_t i = 0; i < N_VARS; i++)
                fprintf(out, "  %-38s default %-18s %s\n", vars[i].name,
                        vars[i].def[0] ? vars[i].def : "(unset)", vars[i].help);
        ks_s3_config_print_help(out);
}

void ks_config_warn_unknown(void)
{
        for (char **e = environ; *e; e++) {
                if (strncmp(*e, "KAFSCALE_", 9) != 0)
                        continue;
                const char *eq = strchr(*e, '=');
                size_t n = eq ? (size_t)(eq - *e) : strlen(*e);
                bool known = ks_s3_config_is_var(*e, n);
                for (size_t i = 0; i < N_VARS && !known; i++)
                        known = strlen(vars[i].name) == n && !strncmp(vars[i].name, *e, n);
                if (!known)
                        ks_log_warn("config_unknown_variable", "name=%.*s hint=\"not used by this broker; check "
                                                               "for a typo\"",
                                    (int)n, *e);
        }
}
