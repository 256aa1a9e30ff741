/*
 * load.c — the benchmark load generator, on librdkafka's C API. The same
 * binary and the same client settings run against every broker.
 *
 *   load MODE -b BOOTSTRAP -t TOPIC [options]
 *
 * Modes
 *   create    create TOPIC with -P partitions (CreateTopics; "already
 *             exists" is fine)
 *   produce   -n records of -s bytes, as fast as the client can; the clock
 *             runs from the first produce() to the last delivery report
 *   consume   read TOPIC from the beginning to the high watermark of every
 *             partition (watermarks queried before the clock starts), with
 *             assign() on all partitions
 *   latency   fixed offered load (-r MB/s of -s byte records for -d seconds
 *             after -w seconds of warm-up); latency of each record from
 *             produce() to its delivery report: p50/p99/p99.9
 *   e2e       like latency, and a consumer in the same process reads the
 *             topic; each payload carries its send time, so the consumer
 *             measures produce() -> consumed latency
 *
 * Options
 *   -b HOST:PORT   bootstrap servers (required)
 *   -t TOPIC       topic (required)
 *   -n N           records (produce; default 1000000)
 *   -s BYTES       record value size (default 100)
 *   -P N           partitions for `create` (default 32)
 *   -r MBPS        offered load for latency/e2e in MB/s, 1 MB = 10^6 bytes
 *                  (default 20)
 *   -d SECONDS     measured duration for latency/e2e (default 10)
 *   -w SECONDS     warm-up for latency/e2e, not measured (default 1)
 *   -p PID         broker process: its CPU time (utime+stime) over the
 *                  measured window, and its peak RSS (VmHWM, reset through
 *                  /proc/PID/clear_refs at the start)
 *   -q PID         object-store process (s3rver): its CPU time too
 *   -c N           latency/e2e: spread the offered load over N producer
 *                  instances (N connections; default 1)
 *   -l LABEL       copied into the output
 *   -X KEY=VALUE   extra librdkafka setting (repeatable; applied last)
 *
 * Output: one JSON object on one line on stdout. Exit status 0 when every
 * record was delivered/consumed, 1 otherwise (the JSON line is still
 * printed, with "ok":false and the reason).
 *
 * Client settings (all modes that produce): acks=all, linger.ms=5,
 * batch.size=1048576, sticky.partitioning.linger.ms=0 (records without a
 * key spread over all partitions), compression none,
 * queue.buffering.max.messages=1000000. Consumers: queued.min.messages=
 * 1000000, enable.auto.commit=false, fetch.wait.max.ms=10 (e2e only: the peer holds an
 * empty fetch for its whole MaxWait even when records arrive meanwhile).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#define MB 1e6
#define GB 1e9

/* ---------- options ---------- */

static struct {
        const char *mode;
        const char *bootstrap;
        const char *topic;
        long count;
        int size;
        int partitions;
        double rate_mbps;
        double duration_s;
        double warmup_s;
        int pid;
        int store_pid;
        int producers;
        const char *label;
        const char *extra[64];
        int n_extra;
} opt = {.count = 1000000,
         .size = 100,
         .partitions = 32,
         .rate_mbps = 20,
         .duration_s = 10,
         .warmup_s = 1,
         .producers = 1};

static void die(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "load: ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n");
        va_end(ap);
        exit(2);
}

