/*
 * metrics.h — a small, thread-safe metrics registry rendered in the
 * Prometheus text exposition format (version 0.0.4).
 *
 * A registry (ks_metrics_t) holds metric families (ks_metric_t): counters,
 * gauges and histograms.  A family has one series, or a fixed number of
 * series told apart by labels.  Series are indexed by a small integer that
 * the caller computes (for example api key * versions + version): there is
 * no hash map and no lookup by label value on the hot path.
 *
 * Hot path (ks_metric_add/inc/set, ks_metric_observe*): any thread, no lock,
 * no allocation — relaxed atomic operations on pre-allocated cells.  Every
 * update function accepts a NULL family (does nothing), so code may count
 * into a family that was never registered (e.g. a unit test that runs the
 * network server without a broker).  An out-of-range series index is
 * ignored.
 *
 * Registration (ks_metrics_counter/gauge/histogram/...) allocates and takes
 * the registry lock: do it at start-up, not per request.  Registering a name
 * again with the same type and shape returns the existing family, so a
 * module may "get or create" its families each time it is opened.
 * Families are never freed before their registry; the default registry
 * (ks_metrics_default) lives as long as the process.
 *
 * Rendering (ks_metrics_render) takes the registry lock and reads every cell
 * atomically; values of different series are not a consistent snapshot (each
 * is exact on its own; a histogram's _count is the sum of its buckets).
 *
 * Naming (Prometheus conventions, checked at registration): names match
 * [a-zA-Z_:][a-zA-Z0-9_:]*; the broker's all start with `kafscale_` and
 * carry their unit: `_seconds`, `_bytes`, counters end in `_total`.
 */
#ifndef KS_METRICS_METRICS_H
#define KS_METRICS_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef enum { KS_METRIC_COUNTER = 0, KS_METRIC_GAUGE = 1, KS_METRIC_HISTOGRAM = 2 } ks_metric_type_t;

/* How the series of a family are labelled.  Copied at registration; the
 * strings it points to must outlive the registry (use literals). */
typedef struct ks_metric_labels {
        int nseries; /* number of series (>= 1) */
        /* Either one enumerated label: series i has `name="values[i]"`... */
        const char *name;
        const char *const *values; /* nseries entries */
        /* ...or a formatter that writes the label pairs of series i without
         * braces (`api="Fetch",version="12"`), values escaped with
         * ks_metrics_escape_label(), NUL-terminated; returns the length
         * written (< len), or 0 to leave the series out.  Called with the
         * registry lock held: must not call into the registry. */
        size_t (*format)(int series, char *buf, size_t len);
        /* Leave out series whose value (histograms: count) is zero, so that
         * a large fixed set only shows what was used. */
        bool skip_zero;
} ks_metric_labels_t;

/* Fills values[0..n) for a gauge computed at scrape time (see
 * ks_metrics_gauge_fn).  Runs on the scraping thread with the registry lock
 * held: must be thread-safe, quick, non-blocking, and must not call into the
 * registry. */
typedef void(ks_metric_collect_fn)(void *ctx, double *values, int n);

/* A gauge whose series are only known at scrape time (labels built from
 * data, e.g. a consumer group's partitions): fn calls ks_metric_emit() once
 * per series.  Same rules as ks_metric_collect_fn. */
typedef struct ks_metric_emitter ks_metric_emitter_t;
typedef void(ks_metric_series_fn)(void *ctx, ks_metric_emitter_t *e);

/* A metric family.  The fields are read-only after registration; update the
 * cells through the functions below. */
typedef struct ks_metric {
        char *name;
        char *help;
        ks_metric_type_t type;
        ks_metric_labels_t labels; /* nseries 1 and no name/format: unlabelled */
        int nseries;
        bool is_double;            /* gauge cells hold doubles (bit patterns) */
        int nbounds;               /* histogram: upper bounds, ascending */
        double *bounds;
        int64_t *cells;            /* counter/gauge: nseries; histogram: nseries * (nbounds + 1) */
        uint64_t *sums;            /* histogram: per series, double bit pattern */
        ks_metric_collect_fn *collect; /* gauge computed at scrape (NULL: cells) */
        ks_metric_series_fn *series;   /* gauge with series built at scrape */
        bool dynamic;                  /* registered by ks_metrics_gauge_series */
        void *collect_ctx;             /* for collect or series */
        struct ks_metric *next;
} ks_metric_t;

