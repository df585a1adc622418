"""The writer's atomicity, tested against the property itself: a render interrupted at any
step of the swap leaves the target wholly the previous output or wholly the new one.

Every file-system call the writer makes is a point where a render can die. Each test renders
an old output, then writes a new one and interrupts it at one such point, before or after the
call, in two ways:

- killed: the write runs in a forked child that ``os._exit``s at that point, so no cleanup
  handler runs (as after SIGKILL or a power cut);
- raising: an exception that is not an ``OSError`` (KeyboardInterrupt) is raised there.

With renameat2(RENAME_EXCHANGE) the property holds at every point. Without it (the fallback),
the swap is two renames; a render killed between them leaves the previous output in a hidden
``.old-*`` sibling, which the next render puts back before anything else. Either way the next
render cleans every hidden ``.<name>.new-*`` / ``.old-*`` sibling a killed render left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from owuibuild import writer
from owuibuild.targets import Artifact
from owuibuild.writer import MANIFEST, recover, write

pytestmark = pytest.mark.unit

OLD = [
    Artifact("keep.txt", b"old\n"),
    Artifact("only-old/file.txt", b"old only\n"),
    Artifact("hosts/h/user-data", b"old secret\n", secret=True),
    Artifact(MANIFEST, b'{"output": "old"}\n'),
]
NEW = [
    Artifact("keep.txt", b"new\n"),
    Artifact("only-new.txt", b"new only\n"),
    Artifact("hosts/h/user-data", b"new secret\n", secret=True),
    Artifact(MANIFEST, b'{"output": "new"}\n'),
]
KILLED = 77  # the child's exit status when it "died" at the chosen point

Tree = dict[str, tuple[bytes, int]]


def tree(artifacts: list[Artifact]) -> Tree:
    return {a.path: (a.data, a.mode) for a in artifacts}


def on_disk(root: Path) -> Tree | None:
    if not root.is_dir():
        return None
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def hidden_siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


class Interrupted(BaseException):
    """Raised at the chosen point: not an OSError, so no handler meant for I/O errors eats it."""


def instrument(
    monkeypatch: pytest.MonkeyPatch, at: int, when: str, stop: Callable[[], Any]
) -> list[str]:
    """Wrap every file-system call the writer's swap makes; call ``stop`` before or after the
    ``at``-th one. Returns the list of calls seen (to learn how many points there are)."""
    seen: list[str] = []

    def wrap(
        name: str, real: Callable[..., Any], counts: Callable[..., bool]
    ) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if not counts(*args, **kwargs):
                return real(*args, **kwargs)
            seen.append(name)
            point = len(seen)  # calls made inside this one (rmtree's) come after it
            if point == at and when == "before":
                stop()
            try:
                return real(*args, **kwargs)
            finally:  # a call may fail (mkdir of an existing parent): still a point after it
                if point == at and when == "after":
                    stop()

        return call

    always: Callable[..., bool] = lambda *a, **k: True  # noqa: E731
    creates: Callable[..., bool] = lambda path, flags, *a, **k: bool(flags & os.O_CREAT)  # noqa: E731
    monkeypatch.setattr(os, "open", wrap("open", os.open, creates))
    for name in ("rename", "rmdir", "mkdir", "unlink"):
        monkeypatch.setattr(os, name, wrap(name, getattr(os, name), always))
    monkeypatch.setattr(writer, "_exchange", wrap("exchange", writer._exchange, always))
    monkeypatch.setattr(shutil, "rmtree", wrap("rmtree", shutil.rmtree, always))
    return seen


def count_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    out = tmp_path / "count" / "out"
    write(out, OLD)
    with monkeypatch.context() as m:
        seen = instrument(m, at=0, when="before", stop=lambda: None)
        write(out, NEW)
    assert on_disk(out) == tree(NEW)
    assert {"exchange", "rmtree"} <= set(seen) or {"rename"} <= set(seen), seen
    return len(seen)


@pytest.fixture(params=["exchange", "fallback"])
def swap(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "fallback":
        monkeypatch.setattr(writer, "_exchange", lambda a, b: False)
    yield request.param


def points(n: int) -> Iterator[tuple[int, str]]:
    for at in range(1, n + 1):
        yield at, "before"
        yield at, "after"


def killed_write(out: Path, at: int, when: str) -> int:
    """Write NEW over ``out`` in a forked child that dies at the chosen point; its exit status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            with pytest.MonkeyPatch.context() as m:
                instrument(m, at, when, stop=lambda: os._exit(KILLED))
                write(out, NEW)
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_killed_render_leaves_wholly_old_or_wholly_new_output(
    swap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = count_points(tmp_path, monkeypatch)
    kills = 0
    for at, when in points(n):
        out = tmp_path / f"{at}-{when}" / "out"
        write(out, OLD)
        code = killed_write(out, at, when)
        assert code in (0, KILLED), (at, when, code)
        kills += code == KILLED
        state = on_disk(out)
        where = f"killed {when} step {at} of {n} ({swap})"
        if swap == "fallback" and state is None:
            # Killed between the fallback's two renames: the previous output is hidden, whole.
            assert any(name.startswith(".out.old-") for name in hidden_siblings(out)), where
            recover(out)
            state = on_disk(out)
        assert state in (tree(OLD), tree(NEW)), where
        # The next render cleans whatever the killed one left and writes the new output.
        write(out, NEW)
        assert on_disk(out) == tree(NEW), where
        assert hidden_siblings(out) == [], where
    assert kills == 2 * n  # every point was reached: the child really died at each


def test_an_interrupted_render_leaves_wholly_old_or_wholly_new_output(
    swap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = count_points(tmp_path, monkeypatch)

    def stop() -> None:
        raise Interrupted

    for at, when in points(n):
        out = tmp_path / f"{at}-{when}" / "out"
        write(out, OLD)
        where = f"interrupted {when} step {at} of {n} ({swap})"
        with monkeypatch.context() as m:
            instrument(m, at, when, stop)
            with contextlib.suppress(Interrupted):
                write(out, NEW)
        assert on_disk(out) in (tree(OLD), tree(NEW)), where
        write(out, NEW)
        assert on_disk(out) == tree(NEW), where
        assert hidden_siblings(out) == [], where


def test_the_next_render_removes_a_staging_directory_left_by_a_killed_one(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    write(out, OLD)
    stale = tmp_path / ".out.new-abc123"
    (stale / "hosts").mkdir(parents=True)
    (stale / "hosts" / "user-data").write_bytes(b"half-written secret")
    unrelated = tmp_path / ".other.new-abc123"  # another target's staging is not ours
    unrelated.mkdir()
    write(out, NEW)
    assert not stale.exists()
    assert unrelated.exists()
    assert on_disk(out) == tree(NEW)


def test_recover_puts_back_the_previous_output_only_when_the_target_is_gone(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    write(out, OLD)
    out.rename(tmp_path / ".out.old-xyz")
    recover(out)
    assert on_disk(out) == tree(OLD)
    assert hidden_siblings(out) == []
    # With the target present, an .old-* sibling is stale: removed, never swapped in.
    write(tmp_path / ".out.old-stale", NEW)
    recover(out)
    assert on_disk(out) == tree(OLD)
    assert hidden_siblings(out) == []
