"""Hostile clients on the Kafka port (issue 11, "Hostile clients").

Each test attacks a fresh broker with one kind of misbehaving client and then
proves that the broker is still alive, still answers well-behaved clients
promptly, and keeps its memory (VmRSS of the broker process) bounded:

  * requests at every API key 0..80 with seeded random versions and bodies;
  * huge array / string / bytes / record lengths inside small, otherwise
    well-formed frames;
  * slow-loris clients (one byte every 100 ms) next to a fast client, and the
    idle timeout (KAFSCALE_CONNECTION_IDLE_MS);
  * 10,000 idle connections, and the KAFSCALE_MAX_CONNECTIONS limit;
  * a client that pipelines thousands of requests and never reads the
    responses, next to a producer/consumer;
  * a client that closes its socket while 64+ of its requests are parked
    (the broker has stopped reading it);
  * a broker whose file-descriptor limit runs out before
    KAFSCALE_MAX_CONNECTIONS does.

What is already covered by test_bad_input.py (garbage, 2 GiB / negative
length prefixes, unknown API keys, truncated requests) is not repeated here.

Everything is bounded by deadlines; where a test waits for a period on
purpose (idle timeout, CPU measured over a window) the period is the quantity
under test. Randomness uses fixed seeds.
"""

import os
import random
import re
import resource
import select
import selectors
import socket
import struct
import threading
import time
import urllib.request
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kafka_wire as kw
import test_produce_raw as raw

SEED = 20261124
HUGE = 0x7FFFFFFF
CLK_TCK = os.sysconf("SC_CLK_TCK")

# First flexible version of every API the broker serves (Kafka's JSON
# schemas, "flexibleVersions"); decides request header v1 or v2.
FLEX_FROM = {
    0: 9, 1: 12, 2: 6, 3: 9, 8: 8, 9: 6, 10: 3, 11: 6, 12: 4, 13: 4, 14: 4,
    15: 5, 16: 3, 18: 3, 19: 5, 20: 4, 22: 2, 23: 4, 32: 4, 33: 2, 37: 2,
    42: 2, 44: 1, 60: 0,
}


# ---------------------------------------------------------------------------
# File descriptors of the test process (and of the brokers it starts)
# ---------------------------------------------------------------------------

_SOFT_NOFILE, HARD_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)
if HARD_NOFILE == resource.RLIM_INFINITY:
    HARD_NOFILE = 1 << 20
# 10,000 idle connections need 10,000 descriptors here and as many in the
# broker, which inherits our limit; keep 1,000 spare for everything else.
IDLE_CONNECTIONS = max(100, min(10_000, HARD_NOFILE - 1_000))


@pytest.fixture(scope="module", autouse=True)
def raised_nofile():
    """Raise RLIMIT_NOFILE to the hard limit before any broker of this module
    starts (brokers inherit it), and restore it afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def wait_until(cond, what, timeout, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            pytest.fail("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def proc_status_kb(pid, field):
    """VmRSS / VmHWM / ... of a process in kB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class RssWatch:
    """Samples the broker's VmRSS every 10 ms from start() to stop(); growth()
    is the largest RSS seen (or the high-water mark VmHWM, if it rose meanwhile)
    minus the RSS at start, in MB."""

    def __init__(self, pid):
        self.pid = pid
        self.base_kb = self.peak_kb = proc_status_kb(pid, "VmRSS")
        self.hwm0_kb = proc_status_kb(pid, "VmHWM")
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.01):
            try:
                self.peak_kb = max(self.peak_kb, proc_status_kb(self.pid, "VmRSS"))
            except (OSError, AssertionError):
                return

    def start(self):
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join()
        hwm = proc_status_kb(self.pid, "VmHWM")
        if hwm > self.hwm0_kb:
            self.peak_kb = max(self.peak_kb, hwm)
        return self.growth_mb()

    def growth_mb(self):
        return (self.peak_kb - self.base_kb) / 1024.0


def scrape(broker):
    url = "http://127.0.0.1:%d/metrics" % broker.metrics_port
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def metric(broker, name):
    """Sum of all samples of `name` (any labels) in /metrics."""
    pat = re.compile(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), re.M)
    vals = pat.findall(scrape(broker))
    assert vals, "metric %s not in /metrics" % name
    return sum(float(v) for v in vals)


def open_connections(broker):
    return int(metric(broker, "kafscale_connections_open"))


def wait_open_connections(broker, want, timeout=10.0):
    last = [None]

    def ok():
        last[0] = open_connections(broker)
        return last[0] == want
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() >= deadline:
            pytest.fail("kafscale_connections_open is %s, expected %d (waited %.0f s)"
                        % (last[0], want, timeout))
        time.sleep(0.05)


