"""The Ops API seed's group APIs over raw sockets: ListGroups v0-v5,
DescribeGroups v0-v5, DeleteGroups v0-v2 (docs ops-api-v1.md, "Error
Semantics" and "ApiVersions Advertising").

Field layouts follow kafka-protocol/{List,Describe,Delete}Groups{Request,
Response}.json (flexible from ListGroups v3, DescribeGroups v5, DeleteGroups
v2); Apache Kafka's behaviour is the reference where the seed says nothing:

* ListGroups lists every group (GroupId, ProtocolType; GroupState from v4,
  GroupType "classic" from v5). StatesFilter (v4+) and TypesFilter (v5+)
  match case-insensitively; no match is error 0 with an empty list. The
  seed's own request is v5 with states ["Stable"] and types ["classic"].
* DescribeGroups answers per group, in request order. A Stable group shows
  its protocol and, per member, id, instance id (v4+, null when dynamic),
  client id, client host ("/127.0.0.1"), metadata and assignment; in any
  other state the protocol and the member bytes are empty (Kafka's
  GroupMetadata.summary). An unknown group is error 0, state "Dead" (the
  seed's "empty result rather than error"; GROUP_ID_NOT_FOUND only from
  DescribeGroups v6). AuthorizedOperations (v3+) is -2147483648 unless asked
  for; then, with no authorizer, READ|DELETE|DESCRIBE = 328, and only for
  groups answered without error (KafkaApis.handleDescribeGroupsRequest).
* DeleteGroups answers one result per group, in request order: unknown ->
  GROUP_ID_NOT_FOUND (69), members -> NON_EMPTY_GROUP (68), Empty -> 0, after
  which its committed offsets and the group are gone while topic data is
  untouched.
* An empty group id is INVALID_GROUP_ID (24) in DescribeGroups and
  DeleteGroups. (Kafscale's rule; Apache Kafka accepts "" there "for
  backwards compatibility" and rejects only a null id.)
* A request above the advertised version range is answered by closing the
  connection (Kafka's behaviour for every API but ApiVersions, which gets
  UNSUPPORTED_VERSION in a v0 body).

Groups are formed with raw JoinGroup/SyncGroup (byte-exact metadata and
assignments, and the transient states PreparingRebalance/CompletingRebalance
held open deliberately) and with librdkafka consumers (a real client group).
The broker runs with KAFSCALE_GROUP_INITIAL_REBALANCE_DELAY_MS=100 and
KAFSCALE_GROUP_MIN_SESSION_TIMEOUT_MS=1000.
"""

import socket
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

import kafka_wire as kw
import test_produce_raw as raw  # create_topic, produce, fetch_all, list_offsets, batches

OFFSET_COMMIT = 8
OFFSET_FETCH = 9
JOIN_GROUP = 11
HEARTBEAT = 12
LEAVE_GROUP = 13
SYNC_GROUP = 14
DESCRIBE_GROUPS = 15
LIST_GROUPS = 16
INIT_PRODUCER_ID = 22
END_TXN = 26
DELETE_RECORDS = 21
DELETE_GROUPS = 42

# First flexible version of each API encoded here (the JSON schemas).
FIRST_FLEXIBLE = {OFFSET_COMMIT: 8, OFFSET_FETCH: 6, JOIN_GROUP: 6, HEARTBEAT: 4,
                  LEAVE_GROUP: 4, SYNC_GROUP: 4, DESCRIBE_GROUPS: 5, LIST_GROUPS: 3,
                  DELETE_GROUPS: 2}

# Error codes (kafka-protocol/error-codes.tsv).
NONE = 0
INVALID_GROUP_ID = 24
REBALANCE_IN_PROGRESS = 27
UNSUPPORTED_VERSION = 35
NON_EMPTY_GROUP = 68
GROUP_ID_NOT_FOUND = 69
MEMBER_ID_REQUIRED = 79

AUTH_OPS_OMITTED = -2147483648
# Kafka's AclOperation codes READ (3), DELETE (6), DESCRIBE (8): what a group
# allows with no authorizer (AclEntry.supportedOperations(GROUP)).
GROUP_AUTH_OPS = (1 << 3) | (1 << 6) | (1 << 8)
STATES = ["Empty", "PreparingRebalance", "CompletingRebalance", "Stable", "Dead"]
CLIENT_HOST = "/127.0.0.1"

INITIAL_REBALANCE_DELAY_MS = 100
MIN_SESSION_TIMEOUT_MS = 1000
RAW_TIMEOUT_S = 10.0
WAIT_S = 20.0
CLOSE_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def broker_extra_env():
    return {
        "KAFSCALE_GROUP_INITIAL_REBALANCE_DELAY_MS": str(INITIAL_REBALANCE_DELAY_MS),
        "KAFSCALE_GROUP_MIN_SESSION_TIMEOUT_MS": str(MIN_SESSION_TIMEOUT_MS),
    }


