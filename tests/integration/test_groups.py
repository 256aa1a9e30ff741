"""Consumer groups and committed offsets (Kafka's classic group protocol).

Two halves:

* Real clients. librdkafka (confluent-kafka-python) group members run in
  subprocesses (so a member can be SIGKILLed) and report every rebalance
  callback and every change of consumer.assignment() as JSON lines; the test
  tracks each member's assignment from the callbacks (incremental lists for
  cooperative-sticky, full lists for the eager assignors) and cross-checks
  it against assignment(). A group has converged when every live member's
  tracked assignment equals its assignment(), none is empty, and together
  they cover every partition exactly once. Further: static membership,
  commits surviving a broker restart, auto.offset.reset for new groups,
  kafka-python <-> librdkafka commit interop, standalone (assign) commits.

* Raw protocol (kafka_wire.py framing, encoders below): FindCoordinator,
  JoinGroup/SyncGroup/Heartbeat/LeaveGroup error semantics, OffsetCommit and
  OffsetFetch in every version the broker serves.

The broker runs with KAFSCALE_GROUP_INITIAL_REBALANCE_DELAY_MS=300 and
KAFSCALE_GROUP_MIN_SESSION_TIMEOUT_MS=1000 (see `broker_extra_env`).
Set KAFSCALE_TEST_RDKAFKA_DEBUG=cgrp (or any librdkafka debug list) to get
librdkafka debug logs in each member's log file.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from confluent_kafka import OFFSET_INVALID, Consumer, TopicPartition

import kafka_wire as kw
import test_produce_consume as pc  # create_topic, make_producer, Acks, produce_all

INITIAL_REBALANCE_DELAY_MS = 300
MIN_SESSION_TIMEOUT_MS = 1000
KAFKA_MAX_SESSION_TIMEOUT_MS = 1800000  # Kafka's group.max.session.timeout.ms default

CLIENT_TIMEOUT_S = 15
CONVERGE_TIMEOUT_S = 30
RAW_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def broker_extra_env():
    return {
        "KAFSCALE_GROUP_INITIAL_REBALANCE_DELAY_MS": str(INITIAL_REBALANCE_DELAY_MS),
        "KAFSCALE_GROUP_MIN_SESSION_TIMEOUT_MS": str(MIN_SESSION_TIMEOUT_MS),
    }


def uniq(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


def wait_for(cond, what, timeout=CONVERGE_TIMEOUT_S, interval=0.05, diag=None):
    """Polls `cond` until it returns a truthy value; fails after `timeout`
    with `what` and, if given, the text returned by `diag()`."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            pytest.fail("timed out after %.0f s waiting for %s%s"
                        % (timeout, what, ("\n" + diag()) if diag else ""), pytrace=False)
        time.sleep(interval)


def requests_logged(broker, client_id, api_key):
    """Request lines the broker logged (debug level) for `api_key` from
    connections with `client_id`."""
    pat = re.compile(r'event=request .*\bapi_key=%d .*client_id="%s"'
                     % (api_key, re.escape(client_id)))
    return [l for l in broker.log_text().splitlines() if pat.search(l)]


# ===========================================================================
# librdkafka group members in subprocesses
# ===========================================================================

# Runs one group member: subscribes, polls, reports callbacks and
# assignment() changes as JSON lines on stdout. stdin: "close" (or EOF)
# closes the consumer and exits.
MEMBER_SCRIPT = r'''
import json, select, sys
from confluent_kafka import Consumer

conf = json.loads(sys.argv[1])
topic = sys.argv[2]

def emit(ev, **kw):
    kw["ev"] = ev
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()

def parts(lst):
    return sorted(tp.partition for tp in lst)

def on_error(err):
    emit("error", code=err.code(), name=err.name(), text=err.str(), fatal=bool(err.fatal()))

conf["error_cb"] = on_error
c = Consumer(conf)
c.subscribe([topic],
            on_assign=lambda cons, lst: emit("assign", parts=parts(lst)),
            on_revoke=lambda cons, lst: emit("revoke", parts=parts(lst)),
            on_lost=lambda cons, lst: emit("lost", parts=parts(lst)))
emit("started")
last = None
while True:
    m = c.poll(0.05)
    if m is not None and m.error():
        e = m.error()
        emit("error", code=e.code(), name=e.name(), text=e.str(), fatal=bool(e.fatal()))
    cur = parts(c.assignment())
    if cur != last:
        last = cur
        emit("assignment", parts=cur)
    if select.select([sys.stdin], [], [], 0)[0]:
        cmd = sys.stdin.readline().strip()
        if cmd in ("close", ""):
            c.close()
            emit("closed")
            break
'''


class ProcMember:
    """A librdkafka group member in a subprocess (see MEMBER_SCRIPT)."""

    def __init__(self, name, conf, topic, log_dir):
        self.name = name
        self.lock = threading.Lock()
        self.events = []            # (monotonic time, event)
        self.tracked = set()        # assignment from the callbacks
        self.assignment = None      # last consumer.assignment() reported
        self.callbacks = 0          # on_assign + on_revoke + on_lost calls
        self.errors = []
        self.closed = False
        self.log_path = log_dir / ("member-%s.log" % name)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MEMBER_SCRIPT, json.dumps(conf), topic],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.events.append((time.monotonic(), ev))
                kind = ev["ev"]
                if kind == "assign":
                    self.callbacks += 1
                    self.tracked |= set(ev["parts"])
                elif kind in ("revoke", "lost"):
                    self.callbacks += 1
                    self.tracked -= set(ev["parts"])
                elif kind == "assignment":
                    self.assignment = frozenset(ev["parts"])
                elif kind == "error":
                    self.errors.append(ev)
                elif kind == "closed":
                    self.closed = True

    def snapshot(self):
        with self.lock:
            return frozenset(self.tracked), self.assignment, self.callbacks

    def callback_events(self):
        with self.lock:
            return [e for _, e in self.events if e["ev"] in ("assign", "revoke", "lost")]

    def fatal_errors(self):
        with self.lock:
            return [e for e in self.errors if e.get("fatal")]

    def describe(self):
        tracked, assignment, n = self.snapshot()
        with self.lock:
            errs = self.errors[-3:]
        return ("  %s: alive=%s tracked=%s assignment=%s callbacks=%d recent_errors=%s log=%s"
                % (self.name, self.proc.poll() is None, sorted(tracked),
                   None if assignment is None else sorted(assignment), n, errs, self.log_path))

    def close(self, timeout=30):
        """Asks the member to close its consumer (LeaveGroup unless static)."""
        self.proc.stdin.write(b"close\n")
        self.proc.stdin.flush()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("member %s did not close within %d s (log %s)"
                        % (self.name, timeout, self.log_path), pytrace=False)
        self._reader.join(5)
        assert rc == 0 and self.closed, "member %s: exit %s, closed=%s (log %s)" % (
            self.name, rc, self.closed, self.log_path)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self):
        if self.proc.poll() is None:
            self.kill()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self._reader.join(5)
        self._log.close()


def member_conf(broker, group, strategy, client_id, session_ms=10000, heartbeat_ms=500,
                instance_id=None):
    conf = {
        "bootstrap.servers": broker.bootstrap,
        "group.id": group,
        "client.id": client_id,
        "partition.assignment.strategy": strategy,
        "session.timeout.ms": session_ms,
        "heartbeat.interval.ms": heartbeat_ms,
        "max.poll.interval.ms": 30000,   # also the rebalance timeout
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }
    if instance_id is not None:
        conf["group.instance.id"] = instance_id
    if os.environ.get("KAFSCALE_TEST_RDKAFKA_DEBUG"):
        conf["debug"] = os.environ["KAFSCALE_TEST_RDKAFKA_DEBUG"]
    return conf


