#!/usr/bin/python3
"""owuibuild-seed-converge: bring this running host to the seed on a cidata medium.

Installed by the seed as /usr/local/lib/owuibuild/seed-converge; Python 3's standard library,
PyYAML (cloud-init's own dependency) and the verifier beside it. Started by
owuibuild-seed-converge@<device>.service, which a udev rule starts when a medium labelled
cidata appears in a CD-ROM drive (a hypervisor swapped the seed's medium).

What it does, in order, and nothing when a check refuses:
1. copies the medium's seed files to a private directory, so that what is checked is what is
   applied, then runs the verifier on the copy (seed-verify: signature, host and fleet,
   generation, replacement key). A refusal is logged and exits with the verifier's code; the
   seed this host applied is the same generation: nothing to do;
2. stops and disables the units that read a live file the new seed no longer has (a removed
   instance's container or Redis server), then deletes those files; data stays where it is;
3. writes each live file the new seed has whose content, mode or owner differ, atomically;
4. reloads systemd if a unit file changed, runs the seed's live configuration steps in order
   (new roles and databases with a PostgreSQL reload, new Redis servers and containers
   started), then reloads, or restarts where a unit cannot reload, the running units that read
   a file it changed;
5. records the applied seed (seed-applied.json). A failed step stops the converge before
   that, so the next medium, or the same one again, runs every step again (each is idempotent).

Exit codes: the verifier's (1 to 8, see seed-verify), 9 when applying failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import fcntl
import grp
import gzip
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from typing import Any, NoReturn

PROG = "owuibuild-seed-converge"
HERE = os.path.dirname(os.path.abspath(__file__))
VERIFIER = os.path.join(HERE, "seed-verify")
APPLIED = "/etc/owuibuild/seed-applied.json"
LOCK = "/run/owuibuild-seed-converge.lock"
# The node exporter's textfile of the applied generation (where monitoring runs).
SEED_METRICS = "/var/lib/prometheus/node-exporter/owuibuild-seed.prom"
SEED_METRIC = "owuibuild_seed_generation"
MANIFEST = "owuibuild-seed.json"
SEED_FILES = ("user-data", "meta-data", "network-config", MANIFEST, "owuibuild-seed.sig")
UNIT_DIR = "/etc/systemd/system/"
CANNOT_CHECK, FAILED = 2, 9


def say(message: str) -> None:
    print(f"{PROG}: {message}", flush=True)


def fail(code: int, message: str) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def run(argv: list[str]) -> None:
    say("running " + " ".join(argv))
    done = subprocess.run(argv, check=False)
    if done.returncode != 0:
        fail(FAILED, f"step failed (exit {done.returncode}): {' '.join(argv)}; nothing recorded")


def copy_seed(device: str | None, directory: str | None, work: str) -> None:
    """The seed's files into ``work``, from a mounted directory or from ``device`` (mounted
    read-only for the copy)."""
    if directory is None:
        assert device is not None
        mount = tempfile.mkdtemp(prefix="owuibuild-medium-", dir="/run")
        options = "ro,nosuid,nodev,noexec"
        done = subprocess.run(
            ["mount", "-t", "iso9660,vfat", "-o", options, device, mount],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            os.rmdir(mount)
            fail(CANNOT_CHECK, f"cannot mount {device}: {done.stderr.strip()}")
        try:
            copy_seed(None, mount, work)
        finally:
            subprocess.run(["umount", mount], check=False)
            os.rmdir(mount)
        return
    for name in SEED_FILES:
        source = os.path.join(directory, name)
        if os.path.isfile(source):
            shutil.copyfile(source, os.path.join(work, name))


def cloud_config(work: str) -> dict[str, Any]:
    import yaml  # cloud-init's dependency: on every host that booted a seed

    with open(os.path.join(work, "user-data"), "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if not raw.startswith(b"#cloud-config\n"):
        fail(FAILED, "user-data is not a #cloud-config document")
    doc = yaml.safe_load(raw)
    if not isinstance(doc, dict):
        fail(FAILED, "user-data is not a mapping")
    return doc


def owner_ids(owner: str) -> tuple[int, int]:
    user, _, group = owner.partition(":")
    try:
        return pwd.getpwnam(user).pw_uid, grp.getgrnam(group or user).gr_gid
    except KeyError:
        fail(FAILED, f"no such user or group: {owner}")


def differs(path: str, data: bytes, mode: int, uid: int, gid: int) -> bool:
    try:
        st = os.lstat(path)
        with open(path, "rb") as fh:
            same = fh.read() == data
    except OSError:
        return True
    return not same or (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (mode, uid, gid)


def write(path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Write ``path`` whole or not at all: a file beside it, then renamed over it."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".owuibuild-", dir=directory)
    try:
        os.fchmod(fd, mode)
        os.fchown(fd, uid, gid)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def converge(work: str, applied_path: str) -> None:
    with open(os.path.join(work, MANIFEST), "rb") as fh:
        manifest = json.load(fh)
    with open(applied_path, "rb") as fh:
        applied = json.load(fh)
    live = manifest.get("live")
    if not isinstance(live, dict):
        fail(FAILED, "the signed manifest lists no live files or steps")
    files: dict[str, str] = live.get("files", {})
    steps: list[list[str]] = live.get("steps", [])
    old: dict[str, str] = applied.get("live_files", {})
    entries = {e["path"]: e for e in cloud_config(work).get("write_files", [])}
    missing = sorted(p for p in files if p not in entries)
    if missing:
        fail(FAILED, f"live files missing from user-data: {', '.join(missing)}")

    removed = sorted(set(old) - set(files))
    keep = set(files.values())
    retire = unique([old[p] for p in removed if old[p] not in keep])
    if retire:
        run(["systemctl", "disable", "--now", *retire])
    for path in removed:
        if os.path.lexists(path):
            os.unlink(path)
            say(f"removed {path}")

    changed: list[str] = []
    touched_units = any(p.startswith(UNIT_DIR) for p in removed)
    for path, reader in sorted(files.items()):
        entry = entries[path]
        if entry.get("encoding") not in (None, "text/plain"):
            fail(FAILED, f"{path}: encoding {entry['encoding']} is not one owuibuild writes")
        data = str(entry.get("content", "")).encode()
        mode = int(str(entry.get("permissions", "0644")), 8)
        uid, gid = owner_ids(str(entry.get("owner", "root:root")))
        if not differs(path, data, mode, uid, gid):
            continue
        existed = os.path.lexists(path)
        write(path, data, mode, uid, gid)
        say(f"{'updated' if existed else 'added'} {path}")
        touched_units = touched_units or path.startswith(UNIT_DIR)
        if existed:
            changed.append(reader)

    if touched_units:
        run(["systemctl", "daemon-reload"])
    for step in steps:
        run([str(a) for a in step])
    reload = unique(changed)
    if reload:
        run(["systemctl", "try-reload-or-restart", *reload])

    record = {
        "fleet": manifest["fleet"],
        "host": manifest["host"],
        "generation": manifest["generation"],
        "content": manifest["content"],
        "replacement_key": manifest["replacement_key"],
        "live_files": dict(sorted(files.items())),
    }
    text = json.dumps(record, sort_keys=True, indent=2) + "\n"
    st = os.stat(applied_path)
    write(applied_path, text.encode(), st.st_mode & 0o7777, st.st_uid, st.st_gid)
    if os.path.isfile(SEED_METRICS):
        metric = (
            f"# HELP {SEED_METRIC} The owuibuild seed generation this host applied.\n"
            f"# TYPE {SEED_METRIC} gauge\n"
            f"{SEED_METRIC} {manifest['generation']}\n"
        )
        write(SEED_METRICS, metric.encode(), 0o644, 0, 0)
    say(
        f"applied generation {manifest['generation']}: {len(removed)} removed, "
        f"units stopped: {', '.join(retire) or 'none'}; reloaded: {', '.join(reload) or 'none'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--device", help="the block device with the cidata medium (/dev/sr0)")
    where.add_argument("--dir", help="a directory that holds the seed's files")
    parser.add_argument("--applied", default=APPLIED, help="the record of the applied seed")
    parser.add_argument("--public-key", help="the fleet's public key (the verifier's default)")
    args = parser.parse_args(argv)
    key = ["--public-key", args.public_key] if args.public_key else []
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one converge at a time
        with tempfile.TemporaryDirectory(prefix="owuibuild-seed-", dir="/run") as work:
            os.chmod(work, 0o700)  # user-data holds secrets
            copy_seed(args.device, args.dir, work)
            done = subprocess.run(
                [sys.executable, VERIFIER, *key, "--applied", args.applied, work],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.stderr:
                print(done.stderr, end="", file=sys.stderr, flush=True)
            if done.returncode != 0:
                say(f"nothing changed (the verifier refused the seed, exit {done.returncode})")
                return done.returncode
            verdict = done.stdout.split()
            if verdict[:1] == ["current"]:
                say(f"generation {verdict[1]} is the applied seed: nothing to do")
                return 0
            say(f"verified: {done.stdout.strip()}")
            converge(work, args.applied)
    return 0


if __name__ == "__main__":
    sys.exit(main())
