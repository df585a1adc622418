"""Sticky allocations: adding or removing an instance moves no other instance's values.

Each instance keeps the Redis port, Docker network and connection share it was given, by name,
in the secret store (owuibuild.allocation, instance_allocations). These tests render real
blueprints and compare the other instances' files byte for byte, and check that a store
written before records existed gives exactly the positional values (and the golden files).
"""

from __future__ import annotations

import datetime
import hashlib
import re
import shutil
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import REPO
from fleetdoc import BASE, edit, where
from owuibuild import pki
from owuibuild import secrets as store
from owuibuild.allocation import database_pools, docker_subnet
from owuibuild.cli import cli
from owuibuild.pipeline import Compiled, compile_blueprint
from owuibuild.targets.hosts import unpack_user_data

pytestmark = pytest.mark.unit

EXAMPLES = sorted(p.name for p in (REPO / "blueprints").glob("*.yml"))
GOLDEN = REPO / "tests" / "golden"
THIRD = "  - {name: three, host: web-a, port: 3002}\n"
GOLDEN_TODAY = datetime.date(2026, 12, 1)  # as test_golden's: its certificates do not age


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def compiled_ok(blueprint: Path, **options: Any) -> Compiled:
    compiled = compile_blueprint(blueprint, **options)
    assert compiled.ok, [d.as_dict() for d in compiled.diagnostics]
    return compiled


def outputs(compiled: Compiled) -> dict[str, bytes]:
    return {a.path: a.data for a in compiled.artifacts}


def instance_files(files: dict[str, bytes], name: str) -> dict[str, bytes]:
    """Everything rendered for one instance: its bundle, and each file any host's user-data
    writes for it (its compose file, env file, unit, Redis configuration)."""
    mine = re.compile(rf"(^|[/-]){re.escape(name)}([./-]|$)")
    out = {p: d for p, d in files.items() if p.startswith(f"instances/{name}/")}
    for path, data in files.items():
        if not path.endswith("/user-data"):
            continue
        doc = yaml.safe_load(unpack_user_data(data))
        for f in doc.get("write_files", []):
            if mine.search(f["path"]):
                out[f"{path}:{f['path']}"] = str(f["content"]).encode()
    return out


def example_doc(example: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "blueprints" / example).read_text())
    doc["platform"] = "nocloud"  # a platform that takes seeds live (multi-host's is a cloud)
    return doc


def allocations(blueprint: Path) -> dict[str, dict[str, Any]]:
    stored = store.open_store(store.secrets_path(blueprint))
    assert stored.diagnostics == []
    return {name: a.to_data() for name, a in stored.allocations.items()}


