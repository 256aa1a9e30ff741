/*
 * cluster.h — cluster membership, deterministic placement and ownership
 * leases (SYSTEM.md §7; the protocol is written down in docs/cluster.md).
 *
 * A broker starts one ks_cluster_t over the metadata store (meta/kv.h; any
 * backend: memory, SQLite, etcd).  The module
 *
 *  - registers the broker under a lease of its own (`/kafscale/brokers/{id}`,
 *    protobuf BrokerRegistration) and keeps that lease alive;
 *  - follows the live brokers, the topics (their partition counts), the
 *    partitions' leader epochs and every partition and group lease through
 *    watches, into caches that the non-blocking queries below read;
 *  - places every partition ("{topic}/{partition}") and every group
 *    ("group:{group}") on one live broker by rendezvous hashing
 *    (ks_cluster_place), which every broker computes alike;
 *  - takes the partitions placed on it whose lease key is free, each in one
 *    transaction that also bumps the partition's leader epoch and extends its
 *    epoch history; hands over cleanly (hook, then lease key deleted) those
 *    placed elsewhere; learns when it lost something without a hand-over
 *    (its lease expired or was lost) and says so at once.
 *
 * Threads: two of its own.  `ks-cluster` registers, rebalances and calls
 * every hook (one at a time); `ks-cluster-ka` only keeps the lease alive, so
 * a hook that blocks (a release that flushes) never delays a keepalive.
 * Watch callbacks (the store's thread) only update the caches and wake
 * `ks-cluster`.  Functions marked BLOCKING talk to the store; the others take
 * one short mutex and may run on event-loop threads.
 *
 * Time: lease timing (keepalive every TTL/3, "my lease is gone once TTL has
 * passed since my last confirmed keepalive") follows the configured clock
 * (a ks_clock_fake_t in tests, like the in-process stores' lease expiry);
 * retry back-offs and the start-up wait for a stale registration use real
 * monotonic time.
 */
#ifndef KS_CLUSTER_CLUSTER_H
#define KS_CLUSTER_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "meta/kv.h"
#include "util/clock.h"
#include "util/err.h"

/* Key layout (SYSTEM.md §6). */
#define KS_CLUSTER_BROKERS_PREFIX          "/kafscale/brokers/"          /* + id */
#define KS_CLUSTER_PARTITION_LEASES_PREFIX "/kafscale/partition-leases/" /* + topic/partition */
#define KS_CLUSTER_GROUP_LEASES_PREFIX     "/kafscale/group-leases/"     /* + group */

#define KS_CLUSTER_DEFAULT_LEASE_TTL_MS 10000
#define KS_CLUSTER_MIN_LEASE_TTL_S      2     /* etcd's TTLs are whole seconds; below 2 s they are raised */
#define KS_CLUSTER_EPOCH_HISTORY_MAX    64    /* entries kept in PartitionState.epoch_history */
#define KS_CLUSTER_ACQUIRE_TIMEOUT_MS   5000  /* ks_cluster_acquire_group waits at most this long */
#define KS_CLUSTER_GROUP_MAX            1024  /* longest group id, bytes */

typedef struct ks_cluster ks_cluster_t;

typedef struct ks_cluster_config {
        int32_t broker_id;       /* >= 0 */
        const char *host;        /* advertised host (required) */
        int32_t port;            /* advertised port */
        const char *rack;        /* NULL: none */
        const char *version;     /* software version for the registration; NULL: "kafscale-c" */
        int64_t lease_ttl_ms;    /* broker session; 0: KS_CLUSTER_DEFAULT_LEASE_TTL_MS.  Rounded up to
                                  * whole seconds, at least KS_CLUSTER_MIN_LEASE_TTL_S */
        int64_t register_wait_ms;/* how long start-up waits for a registration of the same broker id held
                                  * under another lease to go away (a previous run killed within its TTL)
                                  * before refusing to start; 0: TTL + 2 s; < 0: do not wait.  Real time. */
        bool exclusive_store;    /* embedded mode: this process alone uses the store (SQLite file lock),
                                  * so a registration/lease left by a previous run of this broker id is
                                  * revoked at once instead of waited for */
        bool membership_only;    /* register and follow the live brokers, but never acquire, release or
                                  * place partitions and groups (a broker whose log does not follow
                                  * ownership yet) */
        const ks_clock_t *clock; /* NULL: system */
} ks_cluster_config_t;

