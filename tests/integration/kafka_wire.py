"""A tiny Kafka wire-protocol helper for raw-socket tests.

Only what the integration tests need: primitive encoders/decoders, request
framing (request header v1/v2), and reading size-prefixed response frames
with a deadline. No dependencies beyond the standard library.

Byte layouts follow the Kafka protocol guide (kafka-protocol/docs/protocol.html):
  frame            = int32 size, then `size` bytes
  request header 1 = int16 api_key, int16 api_version, int32 correlation_id,
                     nullable string client_id (int16 length, -1 = null)
  request header 2 = header 1 + tagged fields (uvarint count, here 0)
  response header 0 = int32 correlation_id
  response header 1 = header 0 + tagged fields
ApiVersions responses always use response header 0 (KIP-511).
"""

import socket
import struct
import time

# API keys used by the tests.
PRODUCE = 0
FETCH = 1
METADATA = 3
CREATE_TOPICS = 19
DELETE_TOPICS = 20
API_VERSIONS = 18
DESCRIBE_CLUSTER = 60

# First flexible ("compact", tagged-field) version of each API we encode.
FIRST_FLEXIBLE_VERSION = {
    PRODUCE: 9,
    FETCH: 12,
    2: 6,  # ListOffsets
    32: 4,  # DescribeConfigs
    33: 2,  # AlterConfigs
    37: 2,  # CreatePartitions
    44: 1,  # IncrementalAlterConfigs
    METADATA: 9,
    API_VERSIONS: 3,
    CREATE_TOPICS: 5,
    DELETE_TOPICS: 4,
    DESCRIBE_CLUSTER: 0,
}

# Version ranges the broker under test must advertise in ApiVersions
# (checked exactly by the tests): api key -> (min, max).
KAFSCALE_API_RANGES = {
    0: (0, 11),   # Produce (v0-v2 advertised, answered UNSUPPORTED_VERSION)
    1: (4, 17),   # Fetch
    2: (0, 10),   # ListOffsets
    8: (0, 9),    # OffsetCommit
    9: (0, 9),    # OffsetFetch
    10: (0, 6),   # FindCoordinator
    11: (0, 9),   # JoinGroup
    12: (0, 4),   # Heartbeat
    13: (0, 5),   # LeaveGroup
    14: (0, 5),   # SyncGroup
    23: (0, 4),   # OffsetForLeaderEpoch
    32: (0, 4),   # DescribeConfigs
    33: (0, 2),   # AlterConfigs
    37: (0, 3),   # CreatePartitions
    44: (0, 1),   # IncrementalAlterConfigs
    API_VERSIONS: (0, 4),
    METADATA: (0, 12),
    CREATE_TOPICS: (0, 7),
    DELETE_TOPICS: (0, 6),
    DESCRIBE_CLUSTER: (0, 1),
}

# Error codes (kafka-protocol/error-codes.tsv).
NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
LEADER_NOT_AVAILABLE = 5
INVALID_TOPIC_EXCEPTION = 17
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38
INVALID_CONFIG = 40
INVALID_REQUEST = 42


class ProtocolError(Exception):
    """A response could not be decoded."""


class ConnectionClosed(Exception):
    """The peer closed (or reset) the connection."""


def is_flexible(api_key, api_version):
    first = FIRST_FLEXIBLE_VERSION.get(api_key)
    return first is not None and api_version >= first


def request_header_version(api_key, api_version):
    return 2 if is_flexible(api_key, api_version) else 1


def response_header_version(api_key, api_version):
    if api_key == API_VERSIONS:
        return 0
    return 1 if is_flexible(api_key, api_version) else 0


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------

class Writer:
    """Append-only encoder. Every method returns self so calls chain."""

    def __init__(self):
        self.buf = bytearray()

    def bytes(self):
        return bytes(self.buf)

    def raw(self, b):
        self.buf += b
        return self

    def int8(self, v):
        self.buf += struct.pack(">b", v)
        return self

    def bool(self, v):
        return self.int8(1 if v else 0)

    def int16(self, v):
        self.buf += struct.pack(">h", v)
        return self

    def int32(self, v):
        self.buf += struct.pack(">i", v)
        return self

    def int64(self, v):
        self.buf += struct.pack(">q", v)
        return self

    def uvarint(self, v):
        if v < 0:
            raise ValueError("uvarint must be >= 0")
        while True:
            b = v & 0x7F
            v >>= 7
            if v:
                self.buf.append(b | 0x80)
            else:
                self.buf.append(b)
                return self

    def varint(self, v):  # zig-zag
        return self.uvarint((v << 1) ^ (v >> 63))

    def string(self, s):
        """int16 length + UTF-8 bytes; None encodes as null (-1)."""
        if s is None:
            return self.int16(-1)
        b = s.encode() if isinstance(s, str) else s
        return self.int16(len(b)).raw(b)

    def compact_string(self, s):
        """uvarint (length + 1) + bytes; None encodes as null (0)."""
        if s is None:
            return self.uvarint(0)
        b = s.encode() if isinstance(s, str) else s
        return self.uvarint(len(b) + 1).raw(b)

    def array_len(self, n):
        """int32 count; None encodes a null array (-1)."""
        return self.int32(-1 if n is None else n)

    def compact_array_len(self, n):
        """uvarint (count + 1); None encodes a null array (0)."""
        return self.uvarint(0 if n is None else n + 1)

    def tagged_fields(self):
        """An empty tagged-field section."""
        return self.uvarint(0)


