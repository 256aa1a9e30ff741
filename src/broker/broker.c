/*
 * broker.c — start-up and shutdown order.
 *
 * Start: metrics and the HTTP endpoint (KAFSCALE_METRICS_ADDR: /healthz
 * answers from here on, /readyz says "not ready" until start-up is done) ->
 * metadata store -> typed metadata (cluster id, topics) -> object store ->
 * partition logs (recovery) -> groups -> worker pool -> cluster mode: the
 * cluster module (registration, then the first ownership pass: the
 * partitions placed here serve before clients can connect) -> network
 * server -> readiness probe thread; only then is the broker ready.  Stop
 * runs the reverse: new requests are refused, handlers running on the
 * I/O loops finish and the worker pool drains queued blocking work (whose
 * completions the still-running I/O loops deliver); cluster mode then
 * leaves the cluster (every owned partition flushed, committed and handed
 * over; the lease revoked, so the others take over at once); readiness
 * drops and the probe thread ends, then the server closes every
 * connection, then the metadata layers close; the HTTP endpoint goes last.
 *
 * Readiness (/readyz) never touches the stores from the HTTP thread: a
 * probe thread (`ks-ready`) checks the object store (ks_objstore_check) and
 * the metadata store (one key read) every READY_PROBE_INTERVAL_MS and
 * caches the result; the HTTP handler reads the cache.
 */
#include "broker/broker.h"
#include "broker/lag.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

#include "http/http.h"
#include "metrics/metrics.h"
#include "util/log.h"


#define READY_PROBE_INTERVAL_MS 2000
/* A probe still running after this long counts as a failure: a store that
 * hangs is as unusable as one that refuses. */
#define READY_PROBE_STALE_MS 10000
#define READY_WHY 256
/* Cluster mode: start-up waits at most this long for the first ownership
 * pass before the listener opens. */
#define FIRST_PASS_WAIT_MS 10000

/* Readiness and the HTTP endpoint.  ks_broker_t (broker.h) has no field for
 * them, so they live here: one broker per process, as main.c runs it. */
typedef struct ops_state {
        pthread_mutex_t lock;
        pthread_cond_t cond;     /* wakes the probe thread at stop */
        ks_broker_t *b;
        ks_http_t *http;
        pthread_t probe;
        bool probe_running;
        bool stop;
        bool serving;            /* recovery done, Kafka listener up */
        bool store_ok, meta_ok;  /* last probe results */
        char store_why[READY_WHY], meta_why[READY_WHY];
        int64_t probe_started_ms; /* monotonic; 0 when no probe runs */
        int last_ready;          /* -1 unknown, 0, 1: for transition logs */
} ops_state_t;

static ops_state_t ops = { .lock = PTHREAD_MUTEX_INITIALIZER, .last_ready = -1 };

static int64_t mono_ms(void)
{
        return ks_clock_mono_ms(ks_clock_system());
}

/* Decides readiness from the cached state; ops.lock held. */
static bool ready_locked(char *why, size_t len)
{
        ks_broker_t *b = ops.b;
        if (!b || ops.stop || __atomic_load_n(&b->stopping, __ATOMIC_RELAXED)) {
                snprintf(why, len, "shutting down");
                return false;
        }
        if (!ops.serving) {
                snprintf(why, len, "starting: start-up recovery in progress");
                return false;
        }
        if (!ops.store_ok) {
                snprintf(why, len, "object store unavailable: %s", ops.store_why);
                return false;
        }
        if (!ops.meta_ok) {
                snprintf(why, len, "metadata store unavailable: %s", ops.meta_why);
                return false;
        }
        if (ops.probe_started_ms > 0 && mono_ms() - ops.probe_started_ms > READY_PROBE_STALE_MS) {
                snprintf(why, len, "store check has not answered for %lld ms",
                         (long long)(mono_ms() - ops.probe_started_ms));
                return false;
        }
        return true;
}

