#!/usr/bin/env bash
# Every test suite, as CI runs it (`make test` installs test deps, then runs this):
#   1. build (make all)                    5. integration tests, ASan+UBSan broker,
#   2. unit tests                             then unit tests under TSan (make tsan)
#                                             and under valgrind memcheck
#   3. ASan+UBSan build (make asan)        6. integration tests, normal broker
#   4. unit tests under ASan+UBSan         7. integration tests, cluster mode
#                                             (etcd + s3rver), normal broker
#                                          8. fuzz targets (make fuzz), short runs
# Stops at the first failure and says which step failed.
#
# Knobs: FUZZ_SECONDS (per target, default 20), JOBS (make -j, default 2),
#        PYTEST_ARGS (extra pytest arguments, e.g. "-x -k bad_input"),
#        CLUSTER_TESTS (modules of step 7, default: the list below; "all" =
#        the whole integration suite in cluster mode).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

JOBS="${JOBS:-2}"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
PYTHON=/usr/bin/python3          # Debian's interpreter: sees python3-kafka etc.
read -r -a PYTEST_EXTRA <<< "${PYTEST_ARGS:-}"

SAN_ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
SAN_UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

declare -a SUMMARY=()
CURRENT=""
STEP_T0=0
RUN_T0=$(date +%s)

banner() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

begin() {
  CURRENT="$1"
  STEP_T0=$(date +%s)
  banner "$CURRENT"
}

end() {
  SUMMARY+=("$(printf 'PASS  %-52s %4ss' "$CURRENT" "$(( $(date +%s) - STEP_T0 ))")")
  CURRENT=""
}

skip() {
  SUMMARY+=("$(printf 'SKIP  %-52s %s' "$1" "$2")")
  banner "SKIP $1: $2"
}

on_exit() {
  local rc=$?
  printf '\n\033[1m==> Summary\033[0m\n'
  local line
  for line in "${SUMMARY[@]+"${SUMMARY[@]}"}"; do printf '  %s\n' "$line"; done
  if [[ $rc -ne 0 ]]; then
    if [[ -n "$CURRENT" ]]; then
      printf '  FAIL  %-52s %4ss\n' "$CURRENT" "$(( $(date +%s) - STEP_T0 ))"
    fi
    printf '\nTESTS FAILED (exit %d) after %ss\n' "$rc" "$(( $(date +%s) - RUN_T0 ))"
  else
    printf '\nALL TESTS PASSED in %ss\n' "$(( $(date +%s) - RUN_T0 ))"
  fi
}
trap on_exit EXIT

have_integration_tests() {
  compgen -G "tests/integration/test_*.py" >/dev/null
}

