"""Produce and consume with real, independent Kafka clients:
confluent-kafka-python (librdkafka) and kafka-python (pure Python).

Every check compares what the consumer reads with what the broker
acknowledged (delivery reports give partition and offset of each acked
record): exact per-partition order, keys, values, headers, timestamps, and
offsets contiguous from 0.

Consumer groups may not exist yet, so consumers use assign() with explicit
offsets and never commit.
"""

import os
import re
import socket
import time
import uuid

import pytest
from confluent_kafka import (Consumer, KafkaError, Producer, TopicPartition,
                             TIMESTAMP_CREATE_TIME)
from confluent_kafka.admin import AdminClient, NewTopic

import kafka_wire as kw
import test_produce_raw as raw  # raw Fetch encoder/decoder

CLIENT_TIMEOUT_S = 15
CONDITION_TIMEOUT_S = 20
BASE_TS = 1_700_000_000_000


def wait_until(cond, what, timeout=CONDITION_TIMEOUT_S, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            pytest.fail("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---------------------------------------------------------------------------
# confluent-kafka helpers
# ---------------------------------------------------------------------------

def create_topic(broker, name, partitions):
    adm = AdminClient({"bootstrap.servers": broker.bootstrap})
    futs = adm.create_topics([NewTopic(name, partitions, 1)], request_timeout=CLIENT_TIMEOUT_S)
    futs[name].result(timeout=CLIENT_TIMEOUT_S + 5)

    def ready():
        t = adm.list_topics(topic=name, timeout=CLIENT_TIMEOUT_S).topics.get(name)
        return t is not None and t.error is None and len(t.partitions) == partitions
    wait_until(ready, "topic %s in metadata" % name)


def make_producer(broker, **conf):
    c = {"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5,
         "message.timeout.ms": 30000}
    c.update({k.replace("_", "."): v for k, v in conf.items()})
    return Producer(c)


def make_consumer(broker, **conf):
    c = {"bootstrap.servers": broker.bootstrap,
         "group.id": "it-%s" % uuid.uuid4().hex,  # required by the client; never used
         "enable.auto.commit": False, "enable.auto.offset.store": False,
         "auto.offset.reset": "error", "enable.partition.eof": False}
    c.update({k.replace("_", "."): v for k, v in conf.items()})
    return Consumer(c)


class Acks:
    """Delivery-report collector: acked[(partition, offset)] = key,
    errors = [(key, KafkaError)]."""

    def __init__(self):
        self.acked = {}
        self.errors = []

    def __call__(self, err, msg):
        if err is not None:
            self.errors.append((msg.key(), err))
        else:
            self.acked[(msg.partition(), msg.offset())] = msg.key()


def produce_all(producer, topic, records, acks, partition=None, timeout=60):
    """records: list of (key, value, headers, timestamp). Waits for every
    delivery report."""
    for key, value, headers, ts in records:
        kwargs = {"key": key, "value": value, "on_delivery": acks}
        if headers is not None:
            kwargs["headers"] = headers
        if ts is not None:
            kwargs["timestamp"] = ts
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(timeout)
    assert left == 0, "%d messages not delivered within %d s" % (left, timeout)


def consume_partitions(consumer, topic, ends, timeout=CONDITION_TIMEOUT_S):
    """Assigns every partition of `ends` ({partition: end offset}) from
    offset 0 and reads until each partition reached its end. Returns
    {partition: [Message]} in the order received."""
    out = {p: [] for p in ends}
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    deadline = time.monotonic() + timeout
    pending = {p for p, end in ends.items() if end > 0}
    while pending:
        if time.monotonic() >= deadline:
            pytest.fail("consumer timed out; still pending %s, got %s" % (
                sorted(pending), {p: len(v) for p, v in out.items()}))
        msgs = consumer.consume(num_messages=1000, timeout=0.2)
        for m in msgs:
            if m.error():
                pytest.fail("consumer error: %s" % m.error())
            out[m.partition()].append(m)
            if m.offset() >= ends[m.partition()] - 1:
                pending.discard(m.partition())
    return out


def check_round_trip(sent, acks, got):
    """sent: {key: (value, headers, ts)} in production order; acks: Acks;
    got: {partition: [Message]}. Within a partition, offsets must follow the
    production order (the producer had no errors, so no retries reorder)."""
    order = {k: i for i, k in enumerate(sent)}
    assert not acks.errors, "delivery errors: %r" % acks.errors[:5]
    assert len(acks.acked) == len(sent), "%d acked of %d sent" % (len(acks.acked), len(sent))
    assert set(acks.acked.values()) == set(sent), "acked keys differ from sent keys"
    for p, msgs in got.items():
        offsets = [m.offset() for m in msgs]
        acked_here = sorted(o for (pp, o) in acks.acked if pp == p)
        assert offsets == list(range(len(offsets))), \
            "partition %d: offsets not contiguous from 0 (first problems: %r)" % (
                p, [(i, o) for i, o in enumerate(offsets) if i != o][:5])
        assert offsets == acked_here, "partition %d: consumed offsets != acked offsets" % p
        for m in msgs:
            key = acks.acked[(p, m.offset())]
            value, headers, ts = sent[key]
            assert m.key() == key, (p, m.offset(), m.key(), key)
            assert m.value() == value, "partition %d offset %d: value differs" % (p, m.offset())
            assert m.headers() == headers, (p, m.offset(), m.headers(), headers)
            assert m.timestamp() == (TIMESTAMP_CREATE_TIME, ts), (p, m.offset(), m.timestamp(), ts)
        seq = [order[m.key()] for m in msgs]
        assert seq == sorted(seq), "partition %d: records not in production order" % p


CODEC_BITS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
FIND_COORDINATOR = 10


def advertises(broker, api_key):
    """True if the broker's ApiVersions lists api_key with a real range."""
    with kw.Conn(broker.host, broker.port, timeout=10.0) as c:
        r = c.request(kw.API_VERSIONS, 3, kw.api_versions_body(3))
    error, keys, _ = kw.decode_api_versions(r, 3)
    assert error == 0
    rng = keys.get(api_key)
    return rng is not None and rng[1] >= 0


def stored_codecs(broker, topic, partition):
    """{codec bits: batch count} of the batches stored in a partition (raw
    Fetch, so no client decompresses anything)."""
    with kw.Conn(broker.host, broker.port, timeout=10.0) as c:
        data, _ = raw.fetch_all(c, 12, topic, partition, 0)
    batches, _ = raw.parse_batches(data)
    out = {}
    for b in batches:
        out[b["attributes"] & 7] = out.get(b["attributes"] & 7, 0) + 1
    return out


def make_records(n, prefix, value_len_mod=7):
    out = []
    for i in range(n):
        key = b"%s-key-%05d" % (prefix, i)
        value = (b"%s-value-%05d|" % (prefix, i)) * (1 + i % value_len_mod)
        headers = [("trace-id", b"t-%d" % i), ("origin", b"%s-%d" % (prefix, i % 13))]
        out.append((key, value, headers, BASE_TS + i))
    return out


# ---------------------------------------------------------------------------
# confluent-kafka round trips, every compression codec
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_confluent_round_trip(broker, compression):
    topic = "rt-%s" % compression
    create_topic(broker, topic, 3)
    records = make_records(5000, compression.encode())
    sent = {k: (v, h, ts) for k, v, h, ts in records}
    acks = Acks()
    prod = make_producer(broker, compression_type=compression, acks="all",
                         linger_ms=10, batch_num_messages=500)
    produce_all(prod, topic, records, acks)

    ends = {p: 0 for p in range(3)}
    for (p, o) in acks.acked:
        ends[p] = max(ends[p], o + 1)
    assert sum(1 for e in ends.values() if e > 0) >= 2, "records did not spread: %r" % ends

    cons = make_consumer(broker)
    try:
        got = consume_partitions(cons, topic, ends)
        check_round_trip(sent, acks, got)
        for p, end in ends.items():
            assert cons.get_watermark_offsets(TopicPartition(topic, p), timeout=CLIENT_TIMEOUT_S) == (0, end)
    finally:
        cons.close()
    # The batches really went through the codec: the client compresses only
    # what it believes the broker can take (librdkafka derives that from
    # ApiVersions), so an uncompressed log here means a silent downgrade.
    # (A batch that does not shrink may legitimately be sent uncompressed.)
    want = CODEC_BITS[compression]
    # librdkafka (2.0.2) turns lz4 on only for brokers that advertise
    # FindCoordinator (its "LZ4" feature check, rdkafka_feature.c); until
    # consumer groups are served, its lz4 batches go out uncompressed.
    must_compress = compression != "lz4" or advertises(broker, FIND_COORDINATOR)
    for p in range(3):
        codecs = stored_codecs(broker, topic, p)
        assert set(codecs) <= {0, want}, "partition %d: codecs %r" % (p, codecs)
        assert not must_compress or codecs.get(want, 0) > 0, (
            "partition %d: no %s batch stored (batches by codec: %r). librdkafka <= 2.11 "
            "sends gzip/snappy/lz4 only to brokers whose ApiVersions Produce range includes "
            "v0 (librdkafka#4956, KAFKA-18659)" % (p, compression, codecs))


# ---------------------------------------------------------------------------
# kafka-python round trip
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("compression", [None, "gzip"], ids=["none", "gzip"])
def test_kafka_python_round_trip(broker, compression):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP

    topic = "kp-rt-%s" % (compression or "none")
    create_topic(broker, topic, 2)
    prod = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5,
                         compression_type=compression, request_timeout_ms=30000,
                         api_version_auto_timeout_ms=10000)
    n = 1000
    records = make_records(n, b"kp", value_len_mod=5)
    futures = [(prod.send(topic, key=k, value=v, headers=h, timestamp_ms=ts,
                          partition=i % 2), (k, v, h, ts))
               for i, (k, v, h, ts) in enumerate(records)]
    prod.flush(timeout=30)
    acked = {}
    for fut, rec in futures:
        md = fut.get(timeout=30)
        acked[(md.partition, md.offset)] = rec
    prod.close(timeout=10)
    assert len(acked) == n
    ends = {p: 1 + max(o for (pp, o) in acked if pp == p) for p in range(2)}
    assert sum(ends.values()) == n

    cons = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                         enable_auto_commit=False, api_version_auto_timeout_ms=10000,
                         request_timeout_ms=30000)
    try:
        tps = [KTP(topic, p) for p in range(2)]
        cons.assign(tps)
        cons.seek_to_beginning()
        got = {p: [] for p in range(2)}
        deadline = time.monotonic() + CONDITION_TIMEOUT_S
        while sum(len(v) for v in got.values()) < n:
            assert time.monotonic() < deadline, "kafka-python consumer timed out: %r" % {
                p: len(v) for p, v in got.items()}
            for tp, msgs in cons.poll(timeout_ms=200).items():
                got[tp.partition].extend(msgs)
        for p, msgs in got.items():
            assert [m.offset for m in msgs] == list(range(ends[p])), "partition %d offsets" % p
            assert [acked[(p, m.offset)] for m in msgs] == records[p::2], "partition %d order" % p
            for m in msgs:
                k, v, h, ts = acked[(p, m.offset)]
                assert (m.key, m.value, m.timestamp) == (k, v, ts), (p, m.offset)
                assert [(hk, hv) for hk, hv in m.headers] == h, (p, m.offset, m.headers)
        assert cons.end_offsets(tps) == {KTP(topic, p): ends[p] for p in range(2)}
        assert cons.beginning_offsets(tps) == {KTP(topic, p): 0 for p in range(2)}
    finally:
        cons.close()
    want = CODEC_BITS[compression or "none"]
    for p in range(2):
        codecs = stored_codecs(broker, topic, p)
        assert set(codecs) == {want}, "partition %d: codecs %r" % (p, codecs)


