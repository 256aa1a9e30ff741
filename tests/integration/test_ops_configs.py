"""Config and partition administration: DescribeConfigs v0-4, AlterConfigs
v0-2, IncrementalAlterConfigs v0-1 and CreatePartitions v0-3.

* Raw protocol (kafka_wire.py framing, encoders below) at every version:
  response shapes field by field, the config surface of the ops
  specification (topic whitelist retention.ms / retention.bytes /
  segment.bytes; the broker's read-only keys) and exact error codes and
  messages (Apache Kafka's where the specification is silent).
* Real clients: kafka-python's KafkaAdminClient and confluent-kafka's
  AdminClient (describe_configs / alter_configs / create_partitions).
* Behaviour: new partitions serve at once; a running producer and a
  consumer group pick them up after a metadata refresh; configs and grown
  partitions survive a restart; segment.bytes bounds a partition's flush.
"""

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic
from kafka import errors as kerrors
from kafka.admin import ConfigResource as KConfigResource
from kafka.admin import ConfigResourceType as KConfigResourceType
from kafka.admin import KafkaAdminClient
from kafka.admin import NewPartitions as KNewPartitions

import kafka_wire as kw

DESCRIBE_CONFIGS = 32
ALTER_CONFIGS = 33
CREATE_PARTITIONS = 37
INCREMENTAL_ALTER_CONFIGS = 44

# First flexible versions of the APIs encoded here (kafka_wire picks the
# request/response header version from this table).
for _key, _first in {DESCRIBE_CONFIGS: 4, ALTER_CONFIGS: 2, CREATE_PARTITIONS: 2,
                     INCREMENTAL_ALTER_CONFIGS: 1}.items():
    kw.FIRST_FLEXIBLE_VERSION.setdefault(_key, _first)

API_RANGES = {DESCRIBE_CONFIGS: (0, 4), ALTER_CONFIGS: (0, 2), CREATE_PARTITIONS: (0, 3),
              INCREMENTAL_ALTER_CONFIGS: (0, 1)}

# Resource types, config sources, config types, incremental operations.
TOPIC, BROKER, BROKER_LOGGER, CLIENT_METRICS, GROUP = 2, 4, 8, 16, 32
SRC_DYNAMIC_TOPIC, SRC_STATIC_BROKER, SRC_DEFAULT = 1, 4, 5
T_STRING, T_INT, T_LONG = 2, 3, 5
OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = 0, 1, 2, 3

INVALID_REPLICA_ASSIGNMENT = 39

DEFAULTS = {"retention.ms": "604800000", "retention.bytes": "-1", "segment.bytes": "1073741824"}
TOPIC_KEYS = ["retention.ms", "retention.bytes", "segment.bytes"]
TOPIC_TYPES = {"retention.ms": T_LONG, "retention.bytes": T_LONG, "segment.bytes": T_INT}
KAFKA_SYNONYMS = {"retention.ms": ("log.retention.hours", "168"),
                  "retention.bytes": ("log.retention.bytes", "-1"),
                  "segment.bytes": ("log.segment.bytes", "1073741824")}
BROKER_KEYS = ["broker.id", "advertised.listeners", "kafscale.s3.bucket", "kafscale.s3.region",
               "kafscale.s3.endpoint", "kafscale.cache.bytes", "kafscale.readahead.segments",
               "kafscale.segment.bytes", "kafscale.flush.interval.ms", "kafscale.produce.buffer.bytes"]
BROKER_TYPES = {"broker.id": T_INT, "advertised.listeners": T_STRING, "kafscale.s3.bucket": T_STRING,
                "kafscale.s3.region": T_STRING, "kafscale.s3.endpoint": T_STRING,
                "kafscale.cache.bytes": T_LONG, "kafscale.readahead.segments": T_INT,
                "kafscale.segment.bytes": T_LONG, "kafscale.flush.interval.ms": T_LONG,
                "kafscale.produce.buffer.bytes": T_LONG}

CLIENT_TIMEOUT_S = 15
CONDITION_TIMEOUT_S = 30
INITIAL_REBALANCE_DELAY_MS = 300


@pytest.fixture(scope="module")
def broker_extra_env():
    return {"KAFSCALE_GROUP_INITIAL_REBALANCE_DELAY_MS": str(INITIAL_REBALANCE_DELAY_MS)}