@pytest.fixture
def spawn(broker, tmp_path):
    """spawn(name, group, topic, strategy, **member_conf kwargs) -> ProcMember.
    Members still running at teardown are SIGKILLed."""
    members = []

    def make(name, group, topic, strategy, **kwargs):
        kwargs.setdefault("session_ms", 10000)
        conf = member_conf(broker, group, strategy, client_id=name, **kwargs)
        m = ProcMember(name, conf, topic, tmp_path)
        members.append(m)
        return m

    yield make
    for m in members:
        m.terminate()


def converged(members, n_parts):
    """{name: sorted partitions} if the live `members` own every partition
    exactly once (callback-tracked == assignment(), none empty); else None."""
    out = {}
    owned = []
    for m in members:
        tracked, assignment, _ = m.snapshot()
        if assignment is None or tracked != assignment or not tracked:
            return None
        out[m.name] = sorted(tracked)
        owned.extend(tracked)
    if sorted(owned) != list(range(n_parts)):
        return None
    return out


def wait_converged(members, n_parts, what, timeout=CONVERGE_TIMEOUT_S):
    res = wait_for(lambda: converged(members, n_parts),
                   "%s: %d members to own %d partitions exactly once" % (what, len(members), n_parts),
                   timeout=timeout,
                   diag=lambda: "\n".join(m.describe() for m in members))
    for m in members:
        assert not m.fatal_errors(), "%s: fatal client error %s" % (m.name, m.fatal_errors())
    return res


STRATEGIES = ["range", "roundrobin", "cooperative-sticky"]


@pytest.mark.parametrize("n_members", [1, 3, 5])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_group_assigns_every_partition_once(broker, spawn, strategy, n_members):
    topic = uniq("grp")
    pc.create_topic(broker, topic, 6)
    group = uniq("g")
    members = [spawn("m%d" % i, group, topic, strategy) for i in range(n_members)]
    wait_converged(members, 6, "%d members started together" % n_members)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rebalance_on_join_leave_and_kill(broker, spawn, strategy):
    """1 member, +2 joining, +2 joining, one leaves with close(), one is
    SIGKILLed (evicted by its 2 s session timeout): every step converges."""
    n = 12
    topic = uniq("reb")
    pc.create_topic(broker, topic, n)
    group = uniq("g")

    m0 = spawn("m0", group, topic, strategy)
    wait_converged([m0], n, "first member")

    m1 = spawn("m1", group, topic, strategy)
    m2 = spawn("m2", group, topic, strategy)
    wait_converged([m0, m1, m2], n, "two members joined")

    m3 = spawn("m3", group, topic, strategy)
    # The victim has a short session; the others 10 s, so a clean leave that
    # the broker ignored would only converge after 10 s of session expiry.
    victim = spawn("victim", group, topic, strategy, session_ms=2000, heartbeat_ms=300)
    wait_converged([m0, m1, m2, m3, victim], n, "two more members joined")

    t0 = time.monotonic()
    m1.close()
    wait_converged([m0, m2, m3, victim], n, "m1 left with close()")
    elapsed = time.monotonic() - t0
    assert elapsed < 8.0, ("rebalance after a clean LeaveGroup took %.1f s; the leaver's "
                           "session timeout is 10 s, so LeaveGroup seems ignored" % elapsed)
    assert requests_logged(broker, "m1", 13), "m1's close() sent no LeaveGroup"

    t0 = time.monotonic()
    victim.kill()
    wait_converged([m0, m2, m3], n, "victim SIGKILLed")
    elapsed = time.monotonic() - t0
    assert elapsed >= 1.5, ("the group converged %.1f s after the kill, before the victim's "
                            "2 s session could expire" % elapsed)


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_static_member_restart_causes_no_rebalance(broker, spawn, strategy):
    """Static members (group.instance.id): a member closed without leaving
    and restarted within its session timeout gets its old partitions back,
    and the other members see no rebalance. Done for a follower and then for
    the group leader (the first member to join stays leader)."""
    n = 6
    topic = uniq("static")
    pc.create_topic(broker, topic, n)
    group = uniq("g")

    def start(name, instance):
        return spawn(name, group, topic, strategy, instance_id=instance,
                     session_ms=10000, heartbeat_ms=300)

    s0 = start("s0", "inst-0")
    wait_converged([s0], n, "first static member")
    members = [s0, start("s1", "inst-1"), start("s2", "inst-2")]
    before = wait_converged(members, n, "three static members")

    for restarted_name, instance in (("s2", "inst-2"), ("s0", "inst-0")):
        old = next(m for m in members if m.name == restarted_name)
        others = [m for m in members if m is not old]
        counts = {m.name: m.snapshot()[2] for m in others}
        old_parts = before[old.name]

        old.close()  # static: no LeaveGroup
        assert not requests_logged(broker, old.name, 13), (
            "librdkafka sent LeaveGroup from static member %s on close(); the test's "
            "premise does not hold" % old.name)
        new = start(restarted_name + "-restarted", instance)
        members = others + [new]
        wait_for(lambda: new.snapshot()[0] == new.snapshot()[1] == frozenset(old_parts),
                 "restarted static member %s to get its old partitions %s" % (instance, old_parts),
                 timeout=CONVERGE_TIMEOUT_S,
                 diag=lambda: "\n".join(m.describe() for m in members))
        # A rebalance started by the broker would reach the others through
        # their heartbeats (every 300 ms): watch well past that.
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:
            changed = {m.name: m.callback_events()[counts[m.name]:] for m in others
                       if m.snapshot()[2] != counts[m.name]}
            assert not changed, ("static member %s restarted, and other members saw "
                                 "rebalance callbacks: %s" % (instance, changed))
            time.sleep(0.05)
        after = converged(members, n)
        assert after is not None, "\n".join(m.describe() for m in members)
        for m in others:
            assert after[m.name] == before[m.name], (m.name, before, after)
        assert after[new.name] == old_parts
        before = after


# ===========================================================================
# In-process librdkafka consumers: commits, restart, offset reset
# ===========================================================================

def group_consumer(broker, group, **conf):
    c = {"bootstrap.servers": broker.bootstrap, "group.id": group,
         "enable.auto.commit": False, "auto.offset.reset": "earliest",
         "enable.partition.eof": False, "session.timeout.ms": 10000,
         "heartbeat.interval.ms": 500, "max.poll.interval.ms": 30000}
    c.update(conf)
    return Consumer(c)


def produce_keyed(broker, topic, partitions, per_round, rounds, tag):
    """Produces `rounds` x `per_round` records to each partition, each round
    flushed separately (several batches per partition). Returns
    {partition: [key at offset 0, 1, ...]}."""
    prod = pc.make_producer(broker, linger_ms=0)
    acks = pc.Acks()
    for r in range(rounds):
        for p in range(partitions):
            recs = [(b"%s-p%d-r%d-%d" % (tag, p, r, i), b"v%d" % i, None, None)
                    for i in range(per_round)]
            pc.produce_all(prod, topic, recs, acks, partition=p)
    assert not acks.errors, acks.errors[:3]
    log = {}
    for p in range(partitions):
        offs = sorted(o for (pp, o) in acks.acked if pp == p)
        assert offs == list(range(per_round * rounds)), "partition %d offsets %r" % (p, offs[:10])
        log[p] = [acks.acked[(p, o)] for o in offs]
    return log


def consume_to_ends(consumer, ends, timeout=CONVERGE_TIMEOUT_S):
    """Polls a subscribed/assigned consumer until every partition in `ends`
    ({partition: end offset}) delivered offset end-1. Returns {partition:
    [(offset, key)]} in delivery order."""
    got = {p: [] for p in ends}
    pending = {p for p, e in ends.items() if e > 0}
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() >= deadline:
            pytest.fail("consumer timed out: pending %s, got %s"
                        % (sorted(pending), {p: len(v) for p, v in got.items()}), pytrace=False)
        for m in consumer.consume(num_messages=500, timeout=0.2):
            assert not m.error(), "consumer error: %s" % m.error()
            got[m.partition()].append((m.offset(), m.key()))
            if m.offset() >= ends[m.partition()] - 1:
                pending.discard(m.partition())
    return got


