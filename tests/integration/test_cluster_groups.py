"""Consumer-group coordination across several brokers (cluster mode): three
brokers on one etcd (harness.Etcd) and one s3rver (harness.S3rver), started
here whatever KAFSCALE_TEST_MODE is, with a 3 s session lease.

  a. FindCoordinator (v3 single key, v4 batched keys) answers the same broker
     for a group on every broker, and it is the one rendezvous placement
     names over the live ids (docs/cluster.md, "Placement"; computed here
     independently);
  b. group requests sent to a broker that is not the coordinator get
     NOT_COORDINATOR in the fields Kafka uses (JoinGroup, SyncGroup,
     Heartbeat, LeaveGroup top-level; OffsetCommit per partition; OffsetFetch
     per partition before v2, per group in v8; DescribeGroups and
     DeleteGroups per group); the coordinator serves them; ListGroups lists
     a group only on its coordinator;
  c. a consumer group (confluent_kafka, explicit commits) consumes and
     commits, then its coordinator is killed with kill -9: after the lease
     TTL the group continues through the new coordinator, nothing committed
     on the old one is lost, every partition is assigned once after
     convergence, and a fresh consumer of the group resumes exactly from
     the offsets committed through the new coordinator.

Test c kills a broker of the module's cluster, so it runs last.
"""

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import conftest
import harness
import kafka_wire as kw
import test_groups as tg
import test_ops_groups_raw as ogr

IDS = (0, 1, 2)
PARTITIONS = 6
LEASE_TTL_MS = 3000
VIEW_DEADLINE_S = 10.0
FAILOVER_DEADLINE_S = 40.0   # lease TTL, takeover, the client's rejoin, with room
CLIENT_TIMEOUT_S = 20.0

NONE = 0
NOT_COORDINATOR = 16
GROUP_ID_NOT_FOUND = 69
MEMBER_ID_REQUIRED = 79

OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR = 8, 9, 10
JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP = 11, 12, 13, 14


# ---------------------------------------------------------------------------
# Rendezvous placement, written from docs/cluster.md (not from the C code)
# ---------------------------------------------------------------------------

M64 = (1 << 64) - 1


def fmix64(k):
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & M64
    k ^= k >> 33
    return k


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def score(key, broker_id):
    return fmix64(fnv1a64(key.encode()) ^ fmix64(((broker_id & 0xFFFFFFFF) + 0x9E3779B97F4A7C15) & M64))


def place(key, ids):
    """The live id with the highest score; ties to the lower id."""
    return min(ids, key=lambda i: (-score(key, i), i))


def group_coordinator(group, ids=IDS):
    return place("group:" + group, ids)


def group_placed_on(broker_id, ids=IDS, prefix="cg"):
    """A fresh group id whose coordinator over `ids` is broker_id."""
    while True:
        g = "%s-%s" % (prefix, uuid.uuid4().hex[:10])
        if group_coordinator(g, ids) == broker_id:
            return g


# ---------------------------------------------------------------------------
# The cluster: etcd, s3rver, three brokers
# ---------------------------------------------------------------------------

