"""Benchmark: boot-to-ready of the shared-services host, vanilla image against golden image.

The boot tier (tests/boot/test_shared_boot.py) measures, from QEMU's start, how long a host
booted from the generated seed takes until every service answers (PostgreSQL logins, Redis
ACL users, Qdrant, Ollama with its models), and records it in
``$OWUIBUILD_CACHE/bench/boot.json``. This prints that record: booting takes minutes, so the
benchmark reports the last measurement rather than booting again.

Run with `.venv/bin/python bench/boot_bench.py [--json]`; refresh the numbers with
`.venv/bin/pytest -m boot tests/boot/test_shared_boot.py`. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def boot_json() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "owuibuild"
    return Path(os.environ.get("OWUIBUILD_CACHE", default)) / "bench" / "boot.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the raw record")
    args = parser.parse_args(argv)
    path = boot_json()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        print(
            f"no boot measurement yet ({path}); run: pytest -m boot tests/boot/test_shared_boot.py"
        )
        return 0
    except ValueError as exc:
        print(f"{path}: not JSON ({exc})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    print(
        f"boot-to-ready of the shared host (QEMU {data.get('accelerator', '?')}, "
        f"{data.get('cpus', '?')} cpus), seconds from QEMU start; from {path}"
    )
    print(f"{'image':<12} {'ssh':>7} {'cloud-init':>11} {'ready':>7}  measured at")
    for image in ("vanilla", "golden", "replacement"):
        row = data.get(image)
        if not row:
            print(f"{image:<12} {'-':>7} {'-':>11} {'-':>7}  not measured")
            continue
        print(
            f"{image:<12} {row['ssh_s']:>7.1f} {row['cloud_init_done_s']:>11.1f} "
            f"{row['boot_to_ready_s']:>7.1f}  {row.get('measured_at', '?')}"
        )
    ratio = data.get("ratio_vanilla_to_golden")
    print(f"vanilla / golden: {ratio:.2f}x" if ratio else "vanilla / golden: needs both numbers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
