/*
 * test_config.c — KAFSCALE_* parsing and the topic config whitelist.
 */
#include <stdlib.h>
#include <string.h>

#include "broker/topic_config.h"
#include "config/config.h"
#include "test.h"

static const char *const all_vars[] = {
        "KAFSCALE_BROKER_ADDR", "KAFSCALE_BROKER_HOST", "KAFSCALE_BROKER_PORT", "KAFSCALE_BROKER_ID",
        "KAFSCALE_METRICS_ADDR", "KAFSCALE_DATA_DIR", "KAFSCALE_USE_MEMORY_METADATA", "KAFSCALE_ETCD_ENDPOINTS",
        "KAFSCALE_AUTO_CREATE_TOPICS", "KAFSCALE_DEFAULT_PARTITIONS", "KAFSCALE_LOG_LEVEL", "KAFSCALE_IO_THREADS",
        "KAFSCALE_MAX_REQUEST_BYTES", "KAFSCALE_CONNECTION_IDLE_MS", "KAFSCALE_MAX_CONNECTIONS",
        "KAFSCALE_MAX_INFLIGHT_PER_CONNECTION", "KAFSCALE_ETCD_USERNAME", "KAFSCALE_ETCD_PASSWORD",
        "KAFSCALE_ETCD_TIMEOUT_MS", "KAFSCALE_S3_BUCKET", "KAFSCALE_USE_MEMORY_S3",
        "KAFSCALE_S3_ACCESS_KEY", "KAFSCALE_S3_SECRET_KEY",
};

static void clear_env(void)
{
        for (size_t i = 0; i < sizeof(all_vars) / sizeof(all_vars[0]); i++)
                unsetenv(all_vars[i]);
}

TEST(config_defaults)
{
        clear_env();
        ks_config_t cfg;
        char err[256];
        REQUIRE_EQ_INT(ks_config_from_env(&cfg, err, sizeof(err)), 0);
        CHECK_EQ_STR(cfg.listen_host, "");
        CHECK_EQ_INT(cfg.listen_port, 9092);
        CHECK_EQ_INT(cfg.advertised_port, 9092);
        CHECK(cfg.advertised_host[0] != '\0'); /* the machine's hostname */
        CHECK_EQ_INT(cfg.metrics_port, 9093);
        CHECK_EQ_INT(cfg.broker_id, 0);
        CHECK_EQ_STR(cfg.data_dir, "./kafscale-data");
        CHECK(cfg.auto_create_topics);
        CHECK(!cfg.memory_metadata);
        CHECK(cfg.io_threads >= 1);
        CHECK_EQ_INT(cfg.max_request_bytes, 104857600);
}

/* A lookup over a NULL-terminated array of "NAME=VALUE" strings. */
static const char *array_lookup(void *opaque, const char *name)
{
        size_t n = strlen(name);
        for (const char *const *e = opaque; *e; e++)
                if (!strncmp(*e, name, n) && (*e)[n] == '=')
                        return *e + n + 1;
        return NULL;
}

TEST(config_from_a_lookup_ignores_the_environment)
{
        clear_env();
        setenv("KAFSCALE_BROKER_ID", "not a number", 1);
        setenv("KAFSCALE_S3_BUCKET", "from-the-environment", 1);
        static const char *const vars[] = { "KAFSCALE_BROKER_ADDR=127.0.0.1:19092", "KAFSCALE_BROKER_ID=3",
                                            "KAFSCALE_USE_MEMORY_METADATA=1", "KAFSCALE_S3_BUCKET=bucket-1",
                                            "KAFSCALE_S3_ACCESS_KEY=a", "KAFSCALE_S3_SECRET_KEY=b",
                                            "KAFSCALE_FLUSH_INTERVAL_MS=7", NULL };
        ks_config_t cfg;
        char err[256] = "";
        REQUIRE_EQ_INT(ks_config_from(&cfg, array_lookup, (void *)vars, err, sizeof(err)), 0);
        CHECK_EQ_INT(cfg.broker_id, 3);
        CHECK_EQ_INT(cfg.listen_port, 19092);
        CHECK_EQ_INT(cfg.flush_interval_ms, 7);
        REQUIRE(cfg.s3.bucket != NULL);
        CHECK_EQ_STR(cfg.s3.bucket, "bucket-1");
        CHECK_EQ_STR(cfg.s3.access_key, "a");
        /* The environment's values are what ks_config_from_env reads. */
        CHECK_EQ_INT(ks_config_from_env(&cfg, err, sizeof(err)), -1);
        CHECK(strstr(err, "KAFSCALE_BROKER_ID") != NULL);
        clear_env();
}

