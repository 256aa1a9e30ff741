"""OffsetForLeaderEpoch (api key 23) v0-v4 over raw sockets.

Layouts (kafka-protocol/OffsetForLeaderEpochRequest.json, ...Response.json;
flexible from v4, so v4 uses request header 2 and response header 1):

    request  = [v3+ ReplicaId i32] Topics[ Topic string,
                 Partitions[ Partition i32, [v2+ CurrentLeaderEpoch i32], LeaderEpoch i32 ] ]
    response = [v2+ ThrottleTimeMs i32] Topics[ Topic string,
                 Partitions[ ErrorCode i16, Partition i32, [v1+ LeaderEpoch i32], EndOffset i64 ] ]

Semantics checked (Apache Kafka's LeaderEpochFileCache.endOffsetFor and
Partition.lastOffsetForLeaderEpoch / checkCurrentLeaderEpoch): a new
partition has one leader epoch E starting at offset 0 — E = 0 in embedded
mode, E = 1 in cluster mode (its first owner bumped it) — read from
Metadata, so

    epoch E (the current one)  -> (E, log end offset = high watermark)
    epoch above the current    -> (-1, -1), no error
    epoch -1 (UNDEFINED)       -> (-1, -1), no error
    epoch below the first      -> (requested epoch, first epoch's start offset = 0)
    CurrentLeaderEpoch -1      -> no check; > E -> UNKNOWN_LEADER_EPOCH (75);
                                  < E -> FENCED_LEADER_EPOCH (74)
    unknown topic / partition  -> UNKNOWN_TOPIC_OR_PARTITION (3), (-1, -1)

A restart in cluster mode is a change of owner: the history gains
{E + 1, high watermark}, and both epochs are answered from it.

Every response is compared byte for byte with the expected encoding, which
pins the exact shape of each version.
"""

import pytest

import kafka_wire as kw
import test_produce_raw as pr  # create_topic, produce, build_batch, simple_records, latest_offset

OFFSET_FOR_LEADER_EPOCH = 23
FIRST_FLEXIBLE = 4
VERSIONS = range(0, 5)

# kafka_wire.py does not know this API; its first flexible version decides the
# request/response header versions.
kw.FIRST_FLEXIBLE_VERSION.setdefault(OFFSET_FOR_LEADER_EPOCH, FIRST_FLEXIBLE)

# Error codes (kafka-protocol/error-codes.tsv).
NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
FENCED_LEADER_EPOCH = 74
UNKNOWN_LEADER_EPOCH = 75

UNDEFINED = (-1, -1)  # (leader epoch, end offset)


# ---------------------------------------------------------------------------
# Encoders / decoders
# ---------------------------------------------------------------------------

def ofle_body(version, topics, replica_id=-1):
    """topics: list of (topic, [(partition, current_leader_epoch, leader_epoch)])."""
    flex = version >= FIRST_FLEXIBLE
    w = kw.Writer()
    s = w.compact_string if flex else w.string
    alen = w.compact_array_len if flex else w.array_len
    if version >= 3:
        w.int32(replica_id)
    alen(len(topics))
    for name, parts in topics:
        s(name)
        alen(len(parts))
        for p, current, epoch in parts:
            w.int32(p)
            if version >= 2:
                w.int32(current)
            w.int32(epoch)
            if flex:
                w.tagged_fields()
        if flex:
            w.tagged_fields()
    if flex:
        w.tagged_fields()
    return w.bytes()


def ofle_response_bytes(version, topics, throttle_ms=0):
    """The exact expected response body. topics: list of (topic,
    [(error_code, partition, leader_epoch, end_offset)])."""
    flex = version >= FIRST_FLEXIBLE
    w = kw.Writer()
    s = w.compact_string if flex else w.string
    alen = w.compact_array_len if flex else w.array_len
    if version >= 2:
        w.int32(throttle_ms)
    alen(len(topics))
    for name, parts in topics:
        s(name)
        alen(len(parts))
        for err, p, epoch, end in parts:
            w.int16(err).int32(p)
            if version >= 1:
                w.int32(epoch)
            w.int64(end)
            if flex:
                w.tagged_fields()
        if flex:
            w.tagged_fields()
    if flex:
        w.tagged_fields()
    return w.bytes()


