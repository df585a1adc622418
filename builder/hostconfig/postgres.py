"""Section: PostgreSQL on the shared host.

The distribution's PostgreSQL, with its data directory on the data volume: the cluster is
initialised only when the volume holds none, and reused otherwise. A volume that holds only a
cluster of another major version (a host moved to a newer release) is never initialised next
to nor started on: a guard, run by the setup script and as the unit's ExecStartPre, fails the
unit with a message that points to the runbook's upgrade section. One role and one UTF8
database per instance, owned by that role, CONNECT revoked from PUBLIC; pg_hba.conf lets each
role reach only its own database, only from its instance host, with scram-sha-256, and rejects
everything else. Passwords go to the server as SCRAM verifiers (owuibuild.scram; the secret store
keeps them sealed) in a 0600 SQL file owned by postgres. Only the shared host gets this section.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network

from ..plan import (
    DATA_MOUNT,
    MONITOR_ROLE,
    POSTGRES_DATA_ROOT,
    POSTGRES_PORT,
    SCRIPT_DIR,
    SERVER_CERT,
    SERVER_KEY,
    TLS_MIN_VERSION,
    HostPlan,
    Plan,
)
from ..quoting import render_template, shell, shell_command
from ..release import RELEASES
from ..secrets import Secrets
from . import File, Part
from .datavolume import state_dir_command

# After the other shared services: their sections start them in the background, so they come up
# while this section's setup (the slowest step of a first boot) runs.
ORDER = 250

SOURCE_DIR = "/etc/owuibuild/postgresql"  # rendered config, installed by the setup script
INIT_SQL = f"{SOURCE_DIR}/init.sql"
SETUP_SCRIPT = f"{SCRIPT_DIR}/postgresql-setup.sh"
START_ONLY = "--start-only"  # the setup script's mode that queues the start and returns
# Refuses a data volume whose only cluster is of another major (ExecStartPre and setup script).
GUARD_SCRIPT = f"{SCRIPT_DIR}/postgresql-guard.sh"
# The runbook section that says how to upgrade; the guard's message points there.
UPGRADE_SECTION = "Upgrading PostgreSQL to a new major version"
# Where the runbook's dump-and-restore path keeps its dumps: on the data volume, which moves
# from the old host to the new one.
UPGRADE_DUMPS = f"{DATA_MOUNT}/postgresql-upgrade"
SOCKET_DIR = "/var/run/postgresql"
DROPIN = "/etc/systemd/system/postgresql@.service.d/owuibuild.conf"
# Read by postgresql-common before the package creates its default cluster: we create ours.
CREATECLUSTER = "/etc/postgresql-common/createcluster.d/50-owuibuild.conf"
# The empty cluster made at install time (on the root disk: a golden image carries it), copied
# onto a new data volume at first boot instead of running initdb there.
TEMPLATE_ROOT = "/var/lib/postgresql/owuibuild-template"
TEMPLATE_SCRIPT = f"{SCRIPT_DIR}/postgresql-template.sh"
# postgresql-common's own backup units (pg_backupcluster: WAL archiving, base backups, dumps),
# opt-in in Debian. A golden image's first boot applies the system's unit presets, whose default
# enables every unit no preset names: these would start with the cluster, archiving WAL through
# a replication login that pg_hba.conf refuses (a failed start every minute) and dumping every
# database weekly onto the root disk. The fleet's backups are owui-backup's, on the data volume.
PRESET = "/etc/systemd/system-preset/20-owuibuild-postgresql.preset"
PACKAGE_BACKUP_UNITS = (
    "pg_receivewal@.service",
    "pg_compresswal@.timer",
    "pg_basebackup@.timer",
    "pg_dump@.timer",
)


def data_dir(version: int) -> str:
    return f"{POSTGRES_DATA_ROOT}/{version}/main"


def conf_dir(version: int) -> str:
    return f"/etc/postgresql/{version}/main"


@dataclass(frozen=True)
class HbaRule:
    database: str
    role: str
    network: IPv4Network


def hba_rules(plan: Plan) -> list[HbaRule]:
    """Each instance's role may reach its own database from its own host only (from its own
    Docker network when it runs on the database host itself)."""
    rules = [
        HbaRule(i.db_name, i.db_role, i.source_network(plan.postgres_host)) for i in plan.instances
    ]
    if plan.monitoring is not None:
        # The PostgreSQL exporter runs on this host and dials its private address.
        here = IPv4Network((plan.postgres_host.address, 32))
        rules.append(HbaRule("postgres", MONITOR_ROLE, here))
    return rules


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
        cert_file=f"{conf_dir(pg.version)}/server.crt",
        key_file=f"{conf_dir(pg.version)}/server.key",
        tls_min=TLS_MIN_VERSION,
    )


def pg_hba_conf(plan: Plan) -> str:
    return render_template("pg_hba.conf.j2", rules=hba_rules(plan))


def init_sql(plan: Plan, secrets: Secrets) -> str:
    databases = [
        {
            "instance": i.name,
            "role": i.db_role,
            "database": i.db_name,
            "verifier": secrets.scram_verifier(i.db_password.name, i.db_role),
        }
        for i in plan.instances
    ]
    watch = plan.monitoring
    monitor = (
        {
            "role": MONITOR_ROLE,
            "verifier": secrets.scram_verifier(watch.postgres_password.name, MONITOR_ROLE),
        }
        if watch is not None
        else None
    )
    return render_template("init.sql.j2", databases=databases, monitor=monitor)


def unit_name(version: int) -> str:
    return f"postgresql@{version}-main.service"


def bin_dir(version: int) -> str:
    return f"/usr/lib/postgresql/{version}/bin"


def make_data_dir_command(version: int) -> tuple[str, ...]:
    """Creates the cluster's directories on the volume (refusing when it is not mounted)."""
    return state_dir_command(
        "postgres", "0700", POSTGRES_DATA_ROOT, f"{POSTGRES_DATA_ROOT}/{version}", data_dir(version)
    )