TEST(config_values)
{
        clear_env();
        setenv("KAFSCALE_BROKER_ADDR", "127.0.0.1:19092", 1);
        setenv("KAFSCALE_BROKER_ID", "7", 1);
        setenv("KAFSCALE_AUTO_CREATE_TOPICS", "false", 1);
        setenv("KAFSCALE_LOG_LEVEL", "debug", 1);
        setenv("KAFSCALE_METRICS_ADDR", "[::1]:9999", 1);
        ks_config_t cfg;
        char err[256];
        REQUIRE_EQ_INT(ks_config_from_env(&cfg, err, sizeof(err)), 0);
        CHECK_EQ_STR(cfg.listen_host, "127.0.0.1");
        CHECK_EQ_INT(cfg.listen_port, 19092);
        CHECK_EQ_STR(cfg.advertised_host, "127.0.0.1"); /* specific listen host is advertised */
        CHECK_EQ_INT(cfg.advertised_port, 19092);
        CHECK_EQ_INT(cfg.broker_id, 7);
        CHECK(!cfg.auto_create_topics);
        CHECK_EQ_INT(cfg.log_level, KS_LOG_DEBUG);
        CHECK_EQ_STR(cfg.metrics_host, "::1");
        CHECK_EQ_INT(cfg.metrics_port, 9999);
        clear_env();
}

/* Each misconfiguration is an error naming the variable. */
TEST(config_errors)
{
        static const struct {
                const char *var, *value;
        } bad[] = {
                { "KAFSCALE_BROKER_ADDR", "9092" },        { "KAFSCALE_BROKER_ADDR", "host:99999" },
                { "KAFSCALE_BROKER_ADDR", "host:0" },      { "KAFSCALE_BROKER_ID", "-1" },
                { "KAFSCALE_BROKER_ID", "12abc" },         { "KAFSCALE_AUTO_CREATE_TOPICS", "maybe" },
                { "KAFSCALE_LOG_LEVEL", "loud" },          { "KAFSCALE_DEFAULT_PARTITIONS", "0" },
                { "KAFSCALE_MAX_REQUEST_BYTES", "10" },    { "KAFSCALE_ETCD_ENDPOINTS", "http://127.0.0.1:2379" },
                { "KAFSCALE_DATA_DIR", "" },               { "KAFSCALE_ETCD_USERNAME", "root" },
                { "KAFSCALE_ETCD_TIMEOUT_MS", "5" },
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                clear_env();
                setenv(bad[i].var, bad[i].value, 1);
                ks_config_t cfg;
                char err[512] = "";
                CHECK_EQ_INT(ks_config_from_env(&cfg, err, sizeof(err)), -1);
                CHECK(strstr(err, bad[i].var) != NULL);
        }
        clear_env();
}

/* Cluster mode: etcd with S3; the combinations that cannot work are errors. */
TEST(config_cluster_mode)
{
        ks_config_t cfg;
        char err[512] = "";
        clear_env();
        setenv("KAFSCALE_ETCD_ENDPOINTS", "http://127.0.0.1:2379", 1);
        setenv("KAFSCALE_S3_BUCKET", "records", 1);
        setenv("KAFSCALE_S3_ACCESS_KEY", "key", 1);
        setenv("KAFSCALE_S3_SECRET_KEY", "secret", 1);
        int rc = ks_config_from_env(&cfg, err, sizeof(err));
        if (rc != 0)
                ks_test_fail(__FILE__, __LINE__, "cluster config rejected: %s", err);
        REQUIRE_EQ_INT(rc, 0);
        CHECK_EQ_STR(cfg.etcd_endpoints, "http://127.0.0.1:2379");
        CHECK_EQ_INT(cfg.etcd_timeout_ms, 5000);

        setenv("KAFSCALE_DATA_DIR", "", 1); /* unused in cluster mode */
        CHECK_EQ_INT(ks_config_from_env(&cfg, err, sizeof(err)), 0);

        setenv("KAFSCALE_ETCD_USERNAME", "root", 1); /* without a password */
        CHECK_EQ_INT(ks_config_from_env(&cfg, err, sizeof(err)), -1);
        CHECK(strstr(err, "KAFSCALE_ETCD_PASSWORD") != NULL);
        setenv("KAFSCALE_ETCD_PASSWORD", "pw", 1);
        CHECK_EQ_INT(ks_config_from_env(&cfg, err, sizeof(err)), 0);

        setenv("KAFSCALE_USE_MEMORY_METADATA", "1", 1);
        CHECK_EQ_INT(ks_config_from_env(&cfg, err, sizeof(err)), -1);
        CHECK(strstr(err, "KAFSCALE_USE_MEMORY_METADATA") != NULL);
        unsetenv("KAFSCALE_USE_MEMORY_METADATA");

        setenv("KAFSCALE_ETCD_ENDPOINTS", "http://127.0.0.1:2379,ftp://x", 1); /* caught before start-up */
        CHECK_EQ_INT(ks_config_from_env(&cfg, err, sizeof(err)), -1);
        CHECK(strstr(err, "KAFSCALE_ETCD_ENDPOINTS") != NULL && strstr(err, "ftp://x") != NULL);
        setenv("KAFSCALE_ETCD_ENDPOINTS", "http://127.0.0.1:2379,,", 1);
        CHECK_EQ_INT(ks_config_from_env(&cfg, err, sizeof(err)), -1);
        setenv("KAFSCALE_ETCD_ENDPOINTS", "127.0.0.1:2379, 10.0.0.2", 1);
        CHECK_EQ_INT(ks_config_from_env(&cfg, err, sizeof(err)), 0);

        unsetenv("KAFSCALE_S3_BUCKET"); /* records would stay on one machine */
        CHECK_EQ_INT(ks_config_from_env(&cfg, err, sizeof(err)), -1);
        CHECK(strstr(err, "KAFSCALE_S3_BUCKET") != NULL);
        clear_env();
}

