"""The S3 object-store backend against a real S3-compatible server (s3rver).

Runs the same behavioural suite that the memory and local-directory backends
pass (tests/unit/test_objstore.c, tests objstore_s3_*) against s3rver, then
checks the operator-facing failures: a wrong bucket and a stopped server.

    KAFSCALE_UNIT_TESTS_BIN   unit-test binary (default <repo>/build/kafscale-unit-tests)

s3rver comes from `scripts/install-deps.sh --test` (<repo>/.tools) and runs as
ENVIRONMENT.md says: Node's --openssl-legacy-provider (paged listings fail
without it), a free port, a fresh directory, bucket `kafscale`, keys
S3RVER/S3RVER. It does not verify SigV4 signatures, so the signer is checked
separately (tests/unit/test_sigv4.c, known answers from botocore).

s3rver rewrites object files in place, so it cannot replace objects
atomically; the suite is told so (KAFSCALE_TEST_S3_SERVER=s3rver) and
reports the two atomicity assertions as NOTE lines instead of checking them.
"""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

import harness
from harness import BUCKET, S3RVER_JS  # noqa: F401  (re-exported for other modules)

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT_BIN = Path(os.environ.get("KAFSCALE_UNIT_TESTS_BIN", REPO_ROOT / "build" / "kafscale-unit-tests"))

SUITE_DEADLINE_S = 300.0
# Per operation the unit test allows 4 attempts x 2 s + backoffs; it runs 4
# operations. The whole binary must finish well within this.
DOWN_DEADLINE_S = 60.0

SUMMARY_RE = re.compile(r"^(\d+) tests run, (\d+) passed, (\d+) failed$", re.M)


# The S3rver helper lives in harness.py (shared with the cluster-mode
# tests); other modules import it from here too.
free_port = harness.free_port
S3rver = harness.S3rver


@pytest.fixture(scope="module")
def s3rver(tmp_path_factory):
    srv = S3rver(tmp_path_factory.mktemp("s3"))
    srv.start()
    yield srv
    srv.stop()


def run_unit(filter_, extra_env, timeout):
    """Runs the unit-test binary on the tests whose names contain filter_.
    Returns (returncode, stdout, stderr, (run, passed, failed), seconds)."""
    if not UNIT_BIN.is_file():
        pytest.fail("unit-test binary %s not found: run `make` (or set KAFSCALE_UNIT_TESTS_BIN)" % UNIT_BIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFSCALE_")}
    env.update(extra_env)
    t0 = time.monotonic()
    p = subprocess.run([str(UNIT_BIN), "-v", filter_], env=env, capture_output=True, text=True, timeout=timeout)
    took = time.monotonic() - t0
    m = None
    for m in SUMMARY_RE.finditer(p.stdout):
        pass
    counts = tuple(int(x) for x in m.groups()) if m else (0, 0, 0)
    return p.returncode, p.stdout, p.stderr, counts, took


def explain(out, err):
    return "--- stdout ---\n%s\n--- stderr (tail) ---\n%s" % (out[-8000:], err[-4000:])


def s3_env(endpoint):
    return {
        "KAFSCALE_TEST_S3_ENDPOINT": endpoint,
        "KAFSCALE_TEST_S3_BUCKET": BUCKET,
        "KAFSCALE_TEST_S3_ACCESS_KEY": "S3RVER",
        "KAFSCALE_TEST_S3_SECRET_KEY": "S3RVER",
        "KAFSCALE_TEST_S3_SERVER": "s3rver",
    }


def test_objstore_suite_against_s3rver(s3rver):
    rc, out, err, (run, passed, failed), took = run_unit("objstore_s3_", s3_env(s3rver.endpoint), SUITE_DEADLINE_S)
    assert rc == 0 and failed == 0, "suite failed against s3rver (%d/%d passed):\n%s" % (
        passed, run, explain(out, err))
    assert "SKIP" not in out, "suite skipped S3 cases although the endpoint was set:\n" + explain(out, err)
    # The behavioural cases (13) plus the S3-only ones that need a server.
    assert run >= 14, "only %d tests matched objstore_s3_:\n%s" % (run, out)
    # Each behavioural case really ran against the server.
    for case in ("put_get", "ranged_get", "list_prefix_sorted", "delete_idempotent", "iovec_put",
                 "large_object", "concurrent_puts", "many_keys_list", "bad_keys", "check_ok"):
        assert "RUN  objstore_s3_%s\n" % case in out, "case %s did not run" % case
    assert s3rver.proc.poll() is None, "s3rver died during the suite:\n" + s3rver.log_text()


def test_wrong_bucket_gives_clear_check_failure(s3rver):
    rc, out, err, (run, passed, failed), _ = run_unit("objstore_s3_check_wrong_bucket", s3_env(s3rver.endpoint), 60)
    assert rc == 0 and run == 1 and failed == 0, explain(out, err)
    m = re.search(r"^check message: (.*)$", out, re.M)
    assert m, "no check message printed:\n" + out
    msg = m.group(1)
    assert re.search(r'S3 bucket "kafscale-missing-\d+" does not exist at ' + re.escape(s3rver.endpoint), msg), msg
    assert "KAFSCALE_S3_BUCKET" in msg, msg


def test_stopped_server_gives_unavailable_in_bounded_time(tmp_path):
    srv = S3rver(tmp_path)
    srv.start()
    try:
        # Working first: the suite's basic case passes against it.
        rc, out, err, (run, _, failed), _ = run_unit("objstore_s3_put_get", s3_env(srv.endpoint), 60)
        assert rc == 0 and run == 1 and failed == 0, explain(out, err)
    finally:
        srv.stop()
    assert srv.proc.returncode is not None

    env = s3_env(srv.endpoint)
    env["KAFSCALE_TEST_S3_DOWN_ENDPOINT"] = srv.endpoint
    rc, out, err, (run, _, failed), took = run_unit("objstore_s3down_", env, DOWN_DEADLINE_S)
    assert rc == 0 and run == 1 and failed == 0, explain(out, err)
    assert "SKIP" not in out, out
    m = re.search(r"^down: put (\d+) ms, get (\d+) ms, list (\d+) ms, check (\d+) ms$", out, re.M)
    assert m, out
    assert took < DOWN_DEADLINE_S
    # Retries are logged where they happen, with the operation and error.
    assert "event=s3_retry op=put" in err, err[-4000:]
    assert "event=s3_request_failed op=put" in err, err[-4000:]
    msg = re.search(r"^check message: (.*)$", out, re.M).group(1)
    assert "unreachable" in msg and srv.endpoint in msg, msg
