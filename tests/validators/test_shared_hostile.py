"""Hostile values in the blueprint's free-text fields: each either fails validation with an
error located at that field, or renders into artifacts that still parse (YAML, shellcheck,
nft -c) with the value intact: read back by an independent parser (YAML, POSIX shell words,
`docker compose config` for the env file), the value is there byte for byte."""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import require_tool, unavailable
from infra.docker_engine import docker_unavailable_reason
from owuibuild.pipeline import compile_blueprint
from owuibuild.targets import hosts as hosts_target
from test_shared_host import shell_scripts, user_datas

pytestmark = pytest.mark.validators

HOSTILE = ["a'b", 'a"b', "a\nb", "$(reboot)", "${HOME}", "`id`", "ünï ✓", "a b", "x;y", "%h"]

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


# Fields whose value reaches the instance's environment, by variable (read back through
# docker compose, which decodes the env file as the instance's container will see it).
ENV_FIELDS = {
    ("instances", 0, "url"): "WEBUI_URL",
    ("instances", 0, "env", "WEBUI_NAME"): "WEBUI_NAME",
}


def needle(path: tuple[str | int, ...], made: object, value: str) -> str:
    """What must appear intact: the field's whole value, or the hostile part of a dict."""
    return made if isinstance(made, str) else value


def strings(node: Any) -> Iterator[str]:
    """Every string of a cloud-config document, except files' raw contents (their own
    language decodes those: shell_words for scripts)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            if k != "content":
                yield from strings(k)
                yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def shell_words(script: str) -> Iterator[str]:
    """Each line's words as a POSIX shell reads them (quotes removed); unparsable lines skipped."""
    for line in script.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        for word in words:
            yield word
            if "=" in word:
                yield word.split("=", 1)[1]


def compose_environment(files: dict[str, bytes], tmp_path: Path) -> dict[str, str]:
    """The instance's environment as docker compose reads its bundle."""
    reason = docker_unavailable_reason()
    if reason:
        unavailable(reason)
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    for path, data in files.items():
        if path.startswith("instances/one/"):
            (bundle / path.rsplit("/", 1)[1]).write_bytes(data)
    done = subprocess.run(
        ["docker", "compose", "-f", str(bundle / "compose.yaml"), "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (service,) = json.loads(done.stdout)["services"].values()
    # `config` prints a compose file, where a literal $ is written $$.
    return {k: v.replace("$$", "$") for k, v in service["environment"].items()}


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
        wanted = needle(path, make(value), value)
        if path in ENV_FIELDS:
            environment = compose_environment(files, tmp_path)
            assert environment[ENV_FIELDS[path]] == wanted, (value, environment)
        else:
            found = {s for doc in user_datas(r).values() for s in strings(doc)}  # type: ignore[arg-type]
            found |= {w for text in shell_scripts(r).values() for w in shell_words(text)}  # type: ignore[arg-type]
            assert any(wanted in s for s in found), f"{value!r} at {path} did not render intact"
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
