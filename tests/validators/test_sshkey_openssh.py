"""The SSH key check agrees with OpenSSH itself: ssh-keygen reads every line it accepts (with
comments such as `ssh-keygen -C "Jane Doe"` writes) and refuses every key it refuses."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from conftest import require_tool
from owuibuild import sshkey

pytestmark = pytest.mark.validators


def openssh_reads(line: str, tmp_path: Path) -> bool:
    path = tmp_path / "key.pub"
    path.write_text(line + "\n")
    return (
        subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True).returncode == 0
    )


@pytest.mark.parametrize("key_type", ["ed25519", "rsa", "ecdsa"])
def test_keys_ssh_keygen_makes_are_accepted_and_broken_ones_refused_by_both(
    key_type: str, tmp_path: Path
) -> None:
    require_tool("ssh-keygen")
    key = tmp_path / "id"
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            key_type,
            "-N",
            "",
            "-C",
            "Jane Doe (laptop) #2",
            "-f",
            str(key),
        ],
        check=True,
    )
    line = (tmp_path / "id.pub").read_text().strip()
    assert line.endswith(" Jane Doe (laptop) #2")
    kind, encoded, _ = line.split(" ", 2)
    raw = base64.b64decode(encoded)
    broken = [
        f"{kind} {encoded[:-1]}",  # cut short
        f"{kind} {base64.b64encode(raw[:-1]).decode()}",  # a byte missing
        f"{kind} {base64.b64encode(raw + b'x').decode()}",  # a byte too many
        f"{'ssh-rsa' if kind != 'ssh-rsa' else 'ssh-ed25519'} {encoded}",  # another type named
    ]
    for candidate in [line, *broken]:
        ours = sshkey.problem(candidate) is None
        assert ours == openssh_reads(candidate, tmp_path), (candidate, sshkey.problem(candidate))
    assert sshkey.problem(line) is None
