/*
 * peer.c — the peer broker of the benchmarks: librdkafka's in-process mock
 * cluster (rdkafka_mock.h) with one broker, wrapped as a process so that the
 * load generator and the harness treat it like any other broker.
 *
 *   peer [-p PARTITIONS] TOPIC...
 *
 * Creates each TOPIC with PARTITIONS partitions (default 32) through the
 * mock API, prints the bootstrap address ("127.0.0.1:PORT") on one line of
 * stdout, then runs until stdin reaches end-of-file or SIGTERM/SIGINT.
 *
 * Limits of the mock that matter for benchmarks (librdkafka 2.0.2): records
 * live in memory only, each partition keeps only its last ~5 MiB (older
 * message sets are dropped), a Fetch returns at most one message set per
 * partition, and an empty Fetch is held for its full MaxWait.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

static void usage(void)
{
        fprintf(stderr, "usage: peer [-p PARTITIONS] TOPIC...\n");
        exit(2);
}

int main(int argc, char **argv)
{
        int partitions = 32;
        int opt;
        while ((opt = getopt(argc, argv, "p:h")) != -1) {
                switch (opt) {
                case 'p':
                        partitions = atoi(optarg);
                        if (partitions < 1)
                                usage();
                        break;
                default:
                        usage();
                }
        }
        if (optind >= argc)
                usage();

        /* Block the stop signals before librdkafka starts its threads, so
         * they are delivered only through the signalfd below. */
        sigset_t sigs;
        sigemptyset(&sigs);
        sigaddset(&sigs, SIGTERM);
        sigaddset(&sigs, SIGINT);
        sigprocmask(SIG_BLOCK, &sigs, NULL);
        signal(SIGPIPE, SIG_IGN);
        int sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
        if (sfd < 0) {
                perror("peer: signalfd");
                return 1;
        }

        /* The mock cluster needs a client handle to live in; this one never
         * connects anywhere (no bootstrap.servers). */
        char errstr[512];
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        if (rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
                fprintf(stderr, "peer: %s\n", errstr);
                return 1;
        }
        rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
        if (!rk) {
                fprintf(stderr, "peer: rd_kafka_new: %s\n", errstr);
                return 1;
        }
        rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, 1);
        if (!mc) {
                fprintf(stderr, "peer: rd_kafka_mock_cluster_new failed\n");
                rd_kafka_destroy(rk);
                return 1;
        }
        for (int i = optind; i < argc; i++) {
                rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mc, argv[i], partitions, 1);
                if (err) {
                        fprintf(stderr, "peer: creating topic %s: %s\n", argv[i], rd_kafka_err2str(err));
                        rd_kafka_mock_cluster_destroy(mc);
                        rd_kafka_destroy(rk);
                        return 1;
                }
        }
        printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc));
        fflush(stdout);

        struct pollfd fds[2] = {{.fd = sfd, .events = POLLIN}, {.fd = STDIN_FILENO, .events = POLLIN}};
        const char *why = "stdin closed";
        for (;;) {
                int n = poll(fds, 2, -1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        perror("peer: poll");
                        break;
                }
                if (fds[0].revents) {
                        struct signalfd_siginfo si;
                        if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                                why = si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT";
                                break;
                        }
                }
                if (fds[1].revents) {
                        char buf[4096];
                        ssize_t r = read(STDIN_FILENO, buf, sizeof(buf));
                        if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN))
                                break;
                }
        }
        fprintf(stderr, "peer: stopping (%s)\n", why);
        rd_kafka_mock_cluster_destroy(mc);
        rd_kafka_destroy(rk);
        return 0;
}
