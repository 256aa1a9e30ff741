"""Produce, Fetch and ListOffsets over raw sockets, with record batches built
by hand (no Kafka client library involved).

Layouts follow the Kafka protocol guide and the JSON message schemas
(kafka-protocol/ProduceRequest.json, FetchRequest.json, ListOffsetsRequest.json
and their responses). A v2 record batch is:

    baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 = 2 |
    crc u32 (CRC-32C of attributes .. end) | attributes i16 | lastOffsetDelta i32 |
    baseTimestamp i64 | maxTimestamp i64 | producerId i64 | producerEpoch i16 |
    baseSequence i32 | recordsCount i32 | records

and each record: length varint | attributes i8 | timestampDelta varint |
offsetDelta varint | key (varint length, -1 = null) | value (same) |
header count varint | headers (varint key length, key, varint value length, value).

The helpers here (CRC-32C, batch builder/parser, request encoders, response
decoders) are also imported by test_durability.py.
"""

import re
import struct
import time

import pytest

import kafka_wire as kw

PRODUCE = kw.PRODUCE
FETCH = kw.FETCH
LIST_OFFSETS = 2

# kafka_wire.py does not know ListOffsets; its first flexible version is 6
# (ListOffsetsRequest.json), which decides the request/response header version.
kw.FIRST_FLEXIBLE_VERSION.setdefault(LIST_OFFSETS, 6)

# Error codes (kafka-protocol/error-codes.tsv).
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
INVALID_REQUIRED_ACKS = 21
UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
KAFKA_STORAGE_ERROR = 56
FETCH_SESSION_ID_NOT_FOUND = 70
INVALID_RECORD = 87
UNKNOWN_TOPIC_ID = 100

CONDITION_TIMEOUT_S = 10