/* Updates the ready gauge and logs transitions; ops.lock held. */
static void ready_publish_locked(void)
{
        char why[2 * READY_WHY + 64];
        int r = ready_locked(why, sizeof(why)) ? 1 : 0;
        ks_metric_set(ks_std_metrics.ready, 0, r);
        if (r == ops.last_ready)
                return;
        for (char *p = why; *p; p++)
                if (*p == '"' || *p == '\n')
                        *p = '\''; /* keep the logfmt value quoted */
        if (r)
                ks_log_info("broker_ready", "ready=true");
        else if (ops.last_ready == 1 && ops.stop)
                ks_log_info("broker_not_ready", "ready=false reason=\"%s\"", why);
        else if (ops.last_ready == 1)
                ks_log_warn("broker_not_ready", "ready=false reason=\"%s\"", why);
        ops.last_ready = r;
}

/* ks_ready_fn for /readyz (HTTP thread). */
static bool ready_check(void *opaque, char *why, size_t len)
{
        (void)opaque;
        pthread_mutex_lock(&ops.lock);
        bool r = ready_locked(why, len);
        ready_publish_locked();
        pthread_mutex_unlock(&ops.lock);
        return r;
}

/* Cheap metadata-store read: the cluster id key. */
static bool probe_metadata(ks_kv_t *kv, char *why, size_t len)
{
        static const char key[] = "/kafscale/cluster/id";
        ks_kv_result_t res = { 0 };
        ks_err_t err = ks_kv_range(kv, key, sizeof(key) - 1, NULL, 0, &res);
        if (err) {
                snprintf(why, len, "read of %s failed: %s", key, ks_err_name(err));
                return false;
        }
        ks_kv_result_free(&res);
        return true;
}

static void *probe_main(void *arg)
{
        (void)arg;
        pthread_mutex_lock(&ops.lock);
        while (!ops.stop) {
                ks_broker_t *b = ops.b;
                ops.probe_started_ms = mono_ms();
                pthread_mutex_unlock(&ops.lock);

                char swhy[READY_WHY] = "", mwhy[READY_WHY] = "";
                ks_err_t err = ks_objstore_check(b->store, swhy, sizeof(swhy));
                if (err && !swhy[0])
                        snprintf(swhy, sizeof(swhy), "%s", ks_err_name(err));
                bool meta = probe_metadata(b->kv, mwhy, sizeof(mwhy));
                /* Produce fails fast while a store is down. */
                ks_log_set_storage_health(b->log, !err && meta);

                pthread_mutex_lock(&ops.lock);
                ops.probe_started_ms = 0;
                ops.store_ok = !err;
                ops.meta_ok = meta;
                memcpy(ops.store_why, swhy, sizeof(swhy));
                memcpy(ops.meta_why, mwhy, sizeof(mwhy));
                ks_metric_set(ks_std_metrics.objstore_up, 0, !err);
                ks_metric_set(ks_std_metrics.metastore_up, 0, meta);
                ready_publish_locked();
                struct timespec until;
                clock_gettime(CLOCK_MONOTONIC, &until);
                until.tv_sec += READY_PROBE_INTERVAL_MS / 1000;
                until.tv_nsec += (long)(READY_PROBE_INTERVAL_MS % 1000) * 1000000L;
                if (until.tv_nsec >= 1000000000L) {
                        until.tv_sec++;
                        until.tv_nsec -= 1000000000L;
                }
                while (!ops.stop && pthread_cond_timedwait(&ops.cond, &ops.lock, &until) != ETIMEDOUT)
                        ;
        }
        pthread_mutex_unlock(&ops.lock);
        return NULL;
}

/* Starts the HTTP endpoint (not ready yet).  0, or -1 (logged). */
static int ops_start_http(ks_broker_t *b)
{
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&ops.cond, &ca);
        pthread_condattr_destroy(&ca);
        if (ks_metrics_std_init() != 0)
                return -1;
        pthread_mutex_lock(&ops.lock);
        ops.b = b;
        ops.stop = false;
        ops.serving = false;
        ops.store_ok = ops.meta_ok = false;
        ops.store_why[0] = ops.meta_why[0] = '\0';
        ops.probe_started_ms = 0;
        ops.last_ready = -1;
        ready_publish_locked();
        pthread_mutex_unlock(&ops.lock);
        ops.http = ks_http_start(b->cfg->metrics_host, b->cfg->metrics_port, ks_metrics_default(), ready_check, NULL);
        return ops.http ? 0 : -1;
}

/* Start-up is done: the stores answered during start-up; the probe thread
 * keeps checking them.  0, or -1 (logged). */