static double now_s(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---------- JSON output ---------- */

static char out[8192];
static size_t out_len;

static void jadd(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        if (out_len < sizeof(out)) {
                int n = vsnprintf(out + out_len, sizeof(out) - out_len, fmt, ap);
                if (n > 0)
                        out_len += (size_t)n;
        }
        va_end(ap);
}

static void jstr(const char *k, const char *v)
{
        jadd(",\"%s\":\"", k);
        for (const char *p = v ? v : ""; *p; p++) {
                if (*p == '"' || *p == '\\')
                        jadd("\\%c", *p);
                else if ((unsigned char)*p < 0x20)
                        jadd(" ");
                else
                        jadd("%c", *p);
        }
        jadd("\"");
}

static void jnum(const char *k, double v) { jadd(",\"%s\":%.6g", k, v); }
static void jint(const char *k, long long v) { jadd(",\"%s\":%lld", k, v); }

/* ---------- broker process accounting (/proc) ---------- */

/* CPU time of a whole process: utime + stime. Two readings of the same
 * quantity: the process CPU clock of clock_getcpuclockid() (nanoseconds;
 * the headline number) and /proc/PID/stat fields 14 + 15 (clock ticks,
 * 10 ms here: too coarse for runs under a second, kept as a cross-check). */
typedef struct {
        double cpu_s;      /* process CPU clock, or the /proc value if that fails */
        double cpu_stat_s; /* /proc/PID/stat utime + stime */
        long hwm_kb;       /* VmHWM */
        long rss_kb;       /* VmRSS */
        bool ok;
} proc_sample_t;

static double clk_tck;

static double stat_cpu_s(int pid, bool *ok)
{
        char path[64], buf[4096];
        *ok = false;
        snprintf(path, sizeof(path), "/proc/%d/stat", pid);
        FILE *f = fopen(path, "r");
        if (!f)
                return 0;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        /* Fields after the command name (which may hold spaces): state is
         * field 3; utime and stime are fields 14 and 15. */
        char *p = strrchr(buf, ')');
        if (!p || !p[1])
                return 0;
        p += 2;
        unsigned long long ut = 0, st = 0;
        int field = 3;
        char *save = NULL;
        for (char *tok = strtok_r(p, " ", &save); tok; tok = strtok_r(NULL, " ", &save), field++) {
                if (field == 14) {
                        ut = strtoull(tok, NULL, 10);
                } else if (field == 15) {
                        st = strtoull(tok, NULL, 10);
                        *ok = true;
                        break;
                }
        }
        return (double)(ut + st) / clk_tck;
}

static proc_sample_t proc_sample(int pid)
{
        proc_sample_t s = {0};
        if (pid <= 0)
                return s;
        bool ok;
        s.cpu_stat_s = stat_cpu_s(pid, &ok);
        if (!ok)
                return s;
        clockid_t cid;
        struct timespec ts;
        if (clock_getcpuclockid(pid, &cid) == 0 && clock_gettime(cid, &ts) == 0)
                s.cpu_s = ts.tv_sec + ts.tv_nsec / 1e9;
        else
                s.cpu_s = s.cpu_stat_s;
        char path[64], buf[512];
        snprintf(path, sizeof(path), "/proc/%d/status", pid);
        FILE *f = fopen(path, "r");
        if (!f)
                return s;
        while (fgets(buf, sizeof(buf), f)) {
                if (!strncmp(buf, "VmHWM:", 6))
                        s.hwm_kb = atol(buf + 6);
                else if (!strncmp(buf, "VmRSS:", 6))
                        s.rss_kb = atol(buf + 6);
        }
        fclose(f);
        s.ok = true;
        return s;
}

/* Resets the peak RSS (VmHWM) of the broker to its current RSS, so the
 * peak read at the end belongs to this run. */
static bool proc_reset_hwm(int pid)
{
        if (pid <= 0)
                return false;
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/clear_refs", pid);
        FILE *f = fopen(path, "w");
        if (!f)
                return false;
        bool ok = fputs("5", f) >= 0;
        ok = (fclose(f) == 0) && ok;
        return ok;
}

/* The measured window: broker (-p) and object store (-q) samples at its
 * start and end. */
static proc_sample_t b0, b1, q0, q1;
static bool hwm_reset;
static double t_start, t_end;

static void window_begin(void)
{
        hwm_reset = proc_reset_hwm(opt.pid);
        b0 = proc_sample(opt.pid);
        q0 = proc_sample(opt.store_pid);
        t_start = now_s();
}

static void window_end(void)
{
        t_end = now_s();
        b1 = proc_sample(opt.pid);
        q1 = proc_sample(opt.store_pid);
}

static void report_window(double bytes)
{
        double secs = t_end - t_start;
        if (opt.pid > 0) {
                if (!b0.ok || !b1.ok) {
                        jstr("broker_proc", "unreadable");
                } else {
                        double cpu = b1.cpu_s - b0.cpu_s;
                        jnum("broker_cpu_s", cpu);
                        jnum("broker_cpu_s_stat", b1.cpu_stat_s - b0.cpu_stat_s);
                        jnum("broker_cpu_util", cpu / secs);
                        if (bytes > 0)
                                jnum("broker_cpu_s_per_gb", cpu / (bytes / GB));
                        jint("broker_rss_start_kb", b0.rss_kb);
                        jint("broker_rss_end_kb", b1.rss_kb);
                        jint("broker_peak_rss_kb", b1.hwm_kb);
                        jadd(",\"broker_peak_rss_is_run_peak\":%s", hwm_reset ? "true" : "false");
                }
        }
        if (opt.store_pid > 0 && q0.ok && q1.ok) {
                double cpu = q1.cpu_s - q0.cpu_s;
                jnum("store_cpu_s", cpu);
                jnum("store_cpu_util", cpu / secs);
        }
}

static void report_client_cpu(void)
{
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        jnum("client_cpu_s", ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                                     ru.ru_stime.tv_usec / 1e6);
}

/* ---------- latency samples ---------- */

typedef struct {
        double *v; /* milliseconds */
        size_t n, cap;
        pthread_mutex_t mu;
} samples_t;

static void samples_add(samples_t *s, double ms)
{
        pthread_mutex_lock(&s->mu);
        if (s->n == s->cap) {
                s->cap = s->cap ? s->cap * 2 : 65536;
                s->v = realloc(s->v, s->cap * sizeof(*s->v));
                if (!s->v)
                        die("out of memory");
        }
        s->v[s->n++] = ms;
        pthread_mutex_unlock(&s->mu);
}

static int cmp_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

static double pct(const samples_t *s, double q)
{
        if (!s->n)
                return -1;
        size_t i = (size_t)(q * (double)(s->n - 1) + 0.5);
        return s->v[i < s->n ? i : s->n - 1];
}

static void report_samples(const char *prefix, samples_t *s)
{
        char k[64];
        qsort(s->v, s->n, sizeof(*s->v), cmp_double);
        double sum = 0;
        for (size_t i = 0; i < s->n; i++)
                sum += s->v[i];
        snprintf(k, sizeof(k), "%s_samples", prefix);
        jint(k, (long long)s->n);
        snprintf(k, sizeof(k), "%s_mean_ms", prefix);
        jnum(k, s->n ? sum / (double)s->n : -1);
        snprintf(k, sizeof(k), "%s_p50_ms", prefix);
        jnum(k, pct(s, 0.50));
        snprintf(k, sizeof(k), "%s_p99_ms", prefix);
        jnum(k, pct(s, 0.99));
        snprintf(k, sizeof(k), "%s_p999_ms", prefix);
        jnum(k, pct(s, 0.999));
        snprintf(k, sizeof(k), "%s_max_ms", prefix);
        jnum(k, s->n ? s->v[s->n - 1] : -1);
}

/* ---------- client configuration ---------- */

static void set(rd_kafka_conf_t *c, const char *k, const char *v)
{
        char err[512];
        if (rd_kafka_conf_set(c, k, v, err, sizeof(err)) != RD_KAFKA_CONF_OK)
                die("config %s=%s: %s", k, v, err);
}

static void apply_extra(rd_kafka_conf_t *c)
{
        for (int i = 0; i < opt.n_extra; i++) {
                char kv[512];
                snprintf(kv, sizeof(kv), "%s", opt.extra[i]);
                char *eq = strchr(kv, '=');
                if (!eq)
                        die("-X %s: expected KEY=VALUE", opt.extra[i]);
                *eq = 0;
                set(c, kv, eq + 1);
        }
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
        fprintf(stderr, "load: librdkafka %s: %s\n", fac, buf);
}

/* Requests a client sent to the broker: the top-level "tx" counter of
 * librdkafka's statistics (emitted every 200 ms; the first "tx" key of the
 * JSON is the top-level one). Statistics go to the handle's main queue,
 * which rd_kafka_poll() serves, for consumers too. One slot per handle (the
 * handle's opaque). */
#define MAX_PRODUCERS 64
typedef struct {
        atomic_long tx, seen;
} stats_slot_t;
static stats_slot_t stats_slots[MAX_PRODUCERS + 1];

static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
        stats_slot_t *slot = opaque ? opaque : &stats_slots[0];
        const char *p = strstr(json, "\"tx\":");
        if (p) {
                atomic_store(&slot->tx, atol(p + 5));
                atomic_fetch_add(&slot->seen, 1);
        }
        return 0;
}

