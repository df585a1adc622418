"""Validators for the backup section: shellcheck on the generated script, systemd-analyze on its
service and timer (and on the blueprint's calendar), and cloud-init's strict schema on the
user-data that carries them, for every example blueprint and for non-default backup settings.

The checkers themselves (and the private mount namespace that systemd-analyze runs in) are the
ones tests/validators/test_shared_host.py defines and tests; they are imported, not copied.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import EXAMPLES, Rendered, require_tool
from owuibuild.hostconfig import backup
from test_shared_host import UNIT_DIR, _need_root, cloud_init_problems, user_data, written

pytestmark = pytest.mark.validators

VARIANT = """
apiVersion: owuibuild/v1
name: bkv
admin:
  user: ops
  ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwuibuildExampleKeyReplaceWithYourOwn00000 ops@x"]
  allow_from: [10.9.0.0/24]
network: {cidr: 10.9.0.0/24, gateway: 10.9.0.1, dns: [10.9.0.1]}
shared:
  host: {name: ai-shared, address: 10.9.0.10%(volume)s}
  backups: {keep: 30, on_calendar: "%(calendar)s", directory: /srv/backup-disk/owui}
instances:
  - {name: alpha, host: ai-shared, port: 3000}
  - {name: beta-two, host: ai-shared, port: 3001}
"""
VARIANTS = {
    "volume-and-second-disk": {"volume": ", data_volume: {label: owui-data}",
                               "calendar": "*-*-* 03:30:00"},
    "no-volume": {"volume": "", "calendar": "Mon..Fri 02:00"},
}  # fmt: skip
# One database: a loop over a single literal word is a shellcheck warning (SC2043).
ONE_INSTANCE = VARIANT.replace("  - {name: beta-two, host: ai-shared, port: 3001}\n", "")


def rendered_cases(
    render_example: Callable[[str], Rendered], render_text: Callable[[str], Rendered]
) -> dict[str, Rendered]:
    cases = {name: render_example(name) for name in EXAMPLES}
    cases |= {name: render_text(VARIANT % values) for name, values in VARIANTS.items()}
    cases["one-instance"] = render_text(ONE_INSTANCE % VARIANTS["no-volume"])
    return cases


def backup_host(rendered: Rendered) -> str:
    """Backups run where PostgreSQL is placed (the shared host unless the blueprint moves it)."""
    return rendered.plan.postgres_host.name  # type: ignore[attr-defined, no-any-return]


def backup_files(rendered: Rendered) -> dict[str, str]:
    shared = backup_host(rendered)
    return {
        path.split(":", 1)[1]: text
        for path, text in written(rendered).items()
        if path.startswith(f"{shared}:")
        and path.split(":", 1)[1] in (backup.SCRIPT, backup.SERVICE, backup.TIMER)
    }


def test_every_example_backs_up(render_example: Callable[[str], Rendered]) -> None:
    """The examples keep the default (backups on): the host running PostgreSQL carries the
    script, its service and its timer, and no other host does."""
    assert EXAMPLES
    wanted = (backup.SCRIPT, backup.SERVICE, backup.TIMER)
    for name in EXAMPLES:
        rendered = render_example(name)
        assert rendered.plan.fleet.shared.backups.enabled, name  # type: ignore[attr-defined]
        assert set(backup_files(rendered)) == set(wanted), name
        elsewhere = [
            path
            for path in written(rendered)
            if path.split(":", 1)[1] in wanted and not path.startswith(f"{backup_host(rendered)}:")
        ]
        assert elsewhere == [], name
        assert "[Timer]" in backup_files(rendered)[backup.TIMER]


def test_backup_script_passes_shellcheck(
    render_example: Callable[[str], Rendered],
    render_text: Callable[[str], Rendered],
    tmp_path: Path,
) -> None:
    require_tool("shellcheck")
    failures = []
    for case, rendered in rendered_cases(render_example, render_text).items():
        path = tmp_path / f"{case}.backup.sh"
        path.write_text(backup_files(rendered)[backup.SCRIPT])
        result = subprocess.run(
            ["shellcheck", "--shell=sh", "--severity=style", str(path)],
            capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0:
            failures.append(f"{case}\n{result.stdout}")
    assert not failures, "\n".join(failures)


def test_backup_units_pass_systemd_analyze_verify(
    render_example: Callable[[str], Rendered],
    render_text: Callable[[str], Rendered],
    tmp_path: Path,
) -> None:
    """The service and the timer, loaded from a private /etc/systemd/system (see
    test_shared_host.test_units_pass_systemd_analyze_verify). Any output at all fails."""
    require_tool("systemd-analyze")
    _need_root("systemd-analyze verify with a private /etc/systemd/system")
    for case, rendered in rendered_cases(render_example, render_text).items():
        units = tmp_path / "units" / case
        units.mkdir(parents=True)
        files = backup_files(rendered)
        for path in (backup.SERVICE, backup.TIMER):
            (units / path[len(UNIT_DIR) :]).write_text(files[path])
        script = (
            f"mount -t tmpfs tmpfs {UNIT_DIR} && cp -R {units}/. {UNIT_DIR} && cd {UNIT_DIR} && "
            f"exec systemd-analyze verify --man=no {backup.TIMER_NAME} {backup.SERVICE_NAME}"
        )
        result = subprocess.run(["unshare", "-m", "sh", "-c", script],
                                capture_output=True, text=True)  # fmt: skip
        output = (result.stdout + result.stderr).strip()
        assert result.returncode == 0 and not output, f"{case}: {output}"


def test_verify_sees_a_bad_calendar(tmp_path: Path) -> None:
    """The check above would notice a calendar systemd cannot parse."""
    require_tool("systemd-analyze")
    _need_root("systemd-analyze verify with a private /etc/systemd/system")
    units = tmp_path / "units"
    units.mkdir()
    (units / backup.TIMER_NAME).write_text("[Timer]\nOnCalendar=every full moon\n")
    (units / backup.SERVICE_NAME).write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    script = (
        f"mount -t tmpfs tmpfs {UNIT_DIR} && cp -R {units}/. {UNIT_DIR} && "
        f"systemd-analyze verify --man=no {backup.TIMER_NAME}"
    )
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    assert "every full moon" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "value", ["daily", "hourly", "weekly", "*-*-* 03:30:00", "Mon..Fri 02:00", "*:0/15"]
)
def test_calendars_the_schema_suggests_are_systemd_calendars(value: str) -> None:
    require_tool("systemd-analyze")
    result = subprocess.run(["systemd-analyze", "calendar", backup.calendar(value)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_user_data_with_backups_passes_cloud_init_schema_strictly(
    render_example: Callable[[str], Rendered],
    render_text: Callable[[str], Rendered],
    tmp_path: Path,
) -> None:
    paths = []
    for case, rendered in rendered_cases(render_example, render_text).items():
        assert set(backup_files(rendered)) == {backup.SCRIPT, backup.SERVICE, backup.TIMER}
        path = tmp_path / f"{case}.user-data.yaml"
        path.write_bytes(user_data(rendered, backup_host(rendered)))
        paths.append(path)
    assert cloud_init_problems(paths) == {str(p): [] for p in paths}
