"""Hostile values in the blueprint's free-text fields: each either fails validation with an
error located at that field, or renders into artifacts that still parse (YAML, shellcheck,
nft -c) with the value intact."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import require_tool
from owuibuild.pipeline import compile_blueprint
from owuibuild.targets import hosts as hosts_target
from test_shared_host import shell_scripts, user_datas

pytestmark = pytest.mark.validators

HOSTILE = ["a'b", 'a"b', "a\nb", "$(reboot)", "`id`", "ünï ✓", "a b", "x;y", "%h"]

BASE = {
    "apiVersion": "owuibuild/v1",
    "name": "hostile",
    "admin": {
        "user": "ops",
        "allow_from": ["10.0.5.0/24"],
        "ssh_authorized_keys": [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwuibuildExampleKeyReplaceWithYourOwn00000 ops@x"
        ],
    },
    "network": {"cidr": "10.0.5.0/24", "gateway": "10.0.5.1", "dns": ["10.0.5.1"]},
    "shared": {
        "host": {
            "name": "ai-shared",
            "address": "10.0.5.24",
            "data_volume": {"label": "owui-data", "device": "/dev/vdb"},
        }
    },
    "hosts": [{"name": "web-a", "address": "10.0.5.30"}],
    "instances": [
        {
            "name": "one",
            "host": "web-a",
            "port": 3000,
            "url": "https://chat.example.com",
            "env": {"WEBUI_NAME": "x"},
        }
    ],
}

FIELDS: list[tuple[tuple[str | int, ...], Callable[[str], object]]] = [
    (("admin", "user"), lambda v: v),
    (("admin", "ssh_authorized_keys", 0), lambda v: BASE["admin"]["ssh_authorized_keys"][0] + v),  # type: ignore[index]
    (("os",), lambda v: {"timezone": v}),
    (("name",), lambda v: v),
    (("shared", "host", "name"), lambda v: v),
    (("shared", "host", "data_volume", "label"), lambda v: v),
    (("shared", "host", "data_volume", "device"), lambda v: "/dev/" + v),
    (("shared", "ollama"), lambda v: {"models": [v], "keep_alive": v}),
    (("mirror",), lambda v: "http://mirror.test/" + v),
    (("instances", 0, "name"), lambda v: v),
    (("instances", 0, "url"), lambda v: "https://x.example.com/" + v),
    (("instances", 0, "env", "WEBUI_NAME"), lambda v: v),
]


def with_value(path: tuple[str | int, ...], value: object) -> dict[str, object]:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc  # type: ignore[no-any-return]


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: ".".join(map(str, f[0])))
def test_hostile_values_are_refused_or_quoted(
    field: tuple[tuple[str | int, ...], Callable[[str], object]], tmp_path: Path
) -> None:
    require_tool("shellcheck", "nft")
    path, make = field
    for n, value in enumerate(HOSTILE):
        blueprint = tmp_path / f"bp{n}.yml"
        blueprint.write_text(yaml.safe_dump(with_value(path, make(value)), allow_unicode=True))
        compiled = compile_blueprint(blueprint)
        if not compiled.ok:
            errors = [d for d in compiled.diagnostics if d.is_error]
            assert errors, value
            assert all(d.line is not None and d.message for d in errors), errors
            top = path[0]
            assert any(d.path[:1] == (top,) for d in errors), (value, [d.as_dict() for d in errors])
            continue
        files = {a.path: a.data for a in compiled.artifacts}

        class R:  # the shape test_shared_host's helpers read
            pass

        r = R()
        r.files = files  # type: ignore[attr-defined]
        for host, doc in user_datas(r).items():  # type: ignore[arg-type]
            assert isinstance(doc, dict), host
        for key, text in shell_scripts(r).items():  # type: ignore[arg-type]
            script = tmp_path / "s.sh"
            script.write_text(text)
            check = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
            assert check.returncode == 0, f"{value!r} {key}: {check.stdout}"
        for host in user_datas(r):  # type: ignore[arg-type]
            raw = files[f"hosts/{host}/user-data"]
            assert hosts_target.fit_user_data(raw, "nocloud", host) == raw
            rules = [
                f["content"]
                for f in user_datas(r)[host].get("write_files", [])  # type: ignore[arg-type]
                if f["path"].endswith(".nft")
            ]
            for text in rules:
                ruleset = tmp_path / "r.nft"
                ruleset.write_text(text)
                check = subprocess.run(
                    ["unshare", "-n", "nft", "-c", "-f", str(ruleset)],
                    capture_output=True,
                    text=True,
                )
                assert check.returncode == 0, check.stderr
