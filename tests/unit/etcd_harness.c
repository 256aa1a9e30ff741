/*
 * etcd_harness.c — starts and stops real etcd servers for the unit tests
 * (see etcd_harness.h).
 *
 * Processes: each member is a child (fork + execv) that dies with the test
 * process (PR_SET_PDEATHSIG) and whose output goes to <dir>/etcd.log.  Every
 * member started is recorded in `procs`, so the atexit handler kills and
 * removes whatever a test left behind (a test that fails half-way returns
 * early).  Ports come from bind(0) on 127.0.0.1; a start that loses the race
 * for one is retried on new ports.
 */
#include "etcd_harness.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"
#include "util/log.h"

#define HARNESS_MAX_PROCS 16
#define HARNESS_START_TRIES 3
#define HARNESS_HEALTH_MS 20000

static const char install_hint[] = "run scripts/install-deps.sh --test (it installs etcd-server and etcd-client)";

/* Every member started, for the exit handler. */
static struct {
        pid_t pid;
        char dir[256];
        bool used;
} procs[HARNESS_MAX_PROCS];
static bool atexit_set;

static ks_test_etcd_t shared;
static int shared_state; /* 0 not started, 1 running, -1 failed */
static char shared_eps[1024];
static char etcd_bin[512], etcdctl_bin[512];

static int64_t now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
}

/* Full path of `name` on PATH into out; false if absent. */
static bool find_on_path(const char *name, char *out, size_t outlen)
{
        const char *path = getenv("PATH");
        if (!path)
                path = "/usr/local/bin:/usr/bin:/bin";
        while (*path) {
                const char *c = strchr(path, ':');
                size_t n = c ? (size_t)(c - path) : strlen(path);
                if (n > 0 && (size_t)snprintf(out, outlen, "%.*s/%s", (int)n, path, name) < outlen &&
                    access(out, X_OK) == 0)
                        return true;
                if (!c)
                        break;
                path = c + 1;
        }
        return false;
}

static bool have_binaries(void)
{
        if (etcd_bin[0] && etcdctl_bin[0])
                return true;
        if (!find_on_path("etcd", etcd_bin, sizeof(etcd_bin))) {
                etcd_bin[0] = 0;
                ks_test_fail(__FILE__, __LINE__, "etcd is not on PATH: %s", install_hint);
                return false;
        }
        if (!find_on_path("etcdctl", etcdctl_bin, sizeof(etcdctl_bin))) {
                etcdctl_bin[0] = 0;
                ks_test_fail(__FILE__, __LINE__, "etcdctl is not on PATH: %s", install_hint);
                return false;
        }
        return true;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
        (void)sb;
        (void)flag;
        (void)ftw;
        remove(path);
        return 0;
}

