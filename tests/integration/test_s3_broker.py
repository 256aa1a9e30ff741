"""The broker with its records in a real S3-compatible server (s3rver):
produce with acks=all, consume, restart, consume again (cold reads through
S3), and the objects are where the documented key scheme puts them, readable
with an independent S3 client (botocore)."""

import re
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from test_s3_backend import BUCKET, S3rver

N = 3000
PARTITIONS = 2


@pytest.fixture
def s3(tmp_path):
    srv = S3rver(tmp_path)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def broker_extra_env(s3):
    return {
        "KAFSCALE_S3_BUCKET": BUCKET,
        "KAFSCALE_S3_ENDPOINT": s3.endpoint,
        "KAFSCALE_S3_ACCESS_KEY": "S3RVER",
        "KAFSCALE_S3_SECRET_KEY": "S3RVER",
        "KAFSCALE_FLUSH_INTERVAL_MS": "20",
        # Every read after the restart must come from S3.
        "KAFSCALE_CACHE_BYTES": "0",
    }


def produce(bs, topic):
    acked = {}
    errors = []

    def cb(err, msg):
        if err:
            errors.append(err)
        else:
            acked[(msg.partition(), msg.offset())] = msg.value()

    p = Producer({"bootstrap.servers": bs, "acks": "all", "linger.ms": 5})
    for i in range(N):
        p.produce(topic, key=b"k%d" % i, value=b"value-%06d" % i, partition=i % PARTITIONS, on_delivery=cb)
        if i % 500 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    assert not errors, errors[:3]
    return acked


def consume_all(bs, topic, ends):
    c = Consumer({"bootstrap.servers": bs, "group.id": "s3-check", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got = {}
    deadline = time.monotonic() + 30
    try:
        while sum(1 for k in got) < sum(ends.values()) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got[(m.partition(), m.offset())] = m.value()
    finally:
        c.close()
    return got


def s3_keys(s3):
    """Every key in the bucket, listed with botocore (independent client)."""
    import botocore.session
    sess = botocore.session.get_session()
    client = sess.create_client("s3", region_name="us-east-1", endpoint_url=s3.endpoint,
                                aws_access_key_id="S3RVER", aws_secret_access_key="S3RVER")
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys += [o["Key"] for o in page.get("Contents", [])]
    first = client.get_object(Bucket=BUCKET, Key=sorted(k for k in keys if k.endswith(".kfs"))[0])
    body = first["Body"].read()
    return keys, body


def test_s3_round_trip_and_restart(broker, s3):
    bs = broker.bootstrap
    topic = "s3-orders"
    admin = AdminClient({"bootstrap.servers": bs})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(10)
    acked = produce(bs, topic)
    assert len(acked) == N
    ends = {p: 1 + max(o for (q, o) in acked if q == p) for p in range(PARTITIONS)}
    assert consume_all(bs, topic, ends) == acked

    keys, body = s3_keys(s3)
    for p in range(PARTITIONS):
        segs = [k for k in keys if k.startswith("default/%s/%d/segment-" % (topic, p))]
        # The first segment, keyed by its writer's leader epoch when that is
        # > 0 (cluster mode: "-e1").
        first = re.compile(r"^default/%s/%d/segment-%020d(-e[1-9]\d*)?\.(kfs|index)$" % (topic, p, 0))
        assert sorted(m.group(2) for m in map(first.match, segs) if m) == ["index", "kfs"], segs
    assert body[:4] == b"KAFS" and body[-4:] == b"END!"

    broker.restart()
    assert consume_all(bs, topic, ends) == acked


def test_produce_fails_fast_while_s3_is_down(broker, s3):
    """The object store stopped: once the broker's probe (every 2 s) has
    seen it, produce is refused at once with KAFKA_STORAGE_ERROR (retriable)
    instead of waiting out its timeout; nothing refused is stored; after
    the store returns, produce is accepted again and what was acknowledged
    before the outage is all there."""
    import kafka_wire as kw
    import test_metrics as tm
    import test_produce_raw as raw
    with kw.Conn(broker.host, broker.port, timeout=30.0) as c:
        raw.create_topic(c, "s3-down", 1)
        before = raw.build_batch(raw.simple_records(4, b"before"))
        r = raw.produce(c, 9, "s3-down", 0, before, acks=-1)
        assert (r["error_code"], r["base_offset"]) == (0, 0), r

        s3.stop()
        tm.wait_for(lambda: tm.readyz(broker.metrics_port)[0] == 503, 15, "/readyz 503 with S3 stopped")
        t0 = time.monotonic()
        r = raw.produce(c, 9, "s3-down", 0, raw.build_batch(raw.simple_records(2, b"down")), acks=-1,
                        timeout_ms=20000)
        elapsed = time.monotonic() - t0
        assert r["error_code"] == raw.KAFKA_STORAGE_ERROR, r
        assert elapsed < 2.0, "refused after %.2f s: produce must fail fast while S3 is down" % elapsed
        assert "event=storage_degraded" in broker.log_text()

        s3.start()
        tm.wait_for(lambda: tm.readyz(broker.metrics_port)[0] == 200, 30, "/readyz 200 after S3 returned")
        after = raw.build_batch(raw.simple_records(3, b"after"))
        r = raw.produce(c, 9, "s3-down", 0, after, acks=-1)
        assert (r["error_code"], r["base_offset"]) == (0, 4), r
        data, last = raw.fetch_all(c, 12, "s3-down", 0, 0)
        ep = kw.leader_epoch(c, "s3-down")
        assert data == raw.patched(before, 0, ep) + raw.patched(after, 4, ep)
        assert last["high_watermark"] == 7
    assert "event=storage_recovered" in broker.log_text()
