"""pytest fixtures for Kafscale integration tests.

`broker` (function scope) starts a fresh broker for each test:

    KAFSCALE_BROKER_BIN   broker binary (default: <repo>/build/kafscale-broker)

The broker gets this environment (inherited KAFSCALE_* variables are dropped,
everything else, e.g. ASAN_OPTIONS, is passed through):

    KAFSCALE_DATA_DIR      <fresh temp dir>/data
    KAFSCALE_BROKER_ADDR   127.0.0.1:<free port>     (Kafka listener)
    KAFSCALE_BROKER_HOST   127.0.0.1                 (advertised host)
    KAFSCALE_BROKER_PORT   <same port>               (advertised port)
    KAFSCALE_METRICS_ADDR  127.0.0.1:<another free port>
    KAFSCALE_LOG_LEVEL     debug

stdout and stderr go to <temp dir>/broker.log. The fixture waits (10 s at
most) until the port accepts connections. After the test the broker gets
SIGTERM (SIGKILL after 10 s); the test then fails unless every exit was
status 0 and the log has no sanitizer reports.

A module that wants one broker for all its tests uses `module_broker`
instead. A module that needs extra broker environment (e.g. etcd/S3 settings)
overrides the module-scoped `broker_extra_env` fixture.

`broker.objects` is a view of the broker's object store, whatever its
backend (harness.LocalObjects or harness.S3Objects): keys(prefix), get(key),
put(key, data), keys relative to the namespace ("topic/0/segment-...kfs").

Modes (env KAFSCALE_TEST_MODE):

    embedded (default)  as above: SQLite metadata + local object directory
    s3                  like cluster below, without etcd: SQLite metadata,
                        records in the session s3rver
    cluster             ONE etcd and ONE s3rver for the whole session
                        (harness.ClusterBackend); every `broker` /
                        `module_broker` (and conftest._run_broker) also gets
                            KAFSCALE_ETCD_ENDPOINTS     the session etcd
                            KAFSCALE_S3_BUCKET/_ENDPOINT/_ACCESS_KEY/_SECRET_KEY
                            KAFSCALE_S3_NAMESPACE       unique per broker fixture
                            KAFSCALE_FLUSH_INTERVAL_MS  20
                            KAFSCALE_LEASE_TTL_MS       3000
                        then the module's `broker_extra_env` on top (a module
                        with its own KAFSCALE_S3_BUCKET keeps its S3). etcd
                        keys under /kafscale/ (and all leases) are wiped
                        before each broker fixture starts.

Tests marked `@pytest.mark.embedded_only("why")` need embedded metadata
(SQLite or KAFSCALE_USE_MEMORY_METADATA) and are skipped in cluster mode.
Tests that read objects use `broker.objects`, so they run in every mode.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import harness

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BROKER_BIN = REPO_ROOT / "build" / "kafscale-broker"

START_DEADLINE_S = 10.0
STOP_DEADLINE_S = 10.0
LOG_TAIL_LINES = 80

# Lines that mean a sanitizer reported a problem.
SANITIZER_MARKERS = (
    "AddressSanitizer",
    "LeakSanitizer",
    "UndefinedBehaviorSanitizer",
    "ThreadSanitizer",
    "runtime error:",
)


TEST_MODE = os.environ.get("KAFSCALE_TEST_MODE", "") or "embedded"
TEST_MODES = ("embedded", "cluster", "s3")
CLUSTER_MODE = TEST_MODE in ("cluster", "s3")   # brokers get the shared backend

free_ports = harness.free_ports


class Broker:
    """A broker subprocess. Attributes: host, port, bootstrap, metrics_port,
    data_dir, log_path, proc. Methods: start(), stop(), restart(), kill()."""

    def __init__(self, binary, workdir, extra_env=None):
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "broker.log"
        self.host = "127.0.0.1"
        self.port, self.metrics_port = free_ports(2)
        self.extra_env = dict(extra_env or {})
        self.proc = None
        self.starts = 0
        self.unclean_exits = []  # (incarnation, returncode) of unexpected exits
        self.backend = None      # cluster mode: the harness lease (etcd, namespace)

    @property
    def bootstrap(self):
        return "%s:%d" % (self.host, self.port)

    def env(self):
        return harness.broker_env(self.host, self.port, self.metrics_port, self.data_dir, self.extra_env)

    @property
    def objects(self):
        """View of this broker's object store (see the module docstring)."""
        env = self.env()
        key = (str(self.data_dir),) + tuple(env.get(k) for k in (
            "KAFSCALE_S3_BUCKET", "KAFSCALE_S3_ENDPOINT", "KAFSCALE_S3_NAMESPACE", "KAFSCALE_USE_MEMORY_S3"))
        if getattr(self, "_objects", (None,))[0] != key:
            self._objects = (key, harness.objects_for_env(env, self.data_dir))
        return self._objects[1]

    # --- logs ------------------------------------------------------------
    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=LOG_TAIL_LINES):
        lines = self.log_text().splitlines()
        return "\n".join(lines[-n:])

    def sanitizer_lines(self):
        return [l for l in self.log_text().splitlines()
                if any(m in l for m in SANITIZER_MARKERS)]

    def _note(self, text):
        with open(self.log_path, "a") as f:
            f.write("=== test harness: %s ===\n" % text)

    def _fail(self, msg):
        pytest.fail("%s\n--- broker log (%s), last %d lines ---\n%s"
                    % (msg, self.log_path, LOG_TAIL_LINES, self.log_tail()),
                    pytrace=False)

    # --- lifecycle -------------------------------------------------------
    def is_running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        assert not self.is_running(), "broker already running"
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            pytest.fail("broker binary %s not found or not executable "
                        "(build it with `make`, or set KAFSCALE_BROKER_BIN)" % self.binary,
                        pytrace=False)
        self.starts += 1
        self._note("start #%d: %s on %s" % (self.starts, self.binary, self.bootstrap))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                harness.die_with_parent([self.binary]), env=self.env(), cwd=str(self.workdir),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        harness.register_process(self.proc)  # killed at exit if a teardown never ran
        self._wait_ready()

    def _wait_ready(self):
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self._fail("broker exited with status %d during start-up" % rc)
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                self._fail("broker did not accept connections on %s within %.0f s"
                           % (self.bootstrap, START_DEADLINE_S))
            time.sleep(0.02)

    def stop(self):
        """SIGTERM and wait; SIGKILL after STOP_DEADLINE_S. Returns the exit status.
        A non-zero status (or a SIGKILL) is recorded and fails the test at teardown."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._note("start #%d: no exit %.0f s after SIGTERM; killed with SIGKILL"
                           % (self.starts, STOP_DEADLINE_S))
                self.unclean_exits.append((self.starts, "hung after SIGTERM"))
                return self.proc.returncode
        rc = self.proc.returncode
        self._note("start #%d exited with status %d" % (self.starts, rc))
        if rc != 0:
            self.unclean_exits.append((self.starts, rc))
        return rc

    def kill(self):
        """SIGKILL on purpose (crash tests); not counted as an unclean exit."""
        if self.is_running():
            self.proc.kill()
            self.proc.wait()
            self._note("start #%d killed with SIGKILL by the test" % self.starts)

    def restart(self):
        """Stop (SIGTERM) and start again with the same data dir and ports."""
        rc = self.stop()
        if rc is not None and rc != 0:
            self._fail("broker exited with status %s on SIGTERM before restart" % rc)
        self.start()

    def finish(self):
        """Teardown: stop, then fail on unclean exits or sanitizer reports."""
        self.stop()
        problems = []
        if self.unclean_exits:
            problems.append("unclean broker exit(s) (start #, status): %r" % self.unclean_exits)
        san = self.sanitizer_lines()
        if san:
            problems.append("sanitizer reports in broker log:\n  " + "\n  ".join(san[:20]))
        if problems:
            self._fail("\n".join(problems))


def _broker_bin():
    return Path(os.environ.get("KAFSCALE_BROKER_BIN") or DEFAULT_BROKER_BIN).resolve()


@pytest.fixture(scope="module")
def broker_extra_env():
    """Extra environment for the broker; override in a test module to change mode."""
    return {}


_cluster_backend = None


def cluster_backend(tmp_path_factory):
    """The session's shared etcd + s3rver (cluster mode), started on first use
    and stopped at the end of the session (pytest_sessionfinish)."""
    global _cluster_backend
    if _cluster_backend is None:
        b = harness.ClusterBackend(tmp_path_factory.mktemp("cluster-backend"),
                                   with_etcd=TEST_MODE == "cluster")
        try:
            b.start()
        except harness.HarnessError as e:
            pytest.fail("cluster mode: %s" % e, pytrace=False)
        _cluster_backend = b
    return _cluster_backend


def _run_broker(tmp_path_factory, extra_env, label=None):
    workdir = tmp_path_factory.mktemp("broker")
    lease = None
    env = extra_env
    if CLUSTER_MODE:
        try:
            env, lease = cluster_backend(tmp_path_factory).broker_env(extra_env, label, workdir)
        except harness.HarnessError as e:
            pytest.fail("cluster mode: %s" % e, pytrace=False)
    b = Broker(_broker_bin(), workdir, env)
    b.backend = lease
    try:
        try:
            b.start()
        except BaseException:
            b.stop()  # start-up already failed with the log attached; just clean up
            raise
        try:
            yield b
        finally:
            b.finish()
    finally:
        if lease is not None:
            lease.release()


@pytest.fixture
def broker(request, tmp_path_factory, broker_extra_env):
    """A fresh broker for this test."""
    yield from _run_broker(tmp_path_factory, broker_extra_env, request.node.name)


# --- real etcd and s3rver for the modules that build clusters themselves ----------

@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """One s3rver for the module; every test uses a namespace of its own."""
    srv = harness.S3rver(tmp_path_factory.mktemp("s3"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def etcd(tmp_path):
    """A single-node etcd for this test."""
    e = harness.Etcd(tmp_path / "etcd").start()
    yield e
    e.stop()


@pytest.fixture
def etcd3(tmp_path):
    """A 3-node etcd cluster for this test."""
    e = harness.EtcdCluster(tmp_path / "etcd3", size=3).start()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def module_broker(request, tmp_path_factory, broker_extra_env):
    """One broker shared by all tests of a module (opt-in)."""
    yield from _run_broker(tmp_path_factory, broker_extra_env, request.node.name)


# ---------------------------------------------------------------------------
# Modes and markers
# ---------------------------------------------------------------------------

def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def pytest_configure(config):
    # A SIGTERM to pytest (e.g. a CI timeout) ends the run like Ctrl-C, so
    # finalizers, pytest_sessionfinish and the harness's exit sweep still stop
    # every etcd, s3rver and broker started here.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    config.addinivalue_line(
        "markers", "embedded_only(reason): needs embedded metadata (the SQLite file, "
        "KAFSCALE_USE_MEMORY_METADATA, or a feature cluster mode lacks); skipped when "
        "KAFSCALE_TEST_MODE=cluster")
    if TEST_MODE not in TEST_MODES:
        raise pytest.UsageError("KAFSCALE_TEST_MODE=%r: use 'embedded' (default), 'cluster' or 's3'"
                                % TEST_MODE)


def pytest_report_header(config):
    return "kafscale test mode: %s" % {
        "embedded": "embedded (SQLite + local object directory)",
        "cluster": "cluster (brokers on one session etcd + s3rver)",
        "s3": "s3 (SQLite metadata, records in one session s3rver)"}[TEST_MODE]


def pytest_collection_modifyitems(config, items):
    if TEST_MODE != "cluster":
        return
    for item in items:
        m = item.get_closest_marker("embedded_only")
        if m is not None:
            why = (m.args[0] if m.args else m.kwargs.get("reason")) or "embedded backends only"
            item.add_marker(pytest.mark.skip(reason="embedded only (KAFSCALE_TEST_MODE=%s): %s"
                                             % (TEST_MODE, why)))


def pytest_sessionfinish(session, exitstatus):
    global _cluster_backend
    if _cluster_backend is not None:
        _cluster_backend.stop()
        _cluster_backend = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the broker log tail to a failing test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        funcargs = getattr(item, "funcargs", {}) or {}
        extra = getattr(item, "kafscale_brokers", None) or []   # brokers a test started itself
        for b in [v for v in funcargs.values() if isinstance(v, Broker)] + list(extra):
            report.sections.append(("broker log tail: %s" % b.log_path, b.log_tail()))
            if b.backend is not None:
                report.sections.append(("backend (KAFSCALE_TEST_MODE=%s)" % TEST_MODE,
                                        "etcd %s, S3 namespace %s" % (
                                            b.backend.etcd.endpoints if b.backend.etcd else "none",
                                            b.backend.namespace)))
