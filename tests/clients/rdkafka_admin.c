/*
 * rdkafka_admin: drive Kafscale's ops APIs through librdkafka's C Admin API
 * (librdkafka >= 2.0: ListConsumerGroups, DescribeConsumerGroups,
 * DeleteGroups, DescribeConfigs, AlterConfigs, CreatePartitions).
 *
 *   rdkafka_admin <bootstrap> list-groups
 *   rdkafka_admin <bootstrap> describe-group <group>
 *   rdkafka_admin <bootstrap> delete-group <group>
 *   rdkafka_admin <bootstrap> describe-config <topic>
 *   rdkafka_admin <bootstrap> alter-config <topic> <key> <value>
 *   rdkafka_admin <bootstrap> create-partitions <topic> <count>
 *
 * Output (stdout, one fact per line):
 *   list-groups        group=<id> state=<state> simple=<0|1>   (sorted by id)
 *   describe-group     group=, error=, state=, assignor=, simple=, members=,
 *                      coordinator=<id>@<host>:<port>, then per member
 *                      member client_id=<c> host=<h> consumer_id=<m>
 *                             assignment=<topic>[<p>,...] ...
 *   delete-group       error=<name|NONE>
 *   describe-config    error=<name|NONE>, then <name>=<value> per entry
 *   alter-config       error=<name|NONE>
 *   create-partitions  error=<name|NONE>
 * A non-NONE per-object error is followed by message=<text> (the broker's, or
 * librdkafka's description of the code). Broker error codes are results
 * (exit 0); a failure of the admin call itself -- a request-level error or a
 * local librdkafka code (_TIMED_OUT, _TRANSPORT, ...) -- is printed on
 * stderr and exits 1; bad usage exits 2.
 *
 * Built by tests/integration/test_rdkafka_admin.py:
 *   gcc -std=c11 -Wall -Wextra -Werror -O1 -o rdkafka_admin rdkafka_admin.c \
 *       $(pkg-config --cflags --libs rdkafka)
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#define OP_TIMEOUT_MS 10000
/* How long past the request timeout to wait for librdkafka's own result. */
#define POLL_SLACK_MS 5000

static const char *err_name(rd_kafka_resp_err_t err) {
        return err == RD_KAFKA_RESP_ERR_NO_ERROR ? "NONE" : rd_kafka_err2name(err);
}

/* Print a per-object result: error=<name|NONE> [message=<text>]; returns 0.
 * A local (negative) code is librdkafka's own failure (e.g. _TIMED_OUT
 * looking up the coordinator, _TRANSPORT): printed on stderr, returns 1. */
static int print_error(const char *what, rd_kafka_resp_err_t err, const char *msg) {
        if (err < RD_KAFKA_RESP_ERR_NO_ERROR) {
                fprintf(stderr, "%s failed: %s: %s\n", what, rd_kafka_err2name(err),
                        msg != NULL && *msg != '\0' ? msg : rd_kafka_err2str(err));
                return 1;
        }
        printf("error=%s\n", err_name(err));
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR && msg != NULL && *msg != '\0')
                printf("message=%s\n", msg);
        return 0;
}

static long long now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Options for one admin call: request timeout for every API, operation
 * timeout where librdkafka accepts it. NULL (after a message) on failure. */
static rd_kafka_AdminOptions_t *make_options(rd_kafka_t *rk, rd_kafka_admin_op_t op) {
        char errstr[512];
        rd_kafka_AdminOptions_t *opts = rd_kafka_AdminOptions_new(rk, op);
        if (opts == NULL) {
                fprintf(stderr, "rd_kafka_AdminOptions_new(%d) failed\n", (int)op);
                return NULL;
        }
        if (rd_kafka_AdminOptions_set_request_timeout(opts, OP_TIMEOUT_MS, errstr, sizeof errstr) !=
            RD_KAFKA_RESP_ERR_NO_ERROR) {
                fprintf(stderr, "set_request_timeout: %s\n", errstr);
                rd_kafka_AdminOptions_destroy(opts);
                return NULL;
        }
        if (op == RD_KAFKA_ADMIN_OP_CREATEPARTITIONS &&
            rd_kafka_AdminOptions_set_operation_timeout(opts, OP_TIMEOUT_MS, errstr, sizeof errstr) !=
                RD_KAFKA_RESP_ERR_NO_ERROR) {
                fprintf(stderr, "set_operation_timeout: %s\n", errstr);
                rd_kafka_AdminOptions_destroy(opts);
                return NULL;
        }
        return opts;
}