static void rm_rf(const char *dir)
{
        if (dir[0])
                nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void kill_pid(pid_t pid)
{
        if (pid <= 0)
                return;
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                ;
}

static void cleanup_all(void)
{
        for (int i = 0; i < HARNESS_MAX_PROCS; i++) {
                if (!procs[i].used)
                        continue;
                kill_pid(procs[i].pid);
                rm_rf(procs[i].dir);
                procs[i].used = false;
        }
}

static void proc_record(const ks_test_etcd_t *m)
{
        if (!atexit_set) {
                atexit(cleanup_all);
                atexit_set = true;
        }
        for (int i = 0; i < HARNESS_MAX_PROCS; i++) {
                if (procs[i].used && !strcmp(procs[i].dir, m->dir)) {
                        procs[i].pid = m->pid;
                        return;
                }
        }
        for (int i = 0; i < HARNESS_MAX_PROCS; i++) {
                if (!procs[i].used) {
                        procs[i].used = true;
                        procs[i].pid = m->pid;
                        snprintf(procs[i].dir, sizeof(procs[i].dir), "%s", m->dir);
                        return;
                }
        }
}

static void proc_set_pid(const char *dir, pid_t pid, bool forget)
{
        for (int i = 0; i < HARNESS_MAX_PROCS; i++) {
                if (procs[i].used && !strcmp(procs[i].dir, dir)) {
                        procs[i].pid = pid;
                        if (forget)
                                procs[i].used = false;
                }
        }
}

/* Two distinct free loopback ports. */
static bool free_ports(int *a, int *b)
{
        int fds[2] = {-1, -1}, ports[2] = {0, 0};
        bool ok = true;

        for (int i = 0; i < 2 && ok; i++) {
                struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
                socklen_t sl = sizeof(sa);
                fds[i] = socket(AF_INET, SOCK_STREAM, 0);
                ok = fds[i] >= 0 && bind(fds[i], (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
                     getsockname(fds[i], (struct sockaddr *)&sa, &sl) == 0;
                if (ok)
                        ports[i] = ntohs(sa.sin_port);
        }
        for (int i = 0; i < 2; i++)
                if (fds[i] >= 0)
                        close(fds[i]);
        *a = ports[0];
        *b = ports[1];
        return ok;
}

/* fork + exec etcd for member m (ports, dir, cluster set). */
static bool spawn(ks_test_etcd_t *m, bool fast)
{
        char data[300], log[300], cu[64], pu[64], pname[64];
        snprintf(data, sizeof(data), "%s/data", m->dir);
        snprintf(log, sizeof(log), "%s/etcd.log", m->dir);
        snprintf(cu, sizeof(cu), "http://127.0.0.1:%d", m->client_port);
        snprintf(pu, sizeof(pu), "http://127.0.0.1:%d", m->peer_port);
        snprintf(pname, sizeof(pname), "%s", m->name);
        const char *argv[32];
        int n = 0;
        argv[n++] = etcd_bin;
        argv[n++] = "--name";
        argv[n++] = pname;
        argv[n++] = "--data-dir";
        argv[n++] = data;
        argv[n++] = "--listen-client-urls";
        argv[n++] = cu;
        argv[n++] = "--advertise-client-urls";
        argv[n++] = cu;
        argv[n++] = "--listen-peer-urls";
        argv[n++] = pu;
        argv[n++] = "--initial-advertise-peer-urls";
        argv[n++] = pu;
        argv[n++] = "--initial-cluster";
        argv[n++] = m->cluster;
        argv[n++] = "--initial-cluster-token";
        argv[n++] = "kafscale-unit";
        argv[n++] = "--initial-cluster-state";
        argv[n++] = "new";
        argv[n++] = "--logger";
        argv[n++] = "zap";
        argv[n++] = "--log-level";
        argv[n++] = "error";
        if (fast) {
                /* Private clusters: a dead leader is replaced in ~0.5 s. */
                argv[n++] = "--heartbeat-interval";
                argv[n++] = "50";
                argv[n++] = "--election-timeout";
                argv[n++] = "500";
        }
        argv[n] = NULL;

        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0) {
                ks_test_fail(__FILE__, __LINE__, "fork: %s", strerror(errno));
                return false;
        }
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                        _exit(127);
                int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
                int in = open("/dev/null", O_RDONLY);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                if (in >= 0)
                        dup2(in, 0);
                execv(etcd_bin, (char *const *)argv);
                _exit(127);
        }
        m->pid = pid;
        proc_record(m);
        return true;
}

static size_t on_body(char *p, size_t s, size_t n, void *ud)
{
        char *buf = ud;
        size_t have = strlen(buf), take = s * n;
        if (take > 255 - have)
                take = 255 - have;
        memcpy(buf + have, p, take);
        buf[have + take] = 0;
        return s * n;
}

/* GET /health answers {"health":"true"}. */
static bool healthy(const ks_test_etcd_t *m)
{
        char url[128], body[256] = "";
        CURL *h = curl_easy_init();
        long status = 0;
        if (!h)
                return false;
        snprintf(url, sizeof(url), "%s/health", m->endpoint);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 1000L);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, body);
        CURLcode cc = curl_easy_perform(h);
        if (cc == CURLE_OK)
                curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(h);
        return cc == CURLE_OK && status == 200 && strstr(body, "\"health\":\"true\"") != NULL;
}

