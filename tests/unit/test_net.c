/*
 * test_net.c — event loop timers and cross-thread posts, worker pool.
 */
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "net/loop.h"
#include "net/workq.h"
#include "test.h"

typedef struct timer_ctx {
        int order[8];
        int n;
        ks_timer_t t[4];
} timer_ctx_t;

static void timer_fired(ks_loop_t *loop, ks_timer_t *t)
{
        timer_ctx_t *c = t->opaque;
        c->order[c->n++] = (int)(t - c->t);
        if (c->n == 3)
                ks_loop_stop(loop);
}

TEST(loop_timers_fire_in_deadline_order)
{
        ks_loop_t *loop = ks_loop_new(0);
        REQUIRE(loop != NULL);
        timer_ctx_t c;
        memset(&c, 0, sizeof(c));
        for (int i = 0; i < 4; i++)
                ks_timer_init(&c.t[i], timer_fired, &c);
        int64_t now = ks_loop_now_ms();
        ks_timer_arm(loop, &c.t[0], now + 30);
        ks_timer_arm(loop, &c.t[1], now + 10);
        ks_timer_arm(loop, &c.t[2], now + 20);
        ks_timer_arm(loop, &c.t[3], now + 15);
        ks_timer_cancel(loop, &c.t[3]); /* cancelled timers never fire */
        CHECK(!ks_timer_armed(&c.t[3]));
        ks_loop_run(loop);
        CHECK_EQ_INT(c.n, 3);
        CHECK_EQ_INT(c.order[0], 1);
        CHECK_EQ_INT(c.order[1], 2);
        CHECK_EQ_INT(c.order[2], 0);
        ks_loop_destroy(loop);
}

typedef struct post_ctx {
        ks_loop_t *loop;
        int seen[1000];
        int n;
        bool on_loop_thread;
} post_ctx_t;

static post_ctx_t pc;

static void posted(ks_loop_t *loop, void *arg)
{
        pc.on_loop_thread = pc.on_loop_thread && ks_loop_on_thread(loop);
        pc.seen[pc.n++] = (int)(intptr_t)arg;
        if (pc.n == 1000)
                ks_loop_stop(loop);
}

static void *poster(void *arg)
{
        (void)arg;
        for (int i = 0; i < 1000; i++)
                ks_loop_post(pc.loop, posted, (void *)(intptr_t)i);
        return NULL;
}

TEST(loop_post_from_other_thread_in_order)
{
        memset(&pc, 0, sizeof(pc));
        pc.on_loop_thread = true;
        pc.loop = ks_loop_new(0);
        REQUIRE(pc.loop != NULL);
        pthread_t th;
        pthread_create(&th, NULL, poster, NULL);
        ks_loop_run(pc.loop);
        pthread_join(th, NULL);
        CHECK_EQ_INT(pc.n, 1000);
        CHECK(pc.on_loop_thread);
        bool ordered = true;
        for (int i = 0; i < pc.n; i++)
                ordered = ordered && pc.seen[i] == i;
        CHECK(ordered);
        ks_loop_destroy(pc.loop);
}

static int work_done;

static void work(void *arg)
{
        (void)arg;
        usleep(100);
        __atomic_add_fetch(&work_done, 1, __ATOMIC_SEQ_CST);
}

TEST(workq_runs_everything_before_destroy)
{
        work_done = 0;
        ks_workq_t *wq = ks_workq_new("test", 3);
        REQUIRE(wq != NULL);
        for (int i = 0; i < 200; i++)
                CHECK_EQ_INT(ks_workq_submit(wq, work, NULL), 0);
        ks_workq_destroy(wq);
        CHECK_EQ_INT(work_done, 200);
}