def uniq(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def wait_until(cond, what, timeout=CONDITION_TIMEOUT_S, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            pytest.fail("timed out after %.0f s waiting for %s" % (timeout, what), pytrace=False)
        time.sleep(interval)


def expected_broker_values(broker):
    """The broker's keys under the test fixture: local object store, or (in
    the suite's cluster mode, conftest.py) the S3 settings it was given."""
    env = broker.env()
    bucket = env.get("KAFSCALE_S3_BUCKET") or None
    return {"broker.id": "0", "advertised.listeners": "PLAINTEXT://%s:%d" % (broker.host, broker.port),
            "kafscale.s3.bucket": bucket,
            "kafscale.s3.region": (env.get("KAFSCALE_S3_REGION") or "us-east-1") if bucket else None,
            "kafscale.s3.endpoint": env.get("KAFSCALE_S3_ENDPOINT") if bucket else None,
            "kafscale.cache.bytes": "268435456", "kafscale.readahead.segments": "2",
            "kafscale.segment.bytes": "4194304",
            "kafscale.flush.interval.ms": env.get("KAFSCALE_FLUSH_INTERVAL_MS") or ("150" if bucket else "5"),
            "kafscale.produce.buffer.bytes": env.get("KAFSCALE_PRODUCE_BUFFER_BYTES") or "134217728"}


# ---------------------------------------------------------------------------
# Wire encoders / decoders
# ---------------------------------------------------------------------------

class Enc:
    """kw.Writer with the string/array flavour of one version."""

    def __init__(self, flexible):
        self.w = kw.Writer()
        self.flexible = flexible

    def string(self, s):
        (self.w.compact_string if self.flexible else self.w.string)(s)
        return self

    def array_len(self, n):
        (self.w.compact_array_len if self.flexible else self.w.array_len)(n)
        return self

    def tags(self):
        if self.flexible:
            self.w.tagged_fields()
        return self

    def bytes(self):
        return self.w.bytes()


class Dec:
    def __init__(self, r, flexible):
        self.r = r
        self.flexible = flexible

    def string(self):
        return self.r.compact_string() if self.flexible else self.r.string()

    def array_len(self):
        return self.r.compact_array_len() if self.flexible else self.r.array_len()

    def tags(self):
        if self.flexible:
            self.r.skip_tagged_fields()


def describe_configs_body(version, resources, synonyms=False, docs=False):
    """resources: [(type, name, keys or None)]."""
    e = Enc(version >= 4)
    e.array_len(len(resources))
    for rtype, name, keys in resources:
        e.w.int8(rtype)
        e.string(name)
        e.array_len(None if keys is None else len(keys))
        for k in keys or []:
            e.string(k)
        e.tags()
    if version >= 1:
        e.w.bool(synonyms)
    if version >= 3:
        e.w.bool(docs)
    return e.tags().bytes()


def decode_describe_configs(r, version):
    """[{'error_code', 'error_message', 'type', 'name', 'configs': [{...}]}];
    per config: name, value, read_only, is_sensitive, and by version
    is_default (v0), source and synonyms [(name, value, source)] (v1+),
    type and doc (v3+)."""
    d = Dec(r, version >= 4)
    assert r.int32() == 0  # throttle
    out = []
    for _ in range(d.array_len() or 0):
        res = {"error_code": r.int16(), "error_message": d.string(), "type": r.int8(), "name": d.string(),
               "configs": []}
        for _ in range(d.array_len() or 0):
            c = {"name": d.string(), "value": d.string(), "read_only": r.bool()}
            if version == 0:
                c["is_default"] = r.bool()
            if version >= 1:
                c["source"] = r.int8()
            c["is_sensitive"] = r.bool()
            if version >= 1:
                c["synonyms"] = []
                for _ in range(d.array_len() or 0):
                    c["synonyms"].append((d.string(), d.string(), r.int8()))
                    d.tags()
            if version >= 3:
                c["type"] = r.int8()
                c["doc"] = d.string()
            d.tags()
            res["configs"].append(c)
        d.tags()
        out.append(res)
    d.tags()
    r.expect_end()
    return out


def alter_configs_body(version, resources, validate_only=False):
    """resources: [(type, name, [(key, value)])]."""
    e = Enc(version >= 2)
    e.array_len(len(resources))
    for rtype, name, configs in resources:
        e.w.int8(rtype)
        e.string(name)
        e.array_len(len(configs))
        for k, v in configs:
            e.string(k)
            e.string(v)
            e.tags()
        e.tags()
    e.w.bool(validate_only)
    return e.tags().bytes()


def incremental_alter_configs_body(version, resources, validate_only=False):
    """resources: [(type, name, [(key, op, value)])]."""
    e = Enc(version >= 1)
    e.array_len(len(resources))
    for rtype, name, configs in resources:
        e.w.int8(rtype)
        e.string(name)
        e.array_len(len(configs))
        for k, op, v in configs:
            e.string(k)
            e.w.int8(op)
            e.string(v)
            e.tags()
        e.tags()
    e.w.bool(validate_only)
    return e.tags().bytes()


def decode_alter_configs(r, flexible):
    """[(error_code, error_message, type, name)] (both alter APIs)."""
    d = Dec(r, flexible)
    assert r.int32() == 0  # throttle
    out = []
    for _ in range(d.array_len() or 0):
        out.append((r.int16(), d.string(), r.int8(), d.string()))
        d.tags()
    d.tags()
    r.expect_end()
    return out


def create_partitions_body(version, topics, validate_only=False, timeout_ms=10000):
    """topics: [(name, count, assignments: None or [[broker ids]])]."""
    e = Enc(version >= 2)
    e.array_len(len(topics))
    for name, count, assignments in topics:
        e.string(name)
        e.w.int32(count)
        e.array_len(None if assignments is None else len(assignments))
        for ids in assignments or []:
            e.array_len(len(ids))
            for i in ids:
                e.w.int32(i)
            e.tags()
        e.tags()
    e.w.int32(timeout_ms)
    e.w.bool(validate_only)
    return e.tags().bytes()


def decode_create_partitions(r, version):
    """[(name, error_code, error_message)]."""
    d = Dec(r, version >= 2)
    assert r.int32() == 0  # throttle
    out = []
    for _ in range(d.array_len() or 0):
        out.append((d.string(), r.int16(), d.string()))
        d.tags()
    d.tags()
    r.expect_end()
    return out


def describe(c, version, resources, synonyms=False, docs=False):
    r = c.request(DESCRIBE_CONFIGS, version, describe_configs_body(version, resources, synonyms, docs))
    return decode_describe_configs(r, version)


def alter(c, version, resources, validate_only=False):
    r = c.request(ALTER_CONFIGS, version, alter_configs_body(version, resources, validate_only))
    return decode_alter_configs(r, version >= 2)


def incremental(c, version, resources, validate_only=False):
    r = c.request(INCREMENTAL_ALTER_CONFIGS, version,
                  incremental_alter_configs_body(version, resources, validate_only))
    return decode_alter_configs(r, version >= 1)


def create_partitions(c, version, topics, validate_only=False):
    r = c.request(CREATE_PARTITIONS, version, create_partitions_body(version, topics, validate_only))
    return decode_create_partitions(r, version)


def topic_values(c, topic):
    """{key: (value, source)} of a topic (DescribeConfigs v1)."""
    [res] = describe(c, 1, [(TOPIC, topic, None)])
    assert res["error_code"] == 0, res
    return {cfg["name"]: (cfg["value"], cfg["source"]) for cfg in res["configs"]}


def explicit(**values):
    """Expected topic_values(): the given keys set on the topic, the rest defaults."""
    out = {k: (DEFAULTS[k], SRC_DEFAULT) for k in TOPIC_KEYS}
    for k, v in values.items():
        out[k.replace("_", ".")] = (str(v), SRC_DYNAMIC_TOPIC)
    return out


def partition_count(c, topic):
    md = kw.decode_metadata(c.request(kw.METADATA, 9, kw.metadata_body(9, [topic])), 9)
    err, parts = md["topics"][topic]
    assert err == 0
    return len(parts)


def create_topic(broker, name, partitions, configs=None):
    with kw.Conn(broker.host, broker.port) as c:
        r = c.request(kw.CREATE_TOPICS, 5, kw.create_topics_body(5, [(name, partitions, 1, configs or {})]))
        res = kw.decode_create_topics(r, 5)
    assert res[name]["error_code"] == 0, res


# ---------------------------------------------------------------------------
# ApiVersions
# ---------------------------------------------------------------------------

def test_api_versions_advertise_config_apis(broker):
    with kw.Conn(broker.host, broker.port) as c:
        for v in (0, 3):
            error, keys, _ = kw.decode_api_versions(c.request(kw.API_VERSIONS, v, kw.api_versions_body(v)), v)
            assert error == 0
            for key, rng in API_RANGES.items():
                assert keys.get(key) == rng, "api key %d: %r" % (key, keys.get(key))


# ---------------------------------------------------------------------------
# DescribeConfigs
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", range(0, 5))
def test_describe_topic_every_version(broker, version):
    create_topic(broker, "dc", 1, {"retention.ms": "3600000"})
    with kw.Conn(broker.host, broker.port) as c:
        for synonyms, docs in ((True, True), (False, False)):
            [res] = describe(c, version, [(TOPIC, "dc", None)], synonyms, docs)
            assert (res["error_code"], res["error_message"], res["type"], res["name"]) == (0, None, TOPIC, "dc")
            assert [cfg["name"] for cfg in res["configs"]] == TOPIC_KEYS
            for cfg in res["configs"]:
                name = cfg["name"]
                is_set = name == "retention.ms"
                assert cfg["value"] == ("3600000" if is_set else DEFAULTS[name])
                assert cfg["read_only"] is False and cfg["is_sensitive"] is False
                if version == 0:
                    assert cfg["is_default"] is (not is_set)
                if version >= 1:
                    assert cfg["source"] == (SRC_DYNAMIC_TOPIC if is_set else SRC_DEFAULT)
                    want = []
                    if synonyms:
                        if is_set:
                            want.append((name, "3600000", SRC_DYNAMIC_TOPIC))
                        want.append(KAFKA_SYNONYMS[name] + (SRC_DEFAULT,))
                    assert cfg["synonyms"] == want
                if version >= 3:
                    assert cfg["type"] == TOPIC_TYPES[name]
                    if docs:
                        assert cfg["doc"] and len(cfg["doc"]) < 300
                    else:
                        assert cfg["doc"] is None


@pytest.mark.parametrize("version", range(0, 5))
def test_describe_broker_every_version(broker, version):
    want = expected_broker_values(broker)
    with kw.Conn(broker.host, broker.port) as c:
        [res] = describe(c, version, [(BROKER, "0", None)], synonyms=True, docs=True)
        assert (res["error_code"], res["error_message"], res["type"], res["name"]) == (0, None, BROKER, "0")
        assert [cfg["name"] for cfg in res["configs"]] == BROKER_KEYS
        for cfg in res["configs"]:
            name = cfg["name"]
            assert cfg["value"] == want[name], name
            assert cfg["read_only"] is True and cfg["is_sensitive"] is False
            if version == 0:
                assert cfg["is_default"] is False
            if version >= 1:
                assert cfg["source"] == SRC_STATIC_BROKER
                assert cfg["synonyms"] == [(name, want[name], SRC_STATIC_BROKER)]
            if version >= 3:
                assert cfg["type"] == BROKER_TYPES[name], name
                assert cfg["doc"]
        # A subset; unknown keys are ignored.
        [res] = describe(c, version, [(BROKER, "0", ["kafscale.segment.bytes", "log.dirs", "broker.id"])])
        assert [(cfg["name"], cfg["value"]) for cfg in res["configs"]] == \
            [("broker.id", "0"), ("kafscale.segment.bytes", "4194304")]
        # "" is the cluster-wide dynamic default resource: Kafscale has none.
        [res] = describe(c, version, [(BROKER, "", None)])
        assert (res["error_code"], res["error_message"], res["configs"]) == (0, None, [])


@pytest.mark.parametrize("version", range(0, 5))
def test_describe_key_filter(broker, version):
    create_topic(broker, "kf", 1, {"segment.bytes": "1048576"})
    with kw.Conn(broker.host, broker.port) as c:
        cases = [
            (None, TOPIC_KEYS),
            ([], TOPIC_KEYS),  # Kafka: an empty list means every key too
            (["segment.bytes", "cleanup.policy", "retention.ms"], ["retention.ms", "segment.bytes"]),
            (["no.such.key", "log.retention.hours"], []),
            (["retention.bytes"], ["retention.bytes"]),
        ]
        for keys, names in cases:
            [res] = describe(c, version, [(TOPIC, "kf", keys)])
            assert res["error_code"] == 0
            assert [cfg["name"] for cfg in res["configs"]] == names, keys
        [res] = describe(c, version, [(TOPIC, "kf", ["segment.bytes"])])
        assert res["configs"][0]["value"] == "1048576"


@pytest.mark.parametrize("version", range(0, 5))
def test_describe_errors_every_version(broker, version):
    create_topic(broker, "de", 1)
    resources = [
        (TOPIC, "no-such-topic", None),
        (TOPIC, "bad name!", None),
        (TOPIC, "", None),
        (BROKER, "7", None),
        (BROKER, "abc", None),
        (BROKER_LOGGER, "0", None),
        (GROUP, "g", None),
        (CLIENT_METRICS, "m", None),
        (99, "x", None),
        (TOPIC, "de", ["retention.ms"]),
    ]
    with kw.Conn(broker.host, broker.port) as c:
        res = describe(c, version, resources)
    assert [(x["type"], x["name"]) for x in res] == [(t, n) for t, n, _ in resources]
    codes = [x["error_code"] for x in res]
    assert codes == [kw.UNKNOWN_TOPIC_OR_PARTITION, kw.INVALID_TOPIC_EXCEPTION, kw.INVALID_TOPIC_EXCEPTION,
                     kw.INVALID_REQUEST, kw.INVALID_REQUEST, kw.INVALID_REQUEST, kw.INVALID_REQUEST,
                     kw.INVALID_REQUEST, kw.INVALID_REQUEST, 0]
    for x in res[:-1]:
        assert x["configs"] == []
    assert res[0]["error_message"] is None  # as Kafka
    assert "character" in res[1]["error_message"]
    assert res[3]["error_message"] == "Unexpected broker id, expected 0 or empty string, but received 7"
    assert res[4]["error_message"] == "Broker id must be an integer, but it is: abc"
    for x in res[5:9]:
        assert "Unsupported resource type" in x["error_message"]
    assert [cfg["name"] for cfg in res[-1]["configs"]] == ["retention.ms"]


# ---------------------------------------------------------------------------
# AlterConfigs
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", range(0, 3))
def test_alter_configs_every_version(broker, version):
    create_topic(broker, "ac", 1)
    with kw.Conn(broker.host, broker.port) as c:
        ok = [(0, None, TOPIC, "ac")]
        assert alter(c, version, [(TOPIC, "ac", [("retention.ms", "1000"), ("segment.bytes", "2048")])]) == ok
        assert topic_values(c, "ac") == explicit(retention_ms=1000, segment_bytes=2048)
        # Full replacement: keys not given go back to their defaults.
        assert alter(c, version, [(TOPIC, "ac", [("retention.bytes", "4096")])]) == ok
        assert topic_values(c, "ac") == explicit(retention_bytes=4096)
        # validateOnly changes nothing.
        assert alter(c, version, [(TOPIC, "ac", [("retention.ms", "5")])], validate_only=True) == ok
        assert topic_values(c, "ac") == explicit(retention_bytes=4096)
        # Limits of the whitelist.
        assert alter(c, version, [(TOPIC, "ac", [("retention.ms", "-1"), ("retention.bytes", "0"),
                                                 ("segment.bytes", "1")])]) == ok
        assert topic_values(c, "ac") == explicit(retention_ms=-1, retention_bytes=0, segment_bytes=1)
        # Setting a default value explicitly still counts as set.
        assert alter(c, version, [(TOPIC, "ac", [("retention.ms", "604800000")])]) == ok
        assert topic_values(c, "ac") == explicit(retention_ms=604800000)
        # An empty set clears everything.
        assert alter(c, version, [(TOPIC, "ac", [])]) == ok
        assert topic_values(c, "ac") == explicit()


@pytest.mark.parametrize("version", range(0, 3))
def test_alter_configs_errors_every_version(broker, version):
    create_topic(broker, "ae", 1, {"retention.ms": "1234"})
    before = explicit(retention_ms=1234)

    def one(name, configs, rtype=TOPIC):
        with kw.Conn(broker.host, broker.port) as c:
            [(code, msg, t, n)] = alter(c, version, [(rtype, name, configs)])
        assert (t, n) == (rtype, name)
        return code, msg

    code, msg = one("ae", [("cleanup.policy", "compact")])
    assert code == kw.INVALID_CONFIG and "cleanup.policy" in msg and "not supported" in msg
    for key, value in (("retention.bytes", "-2"), ("retention.ms", "-5"), ("segment.bytes", "0"),
                       ("segment.bytes", "-1"), ("retention.ms", "abc"), ("retention.ms", ""),
                       ("retention.ms", "1e3"), ("retention.bytes", "99999999999999999999")):
        code, msg = one("ae", [(key, value)])
        assert code == kw.INVALID_CONFIG, (key, value)
        assert key in msg
    # One bad entry rejects the whole resource.
    code, _ = one("ae", [("retention.bytes", "10"), ("segment.bytes", "0")])
    assert code == kw.INVALID_CONFIG
    code, msg = one("0", [("broker.id", "5")], BROKER)
    assert code == kw.INVALID_CONFIG and "read-only" in msg
    code, msg = one("", [("kafscale.cache.bytes", "1")], BROKER)
    assert code == kw.INVALID_CONFIG
    code, msg = one("missing", [("retention.ms", "1")])
    assert (code, msg) == (kw.UNKNOWN_TOPIC_OR_PARTITION, "The topic 'missing' does not exist.")
    code, msg = one("ae", [("retention.ms", "1"), ("retention.ms", "2")])
    assert (code, msg) == (kw.INVALID_REQUEST, "Error due to duplicate config keys")
    code, msg = one("ae", [("retention.ms", None), ("segment.bytes", None)])
    assert (code, msg) == (kw.INVALID_REQUEST, "Null value not supported for : retention.ms, segment.bytes")
    code, msg = one("0", [], BROKER_LOGGER)
    assert code == kw.INVALID_REQUEST and "Unsupported resource type" in msg
    code, msg = one("g", [], GROUP)
    assert code == kw.INVALID_REQUEST

    with kw.Conn(broker.host, broker.port) as c:
        assert topic_values(c, "ae") == before
        # Per-resource results, in request order; a resource named twice
        # fails both times; the good one is applied.
        create_topic(broker, "ae2", 1)
        res = alter(c, version, [(TOPIC, "ae", [("bogus", "1")]),
                                 (TOPIC, "ae2", [("retention.bytes", "777")]),
                                 (BROKER, "0", []),
                                 (TOPIC, "dup", [("retention.ms", "1")]),
                                 (TOPIC, "dup", [("retention.ms", "2")])])
        assert [(code, t, n) for code, _, t, n in res] == [
            (kw.INVALID_CONFIG, TOPIC, "ae"), (0, TOPIC, "ae2"), (kw.INVALID_CONFIG, BROKER, "0"),
            (kw.INVALID_REQUEST, TOPIC, "dup"), (kw.INVALID_REQUEST, TOPIC, "dup")]
        assert res[3][1] == res[4][1] == "Each resource must appear at most once."
        assert res[1][1] is None
        assert topic_values(c, "ae") == before
        assert topic_values(c, "ae2") == explicit(retention_bytes=777)


# ---------------------------------------------------------------------------
# IncrementalAlterConfigs
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", range(0, 2))
def test_incremental_alter_configs_every_version(broker, version):
    create_topic(broker, "ia", 1)
    ok = [(0, None, TOPIC, "ia")]
    with kw.Conn(broker.host, broker.port) as c:
        assert incremental(c, version, [(TOPIC, "ia", [("retention.ms", OP_SET, "1000")])]) == ok
        assert topic_values(c, "ia") == explicit(retention_ms=1000)
        # Other keys are kept.
        assert incremental(c, version, [(TOPIC, "ia", [("segment.bytes", OP_SET, "4096")])]) == ok
        assert topic_values(c, "ia") == explicit(retention_ms=1000, segment_bytes=4096)
        # DELETE returns a key to its default (value may be null or not).
        assert incremental(c, version, [(TOPIC, "ia", [("retention.ms", OP_DELETE, None)])]) == ok
        assert topic_values(c, "ia") == explicit(segment_bytes=4096)
        assert incremental(c, version, [(TOPIC, "ia", [("retention.bytes", OP_DELETE, "ignored"),
                                                       ("segment.bytes", OP_SET, "8192")])]) == ok
        assert topic_values(c, "ia") == explicit(segment_bytes=8192)
        # validateOnly changes nothing.
        assert incremental(c, version, [(TOPIC, "ia", [("retention.ms", OP_SET, "1")])],
                           validate_only=True) == ok
        assert incremental(c, version, [(TOPIC, "ia", [("segment.bytes", OP_DELETE, None)])],
                           validate_only=True) == ok
        assert topic_values(c, "ia") == explicit(segment_bytes=8192)

        def one(configs, name="ia", rtype=TOPIC):
            [(code, msg, t, n)] = incremental(c, version, [(rtype, name, configs)])
            assert (t, n) == (rtype, name)
            return code, msg

        assert one([("retention.ms", OP_APPEND, "5")]) == \
            (kw.INVALID_CONFIG, "Can't APPEND to key retention.ms because its type is not LIST.")
        assert one([("segment.bytes", OP_SUBTRACT, "5")]) == \
            (kw.INVALID_CONFIG, "Can't SUBTRACT to key segment.bytes because its type is not LIST.")
        code, msg = one([("min.insync.replicas", OP_SET, "2")])
        assert code == kw.INVALID_CONFIG and "not supported" in msg
        code, msg = one([("min.insync.replicas", OP_DELETE, None)])
        assert code == kw.INVALID_CONFIG and "not supported" in msg
        code, msg = one([("retention.bytes", OP_SET, "-7")])
        assert code == kw.INVALID_CONFIG and "retention.bytes" in msg
        assert one([("retention.ms", 7, "1")]) == (kw.INVALID_REQUEST, "Unknown operation type 7")
        assert one([("retention.ms", OP_SET, None)]) == \
            (kw.INVALID_REQUEST, "Null value not supported for : retention.ms")
        assert one([("retention.ms", OP_SET, "1"), ("retention.ms", OP_DELETE, None)]) == \
            (kw.INVALID_REQUEST, "Error due to duplicate config keys")
        code, msg = one([("broker.id", OP_SET, "3")], "0", BROKER)
        assert code == kw.INVALID_CONFIG and "read-only" in msg
        code, msg = one([("retention.ms", OP_SET, "1")], "gone")
        assert (code, msg) == (kw.UNKNOWN_TOPIC_OR_PARTITION, "The topic 'gone' does not exist.")
        code, msg = one([], "0", BROKER_LOGGER)
        assert code == kw.INVALID_REQUEST
        # A resource fails as a whole.
        code, _ = one([("retention.ms", OP_SET, "2"), ("retention.bytes", OP_APPEND, "1")])
        assert code == kw.INVALID_CONFIG
        res = incremental(c, version, [(TOPIC, "ia", [("retention.ms", OP_SET, "3")]),
                                       (TOPIC, "ia", [("retention.ms", OP_SET, "4")])])
        assert [(code, msg) for code, msg, _, _ in res] == \
            [(kw.INVALID_REQUEST, "Each resource must appear at most once.")] * 2
        assert topic_values(c, "ia") == explicit(segment_bytes=8192)


# ---------------------------------------------------------------------------
# CreatePartitions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", range(0, 4))
def test_create_partitions_every_version(broker, version):
    create_topic(broker, "cp", 2)
    create_topic(broker, "cp2", 1)
    with kw.Conn(broker.host, broker.port) as c:
        assert create_partitions(c, version, [("cp", 3, None)]) == [("cp", 0, None)]
        assert partition_count(c, "cp") == 3  # visible in the very next request
        assert create_partitions(c, version, [("cp", 5, None)], validate_only=True) == [("cp", 0, None)]
        assert partition_count(c, "cp") == 3
        assert create_partitions(c, version, [("cp", 3, None)]) == \
            [("cp", kw.INVALID_PARTITIONS, "Topic already has 3 partitions.")]
        assert create_partitions(c, version, [("cp", 1, None)]) == \
            [("cp", kw.INVALID_PARTITIONS, "Topic currently has 3 partitions, which is higher than the requested 1.")]
        assert create_partitions(c, version, [("cp", 2, None)], validate_only=True) == \
            [("cp", kw.INVALID_PARTITIONS, "Topic currently has 3 partitions, which is higher than the requested 2.")]
        [(n, code, msg)] = create_partitions(c, version, [("cp", 10001, None)])
        assert code == kw.INVALID_PARTITIONS and "10000" in msg
        assert create_partitions(c, version, [("nope", 4, None)]) == \
            [("nope", kw.UNKNOWN_TOPIC_OR_PARTITION, "The topic 'nope' does not exist.")]
        # A name given twice: one result.
        assert create_partitions(c, version, [("cp", 9, None), ("cp2", 2, None), ("cp", 8, None)]) == \
            [("cp", kw.INVALID_REQUEST, "Duplicate topic name."), ("cp2", 0, None)]
        assert partition_count(c, "cp") == 3 and partition_count(c, "cp2") == 2

        # Manual assignments: only this broker (id 0) can lead a partition.
        assert create_partitions(c, version, [("cp", 4, [[0]])]) == [("cp", 0, None)]
        assert create_partitions(c, version, [("cp", 6, [[0], [0]])], validate_only=True) == [("cp", 0, None)]
        assert create_partitions(c, version, [("cp", 5, [[7]])]) == \
            [("cp", INVALID_REPLICA_ASSIGNMENT, "Unknown broker(s) in replica assignment: 7.")]
        assert create_partitions(c, version, [("cp", 6, [[0], [3, 7], [3]])]) == \
            [("cp", INVALID_REPLICA_ASSIGNMENT, "Unknown broker(s) in replica assignment: 3, 7.")]
        assert create_partitions(c, version, [("cp", 5, [[0], [0]])]) == \
            [("cp", INVALID_REPLICA_ASSIGNMENT, "Increasing the number of partitions by 1 but 2 assignments provided.")]
        assert create_partitions(c, version, [("cp", 5, [])]) == \
            [("cp", INVALID_REPLICA_ASSIGNMENT, "Increasing the number of partitions by 1 but 0 assignments provided.")]
        assert create_partitions(c, version, [("cp", 5, [[0, 0]])]) == \
            [("cp", INVALID_REPLICA_ASSIGNMENT,
              "Duplicate brokers not allowed in replica assignment: 0, 0 for partition id 4.")]
        assert create_partitions(c, version, [("cp", 5, [[]])]) == \
            [("cp", INVALID_REPLICA_ASSIGNMENT, "Inconsistent replication factor between partitions, "
                                                "partition 0 has 1 while partitions [4] have replication factors "
                                                "[0], respectively.")]
        assert partition_count(c, "cp") == 4

        # Several topics: per-topic results in request order.
        res = create_partitions(c, version, [("cp2", 4, None), ("missing", 2, None), ("cp", 2, None)])
        assert [(n, code) for n, code, _ in res] == \
            [("cp2", 0), ("missing", kw.UNKNOWN_TOPIC_OR_PARTITION), ("cp", kw.INVALID_PARTITIONS)]
        assert partition_count(c, "cp2") == 4
        # Topic configs are untouched by growing.
        assert topic_values(c, "cp") == explicit()


def test_new_partitions_serve_at_once(broker):
    create_topic(broker, "grow-now", 1, {"retention.ms": "86400000"})
    with kw.Conn(broker.host, broker.port) as c:
        assert create_partitions(c, 3, [("grow-now", 3, None)]) == [("grow-now", 0, None)]
        assert partition_count(c, "grow-now") == 3
        assert topic_values(c, "grow-now") == explicit(retention_ms=86400000)
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0})
    delivered = []
    for part in (1, 2):
        p.produce("grow-now", key=b"k%d" % part, value=b"v%d" % part, partition=part,
                  on_delivery=lambda err, m: delivered.append((err, m.partition(), m.offset())))
    assert p.flush(CLIENT_TIMEOUT_S) == 0
    assert sorted(delivered) == [(None, 1, 0), (None, 2, 0)]
    cons = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": uniq("g"),
                     "enable.auto.commit": False, "auto.offset.reset": "error"})
    try:
        cons.assign([TopicPartition("grow-now", 1, 0), TopicPartition("grow-now", 2, 0)])
        got = {}
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(got) < 2 and time.monotonic() < deadline:
            m = cons.poll(0.2)
            if m is not None and not m.error():
                got[m.partition()] = m.value()
        assert got == {1: b"v1", 2: b"v2"}
    finally:
        cons.close()