static bool exited(ks_test_etcd_t *m)
{
        int st;
        if (m->pid > 0 && waitpid(m->pid, &st, WNOHANG) == m->pid) {
                m->pid = 0;
                proc_set_pid(m->dir, 0, false);
                return true;
        }
        return m->pid <= 0;
}

static void report_log(const ks_test_etcd_t *m, const char *what)
{
        char path[300], tail[1024] = "";
        snprintf(path, sizeof(path), "%s/etcd.log", m->dir);
        FILE *f = fopen(path, "r");
        if (f) {
                if (fseek(f, -(long)(sizeof(tail) - 1), SEEK_END) != 0)
                        fseek(f, 0, SEEK_SET);
                size_t n = fread(tail, 1, sizeof(tail) - 1, f);
                tail[n] = 0;
                fclose(f);
        }
        ks_test_fail(__FILE__, __LINE__, "etcd %s at %s %s; end of its log:\n%s", m->name, m->endpoint, what, tail);
}

/* Waits until every member answers /health.  1 ok, 0 a member exited (port
 * race?), -1 timeout. */
static int wait_healthy(ks_test_etcd_t *ms, int n)
{
        int64_t deadline = now_ms() + HARNESS_HEALTH_MS;
        for (int i = 0; i < n; i++) {
                while (!healthy(&ms[i])) {
                        if (exited(&ms[i]))
                                return 0;
                        if (now_ms() > deadline)
                                return -1;
                        sleep_ms(30);
                }
        }
        return 1;
}

bool ks_test_etcd_start(ks_test_etcd_t *ms, int n)
{
        if (n < 1 || n > 5 || !have_binaries())
                return false;
        curl_global_init(CURL_GLOBAL_DEFAULT);
        for (int attempt = 1; attempt <= HARNESS_START_TRIES; attempt++) {
                char cluster[512] = "";
                size_t o = 0;
                memset(ms, 0, (size_t)n * sizeof(*ms));
                for (int i = 0; i < n; i++) {
                        ks_test_etcd_t *m = &ms[i];
                        const char *tmp = getenv("TMPDIR");
                        snprintf(m->dir, sizeof(m->dir), "%s/kafscale-etcd-XXXXXX", tmp && *tmp ? tmp : "/tmp");
                        if (!mkdtemp(m->dir) || !free_ports(&m->client_port, &m->peer_port)) {
                                ks_test_fail(__FILE__, __LINE__, "etcd harness: mkdtemp/ports: %s", strerror(errno));
                                ks_test_etcd_stop(ms, i + 1);
                                return false;
                        }
                        snprintf(m->name, sizeof(m->name), "n%d", i + 1);
                        snprintf(m->endpoint, sizeof(m->endpoint), "http://127.0.0.1:%d", m->client_port);
                        o += (size_t)snprintf(cluster + o, sizeof(cluster) - o, "%s%s=http://127.0.0.1:%d",
                                              i ? "," : "", m->name, m->peer_port);
                }
                bool spawned = true;
                for (int i = 0; i < n && spawned; i++) {
                        snprintf(ms[i].cluster, sizeof(ms[i].cluster), "%s", cluster);
                        spawned = spawn(&ms[i], ms != &shared);
                }
                int r = spawned ? wait_healthy(ms, n) : -1;
                if (r == 1)
                        return true;
                if (r < 0 || attempt == HARNESS_START_TRIES) {
                        for (int i = 0; i < n; i++)
                                if (r < 0 || exited(&ms[i])) {
                                        report_log(&ms[i], r < 0 ? "did not become healthy" : "exited at start");
                                        break;
                                }
                        ks_test_etcd_stop(ms, n);
                        return false;
                }
                ks_test_etcd_stop(ms, n); /* lost a port race: again */
        }
        return false;
}

void ks_test_etcd_kill(ks_test_etcd_t *m)
{
        kill_pid(m->pid);
        m->pid = 0;
        proc_set_pid(m->dir, 0, false);
}

