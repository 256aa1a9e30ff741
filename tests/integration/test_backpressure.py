"""The produce-buffer budget (KAFSCALE_PRODUCE_BUFFER_BYTES): fast producers
against a stalled object store (s3rver SIGSTOPped) keep the broker's memory
under the budget plus a fixed margin; the broker stops reading their
connections (kafscale_produce_paused_connections) while other clients are
still answered; once the store returns everything acknowledged is there,
exactly once."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import conftest
import kafka_wire as kw
from test_metrics import Scrape, wait_for
from test_s3_backend import BUCKET

MIB = 1 << 20
BUDGET = 24 * MIB
# RSS above the idle broker's that the budget may not explain: socket and
# read buffers (one frame per connection), allocator slack, the segment
# cache's last segment, libcurl's buffers.
RSS_MARGIN = 48 * MIB
# The budget counts the capacity of partition chunks, which grows by
# doubling, and one frame per connection may pass just before it closes.
METRIC_SLACK = 16 * MIB

PRODUCERS = 3
PER_PRODUCER = 60000   # 1 KiB records: 60 MB offered per producer
VALUE_BYTES = 1024
PARTITIONS = 4
STALL_S = 8.0


def rss_bytes(pid):
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for pid %d" % pid)


def sanitized(binary):
    """ASan keeps freed memory in quarantine: RSS says nothing about the
    budget under it."""
    return b"__asan_init" in Path(binary).read_bytes()


@pytest.fixture
def budget_broker(tmp_path_factory, s3):
    yield from conftest._run_broker(tmp_path_factory, {
        "KAFSCALE_S3_BUCKET": BUCKET,
        "KAFSCALE_S3_ENDPOINT": s3.endpoint,
        "KAFSCALE_S3_ACCESS_KEY": "S3RVER",
        "KAFSCALE_S3_SECRET_KEY": "S3RVER",
        "KAFSCALE_S3_NAMESPACE": "budget-%d" % os.getpid(),
        "KAFSCALE_FLUSH_INTERVAL_MS": "20",
        "KAFSCALE_PRODUCE_BUFFER_BYTES": str(BUDGET),
        "KAFSCALE_CACHE_BYTES": "0",
        # A stall, not a failure: uploads wait for the store to return.
        "KAFSCALE_S3_TIMEOUT_MS": "120000",
    })


@pytest.mark.embedded_only
def test_memory_budget_with_stalled_object_store(budget_broker, s3):
    b = budget_broker
    topic = "budget"
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(15)
    wait_for(lambda: Scrape(b.metrics_port).get("kafscale_produce_buffer_budget_bytes") == BUDGET, 5,
             "the budget gauge")

    acked = {}     # (producer, seq) -> (partition, offset)
    errors = []
    lock = threading.Lock()

    def on_delivery(err, msg):
        with lock:
            if err:
                errors.append(err)
            else:
                pid, seq = msg.key().split(b":")
                acked[(int(pid), int(seq))] = (msg.partition(), msg.offset())

    producers = [Producer({
        "bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 200,
        "batch.size": 1000000, "message.max.bytes": 1000000,
        "max.in.flight.requests.per.connection": 1000,
        "queue.buffering.max.messages": PER_PRODUCER + 1000,
        "queue.buffering.max.kbytes": 1048576,
        "message.timeout.ms": 180000, "request.timeout.ms": 120000,
        "sticky.partitioning.linger.ms": 0,
    }) for _ in range(PRODUCERS)]
    # Connected and warm before the stall.
    for i, p in enumerate(producers):
        p.produce(topic, key=b"%d:%d" % (i, -1), value=b"warm", on_delivery=lambda e, m: None)
        assert p.flush(15) == 0

    idle_rss = rss_bytes(b.proc.pid)
    os.kill(s3.proc.pid, signal.SIGSTOP)
    stalled = True
    try:
        payload = b"x" * (VALUE_BYTES - 16)
        for seq in range(PER_PRODUCER):
            for i, p in enumerate(producers):
                p.produce(topic, key=b"%d:%d" % (i, seq), value=b"%015d|" % seq + payload,
                          partition=seq % PARTITIONS, on_delivery=on_delivery)
            if seq % 5000 == 0:
                for p in producers:
                    p.poll(0)
        # The producers push as fast as the broker reads; watch it.
        peak_rss, peak_buffer, paused_seen = 0, 0, 0
        t_end = time.monotonic() + STALL_S
        while time.monotonic() < t_end:
            for p in producers:
                p.poll(0)
            peak_rss = max(peak_rss, rss_bytes(b.proc.pid))
            m = Scrape(b.metrics_port)
            peak_buffer = max(peak_buffer, m.get("kafscale_produce_buffer_bytes"))
            paused_seen = max(paused_seen, m.get("kafscale_produce_paused_connections"))
            time.sleep(0.1)
        m = Scrape(b.metrics_port)
        assert paused_seen >= 1 and m.get("kafscale_produce_pauses_total") >= 1, \
            "no producer connection was paused at the budget"
        assert not acked, "records acknowledged while the object store was stalled"
        # Other clients are still served.
        with kw.Conn(b.host, b.port, 5.0, "bystander") as c:
            t0 = time.monotonic()
            c.request(kw.API_VERSIONS, 3, kw.api_versions_body(3))
            assert time.monotonic() - t0 < 2.0
        print("\nbudget %d MiB: idle RSS %.1f MiB, peak RSS %.1f MiB, peak produce buffer %.1f MiB, "
              "offered %d MiB" % (BUDGET // MIB, idle_rss / MIB, peak_rss / MIB, peak_buffer / MIB,
                                  PRODUCERS * PER_PRODUCER * VALUE_BYTES // MIB))
        assert peak_buffer <= BUDGET + METRIC_SLACK, peak_buffer
        if not sanitized(b.binary):
            assert peak_rss <= idle_rss + BUDGET + RSS_MARGIN, \
                "peak RSS %.1f MiB > idle %.1f MiB + budget %d MiB + margin %d MiB" % (
                    peak_rss / MIB, idle_rss / MIB, BUDGET // MIB, RSS_MARGIN // MIB)
    finally:
        if stalled:
            os.kill(s3.proc.pid, signal.SIGCONT)

    # The store is back: everything is acknowledged, and the connections
    # are read again.
    for p in producers:
        assert p.flush(120) == 0
    assert not errors, errors[:3]
    assert len(acked) == PRODUCERS * PER_PRODUCER
    wait_for(lambda: Scrape(b.metrics_port).get("kafscale_produce_paused_connections") == 0, 10,
             "no paused connection left")

    # Every acknowledged record is in the log exactly once, where it was
    # acknowledged.
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "budget-check", "enable.auto.commit": False,
                  "fetch.max.bytes": 52428800})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    seen = {}
    deadline = time.monotonic() + 60
    try:
        while len(seen) < len(acked) and time.monotonic() < deadline:
            for msg in c.consume(10000, 0.5):
                if msg.error():
                    continue
                pid, seq = (int(x) for x in msg.key().split(b":"))
                if seq < 0:
                    continue
                key = (pid, seq)
                assert key not in seen, "record %r twice: %r and %r" % (
                    key, seen[key], (msg.partition(), msg.offset()))
                seen[key] = (msg.partition(), msg.offset())
    finally:
        c.close()
    missing = [k for k in acked if k not in seen]
    assert not missing, "%d acknowledged records missing, e.g. %r" % (len(missing), missing[:5])
    moved = [k for k in acked if seen[k] != acked[k]]
    assert not moved, "records not at their acknowledged offsets, e.g. %r" % moved[:5]
