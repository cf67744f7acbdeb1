"""Ingest throughput of Permafrost against zstd, restic and bagit, on the same data.

Usage::

    .venv/bin/python bench/ingest.py [--data DIR] [--large-gib 1.0] [--small-files 20000]
                                     [--repeat N] [--keep] [--json OUT.json]

Two data sets (see ``bench/datagen.py``) are made once and cached. Each set is read
once before any clock starts and re-read (from the page cache) before every run, so
every tool starts warm; ``sync`` runs before every clock starts. Tools take turns
within each repeat (the order rotates) so a noisy neighbour hits them alike; the
median of the repeats is reported, and ratios are between figures of this run only.
See ``bench/README.md`` for what each line measures and the figures we got.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.datagen import DataSet, data_files, large_set, small_set, warm  # noqa: E402
from bench.runners import (  # noqa: E402
    Run,
    run_b3sum,
    run_bagit,
    run_permafrost,
    run_restic,
    run_zstd,
    settle,
)

MB = 1_000_000
RSS_TARGET_MB = 300
TOOLS = ("permafrost", "zstd", "zstd+fsync", "restic", "bagit", "b3sum")
#: 20,000 fsyncs take a minute or more here: run zstd+fsync on the small set only when asked.
DEFAULT_SKIP = {"small": {"zstd+fsync"}}
DESCRIPTIONS = {
    "permafrost": "permafrost ingest, fresh SQLite + local tier, fsync'd before commit",
    "zstd": "zstd -3 -T0 -r --output-dir-flat (no fsync): the compression limit",
    "zstd+fsync": "the same, then fsync of every output inside the clock",
    "restic": "restic backup --compression auto, fresh local repo v2, --no-cache",
    "bagit": "bagit.py --sha256 --processes 2, in place on a fresh copy",
    "b3sum": "b3sum of every file (hashing floor, reference only)",
}


def _parse_env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("PERMAFROST_"):
            raise SystemExit(f"--env wants PERMAFROST_NAME=VALUE, got {pair!r}")
        out[key] = value
    return out


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".bench", help="outputs (git-ignored)")
    parser.add_argument("--data", type=Path, help="where the data sets live (default WORK/data)")
    parser.add_argument("--large-gib", type=float, default=1.0)
    parser.add_argument("--small-files", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool and set")
    parser.add_argument("--sets", default="large,small", help="comma list: large,small")
    parser.add_argument("--tools", default="", help="comma list of " + ",".join(TOOLS))
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="PERMAFROST_X=V",
        help="setting for the permafrost runs (repeatable), e.g. PERMAFROST_ZSTD_LEVEL=1",
    )
    parser.add_argument(
        "--code",
        metavar="REV",
        help="measure this git revision (exported under WORK/code/) instead of the working "
        "tree, which others may be editing while the benchmark runs",
    )
    parser.add_argument("--keep", action="store_true", help="keep every run's output folder")
    parser.add_argument("--json", type=Path, help="write all figures to this file")
    args = parser.parse_args(argv)
    args.sets = [s for s in args.sets.split(",") if s]
    args.explicit_tools = bool(args.tools)
    args.tools = [t for t in args.tools.split(",") if t] or list(TOOLS)
    unknown = set(args.tools) - set(TOOLS) | set(args.sets) - {"large", "small"}
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    args.env = _parse_env(args.env)
    return args


def _runner(
    tool: str,
    data: DataSet,
    files: list[Path],
    out: Path,
    env: dict[str, str],
    code: Path | None,
) -> Run:
    runners: dict[str, Callable[[], Run]] = {
        "permafrost": lambda: run_permafrost(data, out, env, code),
        "zstd": lambda: run_zstd(data, out, durable=False),
        "zstd+fsync": lambda: run_zstd(data, out, durable=True),
        "restic": lambda: run_restic(data, out),
        "bagit": lambda: run_bagit(data, out),
        "b3sum": lambda: run_b3sum(data, files, out),
    }
    return runners[tool]()


def _measure_set(data: DataSet, args: argparse.Namespace) -> list[Run]:
    files = data_files(data.root)
    started = time.perf_counter()
    warm(data)
    print(
        f"\n== {data.name}: {data.files} files, {data.bytes / MB:,.0f} MB "
        f"(read once in {time.perf_counter() - started:.1f} s: every tool starts warm)",
        flush=True,
    )
    runs: list[Run] = []
    skip = set() if args.explicit_tools else DEFAULT_SKIP.get(data.name, set())
    tools = [t for t in args.tools if t not in skip]
    for rep in range(args.repeat):
        order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
        for tool in order:
            out = args.work / "runs" / f"{data.name}-{tool}-{rep}"
            warm(data)
            settle()
            run = _runner(tool, data, files, out, args.env, args.code_dir)
            run.detail["repeat"] = rep
            run.detail["loadavg_1min"] = os.getloadavg()[0]
            runs.append(run)
            print(
                f"   [{rep + 1}/{args.repeat}] {tool:<11} {run.seconds:7.2f} s  "
                f"{data.bytes / run.seconds / MB:7.1f} MB/s  "
                f"{data.files / run.seconds:8.0f} files/s"
                f"  cpu {run.cpu_seconds or 0:6.2f} s  rss {run.max_rss_kib * 1024 / MB:6.1f} MB"
                f"  load {run.detail['loadavg_1min']:.1f}",
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    return runs


def _summary(data: DataSet, runs: list[Run]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for tool in dict.fromkeys(r.tool for r in runs):
        mine = [r for r in runs if r.tool == tool]
        seconds = statistics.median(r.seconds for r in mine)
        stored = [r.stored_bytes for r in mine if r.stored_bytes]
        out[tool] = {
            "runs": len(mine),
            "seconds": seconds,
            "seconds_all": [round(r.seconds, 3) for r in mine],
            "mb_per_s": data.bytes / seconds / MB,
            "files_per_s": data.files / seconds,
            "stored_bytes": statistics.median(stored) if stored else None,
            "stored_ratio": data.bytes / statistics.median(stored) if stored else None,
            "max_rss_mb": max(r.max_rss_kib for r in mine) * 1024 / MB,
            "cpu_seconds": statistics.median(r.cpu_seconds or 0.0 for r in mine),
        }
        inproc = [r.detail["inproc_seconds"] for r in mine if r.detail.get("inproc_seconds")]
        if inproc:
            out[tool]["inproc_seconds"] = statistics.median(inproc)
    return out


def _paired(runs: list[Run], a: str, b: str) -> list[float]:
    """Speed ratio a/b within each repeat (both ran in the same round)."""
    by = {(r.tool, r.detail["repeat"]): r.seconds for r in runs}
    reps = sorted({r.detail["repeat"] for r in runs})
    return [by[(b, k)] / by[(a, k)] for k in reps if (a, k) in by and (b, k) in by]


def _print_table(data: DataSet, summary: dict[str, dict[str, Any]]) -> None:
    print(f"\n{data.name}: {data.files} files, {data.bytes / MB:,.1f} MB (medians)")
    head = (
        f"  {'tool':<11} {'wall s':>7} {'MB/s':>8} {'files/s':>9} {'cpu s':>7} "
        f"{'stored MB':>10} {'orig/stored':>11} {'max RSS MB':>10}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for tool, s in summary.items():
        stored = f"{s['stored_bytes'] / MB:10.1f}" if s["stored_bytes"] else f"{'-':>10}"
        ratio = f"{s['stored_ratio']:10.2f}x" if s["stored_ratio"] else f"{'-':>11}"
        print(
            f"  {tool:<11} {s['seconds']:7.2f} {s['mb_per_s']:8.1f} {s['files_per_s']:9.0f} "
            f"{s['cpu_seconds']:7.2f} "
            f"{stored} {ratio} {s['max_rss_mb']:10.1f}"
        )
    pf = summary.get("permafrost")
    if pf and "inproc_seconds" in pf:
        print(
            f"  (permafrost wall includes interpreter start-up and imports; the ingest's own "
            f"clock, from its scan, took {pf['inproc_seconds']:.2f} s)"
        )


def _target(
    name: str,
    value: float | None,
    goal: float,
    *,
    below: bool = False,
    spread: Sequence[float] = (),
    cpu: float | None = None,
    inproc: float | None = None,
) -> dict[str, Any]:
    if value is None:
        print(f"  {name:<44} {'n/a':>8}   (not measured)")
        return {"target": name, "value": None, "goal": goal, "pass": None}
    ok = value < goal if below else value >= goal
    sign = "<" if below else ">="
    extra = f"  per-repeat {min(spread):.2f}..{max(spread):.2f}" if spread else ""
    if cpu is not None:
        extra += f"  cpu-time ratio {cpu:.2f}"
    if inproc is not None:
        extra += f"  without CLI start-up {inproc:.2f}"
    print(f"  {name:<44} {value:8.2f}   {sign} {goal:<5} {'PASS' if ok else 'MISS'}{extra}")
    return {
        "target": name,
        "value": value,
        "goal": goal,
        "pass": ok,
        "per_repeat": list(spread),
        "cpu_time_ratio": cpu,
        "without_startup": inproc,
    }


def _targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    print(
        "\nTargets (speed ratios of wall-time medians from this run; per-repeat = the ratio"
        "\nwithin each round; cpu-time ratio = the other tool's CPU seconds / permafrost's)"
    )
    out = []
    large = results.get("large")
    small = results.get("small")

    def ratio(res: dict[str, Any] | None, a: str, b: str, key: str) -> float | None:
        if not res or a not in res["summary"] or b not in res["summary"]:
            return None
        return float(res["summary"][a][key] / res["summary"][b][key])

    def spread(res: dict[str, Any] | None, a: str, b: str) -> list[float]:
        return _paired(res["runs_objects"], a, b) if res else []

    def inproc(res: dict[str, Any] | None, b: str) -> float | None:
        """Speed ratio counting only the ingest's own clock (``seconds`` of its report:
        from the scan on, so since f135db0 it includes the catalog's loading, which the
        CLI does after the scan, while small files encode)."""
        if not res or "permafrost" not in res["summary"] or b not in res["summary"]:
            return None
        mine = res["summary"]["permafrost"].get("inproc_seconds")
        return float(res["summary"][b]["seconds"] / mine) if mine else None

    def cpu(res: dict[str, Any] | None, a: str, b: str) -> float | None:
        """CPU seconds of b over a: above 1, a does the same work with less CPU."""
        if not res or a not in res["summary"] or b not in res["summary"]:
            return None
        mine = res["summary"][a]["cpu_seconds"]
        return float(res["summary"][b]["cpu_seconds"] / mine) if mine else None

    out.append(
        _target(
            "large: permafrost MB/s vs zstd -3 -T0",
            ratio(large, "permafrost", "zstd", "mb_per_s"),
            0.9,
            spread=spread(large, "permafrost", "zstd"),
            cpu=cpu(large, "permafrost", "zstd"),
            inproc=inproc(large, "zstd"),
        )
    )
    out.append(
        _target(
            "large: permafrost MB/s vs restic",
            ratio(large, "permafrost", "restic", "mb_per_s"),
            2.0,
            spread=spread(large, "permafrost", "restic"),
            cpu=cpu(large, "permafrost", "restic"),
            inproc=inproc(large, "restic"),
        )
    )
    out.append(
        _target(
            "small: permafrost files/s vs restic",
            ratio(small, "permafrost", "restic", "files_per_s"),
            1.2,
            spread=spread(small, "permafrost", "restic"),
            cpu=cpu(small, "permafrost", "restic"),
            inproc=inproc(small, "restic"),
        )
    )
    for name, res in (("large", large), ("small", small)):
        pf = res["summary"].get("permafrost") if res else None
        out.append(
            _target(
                f"{name}: permafrost peak RSS (MB)",
                pf["max_rss_mb"] if pf else None,
                RSS_TARGET_MB,
                below=True,
            )
        )
    print("\nCompression parity (original / stored; stored = objects on disk, catalog excluded)")
    for name, res in (("large", large), ("small", small)):
        if not res:
            continue
        parts = [
            f"{tool} {s['stored_ratio']:.2f}x"
            for tool, s in res["summary"].items()
            if s["stored_ratio"] is not None
        ]
        print(f"  {name}: " + ", ".join(parts))
    return out


def _export(rev: str, work: Path) -> tuple[Path, str]:
    """``git archive`` of ``rev`` into WORK/code/<commit>/ (reused if present)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    target = work / "code" / commit[:12]
    if not (target / "archive").is_dir():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target, commit[:12]