def committed_map(consumer, topic, partitions):
    res = consumer.committed([TopicPartition(topic, p) for p in partitions],
                             timeout=CLIENT_TIMEOUT_S)
    for tp in res:
        assert tp.error is None, "committed(): %s" % tp.error
    return {tp.partition: tp.offset for tp in res}


def test_commit_survives_broker_restart(broker):
    topic = uniq("resume")
    pc.create_topic(broker, topic, 3)
    log = produce_keyed(broker, topic, 3, per_round=10, rounds=8, tag=b"rs")
    ends = {p: len(keys) for p, keys in log.items()}
    mids = {0: 23, 1: 41, 2: 67}
    group = uniq("g")

    # A processes [0, mid) of each partition, storing the offsets of what it
    # processed, commits them synchronously and closes.
    a = group_consumer(broker, group, **{"enable.auto.offset.store": False})
    try:
        a.subscribe([topic])
        processed = {p: [] for p in mids}
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        while any(len(processed[p]) < mids[p] for p in mids):
            assert time.monotonic() < deadline, "consumer A stalled: %r" % {
                p: len(v) for p, v in processed.items()}
            for m in a.consume(num_messages=100, timeout=0.2):
                assert not m.error(), m.error()
                p = m.partition()
                if m.offset() < mids[p] and m.offset() not in processed[p]:
                    processed[p].append(m.offset())
                    a.store_offsets(message=m)
        for p in mids:
            assert processed[p] == list(range(mids[p])), "partition %d delivered out of order" % p
        res = a.commit(asynchronous=False)
        assert {tp.partition: tp.offset for tp in res if tp.error is None} == mids, \
            [(tp.partition, tp.offset, tp.error) for tp in res]
        assert committed_map(a, topic, range(3)) == mids
    finally:
        a.close()

    broker.restart()

    b = group_consumer(broker, group)
    try:
        assert committed_map(b, topic, range(3)) == mids, "committed offsets lost in the restart"
        b.subscribe([topic])
        got = consume_to_ends(b, ends)
        for p in range(3):
            offsets = [o for o, _ in got[p]]
            assert offsets and offsets[0] == mids[p], (
                "partition %d: resumed at %s, committed %d" % (p, offsets[:1], mids[p]))
            assert offsets == list(range(mids[p], ends[p])), "partition %d: %r" % (p, offsets[:10])
            assert [k for _, k in got[p]] == log[p][mids[p]:]
    finally:
        b.close()


def test_new_group_auto_offset_reset_latest_and_earliest(broker):
    topic = uniq("reset")
    pc.create_topic(broker, topic, 1)
    prod = pc.make_producer(broker, linger_ms=0)
    acks = pc.Acks()
    before = [(b"before-%d" % i, b"x", None, None) for i in range(20)]
    pc.produce_all(prod, topic, before, acks, partition=0)
    assert sorted(o for _, o in acks.acked) == list(range(20))

    client_id = uniq("latest")
    lat = group_consumer(broker, uniq("g-latest"), **{"auto.offset.reset": "latest",
                                                      "client.id": client_id})
    try:
        lat.subscribe([topic])

        # Joined, offset reset done and fetching: its first Fetch request.
        def fetching():
            m = lat.poll(0.1)
            if m is not None:
                assert not m.error(), "consumer error: %s" % m.error()
                pytest.fail("latest consumer of a new group read a record produced before "
                            "it joined: offset %d key %r" % (m.offset(), m.key()), pytrace=False)
            return lat.assignment() and requests_logged(broker, client_id, 1)
        wait_for(fetching, "the latest consumer to be assigned and fetching")

        after = [(b"after-%d" % i, b"y", None, None) for i in range(5)]
        pc.produce_all(prod, topic, after, acks, partition=0)
        got = consume_to_ends(lat, {0: 25})
        assert got[0] == [(20 + i, b"after-%d" % i) for i in range(5)], got[0]
    finally:
        lat.close()

    ear = group_consumer(broker, uniq("g-earliest"), **{"auto.offset.reset": "earliest"})
    try:
        ear.subscribe([topic])
        got = consume_to_ends(ear, {0: 25})
        assert [o for o, _ in got[0]] == list(range(25))
        assert [k for _, k in got[0]] == [k for k, _, _, _ in before] + [b"after-%d" % i
                                                                         for i in range(5)]
    finally:
        ear.close()


def test_kafka_python_commit_then_librdkafka_resumes(broker):
    from kafka import KafkaConsumer, OffsetAndMetadata
    from kafka import TopicPartition as KTP

    topic = uniq("interop")
    pc.create_topic(broker, topic, 2)
    log = produce_keyed(broker, topic, 2, per_round=10, rounds=4, tag=b"kp")
    ends = {p: len(keys) for p, keys in log.items()}
    mids = {0: 13, 1: 29}
    group = uniq("g")

    kc = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group,
                       enable_auto_commit=False, auto_offset_reset="earliest",
                       session_timeout_ms=10000, heartbeat_interval_ms=500,
                       request_timeout_ms=30000, api_version_auto_timeout_ms=10000)
    try:
        kc.subscribe([topic])
        processed = {p: [] for p in mids}
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        while any(len(processed[p]) < mids[p] for p in mids):
            assert time.monotonic() < deadline, "kafka-python consumer stalled: %r (assignment %r)" % (
                {p: len(v) for p, v in processed.items()}, kc.assignment())
            for tp, recs in kc.poll(timeout_ms=200).items():
                for r in recs:
                    if r.offset < mids[tp.partition] and r.offset not in processed[tp.partition]:
                        processed[tp.partition].append(r.offset)
                        assert r.key == log[tp.partition][r.offset]
        assert kc.assignment() == {KTP(topic, 0), KTP(topic, 1)}
        for p in mids:
            assert processed[p] == list(range(mids[p]))
        kc.commit({KTP(topic, p): OffsetAndMetadata(mids[p], "kp-%d" % p) for p in mids})
        for p in mids:
            assert kc.committed(KTP(topic, p)) == mids[p]
    finally:
        kc.close()

    c = group_consumer(broker, group)
    try:
        assert committed_map(c, topic, range(2)) == mids
        c.subscribe([topic])
        got = consume_to_ends(c, ends)
        for p in range(2):
            assert [o for o, _ in got[p]] == list(range(mids[p], ends[p])), (p, got[p][:3])
            assert [k for _, k in got[p]] == log[p][mids[p]:]
    finally:
        c.close()


def test_standalone_consumer_commits(broker):
    topic = uniq("standalone")
    pc.create_topic(broker, topic, 3)
    log = produce_keyed(broker, topic, 3, per_round=10, rounds=1, tag=b"sa")
    group = uniq("g")
    tps = [TopicPartition(topic, p) for p in range(3)]

    c1 = group_consumer(broker, group)
    try:
        c1.assign(tps)
        res = c1.commit(offsets=[TopicPartition(topic, 0, 5), TopicPartition(topic, 1, 7)],
                        asynchronous=False)
        assert sorted((tp.partition, tp.offset, tp.error) for tp in res) == [
            (0, 5, None), (1, 7, None)]
        assert committed_map(c1, topic, range(3)) == {0: 5, 1: 7, 2: OFFSET_INVALID}
    finally:
        c1.close()

    c2 = group_consumer(broker, group)
    try:
        # OFFSET_INVALID (-1001) is librdkafka's "broker answered -1".
        assert committed_map(c2, topic, range(3)) == {0: 5, 1: 7, 2: OFFSET_INVALID}
        # Assigned without an offset, it starts from the committed one.
        c2.assign([TopicPartition(topic, 0)])
        got = consume_to_ends(c2, {0: 10})
        assert got[0] == [(o, log[0][o]) for o in range(5, 10)]
    finally:
        c2.close()


# ===========================================================================
# Raw protocol
# ===========================================================================

OFFSET_COMMIT = 8
OFFSET_FETCH = 9
FIND_COORDINATOR = 10
JOIN_GROUP = 11
HEARTBEAT = 12
LEAVE_GROUP = 13
SYNC_GROUP = 14