class Cluster:
    def __init__(self, etcd, s3, brokers):
        self.etcd, self.s3, self.brokers = etcd, s3, brokers

    def by_id(self, i):
        return self.brokers[IDS.index(i)]

    def live(self):
        return [b for b in self.brokers if b.is_running()]

    def bootstrap(self, ids=IDS):
        return ",".join(self.by_id(i).bootstrap for i in ids)

    def kill(self, i):
        """kill -9; the teardown does not count it as an unclean exit (its
        log is still checked for sanitizer reports)."""
        b = self.by_id(i)
        b.kill()
        b.proc = None


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    etcd = harness.Etcd(tmp_path_factory.mktemp("etcd")).start()
    s3 = harness.S3rver(tmp_path_factory.mktemp("s3"))
    started = []
    try:
        s3.start()
        namespace = "cg-%s" % uuid.uuid4().hex[:8]
        for i in IDS:
            env = {"KAFSCALE_ETCD_ENDPOINTS": etcd.endpoints, "KAFSCALE_BROKER_ID": str(i),
                   "KAFSCALE_LEASE_TTL_MS": str(LEASE_TTL_MS), "KAFSCALE_FLUSH_INTERVAL_MS": "20",
                   "KAFSCALE_GROUP_INITIAL_REBALANCE_DELAY_MS": "200", "KAFSCALE_AUTO_CREATE_TOPICS": "0"}
            env.update(s3.env(namespace))
            b = conftest.Broker(conftest._broker_bin(), tmp_path_factory.mktemp("broker%d" % i), env)
            started.append(b)
            b.start()
        c = Cluster(etcd, s3, started)
        for b in started:
            wait_until(lambda: listed_ids(b) == list(IDS), "broker %s to list all three brokers" % b.port)
        yield c
    finally:
        errors = []
        for b in started:
            try:
                b.finish()
            except BaseException as e:  # finish() fails with the log; stop the others first
                errors.append(e)
        s3.stop()
        etcd.stop()
        if errors:
            raise errors[0]


@pytest.fixture(autouse=True)
def _attach_logs(request, cluster):
    """A failing test's report gets every broker's log tail (conftest)."""
    request.node.kafscale_brokers = list(cluster.brokers)


def wait_until(cond, what, timeout=VIEW_DEADLINE_S, interval=0.05):
    try:
        return harness.wait_until(cond, what, timeout, interval)
    except harness.HarnessError as e:
        pytest.fail(str(e), pytrace=False)


FIRST_FLEXIBLE = dict(ogr.FIRST_FLEXIBLE)
FIRST_FLEXIBLE.update(tg.FIRST_FLEXIBLE)


def flexible(api_key, version):
    if api_key in FIRST_FLEXIBLE:
        return version >= FIRST_FLEXIBLE[api_key]
    return kw.is_flexible(api_key, version)


class GConn(kw.Conn):
    """kw.Conn with the header versions of every group API (the helpers of
    test_groups.py and test_ops_groups_raw.py call .call())."""

    def call(self, api_key, version, body, timeout=None):
        corr = self.next_corr
        self.next_corr += 1
        flex = flexible(api_key, version)
        kw.send_all(self.sock, kw.request_frame(api_key, version, corr, body, self.client_id,
                                                header_version=2 if flex else 1))
        r = kw.Reader(kw.recv_frame(self.sock, self.timeout if timeout is None else timeout))
        got = r.int32()
        if got != corr:
            raise kw.ProtocolError("correlation id %d, expected %d" % (got, corr))
        if flex:
            r.skip_tagged_fields()
        return ogr.R(r, flex)


def gconn(b):
    return GConn(b.host, b.port, timeout=10.0, client_id="cluster-groups")


def listed_ids(b):
    try:
        with kw.Conn(b.host, b.port, timeout=5.0) as c:
            md = kw.decode_metadata(c.request(kw.METADATA, 9, kw.metadata_body(9, [])), 9)
            return sorted(n for n, _, _, _ in md["brokers"])
    except (OSError, kw.ProtocolError, kw.ConnectionClosed):
        return []


def find_coordinator(c, version, keys):
    return tg.decode_find_coordinator(c.call(FIND_COORDINATOR, version, tg.find_coordinator_body(version, keys)),
                                      version)


def create_topic(cluster, topic, partitions=PARTITIONS):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap([i for i in IDS
                                                                  if cluster.by_id(i).is_running()])})
    fut = admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=15)[topic]
    fut.result(timeout=CLIENT_TIMEOUT_S)

    def leaders_everywhere():
        for b in cluster.live():
            with kw.Conn(b.host, b.port, timeout=5.0) as c:
                md = kw.decode_metadata(c.request(kw.METADATA, 9, kw.metadata_body(9, [topic])), 9)
                leaders = md["leaders"].get(topic, {})
                if len(leaders) != partitions or any(err or leader < 0 for err, leader, _ in leaders.values()):
                    return False
        return True
    wait_until(leaders_everywhere, "every partition of %s to have a leader on every broker" % topic)


