/*
 * main.c — kafscale-broker: read configuration, start the broker, wait for
 * SIGTERM/SIGINT, shut down cleanly.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "broker/broker.h"
#include "config/config.h"
#include "util/log.h"

int main(int argc, char **argv)
{
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
                        ks_config_print_help(stdout);
                        return 0;
                }
                fprintf(stderr, "kafscale-broker: unknown argument '%s' (configuration comes from KAFSCALE_* "
                                "environment variables; see --help)\n",
                        argv[i]);
                return 2;
        }

        static ks_config_t cfg;
        char err[512];
        if (ks_config_from_env(&cfg, err, sizeof(err)) != 0) {
                fprintf(stderr, "kafscale-broker: configuration error: %s\n", err);
                return 2;
        }
        ks_log_set_level(cfg.log_level);
        ks_config_warn_unknown();

        /* Every connection is a descriptor: take what the hard limit allows,
         * and say so if KAFSCALE_MAX_CONNECTIONS cannot be reached. */
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
                if (rl.rlim_cur < rl.rlim_max) {
                        rl.rlim_cur = rl.rlim_max;
                        setrlimit(RLIMIT_NOFILE, &rl);
                        getrlimit(RLIMIT_NOFILE, &rl);
                }
                if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)cfg.max_connections + 256)
                        ks_log_warn("open_files_limit_low", "limit=%llu max_connections=%d hint=\"connections beyond "
                                                            "the limit are refused for a moment at a time; raise "
                                                            "ulimit -n or lower KAFSCALE_MAX_CONNECTIONS\"",
                                    (unsigned long long)rl.rlim_cur, cfg.max_connections);
        }

        /* Block the signals in every thread; the main thread waits for them. */
        sigset_t sigs;
        sigemptyset(&sigs);
        sigaddset(&sigs, SIGTERM);
        sigaddset(&sigs, SIGINT);
        pthread_sigmask(SIG_BLOCK, &sigs, NULL);
        signal(SIGPIPE, SIG_IGN);

        static ks_broker_t broker;
        if (ks_broker_start(&broker, &cfg) != 0) {
                ks_log_error("startup_failed", "hint=\"see the error above\"");
                return 1;
        }
        int sig = 0;
        sigwait(&sigs, &sig);
        ks_log_info("shutdown_started", "signal=%s", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        ks_broker_stop(&broker);
        ks_log_info("shutdown_complete", "status=clean");
        return 0;
}