FIRST_FLEXIBLE = {OFFSET_COMMIT: 8, OFFSET_FETCH: 6, FIND_COORDINATOR: 3, JOIN_GROUP: 6,
                  HEARTBEAT: 4, LEAVE_GROUP: 4, SYNC_GROUP: 4}

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
MEMBER_ID_REQUIRED = 79
FENCED_INSTANCE_ID = 82


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

    def int8(self, v):
        self.w.int8(v)
        return self

    def bool(self, v):
        self.w.bool(v)
        return self

    def int16(self, v):
        self.w.int16(v)
        return self

    def int32(self, v):
        self.w.int32(v)
        return self

    def int64(self, v):
        self.w.int64(v)
        return self

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
        return n or 0

    def tags(self):
        if self.flex:
            self.r.skip_tagged_fields()


class GroupConn(kw.Conn):
    """kw.Conn with the request/response header versions of the group APIs
    (kafka_wire knows only the APIs of the produce/fetch path)."""

    def send_req(self, api_key, version, body):
        corr = self.next_corr
        self.next_corr += 1
        kw.send_all(self.sock, kw.request_frame(api_key, version, corr, body, self.client_id,
                                                header_version=2 if flexible(api_key, version) else 1))
        return corr

    def recv_resp(self, api_key, version, corr, timeout=None):
        r = kw.Reader(kw.recv_frame(self.sock, self.timeout if timeout is None else timeout))
        got = r.int32()
        if got != corr:
            raise kw.ProtocolError("correlation id %d, expected %d" % (got, corr))
        flex = flexible(api_key, version)
        if flex:
            r.skip_tagged_fields()
        return R(r, flex)

    def call(self, api_key, version, body, timeout=None):
        return self.recv_resp(api_key, version, self.send_req(api_key, version, body), timeout)


@pytest.fixture
def open_conn(broker):
    opened = []

    def make(client_id="groups-raw"):
        c = GroupConn(broker.host, broker.port, timeout=RAW_TIMEOUT_S, client_id=client_id)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


# --- FindCoordinator -------------------------------------------------------

def find_coordinator_body(v, keys, key_type=0):
    w = W(flexible(FIND_COORDINATOR, v))
    if v <= 3:
        assert len(keys) == 1
        w.str(keys[0])
        if v >= 1:
            w.int8(key_type)
    else:
        w.int8(key_type).alen(len(keys))
        for k in keys:
            w.str(k)
    return w.tags().bytes()


def decode_find_coordinator(r, v):
    """[{key, node_id, host, port, error_code, error_message}] (key None for v0-3)."""
    if v >= 1:
        r.int32()  # throttle
    out = []
    if v <= 3:
        e = {"key": None, "error_code": r.int16()}
        e["error_message"] = r.str() if v >= 1 else None
        e["node_id"], e["host"], e["port"] = r.int32(), r.str(), r.int32()
        out.append(e)
    else:
        for _ in range(r.alen()):
            e = {"key": r.str(), "node_id": r.int32(), "host": r.str(), "port": r.int32(),
                 "error_code": r.int16(), "error_message": r.str()}
            r.tags()
            out.append(e)
    r.tags()
    r.expect_end()
    return out


def broker_node(conn):
    """(node_id, host, port) of the (only) broker, from Metadata v1."""
    r = conn.call(kw.METADATA, 1, kw.metadata_body(1, []))
    md = kw.decode_metadata(r.r, 1)
    assert len(md["brokers"]) == 1, md["brokers"]
    node, host, port, _ = md["brokers"][0]
    return node, host, port


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_find_coordinator_v0_v3(broker, open_conn, version):
    c = open_conn()
    node, host, port = broker_node(c)
    assert (host, port) == (broker.host, broker.port)
    (e,) = decode_find_coordinator(
        c.call(FIND_COORDINATOR, version, find_coordinator_body(version, [uniq("g")])), version)
    assert e["error_code"] == NONE, e
    assert (e["node_id"], e["host"], e["port"]) == (node, host, port), e


@pytest.mark.parametrize("version", [4, 5, 6])
def test_find_coordinator_batched_keys(broker, open_conn, version):
    c = open_conn()
    node, host, port = broker_node(c)
    keys = [uniq("ga"), uniq("gb"), uniq("gc")]
    res = decode_find_coordinator(c.call(FIND_COORDINATOR, version,
                                         find_coordinator_body(version, keys)), version)
    assert sorted(e["key"] for e in res) == sorted(keys), res
    for e in res:
        assert e["error_code"] == NONE, e
        assert (e["node_id"], e["host"], e["port"]) == (node, host, port), e


@pytest.mark.parametrize("version", [1, 3, 4, 6])
def test_find_coordinator_transaction_key_is_an_error(broker, open_conn, version):
    c = open_conn()
    res = decode_find_coordinator(c.call(FIND_COORDINATOR, version,
                                         find_coordinator_body(version, ["txn-1"], key_type=1)),
                                  version)
    assert len(res) == 1, res
    e = res[0]
    # TRANSACTIONAL_ID_AUTHORIZATION_FAILED: fatal for clients at once
    # (transactions are not supported), with a message saying so.
    assert e["error_code"] == 53, e
    assert "not supported" in e["error_message"], "no error message: %r" % e
    if version >= 4:
        assert e["key"] == "txn-1"


# --- JoinGroup / SyncGroup / Heartbeat / LeaveGroup -----------------------

def join_group_body(v, group, session_ms, member_id, protocols, protocol_type="consumer",
                    rebalance_ms=10000, instance_id=None, reason=None):
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
    if v >= 8:
        w.str(reason)
    return w.tags().bytes()


def decode_join_group(r, v):
    out = {"throttle_ms": r.int32() if v >= 2 else None,
           "error_code": r.int16(), "generation": r.int32()}
    out["protocol_type"] = r.str() if v >= 7 else None
    out["protocol_name"] = r.str()
    out["leader"] = r.str()
    out["skip_assignment"] = r.bool() if v >= 9 else None
    out["member_id"] = r.str()
    out["members"] = []
    for _ in range(r.alen()):
        mid = r.str()
        iid = r.str() if v >= 5 else None
        meta = r.blob()
        r.tags()
        out["members"].append((mid, iid, meta))
    r.tags()
    r.expect_end()
    return out


def sync_group_body(v, group, generation, member_id, assignments, instance_id=None,
                    protocol_type="consumer", protocol_name="range"):
    w = W(flexible(SYNC_GROUP, v))
    w.str(group).int32(generation).str(member_id)
    if v >= 3:
        w.str(instance_id)
    if v >= 5:
        w.str(protocol_type).str(protocol_name)
    w.alen(len(assignments))
    for mid, a in assignments:
        w.str(mid).blob(a).tags()
    return w.tags().bytes()


def decode_sync_group(r, v):
    out = {"throttle_ms": r.int32() if v >= 1 else None, "error_code": r.int16()}
    if v >= 5:
        out["protocol_type"], out["protocol_name"] = r.str(), r.str()
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


def leave_group_body(v, group, members):
    """members: [(member_id, instance_id)]; v0-2 take exactly one."""
    w = W(flexible(LEAVE_GROUP, v))
    w.str(group)
    if v <= 2:
        ((mid, _),) = members
        w.str(mid)
    else:
        w.alen(len(members))
        for mid, iid in members:
            w.str(mid).str(iid)
            if v >= 5:
                w.str("test leaves")
            w.tags()
    return w.tags().bytes()


def decode_leave_group(r, v):
    """(error_code, [(member_id, instance_id, error_code)])."""
    if v >= 1:
        r.int32()
    err = r.int16()
    members = []
    if v >= 3:
        for _ in range(r.alen()):
            m = (r.str(), r.str(), r.int16())
            r.tags()
            members.append(m)
    r.tags()
    r.expect_end()
    return err, members


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


# (JoinGroup, SyncGroup, Heartbeat) versions used together, as clients pair them.
FLAVORS = {0: (0, 0, 0), 1: (1, 0, 0), 2: (2, 1, 1), 3: (3, 1, 1), 4: (4, 2, 2),
           5: (5, 3, 3), 6: (6, 4, 4), 7: (7, 4, 4), 8: (8, 5, 4), 9: (9, 5, 4)}


