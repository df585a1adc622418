"""Section: PostgreSQL on the shared host.

The distribution's PostgreSQL, with its data directory on the data volume: the cluster is
initialised only when the volume holds none, and reused otherwise. One role and one UTF8
database per instance, owned by that role, CONNECT revoked from PUBLIC; pg_hba.conf lets each
role reach only its own database, only from its instance host, with scram-sha-256, and rejects
everything else. Passwords go to the server as SCRAM verifiers in a 0600 SQL file owned by
postgres. Only the shared host gets this section.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from ipaddress import IPv4Network

from ..plan import (
    DATA_MOUNT,
    POSTGRES_DATA_ROOT,
    POSTGRES_PORT,
    SCRIPT_DIR,
    HostPlan,
    Plan,
)
from ..quoting import render_template, shell_command
from ..secrets import Secrets
from . import File, Part
from .datavolume import state_dir_command

ORDER = 200

SOURCE_DIR = "/etc/owuibuild/postgresql"  # rendered config, installed by the setup script
INIT_SQL = f"{SOURCE_DIR}/init.sql"
SETUP_SCRIPT = f"{SCRIPT_DIR}/postgresql-setup.sh"
SOCKET_DIR = "/var/run/postgresql"
DROPIN = "/etc/systemd/system/postgresql@.service.d/owuibuild.conf"
# Read by postgresql-common before the package creates its default cluster: we create ours.
CREATECLUSTER = "/etc/postgresql-common/createcluster.d/50-owuibuild.conf"
SCRAM_ITERATIONS = 4096


def data_dir(version: int) -> str:
    return f"{POSTGRES_DATA_ROOT}/{version}/main"


def conf_dir(version: int) -> str:
    return f"/etc/postgresql/{version}/main"


def scram_verifier(password: str, salt_seed: str) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    The salt is derived from ``salt_seed`` and the password instead of drawn at random, so a
    render stays byte-for-byte reproducible. Secrets are ASCII, for which SASLprep is the
    identity.
    """
    salt = hashlib.sha256(f"owuibuild-scram:{salt_seed}:{password}".encode()).digest()[:16]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


@dataclass(frozen=True)
class HbaRule:
    database: str
    role: str
    network: IPv4Network


def hba_rules(plan: Plan) -> list[HbaRule]:
    """Each instance's role may reach its own database from its own host only (from its own
    Docker network when it runs on the database host itself)."""
    return [
        HbaRule(i.db_name, i.db_role, i.source_network(plan.postgres_host)) for i in plan.instances
    ]


def postgresql_conf(plan: Plan) -> str:
    pg = plan.fleet.shared.postgres
    return render_template(
        "postgresql.conf.j2",
        data_dir=data_dir(pg.version),
        hba_file=f"{conf_dir(pg.version)}/pg_hba.conf",
        ident_file=f"{conf_dir(pg.version)}/pg_ident.conf",
        pid_file=f"{SOCKET_DIR}/{pg.version}-main.pid",
        cluster_name=f"{pg.version}/main",
        listen_addresses=f"{plan.postgres_host.address},localhost",
        port=POSTGRES_PORT,
        max_connections=pg.max_connections,
        socket_dir=SOCKET_DIR,
        timezone=plan.fleet.os.timezone,
    )


def pg_hba_conf(plan: Plan) -> str:
    return render_template("pg_hba.conf.j2", rules=hba_rules(plan))


def init_sql(plan: Plan, secrets: Secrets) -> str:
    databases = [
        {
            "instance": i.name,
            "role": i.db_role,
            "database": i.db_name,
            "verifier": scram_verifier(secrets[i.db_password.name], i.db_role),
        }
        for i in plan.instances
    ]
    return render_template("init.sql.j2", databases=databases)


def setup_script(plan: Plan) -> str:
    version = plan.fleet.shared.postgres.version
    return render_template(
        "postgresql-setup.sh.j2",
        version=version,
        data_dir=data_dir(version),
        source_dir=SOURCE_DIR,
        init_sql=INIT_SQL,
        state_dir_command=shell_command(
            state_dir_command(
                "postgres",
                "0700",
                POSTGRES_DATA_ROOT,
                f"{POSTGRES_DATA_ROOT}/{version}",
                data_dir(version),
            )
        ),
    )


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part | None:
    if "postgres" not in host.services:
        return None
    return Part(
        name="postgres",
        packages=("postgresql",),
        files=(
            File(
                CREATECLUSTER,
                "# owuibuild creates the cluster on the data volume itself\n"
                "create_main_cluster = false\n",
            ),
            File(DROPIN, render_template("dropin.conf.j2", mount=DATA_MOUNT, read_write="")),
            File(f"{SOURCE_DIR}/postgresql.conf", postgresql_conf(plan)),
            File(f"{SOURCE_DIR}/pg_hba.conf", pg_hba_conf(plan)),
            File(f"{SOURCE_DIR}/pg_ident.conf", "# no user name maps\n"),
            File(f"{SOURCE_DIR}/start.conf", "auto\n"),
            File(
                INIT_SQL,
                init_sql(plan, secrets),
                permissions="0600",
                owner="postgres:postgres",
                defer=True,
            ),
            File(SETUP_SCRIPT, setup_script(plan), permissions="0755"),
        ),
        configure=(("/bin/sh", SETUP_SCRIPT),),
    )
