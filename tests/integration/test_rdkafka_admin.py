"""The ops APIs through librdkafka's own C Admin API (issue 5):
ListConsumerGroups, DescribeConsumerGroups, DeleteGroups, DescribeConfigs,
AlterConfigs and CreatePartitions.

tests/clients/rdkafka_admin.c is compiled on the fly (gcc -std=c11 -Wall
-Wextra -Werror, `pkg-config rdkafka`; librdkafka >= 2.0) into a temp dir and
run as `rdkafka_admin <bootstrap> <command> [args]`; its output is one fact
per line (see the program's header). A topic `orders` (3 partitions, a few
records) is set up with confluent-kafka, and a confluent-kafka consumer in
group `admin-g` (range assignor) joins, consumes and commits.

* Groups: DescribeConsumerGroups shows the live group Stable, assignor range,
  one member (client id, host /127.0.0.1) assigned orders[0,1,2]; DeleteGroups
  of the live group is NON_EMPTY_GROUP (68), after the consumer closes it is
  NONE and the group is Dead; an unknown group is GROUP_ID_NOT_FOUND (69).
* ListConsumerGroups lists the live group Stable (not simple) and no longer
  lists it once deleted.
* Configs and partitions: DescribeConfigs of a topic is exactly retention.ms,
  retention.bytes, segment.bytes (defaults); AlterConfigs retention.ms takes
  effect, cleanup.policy is INVALID_CONFIG (40); CreatePartitions 3 -> 5 is
  NONE (metadata shows 5), 5 -> 2 is INVALID_PARTITIONS (37).
"""

import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENT_SRC = REPO_ROOT / "tests" / "clients" / "rdkafka_admin.c"

TOPIC = "orders"
GROUP = "admin-g"
CONSUMER_CLIENT_ID = "admin-g-consumer"
PARTITIONS = 3
RECORDS = 9
CLIENT_TIMEOUT_S = 10
# The program's own admin timeout is 10 s (+5 s slack on its result queue).
RUN_TIMEOUT_S = 30
DEFAULTS = {"retention.ms": "604800000", "retention.bytes": "-1",
            "segment.bytes": "1073741824"}


@pytest.fixture(scope="module")
def broker_extra_env():
    return {"KAFSCALE_GROUP_INITIAL_REBALANCE_DELAY_MS": "100"}


@pytest.fixture(scope="module")
def rdkafka_admin(tmp_path_factory):
    """Path of the compiled tests/clients/rdkafka_admin.c."""
    for tool in ("gcc", "pkg-config"):
        if shutil.which(tool) is None:
            pytest.fail("%s not found (needed to build %s)" % (tool, CLIENT_SRC), pytrace=False)
    pc = subprocess.run(["pkg-config", "--cflags", "--libs", "rdkafka"],
                        capture_output=True, text=True)
    if pc.returncode != 0:
        pytest.fail("pkg-config rdkafka failed (librdkafka-dev installed?):\n%s" % pc.stderr,
                    pytrace=False)
    out = tmp_path_factory.mktemp("rdkafka_admin") / "rdkafka_admin"
    cmd = (["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-o", str(out),
            str(CLIENT_SRC)] + shlex.split(pc.stdout))
    cc = subprocess.run(cmd, capture_output=True, text=True)
    if cc.returncode != 0:
        pytest.fail("building %s failed (exit %d):\n$ %s\n%s%s"
                    % (CLIENT_SRC, cc.returncode, " ".join(cmd), cc.stdout, cc.stderr),
                    pytrace=False)
    return out


