"""Benchmark: wall time and peak memory of `owuibuild render` for fleets of 5, 50 and 500
instances, and the start-up time of `owuibuild --help`, each next to its floor.

Run with `make bench` (or `.venv/bin/python bench/bench.py [--sizes 5,50,500] [--runs 5]`).
Each render runs in a fresh process; its peak RSS comes from wait4()'s rusage for that child.
The floors are measured in the same run, interleaved with what they bound (so a busy machine
slows both alike): rendering the seed's 5-instance example against merely importing the
libraries it uses, and `owuibuild --help` against `python -c "import click"`. The goals
(issue 14): 500 instances in at most 1.5 s and 100 MiB, cost per instance flat from 5 to 500,
the example at most 1.5x its imports, --help at most 1.2x importing click. The example is
also shown against the libraries render imports today (pygohcl where the issue's floor has
python-hcl2). Nothing here asserts a timing: it prints figures for people to compare.
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

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchmarkKeyNotARealKey00000000000000000000 bench@bench"
REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "blueprints" / "seed-example.yml"
# Renders go where `owuibuild render` puts them, under out/: on the repository's file system,
# whose speed at making and removing a thousand small files is part of a render's wall time
# (the system's temporary directory may be another file system, faster or slower).
OUT = REPO / "out"
LIBRARIES = "import yaml, jinja2, click, jsonschema, hcl2, pycdlib"
# What render imports today: verification parses HCL with pygohcl, not python-hcl2 (whose Lark
# import is the dearest of the floor above). Printed for information, next to the goal's floor.
IMPORTED = "import yaml, jinja2, click, jsonschema, pygohcl, pycdlib"
# Goals of issue 14, printed next to what was measured.
LARGEST_SECONDS, LARGEST_MIB = 1.5, 100
EXAMPLE_RATIO, HELP_RATIO = 1.5, 1.2
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


# As a user runs it: an installed package has its bytecode compiled (pip does so), so children
# may use and write .pyc files even where the caller's environment says otherwise.
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def compile_package() -> None:
    """Compile owuibuild's bytecode, as installing it would (an editable install does not)."""
    import importlib.util

    spec = importlib.util.find_spec("owuibuild")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", folder], check=True, env=CHILD_ENV
        )


