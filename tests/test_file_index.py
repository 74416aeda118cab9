"""The job's file index: what one walk keeps and leaves out, pseudo-filesystems never
entered (a real bind mount of /proc inside a tree), and one read per file for a whole
job, counted by the kernel (inotify) across the worker processes."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from orchestrator.bootstrap import open_app
from orchestrator.domain import JobStatus
from orchestrator.modules import scan
from orchestrator.modules.ignore import DEFAULT_IGNORES, IgnoreRules, InvalidPattern, check_patterns
from orchestrator.modules.index import FileEntry, IndexConfig, UnusableSource, build_index, open_regular
from orchestrator.modules.mounts import PseudoFilesystems, parse_mountinfo
from orchestrator.modules.scan import BatchRequest, FileAnalyzer, FileContent, run_batch
from orchestrator.settings import Settings
from orchestrator.usecases import JobControl


def write(root: Path, relpath: str, content: str | bytes = "x\n") -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def relpaths(root: Path, config: IndexConfig | None = None) -> list[str]:
    # Sorted: the walk's own order is a directory's files, then its subdirectories.
    return sorted(entry.relpath for entry in build_index(root, config))


# --- what the walk keeps ---------------------------------------------------------------------


def test_default_ignores_leave_out_vcs_dependencies_virtualenvs_and_build_outputs(tmp_path: Path) -> None:
    for relpath in (
        "src/app.py",
        "src/build.py",  # a file named like a build directory is kept
        "README.md",
        ".git/config",
        ".hg/store",
        "node_modules/left-pad/index.js",
        "web/node_modules/react/index.js",
        "__pycache__/app.cpython-311.pyc",
        ".venv/lib/site.py",
        "envs/custom/pyvenv.cfg",  # a virtualenv under any name
        "envs/custom/lib/site.py",
        "build/lib/app.py",
        "dist/app.whl",
        "target/debug/app",
        ".orchestrator/state.db",
        ".mypy_cache/x.json",
    ):
        write(tmp_path, relpath)
    index = build_index(tmp_path)
    assert [entry.relpath for entry in index] == ["README.md", "src/app.py", "src/build.py"]
    # .git .hg node_modules web/node_modules __pycache__ .venv envs/custom build dist target
    # .orchestrator .mypy_cache: twelve directories, never entered.
    assert index.stats.ignored == 12
    assert index.stats.files_seen == 3


def test_a_job_can_bring_back_a_default_or_drop_the_defaults(tmp_path: Path) -> None:
    for relpath in ("app.py", "build/gen.py", "node_modules/x/index.js", ".git/HEAD"):
        write(tmp_path, relpath)
    assert relpaths(tmp_path, IndexConfig(extra_ignore=("!build/",))) == ["app.py", "build/gen.py"]
    everything = relpaths(tmp_path, IndexConfig(default_ignores=False))
    assert everything == [".git/HEAD", "app.py", "build/gen.py", "node_modules/x/index.js"]
    assert relpaths(tmp_path, IndexConfig(extra_ignore=("*.py",))) == []
    # The setting replaces the defaults: only what it names is left out.
    assert relpaths(tmp_path, IndexConfig(ignore=("node_modules/",))) == [
        ".git/HEAD", "app.py", "build/gen.py",
    ]


def test_gitignore_files_are_honoured_at_every_level_and_deeper_ones_win(tmp_path: Path) -> None:
    write(tmp_path, ".gitignore", "*.log\n/generated/\nsecret*.txt\n[invalid\n\\\n[z-a]\n")  # invalid lines dropped
    write(tmp_path, "app.log")
    write(tmp_path, "app.py")
    write(tmp_path, "generated/out.py")
    write(tmp_path, "sub/generated/kept.py")  # /generated/ is anchored at the root
    write(tmp_path, "sub/.gitignore", "!keep.log\nlocal/\n")
    write(tmp_path, "sub/keep.log")
    write(tmp_path, "sub/drop.log")
    write(tmp_path, "sub/local/x.py")
    write(tmp_path, "secret-notes.txt")
    index = build_index(tmp_path)
    assert [entry.relpath for entry in index] == [
        ".gitignore", "app.py", "sub/.gitignore", "sub/keep.log", "sub/generated/kept.py",
    ]
    # The .gitignore files were read by the walk: their bytes ride along (not read twice).
    preloaded = {entry.relpath: entry.preloaded for entry in index if entry.preloaded is not None}
    assert preloaded == {".gitignore": (tmp_path / ".gitignore").read_bytes(), "sub/.gitignore": b"!keep.log\nlocal/\n"}
    assert relpaths(tmp_path, IndexConfig(gitignore=False))[:3] == [".gitignore", "app.log", "app.py"]


def test_the_job_wins_over_the_gitignore_which_wins_over_the_defaults(tmp_path: Path) -> None:
    write(tmp_path, ".gitignore", "!dist/\ndocs/\n")
    write(tmp_path, "dist/pkg.py")
    write(tmp_path, "docs/index.md")
    rules = IgnoreRules(DEFAULT_IGNORES, ("!docs/",)).descend("", "!dist/\ndocs/\n")
    assert rules.ignored("dist", "dist", is_dir=True) is False  # the project re-includes a default
    assert rules.ignored("docs", "docs", is_dir=True) is False  # the job re-includes what the project drops
    assert relpaths(tmp_path, IndexConfig(extra_ignore=("!docs/",))) == [".gitignore", "dist/pkg.py", "docs/index.md"]


def test_invalid_job_patterns_are_refused_with_the_reason() -> None:
    assert check_patterns(["*.log", "!keep.log", "build/"]) == ["*.log", "!keep.log", "build/"]
    for bad, reason in (
        ("!", "Invalid git pattern"),
        ("a\nb", "control character"),
        ("x" * 2000, "longer than"),
        ("**/[z-a]", "bad character range z-a"),  # the regular expression's error, not pathspec's
    ):
        with pytest.raises(InvalidPattern, match=reason):
            check_patterns([bad])


def test_symlinks_are_not_followed_and_special_files_are_counted_not_opened(tmp_path: Path) -> None:
    write(tmp_path, "real/a.py")
    os.symlink(tmp_path, tmp_path / "loop")
    os.symlink(tmp_path / "real" / "a.py", tmp_path / "alias.py")
    os.mkfifo(tmp_path / "pipe")
    index = build_index(tmp_path)
    assert [entry.relpath for entry in index] == ["real/a.py"]
    assert index.stats.skipped_special == 1  # the FIFO; symlinks are simply not visited


def test_a_single_file_source_and_unusable_sources(tmp_path: Path) -> None:
    source = write(tmp_path, "one.py", "a = 1\n")
    index = build_index(source)
    assert [(entry.relpath, entry.size, entry.kind) for entry in index] == [("one.py", 6, "Python")]
    with pytest.raises(UnusableSource, match="does not exist"):
        build_index(tmp_path / "absent")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnusableSource, match="neither a directory nor a regular file"):
        build_index(tmp_path / "fifo")


@pytest.mark.parametrize("source", ["/proc", "/proc/kmsg", "/sys/kernel", "/dev/null"])
def test_pseudo_filesystems_are_never_sources(source: str) -> None:
    with pytest.raises(UnusableSource, match="pseudo-filesystem"):
        build_index(Path(source))


def test_the_mount_table_is_read_as_the_kernel_writes_it() -> None:
    text = (
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "63 43 0:21 / /tmp/with\\040space/x rw,relatime shared:5 - proc proc rw\n"
        "64 27 0:23 / /dev/shm rw - tmpfs tmpfs rw\n"
        "garbage line\n"
    )
    mounts = parse_mountinfo(text)
    assert [(m.mount_point, m.fs_type) for m in mounts] == [
        ("/proc", "proc"), ("/", "ext4"), ("/tmp/with space/x", "proc"), ("/dev/shm", "tmpfs"),
    ]
    assert PseudoFilesystems.from_mounts(mounts).devices == {os.makedev(0, 21)}


def test_a_source_on_a_pseudo_device_is_refused_whatever_its_path(tmp_path: Path) -> None:
    write(tmp_path, "a.py")
    pseudo = PseudoFilesystems({tmp_path.stat().st_dev})  # pretend this tree's device is one
    with pytest.raises(UnusableSource, match="pseudo-filesystem"):
        build_index(tmp_path, pseudo=pseudo)


@contextmanager
def private_mount_namespace_available() -> Iterator[None]:
    """Bind mounts need root and unshare(1); CI runs as root: there it must work."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("this test needs root and unshare(1) in CI")
        pytest.skip("needs root and unshare(1) to bind-mount /proc in a private mount namespace")
    yield