def test_concurrent_create_partitions(broker):
    """Racing growths of one topic: each is checked against the count it
    read, the largest wins, and every partition ends up served."""
    create_topic(broker, "race", 1)
    results = {}

    def grow(count):
        with kw.Conn(broker.host, broker.port) as c:
            results[count] = create_partitions(c, 3, [("race", count, None)])[0][1:]

    threads = [threading.Thread(target=grow, args=(n,)) for n in range(2, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CLIENT_TIMEOUT_S)
    assert len(results) == 10
    assert results[11] == (0, None)
    for count, (code, msg) in results.items():
        assert code in (0, kw.INVALID_PARTITIONS), (count, code, msg)
    with kw.Conn(broker.host, broker.port) as c:
        assert partition_count(c, "race") == 11
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0})
    delivered = []
    for part in range(11):
        p.produce("race", value=b"x", partition=part,
                  on_delivery=lambda err, m: delivered.append((err is None, m.partition(), m.offset())))
    assert p.flush(CLIENT_TIMEOUT_S) == 0
    assert sorted(delivered) == [(True, part, 0) for part in range(11)]


# ---------------------------------------------------------------------------
# Real clients
# ---------------------------------------------------------------------------

@pytest.fixture
def kadmin(broker):
    c = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="kafscale-it",
                         request_timeout_ms=CLIENT_TIMEOUT_S * 1000, api_version_auto_timeout_ms=10000)
    yield c
    c.close()