static int ops_serving(void)
{
        pthread_mutex_lock(&ops.lock);
        ops.serving = true;
        ops.store_ok = ops.meta_ok = true;
        ks_metric_set(ks_std_metrics.objstore_up, 0, 1);
        ks_metric_set(ks_std_metrics.metastore_up, 0, 1);
        pthread_mutex_unlock(&ops.lock);
        if (pthread_create(&ops.probe, NULL, probe_main, NULL) != 0) {
                ks_log_error("thread_create_failed", "what=readiness_probe");
                return -1;
        }
        pthread_setname_np(ops.probe, "ks-ready");
        ops.probe_running = true;
        pthread_mutex_lock(&ops.lock);
        ready_publish_locked();
        pthread_mutex_unlock(&ops.lock);
        return 0;
}

/* Readiness drops and the probe thread ends (it uses the stores). */
static void ops_stop_probe(void)
{
        pthread_mutex_lock(&ops.lock);
        ops.stop = true;
        ops.serving = false;
        ready_publish_locked();
        pthread_cond_broadcast(&ops.cond);
        pthread_mutex_unlock(&ops.lock);
        if (ops.probe_running) {
                pthread_join(ops.probe, NULL);
                ops.probe_running = false;
        }
}

static void ops_stop_http(void)
{
        ks_http_stop(ops.http);
        ops.http = NULL;
        pthread_mutex_lock(&ops.lock);
        ops.b = NULL;
        pthread_mutex_unlock(&ops.lock);
}

static int make_dir(const char *path)
{
        char buf[1024];
        snprintf(buf, sizeof(buf), "%s", path);
        for (char *p = buf + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = '\0';
                if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                        return -1;
                *p = '/';
        }
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return -1;
        return 0;
}

static int open_metadata_store(ks_broker_t *b)
{
        const ks_config_t *cfg = b->cfg;
        ks_err_t err;
        if (cfg->memory_metadata) {
                b->mode = "memory";
                err = ks_kv_memory_new(ks_clock_system(), &b->kv);
                if (err) {
                        ks_log_error("metadata_store_failed", "backend=memory err=%s", ks_err_name(err));
                        return -1;
                }
                return 0;
        }
        if (cfg->etcd_endpoints[0]) {
                b->mode = "cluster";
                ks_kv_etcd_config_t ecfg = { .endpoints = cfg->etcd_endpoints,
                                             .username = cfg->etcd_username,
                                             .password = cfg->etcd_password,
                                             .request_timeout_ms = cfg->etcd_timeout_ms };
                char why[512] = "";
                err = ks_kv_etcd_open(&ecfg, why, sizeof(why), &b->kv);
                if (err) {
                        ks_log_error("metadata_store_failed",
                                     "backend=etcd endpoints=\"%s\" err=%s reason=\"%s\" fix=\"check "
                                     "KAFSCALE_ETCD_ENDPOINTS (and KAFSCALE_ETCD_USERNAME/_PASSWORD) and that etcd "
                                     "is running\"",
                                     cfg->etcd_endpoints, ks_err_name(err), why);
                        return -1;
                }
                return 0;
        }
        b->mode = "embedded";
        if (make_dir(cfg->data_dir) != 0) {
                ks_log_error("data_dir_unusable", "dir=\"%s\" errno=%d err=\"%s\" fix=\"set KAFSCALE_DATA_DIR to a "
                                                  "writable directory\"",
                             cfg->data_dir, errno, strerror(errno));
                return -1;
        }
        char path[1200];
        snprintf(path, sizeof(path), "%s/metadata.db", cfg->data_dir);
        err = ks_kv_sqlite_open(path, ks_clock_system(), &b->kv);
        if (err) {
                ks_log_error("metadata_store_failed", "backend=sqlite path=\"%s\" err=%s fix=\"check that "
                                                      "KAFSCALE_DATA_DIR is writable and not used by another broker\"",
                             path, ks_err_name(err));
                return -1;
        }
        return 0;
}