def wait_until(cond, what, timeout=CONDITION_TIMEOUT_S, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            pytest.fail("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---------------------------------------------------------------------------
# CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table driven
# ---------------------------------------------------------------------------

def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    t = _CRC32C_TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value


# ---------------------------------------------------------------------------
# Record batches (magic 2)
# ---------------------------------------------------------------------------

def _varbytes(w, b):
    if b is None:
        w.varint(-1)
    else:
        w.varint(len(b)).raw(b)


def encode_record(offset_delta, ts_delta, key, value, headers=()):
    body = kw.Writer().int8(0).varint(ts_delta).varint(offset_delta)
    _varbytes(body, key)
    _varbytes(body, value)
    body.varint(len(headers))
    for hk, hv in headers:
        body.varint(len(hk)).raw(hk)
        _varbytes(body, hv)
    b = body.bytes()
    return kw.Writer().varint(len(b)).raw(b).bytes()


def build_batch(records, base_timestamp=None, attributes=0, producer_id=-1,
                producer_epoch=-1, base_sequence=-1, leader_epoch=-1, magic=2):
    """records: list of (timestamp, key, value, headers). Returns the batch
    bytes with base offset 0 and a valid CRC."""
    assert records
    if base_timestamp is None:
        base_timestamp = records[0][0]
    recs = b"".join(encode_record(i, ts - base_timestamp, k, v, h)
                    for i, (ts, k, v, h) in enumerate(records))
    max_ts = max(r[0] for r in records)
    after_crc = (struct.pack(">hiqqqhii", attributes, len(records) - 1, base_timestamp,
                             max_ts, producer_id, producer_epoch, base_sequence, len(records))
                 + recs)
    crc = crc32c(after_crc)
    after_len = struct.pack(">ibI", leader_epoch, magic, crc) + after_crc
    return struct.pack(">qi", 0, len(after_len)) + after_len


def simple_records(n, prefix, ts0=1_700_000_000_000, ts_step=1, headers=True):
    out = []
    for i in range(n):
        h = [(b"h1", b"%s-h1-%d" % (prefix, i)), (b"h2", None)] if headers else []
        out.append((ts0 + i * ts_step, b"%s-k%d" % (prefix, i), b"%s-v%d" % (prefix, i) * 3, h))
    return out


def parse_batches(data):
    """Splits fetched/stored bytes into whole batches; returns a list of dicts
    (raw bytes, header fields, crc_ok). A trailing partial batch (allowed in
    Fetch responses) is returned separately as the second value."""
    out = []
    pos = 0
    while len(data) - pos >= 61:
        base, blen = struct.unpack_from(">qi", data, pos)
        size = 12 + blen
        if blen < 49 or pos + size > len(data):
            break
        b = data[pos:pos + size]
        (epoch, magic, crc, attrs, lod, bts, mts, pid, pep, bseq,
         count) = struct.unpack_from(">ibIhiqqqhii", b, 12)
        out.append({"raw": b, "base_offset": base, "batch_length": blen, "leader_epoch": epoch,
                    "magic": magic, "crc": crc, "crc_ok": crc32c(b[21:]) == crc,
                    "attributes": attrs, "last_offset_delta": lod, "base_timestamp": bts,
                    "max_timestamp": mts, "producer_id": pid, "records_count": count})
        pos += size
    return out, data[pos:]


def decode_records(batch):
    """Records of an uncompressed batch: list of (offset, timestamp, key, value, headers)."""
    r = kw.Reader(batch["raw"][61:])
    out = []
    for _ in range(batch["records_count"]):
        length = r.varint()
        start = r.pos
        r.int8()
        tsd = r.varint()
        od = r.varint()
        kl = r.varint()
        key = None if kl < 0 else r.take(kl)
        vl = r.varint()
        value = None if vl < 0 else r.take(vl)
        headers = []
        for _ in range(r.varint()):
            hk = r.take(r.varint())
            hl = r.varint()
            headers.append((hk, None if hl < 0 else r.take(hl)))
        assert r.pos - start == length, "record length mismatch"
        out.append((batch["base_offset"] + od, batch["base_timestamp"] + tsd, key, value, headers))
    r.expect_end()
    return out


def patched(batch_bytes, base_offset, leader_epoch=0):
    """A batch as the broker stores and serves it: base offset assigned and
    partitionLeaderEpoch set to the leader's epoch (0 for a partition that
    never changed owner), as Kafka does; both are outside the CRC."""
    return (struct.pack(">q", base_offset) + batch_bytes[8:12] + struct.pack(">i", leader_epoch)
            + batch_bytes[16:])


# ---------------------------------------------------------------------------
# Request encoders / response decoders
# ---------------------------------------------------------------------------

def _bytes_field(w, b, flexible):
    if flexible:
        if b is None:
            w.uvarint(0)
        else:
            w.uvarint(len(b) + 1).raw(b)
    else:
        if b is None:
            w.int32(-1)
        else:
            w.int32(len(b)).raw(b)


def produce_body(version, topics, acks=1, timeout_ms=10000, transactional_id=None):
    """topics: {name: {partition: records bytes}}."""
    flex = version >= 9
    w = kw.Writer()
    s = w.compact_string if flex else w.string
    alen = w.compact_array_len if flex else w.array_len
    if version >= 3:
        s(transactional_id)
    w.int16(acks).int32(timeout_ms)
    alen(len(topics))
    for name, parts in topics.items():
        s(name)
        alen(len(parts))
        for idx, recs in parts.items():
            w.int32(idx)
            _bytes_field(w, recs, flex)
            if flex:
                w.tagged_fields()
        if flex:
            w.tagged_fields()
    if flex:
        w.tagged_fields()
    return w.bytes()


def decode_produce(r, version):
    """Returns {(topic, partition): {'error_code', 'base_offset', 'log_append_time',
    'log_start_offset', 'error_message'}}."""
    flex = version >= 9
    s = r.compact_string if flex else r.string
    alen = r.compact_array_len if flex else r.array_len
    out = {}
    for _ in range(alen() or 0):
        name = s()
        for _ in range(alen() or 0):
            p = {"error_message": None, "log_append_time": None, "log_start_offset": None}
            idx = r.int32()
            p["error_code"] = r.int16()
            p["base_offset"] = r.int64()
            if version >= 2:
                p["log_append_time"] = r.int64()
            if version >= 5:
                p["log_start_offset"] = r.int64()
            if version >= 8:
                p["record_errors"] = []
                for _ in range(alen() or 0):
                    p["record_errors"].append((r.int32(), s()))
                    if flex:
                        r.skip_tagged_fields()
                p["error_message"] = s()
            if flex:
                r.skip_tagged_fields()
            out[(name, idx)] = p
        if flex:
            r.skip_tagged_fields()
    if version >= 1:
        r.int32()  # throttle
    if flex:
        r.skip_tagged_fields()
    r.expect_end()
    return out


def produce(conn, version, topic, partition, records, acks=1, transactional_id=None,
            timeout_ms=10000):
    """One Produce request for one partition; returns that partition's answer
    (None for acks=0, which gets no response)."""
    body = produce_body(version, {topic: {partition: records}}, acks, timeout_ms,
                        transactional_id)
    if acks == 0:
        conn.send(PRODUCE, version, body)
        return None
    res = decode_produce(conn.request(PRODUCE, version, body), version)
    assert list(res) == [(topic, partition)], res
    return res[(topic, partition)]


def fetch_body(version, parts, max_wait_ms=0, min_bytes=1, max_bytes=0x7FFFFFFF,
               session_id=0, session_epoch=-1, isolation=0):
    """parts: list of (topic name or 16-byte topic id, partition, fetch offset,
    partition max bytes), grouped by topic in order of appearance."""
    flex = version >= 12
    w = kw.Writer()
    alen = w.compact_array_len if flex else w.array_len
    if version <= 14:
        w.int32(-1)  # replica id
    w.int32(max_wait_ms).int32(min_bytes)
    if version >= 3:
        w.int32(max_bytes)
    if version >= 4:
        w.int8(isolation)
    if version >= 7:
        w.int32(session_id).int32(session_epoch)
    topics = {}
    for t, p, off, pmax in parts:
        topics.setdefault(t, []).append((p, off, pmax))
    alen(len(topics))
    for t, plist in topics.items():
        if version >= 13:
            assert isinstance(t, bytes) and len(t) == 16, "Fetch v13+ needs a topic id"
            w.raw(t)
        elif flex:
            w.compact_string(t)
        else:
            w.string(t)
        alen(len(plist))
        for p, off, pmax in plist:
            w.int32(p)
            if version >= 9:
                w.int32(-1)  # current leader epoch
            w.int64(off)
            if version >= 12:
                w.int32(-1)  # last fetched epoch
            if version >= 5:
                w.int64(-1)  # log start offset (followers only)
            w.int32(pmax)
            if flex:
                w.tagged_fields()
        if flex:
            w.tagged_fields()
    if version >= 7:
        alen(0)  # forgotten topics
    if version >= 11:
        (w.compact_string if flex else w.string)("")
    if flex:
        w.tagged_fields()
    return w.bytes()


def decode_fetch(r, version):
    """Returns {'error_code', 'session_id', 'parts': {(topic or id, partition):
    {'error_code', 'high_watermark', 'last_stable_offset', 'log_start_offset',
    'records'}}}."""
    flex = version >= 12
    alen = r.compact_array_len if flex else r.array_len
    out = {"error_code": None, "session_id": None, "parts": {}}
    r.int32()  # throttle
    if version >= 7:
        out["error_code"] = r.int16()
        out["session_id"] = r.int32()
    for _ in range(alen() or 0):
        if version >= 13:
            t = r.uuid()
        else:
            t = r.compact_string() if flex else r.string()
        for _ in range(alen() or 0):
            p = {"log_start_offset": None, "last_stable_offset": None}
            idx = r.int32()
            p["error_code"] = r.int16()
            p["high_watermark"] = r.int64()
            if version >= 4:
                p["last_stable_offset"] = r.int64()
            if version >= 5:
                p["log_start_offset"] = r.int64()
            if version >= 4:
                for _ in range(alen() or 0):
                    r.int64(), r.int64()
                    if flex:
                        r.skip_tagged_fields()
            if version >= 11:
                r.int32()  # preferred read replica
            if flex:
                n = r.uvarint()
                p["records"] = None if n == 0 else r.take(n - 1)
            else:
                n = r.int32()
                p["records"] = None if n < 0 else r.take(n)
            if flex:
                r.skip_tagged_fields()
            out["parts"][(t, idx)] = p
        if flex:
            r.skip_tagged_fields()
    if flex:
        r.skip_tagged_fields()
    r.expect_end()
    return out


def fetch(conn, version, parts, timeout=10.0, **kw_args):
    body = fetch_body(version, parts, **kw_args)
    corr = conn.send(FETCH, version, body)
    got, r = conn.recv(FETCH, version, timeout=timeout)
    assert got == corr
    return decode_fetch(r, version)


def fetch_one(conn, version, topic, partition, offset, pmax=1 << 20, **kw_args):
    res = fetch(conn, version, [(topic, partition, offset, pmax)], **kw_args)
    if version >= 7:
        assert res["error_code"] == 0, res
    return res["parts"][(topic, partition)]


def fetch_all(conn, version, topic, partition, offset=0, pmax=1 << 20):
    """Fetches from `offset` up to the high watermark (a response may stop at
    a segment boundary, as Kafka's does); returns (bytes, last response)."""
    data = b""
    while True:
        p = fetch_one(conn, version, topic, partition, offset, pmax)
        assert p["error_code"] == 0, p
        batches, _ = parse_batches(p["records"] or b"")
        if not batches:
            return data, p
        for b in batches:
            data += b["raw"]
            offset = b["base_offset"] + b["last_offset_delta"] + 1


def list_offsets_body(version, topic, queries):
    """queries: list of (partition, timestamp)."""
    flex = version >= 6
    w = kw.Writer()
    alen = w.compact_array_len if flex else w.array_len
    w.int32(-1)  # replica id
    if version >= 2:
        w.int8(0)  # isolation level
    alen(1)
    (w.compact_string if flex else w.string)(topic)
    alen(len(queries))
    for p, ts in queries:
        w.int32(p)
        if version >= 4:
            w.int32(-1)  # current leader epoch
        w.int64(ts)
        if version == 0:
            w.int32(1)  # max num offsets
        if flex:
            w.tagged_fields()
    if flex:
        w.tagged_fields()
    if version >= 10:
        w.int32(10000)
    if flex:
        w.tagged_fields()
    return w.bytes()


def decode_list_offsets(r, version):
    """Returns {(topic, partition): {'error_code', 'old_style', 'timestamp',
    'offset', 'leader_epoch'}}."""
    flex = version >= 6
    alen = r.compact_array_len if flex else r.array_len
    s = r.compact_string if flex else r.string
    if version >= 2:
        r.int32()
    out = {}
    for _ in range(alen() or 0):
        name = s()
        for _ in range(alen() or 0):
            p = {"old_style": None, "timestamp": None, "offset": None, "leader_epoch": None}
            idx = r.int32()
            p["error_code"] = r.int16()
            if version == 0:
                p["old_style"] = [r.int64() for _ in range(alen() or 0)]
            else:
                p["timestamp"] = r.int64()
                p["offset"] = r.int64()
            if version >= 4:
                p["leader_epoch"] = r.int32()
            if flex:
                r.skip_tagged_fields()
            out[(name, idx)] = p
        if flex:
            r.skip_tagged_fields()
    if flex:
        r.skip_tagged_fields()
    r.expect_end()
    return out


def list_offsets(conn, version, topic, queries):
    res = decode_list_offsets(
        conn.request(LIST_OFFSETS, version, list_offsets_body(version, topic, queries)), version)
    return [res[(topic, p)] for p, _ in queries]


def latest_offset(conn, topic, partition):
    (r,) = list_offsets(conn, 1, topic, [(partition, -1)])
    assert r["error_code"] == 0, r
    return r["offset"]


def create_topic(conn, name, partitions=1, wait_servable=True):
    """CreateTopics v7; returns the topic id. Waits until the partitions answer
    ListOffsets on this connection's broker (the log is open and, in cluster
    mode, owned by it: with several brokers pass wait_servable=False)."""
    res = kw.decode_create_topics(
        conn.request(kw.CREATE_TOPICS, 7, kw.create_topics_body(7, [(name, partitions, 1, {})])), 7)
    assert res[name]["error_code"] == 0, res
    tid = res[name]["topic_id"]
    assert tid != bytes(16)
    if wait_servable:
        wait_until(lambda: all(r["error_code"] == 0 for r in
                               list_offsets(conn, 1, name, [(p, -1) for p in range(partitions)])),
                   "topic %s to be servable" % name)
    return tid


def wait_request_logged(broker, client_id, api_key):
    """Waits until the broker has logged a request of `api_key` from a
    connection with `client_id` (it logs each request as it dispatches it)."""
    pat = re.compile(r'event=request .*\bapi_key=%d .*client_id="%s"' % (api_key, re.escape(client_id)))
    wait_until(lambda: any(pat.search(l) for l in broker.log_text().splitlines()),
               "the broker to receive api_key=%d from %s" % (api_key, client_id))


@pytest.fixture
def conn(broker):
    c = kw.Conn(broker.host, broker.port, timeout=10.0)
    yield c
    c.close()


def test_api_versions_ranges(conn):
    """Produce is advertised from v0 although v0-v2 are answered with
    UNSUPPORTED_VERSION: librdkafka up to 2.11 (2.0.2 here) only compresses
    with gzip/snappy/lz4 when the broker's Produce range includes v0
    (librdkafka#4956); Apache Kafka 4.0 advertises v0-v2 for that reason
    (KAFKA-18659)."""
    r = conn.request(kw.API_VERSIONS, 3, kw.api_versions_body(3))
    error, keys, _ = kw.decode_api_versions(r, 3)
    assert error == 0
    assert keys.get(FETCH) == (4, 17), keys.get(FETCH)
    assert keys.get(LIST_OFFSETS) == (0, 10), keys.get(LIST_OFFSETS)
    assert keys.get(PRODUCE) == (0, 11), "Produce advertised as %r" % (keys.get(PRODUCE),)


# ---------------------------------------------------------------------------
# Produce then Fetch: exact bytes
# ---------------------------------------------------------------------------

def test_produce_v3_v9_then_fetch_exact_bytes(conn):
    tid = create_topic(conn, "raw-exact", 1)
    a = build_batch(simple_records(3, b"a"))
    b = build_batch(simple_records(4, b"b", ts0=1_700_000_100_000))

    pa = produce(conn, 3, "raw-exact", 0, a, acks=1)
    assert pa["error_code"] == 0 and pa["base_offset"] == 0, pa
    pb = produce(conn, 9, "raw-exact", 0, b, acks=1)
    assert pb["error_code"] == 0 and pb["base_offset"] == 3, pb
    assert pb["log_start_offset"] == 0, pb
    assert pb["error_message"] is None, pb

    ep = kw.leader_epoch(conn, "raw-exact")
    expected = patched(a, 0, ep) + patched(b, 3, ep)
    for version, key in ((4, "raw-exact"), (12, "raw-exact"), (13, tid)):
        data, p = fetch_all(conn, version, key, 0, 0)
        assert p["error_code"] == 0, (version, p)
        assert p["high_watermark"] == 7, (version, p)
        assert p["last_stable_offset"] == 7, (version, p)
        if version >= 5:
            assert p["log_start_offset"] == 0, (version, p)
        assert data == expected, "Fetch v%d returned different bytes" % version
        batches, rest = parse_batches(data)
        assert rest == b""
        assert [x["base_offset"] for x in batches] == [0, 3]
        assert all(x["crc_ok"] for x in batches), "CRC invalid after offset patching"
        recs = [r for x in batches for r in decode_records(x)]
        want = simple_records(3, b"a") + simple_records(4, b"b", ts0=1_700_000_100_000)
        assert [(o, ts, k, v, h) for o, ts, k, v, h in recs] == \
            [(i, ts, k, v, [tuple(x) for x in h]) for i, (ts, k, v, h) in enumerate(want)]

        # From the second batch's base, and from inside it: the whole second batch.
        for off in (3, 5):
            p = fetch_one(conn, version, key, 0, off)
            assert p["error_code"] == 0 and p["records"] == patched(b, 3, ep), (version, off, p)
        # At the high watermark: no records, no error.
        p = fetch_one(conn, version, key, 0, 7)
        assert p["error_code"] == 0 and not p["records"] and p["high_watermark"] == 7, p


def test_produce_every_version_assigns_consecutive_offsets(conn):
    create_topic(conn, "raw-versions", 1)
    expected = b""
    next_off = 0
    for version in range(3, 12):
        batch = build_batch(simple_records(version, b"v%d" % version))
        p = produce(conn, version, "raw-versions", 0, batch, acks=-1)
        assert p["error_code"] == 0, (version, p)
        assert p["base_offset"] == next_off, (version, p)
        expected += patched(batch, next_off, kw.leader_epoch(conn, "raw-versions"))
        next_off += version
    assert latest_offset(conn, "raw-versions", 0) == next_off
    data, p = fetch_all(conn, 11, "raw-versions", 0, 0)
    assert data == expected and p["high_watermark"] == next_off


def test_produce_two_partitions_one_request(conn):
    create_topic(conn, "raw-two", 2)
    b0 = build_batch(simple_records(2, b"p0"))
    b1 = build_batch(simple_records(5, b"p1"))
    body = produce_body(9, {"raw-two": {0: b0, 1: b1}}, acks=-1)
    res = decode_produce(conn.request(PRODUCE, 9, body), 9)
    assert res[("raw-two", 0)]["error_code"] == 0 and res[("raw-two", 0)]["base_offset"] == 0
    assert res[("raw-two", 1)]["error_code"] == 0 and res[("raw-two", 1)]["base_offset"] == 0
    assert latest_offset(conn, "raw-two", 0) == 2
    assert latest_offset(conn, "raw-two", 1) == 5


def test_produce_acks0_is_flushed(conn):
    create_topic(conn, "raw-acks0", 1)
    batch = build_batch(simple_records(4, b"z"))
    assert produce(conn, 9, "raw-acks0", 0, batch, acks=0) is None
    wait_until(lambda: latest_offset(conn, "raw-acks0", 0) == 4, "acks=0 records to be committed")
    assert fetch_one(conn, 12, "raw-acks0", 0, 0)["records"] == patched(batch, 0, kw.leader_epoch(conn, "raw-acks0"))


# ---------------------------------------------------------------------------
# Bad batches: an error and nothing appended
# ---------------------------------------------------------------------------

def _assert_nothing_appended(conn, topic, before_bytes, hwm):
    assert latest_offset(conn, topic, 0) == hwm
    data, p = fetch_all(conn, 12, topic, 0, 0)
    assert p["high_watermark"] == hwm
    assert data == before_bytes
    # The partition still takes good batches at the next offset.
    good = build_batch(simple_records(1, b"after"))
    r = produce(conn, 9, topic, 0, good, acks=1)
    assert r["error_code"] == 0 and r["base_offset"] == hwm, r


def _with_prefix(conn, topic):
    create_topic(conn, topic, 1)
    first = build_batch(simple_records(2, b"first"))
    r = produce(conn, 9, topic, 0, first, acks=1)
    assert r["error_code"] == 0 and r["base_offset"] == 0
    return patched(first, 0, kw.leader_epoch(conn, topic))


@pytest.mark.parametrize("version", [3, 9])
def test_bad_crc_is_corrupt_message(conn, version):
    before = _with_prefix(conn, "raw-crc")
    bad = bytearray(build_batch(simple_records(3, b"crc")))
    bad[17] ^= 0x01  # crc field
    r = produce(conn, version, "raw-crc", 0, bytes(bad), acks=1)
    assert r["error_code"] == CORRUPT_MESSAGE, r
    assert r["base_offset"] == -1
    bad = bytearray(build_batch(simple_records(3, b"crc")))
    bad[-1] ^= 0x40  # last byte of the last record: covered by the CRC
    r = produce(conn, version, "raw-crc", 0, bytes(bad), acks=1)
    assert r["error_code"] == CORRUPT_MESSAGE, r
    _assert_nothing_appended(conn, "raw-crc", before, 2)


def test_wrong_magic_is_rejected(conn):
    """Magic 1 inside a v2-shaped batch. src/log/batch.h: magic 0/1 (legacy
    message sets) -> INVALID_RECORD (87), as Kafka answers; observed: 87."""
    before = _with_prefix(conn, "raw-magic")
    bad = bytearray(build_batch(simple_records(3, b"m")))
    bad[16] = 1
    r = produce(conn, 9, "raw-magic", 0, bytes(bad), acks=1)
    assert r["error_code"] != 0, r
    assert r["error_code"] == INVALID_RECORD, r
    bad[16] = 7  # not a magic Kafka ever had
    r = produce(conn, 9, "raw-magic", 0, bytes(bad), acks=1)
    assert r["error_code"] == CORRUPT_MESSAGE, r
    _assert_nothing_appended(conn, "raw-magic", before, 2)


def test_batch_length_overrun_is_corrupt_message(conn):
    before = _with_prefix(conn, "raw-overrun")
    good = build_batch(simple_records(3, b"o"))
    bad = bytearray(good)
    struct.pack_into(">i", bad, 8, len(good) - 12 + 10)  # 10 bytes past the records field
    r = produce(conn, 9, "raw-overrun", 0, bytes(bad), acks=1)
    assert r["error_code"] == CORRUPT_MESSAGE, r
    # A valid batch followed by a cut-off second one.
    r = produce(conn, 9, "raw-overrun", 0, good + good[:40], acks=1)
    assert r["error_code"] == CORRUPT_MESSAGE, r
    _assert_nothing_appended(conn, "raw-overrun", before, 2)


def test_unknown_topic_or_partition(conn):
    create_topic(conn, "raw-known", 1)
    batch = build_batch(simple_records(1, b"u"))
    r = produce(conn, 9, "raw-never-created", 0, batch, acks=1)
    assert r["error_code"] == UNKNOWN_TOPIC_OR_PARTITION, r
    r = produce(conn, 3, "raw-known", 5, batch, acks=1)
    assert r["error_code"] == UNKNOWN_TOPIC_OR_PARTITION, r
    # Produce must not auto-create topics.
    md = kw.decode_metadata(conn.request(kw.METADATA, 4, kw.metadata_body(4, ["raw-never-created"])), 4)
    assert md["topics"]["raw-never-created"][0] == UNKNOWN_TOPIC_OR_PARTITION


@pytest.mark.parametrize("version", [0, 1, 2])
def test_produce_v0_to_v2_unsupported_version(conn, version):
    create_topic(conn, "raw-old", 1)
    batch = build_batch(simple_records(2, b"old"))
    body = produce_body(version, {"raw-old": {0: batch}}, acks=1)
    res = decode_produce(conn.request(PRODUCE, version, body), version)
    assert res == {("raw-old", 0): {
        "error_code": kw.UNSUPPORTED_VERSION, "base_offset": -1,
        "log_append_time": -1 if version >= 2 else None,
        "log_start_offset": None, "error_message": None}}, res
    # The connection stays usable, and nothing was appended.
    assert latest_offset(conn, "raw-old", 0) == 0
    r = produce(conn, 3, "raw-old", 0, batch, acks=1)
    assert r["error_code"] == 0 and r["base_offset"] == 0


def test_transactional_produce_is_rejected(conn):
    before = _with_prefix(conn, "raw-txn")
    batch = build_batch(simple_records(2, b"t"))
    r = produce(conn, 9, "raw-txn", 0, batch, acks=-1, transactional_id="my-txn")
    assert r["error_code"] != 0, r
    # The broker answers TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53).
    assert r["error_code"] == TRANSACTIONAL_ID_AUTHORIZATION_FAILED, r
    # A batch flagged transactional, sent without a transactional id.
    tbatch = build_batch(simple_records(2, b"t"), attributes=0x10, producer_id=7,
                         producer_epoch=0, base_sequence=0)
    r = produce(conn, 9, "raw-txn", 0, tbatch, acks=-1)
    assert r["error_code"] != 0, r
    _assert_nothing_appended(conn, "raw-txn", before, 2)


def test_invalid_required_acks(conn):
    create_topic(conn, "raw-acks2", 1)
    r = produce(conn, 9, "raw-acks2", 0, build_batch(simple_records(1, b"a")), acks=2)
    assert r["error_code"] == INVALID_REQUIRED_ACKS, r
    assert latest_offset(conn, "raw-acks2", 0) == 0


def test_null_or_empty_records_rejected(conn):
    before = _with_prefix(conn, "raw-null")
    for records in (None, b""):
        r = produce(conn, 9, "raw-null", 0, records, acks=1)
        assert r["error_code"] != 0, (records, r)
    _assert_nothing_appended(conn, "raw-null", before, 2)


def test_message_too_large_raw(conn):
    create_topic(conn, "raw-big", 1)
    big = build_batch([(1_700_000_000_000, b"k", b"x" * (1048588 + 100), [])])
    r = produce(conn, 9, "raw-big", 0, big, acks=1)
    assert r["error_code"] == MESSAGE_TOO_LARGE, r
    assert latest_offset(conn, "raw-big", 0) == 0


# ---------------------------------------------------------------------------
# Fetch rules
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 12])
def test_fetch_above_high_watermark(conn, version):
    create_topic(conn, "raw-oor", 1)
    r = produce(conn, 9, "raw-oor", 0, build_batch(simple_records(3, b"r")), acks=1)
    assert r["error_code"] == 0
    p = fetch_one(conn, version, "raw-oor", 0, 4)
    assert p["error_code"] == OFFSET_OUT_OF_RANGE, p
    assert not p["records"]
    p = fetch_one(conn, version, "raw-oor", 0, 1 << 40)
    assert p["error_code"] == OFFSET_OUT_OF_RANGE, p
    p = fetch_one(conn, version, "raw-oor", 0, -5)
    assert p["error_code"] == OFFSET_OUT_OF_RANGE, p
    p = fetch_one(conn, version, "raw-oor", 0, 3)
    assert p["error_code"] == 0 and p["high_watermark"] == 3 and not p["records"], p