/* Wait for the result event of type `type` on `q`. Returns it (caller
 * destroys it), or NULL after printing why: no result in time, or a
 * request-level error (timeout, transport, ...). Other events are dropped. */
static rd_kafka_event_t *wait_result(rd_kafka_queue_t *q, rd_kafka_event_type_t type,
                                     const char *what) {
        long long deadline = now_ms() + OP_TIMEOUT_MS + POLL_SLACK_MS;
        for (;;) {
                long long left = deadline - now_ms();
                if (left <= 0) {
                        fprintf(stderr, "%s: no result within %d ms\n", what,
                                OP_TIMEOUT_MS + POLL_SLACK_MS);
                        return NULL;
                }
                rd_kafka_event_t *ev = rd_kafka_queue_poll(q, left > 1000 ? 1000 : (int)left);
                if (ev == NULL)
                        continue;
                if (rd_kafka_event_type(ev) != type) {
                        fprintf(stderr, "%s: ignoring event %s\n", what, rd_kafka_event_name(ev));
                        rd_kafka_event_destroy(ev);
                        continue;
                }
                rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
                if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                        const char *s = rd_kafka_event_error_string(ev);
                        fprintf(stderr, "%s failed: %s: %s\n", what, rd_kafka_err2name(err),
                                s != NULL ? s : rd_kafka_err2str(err));
                        rd_kafka_event_destroy(ev);
                        return NULL;
                }
                return ev;
        }
}

/* ---- list-groups ------------------------------------------------------ */

static int cmp_listing(const void *a, const void *b) {
        const rd_kafka_ConsumerGroupListing_t *x = *(const rd_kafka_ConsumerGroupListing_t *const *)a;
        const rd_kafka_ConsumerGroupListing_t *y = *(const rd_kafka_ConsumerGroupListing_t *const *)b;
        return strcmp(rd_kafka_ConsumerGroupListing_group_id(x),
                      rd_kafka_ConsumerGroupListing_group_id(y));
}

static int cmd_list_groups(rd_kafka_t *rk, rd_kafka_queue_t *q) {
        rd_kafka_AdminOptions_t *opts = make_options(rk, RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPS);
        if (opts == NULL)
                return 1;
        rd_kafka_ListConsumerGroups(rk, opts, q);
        rd_kafka_AdminOptions_destroy(opts);

        rd_kafka_event_t *ev = wait_result(q, RD_KAFKA_EVENT_LISTCONSUMERGROUPS_RESULT,
                                           "ListConsumerGroups");
        if (ev == NULL)
                return 1;
        const rd_kafka_ListConsumerGroups_result_t *res = rd_kafka_event_ListConsumerGroups_result(ev);
        int rc = 0;

        /* Errors here are per broker (its ListGroups request failed). */
        size_t nerr = 0;
        const rd_kafka_error_t **errs = rd_kafka_ListConsumerGroups_result_errors(res, &nerr);
        for (size_t i = 0; i < nerr; i++) {
                fprintf(stderr, "ListConsumerGroups: %s: %s\n", rd_kafka_error_name(errs[i]),
                        rd_kafka_error_string(errs[i]));
                rc = 1;
        }

        size_t n = 0;
        const rd_kafka_ConsumerGroupListing_t **groups = rd_kafka_ListConsumerGroups_result_valid(res, &n);
        if (n > 0) {
                const rd_kafka_ConsumerGroupListing_t **sorted = malloc(n * sizeof *sorted);
                if (sorted == NULL) {
                        fprintf(stderr, "out of memory\n");
                        rd_kafka_event_destroy(ev);
                        return 1;
                }
                memcpy(sorted, groups, n * sizeof *sorted);
                qsort(sorted, n, sizeof *sorted, cmp_listing);
                for (size_t i = 0; i < n; i++)
                        printf("group=%s state=%s simple=%d\n",
                               rd_kafka_ConsumerGroupListing_group_id(sorted[i]),
                               rd_kafka_consumer_group_state_name(
                                   rd_kafka_ConsumerGroupListing_state(sorted[i])),
                               rd_kafka_ConsumerGroupListing_is_simple_consumer_group(sorted[i]));
                free(sorted);
        }
        rd_kafka_event_destroy(ev);
        return rc;
}