class RawMember:
    """One group member on its own connection (a pending JoinGroup blocks the
    connection, so members never share one)."""

    def __init__(self, conn, group, join_v, protocols, protocol_type="consumer",
                 session_ms=10000, rebalance_ms=10000, instance_id=None):
        self.conn = conn
        self.group = group
        self.join_v, self.sync_v, self.hb_v = FLAVORS[join_v]
        self.protocols = protocols
        self.protocol_type = protocol_type
        self.session_ms = session_ms
        self.rebalance_ms = rebalance_ms
        self.instance_id = instance_id
        self.member_id = ""
        self.generation = -1

    def send_join(self):
        return self.conn.send_req(JOIN_GROUP, self.join_v, join_group_body(
            self.join_v, self.group, self.session_ms, self.member_id, self.protocols,
            self.protocol_type, self.rebalance_ms, self.instance_id, reason="test"))

    def recv_join(self, corr, timeout=RAW_TIMEOUT_S):
        res = decode_join_group(self.conn.recv_resp(JOIN_GROUP, self.join_v, corr, timeout),
                                self.join_v)
        if res["error_code"] in (NONE, MEMBER_ID_REQUIRED):
            self.member_id = res["member_id"]
        if res["error_code"] == NONE:
            self.generation = res["generation"]
        return res

    def join(self, timeout=RAW_TIMEOUT_S):
        return self.recv_join(self.send_join(), timeout)

    def get_member_id(self):
        """JoinGroup v4+ without an instance id: the first join is answered
        MEMBER_ID_REQUIRED with the id to join with."""
        res = self.join()
        assert res["error_code"] == MEMBER_ID_REQUIRED, res
        assert res["member_id"], "MEMBER_ID_REQUIRED without a member id: %r" % res
        assert res["generation"] == -1 and res["members"] == [], res
        return res

    def send_sync(self, assignments, generation=None, member_id=None):
        return self.conn.send_req(SYNC_GROUP, self.sync_v, sync_group_body(
            self.sync_v, self.group, self.generation if generation is None else generation,
            self.member_id if member_id is None else member_id, assignments, self.instance_id,
            self.protocol_type, self.protocols[0][0]))

    def recv_sync(self, corr, timeout=RAW_TIMEOUT_S):
        return decode_sync_group(self.conn.recv_resp(SYNC_GROUP, self.sync_v, corr, timeout),
                                 self.sync_v)

    def sync(self, assignments, **kwargs):
        return self.recv_sync(self.send_sync(assignments, **kwargs))

    def heartbeat(self, generation=None, member_id=None, instance_id=False):
        iid = self.instance_id if instance_id is False else instance_id
        return decode_heartbeat(self.conn.call(HEARTBEAT, self.hb_v, heartbeat_body(
            self.hb_v, self.group, self.generation if generation is None else generation,
            self.member_id if member_id is None else member_id, iid)), self.hb_v)


def protocols_for(topic, tag):
    """Two consumer protocols with distinct, recognisable metadata."""
    return [("range", subscription([topic], b"\x00\xffrange-" + tag.encode())),
            ("roundrobin", subscription([topic], b"\x01\xferr-" + tag.encode()))]


@pytest.mark.parametrize("join_v", [4, 5, 6, 7, 8, 9])
def test_join_sync_heartbeat(broker, open_conn, join_v):
    group = uniq("raw")
    protos = protocols_for("t-raw", "solo")
    m = RawMember(open_conn(), group, join_v, protos)
    first = m.get_member_id()

    t0 = time.monotonic()
    res = m.join()
    elapsed = time.monotonic() - t0
    assert res["error_code"] == NONE, res
    assert res["member_id"] == first["member_id"], res
    assert res["generation"] == 1, res
    assert res["leader"] == m.member_id, res
    assert res["protocol_name"] == "range", res
    if join_v >= 7:
        assert res["protocol_type"] == "consumer", res
    if join_v >= 9:
        assert res["skip_assignment"] is False, res
    # The leader gets the member list with the metadata of the chosen protocol, byte for byte.
    assert res["members"] == [(m.member_id, None, protos[0][1])], res
    # A new group waits group.initial.rebalance.delay.ms for more members.
    assert elapsed >= INITIAL_REBALANCE_DELAY_MS / 1000.0 * 0.8, elapsed
    assert elapsed < 5.0, elapsed

    assign = assignment({"t-raw": [0, 2, 4]}, b"\x00leader-chose-this\xff")
    s = m.sync([(m.member_id, assign)])
    assert s["error_code"] == NONE, s
    assert s["assignment"] == assign, s
    if m.sync_v >= 5:
        assert (s["protocol_type"], s["protocol_name"]) == ("consumer", "range"), s

    assert m.heartbeat() == NONE
    assert m.heartbeat(generation=2) == ILLEGAL_GENERATION
    assert m.heartbeat(generation=0) == ILLEGAL_GENERATION
    assert m.heartbeat(member_id="no-such-member") == UNKNOWN_MEMBER_ID
    assert m.sync([], generation=2)["error_code"] == ILLEGAL_GENERATION
    assert m.sync([], member_id="no-such-member")["error_code"] == UNKNOWN_MEMBER_ID
    # Heartbeat for a group that does not exist.
    assert decode_heartbeat(m.conn.call(HEARTBEAT, m.hb_v, heartbeat_body(
        m.hb_v, uniq("nonexistent"), 1, m.member_id)), m.hb_v) == UNKNOWN_MEMBER_ID
    # Still stable and in generation 1.
    assert m.heartbeat() == NONE
    assert m.sync([])["assignment"] == assign


@pytest.mark.parametrize("join_v", [0, 1, 2, 3])
def test_join_v0_v3_needs_no_member_id_round_trip(broker, open_conn, join_v):
    group = uniq("raw-old")
    protos = protocols_for("t-old", "old")
    m = RawMember(open_conn(), group, join_v, protos)
    res = m.join()
    assert res["error_code"] == NONE, res
    assert res["member_id"] and res["leader"] == res["member_id"], res
    assert res["generation"] == 1, res
    assert res["members"] == [(res["member_id"], None, protos[0][1])], res
    assign = assignment({"t-old": [0]})
    assert m.sync([(m.member_id, assign)])["assignment"] == assign
    assert m.heartbeat() == NONE


@pytest.mark.parametrize("session_ms", [MIN_SESSION_TIMEOUT_MS - 1, 500,
                                        KAFKA_MAX_SESSION_TIMEOUT_MS + 1])
def test_join_session_timeout_out_of_range(broker, open_conn, session_ms):
    group = uniq("raw-st")
    for join_v in (0, 4, 5, 9):
        m = RawMember(open_conn(), group, join_v, protocols_for("t", "st"), session_ms=session_ms)
        res = m.join()
        assert res["error_code"] == INVALID_SESSION_TIMEOUT, (join_v, res)
    # None of them became a member: a valid join forms generation 1 alone.
    ok = RawMember(open_conn(), group, 5, protocols_for("t", "ok"))
    ok.get_member_id()
    res = ok.join()
    assert res["error_code"] == NONE and res["generation"] == 1, res
    assert [mid for mid, _, _ in res["members"]] == [ok.member_id], res