class Admin:
    """Runs the compiled program against one broker."""

    def __init__(self, binary, broker):
        self.binary = binary
        self.broker = broker

    def run(self, *args):
        """stdout lines of a successful run (exit 0); fails the test otherwise."""
        argv = [str(self.binary), self.broker.bootstrap] + [str(a) for a in args]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            pytest.fail("%s: no exit within %d s\nstdout:\n%s\nstderr:\n%s"
                        % (" ".join(args), RUN_TIMEOUT_S, e.stdout, e.stderr), pytrace=False)
        if p.returncode != 0:
            pytest.fail("rdkafka_admin %s: exit %d\nstdout:\n%s\nstderr:\n%s"
                        % (" ".join(str(a) for a in args), p.returncode, p.stdout, p.stderr),
                        pytrace=False)
        return p.stdout.splitlines()

    def error(self, *args):
        """(error name, message or None) of a delete/alter/create command."""
        lines = self.run(*args)
        assert lines and lines[0].startswith("error="), (args, lines)
        msg = None
        if len(lines) > 1 and lines[1].startswith("message="):
            msg = lines[1][len("message="):]
        return lines[0][len("error="):], msg

    def list_groups(self):
        """{group id: (state, simple)}"""
        out = {}
        for line in self.run("list-groups"):
            kv = dict(f.split("=", 1) for f in line.split(" "))
            out[kv["group"]] = (kv["state"], kv["simple"])
        return out

    def describe_group(self, group):
        """(facts dict, [member dict])"""
        facts, members = {}, []
        for line in self.run("describe-group", group):
            if line.startswith("member "):
                members.append(dict(f.split("=", 1) for f in line[len("member "):].split(" ")))
            else:
                k, v = line.split("=", 1)
                facts[k] = v
        return facts, members

    def describe_config(self, topic):
        """(error name, {name: value} in response order)"""
        lines = self.run("describe-config", topic)
        assert lines and lines[0].startswith("error="), lines
        entries = dict(l.split("=", 1) for l in lines[1:] if not l.startswith("message="))
        return lines[0][len("error="):], entries


@pytest.fixture
def admin(rdkafka_admin, broker):
    return Admin(rdkafka_admin, broker)


def create_orders(broker):
    """Topic `orders` (3 partitions) with RECORDS records spread over it."""
    adm = AdminClient({"bootstrap.servers": broker.bootstrap})
    fut = adm.create_topics([NewTopic(TOPIC, PARTITIONS, 1)],
                            request_timeout=CLIENT_TIMEOUT_S)[TOPIC]
    fut.result(timeout=CLIENT_TIMEOUT_S)
    errors = []
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for i in range(RECORDS):
        p.produce(TOPIC, key=b"k%d" % i, value=b"order-%d" % i, partition=i % PARTITIONS,
                  on_delivery=lambda err, _msg: err and errors.append(err))
    assert p.flush(CLIENT_TIMEOUT_S) == 0, "records not delivered"
    assert not errors, errors
    return adm


def partition_count(adm, topic):
    md = adm.list_topics(topic=topic, timeout=CLIENT_TIMEOUT_S)
    t = md.topics[topic]
    assert t.error is None, t.error
    return len(t.partitions)


