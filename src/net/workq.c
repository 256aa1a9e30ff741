/*
 * workq.c — `lock` protects the job list and `stopping`; workers wait on
 * `cond`.  Jobs run without the lock held.
 */
#include "net/workq.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>

#include "util/log.h"

typedef struct job {
        struct job *next;
        ks_work_fn *fn;
        void *arg;
} job_t;

struct ks_workq {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        job_t *head, *tail;
        bool stopping;
        int nthreads;
        pthread_t *threads;
        char name[16];
};

static void *worker_main(void *arg)
{
        ks_workq_t *wq = arg;
        pthread_mutex_lock(&wq->lock);
        for (;;) {
                while (!wq->head && !wq->stopping)
                        pthread_cond_wait(&wq->cond, &wq->lock);
                job_t *j = wq->head;
                if (!j)
                        break; /* stopping and drained */
                wq->head = j->next;
                if (!wq->head)
                        wq->tail = NULL;
                pthread_mutex_unlock(&wq->lock);
                j->fn(j->arg);
                free(j);
                pthread_mutex_lock(&wq->lock);
        }
        pthread_mutex_unlock(&wq->lock);
        return NULL;
}

ks_workq_t *ks_workq_new(const char *name, int nthreads)
{
        ks_workq_t *wq = calloc(1, sizeof(*wq));
        if (!wq)
                return NULL;
        wq->threads = calloc((size_t)nthreads, sizeof(pthread_t));
        if (!wq->threads) {
                free(wq);
                return NULL;
        }
        pthread_mutex_init(&wq->lock, NULL);
        pthread_cond_init(&wq->cond, NULL);
        snprintf(wq->name, sizeof(wq->name), "%s", name);
        for (int i = 0; i < nthreads; i++) {
                if (pthread_create(&wq->threads[i], NULL, worker_main, wq) != 0) {
                        ks_log_error("thread_create_failed", "pool=%s", name);
                        wq->nthreads = i;
                        ks_workq_destroy(wq);
                        return NULL;
                }
                char tn[16];
                snprintf(tn, sizeof(tn), "%.8s-%u", name, (unsigned)(uint8_t)i);
                pthread_setname_np(wq->threads[i], tn);
                wq->nthreads = i + 1;
        }
        return wq;
}

int ks_workq_submit(ks_workq_t *wq, ks_work_fn *fn, void *arg)
{
        job_t *j = malloc(sizeof(*j));
        if (!j)
                return -1;
        j->next = NULL;
        j->fn = fn;
        j->arg = arg;
        pthread_mutex_lock(&wq->lock);
        if (wq->stopping) {
                pthread_mutex_unlock(&wq->lock);
                free(j);
                return -1;
        }
        if (wq->tail)
                wq->tail->next = j;
        else
                wq->head = j;
        wq->tail = j;
        pthread_cond_signal(&wq->cond);
        pthread_mutex_unlock(&wq->lock);
        return 0;
}

void ks_workq_destroy(ks_workq_t *wq)
{
        if (!wq)
                return;
        pthread_mutex_lock(&wq->lock);
        wq->stopping = true;
        pthread_cond_broadcast(&wq->cond);
        pthread_mutex_unlock(&wq->lock);
        for (int i = 0; i < wq->nthreads; i++)
                pthread_join(wq->threads[i], NULL);
        pthread_cond_destroy(&wq->cond);
        pthread_mutex_destroy(&wq->lock);
        free(wq->threads);
        free(wq);
}