/* ---- describe-group --------------------------------------------------- */

/* "t1[0,1,2] t2[0]" (sorted) for an assignment; "" when empty. */
static void print_assignment(const rd_kafka_topic_partition_list_t *parts) {
        if (parts == NULL || parts->cnt == 0)
                return;
        rd_kafka_topic_partition_list_t *copy = rd_kafka_topic_partition_list_copy(parts);
        rd_kafka_topic_partition_list_sort(copy, NULL, NULL);
        for (int i = 0; i < copy->cnt; i++) {
                const rd_kafka_topic_partition_t *tp = &copy->elems[i];
                int same_topic = i > 0 && strcmp(copy->elems[i - 1].topic, tp->topic) == 0;
                if (same_topic)
                        printf(",%d", (int)tp->partition);
                else
                        printf("%s%s[%d", i > 0 ? "] " : "", tp->topic, (int)tp->partition);
        }
        printf("]");
        rd_kafka_topic_partition_list_destroy(copy);
}

static int cmd_describe_group(rd_kafka_t *rk, rd_kafka_queue_t *q, const char *group) {
        rd_kafka_AdminOptions_t *opts = make_options(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS);
        if (opts == NULL)
                return 1;
        const char *groups[1] = {group};
        rd_kafka_DescribeConsumerGroups(rk, groups, 1, opts, q);
        rd_kafka_AdminOptions_destroy(opts);

        rd_kafka_event_t *ev = wait_result(q, RD_KAFKA_EVENT_DESCRIBECONSUMERGROUPS_RESULT,
                                           "DescribeConsumerGroups");
        if (ev == NULL)
                return 1;
        size_t n = 0;
        const rd_kafka_ConsumerGroupDescription_t **descs = rd_kafka_DescribeConsumerGroups_result_groups(
            rd_kafka_event_DescribeConsumerGroups_result(ev), &n);
        if (n != 1) {
                fprintf(stderr, "DescribeConsumerGroups: %zu results for 1 group\n", n);
                rd_kafka_event_destroy(ev);
                return 1;
        }
        const rd_kafka_ConsumerGroupDescription_t *d = descs[0];
        const rd_kafka_error_t *gerr = rd_kafka_ConsumerGroupDescription_error(d);
        const char *assignor = rd_kafka_ConsumerGroupDescription_partition_assignor(d);
        rd_kafka_resp_err_t gcode = gerr != NULL ? rd_kafka_error_code(gerr) : RD_KAFKA_RESP_ERR_NO_ERROR;
        if (gcode < RD_KAFKA_RESP_ERR_NO_ERROR) {
                int rc = print_error("DescribeConsumerGroups", gcode, rd_kafka_error_string(gerr));
                rd_kafka_event_destroy(ev);
                return rc;
        }
        printf("group=%s\n", rd_kafka_ConsumerGroupDescription_group_id(d));
        print_error("DescribeConsumerGroups", gcode, gerr != NULL ? rd_kafka_error_string(gerr) : NULL);
        printf("state=%s\n",
               rd_kafka_consumer_group_state_name(rd_kafka_ConsumerGroupDescription_state(d)));
        printf("assignor=%s\n", assignor != NULL ? assignor : "");
        printf("simple=%d\n", rd_kafka_ConsumerGroupDescription_is_simple_consumer_group(d));
        const rd_kafka_Node_t *coord = rd_kafka_ConsumerGroupDescription_coordinator(d);
        if (coord != NULL)
                printf("coordinator=%d@%s:%u\n", rd_kafka_Node_id(coord),
                       rd_kafka_Node_host(coord) != NULL ? rd_kafka_Node_host(coord) : "",
                       (unsigned)rd_kafka_Node_port(coord));
        size_t members = rd_kafka_ConsumerGroupDescription_member_count(d);
        printf("members=%zu\n", members);
        for (size_t i = 0; i < members; i++) {
                const rd_kafka_MemberDescription_t *m = rd_kafka_ConsumerGroupDescription_member(d, i);
                if (m == NULL)
                        continue;
                const rd_kafka_MemberAssignment_t *a = rd_kafka_MemberDescription_assignment(m);
                const char *client_id = rd_kafka_MemberDescription_client_id(m);
                const char *host = rd_kafka_MemberDescription_host(m);
                const char *consumer_id = rd_kafka_MemberDescription_consumer_id(m);
                printf("member client_id=%s host=%s consumer_id=%s assignment=",
                       client_id != NULL ? client_id : "", host != NULL ? host : "",
                       consumer_id != NULL ? consumer_id : "");
                print_assignment(a != NULL ? rd_kafka_MemberAssignment_partitions(a) : NULL);
                printf("\n");
        }
        rd_kafka_event_destroy(ev);
        return 0;
}