def rst_close(sock):
    """Close with an RST (SO_LINGER 0): no TIME_WAIT left on this host, so the
    many connections of these tests do not exhaust ephemeral ports."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def header(key, version, corr, client_id="hostile", header_version=None):
    if header_version is None:
        first = FLEX_FROM.get(key)
        header_version = 2 if first is not None and version >= first else 1
    return kw.request_header(key, version, corr, client_id, header_version)


def req_frame(key, version, corr, body, client_id="hostile", header_version=None):
    return kw.frame(header(key, version, corr, client_id, header_version) + body)


def api_versions(conn):
    r = conn.request(kw.API_VERSIONS, 3, kw.api_versions_body(3))
    error, keys, _ = kw.decode_api_versions(r, 3)
    assert error == kw.NONE and keys.get(kw.METADATA) == kw.KAFSCALE_API_RANGES[kw.METADATA], (error, keys)
    return keys


def api_versions_latencies(conn, n):
    out = []
    for _ in range(n):
        t = time.monotonic()
        api_versions(conn)
        out.append(time.monotonic() - t)
    return out


def closed_or_answer(sock, corr, timeout=5.0):
    """None if the broker closed the connection, else the response payload
    after the correlation id. Fails if neither happens within `timeout`."""
    try:
        payload = kw.recv_frame(sock, timeout)
    except kw.ConnectionClosed:
        return None
    except socket.timeout:
        pytest.fail("broker neither answered correlation id %d nor closed within %.0f s"
                    % (corr, timeout))
    got = struct.unpack(">i", payload[:4])[0]
    assert got == corr, "correlation id %d, expected %d" % (got, corr)
    return payload[4:]


def send_ignoring_close(sock, data):
    try:
        kw.send_all(sock, data)
    except kw.ConnectionClosed:
        pass


def assert_serving(broker, good=None):
    """The broker runs, an old connection (if any) and a new one are served."""
    assert broker.is_running(), "broker died (status %s)" % broker.proc.poll()
    if good is not None:
        api_versions(good)
    with kw.Conn(broker.host, broker.port) as c:
        api_versions(c)
        md = kw.decode_metadata(c.request(kw.METADATA, 12, kw.metadata_body(12)), 12)
        assert [(h, p) for _, h, p, _ in md["brokers"]] == [(broker.host, broker.port)]


def kafka_roundtrip(broker, topic, n=50, deadline_s=20.0):
    """confluent-kafka: create `topic`, produce n records (acks=all), consume
    them from offset 0. Returns (max delivery latency s, elapsed s)."""
    t0 = time.monotonic()
    adm = AdminClient({"bootstrap.servers": broker.bootstrap})
    adm.create_topics([NewTopic(topic, 1, 1)], request_timeout=deadline_s)[topic].result(
        timeout=deadline_s)
    prod = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0,
                     "message.timeout.ms": int(deadline_s * 1000)})
    lat, errors = [], []

    def on_delivery(sent):
        def cb(err, _msg):
            if err is not None:
                errors.append(err)
            else:
                lat.append(time.monotonic() - sent)
        return cb
    for i in range(n):
        prod.produce(topic, key=b"k%d" % i, value=b"v%d" % i, partition=0,
                     on_delivery=on_delivery(time.monotonic()))
        prod.poll(0)
    left = prod.flush(deadline_s)
    assert left == 0 and not errors and len(lat) == n, (left, errors, len(lat))
    cons = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "hostile-%s" % uuid.uuid4().hex,
                     "enable.auto.commit": False, "enable.partition.eof": False,
                     "auto.offset.reset": "error"})
    try:
        cons.assign([TopicPartition(topic, 0, 0)])
        got = []
        end = time.monotonic() + deadline_s
        while len(got) < n and time.monotonic() < end:
            m = cons.poll(0.2)
            if m is None:
                continue
            assert m.error() is None, m.error()
            got.append(m.value())
    finally:
        cons.close()
    assert got == [b"v%d" % i for i in range(n)], "consumed %d of %d records" % (len(got), n)
    return max(lat), time.monotonic() - t0


def log_count(broker, needle):
    return broker.log_text().count(needle)


def log_size(broker):
    try:
        return broker.log_path.stat().st_size
    except FileNotFoundError:
        return 0


def log_count_since(broker, offset, needle):
    """Occurrences of `needle` in the broker log after byte `offset` (read in
    chunks: the log may be large)."""
    n, tail = 0, b""
    needle = needle.encode()
    with open(broker.log_path, "rb") as f:
        f.seek(offset)
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                return n
            buf = tail + chunk
            n += buf.count(needle)
            tail = buf[-(len(needle) - 1):] if len(needle) > 1 else b""
            n -= tail.count(needle)


def wait_log_stable(broker, needle, timeout=5.0, quiet=0.3):
    """Waits until the number of log lines containing `needle` is > 0 and has
    not changed for `quiet` seconds; returns it."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        n = log_count(broker, needle)
        now = time.monotonic()
        if n != last:
            last, since = n, now
        elif n > 0 and now - since >= quiet:
            return n
        if now >= deadline:
            return n
        time.sleep(0.05)


def uv(n):
    return kw.Writer().uvarint(n).bytes()


def cstr(s):
    return kw.Writer().compact_string(s).bytes()


def sstr(s):
    return kw.Writer().string(s).bytes()


def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def i64(v):
    return struct.pack(">q", v)


def record_batch(records_blob, count, ts=1_700_000_000_000):
    """A v2 record batch around `records_blob` claiming `count` records, with a
    correct batchLength and CRC-32C (so that only the claim is wrong)."""
    after_crc = struct.pack(">hiqqqhii", 0, count - 1, ts, ts, -1, -1, -1, count) + records_blob
    after_len = struct.pack(">ibI", -1, 2, raw.crc32c(after_crc)) + after_crc
    return struct.pack(">qi", 0, len(after_len)) + after_len


# ---------------------------------------------------------------------------
# 1. Every API key, random versions, random bodies
# ---------------------------------------------------------------------------

def fuzz_cases(ranges, rng):
    """(key, version, header_version, body, expect) for keys 0..80, where
    expect is 'close' (key/version not served: Kafka closes), 'kip511'
    (ApiVersions at an unsupported version: answered with v0 and
    UNSUPPORTED_VERSION) or 'any' (served version: an answer or a close)."""
    cases = []
    for key in range(81):
        lo, hi = ranges.get(key, (-1, -1))
        served = lo >= 0
        if served:
            versions = [-1, lo, rng.randint(lo, hi), hi, hi + 1, 32767]
        else:
            versions = [-1, 0, 1, rng.randint(2, 40), 32767]
        for v in versions:
            in_range = served and lo <= v <= hi
            for _ in range(3 if in_range else 1):
                first = FLEX_FROM.get(key)
                hv = rng.choice((1, 2)) if first is None else (2 if v >= first else 1)
                body = rng.randbytes(rng.randint(0, 64))
                if in_range:
                    expect = "any"
                elif key == kw.API_VERSIONS:
                    expect = "kip511"
                else:
                    expect = "close"
                cases.append((key, v, hv, body, expect))
    return cases


