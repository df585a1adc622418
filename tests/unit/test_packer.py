"""Unit tests of the Packer target: the HCL emitter, the variables, the images, the install
scripts and the one-definition rule (hostconfig.install_steps)."""

from __future__ import annotations

import json
from collections.abc import Callable

import hcl2
import pytest
from owuibuild.hostconfig import INSTALLED_STAMP, File, Part, install_steps, run_install
from owuibuild.targets import packer
from owuibuild.targets.packer import Block, Comment, Expr, Template, hcl_file, hcl_string

pytestmark = pytest.mark.unit

MULTI = "multi-host.yml"  # selects qemu, proxmox and amazon-ebs
HOMELAB = "homelab.yml"  # qemu only; the shared host runs the instances


def lit(value: object) -> object:
    """A python-hcl2 (8.x) string literal as its value; other values unchanged."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            text = str(json.loads(value))
        except json.JSONDecodeError:  # a template with quoted function arguments inside
            text = value[1:-1]
        return text.replace("$${", "${").replace("%%{", "%{")
    return value


def parse(data: bytes) -> dict[str, object]:
    """Parse HCL with python-hcl2 and unquote every key and literal, recursively."""

    def norm(value: object) -> object:
        if isinstance(value, dict):
            return {lit(k): norm(v) for k, v in value.items() if not str(k).startswith("__")}
        if isinstance(value, list):
            return [norm(v) for v in value]
        return lit(value)

    doc = norm(hcl2.loads(data.decode()))
    assert isinstance(doc, dict)
    return doc


def packer_files(rendered: object) -> dict[str, bytes]:
    files: dict[str, bytes] = rendered.files  # type: ignore[attr-defined]
    return {p: d for p, d in files.items() if p.startswith("packer/")}


def test_files_per_image_and_no_secret_anywhere(render_example: Callable[[str], object]) -> None:
    r = render_example(MULTI)
    files = packer_files(r)
    assert sorted(files) == [
        "packer/instance-host.pkr.hcl",
        "packer/plugins.pkr.hcl",
        "packer/scripts/instance-host-install.sh",
        "packer/scripts/seal.sh",
        "packer/scripts/shared-install.sh",
        "packer/shared.pkr.hcl",
        "packer/variables.pkr.hcl",
    ]
    assert not (set(files) & r.secret_paths)  # type: ignore[attr-defined]
    values = r.secrets.all_values()  # type: ignore[attr-defined]
    assert values
    for path, data in files.items():
        text = data.decode()
        for value in values:
            assert value not in text, f"a secret is in {path}"


@pytest.mark.parametrize("name", [MULTI, HOMELAB])
def test_every_template_parses(render_example: Callable[[str], object], name: str) -> None:
    parsed = 0
    for path, data in packer_files(render_example(name)).items():
        if path.endswith(".hcl"):
            assert hcl2.loads(data.decode()), f"{path} parses to nothing"
            parsed += 1
    assert parsed >= 3  # plugins, variables and at least one image


def test_plugins_pinned_for_selected_builders_only(
    render_example: Callable[[str], object],
) -> None:
    multi = parse(packer_files(render_example(MULTI))["packer/plugins.pkr.hcl"])
    block = multi["packer"][0]
    assert lit(block["required_version"]) == ">= 1.7.0"
    plugins = block["required_plugins"][0]
    assert set(plugins) == {"qemu", "proxmox", "amazon"}
    for spec in plugins.values():
        assert str(lit(spec["version"])).startswith("= ")
        assert str(lit(spec["source"])).startswith("github.com/hashicorp/")
    home = parse(packer_files(render_example(HOMELAB))["packer/plugins.pkr.hcl"])
    assert set(home["packer"][0]["required_plugins"][0]) == {"qemu"}


def _variables(data: bytes) -> dict[str, dict[str, object]]:
    doc = parse(data)
    return {name: body for v in doc["variable"] for name, body in v.items()}


def test_credentials_sensitive_without_default(render_example: Callable[[str], object]) -> None:
    found = _variables(packer_files(render_example(MULTI))["packer/variables.pkr.hcl"])
    assert found["proxmox_password"].get("sensitive") is True
    assert "default" not in found["proxmox_password"]
    assert lit(found["qemu_accelerator"]["default"]) == "kvm"
    for name, body in found.items():
        assert body.get("description"), name
        if body.get("sensitive"):
            assert "default" not in body, name
    home = _variables(packer_files(render_example(HOMELAB))["packer/variables.pkr.hcl"])
    assert not [n for n in home if n.startswith(("proxmox_", "aws_"))]


def test_sources_and_builds_have_distinct_names(render_example: Callable[[str], object]) -> None:
    files = packer_files(render_example(MULTI))
    for image in ("shared", "instance-host"):
        doc = parse(files[f"packer/{image}.pkr.hcl"])
        kinds = {kind: body for s in doc["source"] for kind, body in s.items()}
        assert set(kinds) == {"qemu", "proxmox-clone", "amazon-ebs"}
        assert all(set(b) == {image} for b in kinds.values())
        build = doc["build"][0]
        assert lit(build["name"]) == image
        qemu = kinds["qemu"][image]
        assert qemu["accelerator"] == "${var.qemu_accelerator}"
        assert lit(qemu["cd_label"]) == "cidata"
        assert "--poweroff" in str(lit(qemu["shutdown_command"]))


def test_images_pick_the_docker_host(render_example: Callable[[str], object]) -> None:
    multi = render_example(MULTI)
    found = {i.name: i for i in packer.images(multi.plan)}  # type: ignore[attr-defined]
    assert found["instance-host"].host.name == "web-a"
    assert found["instance-host"].container_images == (multi.plan.openwebui_image,)  # type: ignore[attr-defined]
    assert found["shared"].models == multi.plan.ollama_models  # type: ignore[attr-defined]
    home = render_example(HOMELAB)
    found = {i.name: i for i in packer.images(home.plan)}  # type: ignore[attr-defined]
    assert found["instance-host"].host.name == "homelab"
    assert found["shared"].models == ()  # bake_models is off


def test_install_script_runs_the_install_steps(render_example: Callable[[str], object]) -> None:
    r = render_example(MULTI)
    script = packer_files(r)["packer/scripts/shared-install.sh"].decode()
    plan = r.plan  # type: ignore[attr-defined]
    steps = packer.image_steps(plan, packer.images(plan)[0], r.secrets)  # type: ignore[attr-defined]
    assert script.startswith("#!/bin/sh\n")
    assert "set -eu" in script
    for pkg in steps.packages:
        assert pkg in script
    for model in plan.ollama_models:
        assert f"ollama pull {model}" in script
    assert "cloud-init clean --logs --machine-id --seed" in packer.seal_script().decode()
    assert "rm -f /etc/ssh/ssh_host_*" in packer.seal_script().decode()
    assert "rm -f /var/lib/systemd/timers/stamp-*" in packer.seal_script().decode()


@pytest.mark.parametrize("example", ["seed-example.yml", MULTI, HOMELAB])
def test_a_golden_image_records_the_install_steps_its_seeds_skip(
    render_example: Callable[[str], object], example: str
) -> None:
    """The install script's last install step records the digest of its steps; a seed for the
    image's host carries the same digest in its one install step (which skips what the root disk
    ran already), and the digest follows every change to the steps."""
    r = render_example(example)
    plan = r.plan  # type: ignore[attr-defined]
    files = packer_files(r)
    for image in packer.images(plan):
        steps = packer.image_steps(plan, image, r.secrets)  # type: ignore[attr-defined]
        script = files[f"packer/scripts/{image.name}-install.sh"].decode()
        record = f"printf '%s' '{steps.digest}\n' >{INSTALLED_STAMP}"
        assert record in script
        # After every install command: a failed bake records nothing.
        assert all(script.index(record) > script.index(packer._sh(c)) for c in steps.commands)
        runcmd = r.user_data(image.host.name)["runcmd"]  # type: ignore[attr-defined]
        installs = [c for c in runcmd if isinstance(c, list) and "owuibuild-install" in c]
        if not steps.commands:
            assert installs == []
            continue
        assert installs == [list(run_install(steps.digest, steps.commands))]
    changed = install_steps([Part("a", packages=("curl",), install=(("true",),))])
    assert changed.digest != install_steps([Part("a", packages=("curl",))]).digest
    assert (
        changed.digest != install_steps([Part("a", packages=("jq",), install=(("true",),))]).digest
    )
    assert (
        changed.digest
        == install_steps([Part("a", packages=("curl",), install=(("true",),))]).digest
    )

    # What is installed, not where from: a mirror's address is not part of it, a release is.
    def fetching(url: str) -> str:
        script = File("/usr/local/lib/owuibuild/install-x.sh", f"URL='{url}'\nSHA256=ab\n", "0755")
        part = Part("x", files=(script,), install=(("/bin/sh", script.path),))
        return install_steps([part]).digest

    assert fetching("http://10.0.2.2:43929/x/v1/x.tgz") == fetching("https://m.example/x/v1/x.tgz")
    assert fetching("http://10.0.2.2:43929/x/v1/x.tgz") != fetching(
        "http://10.0.2.2:43929/x/v2/x.tgz"
    )


# -- install_steps: one definition of what gets installed -------------------------------------


def test_install_steps_take_only_software() -> None:
    script = File(
        "/usr/local/sbin/install-thing", "#!/bin/sh\n. /usr/local/lib/thing.env\n", "0755"
    )
    sourced = File("/usr/local/lib/thing.env", "VERSION=1\n")
    config = File("/etc/thing.conf", "password=do-not-bake\n", "0600")
    parts = [
        Part(
            "a",
            packages=("curl",),
            apt_sources={
                "x.list": {
                    "source": "deb [signed-by=$KEY_FILE] http://example.invalid/ $RELEASE main",
                    "key": "KEY",
                }
            },
        ),
        Part(
            "b",
            packages=("curl", "jq"),
            files=(script, sourced, config),
            install=(("/usr/local/sbin/install-thing",),),
            configure=(("systemctl", "enable", "thing"),),
        ),
        Part("c", files=(File("/etc/other", "x"),)),
        Part(
            "d",
            apt_sources={"d": {"source": "deb [signed-by=/etc/apt/keyrings/d.asc] x y z"}},
            files=(File("/etc/apt/keyrings/d.asc", "KEY"),),
        ),
        # A file marked install (a unit, say) is baked, not the host's config it names.
        Part(
            "e", files=(File("/etc/systemd/system/t.service", "-c /etc/thing.conf", install=True),)
        ),
    ]
    steps = install_steps(parts)
    assert steps.packages == ("curl", "jq")
    assert set(steps.apt_sources) == {"x.list", "d"}
    assert steps.commands == (("/usr/local/sbin/install-thing",),)
    # Install scripts (transitively) and keyrings named by apt sources; never config.
    assert [f.path for f in steps.files] == [
        script.path,
        sourced.path,
        "/etc/apt/keyrings/d.asc",
        "/etc/systemd/system/t.service",
    ]
    assert steps.sections == ("a", "b", "d")


def test_apt_source_baked_like_cloud_init() -> None:
    lines = packer._apt_source(
        "docker.list",
        {
            "source": "deb [signed-by=$KEY_FILE] https://example.invalid/debian $RELEASE stable",
            "key": "-----BEGIN PGP PUBLIC KEY BLOCK-----\n...",
        },
        "bookworm",
    )
    text = "\n".join(lines)
    assert "gpg --dearmor >/etc/apt/cloud-init.gpg.d/docker.gpg" in text
    assert (
        "signed-by=/etc/apt/cloud-init.gpg.d/docker.gpg] https://example.invalid/debian "
        "bookworm stable" in text
    )
    assert ">/etc/apt/sources.list.d/docker.list" in text
    with pytest.raises(ValueError):
        packer._apt_source("x", {"source": "deb $MIRROR x main"}, "bookworm")
    with pytest.raises(ValueError):
        packer._apt_source("x", {"source": "deb x y", "keyid": "ABC"}, "bookworm")


# -- the HCL emitter ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        'with "quotes"',
        "back\\slash",
        "${var.not_interpolated}",
        "%{ if x }",
        "multi\nline\ttab",
        "unicode é",
    ],
)
def test_hcl_string_round_trips(value: str) -> None:
    doc = hcl2.loads(f"x = {hcl_string(value)}\n")
    assert lit(doc["x"]) == value


def test_hcl_string_refuses_go_templates() -> None:
    with pytest.raises(ValueError):
        hcl_string("docker inspect -f '{{ .Id }}'")


def test_block_layout_aligns_runs_like_packer_fmt() -> None:
    block = Block(
        "source",
        ("qemu", "x"),
        [
            ("a", 1),
            ("bbb", Expr("var.b")),
            ("list", ["one-long-element-aaaaaaaaaaaaaa", "two-long-element-bbbbbbbbbbbbbbbbb"]),
            ("c", Template("${path.root}/x")),
            Comment(("why",)),
            ("dd", True),
            Block("inner", (), [("k", "v")]),
        ],
    )
    text = hcl_file("# h\n", [block]).decode()
    assert text == (
        "# h\n\n"
        'source "qemu" "x" {\n'
        "  a   = 1\n"
        "  bbb = var.b\n"
        "  list = [\n"
        '    "one-long-element-aaaaaaaaaaaaaa",\n'
        '    "two-long-element-bbbbbbbbbbbbbbbbb",\n'
        "  ]\n"
        '  c = "${path.root}/x"\n'
        "\n"
        "  # why\n"
        "  dd = true\n"
        "\n"
        "  inner {\n"
        '    k = "v"\n'
        "  }\n"
        "}\n"
    )
