"""Benchmark: the window of failed checks while the shared services go away and come back.

The tests that measure it record it in ``$OWUIBUILD_CACHE/bench/recovery.json``
(tests/infra/recovery.py); this prints the latest record of each scenario:

* ``restart`` and ``replacement``: the real Open WebUI 0.12.4 with a signed-in user, asked for
  its chats twice a second while PostgreSQL and its Redis restart, or while the shared host is
  replaced (silent 40 s, then fresh processes) (tests/containers/test_shared_services_restart.py);
* ``live seed``: an instance asked through its front door once a second while both hosts take
  a new seed live (tests/boot/test_fleet_boot.py; the instance there is the Open WebUI TEST
  DOUBLE of the QEMU guests).

Nothing here asserts a timing; the tests assert what must hold (no restart, recovery).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from boot_bench import read_record
from infra.recovery import recovery_json


def main() -> int:
    path = recovery_json()
    missing = "no recovery measurement yet ({path}); run the containers and boot tiers"
    data, code = read_record(path, missing)
    if data is None:
        return code
    print(f"failed checks while the shared services go away and come back; from {path}")
    print(f"{'scenario':<14} {'failed':>8} {'window':>8}  recorded")
    for scenario, row in sorted(data.items()):
        failed = f"{row['failed']}/{row['checks']}"
        print(f"{scenario:<14} {failed:>8} {row['window_s']:>7.1f}s  {row.get('recorded', '?')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