def test_fetch_long_poll_times_out_after_max_wait(conn):
    create_topic(conn, "raw-wait", 1)
    for version in (4, 12):
        t0 = time.monotonic()
        p = fetch_one(conn, version, "raw-wait", 0, 0, max_wait_ms=300, min_bytes=1)
        elapsed = time.monotonic() - t0
        assert p["error_code"] == 0 and not p["records"] and p["high_watermark"] == 0, p
        assert 0.25 <= elapsed <= 2.0, "Fetch v%d MaxWaitMs=300 took %.3f s" % (version, elapsed)


def test_fetch_long_poll_wakes_on_produce(broker, conn):
    create_topic(conn, "raw-wake", 1)
    batch = build_batch(simple_records(2, b"w"))
    with kw.Conn(broker.host, broker.port, timeout=10.0, client_id="waiter-wake") as waiter:
        corr = waiter.send(FETCH, 12, fetch_body(12, [("raw-wake", 0, 0, 1 << 20)],
                                                 max_wait_ms=5000, min_bytes=1))
        wait_request_logged(broker, "waiter-wake", FETCH)
        t0 = time.monotonic()
        r = produce(conn, 9, "raw-wake", 0, batch, acks=1)
        assert r["error_code"] == 0
        got, rd = waiter.recv(FETCH, 12, timeout=10)
        elapsed = time.monotonic() - t0
        assert got == corr
        p = decode_fetch(rd, 12)["parts"][("raw-wake", 0)]
        assert p["records"] == patched(batch, 0, kw.leader_epoch(conn, "raw-wake"))
        assert elapsed < 1.0, "parked fetch answered %.3f s after the produce" % elapsed