# ---------------------------------------------------------------------------
# acks=0 and acks=1
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("acks_setting", ["0", "1"])
def test_acks_0_and_1(broker, acks_setting):
    topic = "acks-%s" % acks_setting
    create_topic(broker, topic, 2)
    records = make_records(2000, b"a" + acks_setting.encode())
    sent = {k: (v, h, ts) for k, v, h, ts in records}
    acks = Acks()
    prod = make_producer(broker, acks=acks_setting)
    produce_all(prod, topic, records, acks)
    assert not acks.errors, acks.errors[:5]

    cons = make_consumer(broker)
    try:
        if acks_setting == "1":
            ends = {p: 0 for p in range(2)}
            for (p, o) in acks.acked:
                ends[p] = max(ends[p], o + 1)
            check_round_trip(sent, acks, consume_partitions(cons, topic, ends))
            return
        # acks=0: no offsets in the delivery reports; the records must
        # become readable (flushed by the same timer as acked ones).
        def ends_now():
            e = {p: cons.get_watermark_offsets(TopicPartition(topic, p),
                                               timeout=CLIENT_TIMEOUT_S)[1] for p in range(2)}
            return e if sum(e.values()) >= len(records) else None
        ends = wait_until(ends_now, "acks=0 records to become visible")
        assert sum(ends.values()) == len(records), ends
        got = consume_partitions(cons, topic, ends)
        seen = {}
        for p, msgs in got.items():
            assert [m.offset() for m in msgs] == list(range(ends[p]))
            for m in msgs:
                seen[m.key()] = (m.value(), m.headers(), m.timestamp()[1])
        assert seen == sent
    finally:
        cons.close()