def template_dir(version: int) -> str:
    return f"{TEMPLATE_ROOT}/{version}"


def initdb_command(version: int, pgdata: str | None = None) -> tuple[str, ...]:
    """The cluster as owuibuild makes it: UTF8, peer locally, SCRAM over the network."""
    return (
        "runuser", "-u", "postgres", "--", f"{bin_dir(version)}/initdb",
        f"--pgdata={pgdata or data_dir(version)}", "--encoding=UTF8", "--locale=C.UTF-8",
        "--auth-local=peer", "--auth-host=scram-sha-256", "--username=postgres",
    )  # fmt: skip


def template_script(plan: Plan) -> str:
    version = plan.fleet.shared.postgres.version
    return render_template(
        "postgresql-template.sh.j2",
        version=version,
        template_root=TEMPLATE_ROOT,
        template_dir=template_dir(version),
        initdb_command=shell_command(initdb_command(version, template_dir(version) + ".new")),
    )


def guard_script(plan: Plan) -> str:
    return render_template(
        "postgresql-guard.sh.j2",
        version=plan.fleet.shared.postgres.version,
        data_root=POSTGRES_DATA_ROOT,
        setup_script=SETUP_SCRIPT,
        runbook_section=UPGRADE_SECTION,
    )


def setup_script(plan: Plan) -> str:
    version = plan.fleet.shared.postgres.version
    return render_template(
        "postgresql-setup.sh.j2",
        start_only=START_ONLY,
        version=version,
        data_dir=data_dir(version),
        source_dir=SOURCE_DIR,
        init_sql=INIT_SQL,
        guard=GUARD_SCRIPT,
        state_dir_command=shell_command(make_data_dir_command(version)),
        initdb_command=shell_command(initdb_command(version)),
        template_dir=template_dir(version),
        server_cert=SERVER_CERT,
        server_key=SERVER_KEY,
    )


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part | None:
    if "postgres" not in host.services:
        return None
    return Part(
        name="postgres",
        packages=("postgresql",),
        files=(
            File(
                PRESET,
                "# Generated by owuibuild: PostgreSQL's own backup units stay off; owuibuild's\n"
                "# backups (owui-backup.timer) cover the fleet, on the data volume.\n"
                + "".join(f"disable {unit}\n" for unit in PACKAGE_BACKUP_UNITS),
                install=True,
            ),
            # Read when the package installs: a golden image gets no default cluster either.
            File(
                CREATECLUSTER,
                "# owuibuild creates the cluster on the data volume itself\n"
                "create_main_cluster = false\n",
                install=True,
            ),
            File(
                DROPIN,
                render_template(
                    "dropin.conf.j2", mount=DATA_MOUNT, read_write="", guard=GUARD_SCRIPT
                ),
            ),
            File(f"{SOURCE_DIR}/postgresql.conf", postgresql_conf(plan)),
            # Each instance's role and database: PostgreSQL reloads both without a restart.
            File(f"{SOURCE_DIR}/pg_hba.conf", pg_hba_conf(plan), live=True),
            File(f"{SOURCE_DIR}/pg_ident.conf", "# no user name maps\n"),
            File(f"{SOURCE_DIR}/start.conf", "auto\n"),
            File(
                INIT_SQL,
                init_sql(plan, secrets),
                permissions="0600",
                owner="postgres:postgres",
                defer=True,
                live=True,
            ),
            File(GUARD_SCRIPT, guard_script(plan), permissions="0755"),
            File(SETUP_SCRIPT, setup_script(plan), permissions="0755"),
            File(TEMPLATE_SCRIPT, template_script(plan), permissions="0755"),
        ),
        install=(("/bin/sh", TEMPLATE_SCRIPT),),
        # Also a converge's step: creates a new instance's role and database, and reloads (never
        # restarts) the server for a new pg_hba.conf.
        live_configure=(("/bin/sh", SETUP_SCRIPT),),
        # A golden first boot prepares the cluster and queues its start right after cloud-init's
        # network stage (the slowest start of the shared host: it overlaps cloud-init's config
        # stage); the setup step above then only waits for it and applies init.sql.
        first_boot_run=(("/bin/sh", SETUP_SCRIPT, START_ONLY),),
        template_units=(unit_name(plan.fleet.shared.postgres.version),),
    )