def test_a_job_on_a_tree_holding_a_bind_mount_of_proc_completes_without_entering_it(tmp_path: Path) -> None:
    """Issue 11: a tree containing /proc must not hang (nor read /proc/kmsg)."""
    tree = tmp_path / "tree"
    write(tree, "app.py", "# TODO: done\n")
    (tree / "proc").mkdir()
    data = tmp_path / "data"
    script = (
        f"mount --bind /proc {tree / 'proc'} && "
        f"{sys.executable} -m orchestrator --log-level error run --source {tree} --project-id p --json"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "OTEL_"))}
    env["ORCHESTRATOR_DATA_DIR"] = str(data)
    with private_mount_namespace_available():
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "completed", job["reason"]
    results = {result["module"]: result["summary"] for result in job["results"]}
    assert results["inventory"]["total_files"] == 1
    assert results["inventory"]["walk"]["skipped_special"] == 1  # the mount point, not entered
    assert results["todos"]["total"] == 1


# --- one read per file per job, counted by the kernel ----------------------------------------

IN_OPEN = 0x00000020
IN_ISDIR = 0x40000000
_EVENT = struct.Struct("iIII")


class OpenCounter:
    """inotify IN_OPEN events on every directory of a tree: opens by any process."""

    def __init__(self, root: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self._fd >= 0, os.strerror(ctypes.get_errno())
        self._dirs: dict[int, str] = {}
        for directory, _subdirs, _files in os.walk(root):
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), IN_OPEN)
            assert wd >= 0, os.strerror(ctypes.get_errno())
            self._dirs[wd] = os.path.relpath(directory, root)

    def opens(self) -> Counter[str]:
        counted: Counter[str] = Counter()
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return counted
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0").decode()
                offset += _EVENT.size + length
                if mask & IN_OPEN and not mask & IN_ISDIR and name:
                    directory = self._dirs[wd]
                    counted[name if directory == "." else f"{directory}/{name}"] += 1

    def close(self) -> None:
        os.close(self._fd)