# ---------------------------------------------------------------------------
# Large records
# ---------------------------------------------------------------------------

def test_large_record_round_trip(broker):
    topic = "large"
    create_topic(broker, topic, 1)
    value = os.urandom(900 * 1024)
    acks = Acks()
    prod = make_producer(broker, message_max_bytes=2_000_000)
    produce_all(prod, topic, [(b"big", value, [("h", b"1")], BASE_TS)], acks)
    assert not acks.errors and list(acks.acked) == [(0, 0)], (acks.errors, acks.acked)
    # A small record after it.
    produce_all(prod, topic, [(b"small", b"x", None, BASE_TS + 1)], acks)
    assert (0, 1) in acks.acked
    cons = make_consumer(broker)
    try:
        got = consume_partitions(cons, topic, {0: 2})[0]
        assert [m.offset() for m in got] == [0, 1]
        assert got[0].key() == b"big" and got[0].value() == value
        assert got[0].headers() == [("h", b"1")]
        assert got[1].value() == b"x"
    finally:
        cons.close()


def test_batch_above_max_message_bytes_rejected(broker):
    topic = "too-large"
    create_topic(broker, topic, 1)
    acks = Acks()
    # The client would refuse the record itself with its default limits.
    prod = make_producer(broker, message_max_bytes=4_000_000, batch_size=4_000_000,
                         retries=0, compression_type="none")
    value = os.urandom(1_100_000)  # batch > 1048588 (KAFSCALE_MAX_MESSAGE_BYTES default)
    for k, v in ((b"too-big", value),):
        prod.produce(topic, key=k, value=v, on_delivery=acks)
    assert prod.flush(30) == 0
    assert not acks.acked, acks.acked
    assert len(acks.errors) == 1, acks.errors
    err = acks.errors[0][1]
    assert err.code() == KafkaError.MSG_SIZE_TOO_LARGE, "got %s" % err
    # Nothing was appended; the partition still works.
    cons = make_consumer(broker)
    try:
        assert cons.get_watermark_offsets(TopicPartition(topic, 0), timeout=CLIENT_TIMEOUT_S) == (0, 0)
        acks2 = Acks()
        produce_all(prod, topic, [(b"ok", b"fine", None, None)], acks2)
        assert list(acks2.acked) == [(0, 0)], (acks2.acked, acks2.errors)
    finally:
        cons.close()


