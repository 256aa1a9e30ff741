/*
 * log.h — structured logging: one logfmt line per event on stderr.
 *
 *   ts=2026-11-24T08:00:00.123Z level=info event=listening addr=0.0.0.0:9092
 *
 * `event` is a short stable identifier an operator can grep for; the rest
 * are key=value pairs formatted by the caller (quote values that may hold
 * spaces with "%s" inside \"...\").  Levels: debug < info < warn < error
 * (KAFSCALE_LOG_LEVEL).  Info is for significant events only — never one line
 * per request; request tracing is debug.
 *
 * Thread-safe: each line is written with a single write(2).
 */
#ifndef KS_UTIL_LOG_H
#define KS_UTIL_LOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { KS_LOG_DEBUG = 0, KS_LOG_INFO = 1, KS_LOG_WARN = 2, KS_LOG_ERROR = 3 } ks_log_level_t;

extern ks_log_level_t ks_log_level;

/* "debug", "info", "warn"/"warning", "error" -> 0 on success, -1 otherwise. */
int ks_log_parse_level(const char *s, ks_log_level_t *out);

/* Copies n bytes of untrusted text (a server's error message, a header)
 * into dst for a log line or an operator message: control characters
 * become spaces, double quotes single quotes; truncated to fit, always
 * NUL-terminated (dstlen > 0). */
void ks_log_clean(char *dst, size_t dstlen, const char *src, size_t n);
void ks_log_set_level(ks_log_level_t level);

static inline bool ks_log_enabled(ks_log_level_t level) { return level >= ks_log_level; }

void ks_log_write(ks_log_level_t level, const char *event, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

#define ks_log_at(level, event, ...)                                  \
        do {                                                          \
                if (ks_log_enabled(level))                            \
                        ks_log_write(level, event, __VA_ARGS__);      \
        } while (0)

#define ks_log_debug(event, ...) ks_log_at(KS_LOG_DEBUG, event, __VA_ARGS__)
#define ks_log_info(event, ...)  ks_log_at(KS_LOG_INFO, event, __VA_ARGS__)
#define ks_log_warn(event, ...)  ks_log_at(KS_LOG_WARN, event, __VA_ARGS__)
#define ks_log_error(event, ...) ks_log_at(KS_LOG_ERROR, event, __VA_ARGS__)

#endif