static int open_object_store(ks_broker_t *b)
{
        const ks_config_t *cfg = b->cfg;
        ks_err_t err;
        const char *backend;
        char where[1200] = "";
        if (cfg->memory_s3) {
                backend = "memory";
                err = ks_objstore_memory_new(&b->store);
        } else if (cfg->s3.bucket) {
                backend = "s3";
                ks_s3_config_describe(&cfg->s3, where, sizeof(where));
                err = ks_objstore_s3_new(&cfg->s3, &b->store);
        } else {
                backend = "local";
                snprintf(where, sizeof(where), "%s/objects", cfg->data_dir);
                err = ks_objstore_local_new(where, &b->store);
        }
        if (err) {
                ks_log_error("object_store_failed", "backend=%s where=\"%s\" err=%s", backend, where, ks_err_name(err));
                return -1;
        }
        char msg[512] = "";
        err = ks_objstore_check(b->store, msg, sizeof(msg));
        if (err) {
                ks_log_error("object_store_unusable", "backend=%s where=\"%s\" err=%s reason=\"%s\"", backend, where,
                             ks_err_name(err), msg);
                return -1;
        }
        b->log_cfg.ns = cfg->s3_namespace;
        b->log_cfg.flush_interval_ms =
                cfg->flush_interval_ms >= 0 ? cfg->flush_interval_ms : ks_config_default_flush_interval(backend);
        b->log_cfg.segment_bytes = cfg->segment_bytes;
        b->log_cfg.cache_bytes = cfg->cache_bytes;
        b->log_cfg.readahead_segments = cfg->readahead_segments;
        b->log_cfg.upload_threads = cfg->storage_threads;
        b->log_cfg.max_batch_bytes = cfg->max_message_bytes;
        b->log_cfg.retention_check_ms = cfg->retention_check_ms;
        /* The S3 description is already key=value pairs; a path is quoted. */
        bool kv = cfg->s3.bucket && !cfg->memory_s3;
        ks_log_info("object_store_ready", "backend=%s %s%s%s namespace=%s flush_interval_ms=%lld segment_bytes=%lld",
                    backend, kv ? "" : "where=\"", where, kv ? "" : "\"", cfg->s3_namespace,
                    (long long)b->log_cfg.flush_interval_ms, (long long)b->log_cfg.segment_bytes);
        return 0;
}

/* Opens the partition logs of every known topic (recovery), then keeps
 * them in step with the topic registry. */
static int open_logs(ks_broker_t *b)
{
        if (b->cfg->etcd_endpoints[0]) {
                /* Cluster mode: a partition serves only while this broker
                 * owns it, and every commit is fenced by that ownership. */
                b->log_cfg.owned_only = true;
                b->log_cfg.fence = ks_broker_fence;
                b->log_cfg.fence_opaque = b;
        }
        ks_err_t err = ks_log_open(&b->log_cfg, b->store, b->meta, &b->log);
        if (err) {
                ks_log_error("log_open_failed", "err=%s", ks_err_name(err));
                return -1;
        }
        err = ks_topic_sync_start(b->log, b->meta, &b->topics);
        if (err) {
                ks_log_error("topic_sync_start_failed", "err=%s", ks_err_name(err));
                return -1;
        }
        ks_topic_sync_set_hook(b->topics, ks_broker_reconcile, b);
        int64_t t0 = ks_clock_mono_ms(ks_clock_system());
        err = ks_topic_sync_all(b->topics);
        if (err) {
                ks_log_error("recovery_failed", "err=%s", ks_err_name(err));
                return -1;
        }
        ks_topic_t *topics = NULL;
        int n = ks_meta_topics_snapshot(b->meta, &topics);
        int partitions = 0;
        for (int i = 0; i < n; i++)
                partitions += topics[i].partitions;
        free(topics);
        ks_log_info("recovery_complete", "topics=%d partitions=%d ms=%lld", n, partitions,
                    (long long)(ks_clock_mono_ms(ks_clock_system()) - t0));
        return 0;
}

int ks_broker_live_brokers(ks_broker_t *b, ks_broker_info_t **out)
{
        ks_broker_info_t *v = NULL;
        int n = b->cluster ? ks_cluster_brokers(b->cluster, &v) : 0;
        if (n < 0)
                return -1;
        bool self = false;
        for (int i = 0; i < n; i++)
                self |= v[i].id == b->cfg->broker_id;
        if (!self) {
                /* Not registered yet (or the watch has not caught up): this
                 * broker answers, so it is alive. */
                ks_broker_info_t *nv = realloc(v, (size_t)(n + 1) * sizeof(*nv));
                if (!nv) {
                        free(v);
                        return -1;
                }
                v = nv;
                int at = n;
                while (at > 0 && v[at - 1].id > b->cfg->broker_id) {
                        v[at] = v[at - 1];
                        at--;
                }
                memset(&v[at], 0, sizeof(v[at]));
                v[at].id = b->cfg->broker_id;
                snprintf(v[at].host, sizeof(v[at].host), "%s", b->cfg->advertised_host);
                v[at].port = b->cfg->advertised_port;
                n++;
        }
        *out = v;
        return n;
}

