"""Topic administration and metadata with real, independent Kafka clients:
kcat (librdkafka), confluent-kafka-python (librdkafka) and kafka-python
(pure Python), plus raw-protocol checks for API versions no client here
speaks (CreateTopics v5-7, DeleteTopics v4-6, DescribeCluster, Metadata v0-12).
"""

import json
import shutil
import subprocess
import time

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import errors as kerrors
from kafka.admin import KafkaAdminClient
from kafka.admin import NewTopic as KNewTopic

import kafka_wire as kw

CLIENT_TIMEOUT_S = 15
CONDITION_TIMEOUT_S = 10

EXPECTED_API_RANGES = kw.KAFSCALE_API_RANGES


def wait_until(cond, what, timeout=CONDITION_TIMEOUT_S):
    """Poll `cond` until it returns a truthy value or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            pytest.fail("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# confluent-kafka-python helpers
# ---------------------------------------------------------------------------

def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap,
                        "socket.timeout.ms": 10000})


def topics_of(adm):
    """{topic: partition count} from a fresh Metadata request."""
    md = adm.list_topics(timeout=CLIENT_TIMEOUT_S)
    return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}


def create(adm, new_topics, **kwargs):
    """Create topics; returns {name: None | error code (int)}."""
    futs = adm.create_topics(new_topics, request_timeout=CLIENT_TIMEOUT_S, **kwargs)
    out = {}
    for name, fut in futs.items():
        try:
            fut.result(timeout=CLIENT_TIMEOUT_S + 5)
            out[name] = None
        except KafkaException as e:
            out[name] = e.args[0].code()
    return out


def delete(adm, names):
    futs = adm.delete_topics(names, request_timeout=CLIENT_TIMEOUT_S)
    out = {}
    for name, fut in futs.items():
        try:
            fut.result(timeout=CLIENT_TIMEOUT_S + 5)
            out[name] = None
        except KafkaException as e:
            out[name] = e.args[0].code()
    return out


def create_ok(adm, name, partitions, config=None):
    res = create(adm, [NewTopic(name, partitions, 1, config=config or {})])
    assert res == {name: None}, "create %s failed: %r" % (name, res)
    wait_until(lambda: topics_of(adm).get(name) == partitions,
               "topic %s with %d partitions in metadata" % (name, partitions))


# ---------------------------------------------------------------------------
# kcat
# ---------------------------------------------------------------------------

def test_kcat_metadata_json(broker):
    kcat = shutil.which("kcat")
    assert kcat, "kcat not installed (scripts/install-deps.sh --test)"
    adm = admin(broker)
    create_ok(adm, "kcat-alpha", 3)
    create_ok(adm, "kcat-beta", 1)

    out = subprocess.run([kcat, "-b", broker.bootstrap, "-L", "-J", "-m", "10"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, "kcat failed: %s" % out.stderr
    md = json.loads(out.stdout)

    brokers = md["brokers"]
    assert [b["name"] for b in brokers] == [broker.bootstrap], brokers
    broker_ids = {b["id"] for b in brokers}

    topics = {t["topic"]: t for t in md["topics"]}
    assert {"kcat-alpha", "kcat-beta"} <= set(topics), topics.keys()
    for name, n in (("kcat-alpha", 3), ("kcat-beta", 1)):
        t = topics[name]
        assert "error" not in t, t
        assert sorted(p["partition"] for p in t["partitions"]) == list(range(n))
        for p in t["partitions"]:
            assert p["leader"] in broker_ids, p
            assert "error" not in p, p


# ---------------------------------------------------------------------------
# confluent-kafka-python AdminClient
# ---------------------------------------------------------------------------

def test_create_topic_and_list(broker):
    adm = admin(broker)
    create_ok(adm, "orders", 3)
    md = adm.list_topics(timeout=CLIENT_TIMEOUT_S)
    assert [(b.host, b.port) for b in md.brokers.values()] == [(broker.host, broker.port)]
    t = md.topics["orders"]
    assert sorted(t.partitions) == [0, 1, 2]
    for p in t.partitions.values():
        assert p.error is None
        assert p.leader in md.brokers
        assert p.replicas == [p.leader]
        assert p.isrs == [p.leader]


def test_create_existing_topic_fails(broker):
    adm = admin(broker)
    create_ok(adm, "dup", 3)
    assert create(adm, [NewTopic("dup", 3, 1)]) == {"dup": kw.TOPIC_ALREADY_EXISTS}
    # validate_only reports the conflict too; the topic is untouched.
    assert create(adm, [NewTopic("dup", 5, 1)], validate_only=True) == {"dup": kw.TOPIC_ALREADY_EXISTS}
    assert topics_of(adm)["dup"] == 3


def test_create_validate_only_creates_nothing(broker):
    adm = admin(broker)
    assert create(adm, [NewTopic("dry-run", 3, 1)], validate_only=True) == {"dry-run": None}
    # A real creation afterwards acts as a barrier: once it is visible, a
    # (wrongly) created dry-run topic would be visible too.
    create_ok(adm, "real-one", 1)
    assert "dry-run" not in topics_of(adm)
    # And the name is still free.
    create_ok(adm, "dry-run", 2)


@pytest.mark.parametrize("name", [
    "bad/name", ".", "..", "a" * 250, "with space", "star*", "uml\u00e4ut",
], ids=["slash", "dot", "dotdot", "250-chars", "space", "star", "non-ascii"])
def test_create_invalid_topic_name(broker, name):
    adm = admin(broker)
    assert create(adm, [NewTopic(name, 1, 1)]) == {name: kw.INVALID_TOPIC_EXCEPTION}
    assert name not in topics_of(adm)


@pytest.mark.parametrize("name", ["a" * 249, "Mixed.Case_and-dash-09", "_underscore"],
                         ids=["249-chars", "mixed", "underscore"])
def test_create_valid_edge_topic_names(broker, name):
    adm = admin(broker)
    create_ok(adm, name, 1)


def test_create_zero_partitions(broker):
    # (librdkafka itself refuses counts below -1, so those are tested raw.)
    adm = admin(broker)
    assert create(adm, [NewTopic("parts", 0, 1)]) == {"parts": kw.INVALID_PARTITIONS}
    assert "parts" not in topics_of(adm)


def test_create_default_partitions_and_replication(broker):
    """num_partitions = replication_factor = -1 (CreateTopics v4+) means
    'use the broker defaults'."""
    adm = admin(broker)
    assert create(adm, [NewTopic("defaults", -1, -1)]) == {"defaults": None}
    n = wait_until(lambda: topics_of(adm).get("defaults"), "topic 'defaults' in metadata")
    assert n >= 1


@pytest.mark.parametrize("rf", [3, 0])
def test_create_invalid_replication_factor(broker, rf):
    adm = admin(broker)
    assert create(adm, [NewTopic("rf", 1, rf)]) == {"rf": kw.INVALID_REPLICATION_FACTOR}
    assert "rf" not in topics_of(adm)


def test_create_with_valid_config(broker):
    adm = admin(broker)
    create_ok(adm, "short-lived", 1, config={"retention.ms": "1000"})


@pytest.mark.parametrize("config", [
    {"no.such.config": "1"},
    {"retention.ms": "not-a-number"},
], ids=["unknown-key", "bad-value"])
def test_create_with_invalid_config(broker, config):
    adm = admin(broker)
    assert create(adm, [NewTopic("cfg", 1, 1, config=config)]) == {"cfg": kw.INVALID_CONFIG}
    assert "cfg" not in topics_of(adm)


def test_create_many_topics_in_one_request(broker):
    adm = admin(broker)
    names = ["batch-%d" % i for i in range(5)]
    res = create(adm, [NewTopic(n, i + 1, 1) for i, n in enumerate(names)]
                 + [NewTopic("bad/one", 1, 1)])
    assert res == dict({n: None for n in names}, **{"bad/one": kw.INVALID_TOPIC_EXCEPTION})
    wait_until(lambda: all(topics_of(adm).get(n) == i + 1 for i, n in enumerate(names)),
               "all batch topics in metadata")


def test_delete_topic(broker):
    adm = admin(broker)
    create_ok(adm, "doomed", 2)
    create_ok(adm, "survivor", 1)
    assert delete(adm, ["doomed"]) == {"doomed": None}
    wait_until(lambda: "doomed" not in topics_of(adm), "topic 'doomed' to disappear")
    assert topics_of(adm).get("survivor") == 1
    assert delete(adm, ["doomed"]) == {"doomed": kw.UNKNOWN_TOPIC_OR_PARTITION}
    # The name can be used again, with a different shape.
    create_ok(adm, "doomed", 4)


def test_delete_unknown_topic(broker):
    adm = admin(broker)
    assert delete(adm, ["never-existed"]) == {"never-existed": kw.UNKNOWN_TOPIC_OR_PARTITION}


def test_topics_survive_restart(broker):
    adm = admin(broker)
    create_ok(adm, "persist-a", 4, config={"retention.ms": "60000"})
    create_ok(adm, "persist-b", 1)
    create_ok(adm, "persist-gone", 2)
    assert delete(adm, ["persist-gone"]) == {"persist-gone": None}
    wait_until(lambda: "persist-gone" not in topics_of(adm), "deleted topic to disappear")
    del adm

    broker.restart()

    adm = admin(broker)
    t = topics_of(adm)
    assert t.get("persist-a") == 4 and t.get("persist-b") == 1, t
    assert "persist-gone" not in t
    assert create(adm, [NewTopic("persist-a", 1, 1)]) == {"persist-a": kw.TOPIC_ALREADY_EXISTS}


# ---------------------------------------------------------------------------
# kafka-python KafkaAdminClient
# ---------------------------------------------------------------------------

@pytest.fixture
def kadmin(broker):
    c = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="kafscale-it",
                         request_timeout_ms=CLIENT_TIMEOUT_S * 1000,
                         api_version_auto_timeout_ms=10000)
    yield c
    c.close()


def test_kafka_python_api_versions(kadmin):
    versions = kadmin._client.get_api_versions()
    for key, rng in EXPECTED_API_RANGES.items():
        assert versions.get(key) == rng, "api key %d: %r" % (key, versions.get(key))
    assert kadmin.config["api_version"] >= (1, 0, 0)


def test_kafka_python_topic_lifecycle(kadmin):
    kadmin.create_topics([KNewTopic("kp-topic", 3, 1)])
    wait_until(lambda: "kp-topic" in kadmin.list_topics(), "kp-topic listed")
    desc = {t["topic"]: t for t in kadmin.describe_topics(["kp-topic"])}
    assert desc["kp-topic"]["error_code"] == 0
    assert sorted(p["partition"] for p in desc["kp-topic"]["partitions"]) == [0, 1, 2]

    with pytest.raises(kerrors.TopicAlreadyExistsError):
        kadmin.create_topics([KNewTopic("kp-topic", 3, 1)])
    with pytest.raises(kerrors.InvalidPartitionsError):
        kadmin.create_topics([KNewTopic("kp-zero", 0, 1)])
    with pytest.raises(kerrors.InvalidReplicationFactorError):
        kadmin.create_topics([KNewTopic("kp-rf", 1, 3)])
    with pytest.raises(kerrors.InvalidTopicError):
        kadmin.create_topics([KNewTopic("kp/bad", 1, 1)])

    kadmin.create_topics([KNewTopic("kp-dry", 1, 1)], validate_only=True)
    kadmin.delete_topics(["kp-topic"])
    wait_until(lambda: "kp-topic" not in kadmin.list_topics(), "kp-topic gone")
    assert "kp-dry" not in kadmin.list_topics()
    with pytest.raises(kerrors.UnknownTopicOrPartitionError):
        kadmin.delete_topics(["kp-topic"])


def test_kafka_python_describe_cluster(broker, kadmin):
    c = kadmin.describe_cluster()
    brokers = c["brokers"]
    assert [(b["host"], b["port"]) for b in brokers] == [(broker.host, broker.port)]
    assert c["controller_id"] == brokers[0]["node_id"]
    if "cluster_id" in c:  # Metadata v2+
        assert c["cluster_id"]


# ---------------------------------------------------------------------------
# Raw protocol: versions no installed client exercises
# ---------------------------------------------------------------------------

def test_api_versions_raw_v3(broker):
    with kw.Conn(broker.host, broker.port) as c:
        r = c.request(kw.API_VERSIONS, 3, kw.api_versions_body(3))
        error, keys, throttle = kw.decode_api_versions(r, 3)
        assert error == kw.NONE and throttle == 0
        for key, rng in EXPECTED_API_RANGES.items():
            assert keys.get(key) == rng, "api key %d: %r" % (key, keys.get(key))


@pytest.mark.parametrize("version", range(0, 13))
def test_metadata_every_version_raw(broker, version):
    adm = admin(broker)
    create_ok(adm, "md-topic", 3)
    with kw.Conn(broker.host, broker.port) as c:
        # All topics (v0: empty list means all).
        md = kw.decode_metadata(c.request(kw.METADATA, version, kw.metadata_body(version)), version)
        assert [(h, p) for _, h, p, _ in md["brokers"]] == [(broker.host, broker.port)]
        node_id = md["brokers"][0][0]
        if version >= 1:
            assert md["controller_id"] == node_id
        if version >= 2:
            assert md["cluster_id"]
        err, parts = md["topics"]["md-topic"]
        assert err == kw.NONE and sorted(parts) == [0, 1, 2]
        # One named topic plus one unknown topic.
        body = kw.metadata_body(version, ["md-topic", "md-missing"])
        md = kw.decode_metadata(c.request(kw.METADATA, version, body), version)
        assert md["topics"]["md-topic"][0] == kw.NONE
        if version >= 4:
            # AllowAutoTopicCreation=false: the topic is unknown and stays so.
            assert md["topics"]["md-missing"][0] == kw.UNKNOWN_TOPIC_OR_PARTITION
            assert "md-missing" not in topics_of(adm), "Metadata v%d auto-created a topic" % version
        else:
            # v0-3 imply auto-creation where the broker enables it (Kafka's
            # default): unknown, or being created (LEADER_NOT_AVAILABLE), or created.
            assert md["topics"]["md-missing"][0] in (
                kw.UNKNOWN_TOPIC_OR_PARTITION, kw.LEADER_NOT_AVAILABLE, kw.NONE)


@pytest.mark.parametrize("version", range(0, 8))
def test_create_and_delete_topics_every_version_raw(broker, version):
    name = "raw-v%d" % version
    dversion = min(version, 6)
    with kw.Conn(broker.host, broker.port) as c:
        body = kw.create_topics_body(version, [(name, 2, 1, {"retention.ms": "3600000"}),
                                               ("bad/raw", 1, 1, {})])
        res = kw.decode_create_topics(c.request(kw.CREATE_TOPICS, version, body), version)
        assert set(res) == {name, "bad/raw"}
        assert res[name]["error_code"] == kw.NONE, res[name]
        assert res["bad/raw"]["error_code"] == kw.INVALID_TOPIC_EXCEPTION
        if version >= 5:
            assert res[name]["num_partitions"] == 2
            assert res[name]["replication_factor"] == 1
            if res[name]["configs"] is not None:
                assert res[name]["configs"].get("retention.ms") == "3600000"
        if version >= 7:
            assert res[name]["topic_id"] != bytes(16)

        res = kw.decode_create_topics(c.request(kw.CREATE_TOPICS, version, body), version)
        assert res[name]["error_code"] == kw.TOPIC_ALREADY_EXISTS

        md = kw.decode_metadata(c.request(kw.METADATA, 4, kw.metadata_body(4, [name])), 4)
        err, parts = md["topics"][name]
        assert err == kw.NONE and sorted(parts) == [0, 1]

        body = kw.delete_topics_body(dversion, [name, "raw-unknown"])
        res = kw.decode_delete_topics(c.request(kw.DELETE_TOPICS, dversion, body), dversion)
        assert res[name][0] == kw.NONE
        assert res["raw-unknown"][0] == kw.UNKNOWN_TOPIC_OR_PARTITION

        md = kw.decode_metadata(c.request(kw.METADATA, 4, kw.metadata_body(4, [name])), 4)
        assert md["topics"][name][0] == kw.UNKNOWN_TOPIC_OR_PARTITION


@pytest.mark.parametrize("partitions,rf,error", [
    (0, 1, kw.INVALID_PARTITIONS),
    (-2, 1, kw.INVALID_PARTITIONS),
    (-2147483648, 1, kw.INVALID_PARTITIONS),
    (1, 0, kw.INVALID_REPLICATION_FACTOR),
    (1, -2, kw.INVALID_REPLICATION_FACTOR),
    (1, 3, kw.INVALID_REPLICATION_FACTOR),
], ids=["p0", "p-2", "p-min", "rf0", "rf-2", "rf3"])
def test_create_topics_bad_counts_raw(broker, partitions, rf, error):
    with kw.Conn(broker.host, broker.port) as c:
        body = kw.create_topics_body(7, [("counts", partitions, rf, {})])
        res = kw.decode_create_topics(c.request(kw.CREATE_TOPICS, 7, body), 7)
        assert res["counts"]["error_code"] == error, res
        md = kw.decode_metadata(c.request(kw.METADATA, 1, kw.metadata_body(1)), 1)
        assert "counts" not in md["topics"]


@pytest.mark.parametrize("version", [0, 1])
def test_describe_cluster_raw(broker, version):
    with kw.Conn(broker.host, broker.port) as c:
        dc = kw.decode_describe_cluster(
            c.request(kw.DESCRIBE_CLUSTER, version, kw.describe_cluster_body(version)), version)
        md = kw.decode_metadata(c.request(kw.METADATA, 12, kw.metadata_body(12)), 12)
    assert dc["error_code"] == kw.NONE, dc
    if version >= 1:
        assert dc["endpoint_type"] == 1
    assert [(h, p) for _, h, p, _ in dc["brokers"]] == [(broker.host, broker.port)]
    assert dc["brokers"][0][0] == md["brokers"][0][0]
    assert dc["controller_id"] == md["controller_id"] == md["brokers"][0][0]
    assert dc["cluster_id"] and dc["cluster_id"] == md["cluster_id"]