/* ---- delete-group ----------------------------------------------------- */

static int cmd_delete_group(rd_kafka_t *rk, rd_kafka_queue_t *q, const char *group) {
        rd_kafka_AdminOptions_t *opts = make_options(rk, RD_KAFKA_ADMIN_OP_DELETEGROUPS);
        if (opts == NULL)
                return 1;
        rd_kafka_DeleteGroup_t *del[1] = {rd_kafka_DeleteGroup_new(group)};
        rd_kafka_DeleteGroups(rk, del, 1, opts, q);
        rd_kafka_DeleteGroup_destroy_array(del, 1);
        rd_kafka_AdminOptions_destroy(opts);

        rd_kafka_event_t *ev = wait_result(q, RD_KAFKA_EVENT_DELETEGROUPS_RESULT, "DeleteGroups");
        if (ev == NULL)
                return 1;
        size_t n = 0;
        const rd_kafka_group_result_t **res =
            rd_kafka_DeleteGroups_result_groups(rd_kafka_event_DeleteGroups_result(ev), &n);
        if (n != 1) {
                fprintf(stderr, "DeleteGroups: %zu results for 1 group\n", n);
                rd_kafka_event_destroy(ev);
                return 1;
        }
        const rd_kafka_error_t *err = rd_kafka_group_result_error(res[0]);
        int rc = print_error("DeleteGroups",
                             err != NULL ? rd_kafka_error_code(err) : RD_KAFKA_RESP_ERR_NO_ERROR,
                             err != NULL ? rd_kafka_error_string(err) : NULL);
        rd_kafka_event_destroy(ev);
        return rc;
}

/* ---- describe-config / alter-config ----------------------------------- */