/* After the measured window: waits for one more statistics report of each
 * handle, so the request count covers the whole run. Sum over the handles;
 * -1 if one of them did not report. */
static long final_requests_n(rd_kafka_t **rks, int n)
{
        long seen[MAX_PRODUCERS + 1];
        for (int i = 0; i < n; i++) {
                stats_slot_t *slot = rd_kafka_opaque(rks[i]);
                rd_kafka_poll(rks[i], 0); /* reports queued during the run: stale */
                seen[i] = atomic_load(&slot->seen);
        }
        double deadline = now_s() + 1.5;
        long total = 0;
        for (int i = 0; i < n; i++) {
                stats_slot_t *slot = rd_kafka_opaque(rks[i]);
                while (atomic_load(&slot->seen) == seen[i] && now_s() < deadline)
                        rd_kafka_poll(rks[i], 20);
                if (atomic_load(&slot->seen) == seen[i])
                        return -1;
                total += atomic_load(&slot->tx);
        }
        return total;
}

static long final_requests(rd_kafka_t *rk) { return final_requests_n(&rk, 1); }

static rd_kafka_conf_t *base_conf(void)
{
        rd_kafka_conf_t *c = rd_kafka_conf_new();
        set(c, "bootstrap.servers", opt.bootstrap);
        set(c, "log_level", "4");
        rd_kafka_conf_set_log_cb(c, log_cb);
        return c;
}

static void want_stats(rd_kafka_conf_t *c, int slot)
{
        set(c, "statistics.interval.ms", "200");
        rd_kafka_conf_set_stats_cb(c, stats_cb);
        rd_kafka_conf_set_opaque(c, &stats_slots[slot]);
}

/* ---------- producer ---------- */

static atomic_long delivered, failed;
static char first_error[256];
static samples_t produce_lat = {.mu = PTHREAD_MUTEX_INITIALIZER};
static _Atomic int64_t measure_from_ns; /* sends before this are warm-up */

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
        if (m->err) {
                if (atomic_fetch_add(&failed, 1) == 0)
                        snprintf(first_error, sizeof(first_error), "delivery: %s", rd_kafka_err2str(m->err));
                return;
        }
        atomic_fetch_add(&delivered, 1);
        int64_t sent = (int64_t)(intptr_t)m->_private;
        if (sent && sent >= measure_from_ns)
                samples_add(&produce_lat, (double)(now_ns() - sent) / 1e6);
}