@dataclass(frozen=True)
class UpgradeCommands:
    """The shell blocks of the runbook's dump-and-restore upgrade, for this fleet's layout.

    ``dump`` runs on the old host (the major in $OLD), ``new_host`` on the new one; both as
    root. The runbook prints them, and the services tier runs them as printed.
    """

    dump: str
    new_host: str


def upgrade_commands(plan: Plan) -> UpgradeCommands:
    version = plan.fleet.shared.postgres.version
    dumps = shell(UPGRADE_DUMPS)
    databases = " ".join(shell(i.db_name) for i in plan.instances)
    # The example is the newest older major of this family's releases: the usual way a
    # fleet moves. Where there is none, the operator must say which major the volume holds.
    family = plan.fleet.os.release.family
    older = sorted(
        {
            r.postgres_major
            for r in RELEASES.values()
            if r.family == family and r.postgres_major < version
        }
    )
    old = str(older[-1]) if older else '"${OLD:?set OLD to the major the message names}"'
    dump = (
        f"OLD={old}  # the major the unit's message names\n"
        f"install -d -m 0700 {dumps}\n"
        f"for db in {databases}; do\n"
        '    runuser -u postgres -- "/usr/lib/postgresql/$OLD/bin/pg_dump" --format=custom \\\n'
        f'        -- "$db" >{dumps}/"$db.dump"\n'
        "done\n"
    )
    new_host = (
        f"{shell_command(make_data_dir_command(version))}\n"
        f"{shell_command(initdb_command(version))}\n"
        "# Finds the new cluster, starts it, creates the roles and empty databases:\n"
        f"/bin/sh {shell(SETUP_SCRIPT)}\n"
        "# The dumps are root's: the shell opens each one, pg_restore reads it on stdin.\n"
        f"for db in {databases}; do\n"
        f"    runuser -u postgres -- {shell(bin_dir(version) + '/pg_restore')} --exit-on-error \\\n"
        f'        --single-transaction --dbname="$db" <{dumps}/"$db.dump"\n'
        "done\n"
    )
    return UpgradeCommands(dump, new_host)