static int cmd_describe_config(rd_kafka_t *rk, rd_kafka_queue_t *q, const char *topic) {
        rd_kafka_AdminOptions_t *opts = make_options(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
        if (opts == NULL)
                return 1;
        rd_kafka_ConfigResource_t *res[1] = {rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic)};
        rd_kafka_DescribeConfigs(rk, res, 1, opts, q);
        rd_kafka_ConfigResource_destroy_array(res, 1);
        rd_kafka_AdminOptions_destroy(opts);

        rd_kafka_event_t *ev = wait_result(q, RD_KAFKA_EVENT_DESCRIBECONFIGS_RESULT, "DescribeConfigs");
        if (ev == NULL)
                return 1;
        size_t n = 0;
        const rd_kafka_ConfigResource_t **rs =
            rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev), &n);
        if (n != 1) {
                fprintf(stderr, "DescribeConfigs: %zu results for 1 resource\n", n);
                rd_kafka_event_destroy(ev);
                return 1;
        }
        int rc = print_error("DescribeConfigs", rd_kafka_ConfigResource_error(rs[0]),
                             rd_kafka_ConfigResource_error_string(rs[0]));
        size_t m = 0;
        const rd_kafka_ConfigEntry_t **entries = rc == 0 ? rd_kafka_ConfigResource_configs(rs[0], &m) : NULL;
        for (size_t i = 0; i < m; i++) {
                const char *value = rd_kafka_ConfigEntry_value(entries[i]);
                printf("%s=%s\n", rd_kafka_ConfigEntry_name(entries[i]), value != NULL ? value : "");
        }
        rd_kafka_event_destroy(ev);
        return rc;
}

static int cmd_alter_config(rd_kafka_t *rk, rd_kafka_queue_t *q, const char *topic, const char *key,
                            const char *value) {
        rd_kafka_ConfigResource_t *res[1] = {rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic)};
        if (rd_kafka_ConfigResource_set_config(res[0], key, value) != RD_KAFKA_RESP_ERR_NO_ERROR) {
                fprintf(stderr, "invalid config %s=%s\n", key, value);
                rd_kafka_ConfigResource_destroy_array(res, 1);
                return 2;
        }
        rd_kafka_AdminOptions_t *opts = make_options(rk, RD_KAFKA_ADMIN_OP_ALTERCONFIGS);
        if (opts == NULL) {
                rd_kafka_ConfigResource_destroy_array(res, 1);
                return 1;
        }
        rd_kafka_AlterConfigs(rk, res, 1, opts, q);
        rd_kafka_ConfigResource_destroy_array(res, 1);
        rd_kafka_AdminOptions_destroy(opts);

        rd_kafka_event_t *ev = wait_result(q, RD_KAFKA_EVENT_ALTERCONFIGS_RESULT, "AlterConfigs");
        if (ev == NULL)
                return 1;
        size_t n = 0;
        const rd_kafka_ConfigResource_t **rs =
            rd_kafka_AlterConfigs_result_resources(rd_kafka_event_AlterConfigs_result(ev), &n);
        if (n != 1) {
                fprintf(stderr, "AlterConfigs: %zu results for 1 resource\n", n);
                rd_kafka_event_destroy(ev);
                return 1;
        }
        int rc = print_error("AlterConfigs", rd_kafka_ConfigResource_error(rs[0]),
                             rd_kafka_ConfigResource_error_string(rs[0]));
        rd_kafka_event_destroy(ev);
        return rc;
}

/* ---- create-partitions ------------------------------------------------ */