static rd_kafka_t *new_producer(int slot)
{
        rd_kafka_conf_t *c = base_conf();
        set(c, "acks", "all");
        set(c, "linger.ms", "5");
        set(c, "batch.size", "1048576");
        set(c, "sticky.partitioning.linger.ms", "0");
        set(c, "compression.type", "none");
        set(c, "queue.buffering.max.messages", "1000000");
        set(c, "queue.buffering.max.kbytes", "1048576");
        set(c, "message.max.bytes", "1048588");
        rd_kafka_conf_set_dr_msg_cb(c, dr_cb);
        want_stats(c, slot);
        apply_extra(c);
        char err[512];
        rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
        if (!rk)
                die("rd_kafka_new(producer): %s", err);
        return rk;
}

/* Waits until the topic's metadata (all partitions with a leader) is known,
 * so the measured window does not include the first metadata round trip.
 * Returns the partition count. */
static int wait_topic(rd_kafka_t *rk, rd_kafka_topic_t *rkt)
{
        double deadline = now_s() + 30;
        const char *why = "no answer";
        while (now_s() < deadline) {
                const struct rd_kafka_metadata *md = NULL;
                rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, 5000);
                if (!err && md->topic_cnt == 1) {
                        const struct rd_kafka_metadata_topic *t = &md->topics[0];
                        int n = t->partition_cnt;
                        bool ready = !t->err && n > 0;
                        for (int i = 0; ready && i < n; i++)
                                ready = t->partitions[i].leader >= 0;
                        if (!ready)
                                why = t->err ? rd_kafka_err2str(t->err) : "partitions without leader";
                        rd_kafka_metadata_destroy(md);
                        if (ready)
                                return n;
                } else {
                        why = rd_kafka_err2str(err);
                        if (md)
                                rd_kafka_metadata_destroy(md);
                }
                usleep(100000);
        }
        die("topic %s not ready within 30 s: %s", opt.topic, why);
        return 0;
}

static int produce_one(rd_kafka_t *rk, rd_kafka_topic_t *rkt, void *payload, size_t len, int flags,
                       void *opaque)
{
        for (;;) {
                if (rd_kafka_produce(rkt, RD_KAFKA_PARTITION_UA, flags, payload, len, NULL, 0, opaque) == 0)
                        return 0;
                rd_kafka_resp_err_t err = rd_kafka_last_error();
                if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                        snprintf(first_error, sizeof(first_error), "produce(): %s", rd_kafka_err2str(err));
                        return -1;
                }
                rd_kafka_poll(rk, 1);
        }
}

/* Drains the producer: the last delivery report marks the end. */
static bool drain(rd_kafka_t *rk, long expect, double timeout_s)
{
        double deadline = now_s() + timeout_s;
        while (atomic_load(&delivered) + atomic_load(&failed) < expect && now_s() < deadline)
                rd_kafka_poll(rk, 10);
        return atomic_load(&delivered) + atomic_load(&failed) >= expect;
}

static int mode_produce(void)
{
        rd_kafka_t *rk = new_producer(0);
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, opt.topic, NULL);
        int parts = wait_topic(rk, rkt);
        char *payload = malloc((size_t)opt.size);
        for (int i = 0; i < opt.size; i++)
                payload[i] = (char)('a' + i % 26);
        measure_from_ns = INT64_MAX; /* no latency samples here */

        window_begin();
        long sent = 0;
        for (; sent < opt.count; sent++) {
                /* No copy: the payload buffer outlives every message. */
                if (produce_one(rk, rkt, payload, (size_t)opt.size, 0, NULL) != 0)
                        break;
                if ((sent & 1023) == 0)
                        rd_kafka_poll(rk, 0);
        }
        bool complete = drain(rk, sent, 600);
        window_end();

        double secs = t_end - t_start;
        double bytes = (double)atomic_load(&delivered) * opt.size;
        bool ok = complete && sent == opt.count && atomic_load(&failed) == 0;
        long reqs = final_requests(rk);
        jadd("{\"mode\":\"produce\"");
        jstr("label", opt.label);
        jstr("topic", opt.topic);
        jint("partitions", parts);
        jint("record_bytes", opt.size);
        jint("records", atomic_load(&delivered));
        jint("failed", atomic_load(&failed));
        jnum("seconds", secs);
        jnum("msgs_per_s", atomic_load(&delivered) / secs);
        jnum("mb_per_s", bytes / MB / secs);
        jint("client_requests", reqs);
        report_window(bytes);
        report_client_cpu();
        jadd(",\"ok\":%s", ok ? "true" : "false");
        if (!ok)
                jstr("error", first_error[0] ? first_error : complete ? "incomplete" : "delivery timed out");
        jadd("}");
        rd_kafka_topic_destroy(rkt);
        rd_kafka_destroy(rk);
        free(payload);
        return ok ? 0 : 1;
}