def joined_consumer(broker):
    """A consumer in GROUP that holds all of `orders`, has read every record
    and committed; the caller closes it."""
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": GROUP,
                  "client.id": CONSUMER_CLIENT_ID, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "partition.assignment.strategy": "range",
                  "session.timeout.ms": 10000})
    try:
        c.subscribe([TOPIC])
        seen = 0
        deadline = time.monotonic() + 15
        while seen < RECORDS or len(c.assignment()) < PARTITIONS:
            if time.monotonic() >= deadline:
                pytest.fail("consumer: %d/%d records, assignment %s after 15 s"
                            % (seen, RECORDS, c.assignment()), pytrace=False)
            m = c.poll(0.2)
            if m is None:
                continue
            assert m.error() is None, m.error()
            seen += 1
        assert seen == RECORDS
        assert sorted(tp.partition for tp in c.assignment()) == list(range(PARTITIONS))
        committed = c.commit(asynchronous=False)
        assert {tp.partition: tp.offset for tp in committed} == {
            p: RECORDS // PARTITIONS for p in range(PARTITIONS)}
        return c
    except BaseException:
        c.close()
        raise


def test_describe_and_delete_group(broker, admin):
    """DescribeConsumerGroups and DeleteGroups around a live, then closed,
    consumer group."""
    create_orders(broker)
    consumer = joined_consumer(broker)
    try:
        facts, members = admin.describe_group(GROUP)
        assert facts["group"] == GROUP
        assert facts["error"] == "NONE", facts
        assert facts["state"] == "Stable", facts
        assert facts["assignor"] == "range", facts
        assert facts["simple"] == "0", facts
        assert facts["coordinator"] == "0@%s" % broker.bootstrap, facts
        assert facts["members"] == "1", facts
        assert len(members) == 1, members
        m = members[0]
        assert m["client_id"] == CONSUMER_CLIENT_ID, m
        assert m["host"] == "/127.0.0.1", m
        assert m["consumer_id"].startswith(CONSUMER_CLIENT_ID + "-"), m
        assert m["assignment"] == "%s[0,1,2]" % TOPIC, m

        # librdkafka names code 68 NON_EMPTY_GROUP (Kafka: GROUP_NOT_EMPTY).
        assert admin.error("delete-group", GROUP)[0] == "NON_EMPTY_GROUP"
        facts, members = admin.describe_group(GROUP)
        assert (facts["state"], facts["members"], len(members)) == ("Stable", "1", 1), facts
    finally:
        consumer.close()

    facts, members = admin.describe_group(GROUP)
    assert (facts["error"], facts["state"], facts["members"], members) == ("NONE", "Empty", "0", []), facts

    assert admin.error("delete-group", GROUP) == ("NONE", None)
    facts, _ = admin.describe_group(GROUP)
    assert facts["state"] == "Dead", facts
    assert admin.error("delete-group", GROUP)[0] == "GROUP_ID_NOT_FOUND"
    assert admin.error("delete-group", "no-such-group")[0] == "GROUP_ID_NOT_FOUND"


def test_list_groups(broker, admin):
    """ListConsumerGroups with a live group, then after it is deleted.

    librdkafka 2.0.x sends ListGroups v3/v4 with its body's tagged-field
    byte written twice (`01 00 00`: empty StatesFilter, tags, one extra
    0x00). Apache Kafka ignores trailing bytes after a request body, so the
    call works there; a broker that rejects them closes the connection and
    the program exits 1 with `ListConsumerGroups: _TRANSPORT`."""
    create_orders(broker)
    consumer = joined_consumer(broker)
    try:
        groups = admin.list_groups()
        assert groups == {GROUP: ("Stable", "0")}, groups
    finally:
        consumer.close()
    groups = admin.list_groups()
    assert groups == {GROUP: ("Empty", "0")}, groups
    assert admin.error("delete-group", GROUP) == ("NONE", None)
    groups = admin.list_groups()
    assert GROUP not in groups and groups == {}, groups


def test_configs_and_partitions(broker, admin):
    """DescribeConfigs, AlterConfigs and CreatePartitions on `orders`."""
    adm = create_orders(broker)

    err, entries = admin.describe_config(TOPIC)
    assert err == "NONE"
    assert entries == DEFAULTS, entries

    assert admin.error("alter-config", TOPIC, "retention.ms", "120000") == ("NONE", None)
    err, entries = admin.describe_config(TOPIC)
    assert err == "NONE"
    assert entries == dict(DEFAULTS, **{"retention.ms": "120000"}), entries

    err, msg = admin.error("alter-config", TOPIC, "cleanup.policy", "compact")
    assert err == "INVALID_CONFIG", (err, msg)
    assert msg and "cleanup.policy" in msg, msg
    err, entries = admin.describe_config(TOPIC)
    assert entries == dict(DEFAULTS, **{"retention.ms": "120000"}), entries

    assert admin.error("create-partitions", TOPIC, 5) == ("NONE", None)
    assert partition_count(adm, TOPIC) == 5

    err, msg = admin.error("create-partitions", TOPIC, 2)
    assert err == "INVALID_PARTITIONS", (err, msg)
    assert msg and "5" in msg and "2" in msg, msg
    assert partition_count(adm, TOPIC) == 5

    err, entries = admin.describe_config("no-such-topic")
    assert err == "UNKNOWN_TOPIC_OR_PART", (err, entries)
    assert entries == {}