# ---------------------------------------------------------------------------
# Long poll
# ---------------------------------------------------------------------------

def _fetch_lines(broker, client_id):
    pat = re.compile(r'event=request .*\bapi_key=1 .*client_id="%s"' % re.escape(client_id))
    return [l for l in broker.log_text().splitlines() if pat.search(l)]


def test_long_poll_delivers_promptly(broker):
    topic = "longpoll"
    create_topic(broker, topic, 1)
    client_id = "lp-%s" % uuid.uuid4().hex[:8]
    cons = make_consumer(broker, fetch_wait_max_ms=5000, fetch_min_bytes=1, client_id=client_id)
    prod = make_producer(broker, linger_ms=0)
    # Connect the producer first (metadata), so the produce below is quick.
    prod.list_topics(topic=topic, timeout=CLIENT_TIMEOUT_S)
    try:
        cons.assign([TopicPartition(topic, 0, 0)])
        # The consumer's fetch is parked on the empty partition.
        wait_until(lambda: _fetch_lines(broker, client_id), "the consumer's first Fetch")
        t_assigned = time.monotonic()
        msgs = []
        produced_at = None
        deadline = t_assigned + 15
        while not msgs and time.monotonic() < deadline:
            if produced_at is None and time.monotonic() - t_assigned >= 1.0:
                produced_at = time.monotonic()
                prod.produce(topic, key=b"k", value=b"wake-up", partition=0)
                prod.poll(0)
            for m in cons.consume(num_messages=1, timeout=0.02):
                assert not m.error(), m.error()
                msgs.append(m)
        received_at = time.monotonic()
        assert msgs and msgs[0].value() == b"wake-up", "record never arrived"
        assert produced_at is not None
        latency = received_at - produced_at
        assert latency < 1.0, "record arrived %.3f s after produce (fetch.wait.max.ms=5000)" % latency
        assert prod.flush(10) == 0
    finally:
        cons.close()