typedef struct ks_broker_info {
        int32_t id;
        char host[256];
        int32_t port;
        char rack[64]; /* "": none */
} ks_broker_info_t;

/* What the broker does when ownership changes.  Every hook is called on the
 * `ks-cluster` thread, one at a time, never with a module lock held; a hook
 * may call the non-blocking queries but not ks_cluster_stop() nor
 * ks_cluster_acquire_group().  Any hook may be NULL. */
typedef struct ks_cluster_hooks {
        /* This broker now owns the partition at leader epoch `epoch`: the
         * lease key and the PartitionState with the bumped epoch are
         * committed (epoch history extended with {epoch, start_offset =
         * committed next offset}).  The log recovers the partition from
         * metadata and serves it, writing `epoch` into its batches and
         * fencing its commits with ks_cluster_fence_cmp(..., epoch, ...). */
        void (*partition_acquired)(void *opaque, const char *topic, int32_t partition, int32_t epoch);
        /* Hand-over: another broker should own it.  Stop accepting writes,
         * flush and commit what is buffered (commits still pass the fence
         * during this call), then return; the module then deletes the lease
         * key.  May block. */
        void (*partition_release)(void *opaque, const char *topic, int32_t partition);
        /* Ownership lost without a hand-over: this broker's lease expired or
         * was lost, the lease key was taken away, or the partition was
         * deleted (`deleted`).  Stop serving at once; nothing buffered may
         * be acknowledged any more (commits are fenced already). */
        void (*partition_lost)(void *opaque, const char *topic, int32_t partition, bool deleted);
        /* The same for consumer-group coordination (no epoch). */
        void (*group_acquired)(void *opaque, const char *group);
        void (*group_release)(void *opaque, const char *group);
        void (*group_lost)(void *opaque, const char *group);
} ks_cluster_hooks_t;

/* Registers the broker and starts the module.  `kv` is borrowed and must
 * outlive it; `hooks` is copied; strings in `cfg` are copied.  Start-up
 * loads the caches, starts the watches and registers: if another process
 * holds a live registration of the same broker id (under another lease) it
 * waits up to cfg->register_wait_ms for it to go away and then fails with
 * KS_ERR__EXISTS (logged with what to do).  Partitions are acquired
 * afterwards, on the module's thread.  *out is set before that thread
 * starts, so a hook may read it (e.g. a field the caller passed as `out`).
 * BLOCKING. */
ks_err_t ks_cluster_start(const ks_cluster_config_t *cfg, ks_kv_t *kv, const ks_cluster_hooks_t *hooks, void *opaque,
                          ks_cluster_t **out);

/* Releases everything cleanly — partition_release / group_release for all
 * that is owned, each lease key deleted after its hook — then revokes the
 * lease (the registration goes), so the others take over at once; stops the
 * threads and watches and frees.  NULL is a no-op.  BLOCKING. */
void ks_cluster_stop(ks_cluster_t *c);

/* For tests: what kill -9 does — the threads stop without any hook, release
 * or revoke, the lease is left to expire; then frees. */
void ks_cluster_test_kill(ks_cluster_t *c);

/* --- queries (non-blocking; from the caches the watches keep) ----------------- */

int32_t ks_cluster_broker_id(const ks_cluster_t *c);

/* The live brokers (registered under a live lease), sorted by id, into a
 * malloc'ed array the caller frees.  Returns the count, -1 if out of memory. */
int ks_cluster_brokers(ks_cluster_t *c, ks_broker_info_t **out);

/* One live broker by id; false if it is not live. */
bool ks_cluster_broker_get(ks_cluster_t *c, int32_t id, ks_broker_info_t *out);

/* The partition's owner as far as this broker knows: the live holder of its
 * lease key, else the placement's choice; -1 if no broker is live.
 * *epoch (may be NULL): the partition's current leader epoch from its
 * PartitionState (0 for a partition never owned, -1 if unknown). */
int32_t ks_cluster_partition_leader(ks_cluster_t *c, const char *topic, int32_t partition, int32_t *epoch);