def offset_fetch_v8(c, group, topic, partitions):
    """OffsetFetch v8 for one group: (group error, {partition: (offset, error)})."""
    w = ogr.W(True).alen(1).str(group).alen(1).str(topic).alen(len(partitions))
    for p in partitions:
        w.int32(p)
    w.tags().tags().bool(False).tags()
    r = c.call(OFFSET_FETCH, 8, w.bytes())
    r.int32()  # throttle
    (gid, err, parts), = [_decode_fetch_group(r) for _ in range(r.alen())]
    assert gid == group
    r.tags()
    r.expect_end()
    return err, parts


def _decode_fetch_group(r):
    gid = r.str()
    parts = {}
    for _ in range(r.alen()):
        r.str()
        for _ in range(r.alen()):
            p, off = r.int32(), r.int64()
            r.int32()  # committed leader epoch
            r.str()  # metadata
            err = r.int16()
            r.tags()
            parts[p] = (off, err)
        r.tags()
    err = r.int16()
    r.tags()
    return gid, err, parts


# ---------------------------------------------------------------------------
# a. FindCoordinator
# ---------------------------------------------------------------------------

def test_find_coordinator_is_the_placed_broker_on_every_broker(cluster):
    groups = ["fc-%d-%s" % (i, uuid.uuid4().hex[:6]) for i in range(24)]
    want = {g: group_coordinator(g) for g in groups}
    assert set(want.values()) == set(IDS), "24 groups should land on every broker: %r" % want
    addr = {i: (cluster.by_id(i).host, cluster.by_id(i).port) for i in IDS}
    for b in cluster.brokers:
        with gconn(b) as c:
            for g in groups[:6]:
                (e,) = find_coordinator(c, 3, [g])
                assert e["error_code"] == NONE, e
                assert (e["node_id"], e["host"], e["port"]) == (want[g],) + addr[want[g]], (b.port, g, e)
            res = find_coordinator(c, 4, groups)
            assert sorted(e["key"] for e in res) == sorted(groups)
            for e in res:
                assert e["error_code"] == NONE, e
                assert (e["node_id"], e["host"], e["port"]) == (want[e["key"]],) + addr[want[e["key"]]], e
            # Transaction keys: refused on every broker (no transactions),
            # TRANSACTIONAL_ID_AUTHORIZATION_FAILED with a message.
            (t,) = tg.decode_find_coordinator(c.call(FIND_COORDINATOR, 4, tg.find_coordinator_body(
                4, ["txn-1"], key_type=1)), 4)
            assert t["error_code"] == 53 and "not supported" in t["error_message"], t


# ---------------------------------------------------------------------------
# b. NOT_COORDINATOR from the others, service from the coordinator
# ---------------------------------------------------------------------------

