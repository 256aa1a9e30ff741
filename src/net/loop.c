/*
 * loop.c — epoll loop, timer heap and cross-thread inbox.
 *
 * Thread ownership: all fields except `inbox*` and `stopping` belong to the
 * thread running ks_loop_run().  `inbox_lock` protects the inbox list.
 */
#include "net/loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/log.h"

typedef struct post_item {
        struct post_item *next;
        ks_loop_fn *fn;
        void *arg;
} post_item_t;

struct ks_loop {
        int index;
        int epfd;
        ks_io_t wake_io;
        int wakefd;

        ks_timer_t **heap;
        int heap_len, heap_cap;

        post_item_t *defer_head; /* loop thread only: run after each I/O batch */

        pthread_mutex_t inbox_lock;
        post_item_t *inbox_head, *inbox_tail;

        volatile int stopping;
        pthread_t thread;
        bool running;
};

static __thread ks_loop_t *current_loop;
static __thread int64_t cached_now_ms;

int64_t ks_loop_now_ms(void)
{
        if (current_loop)
                return cached_now_ms;
        return ks_clock_mono_ms(ks_clock_system());
}

static void refresh_now(void)
{
        cached_now_ms = ks_clock_mono_ms(ks_clock_system());
}

static void wake_cb(ks_loop_t *loop, void *opaque, uint32_t events);

ks_loop_t *ks_loop_new(int index)
{
        ks_loop_t *loop = calloc(1, sizeof(*loop));
        if (!loop)
                return NULL;
        loop->index = index;
        loop->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (loop->epfd < 0) {
                ks_log_error("epoll_create1_failed", "errno=%d err=\"%s\"", errno, strerror(errno));
                free(loop);
                return NULL;
        }
        loop->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (loop->wakefd < 0) {
                ks_log_error("eventfd_failed", "errno=%d err=\"%s\"", errno, strerror(errno));
                close(loop->epfd);
                free(loop);
                return NULL;
        }
        pthread_mutex_init(&loop->inbox_lock, NULL);
        if (ks_loop_io_add(loop, &loop->wake_io, loop->wakefd, EPOLLIN, wake_cb, NULL) != 0) {
                close(loop->wakefd);
                close(loop->epfd);
                free(loop);
                return NULL;
        }
        return loop;
}

void ks_loop_destroy(ks_loop_t *loop)
{
        if (!loop)
                return;
        post_item_t *it = loop->inbox_head;
        while (it) {
                post_item_t *next = it->next;
                free(it);
                it = next;
        }
        close(loop->wakefd);
        close(loop->epfd);
        free(loop->heap);
        pthread_mutex_destroy(&loop->inbox_lock);
        free(loop);
}

int ks_loop_index(const ks_loop_t *loop)
{
        return loop->index;
}

bool ks_loop_on_thread(const ks_loop_t *loop)
{
        return current_loop == loop;
}

ks_loop_t *ks_loop_current(void)
{
        return current_loop;
}

int ks_loop_io_add(ks_loop_t *loop, ks_io_t *io, int fd, uint32_t events, ks_io_cb *cb, void *opaque)
{
        io->fd = fd;
        io->events = events;
        io->cb = cb;
        io->opaque = opaque;
        struct epoll_event ev = { .events = events, .data.ptr = io };
        if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
                ks_log_error("epoll_ctl_add_failed", "fd=%d errno=%d err=\"%s\"", fd, errno, strerror(errno));
                return -1;
        }
        return 0;
}

int ks_loop_io_mod(ks_loop_t *loop, ks_io_t *io, uint32_t events)
{
        if (io->events == events)
                return 0;
        struct epoll_event ev = { .events = events, .data.ptr = io };
        if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, io->fd, &ev) != 0) {
                ks_log_error("epoll_ctl_mod_failed", "fd=%d errno=%d err=\"%s\"", io->fd, errno, strerror(errno));
                return -1;
        }
        io->events = events;
        return 0;
}

void ks_loop_io_del(ks_loop_t *loop, ks_io_t *io)
{
        if (io->fd >= 0)
                epoll_ctl(loop->epfd, EPOLL_CTL_DEL, io->fd, NULL);
        io->cb = NULL;
}

/* --- timers: binary min-heap on deadline ---------------------------------- */

void ks_timer_init(ks_timer_t *t, void (*cb)(ks_loop_t *, ks_timer_t *), void *opaque)
{
        t->deadline_ms = 0;
        t->heap_index = -1;
        t->cb = cb;
        t->opaque = opaque;
}

static void heap_swap(ks_loop_t *loop, int a, int b)
{
        ks_timer_t *ta = loop->heap[a], *tb = loop->heap[b];
        loop->heap[a] = tb;
        loop->heap[b] = ta;
        tb->heap_index = a;
        ta->heap_index = b;
}

static void heap_up(ks_loop_t *loop, int i)
{
        while (i > 0) {
                int p = (i - 1) / 2;
                if (loop->heap[p]->deadline_ms <= loop->heap[i]->deadline_ms)
                        break;
                heap_swap(loop, p, i);
                i = p;
        }
}

static void heap_down(ks_loop_t *loop, int i)
{
        for (;;) {
                int l = 2 * i + 1, r = l + 1, m = i;
                if (l < loop->heap_len && loop->heap[l]->deadline_ms < loop->heap[m]->deadline_ms)
                        m = l;
                if (r < loop->heap_len && loop->heap[r]->deadline_ms < loop->heap[m]->deadline_ms)
                        m = r;
                if (m == i)
                        return;
                heap_swap(loop, i, m);
                i = m;
        }
}