/* Fixed offered load: records are produced on a schedule (rate / size per
 * second, in bursts of at most 1 ms worth), whatever the broker does,
 * round-robin over opt.producers producer instances. Each instance has a
 * thread that serves its delivery reports as they arrive. */
typedef struct {
        rd_kafka_t *rk[MAX_PRODUCERS];
        rd_kafka_topic_t *rkt[MAX_PRODUCERS];
        pthread_t poller[MAX_PRODUCERS];
        int n;
        atomic_bool stop;
        int parts;
        long sent;
        double achieved_mbps;
        bool ok;
} paced_t;

static void *poller_main(void *arg)
{
        paced_t *pc = ((void **)arg)[0];
        rd_kafka_t *rk = ((void **)arg)[1];
        free(arg);
        while (!atomic_load(&pc->stop))
                rd_kafka_poll(rk, 100);
        return NULL;
}

static void paced_open(paced_t *pc)
{
        memset(pc, 0, sizeof(*pc));
        pc->n = opt.producers;
        for (int i = 0; i < pc->n; i++) {
                pc->rk[i] = new_producer(i);
                pc->rkt[i] = rd_kafka_topic_new(pc->rk[i], opt.topic, NULL);
                pc->parts = wait_topic(pc->rk[i], pc->rkt[i]);
        }
        for (int i = 0; i < pc->n; i++) {
                void **arg = malloc(2 * sizeof(void *));
                arg[0] = pc;
                arg[1] = pc->rk[i];
                pthread_create(&pc->poller[i], NULL, poller_main, arg);
        }
}

/* Waits for every delivery report, stops the pollers. */
static bool paced_drain(paced_t *pc, double timeout_s)
{
        double deadline = now_s() + timeout_s;
        while (atomic_load(&delivered) + atomic_load(&failed) < pc->sent && now_s() < deadline)
                usleep(1000);
        atomic_store(&pc->stop, true);
        for (int i = 0; i < pc->n; i++)
                pthread_join(pc->poller[i], NULL);
        return atomic_load(&delivered) + atomic_load(&failed) >= pc->sent;
}

static void paced_close(paced_t *pc)
{
        for (int i = 0; i < pc->n; i++) {
                rd_kafka_topic_destroy(pc->rkt[i]);
                rd_kafka_destroy(pc->rk[i]);
        }
}

static void run_paced(paced_t *pc)
{
        double per_s = opt.rate_mbps * MB / opt.size;
        double total_s = opt.warmup_s + opt.duration_s;
        char *buf = malloc((size_t)opt.size);
        for (int i = 0; i < opt.size; i++)
                buf[i] = (char)('a' + i % 26);
        int64_t t0 = now_ns();
        measure_from_ns = t0 + (int64_t)(opt.warmup_s * 1e9);
        pc->ok = true;
        pc->sent = 0;
        long measured_sent = 0;
        for (;;) {
                int64_t t = now_ns();
                double el = (double)(t - t0) / 1e9;
                if (el >= total_s)
                        break;
                long due = (long)(el * per_s);
                while (pc->sent < due) {
                        int64_t ts = now_ns();
                        int i = (int)(pc->sent % pc->n);
                        /* Payload: send time (monotonic ns) and sequence. */
                        memcpy(buf, &ts, sizeof(ts));
                        memcpy(buf + 8, &pc->sent, sizeof(pc->sent));
                        if (produce_one(pc->rk[i], pc->rkt[i], buf, (size_t)opt.size, RD_KAFKA_MSG_F_COPY,
                                        (void *)(intptr_t)ts) != 0) {
                                pc->ok = false;
                                goto out;
                        }
                        if (ts >= measure_from_ns)
                                measured_sent++;
                        pc->sent++;
                }
                /* Next burst in about 1 ms. */
                struct timespec ts = {0, 1000000};
                nanosleep(&ts, NULL);
        }
out:
        pc->achieved_mbps = (double)measured_sent * opt.size / MB / opt.duration_s;
        free(buf);
}

static void report_paced(const char *mode, paced_t *pc)
{
        jadd("{\"mode\":\"%s\"", mode);
        jstr("label", opt.label);
        jstr("topic", opt.topic);
        jint("partitions", pc->parts);
        jint("record_bytes", opt.size);
        jint("producers", pc->n);
        jnum("offered_mb_per_s", opt.rate_mbps);
        jnum("sent_mb_per_s", pc->achieved_mbps);
        jnum("duration_s", opt.duration_s);
        jnum("warmup_s", opt.warmup_s);
        jnum("seconds", t_end - t_start); /* warm-up + duration + draining the last deliveries */
        jint("records", pc->sent);
        jint("failed", atomic_load(&failed));
        report_samples("produce", &produce_lat);
}

