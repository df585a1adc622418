"""Verify: the compiler re-parses its own output and traces secrets."""

from __future__ import annotations

import gzip
from collections.abc import Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from owuibuild import verify as verify_mod
from owuibuild.targets import Artifact
from owuibuild.verify import leaked_secrets, never_secret, parser_for, verify

pytestmark = pytest.mark.unit

SECRET = "S3cretValue_that-is-long-enough-0001"


def messages(artifacts: list[Artifact], secrets: tuple[str, ...] = (SECRET,)) -> list[str]:
    return [d.message for d in verify(artifacts, secrets)]


@pytest.mark.parametrize(
    ("path", "parser"),
    [
        ("hosts/a/user-data", "_user_data"),
        ("hosts/a/meta-data", "_yaml"),
        ("hosts/a/network-config", "_yaml"),
        ("instances/x/compose.yaml", "_yaml"),
        ("x.yml", "_yaml"),
        ("manifest.json", "_json"),
        ("packer/shared.pkr.hcl", "_hcl"),
        ("instances/x/openwebui.env", "_env"),
        ("README.md", None),
        ("hosts/a/seed.iso", None),
    ],
)
def test_parser_for(path: str, parser: str | None) -> None:
    found = parser_for(path)
    assert (found.__name__ if found else None) == parser


def test_good_output_passes() -> None:
    assert (
        messages(
            [
                Artifact(
                    "hosts/a/user-data",
                    f"#cloud-config\npassword: {SECRET}\n".encode(),
                    secret=True,
                ),
                Artifact("hosts/a/meta-data", b"instance-id: x\n"),
                Artifact("manifest.json", b"{}"),
                Artifact("x.env", f"# comment\nA=1\nB={SECRET}\n\n".encode(), secret=True),
                Artifact("packer/a.pkr.hcl", b'variable "x" {\n  default = "y"\n}\n'),
            ]
        )
        == []
    )


def test_gzipped_user_data_is_checked() -> None:
    good = gzip.compress(b"#cloud-config\na: 1\n", mtime=0)
    bad = gzip.compress(b"a: 1\n", mtime=0)
    assert messages([Artifact("h/user-data", good, secret=True)]) == []
    assert messages([Artifact("h/user-data", bad, secret=True)]) == [
        "generated h/user-data does not parse: user-data must start with '#cloud-config'"
    ]


@pytest.mark.parametrize(
    ("artifact", "fragment"),
    [
        (Artifact("h/user-data", b"#cloud-config\n- a\n", secret=True), "not a mapping"),
        (Artifact("h/meta-data", b"a: [\n"), "does not parse"),
        (Artifact("manifest.json", b"{"), "does not parse"),
        (Artifact("packer/a.pkr.hcl", b"variable {{{"), "does not parse"),
        (Artifact("packer/b.pkr.hcl", b'locals {\n  a = "x\n"\n}\n'), "multi-line string"),
        (Artifact("packer/c.pkr.hcl", b'source "qemu" "x" {\n  a = 1\n'), "Unclosed"),
        (Artifact("a.env", b"A=1\nnot a pair\n", secret=True), "line 2 is not KEY=VALUE"),
    ],
)
def test_unparsable_output_is_reported(artifact: Artifact, fragment: str) -> None:
    (message,) = messages([artifact])
    assert message.startswith(f"generated {artifact.path} does not parse")
    assert fragment in message


def test_a_secret_in_a_non_secret_file_is_reported() -> None:
    (message,) = messages([Artifact("hosts/a/meta-data", f"x: pre{SECRET}post\n".encode())])
    assert message == "a secret value would be written to non-secret file hosts/a/meta-data"
    assert SECRET not in message


@pytest.mark.parametrize("path", ["packer/x.pkr.hcl", "README.md", "manifest.json", "packer/vars"])
def test_never_secret_files_may_not_be_secret(path: str) -> None:
    assert never_secret(path)
    assert f"{path} must never hold secrets but is marked secret" in messages(
        [Artifact(path, b"{}" if path.endswith(".json") else b"", secret=True)]
    )


def test_leaked_secrets_looks_inside_tokens() -> None:
    values = frozenset({SECRET})
    lengths = frozenset({len(SECRET)})
    assert leaked_secrets(f"url=postgres://u:{SECRET}@h/db".encode(), values, lengths)
    assert leaked_secrets(f"xx{SECRET}yy".encode(), values, lengths)
    assert not leaked_secrets(SECRET[:-1].encode(), values, lengths)
    assert not leaked_secrets(b"", values, lengths)


def test_no_secrets_no_leak_check() -> None:
    assert messages([Artifact("README.md", SECRET.encode())], secrets=()) == []


# -- the YAML check: yaml.compose's verdict, by libyaml's parser alone where that suffices -------

YAMLISH = [
    *"ab:-?,[]{}#&*!|>'\"%@\\ \t\n\r019.~",
    "---",
    "...",
    "- ",
    ": ",
    "&a ",
    "*a",
    "!!int ",
    "!x!y ",
    "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n",
    "\xff\xfe",
    "\xfe\xff",
    "é",
    "\x85",
    "\u2028",
    "\x00",
]


def composed(data: bytes) -> object:
    """yaml.compose's verdict: the root node's kind, or that it refuses the stream."""
    try:
        node = yaml.compose(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return "refused"
    return None if node is None else type(node)


ENCODINGS = [lambda t: t.encode(), lambda t: b"\xff\xfe" + t.encode("utf-16-le")]
ENCODINGS += [lambda t: b"\xfe\xff" + t.encode("utf-16-be")]


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(YAMLISH), max_size=40).map("".join), st.sampled_from(ENCODINGS))
def test_the_yaml_check_is_yaml_compose(text: str, encode: Callable[[str], bytes]) -> None:
    data = encode(text)
    try:
        found: object = verify_mod._compose(data)
    except yaml.YAMLError:
        found = "refused"
    assert found == composed(data)


def test_the_yaml_check_refuses_what_compose_refuses() -> None:
    for data in (b"a: 1\n---\nb: 2\n", b"a: *x\n", b"a: &x 1\nb: &x 2\nc: *x\n", b"a: [1\n"):
        with pytest.raises(yaml.YAMLError):
            verify_mod._compose(data)
    assert verify_mod._compose(b"a: 1\n") is yaml.MappingNode
    assert verify_mod._compose(b"# only a comment\n") is None