def upgrade_runbook(plan: Plan) -> str:
    """The README's section on moving the cluster to another PostgreSQL major. Pure."""
    version = plan.fleet.shared.postgres.version
    host = plan.postgres_host.name
    unit = unit_name(version)
    commands = upgrade_commands(plan)
    majors = ", ".join(f"{r.distro}: {r.postgres_major}" for r in RELEASES.values())
    by_host: dict[str, list[str]] = {}
    for i in plan.instances:
        by_host.setdefault(i.host.name, []).append(f"`{i.unit_name}`")
    stops = "; ".join(f"on {h}: {', '.join(units)}" for h, units in by_host.items()) or "none"
    return f"""## {UPGRADE_SECTION}

`{host}` runs PostgreSQL {version} (`{unit}`), with its cluster on the data volume in
`{data_dir(version)}` and its configuration in `{conf_dir(version)}`. A host of another
release may run another major, and two majors cannot share a cluster. When a host
meets a data volume that holds a cluster of another major and none of its own, it changes
nothing: it neither initialises a new, empty cluster nor starts. `{unit}` fails (its
`ExecStartPre`, `{GUARD_SCRIPT}`, refuses), `systemctl status {unit}` and the cloud-init log
say what was found, and `owuibuild status` shows each database as `refused`, with a hint.
Upgrade the data with one of the paths below; then the host proceeds as usual.

### Dump and restore

Works between any two majors with each release's own packages; the instances are down from
the dump until the restore. Run as root (`sudo -i`). `OLD` is the major the volume holds, as
the unit's message names it ({majors}).
Take a backup and check it before you begin (see "Take and check a backup" above).

1. On the old `{host}`, still on the old release: stop every instance ({stops}) so that
   nothing is written after the dump, then dump each instance database onto the data volume
   (copy `{UPGRADE_DUMPS}` elsewhere too):

   ```sh
{_indent(commands.dump)}   ```

2. Replace `{host}` with a VM of the new release booted from its new seed, with the same data
   volume. `{unit}` refuses to start, as described above.
3. On the new `{host}`: make the PostgreSQL {version} cluster next to the old one, let the setup
   script configure it (the instances' roles, passwords and empty databases), and restore
   each dump into its database (objects keep their owner, the instance's role):

   ```sh
{_indent(commands.new_host)}   ```

4. Start the instances again and check them with `owuibuild status <blueprint>`.
5. Once everything works, remove the old cluster and the dumps:
   `rm -r {POSTGRES_DATA_ROOT}/$OLD {UPGRADE_DUMPS}`.

### pg_upgrade

Faster for large databases, but it needs both majors' server binaries on one machine, and
neither Debian release ships the other's: install the missing major from PostgreSQL's own apt
repository on the old host. Then, with the instances stopped, make the new cluster as in step
3 above (its first two commands), and:

```sh
systemctl stop postgresql@$OLD-main.service
cd /tmp && runuser -u postgres -- {bin_dir(version)}/pg_upgrade \\
    --old-bindir=/usr/lib/postgresql/$OLD/bin --new-bindir={bin_dir(version)} \\
    --old-datadir={POSTGRES_DATA_ROOT}/$OLD/main --new-datadir={data_dir(version)} \\
    --old-options="-c config_file=/etc/postgresql/$OLD/main/postgresql.conf"
```

Then replace the host as in step 2: the new host finds the PostgreSQL {version} cluster and
starts it. owuibuild's tests run the dump-and-restore path for real; this one is not tested.
"""


def _indent(block: str) -> str:
    return "".join(f"   {line}\n" if line else "\n" for line in block.splitlines())
