"""Boot tier: the QEMU harness (tests/infra/vm.py) on a guest kernel that panics.

A kernel that panics before it runs any program is an emulator fault (TCG has been seen to
fault in a timer interrupt while the kernel unpacked its initramfs): the harness starts QEMU
again, at most twice, and says so. A kernel that panics after a program ran fails the wait
at once. Both panics are real: the base image's kernel, told to use an init program that does
not exist (then to mount a root device that does not exist), or one that exits at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from owuibuild.seed_iso import make_seed_iso

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))
from vm import PANIC_RESTARTS, VM, GuestPanicWarning, VMError, ensure_base_image, missing_tools

pytestmark = pytest.mark.boot

NO_INIT = "rdinit=/owuibuild-no-such-init root=/dev/owuibuild-no-such-disk"
# modprobe without arguments prints its usage and exits: the kernel's first program is gone.
EXITING_INIT = "rdinit=/sbin/modprobe"


def _vm(tmp_path: Path, append: str, name: str) -> VM:
    from conftest import unavailable

    missing = missing_tools(extra=["mmdebstrap"])
    if missing:
        unavailable(f"boot tier needs {', '.join(missing)} (make system-deps installs them)")
    seed = make_seed_iso(
        {"meta-data": b"instance-id: iid-panic\n", "user-data": b"#cloud-config\n"}
    )
    return VM(ensure_base_image("trixie"), seed, extra_append=append, name=name, memory_mb=512)


def _wait(vm: VM, tmp_path: Path) -> VMError:
    key = tmp_path / "key"
    key.write_text("")
    with pytest.raises(VMError) as raised:
        vm.wait_for_ssh(key, "nobody", timeout=600)
    return raised.value


def test_a_panic_before_any_program_ran_is_booted_again(tmp_path: Path) -> None:
    with _vm(tmp_path, NO_INIT, "panic-early") as vm:
        with pytest.warns(GuestPanicWarning) as warned:
            error = _wait(vm, tmp_path)
        assert "panicked (early in its boot)" in str(error), error
        assert vm.panic_restarts == PANIC_RESTARTS
        assert len(warned) == PANIC_RESTARTS
        kept = sorted(p.name for p in vm.workdir.glob("console-panic-*.log"))
        assert kept == [f"console-panic-{n}.log" for n in range(1, PANIC_RESTARTS + 1)], kept


def test_a_panic_after_a_program_ran_fails_at_once(tmp_path: Path) -> None:
    with _vm(tmp_path, EXITING_INIT, "panic-late") as vm:
        error = _wait(vm, tmp_path)
        assert "panicked (late in its boot)" in str(error), error
        assert "Attempted to kill init" in str(error), error
        assert vm.panic_restarts == 0