def test_group_requests_to_a_non_coordinator_get_not_coordinator(cluster):
    topic = "cg-nc-%s" % uuid.uuid4().hex[:6]
    create_topic(cluster, topic, 2)
    group = "cg-nc-%s" % uuid.uuid4().hex[:8]
    coord = cluster.by_id(group_coordinator(group))
    others = [b for b in cluster.brokers if b is not coord]
    protos = [("range", tg.subscription([topic]))]

    for b in others:
        with gconn(b) as c:
            j = tg.decode_join_group(c.call(JOIN_GROUP, 5, tg.join_group_body(5, group, 10000, "m-1", protos)), 5)
            assert (j["error_code"], j["generation"], j["member_id"], j["members"]) == \
                (NOT_COORDINATOR, -1, "m-1", []), j
            s = tg.decode_sync_group(c.call(SYNC_GROUP, 3, tg.sync_group_body(3, group, 1, "m-1", [])), 3)
            assert s["error_code"] == NOT_COORDINATOR, s
            assert tg.decode_heartbeat(c.call(HEARTBEAT, 3, tg.heartbeat_body(3, group, 1, "m-1")), 3) == \
                NOT_COORDINATOR
            assert tg.decode_leave_group(c.call(LEAVE_GROUP, 3, tg.leave_group_body(3, group, [("m-1", None)])),
                                         3) == (NOT_COORDINATOR, [])
            assert ogr.offset_commit_v2(c, group, topic, {0: 5, 1: 6}) == {0: NOT_COORDINATOR, 1: NOT_COORDINATOR}
            assert ogr.offset_fetch_v1(c, group, topic, [0, 1]) == {
                0: (-1, "", NOT_COORDINATOR), 1: (-1, "", NOT_COORDINATOR)}
            assert offset_fetch_v8(c, group, topic, [0, 1]) == (NOT_COORDINATOR, {})
            (d,) = ogr.describe_groups(c, 5, [group], include_ops=True)
            assert (d["error_code"], d["state"], d["members"], d["auth_ops"]) == \
                (NOT_COORDINATOR, "", [], ogr.AUTH_OPS_OMITTED), d
            assert ogr.delete_groups(c, 2, [group]) == [(group, NOT_COORDINATOR)]

    # The coordinator serves them (the first request acquires the group).
    with gconn(coord) as c:
        j = tg.decode_join_group(c.call(JOIN_GROUP, 5, tg.join_group_body(5, group, 10000, "", protos)), 5)
        assert j["error_code"] == MEMBER_ID_REQUIRED and j["member_id"], j
        assert ogr.offset_commit_v2(c, group, topic, {0: 5, 1: 6}) == {0: NONE, 1: NONE}
        assert {p: (o, e) for p, (o, _, e) in ogr.offset_fetch_v1(c, group, topic, [0, 1]).items()} == \
            {0: (5, NONE), 1: (6, NONE)}
        assert offset_fetch_v8(c, group, topic, [0, 1]) == (NONE, {0: (5, NONE), 1: (6, NONE)})
        (d,) = ogr.describe_groups(c, 5, [group])
        assert (d["error_code"], d["state"]) == (NONE, "Empty"), d
        err, listed = ogr.list_groups(c, 4)
        assert err == NONE and (group, "", "Empty") in listed, listed
    # Held now: every broker still names it, and only it lists the group.
    for b in cluster.brokers:
        with gconn(b) as c:
            (e,) = find_coordinator(c, 3, [group])
            assert (e["error_code"], e["node_id"]) == (NONE, IDS[cluster.brokers.index(coord)]), e
            if b is not coord:
                err, listed = ogr.list_groups(c, 4)
                assert err == NONE and group not in [x[0] for x in listed], listed
    # The lease key names the coordinator.
    assert cluster.etcd.get("/kafscale/group-leases/" + group) == str(IDS[cluster.brokers.index(coord)]).encode()


def test_lookups_of_unknown_groups_acquire_nothing(cluster):
    """DescribeGroups, OffsetFetch (v1 and v8) and DeleteGroups of groups
    that do not exist, sent to their coordinator, answer as Kafka does for
    an unknown group (Dead; offset -1; GROUP_ID_NOT_FOUND) and leave no
    group lease key behind; once offsets are committed the group is found
    and can be deleted."""
    topic = "cg-lk-%s" % uuid.uuid4().hex[:6]
    create_topic(cluster, topic, 2)
    groups = ["cg-none-%s-%d" % (uuid.uuid4().hex[:6], i) for i in range(6)]
    for group in groups:
        coord = cluster.by_id(group_coordinator(group))
        with gconn(coord) as c:
            (d,) = ogr.describe_groups(c, 5, [group], include_ops=True)
            assert (d["error_code"], d["state"], d["members"]) == (NONE, "Dead", []), d
            assert ogr.offset_fetch_v1(c, group, topic, [0, 1]) == {0: (-1, "", NONE), 1: (-1, "", NONE)}
            assert offset_fetch_v8(c, group, topic, [0, 1]) == (NONE, {0: (-1, NONE), 1: (-1, NONE)})
            assert ogr.delete_groups(c, 2, [group]) == [(group, GROUP_ID_NOT_FOUND)]
    leases = cluster.etcd.keys("/kafscale/group-leases/")
    assert not [k for k in leases if any(g in str(k) for g in groups)], leases

    # Offsets committed (a commit acquires the group): found, deletable.
    group = groups[0]
    coord = cluster.by_id(group_coordinator(group))
    with gconn(coord) as c:
        assert ogr.offset_commit_v2(c, group, topic, {0: 7, 1: 8}) == {0: NONE, 1: NONE}
    with gconn(coord) as c:
        assert {p: (o, e) for p, (o, _, e) in ogr.offset_fetch_v1(c, group, topic, [0, 1]).items()} == \
            {0: (7, NONE), 1: (8, NONE)}
        assert ogr.delete_groups(c, 2, [group]) == [(group, NONE)]


