/*
 * fuzz_config.c — libFuzzer target for the configuration parsers: the
 * broker's KAFSCALE_* variables (src/config/config.c, through
 * ks_config_from), the S3 settings (src/config/s3_config.c, through
 * ks_s3_config_from, with ample and with too little storage) and topic
 * config values (src/broker/topic_config.c, ks_topic_config_set) — what an
 * operator's environment or a client's CreateTopics/AlterConfigs could hold.
 *
 * Input: lines "NAME=VALUE" (split at the first '='; a later line for the
 * same name wins), handed to the parsers as the environment — nothing is
 * read from the process environment — and each pair also as a topic config.
 * Invariants checked (abort on violation):
 *   - nothing crashes, leaks or reads outside its input (ASan/UBSan, LSan);
 *   - a refused configuration always says why (a non-empty message), and a
 *     refused S3 configuration leaves the config zeroed;
 *   - an accepted configuration is usable: ports in range, a listen port,
 *     strings terminated, at least one I/O thread, session timeouts in
 *     order; accepted S3 settings have their strings inside the caller's
 *     storage and their numbers within the documented bounds;
 *   - a topic config value accepted is within its key's bounds.
 *
 * Build: make fuzz   (clang -g -O1 -fsanitize=fuzzer,address,undefined ...)
 * Seeds: tests/fuzz/corpus/fuzz_config/ (embedded, cluster and S3 set-ups,
 * topic configs, and values at and past their bounds).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/topic_config.h"
#include "config/config.h"
#include "fuzz.h"

#define MAX_INPUT 65536
#define MAX_PAIRS 256

typedef struct pairs {
        char *name[MAX_PAIRS], *value[MAX_PAIRS];
        size_t name_len[MAX_PAIRS], value_len[MAX_PAIRS];
        int n;
} pairs_t;

static const char *lookup(void *opaque, const char *name)
{
        const pairs_t *p = opaque;
        for (int i = p->n - 1; i >= 0; i--)
                if (!strcmp(p->name[i], name))
                        return p->value[i];
        return NULL;
}

/* Splits the input into NUL-terminated names and values (each its own
 * exact-size heap block, so ASan sees any read past one). */
static void pairs_parse(pairs_t *p, const uint8_t *data, size_t size)
{
        p->n = 0;
        size_t pos = 0;
        while (pos < size && p->n < MAX_PAIRS) {
                const uint8_t *nl = memchr(data + pos, '\n', size - pos);
                size_t end = nl ? (size_t)(nl - data) : size;
                const uint8_t *eq = memchr(data + pos, '=', end - pos);
                if (eq) {
                        size_t nlen = (size_t)(eq - data) - pos, vlen = end - (size_t)(eq - data) - 1;
                        char *name = malloc(nlen + 1), *value = malloc(vlen + 1);
                        if (!name || !value) {
                                free(name);
                                free(value);
                                break;
                        }
                        memcpy(name, data + pos, nlen);
                        name[nlen] = '\0';
                        memcpy(value, eq + 1, vlen);
                        value[vlen] = '\0';
                        p->name[p->n] = name;
                        p->value[p->n] = value;
                        p->name_len[p->n] = nlen;
                        p->value_len[p->n] = vlen;
                        p->n++;
                }
                pos = end + 1;
        }
}

static void pairs_free(pairs_t *p)
{
        for (int i = 0; i < p->n; i++) {
                free(p->name[i]);
                free(p->value[i]);
        }
}

static void check_terminated(const char *s, size_t cap)
{
        FUZZ_ASSERT(memchr(s, '\0', cap) != NULL);
}

