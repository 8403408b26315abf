"""The hash-chained audit log: links, and every kind of tampering ``verify`` must catch."""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from facewarden.storage.audit import GENESIS, AuditLog, record_hash


def _copy_placer(folder: Path):
    """Writes each record's copy into ``folder`` (as the pipeline does beside a result)."""

    def place_for(name: str):
        def place(_record, data: bytes) -> str:
            (folder / name).write_bytes(data)
            return f"copies:{name}"

        return place

    return place_for


def _read_copy(folder: Path):
    def read(location: str, _record: dict | None = None) -> bytes | None:
        store, _, name = location.partition(":")
        assert store == "copies"
        path = folder / name
        return path.read_bytes() if path.exists() else b"missing"

    return read


@pytest.fixture
def log5(state_dir: Path, tmp: Path):
    """A log with five records, each with a copy beside its 'result'."""
    copies = tmp / "copies"
    copies.mkdir()
    log = AuditLog(state_dir)
    place = _copy_placer(copies)
    records = []
    for i in range(1, 6):
        record = {"job_id": f"job{i}", "outcome": "ok",
                  "input": {"store": "in", "key": f"p{i}.jpg", "sha256": f"{i:064x}"},
                  "outputs": [{"store": "out", "key": f"p{i}.jpg", "sha256": f"{i + 100:064x}"}]}
        records.append(log.append(record, place=place(f"p{i}.jpg.audit.json")))
    log.close()
    return log, records, copies


def _sql(log: AuditLog, *statements: tuple[str, tuple]) -> None:
    conn = sqlite3.connect(log.db_path)
    with conn:
        for sql, args in statements:
            conn.execute(sql, args)
    conn.close()


def _problems(log: AuditLog, copies: Path) -> list[str]:
    report = log.verify(_read_copy(copies))
    assert not report.ok
    return report.problems


def test_chain_links_and_verifies(log5):
    log, records, copies = log5
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev"] == GENESIS
    for before, after in itertools.pairwise(records):
        assert after["prev"] == before["hash"]
    for r in records:
        assert record_hash(r) == r["hash"]
    report = log.verify(_read_copy(copies))
    assert report.ok, report.problems
    assert report.records == 5 and report.copies_checked == 5
    # The copy beside a result is the record itself, readable and hashable again.
    copy = json.loads((copies / "p3.jpg.audit.json").read_bytes())
    assert copy == records[2] and record_hash(copy) == copy["hash"]
    assert log.by_sha256(f"{103:064x}")[0]["seq"] == 3


def test_edited_record_in_the_db(log5):
    log, _, copies = log5
    _sql(log, ("UPDATE records SET record = replace(record, ?, ?) WHERE seq = 3",
               ('"outcome":"ok"', '"outcome":"rejected"')))
    problems = _problems(log, copies)
    assert any("record 3" in p and "altered" in p for p in problems), problems


def test_edited_record_with_recomputed_hash_breaks_the_next_link(log5):
    log, _, copies = log5
    conn = sqlite3.connect(log.db_path)
    record = json.loads(conn.execute("SELECT record FROM records WHERE seq=2").fetchone()[0])
    conn.close()
    record["outcome"] = "rejected"
    new_hash = record_hash(record)
    _sql(log, ("UPDATE records SET record=?, hash=? WHERE seq=2",
               (json.dumps(record, sort_keys=True, separators=(",", ":")), new_hash)))
    problems = _problems(log, copies)
    assert any(p.startswith("record 3: prev") for p in problems), problems
    assert any("record 2" in p and "copy" in p for p in problems), problems


def test_edited_copy_beside_the_result(log5):
    log, _, copies = log5
    path = copies / "p4.jpg.audit.json"
    copy = json.loads(path.read_bytes())
    copy["outputs"][0]["sha256"] = "f" * 64
    path.write_text(json.dumps(copy, indent=2, sort_keys=True))
    problems = _problems(log, copies)
    assert problems == ["record 4: the copy at copies:p4.jpg.audit.json differs from the log "
                        "(altered)"]


def test_copy_that_is_not_json(log5):
    log, _, copies = log5
    (copies / "p1.jpg.audit.json").write_bytes(b"\x00garbage")
    assert any("record 1" in p and "not JSON" in p for p in _problems(log, copies))


