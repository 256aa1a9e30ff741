"""Malformed and hostile input on the Kafka port, over raw sockets.

After every bad-input case the broker must still be running, a well-behaved
connection opened *before* the bad one must still get correct answers, and a
new connection must work too. Where Kafka itself closes the connection we
accept a close; where it answers, we check the answer.
"""

import random
import socket
import struct

import pytest

import kafka_wire as kw

CLOSE_TIMEOUT_S = 5.0

EXPECTED_API_RANGES = kw.KAFSCALE_API_RANGES


def api_versions(conn, version=3):
    r = conn.request(kw.API_VERSIONS, version, kw.api_versions_body(version))
    error, keys, _ = kw.decode_api_versions(r, version)
    assert error == kw.NONE, "ApiVersions v%d error %d" % (version, error)
    return keys


def check_api_versions(conn, version=3):
    keys = api_versions(conn, version)
    for key, rng in EXPECTED_API_RANGES.items():
        assert keys.get(key) == rng, "api key %d: got %r, want %r" % (key, keys.get(key), rng)


@pytest.fixture
def good(broker):
    """A well-behaved connection, opened and used before the bad input."""
    conn = kw.Conn(broker.host, broker.port)
    check_api_versions(conn)
    yield conn
    conn.close()


def assert_healthy(broker, good):
    assert broker.is_running(), "broker died (status %s)" % broker.proc.poll()
    check_api_versions(good)
    with kw.Conn(broker.host, broker.port) as fresh:
        check_api_versions(fresh)
    assert broker.is_running()


def raw_conn(broker):
    return kw.connect(broker.host, broker.port)


def send_ignoring_close(sock, data):
    """Send; a broker that already closed the connection is fine here."""
    try:
        kw.send_all(sock, data)
    except kw.ConnectionClosed:
        pass


def closed_or_response(sock, corr):
    """Wait for the broker to either close the connection or answer `corr`.
    Returns None when closed, else the response payload after the
    correlation id."""
    try:
        payload = kw.recv_frame(sock, CLOSE_TIMEOUT_S)
    except kw.ConnectionClosed:
        return None
    except socket.timeout:
        pytest.fail("broker neither answered nor closed the connection within %.0f s"
                    % CLOSE_TIMEOUT_S)
    got = struct.unpack(">i", payload[:4])[0]
    assert got == corr, "response correlation id %d, expected %d" % (got, corr)
    return payload[4:]


def leading_error_codes(rest):
    """Possible top-level error codes of a response whose body schema we cannot
    know (unknown API or version): the first int16 after a v0 header, or after
    a v1 header with an empty tagged-field section."""
    codes = set()
    if len(rest) >= 2:
        codes.add(struct.unpack(">h", rest[:2])[0])
    if len(rest) >= 3 and rest[0] == 0:
        codes.add(struct.unpack(">h", rest[1:3])[0])
    return codes


# ---------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("garbage", [
    pytest.param(random.Random(1234).randbytes(4096), id="random-4k"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", id="http-get"),
    pytest.param(b"\x00\x00\x00\x00", id="zero-length-frame"),
    pytest.param(b"\x00\x00\x00\x02\x00\x12", id="frame-shorter-than-header"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), id="tls-hello"),
])
def test_garbage_then_close(broker, good, garbage):
    s = raw_conn(broker)
    send_ignoring_close(s, garbage)
    s.close()
    assert_healthy(broker, good)


