"""Benchmark: boot-to-ready of both host kinds, bare, vanilla and golden, side by side.

The boot tier measures, from QEMU's start, first SSH login, cloud-init done and ready (every
service healthy; for a Docker host, its instances healthy) and records them in
``$OWUIBUILD_CACHE/bench/boot.json``, every row of one test run under one run id:

* ``<kind>/vanilla``: the two-VM fleet booted from the base image
  (tests/boot/test_fleet_vanilla.py, opt-in: --measure turns it on);
* ``<kind>/golden``: the same seeds on the golden images (tests/boot/test_fleet_boot.py);
* ``<kind>/bare``: the same pair of guests on the base image, each with its host's seed cut
  down to a user-data that only sets up the admin user, booted side by side like the others
  (tests/boot/test_fleet_vanilla.py), to cloud-init done: what golden is compared with;
* ``bare``: one guest alone with such a seed (tests/boot/test_vm_harness.py), for reference.

Booting takes minutes, so by default this prints the last record; ``--measure`` runs those boot
tests first (about an hour under TCG on two cores). Nothing here asserts a timing; the target
is golden/bare at most 1.5 for both kinds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KINDS = ("shared", "instance-host")
MEASURE = [
    "tests/boot/test_fleet_vanilla.py",
    "tests/boot/test_fleet_boot.py",
    "tests/boot/test_vm_harness.py",
]


def boot_json() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "owuibuild"
    return Path(os.environ.get("OWUIBUILD_CACHE", default)) / "bench" / "boot.json"


def read_record(path: Path, missing: str) -> tuple[Any, int]:
    """The JSON record at ``path``, or None and the exit code once the reason is printed
    (``missing``, formatted with the path, when no test has recorded it yet)."""
    try:
        return json.loads(path.read_text()), 0
    except FileNotFoundError:
        print(missing.format(path=path))
        return None, 0
    except ValueError as exc:
        print(f"{path}: not JSON ({exc})", file=sys.stderr)
        return None, 1


def measure() -> int:
    env = dict(os.environ, OWUIBUILD_BOOT_VANILLA="1")  # the vanilla rows boot opt-in tests
    return subprocess.call(
        [sys.executable, "-m", "pytest", "-m", "boot", "-q", *MEASURE], cwd=REPO, env=env
    )


def ratios_by_run(history: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """golden/bare of each host kind, for every run that measured both rows of that kind (the
    later row of an image wins within a run), oldest run first."""
    runs: dict[str, dict[str, float]] = {}
    for row in history:
        runs.setdefault(row.get("run", "?"), {})[row["image"]] = row["boot_to_ready_s"]
    out: dict[str, dict[str, float]] = {}
    for run, times in runs.items():
        for kind in KINDS:
            bare, golden = times.get(f"{kind}/bare"), times.get(f"{kind}/golden")
            if bare and golden:
                out.setdefault(run, {})[kind] = round(golden / bare, 2)
    return out


def print_history(history: list[dict[str, Any]]) -> None:
    by_run = ratios_by_run(history)
    if len(by_run) < 2:
        return
    print("golden / bare by run (the same images move by a fifth between runs on a busy host):")
    for run, ratios in by_run.items():
        shown = "  ".join(f"{k} {ratios[k]:.2f}" if k in ratios else f"{k} -" for k in KINDS)
        print(f"  {run:<24} {shown}")
    for kind in KINDS:
        values = sorted(r[kind] for r in by_run.values() if kind in r)
        if values:
            print(
                f"  {kind}: min {values[0]:.2f}, median {statistics.median(values):.2f}, "
                f"max {values[-1]:.2f} over {len(values)} runs"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the raw record")
    parser.add_argument("--measure", action="store_true", help="boot the VMs first")
    args = parser.parse_args(argv)
    if args.measure and measure() != 0:
        print("the boot tests failed; the record may be incomplete", file=sys.stderr)
    path = boot_json()
    data, code = read_record(path, "no boot measurement yet ({path}); run: make bench-boot")
    if data is None:
        return code
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    rows = data.get("rows", {})
    print(
        f"boot-to-ready (QEMU {data.get('accelerator', '?')}, {data.get('cpus', '?')} cpus), "
        f"seconds from QEMU start; from {path}"
    )
    print(f"{'boot':<24} {'ssh':>7} {'cloud-init':>11} {'ready':>7}  run")
    names = ["bare", *(f"{k}/{v}" for k in KINDS for v in ("bare", "vanilla", "golden"))]
    # Rows of other boots (the real Open WebUI's opt-in fleet, say) follow, for reference.
    for name in [*names, *sorted(set(rows) - set(names))]:
        row = rows.get(name)
        if not row:
            print(f"{name:<24} {'-':>7} {'-':>11} {'-':>7}  not measured")
            continue
        print(
            f"{name:<24} {row['ssh_s']:>7.1f} {row['cloud_init_done_s']:>11.1f} "
            f"{row['boot_to_ready_s']:>7.1f}  {row.get('run', '?')}"
        )
    runs = {rows[n].get("run") for n in names if n in rows}
    if len(runs) > 1:
        print("note: these rows come from different runs; make bench-boot measures them together")
    ratios = data.get("ratio_golden_to_bare", {})
    for kind in KINDS:
        ratio = ratios.get(kind)
        shown = f"{ratio:.2f}x (target <= 1.5)" if ratio else "needs the bare and golden rows"
        print(f"golden / bare, {kind}: {shown}")
    if ratios and not all(f"{k}/bare" in rows for k in KINDS):
        print("note: without the bare pair's rows, golden is compared with the lone bare guest")
    print_history(data.get("history", []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
