/*
 * metrics.c — the metrics registry, the Prometheus text renderer and the
 * broker's standard families.
 *
 * Cells are plain int64_t / uint64_t arrays updated with relaxed __atomic
 * builtins (the counters need atomicity, not ordering).  Doubles (gauges,
 * histogram sums) are stored as bit patterns and added with a CAS loop.
 * The registry lock guards the family list and collect callbacks only.
 */
#include "metrics/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "protocol/codec.h"
#include "util/log.h"

#define MAX_BOUNDS 64
#define LABELS_MAX 512

struct ks_metrics {
        pthread_mutex_t lock;
        ks_metric_t *head, *tail;
};

const double ks_metrics_latency_bounds[] = {
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
};
const int ks_metrics_latency_nbounds = (int)(sizeof(ks_metrics_latency_bounds) / sizeof(ks_metrics_latency_bounds[0]));

/* ------------------------------------------------------------------------ */
/* Doubles in 64-bit cells                                                   */

static inline double bits_to_double(uint64_t u)
{
        double d;
        memcpy(&d, &u, sizeof(d));
        return d;
}

static inline uint64_t double_to_bits(double d)
{
        uint64_t u;
        memcpy(&u, &d, sizeof(u));
        return u;
}

static void atomic_add_double(uint64_t *cell, double v)
{
        uint64_t old = __atomic_load_n(cell, __ATOMIC_RELAXED), nw;
        do {
                nw = double_to_bits(bits_to_double(old) + v);
        } while (!__atomic_compare_exchange_n(cell, &old, nw, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
}

/* ------------------------------------------------------------------------ */
/* Registry                                                                  */

ks_metrics_t *ks_metrics_new(void)
{
        ks_metrics_t *r = calloc(1, sizeof(*r));
        if (!r)
                return NULL;
        pthread_mutex_init(&r->lock, NULL);
        return r;
}

static void family_free(ks_metric_t *m)
{
        free(m->name);
        free(m->help);
        free(m->bounds);
        free(m->cells);
        free(m->sums);
        free(m);
}

void ks_metrics_destroy(ks_metrics_t *r)
{
        if (!r)
                return;
        ks_metric_t *m = r->head;
        while (m) {
                ks_metric_t *next = m->next;
                family_free(m);
                m = next;
        }
        pthread_mutex_destroy(&r->lock);
        free(r);
}

static ks_metrics_t *default_registry;
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

static void default_create(void)
{
        default_registry = ks_metrics_new();
}

ks_metrics_t *ks_metrics_default(void)
{
        pthread_once(&default_once, default_create);
        return default_registry;
}

static bool name_valid(const char *s, bool colon_ok)
{
        if (!s || !*s)
                return false;
        for (const char *p = s; *p; p++) {
                char c = *p;
                bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon_ok && c == ':') ||
                          (p != s && c >= '0' && c <= '9');
                if (!ok)
                        return false;
        }
        return true;
}

static bool same_shape(const ks_metric_t *m, ks_metric_type_t type, bool is_double, int nseries, const double *bounds,
                       int nbounds)
{
        if (m->type != type || m->is_double != is_double || m->nseries != nseries)
                return false;
        if (type != KS_METRIC_HISTOGRAM)
                return true;
        return m->nbounds == nbounds && memcmp(m->bounds, bounds, (size_t)nbounds * sizeof(double)) == 0;
}

static ks_metric_t *family_register(ks_metrics_t *r, const char *name, const char *help, ks_metric_type_t type,
                                    const ks_metric_labels_t *labels, bool is_double, const double *bounds,
                                    int nbounds, ks_metric_collect_fn *collect, void *collect_ctx)
{
        if (!r)
                return NULL;
        ks_metric_labels_t lab = { 0 };
        if (labels)
                lab = *labels;
        else
                lab.nseries = 1;
        const char *bad = NULL;
        if (!name_valid(name, true))
                bad = "invalid metric name";
        else if (lab.nseries < 1)
                bad = "a family needs at least one series";
        else if (lab.name && (!name_valid(lab.name, false) || !lab.values || lab.format))
                bad = "an enumerated label needs a valid name and values (and no formatter)";
        else if (lab.nseries > 1 && !lab.name && !lab.format)
                bad = "several series need labels";
        else if (lab.name && !strncmp(lab.name, "__", 2))
                bad = "label names starting with __ are reserved";
        else if (type == KS_METRIC_HISTOGRAM && lab.name && !strcmp(lab.name, "le"))
                bad = "label le is reserved in histograms";
        if (!bad && type == KS_METRIC_HISTOGRAM) {
                if (nbounds < 1 || nbounds > MAX_BOUNDS)
                        bad = "a histogram needs 1..64 bucket bounds";
                for (int i = 0; !bad && i < nbounds; i++)
                        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
                                bad = "histogram bounds must be finite and strictly ascending";
        }
        if (bad) {
                ks_log_error("metric_register_failed", "name=\"%s\" reason=\"%s\"", name ? name : "", bad);
                return NULL;
        }

        pthread_mutex_lock(&r->lock);
        for (ks_metric_t *m = r->head; m; m = m->next) {
                if (strcmp(m->name, name) != 0)
                        continue;
                /* A collected gauge has no cells; it may only be
                 * re-registered as a collected gauge (new fn/ctx). */
                if (!same_shape(m, type, is_double, lab.nseries, bounds, nbounds) ||
                    (collect ? m->cells != NULL : m->cells == NULL)) {
                        pthread_mutex_unlock(&r->lock);
                        ks_log_error("metric_register_failed", "name=\"%s\" reason=\"registered before with another "
                                                               "type or shape\"",
                                     name);
                        return NULL;
                }
                if (collect) {
                        m->collect = collect;
                        m->collect_ctx = collect_ctx;
                }
                pthread_mutex_unlock(&r->lock);
                return m;
        }
        ks_metric_t *m = calloc(1, sizeof(*m));
        size_t ncells = (size_t)lab.nseries * (type == KS_METRIC_HISTOGRAM ? (size_t)nbounds + 1 : 1);
        if (m) {
                m->name = strdup(name);
                m->help = strdup(help ? help : "");
                m->type = type;
                m->labels = lab;
                m->nseries = lab.nseries;
                m->is_double = is_double;
                m->collect = collect;
                m->collect_ctx = collect_ctx;
                if (!collect)
                        m->cells = calloc(ncells, sizeof(int64_t));
                if (type == KS_METRIC_HISTOGRAM) {
                        m->nbounds = nbounds;
                        m->bounds = malloc((size_t)nbounds * sizeof(double));
                        m->sums = calloc((size_t)lab.nseries, sizeof(uint64_t));
                        if (m->bounds)
                                memcpy(m->bounds, bounds, (size_t)nbounds * sizeof(double));
                }
                if (!m->name || !m->help || (!collect && !m->cells) ||
                    (type == KS_METRIC_HISTOGRAM && (!m->bounds || !m->sums))) {
                        family_free(m);
                        m = NULL;
                }
        }
        if (!m) {
                pthread_mutex_unlock(&r->lock);
                ks_log_error("metric_register_failed", "name=\"%s\" reason=\"out of memory\"", name);
                return NULL;
        }
        if (r->tail)
                r->tail->next = m;
        else
                r->head = m;
        r->tail = m;
        pthread_mutex_unlock(&r->lock);
        return m;
}

ks_metric_t *ks_metrics_counter(ks_metrics_t *r, const char *name, const char *help, const ks_metric_labels_t *labels)
{
        return family_register(r, name, help, KS_METRIC_COUNTER, labels, false, NULL, 0, NULL, NULL);
}

ks_metric_t *ks_metrics_gauge(ks_metrics_t *r, const char *name, const char *help, const ks_metric_labels_t *labels)
{
        return family_register(r, name, help, KS_METRIC_GAUGE, labels, false, NULL, 0, NULL, NULL);
}

ks_metric_t *ks_metrics_gauge_double(ks_metrics_t *r, const char *name, const char *help,
                                     const ks_metric_labels_t *labels)
{
        return family_register(r, name, help, KS_METRIC_GAUGE, labels, true, NULL, 0, NULL, NULL);
}

ks_metric_t *ks_metrics_gauge_fn(ks_metrics_t *r, const char *name, const char *help, const ks_metric_labels_t *labels,
                                 ks_metric_collect_fn *fn, void *ctx)
{
        if (!fn) {
                ks_log_error("metric_register_failed", "name=\"%s\" reason=\"no collect function\"", name ? name : "");
                return NULL;
        }
        return family_register(r, name, help, KS_METRIC_GAUGE, labels, true, NULL, 0, fn, ctx);
}

/* Stands in for the collect function of a series family (never called:
 * render_family calls m->series). */
static void series_family(void *ctx, double *values, int n)
{
        (void)ctx;
        (void)values;
        (void)n;
}

ks_metric_t *ks_metrics_gauge_series(ks_metrics_t *r, const char *name, const char *help, ks_metric_series_fn *fn,
                                     void *ctx)
{
        if (!fn) {
                ks_log_error("metric_register_failed", "name=\"%s\" reason=\"no series function\"", name ? name : "");
                return NULL;
        }
        ks_metric_t *m = family_register(r, name, help, KS_METRIC_GAUGE, NULL, true, NULL, 0, series_family, ctx);
        if (!m)
                return NULL;
        pthread_mutex_lock(&r->lock);
        bool ok = m->dynamic || m->collect == series_family;
        if (ok) {
                m->dynamic = true;
                m->series = fn;
        }
        pthread_mutex_unlock(&r->lock);
        if (!ok) {
                ks_log_error("metric_register_failed", "name=\"%s\" reason=\"registered before as another kind of "
                                                       "gauge\"",
                             name);
                return NULL;
        }
        return m;
}

void ks_metric_detach(ks_metrics_t *r, ks_metric_t *m)
{
        if (!r || !m)
                return;
        pthread_mutex_lock(&r->lock);
        m->collect = NULL;
        m->series = NULL;
        m->collect_ctx = NULL;
        pthread_mutex_unlock(&r->lock);
}

void ks_metric_detach_ctx(ks_metrics_t *r, ks_metric_t *m, void *ctx)
{
        if (!r || !m)
                return;
        pthread_mutex_lock(&r->lock);
        if (m->collect_ctx == ctx) {
                m->collect = NULL;
                m->series = NULL;
                m->collect_ctx = NULL;
        }
        pthread_mutex_unlock(&r->lock);
}

ks_metric_t *ks_metrics_histogram(ks_metrics_t *r, const char *name, const char *help, const ks_metric_labels_t *labels,
                                  const double *bounds, int nbounds)
{
        if (!bounds) {
                bounds = ks_metrics_latency_bounds;
                nbounds = ks_metrics_latency_nbounds;
        }
        return family_register(r, name, help, KS_METRIC_HISTOGRAM, labels, false, bounds, nbounds, NULL, NULL);
}

/* ------------------------------------------------------------------------ */
/* Updates that are not inline                                               */

void ks_metric_set_double(ks_metric_t *m, int series, double v)
{
        if (ks_metric_series_ok_(m, series) && m->is_double && m->cells)
                __atomic_store_n((uint64_t *)&m->cells[series], double_to_bits(v), __ATOMIC_RELAXED);
}

void ks_metric_add_double(ks_metric_t *m, int series, double v)
{
        if (ks_metric_series_ok_(m, series) && m->is_double && m->cells)
                atomic_add_double((uint64_t *)&m->cells[series], v);
}

double ks_metric_value_double(const ks_metric_t *m, int series)
{
        if (!ks_metric_series_ok_(m, series) || !m->cells || m->type == KS_METRIC_HISTOGRAM)
                return 0;
        uint64_t u = __atomic_load_n((const uint64_t *)&m->cells[series], __ATOMIC_RELAXED);
        return m->is_double ? bits_to_double(u) : (double)(int64_t)u;
}

int ks_metrics_bucket_index(const double *bounds, int nbounds, double v)
{
        /* Upper bounds are inclusive (le = "less than or equal"). */
        int lo = 0, hi = nbounds;
        while (lo < hi) {
                int mid = (lo + hi) / 2;
                if (v <= bounds[mid])
                        hi = mid;
                else
                        lo = mid + 1;
        }
        return lo;
}

void ks_metric_observe(ks_metric_t *m, int series, double v)
{
        if (!ks_metric_series_ok_(m, series) || m->type != KS_METRIC_HISTOGRAM || isnan(v))
                return;
        int i = ks_metrics_bucket_index(m->bounds, m->nbounds, v);
        __atomic_fetch_add(&m->cells[(size_t)series * (size_t)(m->nbounds + 1) + (size_t)i], 1, __ATOMIC_RELAXED);
        atomic_add_double(&m->sums[series], v);
}

int64_t ks_metric_hist_count(const ks_metric_t *m, int series)
{
        if (!ks_metric_series_ok_(m, series) || m->type != KS_METRIC_HISTOGRAM)
                return 0;
        int64_t n = 0;
        const int64_t *c = &m->cells[(size_t)series * (size_t)(m->nbounds + 1)];
        for (int i = 0; i <= m->nbounds; i++)
                n += __atomic_load_n(&c[i], __ATOMIC_RELAXED);
        return n;
}

double ks_metric_hist_sum(const ks_metric_t *m, int series)
{
        if (!ks_metric_series_ok_(m, series) || m->type != KS_METRIC_HISTOGRAM)
                return 0;
        return bits_to_double(__atomic_load_n(&m->sums[series], __ATOMIC_RELAXED));
}

/* ------------------------------------------------------------------------ */
/* Rendering                                                                 */

typedef struct outbuf {
        char *p;
        size_t len, cap;
        bool oom;
} outbuf_t;

static bool out_reserve(outbuf_t *o, size_t n)
{
        if (o->oom)
                return false;
        if (o->len + n + 1 <= o->cap)
                return true;
        size_t ncap = o->cap ? o->cap : 16384;
        while (ncap < o->len + n + 1)
                ncap *= 2;
        char *np = realloc(o->p, ncap);
        if (!np) {
                o->oom = true;
                return false;
        }
        o->p = np;
        o->cap = ncap;
        return true;
}

static void out_put(outbuf_t *o, const char *s, size_t n)
{
        if (!out_reserve(o, n))
                return;
        memcpy(o->p + o->len, s, n);
        o->len += n;
        o->p[o->len] = '\0';
}

static void out_str(outbuf_t *o, const char *s)
{
        out_put(o, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void out_printf(outbuf_t *o, const char *fmt, ...)
{
        char tmp[256];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
        va_end(ap);
        if (n < 0)
                return;
        if ((size_t)n < sizeof(tmp)) {
                out_put(o, tmp, (size_t)n);
                return;
        }
        if (!out_reserve(o, (size_t)n))
                return;
        va_start(ap, fmt);
        vsnprintf(o->p + o->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
        o->len += (size_t)n;
}

/* Shortest text that reads back as the same double; Prometheus spellings
 * for the special values. */
static void fmt_double(double v, char *out, size_t len)
{
        if (isnan(v)) {
                snprintf(out, len, "NaN");
        } else if (isinf(v)) {
                snprintf(out, len, v > 0 ? "+Inf" : "-Inf");
        } else {
                for (int prec = 6; prec <= 17; prec++) {
                        snprintf(out, len, "%.*g", prec, v);
                        if (strtod(out, NULL) == v)
                                return;
                }
        }
}

/* Escapes HELP text: backslash and newline. */
static void out_help(outbuf_t *o, const char *s)
{
        for (; *s; s++) {
                if (*s == '\\')
                        out_put(o, "\\\\", 2);
                else if (*s == '\n')
                        out_put(o, "\\n", 2);
                else
                        out_put(o, s, 1);
        }
}

size_t ks_metrics_escape_label(const char *s, char *out, size_t len)
{
        size_t n = 0;
        if (!len)
                return 0;
        for (; *s; s++) {
                const char *rep = NULL;
                char one[2] = { *s, '\0' };
                if (*s == '\\')
                        rep = "\\\\";
                else if (*s == '"')
                        rep = "\\\"";
                else if (*s == '\n')
                        rep = "\\n";
                else
                        rep = one;
                size_t rl = strlen(rep);
                if (n + rl >= len)
                        break;
                memcpy(out + n, rep, rl);
                n += rl;
        }
        out[n] = '\0';
        return n;
}

/* The label pairs of one series (without braces) into buf; returns the
 * length, or -1 to leave the series out. */
static int series_labels(const ks_metric_t *m, int s, char *buf, size_t len)
{
        buf[0] = '\0';
        if (m->labels.format) {
                size_t n = m->labels.format(s, buf, len);
                if (n == 0 || n >= len)
                        return -1;
                return (int)n;
        }
        if (m->labels.name) {
                const char *v = m->labels.values[s] ? m->labels.values[s] : "";
                char esc[LABELS_MAX / 2];
                ks_metrics_escape_label(v, esc, sizeof(esc));
                int n = snprintf(buf, len, "%s=\"%s\"", m->labels.name, esc);
                if (n < 0 || (size_t)n >= len)
                        return -1;
                return n;
        }
        return 0;
}

static void out_sample(outbuf_t *o, const char *name, const char *suffix, const char *labels, const char *extra,
                       const char *value)
{
        out_str(o, name);
        out_str(o, suffix);
        if (labels[0] || extra[0]) {
                out_put(o, "{", 1);
                out_str(o, labels);
                if (labels[0] && extra[0])
                        out_put(o, ",", 1);
                out_str(o, extra);
                out_put(o, "}", 1);
        }
        out_put(o, " ", 1);
        out_str(o, value);
        out_put(o, "\n", 1);
}

struct ks_metric_emitter {
        outbuf_t *o;
        const ks_metric_t *m;
};

void ks_metric_emit(ks_metric_emitter_t *e, const char *labels, double value)
{
        char v[64];
        if (strlen(labels) >= LABELS_MAX)
                return;
        fmt_double(value, v, sizeof(v));
        out_sample(e->o, e->m->name, "", labels, "", v);
}

static void render_family(outbuf_t *o, const ks_metric_t *m)
{
        static const char *const type_names[] = { "counter", "gauge", "histogram" };
        out_printf(o, "# HELP %s ", m->name);
        out_help(o, m->help);
        out_printf(o, "\n# TYPE %s %s\n", m->name, type_names[m->type]);
        if (m->dynamic) {
                ks_metric_emitter_t e = { o, m };
                if (m->series)
                        m->series(m->collect_ctx, &e);
                return;
        }

        double *collected = NULL;
        if (m->type == KS_METRIC_GAUGE && (m->collect || !m->cells)) {
                collected = calloc((size_t)m->nseries, sizeof(double));
                if (!collected) {
                        o->oom = true;
                        return;
                }
                if (m->collect)
                        m->collect(m->collect_ctx, collected, m->nseries);
        }
        char labels[LABELS_MAX], value[64], le[80];
        for (int s = 0; s < m->nseries && !o->oom; s++) {
                if (series_labels(m, s, labels, sizeof(labels)) < 0)
                        continue;
                if (m->type == KS_METRIC_HISTOGRAM) {
                        const int64_t *c = &m->cells[(size_t)s * (size_t)(m->nbounds + 1)];
                        int64_t counts[MAX_BOUNDS + 1], total = 0;
                        for (int i = 0; i <= m->nbounds; i++) {
                                counts[i] = __atomic_load_n(&c[i], __ATOMIC_RELAXED);
                                total += counts[i];
                        }
                        if (m->labels.skip_zero && total == 0)
                                continue;
                        int64_t cum = 0;
                        for (int i = 0; i <= m->nbounds; i++) {
                                cum += counts[i];
                                char bound[40];
                                if (i < m->nbounds)
                                        fmt_double(m->bounds[i], bound, sizeof(bound));
                                else
                                        snprintf(bound, sizeof(bound), "+Inf");
                                snprintf(le, sizeof(le), "le=\"%s\"", bound);
                                snprintf(value, sizeof(value), "%lld", (long long)cum);
                                out_sample(o, m->name, "_bucket", labels, le, value);
                        }
                        fmt_double(bits_to_double(__atomic_load_n(&m->sums[s], __ATOMIC_RELAXED)), value,
                                   sizeof(value));
                        out_sample(o, m->name, "_sum", labels, "", value);
                        snprintf(value, sizeof(value), "%lld", (long long)total);
                        out_sample(o, m->name, "_count", labels, "", value);
                        continue;
                }
                if (collected) {
                        if (m->labels.skip_zero && collected[s] == 0)
                                continue;
                        fmt_double(collected[s], value, sizeof(value));
                } else if (m->is_double) {
                        double d = bits_to_double(__atomic_load_n((const uint64_t *)&m->cells[s], __ATOMIC_RELAXED));
                        if (m->labels.skip_zero && d == 0)
                                continue;
                        fmt_double(d, value, sizeof(value));
                } else {
                        int64_t v = __atomic_load_n(&m->cells[s], __ATOMIC_RELAXED);
                        if (m->labels.skip_zero && v == 0)
                                continue;
                        snprintf(value, sizeof(value), "%lld", (long long)v);
                }
                out_sample(o, m->name, "", labels, "", value);
        }
        free(collected);
}

char *ks_metrics_render(ks_metrics_t *r, size_t *len)
{
        outbuf_t o = { 0 };
        if (!out_reserve(&o, 0))
                return NULL;
        o.p[0] = '\0';
        if (r) {
                pthread_mutex_lock(&r->lock);
                for (const ks_metric_t *m = r->head; m && !o.oom; m = m->next)
                        render_family(&o, m);
                pthread_mutex_unlock(&r->lock);
        }
        if (o.oom) {
                free(o.p);
                return NULL;
        }
        if (len)
                *len = o.len;
        return o.p;
}

/* ------------------------------------------------------------------------ */
/* The broker's families                                                     */

ks_std_metrics_t ks_std_metrics;

static size_t api_labels(int key, int version, bool with_version, char *buf, size_t len)
{
        const ks_api_desc_t *d = key >= 0 ? ks_api_desc((int16_t)key) : NULL;
        const char *name = d ? d->name : key >= 0 ? "unknown" : "other";
        int n = with_version ? snprintf(buf, len, "api=\"%s\",api_key=\"%d\",version=\"%d\"", name, key, version)
                             : snprintf(buf, len, "api=\"%s\",api_key=\"%d\"", name, key);
        return n > 0 && (size_t)n < len ? (size_t)n : 0;
}

static size_t api_version_format(int s, char *buf, size_t len)
{
        if (s >= KS_METRICS_API_KEYS * KS_METRICS_API_VERSIONS)
                return api_labels(-1, -1, true, buf, len);
        return api_labels(s / KS_METRICS_API_VERSIONS, s % KS_METRICS_API_VERSIONS, true, buf, len);
}

static size_t api_format(int s, char *buf, size_t len)
{
        return api_labels(s >= KS_METRICS_API_KEYS ? -1 : s, -1, false, buf, len);
}

static const char *const obj_ops[KS_METRICS_OBJ_OPS] = { "put", "get", "list", "delete", "check" };
static const char *const kv_ops[KS_METRICS_KV_OPS] = { "range",       "put",             "delete",       "txn",
                                                       "lease_grant", "lease_keepalive", "lease_revoke", "watch" };

static size_t op_result_labels(const char *const *ops, int s, char *buf, size_t len)
{
        int n = snprintf(buf, len, "op=\"%s\",result=\"%s\"", ops[s / 2], s % 2 ? "error" : "ok");
        return n > 0 && (size_t)n < len ? (size_t)n : 0;
}

static size_t obj_op_result_format(int s, char *buf, size_t len)
{
        return op_result_labels(obj_ops, s, buf, len);
}

static size_t kv_op_result_format(int s, char *buf, size_t len)
{
        return op_result_labels(kv_ops, s, buf, len);
}

static pthread_once_t std_once = PTHREAD_ONCE_INIT;
static int std_status = -1;

static void std_create(void)
{
        ks_metrics_t *r = ks_metrics_default();
        ks_std_metrics_t *m = &ks_std_metrics;
        const ks_metric_labels_t by_api_version = {
                .nseries = KS_METRICS_API_KEYS * KS_METRICS_API_VERSIONS + 1,
                .format = api_version_format,
                .skip_zero = true,
        };
        const ks_metric_labels_t by_api = {
                .nseries = KS_METRICS_API_KEYS + 1,
                .format = api_format,
                .skip_zero = true,
        };
        ks_std_metrics_t n = { 0 };
        n.requests = ks_metrics_counter(r, "kafscale_requests_total",
                                        "Kafka requests completed, by API and version (every outcome).",
                                        &by_api_version);
        n.request_errors = ks_metrics_counter(
                r, "kafscale_request_errors_total",
                "Kafka requests answered by closing the connection (unsupported API or version, malformed body, "
                "shutting down, out of memory), by API and version.",
                &by_api_version);
        n.request_duration = ks_metrics_histogram(
                r, "kafscale_request_duration_seconds",
                "Time from a request's arrival to its completion, by API; includes long-poll and rebalance waits "
                "(Fetch, JoinGroup, SyncGroup) and the wait for durability (Produce).",
                &by_api, NULL, 0);
        n.requests_inflight = ks_metrics_gauge(r, "kafscale_requests_in_flight",
                                               "Kafka requests dispatched and not yet completed.", NULL);
        n.frame_errors = ks_metrics_counter(r, "kafscale_request_frame_errors_total",
                                            "Connections closed because a frame size or request header was invalid.",
                                            NULL);
        n.conns_open = ks_metrics_gauge(r, "kafscale_connections_open", "Open Kafka client connections.", NULL);
        n.conns_accepted = ks_metrics_counter(r, "kafscale_connections_accepted_total",
                                              "Kafka client connections accepted.", NULL);
        n.conns_closed = ks_metrics_counter(r, "kafscale_connections_closed_total",
                                            "Kafka client connections closed (by either side, idle or at shutdown).",
                                            NULL);
        n.conns_refused = ks_metrics_counter(r, "kafscale_connections_refused_total",
                                             "Kafka client connections refused at KAFSCALE_MAX_CONNECTIONS.", NULL);
        n.net_rx_bytes = ks_metrics_counter(r, "kafscale_network_received_bytes_total",
                                            "Bytes read from Kafka client connections.", NULL);
        n.net_tx_bytes = ks_metrics_counter(r, "kafscale_network_sent_bytes_total",
                                            "Bytes written to Kafka client connections.", NULL);
        n.produce_records = ks_metrics_counter(r, "kafscale_produce_records_total",
                                               "Records appended to partition logs by Produce requests.", NULL);
        n.produce_bytes = ks_metrics_counter(r, "kafscale_produce_bytes_total",
                                             "Record-batch bytes appended to partition logs by Produce requests.",
                                             NULL);
        n.produce_errors = ks_metrics_counter(
                r, "kafscale_produce_partition_errors_total",
                "Produce partition responses with an error: rejected, not made durable, or timed out.", NULL);
        n.fetch_records = ks_metrics_counter(r, "kafscale_fetch_records_total",
                                             "Records in the record batches returned by Fetch requests.", NULL);
        n.fetch_bytes = ks_metrics_counter(r, "kafscale_fetch_bytes_total",
                                           "Record-batch bytes returned by Fetch requests.", NULL);
        n.ready = ks_metrics_gauge(r, "kafscale_ready",
                                   "1 when the broker is ready to serve (as /readyz answers 200), else 0.", NULL);
        n.objstore_up = ks_metrics_gauge(r, "kafscale_object_store_up",
                                         "1 when the last object-store probe succeeded, else 0.", NULL);
        n.metastore_up = ks_metrics_gauge(r, "kafscale_metadata_store_up",
                                          "1 when the last metadata-store probe succeeded, else 0.", NULL);
        n.start_time = ks_metrics_gauge_double(r, "kafscale_start_time_seconds",
                                               "Unix time at which the broker process started, in seconds.", NULL);
        const ks_metric_labels_t obj_op_result = { .nseries = KS_METRICS_OBJ_OPS * 2, .format = obj_op_result_format };
        const ks_metric_labels_t obj_op = { .nseries = KS_METRICS_OBJ_OPS, .name = "op", .values = obj_ops };
        const ks_metric_labels_t kv_op_result = { .nseries = KS_METRICS_KV_OPS * 2, .format = kv_op_result_format };
        const ks_metric_labels_t kv_op = { .nseries = KS_METRICS_KV_OPS, .name = "op", .values = kv_ops };
        n.objstore_requests = ks_metrics_counter(
                r, "kafscale_object_store_requests_total",
                "Object-store requests completed, by operation and result (after the backend's own retries).",
                &obj_op_result);
        n.objstore_duration = ks_metrics_histogram(
                r, "kafscale_object_store_request_duration_seconds",
                "Time an object-store request took, retries included, by operation.", &obj_op, NULL, 0);
        n.metastore_requests = ks_metrics_counter(r, "kafscale_metadata_store_requests_total",
                                                  "Metadata-store requests completed, by operation and result.",
                                                  &kv_op_result);
        n.metastore_duration = ks_metrics_histogram(r, "kafscale_metadata_store_request_duration_seconds",
                                                    "Time a metadata-store request took, by operation.", &kv_op,
                                                    NULL, 0);
        n.group_rebalances = ks_metrics_counter(r, "kafscale_consumer_group_rebalances_total",
                                                "Consumer group rebalances started (a group entering "
                                                "PreparingRebalance).",
                                                NULL);
        static const char *const flush_results[] = { "ok", "error", "fenced" };
        const ks_metric_labels_t flush_result = { .nseries = KS_METRICS_FLUSH_RESULTS, .name = "result",
                                                  .values = flush_results };
        n.flushes = ks_metrics_counter(r, "kafscale_flushes_total",
                                       "Segment flushes (upload and commit) by result: ok, error (retried), fenced "
                                       "(ownership lost).",
                                       &flush_result);
        n.flush_bytes = ks_metrics_counter(r, "kafscale_flush_bytes_total",
                                           "Bytes of the segment objects (.kfs) whose flush committed.", NULL);
        n.flush_duration = ks_metrics_histogram(r, "kafscale_flush_duration_seconds",
                                                "Time from the start of a segment upload to its commit.", NULL, NULL,
                                                0);
        n.flushes_in_flight = ks_metrics_gauge(r, "kafscale_flushes_in_flight",
                                               "Segment flushes (upload and commit) in progress, at most one per "
                                               "partition.",
                                               NULL);
        n.cache_hits = ks_metrics_counter(r, "kafscale_cache_hits_total",
                                          "Partition reads served from the segment cache.", NULL);
        n.cache_misses = ks_metrics_counter(r, "kafscale_cache_misses_total",
                                            "Partition reads that had to load a segment from the object store.",
                                            NULL);
        n.cache_bytes = ks_metrics_gauge(r, "kafscale_cache_bytes", "Bytes held by the segment cache.", NULL);
        n.produce_buffer_bytes = ks_metrics_gauge(
                r, "kafscale_produce_buffer_bytes",
                "Memory held by produced data not yet committed to the object store: partition chunks waiting "
                "for their flush plus Produce requests waiting for their acknowledgement.",
                NULL);
        n.produce_buffer_budget = ks_metrics_gauge(
                r, "kafscale_produce_buffer_budget_bytes",
                "KAFSCALE_PRODUCE_BUFFER_BYTES: at this much produce buffer the broker stops reading from "
                "producer connections.",
                NULL);
        n.produce_paused_conns = ks_metrics_gauge(
                r, "kafscale_produce_paused_connections",
                "Producer connections not being read because the produce buffer is at its budget.", NULL);
        n.produce_pauses = ks_metrics_counter(
                r, "kafscale_produce_pauses_total",
                "Times a producer connection stopped being read because the produce buffer was at its budget.",
                NULL);
        ks_metric_t **fields = (ks_metric_t **)&n;
        for (size_t i = 0; i < sizeof(n) / sizeof(ks_metric_t *); i++)
                if (!fields[i])
                        return; /* logged by the registration */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ks_metric_set_double(n.start_time, 0, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
        *m = n;
        std_status = 0;
}

int ks_metrics_std_init(void)
{
        pthread_once(&std_once, std_create);
        return std_status;
}
