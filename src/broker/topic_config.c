#include "broker/topic_config.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const ks_topic_config_key_t ks_topic_config_keys[KS_TOPIC_CONFIG_COUNT] = {
        { "retention.ms", KS_TOPIC_CFG_RETENTION_MS, 0, true, KS_DEFAULT_RETENTION_MS, INT64_MAX },
        { "retention.bytes", KS_TOPIC_CFG_RETENTION_BYTES, 0, true, KS_DEFAULT_RETENTION_BYTES, INT64_MAX },
        { "segment.bytes", KS_TOPIC_CFG_SEGMENT_BYTES, 1, false, KS_DEFAULT_SEGMENT_BYTES, INT32_MAX },
};

static int64_t *field(ks_topic_t *t, int i)
{
        switch (i) {
        case 0:
                return &t->retention_ms;
        case 1:
                return &t->retention_bytes;
        default:
                return &t->segment_bytes;
        }
}

int64_t ks_topic_config_value(const ks_topic_t *t, int i)
{
        return *field((ks_topic_t *)t, i);
}

void ks_topic_config_defaults(ks_topic_t *t)
{
        for (int i = 0; i < KS_TOPIC_CONFIG_COUNT; i++)
                *field(t, i) = ks_topic_config_keys[i].def;
        t->explicit_configs = 0;
}

ks_err_t ks_topic_config_set(ks_topic_t *t, ks_str_t name, ks_str_t value, char *msg, size_t msglen)
{
        int i;
        for (i = 0; i < KS_TOPIC_CONFIG_COUNT; i++)
                if (ks_str_eq_c(name, ks_topic_config_keys[i].name))
                        break;
        if (i == KS_TOPIC_CONFIG_COUNT) {
                snprintf(msg, msglen,
                         "Config '%.*s' is not supported: only retention.ms, retention.bytes and segment.bytes can "
                         "be set on a topic",
                         name.len > 0 ? (int)name.len : 0, name.ptr ? name.ptr : "");
                return KS_ERR_INVALID_CONFIG;
        }
        const ks_topic_config_key_t *k = &ks_topic_config_keys[i];
        char buf[32];
        if (value.len <= 0 || value.len >= (int32_t)sizeof(buf)) {
                snprintf(msg, msglen, "Invalid value for config %s: a number is required", k->name);
                return KS_ERR_INVALID_CONFIG;
        }
        memcpy(buf, value.ptr, (size_t)value.len);
        buf[value.len] = '\0';
        char *end;
        errno = 0;
        long long v = strtoll(buf, &end, 10);
        bool ok = errno == 0 && end != buf && *end == '\0' &&
                  ((v >= k->min && v <= k->max) || (k->allow_unlimited && v == -1));
        if (!ok) {
                if (k->max < INT64_MAX)
                        snprintf(msg, msglen, "Invalid value %s for config %s: must be a number from %lld to %lld",
                                 buf, k->name, (long long)k->min, (long long)k->max);
                else
                        snprintf(msg, msglen, "Invalid value %s for config %s: must be %s", buf, k->name,
                                 k->allow_unlimited ? "-1 (unlimited) or a number >= 0" : "a number > 0");
                return KS_ERR_INVALID_CONFIG;
        }
        *field(t, i) = v;
        t->explicit_configs |= k->bit;
        return 0;
}
