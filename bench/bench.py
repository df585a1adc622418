"""Benchmark: wall time and peak memory of `owuibuild render` for fleets of 5, 50 and 500
instances, and the start-up time of `owuibuild --help`.

Run with `make bench` (or `.venv/bin/python bench/bench.py [--sizes 5,50,500] [--runs 5]`).
Each render runs in a fresh process; its peak RSS comes from wait4()'s rusage for that child.
Nothing here asserts a timing: it prints a table for people to compare.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchmarkKeyNotARealKey000000000000000 bench@bench"
PER_HOST = 40  # instances per Docker host: 40 x 1 GiB estimate fits a 64 GB host


def console_script() -> str:
    beside = Path(sys.executable).parent / "owuibuild"
    found = str(beside) if beside.exists() else shutil.which("owuibuild")
    if found is None:
        sys.exit("owuibuild is not installed: run make setup")
    return found


def fleet(count: int) -> str:
    """A valid blueprint: enough Docker hosts, memory, ports and database connections."""
    hosts = max(1, -(-count // PER_HOST))
    lines = [
        "apiVersion: owuibuild/v1",
        f"name: bench-{count}",
        "admin:",
        "  user: ops",
        f"  ssh_authorized_keys: ['{KEY}']",
        "  allow_from: [10.0.0.0/16]",
        "network: {cidr: 10.0.0.0/16, gateway: 10.0.0.1, dns: [10.0.0.1]}",
        "shared:",
        "  host: {name: shared, address: 10.0.0.10, memory_gb: 256,"
        " data_volume: {label: owui-data, device: /dev/vdb}}",
        f"  postgres: {{max_connections: {max(200, 20 * count + 100)}}}",
        "  redis: {maxmemory_mb: 64}",
        "hosts:",
    ]
    lines += [
        f"  - {{name: web-{h}, address: 10.0.{1 + h // 200}.{10 + h % 200}, memory_gb: 64,"
        " data_volume: {label: owui-data, device: /dev/vdb}}"
        for h in range(hosts)
    ]
    lines.append("instances:")
    lines += [
        f"  - {{name: i{n}, host: web-{n % hosts}, port: {3000 + n // hosts}}}"
        for n in range(count)
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Run:
    seconds: float
    peak_mib: float
    returncode: int
    stderr: str


def measure(argv: list[str], cwd: Path) -> Run:
    """Run one fresh process; wall time and that child's own peak RSS (wait4 rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(seconds, usage.ru_maxrss / 1024, proc.returncode, err)  # ru_maxrss is KiB on Linux


def tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def bench_render(exe: str, count: int, runs: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="owuibuild-bench-") as tmp:
        root = Path(tmp)
        (root / "fleet.yml").write_text(fleet(count))
        first = measure([exe, "render", "fleet.yml", "-o", "out"], root)
        if first.returncode != 0:
            sys.exit(f"render of {count} instances failed:\n{first.stderr}")
        again = [measure([exe, "render", "fleet.yml", "-o", "out"], root) for _ in range(runs)]
        check = measure([exe, "render", "fleet.yml", "-o", "out", "--check"], root)
        validate = measure([exe, "validate", "fleet.yml"], root)
        files, size = tree_size(root / "out")
        return [
            str(count),
            str(-(-count // PER_HOST) + 1),
            f"{first.seconds:.2f}",
            f"{statistics.median(r.seconds for r in again):.2f}",
            f"{max(r.peak_mib for r in [first, *again]):.0f}",
            f"{check.seconds:.2f}",
            f"{validate.seconds:.2f}",
            str(files),
            f"{size / 1024 / 1024:.1f}",
        ]


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def import_offenders(top: int) -> list[tuple[int, str]]:
    """The slowest imports (cumulative microseconds) of the CLI module, from -X importtime."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import owuibuild.cli"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
        rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,50,500", help="fleet sizes (instances)")
    parser.add_argument("--runs", type=int, default=3, help="re-renders per size (median)")
    parser.add_argument("--help-runs", type=int, default=9, help="runs of owuibuild --help")
    args = parser.parse_args()
    exe = console_script()
    sizes = [int(s) for s in args.sizes.split(",")]

    print(f"owuibuild render ({exe}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)\n")
    header = [
        "instances",
        "hosts",
        "first s",
        "re-render s",
        "peak MiB",
        "--check s",
        "validate s",
        "files",
        "out MiB",
    ]
    rows = []
    for count in sizes:
        rows.append(bench_render(exe, count, args.runs))
        print(f"  rendered {count} instances", file=sys.stderr)
    print(table(header, rows))

    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure([exe, "--help"], Path(tmp)) for _ in range(args.help_runs)]
    times = sorted(r.seconds * 1000 for r in runs)
    print(
        f"\nowuibuild --help: median {statistics.median(times):.0f} ms "
        f"(min {times[0]:.0f}, max {times[-1]:.0f}, {len(times)} runs), "
        f"peak {max(r.peak_mib for r in runs):.0f} MiB"
    )

    print("\nslowest imports of owuibuild.cli (cumulative):")
    for micros, name in import_offenders(8):
        print(f"  {micros / 1000:7.1f} ms  {name}")


if __name__ == "__main__":
    main()