/* --- cluster metrics (computed at scrape from ks_cluster_get_stats) --------- */

enum { CM_LIVE, CM_PARTITIONS, CM_GROUPS, CM_SESSION, CM_CHANGES, CM_COUNT };
static ks_metric_t *cluster_metrics[CM_COUNT];
static const char *const change_kinds[] = { "acquired", "released", "lost" };

static void collect_cluster(void *ctx, double *v, int n, int which)
{
        ks_cluster_stats_t st;
        ks_cluster_get_stats(ctx, &st);
        switch (which) {
        case CM_LIVE: v[0] = st.live_brokers; break;
        case CM_PARTITIONS: v[0] = st.owned_partitions; break;
        case CM_GROUPS: v[0] = st.owned_groups; break;
        case CM_SESSION: v[0] = st.lease != 0; break;
        default:
                if (n == 3) {
                        v[0] = (double)st.acquired;
                        v[1] = (double)st.released;
                        v[2] = (double)st.lost;
                }
        }
}

static void collect_live(void *ctx, double *v, int n) { collect_cluster(ctx, v, n, CM_LIVE); }
static void collect_partitions(void *ctx, double *v, int n) { collect_cluster(ctx, v, n, CM_PARTITIONS); }
static void collect_groups(void *ctx, double *v, int n) { collect_cluster(ctx, v, n, CM_GROUPS); }
static void collect_session(void *ctx, double *v, int n) { collect_cluster(ctx, v, n, CM_SESSION); }
static void collect_changes(void *ctx, double *v, int n) { collect_cluster(ctx, v, n, CM_CHANGES); }

static void cluster_metrics_attach(ks_cluster_t *c)
{
        ks_metrics_t *r = ks_metrics_default();
        const ks_metric_labels_t kinds = { .nseries = 3, .name = "change", .values = change_kinds };
        cluster_metrics[CM_LIVE] = ks_metrics_gauge_fn(r, "kafscale_cluster_live_brokers",
                                                       "Brokers registered under a live lease, as this broker sees them",
                                                       NULL, collect_live, c);
        cluster_metrics[CM_PARTITIONS] = ks_metrics_gauge_fn(r, "kafscale_cluster_partitions_owned",
                                                             "Partitions this broker owns (serves)", NULL,
                                                             collect_partitions, c);
        cluster_metrics[CM_GROUPS] = ks_metrics_gauge_fn(r, "kafscale_cluster_groups_owned",
                                                         "Consumer groups this broker coordinates", NULL,
                                                         collect_groups, c);
        cluster_metrics[CM_SESSION] = ks_metrics_gauge_fn(r, "kafscale_cluster_session_up",
                                                          "1 while this broker holds its etcd session lease", NULL,
                                                          collect_session, c);
        cluster_metrics[CM_CHANGES] = ks_metrics_gauge_fn(
                r, "kafscale_cluster_ownership_changes",
                "Partitions and groups acquired, released (handed over) and lost (lease expired) since start",
                &kinds, collect_changes, c);
}

/* Before the cluster module goes: the scrapes stop calling into it. */
static void cluster_metrics_detach(void)
{
        for (int i = 0; i < CM_COUNT; i++) {
                if (cluster_metrics[i])
                        ks_metric_detach(ks_metrics_default(), cluster_metrics[i]);
                cluster_metrics[i] = NULL;
        }
}

/* Start-up in cluster mode: register under a lease so that every broker
 * lists this one (Metadata, DescribeCluster) while it lives, and take the
 * partitions and groups placed on it (docs/cluster.md).  The hooks run on
 * the module's thread from here on. */
/* The log's share of the produce-buffer budget (ks_server_set_produce_budget). */
static int64_t log_unflushed(void *log)
{
        return ks_log_unflushed_bytes(log);
}

