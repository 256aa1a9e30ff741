"""Idempotent producers: InitProducerId and the per-partition producer state.

Raw protocol (kafka_wire / test_produce_raw helpers), with Apache Kafka's
rules as the reference (ProducerStateManager, ProducerAppendInfo):

  - InitProducerId v0-v5 hands out distinct ids at epoch 0; a request that
    carries its id and epoch (v3+, KIP-360) gets the epoch bumped; a
    transactional id is refused (TRANSACTIONAL_ID_AUTHORIZATION_FAILED: no
    transactions), an empty one is INVALID_REQUEST;
  - a retried batch (same producer, epoch and sequence range) is answered
    with its original offsets and not appended again — also after a
    restart (the state is rebuilt from the segment manifest);
  - a sequence gap is OUT_OF_ORDER_SEQUENCE_NUMBER, an older epoch
    INVALID_PRODUCER_EPOCH, a newer epoch must restart at sequence 0;
  - a producer id the partition has no state for is accepted at any
    sequence, as Kafka does since KIP-360 (it no longer answers
    UNKNOWN_PRODUCER_ID: the state may have expired with its records).

librdkafka (confluent_kafka) with enable.idempotence=true, acks=all and five
requests in flight, while the broker is killed (kill -9) and restarted and
while connections are dropped: every message is delivered, and the log
holds each exactly once, in order, without gaps.
"""

import os
import socket
import struct
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

import kafka_wire as kw
import test_produce_raw as raw

INIT_PRODUCER_ID = 22
kw.FIRST_FLEXIBLE_VERSION.setdefault(INIT_PRODUCER_ID, 2)

NONE = 0
INVALID_REQUEST = 42
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
DUPLICATE_SEQUENCE_NUMBER = 46
INVALID_PRODUCER_EPOCH = 47
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53

CLIENT_TIMEOUT_S = 30


# ---------------------------------------------------------------------------
# InitProducerId encoding
# ---------------------------------------------------------------------------

def init_producer_id_body(version, transactional_id=None, timeout_ms=60000, producer_id=-1, epoch=-1):
    flex = version >= 2
    w = kw.Writer()
    (w.compact_string if flex else w.string)(transactional_id)
    w.int32(timeout_ms)
    if version >= 3:
        w.int64(producer_id).int16(epoch)
    if flex:
        w.tagged_fields()
    return w.bytes()


def init_producer_id(conn, version, **kw_args):
    """Returns (error_code, producer_id, producer_epoch)."""
    r = conn.request(INIT_PRODUCER_ID, version, init_producer_id_body(version, **kw_args))
    r.int32()  # throttle
    out = (r.int16(), r.int64(), r.int16())
    if version >= 2:
        r.skip_tagged_fields()
    r.expect_end()
    return out


def idem_batch(pid, epoch, seq, n, prefix):
    return raw.build_batch(raw.simple_records(n, prefix), producer_id=pid, producer_epoch=epoch,
                           base_sequence=seq)


@pytest.fixture
def conn(broker):
    c = kw.Conn(broker.host, broker.port, timeout=10.0)
    yield c
    c.close()


# ---------------------------------------------------------------------------
# InitProducerId
# ---------------------------------------------------------------------------

def test_api_versions_advertise_init_producer_id(conn):
    r = conn.request(kw.API_VERSIONS, 3, kw.api_versions_body(3))
    _, keys, _ = kw.decode_api_versions(r, 3)
    assert keys.get(INIT_PRODUCER_ID) == (0, 5), keys.get(INIT_PRODUCER_ID)


def test_init_producer_id_every_version_distinct_ids(conn):
    seen = set()
    for v in range(6):
        for _ in range(3):
            err, pid, epoch = init_producer_id(conn, v)
            assert (err, epoch) == (NONE, 0), (v, err, pid, epoch)
            assert pid >= 0 and pid not in seen, (v, pid, seen)
            seen.add(pid)


@pytest.mark.parametrize("version", [3, 4, 5])
def test_init_producer_id_bumps_the_epoch(conn, version):
    err, pid, epoch = init_producer_id(conn, version)
    assert (err, epoch) == (NONE, 0)
    err, pid2, epoch2 = init_producer_id(conn, version, producer_id=pid, epoch=0)
    assert (err, pid2, epoch2) == (NONE, pid, 1)
    err, pid3, epoch3 = init_producer_id(conn, version, producer_id=pid, epoch=1)
    assert (err, pid3, epoch3) == (NONE, pid, 2)
    # An epoch that cannot grow any more: a new id at epoch 0.
    err, pid4, epoch4 = init_producer_id(conn, version, producer_id=pid, epoch=32766)
    assert err == NONE and pid4 != pid and epoch4 == 0


