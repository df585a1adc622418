"""The generated ollama-models.sh, run for real by /bin/sh against the Ollama TEST DOUBLE.

The double (tests/doubles/ollama_double.py) is NOT Ollama: no Ollama binary can be had here.
It answers `ollama list|show|pull` as the real CLI does (exit status included) and counts the
pulls it serves, which is what this script's logic depends on. The script is taken from the
shared host's generated user-data; only its three machine paths (the binary, the baked
models, the data volume's model store) are pointed into a temporary directory.

What must hold: a fresh host pulls each model once and a second run pulls none; a host made
from a golden image finds its baked models on the data volume and pulls none; models already
on the volume are never overwritten by baked ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Rendered, require_tool
from infra.vm import free_port
from owuibuild.hostconfig import ollama
from test_shared_host import user_data

pytestmark = pytest.mark.validators

DOUBLE = REPO / "tests" / "doubles" / "ollama_double.py"


@dataclass
class Host:
    """One simulated shared host: the double's server, its model store and the script."""

    root: Path
    script: Path
    env: dict[str, str]
    models: Path  # the data volume's model store (OLLAMA_MODELS)
    baked: Path  # where a golden image keeps its baked models

    def run_script(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/bin/sh", str(self.script)],
            env=self.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def pulls(self) -> list[str]:
        url = f"http://{self.env['OLLAMA_HOST']}/api/double/pulls"
        with urllib.request.urlopen(url, timeout=10) as answer:
            doc = json.loads(answer.read())
        assert doc["count"] == len(doc["models"])
        models: list[str] = doc["models"]
        return models

    def present(self, store: Path) -> set[str]:
        root = store / "manifests" / "registry.ollama.ai" / "library"
        return {f"{p.parent.name}:{p.name}" for p in root.glob("*/*")}


def tagged(models: set[str]) -> set[str]:
    """Model names as the store lays them out: an untagged name means ``:latest``."""
    return {m if ":" in m else f"{m}:latest" for m in models}


def generated_script(rendered: Rendered) -> str:
    plan = rendered.plan
    doc = yaml.safe_load(user_data(rendered, plan.shared.name))  # type: ignore[attr-defined]
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    return str(files[ollama.MODELS_SCRIPT])


def serve(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, str(DOUBLE), "serve"], env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{env['OLLAMA_HOST']}/api/version", timeout=2)
                break
            except OSError:
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the Ollama test double did not start"
                time.sleep(0.1)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def seed(render_example: object) -> Rendered:
    return render_example("seed-example.yml")  # type: ignore[operator, no-any-return]


def make_host(rendered: Rendered, root: Path) -> tuple[Host, dict[str, str]]:
    require_tool("sh")
    binary = root / "bin" / "ollama"
    binary.parent.mkdir(parents=True)
    binary.write_text(f'#!/bin/sh\nexec {sys.executable} {DOUBLE} "$@"\n')
    binary.chmod(0o755)
    models, baked = root / "volume" / "models", root / "image" / "models"
    models.mkdir(parents=True)
    script = generated_script(rendered)
    for machine_path, here in (
        (ollama.BAKED_MODELS, baked),
        (ollama.MODELS, models),
        (ollama.BINARY, binary),
    ):
        script = script.replace(machine_path, str(here))
    assert ollama.BINARY not in script and str(binary) in script  # it runs the double
    path = root / "ollama-models.sh"
    path.write_text(script)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(root),
        "OLLAMA_HOST": f"127.0.0.1:{free_port()}",
        "OLLAMA_MODELS": str(models),
    }
    return Host(root, path, env, models, baked), env


def test_a_fresh_host_pulls_each_model_once(seed: Rendered, tmp_path: Path) -> None:
    host, env = make_host(seed, tmp_path)
    wanted = set(seed.plan.ollama_models)  # type: ignore[attr-defined]
    assert wanted
    for _ in serve(env, tmp_path / "server.log"):
        first = host.run_script()
        assert first.returncode == 0, first.stdout + first.stderr
        assert sorted(host.pulls()) == sorted(wanted)
        again = host.run_script()
        assert again.returncode == 0, again.stdout + again.stderr
        assert sorted(host.pulls()) == sorted(wanted), "a second run pulled again"
        assert all(f"{m} is present" in again.stdout for m in wanted), again.stdout
        assert host.present(host.models) == tagged(wanted)


def bake(host: Host, models: set[str], tmp_path: Path) -> None:
    """What a bake leaves in the image: the models, pulled into the baked store."""
    env = dict(host.env, OLLAMA_MODELS=str(host.baked), OLLAMA_HOST=f"127.0.0.1:{free_port()}")
    host.baked.mkdir(parents=True)
    for _ in serve(env, tmp_path / "bake.log"):
        for model in sorted(models):
            subprocess.run(
                [str(host.root / "bin" / "ollama"), "pull", model], env=env, check=True,
                capture_output=True, timeout=60,
            )  # fmt: skip
    assert host.present(host.baked) == tagged(models)


def test_a_golden_host_copies_its_baked_models_and_pulls_none(
    seed: Rendered, tmp_path: Path
) -> None:
    host, env = make_host(seed, tmp_path)
    wanted = set(seed.plan.ollama_models)  # type: ignore[attr-defined]
    bake(host, wanted, tmp_path)
    for _ in serve(env, tmp_path / "server.log"):
        done = host.run_script()
        assert done.returncode == 0, done.stdout + done.stderr
        assert host.pulls() == [], "a golden host pulled a model it had baked"
        assert host.present(host.models) == tagged(
            wanted
        )  # on the data volume, not only in the image


def test_baked_models_never_overwrite_the_volume(seed: Rendered, tmp_path: Path) -> None:
    host, env = make_host(seed, tmp_path)
    wanted = set(seed.plan.ollama_models)  # type: ignore[attr-defined]
    bake(host, wanted, tmp_path)
    model = sorted(tagged(wanted))[0]
    name, _, tag = model.partition(":")
    on_volume = host.models / "manifests" / "registry.ollama.ai" / "library" / name / tag
    on_volume.parent.mkdir(parents=True)
    on_volume.write_text("pulled on an earlier boot\n")
    for _ in serve(env, tmp_path / "server.log"):
        done = host.run_script()
        assert done.returncode == 0, done.stdout + done.stderr
        assert host.pulls() == []
    assert on_volume.read_text() == "pulled on an earlier boot\n"
    assert os.access(on_volume, os.R_OK)