typedef struct ks_metrics ks_metrics_t;

/* A new, empty registry; NULL if memory ran out. */
ks_metrics_t *ks_metrics_new(void);
/* Frees the registry and every family in it.  No update may run on its
 * families any more. */
void ks_metrics_destroy(ks_metrics_t *r);

/* The process-wide registry the broker renders on /metrics (created on first
 * use, never freed). */
ks_metrics_t *ks_metrics_default(void);

/* Registration.  `labels` may be NULL (one unlabelled series).  Returns the
 * family, the existing one if `name` is already registered with the same
 * type and shape, or NULL (logged) if the name is invalid, clashes with a
 * family of another type or shape, or memory ran out. */
ks_metric_t *ks_metrics_counter(ks_metrics_t *r, const char *name, const char *help, const ks_metric_labels_t *labels);
ks_metric_t *ks_metrics_gauge(ks_metrics_t *r, const char *name, const char *help, const ks_metric_labels_t *labels);
/* A gauge whose cells hold doubles (ks_metric_set_double/add_double). */
ks_metric_t *ks_metrics_gauge_double(ks_metrics_t *r, const char *name, const char *help,
                                     const ks_metric_labels_t *labels);
/* A gauge computed at scrape time by fn (labels->nseries values).  Calling
 * it again for the same name replaces fn/ctx; ks_metric_detach() stops the
 * calls (do so before ctx goes away).  Renders 0 while detached. */
ks_metric_t *ks_metrics_gauge_fn(ks_metrics_t *r, const char *name, const char *help, const ks_metric_labels_t *labels,
                                 ks_metric_collect_fn *fn, void *ctx);
/* A gauge whose series fn emits at scrape time (see ks_metric_series_fn);
 * re-registration and detaching as for ks_metrics_gauge_fn (nothing but
 * the HELP and TYPE lines renders while detached). */
ks_metric_t *ks_metrics_gauge_series(ks_metrics_t *r, const char *name, const char *help, ks_metric_series_fn *fn,
                                     void *ctx);
/* One series of a ks_metrics_gauge_series family: `labels` is the label
 * list without braces, values escaped with ks_metrics_escape_label(), e.g.
 * group="g",topic="t",partition="0" (at most 511 bytes; longer: left out). */
void ks_metric_emit(ks_metric_emitter_t *e, const char *labels, double value);
void ks_metric_detach(ks_metrics_t *r, ks_metric_t *m);
/* As ks_metric_detach, but only while ctx is the context the gauge calls
 * (an owner that closes leaves a newer owner's registration alone). */
void ks_metric_detach_ctx(ks_metrics_t *r, ks_metric_t *m, void *ctx);
/* A histogram with the given upper bounds (strictly ascending, finite; the
 * +Inf bucket is implicit).  bounds NULL: KS_METRICS_LATENCY_BOUNDS. */
ks_metric_t *ks_metrics_histogram(ks_metrics_t *r, const char *name, const char *help, const ks_metric_labels_t *labels,
                                  const double *bounds, int nbounds);

/* Latency buckets in seconds: 0.5 ms .. 30 s. */
extern const double ks_metrics_latency_bounds[];
extern const int ks_metrics_latency_nbounds;

/* Renders every family in registration order.  Returns a malloc'ed,
 * NUL-terminated text (length in *len, may be NULL), or NULL if memory ran
 * out. */
char *ks_metrics_render(ks_metrics_t *r, size_t *len);

/* Escapes a label value (\\, \", \n) into out (NUL-terminated, truncated
 * to len).  Returns the length written. */
size_t ks_metrics_escape_label(const char *s, char *out, size_t len);

/* Index of the histogram bucket that `v` falls into (nbounds: +Inf). */
int ks_metrics_bucket_index(const double *bounds, int nbounds, double v);

/* --- updates (hot path: any thread, no lock, no allocation) ------------- */

static inline bool ks_metric_series_ok_(const ks_metric_t *m, int series)
{
        return m && (unsigned)series < (unsigned)m->nseries;
}

