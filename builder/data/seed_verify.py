#!/usr/bin/python3
"""owuibuild-seed-verify: may this host take the seed on a mounted cidata volume?

Written by every seed (on platforms whose seed medium a running VM can swap) as
/usr/local/lib/owuibuild/seed-verify; Python 3 standard library and OpenSSL 3 only. It changes
nothing: it reads the seed's manifest and signature, the fleet's public key and the record of
the seed this host applied, and answers.

Usage: seed-verify [--public-key PEM] [--applied JSON] [--openssl PATH] CIDATA_DIR

Checks, in order: the manifest and its signature are there; the signature over the exact bytes
of owuibuild-seed.json verifies against the fleet's key (`openssl pkeyutl -verify -rawin`); the
manifest names this host and fleet; every seed file has the sha256 the manifest lists; the
generation is not older than the applied one (the same generation is the applied seed when its
content digest is the applied one); the replacement key is the applied one.

On success it prints one line to stdout: `apply <generation>` (a newer seed a running host
can take) or `current <generation>` (the applied seed: nothing to do). Every refusal is one
line on stderr, `owuibuild-seed-verify: refused: <reason>` (the journal, under a unit).

Exit codes:
  0  verified: `apply` or `current` on stdout
  1  the signed manifest is malformed
  2  this host cannot check (no fleet key or applied record, no openssl, bad arguments)
  3  unsigned: no owuibuild-seed.json or owuibuild-seed.sig
  4  the signature does not verify against the fleet's key
  5  the seed is for another host or fleet
  6  a seed file is missing or differs from the manifest
  7  the seed is older than the applied one (or the same generation with other content)
  8  the change needs a host replacement (its replacement key differs)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any, NoReturn

PROG = "owuibuild-seed-verify"
MANIFEST = "owuibuild-seed.json"
SIGNATURE = "owuibuild-seed.sig"
FORMAT = "owuibuild-seed/1"
PUBLIC_KEY = "/etc/owuibuild/seed-signing.pub"
APPLIED = "/etc/owuibuild/seed-applied.json"
SEED_FILE = re.compile(r"^[a-z][a-z-]{0,63}$")  # user-data, meta-data, network-config
REQUIRED_FILES = ("user-data", "meta-data")
HEX64 = re.compile(r"^[0-9a-f]{64}$")

MALFORMED, CANNOT_CHECK, UNSIGNED, BAD_SIGNATURE = 1, 2, 3, 4
OTHER_HOST, TAMPERED, OLDER, NEEDS_REPLACEMENT = 5, 6, 7, 8


def refuse(code: int, reason: str) -> NoReturn:
    print(f"{PROG}: refused: {reason}", file=sys.stderr, flush=True)
    sys.exit(code)


def read(path: str, code: int, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        refuse(code, f"cannot read {what} {path}: {exc.strerror or exc}")


def load_json(data: bytes, code: int, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        refuse(code, f"{what} is not JSON")
    if not isinstance(doc, dict):
        refuse(code, f"{what} is not a JSON object")
    return doc


def verify_signature(openssl: str, public_key: str, manifest: bytes, signature: bytes) -> None:
    """Check the signature over the manifest's bytes as read once: both are copied to a private
    directory first, so what was verified is what is parsed."""
    with tempfile.TemporaryDirectory(prefix="owuibuild-seed-") as work:
        signed, sig = os.path.join(work, MANIFEST), os.path.join(work, SIGNATURE)
        for path, data in ((signed, manifest), (sig, signature)):
            with open(path, "wb") as fh:
                fh.write(data)
        argv = [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", public_key, "-rawin"]
        argv += ["-in", signed, "-sigfile", sig]
        try:
            done = subprocess.run(argv, capture_output=True, check=False)
        except OSError as exc:
            refuse(CANNOT_CHECK, f"cannot run {openssl}: {exc.strerror or exc}")
    if done.returncode != 0:
        refuse(BAD_SIGNATURE, f"{SIGNATURE} does not verify against the fleet's key {public_key}")


def field(doc: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        refuse(MALFORMED, f"{what} has no valid {name!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("cidata", help="the mounted cidata volume (a directory)")
    parser.add_argument("--public-key", default=PUBLIC_KEY, help="the fleet's public key (PEM)")
    parser.add_argument("--applied", default=APPLIED, help="the record of the applied seed")
    parser.add_argument("--openssl", default="openssl", help="the openssl program")
    args = parser.parse_args(argv)  # a usage error exits 2, as CANNOT_CHECK
    if not os.path.isfile(args.public_key):
        refuse(CANNOT_CHECK, f"no fleet key at {args.public_key}: this host trusts no seed")
    record = read(args.applied, CANNOT_CHECK, "the applied record")
    applied = load_json(record, CANNOT_CHECK, f"the applied record {args.applied}")
    manifest_path = os.path.join(args.cidata, MANIFEST)
    signature_path = os.path.join(args.cidata, SIGNATURE)
    for path in (manifest_path, signature_path):
        if not os.path.isfile(path):
            refuse(UNSIGNED, f"the seed is unsigned: {path} is missing")
    manifest = read(manifest_path, UNSIGNED, "the manifest")
    signature = read(signature_path, UNSIGNED, "the signature")
    verify_signature(args.openssl, args.public_key, manifest, signature)

    doc = load_json(manifest, MALFORMED, "the signed manifest")
    if doc.get("format") != FORMAT:
        refuse(MALFORMED, f"the signed manifest is not of format {FORMAT}")
    host, fleet = field(doc, "host", str, "the manifest"), field(doc, "fleet", str, "the manifest")
    generation = field(doc, "generation", int, "the manifest")
    content = field(doc, "content", str, "the manifest")
    replacement = field(doc, "replacement_key", str, "the manifest")
    files = field(doc, "files", dict, "the manifest")
    if (host, fleet) != (applied.get("host"), applied.get("fleet")):
        refuse(
            OTHER_HOST,
            f"the seed is for host {host} of fleet {fleet}, this is host "
            f"{applied.get('host')} of fleet {applied.get('fleet')}",
        )
    for name in REQUIRED_FILES:
        if name not in files:
            refuse(MALFORMED, f"the signed manifest lists no {name}")
    for name, digest in sorted(files.items()):
        if not SEED_FILE.match(name) or not isinstance(digest, str) or not HEX64.match(digest):
            refuse(MALFORMED, f"the signed manifest lists an invalid file entry {name!r}")
        path = os.path.join(args.cidata, name)
        if not os.path.isfile(path):
            refuse(TAMPERED, f"{name} is missing from the seed")
        if hashlib.sha256(read(path, TAMPERED, "the seed file")).hexdigest() != digest:
            refuse(TAMPERED, f"{name} differs from the signed manifest")

    current = applied.get("generation")
    if not isinstance(current, int) or isinstance(current, bool):
        refuse(CANNOT_CHECK, f"the applied record {args.applied} has no valid generation")
    if generation < current:
        refuse(OLDER, f"the seed's generation {generation} is older than the applied {current}")
    if generation == current:
        if content != applied.get("content"):
            refuse(
                OLDER,
                f"the seed's generation {generation} is the applied one but its content is "
                "not: was the secret store restored from an older backup?",
            )
        print(f"current {generation}", flush=True)
        return 0
    if replacement != applied.get("replacement_key"):
        refuse(
            NEEDS_REPLACEMENT,
            f"generation {generation} changes what a running host cannot take (its replacement "
            f"key differs from generation {current}'s): this change needs a host replacement",
        )
    print(f"apply {generation}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