def test_join_inconsistent_group_protocol(broker, open_conn):
    group = uniq("raw-proto")
    a = RawMember(open_conn(), group, 5, [("range", subscription(["t"], b"a"))])
    a.get_member_id()
    assert a.join()["error_code"] == NONE
    assert a.sync([(a.member_id, assignment({"t": [0]}))])["error_code"] == NONE

    def join_rejected(member):
        res = member.join()
        if res["error_code"] == MEMBER_ID_REQUIRED:  # Kafka checks protocols first
            res = member.join()
        return res

    # No protocol in common.
    b = RawMember(open_conn(), group, 5, [("roundrobin", subscription(["t"], b"b"))])
    res = join_rejected(b)
    assert res["error_code"] == INCONSISTENT_GROUP_PROTOCOL, res
    # Same protocol name, different protocol type.
    c = RawMember(open_conn(), group, 5, [("range", subscription(["t"], b"c"))],
                  protocol_type="connect")
    res = join_rejected(c)
    assert res["error_code"] == INCONSISTENT_GROUP_PROTOCOL, res
    # Neither joined: the group is still stable with only A.
    assert a.heartbeat() == NONE
    res = a.join()  # leader rejoins: a new generation, alone
    assert res["error_code"] == NONE and res["generation"] == 2, res
    assert [mid for mid, _, _ in res["members"]] == [a.member_id], res


def form_group(members, topic):
    """Joins `members` (fresh RawMembers, v4+) into one generation and syncs
    them. Returns (leader, join responses by member id, assignments)."""
    for m in members:
        m.get_member_id()
    corrs = [m.send_join() for m in members]
    joined = {}
    for m, corr in zip(members, corrs):
        res = m.recv_join(corr)
        assert res["error_code"] == NONE, (m.member_id, res)
        joined[m.member_id] = res
    gens = {r["generation"] for r in joined.values()}
    leaders = {r["leader"] for r in joined.values()}
    assert gens == {1} and len(leaders) == 1, joined
    (leader_id,) = leaders
    leader = next(m for m in members if m.member_id == leader_id)
    want = sorted((m.member_id, m.protocols[0][1]) for m in members)
    got = sorted((mid, meta) for mid, _, meta in joined[leader_id]["members"])
    assert got == want, "leader's member list %r, expected %r" % (got, want)
    for mid, res in joined.items():
        if mid != leader_id:
            assert res["members"] == [], "a follower got the member list: %r" % res
    assigns = {m.member_id: assignment({topic: [i]}, b"for-" + m.member_id.encode())
               for i, m in enumerate(members)}
    followers = [m for m in members if m is not leader]
    corrs = [(m, m.send_sync([])) for m in followers]
    corrs.append((leader, leader.send_sync(sorted(assigns.items()))))
    for m, corr in corrs:
        s = m.recv_sync(corr)
        assert s["error_code"] == NONE, (m.member_id, s)
        assert s["assignment"] == assigns[m.member_id], (m.member_id, s)
    for m in members:
        assert m.heartbeat() == NONE
    return leader, joined, assigns


@pytest.mark.parametrize("leave_v", [3, 4, 5])
def test_leave_group_batch_removes_named_members(broker, open_conn, leave_v):
    group = uniq("raw-leave")
    members = [RawMember(open_conn(), group, 5, protocols_for("t", "m%d" % i)) for i in range(3)]
    form_group(members, "t")
    a, b, c = members

    r = open_conn().call(LEAVE_GROUP, leave_v, leave_group_body(
        leave_v, group, [(a.member_id, None), (b.member_id, None), ("no-such-member", None)]))
    err, results = decode_leave_group(r, leave_v)
    assert err == NONE, (err, results)
    assert sorted((mid, e) for mid, _, e in results) == sorted(
        [(a.member_id, NONE), (b.member_id, NONE), ("no-such-member", UNKNOWN_MEMBER_ID)]), results

    assert c.heartbeat() == REBALANCE_IN_PROGRESS
    assert a.heartbeat() == UNKNOWN_MEMBER_ID
    assert b.heartbeat() == UNKNOWN_MEMBER_ID
    res = c.join()
    assert res["error_code"] == NONE, res
    assert res["generation"] == 2 and res["leader"] == c.member_id, res
    assert res["members"] == [(c.member_id, None, c.protocols[0][1])], res
    a2 = assignment({"t": [0, 1, 2]})
    assert c.sync([(c.member_id, a2)])["assignment"] == a2
    assert c.heartbeat() == NONE


@pytest.mark.parametrize("leave_v", [0, 1, 2])
def test_leave_group_v0_v2(broker, open_conn, leave_v):
    group = uniq("raw-leave-old")
    members = [RawMember(open_conn(), group, 4, protocols_for("t", "m%d" % i)) for i in range(2)]
    form_group(members, "t")
    a, b = members
    err, _ = decode_leave_group(open_conn().call(LEAVE_GROUP, leave_v, leave_group_body(
        leave_v, group, [(a.member_id, None)])), leave_v)
    assert err == NONE
    assert b.heartbeat() == REBALANCE_IN_PROGRESS
    res = b.join()
    assert res["error_code"] == NONE and res["generation"] == 2, res
    assert [mid for mid, _, _ in res["members"]] == [b.member_id], res
    err, _ = decode_leave_group(open_conn().call(LEAVE_GROUP, leave_v, leave_group_body(
        leave_v, group, [("no-such-member", None)])), leave_v)
    assert err == UNKNOWN_MEMBER_ID


@pytest.mark.parametrize("join_v", [5, 7, 9])
def test_static_member_rejoin_raw(broker, open_conn, join_v):
    """KIP-345 over the wire. Static members join without MEMBER_ID_REQUIRED.
    A static member rejoining with its instance id and no member id, while the
    group is Stable, takes over its place under a new member id: same
    generation, no rebalance, SyncGroup returns its old assignment, and the
    old member id is fenced (next test). This holds for the leader too (Kafka's
    GroupCoordinator: "A static leader rejoin with unknown id will not trigger
    rebalance"): before v9 the leader is answered like a follower (no member
    list, leader id not its own); from v9 it gets the member list with
    SkipAssignment=true (KIP-814)."""
    group = uniq("raw-static")
    protos = {inst: protocols_for("t", inst) for inst in ("inst-A", "inst-B")}
    a = RawMember(open_conn(), group, join_v, protos["inst-A"], instance_id="inst-A")
    b = RawMember(open_conn(), group, join_v, protos["inst-B"], instance_id="inst-B")
    corr_a, corr_b = a.send_join(), b.send_join()
    res_a, res_b = a.recv_join(corr_a), b.recv_join(corr_b)
    for res in (res_a, res_b):
        assert res["error_code"] == NONE, res
        assert res["generation"] == 1 and res["leader"] == res_a["leader"], (res_a, res_b)
    leader, follower = (a, b) if res_a["leader"] == a.member_id else (b, a)
    assert res_b["leader"] == leader.member_id, (res_a, res_b)
    res_l = res_a if leader is a else res_b
    assert sorted(res_l["members"]) == sorted([
        (a.member_id, "inst-A", protos["inst-A"][0][1]),
        (b.member_id, "inst-B", protos["inst-B"][0][1])]), res_l
    assigns = {leader.member_id: assignment({"t": [0, 1]}, b"L"),
               follower.member_id: assignment({"t": [2]}, b"F")}
    corr_f = follower.send_sync([])
    assert leader.sync(sorted(assigns.items()))["assignment"] == assigns[leader.member_id]
    assert follower.recv_sync(corr_f)["assignment"] == assigns[follower.member_id]

    def rejoin(old, inst):
        new = RawMember(open_conn(), group, join_v, protos[inst], instance_id=inst)
        try:
            res = new.join(timeout=5.0)
        except socket.timeout:
            pytest.fail("static member %s rejoined a Stable group and its JoinGroup was not "
                        "answered within 5 s: the broker started a rebalance (Kafka answers "
                        "at once, same generation)" % inst, pytrace=False)
        assert res["error_code"] == NONE, res
        assert res["member_id"] and res["member_id"] != old.member_id, res
        assert res["generation"] == 1, "static rejoin of %s started a rebalance: %r" % (inst, res)
        return new, res

    # A follower restarts.
    follower2, res = rejoin(follower, follower.instance_id)
    assert res["members"] == [] and res["leader"] == leader.member_id, res
    assert follower2.sync([])["assignment"] == assigns[follower.member_id]
    assert leader.heartbeat() == NONE
    assert follower2.heartbeat() == NONE

    # The leader restarts.
    leader2, res = rejoin(leader, leader.instance_id)
    if join_v >= 9:
        assert res["skip_assignment"] is True, res
        assert res["leader"] == leader2.member_id, res
        assert sorted(res["members"]) == sorted([
            (leader2.member_id, leader.instance_id, protos[leader.instance_id][0][1]),
            (follower2.member_id, follower.instance_id, protos[follower.instance_id][0][1])]), res
    else:
        assert res["members"] == [], res
        assert res["leader"] != leader2.member_id, (
            "a pre-v9 static leader rejoin must not make the client run an assignment: %r" % res)
    assert leader2.sync([])["assignment"] == assigns[leader.member_id]
    assert leader2.heartbeat() == NONE
    assert follower2.heartbeat() == NONE
    assert follower2.sync([])["assignment"] == assigns[follower.member_id]