def test_kafka_python_admin(broker, kadmin):
    create_topic(broker, "kp", 2)
    [resp] = kadmin.describe_configs([KConfigResource(KConfigResourceType.TOPIC, "kp")])
    [(err, _msg, rtype, name, entries)] = resp.resources
    assert (err, rtype, name) == (0, TOPIC, "kp")
    assert {e[0]: e[1] for e in entries} == DEFAULTS
    assert all(e[2] is False for e in entries)  # read-only

    resp = kadmin.alter_configs([KConfigResource(KConfigResourceType.TOPIC, "kp",
                                                 configs={"retention.ms": "120000", "segment.bytes": "65536"})])
    assert [tuple(r[:1]) + tuple(r[2:]) for r in resp.resources] == [(0, TOPIC, "kp")]
    [resp] = kadmin.describe_configs([KConfigResource(KConfigResourceType.TOPIC, "kp",
                                                      configs={"retention.ms": None, "segment.bytes": None})],
                                     include_synonyms=True)
    entries = resp.resources[0][4]
    assert {e[0]: e[1] for e in entries} == {"retention.ms": "120000", "segment.bytes": "65536"}
    for e in entries:
        assert e[5][0] == (e[0], e[1], SRC_DYNAMIC_TOPIC)  # first synonym: the topic's value

    resp = kadmin.alter_configs([KConfigResource(KConfigResourceType.TOPIC, "kp", configs={"flush.ms": "1"})])
    assert resp.resources[0][0] == kw.INVALID_CONFIG
    resp = kadmin.alter_configs([KConfigResource(KConfigResourceType.BROKER, "0", configs={"broker.id": "1"})])
    assert resp.resources[0][0] == kw.INVALID_CONFIG

    [resp] = kadmin.describe_configs([KConfigResource(KConfigResourceType.BROKER, "0")])
    [(err, _msg, rtype, name, entries)] = resp.resources
    assert (err, rtype, name) == (0, BROKER, "0")
    values = {e[0]: e[1] for e in entries}
    assert values == expected_broker_values(broker)
    assert all(e[2] is True for e in entries)

    resp = kadmin.create_partitions({"kp": KNewPartitions(5)})
    assert [tuple(t[:2]) for t in resp.topic_errors] == [("kp", 0)]
    assert len(kadmin.describe_topics(["kp"])[0]["partitions"]) == 5
    resp = kadmin.create_partitions({"kp": KNewPartitions(7)}, validate_only=True)
    assert [tuple(t[:2]) for t in resp.topic_errors] == [("kp", 0)]
    with pytest.raises(kerrors.InvalidPartitionsError):
        kadmin.create_partitions({"kp": KNewPartitions(5)})
    with pytest.raises(kerrors.InvalidPartitionsError):
        kadmin.create_partitions({"kp": KNewPartitions(3)})
    with pytest.raises(kerrors.UnknownTopicOrPartitionError):
        kadmin.create_partitions({"kp-missing": KNewPartitions(3)})
    assert len(kadmin.describe_topics(["kp"])[0]["partitions"]) == 5


