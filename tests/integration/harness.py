"""Real external components for the integration tests, started on free
loopback ports in temporary directories:

  Etcd / EtcdCluster   etcd from Debian's etcd-server (single node / 3 nodes),
                       with raw key access through etcd's JSON gateway
  S3rver               npm s3rver (an S3-compatible server), with raw object
                       access through botocore and the AWS CLI
  LocalObjects /       one view of a broker's object store (local directory
  S3Objects            or S3 bucket + namespace) for tests that read objects
  ClusterBackend       the session's shared etcd + s3rver of cluster mode
                       (KAFSCALE_TEST_MODE=cluster, see conftest.py)
  BrokerCluster /      N brokers (ids 0..N-1) on one etcd and one S3 namespace,
  ClusterBroker        each killed, stopped (SIGSTOP) or restarted with its id
                       by the test; place() is the documented partition
                       placement, computed independently
  protoc_decode /      the protobuf compiler (Debian's protobuf-compiler) as an
  protoc_encode        independent reader/writer of the metadata records

Every process started here runs in its own process group and is recorded;
whatever is still running when the Python process exits is killed (SIGKILL to
the group), and each one also gets SIGKILL from the kernel if the test process
dies without cleaning up (PR_SET_PDEATHSIG), so a failing, interrupted or
killed test run leaves nothing behind. Fixtures stop things earlier, in their
finalizers.

ENVIRONMENT.md (design docs) has the command lines and gotchas these follow.
"""

import atexit
import base64
import codecs
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "proto"
METADATA_PROTO = "kafscale_metadata.proto"
S3RVER_JS = REPO_ROOT / ".tools" / "node_modules" / "s3rver" / "bin" / "s3rver.js"
BUCKET = "kafscale"
S3_KEY = "S3RVER"           # s3rver's access key and secret
AWS_CLI = "/usr/bin/aws"    # Debian's awscli (a pyenv shim may shadow `aws`)

ETCD_START_DEADLINE_S = 20.0
S3RVER_START_DEADLINE_S = 20.0
STOP_DEADLINE_S = 10.0


class HarnessError(AssertionError):
    """A component could not be started or reached (fails the test)."""


# ---------------------------------------------------------------------------
# Ports, waiting, processes
# ---------------------------------------------------------------------------

def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port():
    return free_ports(1)[0]