def decode_ofle(r, version):
    """Returns (throttle_ms or None, [(topic, [(error_code, partition,
    leader_epoch or None, end_offset)])])."""
    flex = version >= FIRST_FLEXIBLE
    s = r.compact_string if flex else r.string
    alen = r.compact_array_len if flex else r.array_len
    throttle = r.int32() if version >= 2 else None
    topics = []
    for _ in range(alen() or 0):
        name = s()
        parts = []
        for _ in range(alen() or 0):
            err, p = r.int16(), r.int32()
            epoch = r.int32() if version >= 1 else None
            end = r.int64()
            if flex:
                r.skip_tagged_fields()
            parts.append((err, p, epoch, end))
        if flex:
            r.skip_tagged_fields()
        topics.append((name, parts))
    if flex:
        r.skip_tagged_fields()
    r.expect_end()
    return throttle, topics


def ofle(conn, version, topics, replica_id=-1):
    """Sends one request; returns (raw body bytes, decoded)."""
    r = conn.request(OFFSET_FOR_LEADER_EPOCH, version, ofle_body(version, topics, replica_id))
    raw = r.data[r.pos:]
    return raw, decode_ofle(kw.Reader(raw), version)


def check(conn, version, topics, expected, replica_id=-1):
    """Sends `topics` and asserts the response equals `expected`, a list of
    (topic, [(error_code, partition, (leader_epoch, end_offset))]), exactly
    as encoded for `version` (LeaderEpoch absent in v0, throttle from v2)."""
    raw, decoded = ofle(conn, version, topics, replica_id)
    want = [(t, [(e, p, ep, off) for e, p, (ep, off) in parts]) for t, parts in expected]
    want_raw = ofle_response_bytes(version, want)
    assert raw == want_raw, "v%d: got %r, want %r" % (version, decoded, want)
    return decoded


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def conn(module_broker):
    c = kw.Conn(module_broker.host, module_broker.port, timeout=10.0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def topic(conn):
    """'ofle' with 2 partitions: partition 0 holds 10 records (three batches),
    partition 1 is empty."""
    name = "ofle"
    pr.create_topic(conn, name, 2)
    for i, n in enumerate((3, 5, 2)):
        res = pr.produce(conn, 9, name, 0, pr.build_batch(pr.simple_records(n, b"b%d" % i)))
        assert res["error_code"] == 0, res
    assert pr.latest_offset(conn, name, 0) == 10
    assert pr.latest_offset(conn, name, 1) == 0
    return name


@pytest.fixture(scope="module")
def E(conn, topic):
    """The current leader epoch of both partitions of `topic`."""
    e = kw.leader_epoch(conn, topic, 0)
    assert kw.leader_epoch(conn, topic, 1) == e
    return e


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

def test_api_versions_advertises_v0_to_v4(conn):
    r = conn.request(kw.API_VERSIONS, 3, kw.api_versions_body(3))
    error, keys, _ = kw.decode_api_versions(r, 3)
    assert error == NONE
    assert keys.get(OFFSET_FOR_LEADER_EPOCH) == (0, 4), keys.get(OFFSET_FOR_LEADER_EPOCH)


@pytest.mark.parametrize("version", VERSIONS)
def test_current_epoch_ends_at_high_watermark(conn, topic, E, version):
    """Epoch E is the current epoch: its end offset is the log end offset,
    which for Kafscale is the high watermark (10 after producing 10 records;
    0 for the empty partition)."""
    check(conn, version, [(topic, [(0, -1, E), (1, -1, E)])],
          [(topic, [(NONE, 0, (E, 10)), (NONE, 1, (E, 0))])])


@pytest.mark.parametrize("version", VERSIONS)
def test_end_offset_follows_new_records(conn, version):
    """The answer for the current epoch moves with the high watermark."""
    name = "ofle-grow-v%d" % version
    pr.create_topic(conn, name, 1)
    e = kw.leader_epoch(conn, name)
    check(conn, version, [(name, [(0, -1, e)])], [(name, [(NONE, 0, (e, 0))])])
    res = pr.produce(conn, 9, name, 0, pr.build_batch(pr.simple_records(7, b"g")))
    assert res["error_code"] == 0, res
    hwm = pr.latest_offset(conn, name, 0)
    assert hwm == 7
    check(conn, version, [(name, [(0, -1, e)])], [(name, [(NONE, 0, (e, hwm))])])


@pytest.mark.parametrize("version", VERSIONS)
def test_epoch_above_latest_is_undefined(conn, topic, E, version):
    """An epoch larger than any the partition has seen: UNDEFINED_EPOCH and
    UNDEFINED_EPOCH_OFFSET with no error (Kafka's endOffsetFor)."""
    check(conn, version, [(topic, [(0, -1, E + 5), (1, -1, E + 1), (0, -1, 2147483647)])],
          [(topic, [(NONE, 0, UNDEFINED), (NONE, 1, UNDEFINED), (NONE, 0, UNDEFINED)])])


@pytest.mark.parametrize("version", VERSIONS)
def test_undefined_epoch_is_undefined(conn, topic, version):
    """LeaderEpoch -1 (UNDEFINED_EPOCH): (-1, -1), no error."""
    check(conn, version, [(topic, [(0, -1, -1)])], [(topic, [(NONE, 0, UNDEFINED)])])


@pytest.mark.parametrize("version", [0, 1, 4])
def test_epoch_below_first_gets_first_start_offset(conn, topic, E, version):
    """An epoch below the first known one (E - 1 when E > 0, and negative
    epochs): Kafka's endOffsetFor answers the requested epoch with the start
    offset of the first known epoch (0)."""
    check(conn, version, [(topic, [(0, -1, -5)])], [(topic, [(NONE, 0, (-5, 0))])])
    if E > 0:
        check(conn, version, [(topic, [(0, -1, E - 1)])], [(topic, [(NONE, 0, (E - 1, 0))])])


@pytest.mark.parametrize("version", [2, 3, 4])
def test_current_leader_epoch_fencing(conn, topic, E, version):
    """CurrentLeaderEpoch (v2+): -1 skips the check, E matches, a larger one
    is UNKNOWN_LEADER_EPOCH (the client knows a newer leader than we do), a
    smaller one FENCED_LEADER_EPOCH; a failed check leaves (-1, -1)."""
    check(conn, version,
          [(topic, [(0, -1, E), (0, E, E), (0, E + 3, E), (1, E + 1, E), (0, -2, E), (1, E + 3, 5)])],
          [(topic, [(NONE, 0, (E, 10)),
                    (NONE, 0, (E, 10)),
                    (UNKNOWN_LEADER_EPOCH, 0, UNDEFINED),
                    (UNKNOWN_LEADER_EPOCH, 1, UNDEFINED),
                    (FENCED_LEADER_EPOCH, 0, UNDEFINED),
                    (UNKNOWN_LEADER_EPOCH, 1, UNDEFINED)])])


@pytest.mark.parametrize("version", [0, 1])
def test_current_leader_epoch_absent_before_v2(conn, topic, E, version):
    """v0/v1 carry no CurrentLeaderEpoch (the encoder drops the E + 3): no check."""
    check(conn, version, [(topic, [(0, E + 3, E)])], [(topic, [(NONE, 0, (E, 10))])])


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_topic_or_partition(conn, topic, E, version):
    """Unknown topic and out-of-range partitions: UNKNOWN_TOPIC_OR_PARTITION
    with (-1, -1); other partitions of the same request are answered, in
    request order."""
    check(conn, version,
          [("no-such-topic", [(0, -1, 0), (3, -1, 0)]),
           (topic, [(2, -1, 0), (0, -1, E), (-1, -1, 0)])],
          [("no-such-topic", [(UNKNOWN_TOPIC_OR_PARTITION, 0, UNDEFINED),
                              (UNKNOWN_TOPIC_OR_PARTITION, 3, UNDEFINED)]),
           (topic, [(UNKNOWN_TOPIC_OR_PARTITION, 2, UNDEFINED),
                    (NONE, 0, (E, 10)),
                    (UNKNOWN_TOPIC_OR_PARTITION, -1, UNDEFINED)])])


@pytest.mark.parametrize("version", [2, 3, 4])
def test_unknown_partition_wins_over_epoch_check(conn, topic, version):
    """The partition must exist before its epoch can be checked."""
    check(conn, version, [(topic, [(9, 3, 0)])],
          [(topic, [(UNKNOWN_TOPIC_OR_PARTITION, 9, UNDEFINED)])])


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("replica_id", [-1, -2, 0, 1])
def test_replica_id_consumer_debug_and_follower(conn, topic, E, version, replica_id):
    """ReplicaId (v3+): -1 (consumer), -2 (debug) and a follower id are all
    answered alike."""
    check(conn, version, [(topic, [(0, -1, E)])], [(topic, [(NONE, 0, (E, 10))])],
          replica_id=replica_id)


@pytest.mark.parametrize("version", VERSIONS)
def test_empty_request(conn, version):
    check(conn, version, [], [])


@pytest.mark.parametrize("version", VERSIONS)
def test_topic_with_no_partitions(conn, topic, version):
    check(conn, version, [(topic, []), ("no-such-topic", [])],
          [(topic, []), ("no-such-topic", [])])


def test_many_partitions_one_request(conn, topic, E):
    """A request naming many partitions (and duplicates) gets one answer per
    requested partition, in order."""
    parts = [(i % 3, -1, E) for i in range(300)]
    expected = [(NONE, 0, (E, 10)) if i % 3 == 0 else
                (NONE, 1, (E, 0)) if i % 3 == 1 else
                (UNKNOWN_TOPIC_OR_PARTITION, 2, UNDEFINED) for i in range(300)]
    check(conn, 4, [(topic, parts)], [(topic, expected)])


def test_answer_survives_restart(broker):
    """After a restart the end offset of the epoch before it is the recovered
    high watermark.  In cluster mode the restart began a new epoch E1 at
    offset 4: both epochs are answered from the stored history, and records
    written afterwards extend only the new one."""
    with kw.Conn(broker.host, broker.port, timeout=10.0) as c:
        pr.create_topic(c, "ofle-restart", 1)
        e0 = kw.leader_epoch(c, "ofle-restart")
        res = pr.produce(c, 9, "ofle-restart", 0, pr.build_batch(pr.simple_records(4, b"r")))
        assert res["error_code"] == 0, res
    broker.restart()
    with kw.Conn(broker.host, broker.port, timeout=10.0) as c:
        pr.wait_until(lambda: pr.list_offsets(c, 1, "ofle-restart", [(0, -1)])[0]["error_code"] == 0,
                      "topic to be served after restart")
        e1 = kw.leader_epoch(c, "ofle-restart")
        assert e1 >= e0
        for v in VERSIONS:
            check(c, v, [("ofle-restart", [(0, -1, e0)])], [("ofle-restart", [(NONE, 0, (e0, 4))])])
        if e1 > e0:
            res = pr.produce(c, 9, "ofle-restart", 0, pr.build_batch(pr.simple_records(3, b"s")))
            assert res["error_code"] == 0, res
            for v in VERSIONS:
                check(c, v, [("ofle-restart", [(0, -1, e0), (0, -1, e1)])],
                      [("ofle-restart", [(NONE, 0, (e0, 4)), (NONE, 0, (e1, 7))])])
