/*
 * lag.h — consumer lag per group and partition, for /metrics
 * (kafscale_consumer_group_lag{group,topic,partition}).
 *
 * A thread (`ks-lag`) recomputes a snapshot every `interval_ms`: for every
 * group this broker coordinates (the groups ListGroups lists here), its
 * committed offsets — one range read of the metadata store per group —
 * against each partition's high watermark: the partition log's when this
 * broker serves the partition, else the committed end offset in the
 * metadata store (cluster mode; read once per partition per pass).  Lag is
 * high watermark − committed offset, at least 0.  A scrape renders the last
 * snapshot and never touches a store.  At most KS_LAG_MAX_SERIES series.
 *
 * Threads: start and stop from the broker's start/stop path; the series
 * callback runs on the scraping thread.
 */
#ifndef KS_BROKER_LAG_H
#define KS_BROKER_LAG_H

#include <stdint.h>

struct ks_broker;

#define KS_LAG_MAX_SERIES 100000

typedef struct ks_lag ks_lag_t;

/* Registers the family and starts the thread (interval_ms > 0).  NULL if
 * it could not start (logged); the broker runs on without lag metrics. */
ks_lag_t *ks_lag_start(struct ks_broker *b, int64_t interval_ms);

/* Detaches the family and joins the thread (waits for a pass in
 * progress).  NULL is accepted. */
void ks_lag_stop(ks_lag_t *l);

#endif
