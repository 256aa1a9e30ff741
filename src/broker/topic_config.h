/*
 * topic_config.h — the topic configuration whitelist of the ops
 * specification: retention.ms, retention.bytes (-1 or >= 0) and
 * segment.bytes (> 0).  Parsing and validation live here only, shared by
 * CreateTopics and the config APIs.
 */
#ifndef KS_BROKER_TOPIC_CONFIG_H
#define KS_BROKER_TOPIC_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "meta/metadata.h"
#include "util/bytes.h"
#include "util/err.h"

/* Kafka's ConfigSource values (DescribeConfigs / CreateTopics v5+). */
enum {
        KS_CONFIG_SOURCE_UNKNOWN = 0,
        KS_CONFIG_SOURCE_DYNAMIC_TOPIC = 1,
        KS_CONFIG_SOURCE_STATIC_BROKER = 4,
        KS_CONFIG_SOURCE_DEFAULT = 5,
};

#define KS_TOPIC_CONFIG_COUNT 3

/* One whitelisted key. */
typedef struct ks_topic_config_key {
        const char *name;
        uint32_t bit;      /* KS_TOPIC_CFG_* */
        int64_t min;       /* smallest valid value other than -1 */
        bool allow_unlimited; /* -1 accepted */
        int64_t def;       /* Apache Kafka's default */
        int64_t max;       /* largest valid value (Kafka's type: segment.bytes is an int) */
} ks_topic_config_key_t;

extern const ks_topic_config_key_t ks_topic_config_keys[KS_TOPIC_CONFIG_COUNT];

/* Sets `name`=`value` on *t (marks it explicit).  On a key outside the
 * whitelist or a bad value returns KS_ERR_INVALID_CONFIG and writes the
 * reason to msg. */
ks_err_t ks_topic_config_set(ks_topic_t *t, ks_str_t name, ks_str_t value, char *msg, size_t msglen);

/* Resets every key to its default (not explicit). */
void ks_topic_config_defaults(ks_topic_t *t);

/* Current value of key i of ks_topic_config_keys. */
int64_t ks_topic_config_value(const ks_topic_t *t, int i);

#endif