@pytest.mark.parametrize("garbage", [
    pytest.param(b"\x00\x00\x00\x00", id="zero-length-frame"),
    pytest.param(b"\x00\x00\x00\x02\x00\x12", id="frame-shorter-than-header"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", id="http-get"),
])
def test_garbage_is_answered_by_close(broker, good, garbage):
    s = raw_conn(broker)
    send_ignoring_close(s, garbage)
    assert kw.wait_closed(s, CLOSE_TIMEOUT_S), "broker kept the connection open"
    s.close()
    assert_healthy(broker, good)


@pytest.mark.parametrize("size", [0x7FFFFFFF, 0x40000000], ids=["2GiB", "1GiB"])
def test_huge_length_prefix_closes_connection(broker, good, size):
    s = raw_conn(broker)
    # A plausible header follows, but the broker must not wait for (or
    # allocate) the announced size.
    send_ignoring_close(s, struct.pack(">i", size) + kw.request_header(kw.API_VERSIONS, 0, 1))
    assert kw.wait_closed(s, CLOSE_TIMEOUT_S), "broker kept the connection open"
    s.close()
    assert_healthy(broker, good)


@pytest.mark.parametrize("size", [-1, -2, -0x80000000])
def test_negative_length_prefix_closes_connection(broker, good, size):
    s = raw_conn(broker)
    send_ignoring_close(s, struct.pack(">i", size) + kw.request_header(kw.API_VERSIONS, 0, 1))
    assert kw.wait_closed(s, CLOSE_TIMEOUT_S), "broker kept the connection open"
    s.close()
    assert_healthy(broker, good)


@pytest.mark.parametrize("cut", [2, 5, 9])
def test_truncated_header_then_close(broker, good, cut):
    """The frame announces a full request, but the client sends only part of
    the header and then closes its side."""
    full = kw.request_frame(kw.API_VERSIONS, 0, 7)
    s = raw_conn(broker)
    send_ignoring_close(s, full[:4 + cut])
    s.shutdown(socket.SHUT_WR)
    assert kw.wait_closed(s, CLOSE_TIMEOUT_S), "broker did not close after client EOF"
    s.close()
    assert_healthy(broker, good)


@pytest.mark.parametrize("cut", [3, 5, 7, 10, 12])
def test_frame_shorter_than_request_header(broker, good, cut):
    """A complete frame whose payload ends inside the request header."""
    header = kw.request_header(kw.METADATA, 1, 7)
    s = raw_conn(broker)
    send_ignoring_close(s, kw.frame(header[:cut]))
    assert kw.wait_closed(s, CLOSE_TIMEOUT_S), "broker kept the connection open"
    s.close()
    assert_healthy(broker, good)


def _truncated_metadata_v1():
    body = kw.Writer().array_len(1).int16(20).raw(b"abcde").bytes()  # name says 20, has 5
    return kw.request_frame(kw.METADATA, 1, 11, body)


def _truncated_metadata_v12():
    body = (kw.Writer().compact_array_len(1).raw(bytes(16))
            .uvarint(21).raw(b"abcde").bytes())                      # compact name overruns
    return kw.request_frame(kw.METADATA, 12, 11, body)


def _truncated_create_topics_v4():
    full = kw.create_topics_body(4, [("truncated-topic", 1, 1, {"retention.ms": "1000"})])
    return kw.request_frame(kw.CREATE_TOPICS, 4, 11, full[:len(full) // 2])


@pytest.mark.parametrize("make_frame", [
    _truncated_metadata_v1, _truncated_metadata_v12, _truncated_create_topics_v4,
], ids=["metadata-v1", "metadata-v12", "createtopics-v4"])
def test_truncated_body_in_complete_frame(broker, good, make_frame):
    s = raw_conn(broker)
    send_ignoring_close(s, make_frame())
    assert kw.wait_closed(s, CLOSE_TIMEOUT_S), "broker kept the connection open"
    s.close()
    assert_healthy(broker, good)


# ---------------------------------------------------------------------------
# Bad field values
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("count", [-2, 0x7FFFFFFF], ids=["negative", "huge"])
def test_bad_array_length_create_topics_v4(broker, good, count):
    """CreateTopics v4 whose topics array has an impossible element count:
    the broker closes the connection or answers with an error, without
    allocating `count` elements or crashing."""
    body = kw.Writer().array_len(count).int32(5000).bool(False).bytes()
    s = raw_conn(broker)
    send_ignoring_close(s, kw.request_frame(kw.CREATE_TOPICS, 4, 21, body))
    rest = closed_or_response(s, 21)
    if rest is not None:
        # CreateTopics v4 response: throttle_time_ms, topics[]: no topic can
        # have been created from this request.
        r = kw.Reader(rest)
        r.int32()
        n = r.array_len() or 0
        for _ in range(n):
            name, err = r.string(), r.int16()
            r.string()  # error message
            assert err != kw.NONE, "topic %r reported as created" % name
    s.close()
    assert_healthy(broker, good)
    with kw.Conn(broker.host, broker.port) as c:
        md = kw.decode_metadata(c.request(kw.METADATA, 1, kw.metadata_body(1)), 1)
        assert md["topics"] == {}


@pytest.mark.parametrize("api_key", [999, 32767, -1])
def test_unknown_api_key(broker, good, api_key):
    s = raw_conn(broker)
    send_ignoring_close(s, kw.request_frame(api_key, 0, 31, header_version=1))
    rest = closed_or_response(s, 31)
    if rest is not None:
        assert kw.UNSUPPORTED_VERSION in leading_error_codes(rest), \
            "unknown api key %d answered without UNSUPPORTED_VERSION: %r" % (api_key, rest[:16])
    s.close()
    assert_healthy(broker, good)


def test_metadata_unsupported_version(broker, good):
    s = raw_conn(broker)
    send_ignoring_close(s, kw.request_frame(kw.METADATA, 99, 41, kw.metadata_body(12)))
    rest = closed_or_response(s, 41)
    if rest is not None:
        assert kw.UNSUPPORTED_VERSION in leading_error_codes(rest), \
            "Metadata v99 answered without UNSUPPORTED_VERSION: %r" % rest[:16]
    s.close()
    assert_healthy(broker, good)


# ---------------------------------------------------------------------------
# ApiVersions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_api_versions_each_version(broker, version):
    with kw.Conn(broker.host, broker.port) as c:
        check_api_versions(c, version)
        # The same connection keeps working.
        check_api_versions(c, 3)


def test_api_versions_unsupported_version_kip511(broker, good):
    """ApiVersions v127: the broker answers with error UNSUPPORTED_VERSION,
    encoded as an ApiVersions v0 response (response header v0), listing at
    least its ApiVersions range so the client can retry; the connection stays
    usable."""
    with kw.Conn(broker.host, broker.port) as c:
        corr = c.send(kw.API_VERSIONS, 127, kw.api_versions_body(3))
        r = kw.Reader(kw.recv_frame(c.sock, CLOSE_TIMEOUT_S))
        assert r.int32() == corr
        error, keys, throttle = kw.decode_api_versions(r, 0)  # v0 body layout
        assert error == kw.UNSUPPORTED_VERSION
        assert throttle is None
        assert kw.API_VERSIONS in keys, "KIP-511: the ApiVersions range must be listed"
        assert keys[kw.API_VERSIONS] == EXPECTED_API_RANGES[kw.API_VERSIONS]
        # A client retries on the same connection with a version it now knows.
        check_api_versions(c, 3)
    assert_healthy(broker, good)


def test_api_versions_v3_with_empty_software_name(broker, good):
    """ApiVersions v3+ carries client software name/version; empty strings
    are still a well-formed request (Kafka answers INVALID_REQUEST or
    accepts); either way the connection must get an answer or be closed, and
    the broker lives."""
    with kw.Conn(broker.host, broker.port) as c:
        corr = c.send(kw.API_VERSIONS, 3, kw.api_versions_body(3, "", ""))
        try:
            r = kw.Reader(kw.recv_frame(c.sock, CLOSE_TIMEOUT_S))
        except kw.ConnectionClosed:
            r = None
        if r is not None:
            assert r.int32() == corr
            error, _, _ = kw.decode_api_versions(r, 3)
            assert error in (kw.NONE, kw.INVALID_REQUEST)
    assert_healthy(broker, good)


# ---------------------------------------------------------------------------
# Pipelining and fragmentation
# ---------------------------------------------------------------------------

def test_pipelined_requests_answered_in_order(broker):
    n = 10
    corrs = [1000 + 37 * i for i in range(n)]
    frames, kinds = [], []
    for i, corr in enumerate(corrs):
        if i % 2 == 0:
            frames.append(kw.request_frame(kw.API_VERSIONS, 3, corr, kw.api_versions_body(3)))
            kinds.append((kw.API_VERSIONS, 3))
        else:
            frames.append(kw.request_frame(kw.METADATA, 12, corr, kw.metadata_body(12)))
            kinds.append((kw.METADATA, 12))
    with kw.Conn(broker.host, broker.port) as c:
        kw.send_all(c.sock, b"".join(frames))  # back to back, one write
        for corr, (api, ver) in zip(corrs, kinds):
            got, r = c.recv(api, ver)
            assert got == corr, "responses out of order: got %d, want %d" % (got, corr)
            if api == kw.API_VERSIONS:
                error, keys, _ = kw.decode_api_versions(r, ver)
                assert error == kw.NONE and kw.METADATA in keys
            else:
                md = kw.decode_metadata(r, ver)
                assert [(h, p) for _, h, p, _ in md["brokers"]] == [(broker.host, broker.port)]


def test_request_sent_one_byte_at_a_time(broker):
    with kw.Conn(broker.host, broker.port) as c:
        data = kw.request_frame(kw.API_VERSIONS, 3, 77, kw.api_versions_body(3)) \
            + kw.request_frame(kw.METADATA, 1, 78, kw.metadata_body(1))
        for i in range(len(data)):
            c.sock.sendall(data[i:i + 1])
        got, r = c.recv(kw.API_VERSIONS, 3)
        assert got == 77
        assert kw.decode_api_versions(r, 3)[0] == kw.NONE
        got, r = c.recv(kw.METADATA, 1)
        assert got == 78
        kw.decode_metadata(r, 1)


def test_many_connections_open_and_close(broker, good):
    """Connections that connect and vanish (with and without a request)
    leave the broker serving others."""
    for i in range(50):
        s = raw_conn(broker)
        if i % 2:
            send_ignoring_close(s, kw.request_frame(kw.API_VERSIONS, 0, i))
        s.close()
    assert_healthy(broker, good)