# -- adding and removing instances --------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES)
@pytest.mark.parametrize("at", ["head", "middle", "end"])
def test_adding_an_instance_moves_no_other_and_is_live(
    example: str, at: str, tmp_path: Path
) -> None:
    doc = example_doc(example)
    blueprint = tmp_path / example
    blueprint.write_text(yaml.safe_dump(doc))
    first = compiled_ok(blueprint)
    assert first.plan is not None
    before = outputs(first)
    names = [i["name"] for i in doc["instances"]]
    host = doc["instances"][0]["host"]
    added = {"name": "added", "host": host, "port": 3999, "url": "https://added.example.org"}
    doc["instances"].insert({"head": 0, "middle": len(names) // 2, "end": len(names)}[at], added)
    blueprint.write_text(yaml.safe_dump(doc))
    second = compiled_ok(blueprint)
    after = outputs(second)
    for name in names:
        old, new = instance_files(before, name), instance_files(after, name)
        assert old and old.keys() == new.keys(), name
        differ = sorted(p for p in old if old[p] != new[p])
        assert not differ, f"{name}: {differ}"
    kinds = {c.host: (c.kind, c.changed) for c in second.seed_changes}
    assert host in kinds and all(kind == "live" for kind, _ in kinds.values()), kinds
    # The newcomer takes the first slot nobody holds: the one after the others'.
    assert second.plan is not None
    new = next(i for i in second.plan.instances if i.name == "added")
    pool = second.plan.fleet.network.container_pool
    assert new.docker_subnet == docker_subnet(pool, len(names))
    if second.plan.fleet.shared.redis.mode == "per-instance":
        assert new.redis_port == second.plan.fleet.shared.redis.base_port + len(names)


def test_removing_an_instance_in_the_middle_moves_no_other(tmp_path: Path) -> None:
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE + THIRD)
    before = outputs(compiled_ok(blueprint))
    held = allocations(blueprint)
    assert held["two"] == {"docker_subnet": "172.31.0.16/28", "redis_port": 6380, "connections": 20}
    blueprint.write_text(BASE.replace("  - {name: two, host: web-b, port: 3001}\n", "") + THIRD)
    after = outputs(compiled_ok(blueprint))
    for name in ("one", "three"):
        assert instance_files(before, name) == instance_files(after, name), name
    assert not instance_files(after, "two")
    # Its record stays: its Redis data and network may still exist.
    assert allocations(blueprint) == held
    # A newcomer does not get its slot, and it comes back to its own values.
    blueprint.write_text(
        BASE.replace(
            "{name: two, host: web-b, port: 3001}", "{name: four, host: web-b, port: 3001}"
        )
        + THIRD
    )
    compiled_ok(blueprint)
    assert allocations(blueprint)["four"]["docker_subnet"] == "172.31.0.48/28"
    assert allocations(blueprint)["four"]["redis_port"] == 6382
    blueprint.write_text(BASE + THIRD)
    again = outputs(compiled_ok(blueprint))
    assert instance_files(again, "two") == instance_files(before, "two")


def test_a_removed_instance_s_slot_is_not_reused_when_it_is_the_last_one(tmp_path: Path) -> None:
    """A /27 holds two networks: with 'two' removed and 'three' added, the only free slot is
    two's, which its record keeps; render says so, and deleting that record frees it."""
    small = edit(BASE, "dns: [10.0.5.1]}", "dns: [10.0.5.1], container_pool: 172.31.0.0/27}")
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(small)
    compiled_ok(blueprint)
    swapped = edit(small, "{name: two, host: web-b", "{name: three, host: web-b")
    blueprint.write_text(swapped)
    result = run("render", str(blueprint), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "no free /28 left for instance 'three'" in result.output
    assert "no longer in the blueprint: two" in result.output
    line, col = where(swapped, "container_pool: 172.31.0.0/27", "172.31")
    assert f"fleet.yml:{line}:{col}: error[network.container_pool]" in result.output
    assert "Traceback" not in result.output
    # Deleting two's record (its data gone) gives three that slot.
    path = store.secrets_path(blueprint)
    stored = store.open_store(path)
    assert stored.values is not None
    kept = {n: a for n, a in stored.allocations.items() if n != "two"}
    store.write(path, stored.values, blueprint.name, stored.seeds, kept)
    compiled_ok(blueprint)
    assert allocations(blueprint)["three"]["docker_subnet"] == "172.31.0.16/28"


def test_a_new_instance_shares_what_the_recorded_shares_leave(tmp_path: Path) -> None:
    """max_connections 50 leaves 40: two instances hold 20 each. A third would take from
    theirs, which restarts them: render refuses and says what to do instead."""
    tight = edit(BASE, "max_connections: 200", "max_connections: 50")
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(tight)
    before = outputs(compiled_ok(blueprint))
    blueprint.write_text(tight + THIRD)
    result = run("render", str(blueprint), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "leave 0 connection(s) for 1 new instance(s) (three)" in result.output
    line, col = where(tight, "max_connections: 50", "50")
    assert f"fleet.yml:{line}:{col}: error[shared.postgres.max_connections]" in result.output
    raised = edit(tight, "max_connections: 50", "max_connections: 60")
    blueprint.write_text(raised + THIRD)
    after = outputs(compiled_ok(blueprint))
    for name in ("one", "two"):
        env = f"instances/{name}/{name}.env"
        assert after[env] == before[env]
    # 60 leaves 50; the others keep their 40, the newcomer takes the 10 left.
    assert (
        b"DATABASE_POOL_SIZE=5\nDATABASE_POOL_MAX_OVERFLOW=5\n"
        in after["instances/three/three.env"]
    )


# -- compatibility with a store written before records existed ------------------------------------


def positional(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What earlier releases gave instance i: slot i, and database_pools' share."""
    shared = doc.get("shared", {})
    base = shared.get("redis", {}).get("base_port", 6379)
    mode = shared.get("redis", {}).get("mode", "per-instance")
    pool = IPv4Network(doc.get("network", {}).get("container_pool", "172.31.0.0/16"))
    requested = [
        (i.get("database", {}).get("pool_size"), i.get("database", {}).get("max_overflow"))
        for i in doc["instances"]
    ]
    pools = database_pools(shared["postgres"]["max_connections"], requested)
    assert pools is not None
    out: dict[str, dict[str, Any]] = {}
    for n, (inst, (size, overflow)) in enumerate(zip(doc["instances"], pools, strict=True)):
        record: dict[str, Any] = {"docker_subnet": str(docker_subnet(pool, n))}
        if mode == "per-instance":
            record["redis_port"] = base + n
        if requested[n][0] is None:
            record["connections"] = size + overflow
        out[inst["name"]] = record
    return out


def golden(example: str, files: dict[str, bytes]) -> list[str]:
    """The paths whose bytes differ from the golden files (binary ones by their sha256)."""
    root = GOLDEN / example.removesuffix(".yml")
    stored = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    differ = []
    for path, data in files.items():
        if path in stored:
            same = (root / path).read_bytes() == data
        else:
            sha = (root / f"{path}.sha256").read_text().strip()
            same = hashlib.sha256(data).hexdigest() == sha
            path += ".sha256"
        if not same:
            differ.append(path)
        stored.discard(path)
    return differ + sorted(stored)


@pytest.mark.parametrize("example", EXAMPLES)
def test_a_store_without_records_gets_exactly_the_positional_values(
    example: str, tmp_path: Path
) -> None:
    stem = example.removesuffix(".yml")
    blueprint = tmp_path / example
    shutil.copy(REPO / "blueprints" / example, blueprint)
    for kept, path in (
        (GOLDEN / f"{stem}.secrets.yml", store.secrets_path(blueprint)),
        (GOLDEN / f"{stem}.tls.secrets.yml", pki.tls_path(blueprint)),
    ):
        shutil.copy(kept, path)
        path.chmod(0o600)
    assert store.open_store(store.secrets_path(blueprint)).allocations == {}
    first = outputs(compiled_ok(blueprint, today=GOLDEN_TODAY))  # writes the records
    doc = yaml.safe_load(blueprint.read_text())
    assert allocations(blueprint) == positional(doc)
    second = outputs(compiled_ok(blueprint, today=GOLDEN_TODAY))  # reads them
    assert second == first
    assert golden(example, second) == []


# -- conflicts, broken records, determinism -----------------------------------------------------


@pytest.mark.parametrize(
    ("change", "path", "needle", "at", "message"),
    [
        (
            ("dns: [10.0.5.1]}", "dns: [10.0.5.1], container_pool: 172.30.0.0/16}"),
            "network.container_pool",
            "container_pool: 172.30.0.0/16",
            "172.30",
            "holds Docker network 172.31.0.0/28, which container_pool 172.30.0.0/16 does not",
        ),
        (
            ("max_connections: 200}", "max_connections: 200}\n  redis: {base_port: 6380}"),
            "shared.redis.base_port",
            "base_port: 6380",
            "6380",
            "instance 'one' holds Redis port 6379, below base_port 6380",
        ),
        (
            ("max_connections: 200", "max_connections: 40"),
            "shared.postgres.max_connections",
            "max_connections: 40",
            "40",
            "recorded connection shares (40) and pinned pools (0) need more than the 30",
        ),
        (
            ("{name: two, host: web-b, port: 3001}", "{name: four, host: shared, port: 6381}"),
            "instances[1].port",
            "port: 6381",
            "6381",
            "port 6381 on host 'shared' is held by the Redis server of instance 'three' "
            "(no longer in the blueprint)",
        ),
    ],
)
def test_a_setting_that_contradicts_a_record_is_a_located_error(
    tmp_path: Path, change: tuple[str, str], path: str, needle: str, at: str, message: str
) -> None:
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE + THIRD)
    compiled_ok(blueprint)
    secrets_before = store.secrets_path(blueprint).read_bytes()
    text = edit(BASE, *change)
    blueprint.write_text(text)
    line, col = where(text, needle, at)
    for command in ("render", "validate"):
        extra = ("-o", str(tmp_path / "out")) if command == "render" else ()
        result = run(command, str(blueprint), *extra)
        assert result.exit_code == 1, result.output
        assert f"fleet.yml:{line}:{col}: error[{path}]: " in result.output, result.output
        assert message in result.output and "hint: " in result.output
        assert "Traceback" not in result.output
    assert store.secrets_path(blueprint).read_bytes() == secrets_before
    assert not (tmp_path / "out").exists()


RECORD = "  one:\n    connections: 20\n    docker_subnet: 172.31.0.0/28\n    redis_port: 6379\n"


@pytest.mark.parametrize(
    "broken",
    [
        RECORD.replace("172.31.0.0/28", "not-a-network"),
        RECORD.replace("172.31.0.0/28", "172.31.0.1/28"),  # host bits
        RECORD.replace("172.31.0.0/28", "172.31.0.0/24"),
        RECORD.replace("redis_port: 6379", "redis_port: 0"),
        RECORD.replace("redis_port: 6379", "redis_port: 99999999999999999999"),
        RECORD.replace("connections: 20", "connections: -1"),
        RECORD.replace("connections: 20", "connections: [20]"),
        RECORD.replace("connections: 20", "connections: 20\n    shell: rm -rf /"),
        RECORD.replace("connections: 20", "connections: 20\n    connections: 20"),
        RECORD.replace("  one:", "  ../one:"),
        RECORD.replace("  one:", "  ? [one]\n  :"),
        RECORD.replace("    docker_subnet: 172.31.0.0/28\n", ""),
        "  one: !!python/object/apply:os.system [echo owned]\n",
        "  one: 172.31.0.0/28\n",
        RECORD + RECORD.replace("  one:", "  two:").replace("6379", "6380"),  # same network
        RECORD
        + RECORD.replace("  one:", "  two:").replace("172.31.0.0/28", "172.31.0.16/28"),  # port
    ],
)
def test_a_broken_record_is_a_located_error_and_nothing_is_written(
    tmp_path: Path, broken: str
) -> None:
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE)
    compiled_ok(blueprint)
    path = store.secrets_path(blueprint)
    text = path.read_text()
    head, _ = text.split(f"{store.ALLOCATIONS_KEY}:\n")
    hostile = f"{head}{store.ALLOCATIONS_KEY}:\n{broken}"
    path.write_text(hostile)
    for args in (("render", "-o", str(tmp_path / "out")), ("validate",), ("render", "--check")):
        result = run(args[0], str(blueprint), *args[1:])
        assert result.exit_code == 1, result.output
        assert re.search(r"fleet\.secrets\.yml:\d+:\d+: error\[instance_allocations", result.output)
        assert "hint: restore the file from backup" in result.output
        assert "Traceback" not in result.output and "owned" not in result.output
    assert path.read_text() == hostile
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("section", ["[]\n", "{}\n", "7\n"])
def test_a_section_of_another_shape_is_a_located_error(tmp_path: Path, section: str) -> None:
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE)
    compiled_ok(blueprint)
    path = store.secrets_path(blueprint)
    head = path.read_text().split(f"{store.ALLOCATIONS_KEY}:\n")[0]
    path.write_text(f"{head}{store.ALLOCATIONS_KEY}: {section}")
    result = run("render", str(blueprint), "-o", str(tmp_path / "out"))
    if section == "{}\n":  # no records: the positional values, written again
        assert result.exit_code == 0, result.output
        assert allocations(blueprint)["two"]["redis_port"] == 6380
        return
    assert result.exit_code == 1
    assert "error[instance_allocations]: must be a mapping" in result.output


def test_records_are_no_secrets_and_survive_every_write(tmp_path: Path) -> None:
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE)
    compiled_ok(blueprint)
    held = allocations(blueprint)
    path = store.secrets_path(blueprint)
    values, _ = store.read(path)
    assert values is not None and not any(k.startswith(store.ALLOCATIONS_KEY) for k in values)
    assert "# Not secret: what each instance holds" in path.read_text()
    # A new secret (a new instance) and new seed records rewrite the file: the records stay.
    blueprint.write_text(BASE + THIRD)
    compiled_ok(blueprint)
    assert {n: allocations(blueprint)[n] for n in held} == held


