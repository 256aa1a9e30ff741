/*
 * broker.c — start-up and shutdown order.
 *
 * Start: metadata store -> typed metadata (cluster id, topics) -> worker
 * pool -> network server.  Stop runs the reverse: the worker pool first
 * drains queued blocking work (whose completions the still-running I/O
 * loops deliver), then the server closes every connection, then the
 * metadata layers close.
 */
#include "broker/broker.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "util/log.h"

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

/* Opens the partition logs of every known topic (recovery). */
static int open_logs(ks_broker_t *b)
{
        ks_err_t err = ks_log_open(&b->log_cfg, b->store, b->meta, &b->log);
        if (err) {
                ks_log_error("log_open_failed", "err=%s", ks_err_name(err));
                return -1;
        }
        ks_topic_t *topics = NULL;
        int n = ks_meta_topics_snapshot(b->meta, &topics);
        if (n < 0)
                return -1;
        int64_t t0 = ks_clock_mono_ms(ks_clock_system());
        int partitions = 0;
        for (int i = 0; i < n && !err; i++) {
                err = ks_log_topic_open(b->log, &topics[i]);
                partitions += topics[i].partitions;
        }
        free(topics);
        if (err) {
                ks_log_error("recovery_failed", "err=%s", ks_err_name(err));
                return -1;
        }
        ks_log_info("recovery_complete", "topics=%d partitions=%d ms=%lld", n, partitions,
                    (long long)(ks_clock_mono_ms(ks_clock_system()) - t0));
        return 0;
}

int ks_broker_start(ks_broker_t *b, const ks_config_t *cfg)
{
        memset(b, 0, sizeof(*b));
        b->cfg = cfg;
        if (open_metadata_store(b) != 0)
                goto fail;
        ks_err_t err = ks_meta_open(b->kv, &b->meta);
        if (err) {
                ks_log_error("metadata_open_failed", "err=%s", ks_err_name(err));
                goto fail;
        }
        if (open_object_store(b) != 0 || open_logs(b) != 0)
                goto fail;
        ks_groups_config_t gcfg = { cfg->group_min_session_timeout_ms, cfg->group_max_session_timeout_ms,
                                    cfg->group_initial_rebalance_delay_ms };
        err = ks_groups_open(&gcfg, b->meta, &b->groups);
        if (err) {
                ks_log_error("groups_open_failed", "err=%s", ks_err_name(err));
                goto fail;
        }
        b->workq = ks_workq_new("ks-work", 4);
        if (!b->workq)
                goto fail;
        b->server = ks_server_new(cfg, ks_broker_dispatch, b);
        if (!b->server || ks_server_start(b->server) != 0)
                goto fail;
        ks_log_info("broker_started",
                    "mode=%s broker_id=%d listener=%s:%d advertised=%s:%d metadata=%s%s%s io_threads=%d "
                    "cluster_id=%s",
                    b->mode, cfg->broker_id, cfg->listen_host[0] ? cfg->listen_host : "0.0.0.0",
                    ks_server_port(b->server), cfg->advertised_host, cfg->advertised_port, b->kv->ops->name,
                    cfg->memory_metadata ? "" : ":", cfg->memory_metadata ? "" : cfg->data_dir, cfg->io_threads,
                    ks_meta_cluster_id(b->meta));
        return 0;
fail:
        ks_broker_stop(b);
        return -1;
}

void ks_broker_stop(ks_broker_t *b)
{
        b->stopping = 1;
        if (b->workq) {
                ks_workq_destroy(b->workq);
                b->workq = NULL;
        }
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
}