static void check_config(pairs_t *p)
{
        static ks_config_t cfg;
        char err[512];
        err[0] = '\0';
        if (ks_config_from(&cfg, lookup, p, err, sizeof(err)) != 0) {
                FUZZ_ASSERT(err[0] != '\0');
                check_terminated(err, sizeof(err));
                return;
        }
        FUZZ_ASSERT(cfg.listen_port > 0 && cfg.listen_port <= 65535);
        FUZZ_ASSERT(cfg.advertised_port > 0 && cfg.advertised_port <= 65535);
        FUZZ_ASSERT(cfg.metrics_port >= 0 && cfg.metrics_port <= 65535);
        FUZZ_ASSERT(cfg.broker_id >= 0);
        FUZZ_ASSERT(cfg.io_threads >= 1);
        FUZZ_ASSERT(cfg.storage_threads >= 1);
        FUZZ_ASSERT(cfg.group_min_session_timeout_ms <= cfg.group_max_session_timeout_ms);
        FUZZ_ASSERT(cfg.flush_interval_ms >= -1);
        FUZZ_ASSERT(cfg.segment_bytes >= 65536);
        check_terminated(cfg.listen_host, sizeof(cfg.listen_host));
        check_terminated(cfg.advertised_host, sizeof(cfg.advertised_host));
        check_terminated(cfg.data_dir, sizeof(cfg.data_dir));
        check_terminated(cfg.etcd_endpoints, sizeof(cfg.etcd_endpoints));
        check_terminated(cfg.s3_namespace, sizeof(cfg.s3_namespace));
        FUZZ_ASSERT(cfg.advertised_host[0] != '\0');
        FUZZ_ASSERT(cfg.s3_namespace[0] != '\0' && !strchr(cfg.s3_namespace, '/'));
        FUZZ_ASSERT(!(cfg.memory_s3 && cfg.s3.bucket));
        FUZZ_ASSERT(!cfg.etcd_endpoints[0] || cfg.s3.bucket || cfg.memory_s3);
}

static int inside(const char *s, const char *storage, size_t len)
{
        return !s || (s >= storage && s + strlen(s) < storage + len);
}

static void check_s3(pairs_t *p, size_t storage_len)
{
        static char storage[KS_S3_CONFIG_STORAGE];
        ks_s3_config_t c;
        char err[512];
        if (ks_s3_config_from(&c, lookup, p, storage, storage_len, err, sizeof(err)) != 0) {
                FUZZ_ASSERT(err[0] != '\0');
                check_terminated(err, sizeof(err));
                FUZZ_ASSERT(c.bucket == NULL && c.access_key == NULL && c.endpoint == NULL);
                return;
        }
        if (!c.bucket)
                return;
        FUZZ_ASSERT(c.region && c.access_key && c.secret_key);
        FUZZ_ASSERT(inside(c.bucket, storage, storage_len) && inside(c.region, storage, storage_len) &&
                    inside(c.endpoint, storage, storage_len) && inside(c.access_key, storage, storage_len) &&
                    inside(c.secret_key, storage, storage_len) && inside(c.session_token, storage, storage_len));
        FUZZ_ASSERT(strlen(c.bucket) >= 3);
        FUZZ_ASSERT(c.concurrency >= 1 && c.concurrency <= 1024);
        FUZZ_ASSERT(c.timeout_ms >= 100 && c.timeout_ms <= 3600000);
        FUZZ_ASSERT(c.max_retries >= 0 && c.max_retries <= 100);
        char line[1024];
        ks_s3_config_describe(&c, line, sizeof(line));
        check_terminated(line, sizeof(line));
}

static void check_topic_configs(pairs_t *p)
{
        ks_topic_t t;
        memset(&t, 0, sizeof(t));
        ks_topic_config_defaults(&t);
        for (int i = 0; i < p->n; i++) {
                char msg[256];
                msg[0] = '\0';
                ks_str_t name = { p->name[i], (int32_t)p->name_len[i] };
                ks_str_t value = { p->value[i], (int32_t)p->value_len[i] };
                if (ks_topic_config_set(&t, name, value, msg, sizeof(msg)) != 0) {
                        FUZZ_ASSERT(msg[0] != '\0');
                        continue;
                }
                for (int k = 0; k < KS_TOPIC_CONFIG_COUNT; k++) {
                        const ks_topic_config_key_t *key = &ks_topic_config_keys[k];
                        int64_t v = ks_topic_config_value(&t, k);
                        FUZZ_ASSERT((v >= key->min && v <= key->max) || (key->allow_unlimited && v == -1));
                }
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size > MAX_INPUT)
                return 0;
        static pairs_t p;
        pairs_parse(&p, data, size);
        check_config(&p);
        check_s3(&p, KS_S3_CONFIG_STORAGE);
        check_s3(&p, 1 + size % 64); /* too little storage for most settings */
        check_topic_configs(&p);
        pairs_free(&p);
        return 0;
}
