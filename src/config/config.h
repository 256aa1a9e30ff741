/*
 * config.h — broker configuration from KAFSCALE_* environment variables.
 *
 * One table (config.c) lists every variable with its default and meaning;
 * `--help` and the README are written from it.  Parsing is strict: a value
 * that does not parse, or a combination that cannot work, is an error with a
 * message naming the variable and what to fix — never a silent fallback.
 */
#ifndef KS_CONFIG_CONFIG_H
#define KS_CONFIG_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "config/env.h"
#include "config/s3_config.h"
#include "util/log.h"

typedef struct ks_config {
        /* Kafka listener. */
        char listen_host[256]; /* "" = all interfaces */
        int listen_port;
        char advertised_host[256];
        int advertised_port;
        int32_t broker_id;
        char metrics_host[256];
        int metrics_port;

        /* Storage / metadata. */
        char data_dir[1024];
        bool memory_metadata;
        char etcd_endpoints[1024];  /* "" = not cluster mode */
        char etcd_username[256];
        char etcd_password[256];
        int64_t etcd_timeout_ms;
        int64_t lease_ttl_ms;        /* cluster mode: broker session */

        /* Object storage and the log. */
        bool memory_s3;
        ks_s3_config_t s3;         /* s3.bucket NULL: S3 not configured */
        char s3_storage[KS_S3_CONFIG_STORAGE];
        char s3_namespace[128];
        int64_t flush_interval_ms;   /* -1 until resolved per backend */
        int64_t segment_bytes;
        int64_t cache_bytes;
        int64_t produce_buffer_bytes; /* the server's produce budget */
        int readahead_segments;
        int storage_threads;
        int32_t max_message_bytes;
        int64_t retention_check_ms;
        int64_t lag_interval_ms; /* consumer lag metrics (0: off) */

        /* Consumer groups. */
        int32_t group_min_session_timeout_ms;
        int32_t group_max_session_timeout_ms;
        int32_t group_initial_rebalance_delay_ms;

        /* Behaviour. */
        bool auto_create_topics;
        int32_t default_partitions;
        ks_log_level_t log_level;

        /* Network limits. */
        int io_threads;
        int64_t max_request_bytes;
        int64_t idle_timeout_ms;
        int max_connections;
        int max_inflight_per_conn;
} ks_config_t;

/* Reads the environment into *cfg.  Returns 0, or -1 with a message for the
 * operator in err (what is wrong and how to fix it). */
int ks_config_from_env(ks_config_t *cfg, char *err, size_t errlen);

/* The same, reading every variable (KAFSCALE_*, AWS_*) through `lookup`
 * instead of the environment. */
int ks_config_from(ks_config_t *cfg, ks_env_lookup_fn *lookup, void *opaque, char *err, size_t errlen);

/* Default flush interval per object-store backend ("memory", "local",
 * "s3"), used when KAFSCALE_FLUSH_INTERVAL_MS is not set. */
int64_t ks_config_default_flush_interval(const char *backend);

/* Prints the table of variables with defaults and descriptions. */
void ks_config_print_help(FILE *out);

/* Logs unknown KAFSCALE_* variables (likely typos) as warnings. */
void ks_config_warn_unknown(void);

#endif
