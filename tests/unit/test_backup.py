"""Unit tests of the backup section and the restore runbook: every path and count comes from
the plan, the Qdrant API key reaches only its 0600 header file, and the timer follows the
blueprint's calendar."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from conftest import Rendered
from owuibuild.hostconfig import backup, parts_for, postgres
from owuibuild.plan import BACKUP_DIR, DATA_MOUNT
from owuibuild.quoting import QuotingError

pytestmark = pytest.mark.unit

BLUEPRINT = """
apiVersion: owuibuild/v1
name: bk
admin:
  user: ops
  ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwuibuildExampleKeyReplaceWithYourOwn00000 ops@x"]
  allow_from: [10.9.0.0/24]
network: {cidr: 10.9.0.0/24, gateway: 10.9.0.1, dns: [10.9.0.1]}
shared:
  host: {name: ai-shared, address: 10.9.0.10%(volume)s}
  backups: %(backups)s
hosts:
  - {name: web-a, address: 10.9.0.20, data_volume: {label: owui-data}}
instances:
  - {name: alpha, host: web-a, port: 3000}
  - {name: beta-two, host: web-a, port: 3001}
"""
VOLUME = ", data_volume: {label: owui-data}"


@pytest.fixture
def render(render_text: Callable[[str], Rendered]) -> Callable[..., Rendered]:
    def go(backups: str = "{}", volume: str = VOLUME) -> Rendered:
        return render_text(BLUEPRINT % {"backups": backups, "volume": volume})

    return go


def user_data(rendered: Rendered, host: str) -> dict[str, Any]:
    loaded: dict[str, Any] = rendered.user_data(host)
    return loaded


def written(rendered: Rendered, host: str = "ai-shared") -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in user_data(rendered, host).get("write_files", [])}


def test_defaults_back_up_daily_onto_the_data_volume(render: Callable[..., Rendered]) -> None:
    r = render()
    files = written(r)
    script = files[backup.SCRIPT]["content"]
    assert r.plan.backup_dir == BACKUP_DIR  # type: ignore[attr-defined]
    assert f"BACKUP={BACKUP_DIR}\n" in script
    assert "KEEP=7\n" in script
    assert "OnCalendar=daily\n" in files[backup.TIMER]["content"]
    assert files[backup.SCRIPT]["permissions"] == "0755"


def test_paths_come_from_the_plan(render: Callable[..., Rendered]) -> None:
    r = render("{directory: /srv/second-disk/owui-backups, keep: 3}")
    plan: Any = r.plan
    assert plan.backup_dir == "/srv/second-disk/owui-backups"
    assert backup.dump_dir(plan, "alpha") == "/srv/second-disk/owui-backups/postgres/alpha"
    assert backup.qdrant_dir(plan) == "/srv/second-disk/owui-backups/qdrant"
    files = written(r)
    script = files[backup.SCRIPT]["content"]
    assert "BACKUP=/srv/second-disk/owui-backups\n" in script
    assert "KEEP=3\n" in script
    # One dump per instance database, named as the plan names them ('-' is not an identifier).
    assert [i.db_name for i in plan.instances] == ["alpha", "beta_two"]
    assert "set -- alpha beta_two\n" in script
    assert f"PG_BIN=/usr/lib/postgresql/{plan.fleet.shared.postgres.version}/bin\n" in script
    assert f"QDRANT={plan.qdrant_url}\n" in script
    unit = files[backup.SERVICE]["content"]
    assert f"RequiresMountsFor={DATA_MOUNT} /srv/second-disk/owui-backups\n" in unit
    assert "ReadWritePaths=/srv/second-disk/owui-backups\n" in unit
    # A directory off the data volume is not guarded by the data volume's mount check.
    assert "mountpoint" not in script
    # The directories exist before the first run (ReadWritePaths= needs them), via state-dir.
    runcmd = user_data(r, "ai-shared")["runcmd"]
    assert [
        "/bin/sh", "/usr/local/lib/owuibuild/state-dir.sh", "root", "0700",
        "/srv/second-disk/owui-backups", "/srv/second-disk/owui-backups/postgres",
        "/srv/second-disk/owui-backups/qdrant",
    ] in runcmd  # fmt: skip


def test_rotation_keeps_the_blueprint_count_per_database_and_for_qdrant(
    render: Callable[..., Rendered],
) -> None:
    script = written(render("{keep: 12}"))[backup.SCRIPT]["content"]
    assert "KEEP=12\n" in script
    assert 'rotate "$dir" "$db-" .dump\n' in script
    assert 'rotate "$dir" qdrant- .snapshot\n' in script
    # Timestamps sort by age only in the C locale, and partial files never match the glob.
    assert "export LC_ALL=C\n" in script
    assert "STAMP=$(date -u +%Y%m%dT%H%M%SZ)\n" in script
    assert '.$db-$STAMP.dump.partial"' in script


def test_script_writes_0600_files_under_temp_names_and_fails_loudly(
    render: Callable[..., Rendered],
) -> None:
    script = written(render())[backup.SCRIPT]["content"]
    assert script.startswith("#!/bin/sh\n")
    assert "umask 077\n" in script
    assert "set -e" not in script  # one failed database must not stop the others
    assert 'exit "$failed"\n' in script
    assert 'runuser -u postgres -- "$PG_BIN/pg_dump" --format=custom --no-password' in script
    assert 'mv -f -- "$partial" "$final"' in script


def test_data_volume_guard_only_when_backups_live_on_it(render: Callable[..., Rendered]) -> None:
    on_volume = written(render())[backup.SCRIPT]["content"]
    assert f'VOLUME={DATA_MOUNT}\nif ! mountpoint -q "$VOLUME"; then' in on_volume
    no_volume = written(render(volume=""))[backup.SCRIPT]["content"]
    assert "mountpoint" not in no_volume


def test_the_qdrant_key_is_only_in_its_0600_header_file(render: Callable[..., Rendered]) -> None:
    r = render()
    plan: Any = r.plan
    key = r.secrets[plan.qdrant_api_key.name]  # type: ignore[index]
    files = written(r)
    header = files[backup.KEY_FILE]
    assert header["content"] == f"api-key: {key}\n"
    assert (header["permissions"], header["owner"]) == ("0600", "root:root")
    for path in (backup.SCRIPT, backup.SERVICE, backup.TIMER):
        assert key not in files[path]["content"], path
    doc = user_data(r, "ai-shared")
    assert key not in yaml.safe_dump([doc.get("runcmd", []), doc.get("bootcmd", [])])
    # The script reads the header from the credential systemd hands it, never from argv.
    unit = files[backup.SERVICE]["content"]
    assert f"LoadCredential={backup.CREDENTIAL}:{backup.KEY_FILE}\n" in unit
    script = files[backup.SCRIPT]["content"]
    assert '--header "@$CREDENTIALS_DIRECTORY/$KEY_CREDENTIAL"' in script
    assert "api-key:" not in re.sub(r"#.*", "", script)  # no header is built in the script


def test_the_runbook_holds_no_secret(render: Callable[..., Rendered]) -> None:
    r = render()
    text = backup.restore_runbook(r.plan)  # type: ignore[arg-type]
    for value in r.secrets.all_values():  # type: ignore[attr-defined]
        assert value not in text
    assert text.startswith("## Backups and restore\n")
    assert f"{BACKUP_DIR}/postgres/alpha/alpha-<UTC time>.dump" in text
    assert "pg_restore" in text and "--storage-snapshot" in text
    assert backup.KEY_FILE in text and "secrets.yml" in text
    assert "on the data volume" in text
    assert "NOT on the host's data volume" in backup.restore_runbook(
        render(volume="").plan  # type: ignore[arg-type]
    )


def test_unit_timer_and_enablement(render: Callable[..., Rendered]) -> None:
    r = render("{on_calendar: '*-*-* 03:30:00'}")
    files = written(r)
    timer = files[backup.TIMER]["content"]
    assert "OnCalendar=*-*-* 03:30:00\n" in timer
    assert "Persistent=true\n" in timer
    assert "WantedBy=timers.target\n" in timer
    unit = files[backup.SERVICE]["content"]
    assert "Type=oneshot\n" in unit
    assert f"ExecStart=/bin/sh {backup.SCRIPT}\n" in unit
    version = r.plan.fleet.shared.postgres.version  # type: ignore[attr-defined]
    assert f"After=network-online.target postgresql@{version}-main.service qdrant.service\n" in unit
    assert "Environment=PGHOST=/var/run/postgresql\nEnvironment=PGPORT=5432\n" in unit
    runcmd = user_data(r, "ai-shared")["runcmd"]
    assert ["systemctl", "enable", "--no-reload", backup.TIMER_NAME] in runcmd
    # The timer starts in the last step, after the services it backs up are configured.
    last = runcmd[-1]
    assert last[:2] == ["systemctl", "start"] and last[-1] == backup.TIMER_NAME
    assert runcmd.index(["/bin/sh", postgres.SETUP_SCRIPT]) < len(runcmd) - 1
    assert "qdrant.service" in last
    assert not [c for c in runcmd[:-1] if backup.TIMER_NAME in c and "--now" in c]


def test_only_the_shared_host_and_only_when_enabled(render: Callable[..., Rendered]) -> None:
    r = render()
    assert backup.SCRIPT not in written(r, "web-a")
    plan: Any = r.plan
    assert "backup" not in [p.name for p in parts_for(plan, plan.docker_hosts[0], r.secrets)]  # type: ignore[arg-type]
    off = render("{enabled: false}")
    assert not any(
        p.startswith(("/etc/owuibuild/backup", backup.SERVICE, backup.TIMER)) for p in written(off)
    )
    assert "Backups are off" in backup.restore_runbook(off.plan)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", ["daily", "hourly", "*-*-* 03:30:00", "Mon..Fri 02:00", "*:0/15", "weekly"]
)
def test_calendar_accepts_systemd_expressions(value: str) -> None:
    assert backup.calendar(value) == value


@pytest.mark.parametrize("value", ["daily\nExecStart=/bin/evil", "", " daily", "a;b", "x" * 65])
def test_calendar_refuses_what_could_break_the_unit(value: str) -> None:
    with pytest.raises(QuotingError):
        backup.calendar(value)