def request_header(api_key, api_version, correlation_id, client_id="kafka-wire-test",
                   header_version=None):
    if header_version is None:
        header_version = request_header_version(api_key, api_version)
    w = Writer().int16(api_key).int16(api_version).int32(correlation_id)
    if header_version >= 1:
        w.string(client_id)
    if header_version >= 2:
        w.tagged_fields()
    return w.bytes()


def frame(payload):
    return struct.pack(">i", len(payload)) + payload


def request_frame(api_key, api_version, correlation_id, body=b"",
                  client_id="kafka-wire-test", header_version=None):
    return frame(request_header(api_key, api_version, correlation_id, client_id,
                                header_version) + body)


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------

class Reader:
    def __init__(self, data):
        self.data = bytes(data)
        self.pos = 0

    def remaining(self):
        return len(self.data) - self.pos

    def take(self, n):
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("need %d bytes at offset %d, have %d"
                                % (n, self.pos, self.remaining()))
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def _unpack(self, fmt, n):
        return struct.unpack(fmt, self.take(n))[0]

    def int8(self):
        return self._unpack(">b", 1)

    def bool(self):
        return self.int8() != 0

    def int16(self):
        return self._unpack(">h", 2)

    def int32(self):
        return self._unpack(">i", 4)

    def int64(self):
        return self._unpack(">q", 8)

    def uvarint(self):
        v = shift = 0
        while True:
            b = self.take(1)[0]
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
            shift += 7
            if shift > 63:
                raise ProtocolError("uvarint too long")

    def varint(self):
        u = self.uvarint()
        return (u >> 1) ^ -(u & 1)

    def string(self):
        n = self.int16()
        return None if n < 0 else self.take(n).decode()

    def compact_string(self):
        n = self.uvarint()
        return None if n == 0 else self.take(n - 1).decode()

    def uuid(self):
        return self.take(16)

    def array_len(self):
        """Returns the count, or None for a null array."""
        n = self.int32()
        return None if n < 0 else n

    def compact_array_len(self):
        n = self.uvarint()
        return None if n == 0 else n - 1

    def skip_tagged_fields(self):
        for _ in range(self.uvarint()):
            self.uvarint()              # tag
            self.take(self.uvarint())   # size + data

    def expect_end(self):
        if self.remaining():
            raise ProtocolError("%d unexpected trailing bytes" % self.remaining())


# --------------------------------------------------------------------------
# Sockets
# --------------------------------------------------------------------------