@pytest.mark.anyio
@pytest.mark.parametrize("inline_bytes", [0, 1_000_000], ids=["worker-processes", "in-process"])
async def test_a_whole_job_reads_each_file_once(tmp_path: Path, inline_bytes: int) -> None:
    source = tmp_path / "project"
    write(source, "pyproject.toml", '[project]\nname = "p"\ndependencies = ["anyio>=4"]\n')
    write(source, "requirements.txt", "httpx\n")
    write(source, "web/package.json", '{"dependencies": {"react": "^18"}}')
    for index in range(40):
        write(source, f"pkg/mod{index:02}.py", f"# TODO: {index}\nVALUE = {index}\n")
    write(source, "pkg/broken.py", "def f(:\n")
    write(source, "notes.md", "password = 'hunter2-correct-horse'\n")
    write(source, "blob.bin", b"\x00\x01" * 100)
    write(source, "big.txt", "line\n" * 1000)  # 5,000 bytes: over the cap below, streamed once for its lines
    write(source, ".gitignore", "*.log\n")
    write(source, "debug.log")  # ignored by .gitignore: never opened
    write(source, "node_modules/dep/index.js")  # ignored by default: never opened
    expected = {
        path.relative_to(source).as_posix(): 1
        for path in source.rglob("*")
        if path.is_file() and path.name != "debug.log" and "node_modules" not in path.parts
    }
    settings = Settings(
        data_dir=tmp_path / "data",
        analysis_processes=2,
        analysis_max_file_bytes=4096,
        analysis_inline_bytes=inline_bytes,  # 0: the pool, whatever the size; else this small tree in-process
    )
    counter = OpenCounter(source)
    try:
        async with open_app(settings) as app:
            job = await app.create.execute({"project_id": "p", "source": str(source)})
            running = await app.workflow.claim("w1", lease_seconds=30)
            assert running is not None
            final = await app.execute.execute(running, control=JobControl(), worker_id="w1")
            opens = counter.opens()
    finally:
        counter.close()
    assert final.status is JobStatus.COMPLETED, final.reason
    assert len(job.modules) == 5
    assert dict(opens) == expected
    summaries = {result.module: result.summary for result in final.results}
    assert summaries["python_syntax"]["error_count"] == 1
    assert summaries["todos"]["total"] == 40
    assert summaries["secrets"]["total_findings"] == 1
    assert summaries["dependencies"]["total_dependencies"] == 3
    assert summaries["inventory"]["total_lines"] == 40 * 2 + 1 + 1000 + 3 + 1 + 1 + 1 + 1
    assert summaries["secrets"]["walk"]["skipped_large"] == 1  # big.txt: not scanned for secrets


def test_open_counter_sees_a_read_in_another_process(tmp_path: Path) -> None:
    """The instrument itself: an open in a child process is counted."""
    target = write(tmp_path, "a.txt")
    counter = OpenCounter(tmp_path)
    try:
        subprocess.run([sys.executable, "-c", f"open({str(target)!r}).read()"], check=True)
        assert counter.opens() == Counter({"a.txt": 1})
    finally:
        counter.close()