static int mode_latency(void)
{
        static paced_t pc;
        paced_open(&pc);
        window_begin();
        run_paced(&pc);
        bool complete = paced_drain(&pc, 120);
        window_end();
        bool ok = pc.ok && complete && atomic_load(&failed) == 0;
        long reqs = final_requests_n(pc.rk, pc.n);
        report_paced("latency", &pc);
        jint("client_requests", reqs);
        report_window((double)pc.sent * opt.size);
        report_client_cpu();
        jadd(",\"ok\":%s", ok ? "true" : "false");
        if (!ok)
                jstr("error", first_error[0] ? first_error : "delivery timed out");
        jadd("}");
        paced_close(&pc);
        return ok ? 0 : 1;
}

/* ---------- consumer ---------- */

static rd_kafka_t *new_consumer(const char *fetch_wait_ms)
{
        rd_kafka_conf_t *c = base_conf();
        char gid[64];
        snprintf(gid, sizeof(gid), "bench-%d-%ld", (int)getpid(), (long)time(NULL));
        set(c, "group.id", gid); /* needed for the consumer queue; no join, no commits */
        set(c, "enable.auto.commit", "false");
        set(c, "enable.auto.offset.store", "false");
        set(c, "auto.offset.reset", "earliest");
        set(c, "queued.min.messages", "1000000");
        set(c, "enable.partition.eof", "true");
        if (fetch_wait_ms)
                set(c, "fetch.wait.max.ms", fetch_wait_ms);
        else
                want_stats(c, MAX_PRODUCERS); /* consume mode: count the fetches */
        apply_extra(c);
        char err[512];
        rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof(err));
        if (!rk)
                die("rd_kafka_new(consumer): %s", err);
        return rk;
}

/* Assigns every partition of the topic, each at the offset in from[] (or
 * the beginning when from is NULL). */
static void assign_all(rd_kafka_t *rk, int parts, const int64_t *from)
{
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(parts);
        for (int p = 0; p < parts; p++)
                rd_kafka_topic_partition_list_add(l, opt.topic, p)->offset =
                    from ? from[p] : RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_resp_err_t err = rd_kafka_assign(rk, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (err)
                die("assign: %s", rd_kafka_err2str(err));
}

static int topic_partitions(rd_kafka_t *rk)
{
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, opt.topic, NULL);
        int n = wait_topic(rk, rkt);
        rd_kafka_topic_destroy(rkt);
        return n;
}

static void watermarks(rd_kafka_t *rk, int parts, int64_t *lo, int64_t *hi)
{
        for (int p = 0; p < parts; p++) {
                rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
                for (int attempt = 0; attempt < 20; attempt++) {
                        err = rd_kafka_query_watermark_offsets(rk, opt.topic, p, &lo[p], &hi[p], 10000);
                        if (!err)
                                break;
                        usleep(200000);
                }
                if (err)
                        die("watermarks of %s [%d]: %s", opt.topic, p, rd_kafka_err2str(err));
        }
}

static int mode_consume(void)
{
        rd_kafka_t *rk = new_consumer(NULL);
        int parts = topic_partitions(rk);
        int64_t *lo = calloc((size_t)parts, sizeof(int64_t));
        int64_t *hi = calloc((size_t)parts, sizeof(int64_t));
        int64_t *next = calloc((size_t)parts, sizeof(int64_t));
        watermarks(rk, parts, lo, hi);
        long expect = 0;
        int remaining = 0;
        for (int p = 0; p < parts; p++) {
                expect += (long)(hi[p] - lo[p]);
                next[p] = lo[p];
                if (hi[p] > lo[p])
                        remaining++;
        }
        rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(rk);
        if (!q)
                die("no consumer queue");

        static rd_kafka_message_t *msgs[10000];
        long got = 0;
        double bytes = 0;
        char err_text[256] = "";
        window_begin();
        assign_all(rk, parts, NULL);
        double last_progress = now_s();
        while (remaining > 0) {
                ssize_t n = rd_kafka_consume_batch_queue(q, 100, msgs, 10000);
                if (n < 0)
                        die("consume_batch_queue: %s", rd_kafka_err2str(rd_kafka_last_error()));
                for (ssize_t i = 0; i < n; i++) {
                        rd_kafka_message_t *m = msgs[i];
                        int p = m->partition;
                        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                                /* nothing to do: completion is by offsets */
                        } else if (m->err) {
                                if (!err_text[0])
                                        snprintf(err_text, sizeof(err_text), "consume [%d]: %s", p,
                                                 rd_kafka_message_errstr(m));
                                fprintf(stderr, "load: consume error [%d]: %s\n", p, rd_kafka_message_errstr(m));
                        } else if (p >= 0 && p < parts && m->offset >= next[p]) {
                                got++;
                                bytes += (double)m->len;
                                bool was_open = next[p] < hi[p];
                                next[p] = m->offset + 1;
                                if (was_open && next[p] >= hi[p])
                                        remaining--;
                                last_progress = now_s();
                        }
                        rd_kafka_message_destroy(m);
                }
                if (now_s() - last_progress > 60) {
                        snprintf(err_text, sizeof(err_text), "no progress for 60 s (%d partitions unfinished)",
                                 remaining);
                        break;
                }
        }
        window_end();
        double secs = t_end - t_start;
        bool ok = remaining == 0;
        long reqs = final_requests(rk);
        jadd("{\"mode\":\"consume\"");
        jstr("label", opt.label);
        jstr("topic", opt.topic);
        jint("partitions", parts);
        jint("records", got);
        jint("expected", expect);
        long long low_sum = 0;
        for (int p = 0; p < parts; p++)
                low_sum += lo[p];
        jint("log_start_sum", low_sum); /* > 0: the broker had dropped old records */
        jnum("seconds", secs);
        jnum("msgs_per_s", got / secs);
        jnum("mb_per_s", bytes / MB / secs);
        jint("client_requests", reqs);
        report_window(bytes);
        report_client_cpu();
        jadd(",\"ok\":%s", ok ? "true" : "false");
        if (!ok)
                jstr("error", err_text);
        jadd("}");
        rd_kafka_queue_destroy(q);
        rd_kafka_assign(rk, NULL);
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
        free(lo);
        free(hi);
        free(next);
        return ok ? 0 : 1;
}