void ks_timer_cancel(ks_loop_t *loop, ks_timer_t *t)
{
        int i = t->heap_index;
        if (i < 0)
                return;
        int last = loop->heap_len - 1;
        if (i != last) {
                heap_swap(loop, i, last);
        }
        loop->heap_len--;
        t->heap_index = -1;
        if (i != last) {
                heap_up(loop, i);
                heap_down(loop, i);
        }
}

void ks_timer_arm(ks_loop_t *loop, ks_timer_t *t, int64_t deadline_ms)
{
        ks_timer_cancel(loop, t);
        if (loop->heap_len == loop->heap_cap) {
                int cap = loop->heap_cap ? loop->heap_cap * 2 : 64;
                ks_timer_t **h = realloc(loop->heap, (size_t)cap * sizeof(*h));
                if (!h) {
                        /* Out of memory: fire on the next iteration instead of never. */
                        ks_log_error("timer_heap_oom", "cap=%d", cap);
                        abort();
                }
                loop->heap = h;
                loop->heap_cap = cap;
        }
        t->deadline_ms = deadline_ms;
        t->heap_index = loop->heap_len;
        loop->heap[loop->heap_len++] = t;
        heap_up(loop, t->heap_index);
}

static void run_timers(ks_loop_t *loop)
{
        while (loop->heap_len > 0 && loop->heap[0]->deadline_ms <= cached_now_ms) {
                ks_timer_t *t = loop->heap[0];
                ks_timer_cancel(loop, t);
                t->cb(loop, t);
        }
}

/* --- cross-thread inbox ---------------------------------------------------- */

int ks_loop_post(ks_loop_t *loop, ks_loop_fn *fn, void *arg)
{
        post_item_t *it = malloc(sizeof(*it));
        if (!it) {
                ks_log_error("loop_post_oom", "loop=%d", loop->index);
                return -1;
        }
        it->next = NULL;
        it->fn = fn;
        it->arg = arg;
        pthread_mutex_lock(&loop->inbox_lock);
        bool was_empty = loop->inbox_head == NULL;
        if (loop->inbox_tail)
                loop->inbox_tail->next = it;
        else
                loop->inbox_head = it;
        loop->inbox_tail = it;
        pthread_mutex_unlock(&loop->inbox_lock);
        if (was_empty) {
                uint64_t one = 1;
                ssize_t w = write(loop->wakefd, &one, sizeof(one));
                (void)w; /* EAGAIN means already signalled */
        }
        return 0;
}

static void drain_inbox(ks_loop_t *loop)
{
        pthread_mutex_lock(&loop->inbox_lock);
        post_item_t *it = loop->inbox_head;
        loop->inbox_head = loop->inbox_tail = NULL;
        pthread_mutex_unlock(&loop->inbox_lock);
        while (it) {
                post_item_t *next = it->next;
                it->fn(loop, it->arg);
                free(it);
                it = next;
        }
}

int ks_loop_defer(ks_loop_t *loop, ks_loop_fn *fn, void *arg)
{
        post_item_t *it = malloc(sizeof(*it));
        if (!it) {
                ks_log_error("loop_defer_oom", "loop=%d", loop->index);
                return -1;
        }
        it->fn = fn;
        it->arg = arg;
        it->next = loop->defer_head;
        loop->defer_head = it;
        return 0;
}

static void run_deferred(ks_loop_t *loop)
{
        while (loop->defer_head) {
                post_item_t *it = loop->defer_head;
                loop->defer_head = NULL;
                while (it) {
                        post_item_t *next = it->next;
                        it->fn(loop, it->arg);
                        free(it);
                        it = next;
                }
        }
}

static void wake_cb(ks_loop_t *loop, void *opaque, uint32_t events)
{
        (void)opaque;
        (void)events;
        uint64_t v;
        while (read(loop->wakefd, &v, sizeof(v)) > 0) {
        }
        drain_inbox(loop);
}

void ks_loop_stop(ks_loop_t *loop)
{
        __atomic_store_n(&loop->stopping, 1, __ATOMIC_SEQ_CST);
        uint64_t one = 1;
        ssize_t w = write(loop->wakefd, &one, sizeof(one));
        (void)w;
}

void ks_loop_run(ks_loop_t *loop)
{
        current_loop = loop;
        struct epoll_event evs[128];
        while (!__atomic_load_n(&loop->stopping, __ATOMIC_SEQ_CST)) {
                refresh_now();
                int timeout = -1;
                if (loop->heap_len > 0) {
                        int64_t d = loop->heap[0]->deadline_ms - cached_now_ms;
                        timeout = d <= 0 ? 0 : (d > 60000 ? 60000 : (int)d);
                }
                int n = epoll_wait(loop->epfd, evs, 128, timeout);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        ks_log_error("epoll_wait_failed", "loop=%d errno=%d err=\"%s\"", loop->index, errno,
                                     strerror(errno));
                        break;
                }
                refresh_now();
                for (int i = 0; i < n; i++) {
                        ks_io_t *io = evs[i].data.ptr;
                        if (io->cb)
                                io->cb(loop, io->opaque, evs[i].events);
                }
                run_deferred(loop);
                run_timers(loop);
                run_deferred(loop);
        }
        /* Run what was posted before the stop so nothing posted is leaked. */
        drain_inbox(loop);
        run_deferred(loop);
        current_loop = NULL;
}