def confluent_admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap, "socket.timeout.ms": 10000})


def cdescribe(adm, resource):
    return adm.describe_configs([resource], request_timeout=CLIENT_TIMEOUT_S)[resource].result(
        timeout=CLIENT_TIMEOUT_S + 5)


def kafka_error(fut):
    with pytest.raises(KafkaException) as ei:
        fut.result(timeout=CLIENT_TIMEOUT_S + 5)
    return ei.value.args[0]


def test_confluent_admin(broker):
    adm = confluent_admin(broker)
    fs = adm.create_topics([NewTopic("ck", 1, 1, config={"retention.bytes": "1048576"})],
                           request_timeout=CLIENT_TIMEOUT_S)
    fs["ck"].result(timeout=CLIENT_TIMEOUT_S + 5)

    cfg = cdescribe(adm, ConfigResource("topic", "ck"))
    assert {k: v.value for k, v in cfg.items()} == dict(DEFAULTS, **{"retention.bytes": "1048576"})
    assert cfg["retention.bytes"].source == SRC_DYNAMIC_TOPIC and not cfg["retention.bytes"].is_default
    assert cfg["retention.ms"].source == SRC_DEFAULT and cfg["retention.ms"].is_default
    assert not any(v.is_read_only or v.is_sensitive for v in cfg.values())
    assert [s.name for s in cfg["retention.bytes"].synonyms.values()] == ["retention.bytes", "log.retention.bytes"]

    # alter_configs is AlterConfigs: a full replacement.
    res = ConfigResource("topic", "ck", set_config={"retention.ms": "60000"})
    adm.alter_configs([res], request_timeout=CLIENT_TIMEOUT_S)[res].result(timeout=CLIENT_TIMEOUT_S + 5)
    cfg = cdescribe(adm, ConfigResource("topic", "ck"))
    assert {k: v.value for k, v in cfg.items()} == dict(DEFAULTS, **{"retention.ms": "60000"})
    res = ConfigResource("topic", "ck", set_config={"retention.ms": "1"})
    adm.alter_configs([res], validate_only=True, request_timeout=CLIENT_TIMEOUT_S)[res].result(
        timeout=CLIENT_TIMEOUT_S + 5)
    assert cdescribe(adm, ConfigResource("topic", "ck"))["retention.ms"].value == "60000"

    res = ConfigResource("topic", "ck", set_config={"segment.bytes": "0"})
    err = kafka_error(adm.alter_configs([res], request_timeout=CLIENT_TIMEOUT_S)[res])
    assert err.code() == kw.INVALID_CONFIG and "segment.bytes" in err.str()
    res = ConfigResource("topic", "ck", set_config={"compression.type": "lz4"})
    assert kafka_error(adm.alter_configs([res], request_timeout=CLIENT_TIMEOUT_S)[res]).code() == kw.INVALID_CONFIG
    res = ConfigResource("broker", "0", set_config={"kafscale.cache.bytes": "1"})
    err = kafka_error(adm.alter_configs([res], request_timeout=CLIENT_TIMEOUT_S)[res])
    assert err.code() == kw.INVALID_CONFIG and "read-only" in err.str()
    res = ConfigResource("topic", "ck-missing")
    assert kafka_error(adm.describe_configs([res], request_timeout=CLIENT_TIMEOUT_S)[res]).code() == \
        kw.UNKNOWN_TOPIC_OR_PARTITION

    cfg = cdescribe(adm, ConfigResource("broker", "0"))
    assert {k: v.value for k, v in cfg.items()} == expected_broker_values(broker)
    assert all(v.is_read_only and v.source == SRC_STATIC_BROKER for v in cfg.values())

    fs = adm.create_partitions([NewPartitions("ck", 3)], request_timeout=CLIENT_TIMEOUT_S)
    fs["ck"].result(timeout=CLIENT_TIMEOUT_S + 5)
    fs = adm.create_partitions([NewPartitions("ck", 6)], validate_only=True, request_timeout=CLIENT_TIMEOUT_S)
    fs["ck"].result(timeout=CLIENT_TIMEOUT_S + 5)
    wait_until(lambda: len(adm.list_topics("ck", timeout=CLIENT_TIMEOUT_S).topics["ck"].partitions) == 3,
               "3 partitions")
    fs = adm.create_partitions([NewPartitions("ck", 2)], request_timeout=CLIENT_TIMEOUT_S)
    err = kafka_error(fs["ck"])
    assert err.code() == kw.INVALID_PARTITIONS
    assert err.str() == "Topic currently has 3 partitions, which is higher than the requested 2."
    fs = adm.create_partitions([NewPartitions("ck", 4, replica_assignment=[[5]])], request_timeout=CLIENT_TIMEOUT_S)
    assert kafka_error(fs["ck"]).code() == INVALID_REPLICA_ASSIGNMENT
    fs = adm.create_partitions([NewPartitions("ck", 4, replica_assignment=[[0]])], request_timeout=CLIENT_TIMEOUT_S)
    fs["ck"].result(timeout=CLIENT_TIMEOUT_S + 5)
    assert len(adm.list_topics("ck", timeout=CLIENT_TIMEOUT_S).topics["ck"].partitions) == 4


