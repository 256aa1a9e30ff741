"""The Ops API spec's programmatic example (examples/ops_example.c), end to end.

The program sends ApiVersions and then exactly the requests of the spec's
franz-go listing (ListGroups v5, DescribeGroups v5, OffsetForLeaderEpoch v3,
DescribeConfigs v4, AlterConfigs v1, CreatePartitions v3, DeleteGroups v2)
for topic "orders" and group "my-group", and prints one section per
response. It is run three times against one broker; every answer is
asserted, with Apache Kafka's behaviour as the reference:

1. "orders" exists (3 partitions, retention.ms=3600000 set at creation,
   5 records in partition 0 and 2 in partition 1) and "my-group" has one
   live librdkafka member (range assignor) that consumed and committed
   everything:
     ListGroups [Stable]/[classic]  -> my-group, consumer, Stable, classic
     DescribeGroups                 -> Stable, protocol range, 1 member owning orders[0,1,2]
     OffsetForLeaderEpoch p0 e0     -> epoch 0, end offset 5 (the high watermark) when epoch 0
                                       is current (embedded mode); in cluster mode the first
                                       owner began epoch 1 at offset 0, so epoch 0 ended at 0
     DescribeConfigs retention.ms   -> 3600000, DYNAMIC_TOPIC_CONFIG
     AlterConfigs retention.ms      -> NONE
     CreatePartitions 6             -> NONE (the topic then has 6 partitions)
     DeleteGroups                   -> NON_EMPTY_GROUP (68): the group has a member
2. The member is closed (LeaveGroup): the group is Empty, offsets kept:
     ListGroups [Stable]            -> nothing
     DescribeGroups                 -> Empty, consumer, no members
     DescribeConfigs                -> 120000 (run 1's AlterConfigs)
     CreatePartitions 6             -> INVALID_PARTITIONS (37): already 6
     DeleteGroups                   -> NONE: deleted
3. The group is gone:
     DescribeGroups (v5)            -> Dead, no error (GROUP_ID_NOT_FOUND only from v6)
     DeleteGroups                   -> GROUP_ID_NOT_FOUND (69)

The program exits 0 in every run: Kafka error codes are printed, not fatal.
These tests fail until all seven APIs are served (a missing one is printed
as "not supported by this broker").

Binary: KAFSCALE_OPS_EXAMPLE_BIN, else examples/ops_example next to the
broker binary (build/examples/ops_example).
"""

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

import kafka_wire as kw
from conftest import _broker_bin

TOPIC = "orders"
GROUP = "my-group"
MEMBER_CLIENT_ID = "ops-example-member"
INITIAL_RETENTION_MS = "3600000"
RECORDS = {0: 5, 1: 2}  # partition -> records produced

DESCRIBE_GROUPS = 15
kw.FIRST_FLEXIBLE_VERSION.setdefault(DESCRIBE_GROUPS, 5)

# The seven requests of the listing: section title -> (api key, version).
REQUESTS = {
    "ListGroups v5": (16, 5),
    "DescribeGroups v5": (15, 5),
    "OffsetForLeaderEpoch v3": (23, 3),
    "DescribeConfigs v4": (32, 4),
    "AlterConfigs v1": (33, 1),
    "CreatePartitions v3": (37, 3),
    "DeleteGroups v2": (42, 2),
}

TIMEOUT_S = 30


@pytest.fixture(scope="module")
def broker_extra_env():
    return {"KAFSCALE_GROUP_INITIAL_REBALANCE_DELAY_MS": "300"}


def wait_for(cond, what, timeout=TIMEOUT_S, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            pytest.fail("timed out after %d s waiting for %s" % (timeout, what), pytrace=False)
        time.sleep(interval)


def example_bin():
    env = os.environ.get("KAFSCALE_OPS_EXAMPLE_BIN")
    path = Path(env) if env else _broker_bin().parent / "examples" / "ops_example"
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail("ops example %s not found (build it with `make`, or set "
                    "KAFSCALE_OPS_EXAMPLE_BIN)" % path, pytrace=False)
    return path


def run_example(broker):
    """Runs the example against `broker`; returns {section title: [lines]}
    (the ApiVersions section included), after checking it exited 0."""
    p = subprocess.run([str(example_bin()), broker.bootstrap], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120)
    out = p.stdout.decode(errors="replace")
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 0, "ops_example exited %d\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
        p.returncode, out, err)
    sections, cur = {}, None
    for line in out.splitlines():
        m = re.match(r"^== (.*) ==$", line)
        if m:
            cur = m.group(1)
            assert cur not in sections, "section %r twice:\n%s" % (cur, out)
            sections[cur] = []
        elif cur is not None and line.strip():
            sections[cur].append(line)
    assert list(sections) == ["ApiVersions v3"] + list(REQUESTS), out
    assert out.rstrip().endswith("done"), out
    for title, lines in sections.items():
        assert not any("not supported by this broker" in l for l in lines), (
            "%s: not supported by this broker\n%s" % (title, out))
    sections["_text"] = out
    return sections