def test_fetch_min_bytes_waits_for_max_wait_then_returns_data(conn):
    """Less than MinBytes available: the fetch waits MaxWaitMs, then returns
    what there is."""
    create_topic(conn, "raw-minb", 1)
    batch = build_batch(simple_records(2, b"mb"))
    assert produce(conn, 9, "raw-minb", 0, batch, acks=1)["error_code"] == 0
    t0 = time.monotonic()
    p = fetch_one(conn, 12, "raw-minb", 0, 0, max_wait_ms=400, min_bytes=1 << 20)
    elapsed = time.monotonic() - t0
    assert p["error_code"] == 0 and p["records"] == patched(batch, 0, kw.leader_epoch(conn, "raw-minb")), p
    assert 0.35 <= elapsed <= 2.0, "MinBytes not reached: answered after %.3f s, want ~0.4 s" % elapsed


def test_fetch_idle_partition_does_not_delay_ready_one(broker, conn):
    """A parked fetch over two empty partitions is answered as soon as one of
    them gets data, with that data."""
    create_topic(conn, "raw-two-wait", 2)
    batch = build_batch(simple_records(3, b"tw"))
    with kw.Conn(broker.host, broker.port, timeout=10.0, client_id="waiter-two") as waiter:
        corr = waiter.send(FETCH, 12, fetch_body(
            12, [("raw-two-wait", 0, 0, 1 << 20), ("raw-two-wait", 1, 0, 1 << 20)],
            max_wait_ms=5000, min_bytes=1))
        wait_request_logged(broker, "waiter-two", FETCH)
        t0 = time.monotonic()
        assert produce(conn, 9, "raw-two-wait", 1, batch, acks=1)["error_code"] == 0
        got, rd = waiter.recv(FETCH, 12, timeout=10)
        elapsed = time.monotonic() - t0
        assert got == corr
        res = decode_fetch(rd, 12)
        assert res["parts"][("raw-two-wait", 1)]["records"] == patched(batch, 0, kw.leader_epoch(conn, "raw-two-wait", 1))
        assert not res["parts"][("raw-two-wait", 0)]["records"]
        assert elapsed < 1.0, "parked fetch answered %.3f s after the produce" % elapsed