def await_outcomes(socks, timeout):
    """socks: iterable of sockets with a request sent. Reads until every socket has a full response
    frame or was closed by the broker, or `timeout` passes. Returns
    {sock: ('answered', payload) | ('closed', why) | ('pending', bytes)}."""
    sel = selectors.DefaultSelector()
    bufs = {}
    out = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = bytearray()
    deadline = time.monotonic() + timeout
    while sel.get_map() and time.monotonic() < deadline:
        for keyobj, _ in sel.select(timeout=min(0.2, max(0.0, deadline - time.monotonic()))):
            s = keyobj.fileobj
            try:
                data = s.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError as e:  # reset by the broker
                out[s] = ("closed", repr(e))
                sel.unregister(s)
                continue
            if not data:
                out[s] = ("closed", "EOF")
                sel.unregister(s)
                continue
            b = bufs[s]
            b += data
            if len(b) >= 4:
                size = struct.unpack(">i", b[:4])[0]
                if size < 4 or size > (64 << 20):
                    out[s] = ("answered", bytes(b))  # judged (and failed) by the caller
                    sel.unregister(s)
                elif len(b) >= 4 + size:
                    out[s] = ("answered", bytes(b[4:4 + size]))
                    sel.unregister(s)
    for keyobj in list(sel.get_map().values()):
        out[keyobj.fileobj] = ("pending", bytes(bufs[keyobj.fileobj]))
    sel.close()
    return out


def test_every_api_key_random_versions_and_bodies(broker):
    """Requests at API keys 0..80 with versions -1, the lowest, a random one,
    the highest, highest+1 and 32767 (unserved keys: -1, 0, 1, random, 32767)
    and seeded random bodies of 0..64 bytes (three bodies per served version),
    each on its own connection, all at once. Every one is answered or its
    connection closed within the deadline; keys and versions the broker does
    not serve are closed (README: "as Apache Kafka does"), except ApiVersions,
    which answers v0 UNSUPPORTED_VERSION (KIP-511). Afterwards an older
    connection and a new one are served and a confluent-kafka produce/consume
    round trip works."""
    good = kw.Conn(broker.host, broker.port)
    socks = {}
    try:
        _, advertised, _ = kw.decode_api_versions(
            good.request(kw.API_VERSIONS, 3, kw.api_versions_body(3)), 3)
        cases = fuzz_cases(advertised, random.Random(SEED))
        for i, (key, v, hv, body, expect) in enumerate(cases):
            corr = 10_000 + i
            s = kw.connect(broker.host, broker.port)
            socks[s] = (corr, key, v, hv, body, expect)
            send_ignoring_close(s, req_frame(key, v, corr, body, "fuzz-%d" % i, hv))
        outcomes = await_outcomes(socks, timeout=15.0)
        failures = []
        counts = {"answered": 0, "closed": 0, "pending": 0}
        for s, (kind, data) in outcomes.items():
            corr, key, v, hv, body, expect = socks[s]
            counts[kind] += 1
            what = ("api_key=%d version=%d header_v%d corr=%d body=%s -> %s"
                    % (key, v, hv, corr, body.hex(), kind))
            if kind == "pending":
                failures.append(what + " (neither answered nor closed in 15 s; %d bytes)" % len(data))
                continue
            if kind == "answered":
                if len(data) < 4 or struct.unpack(">i", data[:4])[0] != corr:
                    failures.append(what + " (bad response frame %s)" % data[:16].hex())
                    continue
                if expect == "close":
                    failures.append(what + " (not served: must be closed, got %d bytes: %s)"
                                    % (len(data), data[:24].hex()))
                elif expect == "kip511":
                    try:
                        err, keys, _ = kw.decode_api_versions(kw.Reader(data[4:]), 0)
                        ok = err == kw.UNSUPPORTED_VERSION and kw.API_VERSIONS in keys
                    except kw.ProtocolError as e:
                        ok, err = False, repr(e)
                    if not ok:
                        failures.append(what + " (KIP-511 answer expected, got error %r)" % (err,))
            elif expect == "kip511":
                failures.append(what + " (ApiVersions must always be answered)")
        print("fuzz outcomes: %r of %d requests" % (counts, len(cases)))
        assert not failures, "%d of %d requests misbehaved:\n  %s" % (
            len(failures), len(cases), "\n  ".join(failures[:40]))
        assert_serving(broker, good)
    finally:
        for s in socks:
            rst_close(s)
        good.close()
    print("after fuzz: produce/consume max delivery %.3f s, round trip %.2f s"
          % kafka_roundtrip(broker, "after-fuzz"))
    assert broker.is_running()


# ---------------------------------------------------------------------------
# 2. Huge lengths inside small, otherwise valid frames
# ---------------------------------------------------------------------------

