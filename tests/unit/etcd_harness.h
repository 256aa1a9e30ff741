/*
 * etcd_harness.h — real etcd servers for the unit tests (etcd_harness.c).
 *
 * The shared instance: one single-node etcd for the whole unit-test process,
 * started on first use on free loopback ports in a temporary data directory,
 * killed (SIGKILL) and removed at exit.  With KAFSCALE_TEST_ETCD_ENDPOINTS
 * set, that etcd is used instead (it must have authentication disabled; the
 * tests delete its whole keyspace).  Tests share it one after the other and
 * wipe its keyspace first (ks_test_etcd_wipe).
 *
 * Private instances (ks_test_etcd_start): for tests that kill, restart or
 * reconfigure etcd (authentication) — several members make a cluster.
 *
 * When the etcd binary is not on PATH every function here reports a test
 * failure telling to run scripts/install-deps.sh --test (no silent skip).
 * Functions run on the test thread.
 */
#ifndef KS_TESTS_UNIT_ETCD_HARNESS_H
#define KS_TESTS_UNIT_ETCD_HARNESS_H

#include <stdbool.h>
#include <sys/types.h>

#include "meta/kv.h"

/* One etcd member. */
typedef struct ks_test_etcd {
        pid_t pid; /* 0: not running */
        int client_port, peer_port;
        char dir[256];     /* temp dir: data/ and etcd.log */
        char endpoint[64]; /* "http://127.0.0.1:<client_port>" */
        char name[16];
        char cluster[512]; /* --initial-cluster */
} ks_test_etcd_t;

/* Endpoint list of the shared instance, or NULL after reporting a failure. */
const char *ks_test_etcd_endpoints(void);

/* Opens a store on the shared instance (NULL after reporting a failure). */
ks_kv_t *ks_test_etcd_open(void);

/* Deletes the shared instance's whole keyspace; false after reporting. */
bool ks_test_etcd_wipe(void);

/* Starts n (1..5) fresh members forming one cluster on free ports, each in
 * its own temp dir; false (after reporting, everything stopped) on failure.
 * Members are stopped at exit if the test does not. */
bool ks_test_etcd_start(ks_test_etcd_t *members, int n);

/* SIGKILL and reap one member; its data dir stays. */
void ks_test_etcd_kill(ks_test_etcd_t *m);

/* Starts a killed member again on the same ports and data (waits until it
 * answers /health, or until it has a data dir and runs, for a member whose
 * cluster has no quorum yet: wait_healthy = false). */
bool ks_test_etcd_restart(ks_test_etcd_t *m, bool wait_healthy);

/* Kills every given member and removes its dir. */
void ks_test_etcd_stop(ks_test_etcd_t *members, int n);

/* Runs `etcdctl --endpoints <m> <args...>` (args NULL-terminated); its exit
 * status (0 = success), output discarded. */
int ks_test_etcdctl(const ks_test_etcd_t *m, const char *const *args);

/* Comma-joined endpoints of n members into buf. */
const char *ks_test_etcd_join(const ks_test_etcd_t *members, int n, char *buf, size_t len);

#endif