# ---------------------------------------------------------------------------
# Growing under load; persistence; segment.bytes in effect
# ---------------------------------------------------------------------------

def test_create_partitions_under_producer_and_group(broker):
    topic = uniq("live")
    create_topic(broker, topic, 2)
    delivered = {}  # partition -> count
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[msg.partition()] = delivered.get(msg.partition(), 0) + 1

    prod = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 2,
                     "topic.metadata.refresh.interval.ms": 500, "partitioner": "random"})
    cons = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": uniq("grp"),
                     "auto.offset.reset": "earliest", "enable.auto.commit": True,
                     "topic.metadata.refresh.interval.ms": 500, "session.timeout.ms": 10000,
                     "heartbeat.interval.ms": 500})
    received = {}  # partition -> values
    try:
        cons.subscribe([topic])
        seq = [0]

        def pump(seconds):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                prod.produce(topic, value=b"m-%06d" % seq[0], on_delivery=on_delivery)
                seq[0] += 1
                prod.poll(0)
                m = cons.poll(0.01)
                if m is not None and not m.error():
                    received.setdefault(m.partition(), set()).add(m.value())

        def until(cond, what):
            deadline = time.monotonic() + CONDITION_TIMEOUT_S
            while not cond():
                if time.monotonic() >= deadline:
                    pytest.fail("timed out waiting for %s: delivered %r, received %r, errors %r" % (
                        what, delivered, {p: len(v) for p, v in received.items()}, errors[:3]), pytrace=False)
                pump(0.1)

        until(lambda: set(received) == {0, 1}, "the group consuming both partitions")
        with kw.Conn(broker.host, broker.port) as c:
            assert create_partitions(c, 3, [(topic, 4, None)]) == [(topic, 0, None)]
        until(lambda: {2, 3} <= set(delivered), "the producer writing to the new partitions")
        until(lambda: set(received) == {0, 1, 2, 3}, "the group consuming the new partitions")
        assert {tp.partition for tp in cons.assignment()} == {0, 1, 2, 3}
        assert prod.flush(CLIENT_TIMEOUT_S) == 0
        assert not errors, errors[:5]
        # Everything delivered is received (nothing lost around the growth).
        total = sum(delivered.values())
        until(lambda: sum(len(v) for v in received.values()) >= total, "every delivered record consumed")
    finally:
        cons.close()