def wait_until(cond, what, timeout, interval=0.05):
    """Polls cond() until it returns a true value (returned) or the deadline
    passes (HarnessError naming `what`; a callable `what` is evaluated
    then)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise HarnessError("timed out after %.1f s waiting for %s" % (timeout, what() if callable(what) else what))
        time.sleep(interval)


_live = set()
_live_lock = threading.Lock()
_SETPRIV = "/usr/bin/setpriv"   # util-linux (Essential in Debian)


def die_with_parent(argv):
    """argv prefixed so that the process gets SIGKILL when the thread that
    started it dies (PR_SET_PDEATHSIG via setpriv, which then execs argv:
    same pid). Covers a test run that is itself SIGKILLed, where no
    finalizer or atexit handler runs. Start such processes from the main
    thread only: the signal follows the starting *thread*."""
    if os.access(_SETPRIV, os.X_OK):
        return [_SETPRIV, "--pdeathsig", "KILL", "--"] + [str(a) for a in argv]
    return [str(a) for a in argv]


def spawn(argv, log_path, env=None, cwd=None):
    """Starts argv in a new process group, stdout+stderr appended to
    log_path; it is killed at interpreter exit if still running, and when
    the test process dies (die_with_parent)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(die_with_parent(argv), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    with _live_lock:
        _live.add(proc)
    return proc


def _signal_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def kill_process(proc):
    """SIGKILL to the process group; waits for the process."""
    if proc is None:
        return None
    if proc.poll() is None:
        _signal_group(proc, signal.SIGKILL)
    rc = proc.wait()
    with _live_lock:
        _live.discard(proc)
    return rc


def stop_process(proc, timeout=STOP_DEADLINE_S):
    """SIGTERM to the process group, SIGKILL after `timeout`. Returns the
    exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    return kill_process(proc)


def register_process(proc):
    """Records a process started elsewhere (e.g. a broker) for the exit sweep."""
    with _live_lock:
        _live.add(proc)


def kill_all():
    """Kills every recorded process that still runs (the exit sweep)."""
    with _live_lock:
        procs = list(_live)
    for p in procs:
        try:
            kill_process(p)
        except Exception:
            pass


atexit.register(kill_all)


def _tail(path, n=4000):
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _http(port, method, path, body=None, timeout=2.0, headers=None):
    """(status, body bytes) of one request to 127.0.0.1:port; OSError on
    connection problems."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# ---------------------------------------------------------------------------
# etcd
# ---------------------------------------------------------------------------

def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def unb64(text):
    return base64.b64decode(text or "")


def broker_env(host, port, metrics_port, data_dir, extra_env=None, **more):
    """A broker's environment: this process's without any KAFSCALE_ setting,
    then the listener, advertised address, metrics address, data dir and
    debug logging, then `more`, then `extra_env` (which wins)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFSCALE_")}
    env.update({
        "KAFSCALE_DATA_DIR": str(data_dir),
        "KAFSCALE_BROKER_ADDR": "%s:%d" % (host, port),
        "KAFSCALE_BROKER_HOST": host,
        "KAFSCALE_BROKER_PORT": str(port),
        "KAFSCALE_METRICS_ADDR": "%s:%d" % (host, metrics_port),
        "KAFSCALE_LOG_LEVEL": "debug",
    })
    env.update(more)
    env.update(extra_env or {})
    return env


def prefix_end(prefix):
    """etcd range_end for all keys starting with prefix."""
    p = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\0"


class EtcdUnavailable(HarnessError):
    pass


class EtcdMember:
    """One etcd process. Ports and data dir are fixed for its lifetime, so a
    restart brings it back as the same member with the same data."""

    def __init__(self, name, workdir):
        self.name = name
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / ("%s.etcd" % name)
        self.log_path = self.workdir / ("%s.log" % name)
        self.client_port, self.peer_port = free_ports(2)
        self.proc = None
        self.starts = 0

    @property
    def client_url(self):
        return "http://127.0.0.1:%d" % self.client_port

    @property
    def peer_url(self):
        return "http://127.0.0.1:%d" % self.peer_port

    def start(self, initial_cluster, token, state="new"):
        assert not self.running(), "%s already running" % self.name
        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        if not os.access(etcd, os.X_OK):
            raise HarnessError("etcd is not installed: run `make test-deps` (scripts/install-deps.sh --test; "
                               "Debian package etcd-server)")
        self.starts += 1
        with open(self.log_path, "a") as f:
            f.write("=== test harness: start #%d of %s ===\n" % (self.starts, self.name))
        self.proc = spawn([
            etcd, "--name", self.name, "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster, "--initial-cluster-token", token,
            "--initial-cluster-state", state, "--logger", "zap", "--log-level", "warn",
        ], self.log_path, cwd=str(self.workdir))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def healthy(self):
        if not self.running():
            return False
        try:
            status, body = _http(self.client_port, "GET", "/health", timeout=1.0)
            return status == 200 and json.loads(body).get("health") == "true"
        except (OSError, ValueError):
            return False

    def status(self, timeout=1.0):
        """/v3/maintenance/status as a dict, or None when unreachable."""
        if not self.running():
            return None
        try:
            st, body = _http(self.client_port, "POST", "/v3/maintenance/status", b"{}", timeout=timeout)
            return json.loads(body) if st == 200 else None
        except (OSError, ValueError):
            return None

    def kill(self):
        """kill -9 (what failure tests use: SIGTERM of a leader takes seconds)."""
        kill_process(self.proc)

    def stop(self):
        stop_process(self.proc)

    def log_tail(self):
        return _tail(self.log_path)


class EtcdCluster:
    """An etcd cluster of `size` members on loopback (3 by default).

        c = EtcdCluster(tmpdir); c.start()
        c.endpoints                      "http://127.0.0.1:p1,http://127.0.0.1:p2,..."
        c.leader()                       index of the current leader
        c.kill(i) / c.restart(i)         kill -9 a member / bring it back
        c.put(k, v), c.get(k), c.range(prefix), c.delete(k), c.wipe("/kafscale/")
        c.etcdctl("endpoint", "status")  the etcdctl CLI against all members
        c.stop()
    """

    def __init__(self, workdir, size=3, token=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token = token or "kafscale-test-%s" % uuid.uuid4().hex[:12]
        self.members = [EtcdMember("n%d" % (i + 1), self.workdir) for i in range(size)]
        self.initial_cluster = ",".join("%s=%s" % (m.name, m.peer_url) for m in self.members)

    # --- lifecycle -------------------------------------------------------
    def start(self, timeout=ETCD_START_DEADLINE_S):
        for m in self.members:
            m.start(self.initial_cluster, self.token, "new")
        try:
            self.wait_healthy(timeout=timeout)
        except HarnessError:
            self.stop()
            raise
        return self

    def wait_healthy(self, members=None, timeout=ETCD_START_DEADLINE_S):
        """Waits until the given member indexes (default: all running ones)
        answer /health with true (meaning: they see a leader)."""
        idx = [i for i, m in enumerate(self.members) if m.running()] if members is None else list(members)
        deadline = time.monotonic() + timeout
        while True:
            dead = [self.members[i] for i in idx if not self.members[i].running()]
            if dead:
                raise HarnessError("etcd member %s exited (status %s); log:\n%s"
                                   % (dead[0].name, dead[0].proc.returncode, dead[0].log_tail()))
            if all(self.members[i].healthy() for i in idx):
                return
            if time.monotonic() >= deadline:
                bad = [self.members[i] for i in idx if not self.members[i].healthy()]
                raise HarnessError("etcd member(s) %s not healthy within %.0f s; log of %s:\n%s"
                                   % ([m.name for m in bad], timeout, bad[0].name, bad[0].log_tail()))
            time.sleep(0.05)

    def stop(self):
        for m in self.members:
            m.kill() if m.running() else None
        # SIGKILL: etcd's data is fsynced; a graceful stop of a leader takes
        # seconds and nothing here needs it.

    def kill(self, i):
        """kill -9 member i."""
        self.members[i].kill()

    kill_member = kill

    def restart(self, i, wait=True, timeout=ETCD_START_DEADLINE_S):
        """Starts member i again on the same ports and data dir (it rejoins
        as the same member); waits until it is healthy."""
        m = self.members[i]
        if m.running():
            m.kill()
        m.start(self.initial_cluster, self.token, "new")  # ignored with an existing data dir
        if wait:
            self.wait_healthy([i], timeout=timeout)

    restart_member = restart

    # --- views -----------------------------------------------------------
    @property
    def endpoint_list(self):
        return [m.client_url for m in self.members]

    @property
    def endpoints(self):
        return ",".join(self.endpoint_list)

    def running_members(self):
        return [i for i, m in enumerate(self.members) if m.running()]

    def leader(self, timeout=10.0):
        """Index of the member that is leader, as agreed by the members that
        answer (polls until they agree on one running member)."""
        def find():
            ids, leaders = {}, set()
            for i, m in enumerate(self.members):
                st = m.status()
                if st:
                    ids[st["header"]["member_id"]] = i
                    leaders.add(st.get("leader"))
            if len(leaders) == 1:
                lid = leaders.pop()
                if lid in ids:
                    return ids[lid] + 1   # +1: index 0 is a valid answer
            return None
        return wait_until(find, "an etcd leader all members agree on", timeout) - 1

    # --- raw key access through the JSON gateway -------------------------
    def request(self, path, body, timeout=5.0):
        """POST path (e.g. "/v3/kv/range") to the first running member that
        answers; returns the decoded JSON. EtcdUnavailable if none does."""
        errors = []
        for i in self.running_members():
            m = self.members[i]
            try:
                st, data = _http(m.client_port, "POST", path, json.dumps(body).encode(), timeout=timeout)
            except OSError as e:
                errors.append("%s: %s" % (m.name, e))
                continue
            if st == 200:
                return json.loads(data)
            errors.append("%s: HTTP %d %s" % (m.name, st, data[:300]))
        raise EtcdUnavailable("etcd %s %s failed on every member: %s" % (path, body, "; ".join(errors)))

    def put(self, key, value, lease=None):
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return self.request("/v3/kv/put", body)

    def get(self, key):
        """The value of key (bytes), or None."""
        kvs = self.request("/v3/kv/range", {"key": b64(key)}).get("kvs") or []
        return unb64(kvs[0].get("value")) if kvs else None

    def range(self, prefix, keys_only=False):
        """{key str: value bytes} of every key starting with prefix."""
        body = {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        if keys_only:
            body["keys_only"] = True
        kvs = self.request("/v3/kv/range", body).get("kvs") or []
        return {unb64(kv["key"]).decode("utf-8", "replace"): unb64(kv.get("value")) for kv in kvs}

    def keys(self, prefix):
        return sorted(self.range(prefix, keys_only=True))

    def delete(self, key):
        return int(self.request("/v3/kv/deleterange", {"key": b64(key)}).get("deleted", "0"))

    def delete_prefix(self, prefix):
        return int(self.request("/v3/kv/deleterange",
                                {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}).get("deleted", "0"))

    def revoke_all_leases(self):
        leases = self.request("/v3/lease/leases", {}).get("leases") or []
        for l in leases:
            try:
                self.request("/v3/lease/revoke", {"ID": l["ID"]})
            except EtcdUnavailable:
                pass  # already expired or revoked
        return len(leases)

    def wipe(self, prefix="/kafscale/", leases=True):
        """Deletes every key under prefix (and, by default, every lease, so
        nothing a previous broker attached to its lease comes back)."""
        if leases:
            self.revoke_all_leases()
        return self.delete_prefix(prefix)

    def etcdctl(self, *args, timeout=30, check=True):
        """Runs `etcdctl --endpoints <all> args...` (API v3); returns stdout."""
        env = dict(os.environ, ETCDCTL_API="3")
        p = subprocess.run(["etcdctl", "--endpoints", self.endpoints, "--command-timeout", "5s"] + list(args),
                           env=env, capture_output=True, timeout=timeout)
        if check and p.returncode != 0:
            raise HarnessError("etcdctl %s: exit %d: %s" % (" ".join(args), p.returncode,
                                                             p.stderr.decode(errors="replace")))
        return p.stdout

    def log_tails(self):
        return "\n".join("--- %s (%s) ---\n%s" % (m.name, m.log_path, m.log_tail()) for m in self.members)


class Etcd(EtcdCluster):
    """A single-node etcd."""

    def __init__(self, workdir, token=None):
        super().__init__(workdir, size=1, token=token)

    @property
    def member(self):
        return self.members[0]

    @property
    def port(self):
        return self.members[0].client_port


# ---------------------------------------------------------------------------
# s3rver
# ---------------------------------------------------------------------------

class S3rver:
    """An s3rver process on 127.0.0.1:<free port> with a fresh directory and
    bucket `kafscale`; stop() + start() brings it back on the same port and
    directory."""

    def __init__(self, workdir):
        self.dir = Path(workdir) / "s3rver-data"
        self.dir.mkdir(parents=True)
        self.log_path = Path(workdir) / "s3rver.log"
        self.port = free_port()
        self.endpoint = "http://127.0.0.1:%d" % self.port
        self.proc = None
        self._client = None

    def start(self):
        node = shutil.which("node")
        if not node or not S3RVER_JS.is_file():
            raise HarnessError("s3rver is not installed (%s); run `make test-deps` "
                               "(scripts/install-deps.sh --test)" % S3RVER_JS)
        self.proc = spawn(
            [node, "--openssl-legacy-provider", S3RVER_JS, "-d", self.dir,
             "-a", "127.0.0.1", "-p", self.port, "--silent", "--configure-bucket", BUCKET],
            self.log_path)
        deadline = time.monotonic() + S3RVER_START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError("s3rver exited with %s at start; log:\n%s"
                                   % (self.proc.returncode, self.log_text()))
            if self.bucket_ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise HarnessError("s3rver did not serve bucket %r within %.0f s; log:\n%s"
                           % (BUCKET, S3RVER_START_DEADLINE_S, self.log_text()))

    def bucket_ready(self):
        try:
            return _http(self.port, "HEAD", "/" + BUCKET, timeout=1.0)[0] == 200
        except OSError:
            return False

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        stop_process(self.proc)

    def kill(self):
        kill_process(self.proc)

    def log_text(self):
        return _tail(self.log_path)

    def env(self, namespace=None):
        """The broker settings for this server."""
        e = {
            "KAFSCALE_S3_BUCKET": BUCKET,
            "KAFSCALE_S3_ENDPOINT": self.endpoint,
            "KAFSCALE_S3_ACCESS_KEY": S3_KEY,
            "KAFSCALE_S3_SECRET_KEY": S3_KEY,
        }
        if namespace is not None:
            e["KAFSCALE_S3_NAMESPACE"] = namespace
        return e

    # --- raw object access (independent clients) --------------------------
    def client(self):
        """A botocore S3 client for this server."""
        if self._client is None:
            import botocore.config
            import botocore.session
            sess = botocore.session.get_session()
            self._client = sess.create_client(
                "s3", region_name="us-east-1", endpoint_url=self.endpoint,
                aws_access_key_id=S3_KEY, aws_secret_access_key=S3_KEY,
                config=botocore.config.Config(s3={"addressing_style": "path"},
                                              retries={"max_attempts": 2}))
        return self._client

    def keys(self, prefix=""):
        """Every key under prefix, sorted (botocore, paged ListObjectsV2)."""
        out = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def get(self, key):
        return self.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def put(self, key, data):
        self.client().put_object(Bucket=BUCKET, Key=key, Body=data)

    def aws(self, *args, timeout=60):
        """Runs Debian's AWS CLI (`aws --endpoint-url <this> args...`) with
        s3rver's credentials; returns stdout. HarnessError when the CLI is
        missing or fails."""
        if not os.access(AWS_CLI, os.X_OK):
            raise HarnessError("%s not found: run `make test-deps` (Debian package awscli)" % AWS_CLI)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_KEY,
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_PAGER": "",
                    "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
        p = subprocess.run([AWS_CLI, "--endpoint-url", self.endpoint, "--no-cli-pager"] + list(args),
                           env=env, capture_output=True, timeout=timeout)
        if p.returncode != 0:
            raise HarnessError("aws %s: exit %d: %s" % (" ".join(args), p.returncode,
                                                         p.stderr.decode(errors="replace")[-2000:]))
        return p.stdout

    def aws_keys(self, prefix=""):
        """Every key under prefix, listed by the AWS CLI (s3api list-objects-v2)."""
        out = self.aws("s3api", "list-objects-v2", "--bucket", BUCKET, "--prefix", prefix, "--output", "json")
        doc = json.loads(out or b"{}")
        return sorted(o["Key"] for o in doc.get("Contents", []))


# ---------------------------------------------------------------------------
# A broker's object store, whatever backend it uses
# ---------------------------------------------------------------------------

class LocalObjects:
    """Embedded mode: <data dir>/objects/<namespace>/<key>."""

    kind = "local"

    def __init__(self, data_dir, namespace="default"):
        self.root = Path(data_dir) / "objects" / namespace
        self.namespace = namespace

    def keys(self, prefix=""):
        """Keys (relative to the namespace) starting with prefix, sorted."""
        if not self.root.exists():
            return []
        out = []
        for d, _, files in os.walk(self.root):
            for f in files:
                k = os.path.relpath(os.path.join(d, f), self.root).replace(os.sep, "/")
                if k.startswith(prefix):
                    out.append(k)
        return sorted(out)

    def get(self, key):
        return (self.root / key).read_bytes()

    def put(self, key, data):
        p = self.root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    def describe(self, key=""):
        return str(self.root / key)


class S3Objects:
    """S3 mode: <bucket>/<namespace>/<key>, read with botocore."""

    kind = "s3"

    def __init__(self, endpoint, bucket, namespace="default", access_key=S3_KEY, secret_key=S3_KEY):
        self.endpoint, self.bucket, self.namespace = endpoint, bucket, namespace
        self._ak, self._sk = access_key, secret_key
        self._client = None

    def client(self):
        if self._client is None:
            import botocore.config
            import botocore.session
            self._client = botocore.session.get_session().create_client(
                "s3", region_name="us-east-1", endpoint_url=self.endpoint,
                aws_access_key_id=self._ak, aws_secret_access_key=self._sk,
                config=botocore.config.Config(s3={"addressing_style": "path"}))
        return self._client

    def keys(self, prefix=""):
        base = self.namespace + "/"
        out = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                            Prefix=base + prefix):
            out += [o["Key"][len(base):] for o in page.get("Contents", [])]
        return sorted(out)

    def get(self, key):
        return self.client().get_object(Bucket=self.bucket, Key=self.namespace + "/" + key)["Body"].read()

    def put(self, key, data):
        self.client().put_object(Bucket=self.bucket, Key=self.namespace + "/" + key, Body=data)

    def describe(self, key=""):
        return "%s/%s/%s/%s" % (self.endpoint, self.bucket, self.namespace, key)


def objects_for_env(env, data_dir):
    """The object-store view of a broker started with environment env:
    S3Objects when KAFSCALE_S3_BUCKET is set, LocalObjects otherwise, None
    for KAFSCALE_USE_MEMORY_S3."""
    ns = env.get("KAFSCALE_S3_NAMESPACE") or "default"
    if env.get("KAFSCALE_S3_BUCKET"):
        return S3Objects(env.get("KAFSCALE_S3_ENDPOINT"), env["KAFSCALE_S3_BUCKET"], ns,
                         env.get("KAFSCALE_S3_ACCESS_KEY", S3_KEY), env.get("KAFSCALE_S3_SECRET_KEY", S3_KEY))
    if env.get("KAFSCALE_USE_MEMORY_S3") in ("1", "true"):
        return None
    return LocalObjects(data_dir, ns)


# ---------------------------------------------------------------------------
# Cluster mode of the suite: one etcd + one s3rver for the whole session
# ---------------------------------------------------------------------------

CLUSTER_FLUSH_INTERVAL_MS = "20"
# A broker killed with -9 and restarted waits for its previous etcd session
# to expire (TTL + 2 s): keep that well inside the fixture's start deadline.
CLUSTER_LEASE_TTL_MS = "3000"


class ClusterBackend:
    """The shared etcd and s3rver of a KAFSCALE_TEST_MODE=cluster run.

    broker_env(extra_env, label) hands a broker fixture its environment:
    etcd endpoints, the s3rver settings with a namespace of its own, a 20 ms
    flush interval, then extra_env on top. Brokers run one after another: the
    etcd keyspace under /kafscale/ (and every lease) is wiped before each one.
    A broker that starts while another one still holds the shared etcd (a
    function-scoped broker inside a module that also has a module-scoped one)
    gets a private single-node etcd instead, so the two never share metadata.
    A module that brings its own S3 settings (KAFSCALE_S3_BUCKET in extra_env)
    keeps them; it still gets etcd.

    with_etcd=False (KAFSCALE_TEST_MODE=s3) leaves the metadata embedded
    (SQLite) and only puts the records in the shared s3rver."""

    def __init__(self, workdir, with_etcd=True):
        self.workdir = Path(workdir)
        self.etcd = Etcd(self.workdir / "etcd") if with_etcd else None
        self.s3 = S3rver(self.workdir / "s3")
        self._holder = None
        self._seq = 0

    def start(self):
        if self.etcd:
            self.etcd.start()
        try:
            self.s3.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        self.s3.stop()
        if self.etcd:
            self.etcd.stop()

    def _check_alive(self):
        if self.etcd and not self.etcd.members[0].running():
            raise HarnessError("the session etcd is not running; log:\n" + self.etcd.log_tails())
        if not self.s3.running():
            raise HarnessError("the session s3rver is not running; log:\n" + self.s3.log_text())

    def broker_env(self, extra_env, label, workdir):
        """(env, lease) for one broker fixture; call lease.release() when the
        broker has stopped."""
        self._check_alive()
        self._seq += 1
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", label or "broker").strip("-")[:60]
        namespace = "t%04d-%s" % (self._seq, safe)
        lease = _BackendLease(self)
        env = {"KAFSCALE_FLUSH_INTERVAL_MS": CLUSTER_FLUSH_INTERVAL_MS}
        if self.etcd is None:
            pass
        elif self._holder is None:
            self.etcd.wipe("/kafscale/")
            self._holder = lease
            lease.etcd = self.etcd
        else:
            lease.etcd = Etcd(Path(workdir) / "private-etcd").start()
            lease.private = True
        if lease.etcd is not None:
            env["KAFSCALE_ETCD_ENDPOINTS"] = lease.etcd.endpoints
            env["KAFSCALE_LEASE_TTL_MS"] = CLUSTER_LEASE_TTL_MS
        extra = dict(extra_env or {})
        if not extra.get("KAFSCALE_S3_BUCKET") and not extra.get("KAFSCALE_USE_MEMORY_S3"):
            env.update(self.s3.env(namespace))
        env.update(extra)
        lease.namespace = env.get("KAFSCALE_S3_NAMESPACE", "default")
        return env, lease


class _BackendLease:
    def __init__(self, backend):
        self.backend = backend
        self.etcd = None
        self.private = False
        self.namespace = None

    def release(self):
        if self.private:
            self.etcd.stop()
        elif self.backend._holder is self:
            self.backend._holder = None


# ---------------------------------------------------------------------------
# Several brokers of one cluster (multi-broker and failover tests)
# ---------------------------------------------------------------------------

# A broker restarted within its predecessor's lease TTL waits for that lease
# to expire (up to TTL + 2 s) before it registers and logs broker_started.
BROKER_START_DEADLINE_S = 20.0
BROKER_STOP_DEADLINE_S = 15.0
BROKER_SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                            "ThreadSanitizer", "runtime error:")

_M64 = (1 << 64) - 1


def _fnv1a64(data):
    h = 0xCBF29CE484222325
    for c in data:
        h = ((h ^ c) * 0x100000001B3) & _M64
    return h


def _fmix64(k):
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    return k ^ (k >> 33)


def placement_score(key, broker_id):
    """docs/cluster.md, Placement: fmix64(fnv1a64(key) XOR
    fmix64((uint64)(uint32)id + 0x9e3779b97f4a7c15))."""
    if isinstance(key, str):
        key = key.encode()
    return _fmix64(_fnv1a64(key) ^ _fmix64(((broker_id & 0xFFFFFFFF) + 0x9E3779B97F4A7C15) & _M64))


def place(key, ids):
    """The broker that rendezvous placement names for key ("{topic}/{partition}"
    or "group:{group}") among the live ids: the highest score, ties to the
    lower id; -1 for no ids. An independent implementation of the documented
    function (the broker's is ks_cluster_place)."""
    ids = sorted(ids)
    if not ids:
        return -1
    return max(ids, key=lambda i: (placement_score(key, i), -i))


class ClusterBroker:
    """One broker process of a BrokerCluster. Its id, Kafka port, metrics
    port, data dir and log file stay the same for its lifetime, so start()
    after kill() is a restart with the same id. Attributes like
    conftest.Broker's: id, host, port, bootstrap, metrics_port, data_dir,
    log_path, proc, starts; `paused` while it is SIGSTOPped."""

    backend = None  # conftest's failure report reads it

    def __init__(self, broker_id, workdir, binary, extra_env):
        self.id = broker_id
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_path = self.workdir / "broker.log"
        self.host = "127.0.0.1"
        self.port, self.metrics_port = free_ports(2)
        self.extra_env = dict(extra_env)
        self.proc = None
        self.starts = 0
        self.paused = False
        self.unclean_exits = []   # (start #, status or what happened)
        self._start_offset = 0

    def __repr__(self):
        return "broker %d (%s)" % (self.id, self.bootstrap)

    @property
    def bootstrap(self):
        return "%s:%d" % (self.host, self.port)

    def env(self):
        return broker_env(self.host, self.port, self.metrics_port, self.data_dir, self.extra_env,
                          KAFSCALE_BROKER_ID=str(self.id))

    # --- logs ------------------------------------------------------------
    def note(self, text):
        with open(self.log_path, "a") as f:
            f.write("=== test harness: %s ===\n" % text)

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_since(self, offset):
        """The log from byte offset on (bytes)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""

    def log_size(self):
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_tail(self, n=80):
        return "\n".join(self.log_text().splitlines()[-n:])

    def sanitizer_lines(self):
        return [l for l in self.log_text().splitlines() if any(m in l for m in BROKER_SANITIZER_MARKERS)]

    # --- lifecycle -------------------------------------------------------
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    is_running = running

    def start(self, wait=True, timeout=BROKER_START_DEADLINE_S):
        """Starts the process (again: same id, ports and data dir); with wait,
        returns once it has logged broker_started (listening and registered
        in the cluster). Call from the main thread (die_with_parent)."""
        assert not self.running(), "%r already running" % self
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise HarnessError("broker binary %s not found or not executable (build it with `make`, or set "
                               "KAFSCALE_BROKER_BIN)" % self.binary)
        self.starts += 1
        self.note("start #%d of broker id %d on %s" % (self.starts, self.id, self.bootstrap))
        self._start_offset = self.log_size()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(die_with_parent([self.binary]), env=self.env(), cwd=str(self.workdir),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        register_process(self.proc)
        self.paused = False
        if wait:
            self.wait_started(timeout)
        return self

    def wait_started(self, timeout=BROKER_START_DEADLINE_S):
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise HarnessError("%r exited with status %d during start-up; log:\n%s"
                                   % (self, rc, self.log_tail()))
            if b"event=broker_started" in self.log_since(self._start_offset):
                return
            if time.monotonic() >= deadline:
                raise HarnessError("%r did not log broker_started within %.0f s; log:\n%s"
                                   % (self, timeout, self.log_tail()))
            time.sleep(0.02)

    def kill(self):
        """kill -9 (also of a paused process); not an unclean exit."""
        if self.running():
            self.proc.kill()
            self.proc.wait()
            self.note("start #%d killed with SIGKILL by the test" % self.starts)
        self.paused = False

    def pause(self):
        """SIGSTOP: the process stays, frozen (its sockets still accept
        connections in the kernel's backlog)."""
        assert self.running(), "%r is not running" % self
        self.note("start #%d stopped with SIGSTOP by the test" % self.starts)
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        """SIGCONT."""
        if self.running():
            self.proc.send_signal(signal.SIGCONT)
            self.note("start #%d continued with SIGCONT by the test" % self.starts)
        self.paused = False

    def terminate(self):
        """Sends SIGTERM (SIGCONT first if paused) without waiting; True if
        the process was running."""
        if not self.running():
            return False
        if self.paused:
            self.resume()
        self.proc.send_signal(signal.SIGTERM)
        return True

    def wait_exit(self, timeout=BROKER_STOP_DEADLINE_S):
        """After terminate(): waits; SIGKILL after timeout. Records a non-zero
        status or a hang as an unclean exit. Returns the status."""
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.note("start #%d: no exit %.0f s after SIGTERM; killed with SIGKILL" % (self.starts, timeout))
            self.unclean_exits.append((self.starts, "hung after SIGTERM"))
            return self.proc.returncode
        rc = self.proc.returncode
        self.note("start #%d exited with status %d" % (self.starts, rc))
        if rc != 0:
            self.unclean_exits.append((self.starts, rc))
        return rc

    def stop(self, timeout=BROKER_STOP_DEADLINE_S):
        """SIGTERM and wait (SIGKILL after timeout). Returns the exit status
        (None if it was not running)."""
        if not self.terminate():
            return None
        return self.wait_exit(timeout)


class BrokerCluster:
    """`size` brokers with ids 0..size-1 on one etcd (an EtcdCluster: all
    its endpoints) and one S3 namespace of an S3rver, all on loopback, each
    with its own Kafka and metrics port (ClusterBroker), session lease TTL
    `lease_ttl_ms`, flush interval CLUSTER_FLUSH_INTERVAL_MS unless extra_env
    says otherwise.

        c = BrokerCluster(tmpdir, binary, etcd, s3, "ns"); c.start()
        c[i] / c.brokers            the brokers (ClusterBroker)
        c.bootstrap                 "127.0.0.1:p0,127.0.0.1:p1,..."
        c.kill(i)                   kill -9
        c.pause(i) / c.resume(i)    SIGSTOP / SIGCONT
        c.start_broker(i)           start again with the same id (after kill or stop)
        c.restart(i)                SIGTERM, then start with the same id
        c.live_ids()                ids of brokers running and not paused
        c.finish()                  stop all (SIGTERM together); HarnessError on an
                                    unclean exit or a sanitizer report, with log tails
    """

    def __init__(self, workdir, binary, etcd, s3, namespace, size=3, lease_ttl_ms=3000, extra_env=None):
        self.workdir = Path(workdir)
        self.etcd, self.s3, self.namespace = etcd, s3, namespace
        self.lease_ttl_ms = int(lease_ttl_ms)
        env = {"KAFSCALE_ETCD_ENDPOINTS": etcd.endpoints, "KAFSCALE_LEASE_TTL_MS": str(self.lease_ttl_ms),
               "KAFSCALE_FLUSH_INTERVAL_MS": CLUSTER_FLUSH_INTERVAL_MS}
        env.update(s3.env(namespace))
        env.update({k: str(v) for k, v in (extra_env or {}).items()})
        self.brokers = [ClusterBroker(i, self.workdir / ("broker%d" % i), binary, env) for i in range(size)]

    def __getitem__(self, i):
        return self.brokers[i]

    def __iter__(self):
        return iter(self.brokers)

    def __len__(self):
        return len(self.brokers)

    @property
    def bootstrap(self):
        return ",".join(b.bootstrap for b in self.brokers)

    @property
    def lease_ttl_s(self):
        return self.lease_ttl_ms / 1000.0

    def start(self, timeout=BROKER_START_DEADLINE_S):
        """Starts every broker (together) and waits until each has logged
        broker_started."""
        try:
            for b in self.brokers:
                b.start(wait=False)
            for b in self.brokers:
                b.wait_started(timeout)
        except BaseException:
            self.stop_all()
            raise
        return self

    def live_ids(self):
        return [b.id for b in self.brokers if b.running() and not b.paused]

    def live(self):
        return [b for b in self.brokers if b.running() and not b.paused]

    def kill(self, i):
        self.brokers[i].kill()

    def pause(self, i):
        self.brokers[i].pause()

    def resume(self, i):
        self.brokers[i].resume()

    def start_broker(self, i, wait=True, timeout=BROKER_START_DEADLINE_S):
        return self.brokers[i].start(wait=wait, timeout=timeout)

    def restart(self, i, timeout=BROKER_START_DEADLINE_S):
        b = self.brokers[i]
        rc = b.stop()
        if rc not in (None, 0):
            raise HarnessError("%r exited with status %s on SIGTERM before its restart; log:\n%s"
                               % (b, rc, b.log_tail()))
        return b.start(timeout=timeout)

    def stop_all(self):
        """SIGTERM to every running broker at once, then waits for each."""
        stopping = [b for b in self.brokers if b.terminate()]
        return {b.id: b.wait_exit() for b in stopping}

    def finish(self):
        self.stop_all()
        problems = []
        for b in self.brokers:
            if b.unclean_exits:
                problems.append("%r: unclean exit(s) (start #, status): %r" % (b, b.unclean_exits))
            san = b.sanitizer_lines()
            if san:
                problems.append("%r: sanitizer reports:\n  %s" % (b, "\n  ".join(san[:20])))
        if problems:
            raise HarnessError("\n".join(problems) + "\n" + self.log_tails())

    def log_tails(self, n=60):
        return "\n".join("--- broker %d (%s), last %d lines ---\n%s" % (b.id, b.log_path, n, b.log_tail(n))
                         for b in self.brokers)


# ---------------------------------------------------------------------------
# protoc: an independent reader and writer of the metadata records
# ---------------------------------------------------------------------------

def _protoc(mode, msg_type, data, proto_dir=PROTO_DIR):
    protoc = shutil.which("protoc") or "/usr/bin/protoc"
    if not os.access(protoc, os.X_OK):
        raise HarnessError("protoc not found: run `make test-deps` (Debian package protobuf-compiler)")
    p = subprocess.run([protoc, "--%s=%s" % (mode, msg_type), "--proto_path=%s" % proto_dir, METADATA_PROTO],
                       input=data, capture_output=True, timeout=30)
    if p.returncode != 0:
        raise HarnessError("protoc --%s=%s failed (exit %d): %s"
                           % (mode, msg_type, p.returncode, p.stderr.decode(errors="replace")))
    return p.stdout


def protoc_decode(msg_type, data):
    """Text format of data decoded as msg_type (e.g. kafscale.metadata.TopicConfig)."""
    return _protoc("decode", msg_type, data).decode()


def protoc_encode(msg_type, text):
    """Binary encoding of the text-format message."""
    return _protoc("encode", msg_type, text.encode())


_TOKEN = re.compile(r'\s*(?:(\{)|(\})|([A-Za-z_][A-Za-z0-9_.]*)\s*:?|"((?:[^"\\]|\\.)*)"|(-?[0-9][0-9.eE+-]*))')


def parse_text_format(text):
    """A small parser for protoc's text output: {field: [values]}, where a
    value is a str, an int, or (for a nested message) a dict of the same
    shape. Enough for the metadata records (no enums, no floats)."""
    pos = 0

    def unquote(s):
        raw = codecs.escape_decode(s.encode("ascii", "backslashreplace"))[0]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw

    def parse_msg():
        nonlocal pos
        out = {}
        while True:
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                if text[pos:].strip():
                    raise ValueError("cannot parse text format at %r" % text[pos:pos + 40])
                return out
            if m.group(2):
                pos = m.end()
                return out
            name = m.group(3)
            if not name:
                raise ValueError("expected a field name at %r" % text[pos:pos + 40])
            pos = m.end()
            v = _TOKEN.match(text, pos)
            if not v:
                raise ValueError("field %s without value" % name)
            pos = v.end()
            if v.group(1):
                val = parse_msg()
            elif v.group(4) is not None:
                val = unquote(v.group(4))
            elif v.group(5) is not None:
                val = int(v.group(5))
            else:
                val = v.group(3)  # bare identifier (enum / bool)
            out.setdefault(name, []).append(val)

    return parse_msg()


def decode_message(msg_type, data):
    """protoc --decode + parse_text_format; map fields become dicts
    (field `config` of TopicConfig -> {key: value})."""
    fields = parse_text_format(protoc_decode(msg_type, data))
    for name, vals in list(fields.items()):
        if vals and all(isinstance(v, dict) and set(v) <= {"key", "value"} and "key" in v for v in vals):
            fields[name] = {v["key"][0]: (v.get("value") or [""])[0] for v in vals}
    return fields