def test_idle_long_poll_does_not_spin(broker):
    topic = "idle"
    create_topic(broker, topic, 1)
    client_id = "idle-%s" % uuid.uuid4().hex[:8]
    cons = make_consumer(broker, fetch_wait_max_ms=500, fetch_min_bytes=1, client_id=client_id)
    try:
        cons.assign([TopicPartition(topic, 0, 0)])
        wait_until(lambda: _fetch_lines(broker, client_id), "the consumer's first Fetch")
        before = len(_fetch_lines(broker, client_id))
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:
            for m in cons.consume(num_messages=10, timeout=0.1):
                assert not m.error(), m.error()
                pytest.fail("unexpected record %r" % m.value())
        fetches = len(_fetch_lines(broker, client_id)) - before
        # 3 s / 500 ms = 6 parked fetches; allow some slack, but a broker
        # that answers at once would show hundreds.
        assert 3 <= fetches <= 12, "%d Fetch requests in 3 s with fetch.wait.max.ms=500" % fetches
    finally:
        cons.close()


# ---------------------------------------------------------------------------
# Cold reads from segment objects
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("broker_extra_env", [
    {"KAFSCALE_CACHE_BYTES": "0", "KAFSCALE_SEGMENT_BYTES": "65536"},
    # A cache smaller than the data: reads evict and re-load segments.
    {"KAFSCALE_CACHE_BYTES": "1000000", "KAFSCALE_SEGMENT_BYTES": "65536"},
], ids=["cache0-seg64k", "cache1m-seg64k"])
def test_cold_reads_after_restart(broker):
    topic = "cold"
    create_topic(broker, topic, 2)
    n = 2000
    records = [(b"cold-%05d" % i, (b"%05d:" % i) + os.urandom(1000), [("i", b"%d" % i)], BASE_TS + i)
               for i in range(n)]                                   # about 2 MB
    sent = {k: (v, h, ts) for k, v, h, ts in records}
    acks = Acks()
    # 40 rounds of about 50 KB, each acknowledged before the next starts:
    # every round ends up in segments of its own, so the read crosses many
    # segment objects (the broker may also cut a round at 64 KiB).
    prod = make_producer(broker, linger_ms=5, compression_type="none", batch_size=16384)
    for i in range(0, n, 50):
        produce_all(prod, topic, records[i:i + 50], acks)
    assert not acks.errors
    del prod

    segs = [k for k in broker.objects.keys(topic + "/") if k.endswith(".kfs")]
    assert len(segs) >= 40, "expected many small segments, found %d" % len(segs)

    broker.restart()

    ends = {p: 0 for p in range(2)}
    for (p, o) in acks.acked:
        ends[p] = max(ends[p], o + 1)

    # First a raw Fetch with a short MaxWaitMs: it must be answered, with the
    # first segment's data, in well under the socket timeout.
    with kw.Conn(broker.host, broker.port, timeout=10.0) as c:
        t0 = time.monotonic()
        try:
            res = raw.fetch(c, 12, [(topic, 0, 0, 1 << 20)], timeout=5.0,
                            max_wait_ms=500, min_bytes=1)
        except socket.timeout:
            pytest.fail("cold Fetch v12 (offset 0, MaxWaitMs=500) not answered within 5 s "
                        "(KAFSCALE_CACHE_BYTES=0)")
        p0 = res["parts"][(topic, 0)]
        assert p0["error_code"] == 0 and p0["records"], p0
        assert time.monotonic() - t0 < 5.0

    cons = make_consumer(broker)
    try:
        got = consume_partitions(cons, topic, ends, timeout=30)
        check_round_trip(sent, acks, got)
    finally:
        cons.close()
    # Timestamp lookups load segments too: in each partition timestamps grow
    # with offsets, so the answer for an acked record's timestamp is its offset.
    broker.restart()
    cons = make_consumer(broker)
    try:
        for p in range(2):
            for o in (0, ends[p] // 3, ends[p] - 1):
                ts = sent[acks.acked[(p, o)]][2]
                (res,) = cons.offsets_for_times([TopicPartition(topic, p, ts)], timeout=CLIENT_TIMEOUT_S)
                assert res.error is None and res.offset == o, (p, o, ts, res)
    finally:
        cons.close()
    # Read it a second time from the middle (random access into a segment).
    cons = make_consumer(broker)
    try:
        mid = ends[0] // 2
        cons.assign([TopicPartition(topic, 0, mid)])
        first = None
        deadline = time.monotonic() + CONDITION_TIMEOUT_S
        while first is None and time.monotonic() < deadline:
            for m in cons.consume(num_messages=1, timeout=0.2):
                assert not m.error(), m.error()
                first = m
        assert first is not None and first.offset() == mid
        assert first.key() == acks.acked[(0, mid)]
    finally:
        cons.close()


# ---------------------------------------------------------------------------
# ListOffsets through the client
# ---------------------------------------------------------------------------

def test_watermarks_and_offsets_for_times(broker):
    topic = "times"
    create_topic(broker, topic, 1)
    prod = make_producer(broker, compression_type="none", linger_ms=2)
    acks = Acks()
    n = 300
    # Timestamps 10 ms apart, in three rounds (several batches and segments).
    records = [(b"t%d" % i, b"v%d" % i, None, BASE_TS + 10 * i) for i in range(n)]
    for chunk in (records[:100], records[100:200], records[200:]):
        produce_all(prod, topic, chunk, acks, partition=0)
    assert not acks.errors
    by_offset = {o: k for (p, o), k in acks.acked.items()}
    assert sorted(by_offset) == list(range(n))
    ts_of = {o: BASE_TS + 10 * int(k[1:]) for o, k in by_offset.items()}

    cons = make_consumer(broker)
    try:
        assert cons.get_watermark_offsets(TopicPartition(topic, 0), timeout=CLIENT_TIMEOUT_S) == (0, n)
        queries = [BASE_TS - 1000, BASE_TS, BASE_TS + 5, BASE_TS + 995, BASE_TS + 1000,
                   BASE_TS + 1001, BASE_TS + 1555, BASE_TS + 2990, BASE_TS + 2991, BASE_TS + 10 ** 9]
        for q in queries:
            want = min((o for o, ts in ts_of.items() if ts >= q), default=-1)
            (res,) = cons.offsets_for_times([TopicPartition(topic, 0, q)], timeout=CLIENT_TIMEOUT_S)
            assert res.error is None, res
            assert res.offset == want, "timestamp %d: offset %d, want %d" % (q, res.offset, want)
    finally:
        cons.close()
