"""The watched folder: what it ignores, when a file counts as arrived, sub-folders,
polling for network mounts, and odd names."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from facewarden.config.schema import FolderSourceConfig
from facewarden.daemon.jobs import Event
from facewarden.daemon.sources import folder as folder_mod
from facewarden.daemon.sources.folder import FolderSource, mount_fstype
from facewarden.storage.local import LocalStore

# watchdog warns when a new sub-folder's watch is added twice (event + rescan); harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")


class Collector:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self._cv = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cv:
            self.events.append(event)
            self._cv.notify_all()

    @property
    def keys(self) -> list[str]:
        return [e.key for e in self.events]

    def wait_for(self, n: int, timeout: float = 10) -> list[str]:
        with self._cv:
            self._cv.wait_for(lambda: len(self.events) >= n, timeout)
        return self.keys


@pytest.fixture
def root(tmp: Path) -> Path:
    path = tmp / "drop"
    path.mkdir()
    return path


@pytest.fixture
def start(root: Path) -> Iterator:
    """start(**cfg) -> (source, collector); every source is stopped at the end."""
    started: list[FolderSource] = []

    def _start(**cfg) -> tuple[FolderSource, Collector]:
        opts = {"stability_delay": 0.5, "close_delay": 0.05, "poll_interval": 0.2, **cfg}
        source = FolderSource(FolderSourceConfig(**opts), LocalStore("incoming", root, fsync=False))
        events = Collector()
        source.start(events)
        started.append(source)
        return source, events

    yield _start
    for s in started:
        s.stop()


def _write(path: Path, data: bytes = b"\xff\xd8\xff photo bytes") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


IGNORED = ["upload.jpg.part", "x.tmp", "~$report.jpg", ".hidden.jpg", "@eaDir/thumb.jpg",
           "Thumbs.db", ".DS_Store", "sub/.git/obj.jpg", "#recycle/old.jpg", "a.jpg.audit.json",
           "b.jpg.crdownload", "desktop.ini", ".fw-tmp-abc123"]


def test_ignore_patterns(start, root: Path):
    for name in IGNORED:
        _write(root / name)
    _write(root / "before.jpg")
    source, events = start()
    for name in IGNORED:
        assert source.ignored(root / name), name
        _write(root / "later" / name)
    _write(root / "later" / "after.jpg")
    assert sorted(events.wait_for(2)) == ["before.jpg", "later/after.jpg"]
    time.sleep(1.0)  # anything ignored would have been emitted by now (stability 0.5 s)
    assert sorted(events.keys) == ["before.jpg", "later/after.jpg"]


def test_files_present_at_start_are_emitted(start, root: Path):
    names = ["a.jpg", "sub/b.png", "sub/deeper/c.jpeg"]
    for n in names:
        _write(root / n)
    _, events = start()
    assert sorted(events.wait_for(3)) == sorted(names)
    e = events.events[0]
    assert e.store == "incoming" and e.source == "incoming" and e.version and e.hints["size"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_growing_file_is_emitted_only_once_complete(start, root: Path, mode: str):
    _, events = start(mode=mode, stability_delay=1.0)
    path = root / "big.jpg"
    chunk = b"\x00" * 4096
    with open(path, "wb") as fh:
        for _ in range(10):  # 2.5 s of writing, a chunk every 0.25 s (< the 1 s stability delay)
            fh.write(chunk)
            fh.flush()
            time.sleep(0.25)
            assert events.keys == [], "a file still being written was emitted"
    assert events.wait_for(1) == ["big.jpg"]
    event = events.events[0]
    assert event.hints["size"] == 10 * len(chunk) == path.stat().st_size
    time.sleep(0.6)
    assert len(events.events) == 1  # emitted once


def test_file_in_a_new_sub_folder(start, root: Path):
    _, events = start()
    time.sleep(0.2)
    # The folder and its file appear together (as from `mv` or `cp -r`): the file may get
    # no event of its own.
    staging = root.parent / "staging"
    _write(staging / "2024" / "06" / "IMG 1.jpg")
    staging.rename(root / "new")
    (root / "made").mkdir()
    _write(root / "made" / "x" / "y.jpg")
    assert sorted(events.wait_for(2)) == ["made/x/y.jpg", "new/2024/06/IMG 1.jpg"]


def test_poll_mode(start, root: Path):
    source, events = start(mode="poll")
    assert source.mode == "poll" and source.ready()
    _write(root / "polled.jpg")
    _write(root / "sub" / "polled2.jpg")
    assert sorted(events.wait_for(2)) == ["polled.jpg", "sub/polled2.jpg"]


def test_not_recursive(start, root: Path):
    _write(root / "top.jpg")
    _write(root / "sub" / "deep.jpg")
    _, events = start(recursive=False)
    assert events.wait_for(1) == ["top.jpg"]
    time.sleep(0.8)
    assert events.keys == ["top.jpg"]


def test_odd_names_keep_their_key(start, root: Path):
    names = ["with space.jpg", "ünïcødé фото.jpg", "new\nline.jpg", "a+b.jpg", "sub dir/写真.png"]
    _, events = start()
    for n in names:
        _write(root / n)
    assert sorted(events.wait_for(len(names))) == sorted(names)


MOUNTS = r"""sysfs /sys sysfs rw,nosuid 0 0
/dev/sda1 / ext4 rw,relatime 0 0
//nas/photos /mnt/nas cifs rw,vers=3.1.1 0 0
nas:/export /mnt/nfs nfs4 rw 0 0
/dev/sdb1 /mnt/nas/local ext4 rw 0 0
//nas/my\040share /mnt/my\040share smb3 rw 0 0
"""


def test_mount_fstype_from_a_mounts_file(tmp: Path):
    mounts = tmp / "mounts"
    mounts.write_text(MOUNTS)
    assert mount_fstype(Path("/mnt/nas/inbox"), mounts) == "cifs"
    assert mount_fstype(Path("/mnt/nas"), mounts) == "cifs"
    assert mount_fstype(Path("/mnt/nfs/a/b"), mounts) == "nfs4"
    assert mount_fstype(Path("/mnt/nas/local/x"), mounts) == "ext4"  # longest mount point wins
    assert mount_fstype(Path("/mnt/nasty"), mounts) == "ext4"  # not under /mnt/nas
    assert mount_fstype(Path("/mnt/my share/in"), mounts) == "smb3"
    assert mount_fstype(Path("/x"), tmp / "no-such-file") == ""


@pytest.mark.parametrize(("fstype", "mode"), [("cifs", "poll"), ("nfs4", "poll"), ("nfs", "poll"),
                                              ("smb3", "poll"), ("ext4", "inotify")])
def test_auto_mode_polls_network_mounts(monkeypatch, root: Path, fstype: str, mode: str):
    monkeypatch.setattr(folder_mod, "mount_fstype", lambda _path: fstype)
    source = FolderSource(FolderSourceConfig(), LocalStore("incoming", root, fsync=False))
    assert source.mode == mode
    forced = FolderSource(FolderSourceConfig(mode="inotify"), LocalStore("incoming", root))
    assert forced.mode == "inotify"  # an explicit mode is never overridden