/* True if this broker owns the partition and may serve it now: it holds the
 * lease key under its current lease, that lease is within its TTL since the
 * last confirmed keepalive, and no hand-over has started.  *epoch (may be
 * NULL): the epoch of this ownership. */
bool ks_cluster_owns_partition(ks_cluster_t *c, const char *topic, int32_t partition, int32_t *epoch);

/* The compare that fences a partition commit made at leader epoch `epoch`
 * (-1: the current one): the partition's lease key must still be the one
 * this broker created when it began that epoch (its create revision is the
 * revision of the acquiring transaction), so the commit fails once the
 * lease expired, the key was handed over, or another term began.  Fills
 * *cmp, its key stored in keybuf (keylen >= 300 is enough).  Returns true if
 * this broker holds that term (also while a hand-over is flushing); false
 * if not, and *cmp is then a compare that never holds — commit nothing. */
bool ks_cluster_fence_cmp(ks_cluster_t *c, const char *topic, int32_t partition, int32_t epoch, char *keybuf,
                          size_t keylen, ks_kv_cmp_t *cmp);

/* The group's coordinator: the live holder of its lease key, else the
 * placement's choice; -1 if no broker is live. */
int32_t ks_cluster_group_coordinator(ks_cluster_t *c, const char *group);

/* True if this broker holds the group's lease (as ks_cluster_owns_partition). */
bool ks_cluster_owns_group(ks_cluster_t *c, const char *group);

/* The compare that fences a coordinator's write of group state (group
 * record, committed offsets): the group's lease key is still the one this
 * broker created when it acquired the group.  As ks_cluster_fence_cmp
 * (keylen >= KS_CLUSTER_GROUP_MAX + 32 is enough). */
bool ks_cluster_group_fence_cmp(ks_cluster_t *c, const char *group, char *keybuf, size_t keylen, ks_kv_cmp_t *cmp);

/* The current lease of this broker's session (0: none, re-registering). */
int64_t ks_cluster_lease(ks_cluster_t *c);

/* --- on-demand group ownership ---------------------------------------------- */

/* Makes this broker the group's coordinator if the placement says so and
 * nobody holds its lease: creates the lease key and calls group_acquired
 * before returning.  Returns 0 if this broker owns the group (already, or
 * now); KS_ERR_NOT_COORDINATOR if another broker is placed or holds the
 * lease; KS_ERR__UNAVAILABLE without a session or when the store fails;
 * KS_ERR__TIMEOUT if the module's thread did not get to it within
 * KS_CLUSTER_ACQUIRE_TIMEOUT_MS (it still will); KS_ERR__INVALID_ARG for an
 * empty or over-long group id.  BLOCKING (waits for the `ks-cluster`
 * thread). */
ks_err_t ks_cluster_acquire_group(ks_cluster_t *c, const char *group);

/* --- placement ---------------------------------------------------------------- */

/* Rendezvous (highest random weight) placement of `key` over the broker ids
 * ids[0..n): the id with the highest score(key, id), ties to the lower id;
 * -1 if n == 0.  score(key, id) = fmix64(fnv1a64(key) ^ fmix64((uint64_t)(uint32_t)id
 * + 0x9e3779b97f4a7c15)), fnv1a64 the 64-bit FNV-1a of the key's bytes and
 * fmix64 MurmurHash3's 64-bit finaliser.  Fixed: every broker, of any
 * version, must compute the same owner from the same live set.  Keys:
 * "{topic}/{partition}" (decimal) and "group:{group}". */
int32_t ks_cluster_place(const char *key, const int32_t *ids, int n);
uint64_t ks_cluster_score(const char *key, int32_t id);

/* --- introspection (tests, metrics) ----------------------------------------- */

typedef struct ks_cluster_stats {
        int64_t lease;             /* 0: no session */
        int64_t sessions;          /* registrations so far (1 after start; +1 per re-registration) */
        int64_t last_keepalive_ms; /* configured clock (mono): when the last confirmed keepalive (or the
                                    * grant) was sent */
        int64_t passes;            /* rebalance passes completed */
        int32_t live_brokers;
        int32_t owned_partitions;
        int32_t owned_groups;
        int64_t acquired, released, lost; /* partitions + groups, since start */
} ks_cluster_stats_t;

void ks_cluster_get_stats(ks_cluster_t *c, ks_cluster_stats_t *out);

#endif