def test_configs_and_partitions_survive_restart(broker):
    create_topic(broker, "keep", 1)
    with kw.Conn(broker.host, broker.port) as c:
        assert alter(c, 1, [(TOPIC, "keep", [("retention.ms", "90000"), ("segment.bytes", "524288")])]) == \
            [(0, None, TOPIC, "keep")]
        assert incremental(c, 1, [(TOPIC, "keep", [("retention.bytes", OP_SET, "1000000")])]) == \
            [(0, None, TOPIC, "keep")]
        assert create_partitions(c, 1, [("keep", 3, None)]) == [("keep", 0, None)]
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    p.produce("keep", value=b"on-new-partition", partition=2)
    assert p.flush(CLIENT_TIMEOUT_S) == 0
    del p

    broker.restart()

    want = explicit(retention_ms=90000, segment_bytes=524288, retention_bytes=1000000)
    with kw.Conn(broker.host, broker.port) as c:
        assert topic_values(c, "keep") == want
        assert partition_count(c, "keep") == 3
        # Growing again after the restart works from the stored count.
        assert create_partitions(c, 2, [("keep", 3, None)]) == \
            [("keep", kw.INVALID_PARTITIONS, "Topic already has 3 partitions.")]
        assert create_partitions(c, 2, [("keep", 4, None)]) == [("keep", 0, None)]
    cons = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": uniq("g"),
                     "enable.auto.commit": False, "auto.offset.reset": "error"})
    try:
        cons.assign([TopicPartition("keep", 2, 0)])
        m = wait_until(lambda: (lambda x: x if x is not None and not x.error() else None)(cons.poll(0.2)),
                       "the record on partition 2")
        assert m.value() == b"on-new-partition"
    finally:
        cons.close()