def uniq(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def wait_for(cond, what, timeout=WAIT_S, interval=0.05, diag=None):
    """Polls `cond` until it returns a truthy value (returned); fails after
    `timeout` with `what` and, if given, `diag()`."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            pytest.fail("timed out after %.0f s waiting for %s%s"
                        % (timeout, what, ("\n" + str(diag())) if diag else ""), pytrace=False)
        time.sleep(interval)


# ===========================================================================
# Encoding helpers (classic or compact by version)
# ===========================================================================

def flexible(api_key, version):
    if api_key in FIRST_FLEXIBLE:
        return version >= FIRST_FLEXIBLE[api_key]
    return kw.is_flexible(api_key, version)


class W:
    """kw.Writer that picks classic or compact encodings."""

    def __init__(self, flex):
        self.w = kw.Writer()
        self.flex = flex

    def bytes(self):
        return self.w.bytes()

    def __getattr__(self, name):  # int8/int16/int32/int64/bool/raw: chain on self
        f = getattr(self.w, name)

        def call(*a):
            f(*a)
            return self
        return call

    def str(self, s):
        (self.w.compact_string if self.flex else self.w.string)(s)
        return self

    def blob(self, b):
        if self.flex:
            self.w.uvarint(0 if b is None else len(b) + 1)
        else:
            self.w.int32(-1 if b is None else len(b))
        if b:
            self.w.raw(b)
        return self

    def alen(self, n):
        (self.w.compact_array_len if self.flex else self.w.array_len)(n)
        return self

    def strs(self, items):
        self.alen(len(items))
        for s in items:
            self.str(s)
        return self

    def tags(self):
        if self.flex:
            self.w.tagged_fields()
        return self


class R:
    """kw.Reader with classic or compact decodings."""

    def __init__(self, r, flex):
        self.r = r
        self.flex = flex

    def __getattr__(self, name):  # int8/int16/int32/int64/bool/expect_end
        return getattr(self.r, name)

    def str(self):
        return self.r.compact_string() if self.flex else self.r.string()

    def blob(self):
        if self.flex:
            n = self.r.uvarint()
            return None if n == 0 else self.r.take(n - 1)
        n = self.r.int32()
        return None if n < 0 else self.r.take(n)

    def alen(self):
        n = self.r.compact_array_len() if self.flex else self.r.array_len()
        assert n is not None, "null array in a response"
        return n

    def tags(self):
        if self.flex:
            self.r.skip_tagged_fields()


class Conn(kw.Conn):
    """kw.Conn that frames the group APIs with their own header versions
    (kafka_wire knows only the produce/fetch path's flexible versions)."""

    def send_req(self, api_key, version, body, header_version=None):
        corr = self.next_corr
        self.next_corr += 1
        if header_version is None:
            header_version = 2 if flexible(api_key, version) else 1
        kw.send_all(self.sock, kw.request_frame(api_key, version, corr, body, self.client_id,
                                                header_version=header_version))
        return corr

    def recv_resp(self, api_key, version, corr, timeout=None):
        r = kw.Reader(kw.recv_frame(self.sock, self.timeout if timeout is None else timeout))
        got = r.int32()
        if got != corr:
            raise kw.ProtocolError("correlation id %d, expected %d" % (got, corr))
        flex = flexible(api_key, version)
        if flex and api_key != kw.API_VERSIONS:
            r.skip_tagged_fields()
        return R(r, flex)

    def call(self, api_key, version, body, timeout=None):
        return self.recv_resp(api_key, version, self.send_req(api_key, version, body), timeout)


@pytest.fixture
def open_conn(broker):
    opened = []

    def make(client_id="ops-groups-raw"):
        c = Conn(broker.host, broker.port, timeout=RAW_TIMEOUT_S, client_id=client_id)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


# ===========================================================================
# ListGroups / DescribeGroups / DeleteGroups
# ===========================================================================

def list_groups_body(v, states=(), types=()):
    w = W(flexible(LIST_GROUPS, v))
    if v >= 4:
        w.strs(list(states))
    if v >= 5:
        w.strs(list(types))
    return w.tags().bytes()


def decode_list_groups(r, v):
    """(error_code, [(group id, protocol type[, state][, type])])."""
    if v >= 1:
        r.int32()  # throttle
    err = r.int16()
    groups = []
    for _ in range(r.alen()):
        g = [r.str(), r.str()]
        if v >= 4:
            g.append(r.str())
        if v >= 5:
            g.append(r.str())
        r.tags()
        groups.append(tuple(g))
    r.tags()
    r.expect_end()
    return err, groups


def list_groups(conn, v, states=(), types=()):
    return decode_list_groups(conn.call(LIST_GROUPS, v, list_groups_body(v, states, types)), v)


def describe_groups_body(v, groups, include_ops=False):
    w = W(flexible(DESCRIBE_GROUPS, v))
    w.strs(groups)
    if v >= 3:
        w.bool(include_ops)
    return w.tags().bytes()


def decode_describe_groups(r, v):
    """[{error_code, group_id, state, protocol_type, protocol_data, members:
    [{member_id, instance_id, client_id, client_host, metadata, assignment}],
    auth_ops}] (instance_id/auth_ops are the string "absent" where the version
    has no such field)."""
    if v >= 1:
        r.int32()  # throttle
    out = []
    for _ in range(r.alen()):
        g = {"error_code": r.int16(), "group_id": r.str(), "state": r.str(),
             "protocol_type": r.str(), "protocol_data": r.str(), "members": []}
        for _ in range(r.alen()):
            m = {"member_id": r.str()}
            m["instance_id"] = r.str() if v >= 4 else "absent"
            m["client_id"], m["client_host"] = r.str(), r.str()
            m["metadata"], m["assignment"] = r.blob(), r.blob()
            r.tags()
            g["members"].append(m)
        g["auth_ops"] = r.int32() if v >= 3 else "absent"
        r.tags()
        out.append(g)
    r.tags()
    r.expect_end()
    return out


def describe_groups(conn, v, groups, include_ops=False):
    return decode_describe_groups(conn.call(DESCRIBE_GROUPS, v, describe_groups_body(
        v, groups, include_ops)), v)


def delete_groups_body(v, groups):
    return W(flexible(DELETE_GROUPS, v)).strs(groups).tags().bytes()


def decode_delete_groups(r, v):
    """[(group id, error_code)] in response order."""
    r.int32()  # throttle (all versions)
    out = []
    for _ in range(r.alen()):
        out.append((r.str(), r.int16()))
        r.tags()
    r.tags()
    r.expect_end()
    return out


def delete_groups(conn, v, groups):
    return decode_delete_groups(conn.call(DELETE_GROUPS, v, delete_groups_body(v, groups)), v)


# ===========================================================================
# Group membership and offsets (raw), as in test_groups.py
# ===========================================================================

def join_group_body(v, group, session_ms, member_id, protocols, protocol_type="consumer",
                    rebalance_ms=30000, instance_id=None):
    w = W(flexible(JOIN_GROUP, v))
    w.str(group).int32(session_ms)
    if v >= 1:
        w.int32(rebalance_ms)
    w.str(member_id)
    if v >= 5:
        w.str(instance_id)
    w.str(protocol_type).alen(len(protocols))
    for name, meta in protocols:
        w.str(name).blob(meta).tags()
    return w.tags().bytes()


def decode_join_group(r, v):
    out = {"throttle_ms": r.int32() if v >= 2 else None,
           "error_code": r.int16(), "generation": r.int32()}
    out["protocol_name"] = r.str()
    out["leader"] = r.str()
    out["member_id"] = r.str()
    out["members"] = []
    for _ in range(r.alen()):
        mid = r.str()
        iid = r.str() if v >= 5 else None
        out["members"].append((mid, iid, r.blob()))
        r.tags()
    r.tags()
    r.expect_end()
    return out


def sync_group_body(v, group, generation, member_id, assignments, instance_id=None):
    w = W(flexible(SYNC_GROUP, v))
    w.str(group).int32(generation).str(member_id)
    if v >= 3:
        w.str(instance_id)
    w.alen(len(assignments))
    for mid, a in assignments:
        w.str(mid).blob(a).tags()
    return w.tags().bytes()


def decode_sync_group(r, v):
    out = {"throttle_ms": r.int32() if v >= 1 else None, "error_code": r.int16()}
    out["assignment"] = r.blob()
    r.tags()
    r.expect_end()
    return out


def heartbeat_body(v, group, generation, member_id, instance_id=None):
    w = W(flexible(HEARTBEAT, v))
    w.str(group).int32(generation).str(member_id)
    if v >= 3:
        w.str(instance_id)
    return w.tags().bytes()


def decode_heartbeat(r, v):
    if v >= 1:
        r.int32()
    err = r.int16()
    r.tags()
    r.expect_end()
    return err


def leave_group_v3(conn, group, member_id):
    """LeaveGroup v3 for one member; returns (top-level error, member error)."""
    body = W(False).str(group).alen(1).str(member_id).str(None).bytes()
    r = conn.call(LEAVE_GROUP, 3, body)
    r.int32()
    err = r.int16()
    (res,) = [(r.str(), r.str(), r.int16()) for _ in range(r.alen())]
    r.expect_end()
    return err, res[2]


def subscription(topics, user_data=b""):
    """ConsumerProtocolSubscription v0."""
    w = kw.Writer().int16(0).array_len(len(topics))
    for t in topics:
        w.string(t)
    return w.int32(len(user_data)).raw(user_data).bytes()


def assignment(parts, user_data=b""):
    """ConsumerProtocolAssignment v0; parts: {topic: [partition]}."""
    w = kw.Writer().int16(0).array_len(len(parts))
    for t, ps in parts.items():
        w.string(t).array_len(len(ps))
        for p in ps:
            w.int32(p)
    return w.int32(len(user_data)).raw(user_data).bytes()


def decode_subscription_topics(b):
    """Topics of a ConsumerProtocolSubscription (any version: the version and
    topic list lead every one)."""
    r = kw.Reader(b)
    assert r.int16() >= 0
    return [r.string() for _ in range(r.array_len() or 0)]


def decode_assignment(b):
    """{topic: [partition]} of a ConsumerProtocolAssignment (any version)."""
    r = kw.Reader(b)
    assert r.int16() >= 0
    out = {}
    for _ in range(r.array_len() or 0):
        t = r.string()
        out[t] = [r.int32() for _ in range(r.array_len() or 0)]
    return out


def protocols_for(topic, tag):
    """Two consumer protocols with recognisable metadata; "range" wins."""
    return [("range", subscription([topic], b"range-" + tag.encode())),
            ("roundrobin", subscription([topic], b"rr-" + tag.encode()))]


class RawMember:
    """A group member on its own connection: JoinGroup v5, SyncGroup v3,
    Heartbeat v3 (a pending JoinGroup blocks its connection)."""

    JOIN_V, SYNC_V, HB_V = 5, 3, 3

    def __init__(self, conn, group, protocols, instance_id=None, session_ms=30000,
                 rebalance_ms=30000):
        self.conn = conn
        self.group = group
        self.protocols = protocols
        self.instance_id = instance_id
        self.session_ms = session_ms
        self.rebalance_ms = rebalance_ms
        self.member_id = ""
        self.generation = -1

    @property
    def client_id(self):
        return self.conn.client_id

    def send_join(self):
        return self.conn.send_req(JOIN_GROUP, self.JOIN_V, join_group_body(
            self.JOIN_V, self.group, self.session_ms, self.member_id, self.protocols,
            rebalance_ms=self.rebalance_ms, instance_id=self.instance_id))

    def recv_join(self, corr, timeout=RAW_TIMEOUT_S):
        res = decode_join_group(self.conn.recv_resp(JOIN_GROUP, self.JOIN_V, corr, timeout),
                                self.JOIN_V)
        if res["error_code"] in (NONE, MEMBER_ID_REQUIRED):
            self.member_id = res["member_id"]
        if res["error_code"] == NONE:
            self.generation = res["generation"]
        return res

    def join(self):
        return self.recv_join(self.send_join())

    def get_member_id(self):
        """A dynamic member's first JoinGroup (v4+) gets MEMBER_ID_REQUIRED."""
        res = self.join()
        assert res["error_code"] == MEMBER_ID_REQUIRED and res["member_id"], res

    def send_sync(self, assignments):
        return self.conn.send_req(SYNC_GROUP, self.SYNC_V, sync_group_body(
            self.SYNC_V, self.group, self.generation, self.member_id, assignments,
            self.instance_id))

    def recv_sync(self, corr):
        return decode_sync_group(self.conn.recv_resp(SYNC_GROUP, self.SYNC_V, corr), self.SYNC_V)

    def heartbeat(self):
        return decode_heartbeat(self.conn.call(HEARTBEAT, self.HB_V, heartbeat_body(
            self.HB_V, self.group, self.generation, self.member_id, self.instance_id)),
            self.HB_V)


def join_all(members):
    """JoinGroup for `members` together (dynamic ones first fetch a member id);
    returns (leader, {member id: JoinGroup response})."""
    for m in members:
        if m.instance_id is None:
            m.get_member_id()
    corrs = [m.send_join() for m in members]
    joined = {}
    for m, corr in zip(members, corrs):
        res = m.recv_join(corr)
        assert res["error_code"] == NONE and res["generation"] >= 1, (m.client_id, res)
        joined[m.member_id] = res
    (leader_id,) = {r["leader"] for r in joined.values()}
    return next(m for m in members if m.member_id == leader_id), joined


def form_group(members, topic):
    """Joins and syncs `members` into one generation (Stable). Returns
    {member id: assignment bytes}."""
    leader, _ = join_all(members)
    assigns = {m.member_id: assignment({topic: [i]}, b"for-" + m.client_id.encode())
               for i, m in enumerate(members)}
    corrs = [(m, m.send_sync([])) for m in members if m is not leader]
    corrs.append((leader, leader.send_sync(sorted(assigns.items()))))
    for m, corr in corrs:
        s = m.recv_sync(corr)
        assert s["error_code"] == NONE and s["assignment"] == assigns[m.member_id], s
    return assigns


def offset_commit_v2(conn, group, topic, offsets, generation=-1, member_id=""):
    """OffsetCommit v2 ({partition: offset}); returns {partition: error}.
    Generation -1 and no member id: an admin/standalone commit."""
    w = W(False).str(group).int32(generation).str(member_id).int64(-1)
    w.alen(1).str(topic).alen(len(offsets))
    for p, off in sorted(offsets.items()):
        w.int32(p).int64(off).str("m%d" % off)
    r = conn.call(OFFSET_COMMIT, 2, w.bytes())
    out = {}
    for _ in range(r.alen()):
        assert r.str() == topic
        for _ in range(r.alen()):
            p = r.int32()
            out[p] = r.int16()
    r.expect_end()
    return out


def offset_fetch_v1(conn, group, topic, partitions):
    """OffsetFetch v1; returns {partition: (offset, metadata, error)}."""
    w = W(False).str(group).alen(1).str(topic).alen(len(partitions))
    for p in partitions:
        w.int32(p)
    r = conn.call(OFFSET_FETCH, 1, w.bytes())
    out = {}
    for _ in range(r.alen()):
        assert r.str() == topic
        for _ in range(r.alen()):
            p = r.int32()
            out[p] = (r.int64(), r.str(), r.int16())
    r.expect_end()
    return out


def assert_offsets_gone(conn, group, topic, partitions):
    got = offset_fetch_v1(conn, group, topic, partitions)
    assert {p: (o, e) for p, (o, _, e) in got.items()} == {p: (-1, NONE) for p in partitions}, (
        "committed offsets of deleted group %s still answered: %r" % (group, got))


def produce_and_read_back(conn, topic, partitions, n=3):
    """Produces one batch of `n` records to each partition; returns
    {partition: bytes fetched from offset 0}."""
    out = {}
    for p in partitions:
        batch = raw.build_batch(raw.simple_records(n, b"%s-p%d" % (topic.encode(), p)))
        res = raw.produce(conn, 9, topic, p, batch)
        assert res["error_code"] == 0 and res["base_offset"] == 0, res
        data, _ = raw.fetch_all(conn, 12, topic, p, 0)
        assert data == raw.patched(batch, 0, kw.leader_epoch(conn, topic, p))
        out[p] = data
    return out


def assert_topic_data_untouched(conn, topic, before, n=3):
    for p, data in before.items():
        got, last = raw.fetch_all(conn, 12, topic, p, 0)
        assert got == data, "partition %d: records changed after DeleteGroups" % p
        assert last["high_watermark"] == n and last["log_start_offset"] == 0, last
    for r in raw.list_offsets(conn, 5, topic, [(p, -1) for p in before]):
        assert (r["error_code"], r["offset"]) == (NONE, n), r
    for r in raw.list_offsets(conn, 5, topic, [(p, -2) for p in before]):
        assert (r["error_code"], r["offset"]) == (NONE, 0), r


# ===========================================================================
# ApiVersions advertising and unsupported versions
# ===========================================================================

def test_api_versions_advertise_group_ops(broker, open_conn):
    """The seed's "ApiVersions Advertising": ListGroups 0-5, DescribeGroups
    0-5, DeleteGroups 0-2 served; unsupported APIs (EndTxn: transactions
    are out of scope; DeleteRecords: deferred) listed as -1/-1."""
    c = open_conn()
    for v in (0, 3):
        r = c.call(kw.API_VERSIONS, v, kw.api_versions_body(v))
        err, keys, _ = kw.decode_api_versions(r.r, v)
        assert err == NONE, (v, err)
        assert keys.get(LIST_GROUPS) == (0, 5), (v, keys.get(LIST_GROUPS))
        assert keys.get(DESCRIBE_GROUPS) == (0, 5), (v, keys.get(DESCRIBE_GROUPS))
        assert keys.get(DELETE_GROUPS) == (0, 2), (v, keys.get(DELETE_GROUPS))
        assert keys.get(INIT_PRODUCER_ID) == (0, 5), (v, keys.get(INIT_PRODUCER_ID))
        assert keys.get(END_TXN) == (-1, -1), (v, keys.get(END_TXN))
        assert keys.get(DELETE_RECORDS) == (-1, -1), (v, keys.get(DELETE_RECORDS))


def test_api_versions_unsupported_version_answered_in_v0_body(broker, open_conn):
    c = open_conn()
    corr = c.send_req(kw.API_VERSIONS, 127, kw.api_versions_body(3))
    r = c.recv_resp(kw.API_VERSIONS, 0, corr)  # response header v0, v0 body
    err, keys, throttle = kw.decode_api_versions(r.r, 0)
    assert (err, throttle) == (UNSUPPORTED_VERSION, None), (err, keys)


def read_until_closed(sock, timeout):
    """(closed, bytes received before the close or the timeout)."""
    deadline = time.monotonic() + timeout
    got = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, got
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return False, got
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            return True, got
        if not chunk:
            return True, got
        got += chunk


@pytest.mark.parametrize("api_key,version", [(LIST_GROUPS, 6), (DESCRIBE_GROUPS, 6),
                                             (DELETE_GROUPS, 3)])
def test_version_above_advertised_closes_connection(broker, open_conn, api_key, version):
    """Above the advertised maximum (ListGroups 5, DescribeGroups 5,
    DeleteGroups 2) the broker sends nothing and closes the connection;
    other connections, open before or after, keep working."""
    bystander = open_conn("bystander")
    assert list_groups(bystander, 5) == (NONE, [])
    victim = open_conn("victim")
    # A well-formed flexible body of the newest layout plus nothing else.
    body = {LIST_GROUPS: list_groups_body(5), DESCRIBE_GROUPS: describe_groups_body(5, ["g"]),
            DELETE_GROUPS: delete_groups_body(2, ["g"])}[api_key]
    victim.send_req(api_key, version, body, header_version=2)
    closed, got = read_until_closed(victim.sock, CLOSE_TIMEOUT_S)
    assert closed, "connection still open %.0f s after %d v%d" % (CLOSE_TIMEOUT_S, api_key, version)
    assert got == b"", "the broker answered %d v%d: %r" % (api_key, version, got[:64])

    assert list_groups(bystander, 5) == (NONE, [])
    fresh = open_conn("fresh")
    assert list_groups(fresh, 4) == (NONE, [])
    (d,) = describe_groups(fresh, 5, ["g"])
    assert (d["error_code"], d["state"]) == (NONE, "Dead"), d
    assert delete_groups(fresh, 2, ["g"]) == [("g", GROUP_ID_NOT_FOUND)]


# ===========================================================================
# No groups at all
# ===========================================================================

def test_no_groups_empty_results_not_errors(broker, open_conn):
    """A broker without groups: every ListGroups version answers error 0 and
    an empty list (also with filters); DescribeGroups says Dead with error 0;
    DeleteGroups says GROUP_ID_NOT_FOUND."""
    c = open_conn()
    for v in range(6):
        assert list_groups(c, v) == (NONE, []), v
    for v in (4, 5):
        assert list_groups(c, v, states=["Stable"]) == (NONE, []), v
    assert list_groups(c, 5, states=["Stable"], types=["classic"]) == (NONE, [])
    for v in range(6):
        (d,) = describe_groups(c, v, ["nobody"])
        assert (d["error_code"], d["group_id"], d["state"], d["protocol_type"],
                d["protocol_data"], d["members"]) == (NONE, "nobody", "Dead", "", "", []), (v, d)
    for v in range(3):
        assert delete_groups(c, v, ["nobody"]) == [("nobody", GROUP_ID_NOT_FOUND)], v
        assert delete_groups(c, v, []) == [], v


# ===========================================================================
# Groups in every state, formed raw
# ===========================================================================

class RawGroups:
    """Five groups on one broker, one per state that can be listed, plus the
    members that hold them there."""


@pytest.fixture
def raw_groups(broker, open_conn):
    """stable:    dynamic member A + static member S ("inst-s"), synced
    completing: member C joined (generation 1), no SyncGroup yet
    preparing:  member P1 Stable, then P2 joined (its JoinGroup is held until
                P1 rejoins, which it never does; rebalance timeout 30 s)
    left:       member E formed it, committed offsets, left: Empty, "consumer"
    admin:      only an admin OffsetCommit: Empty, protocol type ""."""
    g = RawGroups()
    g.topic = uniq("ogr-t")
    admin = open_conn("ogr-admin")
    raw.create_topic(admin, g.topic, 2)
    g.admin_conn = admin
    g.stable, g.completing, g.preparing, g.left, g.admin = (
        uniq("stable"), uniq("completing"), uniq("preparing"), uniq("left"), uniq("admin"))

    g.a = RawMember(open_conn("ogr-a"), g.stable, protocols_for(g.topic, "a"))
    g.s = RawMember(open_conn("ogr-s"), g.stable, protocols_for(g.topic, "s"), instance_id="inst-s")
    g.stable_assigns = form_group([g.a, g.s], g.topic)

    g.c = RawMember(open_conn("ogr-c"), g.completing, protocols_for(g.topic, "c"))
    leader, _ = join_all([g.c])
    assert leader is g.c

    g.p1 = RawMember(open_conn("ogr-p1"), g.preparing, protocols_for(g.topic, "p1"))
    form_group([g.p1], g.topic)
    g.p2 = RawMember(open_conn("ogr-p2"), g.preparing, protocols_for(g.topic, "p2"))
    g.p2.get_member_id()
    g.p2.send_join()  # held: answered only when P1 rejoins
    wait_for(lambda: g.p1.heartbeat() == REBALANCE_IN_PROGRESS,
             "P2's JoinGroup to start a rebalance of %s" % g.preparing, interval=0.02)

    e = RawMember(open_conn("ogr-e"), g.left, protocols_for(g.topic, "e"))
    form_group([e], g.topic)
    assert offset_commit_v2(admin, g.left, g.topic, {0: 11, 1: 12}, e.generation,
                            e.member_id) == {0: NONE, 1: NONE}
    assert leave_group_v3(admin, g.left, e.member_id) == (NONE, NONE)

    assert offset_commit_v2(admin, g.admin, g.topic, {0: 21}) == {0: NONE}

    g.expected = sorted([(g.stable, "consumer", "Stable", "classic"),
                         (g.completing, "consumer", "CompletingRebalance", "classic"),
                         (g.preparing, "consumer", "PreparingRebalance", "classic"),
                         (g.left, "consumer", "Empty", "classic"),
                         (g.admin, "", "Empty", "classic")])
    return g


def by_state(g, *states):
    return sorted(e for e in g.expected if e[2] in states)


@pytest.mark.parametrize("version", range(6))
def test_list_groups_every_version_and_state(raw_groups, open_conn, version):
    g = raw_groups
    c = open_conn()
    want = [e[:2 + max(0, min(version - 3, 2))] for e in g.expected]
    err, got = list_groups(c, version)
    assert err == NONE
    assert sorted(got) == want, "ListGroups v%d" % version
    if version < 4:
        return
    cut = 3 if version == 4 else 4

    def listed(states=(), types=()):
        err, got = list_groups(c, version, states, types)
        assert err == NONE, (states, types, err)
        return sorted(got)

    def want_states(*states):
        return [e[:cut] for e in by_state(g, *states)]

    assert listed(["Stable"]) == want_states("Stable")
    assert listed(["stable", "EMPTY"]) == want_states("Stable", "Empty")
    assert listed(["PreparingRebalance"]) == want_states("PreparingRebalance")
    assert listed(["completingrebalance"]) == want_states("CompletingRebalance")
    assert listed(STATES) == want_states(*STATES)
    assert listed(["Dead"]) == [], "no listed group is Dead"
    assert listed(["NoSuchState"]) == []
    if version < 5:
        return
    every = want_states(*STATES)
    assert listed(types=["classic"]) == every
    assert listed(types=["Classic"]) == every
    assert listed(types=["consumer", "classic"]) == every
    assert listed(types=["consumer"]) == [], "no group is a KIP-848 consumer group"
    assert listed(types=["share"]) == []
    # The seed's own request.
    assert listed(["Stable"], ["classic"]) == want_states("Stable")
    assert listed(["Stable"], ["consumer"]) == []
    assert listed(["Empty", "PreparingRebalance"], ["CLASSIC"]) == want_states(
        "Empty", "PreparingRebalance")


def member_view(m, version, instance_id, metadata, assignment_bytes):
    return {"member_id": m.member_id,
            "instance_id": instance_id if version >= 4 else "absent",
            "client_id": m.client_id, "client_host": CLIENT_HOST,
            "metadata": metadata, "assignment": assignment_bytes}


@pytest.mark.parametrize("version", range(6))
def test_describe_groups_every_version_and_state(raw_groups, open_conn, version):
    """One request for all five groups, an unknown one and an empty id: one
    answer each, in request order."""
    g = raw_groups
    c = open_conn()
    unknown = uniq("unknown")
    names = [g.stable, g.completing, g.preparing, g.left, g.admin, unknown, ""]
    got = describe_groups(c, version, names)
    assert [d["group_id"] for d in got] == names, got
    d = dict(zip(names, got))
    omitted = AUTH_OPS_OMITTED if version >= 3 else "absent"

    def head(x):
        return (x["error_code"], x["state"], x["protocol_type"], x["protocol_data"])

    def members(x):
        return sorted(x["members"], key=lambda m: m["member_id"])

    s = d[g.stable]
    assert head(s) == (NONE, "Stable", "consumer", "range"), s
    assert members(s) == sorted([
        member_view(g.a, version, None, g.a.protocols[0][1], g.stable_assigns[g.a.member_id]),
        member_view(g.s, version, "inst-s", g.s.protocols[0][1], g.stable_assigns[g.s.member_id]),
    ], key=lambda m: m["member_id"]), s

    # Not Stable: no protocol, members without metadata or assignment.
    x = d[g.completing]
    assert head(x) == (NONE, "CompletingRebalance", "consumer", ""), x
    assert members(x) == [member_view(g.c, version, None, b"", b"")], x
    x = d[g.preparing]
    assert head(x) == (NONE, "PreparingRebalance", "consumer", ""), x
    assert members(x) == sorted([member_view(m, version, None, b"", b"") for m in (g.p1, g.p2)],
                                key=lambda m: m["member_id"]), x

    assert head(d[g.left]) == (NONE, "Empty", "consumer", "") and d[g.left]["members"] == []
    assert head(d[g.admin]) == (NONE, "Empty", "", "") and d[g.admin]["members"] == []
    assert head(d[unknown]) == (NONE, "Dead", "", "") and d[unknown]["members"] == []
    assert head(d[""]) == (INVALID_GROUP_ID, "", "", "") and d[""]["members"] == []
    for x in got:
        assert x["auth_ops"] == omitted, x

    if version >= 3:
        got = describe_groups(c, version, names[:-1], include_ops=True)
        ops = {x["group_id"]: x["auth_ops"] for x in got}
        assert ops == {n: GROUP_AUTH_OPS for n in names[:-1]}, (
            "with IncludeAuthorizedOperations: %r" % ops)
        # The rest of the answer does not change.
        assert [head(x) for x in got] == [head(d[n]) for n in names[:-1]]


@pytest.mark.parametrize("version", [3, 5])
def test_describe_invalid_group_id_omits_authorized_operations(broker, open_conn, version):
    """IncludeAuthorizedOperations fills the bitfield only for groups answered
    without error (KafkaApis.handleDescribeGroupsRequest sets it when
    errorCode == NONE): an INVALID_GROUP_ID answer keeps -2147483648 next to a
    Dead group that gets the bitfield."""
    c = open_conn()
    got = describe_groups(c, version, ["", "nobody"], include_ops=True)
    assert [(x["group_id"], x["error_code"], x["state"]) for x in got] == [
        ("", INVALID_GROUP_ID, ""), ("nobody", NONE, "Dead")], got
    assert [x["auth_ops"] for x in got] == [AUTH_OPS_OMITTED, GROUP_AUTH_OPS], got


# ===========================================================================
# DeleteGroups, raw
# ===========================================================================

@pytest.mark.parametrize("version", range(3))
def test_delete_groups_per_group_results(broker, open_conn, version):
    """[unknown, live, left (Empty, offsets), "", admin (Empty, offsets)] in
    one request -> [69, 68, 0, 24, 0] in that order. Deleted groups lose
    their offsets and vanish from ListGroups/DescribeGroups; the live group,
    another group's offsets on the same topic and the topic's records are
    untouched; a deleted group id can be used again from scratch."""
    c = open_conn("ogr-admin")
    topic = uniq("ogr-del")
    raw.create_topic(c, topic, 2)
    data = produce_and_read_back(c, topic, [0, 1])

    live, left, admin, keep, unknown = (uniq("live"), uniq("left"), uniq("admin"),
                                        uniq("keep"), uniq("unknown"))
    lm = RawMember(open_conn("ogr-live"), live, protocols_for(topic, "live"))
    form_group([lm], topic)
    assert offset_commit_v2(c, live, topic, {0: 1}, lm.generation, lm.member_id) == {0: NONE}
    e = RawMember(open_conn("ogr-left"), left, protocols_for(topic, "left"))
    form_group([e], topic)
    assert offset_commit_v2(c, left, topic, {0: 2, 1: 3}, e.generation, e.member_id) == {
        0: NONE, 1: NONE}
    assert leave_group_v3(c, left, e.member_id) == (NONE, NONE)
    assert offset_commit_v2(c, admin, topic, {0: 1, 1: 2}) == {0: NONE, 1: NONE}
    assert offset_commit_v2(c, keep, topic, {0: 3, 1: 1}) == {0: NONE, 1: NONE}

    names = [unknown, live, left, "", admin]
    assert delete_groups(c, version, names) == [
        (unknown, GROUP_ID_NOT_FOUND), (live, NON_EMPTY_GROUP), (left, NONE),
        ("", INVALID_GROUP_ID), (admin, NONE)]

    for gone in (left, admin):
        assert_offsets_gone(c, gone, topic, [0, 1])
        (d,) = describe_groups(c, 5, [gone])
        assert (d["error_code"], d["state"], d["protocol_type"], d["members"]) == (
            NONE, "Dead", "", []), d
    assert list_groups(c, 5) == (NONE, sorted([(keep, "", "Empty", "classic"),
                                               (live, "consumer", "Stable", "classic")]))
    assert offset_fetch_v1(c, keep, topic, [0, 1]) == {0: (3, "m3", NONE), 1: (1, "m1", NONE)}
    assert offset_fetch_v1(c, live, topic, [0]) == {0: (1, "m1", NONE)}
    assert lm.heartbeat() == NONE, "the live group's member was disturbed"
    assert_topic_data_untouched(c, topic, data)

    # Deleted once: a second delete finds nothing; the live one still has members.
    assert delete_groups(c, version, [left, admin, live]) == [
        (left, GROUP_ID_NOT_FOUND), (admin, GROUP_ID_NOT_FOUND), (live, NON_EMPTY_GROUP)]
    # The id starts afresh: only what is committed after the delete.
    assert offset_commit_v2(c, admin, topic, {1: 9}) == {1: NONE}
    got = offset_fetch_v1(c, admin, topic, [0, 1])
    assert got[1] == (9, "m9", NONE) and got[0][0::2] == (-1, NONE), got
    assert delete_groups(c, version, [admin]) == [(admin, NONE)]
    assert_offsets_gone(c, admin, topic, [0, 1])


# ===========================================================================
# A real client group (librdkafka) through its life: Stable, Empty, deleted
# ===========================================================================

class ClientMember(threading.Thread):
    """A librdkafka consumer (range assignor) polling in a thread. After
    request_stop() it commits `commit` ({partition: offset}) for its assigned partitions, then
    closes the consumer (LeaveGroup)."""

    def __init__(self, broker, group, topic, client_id):
        super().__init__(daemon=True)
        self.client_id = client_id
        self.topic = topic
        self.conf = {
            "bootstrap.servers": broker.bootstrap, "group.id": group, "client.id": client_id,
            "partition.assignment.strategy": "range", "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 300, "max.poll.interval.ms": 30000,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
        self.lock = threading.Lock()
        self.assigned = None
        self.errors = []
        self.committed = None
        self.closed = False
        self._stop_ev = threading.Event()
        self._commit = None

    def run(self):
        c = Consumer(self.conf)
        try:
            c.subscribe([self.topic])
            while not self._stop_ev.is_set():
                m = c.poll(0.05)
                if m is not None and m.error():
                    with self.lock:
                        self.errors.append(m.error().str())
                parts = sorted(tp.partition for tp in c.assignment())
                with self.lock:
                    self.assigned = parts
            if self._commit is not None:
                tps = [TopicPartition(self.topic, p, self._commit[p]) for p in self.assigned]
                res = c.commit(offsets=tps, asynchronous=False)
                with self.lock:
                    self.committed = sorted((tp.partition, tp.offset, tp.error) for tp in res)
        except Exception as e:  # reported by stop()
            with self.lock:
                self.errors.append(repr(e))
        finally:
            c.close()
            with self.lock:
                self.closed = True

    def assignment(self):
        with self.lock:
            return self.assigned

    def request_stop(self, commit=None):
        self._commit = commit
        self._stop_ev.set()

    def finish(self):
        """Waits for the thread; returns [(partition, offset, error)] committed."""
        self.join(WAIT_S)
        assert not self.is_alive(), "consumer %s did not close" % self.client_id
        with self.lock:
            assert self.closed and not self.errors, (self.client_id, self.errors)
            return self.committed


def test_client_group_describe_list_delete_lifecycle(broker, open_conn):
    """Two librdkafka consumers (range) in one group over a 4-partition topic:
    Stable (every Describe version, ListGroups with the seed's request),
    DeleteGroups -> NON_EMPTY_GROUP; the consumers commit and close: Empty
    with its offsets; DeleteGroups (seed version v2) deletes it: offsets gone,
    not listed, Dead, GROUP_ID_NOT_FOUND afterwards, records untouched."""
    c = open_conn("ogr-admin")
    topic = uniq("ogr-client")
    nparts = 4
    raw.create_topic(c, topic, nparts)
    data = produce_and_read_back(c, topic, range(nparts))
    group = uniq("client-group")

    members = [ClientMember(broker, group, topic, "ogr-c%d" % i) for i in range(2)]
    for m in members:
        m.start()
    try:
        def stable():
            (d,) = describe_groups(c, 5, [group])
            if d["error_code"] != NONE or d["state"] != "Stable" or len(d["members"]) != 2:
                return None
            owned = {m["client_id"]: sorted(decode_assignment(m["assignment"]).get(topic, []))
                     for m in d["members"]}
            if sorted(p for ps in owned.values() for p in ps) != list(range(nparts)):
                return None
            # Each consumer applied the assignment the broker holds for it.
            if any(owned.get(m.client_id) != m.assignment() for m in members):
                return None
            return d
        d5 = wait_for(stable, "the two consumers to form a Stable group owning %d partitions"
                      % nparts, diag=lambda: (describe_groups(c, 5, [group]),
                                              [(m.client_id, m.assignment(), m.errors)
                                               for m in members]))
        member_ids = sorted(m["member_id"] for m in d5["members"])
        assert len(set(member_ids)) == 2 and all(member_ids), d5

        for v in range(6):
            (d,) = describe_groups(c, v, [group])
            assert (d["error_code"], d["group_id"], d["state"], d["protocol_type"],
                    d["protocol_data"]) == (NONE, group, "Stable", "consumer", "range"), (v, d)
            assert sorted(m["member_id"] for m in d["members"]) == member_ids, (v, d)
            assert sorted(m["client_id"] for m in d["members"]) == ["ogr-c0", "ogr-c1"], (v, d)
            owned = []
            for m in d["members"]:
                assert m["client_host"] == CLIENT_HOST, (v, m)
                assert m["instance_id"] == (None if v >= 4 else "absent"), (v, m)
                assert m["metadata"] and decode_subscription_topics(m["metadata"]) == [topic], (v, m)
                assert m["assignment"], (v, m)
                owned += decode_assignment(m["assignment"]).get(topic, [])
            assert sorted(owned) == list(range(nparts)), (v, d)
            assert d["auth_ops"] == (AUTH_OPS_OMITTED if v >= 3 else "absent"), (v, d)
            if v >= 3:
                (d,) = describe_groups(c, v, [group], include_ops=True)
                assert d["auth_ops"] == GROUP_AUTH_OPS, (v, d)

        assert list_groups(c, 5, ["Stable"], ["classic"]) == (
            NONE, [(group, "consumer", "Stable", "classic")])
        assert list_groups(c, 0) == (NONE, [(group, "consumer")])
        for v in range(3):
            assert delete_groups(c, v, [group]) == [(group, NON_EMPTY_GROUP)], v
        (d,) = describe_groups(c, 5, [group])
        assert d["state"] == "Stable" and sorted(m["member_id"] for m in d["members"]) == \
            member_ids, d
    finally:
        for m in members:
            m.request_stop(commit={p: 1 + p for p in range(nparts)})
        commits = [m.finish() for m in members]

    assert sorted(x for cm in commits for x in cm or []) == [
        (p, 1 + p, None) for p in range(nparts)], commits

    def empty():
        (d,) = describe_groups(c, 5, [group])
        return d if d["state"] == "Empty" else None
    d = wait_for(empty, "the group to be Empty after both consumers closed",
                 diag=lambda: describe_groups(c, 5, [group]))
    assert (d["error_code"], d["protocol_type"], d["protocol_data"], d["members"]) == (
        NONE, "consumer", "", []), d
    assert list_groups(c, 5) == (NONE, [(group, "consumer", "Empty", "classic")])
    assert list_groups(c, 5, ["Stable"], ["classic"]) == (NONE, [])
    got = offset_fetch_v1(c, group, topic, list(range(nparts)))
    assert {p: (o, e) for p, (o, _, e) in got.items()} == {p: (1 + p, NONE) for p in range(nparts)}

    unknown = uniq("unknown")
    assert delete_groups(c, 2, [unknown, group, ""]) == [
        (unknown, GROUP_ID_NOT_FOUND), (group, NONE), ("", INVALID_GROUP_ID)]

    assert_offsets_gone(c, group, topic, list(range(nparts)))
    for v in range(6):
        assert list_groups(c, v) == (NONE, []), v
    (d,) = describe_groups(c, 5, [group])
    assert (d["error_code"], d["state"], d["protocol_type"], d["protocol_data"],
            d["members"]) == (NONE, "Dead", "", "", []), d
    assert delete_groups(c, 2, [group]) == [(group, GROUP_ID_NOT_FOUND)]
    assert_topic_data_untouched(c, topic, data)