static int start_cluster(ks_broker_t *b)
{
        const ks_config_t *cfg = b->cfg;
        ks_cluster_config_t cc = { .broker_id = cfg->broker_id,
                                   .host = cfg->advertised_host,
                                   .port = cfg->advertised_port,
                                   .lease_ttl_ms = cfg->lease_ttl_ms };
        static const ks_cluster_hooks_t hooks = {
                .partition_acquired = ks_broker_partition_acquired,
                .partition_release = ks_broker_partition_release,
                .partition_lost = ks_broker_partition_lost,
                .group_acquired = ks_broker_group_acquired,
                .group_release = ks_broker_group_release,
                .group_lost = ks_broker_group_lost,
        };
        ks_err_t err = ks_cluster_start(&cc, b->kv, &hooks, b, &b->cluster);
        if (err) {
                ks_log_error("broker_registration_failed",
                             "broker_id=%d err=%s fix=\"another live broker uses KAFSCALE_BROKER_ID=%d, or etcd is "
                             "unreachable\"",
                             cfg->broker_id, ks_err_name(err), cfg->broker_id);
                return -1;
        }
        /* The first rebalance pass acquires what is placed here and free. */
        int64_t t0 = mono_ms();
        ks_cluster_stats_t st;
        for (ks_cluster_get_stats(b->cluster, &st); st.passes < 1; ks_cluster_get_stats(b->cluster, &st)) {
                if (mono_ms() - t0 > FIRST_PASS_WAIT_MS) {
                        ks_log_warn("cluster_first_pass_slow", "waited_ms=%d action=serving_anyway",
                                    FIRST_PASS_WAIT_MS);
                        break;
                }
                struct timespec ts = { 0, 10 * 1000000L };
                nanosleep(&ts, NULL);
        }
        cluster_metrics_attach(b->cluster);
        ks_log_info("cluster_joined", "broker_id=%d live_brokers=%d partitions_owned=%d ms=%lld", cfg->broker_id,
                    st.live_brokers, st.owned_partitions, (long long)(mono_ms() - t0));
        return 0;
}

/* The partition's leader and epoch: the cluster module's view in cluster
 * mode; otherwise this broker, at the epoch its log serves. */
static int32_t snapshot_leader(void *opaque, const char *topic, int32_t partition, int32_t *epoch)
{
        ks_broker_t *b = opaque;
        if (b->cluster)
                return ks_cluster_partition_leader(b->cluster, topic, partition, epoch);
        *epoch = 0;
        ks_partition_t *p = ks_log_partition(b->log, ks_str_c(topic), partition);
        if (p) {
                ks_partition_serving(p, epoch);
                ks_partition_release(p);
        }
        return b->cfg->broker_id;
}

void ks_broker_write_snapshot(ks_broker_t *b)
{
        ks_broker_info_t *live = NULL;
        int n = ks_broker_live_brokers(b, &live);
        ks_snapshot_broker_t *sb = n > 0 ? calloc((size_t)n, sizeof(*sb)) : NULL;
        if (!sb) {
                free(live);
                ks_log_warn("cluster_snapshot_not_written", "key=%s err=%s", KS_SNAPSHOT_KEY,
                            ks_err_name(KS_ERR__NOMEM));
                return;
        }
        for (int i = 0; i < n; i++)
                sb[i] = (ks_snapshot_broker_t){ live[i].id, live[i].host, live[i].port, live[i].rack };
        /* The controller as Metadata names it: the lowest live id. */
        ks_err_t err = ks_meta_snapshot_write(b->meta, sb, n, live[0].id, snapshot_leader, b);
        free(sb);
        free(live);
        if (err)
                ks_log_warn("cluster_snapshot_not_written", "key=%s err=%s", KS_SNAPSHOT_KEY, ks_err_name(err));
}

