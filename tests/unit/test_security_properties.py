"""Security properties of the generated configuration, checked on what is generated for every
example blueprint (not by comparing with golden files, which come from the code under test).

- Redis: the default user is off; every instance user is kept from @admin and @dangerous
  commands (and, on a Redis shared by several instances, from other instances' keys), and is
  known by its password's SHA-256 only; no later rule gives any command back. The services
  tier runs the same files on redis-server.
- pg_hba: each instance role reaches only its own database, only from its instance host's
  address, only over TLS, with scram-sha-256; everything else ends in reject. init.sql takes CONNECT away from
  PUBLIC on every instance database and gives it back to that instance's role only.
- nftables: every host drops input by default, and every accepted port names the sources the
  plan gives it (SSH from admin.allow_from, services from the hosts that use them).
- secret-bearing files (in out/ and on the hosts) are 0600, and no secret is in any file that
  is not secret-bearing.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Callable
from ipaddress import IPv4Network
from typing import Any

import pytest
import yaml
from conftest import BLUEPRINTS, EXAMPLES, Rendered
from owuibuild import pki
from owuibuild.plan import MONITOR_REDIS_USER, Plan

pytestmark = pytest.mark.unit

RenderExample = Callable[[str], Rendered]


def user_data(r: Rendered, host: str) -> dict[str, Any]:
    doc = r.user_data(host)
    assert isinstance(doc, dict)
    return doc


def host_files(r: Rendered) -> dict[tuple[str, str], dict[str, Any]]:
    """Every write_files entry of every host, by (host, path)."""
    assert isinstance(r.plan, Plan)
    hosts = [r.plan.shared, *r.plan.docker_hosts]
    return {
        (h.host.name, f["path"]): f
        for h in hosts
        for f in user_data(r, h.host.name).get("write_files", [])
    }


def redis_users(conf: str) -> dict[str, list[str]]:
    """The ACL rules of each `user` line, by user name (the redis quoting undone)."""
    users = {}
    for line in conf.splitlines():
        if line.startswith("user "):
            words = shlex.split(line)
            users[words[1]] = words[2:]
    return users


def denied_after_last_grant(rules: list[str], category: str) -> bool:
    """Whether ``-@category`` holds once every rule is applied in order, as Redis does."""
    state = False
    for r in rules:
        if r in ("+@all", "allcommands", f"+@{category}"):
            state = False
        elif r in ("-@all", "nocommands", f"-@{category}"):
            state = True
        elif r.startswith("+") and not r.startswith("+@"):
            state = False  # a single command given back may be one of the category's
        elif r.startswith("+@"):
            state = False  # another category may overlap this one (e.g. @dangerous)
    return state


def shared_redis(render_text: Callable[[str], Rendered]) -> Rendered:
    """The seed example with its Redis shared by every instance (the opt-in mode)."""
    text = (BLUEPRINTS / "seed-example.yml").read_text()
    assert text.count("mode: per-instance") == 1
    return render_text(text.replace("mode: per-instance", "mode: shared"))


@pytest.mark.parametrize("example", [*EXAMPLES, "shared-redis"])
def test_redis_users_lack_admin_commands(
    render_example: RenderExample, render_text: Callable[[str], Rendered], example: str
) -> None:
    r = shared_redis(render_text) if example == "shared-redis" else render_example(example)
    assert isinstance(r.plan, Plan)
    confs = {p: f for (_, p), f in host_files(r).items() if p.startswith("/etc/redis/redis-")}
    assert len(confs) == len(r.plan.redis_servers) > 0
    instances = {i.redis_user: i for i in r.plan.instances}
    for path, entry in confs.items():
        assert entry["permissions"] == "0600" and entry["owner"] == "redis:redis", path
        users = redis_users(entry["content"])
        assert users.pop("default") == ["off"], path
        monitor = users.pop(MONITOR_REDIS_USER, None)
        if r.plan.monitoring is None:
            assert monitor is None, path
        else:
            # The exporter's user: on, no key, no channel, nothing but its listed commands.
            assert monitor is not None, path
            assert monitor[0] == "on" and monitor[1].startswith("#"), (path, monitor)
            assert monitor[2:5] == ["resetkeys", "resetchannels", "-@all"], (path, monitor)
            granted = monitor[5:]
            assert granted and all(g.startswith("+") and "@" not in g for g in granted), monitor
            assert not {"+get", "+keys", "+scan", "+eval", "+acl", "+config|set"} & set(granted)
        assert users and set(users) <= set(instances), path
        shared = len(users) > 1 or r.plan.fleet.shared.redis.mode == "shared"
        for name, rules in users.items():
            assert rules[0] == "on", (path, name)
            assert denied_after_last_grant(rules, "admin"), (path, name, rules)
            # MIGRATE (in @dangerous) would make the shared host's Redis dial any address.
            assert denied_after_last_grant(rules, "dangerous"), (path, name, rules)
            if shared:
                prefix = instances[name].redis_key_prefix
                assert [k for k in rules if k.startswith("~")] == [f"~{prefix}:*"], rules
                assert "allkeys" not in rules
            # Known by the SHA-256 of its password only: no password in the file.
            password: str = r.secrets[instances[name].redis_password.name]  # type: ignore[index]
            assert not any(k.startswith(">") for k in rules), (path, name)
            assert [k for k in rules if k.startswith("#")] == [
                "#" + hashlib.sha256(password.encode()).hexdigest()
            ]
            assert password not in entry["content"]


def test_the_acl_evaluation_reads_rules_in_order() -> None:
    assert denied_after_last_grant(["on", "+@all", "-@admin"], "admin")
    assert not denied_after_last_grant(["on", "+@all"], "admin")
    assert not denied_after_last_grant(["on", "-@admin", "+@all"], "admin")
    assert not denied_after_last_grant(["on", "+@all", "-@admin", "+config"], "admin")


# -- pg_hba ---------------------------------------------------------------------------------------


def hba_lines(conf: str) -> list[list[str]]:
    return [shlex.split(line) for line in conf.splitlines() if line and not line.startswith("#")]


def hba_decision(
    lines: list[list[str]], database: str, role: str, source: str, tls: bool = True
) -> str:
    """The method of the first line matching a TCP connection (over TLS or not), as
    PostgreSQL picks it."""
    address = IPv4Network(f"{source}/32")
    kinds = {"host", "hostssl" if tls else "hostnossl"}
    for words in lines:
        if words[0] not in kinds:
            continue
        db, user, net, method = words[1:5]
        if db not in ("all", database) or user not in ("all", role):
            continue
        network = IPv4Network(net) if ":" not in net else None
        if network is not None and address.subnet_of(network):
            return method
    return "no line (rejected)"


def database_host_file(r: Rendered, suffix: str) -> tuple[Plan, str]:
    """The plan, and the one file ending in ``suffix`` on the PostgreSQL host."""
    plan = r.plan
    assert isinstance(plan, Plan)
    (content,) = [
        f["content"]
        for (h, p), f in host_files(r).items()
        if h == plan.postgres_host.name and p.endswith(suffix)
    ]
    return plan, content


@pytest.mark.parametrize("example", EXAMPLES)
def test_pg_hba_admits_each_role_only_to_its_database_from_its_host(
    render_example: RenderExample, example: str
) -> None:
    plan, conf = database_host_file(render_example(example), "/pg_hba.conf")
    lines = hba_lines(conf)
    accepting = [w for w in lines if w[0].startswith("host") and w[-1] != "reject"]
    assert all(w[-1] == "scram-sha-256" for w in accepting), accepting
    assert all("all" not in w[1:3] for w in accepting), accepting
    assert lines[-2:] == [
        ["host", "all", "all", "0.0.0.0/0", "reject"],
        ["host", "all", "all", "::/0", "reject"],
    ]
    for i in plan.instances:
        source = i.source_network(plan.postgres_host)
        own = str(next(iter(source.hosts())) if source.prefixlen < 32 else source.network_address)
        assert hba_decision(lines, i.db_name, i.db_role, own) == "scram-sha-256", i.name
        # Without TLS, even the instance's own connection is refused.
        assert hba_decision(lines, i.db_name, i.db_role, own, tls=False) == "reject", i.name
        assert hba_decision(lines, i.db_name, i.db_role, "192.0.2.7") == "reject", i.name
        assert hba_decision(lines, "postgres", i.db_role, own) == "reject", i.name
        for other in plan.instances:
            if other.db_name != i.db_name:
                assert hba_decision(lines, other.db_name, i.db_role, own) == "reject"
        for h in plan.hosts:  # every other fleet host is refused this role and database
            address = IPv4Network(f"{h.host.address}/32")
            if not address.subnet_of(source):
                decision = hba_decision(lines, i.db_name, i.db_role, str(h.host.address))
                assert decision == "reject", (i.name, h.host.name)


def sql_statements(script: str) -> list[str]:
    """The SQL statements of a psql script, whitespace folded. Comments are dropped; a psql
    meta-command line (\\gexec) ends the statement before it, as psql reads it."""
    lines = [";" if line.startswith("\\") else line for line in script.splitlines()]
    text = "\n".join(line for line in lines if not line.startswith("--"))
    return [" ".join(s.split()) for s in text.split(";") if s.strip()]


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@pytest.mark.parametrize("example", EXAMPLES)
def test_each_database_is_closed_to_public_and_open_to_its_role_only(
    render_example: RenderExample, example: str
) -> None:
    plan, script = database_host_file(render_example(example), "/init.sql")
    statements = sql_statements(script)
    assert "REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC" in statements
    grants = [s for s in statements if s.startswith("GRANT ")]
    assert not any(s.endswith(("TO PUBLIC", "TO public")) for s in grants), grants
    for i in plan.instances:
        db, role = ident(i.db_name), ident(i.db_role)
        # PUBLIC loses the default CONNECT and TEMPORARY on the instance's database ...
        assert f"REVOKE ALL ON DATABASE {db} FROM PUBLIC" in statements, i.name
        # ... and only the instance's own role gets them back, after the revoke.
        mine = [s for s in grants if f" ON DATABASE {db} " in s]
        assert mine == [f"GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}"], (i.name, mine)
        revoke = statements.index(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC")
        assert statements.index(mine[0]) > revoke
        assert f"ALTER DATABASE {db} OWNER TO {role}" in statements
        login = [s for s in statements if s.startswith(f"ALTER ROLE {role} WITH ")]
        assert len(login) == 1 and " NOSUPERUSER " in login[0] and " NOCREATEROLE " in login[0]


# -- nftables -------------------------------------------------------------------------------------

ACCEPT = re.compile(
    r"^(?:ip saddr \{ (?P<saddr>[^}]*) \} )?(?P<match>tcp dport|meta l4proto tcp ct original proto-dst)"
    r" (?P<port>\d+) accept comment \"(?P<comment>[^\"]+)\"$"
)


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_host_drops_input_and_opens_each_port_only_to_its_clients(
    render_example: RenderExample, example: str
) -> None:
    r = render_example(example)
    plan = r.plan
    assert isinstance(plan, Plan)
    fleet_hosts = {IPv4Network(f"{h.host.address}/32") for h in plan.hosts}
    subnets = {i.docker_subnet for i in plan.instances}
    containers = {IPv4Network((i.container_address, 32)) for i in plan.instances}
    assert all(IPv4Network((i.container_address, 32)).subnet_of(i.docker_subnet)
               for i in plan.instances)  # fmt: skip
    for host in plan.hosts:
        name = host.host.name
        (entry,) = [
            f for (h, p), f in host_files(r).items() if h == name and p.endswith("firewall.nft")
        ]
        assert entry["permissions"] == "0600"
        text = entry["content"]
        assert re.search(r"type filter hook input priority filter; policy drop;", text), name
        input_chain, _, forwarding = text.partition("chain forward")
        if host.instances:
            # Forwarded: only this host's own instance networks, out of them, never into them.
            assert "type filter hook forward priority filter; policy drop;" in forwarding, name
            mine = "{ " + ", ".join(str(i.docker_subnet) for i in host.instances) + " }"
            assert f"ip saddr {mine} ip daddr != {mine} accept" in forwarding, name
            for other in subnets - {i.docker_subnet for i in host.instances}:
                assert str(other) not in forwarding, (name, other)
        else:
            assert not forwarding and "masquerade" not in text, name
        seen = set()
        for line in (s.strip() for s in input_chain.splitlines()):
            if " accept comment " not in line:
                continue
            m = ACCEPT.match(line)
            assert m, (name, line)
            service = m["comment"]
            seen.add(service)
            saddr = {IPv4Network(n.strip()) for n in m["saddr"].split(",")} if m["saddr"] else None
            watcher = (
                {IPv4Network((plan.monitoring.host.address, 32))}
                if plan.monitoring is not None
                else set()
            )
            if service == "ssh":
                assert saddr == set(plan.fleet.admin.allow_from), (name, line)
            elif service.startswith("monitoring-"):
                # scraped by the monitoring host alone
                assert saddr == watcher != set(), (name, line)
            elif service == "prometheus":
                assert plan.monitoring is not None and host.host == plan.monitoring.host
                pushers = (
                    {i.source_network(host.host) for i in plan.instances}
                    if plan.monitoring.settings.openwebui_otel
                    else set()
                )
                assert saddr == set(plan.fleet.admin.allow_from) | pushers, (name, line)
            elif service.startswith("openwebui-"):
                assert plan.front_door is None, (name, line)  # then only the front door opens
                inst = next(i for i in plan.instances if f"openwebui-{i.name}" == service)
                assert saddr == (
                    None if inst.instance.public else {plan.fleet.network.cidr, *watcher}
                ), line
            elif service.startswith("front-door-"):
                door = plan.front_door
                assert door is not None and host.instances, (name, line)
                assert m["port"] == {"front-door-http": "80", "front-door-https": "443"}[service]
                assert saddr == (
                    None if door.allow_from is None else {*door.allow_from, *watcher}
                ), line
            else:
                # a shared service: only fleet hosts (instance hosts, backup and cluster peers)
                # or an instance container's own address on this host, never a wider network
                assert saddr, (name, line)
                assert saddr <= fleet_hosts | containers, (name, line)
            if service.startswith("redis-"):
                server = next(s for s in plan.redis_servers if service == f"redis-{s.name}")
                assert saddr == {i.source_network(host.host) for i in server.instances}, line
            if service == "postgresql":
                expected = {i.source_network(host.host) for i in plan.instances}
                assert saddr == expected, (name, line)
        assert "ssh" in seen, name
        if plan.front_door is not None and host.instances:
            assert {"front-door-http", "front-door-https"} <= seen, name
            assert not any(s.startswith("openwebui-") for s in seen), name


# -- file modes and secrets -----------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES)
def test_secret_bearing_files_are_0600_everywhere_and_secrets_nowhere_else(
    render_example: RenderExample, example: str
) -> None:
    r = render_example(example)
    assert isinstance(r.plan, Plan)
    values = list(r.secrets.all_values())  # type: ignore[attr-defined]
    assert len(values) == len(r.plan.secrets)  # every secret the plan names has a value
    # Private keys of the fleet CA and the service hosts count as secrets too (a line of each
    # PEM body stands for it).
    values += [pki.key_fingerprint(k) for k in r.secrets.tls.private_keys()]  # type: ignore[attr-defined]
    # out/: user-data, seed.iso and env files carry secrets and are the secret artifacts
    for path, data in r.files.items():
        name = path.rsplit("/", 1)[-1]
        carries = any(v.encode() in data for v in values)
        if name in ("user-data", "seed.iso") or name.endswith(".env"):
            assert path in r.secret_paths, path
        else:
            assert not carries, f"{path} holds a secret"
    # on the hosts: every write_files entry holding a secret is 0600
    for (host, path), entry in host_files(r).items():
        content = str(entry.get("content", ""))
        if any(v in content for v in values):
            assert entry.get("permissions") == "0600", (host, path)
    # and no secret on a command line (runcmd/bootcmd end up in logs and process lists)
    for h in r.plan.hosts:
        doc = user_data(r, h.host.name)
        commands = yaml.safe_dump([doc.get("runcmd", []), doc.get("bootcmd", [])])
        assert not any(v in commands for v in values), h.host.name