bool ks_test_etcd_restart(ks_test_etcd_t *m, bool wait)
{
        if (m->pid > 0 || !have_binaries())
                return false;
        for (int attempt = 0; attempt < HARNESS_START_TRIES; attempt++) {
                if (!spawn(m, m != &shared))
                        return false;
                if (!wait) {
                        sleep_ms(100);
                        if (!exited(m))
                                return true;
                        continue;
                }
                int r = wait_healthy(m, 1);
                if (r == 1)
                        return true;
                if (r < 0) {
                        report_log(m, "did not become healthy after a restart");
                        return false;
                }
                sleep_ms(200); /* its port is still in use: retry */
        }
        report_log(m, "exited at restart");
        return false;
}

void ks_test_etcd_stop(ks_test_etcd_t *ms, int n)
{
        for (int i = 0; i < n; i++) {
                kill_pid(ms[i].pid);
                ms[i].pid = 0;
                rm_rf(ms[i].dir);
                proc_set_pid(ms[i].dir, 0, true);
        }
}

int ks_test_etcdctl(const ks_test_etcd_t *m, const char *const *args)
{
        const char *argv[32];
        int n = 0;

        if (!have_binaries())
                return -1;
        argv[n++] = etcdctl_bin;
        argv[n++] = "--endpoints";
        argv[n++] = m->endpoint;
        for (int i = 0; args[i] && n < 31; i++)
                argv[n++] = args[i];
        argv[n] = NULL;
        pid_t pid = fork();
        if (pid < 0)
                return -1;
        if (pid == 0) {
                int fd = open("/dev/null", O_RDWR);
                if (fd >= 0) {
                        dup2(fd, 0);
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                setenv("ETCDCTL_API", "3", 1);
                execv(etcdctl_bin, (char *const *)argv);
                _exit(127);
        }
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

const char *ks_test_etcd_join(const ks_test_etcd_t *ms, int n, char *buf, size_t len)
{
        size_t o = 0;
        buf[0] = 0;
        for (int i = 0; i < n && o < len; i++)
                o += (size_t)snprintf(buf + o, len - o, "%s%s", i ? "," : "", ms[i].endpoint);
        return buf;
}

const char *ks_test_etcd_endpoints(void)
{
        if (shared_state == 1)
                return shared_eps;
        if (shared_state < 0) {
                if (!etcd_bin[0] || !etcdctl_bin[0])
                        ks_test_fail(__FILE__, __LINE__, "etcd/etcdctl are not on PATH: %s", install_hint);
                else
                        ks_test_fail(__FILE__, __LINE__,
                                     "the shared test etcd could not be started (see the first etcd test's failure)");
                return NULL;
        }
        const char *env = getenv("KAFSCALE_TEST_ETCD_ENDPOINTS");
        if (env && *env) {
                snprintf(shared_eps, sizeof(shared_eps), "%s", env);
                shared_state = 1;
                return shared_eps;
        }
        if (!ks_test_etcd_start(&shared, 1)) {
                shared_state = -1;
                return NULL;
        }
        snprintf(shared_eps, sizeof(shared_eps), "%s", shared.endpoint);
        shared_state = 1;
        return shared_eps;
}

ks_kv_t *ks_test_etcd_open(void)
{
        const char *eps = ks_test_etcd_endpoints();
        char err[512];
        ks_kv_t *kv = NULL;

        if (!eps)
                return NULL;
        ks_kv_etcd_config_t cfg = {.endpoints = eps};
        ks_err_t rc = ks_kv_etcd_open(&cfg, err, sizeof(err), &kv);
        if (rc != KS_ERR_NONE) {
                ks_test_fail(__FILE__, __LINE__, "ks_kv_etcd_open(%s): %s: %s", eps, ks_err_name(rc), err);
                return NULL;
        }
        return kv;
}

bool ks_test_etcd_wipe(void)
{
        ks_kv_t *kv = ks_test_etcd_open();
        if (!kv)
                return false;
        ks_err_t rc = ks_kv_delete_range(kv, "\0", 1, "\0", 1, NULL, NULL);
        ks_kv_destroy(kv);
        if (rc != KS_ERR_NONE) {
                ks_test_fail(__FILE__, __LINE__, "wiping the test etcd: %s", ks_err_name(rc));
                return false;
        }
        return true;
}
