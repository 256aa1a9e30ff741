/*
 * test_group_store.c — the group coordinator's records in the metadata
 * store: one record read back by ks_meta_group_get, and every write of
 * group state (record put/delete, offset commit, offset deletes) refused
 * when its fence compare no longer holds — on every backend (etcd: the
 * harness's shared instance, its keyspace deleted first).
 *
 * The fence is built as the cluster module builds it
 * (ks_cluster_group_fence_cmp): CREATE(/kafscale/group-leases/{g}) == the
 * revision that created the lease key.  Deleting the key and creating it
 * again (another coordinator's term) makes the old compare fail.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "etcd_harness.h"
#include "meta/metadata.h"
#include "meta/offsets.h"
#include "test.h"

static const char *const backends[] = { "memory", "sqlite", "etcd" };

#define LEASE_KEY "/kafscale/group-leases/g"

typedef struct store {
        char dir[64];
        ks_kv_t *kv;
        ks_meta_t *meta;
} store_t;

static bool store_open(store_t *st, const char *name)
{
        memset(st, 0, sizeof(*st));
        if (!strcmp(name, "memory")) {
                if (ks_kv_memory_new(NULL, &st->kv) != 0)
                        return false;
        } else if (!strcmp(name, "etcd")) {
                if (!ks_test_etcd_wipe() || !(st->kv = ks_test_etcd_open()))
                        return false;
        } else {
                snprintf(st->dir, sizeof(st->dir), "/tmp/ks-group-store-XXXXXX");
                if (!mkdtemp(st->dir))
                        return false;
                char path[128];
                snprintf(path, sizeof(path), "%s/metadata.db", st->dir);
                if (ks_kv_sqlite_open(path, NULL, &st->kv) != 0)
                        return false;
        }
        return ks_meta_open(st->kv, &st->meta) == 0;
}

static void store_close(store_t *st)
{
        ks_meta_close(st->meta);
        ks_kv_destroy(st->kv);
        if (st->dir[0]) {
                char cmd[160];
                snprintf(cmd, sizeof(cmd), "rm -rf '%s'", st->dir);
                if (system(cmd) != 0)
                        fprintf(stderr, "cannot remove %s\n", st->dir);
        }
}

/* Creates the lease key afresh (a new term) and returns the fence of that
 * term. */
static ks_kv_cmp_t new_term(ks_kv_t *kv)
{
        CHECK_EQ_INT(ks_kv_delete_range(kv, LEASE_KEY, strlen(LEASE_KEY), NULL, 0, NULL, NULL), 0);
        int64_t rev = 0;
        CHECK_EQ_INT(ks_kv_put(kv, LEASE_KEY, strlen(LEASE_KEY), "1", 1, 0, &rev), 0);
        return (ks_kv_cmp_t){ .key = LEASE_KEY, .key_len = strlen(LEASE_KEY), .target = KS_KV_CMP_CREATE,
                              .op = KS_KV_EQUAL, .number = rev };
}

static bool record_is(ks_meta_t *meta, const char *want)
{
        uint8_t *buf = NULL;
        size_t len = 0;
        ks_err_t err = ks_meta_group_get(meta, "g", &buf, &len);
        bool same = want ? !err && len == strlen(want) && !memcmp(buf, want, len) : err == KS_ERR__NOT_FOUND;
        free(buf);
        return same;
}

static int64_t committed(ks_kv_t *kv, int32_t partition)
{
        ks_offset_list_t list;
        int64_t off = -2;
        if (ks_offsets_fetch(kv, "g", NULL, &list) == 0) {
                const ks_offset_entry_t *e = ks_offset_list_find(&list, ks_str_c("t"), partition);
                off = e ? e->offset : -1;
        }
        ks_offset_list_free(&list);
        return off;
}

static ks_offset_commit_t at(int32_t partition, int64_t offset)
{
        return (ks_offset_commit_t){ .topic = ks_str_c("t"), .partition = partition, .offset = offset,
                                     .leader_epoch = -1, .metadata = ks_str_c("") };
}