# --- reading ahead in a pool worker ----------------------------------------------------------


class _OpenFiles(FileAnalyzer[tuple[str, int]]):
    """Records, per file analysed, how many files of the tree this process holds open."""

    def __init__(self, root: Path, fail_on: str = "") -> None:
        self.root = str(root)
        self.fail_on = fail_on

    def analyze(self, entry: FileEntry, content: FileContent) -> tuple[str, int] | None:
        if entry.relpath == self.fail_on:
            raise ValueError("analyzer bug")
        return entry.relpath, _open_in(self.root)


def _open_in(root: str) -> int:
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            held += os.readlink(f"/proc/self/fd/{fd}").startswith(root + "/")
        except FileNotFoundError:  # the descriptor listdir itself used
            continue
    return held


def _batch(source: Path, analyzer: FileAnalyzer[Any]) -> BatchRequest:
    entries = tuple(sorted(build_index(source), key=lambda entry: entry.relpath))
    return BatchRequest(entries, tuple((0,) for _ in entries), (analyzer,), 1_000)


def test_reading_ahead_keeps_a_bounded_window_open_and_closes_it_whatever_happens(tmp_path: Path) -> None:
    source = tmp_path / "tree"
    for index in range(30):
        write(source, f"f{index:02}.txt", f"line {index}\n")
    write(source, "g-large.txt", "x" * 5_000)  # over the cap: never opened

    outcome = run_batch(_batch(source, _OpenFiles(source)), read_ahead=4).outcomes[0]
    assert outcome.error is None
    assert [path for _, (path, _) in outcome.results] == [f"f{index:02}.txt" for index in range(30)]
    held = [count for _, (_, count) in outcome.results]
    # While a file is analysed (it was read and closed), the next 4 are open; fewer at
    # the end of the batch, none after the last.
    assert max(held) == 4, held
    assert held[-3:] == [2, 1, 0], held
    assert outcome.skipped_large == 1
    assert _open_in(str(source)) == 0

    failed = run_batch(_batch(source, _OpenFiles(source, fail_on="f03.txt")), read_ahead=4).outcomes[0]
    assert failed.error is not None
    assert "analyzer bug (analysing f03.txt)" in failed.error
    assert _open_in(str(source)) == 0

    cancel = threading.Event()

    class CancelAt(_OpenFiles):
        def analyze(self, entry: FileEntry, content: FileContent) -> tuple[str, int] | None:
            if entry.relpath == "f05.txt":
                cancel.set()
            return super().analyze(entry, content)

    stopped = run_batch(_batch(source, CancelAt(source)), cancel, read_ahead=4)
    assert stopped.cancelled
    assert len(stopped.outcomes[0].results) == 6
    assert _open_in(str(source)) == 0


def test_a_file_that_cannot_be_opened_ahead_is_unreadable_and_the_rest_is_read(tmp_path: Path) -> None:
    source = tmp_path / "tree"
    for index in range(6):
        write(source, f"f{index}.txt", f"{index}\n")
    request = _batch(source, _OpenFiles(source))
    (source / "f2.txt").unlink()
    (source / "f2.txt").symlink_to(source / "f1.txt")  # swapped for a link since the walk: refused
    outcome = run_batch(request, read_ahead=3).outcomes[0]
    assert [path for _, (path, _) in outcome.results] == ["f0.txt", "f1.txt", "f3.txt", "f4.txt", "f5.txt"]
    assert outcome.skipped_unreadable == 1
    assert _open_in(str(source)) == 0


@pytest.mark.parametrize("read_ahead", [0, 4], ids=["in-process", "read-ahead"])
def test_a_batch_opens_each_file_once(tmp_path: Path, read_ahead: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Counted at the one function that opens a file (inotify merges two opens of one file
    # in a row into one event, so it cannot see a second open of the same file).
    source = tmp_path / "tree"
    for index in range(6):
        write(source, f"f{index}.txt", f"{index}\n")
    request = _batch(source, _OpenFiles(source))
    opens: Counter[str] = Counter()

    def counted(path: str | Path) -> int:
        opens[os.path.basename(path)] += 1
        return open_regular(path)

    monkeypatch.setattr(scan, "open_regular", counted)
    result = run_batch(request, read_ahead=read_ahead)
    assert dict(opens) == {f"f{index}.txt": 1 for index in range(6)}
    assert result.opened == 6
    assert _open_in(str(source)) == 0
