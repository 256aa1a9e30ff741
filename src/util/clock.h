/*
 * clock.h — time behind a small interface so tests can drive it.
 *
 * Production code takes a `const ks_clock_t *` wherever time decides
 * behaviour (lease expiry, session timeouts, flush intervals) and uses
 * ks_clock_system() by default.  Tests pass a ks_clock_fake_t.
 */
#ifndef KS_UTIL_CLOCK_H
#define KS_UTIL_CLOCK_H

#include <stdint.h>

typedef struct ks_clock ks_clock_t;

struct ks_clock {
        /* Monotonic time in milliseconds (arbitrary origin). */
        int64_t (*mono_ms)(const ks_clock_t *c);
        /* Wall-clock time in milliseconds since the Unix epoch. */
        int64_t (*wall_ms)(const ks_clock_t *c);
};

/* The process-wide system clock (CLOCK_MONOTONIC / CLOCK_REALTIME). */
const ks_clock_t *ks_clock_system(void);

static inline int64_t ks_clock_mono_ms(const ks_clock_t *c) { return c->mono_ms(c); }
static inline int64_t ks_clock_wall_ms(const ks_clock_t *c) { return c->wall_ms(c); }

/* A clock that moves only when told to (thread-safe: atomic fields). */
typedef struct ks_clock_fake {
        ks_clock_t base;
        int64_t mono;
        int64_t wall;
} ks_clock_fake_t;

void ks_clock_fake_init(ks_clock_fake_t *f, int64_t wall_ms);
void ks_clock_fake_advance(ks_clock_fake_t *f, int64_t ms);

/* Formats wall-clock ms as RFC 3339 UTC ("2026-01-02T03:04:05.678Z") into
 * buf (>= 32 bytes).  Returns buf. */
char *ks_time_rfc3339(int64_t wall_ms, char *buf, int size);

#include <pthread.h>

/* Initialises a condition variable whose timed waits use CLOCK_MONOTONIC
 * (immune to wall-clock steps).  0 or an errno value. */
int ks_cond_init_monotonic(pthread_cond_t *cv);

struct timespec;
/* *ts = CLOCK_MONOTONIC now + ms: a deadline for pthread_cond_timedwait on
 * a condition variable created with pthread_condattr_setclock(MONOTONIC). */
void ks_deadline_after_ms(struct timespec *ts, int64_t ms);

#endif
