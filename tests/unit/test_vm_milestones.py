"""The boot tier's harness times several waits in one SSH session (tests/infra/vm.py): each
milestone gets the uptime at which its name came back, and a wait that fails or times out is
an error naming what was not reached. Run here with a local shell in place of SSH."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from infra.vm import VM, VMError

pytestmark = pytest.mark.unit


class LocalVM(VM):
    """A VM whose "guest" is this machine's shell: only what wait_milestones uses."""

    def __init__(self, workdir: Path) -> None:  # no QEMU, no image
        self.started_at = time.monotonic()
        self.console_path = workdir / "console.log"

    def ssh_command(self, command: str | Sequence[str]) -> list[str]:
        assert isinstance(command, str)
        return ["sh", "-c", command]


def test_each_milestone_gets_the_time_its_wait_ended(tmp_path: Path) -> None:
    vm = LocalVM(tmp_path)
    at = vm.wait_milestones([("done", "sleep 0.3"), ("ready", "sleep 0.6")], timeout=30)
    assert list(at) == ["done", "ready"]
    # Each time is noted when its name is read back, never before its wait ended; it may be
    # noted later (a loaded machine schedules the reader late), so only the lower bounds hold.
    assert 0.3 <= at["done"] < at["ready"]
    assert at["ready"] >= 0.3 + 0.6


def test_a_failed_wait_is_an_error_naming_what_was_not_reached(tmp_path: Path) -> None:
    vm = LocalVM(tmp_path)
    with pytest.raises(VMError, match=r"not reached within 5 s each: ready \(ssh exited 124"):
        vm.wait_milestones([("done", "true"), ("ready", "exit 124")], timeout=5)
    with pytest.raises(VMError, match="done, ready"):
        vm.wait_milestones([("done", "echo oops >&2; false"), ("ready", "true")], timeout=5)


def test_output_other_than_the_names_is_ignored(tmp_path: Path) -> None:
    vm = LocalVM(tmp_path)
    at = vm.wait_milestones([("done", "echo ready; echo noise")], timeout=5)
    assert list(at) == ["done"]