def _code_state() -> str:
    """The commit measured, and whether archive/ or tiers/ differ from it (others edit them)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "archive", "tiers"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"{head}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    args.work = args.work.resolve()
    data_dir = (args.data or args.work / "data").resolve()
    print(
        f"Permafrost ingest benchmark on {platform.node()}: {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    args.code_dir = None
    if args.code:
        args.code_dir, commit = _export(args.code, args.work)
        code = f"{commit} (git archive of {args.code}, in {args.code_dir})"
    else:
        code = _code_state()
    print(f"code measured: {code}")
    for tool in args.tools:
        print(f"  {tool:<11} {DESCRIPTIONS[tool]}")
    if args.env:
        print(f"  permafrost settings: {args.env}")
    makers = {
        "large": lambda: large_set(data_dir / "large", args.large_gib),
        "small": lambda: small_set(data_dir / "small", args.small_files),
    }
    results: dict[str, Any] = {}
    for name in args.sets:
        started = time.perf_counter()
        data, reused = makers[name]()
        how = "reused" if reused else f"generated in {time.perf_counter() - started:.0f} s"
        print(f"data set {name}: {data.root} ({how})", flush=True)
        runs = _measure_set(data, args)
        summary = _summary(data, runs)
        _print_table(data, summary)
        results[name] = {
            "files": data.files,
            "bytes": data.bytes,
            "summary": summary,
            "runs_objects": runs,
        }
    targets = _targets(results)
    if args.json:
        doc = {
            "host": platform.node(),
            "cores": os.cpu_count(),
            "repeat": args.repeat,
            "code": code,
            "permafrost_settings": args.env,
            "targets": targets,
            "sets": {
                name: {
                    "files": res["files"],
                    "bytes": res["bytes"],
                    "summary": res["summary"],
                    "runs": [r.__dict__ for r in res["runs_objects"]],
                }
                for name, res in results.items()
            },
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str))
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
