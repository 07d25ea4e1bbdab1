"""Every headline figure in one table: `python -m benchmarks` (from the repository root).

Runs the benchmark scripts one after another, each in its own processes, and prints what each
measured beside the baseline it measured in the same run, with the target from docs/benchmarks.md.
The scripts' own tables say more; this one is for comparing runs.

    python -m benchmarks                  # SMTP on SQLite and PostgreSQL, the scale-out curve,
                                          # the import set and mailsvc ingest
    python -m benchmarks --quick          # smaller runs, no scale-out curve
    python -m benchmarks --scale-full     # the linking-cost store at full size (1,000,000
                                          # contacts; seeded once, then cached)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> dict[str, Any]:
    print(f"running {script} {' '.join(args)}", file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, str(HERE / script), *args, "--json"],
                            capture_output=True, check=False, cwd=HERE.parent)
    if result.returncode:
        raise SystemExit(f"{script} failed:\n{result.stderr.decode()[-3000:]}")
    text = result.stdout.decode()
    loaded: dict[str, Any] = json.loads(text[text.index("{"):])
    return loaded


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}" if value and base else ""


def smtp_rows(report: dict[str, Any]) -> list[list[str]]:
    by_target = {r["target"]: r for r in report["results"]}
    sink = by_target.get("sink", {})
    rows = []
    for target in ("sqlite", "postgres"):
        r = by_target.get(target)
        if not r:
            continue
        rows += [
            [f"SMTP accept, {target} (msg/s)", f"{r['msg_per_s']:.0f}",
             f"sink {sink.get('msg_per_s', 0):.0f}", ratio(r["msg_per_s"], sink.get("msg_per_s")),
             ">= 0.60 of the sink"],
            [f"SMTP p99 DATA->250, {target} (ms)", f"{r['p99_ms']:.0f}",
             f"sink {sink.get('p99_ms', 0):.0f}", "", "<= 50 ms"],
            [f"SMTP end to end, {target} (msg/s)", f"{r['end_to_end_msg_per_s'] or 0:.0f}",
             f"sink {sink.get('msg_per_s', 0):.0f}",
             ratio(r["end_to_end_msg_per_s"], sink.get("msg_per_s")), ">= 600 msg/s"],
        ]
    return rows


def scale_rows(reports: dict[int, dict[str, Any]]) -> list[list[str]]:
    one = reports.get(1, {}).get("results", [{}])[0].get("end_to_end_msg_per_s")
    rows = []
    for workers, report in sorted(reports.items()):
        e2e = report["results"][0]["end_to_end_msg_per_s"]
        rows.append([f"PostgreSQL, {workers} decide process(es), end to end (msg/s)",
                     f"{e2e or 0:.0f}", f"1 process {one or 0:.0f}", ratio(e2e, one),
                     "the curve"])
    return rows


def import_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    imports = report["import"]
    for base, best in zip(imports[::2], imports[1::2], strict=True):
        rows.append([best["work"] + " (msg/s)", str(best["msg_s"]),
                     f"1 process {base['msg_s']}", ratio(best["msg_s"], base["msg_s"]),
                     ">= 1,200 msg/s"])
        rows.append([best["work"] + " (peak RSS MiB)", str(best["peak_rss_mib"]), "", "",
                     "<= 300 MiB"])
    handed, alone, floor = report["ingest"]
    rows.append(["mailsvc ingest, one piped mail, service running (s, median)",
                 f"{handed['median']:.2f}", f"floor {floor['median']:.2f}",
                 ratio(handed["median"], floor["median"]), "<= 0.30 s"])
    rows.append(["mailsvc ingest, one piped mail, deciding itself (s, median)",
                 f"{alone['median']:.2f}", f"floor {floor['median']:.2f}",
                 ratio(alone["median"], floor["median"]), ""])
    return rows


def linking_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for result in report["results"]:
        small, large = result["rows"]
        rows.append([f"Linking, {large['contacts']:,} contacts, {result['target']} (mails/s)",
                     f"{large['best_msg_s']:.0f}", f"{small['contacts']:,} contacts "
                     f"{small['best_msg_s']:.0f}", f"{large['ratio']:.2f}", ">= 0.90"])
        missing = [s for s in result["seq_scans"] if "available" not in s["index"]]
        rows.append([f"Linking, scans of big tables without a usable index, {result['target']}",
                     str(len(missing)), "", "", "0"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, no scale-out curve")
    parser.add_argument("--scale-full", action="store_true",
                        help="linking cost with 1,000,000 contacts (default 100,000)")
    args = parser.parse_args()
    total = "1000" if args.quick else "3000"
    rows = smtp_rows(run("smtp_throughput.py", "--total", total, "--connections", "20"))
    if not args.quick:
        rows += scale_rows({
            n: run("smtp_throughput.py", "--targets", "postgres", "--total", total,
                   "--connections", "20", "--decide-workers", str(n))
            for n in (1, 2, 4)
        })
    rows += import_rows(run("ticket_import.py", "--tickets", "300" if args.quick else "1000"))
    divisor = 1 if args.scale_full else (100 if args.quick else 10)
    rows += linking_rows(run("scale.py", "--contacts", str(1_000_000 // divisor),
                             "--accounts", str(200_000 // divisor),
                             "--emails", str(500_000 // divisor),
                             "--mails", "500" if args.quick else "2000",
                             "--repeats", "1" if args.quick else "3"))
    header = ["figure", "mailsvc", "baseline (same run)", "ratio", "target"]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print(" | ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.2f}; "
          f"{os.cpu_count()} cores")


if __name__ == "__main__":
    main()
