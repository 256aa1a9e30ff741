#include "util/clock.h"

#include <stdio.h>
#include <time.h>

static int64_t sys_mono_ms(const ks_clock_t *c)
{
        (void)c;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t sys_wall_ms(const ks_clock_t *c)
{
        (void)c;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const ks_clock_t system_clock = { sys_mono_ms, sys_wall_ms };

const ks_clock_t *ks_clock_system(void)
{
        return &system_clock;
}

static int64_t fake_mono_ms(const ks_clock_t *c)
{
        const ks_clock_fake_t *f = (const ks_clock_fake_t *)c;
        return __atomic_load_n(&f->mono, __ATOMIC_SEQ_CST);
}

static int64_t fake_wall_ms(const ks_clock_t *c)
{
        const ks_clock_fake_t *f = (const ks_clock_fake_t *)c;
        return __atomic_load_n(&f->wall, __ATOMIC_SEQ_CST);
}

void ks_clock_fake_init(ks_clock_fake_t *f, int64_t wall_ms)
{
        f->base.mono_ms = fake_mono_ms;
        f->base.wall_ms = fake_wall_ms;
        f->mono = 1000000;
        f->wall = wall_ms;
}

void ks_clock_fake_advance(ks_clock_fake_t *f, int64_t ms)
{
        __atomic_add_fetch(&f->mono, ms, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&f->wall, ms, __ATOMIC_SEQ_CST);
}

char *ks_time_rfc3339(int64_t wall_ms, char *buf, int size)
{
        time_t secs = (time_t)(wall_ms / 1000);
        struct tm tm;
        gmtime_r(&secs, &tm);
        snprintf(buf, (size_t)size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(wall_ms % 1000));
        return buf;
}

void ks_deadline_after_ms(struct timespec *ts, int64_t ms)
{
        clock_gettime(CLOCK_MONOTONIC, ts);
        ts->tv_sec += ms / 1000;
        ts->tv_nsec += (long)(ms % 1000) * 1000000L;
        if (ts->tv_nsec >= 1000000000L) {
                ts->tv_sec++;
                ts->tv_nsec -= 1000000000L;
        }
}

int ks_cond_init_monotonic(pthread_cond_t *cv)
{
        pthread_condattr_t a;
        int r = pthread_condattr_init(&a);
        if (r)
                return r;
        r = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
        if (!r)
                r = pthread_cond_init(cv, &a);
        pthread_condattr_destroy(&a);
        return r;
}