def measure(argv: list[str], cwd: Path) -> Run:
    """Run one fresh process; wall time and that child's own peak RSS (wait4 rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=CHILD_ENV
    )
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(seconds, usage.ru_maxrss / 1024, proc.returncode, err)  # ru_maxrss is KiB on Linux


def tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def bench_render(exe: str, count: int, runs: int) -> tuple[list[str], float, float]:
    with tempfile.TemporaryDirectory(prefix=".bench-", dir=OUT) as tmp:
        root = Path(tmp)
        (root / "fleet.yml").write_text(fleet(count))
        first = measure([exe, "render", "fleet.yml", "-o", "out"], root)
        if first.returncode != 0:
            sys.exit(f"render of {count} instances failed:\n{first.stderr}")
        again = [measure([exe, "render", "fleet.yml", "-o", "out"], root) for _ in range(runs)]
        check = measure([exe, "render", "fleet.yml", "-o", "out", "--check"], root)
        validate = measure([exe, "validate", "fleet.yml"], root)
        files, size = tree_size(root / "out")
        median = statistics.median(r.seconds for r in again)
        peak = max(r.peak_mib for r in [first, *again])
        row = [
            str(count),
            str(-(-count // PER_HOST) + 1),
            f"{first.seconds:.2f}",
            f"{median:.2f}",
            f"{median / count * 1000:.1f}",
            f"{peak:.0f}",
            f"{check.seconds:.2f}",
            f"{validate.seconds:.2f}",
            str(files),
            f"{size / 1024 / 1024:.1f}",
        ]
        return row, median, peak


def paired(a: list[str], b: list[str], cwd: Path, runs: int) -> tuple[list[Run], list[Run]]:
    """Run ``a`` and ``b`` alternately (after one warm-up each), so load hits both alike."""
    measure(a, cwd), measure(b, cwd)
    runs_a, runs_b = [], []
    for _ in range(runs):
        runs_a.append(measure(a, cwd))
        runs_b.append(measure(b, cwd))
    for r in runs_a + runs_b:
        if r.returncode != 0:
            sys.exit(f"{' '.join(a)} / {' '.join(b)} failed:\n{r.stderr}")
    return runs_a, runs_b


def ratio_line(label: str, runs: list[Run], floor_label: str, floor: list[Run], goal: float) -> str:
    t = statistics.median(r.seconds for r in runs)
    f = statistics.median(r.seconds for r in floor)
    return (
        f"{label}: {t * 1000:.0f} ms; floor {floor_label}: {f * 1000:.0f} ms; "
        f"ratio {t / f:.2f}x (goal <= {goal}x; medians of {len(runs)} paired runs)"
    )


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
        env=CHILD_ENV,
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
    parser.add_argument(
        "--pair-runs", type=int, default=9, help="paired runs of each figure and its floor"
    )
    args = parser.parse_args()
    exe = console_script()
    compile_package()
    sizes = [int(s) for s in args.sizes.split(",")]

    print(f"owuibuild render ({exe}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)\n")
    header = [
        "instances",
        "hosts",
        "first s",
        "re-render s",
        "ms/instance",
        "peak MiB",
        "--check s",
        "validate s",
        "files",
        "out MiB",
    ]
    rows, medians, peaks = [], {}, {}
    for count in sizes:
        row, medians[count], peaks[count] = bench_render(exe, count, args.runs)
        rows.append(row)
        print(f"  rendered {count} instances", file=sys.stderr)
    print(table(header, rows))

    smallest, largest = min(sizes), max(sizes)
    print(
        f"\n{largest} instances: re-render {medians[largest]:.2f} s (goal <= {LARGEST_SECONDS} s), "
        f"peak {peaks[largest]:.0f} MiB (goal <= {LARGEST_MIB} MiB)"
    )
    for count in sizes:
        if count == smallest:
            continue
        marginal = (medians[count] - medians[smallest]) / (count - smallest) * 1000
        print(f"  cost per instance from {smallest} to {count}: {marginal:.2f} ms")

    python = sys.executable
    with tempfile.TemporaryDirectory(prefix=".bench-", dir=OUT) as tmp:
        root = Path(tmp)
        shutil.copy(EXAMPLE, root / "fleet.yml")
        render = [exe, "render", "fleet.yml", "-o", "out"]
        if measure(render, root).returncode != 0:  # creates the secrets file
            sys.exit(f"render of {EXAMPLE} failed")
        ex, ex_floor = paired(render, [python, "-c", LIBRARIES], root, args.pair_runs)
        ex_now, imported = paired(render, [python, "-c", IMPORTED], root, args.pair_runs)
        helps, help_floor = paired(
            [exe, "--help"], [python, "-c", "import click"], root, args.pair_runs
        )
    print()
    print(
        ratio_line(
            f"render {EXAMPLE.name}", ex, f'python -c "{LIBRARIES}"', ex_floor, EXAMPLE_RATIO
        )
    )
    print(
        "  for information, "
        + ratio_line("the same", ex_now, f'python -c "{IMPORTED}"', imported, EXAMPLE_RATIO)
    )
    print(ratio_line("owuibuild --help", helps, 'python -c "import click"', help_floor, HELP_RATIO))
    print(f"  --help peak {max(r.peak_mib for r in helps):.0f} MiB")

    print("\nslowest imports of owuibuild.cli (cumulative):")
    for micros, name in import_offenders(8):
        print(f"  {micros / 1000:7.1f} ms  {name}")


if __name__ == "__main__":
    main()