TEST(topic_config_whitelist)
{
        ks_topic_t t;
        memset(&t, 0, sizeof(t));
        ks_topic_config_defaults(&t);
        CHECK_EQ_INT(t.retention_ms, 604800000);
        CHECK_EQ_INT(t.retention_bytes, -1);
        char msg[256];
        CHECK_EQ_INT(ks_topic_config_set(&t, KS_STR("retention.ms"), KS_STR("120000"), msg, sizeof(msg)), 0);
        CHECK_EQ_INT(t.retention_ms, 120000);
        CHECK_EQ_INT(t.explicit_configs, KS_TOPIC_CFG_RETENTION_MS);
        CHECK_EQ_INT(ks_topic_config_set(&t, KS_STR("retention.ms"), KS_STR("-1"), msg, sizeof(msg)), 0);
        CHECK_EQ_INT(ks_topic_config_set(&t, KS_STR("retention.bytes"), KS_STR("0"), msg, sizeof(msg)), 0);
        CHECK_EQ_INT(ks_topic_config_set(&t, KS_STR("segment.bytes"), KS_STR("1048576"), msg, sizeof(msg)), 0);
        CHECK_EQ_INT(t.segment_bytes, 1048576);

        CHECK_EQ_INT(ks_topic_config_set(&t, KS_STR("retention.ms"), KS_STR("-2"), msg, sizeof(msg)),
                     KS_ERR_INVALID_CONFIG);
        CHECK_EQ_INT(ks_topic_config_set(&t, KS_STR("retention.bytes"), KS_STR("1e3"), msg, sizeof(msg)),
                     KS_ERR_INVALID_CONFIG);
        /* segment.bytes is an int in Kafka. */
        CHECK_EQ_INT(ks_topic_config_set(&t, KS_STR("segment.bytes"), KS_STR("2147483648"), msg, sizeof(msg)),
                     KS_ERR_INVALID_CONFIG);
        CHECK(strstr(msg, "2147483647") != NULL);
        CHECK_EQ_INT(ks_topic_config_set(&t, KS_STR("segment.bytes"), KS_STR("2147483647"), msg, sizeof(msg)), 0);
        CHECK_EQ_INT(t.segment_bytes, 2147483647);
        CHECK_EQ_INT(ks_topic_config_set(&t, KS_STR("segment.bytes"), KS_STR("1048576"), msg, sizeof(msg)), 0);
        CHECK_EQ_INT(ks_topic_config_set(&t, KS_STR("segment.bytes"), KS_STR("0"), msg, sizeof(msg)),
                     KS_ERR_INVALID_CONFIG);
        CHECK_EQ_INT(ks_topic_config_set(&t, KS_STR("segment.bytes"), KS_STR("-1"), msg, sizeof(msg)),
                     KS_ERR_INVALID_CONFIG);
        CHECK_EQ_INT(ks_topic_config_set(&t, KS_STR("retention.ms"), KS_STR_NULL, msg, sizeof(msg)),
                     KS_ERR_INVALID_CONFIG);
        CHECK_EQ_INT(ks_topic_config_set(&t, KS_STR("cleanup.policy"), KS_STR("compact"), msg, sizeof(msg)),
                     KS_ERR_INVALID_CONFIG);
        CHECK(strstr(msg, "cleanup.policy") != NULL);
        CHECK_EQ_INT(t.segment_bytes, 1048576); /* failed sets change nothing */
}