def huge_length_cases(topic):
    """name -> (api key, version, body, header bytes or None)."""
    one_record = raw.encode_record(0, 0, b"k", b"v")
    big_varint = kw.Writer().varint(HUGE).bytes()
    rec_huge_headers = kw.Writer().int8(0).varint(0).varint(0).varint(-1).varint(1).raw(b"x") \
        .varint(HUGE).bytes()
    rec_huge_headers = kw.Writer().varint(len(rec_huge_headers)).raw(rec_huge_headers).bytes()

    def produce_v9(records):
        return (uv(0) + i16(-1) + i32(5000) + uv(2) + cstr(topic) + uv(2) + i32(0)
                + uv(len(records) + 1) + records + b"\0\0\0")

    cases = {
        # Metadata
        "metadata-v12-topics-count": (3, 12, uv(HUGE + 1) + b"\x01\0\0", None),
        "metadata-v1-topics-count": (3, 1, i32(HUGE), None),
        "metadata-v4-topic-name-32767": (3, 4, i32(1) + i16(32767) + b"abc" + b"\x01", None),
        "metadata-v12-topic-name-32767": (3, 12, uv(2) + bytes(16) + uv(32768) + b"abc", None),
        "metadata-v12-tagged-fields": (3, 12, uv(0) + b"\0\0" + uv(0xFFFFFFFF) + uv(0) + uv(HUGE), None),
        "metadata-v12-overlong-uvarint": (3, 12, b"\xff" * 10 + b"\x01" + b"\0\0\0", None),
        # CreateTopics
        "createtopics-v7-name-32767": (19, 7, uv(2) + uv(32768) + b"abc", None),
        "createtopics-v4-name-32767": (19, 4, i32(1) + i16(32767) + b"abc", None),
        "createtopics-v7-configs-count": (19, 7, uv(2) + cstr("huge-configs") + i32(1) + i16(1) + uv(1)
                                          + uv(HUGE + 1) + b"\0\0\0", None),
        "createtopics-v4-broker-ids-count": (19, 4, i32(1) + sstr("huge-assign") + i32(-1) + i16(-1)
                                             + i32(1) + i32(0) + i32(HUGE) + b"\0" * 6, None),
        # Produce: request fields, then record-batch internals
        "produce-v9-records-length": (0, 9, uv(0) + i16(-1) + i32(5000) + uv(2) + cstr(topic) + uv(2)
                                      + i32(0) + uv(HUGE + 1) + b"\0" * 4, None),
        "produce-v3-records-length": (0, 3, i16(-1) + i16(-1) + i32(5000) + i32(1) + sstr(topic) + i32(1)
                                      + i32(0) + i32(HUGE) + b"\0" * 4, None),
        "produce-v9-batch-length": (0, 9, produce_v9(i64(0) + i32(HUGE) + i32(-1) + b"\x02" + bytes(44)),
                                    None),
        "produce-v9-records-count": (0, 9, produce_v9(record_batch(one_record, HUGE)), None),
        "produce-v9-record-length": (0, 9, produce_v9(record_batch(big_varint + bytes(8), 1)), None),
        "produce-v9-header-count": (0, 9, produce_v9(record_batch(rec_huge_headers, 1)), None),
        # Groups
        "joingroup-v5-metadata-length": (11, 5, sstr("hostile-group") + i32(10000) + i32(10000) + sstr("")
                                         + i16(-1) + sstr("consumer") + i32(1) + sstr("range") + i32(HUGE)
                                         + b"abc", None),
        "joingroup-v9-protocols-count": (11, 9, cstr("hostile-group") + i32(10000) + i32(10000) + cstr("")
                                         + uv(0) + cstr("consumer") + uv(HUGE + 1) + b"\0\0\0", None),
        "syncgroup-v5-assignments-count": (14, 5, cstr("hostile-group") + i32(1) + cstr("m") + uv(0)
                                           + uv(0) + uv(0) + uv(HUGE + 1) + b"\0\0", None),
        "offsetcommit-v8-partitions-count": (8, 8, cstr("hostile-group") + i32(-1) + cstr("") + uv(0)
                                             + uv(2) + cstr(topic) + uv(HUGE + 1) + b"\0\0\0", None),
        "offsetfetch-v8-groups-count": (9, 8, uv(HUGE + 1) + b"\0\0", None),
        "describegroups-v5-groups-count": (15, 5, uv(HUGE + 1) + b"\0\0", None),
        "listgroups-v4-states-count": (16, 4, uv(HUGE + 1) + b"\0", None),
        "deletegroups-v2-groups-count": (42, 2, uv(HUGE + 1) + b"\0", None),
        # Fetch, ListOffsets, OffsetForLeaderEpoch
        "fetch-v4-partitions-count": (1, 4, i32(-1) + i32(0) + i32(1) + i32(1 << 20) + i8(0) + i32(1)
                                      + sstr(topic) + i32(HUGE) + bytes(8), None),
        "fetch-v12-topics-count": (1, 12, i32(-1) + i32(0) + i32(1) + i32(1 << 20) + i8(0) + i32(0)
                                   + i32(-1) + uv(HUGE + 1) + b"\0\0\0", None),
        "listoffsets-v6-partitions-count": (2, 6, i32(-1) + i8(0) + uv(2) + cstr(topic) + uv(HUGE + 1)
                                            + b"\0\0", None),
        "offsetforleaderepoch-v4-partitions-count": (23, 4, i32(-2) + uv(2) + cstr(topic) + uv(HUGE + 1)
                                                     + b"\0\0", None),
        # Topic and config admin
        "deletetopics-v6-topics-count": (20, 6, uv(HUGE + 1) + i32(1000) + b"\0", None),
        "describeconfigs-v4-resources-count": (32, 4, uv(HUGE + 1) + b"\0\0\0", None),
        "incrementalalterconfigs-v1-configs-count": (44, 1, uv(2) + i8(2) + cstr(topic) + uv(HUGE + 1)
                                                     + b"\0\0", None),
        "createpartitions-v3-broker-ids-count": (37, 3, uv(2) + cstr(topic) + i32(2) + uv(2) + uv(HUGE + 1)
                                                 + b"\0\0\0", None),
        # ApiVersions body and request header
        "apiversions-v3-software-name": (18, 3, uv(HUGE + 1) + b"abc", None),
        "header-client-id-32767": (18, 0, b"", i16(18) + i16(0) + i32(0) + i16(32767) + b"abc"),
        "header-v2-tagged-fields": (18, 3, b"", i16(18) + i16(3) + i32(0) + sstr("x") + uv(0xFFFFFFFF)
                                    + uv(0) + uv(HUGE)),
    }
    return cases


