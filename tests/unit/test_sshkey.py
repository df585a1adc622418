"""SSH public key lines: accepted as OpenSSH accepts them (a comment may hold spaces and any
printable character), refused when the base64 is not a key of the named type."""

from __future__ import annotations

import base64
import json

import pytest
from fleetdoc import BASE, edit
from owuibuild import sshkey
from owuibuild.source import parse
from owuibuild.validate import validate

pytestmark = pytest.mark.unit

# Public halves of keys made with ssh-keygen -t ed25519 / rsa -b 2048 / ecdsa -b 256, 384, 521.
REAL = """ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGR8zv+bpSw/8kaye2omQeEt9Kidi6N256mPNB08NtKZ
ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC/3stCE7tdAUXKW6QwTu8ik3cvaaCj+ANHWa2m5o8AaqOp+IkLYalUfneKJ07ht2NxMigI5K4Vl5yCKMso/qQWpwuKBpho3oQE+19tdGiWDqtRqm5JmQN/LsQy/5JJqVR0sRjGZBtcYkLecBTvYINHBhVZvWCqajOJO7UMYaNg+a8B4Wuykj8apdeYomHEwIyz8xgFvRWWfab1p1EBtCMDhd5jlPpDxBDn9smL/zuHINJI/QxiBV6Ca+ZzvrBwYe1SFKiUgpw1g/gco8tiTlIAPEO9taobRMarzeMjA8iiYNQSXoQVlFHqapOnGGirjd/2b38i2IsfdYaALwlLSyBn
ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBGjnq4r9/vqfPC+dywgpF4I8Jkx3yZAz+L5inO4geuGnxnCfWL0l44G4K+2173qt02gR3OkQrgkLRI01LyMblNY=
ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBFfh4HQE4y8Oec3x1APmjzPMNk9IcQS7/NlJ6vRDfprYAnClZD3x78ZxzScQNINqC1yMm8Sgk2E0c6GfMYvfZibEWDMjipK3cK+Hiu8c/+H7/mt9leWbPt9L134y5jOgPQ==
ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBADbsjOZY/j+1+pIuSxId1uvP+JyuDOXcXA5LMK302XFIr7D7uvikJV9Idy0QGF33+3xvr1r3S02q78ck7nzHmQBVgBfLbnZuln+FG/Wt0aAA8ZmFJ7MBvGyo6/3YE8AzAacEo0q5YChDzmDTfzcOh5xSxrTbINVvkIPUOq2Mrm1FhrGEQ==""".splitlines()
ED25519 = REAL[0]


def key_check(line: str) -> list[tuple[str, str]]:
    """The diagnostics on admin.ssh_authorized_keys of a blueprint holding line."""
    old = BASE.split("ssh_authorized_keys: [", 1)[1].split("]", 1)[0]
    text = edit(BASE, f"ssh_authorized_keys: [{old}]", f"ssh_authorized_keys: [{json.dumps(line)}]")
    src, problems = parse(text, "bp.yml")
    assert src is not None and problems == []
    _, diagnostics = validate(src)
    return [
        (d.severity.value, d.message)
        for d in diagnostics
        if d.path[:2] == ("admin", "ssh_authorized_keys")
    ]


@pytest.mark.parametrize("line", REAL)
def test_real_keys_are_keys(line: str) -> None:
    assert sshkey.problem(line) is None
    assert key_check(line) == []


@pytest.mark.parametrize(
    "comment", ["Jane Doe", "Jane Doe (laptop) <jane@example.com>", "ops@host #2; été", "a  b"]
)
def test_comments_hold_what_ssh_keygen_c_writes(comment: str) -> None:
    assert key_check(f"{ED25519} {comment}") == []


@pytest.mark.parametrize("control", ["\t", "\x7f", "\x85", "\u2028", "\x1b[31m"])
def test_comments_hold_no_control_characters(control: str) -> None:
    ((severity, message),) = key_check(f"{ED25519} jane{control}doe")
    assert severity == "error" and "is not an OpenSSH public key line" in message


def blob(*fields: bytes) -> str:
    return base64.b64encode(b"".join(len(f).to_bytes(4, "big") + f for f in fields)).decode()


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (ED25519[:-1], "not valid base64"),
        (ED25519[:-4], "not a valid ssh-ed25519 key: it ends early"),
        ("ssh-rsa " + ED25519.split()[1], "says ssh-rsa but its key is of type ssh-ed25519"),
        ("ssh-ed25519 " + blob(b"ssh-ed25519", bytes(31)), "Ed25519 key is not 32 bytes"),
        ("ssh-ed25519 " + blob(b"ssh-ed25519", bytes(32), b"x"), "bytes after the key"),
        ("ssh-rsa " + blob(b"ssh-rsa", b"\x01\x00\x01", bytes(64)), "shorter than 1024 bits"),
        (
            "ecdsa-sha2-nistp256 " + blob(b"ecdsa-sha2-nistp256", b"nistp384", b"\x04" + bytes(64)),
            "curve is not nistp256",
        ),
        (
            "ecdsa-sha2-nistp256 " + blob(b"ecdsa-sha2-nistp256", b"nistp256", bytes(65)),
            "point is malformed",
        ),
        ("ssh-ed25519 " + blob(b"ssh-ed25519", bytes(32)) + "AAAA", "bytes after the key"),
    ],
)
def test_keys_that_sshd_would_skip_are_refused(line: str, fragment: str) -> None:
    problem = sshkey.problem(line)
    assert problem is not None and fragment in problem
    ((severity, message),) = key_check(line)
    assert severity == "error" and message == f"the SSH key {problem}"


def test_security_keys_carry_their_application() -> None:
    line = "sk-ssh-ed25519@openssh.com " + blob(b"sk-ssh-ed25519@openssh.com", bytes(32), b"ssh:")
    assert sshkey.problem(line) is None
    short = "sk-ssh-ed25519@openssh.com " + blob(b"sk-ssh-ed25519@openssh.com", bytes(32))
    assert "ends early" in (sshkey.problem(short) or "")


def test_the_starter_placeholder_is_named_not_refused() -> None:
    assert sshkey.problem(f"ssh-ed25519 {sshkey.EXAMPLE_KEY}") is not None  # not a real key
    ((severity, message),) = key_check(f"ssh-ed25519 {sshkey.EXAMPLE_KEY} ops@laptop")
    assert severity == "warning" and "example key" in message