/* Counters (n >= 0) and integer gauges (n may be negative). */
static inline void ks_metric_add(ks_metric_t *m, int series, int64_t n)
{
        if (ks_metric_series_ok_(m, series) && !m->is_double && m->type != KS_METRIC_HISTOGRAM)
                __atomic_fetch_add(&m->cells[series], n, __ATOMIC_RELAXED);
}

static inline void ks_metric_inc(ks_metric_t *m, int series)
{
        ks_metric_add(m, series, 1);
}

/* Integer gauges. */
static inline void ks_metric_set(ks_metric_t *m, int series, int64_t v)
{
        if (ks_metric_series_ok_(m, series) && !m->is_double && m->type == KS_METRIC_GAUGE)
                __atomic_store_n(&m->cells[series], v, __ATOMIC_RELAXED);
}

/* The current value of a counter or integer gauge series (0 if none). */
static inline int64_t ks_metric_value(const ks_metric_t *m, int series)
{
        if (!ks_metric_series_ok_(m, series) || m->type == KS_METRIC_HISTOGRAM)
                return 0;
        return __atomic_load_n(&m->cells[series], __ATOMIC_RELAXED);
}

/* Double gauges (ks_metrics_gauge_double). */
void ks_metric_set_double(ks_metric_t *m, int series, double v);
void ks_metric_add_double(ks_metric_t *m, int series, double v);
double ks_metric_value_double(const ks_metric_t *m, int series);

/* Histograms: one observation (seconds for latency histograms).  NaN is
 * ignored. */
void ks_metric_observe(ks_metric_t *m, int series, double v);

/* Histogram totals of one series (for tests and logs). */
int64_t ks_metric_hist_count(const ks_metric_t *m, int series);
double ks_metric_hist_sum(const ks_metric_t *m, int series);

/* --- the broker's metrics ------------------------------------------------- */

/* Requests are labelled by api key and version: one series per (key,
 * version) with key < KS_METRICS_API_KEYS and version <
 * KS_METRICS_API_VERSIONS, plus one "other" series for anything outside. */
#define KS_METRICS_API_KEYS     128
#define KS_METRICS_API_VERSIONS 32

static inline int ks_metrics_api_version_series(int api_key, int version)
{
        if (api_key < 0 || api_key >= KS_METRICS_API_KEYS || version < 0 || version >= KS_METRICS_API_VERSIONS)
                return KS_METRICS_API_KEYS * KS_METRICS_API_VERSIONS;
        return api_key * KS_METRICS_API_VERSIONS + version;
}

static inline int ks_metrics_api_series(int api_key)
{
        if (api_key < 0 || api_key >= KS_METRICS_API_KEYS)
                return KS_METRICS_API_KEYS;
        return api_key;
}

/* Store requests are labelled by operation and result: counter series
 * op * 2 + (ok ? 0 : 1), histogram series op. */
enum {
        KS_METRICS_OBJ_PUT,
        KS_METRICS_OBJ_GET,
        KS_METRICS_OBJ_LIST,
        KS_METRICS_OBJ_DELETE,
        KS_METRICS_OBJ_CHECK,
        KS_METRICS_OBJ_OPS
};
enum {
        KS_METRICS_KV_RANGE,
        KS_METRICS_KV_PUT,
        KS_METRICS_KV_DELETE,
        KS_METRICS_KV_TXN,
        KS_METRICS_KV_LEASE_GRANT,
        KS_METRICS_KV_LEASE_KEEPALIVE,
        KS_METRICS_KV_LEASE_REVOKE,
        KS_METRICS_KV_WATCH,
        KS_METRICS_KV_OPS
};