def test_huge_lengths_in_small_frames(broker):
    """Array counts of 0x7fffffff, string lengths of 32767, bytes/records
    lengths of 0x7fffffff, huge tagged-field counts/sizes, overlong varints,
    and record batches whose batchLength, recordsCount, record length or
    header count is huge — each in a frame of a few dozen bytes that is
    otherwise well formed. Every one is closed or answered with an error, no
    topic appears, and the broker's RSS grows by less than 50 MB over five
    rounds of all cases."""
    topic = "hostile"
    with kw.Conn(broker.host, broker.port, timeout=10.0) as good:
        raw.create_topic(good, topic)
        cases = huge_length_cases(topic)
        api_versions(good)
        watch = RssWatch(broker.proc.pid).start()
        outcomes = {}
        try:
            for rnd in range(5):
                for name, (key, ver, body, hdr) in cases.items():
                    corr = 100 + rnd
                    if hdr is None:
                        payload = header(key, ver, corr) + body
                    else:
                        payload = hdr[:4] + i32(corr) + hdr[8:] + body
                    s = kw.connect(broker.host, broker.port)
                    try:
                        send_ignoring_close(s, kw.frame(payload))
                        rest = closed_or_answer(s, corr)
                    finally:
                        rst_close(s)
                    outcomes[name] = "closed" if rest is None else "answered %d bytes" % len(rest)
                    if rest is not None and key == kw.PRODUCE:
                        flex = ver >= 9
                        r = kw.Reader(rest[1:] if flex else rest)  # response header v1: tagged fields
                        for (t, p), res in raw.decode_produce(r, ver).items():
                            assert res["error_code"] != kw.NONE, \
                                "%s: partition %s-%d accepted: %r" % (name, t, p, res)
        finally:
            growth = watch.stop()
        print("huge-length outcomes: %r" % outcomes)
        print("broker RSS growth: %.1f MB" % growth)
        assert growth < 50, "broker RSS grew by %.1f MB (limit 50 MB)" % growth
        md = kw.decode_metadata(good.request(kw.METADATA, 1, kw.metadata_body(1)), 1)
        assert set(md["topics"]) == {topic}, md["topics"]
        assert_serving(broker, good)


# ---------------------------------------------------------------------------
# 3. Slow loris and the idle timeout
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("broker_extra_env", [{"KAFSCALE_IO_THREADS": "1"}], ids=["one-io-thread"])
def test_slow_loris_does_not_block_others(broker):
    """Five clients each send a 20-byte ApiVersions request one byte every
    100 ms (1.9 s per request) on the broker's only I/O thread; meanwhile a
    fast client completes 200 ApiVersions round trips in under 1.5 s, all of
    them while the slow requests are still incomplete. Each slow client gets
    its answer within 1 s of its last byte."""
    n_slow, gap = 5, 0.1
    started = threading.Barrier(n_slow + 1, timeout=10)
    results = [None] * n_slow

    def loris(i):
        corr = 900 + i
        data = req_frame(kw.API_VERSIONS, 3, corr, kw.api_versions_body(3, "s", "1"), client_id="")
        assert len(data) == 20
        try:
            with kw.Conn(broker.host, broker.port) as c:
                t0 = time.monotonic()
                for j in range(len(data)):
                    delay = t0 + j * gap - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)  # the pacing is the attack
                    c.sock.sendall(data[j:j + 1])
                    if j == 1:
                        started.wait()
                last = time.monotonic()
                got, r = c.recv(kw.API_VERSIONS, 3, timeout=5.0)
                answered = time.monotonic()
                err = kw.decode_api_versions(r, 3)[0]
                results[i] = (got == corr and err == kw.NONE, last, answered - last)
        except Exception as e:  # reported below
            results[i] = (False, None, repr(e))
            started.abort()

    threads = [threading.Thread(target=loris, args=(i,), daemon=True) for i in range(n_slow)]
    for t in threads:
        t.start()
    with kw.Conn(broker.host, broker.port) as fast:
        started.wait()
        t0 = time.monotonic()
        lat = api_versions_latencies(fast, 200)
        fast_end = time.monotonic()
    for t in threads:
        t.join(10)
    elapsed = fast_end - t0
    print("fast client: 200 round trips in %.3f s, slowest %.1f ms" % (elapsed, max(lat) * 1000))
    assert elapsed < 1.5, "200 ApiVersions round trips took %.2f s next to slow clients" % elapsed
    for i, res in enumerate(results):
        assert res is not None and res[0], "slow client %d: %r" % (i, res)
        assert res[2] < 1.0, "slow client %d answered %.2f s after its last byte" % (i, res[2])
        assert fast_end < res[1], "the fast client did not overlap the slow ones"
    assert_serving(broker)