@pytest.mark.parametrize("version", [7, 12, 13])
def test_fetch_session_id_not_found(conn, version):
    tid = create_topic(conn, "raw-session", 1)
    key = tid if version >= 13 else "raw-session"
    res = fetch(conn, version, [(key, 0, 0, 1 << 20)], session_id=12345, session_epoch=1)
    assert res["error_code"] == FETCH_SESSION_ID_NOT_FOUND, res
    # Still usable afterwards.
    res = fetch(conn, version, [(key, 0, 0, 1 << 20)])
    assert res["error_code"] == 0


@pytest.mark.parametrize("broker_extra_env", [{"KAFSCALE_FLUSH_INTERVAL_MS": "300"}],
                         ids=["flush-300ms"])
def test_fetch_max_bytes_returns_whole_first_batch(conn):
    """Two batches in one segment (both produced within one flush interval,
    pipelined on one connection), then fetches whose limits are below the
    first batch: exactly that first batch comes back, never a cut batch,
    never the second one, and the next partition of the request gets nothing."""
    create_topic(conn, "raw-maxb", 2)
    big1 = build_batch([(1_700_000_000_000 + i, b"k%d" % i, b"A" * 2000, [])
                        for i in range(5)])            # about 10 KB
    big2 = build_batch([(1_700_000_001_000, b"k", b"B" * 3000, [])])
    small = build_batch(simple_records(2, b"p1"))
    corrs = [conn.send(PRODUCE, 9, produce_body(9, {"raw-maxb": {0: b}}, acks=-1))
             for b in (big1, big2)]
    bases = []
    for corr in corrs:
        got, r = conn.recv(PRODUCE, 9)
        assert got == corr
        res = decode_produce(r, 9)[("raw-maxb", 0)]
        assert res["error_code"] == 0, res
        bases.append(res["base_offset"])
    assert bases == [0, 5]
    assert produce(conn, 9, "raw-maxb", 1, small, acks=1)["base_offset"] == 0

    # With room for both, one response carries both batches (one segment).
    ep0, ep1 = kw.leader_epoch(conn, "raw-maxb", 0), kw.leader_epoch(conn, "raw-maxb", 1)
    res = fetch(conn, 12, [("raw-maxb", 0, 0, 1 << 20)], max_bytes=1 << 20)
    assert res["parts"][("raw-maxb", 0)]["records"] == patched(big1, 0, ep0) + patched(big2, 5, ep0), \
        "setup: the two batches did not land in one segment"

    for version in (4, 11, 12):
        # Request MaxBytes far below the first batch.
        res = fetch(conn, version, [("raw-maxb", 0, 0, 1 << 20), ("raw-maxb", 1, 0, 1 << 20)],
                    max_bytes=100)
        p0, p1 = res["parts"][("raw-maxb", 0)], res["parts"][("raw-maxb", 1)]
        assert p0["error_code"] == 0 and p0["records"] == patched(big1, 0, ep0), \
            "v%d: got %d bytes, want exactly the first batch (%d bytes)" % (
                version, len(p0["records"] or b""), len(big1))
        assert p1["error_code"] == 0 and not p1["records"], \
            "v%d: second partition got %d bytes" % (version, len(p1["records"] or b""))
        assert p1["high_watermark"] == 2 and p0["high_watermark"] == 6

        # Request MaxBytes between the first batch and both: the first only.
        res = fetch(conn, version, [("raw-maxb", 0, 0, 1 << 20)], max_bytes=len(big1) + 100)
        assert res["parts"][("raw-maxb", 0)]["records"] == patched(big1, 0, ep0)

        # Partition max bytes below the first batch: that whole batch, not
        # the next; the other partition is still served.
        res = fetch(conn, version, [("raw-maxb", 0, 0, 50), ("raw-maxb", 1, 0, 1 << 20)])
        p0, p1 = res["parts"][("raw-maxb", 0)], res["parts"][("raw-maxb", 1)]
        assert p0["records"] == patched(big1, 0, ep0)
        assert p1["records"] == patched(small, 0, ep1)