def test_check_writes_no_records(tmp_path: Path) -> None:
    """A store from before records existed: --check compares and writes nothing."""
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE)
    out = tmp_path / "out"
    assert run("render", str(blueprint), "-o", str(out)).exit_code == 0
    path = store.secrets_path(blueprint)
    stored = store.open_store(path)
    assert stored.values is not None and stored.allocations
    store.write(path, stored.values, blueprint.name, stored.seeds)  # as an older release left it
    before = path.read_bytes()
    result = run("render", str(blueprint), "-o", str(out), "--check")
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
    assert path.read_bytes() == before


def test_same_blueprint_and_store_give_the_same_bytes(tmp_path: Path) -> None:
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE + THIRD)
    compiled_ok(blueprint)
    # Records out of blueprint order, one of an instance that is gone.
    blueprint.write_text(
        BASE.replace("  - {name: one, host: web-a, port: 3001}\n", "")
        + THIRD
        + "  - {name: five, host: web-b, port: 3005}\n"
    )
    first = outputs(compiled_ok(blueprint))
    secrets_first = store.secrets_path(blueprint).read_bytes()
    other = tmp_path / "copy"
    other.mkdir()
    for p in (blueprint, store.secrets_path(blueprint), pki.tls_path(blueprint)):
        shutil.copy(p, other / p.name)
        (other / p.name).chmod(0o600)
    assert outputs(compiled_ok(other / "fleet.yml")) == first
    assert outputs(compiled_ok(blueprint)) == first
    assert store.secrets_path(blueprint).read_bytes() == secrets_first
    assert allocations(blueprint)["five"]["docker_subnet"] == "172.31.0.48/28"