@pytest.mark.parametrize("broker_extra_env", [{"KAFSCALE_CONNECTION_IDLE_MS": "1000"}], ids=["idle-1s"])
def test_idle_timeout(broker):
    """KAFSCALE_CONNECTION_IDLE_MS=1000: a connection that sends nothing, and
    one that stops halfway through a frame, are closed by the broker (EOF)
    1-2 s after their last byte; a connection with a request every 250 ms is
    never closed; a connection whose Fetch is parked for 2.5 s is not closed
    while it waits, gets its answer, and is closed 1-2 s after that."""
    topic = "idle-fetch"
    with kw.Conn(broker.host, broker.port, timeout=10.0) as c:
        raw.create_topic(c, topic)
    res = {}

    def time_to_eof(sock, since, limit=4.0):
        if kw.wait_closed(sock, limit):
            return time.monotonic() - since
        return None

    def silent():
        s = kw.connect(broker.host, broker.port)
        res["silent"] = time_to_eof(s, time.monotonic())
        s.close()

    def half_frame():
        s = kw.connect(broker.host, broker.port)
        data = req_frame(kw.API_VERSIONS, 3, 5, kw.api_versions_body(3))
        s.sendall(data[:len(data) // 2])
        res["half_frame"] = time_to_eof(s, time.monotonic())
        s.close()

    def active():
        try:
            with kw.Conn(broker.host, broker.port) as c:
                t0 = time.monotonic()
                for i in range(11):  # 0 .. 2.5 s
                    delay = t0 + i * 0.25 - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)  # the request rhythm under test
                    api_versions(c)
                res["active"] = "ok"
        except Exception as e:
            res["active"] = repr(e)

    def parked_fetch():
        try:
            with kw.Conn(broker.host, broker.port, timeout=10.0) as c:
                t0 = time.monotonic()
                p = raw.fetch_one(c, 12, topic, 0, 0, max_wait_ms=2500, min_bytes=1)
                answered = time.monotonic()
                res["fetch_wait"] = (answered - t0, p["error_code"])
                res["fetch_eof"] = time_to_eof(c.sock, answered)
        except Exception as e:
            res["fetch_wait"] = repr(e)

    threads = [threading.Thread(target=f, daemon=True) for f in (silent, half_frame, active, parked_fetch)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    print("idle results: %r" % res)
    for k in ("silent", "half_frame"):
        assert res.get(k) is not None, "%s connection not closed within 4 s" % k
        assert 0.9 <= res[k] <= 2.0, "%s connection closed after %.2f s" % (k, res[k])
    assert res.get("active") == "ok", "active connection: %r" % res.get("active")
    fw = res.get("fetch_wait")
    assert isinstance(fw, tuple), "parked fetch: %r" % (fw,)
    assert fw[1] == kw.NONE and 2.3 <= fw[0] <= 4.0, "parked fetch answered after %.2f s, error %d" % fw
    assert res.get("fetch_eof") is not None and 0.9 <= res["fetch_eof"] <= 2.0, \
        "connection after the fetch closed after %r s" % res.get("fetch_eof")
    assert_serving(broker)


# ---------------------------------------------------------------------------
# 4. Many idle connections, KAFSCALE_MAX_CONNECTIONS
# ---------------------------------------------------------------------------

def open_idle(broker, n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5.0)
            s.connect((broker.host, broker.port))
            socks.append(s)
    except BaseException:
        for s in socks:
            rst_close(s)
        raise
    return socks


@pytest.mark.parametrize("broker_extra_env", [{"KAFSCALE_MAX_CONNECTIONS": str(IDLE_CONNECTIONS + 100)}],
                         ids=["max-%d" % (IDLE_CONNECTIONS + 100)])
def test_many_idle_connections(broker):
    """IDLE_CONNECTIONS (10,000 where the hard RLIMIT_NOFILE allows 11,000
    descriptors, else the hard limit minus 1,000) idle connections, with
    KAFSCALE_MAX_CONNECTIONS just above that so they are all accepted: the
    broker counts them all open, its RSS grows by less than 50 MB, a normal
    client still gets 100 ApiVersions answers in under 2 s (none slower than
    250 ms) and a produce/consume round trip works; closing them brings the
    gauge back."""
    wait_open_connections(broker, 0)
    watch = RssWatch(broker.proc.pid).start()
    socks = []
    try:
        socks = open_idle(broker, IDLE_CONNECTIONS)
        wait_open_connections(broker, IDLE_CONNECTIONS, timeout=20.0)
        with kw.Conn(broker.host, broker.port) as c:
            t0 = time.monotonic()
            lat = api_versions_latencies(c, 100)
            elapsed = time.monotonic() - t0
        print("%d idle connections: 100 round trips in %.3f s, slowest %.1f ms"
              % (IDLE_CONNECTIONS, elapsed, max(lat) * 1000))
        assert elapsed < 2.0 and max(lat) < 0.25, (elapsed, max(lat))
        kafka_roundtrip(broker, "next-to-idle")
    finally:
        growth = watch.stop()
        for s in socks:
            rst_close(s)
    print("broker RSS growth with %d idle connections: %.1f MB" % (IDLE_CONNECTIONS, growth))
    assert growth < 50, "broker RSS grew by %.1f MB" % growth
    wait_open_connections(broker, 0, timeout=10.0)
    assert_serving(broker)


@pytest.mark.parametrize("broker_extra_env", [{"KAFSCALE_MAX_CONNECTIONS": "100"}], ids=["max-100"])
def test_max_connections(broker):
    """KAFSCALE_MAX_CONNECTIONS=100: 100 connections are served; the 101st is
    closed by the broker at once with a `event=connection_refused` log line
    and counted in kafscale_connections_refused_total; after 10 are closed,
    10 new ones are served, and the next one is refused again."""
    wait_open_connections(broker, 0)
    conns = []
    try:
        for _ in range(100):
            conns.append(kw.Conn(broker.host, broker.port))
        for c in conns:
            api_versions(c)
        wait_open_connections(broker, 100)

        def refused_once(expected_lines):
            extra = kw.connect(broker.host, broker.port)
            try:
                t0 = time.monotonic()
                send_ignoring_close(extra, req_frame(kw.API_VERSIONS, 3, 1, kw.api_versions_body(3)))
                assert kw.wait_closed(extra, 2.0), "connection beyond the limit was not closed"
                took = time.monotonic() - t0
                assert took < 1.0, "connection beyond the limit closed after %.2f s" % took
            finally:
                extra.close()
            wait_until(lambda: log_count(broker, "event=connection_refused") >= expected_lines,
                       "event=connection_refused in the broker log", 5.0)
        refused_once(1)
        assert metric(broker, "kafscale_connections_refused_total") >= 1
        for c in conns[:10]:
            rst_close(c.sock)
        conns = conns[10:]
        wait_open_connections(broker, 90)
        for _ in range(10):
            c = kw.Conn(broker.host, broker.port)
            conns.append(c)
            api_versions(c)
        wait_open_connections(broker, 100)
        refused_once(2)
        for c in conns[:5] + conns[-5:]:
            api_versions(c)
    finally:
        for c in conns:
            rst_close(c.sock)
    wait_open_connections(broker, 0)
    assert_serving(broker)


# ---------------------------------------------------------------------------
# 5. A client that never reads its responses
# ---------------------------------------------------------------------------

N_TOPICS = 400
TOPIC_NAME_LEN = 100
N_PIPELINED = 10_000


@pytest.mark.embedded_only("runs on KAFSCALE_USE_MEMORY_METADATA (400 topics created fast), which "
                            "excludes KAFSCALE_ETCD_ENDPOINTS")
@pytest.mark.parametrize("broker_extra_env", [{"KAFSCALE_IO_THREADS": "1",
                                               "KAFSCALE_USE_MEMORY_METADATA": "1"}],
                         ids=["one-io-thread"])
def test_client_that_never_reads(broker):
    """400 topics with 100-character names make a Metadata v1 answer (all
    topics) about 50 KB. One client pipelines 10,000 such requests (18 bytes
    each) on a non-blocking socket without ever reading, until its send
    blocks (0.5 s without progress) or everything is sent. With one I/O
    thread shared with everyone, another client's ApiVersions stay under
    500 ms and a confluent-kafka produce/consume round trip works with
    deliveries under 2 s; the broker's RSS grows by less than 100 MB (the
    documented back-pressure: 64 requests in flight or 16 MiB of responses
    waiting); closing the non-reader brings kafscale_connections_open back
    to its baseline."""
    with kw.Conn(broker.host, broker.port, timeout=30.0) as c:
        names = ["%s-%04d" % ("t" * (TOPIC_NAME_LEN - 5), i) for i in range(N_TOPICS)]
        for i in range(0, N_TOPICS, 100):
            batch = [(n, 1, 1, {}) for n in names[i:i + 100]]
            res = kw.decode_create_topics(
                c.request(kw.CREATE_TOPICS, 7, kw.create_topics_body(7, batch)), 7)
            assert all(t["error_code"] == kw.NONE for t in res.values()), res
        one = c.request(kw.METADATA, 1, kw.metadata_body(1))
        resp_bytes = len(one.data)
        assert len(kw.decode_metadata(one, 1)["topics"]) == N_TOPICS
    baseline = open_connections(broker)
    watch = RssWatch(broker.proc.pid).start()
    nr = kw.connect(broker.host, broker.port)
    try:
        data = b"".join(req_frame(kw.METADATA, 1, i + 1, kw.metadata_body(1), client_id="non-reader")
                        for i in range(N_PIPELINED))
        nr.setblocking(False)
        sent, blocked = 0, False
        t_end = time.monotonic() + 5.0
        last_progress = time.monotonic()
        while sent < len(data) and time.monotonic() < t_end:
            try:
                sent += nr.send(data[sent:sent + 65536])
                last_progress = time.monotonic()
            except BlockingIOError:
                if time.monotonic() - last_progress > 0.5:
                    blocked = True
                    break
                select.select([], [nr], [], 0.05)
        read_by_broker = wait_log_stable(broker, 'client_id="non-reader"')
        print("non-reader: sent %d of %d bytes (%d requests), blocked=%s; broker read %d requests "
              "of ~%d response bytes each" % (sent, len(data), sent * N_PIPELINED // len(data), blocked,
                                              read_by_broker,
                                              resp_bytes))
        with kw.Conn(broker.host, broker.port) as other:
            lat = api_versions_latencies(other, 20)
        max_delivery, elapsed = kafka_roundtrip(broker, "next-to-non-reader", n=100)
        print("other client: ApiVersions slowest %.1f ms; produce/consume max delivery %.3f s, "
              "round trip %.2f s" % (max(lat) * 1000, max_delivery, elapsed))
    finally:
        growth = watch.stop()
        nr.close()
    print("broker RSS growth: %.1f MB" % growth)
    wait_open_connections(broker, baseline, timeout=5.0)
    assert_serving(broker)
    print("broker RSS after the non-reader closed: %+.1f MB"
          % ((proc_status_kb(broker.proc.pid, "VmRSS") - watch.base_kb) / 1024.0))
    assert max(lat) < 0.5, "ApiVersions took %.3f s next to the non-reader" % max(lat)
    assert max_delivery < 2.0, "a delivery took %.3f s next to the non-reader" % max_delivery
    assert growth < 100, ("broker RSS grew by %.1f MB: %d pipelined Metadata requests of a "
                          "client that never reads were taken in (responses of ~%d bytes)"
                          % (growth, read_by_broker, resp_bytes))


@pytest.mark.parametrize("broker_extra_env", [{"KAFSCALE_IO_THREADS": "1"}], ids=["one-io-thread"])
def test_close_with_parked_requests_does_not_spin(broker):
    """A client sends 80 Fetch requests that park (MaxWaitMs 3000 on an empty
    partition), so the broker stops reading it (64 in flight), then closes
    its socket. Over the next 1.5 s the broker uses less than 30% of a CPU
    (it must not busy-loop on the closed socket it no longer reads) and a
    fresh client is answered promptly; once the fetches expire the
    connection is gone from kafscale_connections_open."""
    topic = "parked"
    with kw.Conn(broker.host, broker.port, timeout=10.0) as c:
        raw.create_topic(c, topic)
    baseline = open_connections(broker)
    s = kw.connect(broker.host, broker.port)
    body = raw.fetch_body(12, [(topic, 0, 0, 1 << 20)], max_wait_ms=3000, min_bytes=1)
    kw.send_all(s, b"".join(req_frame(kw.FETCH, 12, i + 1, body, client_id="parker") for i in range(80)))
    read = wait_log_stable(broker, 'client_id="parker"', timeout=3.0)
    assert read >= 64, "broker read only %d of the 80 fetches" % read
    s.close()
    t_closed = time.monotonic()
    cpu0 = cpu_seconds(broker.proc.pid)
    with kw.Conn(broker.host, broker.port) as other:
        lat = []
        while time.monotonic() - t_closed < 1.5:
            lat.extend(api_versions_latencies(other, 1))
            time.sleep(0.05)  # sample latency across the window
    window = time.monotonic() - t_closed
    used = cpu_seconds(broker.proc.pid) - cpu0
    print("broker CPU %.2f s over %.2f s after the close; ApiVersions slowest %.1f ms"
          % (used, window, max(lat) * 1000))
    wait_open_connections(broker, baseline, timeout=6.0)
    assert_serving(broker)
    assert max(lat) < 0.5, max(lat)
    assert used / window < 0.3, ("broker used %.0f%% of a CPU for %.2f s after a client with "
                                 "parked requests closed its socket" % (100 * used / window, window))


@pytest.mark.parametrize("broker_extra_env", [{"KAFSCALE_MAX_INFLIGHT_PER_CONNECTION": "4",
                                               "KAFSCALE_FLUSH_INTERVAL_MS": "20"}],
                         ids=["inflight-4"])
def test_pipelined_beyond_the_inflight_cap_are_all_answered(broker):
    """A consumer pipelines 40 long-polling Fetch requests (MaxWaitMs 100,
    nothing to read) in one write, ten times the per-connection cap of 4,
    and then only waits for answers. The broker takes 4, stops, and must take
    the rest from its buffer as answers free room, pass after pass: all 40
    are answered, in order, no sooner than ten rounds of 4 parked fetches
    allow and within 10 s. Then a producer pipelines 40 acks=all Produce
    requests: Produce has its own, larger cap (they wait for their flushes
    side by side), so all 40 are answered in order with contiguous offsets."""
    topic = "pipelined"
    with kw.Conn(broker.host, broker.port, timeout=10.0) as c:
        raw.create_topic(c, topic)
    n = 40

    def answers_in_order(s, what, within=10.0):
        """The Reader of each of the n answers on s, correlation ids 1..n in
        order, all within `within` seconds."""
        t0 = time.monotonic()
        for i in range(n):
            left = within - (time.monotonic() - t0)
            assert left > 0, "only %d of %d pipelined %s requests answered in 10 s" % (i, n, what)
            try:
                r = kw.Reader(kw.recv_frame(s, timeout=left))
            except socket.timeout:
                pytest.fail("only %d of %d pipelined %s requests answered in 10 s" % (i, n, what))
            assert r.int32() == i + 1
            yield r

    s = kw.connect(broker.host, broker.port)
    try:
        body = raw.fetch_body(12, [(topic, 0, 0, 1 << 20)], max_wait_ms=100, min_bytes=1)
        kw.send_all(s, b"".join(req_frame(kw.FETCH, 12, i + 1, body, client_id="pipeliner")
                                for i in range(n)))
        t0 = time.monotonic()
        for _ in answers_in_order(s, "fetch"):
            pass
        took = time.monotonic() - t0
        # 4 at a time, each parked 100 ms: at least ~10 rounds.
        assert took >= 0.9, "40 parked fetches answered in %.2f s: more than 4 were taken at once" % took
        print("%d pipelined fetch requests answered in %.2f s" % (n, took))
    finally:
        s.close()
    s = kw.connect(broker.host, broker.port)
    try:
        frames = []
        for i in range(n):
            body = raw.produce_body(9, {topic: {0: raw.build_batch(raw.simple_records(5, b"p%02d-" % i))}}, acks=-1)
            frames.append(req_frame(kw.PRODUCE, 9, i + 1, body, client_id="pipeliner"))
        kw.send_all(s, b"".join(frames))
        t0 = time.monotonic()
        bases = []
        for r in answers_in_order(s, "produce"):
            r.skip_tagged_fields()
            res = raw.decode_produce(r, 9)
            assert res[(topic, 0)]["error_code"] == 0, res
            bases.append(res[(topic, 0)]["base_offset"])
        print("%d pipelined produce requests answered in %.2f s" % (n, time.monotonic() - t0))
    finally:
        s.close()
    assert bases == [5 * i for i in range(n)], bases
    assert_serving(broker)


# ---------------------------------------------------------------------------
# 6. File descriptors run out before KAFSCALE_MAX_CONNECTIONS
# ---------------------------------------------------------------------------

def test_fd_exhaustion_does_not_spin(broker):
    """The broker's RLIMIT_NOFILE is lowered (prlimit) to 40 above what it
    uses, far below KAFSCALE_MAX_CONNECTIONS (10000), and 150 clients
    connect. Accepting fails with EMFILE; the broker must keep serving the
    connections it has without burning a CPU or flooding its log (over 1 s:
    < 30% CPU, < 100 accept_failed lines), and serve new clients once
    descriptors are free again."""
    pid = broker.proc.pid
    with kw.Conn(broker.host, broker.port) as good:
        api_versions(good)
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        limit = open_fds(pid) + 40
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
        socks = []
        try:
            socks = open_idle(broker, 150)
            wait_until(lambda: open_fds(pid) >= limit - 2, "the broker to reach its fd limit", 5.0)
            off0 = log_size(broker)
            t0 = time.monotonic()
            cpu0 = cpu_seconds(pid)
            lat = []
            while time.monotonic() - t0 < 1.0:
                lat.extend(api_versions_latencies(good, 1))
                time.sleep(0.05)  # sample latency across the window
            window = time.monotonic() - t0
            used = cpu_seconds(pid) - cpu0
            off1 = log_size(broker)
        finally:
            for s in socks:
                rst_close(s)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        api_versions(good)
    lines = log_count_since(broker, off0, "event=accept_failed") - \
        log_count_since(broker, off1, "event=accept_failed")
    print("at the fd limit: broker CPU %.2f s over %.2f s, %d accept_failed lines (%.0f MB of log), "
          "ApiVersions slowest %.1f ms" % (used, window, lines, (off1 - off0) / 1e6, max(lat) * 1000))
    wait_until(lambda: open_fds(pid) < limit - 40, "the broker to release descriptors", 5.0)
    assert_serving(broker)
    assert max(lat) < 0.5, max(lat)
    assert used / window < 0.3, ("broker used %.0f%% of a CPU while out of file descriptors"
                                 % (100 * used / window))
    assert lines < 100, "%d accept_failed log lines in %.1f s" % (lines, window)