def test_join_waits_for_members_bounded_by_rebalance_timeout(broker, open_conn):
    """A rebalance waits for every known member to rejoin (JoinGroup is held),
    but at most the rebalance timeout: a member that does not rejoin by then
    is removed and the generation completes without it."""
    group = uniq("raw-rebalance")
    a, b = [RawMember(open_conn(), group, 5, protocols_for("t", n), rebalance_ms=1500)
            for n in ("a", "b")]
    leader, _, _ = form_group([a, b], "t")
    other = b if leader is a else a

    # The leader rejoins: a rebalance starts and its JoinGroup is held until
    # the other member, told by its heartbeat, rejoins too.
    corr = leader.send_join()
    wait_for(lambda: other.heartbeat() == REBALANCE_IN_PROGRESS, "the other member to see the "
             "rebalance", timeout=5)
    res_o = other.join()
    res_l = leader.recv_join(corr)
    for res in (res_l, res_o):
        assert res["error_code"] == NONE and res["generation"] == 2, (res_l, res_o)
    assert sorted(mid for mid, _, _ in res_l["members"]) == sorted([a.member_id, b.member_id])
    assign = {m.member_id: assignment({"t": [i]}) for i, m in enumerate((a, b))}
    corr = other.send_sync([])
    assert leader.sync(sorted(assign.items()))["error_code"] == NONE
    assert other.recv_sync(corr)["error_code"] == NONE

    # Again, but the other member never rejoins: after the 1.5 s rebalance
    # timeout the leader's JoinGroup completes with the leader alone.
    t0 = time.monotonic()
    res = leader.join(timeout=8)
    elapsed = time.monotonic() - t0
    assert res["error_code"] == NONE and res["generation"] == 3, res
    assert [mid for mid, _, _ in res["members"]] == [leader.member_id], res
    assert 1.2 <= elapsed < 6.0, "JoinGroup held %.2f s with rebalance timeout 1.5 s" % elapsed
    assert other.heartbeat() == UNKNOWN_MEMBER_ID


def test_session_expiry_removes_member(broker, open_conn):
    group = uniq("raw-session")
    keeper = RawMember(open_conn(), group, 5, protocols_for("t", "keeper"), session_ms=10000)
    quiet = RawMember(open_conn(), group, 5, protocols_for("t", "quiet"),
                      session_ms=MIN_SESSION_TIMEOUT_MS)
    form_group([keeper, quiet], "t")
    t0 = time.monotonic()
    # `quiet` sends nothing more; `keeper` heartbeats until it is told to rejoin.
    wait_for(lambda: keeper.heartbeat() == REBALANCE_IN_PROGRESS,
             "the quiet member's 1 s session to expire", timeout=10, interval=0.1)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.8, "member removed %.2f s after its last request (session 1 s)" % elapsed
    res = keeper.join()
    assert res["error_code"] == NONE and res["generation"] == 2, res
    assert [mid for mid, _, _ in res["members"]] == [keeper.member_id], res
    assert quiet.heartbeat() == UNKNOWN_MEMBER_ID


def form_static_group(open_conn, group, join_v, instances):
    """Static members join (no MEMBER_ID_REQUIRED for them) and sync.
    Returns (leader, followers, assignments by member id)."""
    members = [RawMember(open_conn(), group, join_v, protocols_for("t", inst), instance_id=inst)
               for inst in instances]
    corrs = [m.send_join() for m in members]
    results = [m.recv_join(c) for m, c in zip(members, corrs)]
    for res in results:
        assert res["error_code"] == NONE and res["generation"] == 1, results
    (leader_id,) = {res["leader"] for res in results}
    leader = next(m for m in members if m.member_id == leader_id)
    followers = [m for m in members if m is not leader]
    assigns = {m.member_id: assignment({"t": [i]}, m.instance_id.encode())
               for i, m in enumerate(members)}
    corrs = [(m, m.send_sync([])) for m in followers]
    corrs.append((leader, leader.send_sync(sorted(assigns.items()))))
    for m, corr in corrs:
        assert m.recv_sync(corr)["assignment"] == assigns[m.member_id]
    return leader, followers, assigns


def test_static_member_old_id_fenced_and_removal_by_instance_id(broker, open_conn):
    """After a static member rejoined under a new member id, requests with the
    old member id and the instance id get FENCED_INSTANCE_ID (Kafka's
    validateCurrentMember) and change nothing. LeaveGroup v3+ naming only the
    instance id removes the static member (admin removal)."""
    topic = uniq("fence")
    pc.create_topic(broker, topic, 1)
    group = uniq("raw-fence")
    leader, (old,), _ = form_static_group(open_conn, group, 5, ["inst-A", "inst-B"])
    new = RawMember(open_conn(), group, 5, old.protocols, instance_id=old.instance_id)
    res = new.join()
    assert res["error_code"] == NONE and res["generation"] == 1, res
    assert new.sync([])["error_code"] == NONE

    assert old.heartbeat() == FENCED_INSTANCE_ID
    assert old.sync([])["error_code"] == FENCED_INSTANCE_ID
    c = open_conn()
    assert commit(c, 7, group, {topic: [(0, 5, None)]}, generation=1, member_id=old.member_id,
                  instance_id=old.instance_id) == {(topic, 0): FENCED_INSTANCE_ID}
    err, results = decode_leave_group(c.call(LEAVE_GROUP, 3, leave_group_body(
        3, group, [(old.member_id, old.instance_id)])), 3)
    assert err == NONE and results == [(old.member_id, old.instance_id, FENCED_INSTANCE_ID)], results
    # Nothing changed for the current members.
    assert leader.heartbeat() == NONE
    assert new.heartbeat() == NONE

    # Removal by instance id only.
    err, results = decode_leave_group(c.call(LEAVE_GROUP, 4, leave_group_body(
        4, group, [("", new.instance_id)])), 4)
    assert err == NONE and [e for _, _, e in results] == [NONE], results
    assert leader.heartbeat() == REBALANCE_IN_PROGRESS
    assert new.heartbeat() == UNKNOWN_MEMBER_ID
    res = leader.join()
    assert res["error_code"] == NONE and res["generation"] == 2, res
    assert [(mid, iid) for mid, iid, _ in res["members"]] == [(leader.member_id, leader.instance_id)]


# --- OffsetCommit / OffsetFetch -------------------------------------------

def offset_commit_body(v, group, topics, generation=-1, member_id="", instance_id=None):
    """topics: {name: [(partition, offset, metadata)]}."""
    w = W(flexible(OFFSET_COMMIT, v))
    w.str(group)
    if v >= 1:
        w.int32(generation).str(member_id)
    if v >= 7:
        w.str(instance_id)
    if 2 <= v <= 4:
        w.int64(-1)  # retention time: broker default
    w.alen(len(topics))
    for name, parts in topics.items():
        w.str(name).alen(len(parts))
        for p, off, meta in parts:
            w.int32(p).int64(off)
            if v >= 6:
                w.int32(-1)  # leader epoch
            if v == 1:
                w.int64(-1)  # commit timestamp
            w.str(meta).tags()
        w.tags()
    return w.tags().bytes()


