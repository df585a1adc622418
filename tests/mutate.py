#!/usr/bin/env python3
"""Mutation audit: do the fast tiers catch the regressions that matter? (`make mutate`)

Not part of CI. For each mutation in MUTATIONS (a small, realistic bug), this copies builder/
to a temporary directory as the package ``owuibuild``, applies the mutation there, and runs the
fast tiers (unit + validators) against the copy (PYTHONPATH puts it before the editable
install). A mutation is *caught* when a test fails, *missed* when every test passes. The
golden-file test is left out by default, because golden files come from the code under test
(`make golden` would accept the bug); --with-golden includes it.

    python tests/mutate.py [--with-golden] [--only NAME ...] [--list]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOLDEN_TEST = "tests/unit/test_golden.py"
# Run first, so that a caught mutation stops (-x) within seconds; then every other file of the
# two tiers' directories. The same tests run as with `pytest tests/unit tests/validators`.
TIER_DIRS = ("tests/unit", "tests/validators")
FIRST = [
    "tests/unit/test_security_properties.py",
    "tests/unit/test_seed_command.py",
    "tests/unit/test_writer_interrupted.py",
    "tests/unit/test_instances.py",
    "tests/validators/test_ollama_models_script.py",
]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to builder/
    old: str
    new: str
    why: str
    count: int = 1  # how many times ``old`` occurs (all are replaced)


MUTATIONS = [
    # -- the five of issue 17 ----------------------------------------------------------------
    Mutation(
        "redis-acl-keeps-admin",
        "templates/shared/redis.conf.j2",
        " +@all -@admin",
        " +@all",
        "instance Redis users may run CONFIG, SHUTDOWN, ACL ...",
    ),
    Mutation(
        "instances-forwarded-into-each-other",
        "templates/shared/firewall.nft.j2",
        "ip saddr {{ instance_networks }} ip daddr != {{ instance_networks }} accept",
        "ip saddr {{ instance_networks }} accept",
        "an instance's containers reach another instance's network through the host",
    ),
    Mutation(
        "baked-models-not-copied",
        "templates/shared/ollama-models.sh.j2",
        '    cp -Rn {{ baked|sh }}/. {{ models_dir|sh }}/ || echo "owuibuild: could not copy baked models" >&2',
        "    :",
        "golden hosts re-pull every baked model at first boot",
    ),
    Mutation(
        "seed-iso-0644",
        "commands.py",
        "0o600",
        "0o644",
        "`owuibuild seed` writes user-data world-readable",
        count=2,
    ),
    Mutation(
        "writer-removes-then-renames",
        "writer.py",
        "        if _exchange(staging, out_dir):\n"
        "            shutil.rmtree(staging)  # now holds the previous output\n"
        "            return\n",
        "        shutil.rmtree(out_dir)\n        os.rename(staging, out_dir)\n        return\n",
        "a render killed between the two steps leaves no output at all",
    ),
    # -- more security properties ------------------------------------------------------------
    Mutation(
        "firewall-policy-accept",
        "templates/shared/firewall.nft.j2",
        "policy drop;",
        "policy accept;",
        "the host firewall lets everything in",
    ),
    Mutation(
        "postgres-open-to-all",
        "plan.py",
        'rules.append(FirewallRule("postgresql", POSTGRES_PORT, clients))',
        'rules.append(FirewallRule("postgresql", POSTGRES_PORT, (IPv4Network("0.0.0.0/0"),)))',
        "PostgreSQL's port open to every address, not only the instance hosts",
    ),
    Mutation(
        "ssh-open-to-all",
        "plan.py",
        'rules = [FirewallRule("ssh", SSH_PORT, admin_nets)]',
        'rules = [FirewallRule("ssh", SSH_PORT, (IPv4Network("0.0.0.0/0"),))]',
        "SSH open to every address, not only admin.allow_from",
    ),
    Mutation(
        "pg-hba-trust",
        "templates/shared/pg_hba.conf.j2",
        "scram-sha-256",
        "trust",
        "instance roles log in without a password",
    ),
    Mutation(
        "pg-hba-no-final-reject",
        "templates/shared/pg_hba.conf.j2",
        "host    all             all             0.0.0.0/0               reject\n",
        "host    all             all             0.0.0.0/0               scram-sha-256\n",
        "any role may reach any database from anywhere with its password",
    ),
    Mutation(
        "pg-public-connect-kept",
        "templates/shared/init.sql.j2",
        "REVOKE ALL ON DATABASE {{ db.database|sql_ident }} FROM PUBLIC;\n",
        "",
        "every role may connect to every instance's database",
    ),
    Mutation(
        "ports-drop-becomes-return",
        "hostconfig/docker.py",
        'lines.append(f"{match} -j DROP")',
        'lines.append(f"{match} -j RETURN")',
        "published ports answer everyone",
    ),
    Mutation(
        "redis-default-user-on",
        "templates/shared/redis.conf.j2",
        "user default off",
        "user default on nopass ~* &* +@all",
        "anyone reaching a Redis port may use it without a password",
    ),
    Mutation(
        "env-file-0644",
        "targets/instances.py",
        "env_file(plan, inst, secrets).encode(), secret=True",
        "env_file(plan, inst, secrets).encode(), secret=False",
        "the instance env file (database password, secret key) world-readable in out/",
    ),
    Mutation(
        "env-file-0644-on-host",
        "hostconfig/docker.py",
        'env_file(plan, inst, secrets), "0600")',
        'env_file(plan, inst, secrets), "0644")',
        "the instance env file world-readable on the Docker host",
    ),
    Mutation(
        "redis-conf-0644",
        "hostconfig/redis.py",
        'permissions="0600",\n                    owner="redis:redis",',
        'permissions="0644",\n                    owner="redis:redis",',
        "Redis ACL passwords world-readable on the shared host",
    ),
    Mutation(
        "user-data-0644",
        "targets/hosts.py",
        'seed["user-data"], secret=True',
        'seed["user-data"], secret=False',
        "user-data (every secret of the host) world-readable in out/",
    ),
    Mutation(
        "secret-on-stdout",
        "commands.py",
        'click.echo(f"rendered {len(compiled.artifacts)} files to {out_dir}{note}")',
        'click.echo(f"rendered {len(compiled.artifacts)} files to {out_dir}{note}")\n'
        "        click.echo(repr([a.data for a in compiled.artifacts if a.secret][:1]))",
        "render prints a secret-bearing file",
    ),
    Mutation(
        "secret-in-manifest",
        "pipeline.py",
        '"mode": f"{a.mode:04o}",',
        '"mode": f"{a.mode:04o}", "preview": a.data[:4096].decode(errors="replace"),',
        "the manifest quotes secret-bearing files",
    ),
    Mutation(
        "packer-password-not-sensitive",
        "targets/packer.py",
        "sensitive=True,",
        "sensitive=False,",
        "Packer prints the Proxmox password in its logs",
    ),
    Mutation(
        "bake-var-file-0644",
        "bake.py",
        "os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)",
        "os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)",
        "the bake's var file readable by others",
    ),
]


def test_files(with_golden: bool) -> list[str]:
    rest = sorted(
        p.relative_to(REPO).as_posix() for d in TIER_DIRS for p in (REPO / d).glob("test_*.py")
    )
    files = FIRST + [f for f in rest if f not in FIRST]
    return files if with_golden else [f for f in files if f != GOLDEN_TEST]


def apply(mutation: Mutation, package: Path) -> None:
    target = package / mutation.path
    text = target.read_text()
    found = text.count(mutation.old)
    if found != mutation.count:
        raise SystemExit(
            f"mutation {mutation.name}: expected {mutation.count} occurrence(s) of its text in "
            f"builder/{mutation.path}, found {found}: update MUTATIONS"
        )
    target.write_text(text.replace(mutation.old, mutation.new))


def run(mutation: Mutation, with_golden: bool, log_dir: Path) -> tuple[str, str, float]:
    with tempfile.TemporaryDirectory(prefix=f"owuibuild-mutant-{mutation.name}-") as tmp:
        package = Path(tmp) / "owuibuild"
        shutil.copytree(REPO / "builder", package, ignore=shutil.ignore_patterns("__pycache__"))
        apply(mutation, package)
        env = dict(os.environ, PYTHONPATH=tmp, PYTHONDONTWRITEBYTECODE="1")
        args = [
            sys.executable, "-m", "pytest", "-m", "unit or validators", "-x", "-q",
            "-p", "no:cacheprovider", "-o", "addopts=--strict-markers",
            "--hypothesis-seed=0", *test_files(with_golden),
        ]  # fmt: skip
        start = time.monotonic()
        done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        elapsed = time.monotonic() - start
    log = log_dir / f"{mutation.name}.log"
    log.write_text(done.stdout + done.stderr)
    first = re.search(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.M)
    if done.returncode == 0:
        return "MISSED", "-", elapsed
    if done.returncode == 1 and first:
        return "caught", first.group(1), elapsed
    return f"error (pytest exit {done.returncode})", str(log), elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-golden", action="store_true", help="also run the golden test")
    parser.add_argument("--only", nargs="*", default=None, help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    options = parser.parse_args()
    chosen = [m for m in MUTATIONS if options.only is None or m.name in options.only]
    if options.list:
        for m in chosen:
            print(f"{m.name:32} builder/{m.path}: {m.why}")
        return 0
    with tempfile.TemporaryDirectory() as probe:  # every mutation still applies
        shutil.copytree(REPO / "builder", Path(probe) / "owuibuild")
        for m in chosen:
            apply(m, Path(probe) / "owuibuild")
            shutil.rmtree(Path(probe) / "owuibuild")
            shutil.copytree(REPO / "builder", Path(probe) / "owuibuild")
    log_dir = Path(tempfile.mkdtemp(prefix="owuibuild-mutate-logs-"))
    golden = "with" if options.with_golden else "without"
    print(f"fast tiers (unit + validators), {golden} golden files; logs in {log_dir}")
    print(f"| {'mutation':32} | {'result':8} | {'seconds':>7} | first failing test |")
    print(f"| {'-' * 32} | {'-' * 8} | {'-' * 7} | {'-' * 18} |")
    missed = 0
    for m in chosen:
        result, by, elapsed = run(m, options.with_golden, log_dir)
        missed += result != "caught"
        print(f"| {m.name:32} | {result:8} | {elapsed:7.0f} | {by} |", flush=True)
    print(f"{len(chosen) - missed} of {len(chosen)} caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