@pytest.mark.parametrize("version", [0, 2, 4, 5])
def test_init_producer_id_transactional_refused(conn, version):
    assert init_producer_id(conn, version, transactional_id="txn-a") == \
        (TRANSACTIONAL_ID_AUTHORIZATION_FAILED, -1, -1)
    assert init_producer_id(conn, version, transactional_id="") == (INVALID_REQUEST, -1, -1)


def test_transactional_client_fails_fast_with_a_clear_error(broker):
    """librdkafka with transactional.id: init_transactions() fails at once
    (a fatal error naming the cause), not after its timeout."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "tx-1"})
    t0 = time.monotonic()
    with pytest.raises(KafkaException) as ei:
        p.init_transactions(20)
    elapsed = time.monotonic() - t0
    err = ei.value.args[0]
    assert err.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED or err.fatal(), err
    assert elapsed < 10, "init_transactions took %.1f s to fail" % elapsed
    print("transactional client error after %.2f s: %s" % (elapsed, err))


# ---------------------------------------------------------------------------
# Produce: duplicates, gaps, epochs, unknown producers
# ---------------------------------------------------------------------------

def test_duplicate_batch_gets_original_offsets(conn):
    raw.create_topic(conn, "idem-dup", 1)
    _, pid, epoch = init_producer_id(conn, 4)
    b0 = idem_batch(pid, epoch, 0, 3, b"a")
    b1 = idem_batch(pid, epoch, 3, 4, b"b")
    r = raw.produce(conn, 9, "idem-dup", 0, b0, acks=-1)
    assert (r["error_code"], r["base_offset"]) == (NONE, 0), r
    r = raw.produce(conn, 9, "idem-dup", 0, b1, acks=-1)
    assert (r["error_code"], r["base_offset"]) == (NONE, 3), r
    # Retries of both (any order among the last five): original offsets.
    for b, base in ((b1, 3), (b0, 0), (b1, 3)):
        r = raw.produce(conn, 9, "idem-dup", 0, b, acks=-1)
        assert (r["error_code"], r["base_offset"]) == (NONE, base), r
    assert raw.latest_offset(conn, "idem-dup", 0) == 7
    data, _ = raw.fetch_all(conn, 12, "idem-dup", 0, 0)
    batches, _ = raw.parse_batches(data)
    assert [x["base_offset"] for x in batches] == [0, 3]
    # acks=1 retry too.
    r = raw.produce(conn, 9, "idem-dup", 0, b1, acks=1)
    assert (r["error_code"], r["base_offset"]) == (NONE, 3), r
    assert raw.latest_offset(conn, "idem-dup", 0) == 7


def test_sequence_gap_is_out_of_order(conn):
    raw.create_topic(conn, "idem-gap", 1)
    _, pid, epoch = init_producer_id(conn, 4)
    assert raw.produce(conn, 9, "idem-gap", 0, idem_batch(pid, epoch, 0, 2, b"a"), acks=-1)["error_code"] == NONE
    r = raw.produce(conn, 9, "idem-gap", 0, idem_batch(pid, epoch, 5, 2, b"b"), acks=-1)
    assert (r["error_code"], r["base_offset"]) == (OUT_OF_ORDER_SEQUENCE_NUMBER, -1), r
    # A retry from before the remembered window is out of order too.
    r = raw.produce(conn, 9, "idem-gap", 0, idem_batch(pid, epoch, 1, 1, b"c"), acks=-1)
    assert r["error_code"] == OUT_OF_ORDER_SEQUENCE_NUMBER, r
    assert raw.latest_offset(conn, "idem-gap", 0) == 2
    # The right next sequence still goes in.
    r = raw.produce(conn, 9, "idem-gap", 0, idem_batch(pid, epoch, 2, 2, b"d"), acks=-1)
    assert (r["error_code"], r["base_offset"]) == (NONE, 2), r


def test_epochs(conn):
    raw.create_topic(conn, "idem-epoch", 1)
    _, pid, _ = init_producer_id(conn, 4)
    _, _, e1 = init_producer_id(conn, 4, producer_id=pid, epoch=0)
    assert e1 == 1
    assert raw.produce(conn, 9, "idem-epoch", 0, idem_batch(pid, 1, 0, 2, b"a"), acks=-1)["error_code"] == NONE
    # An older epoch: fenced.
    r = raw.produce(conn, 9, "idem-epoch", 0, idem_batch(pid, 0, 2, 2, b"old"), acks=-1)
    assert r["error_code"] == INVALID_PRODUCER_EPOCH, r
    # A newer epoch must start at sequence 0.
    r = raw.produce(conn, 9, "idem-epoch", 0, idem_batch(pid, 2, 2, 2, b"x"), acks=-1)
    assert r["error_code"] == OUT_OF_ORDER_SEQUENCE_NUMBER, r
    r = raw.produce(conn, 9, "idem-epoch", 0, idem_batch(pid, 2, 0, 2, b"y"), acks=-1)
    assert (r["error_code"], r["base_offset"]) == (NONE, 2), r
    # ...after which epoch 1 is fenced.
    r = raw.produce(conn, 9, "idem-epoch", 0, idem_batch(pid, 1, 2, 2, b"z"), acks=-1)
    assert r["error_code"] == INVALID_PRODUCER_EPOCH, r
    assert raw.latest_offset(conn, "idem-epoch", 0) == 4


def test_unknown_producer_accepted_at_any_sequence(conn):
    """No state for the producer: accepted whatever its sequence (Kafka
    since KIP-360), and its sequence is followed from there."""
    raw.create_topic(conn, "idem-unknown", 1)
    pid = 987654321
    r = raw.produce(conn, 9, "idem-unknown", 0, idem_batch(pid, 3, 40, 2, b"u"), acks=-1)
    assert (r["error_code"], r["base_offset"]) == (NONE, 0), r
    r = raw.produce(conn, 9, "idem-unknown", 0, idem_batch(pid, 3, 40, 2, b"u"), acks=-1)
    assert (r["error_code"], r["base_offset"]) == (NONE, 0), r  # a duplicate now
    r = raw.produce(conn, 9, "idem-unknown", 0, idem_batch(pid, 3, 43, 1, b"v"), acks=-1)
    assert r["error_code"] == OUT_OF_ORDER_SEQUENCE_NUMBER, r
    assert raw.latest_offset(conn, "idem-unknown", 0) == 2


def test_producer_state_survives_restart(broker):
    """After a restart (SIGTERM) and after a crash (kill -9) a retry of the
    last batches is still recognised, and the sequence continues."""
    with kw.Conn(broker.host, broker.port, timeout=10.0) as c:
        raw.create_topic(c, "idem-restart", 2)
        _, pid, epoch = init_producer_id(c, 4)
        batches = [idem_batch(pid, epoch, 3 * i, 3, b"r%d" % i) for i in range(7)]
        for i, b in enumerate(batches):
            r = raw.produce(c, 9, "idem-restart", 0, b, acks=-1)
            assert (r["error_code"], r["base_offset"]) == (NONE, 3 * i), r
    for how in ("restart", "kill"):
        if how == "restart":
            broker.restart()
        else:
            broker.kill()
            broker.start()
        with kw.Conn(broker.host, broker.port, timeout=10.0) as c:
            raw.wait_until(lambda: raw.list_offsets(c, 1, "idem-restart", [(0, -1)])[0]["error_code"] == 0,
                           "partition served after %s" % how)
            end = raw.latest_offset(c, "idem-restart", 0)
            n = end // 3
            for i in range(max(0, n - 5), n):  # the last five: duplicates
                r = raw.produce(c, 9, "idem-restart", 0, batches[i], acks=-1)
                assert (r["error_code"], r["base_offset"]) == (NONE, 3 * i), (how, i, r)
            assert raw.latest_offset(c, "idem-restart", 0) == end
            nxt = idem_batch(pid, epoch, 3 * n, 3, b"after-%s" % how.encode())
            r = raw.produce(c, 9, "idem-restart", 0, nxt, acks=-1)
            assert (r["error_code"], r["base_offset"]) == (NONE, end), (how, r)
            batches.append(nxt)
            gap = idem_batch(pid, epoch, 3 * n + 10, 3, b"gap")
            assert raw.produce(c, 9, "idem-restart", 0, gap, acks=-1)["error_code"] == \
                OUT_OF_ORDER_SEQUENCE_NUMBER


# ---------------------------------------------------------------------------
# librdkafka under failures: exactly once per partition, in order
# ---------------------------------------------------------------------------

def consume_partition(bootstrap, topic, partition, end):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "idem-check-%d" % os.getpid(),
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, partition, 0)])
    out = []
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while (not out or out[-1][0] < end - 1) and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        out.append((m.offset(), m.value()))
    c.close()
    return out


def check_exactly_once_in_order(bootstrap, topic, partitions, acked):
    """acked: {value: (partition, offset)} of every delivered message; values
    are b"{partition}:{seq}".  Per partition: offsets contiguous from 0, no
    value twice, sequences strictly increasing, and every delivered value
    at its acknowledged offset."""
    for p in range(partitions):
        mine = {v: o for v, (pp, o) in acked.items() if pp == p}
        end = max(mine.values()) + 1 if mine else 0
        log = consume_partition(bootstrap, topic, p, end)
        assert [o for o, _ in log] == list(range(len(log))), "partition %d: offsets not contiguous" % p
        values = [v for _, v in log]
        assert len(values) == len(set(values)), "partition %d: duplicates %r" % (
            p, sorted({v for v in values if values.count(v) > 1})[:5])
        seqs = [int(v.split(b":")[1]) for v in values]
        assert seqs == sorted(seqs), "partition %d: out of order" % p
        assert seqs == list(range(len(seqs))), "partition %d: gap in the sequence" % p
        at = {v: o for o, v in log}
        for v, o in mine.items():
            assert at.get(v) == o, "partition %d: %r acknowledged at %d, found at %r" % (p, v, o, at.get(v))
        assert len(log) == len(mine), "partition %d: %d records, %d delivered" % (p, len(log), len(mine))


def run_idempotent_load(bootstrap, topic, partitions, per_partition, disrupt):
    """Produces per_partition messages to each partition with an idempotent
    producer (on a thread of its own) while `disrupt()` runs on this thread
    (brokers are started from here: the harness ties a broker's life to the
    thread that started it); returns acked {value: (partition, offset)}."""
    acked, errors = {}, []

    def cb(err, msg):
        if err:
            errors.append(str(err))
        else:
            acked[msg.value()] = (msg.partition(), msg.offset())

    prod = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                     "max.in.flight.requests.per.connection": 5, "linger.ms": 2,
                     "message.timeout.ms": 120000, "retry.backoff.ms": 50,
                     "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 500})
    left = []

    def load():
        for i in range(per_partition):
            for p in range(partitions):
                while True:
                    try:
                        prod.produce(topic, value=b"%d:%d" % (p, i), partition=p, callback=cb)
                        break
                    except BufferError:
                        prod.poll(0.05)
            prod.poll(0)
            if i % 50 == 0:
                time.sleep(0.02)  # paced: the disruption lands while batches are in flight
        left.append(prod.flush(120))

    t = threading.Thread(target=load)
    t.start()
    disrupt(t.is_alive)
    t.join()
    assert left == [0], "%r messages never delivered" % left
    assert not errors, errors[:5]
    return acked


def test_librdkafka_idempotent_producer_across_kill9(broker):
    topic = "idem-rdk"
    with kw.Conn(broker.host, broker.port, timeout=10.0) as c:
        raw.create_topic(c, topic, 3)

    def disrupt(running):
        for _ in range(2):
            time.sleep(0.4)
            broker.kill()
            time.sleep(0.3)
            broker.start()

    acked = run_idempotent_load(broker.bootstrap, topic, 3, 2000, disrupt)
    assert len(acked) == 3 * 2000
    check_exactly_once_in_order(broker.bootstrap, topic, 3, acked)


class CuttingProxy:
    """A TCP proxy in front of the broker that can cut every connection at
    once (both directions), so requests in flight reach the broker while
    their answers are lost."""

    def __init__(self, port, target):
        self.target = target
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", port))
        self.lsock.listen(64)
        self.lock = threading.Lock()
        self.conns = []
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        for s_ in (a, b):
            try:
                s_.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            conns, self.conns = self.conns, []
            self.cuts += 1
        for s_ in conns:
            try:
                s_.shutdown(socket.SHUT_RDWR)
                s_.close()
            except OSError:
                pass

    def close(self):
        self.lsock.close()
        self.cut()


PROXY_PORT = None


def _proxy_port():
    global PROXY_PORT
    if PROXY_PORT is None:
        import harness
        PROXY_PORT = harness.free_port()
    return PROXY_PORT


@pytest.mark.parametrize("broker_extra_env", [{"KAFSCALE_BROKER_PORT": str(_proxy_port())}], ids=["via-proxy"])
def test_librdkafka_idempotent_producer_across_dropped_connections(broker):
    """Connections cut under the producer every 150 ms while the broker
    keeps running (it advertises the proxy's port): answers to appended
    batches are lost, the producer retries them, and the retries are
    recognised — nothing is doubled, nothing missing, order kept."""
    proxy = CuttingProxy(_proxy_port(), (broker.host, broker.port))
    try:
        topic = "idem-drop"
        with kw.Conn(broker.host, broker.port, timeout=10.0) as c:
            raw.create_topic(c, topic, 2)

        def disrupt(running):
            while running():
                time.sleep(0.15)
                proxy.cut()

        log_before = len(broker.log_text())
        acked = run_idempotent_load("127.0.0.1:%d" % _proxy_port(), topic, 2, 3000, disrupt)
        assert len(acked) == 2 * 3000
        retries = broker.log_text()[log_before:].count("event=produce_retry_recognised")
        print("connections cut %d times, %d retried batches recognised" % (proxy.cuts, retries))
        # The cuts did lose answers to appended batches (else this test
        # would prove nothing about retries).
        assert retries > 0, "no retried batch reached the broker (%d cuts)" % proxy.cuts
        check_exactly_once_in_order(broker.bootstrap, topic, 2, acked)
    finally:
        proxy.close()
