"""Section: Redis on the shared host.

One redis-server@<name> per isolation unit (plan.redis_servers): by default one per instance,
because Open WebUI's Socket.IO channel has no prefix and instances sharing a Redis receive each
other's events. Each server binds the private address on its own port with protected-mode on;
the default user is off and every instance has its own ACL user, without @admin and @dangerous
commands, known by its password's SHA-256. In the opt-in shared mode each user is confined to
its key prefix ``<name>:*``. Each configuration file is 0600 and owned by redis all the same.
"""

from __future__ import annotations

import hashlib

from ..plan import (
    DATA_MOUNT,
    MONITOR_REDIS_USER,
    REDIS_DATA_ROOT,
    SCRIPT_DIR,
    SERVER_CERT,
    SERVER_KEY,
    HostPlan,
    Plan,
    RedisServerPlan,
)
from ..quoting import Quoted, render_template, shell_command, systemd_path
from ..secrets import Secrets
from . import File, Part
from .datavolume import state_dir_command

ORDER = 210

SETUP_SCRIPT = f"{SCRIPT_DIR}/redis-setup.sh"
DROPIN = "/etc/systemd/system/redis-server@.service.d/owuibuild.conf"
# The copy of the host's key that only redis reads (its certificate is SERVER_CERT).
TLS_KEY_DIR = "/etc/redis/tls"
TLS_KEY = f"{TLS_KEY_DIR}/server.key"
TLS_PROTOCOLS = "TLSv1.2 TLSv1.3"
# What the Redis exporter asks (its scrape: INFO, CONFIG GET for maxmemory and the like, the
# slow log, latency, the database sizes); nothing that reads or writes a key. It names its own
# connection first (CLIENT SETNAME): refused, that logs an error and counts a NOPERM in the
# server's error statistics on every scrape.
MONITOR_COMMANDS = (
    "+ping",
    "+client|setname",
    "+info",
    "+config|get",
    "+slowlog|get",
    "+slowlog|len",
    "+latency|latest",
    "+dbsize",
    "+select",
    "+memory|stats",
    "+module|list",
)


def conf_path(server: RedisServerPlan) -> str:
    return f"/etc/redis/redis-{server.name}.conf"


def data_dir(server: RedisServerPlan) -> str:
    return f"{REDIS_DATA_ROOT}/{server.name}"


def unit(server: RedisServerPlan) -> str:
    return f"redis-server@{server.name}.service"


def acl_password(password: str) -> str:
    """The ACL rule that admits ``password`` by its SHA-256 (``#<hex>``), not by its text."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def redis_conf(plan: Plan, server: RedisServerPlan, secrets: Secrets) -> str:
    shared = len(server.instances) > 1 or plan.fleet.shared.redis.mode == "shared"
    users = [
        {
            "name": i.redis_user,
            "password": acl_password(secrets[i.redis_password.name]),
            "key_pattern": f"~{i.redis_key_prefix}:*" if shared else "~*",
        }
        for i in server.instances
    ]
    watch = plan.monitoring
    monitor = (
        {
            "name": MONITOR_REDIS_USER,
            "password": acl_password(secrets[watch.redis_password.name]),
            "commands": MONITOR_COMMANDS,
        }
        if watch is not None
        else None
    )
    return render_template(
        "redis.conf.j2",
        monitor=monitor,
        name=server.name,
        address=str(plan.redis_host.address),
        port=server.port,
        pidfile=f"/run/redis-{server.name}/redis-server.pid",
        dir=data_dir(server),
        maxmemory_mb=plan.fleet.shared.redis.maxmemory_mb,
        users=users,
        cert_file=SERVER_CERT,
        key_file=TLS_KEY,
        tls_protocols=TLS_PROTOCOLS,
    )


def setup_script(plan: Plan) -> str:
    servers = plan.redis_servers
    return render_template(
        "redis-setup.sh.j2",
        # One call: state-dir.sh makes its directories in order, the root first.
        state_dir_command=shell_command(
            state_dir_command("redis", "0750", REDIS_DATA_ROOT, *(data_dir(s) for s in servers))
        ),
        units=[unit(s) for s in servers],
        key_dir=TLS_KEY_DIR,
        server_key=SERVER_KEY,
        key=TLS_KEY,
    )


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part | None:
    if "redis" not in host.services or not plan.redis_servers:
        return None
    # The distribution's unit may write only its own paths (ProtectSystem=strict).
    read_write = Quoted(systemd_path(REDIS_DATA_ROOT) + "/%i")
    units = tuple(unit(s) for s in plan.redis_servers)
    return Part(
        name="redis",
        packages=("redis-server",),
        files=(
            File(
                DROPIN, render_template("dropin.conf.j2", mount=DATA_MOUNT, read_write=read_write)
            ),
            *(
                File(
                    conf_path(s),
                    redis_conf(plan, s, secrets),
                    permissions="0600",
                    owner="redis:redis",
                    defer=True,
                    live=True,  # one server per file: a new one starts beside the others
                    reader=unit(s),
                )
                for s in plan.redis_servers
            ),
            File(SETUP_SCRIPT, setup_script(plan), permissions="0755", live=True),
        ),
        # The distribution's default server (no password, port 6379 on localhost) never runs:
        # masked where the package is installed, so a golden image does not start it at boot.
        install=(("systemctl", "mask", "--no-reload", "--now", "redis-server.service"),),
        # Starts the servers that are not running yet: a converge's new instance's too.
        live_configure=(("/bin/sh", SETUP_SCRIPT),),
        awaited=units,
        template_units=units,
    )
