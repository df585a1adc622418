"""The boot tier's harness tells an emulator fault (a guest kernel that panics before it runs
any program) from a guest that panics once our seed has run (tests/infra/vm.py)."""

from __future__ import annotations

import pytest
from infra.vm import boot_panic

pytestmark = pytest.mark.unit

BANNER = "[    0.000000] Linux version 6.12.57+deb13-amd64 (debian-kernel@lists.debian.org)\n"
UNPACK_PANIC = (
    "[    1.327453]  unpack_to_rootfs+0x10f/0x2d0\n"
    "[    1.328361] Kernel panic - not syncing: Fatal exception in interrupt\n"
)
INIT = "[    2.101010] Run /init as init process\n"
LATE_PANIC = "[   50.000000] Kernel panic - not syncing: Attempted to kill init!\n"
LOGIN = "fleet-dock login: \n"


@pytest.mark.parametrize(
    ("console", "expected"),
    [
        pytest.param("", None, id="nothing-yet"),
        pytest.param(BANNER + INIT + LOGIN, None, id="clean-boot"),
        pytest.param(BANNER + UNPACK_PANIC, "early", id="panic-unpacking-the-initramfs"),
        pytest.param(UNPACK_PANIC, "early", id="panic-without-banner"),
        pytest.param(BANNER + INIT + LATE_PANIC, "late", id="panic-after-init-ran"),
        pytest.param(BANNER + INIT + LOGIN + BANNER + UNPACK_PANIC, "early", id="reboot-early"),
        pytest.param(BANNER + INIT + LOGIN + BANNER + INIT + LATE_PANIC, "late", id="reboot-late"),
        pytest.param(BANNER + UNPACK_PANIC + BANNER + INIT + LOGIN, None, id="panic-then-reboot"),
    ],
)
def test_boot_panic_is_judged_on_the_latest_boot(console: str, expected: str | None) -> None:
    assert boot_panic(console) == expected