int ks_broker_start(ks_broker_t *b, const ks_config_t *cfg)
{
        memset(b, 0, sizeof(*b));
        b->cfg = cfg;
        pthread_mutex_init(&b->own_mu, NULL);
        if (ops_start_http(b) != 0)
                goto fail;
        if (open_metadata_store(b) != 0)
                goto fail;
        ks_err_t err = ks_meta_open(b->kv, &b->meta);
        if (err) {
                ks_log_error("metadata_open_failed", "err=%s", ks_err_name(err));
                goto fail;
        }
        if (open_object_store(b) != 0 || open_logs(b) != 0)
                goto fail;
        if (ks_broker_groups_open(b) != 0)
                goto fail;
        b->workq = ks_workq_new("ks-work", 4);
        if (!b->workq)
                goto fail;
        /* Cluster mode: partitions placed here and free are served before
         * the listener opens (those another broker still holds come by
         * hand-over later). */
        if (cfg->etcd_endpoints[0] && start_cluster(b) != 0)
                goto fail;
        b->server = ks_server_new(cfg, ks_broker_dispatch, b);
        if (!b->server)
                goto fail;
        ks_server_set_on_complete(b->server, ks_broker_request_done, b);
        ks_server_set_produce_budget(b->server, cfg->produce_buffer_bytes, log_unflushed, b->log);
        if (ks_server_start(b->server) != 0)
                goto fail;
        if (ops_serving() != 0)
                goto fail;
        b->lag = ks_lag_start(b, cfg->lag_interval_ms);
        const char *meta_where = cfg->etcd_endpoints[0] ? cfg->etcd_endpoints : cfg->data_dir;
        ks_log_info("broker_started",
                    "mode=%s broker_id=%d listener=%s:%d advertised=%s:%d metadata=%s%s%s io_threads=%d "
                    "cluster_id=%s metrics=%s:%d",
                    b->mode, cfg->broker_id, cfg->listen_host[0] ? cfg->listen_host : "0.0.0.0",
                    ks_server_port(b->server), cfg->advertised_host, cfg->advertised_port, b->kv->ops->name,
                    cfg->memory_metadata ? "" : ":", cfg->memory_metadata ? "" : meta_where, cfg->io_threads,
                    ks_meta_cluster_id(b->meta), cfg->metrics_host[0] ? cfg->metrics_host : "0.0.0.0",
                    ks_http_port(ops.http));
        return 0;
fail:
        ks_broker_stop(b);
        return -1;
}

void ks_broker_stop(ks_broker_t *b)
{
        __atomic_store_n(&b->stopping, 1, __ATOMIC_RELAXED);
        /* New requests are refused from here on.  Handlers that use the
         * cluster module finish before it goes: those running on the I/O
         * loops (the barrier), then the blocking work queued on the worker
         * pool (drained; its completions are delivered by the
         * still-running loops). */
        ks_lag_stop(b->lag); /* it reads groups, the cluster module and the log */
        b->lag = NULL;
        if (b->server)
                ks_server_barrier(b->server);
        if (b->workq) {
                ks_workq_destroy(b->workq);
                b->workq = NULL;
        }
        /* Leave the cluster: every owned partition is flushed, committed
         * and handed over (the I/O loops still deliver the
         * acknowledgements), every owned group written and handed over,
         * then the others stop listing this broker. */
        ks_broker_ownership_close(b);
        cluster_metrics_detach();
        ks_cluster_stop(b->cluster);
        __atomic_store_n(&b->cluster, NULL, __ATOMIC_RELEASE);
        /* /readyz answers 503 from here on; the probe stops using the
         * stores before they close. */
        ops_stop_probe();
        /* Parked joins and syncs are answered; group metadata is written. */
        if (b->groups) {
                ks_groups_close(b->groups);
                b->groups = NULL;
        }
        /* Parked fetches answer now (and the loops deliver those answers)
         * before the log they read goes away. */
        if (b->log && b->server) {
                ks_log_wake_all(b->log);
                ks_server_barrier(b->server);
        }
        ks_topic_sync_stop(b->topics);
        b->topics = NULL;
        /* Flush buffered records while the I/O loops still deliver the
         * acknowledgements. */
        if (b->log) {
                ks_log_close(b->log);
                b->log = NULL;
        }
        if (b->server) {
                ks_server_destroy(b->server);
                b->server = NULL;
        }
        if (b->meta) {
                ks_meta_close(b->meta);
                b->meta = NULL;
        }
        if (b->kv) {
                ks_kv_destroy(b->kv);
                b->kv = NULL;
        }
        if (b->store) {
                ks_objstore_destroy(b->store);
                b->store = NULL;
        }
        /* Last, so /healthz and /metrics answer during a long shutdown. */
        ops_stop_http();
}
