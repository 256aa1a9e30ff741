/*
 * topic_sync.h — keeps the partition logs (log/log.h) in step with the
 * topic registry (meta/metadata.h).
 *
 * The registry follows the metadata store: this broker's own writes at
 * once, everyone else's (another broker, an operator writing etcd) through
 * the store's watch.  This module makes the log match it, topic by topic:
 * a topic the registry has is open with all its partitions and its configs
 * applied; a topic it no longer has — or has as a new incarnation (another
 * topic id) — is closed.  It never deletes objects: the broker that deleted
 * a topic does that.
 *
 * Syncs happen (1) on demand, after this broker changed a topic
 * (ks_topic_sync_one, on the caller's thread), (2) for every topic the
 * watch reports, on the module's own thread (`ks-topics`), and (3) for every
 * topic every KS_TOPIC_SYNC_PERIOD_MS, which retries what failed (say,
 * partitions that could not be opened while the metadata store was down).
 * Syncs are serialised by one mutex and read the registry inside it, so a
 * late sync can never undo a newer state: the registry only moves forward.
 */
#ifndef KS_BROKER_TOPIC_SYNC_H
#define KS_BROKER_TOPIC_SYNC_H

#include "log/log.h"
#include "meta/metadata.h"
#include "util/err.h"

#define KS_TOPIC_SYNC_PERIOD_MS 5000

typedef struct ks_topic_sync ks_topic_sync_t;

/* Starts the sync thread and listens to `meta`'s topic changes.  `log` and
 * `meta` are borrowed and must outlive it.  Does not sync anything yet. */
ks_err_t ks_topic_sync_start(ks_log_t *log, ks_meta_t *meta, ks_topic_sync_t **out);

/* Called after the module's own thread synced `topic` (NULL: after a
 * full pass), with no lock of this module held: the broker uses it to make
 * partitions it owns serve once their topic is open (broker/ownership.c).
 * Set before the first sync; may block. */
typedef void(ks_topic_synced_fn)(void *opaque, const char *topic);
void ks_topic_sync_set_hook(ks_topic_sync_t *s, ks_topic_synced_fn *fn, void *opaque);

/* Stops listening and joins the thread.  NULL is a no-op. */
void ks_topic_sync_stop(ks_topic_sync_t *s);

/* Makes the log match the registry for `topic` now.  Returns the error of
 * opening its partitions, if any (a later pass retries).  BLOCKING. */
ks_err_t ks_topic_sync_one(ks_topic_sync_t *s, const char *topic);

/* Syncs every topic the registry or the log knows.  Returns the first
 * error.  BLOCKING. */
ks_err_t ks_topic_sync_all(ks_topic_sync_t *s);

#endif
