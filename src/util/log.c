#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "util/clock.h"

ks_log_level_t ks_log_level = KS_LOG_INFO;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

int ks_log_parse_level(const char *s, ks_log_level_t *out)
{
        for (int i = 0; i < 4; i++) {
                if (strcasecmp(s, level_names[i]) == 0) {
                        *out = (ks_log_level_t)i;
                        return 0;
                }
        }
        if (strcasecmp(s, "warning") == 0) {
                *out = KS_LOG_WARN;
                return 0;
        }
        return -1;
}

void ks_log_set_level(ks_log_level_t level)
{
        ks_log_level = level;
}

void ks_log_write(ks_log_level_t level, const char *event, const char *fmt, ...)
{
        char line[2048];
        char ts[40];
        ks_time_rfc3339(ks_clock_wall_ms(ks_clock_system()), ts, sizeof(ts));
        int n = snprintf(line, sizeof(line), "ts=%s level=%s event=%s ", ts, level_names[level], event);
        if (n < 0)
                return;
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
        size_t len = (size_t)n + (m > 0 ? (size_t)m : 0);
        if (len > sizeof(line) - 2)
                len = sizeof(line) - 2;
        while (len > 0 && line[len - 1] == ' ')
                len--;
        line[len++] = '\n';
        ssize_t w = write(STDERR_FILENO, line, len);
        (void)w;
}

void ks_log_clean(char *dst, size_t dstlen, const char *src, size_t n)
{
        size_t o = 0;
        if (!dstlen)
                return;
        for (size_t i = 0; i < n && o + 1 < dstlen; i++) {
                unsigned char c = (unsigned char)src[i];
                dst[o++] = (c < 0x20 || c == 0x7f) ? ' ' : (c == '"' ? '\'' : (char)c);
        }
        dst[o] = '\0';
}
