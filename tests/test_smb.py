"""A real SMB drop: a Samba server (smbd, started here on 127.0.0.1) shares a folder that a
running `facewarden run --watch` daemon watches; a client writes a photo over SMB, slowly,
in chunks, and the daemon must produce the anonymized result and its audit record, from the
complete file only."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.samba, pytest.mark.slow]

# An SMB account, in this test's own passdb, for the unix user running the test (smbd maps
# SMB users to unix users; nothing is added to the system's user database).
USER, PASSWORD = getpass.getuser(), "fw-smb-test-pass"
SHARE = "drop"


def _smbd() -> str:
    path = shutil.which("smbd") or ("/usr/sbin/smbd" if os.path.exists("/usr/sbin/smbd") else None)
    if path and shutil.which("smbpasswd"):
        return path
    msg = "Samba is not installed (smbd/smbpasswd missing): apt-get install -y samba smbclient"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"smbd exited with {proc.returncode}: {log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"smbd did not listen on 127.0.0.1:{port}: {log.read_text()[-3000:]}")


@pytest.fixture
def samba(tmp: Path) -> Iterator[tuple[int, Path]]:
    """smbd on a free loopback port, all of its state inside tmp; yields (port, share dir)."""
    smbd = _smbd()
    root = tmp / "samba"
    share = tmp / "share"
    dirs = {d: root / d for d in ("private", "lock", "pid", "state", "cache", "log")}
    for d in [*dirs.values(), share]:
        d.mkdir(parents=True)
    port = _free_port()
    conf = root / "smb.conf"
    conf.write_text(f"""[global]
  server role = standalone server
  interfaces = 127.0.0.1
  bind interfaces only = yes
  smb ports = {port}
  disable netbios = yes
  private dir = {dirs['private']}
  lock directory = {dirs['lock']}
  pid directory = {dirs['pid']}
  state directory = {dirs['state']}
  cache directory = {dirs['cache']}
  ncalrpc dir = {dirs['lock']}/ncalrpc
  log file = {dirs['log']}/smbd.log
  passdb backend = tdbsam:{dirs['private']}/passdb.tdb
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  server min protocol = SMB2_10
[{SHARE}]
  path = {share}
  read only = no
  guest ok = no
  valid users = {USER}
  create mask = 0644
""")
    added = subprocess.run(["smbpasswd", "-c", str(conf), "-s", "-a", USER], timeout=30,
                           input=f"{PASSWORD}\n{PASSWORD}\n", capture_output=True, text=True)
    assert added.returncode == 0, added.stderr
    log = root / "smbd.out"
    with open(log, "wb") as out:
        # Its own session: when smbd stops it signals its whole process group, which
        # must not be pytest's.
        proc = subprocess.Popen([smbd, "--foreground", "--no-process-group", "-s", str(conf)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, proc, log)
        yield port, share
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def daemon(samba: tuple[int, Path], tmp: Path, models_dir: Path) -> Iterator[tuple[Path, Path]]:
    """`facewarden run --watch SHARE --out OUT --state STATE --workers 1` as a subprocess."""
    _, share = samba
    out, state = tmp / "out", tmp / "state"
    log = tmp / "daemon.log"
    cmd = [sys.executable, "-c", "from facewarden.cli import main; main()", "run",
           "--watch", str(share), "--out", str(out), "--state", str(state), "--workers", "1",
           "--models-dir", str(models_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEWARDEN_")}
    env["FACEWARDEN_LOG__FORMAT"] = "json"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 60
        while b"source.started" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the daemon did not start: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield out, state
        proc.send_signal(signal.SIGTERM)  # drains: jobs in progress finish
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail("the daemon did not stop on SIGTERM: "
                        + log.read_text(errors="replace")[-3000:])
        assert code == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_photo_dropped_over_smb_is_anonymized(samba, daemon, face_photo: Path, tmp: Path):
    import smbclient

    port, share = samba
    out, state = daemon
    photo = face_photo.read_bytes()
    server = "127.0.0.1"
    smbclient.register_session(server, port=port, username=USER, password=PASSWORD)
    try:
        folder = rf"\\{server}\{SHARE}\sub"
        smbclient.makedirs(folder, exist_ok=True, port=port)
        # Several chunks with pauses: the file is visible, and growing, for a few seconds.
        # The daemon must wait for it to be complete (stability delay), not take it half-written.
        step = len(photo) // 6 + 1
        chunks = [photo[i:i + step] for i in range(0, len(photo), step)]
        assert len(chunks) >= 5
        with smbclient.open_file(folder + r"\photo.jpg", mode="wb", port=port) as fh:
            for chunk in chunks:
                fh.write(chunk)
                fh.flush()
                time.sleep(0.4)
    finally:
        smbclient.reset_connection_cache()
    assert (share / "sub" / "photo.jpg").read_bytes() == photo  # it went through smbd

    result, record_path = out / "sub" / "photo.jpg", out / "sub" / "photo.jpg.audit.json"
    deadline = time.monotonic() + 60
    while not (result.exists() and record_path.exists()):
        quarantined = [q for q in (state / "quarantine").rglob("*") if q.is_file()]
        assert not quarantined, f"the drop was quarantined: {quarantined}"
        assert time.monotonic() < deadline, \
            f"no result within 60 s: {(tmp / 'daemon.log').read_text()[-3000:]}"
        time.sleep(0.2)

    anonymized = result.read_bytes()
    assert anonymized != photo
    assert anonymized[:3] == b"\xff\xd8\xff"  # a JPEG, like the input
    record = json.loads(record_path.read_bytes())
    assert record["outcome"] == "ok"
    assert record["input"]["key"] == "sub/photo.jpg"
    # The daemon read the complete file, not a prefix of it while it was still being written.
    assert record["input"]["sha256"] == hashlib.sha256(photo).hexdigest()
    assert record["input"]["size"] == len(photo)
    assert record["outputs"][0]["sha256"] == hashlib.sha256(anonymized).hexdigest()
    assert record["facts"]["faces"] >= 1