/* ---------- end to end ---------- */

static samples_t e2e_lat = {.mu = PTHREAD_MUTEX_INITIALIZER};
static atomic_bool producer_done;
static atomic_long e2e_received;
static atomic_long target_total = -1;

typedef struct {
        rd_kafka_t *rk;
        int parts;
} e2e_consumer_t;

static void *e2e_consume(void *arg)
{
        e2e_consumer_t *c = arg;
        rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(c->rk);
        static rd_kafka_message_t *msgs[4096];
        double idle_since = 0;
        for (;;) {
                ssize_t n = rd_kafka_consume_batch_queue(q, 50, msgs, 4096);
                int64_t t = now_ns();
                for (ssize_t i = 0; i < n; i++) {
                        rd_kafka_message_t *m = msgs[i];
                        if (!m->err && m->len >= 16) {
                                int64_t sent;
                                memcpy(&sent, m->payload, sizeof(sent));
                                if (sent >= measure_from_ns)
                                        samples_add(&e2e_lat, (double)(t - sent) / 1e6);
                                atomic_fetch_add(&e2e_received, 1);
                        } else if (m->err && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                                fprintf(stderr, "load: e2e consume error: %s\n", rd_kafka_message_errstr(m));
                        }
                        rd_kafka_message_destroy(m);
                }
                long target = atomic_load(&target_total);
                if (target >= 0 && atomic_load(&e2e_received) >= target)
                        break;
                if (atomic_load(&producer_done)) {
                        if (!idle_since)
                                idle_since = now_s();
                        if (now_s() - idle_since > 30)
                                break;
                }
        }
        rd_kafka_queue_destroy(q);
        return NULL;
}

static int mode_e2e(void)
{
        static paced_t pc;
        paced_open(&pc);
        int parts = pc.parts;
        rd_kafka_t *crk = new_consumer("10");
        int64_t *lo = calloc((size_t)parts, sizeof(int64_t));
        int64_t *hi = calloc((size_t)parts, sizeof(int64_t));
        watermarks(crk, parts, lo, hi);
        assign_all(crk, parts, hi); /* only what is produced from now on */
        /* Let the consumer reach its fetch loop before the load starts. */
        rd_kafka_message_t *m = rd_kafka_consumer_poll(crk, 1000);
        if (m)
                rd_kafka_message_destroy(m);

        e2e_consumer_t cc = {.rk = crk, .parts = parts};
        pthread_t th;
        measure_from_ns = INT64_MAX;
        pthread_create(&th, NULL, e2e_consume, &cc);
        window_begin();
        run_paced(&pc);
        bool complete = paced_drain(&pc, 120);
        atomic_store(&target_total, pc.sent);
        atomic_store(&producer_done, true);
        pthread_join(th, NULL);
        window_end();
        long received = atomic_load(&e2e_received);
        long reqs = final_requests_n(pc.rk, pc.n);
        bool ok = pc.ok && complete && atomic_load(&failed) == 0 && received >= pc.sent;
        report_paced("e2e", &pc);
        jint("consumed", received);
        jint("client_requests", reqs);
        report_samples("e2e", &e2e_lat);
        report_window((double)pc.sent * opt.size * 2); /* bytes in + bytes out */
        report_client_cpu();
        jadd(",\"ok\":%s", ok ? "true" : "false");
        if (!ok)
                jstr("error", first_error[0] ? first_error : received < pc.sent ? "not all records consumed"
                                                                                   : "delivery timed out");
        jadd("}");
        paced_close(&pc);
        rd_kafka_assign(crk, NULL);
        rd_kafka_consumer_close(crk);
        rd_kafka_destroy(crk);
        free(lo);
        free(hi);
        return ok ? 0 : 1;
}