def fields(line):
    """'kind a=1 b=x (NAME) c=y' -> {'_kind': 'kind', 'a': '1', 'b': 'x', 'c': 'y'};
    a line starting with a key=value has no '_kind'. A "(NAME)" after a value
    is dropped; values contain no spaces."""
    out = {}
    for i, w in enumerate(line.split()):
        if "=" in w:
            k, v = w.split("=", 1)
            out[k] = v
        elif i == 0:
            out["_kind"] = w
    return out


def only(lines, kind):
    return [fields(l) for l in lines if l.split()[0] == kind]


# ---------------------------------------------------------------------------
# A group member (librdkafka), polling in a thread
# ---------------------------------------------------------------------------

class Member(threading.Thread):
    """Subscribes to TOPIC in GROUP, consumes and commits every record
    synchronously; stop() closes the consumer (LeaveGroup)."""

    def __init__(self, bootstrap):
        super().__init__(daemon=True)
        self.conf = {
            "bootstrap.servers": bootstrap,
            "group.id": GROUP,
            "client.id": MEMBER_CLIENT_ID,
            "partition.assignment.strategy": "range",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
        self.lock = threading.Lock()
        self.assignment = []
        self.committed = 0
        self.errors = []
        self.closed = False
        self._stop_ev = threading.Event()

    def run(self):
        c = Consumer(self.conf)
        try:
            c.subscribe([TOPIC])
            while not self._stop_ev.is_set():
                m = c.poll(0.05)
                if m is not None:
                    if m.error():
                        with self.lock:
                            self.errors.append(m.error().str())
                    else:
                        c.commit(message=m, asynchronous=False)
                        with self.lock:
                            self.committed += 1
                parts = sorted(tp.partition for tp in c.assignment())
                with self.lock:
                    self.assignment = parts
        finally:
            c.close()
            with self.lock:
                self.closed = True

    def state(self):
        with self.lock:
            return list(self.assignment), self.committed, list(self.errors)

    def stop(self):
        self._stop_ev.set()
        self.join(TIMEOUT_S)
        assert not self.is_alive(), "the group member did not close"
        assert self.closed


# ---------------------------------------------------------------------------
# Raw DescribeGroups v5, to wait for a group state between runs
# ---------------------------------------------------------------------------

def group_state(broker, group):
    w = kw.Writer().compact_array_len(1).compact_string(group).bool(False).tagged_fields()
    with kw.Conn(broker.host, broker.port) as c:
        r = c.request(DESCRIBE_GROUPS, 5, w.bytes())
    r.int32()  # throttle
    assert r.compact_array_len() == 1
    err, gid, state = r.int16(), r.compact_string(), r.compact_string()
    assert err == 0 and gid == group, (err, gid)
    return state


# ---------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------

def setup_topic(broker):
    adm = AdminClient({"bootstrap.servers": broker.bootstrap})
    fut = adm.create_topics([NewTopic(TOPIC, 3, 1, config={"retention.ms": INITIAL_RETENTION_MS})],
                            request_timeout=TIMEOUT_S)
    fut[TOPIC].result(timeout=TIMEOUT_S)
    wait_for(lambda: len(getattr(adm.list_topics(topic=TOPIC, timeout=TIMEOUT_S).topics.get(TOPIC),
                                 "partitions", {})) == 3, "topic %s in metadata" % TOPIC)
    prod = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5})
    failed = []
    for p, n in RECORDS.items():
        for i in range(n):
            prod.produce(TOPIC, key=b"k%d" % i, value=b"v%d-%d" % (p, i), partition=p,
                         on_delivery=lambda e, m: e is not None and failed.append(e))
    assert prod.flush(TIMEOUT_S) == 0 and not failed, failed
    return adm


def partition_count(adm):
    t = adm.list_topics(topic=TOPIC, timeout=TIMEOUT_S).topics.get(TOPIC)
    return None if t is None or t.error is not None else len(t.partitions)


def check_api_versions(s):
    lines = s["ApiVersions v3"]
    assert fields(lines[0])["error_code"] == "0", lines
    apis = {f["name"]: f for f in only(lines, "api")}
    for title, (key, version) in REQUESTS.items():
        name = title.split()[0]
        f = apis.get(name)
        assert f is not None and f["key"] == str(key), (name, lines)
        assert int(f["min_version"]) <= version <= int(f["max_version"]), (name, f)


def check_offset_for_leader_epoch(s, broker):
    """Epoch 0's end: the high watermark while epoch 0 is current, else the
    start offset of the first epoch after it (0: nothing was written at
    epoch 0)."""
    with kw.Conn(broker.host, broker.port, timeout=10.0) as c:
        current = kw.leader_epoch(c, TOPIC, 0)
    lines = s["OffsetForLeaderEpoch v3"]
    assert fields(lines[0])["topics"] == "1", lines
    (p,) = only(lines, "partition")
    assert p == {"_kind": "partition", "topic": TOPIC, "partition": "0", "error_code": "0",
                 "leader_epoch": "0", "end_offset": str(RECORDS[0] if current == 0 else 0)}, lines


