#!/usr/bin/env python3
"""TEST DOUBLE of the ``packer`` command line, for ``owuibuild bake --packer``.

It builds nothing. It records each call as one JSON line in $FAKE_PACKER_LOG: the argv, the
names (never the values) of the PKR_VAR_* variables it received, and the files of the
template directory (the last argument) with their modes. ``packer version`` answers
$FAKE_PACKER_VERSION (default 1.6.6); $FAKE_PACKER_FAIL=<subcommand> makes that subcommand
fail with exit 1. The real Packer is used by the validators and boot tiers.
"""

import json
import os
import stat
import sys
from pathlib import Path


def main() -> int:
    args = sys.argv[1:]
    command = args[0] if args else ""
    version = os.environ.get("FAKE_PACKER_VERSION", "1.6.6")
    if command == "version":
        print(f"Packer v{version}")
        return 0
    record = {
        "argv": args,
        "pkr_var_names": sorted(k for k in os.environ if k.startswith("PKR_VAR_")),
        "checkpoint_disabled": os.environ.get("CHECKPOINT_DISABLE") == "1",
        "files": {},
    }
    if args and Path(args[-1]).is_dir():
        root = Path(args[-1])
        record["files"] = {
            str(p.relative_to(root)): f"{stat.S_IMODE(p.stat().st_mode):04o}"
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }
    log = os.environ.get("FAKE_PACKER_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    print(f"==> fake packer {command}: {len(args)} arguments")
    if os.environ.get("FAKE_PACKER_FAIL") == command:
        print(f"Error: fake packer {command} was told to fail", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