static void check_fenced_writes(const char *name)
{
        store_t st;
        REQUIRE(store_open(&st, name));
        ks_kv_cmp_t old = new_term(st.kv);

        /* The term holds: every write goes through. */
        CHECK_EQ_INT(ks_meta_group_put(st.meta, "g", (const uint8_t *)"v1", 2, &old), 0);
        CHECK(record_is(st.meta, "v1"));
        ks_offset_commit_t c1[] = { at(0, 10), at(1, 11) };
        CHECK_EQ_INT(ks_offsets_commit(st.kv, "g", c1, 2, &old), 0);
        CHECK_EQ_INT(committed(st.kv, 0), 10);

        /* Another term began: the old fence refuses everything, and
         * nothing changes. */
        ks_kv_cmp_t cur = new_term(st.kv);
        CHECK(cur.number != old.number);
        CHECK_EQ_INT(ks_meta_group_put(st.meta, "g", (const uint8_t *)"v2", 2, &old), KS_ERR__CONFLICT);
        CHECK(record_is(st.meta, "v1"));
        ks_offset_commit_t c2[] = { at(0, 20) };
        CHECK_EQ_INT(ks_offsets_commit(st.kv, "g", c2, 1, &old), KS_ERR__CONFLICT);
        CHECK_EQ_INT(committed(st.kv, 0), 10);
        CHECK_EQ_INT(ks_offsets_delete(st.kv, "g", "t", 1, &old), KS_ERR__CONFLICT);
        CHECK_EQ_INT(committed(st.kv, 1), 11);
        CHECK_EQ_INT(ks_offsets_delete_group(st.kv, "g", &old), KS_ERR__CONFLICT);
        CHECK_EQ_INT(committed(st.kv, 0), 10);
        CHECK_EQ_INT(ks_meta_group_delete(st.meta, "g", &old), KS_ERR__CONFLICT);
        CHECK(record_is(st.meta, "v1"));

        /* The current term's fence holds. */
        CHECK_EQ_INT(ks_offsets_commit(st.kv, "g", c2, 1, &cur), 0);
        CHECK_EQ_INT(committed(st.kv, 0), 20);
        CHECK_EQ_INT(ks_offsets_delete(st.kv, "g", "t", 1, &cur), 0);
        CHECK_EQ_INT(committed(st.kv, 1), -1);
        CHECK_EQ_INT(ks_offsets_delete_group(st.kv, "g", &cur), 0);
        CHECK_EQ_INT(committed(st.kv, 0), -1);
        CHECK_EQ_INT(ks_meta_group_delete(st.meta, "g", &cur), 0);
        CHECK(record_is(st.meta, NULL));

        /* The lease key gone (expiry): nothing passes. */
        CHECK_EQ_INT(ks_kv_delete_range(st.kv, LEASE_KEY, strlen(LEASE_KEY), NULL, 0, NULL, NULL), 0);
        CHECK_EQ_INT(ks_meta_group_put(st.meta, "g", (const uint8_t *)"v3", 2, &cur), KS_ERR__CONFLICT);
        CHECK(record_is(st.meta, NULL));
        CHECK_EQ_INT(ks_offsets_commit(st.kv, "g", c2, 1, &cur), KS_ERR__CONFLICT);
        CHECK_EQ_INT(committed(st.kv, 0), -1);
        store_close(&st);
}

TEST(group_store_fenced_writes_memory)
{
        check_fenced_writes(backends[0]);
}

TEST(group_store_fenced_writes_sqlite)
{
        check_fenced_writes(backends[1]);
}

TEST(group_store_fenced_writes_etcd)
{
        check_fenced_writes(backends[2]);
}

TEST(group_store_get_one_record)
{
        store_t st;
        REQUIRE(store_open(&st, "memory"));
        uint8_t *buf = (uint8_t *)"x";
        size_t len = 7;
        CHECK_EQ_INT(ks_meta_group_get(st.meta, "g", &buf, &len), KS_ERR__NOT_FOUND);
        CHECK(buf == NULL && len == 0);
        CHECK_EQ_INT(ks_meta_group_put(st.meta, "g", (const uint8_t *)"abc", 3, NULL), 0);
        CHECK_EQ_INT(ks_meta_group_put(st.meta, "g2", (const uint8_t *)"other", 5, NULL), 0);
        CHECK_EQ_INT(ks_meta_group_put(st.meta, "g", (const uint8_t *)"", 0, NULL), 0); /* empty record */
        CHECK_EQ_INT(ks_meta_group_get(st.meta, "g", &buf, &len), 0);
        CHECK(buf != NULL);
        CHECK_EQ_INT(len, 0);
        free(buf);
        CHECK_EQ_INT(ks_meta_group_get(st.meta, "g2", &buf, &len), 0);
        CHECK_EQ_MEM(buf, len, "other", 5);
        free(buf);
        /* Ids that cannot be one key segment. */
        CHECK_EQ_INT(ks_meta_group_get(st.meta, "", &buf, &len), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_meta_group_get(st.meta, "a/b", &buf, &len), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_meta_group_get(st.meta, NULL, &buf, &len), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_meta_group_put(st.meta, "a/b", (const uint8_t *)"x", 1, NULL), KS_ERR__INVALID_ARG);
        CHECK_EQ_INT(ks_meta_group_delete(st.meta, "", NULL), KS_ERR__INVALID_ARG);
        char longid[500];
        memset(longid, 'a', sizeof(longid) - 1);
        longid[sizeof(longid) - 1] = '\0';
        CHECK_EQ_INT(ks_meta_group_get(st.meta, longid, &buf, &len), KS_ERR__INVALID_ARG);
        store_close(&st);
}
