"""Runs every Python example of docs/operations.md ("Ops examples"), in
order, against a fresh broker holding a topic `orders` and a consumer group
`my-group` that consumed and committed. The documentation is the test."""

import re
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def examples():
    text = DOC.read_text()
    section = text.split("## Ops examples", 1)[1]
    section = re.split(r"\n## (?!#)", section, 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def prepare(bs):
    admin = AdminClient({"bootstrap.servers": bs})
    admin.create_topics([NewTopic("orders", 3, 1)])["orders"].result(10)
    p = Producer({"bootstrap.servers": bs, "acks": "all"})
    for i in range(30):
        p.produce("orders", value=b"order-%d" % i)
    assert p.flush(10) == 0
    c = Consumer({"bootstrap.servers": bs, "group.id": "my-group", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe(["orders"])
    got, end = 0, time.monotonic() + 20
    while got < 30 and time.monotonic() < end:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got += 1
    assert got == 30
    c.commit(asynchronous=False)
    c.close()


def test_operations_doc_examples(broker):
    blocks = examples()
    assert len(blocks) >= 8, "expected the seed's ops examples in %s" % DOC
    prepare(broker.bootstrap)
    ops_example = str(Path(broker.binary).parent / "examples" / "ops_example")
    env = {"BOOTSTRAP": broker.bootstrap, "OPS_EXAMPLE": ops_example}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, "%s[example %d]" % (DOC.name, i + 1), "exec"), env)
        except Exception as e:
            raise AssertionError("example %d of %s failed: %r\n%s" % (i + 1, DOC, e, code))
