"""Retention is enforced: after retention.ms is lowered (AlterConfigs through
a real admin client), segments older than it disappear from the object
store, the log start offset moves (ListOffsets earliest, Fetch
LogStartOffset), a consumer from the beginning starts at the new log start,
and one positioned below it is reset by auto.offset.reset."""

import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

TOPIC = "retained"
OLD, NEW = 400, 100


@pytest.fixture
def broker_extra_env():
    return {
        "KAFSCALE_RETENTION_CHECK_INTERVAL_MS": "200",
        "KAFSCALE_SEGMENT_BYTES": "65536",
    }


def objects(broker):
    """Names of partition 0's segment objects (local directory or S3)."""
    prefix = TOPIC + "/0/"
    return sorted(k[len(prefix):] for k in broker.objects.keys(prefix) if k.endswith(".kfs"))


def produce(bs, n, ts, start):
    acked = []
    p = Producer({"bootstrap.servers": bs, "acks": "all", "linger.ms": 0})
    for i in range(start, start + n):
        # One acknowledged batch at a time: one segment per ~100 records.
        p.produce(TOPIC, value=b"r%05d" % i + b"x" * 900, partition=0, timestamp=ts,
                  on_delivery=lambda err, m: acked.append(m.offset()) if not err else None)
        if i % 100 == 99:
            assert p.flush(10) == 0
    assert p.flush(10) == 0
    return acked


def wait_for(cond, deadline_s, what):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    pytest.fail("timed out waiting for " + what)


def test_retention_ms_deletes_old_segments(broker):
    bs = broker.bootstrap
    admin = AdminClient({"bootstrap.servers": bs})
    admin.create_topics([NewTopic(TOPIC, 1, 1)])[TOPIC].result(10)
    now = int(time.time() * 1000)
    produce(bs, OLD, now - 3600 * 1000, 0)       # an hour old
    produce(bs, NEW, now, OLD)                   # fresh
    before = objects(broker)
    assert len(before) >= 3, before

    res = ConfigResource("topic", TOPIC, set_config={"retention.ms": "600000"})
    admin.alter_configs([res])[res].result(10)

    # The old segments go; the fresh ones stay.
    after = wait_for(lambda: (lambda o: o if len(o) < len(before) else None)(objects(broker)), 10,
                     "old segments to be deleted")
    c = Consumer({"bootstrap.servers": bs, "group.id": "ret-check", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    try:
        lo, hi = c.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=10)
        assert hi == OLD + NEW
        assert 0 < lo <= OLD, (lo, hi)
        # The manifest is trimmed first, then the objects are deleted one by
        # one: once that is done the first object left starts at the log start.
        def first_left():
            o = objects(broker)
            return o if o and int(o[0].split("-")[1].split(".")[0]) == lo else None
        wait_for(first_left, 10, "the objects before the log start (%d) to be deleted: %r" % (lo, objects(broker)))

        # From the beginning: starts at the new log start, sees every record
        # from there on.
        c.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
        got = []
        end = time.monotonic() + 15
        while len(got) < hi - lo and time.monotonic() < end:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(m.offset())
        assert got and got[0] == lo and got == list(range(lo, hi)), (got[:3], lo, hi)

        # Positioned below the log start: OFFSET_OUT_OF_RANGE, reset to earliest.
        c.assign([TopicPartition(TOPIC, 0, 0)])
        m = None
        end = time.monotonic() + 15
        while time.monotonic() < end:
            m = c.poll(0.5)
            if m is not None and not m.error():
                break
        assert m is not None and not m.error() and m.offset() == lo, m
    finally:
        c.close()

    # Survives a restart: the trimmed manifest is what the broker recovers.
    broker.restart()
    c = Consumer({"bootstrap.servers": bs, "group.id": "ret-check2"})
    try:
        assert c.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=10)[0] == lo
    finally:
        c.close()


def test_orphan_objects_are_swept(broker):
    """Segment objects below the committed end offset that the manifest does
    not name (an upload whose commit failed: here written by the test at
    another leader epoch) are deleted by the next retention pass; committed
    segments, an object at the end offset (an upload may be in flight) and
    keys that are not segments stay, and consumers read every record."""
    bs = broker.bootstrap
    topic = "swept"
    admin = AdminClient({"bootstrap.servers": bs})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    now = int(time.time() * 1000)
    p = Producer({"bootstrap.servers": bs, "acks": "all", "linger.ms": 0})
    for i in range(30):
        p.produce(topic, value=b"r%03d" % i, timestamp=now)
        p.flush(10)  # one segment per record batch
    prefix = topic + "/0/"
    committed = broker.objects.keys(prefix)
    assert len(committed) >= 2, committed
    orphans = [prefix + "segment-%020d-e7.kfs" % 3, prefix + "segment-%020d-e7.index" % 3]
    kept = [prefix + "segment-%020d-e7.kfs" % 30, prefix + "README"]
    for k in orphans + kept:
        broker.objects.put(k, b"not a segment")
    wait_for(lambda: not any(k in broker.objects.keys(prefix) for k in orphans), 10,
             "the orphan objects to be swept")
    left = broker.objects.keys(prefix)
    assert all(k in left for k in kept + committed), (left, kept, committed)
    assert "event=orphan_objects_deleted topic=swept partition=0 objects=2" in broker.log_text()
    c = Consumer({"bootstrap.servers": bs, "group.id": "swept-check", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = []
        end = time.monotonic() + 15
        while len(got) < 30 and time.monotonic() < end:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(m.value())
        assert got == [b"r%03d" % i for i in range(30)]
    finally:
        c.close()