# ---------------------------------------------------------------------------
# c. The coordinator dies
# ---------------------------------------------------------------------------

def consumer(cluster, group, ids, name):
    return Consumer({"bootstrap.servers": cluster.bootstrap(ids), "group.id": group, "client.id": name,
                     "enable.auto.commit": False, "auto.offset.reset": "earliest",
                     "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
                     "partition.assignment.strategy": "range", "topic.metadata.refresh.interval.ms": 1000,
                     "reconnect.backoff.max.ms": 500})


def produce(cluster, topic, ids, tag, per_partition):
    p = Producer({"bootstrap.servers": cluster.bootstrap(ids), "acks": "all", "linger.ms": 5,
                  "message.timeout.ms": 60000, "topic.metadata.refresh.interval.ms": 1000,
                  "reconnect.backoff.max.ms": 500})
    errors = []
    for part in range(PARTITIONS):
        for i in range(per_partition):
            p.produce(topic, value=b"%s-%d-%d" % (tag, part, i), partition=part,
                      on_delivery=lambda err, msg: errors.append(err) if err else None)
        p.poll(0)
    left = p.flush(60)
    assert left == 0 and not errors, (left, errors[:3])


class Members:
    """Consumers polled in turn from this thread; every record seen is kept
    as (partition, offset) -> value, with a count of repeats."""

    def __init__(self, consumers):
        self.cs = consumers
        self.seen = {}
        self.repeated = set()

    def poll(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for c in self.cs:
                for m in c.consume(num_messages=500, timeout=0.05):
                    if m.error():
                        if m.error().code() != KafkaError._PARTITION_EOF:
                            assert m.error().retriable() or not m.error().fatal(), m.error()
                        continue
                    k = (m.partition(), m.offset())
                    if k in self.seen:
                        self.repeated.add(k)
                    self.seen[k] = m.value()

    def poll_until(self, cond, what, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.poll(0.2)
            if cond():
                return
        pytest.fail("timed out after %.0f s waiting for %s (seen %d records; assignments %r)"
                    % (timeout, what() if callable(what) else what, len(self.seen), self.assignments()),
                    pytrace=False)

    def assignments(self):
        return [sorted(tp.partition for tp in c.assignment()) for c in self.cs]

    def converged(self):
        a = self.assignments()
        flat = [p for x in a for p in x]
        return sorted(flat) == list(range(PARTITIONS)) and all(a)

    def commit(self, offsets_for, timeout=CLIENT_TIMEOUT_S):
        """Each consumer commits offsets_for(its partitions) synchronously,
        retrying retriable errors."""
        for c in self.cs:
            parts = sorted(tp.partition for tp in c.assignment())
            end = time.monotonic() + timeout
            while True:
                try:
                    c.commit(offsets=offsets_for(parts), asynchronous=False)
                    break
                except KafkaException as e:
                    err = e.args[0]
                    if time.monotonic() > end or not (err.retriable() or err.code() in (
                            KafkaError.REBALANCE_IN_PROGRESS, KafkaError.NOT_COORDINATOR,
                            KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._WAIT_COORD)):
                        raise
                    self.poll(0.2)


def test_coordinator_killed_group_continues_and_commits_survive(cluster):
    victim = 2
    rest = [i for i in IDS if i != victim]
    topic = "cg-fo-%s" % uuid.uuid4().hex[:6]
    create_topic(cluster, topic)
    group = group_placed_on(victim, prefix="cg-fo")
    new_coord = group_coordinator(group, rest)
    produce(cluster, topic, rest, b"a", 50)

    members = Members([consumer(cluster, group, rest, "c1"), consumer(cluster, group, rest, "c2")])
    try:
        for c in members.cs:
            c.subscribe([topic])
        members.poll_until(lambda: len(members.seen) == PARTITIONS * 50 and members.converged(),
                           "the first 300 records and a full assignment", 40)
        members.commit(lambda parts: [TopicPartition(topic, p, 50) for p in parts])
        with gconn(cluster.by_id(victim)) as c:
            assert offset_fetch_v8(c, group, topic, list(range(PARTITIONS))) == \
                (NONE, {p: (50, NONE) for p in range(PARTITIONS)})

        members.repeated.clear()  # a rebalance while the group formed may repeat records; not counted

        cluster.kill(victim)
        t_kill = time.monotonic()
        produce(cluster, topic, rest, b"b", 50)

        # Every new record arrives (the members keep fetching while their
        # coordinator is gone), and nothing below the offsets committed on
        # the dead coordinator is delivered again.
        members.poll_until(lambda: len(members.seen) == PARTITIONS * 100,
                           "the next 300 records after the kill", FAILOVER_DEADLINE_S)
        again = sorted(k for k in members.repeated if k[1] < 50)
        assert not again, "records below the offsets committed before the kill delivered again: %r" % again[:5]

        # Once the lease of the dead broker expired, every broker names the
        # new coordinator, the members rejoin there (their first request
        # acquires the group) and the group is Stable with every partition
        # assigned once.
        state = {}

        def regrouped():
            for b in (cluster.by_id(i) for i in rest):
                with gconn(b) as c:
                    (e,) = find_coordinator(c, 3, [group])
                    if (e["error_code"], e["node_id"]) != (NONE, new_coord):
                        state["find"] = (b.port, e)
                        return False
            with gconn(cluster.by_id(new_coord)) as c:
                (d,) = ogr.describe_groups(c, 5, [group])
            state["describe"] = (d["error_code"], d["state"], len(d["members"]))
            return state["describe"] == (NONE, "Stable", 2) and members.converged()
        members.poll_until(regrouped, lambda: "the group Stable on broker %d (last seen: %r)" % (new_coord, state),
                           FAILOVER_DEADLINE_S)
        took = time.monotonic() - t_kill
        assert cluster.etcd.get("/kafscale/group-leases/" + group) == str(new_coord).encode()
        assert sorted(members.seen) == [(p, o) for p in range(PARTITIONS) for o in range(100)]
        # What was committed on the dead coordinator is what the new one
        # answers.
        with gconn(cluster.by_id(new_coord)) as c:
            assert offset_fetch_v8(c, group, topic, list(range(PARTITIONS))) == \
                (NONE, {p: (50, NONE) for p in range(PARTITIONS)})

        # Explicit commits through the new coordinator.
        members.commit(lambda parts: [TopicPartition(topic, p, 75) for p in parts])
        with gconn(cluster.by_id(new_coord)) as c:
            assert offset_fetch_v8(c, group, topic, list(range(PARTITIONS))) == \
                (NONE, {p: (75, NONE) for p in range(PARTITIONS)})
    finally:
        for c in members.cs:
            c.close()

    # A fresh consumer resumes exactly there.
    fresh = Members([consumer(cluster, group, rest, "c3")])
    try:
        fresh.cs[0].subscribe([topic])
        fresh.poll_until(lambda: len(fresh.seen) == PARTITIONS * 25 and fresh.converged(),
                         "the records after offset 75", 30)
        fresh.poll(1.0)
        assert sorted(fresh.seen) == [(p, o) for p in range(PARTITIONS) for o in range(75, 100)]
        assert all(v.startswith(b"b-%d-" % p) for (p, _), v in fresh.seen.items())
    finally:
        fresh.cs[0].close()
    print("coordinator failover: group Stable on the new coordinator %.1f s after kill -9 (lease TTL %d ms)"
          % (took, LEASE_TTL_MS))
