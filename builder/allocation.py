"""Instance allocations: what each instance takes from a range the fleet shares, kept by name.

Three per-instance values come from a range every instance draws on: the port of its own Redis
server (from shared.redis.base_port up), its Docker network (a /28 of network.container_pool)
and, when the blueprint does not size its database pool, its share of PostgreSQL's connections.
Handing them out by position in the blueprint would move every later instance's port, network
and pool whenever an instance is inserted or removed, and a running host would have to restart
those instances. So each instance keeps what it was given, by name, in a record the secret store
holds (owuibuild.secrets, ALLOCATIONS_KEY), and a new instance takes what nobody holds.

The rules (README: "The secrets file"):
- An instance with a record keeps its network, its Redis port and its connection share.
- A new instance takes the lowest slot k whose network (the k-th /28 of the pool) and Redis port
  (base_port + k) no record holds and whose port no instance is pinned to on the Redis host.
  Without records, instance i takes slot i: exactly the positional values of earlier releases,
  so a fleet rendered before records existed renders byte-identical.
- A new instance without database.pool_size shares the connections the others' shares and the
  pinned pools leave, up to MAX_CONNECTIONS_PER_INSTANCE each; without records, that is exactly
  database_pools.
- The record of an instance the blueprint no longer names is kept: its Redis data and Docker
  network may still exist on the hosts, and giving its slot to a newcomer would hand the
  newcomer that data. When a new instance needs a slot only such a record holds, allocation
  fails and names the records to delete (once their data is gone), rather than reusing them.
- A blueprint setting that contradicts a record (a container_pool that no longer contains a
  recorded network, a base_port above a recorded port, an instance pinned to a recorded Redis
  port on the Redis host, a max_connections the recorded shares do not fit) is an error, not a
  silent move: moving those values restarts the instances that hold them.

Pure: the fleet model and the stored records in; the allocations and diagnostics (with blueprint
paths, for the caller to locate) out. Imports nothing above the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from .diagnostics import Diagnostic, error
from .model import Fleet, Instance

# Connections PostgreSQL keeps free of instance pools: superuser slots, backups, status probes.
RESERVED_CONNECTIONS = 10
# One instance's database pool never grows past this many connections (pool + overflow).
MAX_CONNECTIONS_PER_INSTANCE = 20
SUBNET_PREFIX = 28  # one Docker network per instance: 14 addresses, plenty for one container

# Where the records live in the secret store, named in hints.
RECORDS = "instance_allocations in the secrets file"


@dataclass(frozen=True)
class Allocation:
    """What one instance holds: its Docker network, its Redis server's port (None while the
    fleet's Redis is shared and none was recorded), and its share of PostgreSQL's connections
    (pool plus overflow; None when the blueprint sizes its pool)."""

    docker_subnet: IPv4Network
    redis_port: int | None = None
    connections: int | None = None

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"docker_subnet": str(self.docker_subnet)}
        if self.redis_port is not None:
            data["redis_port"] = self.redis_port
        if self.connections is not None:
            data["connections"] = self.connections
        return data


def docker_subnet(pool: IPv4Network, index: int) -> IPv4Network:
    size = 2 ** (32 - SUBNET_PREFIX)
    return IPv4Network(f"{pool.network_address + index * size}/{SUBNET_PREFIX}")


def subnet_room(pool: IPv4Network) -> int:
    """How many instance networks the pool holds."""
    return 2 ** (SUBNET_PREFIX - pool.prefixlen) if pool.prefixlen <= SUBNET_PREFIX else 0


def split_share(share: int, overflow: int | None) -> tuple[int, int]:
    """An auto-sized pool and its overflow from the instance's connection share; an explicit
    max_overflow only ever lowers the overflow."""
    pool = max(1, share // 2)
    auto_overflow = share - pool
    return pool, auto_overflow if overflow is None else min(overflow, auto_overflow)


def database_pools(
    max_connections: int, requested: Sequence[tuple[int | None, int | None]]
) -> list[tuple[int, int]] | None:
    """Pool size and overflow of each instance, fitted under ``max_connections`` minus a reserve,
    as if none held a share yet.

    Explicit values are kept; the rest share what is left. None when the budget cannot give
    every auto-sized instance at least one connection.
    """
    budget = max_connections - RESERVED_CONNECTIONS
    share = _fresh_share(budget - _pinned(requested), sum(1 for p, _ in requested if p is None))
    if share is not None and share < 1:
        return None
    return [
        split_share(share or 0, overflow)
        if pool is None
        else (pool, overflow if overflow is not None else 0)
        for pool, overflow in requested
    ]


def connections_used(pools: Sequence[tuple[int, int]]) -> int:
    return sum(p + o for p, o in pools)


def _pinned(requested: Sequence[tuple[int | None, int | None]]) -> int:
    """Connections the blueprint's explicit pools take (pool plus overflow)."""
    return sum(p + (o or 0) for p, o in requested if p is not None)