def test_removed_record_in_the_middle(log5):
    log, _, copies = log5
    _sql(log, ("DELETE FROM records WHERE seq = 3", ()))
    problems = _problems(log, copies)
    assert any("missing" in p and "3" in p for p in problems), problems
    assert any(p.startswith("record 4: prev") for p in problems), problems


def test_removed_last_record_is_caught_by_head(log5):
    log, _, copies = log5
    _sql(log, ("DELETE FROM records WHERE seq = 5", ()))
    problems = _problems(log, copies)
    assert any(p.startswith("HEAD names record 5") for p in problems), problems


def test_missing_head_file(log5):
    log, _, copies = log5
    log.head_path.unlink()
    assert any("HEAD" in p for p in _problems(log, copies))


def test_reordered_record_text(log5):
    log, _, copies = log5
    conn = sqlite3.connect(log.db_path)
    sql = "SELECT record FROM records WHERE seq=?"
    r2, r4 = (conn.execute(sql, (s,)).fetchone()[0] for s in (2, 4))
    conn.close()
    _sql(log, ("UPDATE records SET record=? WHERE seq=2", (r4,)),
         ("UPDATE records SET record=? WHERE seq=4", (r2,)))
    problems = _problems(log, copies)
    assert any(p.startswith("record 2") for p in problems), problems
    assert any(p.startswith("record 4") for p in problems), problems


def test_reordered_rows_with_their_hashes(log5):
    """Moving whole rows (record and hash together) still breaks seq and prev."""
    log, _, copies = log5
    conn = sqlite3.connect(log.db_path)
    sql = "SELECT record, hash FROM records WHERE seq=?"
    rows = {s: conn.execute(sql, (s,)).fetchone() for s in (2, 4)}
    conn.close()
    _sql(log, ("UPDATE records SET record=?, hash=? WHERE seq=2", rows[4]),
         ("UPDATE records SET record=?, hash=? WHERE seq=4", rows[2]))
    problems = _problems(log, copies)
    assert any("reordered" in p and p.startswith("record 2") for p in problems), problems


def test_reopened_log_continues_the_chain(log5, state_dir: Path):
    _, records, copies = log5
    log = AuditLog(state_dir)
    r6 = log.append({"job_id": "job6", "outcome": "ok"})
    assert r6["seq"] == 6 and r6["prev"] == records[-1]["hash"]
    assert log.verify(_read_copy(copies)).ok


# -- through the real pipeline -------------------------------------------------------------
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_audit_hashes_match_the_files_written(data_dir: Path, models_dir: Path, state_dir: Path,
                                              tmp: Path):
    from facewarden.config import settings_from_flags
    from facewarden.daemon.oneshot import process_paths

    photos = sorted((data_dir / "faces-pascal").glob("*.jpg"))[:2]
    src = tmp / "in"
    src.mkdir()
    for p in photos:
        (src / p.name).write_bytes(p.read_bytes())
    out = tmp / "out"
    settings = settings_from_flags(None, state=state_dir, models_dir=models_dir, environ={})
    lines: list[str] = []
    assert process_paths(settings, [src], out, "anonymize", {}, echo=lines.append) == 0, lines

    log = AuditLog(state_dir)
    assert log.count() == 2
    for p in photos:
        (record,) = log.by_key(p.name)
        assert record["outcome"] == "ok"
        assert record["input"]["sha256"] == _sha(src / p.name)
        (output,) = record["outputs"]
        written = out / output["key"]
        assert output["sha256"] == _sha(written)
        assert output["size"] == written.stat().st_size
        assert written.read_bytes() != (src / p.name).read_bytes()
        copy = json.loads((out / (output["key"] + ".audit.json")).read_bytes())
        assert copy["hash"] == record["hash"] and record_hash(copy) == record["hash"]
        assert log.by_sha256(_sha(written))[0]["seq"] == record["seq"]

    # The CLI walks the same chain and reads the copies beside the results.
    from facewarden.cli import cli

    args = ["audit", "verify", "--state", str(state_dir), "--store-root", f"outgoing={out}"]
    ok = CliRunner().invoke(cli, args, env={})
    assert ok.exit_code == 0, ok.output
    assert "OK: 2 records, 2 copies" in ok.output
    (out / (photos[0].name + ".audit.json")).write_text("{}")
    bad = CliRunner().invoke(cli, args, env={})
    assert bad.exit_code == 1 and "FAIL" in bad.output, bad.output
