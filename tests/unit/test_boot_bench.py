"""The boot bench's run-by-run golden/bare ratios (bench/boot_bench.py), from boot.json's
history as the boot tier records it (tests/boot/fleet_blueprint.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# fleet_blueprint finds the VM harness as the boot tier does.
sys.path.insert(0, str(REPO / "tests" / "infra"))
boot_bench = _load("boot_bench", REPO / "bench" / "boot_bench.py")
fleet_blueprint = _load("fleet_blueprint_for_bench", REPO / "tests" / "boot" / "fleet_blueprint.py")


def test_history_keeps_every_run_and_ratios_pair_rows_of_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "boot.json"
    timing = fleet_blueprint.BootTiming
    runs = [("r1", 100.0, 150.0), ("r2", 100.0, 180.0), ("r3", 110.0, 121.0)]
    for run, bare, golden in runs:
        monkeypatch.setattr(fleet_blueprint, "RUN_ID", run)
        fleet_blueprint.record_boot(timing("instance-host/bare", 1, bare, bare), path)
        fleet_blueprint.record_boot(timing("instance-host/golden", 1, golden, golden), path)
    # A run with the shared host's golden row only pairs nothing.
    monkeypatch.setattr(fleet_blueprint, "RUN_ID", "r4")
    data = fleet_blueprint.record_boot(timing("shared/golden", 1, 140.0, 140.0), path)

    assert [row["run"] for row in data["history"]] == ["r1", "r1", "r2", "r2", "r3", "r3", "r4"]
    # The current rows are the latest of each image, as before.
    assert data["rows"]["instance-host/golden"]["boot_to_ready_s"] == 121.0
    assert boot_bench.ratios_by_run(data["history"]) == {
        "r1": {"instance-host": 1.5},
        "r2": {"instance-host": 1.8},
        "r3": {"instance-host": 1.1},
    }

    monkeypatch.setenv("OWUIBUILD_CACHE", str(tmp_path.parent))
    (tmp_path.parent / "bench").mkdir(exist_ok=True)
    (tmp_path.parent / "bench" / "boot.json").write_text(json.dumps(data))
    assert boot_bench.main([]) == 0
    out = capsys.readouterr().out
    assert "instance-host: min 1.10, median 1.50, max 1.80 over 3 runs" in out


def test_history_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "boot.json"
    for i in range(fleet_blueprint.HISTORY + 5):
        data = fleet_blueprint.record_boot(fleet_blueprint.BootTiming("bare", 1, i, i), path)
    assert len(data["history"]) == fleet_blueprint.HISTORY
    assert data["history"][-1]["boot_to_ready_s"] == fleet_blueprint.HISTORY + 4