def connect(host, port, timeout=5.0):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _recv_exact(sock, n, deadline):
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out after %d of %d bytes" % (len(buf), n))
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except (ConnectionResetError, BrokenPipeError) as e:
            raise ConnectionClosed(str(e))
        if not chunk:
            raise ConnectionClosed("EOF after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def recv_frame(sock, timeout=5.0, max_size=64 << 20):
    """Read one size-prefixed frame; returns its payload (without the size)."""
    deadline = time.monotonic() + timeout
    (size,) = struct.unpack(">i", _recv_exact(sock, 4, deadline))
    if size < 0 or size > max_size:
        raise ProtocolError("bad response frame size %d" % size)
    return _recv_exact(sock, size, deadline)


def wait_closed(sock, timeout=5.0):
    """True if the peer closes/resets the connection within `timeout`
    (any bytes it sends first are discarded); False if it stays open."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            return True


def send_all(sock, data):
    """sendall that reports a closed peer as ConnectionClosed."""
    try:
        sock.sendall(data)
    except (ConnectionResetError, BrokenPipeError) as e:
        raise ConnectionClosed(str(e))


class Conn:
    """One Kafka connection with auto-incrementing correlation ids."""

    def __init__(self, host, port, timeout=5.0, client_id="kafka-wire-test"):
        self.sock = connect(host, port, timeout)
        self.timeout = timeout
        self.client_id = client_id
        self.next_corr = 1

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, api_key, api_version, body=b"", correlation_id=None):
        if correlation_id is None:
            correlation_id = self.next_corr
            self.next_corr += 1
        send_all(self.sock, request_frame(api_key, api_version, correlation_id, body,
                                          self.client_id))
        return correlation_id

    def recv(self, api_key, api_version, timeout=None):
        """Read one response; returns (correlation_id, Reader positioned at the body)."""
        r = Reader(recv_frame(self.sock, self.timeout if timeout is None else timeout))
        corr = r.int32()
        if response_header_version(api_key, api_version) >= 1:
            r.skip_tagged_fields()
        return corr, r

    def request(self, api_key, api_version, body=b""):
        corr = self.send(api_key, api_version, body)
        got, r = self.recv(api_key, api_version)
        if got != corr:
            raise ProtocolError("correlation id %d, expected %d" % (got, corr))
        return r


# --------------------------------------------------------------------------
# A few request bodies and response decoders
# --------------------------------------------------------------------------

def api_versions_body(version, software_name="kafka-wire-test", software_version="0.1"):
    if version < 3:
        return b""
    return (Writer().compact_string(software_name).compact_string(software_version)
            .tagged_fields().bytes())


def decode_api_versions(r, version):
    """Returns (error_code, {api_key: (min, max)}, throttle_ms or None)."""
    error = r.int16()
    flexible = version >= 3
    n = r.compact_array_len() if flexible else r.array_len()
    keys = {}
    for _ in range(n or 0):
        k, lo, hi = r.int16(), r.int16(), r.int16()
        if flexible:
            r.skip_tagged_fields()
        keys[k] = (lo, hi)
    throttle = r.int32() if version >= 1 else None
    if flexible:
        r.skip_tagged_fields()
    r.expect_end()
    return error, keys, throttle


def metadata_body(version, topics=None, allow_auto_create=False):
    """Metadata request for `topics` (None = all topics; v0 sends an empty list)."""
    w = Writer()
    flexible = version >= 9
    if topics is None and version == 0:
        topics = []
    if flexible:
        w.compact_array_len(None if topics is None else len(topics))
    else:
        w.array_len(None if topics is None else len(topics))
    for t in topics or []:
        if version >= 10:
            w.raw(b"\0" * 16)  # topic id: zero = look up by name
        w.compact_string(t) if flexible else w.string(t)
        if flexible:
            w.tagged_fields()
    if version >= 4:
        w.bool(allow_auto_create)
    if 8 <= version <= 10:
        w.bool(False)  # include cluster authorized operations
    if version >= 8:
        w.bool(False)  # include topic authorized operations
    if flexible:
        w.tagged_fields()
    return w.bytes()


def decode_metadata(r, version):
    """Returns {'brokers': [(node_id, host, port, rack)], 'cluster_id',
    'controller_id', 'topics': {name: (error_code, [partition indexes])},
    'leaders': {name: {partition: (error_code, leader_id, leader_epoch)}}}
    (leader_epoch -1 before v7)."""
    flexible = version >= 9
    s = r.compact_string if flexible else r.string
    alen = r.compact_array_len if flexible else r.array_len
    out = {"brokers": [], "cluster_id": None, "controller_id": None, "topics": {}, "leaders": {}}
    if version >= 3:
        r.int32()  # throttle
    for _ in range(alen() or 0):
        node, host, port = r.int32(), s(), r.int32()
        rack = s() if version >= 1 else None
        if flexible:
            r.skip_tagged_fields()
        out["brokers"].append((node, host, port, rack))
    if version >= 2:
        out["cluster_id"] = s()
    if version >= 1:
        out["controller_id"] = r.int32()
    for _ in range(alen() or 0):
        err, name = r.int16(), s()
        if version >= 10:
            r.uuid()
        if version >= 1:
            r.bool()  # is internal
        parts = []
        leaders = {}
        for _ in range(alen() or 0):
            perr = r.int16()
            parts.append(r.int32())
            leader = r.int32()
            epoch = r.int32() if version >= 7 else -1
            leaders[parts[-1]] = (perr, leader, epoch)
            for _ in range(3 if version >= 5 else 2):  # replicas, isr, offline
                for _ in range(alen() or 0):
                    r.int32()
            if flexible:
                r.skip_tagged_fields()
        if version >= 8:
            r.int32()  # topic authorized operations
        if flexible:
            r.skip_tagged_fields()
        out["topics"][name] = (err, parts)
        out["leaders"][name] = leaders
    if 8 <= version <= 10:
        r.int32()  # cluster authorized operations
    if flexible:
        r.skip_tagged_fields()
    r.expect_end()
    return out


def create_topics_body(version, topics, timeout_ms=10000, validate_only=False):
    """topics: list of (name, num_partitions, replication_factor, {config: value})."""
    flexible = version >= 5
    w = Writer()
    s = w.compact_string if flexible else w.string
    alen = w.compact_array_len if flexible else w.array_len
    alen(len(topics))
    for name, parts, rf, configs in topics:
        s(name)
        w.int32(parts).int16(rf)
        alen(0)  # no manual assignments
        alen(len(configs))
        for k, v in configs.items():
            s(k)
            s(v)
            if flexible:
                w.tagged_fields()
        if flexible:
            w.tagged_fields()
    w.int32(timeout_ms)
    if version >= 1:
        w.bool(validate_only)
    if flexible:
        w.tagged_fields()
    return w.bytes()


def describe_cluster_body(version=0):
    w = Writer().bool(False)
    if version >= 1:
        w.int8(1)  # endpoint type: brokers
    return w.tagged_fields().bytes()


def decode_describe_cluster(r, version=0):
    out = {"throttle_ms": r.int32(), "error_code": r.int16(),
           "error_message": r.compact_string()}
    if version >= 1:
        out["endpoint_type"] = r.int8()
    out["cluster_id"] = r.compact_string()
    out["controller_id"] = r.int32()
    out["brokers"] = []
    for _ in range(r.compact_array_len() or 0):
        b = (r.int32(), r.compact_string(), r.int32(), r.compact_string())
        r.skip_tagged_fields()
        out["brokers"].append(b)
    out["cluster_authorized_operations"] = r.int32()
    r.skip_tagged_fields()
    r.expect_end()
    return out


def decode_create_topics(r, version):
    """Returns {name: {'error_code', 'error_message', 'topic_id', 'num_partitions',
    'replication_factor', 'configs'}} (fields absent in `version` are None)."""
    flexible = version >= 5
    s = r.compact_string if flexible else r.string
    alen = r.compact_array_len if flexible else r.array_len
    if version >= 2:
        r.int32()  # throttle
    out = {}
    for _ in range(alen() or 0):
        t = {"topic_id": None, "error_message": None, "num_partitions": None,
             "replication_factor": None, "configs": None}
        name = s()
        if version >= 7:
            t["topic_id"] = r.uuid()
        t["error_code"] = r.int16()
        if version >= 1:
            t["error_message"] = s()
        if version >= 5:
            t["num_partitions"] = r.int32()
            t["replication_factor"] = r.int16()
            n = alen()
            if n is not None:
                t["configs"] = {}
                for _ in range(n):
                    k, v = s(), s()
                    r.bool(), r.int8(), r.bool()  # read-only, source, sensitive
                    r.skip_tagged_fields()
                    t["configs"][k] = v
            r.skip_tagged_fields()
        out[name] = t
    if flexible:
        r.skip_tagged_fields()
    r.expect_end()
    return out


def delete_topics_body(version, names, timeout_ms=10000):
    flexible = version >= 4
    w = Writer()
    if flexible:
        w.compact_array_len(len(names))
    else:
        w.array_len(len(names))
    for n in names:
        if version >= 6:
            w.compact_string(n).raw(bytes(16)).tagged_fields()  # by name, zero id
        elif flexible:
            w.compact_string(n)
        else:
            w.string(n)
    w.int32(timeout_ms)
    if flexible:
        w.tagged_fields()
    return w.bytes()


def decode_delete_topics(r, version):
    """Returns {name: (error_code, topic_id or None)}."""
    flexible = version >= 4
    s = r.compact_string if flexible else r.string
    if version >= 1:
        r.int32()  # throttle
    out = {}
    for _ in range((r.compact_array_len() if flexible else r.array_len()) or 0):
        name = s()
        tid = r.uuid() if version >= 6 else None
        err = r.int16()
        if version >= 5:
            s()  # error message
        if flexible:
            r.skip_tagged_fields()
        out[name] = (err, tid)
    if flexible:
        r.skip_tagged_fields()
    r.expect_end()
    return out


def leader_epoch(conn, topic, partition=0):
    """The partition's leader epoch as Metadata (v9) reports it: what the
    broker stamps into the batches it stores (0 in embedded mode; the epoch
    of the current owner in cluster mode)."""
    md = decode_metadata(conn.request(METADATA, 9, metadata_body(9, [topic])), 9)
    err, _leader, epoch = md["leaders"][topic][partition]
    assert err == 0, (topic, partition, err)
    return epoch