static int cmd_create_partitions(rd_kafka_t *rk, rd_kafka_queue_t *q, const char *topic,
                                 const char *count_str) {
        char errstr[512];
        char *end = NULL;
        errno = 0;
        unsigned long count = strtoul(count_str, &end, 10);
        if (errno != 0 || end == count_str || *end != '\0' || count == 0 || count > 1000000) {
                fprintf(stderr, "bad partition count '%s'\n", count_str);
                return 2;
        }
        rd_kafka_NewPartitions_t *np[1] = {
            rd_kafka_NewPartitions_new(topic, (size_t)count, errstr, sizeof errstr)};
        if (np[0] == NULL) {
                fprintf(stderr, "NewPartitions: %s\n", errstr);
                return 2;
        }
        rd_kafka_AdminOptions_t *opts = make_options(rk, RD_KAFKA_ADMIN_OP_CREATEPARTITIONS);
        if (opts == NULL) {
                rd_kafka_NewPartitions_destroy_array(np, 1);
                return 1;
        }
        rd_kafka_CreatePartitions(rk, np, 1, opts, q);
        rd_kafka_NewPartitions_destroy_array(np, 1);
        rd_kafka_AdminOptions_destroy(opts);

        rd_kafka_event_t *ev = wait_result(q, RD_KAFKA_EVENT_CREATEPARTITIONS_RESULT, "CreatePartitions");
        if (ev == NULL)
                return 1;
        size_t n = 0;
        const rd_kafka_topic_result_t **ts =
            rd_kafka_CreatePartitions_result_topics(rd_kafka_event_CreatePartitions_result(ev), &n);
        if (n != 1) {
                fprintf(stderr, "CreatePartitions: %zu results for 1 topic\n", n);
                rd_kafka_event_destroy(ev);
                return 1;
        }
        int rc = print_error("CreatePartitions", rd_kafka_topic_result_error(ts[0]),
                             rd_kafka_topic_result_error_string(ts[0]));
        rd_kafka_event_destroy(ev);
        return rc;
}

/* ---- main ------------------------------------------------------------- */

static int usage(const char *prog) {
        fprintf(stderr,
                "usage: %s <bootstrap> list-groups\n"
                "       %s <bootstrap> describe-group <group>\n"
                "       %s <bootstrap> delete-group <group>\n"
                "       %s <bootstrap> describe-config <topic>\n"
                "       %s <bootstrap> alter-config <topic> <key> <value>\n"
                "       %s <bootstrap> create-partitions <topic> <count>\n",
                prog, prog, prog, prog, prog, prog);
        return 2;
}

int main(int argc, char **argv) {
        if (argc < 3)
                return usage(argv[0]);
        const char *bootstrap = argv[1];
        const char *cmd = argv[2];
        int nargs = argc - 3;
        int want;
        if (strcmp(cmd, "list-groups") == 0)
                want = 0;
        else if (strcmp(cmd, "describe-group") == 0 || strcmp(cmd, "delete-group") == 0 ||
                 strcmp(cmd, "describe-config") == 0)
                want = 1;
        else if (strcmp(cmd, "create-partitions") == 0)
                want = 2;
        else if (strcmp(cmd, "alter-config") == 0)
                want = 3;
        else
                return usage(argv[0]);
        if (nargs != want)
                return usage(argv[0]);

        char errstr[512];
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr, sizeof errstr) !=
                RD_KAFKA_CONF_OK ||
            rd_kafka_conf_set(conf, "client.id", "kafscale-rdkafka-admin", errstr, sizeof errstr) !=
                RD_KAFKA_CONF_OK) {
                fprintf(stderr, "config: %s\n", errstr);
                rd_kafka_conf_destroy(conf);
                return 2;
        }
        /* rd_kafka_new takes ownership of conf only on success. */
        rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
        if (rk == NULL) {
                fprintf(stderr, "rd_kafka_new: %s\n", errstr);
                rd_kafka_conf_destroy(conf);
                return 1;
        }
        rd_kafka_queue_t *q = rd_kafka_queue_new(rk);

        int rc;
        char **a = argv + 3;
        if (strcmp(cmd, "list-groups") == 0)
                rc = cmd_list_groups(rk, q);
        else if (strcmp(cmd, "describe-group") == 0)
                rc = cmd_describe_group(rk, q, a[0]);
        else if (strcmp(cmd, "delete-group") == 0)
                rc = cmd_delete_group(rk, q, a[0]);
        else if (strcmp(cmd, "describe-config") == 0)
                rc = cmd_describe_config(rk, q, a[0]);
        else if (strcmp(cmd, "alter-config") == 0)
                rc = cmd_alter_config(rk, q, a[0], a[1], a[2]);
        else
                rc = cmd_create_partitions(rk, q, a[0], a[1]);

        fflush(stdout);
        rd_kafka_queue_destroy(q);
        rd_kafka_destroy(rk);
        return rc;
}