def test_fetch_unknown_topic_and_topic_id(conn):
    create_topic(conn, "raw-known2", 1)
    p = fetch_one(conn, 12, "raw-nope", 0, 0)
    assert p["error_code"] == UNKNOWN_TOPIC_OR_PARTITION, p
    res = fetch(conn, 13, [(b"\x01" * 16, 0, 0, 1 << 20)])
    assert res["parts"][(b"\x01" * 16, 0)]["error_code"] == UNKNOWN_TOPIC_ID, res


# ---------------------------------------------------------------------------
# ListOffsets
# ---------------------------------------------------------------------------

def test_list_offsets_v0_v1_v7(conn):
    create_topic(conn, "raw-lo", 1)
    b1 = build_batch([(1000, b"a", b"1", []), (1010, b"b", b"2", []), (1020, b"c", b"3", [])])
    b2 = build_batch([(5000, b"d", b"4", []), (3000, b"e", b"5", [])])
    assert produce(conn, 9, "raw-lo", 0, b1, acks=1)["base_offset"] == 0
    assert produce(conn, 9, "raw-lo", 0, b2, acks=1)["base_offset"] == 3

    # v0: OldStyleOffsets.
    latest, earliest = list_offsets(conn, 0, "raw-lo", [(0, -1)]) + list_offsets(conn, 0, "raw-lo", [(0, -2)])
    assert latest["error_code"] == 0 and latest["old_style"] == [5], latest
    assert earliest["error_code"] == 0 and earliest["old_style"] == [0], earliest

    # v1: offset + timestamp.
    res = list_offsets(conn, 1, "raw-lo", [(0, -1)])[0]
    assert (res["error_code"], res["offset"], res["timestamp"]) == (0, 5, -1), res
    res = list_offsets(conn, 1, "raw-lo", [(0, -2)])[0]
    assert (res["error_code"], res["offset"]) == (0, 0), res
    for ts, want_off, want_ts in ((0, 0, 1000), (1000, 0, 1000), (1005, 1, 1010),
                                  (1020, 2, 1020), (1021, 3, 5000), (4000, 3, 5000),
                                  (5000, 3, 5000), (5001, -1, -1)):
        res = list_offsets(conn, 1, "raw-lo", [(0, ts)])[0]
        assert res["error_code"] == 0, (ts, res)
        assert (res["offset"], res["timestamp"]) == (want_off, want_ts), (ts, res)

    # v7 (flexible): latest, earliest, a timestamp, an unknown partition.
    res = list_offsets(conn, 7, "raw-lo", [(0, -1)])[0]
    assert (res["error_code"], res["offset"]) == (0, 5), res
    res = list_offsets(conn, 7, "raw-lo", [(0, -2)])[0]
    assert (res["error_code"], res["offset"]) == (0, 0), res
    res = list_offsets(conn, 7, "raw-lo", [(0, 1005)])[0]
    assert (res["error_code"], res["offset"], res["timestamp"]) == (0, 1, 1010), res
    res = list_offsets(conn, 7, "raw-lo", [(3, -1)])[0]
    assert res["error_code"] == UNKNOWN_TOPIC_OR_PARTITION, res

    # v7: max timestamp (-3): the offset and timestamp of the record with
    # the largest timestamp (KIP-734) -- offset 3 (ts 5000), not the last
    # offset of its batch (4, ts 3000).
    res = list_offsets(conn, 7, "raw-lo", [(0, -3)])[0]
    assert res["error_code"] == 0, res
    assert res["leader_epoch"] == kw.leader_epoch(conn, "raw-lo"), res  # the epoch that wrote it
    assert (res["offset"], res["timestamp"]) == (3, 5000), res


def test_list_offsets_empty_partition(conn):
    create_topic(conn, "raw-lo-empty", 1)
    for version in (0, 1, 7):
        for ts in (-1, -2):
            res = list_offsets(conn, version, "raw-lo-empty", [(0, ts)])[0]
            assert res["error_code"] == 0, (version, ts, res)
            if version == 0:
                assert res["old_style"] == [0], res
            else:
                assert res["offset"] == 0, (version, ts, res)
    res = list_offsets(conn, 7, "raw-lo-empty", [(0, -3)])[0]
    assert res["error_code"] == 0 and res["offset"] == -1, res