def _fresh_share(left: int, count: int) -> int | None:
    """Each of ``count`` new auto-sized instances' share of ``left`` connections (None: none)."""
    if count == 0:
        return None
    share = left // count
    return min(MAX_CONNECTIONS_PER_INSTANCE, share) if share >= 1 else share


def allocate(
    fleet: Fleet, records: Mapping[str, Allocation]
) -> tuple[dict[str, Allocation], list[Diagnostic]]:
    """Every instance's allocation, and the records to keep: the blueprint's instances' (old or
    new) and, unchanged, those of instances the blueprint no longer names."""
    problems: list[Diagnostic] = []
    per_instance = fleet.shared.redis.mode == "per-instance"
    base = fleet.shared.redis.base_port
    pool = fleet.network.container_pool
    current = {inst.name for inst in fleet.instances}
    gone = sorted(name for name in records if name not in current)
    held_subnets = {r.docker_subnet for r in records.values()}
    held_ports = {r.redis_port for r in records.values() if r.redis_port is not None}
    # Ports the blueprint pins on the Redis host, which no Redis server may take.
    pinned = {
        inst.port: (n, inst)
        for n, inst in enumerate(fleet.instances)
        if inst.host == fleet.placement.redis
    }

    for inst in fleet.instances:
        record = records.get(inst.name)
        if record is None:
            continue
        if not record.docker_subnet.subnet_of(pool):
            problems.append(
                error(
                    ("network", "container_pool"),
                    f"instance '{inst.name}' holds Docker network {record.docker_subnet}, which "
                    f"container_pool {pool} does not contain",
                    f"set container_pool back to a range that contains it; or delete {RECORDS} "
                    "to number every instance's network anew, which restarts every instance",
                )
            )
        if per_instance and record.redis_port is not None and record.redis_port < base:
            problems.append(
                error(
                    ("shared", "redis", "base_port"),
                    f"instance '{inst.name}' holds Redis port {record.redis_port}, below "
                    f"base_port {base}",
                    f"set base_port back to at most {record.redis_port}; or delete the "
                    f"redis_port entries of {RECORDS} to number the Redis servers anew, "
                    "which restarts them and every instance",
                )
            )

    # No instance may be pinned to a port a record holds on the Redis host, not even one of an
    # instance the blueprint no longer names: were it added again, its server would want it.
    for name in sorted(records) if per_instance else ():
        port = records[name].redis_port
        if port is not None and port in pinned:
            at, other = pinned[port]
            whose = f"instance '{name}'" + (
                "" if name in current else " (no longer in the blueprint)"
            )
            problems.append(
                error(
                    ("instances", at, "port"),
                    f"port {port} on host '{other.host}' is held by the Redis server of {whose}",
                    "pick another port: the secret store's allocation records keep that Redis "
                    "server on it, so that a new render does not move it"
                    + (
                        ""
                        if name in current
                        else f" (or delete the entry of {name} under {RECORDS})"
                    ),
                )
            )

    # New instances, in blueprint order, each at the lowest slot nobody holds.
    allocated: dict[str, Allocation] = {}
    slot = 0
    room = subnet_room(pool)
    for n, inst in enumerate(fleet.instances):
        record = records.get(inst.name)
        needs_port = per_instance and (record is None or record.redis_port is None)
        if record is not None and not needs_port:
            allocated[inst.name] = record
            continue
        if record is not None:  # a network already, a port still (its Redis was shared)
            port = _free_port(base, held_ports, pinned)
            if port is None:
                problems.append(_no_port(inst, n, base, gone))
                continue
            held_ports.add(port)
            allocated[inst.name] = Allocation(record.docker_subnet, port, record.connections)
            continue
        while slot < room and (
            docker_subnet(pool, slot) in held_subnets
            or (per_instance and (base + slot in held_ports or base + slot in pinned))
        ):
            slot += 1
        if slot >= room:
            problems.append(
                error(
                    ("network", "container_pool"),
                    f"container_pool {pool} has no free /{SUBNET_PREFIX} left for instance "
                    f"'{inst.name}': the secret store's records hold them"
                    + (
                        f" (instances no longer in the blueprint: {', '.join(gone)})"
                        if gone
                        else ""
                    ),
                    "use a larger container_pool that contains the recorded networks"
                    + (
                        f"; or, once their data is gone, delete those instances' entries under "
                        f"{RECORDS}"
                        if gone
                        else ""
                    ),
                )
            )
            continue
        if per_instance and base + slot > 65535:
            problems.append(_no_port(inst, n, base, gone))
            continue
        subnet = docker_subnet(pool, slot)
        held_subnets.add(subnet)
        port = base + slot if per_instance else None
        if port is not None:
            held_ports.add(port)
        allocated[inst.name] = Allocation(subnet, port)
        slot += 1

    shares, share_problems = _shares(fleet, records)
    problems += share_problems
    out = {
        name: Allocation(a.docker_subnet, a.redis_port, shares.get(name))
        for name, a in allocated.items()
    }
    for name in gone:
        out[name] = records[name]
    return out, problems