def check_describe_configs(s, value):
    lines = s["DescribeConfigs v4"]
    (res,) = only(lines, "resource")
    assert (res["type"], res["name"], res["error_code"]) == ("2", TOPIC, "0"), lines
    cfgs = only(lines, "config")
    assert [c["name"] for c in cfgs] == ["retention.ms"], lines
    c = cfgs[0]
    assert c["value"] == value, lines
    assert c["source"] == "1", "a topic override is DYNAMIC_TOPIC_CONFIG (1): %s" % lines
    assert (c["read_only"], c["sensitive"]) == ("false", "false"), lines


def check_alter_configs(s):
    lines = s["AlterConfigs v1"]
    (res,) = only(lines, "resource")
    assert (res["type"], res["name"], res["error_code"]) == ("2", TOPIC, "0"), lines
    assert res["error_message"] == "null", lines


def check_create_partitions(s, error_code):
    lines = s["CreatePartitions v3"]
    (t,) = only(lines, "topic")
    assert (t["name"], t["error_code"]) == (TOPIC, str(error_code)), lines
    if error_code == 0:
        assert t["error_message"] == "null", lines


def check_delete_groups(s, error_code):
    lines = s["DeleteGroups v2"]
    (g,) = only(lines, "group")
    assert (g["group_id"], g["error_code"]) == (GROUP, str(error_code)), lines


def test_ops_example(module_broker):
    broker = module_broker
    adm = setup_topic(broker)
    member = Member(broker.bootstrap)
    member.start()
    try:
        total = sum(RECORDS.values())
        wait_for(lambda: member.state()[0] == [0, 1, 2] and member.state()[1] == total,
                 "the member to own orders[0,1,2] and commit %d records (state %r)"
                 % (total, member.state()))

        # --- run 1: one live member ------------------------------------------
        s = run_example(broker)
        check_api_versions(s)

        lines = s["ListGroups v5"]
        head = fields(lines[0])
        assert head["error_code"] == "0" and head["groups"] == "1", lines
        assert only(lines, "group") == [{"_kind": "group", "group_id": GROUP, "protocol_type": "consumer",
                                          "state": "Stable", "type": "classic"}], lines

        lines = s["DescribeGroups v5"]
        (g,) = only(lines, "group")
        assert (g["group_id"], g["error_code"], g["state"], g["protocol_type"], g["protocol"],
                g["members"]) == (GROUP, "0", "Stable", "consumer", "range", "1"), lines
        (m,) = only(lines, "member")
        assert m["client_id"] == MEMBER_CLIENT_ID, lines
        assert m["member_id"].startswith(MEMBER_CLIENT_ID + "-"), lines  # Kafka: client id + "-" + uuid
        assert m["group_instance_id"] == "null", lines
        assert "127.0.0.1" in m["client_host"], lines
        assert int(m["metadata_bytes"]) > 0, lines
        assert m["assignment"] == "%s[0,1,2]" % TOPIC, lines

        check_offset_for_leader_epoch(s, broker)
        check_describe_configs(s, INITIAL_RETENTION_MS)
        check_alter_configs(s)
        check_create_partitions(s, 0)
        check_delete_groups(s, 68)  # NON_EMPTY_GROUP
        wait_for(lambda: partition_count(adm) == 6, "orders to have 6 partitions")
    finally:
        member.stop()

    # --- run 2: the group is Empty (committed offsets kept) --------------------
    wait_for(lambda: group_state(broker, GROUP) == "Empty", "my-group to be Empty")
    s = run_example(broker)
    lines = s["ListGroups v5"]
    assert fields(lines[0])["error_code"] == "0" and only(lines, "group") == [], lines
    lines = s["DescribeGroups v5"]
    (g,) = only(lines, "group")
    assert (g["group_id"], g["error_code"], g["state"], g["protocol_type"], g["members"]) == (
        GROUP, "0", "Empty", "consumer", "0"), lines
    assert only(lines, "member") == [], lines
    check_offset_for_leader_epoch(s, broker)
    check_describe_configs(s, "120000")
    check_alter_configs(s)
    check_create_partitions(s, 37)  # INVALID_PARTITIONS: already 6
    check_delete_groups(s, 0)
    assert partition_count(adm) == 6

    # --- run 3: the group is gone ------------------------------------------------
    s = run_example(broker)
    lines = s["ListGroups v5"]
    assert only(lines, "group") == [], lines
    lines = s["DescribeGroups v5"]
    (g,) = only(lines, "group")
    assert (g["group_id"], g["error_code"], g["state"], g["members"]) == (GROUP, "0", "Dead", "0"), lines
    check_offset_for_leader_epoch(s, broker)
    check_describe_configs(s, "120000")
    check_delete_groups(s, 69)  # GROUP_ID_NOT_FOUND


def test_ops_example_connection_refused():
    """Nothing listening: a transport failure, exit status 1."""
    from conftest import free_ports
    (port,) = free_ports(1)
    p = subprocess.run([str(example_bin()), "127.0.0.1:%d" % port], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert b"cannot connect" in p.stderr, p.stderr


def test_ops_example_bad_arguments():
    p = subprocess.run([str(example_bin()), "a", "b", "c", "d"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert p.returncode == 2 and b"usage" in p.stderr, (p.returncode, p.stderr)
