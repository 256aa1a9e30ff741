/*
 * loop.h — a small epoll event loop: one per I/O thread.
 *
 * A loop owns: the file descriptors registered on it (their callbacks run on
 * the loop's thread), a timer heap, and an inbox of functions posted from
 * other threads (woken through an eventfd).  Everything registered on a loop
 * is touched only by that loop's thread, except ks_loop_post(),
 * ks_loop_stop() and ks_loop_on_thread(), which any thread may call.
 */
#ifndef KS_NET_LOOP_H
#define KS_NET_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ks_loop ks_loop_t;

/* I/O readiness callback; `events` are EPOLL* bits. */
typedef void(ks_io_cb)(ks_loop_t *loop, void *opaque, uint32_t events);

/* A registered file descriptor.  Embedded in its owner (e.g. a connection);
 * must stay at the same address while registered. */
typedef struct ks_io {
        int fd;
        uint32_t events;
        ks_io_cb *cb;
        void *opaque;
} ks_io_t;

/* A timer.  Embedded in its owner; armed at most once at a time. */
typedef struct ks_timer {
        int64_t deadline_ms; /* monotonic */
        int heap_index;      /* -1 when not armed */
        void (*cb)(ks_loop_t *loop, struct ks_timer *t);
        void *opaque;
} ks_timer_t;

typedef void(ks_loop_fn)(ks_loop_t *loop, void *arg);

/* Creates a loop; `index` names it in logs.  NULL on failure (logged). */
ks_loop_t *ks_loop_new(int index);
void ks_loop_destroy(ks_loop_t *loop);

int ks_loop_index(const ks_loop_t *loop);

/* Runs until ks_loop_stop(); then returns.  Call on the loop's own thread. */
void ks_loop_run(ks_loop_t *loop);

/* Asks the loop to return from ks_loop_run() soon.  Any thread. */
void ks_loop_stop(ks_loop_t *loop);

/* True when called from the thread currently running `loop`. */
bool ks_loop_on_thread(const ks_loop_t *loop);

/* The loop running on this thread, or NULL. */
ks_loop_t *ks_loop_current(void);

/* Registers/updates/removes a file descriptor (loop thread only). */
int ks_loop_io_add(ks_loop_t *loop, ks_io_t *io, int fd, uint32_t events, ks_io_cb *cb, void *opaque);
int ks_loop_io_mod(ks_loop_t *loop, ks_io_t *io, uint32_t events);
void ks_loop_io_del(ks_loop_t *loop, ks_io_t *io);

/* Timers (loop thread only).  Arming an armed timer re-arms it. */
void ks_timer_init(ks_timer_t *t, void (*cb)(ks_loop_t *, ks_timer_t *), void *opaque);
void ks_timer_arm(ks_loop_t *loop, ks_timer_t *t, int64_t deadline_ms);
void ks_timer_cancel(ks_loop_t *loop, ks_timer_t *t);
static inline bool ks_timer_armed(const ks_timer_t *t) { return t->heap_index >= 0; }

/* Runs fn(loop, arg) on the loop's thread, in post order.  Any thread.
 * Returns 0, or -1 if memory ran out (logged). */
int ks_loop_post(ks_loop_t *loop, ks_loop_fn *fn, void *arg);

/* Runs fn(loop, arg) on this loop after the current batch of I/O callbacks,
 * when no callback of this batch can still touch what fn frees (loop thread
 * only).  Used to free connections safely. */
int ks_loop_defer(ks_loop_t *loop, ks_loop_fn *fn, void *arg);

/* Monotonic milliseconds (cached once per loop iteration when on a loop). */
int64_t ks_loop_now_ms(void);

#endif
