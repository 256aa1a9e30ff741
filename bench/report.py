#!/usr/bin/env python3
"""bench/report.py OUT_DIR — turns OUT_DIR/results.jsonl (written by
bench/run.sh, one JSON object per run) into Markdown: medians over the
rounds, ratios ours/peer and the issue's targets, met or not.

Ratios are the median over rounds of (ours / peer) within the same round:
the machines are noisy, only same-run ratios are meaningful. Standard
library only."""

import json
import os
import statistics
import sys

GIB = float(1 << 30)
MIB_KB = 1024.0
TARGETS = ["embedded", "s3", "peer"]
OURS = ["embedded", "s3"]

# Targets of issue 10.
# The broker's configured memory budgets at their defaults: segment cache
# (KAFSCALE_CACHE_BYTES) and produce buffer (KAFSCALE_PRODUCE_BUFFER_BYTES).
CACHE_BUDGET_MIB = 256
PRODUCE_BUDGET_MIB = 128
IDLE_RSS_MAX_MIB = 20
LAT_P99_MAX_MS = 20
CPU_IN_MAX = 0.5
CPU_OUT_MAX = 0.3
OBJECTS_PER_GIB_MAX = 500


def load(out_dir):
    rows = []
    with open(os.path.join(out_dir, "results.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    machine = {}
    try:
        with open(os.path.join(out_dir, "machine.txt")) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("=")
                machine[k] = v
    except OSError:
        pass
    return rows, machine


class Results:
    def __init__(self, rows):
        self.rows = rows
        self.rounds = sorted({r["round"] for r in rows})
        self.failures = []
        for r in rows:
            ld = r.get("load")
            if r.get("workload") in ("idle", "restart"):
                continue
            if ld is None or not ld.get("ok", False) or r.get("ok") is False:
                err = (ld or {}).get("error") or r.get("error") or "failed"
                self.failures.append("round %s %s %s: %s" % (r["round"], r["target"], r["workload"], err))

    def get(self, target, workload, rnd):
        for r in self.rows:
            if r["target"] == target and r["workload"] == workload and r["round"] == rnd:
                return r
        return None

    def values(self, target, workload, fn):
        out = []
        for rnd in self.rounds:
            r = self.get(target, workload, rnd)
            if r is None:
                continue
            if r.get("load") is not None and not r["load"].get("ok", False):
                continue
            try:
                v = fn(r)
            except (KeyError, TypeError, ZeroDivisionError):
                v = None
            if v is not None and v >= 0:
                out.append(v)
        return out

    def median(self, target, workload, fn):
        v = self.values(target, workload, fn)
        return statistics.median(v) if v else None

    def spread(self, target, workload, fn):
        v = self.values(target, workload, fn)
        return (min(v), max(v)) if v else None

    def ratio(self, target, workload, fn, peer_workload=None, peer_fn=None):
        """Median over rounds of ours/peer in the same round."""
        peer_workload = peer_workload or workload
        peer_fn = peer_fn or fn
        rs = []
        for rnd in self.rounds:
            a, b = self.get(target, workload, rnd), self.get("peer", peer_workload, rnd)
            if not a or not b or not a.get("load", {}).get("ok") or not b.get("load", {}).get("ok"):
                continue
            try:
                x, y = fn(a), peer_fn(b)
            except (KeyError, TypeError):
                continue
            if x is not None and y:
                rs.append(x / y)
        return statistics.median(rs) if rs else None


# ---- metric accessors

def msgs(r): return r["load"]["msgs_per_s"]
def mbps(r): return r["load"]["mb_per_s"]
def cpu_gb(r): return r["load"].get("broker_cpu_s_per_gb")
def peak_mib(r): return r["load"]["broker_peak_rss_kb"] / MIB_KB
def p(q): return lambda r: r["load"].get("produce_%s_ms" % q)
def e(q): return lambda r: r["load"].get("e2e_%s_ms" % q)
def idle_mib(r): return r["idle_rss_kb"] / MIB_KB if r.get("idle_rss_kb", -1) > 0 else None


def data_bytes(r):
    ld = r["load"]
    if ld["mode"] == "consume":
        return ld["mb_per_s"] * 1e6 * ld["seconds"]
    return ld["records"] * ld["record_bytes"]


def objects_per_gib(r):
    if r.get("objects_written", -1) < 0:
        return None
    return r["objects_written"] / (data_bytes(r) / GIB)


def requests_per_gib(r):
    if r.get("store_requests", -1) < 0:
        return None
    return r["store_requests"] / (data_bytes(r) / GIB)


def objects_per_s(r):
    ld = r["load"]
    ow = r.get("objects_written", -1)
    secs = ld.get("seconds") or (ld.get("duration_s", 0) + ld.get("warmup_s", 0))
    return ow / secs if ow >= 0 and secs else None


def store_cpu(r):
    return r["load"].get("store_cpu_util")


def client_req_per_s(r):
    ld = r["load"]
    n = ld.get("client_requests", -1)
    if n is None or n < 0:
        return None
    secs = ld.get("seconds") or (ld.get("duration_s", 0) + ld.get("warmup_s", 0))
    return n / secs if secs else None


# ---- formatting

def fnum(v, unit=""):
    if v is None:
        return "—"
    a = abs(v)
    if a >= 1e6:
        s = "%.2f M" % (v / 1e6)
    elif a >= 1e4:
        s = "%.0f k" % (v / 1e3)
    elif a >= 100:
        s = "%.0f" % v
    elif a >= 10:
        s = "%.1f" % v
    else:
        s = "%.2f" % v
    return s + unit


def fratio(v):
    return "—" if v is None else "%.2f×" % v


def frange(sp):
    if not sp:
        return ""
    return " (%s–%s)" % (fnum(sp[0]).strip(), fnum(sp[1]).strip())


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def main():
    if len(sys.argv) != 2:
        print("usage: report.py OUT_DIR", file=sys.stderr)
        return 2
    rows, machine = load(sys.argv[1])
    R = Results(rows)
    present = [t for t in TARGETS if any(r["target"] == t for r in rows)]
    ours = [t for t in OURS if t in present]
    has_peer = "peer" in present
    out = []
    out.append("## Results: %s, git %s, %d round(s)" % (machine.get("date_utc", "?"), machine.get("git", "?"), len(R.rounds)))
    out.append("")
    out.append("Machine: %s CPUs, %s, %.1f GiB RAM, kernel %s, librdkafka %s; data on %s (creating a file: %s µs "
               "at the start). Settings: %s."
               % (machine.get("nproc", "?"), machine.get("cpu", "?"),
                  int(machine.get("mem_kb", "0") or 0) / 1048576.0, machine.get("kernel", "?"),
                  machine.get("librdkafka", "?"), machine.get("work_fs", "?"), machine.get("fs_create_us", "?"),
                  machine.get("rounds", "?")))
    out.append("")
    out.append("Medians over the rounds (min–max in brackets). Ratios: median over rounds of ours/peer "
               "in the same round; cold reads are compared with the peer's hot read (the peer cannot restart).")
    out.append("")

    # --- throughput
    tp_rows = []
    workloads = [("produce_100B", None), ("produce_1KiB", None), ("consume_100B", None), ("consume_1KiB", None),
                 ("consume_100B_cold", "consume_100B"), ("consume_1KiB_cold", "consume_1KiB")]
    for wl, peer_wl in workloads:
        row = [wl.replace("_", " ")]
        for t in present:
            if t == "peer" and peer_wl:
                row.append("(hot: see above)")
                continue
            row.append(fnum(R.median(t, wl, msgs)) + frange(R.spread(t, wl, msgs)))
        for t in ours:
            row.append(fratio(R.ratio(t, wl, msgs, peer_wl)) if has_peer else "—")
        for t in present:
            row.append("—" if (t == "peer" and peer_wl) else fnum(R.median(t, wl, mbps)))
        tp_rows.append(row)
    hdr = ["workload"] + ["%s msgs/s" % t for t in present] + ["%s/peer" % t for t in ours] + ["%s MB/s" % t for t in present]
    out.append("### Throughput")
    out.append("")
    out.append(table(hdr, tp_rows))
    out.append("")
    out.append("The peer keeps only the last ~5 MiB per partition: of the 1 KiB workload it still holds about "
               "%s records when it is read back (its consume rate is over what it holds)."
               % fnum(R.median("peer", "consume_1KiB", lambda r: r["load"]["records"])))
    out.append("")

    # --- latency
    lat_rows = []
    for wl, label, fn in [("latency", "produce p50 ms", p("p50")), ("latency", "produce p99 ms", p("p99")),
                          ("latency", "produce p99.9 ms", p("p999")), ("e2e", "end-to-end p50 ms", e("p50")),
                          ("e2e", "end-to-end p99 ms", e("p99")), ("e2e", "end-to-end p99.9 ms", e("p999")),
                          ("e2e", "produce p99 ms (during e2e)", p("p99"))]:
        row = [label]
        for t in present:
            row.append(fnum(R.median(t, wl, fn)) + frange(R.spread(t, wl, fn)))
        for t in ours:
            row.append(fratio(R.ratio(t, wl, fn)) if has_peer else "—")
        lat_rows.append(row)
    row = ["sent MB/s (offered %s)" % fnum(R.median(present[0], "latency", lambda r: r["load"]["offered_mb_per_s"]))]
    for t in present:
        row.append(fnum(R.median(t, "latency", lambda r: r["load"]["sent_mb_per_s"])))
    row += ["" for _ in ours]
    lat_rows.append(row)
    out.append("### Latency (1 KiB records at a fixed offered load)")
    out.append("")
    out.append(table(["metric"] + present + ["%s/peer" % t for t in ours], lat_rows))
    out.append("")

    # --- resources
    res_rows = []
    for wl in ["produce_100B", "produce_1KiB", "consume_100B", "consume_1KiB", "consume_100B_cold",
               "consume_1KiB_cold", "latency", "e2e"]:
        row = [wl.replace("_", " ")]
        for t in present:
            row.append(fnum(R.median(t, wl, cpu_gb)))
        for t in present:
            row.append(fnum(R.median(t, wl, peak_mib)))
        res_rows.append(row)
    out.append("### Broker CPU (s per GB of record payload) and peak RSS (MiB)")
    out.append("")
    out.append("CPU: utime+stime of the broker process over the measured window (its process CPU clock, ns resolution; "
               "/proc/PID/stat agrees to its 10 ms ticks); 1 GB = 10^9 bytes of record payload (e2e: in + out). "
               "Peak RSS: VmHWM, reset through /proc/PID/clear_refs at the start of each run.")
    out.append("")
    out.append(table(["workload"] + ["%s CPU s/GB" % t for t in present] + ["%s peak RSS" % t for t in present], res_rows))
    out.append("")
    idle_rows = []
    for label, wl in [("idle RSS after start (MiB)", "idle"), ("idle RSS after restart (MiB)", "restart")]:
        idle_rows.append([label] + [fnum(R.median(t, wl, idle_mib)) for t in present])
    idle_rows.append(["restart time (s, SIGTERM to serving)"] +
                     [fnum(R.median(t, "restart", lambda r: r.get("restart_s"))) for t in present])
    out.append(table(["memory"] + present, idle_rows))
    out.append("")

    # --- object store
    obj_rows = []
    for wl in ["produce_100B", "produce_1KiB", "consume_100B_cold", "consume_1KiB_cold", "latency", "e2e",
               "s3_cost", "s3_cost_8clients"]:
        row = [wl.replace("_", " ")]
        any_val = False
        for t in ours:
            ow = R.median(t, wl, lambda r: r.get("objects_written"))
            og = R.median(t, wl, objects_per_gib)
            rq = R.median(t, wl, requests_per_gib) if t == "s3" else None
            sc = R.median(t, wl, store_cpu) if t == "s3" else None
            cr = R.median(t, wl, client_req_per_s)
            any_val = any_val or og is not None
            os_ = R.median(t, wl, objects_per_s)
            row += [fnum(ow), fnum(og), fnum(os_)] + ([fnum(rq), fnum(sc)] if t == "s3" else []) + [fnum(cr)]
        if any_val:
            obj_rows.append(row)
    hdr = ["workload"]
    for t in ours:
        hdr += ["%s objects" % t, "%s objects/GiB" % t, "%s objects/s" % t] + (["s3 requests/GiB", "s3rver CPU (cores)"] if t == "s3" else []) + \
               ["%s client requests/s" % t]
    out.append("### Object store")
    out.append("")
    out.append("Objects written during the run (embedded: files under objects/; s3: objects in s3rver's directory), "
               "per GiB of record payload; S3 requests: every request s3rver logged during the run (PUT, GET, ...); "
               "s3rver CPU: its CPU time over the run's wall time; client requests/s: librdkafka's own count of the "
               "requests it sent (produce or fetch requests, plus a few metadata requests).")
    out.append("")
    out.append(table(hdr, obj_rows))
    out.append("")

    # --- targets
    tg = []

    def verdict(ok):
        return "—" if ok is None else ("met" if ok else "**not met**")

    for wl in ["produce_100B", "produce_1KiB"]:
        v = R.ratio("embedded", wl, msgs)
        tg.append(["produce %s, embedded ≥ 1.0× peer" % wl.split("_")[1], fratio(v), verdict(None if v is None else v >= 1.0)])
    for wl in ["consume_100B", "consume_1KiB"]:
        v = R.ratio("embedded", wl, msgs)
        tg.append(["consume hot %s, embedded ≥ 1.0× peer" % wl.split("_")[1], fratio(v), verdict(None if v is None else v >= 1.0)])
    for wl, pw in [("consume_100B_cold", "consume_100B"), ("consume_1KiB_cold", "consume_1KiB")]:
        for t in ours:
            v = R.ratio(t, wl, msgs, pw)
            tg.append(["consume cold %s, %s ≥ 0.8× peer (hot)" % (wl.split("_")[1], t), fratio(v),
                       verdict(None if v is None else v >= 0.8)])
    v = R.median("embedded", "latency", p("p99"))
    tg.append(["produce p99 at %s MB/s, embedded ≤ %d ms" % (fnum(R.median("embedded", "latency", lambda r: r["load"]["offered_mb_per_s"])), LAT_P99_MAX_MS),
               fnum(v, " ms"), verdict(None if v is None else v <= LAT_P99_MAX_MS)])
    for t in ours:
        v = R.median(t, "produce_1KiB", cpu_gb)
        tg.append(["broker CPU, %s, produce 1 KiB ≤ %.1f s/GB" % (t, CPU_IN_MAX), fnum(v, " s/GB"), verdict(None if v is None else v <= CPU_IN_MAX)])
        v = R.median(t, "consume_1KiB", cpu_gb)
        tg.append(["broker CPU, %s, consume 1 KiB (hot) ≤ %.1f s/GB" % (t, CPU_OUT_MAX), fnum(v, " s/GB"), verdict(None if v is None else v <= CPU_OUT_MAX)])
        v = R.median(t, "consume_1KiB_cold", cpu_gb)
        tg.append(["broker CPU, %s, consume 1 KiB (cold) ≤ %.1f s/GB" % (t, CPU_OUT_MAX), fnum(v, " s/GB"), verdict(None if v is None else v <= CPU_OUT_MAX)])
    for t in ours:
        vals = R.values(t, "idle", idle_mib) + R.values(t, "restart", idle_mib)
        v = max(vals) if vals else None
        tg.append(["idle RSS, %s ≤ %d MiB (worst of start/restart)" % (t, IDLE_RSS_MAX_MIB), fnum(v, " MiB"), verdict(None if v is None else v <= IDLE_RSS_MAX_MIB)])
        vals = R.values(t, "produce_100B", peak_mib) + R.values(t, "consume_100B", peak_mib) + R.values(t, "consume_100B_cold", peak_mib)
        v = max(vals) if vals else None
        lim = CACHE_BUDGET_MIB + PRODUCE_BUDGET_MIB + 64
        tg.append(["peak RSS, %s, 1,000,000-record runs ≤ %d MiB cache + %d MiB produce buffer + 64 MiB (worst run)"
                   % (t, CACHE_BUDGET_MIB, PRODUCE_BUDGET_MIB), fnum(v, " MiB"),
                   verdict(None if v is None else v <= lim)])
    v = R.median("s3", "s3_cost", objects_per_gib)
    tg.append(["S3 objects per GiB at %s MB/s ≤ %d" % (fnum(R.median("s3", "s3_cost", lambda r: r["load"]["offered_mb_per_s"])), OBJECTS_PER_GIB_MAX),
               fnum(v), verdict(None if v is None else v <= OBJECTS_PER_GIB_MAX)])
    a, b = R.median("s3", "s3_cost", objects_per_gib), R.median("s3", "s3_cost_8clients", objects_per_gib)
    ra, rb = R.median("s3", "s3_cost", client_req_per_s), R.median("s3", "s3_cost_8clients", client_req_per_s)
    if a and b:
        tg.append(["S3 objects per GiB do not grow with the request rate (%s → %s produce requests/s)" % (fnum(ra), fnum(rb)),
                   "%s → %s objects/GiB" % (fnum(a), fnum(b)), verdict(b <= a * 1.1)])
    out.append("### Targets of issue 10")
    out.append("")
    out.append(table(["target", "measured (median)", "verdict"], tg))
    out.append("")
    if R.failures:
        out.append("### Failed runs")
        out.append("")
        for f in R.failures:
            out.append("- " + f)
        out.append("")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
