"""The operator's HTTP endpoint (KAFSCALE_METRICS_ADDR): /metrics parsed by an
independent Prometheus text parser (prometheus_client, Debian's
python3-prometheus-client) after a produce/consume workload, with counters
checked against what the test did and against librdkafka's own statistics;
/healthz; /readyz; and /readyz following the object store (s3rver stopped:
503; restarted on the same port and directory: 200 again)."""

import http.client
import json
import re
import socket
import struct
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

import conftest
import kafka_wire as kw
from test_s3_backend import BUCKET, S3rver

DOCS = Path(__file__).resolve().parents[2] / "docs"

N = 2000
PARTITIONS = 2
VALUE_BYTES = 100

READY_DEADLINE_S = 15.0
# Readiness is probed every 2 s; a failed S3 check takes a few seconds of
# retries (KAFSCALE_S3_MAX_RETRIES=5, jittered backoff from 100 ms).
OUTAGE_DEADLINE_S = 40.0
QUIESCE_DEADLINE_S = 15.0


# --- HTTP and parsing helpers ------------------------------------------------

def http_get(port, path, method="GET", timeout=5.0):
    """(status, headers dict, body text) of one request to 127.0.0.1:port."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode("utf-8", "replace")
    finally:
        c.close()


class Scrape:
    """One /metrics scrape, parsed by prometheus_client."""

    def __init__(self, port):
        status, headers, body = http_get(port, "/metrics")
        assert status == 200, (status, body[:500])
        assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
        self.text = body
        # Raises on anything that is not valid exposition format.
        self.families = list(text_string_to_metric_families(body))
        self.types = {}
        self.samples = []  # (name, labels dict, value)
        for fam in self.families:
            for s in fam.samples:
                self.types[s.name] = fam.type
                self.samples.append((s.name, dict(s.labels), s.value))

    def get(self, name, **labels):
        """Sum of the samples called `name` whose labels include `labels`."""
        found = [v for (n, l, v) in self.samples
                 if n == name and all(l.get(k) == str(v2) for k, v2 in labels.items())]
        return sum(found) if found else None

    def series(self, name):
        return [(l, v) for (n, l, v) in self.samples if n == name]


def wait_for(pred, deadline_s, what):
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    pytest.fail("timed out after %.0f s waiting for %s (last: %r)" % (deadline_s, what, last))


def readyz(port):
    try:
        status, _, body = http_get(port, "/readyz", timeout=3.0)
        return status, body
    except OSError as e:
        return None, str(e)


# --- workload ---------------------------------------------------------------

def produce(bs, topic):
    acked, errors, stats = [], [], []

    def cb(err, msg):
        (errors if err else acked).append(err or msg)

    p = Producer({"bootstrap.servers": bs, "acks": "all", "linger.ms": 5,
                  "statistics.interval.ms": 100, "stats_cb": stats.append})
    for i in range(N):
        p.produce(topic, key=b"k%d" % i, value=(b"%06d" % i).ljust(VALUE_BYTES, b"v"),
                  partition=i % PARTITIONS, on_delivery=cb)
        if i % 200 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    assert not errors, errors[:3]
    # librdkafka's own count of Produce requests sent, from a statistics
    # report emitted after every delivery was acknowledged.
    seen = len(stats)
    deadline = time.monotonic() + 10
    while len(stats) < seen + 2 and time.monotonic() < deadline:
        p.poll(0.1)
    assert len(stats) >= seen + 2, "no librdkafka statistics after flush"
    st = json.loads(stats[-1])
    sent = sum(b.get("req", {}).get("Produce", 0) for b in st["brokers"].values())
    return len(acked), sent


def consume(bs, topic):
    c = Consumer({"bootstrap.servers": bs, "group.id": "metrics-check", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got = 0
    deadline = time.monotonic() + 30
    try:
        while got < N and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got += 1
    finally:
        c.close()
    return got


def bad_requests(broker):
    """One request with a version below what the broker serves (closed: a
    request error) and
    one frame with an invalid size (closed before a request exists)."""
    s = kw.connect(broker.host, broker.port)
    s.sendall(kw.request_frame(kw.FETCH, 3, 7, header_version=1))
    assert kw.wait_closed(s), "broker kept the connection after Fetch v3"
    s.close()
    s = kw.connect(broker.host, broker.port)
    s.sendall(struct.pack(">i", 3) + b"abc")
    assert kw.wait_closed(s), "broker kept the connection after a 3-byte frame"
    s.close()


# --- tests ------------------------------------------------------------------

def test_metrics_after_workload(broker):
    port = broker.metrics_port
    t_start = time.time()
    wait_for(lambda: readyz(port)[0] == 200, READY_DEADLINE_S, "/readyz 200 after start")
    status, headers, body = http_get(port, "/healthz")
    assert (status, body) == (200, "ok\n")

    bs = broker.bootstrap
    topic = "metrics-orders"
    admin = AdminClient({"bootstrap.servers": bs})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(10)
    acked, client_produce_requests = produce(bs, topic)
    assert acked == N
    assert client_produce_requests >= 1
    assert consume(bs, topic) == N
    del admin
    bad_requests(broker)

    # Every client is gone: wait until the broker has seen every connection
    # close and every request complete (a parked Fetch ends at its MaxWaitMs).
    def quiet():
        s = Scrape(port)
        if s.get("kafscale_connections_open") == 0 and s.get("kafscale_requests_in_flight") == 0:
            return s
        return None
    m = wait_for(quiet, QUIESCE_DEADLINE_S, "no open connections and no requests in flight")

    # Naming and types.
    for fam in m.families:
        assert fam.name.startswith("kafscale_"), fam.name
        assert fam.documentation, "no HELP for %s" % fam.name
    assert m.types["kafscale_requests_total"] == "counter"
    assert m.types["kafscale_connections_open"] == "gauge"
    assert m.types["kafscale_request_duration_seconds_bucket"] == "histogram"

    # Produce and fetch: exactly what the test did.
    assert m.get("kafscale_produce_records_total") == N
    assert m.get("kafscale_produce_bytes_total") >= N * VALUE_BYTES
    assert m.get("kafscale_produce_partition_errors_total") == 0
    assert m.get("kafscale_fetch_records_total") >= N
    assert m.get("kafscale_fetch_bytes_total") >= N * VALUE_BYTES

    # Requests: at least every Produce librdkafka says it sent, each
    # labelled with a version this broker serves.
    produce_reqs = m.get("kafscale_requests_total", api="Produce")
    assert produce_reqs >= client_produce_requests, (produce_reqs, client_produce_requests)
    for labels, v in m.series("kafscale_requests_total"):
        if labels["api"] == "Produce":
            assert 3 <= int(labels["version"]) <= 11 and labels["api_key"] == "0", labels
    assert m.get("kafscale_requests_total", api="Fetch") >= 1
    assert m.get("kafscale_requests_total", api="ApiVersions") >= 3
    assert m.get("kafscale_requests_total", api="CreateTopics") == 1
    # The one bad request: closed, counted as an error of Fetch v3.
    assert m.get("kafscale_request_errors_total") == 1
    assert m.get("kafscale_request_errors_total", api="Fetch", version="3") == 1
    assert m.get("kafscale_request_frame_errors_total") == 1

    # Latency histogram: one observation per completed request; cumulative
    # buckets ending in +Inf == _count.
    for api in ("Produce", "Fetch", "Metadata"):
        count = m.get("kafscale_request_duration_seconds_count", api=api)
        assert count == m.get("kafscale_requests_total", api=api), api
        buckets = sorted(((float(l["le"]), v) for (l, v) in m.series("kafscale_request_duration_seconds_bucket")
                          if l["api"] == api), key=lambda x: x[0])
        assert buckets[-1] == (float("inf"), count)
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), buckets
        assert 0 < m.get("kafscale_request_duration_seconds_sum", api=api) < 60 * count
    # Produce waits for durability, not for a long poll.
    within_5s = [v for (l, v) in m.series("kafscale_request_duration_seconds_bucket")
                 if l["api"] == "Produce" and float(l["le"]) == 5.0]
    assert within_5s == [m.get("kafscale_request_duration_seconds_count", api="Produce")]

    # Connections: consistent, and at least admin + producer + consumer +
    # the two raw sockets.
    accepted = m.get("kafscale_connections_accepted_total")
    assert accepted >= 5
    assert m.get("kafscale_connections_closed_total") == accepted
    assert m.get("kafscale_connections_refused_total") == 0
    assert m.get("kafscale_network_received_bytes_total") >= m.get("kafscale_produce_bytes_total")
    assert m.get("kafscale_network_sent_bytes_total") >= m.get("kafscale_fetch_bytes_total")

    # Flushes: every one committed, one per .kfs put, and the consumer's
    # reads were served from the cache (hot tail).
    assert m.get("kafscale_flushes_total", result="ok") > 0
    assert m.get("kafscale_flushes_total", result="error") == 0
    assert m.get("kafscale_flushes_total", result="fenced") == 0
    assert m.get("kafscale_flush_duration_seconds_count") == m.get("kafscale_flushes_total", result="ok")
    assert m.get("kafscale_flush_bytes_total") >= m.get("kafscale_produce_bytes_total")
    assert m.get("kafscale_cache_hits_total") > 0
    assert m.get("kafscale_cache_bytes") > 0
    # Object store: the produce flushed segments (puts), every request
    # succeeded, and each one is in the latency histogram once.
    assert m.types["kafscale_object_store_requests_total"] == "counter"
    assert m.get("kafscale_object_store_requests_total", op="put", result="ok") > 0
    assert m.get("kafscale_object_store_requests_total", op="check", result="ok") >= 1  # readiness
    assert m.get("kafscale_object_store_requests_total", result="error") == 0
    for op in ("put", "get", "list", "delete", "check"):
        total = m.get("kafscale_object_store_requests_total", op=op)
        assert m.get("kafscale_object_store_request_duration_seconds_count", op=op) == total, op
    # Metadata store: segment commits (txn), the readiness reads (range), no
    # errors; histogram counts match.
    assert m.get("kafscale_metadata_store_requests_total", op="txn", result="ok") > 0
    assert m.get("kafscale_metadata_store_requests_total", op="range", result="ok") >= 1
    assert m.get("kafscale_metadata_store_requests_total", result="error") == 0
    for labels, v in m.series("kafscale_metadata_store_requests_total"):
        assert labels["op"] in ("range", "put", "delete", "txn", "lease_grant", "lease_keepalive", "lease_revoke",
                                "watch"), labels
    for op in ("range", "put", "txn"):
        total = m.get("kafscale_metadata_store_requests_total", op=op)
        assert m.get("kafscale_metadata_store_request_duration_seconds_count", op=op) == total, op

    # Health.
    assert m.get("kafscale_ready") == 1
    assert m.get("kafscale_object_store_up") == 1
    assert m.get("kafscale_metadata_store_up") == 1
    assert t_start - 60 <= m.get("kafscale_start_time_seconds") <= time.time()


GROUP = "metrics-group"


def group_gauges(port):
    m = Scrape(port)
    states = {l["state"]: v for (l, v) in m.series("kafscale_consumer_groups")}
    return m, states, m.get("kafscale_consumer_group_members")


def test_consumer_group_metrics(broker):
    """A consumer in a group: the group shows Stable with one member while it
    is in; Empty with none after it leaves; one rebalance counted."""
    port = broker.metrics_port
    bs = broker.bootstrap
    topic = "metrics-group-topic"
    admin = AdminClient({"bootstrap.servers": bs})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    m, states, members = group_gauges(port)
    assert m.types["kafscale_consumer_groups"] == "gauge"
    assert set(states) == {"Empty", "PreparingRebalance", "CompletingRebalance", "Stable", "Dead"}
    assert sum(states.values()) == 0 and members == 0
    assert m.get("kafscale_consumer_group_rebalances_total") == 0

    c = Consumer({"bootstrap.servers": bs, "group.id": GROUP, "session.timeout.ms": 10000,
                  "auto.offset.reset": "earliest"})
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 30
        while not c.assignment() and time.monotonic() < deadline:
            c.poll(0.2)
        assert c.assignment(), "no assignment"

        def stable():
            c.poll(0.1)
            _, st, mem = group_gauges(port)
            return (st, mem) if st["Stable"] == 1 and mem == 1 else None
        states, members = wait_for(stable, 15, "the group Stable with one member")
        assert sum(states.values()) == 1
        assert Scrape(port).get("kafscale_consumer_group_rebalances_total") == 1
    finally:
        c.close()  # LeaveGroup

    def empty():
        _, st, mem = group_gauges(port)
        return (st, mem) if st["Empty"] == 1 and mem == 0 else None
    states, members = wait_for(empty, 15, "the group Empty with no members after the consumer left")
    assert sum(states.values()) == 1
    assert Scrape(port).get("kafscale_consumer_group_rebalances_total") == 1


@pytest.mark.parametrize("broker_extra_env", [{"KAFSCALE_LAG_INTERVAL_MS": "200"}], ids=["lag-200ms"])
def test_consumer_lag_metrics(broker):
    """kafscale_consumer_group_lag: high watermark minus committed offset per
    group and partition, following produces and commits."""
    port, bs = broker.metrics_port, broker.bootstrap
    topic, group = "lag-topic", "lag-group"
    admin = AdminClient({"bootstrap.servers": bs})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(10)
    p = Producer({"bootstrap.servers": bs, "acks": "all", "linger.ms": 5})
    for i in range(300):
        p.produce(topic, value=b"v%d" % i, partition=0 if i < 200 else 1)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": bs, "group.id": group, "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 150), TopicPartition(topic, 1, 0)], asynchronous=False)

        def lag():
            m = Scrape(port)
            assert [f.type for f in m.families if f.name == "kafscale_consumer_group_lag"] == ["gauge"]
            return {int(l["partition"]): v for l, v in m.series("kafscale_consumer_group_lag")
                    if l.get("group") == group and l.get("topic") == topic}
        wait_for(lambda: lag() == {0: 50, 1: 100}, 10, "lag 50 and 100")
        # More records raise it; a commit at the end brings it to 0.
        for i in range(20):
            p.produce(topic, value=b"w%d" % i, partition=0)
        assert p.flush(30) == 0
        wait_for(lambda: lag() == {0: 70, 1: 100}, 10, "lag 70 and 100 after 20 more records")
        c.commit(offsets=[TopicPartition(topic, 0, 220), TopicPartition(topic, 1, 100)], asynchronous=False)
        wait_for(lambda: lag() == {0: 0, 1: 0}, 10, "lag 0 after committing the ends")
    finally:
        c.close()


# Suffixes Prometheus adds to a histogram's series.
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard_metrics():
    """Every kafscale_ metric the dashboard's queries name (histogram series
    reduced to their family)."""
    dash = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))
    walk(dash["panels"])
    for v in dash["templating"]["list"]:
        if v.get("definition"):
            exprs.append(v["definition"])
    names = set()
    for e in exprs:
        for n in re.findall(r"\bkafscale_[a-zA-Z0-9_]+", e):
            for suf in HIST_SUFFIXES:
                if n.endswith(suf):
                    n = n[: -len(suf)]
            names.add(n)
    return dash, exprs, names


def test_grafana_dashboard_names_only_real_metrics(broker):
    """Every metric the sample dashboard queries is exposed by a broker after
    a produce/consume/group workload, or documented in docs/operations.md
    (the cluster-mode gauges, absent in embedded mode); and every family a
    broker exposes is documented."""
    dash, exprs, names = dashboard_metrics()
    assert 30 <= dash["schemaVersion"] <= 45
    assert any(v["name"] == "DS_PROMETHEUS" and v["type"] == "datasource" for v in dash["templating"]["list"])
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
    assert len(exprs) >= 20 and len(names) >= 25

    bs = broker.bootstrap
    topic = "dash-topic"
    admin = AdminClient({"bootstrap.servers": bs})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    p = Producer({"bootstrap.servers": bs, "acks": "all"})
    for i in range(20):
        p.produce(topic, value=b"v%d" % i)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": bs, "group.id": "dash-group", "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got, deadline = 0, time.monotonic() + 30
    while got < 20 and time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is not None and not msg.error():
            got += 1
    c.commit(asynchronous=False)
    c.close()
    assert got == 20

    exposed = {f.name for f in Scrape(broker.metrics_port).families}
    # prometheus_client drops a counter's _total from the family name.
    exposed |= {n + "_total" for n in exposed}
    doc = (DOCS / "operations.md").read_text()
    documented = set(re.findall(r"`(kafscale_[a-zA-Z0-9_]+)`", doc))
    missing = sorted(n for n in names if n not in exposed and n not in documented)
    assert not missing, "dashboard queries metrics that do not exist: %s" % missing
    for n in ("kafscale_object_store_requests_total", "kafscale_metadata_store_requests_total",
              "kafscale_consumer_groups", "kafscale_cluster_live_brokers", "kafscale_ready"):
        assert n in names, n
    undocumented = sorted(f.name for f in Scrape(broker.metrics_port).families
                          if f.name not in documented and f.name + "_total" not in documented)
    assert not undocumented, "metrics missing from docs/operations.md: %s" % undocumented


def test_http_errors_and_content_types(broker):
    port = broker.metrics_port
    assert http_get(port, "/nope")[0] == 404
    assert http_get(port, "/metrics", method="POST")[0] == 405
    status, headers, body = http_get(port, "/healthz", method="HEAD")
    assert status == 200 and body == ""
    status, headers, body = http_get(port, "/readyz")
    assert status == 200 and body == "ready\n"
    assert headers["content-type"].startswith("text/plain")


def test_metrics_port_in_use_stops_startup(tmp_path):
    """A metrics port that cannot be bound is a start-up error, not a silent
    fallback."""
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        b = conftest.Broker(conftest._broker_bin(), tmp_path)
        b.metrics_port = blocker.getsockname()[1]
        import subprocess
        p = subprocess.run([str(b.binary)], env=b.env(), cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=20)
        assert p.returncode != 0
        assert "event=metrics_listen_failed" in p.stderr, p.stderr
        assert "KAFSCALE_METRICS_ADDR" in p.stderr
        assert "broker_started" not in p.stderr
    finally:
        blocker.close()


# --- readiness against a real S3 server ---------------------------------------

@pytest.fixture
def s3(tmp_path):
    srv = S3rver(tmp_path)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def s3_broker(tmp_path_factory, s3):
    yield from conftest._run_broker(tmp_path_factory, {
        "KAFSCALE_S3_BUCKET": BUCKET,
        "KAFSCALE_S3_ENDPOINT": s3.endpoint,
        "KAFSCALE_S3_ACCESS_KEY": "S3RVER",
        "KAFSCALE_S3_SECRET_KEY": "S3RVER",
        "KAFSCALE_FLUSH_INTERVAL_MS": "20",
    })


def test_readyz_follows_object_store(s3_broker, s3):
    port = s3_broker.metrics_port
    wait_for(lambda: readyz(port)[0] == 200, READY_DEADLINE_S, "/readyz 200 after start")
    m = Scrape(port)
    assert m.get("kafscale_ready") == 1 and m.get("kafscale_object_store_up") == 1

    s3.stop()
    status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(readyz(port)),
                            OUTAGE_DEADLINE_S, "/readyz 503 with the object store stopped")
    assert body.startswith("not ready: object store unavailable"), body
    assert http_get(port, "/healthz")[0] == 200  # alive all the same
    m = Scrape(port)
    assert m.get("kafscale_ready") == 0
    assert m.get("kafscale_object_store_up") == 0
    assert m.get("kafscale_metadata_store_up") == 1

    s3.start()  # same port, same directory
    wait_for(lambda: readyz(port)[0] == 200, OUTAGE_DEADLINE_S, "/readyz 200 after the object store returned")
    m = Scrape(port)
    assert m.get("kafscale_ready") == 1 and m.get("kafscale_object_store_up") == 1
    log = s3_broker.log_text()
    assert "event=broker_not_ready" in log and "object store unavailable" in log
    assert log.count("event=broker_ready") >= 2