@pytest.mark.parametrize("broker_extra_env", [{"KAFSCALE_FLUSH_INTERVAL_MS": "60000"}], ids=["flush-60s"])
def test_segment_bytes_bounds_flush(broker):
    """With a one-minute flush interval only the size bound can flush
    within the test: a topic whose segment.bytes is 2048 gets its produce
    acknowledged at once and its data written as several small segments;
    without the bound the acknowledgement would wait the full minute."""
    b = broker
    create_topic(b, "small-seg", 1)
    with kw.Conn(b.host, b.port) as c:
        assert incremental(c, 1, [(TOPIC, "small-seg", [("segment.bytes", OP_SET, "2048")])]) == \
            [(0, None, TOPIC, "small-seg")]
        [res] = describe(c, 4, [(BROKER, "0", ["kafscale.flush.interval.ms"])])
        assert res["configs"][0]["value"] == "60000"
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 0,
                  "max.in.flight.requests.per.connection": 1})
    t0 = time.monotonic()
    for i in range(8):
        p.produce("small-seg", value=bytes([65 + i]) * 3000, partition=0)
        assert p.flush(20) == 0, "record %d not acknowledged within 20 s" % i
    assert time.monotonic() - t0 < 30
    segs = [k for k in b.objects.keys("small-seg/0/") if k.endswith(".kfs")]
    assert len(segs) >= 8, segs