/* ---------- create ---------- */

static int mode_create(void)
{
        rd_kafka_conf_t *c = base_conf();
        char err[512];
        rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
        if (!rk)
                die("rd_kafka_new: %s", err);
        rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(opt.topic, opt.partitions, 1, err, sizeof(err));
        if (!nt)
                die("NewTopic: %s", err);
        rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
        rd_kafka_CreateTopics(rk, &nt, 1, NULL, q);
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
        int rc = 1;
        const char *what = "timed out";
        if (ev) {
                const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
                if (rd_kafka_event_error(ev)) {
                        what = rd_kafka_event_error_string(ev);
                } else if (res) {
                        size_t n;
                        const rd_kafka_topic_result_t **tr = rd_kafka_CreateTopics_result_topics(res, &n);
                        rd_kafka_resp_err_t e = n ? rd_kafka_topic_result_error(tr[0]) : RD_KAFKA_RESP_ERR_NO_ERROR;
                        if (!e || e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                                rc = 0;
                                what = e ? "exists" : "created";
                        } else {
                                what = rd_kafka_topic_result_error_string(tr[0]);
                                if (!what)
                                        what = rd_kafka_err2str(e);
                        }
                }
        }
        if (rc == 0) {
                rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, opt.topic, NULL);
                int n = wait_topic(rk, rkt);
                rd_kafka_topic_destroy(rkt);
                if (n != opt.partitions) {
                        rc = 1;
                        what = "exists with a different partition count";
                }
        }
        jadd("{\"mode\":\"create\"");
        jstr("label", opt.label);
        jstr("topic", opt.topic);
        jint("partitions", opt.partitions);
        jstr("result", what);
        jadd(",\"ok\":%s}", rc == 0 ? "true" : "false");
        if (ev)
                rd_kafka_event_destroy(ev);
        rd_kafka_NewTopic_destroy(nt);
        rd_kafka_queue_destroy(q);
        rd_kafka_destroy(rk);
        return rc;
}

/* ---------- main ---------- */

static void usage(void)
{
        fprintf(stderr,
                "usage: load create|produce|consume|latency|e2e -b HOST:PORT -t TOPIC\n"
                "            [-n RECORDS] [-s BYTES] [-P PARTITIONS] [-r MBPS] [-d SECONDS] [-w SECONDS]\n"
                "            [-p BROKER_PID] [-q STORE_PID] [-c PRODUCERS] [-l LABEL] [-X key=value]...\n");
        exit(2);
}

int main(int argc, char **argv)
{
        if (argc < 2)
                usage();
        opt.mode = argv[1];
        int o;
        optind = 2;
        while ((o = getopt(argc, argv, "b:t:n:s:P:r:d:w:p:q:c:l:X:h")) != -1) {
                switch (o) {
                case 'b': opt.bootstrap = optarg; break;
                case 't': opt.topic = optarg; break;
                case 'n': opt.count = atol(optarg); break;
                case 's': opt.size = atoi(optarg); break;
                case 'P': opt.partitions = atoi(optarg); break;
                case 'r': opt.rate_mbps = atof(optarg); break;
                case 'd': opt.duration_s = atof(optarg); break;
                case 'w': opt.warmup_s = atof(optarg); break;
                case 'p': opt.pid = atoi(optarg); break;
                case 'q': opt.store_pid = atoi(optarg); break;
                case 'c': opt.producers = atoi(optarg); break;
                case 'l': opt.label = optarg; break;
                case 'X':
                        if (opt.n_extra == (int)(sizeof(opt.extra) / sizeof(opt.extra[0])))
                                die("too many -X");
                        opt.extra[opt.n_extra++] = optarg;
                        break;
                default: usage();
                }
        }
        if (!opt.bootstrap || !opt.topic)
                usage();
        if (opt.count < 1 || opt.partitions < 1 || opt.producers < 1 || opt.producers > MAX_PRODUCERS || opt.rate_mbps <= 0 || opt.duration_s <= 0 || opt.warmup_s < 0)
                die("bad numeric option");
        bool paced = !strcmp(opt.mode, "latency") || !strcmp(opt.mode, "e2e");
        if (opt.size < (paced ? 16 : 1))
                die("-s must be at least %d for mode %s", paced ? 16 : 1, opt.mode);
        clk_tck = (double)sysconf(_SC_CLK_TCK);

        int rc;
        if (!strcmp(opt.mode, "create"))
                rc = mode_create();
        else if (!strcmp(opt.mode, "produce"))
                rc = mode_produce();
        else if (!strcmp(opt.mode, "consume"))
                rc = mode_consume();
        else if (!strcmp(opt.mode, "latency"))
                rc = mode_latency();
        else if (!strcmp(opt.mode, "e2e"))
                rc = mode_e2e();
        else
                usage();
        printf("%s\n", out);
        fflush(stdout);
        return rc;
}