/* Monotonic time in seconds, for request durations. */
static inline double ks_metrics_now(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One store request of `op` that started at `t0` (ks_metrics_now) ended:
 * counts it under result="ok" or "error" and observes its duration.
 * Families may be NULL (nothing counted).  Any thread, atomics only. */
static inline void ks_metrics_store_request(ks_metric_t *requests, ks_metric_t *duration, int op, bool ok, double t0)
{
        if (!requests && !duration)
                return;
        ks_metric_inc(requests, op * 2 + (ok ? 0 : 1));
        ks_metric_observe(duration, op, ks_metrics_now() - t0);
}

/* Families the broker's core updates, registered in the default registry by
 * ks_metrics_std_init().  Meaning and alerting advice: docs/operations.md. */
typedef struct ks_std_metrics {
        /* Requests (dispatch.c; completion hook of net/server.c). */
        ks_metric_t *requests;          /* counter {api,api_key,version} */
        ks_metric_t *request_errors;    /* counter {api,api_key,version} */
        ks_metric_t *request_duration;  /* histogram {api}, seconds */
        ks_metric_t *requests_inflight; /* gauge */
        ks_metric_t *frame_errors;      /* counter: bad frame size or header */
        /* Connections and bytes (net/server.c). */
        ks_metric_t *conns_open;        /* gauge */
        ks_metric_t *conns_accepted;    /* counter */
        ks_metric_t *conns_closed;      /* counter */
        ks_metric_t *conns_refused;     /* counter: KAFSCALE_MAX_CONNECTIONS */
        ks_metric_t *net_rx_bytes;      /* counter */
        ks_metric_t *net_tx_bytes;      /* counter */
        /* Produce and fetch (produce.c, fetch.c). */
        ks_metric_t *produce_records;   /* counter: records appended */
        ks_metric_t *produce_bytes;     /* counter: batch bytes appended */
        ks_metric_t *produce_errors;    /* counter: partitions answered with an error */
        ks_metric_t *fetch_records;     /* counter: records in returned batches */
        ks_metric_t *fetch_bytes;       /* counter: record bytes returned */
        /* Health (broker.c). */
        ks_metric_t *ready;             /* gauge 0/1 */
        ks_metric_t *objstore_up;       /* gauge 0/1: last object-store probe */
        ks_metric_t *metastore_up;      /* gauge 0/1: last metadata-store probe */
        ks_metric_t *start_time;        /* gauge: Unix time of start-up, seconds */
        /* Stores (the ks_objstore_* and ks_kv_* entry points). */
        ks_metric_t *objstore_requests; /* counter {op,result} */
        ks_metric_t *objstore_duration; /* histogram {op}, seconds */
        ks_metric_t *metastore_requests; /* counter {op,result} */
        ks_metric_t *metastore_duration; /* histogram {op}, seconds */
        /* Consumer groups (group.c; the state and member gauges are
         * computed at scrape and registered by ks_groups_open). */
        ks_metric_t *group_rebalances;  /* counter: rebalances started */
        /* Partition logs (log.c). */
        ks_metric_t *flushes;           /* counter {result}: KS_METRICS_FLUSH_* */
        ks_metric_t *flush_bytes;       /* counter: bytes of segments committed */
        ks_metric_t *flush_duration;    /* histogram: upload + commit, seconds */
        ks_metric_t *flushes_in_flight; /* gauge: partitions uploading and committing a segment */
        ks_metric_t *cache_hits;        /* counter: reads served from the segment cache */
        ks_metric_t *cache_misses;      /* counter: reads that had to load a segment */
        ks_metric_t *cache_bytes;       /* gauge: bytes held by the segment cache */
        /* The produce-buffer budget (log.c, net/server.c). */
        ks_metric_t *produce_buffer_bytes;  /* gauge: unflushed chunks + Produce requests held */
        ks_metric_t *produce_buffer_budget; /* gauge: KAFSCALE_PRODUCE_BUFFER_BYTES */
        ks_metric_t *produce_paused_conns;  /* gauge: connections not read for the budget */
        ks_metric_t *produce_pauses;        /* counter: times a connection was paused */
} ks_std_metrics_t;

/* Flush outcomes (series of ks_std_metrics.flushes). */
enum { KS_METRICS_FLUSH_OK, KS_METRICS_FLUSH_ERROR, KS_METRICS_FLUSH_FENCED, KS_METRICS_FLUSH_RESULTS };

/* NULL members until ks_metrics_std_init() has run. */
extern ks_std_metrics_t ks_std_metrics;

/* Registers the families above in ks_metrics_default() (once per process;
 * later calls do nothing).  0, or -1 if memory ran out (logged). */
int ks_metrics_std_init(void);

#endif