def _free_port(base: int, held: set[int], pinned: Mapping[int, object]) -> int | None:
    port = base
    while port <= 65535 and (port in held or port in pinned):
        port += 1
    return port if port <= 65535 else None


def _no_port(inst: Instance, at: int, base: int, gone: Sequence[str]) -> Diagnostic:
    return error(
        ("shared", "redis", "base_port"),
        f"no port from base_port {base} up is free for the Redis server of instance '{inst.name}' "
        f"(instances[{at}])",
        "lower base_port"
        + (
            f"; or, once their data is gone, delete the entries of {', '.join(gone)} under "
            f"{RECORDS}"
            if gone
            else ""
        ),
    )


def _shares(
    fleet: Fleet, records: Mapping[str, Allocation]
) -> tuple[dict[str, int], list[Diagnostic]]:
    """Each auto-sized instance's connection share: its recorded one, or a share of what the
    recorded shares and the pinned pools leave."""
    budget = fleet.shared.postgres.max_connections - RESERVED_CONNECTIONS
    auto = [i for i in fleet.instances if i.pool_size is None]
    kept = {
        i.name: c
        for i in auto
        if (r := records.get(i.name)) is not None and (c := r.connections) is not None
    }
    fresh = [i.name for i in auto if i.name not in kept]
    pinned = _pinned([(i.pool_size, i.max_overflow) for i in fleet.instances])
    left = budget - pinned - sum(kept.values())
    hint = (
        "raise shared.postgres.max_connections, or set database.pool_size on instances; or "
        f"delete the connections entries of {RECORDS} to share the connections anew, which "
        "changes every instance's pool and restarts it"
    )
    if left < 0:
        return kept, [
            error(
                ("shared", "postgres", "max_connections"),
                f"the instances' recorded connection shares ({sum(kept.values())}) and pinned "
                f"pools ({pinned}) need more than the {budget} connections max_connections "
                f"{fleet.shared.postgres.max_connections} leaves after a reserve of "
                f"{RESERVED_CONNECTIONS}",
                hint,
            )
        ]
    share = _fresh_share(left, len(fresh))
    if share is not None and share < 1:
        return kept, [
            error(
                ("shared", "postgres", "max_connections"),
                f"the other instances' recorded connection shares leave {left} connection(s) "
                f"for {len(fresh)} new instance(s) ({', '.join(fresh)})",
                hint,
            )
        ]
    return {**kept, **dict.fromkeys(fresh, share or 0)}, []
