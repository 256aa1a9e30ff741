/*
 * workq.h — a pool of worker threads for blocking work.
 *
 * Event-loop threads must never block on disk or network I/O; anything that
 * does (metadata-store calls, object-store calls without an async API) is
 * submitted here.  A job that needs to answer on a loop posts back with
 * ks_loop_post() or completes its request (ks_req_respond() is thread-safe).
 *
 * Jobs run in FIFO order on any of the pool's threads.  All functions are
 * thread-safe.
 */
#ifndef KS_NET_WORKQ_H
#define KS_NET_WORKQ_H

typedef struct ks_workq ks_workq_t;
typedef void(ks_work_fn)(void *arg);

/* Starts `nthreads` workers named "<name>-N".  NULL on failure (logged). */
ks_workq_t *ks_workq_new(const char *name, int nthreads);

/* Queues fn(arg).  Returns 0, or -1 when the pool is shutting down or memory
 * ran out (the job is then NOT run; the caller still owns arg). */
int ks_workq_submit(ks_workq_t *wq, ks_work_fn *fn, void *arg);

/* Runs every job already queued, then stops and joins the workers, frees. */
void ks_workq_destroy(ks_workq_t *wq);

#endif