def decode_offset_commit(r, v):
    """{(topic, partition): error_code}."""
    if v >= 3:
        r.int32()
    out = {}
    for _ in range(r.alen()):
        name = r.str()
        for _ in range(r.alen()):
            p, err = r.int32(), r.int16()
            r.tags()
            out[(name, p)] = err
        r.tags()
    r.tags()
    r.expect_end()
    return out


def offset_fetch_body(v, group, topics):
    """topics: {name: [partition]} or None (all committed; v2+)."""
    w = W(flexible(OFFSET_FETCH, v))

    def topic_list():
        if topics is None:
            assert v >= 2
            w.alen(None)
            return
        w.alen(len(topics))
        for name, parts in topics.items():
            w.str(name).alen(len(parts))
            for p in parts:
                w.int32(p)
            w.tags()

    if v <= 7:
        w.str(group)
        topic_list()
        if v >= 7:
            w.bool(False)  # require stable
    else:
        w.alen(1).str(group)
        if v >= 9:
            w.str(None).int32(-1)  # member id, member epoch (KIP-848 only)
        topic_list()
        w.tags().bool(False)
    return w.tags().bytes()


def decode_offset_fetch(r, v):
    """{'error_code': group/top-level error (None for v0-1), 'parts':
    {(topic, partition): {'offset', 'leader_epoch', 'metadata', 'error_code'}}}."""
    if v >= 3:
        r.int32()

    def topics(out):
        for _ in range(r.alen()):
            name = r.str()
            for _ in range(r.alen()):
                p = r.int32()
                e = {"offset": r.int64(), "leader_epoch": r.int32() if v >= 5 else None,
                     "metadata": r.str(), "error_code": r.int16()}
                r.tags()
                out[(name, p)] = e
            r.tags()

    out = {"error_code": None, "parts": {}}
    if v <= 7:
        topics(out["parts"])
        if v >= 2:
            out["error_code"] = r.int16()
    else:
        n = r.alen()
        assert n == 1, "%d groups in the answer to one" % n
        r.str()  # group id
        topics(out["parts"])
        out["error_code"] = r.int16()
        r.tags()
    r.tags()
    r.expect_end()
    return out


def commit(conn, v, group, topics, **kwargs):
    return decode_offset_commit(conn.call(OFFSET_COMMIT, v, offset_commit_body(
        v, group, topics, **kwargs)), v)


def fetch_offsets(conn, v, group, topics):
    return decode_offset_fetch(conn.call(OFFSET_FETCH, v, offset_fetch_body(v, group, topics)), v)


@pytest.mark.parametrize("version", list(range(10)))
def test_admin_offset_commit_and_fetch_every_version(broker, open_conn, version):
    """OffsetCommit with generation -1 and no member id (standalone/admin
    commit) into a group with no members is accepted and read back; never
    committed partitions answer -1."""
    topic = uniq("oc")
    pc.create_topic(broker, topic, 3)
    c = open_conn()
    group = uniq("g-admin")
    res = commit(c, version, group, {topic: [(0, 100 + version, "meta-%d" % version),
                                             (1, 7, None)]})
    assert res == {(topic, 0): NONE, (topic, 1): NONE}, res
    # A second commit overwrites.
    res = commit(c, version, group, {topic: [(1, 8, "")]})
    assert res == {(topic, 1): NONE}, res
    got = fetch_offsets(c, version, group, {topic: [0, 1, 2]})
    assert got["error_code"] in (None, NONE), got
    parts = got["parts"]
    assert set(parts) == {(topic, 0), (topic, 1), (topic, 2)}, parts
    assert (parts[(topic, 0)]["offset"], parts[(topic, 0)]["metadata"],
            parts[(topic, 0)]["error_code"]) == (100 + version, "meta-%d" % version, NONE), parts
    assert (parts[(topic, 1)]["offset"], parts[(topic, 1)]["error_code"]) == (8, NONE), parts
    assert parts[(topic, 1)]["metadata"] in ("", None), parts
    assert (parts[(topic, 2)]["offset"], parts[(topic, 2)]["error_code"]) == (-1, NONE), parts
    assert parts[(topic, 2)]["metadata"] in ("", None), parts


@pytest.mark.parametrize("version", list(range(10)))
def test_offset_fetch_never_committed_group(broker, open_conn, version):
    topic = uniq("of")
    pc.create_topic(broker, topic, 2)
    got = fetch_offsets(open_conn(), version, uniq("g-never"), {topic: [0, 1]})
    assert got["error_code"] in (None, NONE), got
    assert {k: (e["offset"], e["error_code"]) for k, e in got["parts"].items()} == {
        (topic, 0): (-1, NONE), (topic, 1): (-1, NONE)}, got


@pytest.mark.parametrize("version", [2, 3, 5, 6, 7, 8, 9])
def test_offset_fetch_null_topics_returns_all(broker, open_conn, version):
    t1, t2 = uniq("ofa"), uniq("ofb")
    pc.create_topic(broker, t1, 3)
    pc.create_topic(broker, t2, 1)
    c = open_conn()
    group = uniq("g-all")
    res = commit(c, 8, group, {t1: [(0, 11, "x"), (2, 13, None)], t2: [(0, 21, "y")]})
    assert set(res.values()) == {NONE}, res
    got = fetch_offsets(c, version, group, None)
    assert got["error_code"] == NONE, got
    assert {k: (e["offset"], e["error_code"]) for k, e in got["parts"].items()} == {
        (t1, 0): (11, NONE), (t1, 2): (13, NONE), (t2, 0): (21, NONE)}, got
    assert got["parts"][(t1, 0)]["metadata"] == "x"
    assert got["parts"][(t2, 0)]["metadata"] == "y"
    # A group with nothing committed: an empty list.
    got = fetch_offsets(c, version, uniq("g-none"), None)
    assert got["error_code"] == NONE and got["parts"] == {}, got


def test_offset_commit_unknown_topic_or_partition(broker, open_conn):
    topic = uniq("oc-unknown")
    pc.create_topic(broker, topic, 2)
    c = open_conn()
    group = uniq("g")
    res = commit(c, 8, group, {topic: [(0, 1, None), (99, 1, None)],
                               uniq("no-such-topic"): [(0, 1, None)]})
    assert res[(topic, 0)] == NONE, res
    assert res[(topic, 99)] == UNKNOWN_TOPIC_OR_PARTITION, res
    assert [e for (t, _), e in res.items() if t.startswith("no-such-topic")] == [
        UNKNOWN_TOPIC_OR_PARTITION], res


def test_member_offset_commit_checks_generation_and_member(broker, open_conn):
    topic = uniq("oc-member")
    pc.create_topic(broker, topic, 1)
    group = uniq("g-member")
    m = RawMember(open_conn(), group, 5, protocols_for(topic, "member"))
    form_group([m], topic)
    c = open_conn()
    tp = {topic: [(0, 42, "by-member")]}
    assert commit(c, 7, group, tp, generation=1, member_id=m.member_id) == {(topic, 0): NONE}
    assert commit(c, 7, group, tp, generation=2, member_id=m.member_id) == {
        (topic, 0): ILLEGAL_GENERATION}
    assert commit(c, 7, group, tp, generation=1, member_id="no-such-member") == {
        (topic, 0): UNKNOWN_MEMBER_ID}
    # An admin commit is only for groups without members.
    assert commit(c, 7, group, {topic: [(0, 99, None)]}) == {(topic, 0): UNKNOWN_MEMBER_ID}
    got = fetch_offsets(c, 7, group, {topic: [0]})
    assert (got["parts"][(topic, 0)]["offset"], got["parts"][(topic, 0)]["metadata"]) == (
        42, "by-member"), got
    assert m.heartbeat() == NONE
    # Once the last member left, the group is Empty and admin commits are accepted.
    err, _ = decode_leave_group(c.call(LEAVE_GROUP, 3, leave_group_body(
        3, group, [(m.member_id, None)])), 3)
    assert err == NONE
    assert commit(c, 7, group, {topic: [(0, 99, None)]}) == {(topic, 0): NONE}
    assert fetch_offsets(c, 7, group, {topic: [0]})["parts"][(topic, 0)]["offset"] == 99