run_integration() {  # $1 = broker binary, then test paths (default: all)
  local bin="$1"; shift
  [[ $# -gt 0 ]] || set -- tests/integration
  KAFSCALE_BROKER_BIN="$ROOT/$bin" "$PYTHON" -m pytest -q -p no:cacheprovider \
    "$@" "${PYTEST_EXTRA[@]+"${PYTEST_EXTRA[@]}"}"
}

# Step 7: these modules run again with KAFSCALE_TEST_MODE=cluster, every
# broker on one session etcd + s3rver (tests/integration/conftest.py);
# test_cluster_etcd.py, test_cluster_failover.py (three brokers, kill -9,
# SIGSTOP, etcd leader killed) and test_cluster_groups.py (coordinators on
# three brokers) start their own etcd clusters and s3rver.
CLUSTER_MODULES=(
  test_produce_consume.py test_produce_raw.py
  test_groups.py test_ops_groups_raw.py
  test_ops_configs.py test_ops_example.py test_offset_for_leader_epoch.py
  test_rdkafka_admin.py test_topics_clients.py
  test_durability.py test_idempotence.py test_retention.py
  test_cluster_etcd.py test_cluster_failover.py test_cluster_groups.py
)

# --- 1-2: normal build and unit tests ---------------------------------------
begin "build (make -j$JOBS all)"
make -j"$JOBS" all
end

begin "unit tests (build/kafscale-unit-tests)"
./build/kafscale-unit-tests
end

# --- 3-5: sanitizer build, unit + integration tests --------------------------
begin "ASan+UBSan build (make asan -> build-asan/)"
make -j"$JOBS" asan
end

export ASAN_OPTIONS="$SAN_ASAN_OPTIONS"
export UBSAN_OPTIONS="$SAN_UBSAN_OPTIONS"

begin "unit tests under ASan+UBSan"
./build-asan/kafscale-unit-tests
end

if have_integration_tests; then
  begin "integration tests, ASan+UBSan broker"
  run_integration build-asan/kafscale-broker
  end
else
  skip "integration tests, ASan+UBSan broker" "no tests/integration/test_*.py"
fi

unset ASAN_OPTIONS UBSAN_OPTIONS

# --- ThreadSanitizer: the unit tests (threads of the log, stores, watches,
# cluster module, event loops) in a TSan build; any report fails the step.
begin "unit tests under ThreadSanitizer (make tsan -> build-tsan/)"
make -j"$JOBS" tsan
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" ./build-tsan/kafscale-unit-tests
end

# --- valgrind memcheck of the normal unit-test binary: no errors, no
# definitely lost blocks (exit status 99 otherwise).
if command -v valgrind >/dev/null 2>&1; then
  begin "unit tests under valgrind memcheck"
  valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite ./build/kafscale-unit-tests
  end
else
  echo "valgrind is missing: run scripts/install-deps.sh --test" >&2
  exit 1
fi

# --- 6: integration tests against the normal binary --------------------------
if have_integration_tests; then
  begin "integration tests, normal broker"
  # The test_cluster_*.py modules run in step 7 (same binary; they bring
  # their own etcd).
  run_integration build/kafscale-broker tests/integration \
    --ignore=tests/integration/test_cluster_etcd.py \
    --ignore=tests/integration/test_cluster_failover.py \
    --ignore=tests/integration/test_cluster_groups.py
  end
else
  skip "integration tests, normal broker" "no tests/integration/test_*.py"
fi

# --- 7: the same broker in cluster mode: etcd metadata, records in s3rver ------
if [[ -f tests/integration/test_cluster_etcd.py ]]; then
  begin "integration tests, cluster mode (etcd + s3rver)"
  if [[ "${CLUSTER_TESTS:-}" == "all" ]]; then
    cluster_paths=(tests/integration)
  else
    read -r -a cluster_names <<< "${CLUSTER_TESTS:-${CLUSTER_MODULES[*]}}"
    cluster_paths=("${cluster_names[@]/#/tests/integration/}")
  fi
  KAFSCALE_TEST_MODE=cluster run_integration build/kafscale-broker "${cluster_paths[@]}"
  end
else
  skip "integration tests, cluster mode (etcd + s3rver)" "no tests/integration/test_cluster_etcd.py"
fi

# --- 8: fuzzing --------------------------------------------------------------
if compgen -G "tests/fuzz/*.c" >/dev/null; then
  begin "fuzz targets build (make fuzz)"
  make -j"$JOBS" fuzz
  end

  export ASAN_OPTIONS="$SAN_ASAN_OPTIONS"
  export UBSAN_OPTIONS="$SAN_UBSAN_OPTIONS"
  for src in tests/fuzz/*.c; do
    name="$(basename "$src" .c)"
    bin="build/fuzz/$name"
    begin "fuzz $name (${FUZZ_SECONDS}s)"
    # New inputs go to a scratch corpus (first dir); the committed seed
    # corpus (second dir) is only read. Crashes land in build/fuzz-artifacts/.
    work="build/fuzz-work/$name"
    arts="build/fuzz-artifacts/$name"
    mkdir -p "$work" "$arts"
    corpora=("$work")
    [[ -d "tests/fuzz/corpus/$name" ]] && corpora+=("tests/fuzz/corpus/$name")
    log="build/fuzz-work/$name.log"
    if ! "$bin" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
         -print_final_stats=1 -artifact_prefix="$arts/" "${corpora[@]}" >"$log" 2>&1; then
      echo "--- fuzz $name failed; last 60 lines of $log ---"
      tail -n 60 "$log"
      echo "--- crashing inputs: $arts/ (reproduce: $bin <file>) ---"
      ls -l "$arts" || true
      exit 1
    fi
    grep -E '^(stat::number_of_executed_units|stat::new_units_added|Done )' "$log" || true
    end
  done
  unset ASAN_OPTIONS UBSAN_OPTIONS
else
  skip "fuzz targets" "no tests/fuzz/*.c"
fi
