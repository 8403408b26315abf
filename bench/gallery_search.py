"""Gallery figures, per backend (random unit vectors stand in for embeddings).

1. **search**: ``nearest`` for one face at a time over 10k and 100k embeddings (5 per
   subject), through the real gallery and its in-process index; the first call (full load
   of the index, decrypting every vector) is reported apart. Rows are bulk-inserted, sealed
   exactly as ``add_embedding`` seals them (the per-row commit path is timed in 3).
2. **visibility** (PostgreSQL): host A (this process) enrols one subject every 20 ms into a
   gallery of ``--visibility-size`` rows; host B (another process, its own index and
   LISTEN connection) polls ``nearest`` for the pending vectors; latency = first seen on B
   minus A's commit returning.
3. **concurrent enrolment** (PostgreSQL): 2 host processes x ``--enrol`` enrolments each,
   4 threads per host, the same subject ids on both hosts, every photo sent twice (a
   retried job). Then: rows counted, every subject exported and compared with what was
   sent (lost / duplicated / mis-attributed), and each host's index checked for every
   vector at distance 0 under its own subject.

BLAS runs one thread per process unless OPENBLAS_NUM_THREADS/OMP_NUM_THREADS say otherwise:
that is a worker's share on a 2-worker, 2-core host (``pool.limit_native_threads``), and a
multi-threaded gemv on a shared, loaded machine is mostly spin-waiting.

PostgreSQL: the server on 127.0.0.1:5432 (user postgres); the bench creates and drops
its own databases. Noisy when other work runs.

    uv run python bench/gallery_search.py [--backend sqlite,postgres] [--sizes 10000,100000] [--dim 128]
        [--queries 200] [--encrypted] [--visibility 200] [--enrol 1000]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy is imported: see the docstring

# ruff: noqa: E402
import argparse
import multiprocessing as mp
import secrets
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from facewarden.storage.gallery import SqliteGallery
from facewarden.storage.gallery.sealing import vec_aad

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKEND_128 = "dlib-resnet-v1"


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# -- databases ----------------------------------------------------------------------------------
def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(sql)


class PgPlace:
    def __init__(self) -> None:
        self.name = f"fwbench_{uuid.uuid4().hex[:10]}"
        _admin(f'CREATE DATABASE "{self.name}"')
        _admin(f'CREATE DATABASE "{self.name}_keys"')
        self.url = f"postgresql://postgres@127.0.0.1:5432/{self.name}"
        self.keys_url = self.url + "_keys"

    def drop(self) -> None:
        for db in (self.name, self.name + "_keys"):
            _admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def open_pg(place: PgPlace, key: bytes):
    from facewarden.storage.gallery.postgres import PostgresGallery

    return PostgresGallery(place.url, key, keys_url=place.keys_url)


# -- bulk fill (sealed like add_embedding; one transaction) -------------------------------------
def fill_sqlite(g: SqliteGallery, vecs: np.ndarray, backend: str) -> None:
    now = time.time()
    conn = g._db()
    conn.execute("BEGIN IMMEDIATE")
    subjects = [f"subject-{i // 5:06d}" for i in range(len(vecs))]
    deks = {}
    for s in dict.fromkeys(subjects):
        dek = None
        if g._keys.enabled:
            dek, wrapped = g._keys.new_data_key()
            conn.execute("INSERT INTO subject_keys(kid, wrapped, created) VALUES (?,?,?)", (dek.kid, wrapped, now))
        deks[s] = dek
        conn.execute("INSERT INTO subjects(id, name, consent, created, retain_until, key_id) VALUES (?,?,?,?,?,?)",
                     (s, None, None, now, None, dek.kid if dek else None))
    rows = []
    for i, (s, v) in enumerate(zip(subjects, vecs, strict=True)):
        sha = f"{i:064x}"
        rows.append((s, backend, v.size, g._keys.seal(v.tobytes(), vec_aad(s, backend, sha), deks[s]), sha, None, now))
    conn.executemany("INSERT INTO embeddings(subject, backend, dim, vector, photo_sha256, source_key, created)"
                     " VALUES (?,?,?,?,?,?,?)", rows)
    conn.execute("INSERT INTO meta(key, value) VALUES ('generation', '1') ON CONFLICT(key) "
                 "DO UPDATE SET value = CAST(value AS INTEGER) + 1")
    conn.execute("COMMIT")


def fill_pg(g, vecs: np.ndarray, backend: str) -> None:
    now = time.time()
    subjects = [f"subject-{i // 5:06d}" for i in range(len(vecs))]
    deks = {}
    kdb, db = g._kdb(), g._db()
    with kdb.cursor() as cur, cur.copy("COPY subject_keys(kid, wrapped, created) FROM STDIN") as copy:
        for s in dict.fromkeys(subjects):
            dek, wrapped = g._keys.new_data_key()
            deks[s] = dek
            copy.write_row((dek.kid, wrapped, now))
    with db.transaction():
        (gen,) = db.execute("UPDATE gallery_generation SET gen = gen + 1 WHERE id = 1 RETURNING gen").fetchone()
        with db.cursor() as cur:
            with cur.copy("COPY subjects(id, key_id, created) FROM STDIN") as copy:
                for s, dek in deks.items():
                    copy.write_row((s, dek.kid, now))
            with cur.copy("COPY embeddings(subject, backend, dim, vector, photo_sha256, created, gen) FROM STDIN"
                          ) as copy:
                for i, (s, v) in enumerate(zip(subjects, vecs, strict=True)):
                    sha = f"{i:064x}"
                    copy.write_row((s, backend, v.size, g._keys.seal(v.tobytes(), vec_aad(s, backend, sha), deks[s]),
                                    sha, now, gen))


# -- 1. search -----------------------------------------------------------------------------------
def bench_search(kind: str, n: int, dim: int, queries: int, encrypted: bool, rng: np.random.Generator) -> None:
    backend = BACKEND_128 if dim == 128 else "facenet-20180408"
    vecs = _unit(rng, n, dim)
    q = _unit(rng, queries, dim)
    key = secrets.token_bytes(32) if encrypted or kind == "postgres" else None
    with tempfile.TemporaryDirectory() as tmp:
        place = PgPlace() if kind == "postgres" else None
        try:
            g = open_pg(place, key) if place else SqliteGallery(Path(tmp) / "state", key)
            t = time.perf_counter()
            (fill_pg if place else fill_sqlite)(g, vecs, backend)
            fill_s = time.perf_counter() - t
            if place:  # a host that starts after the fill: its first search loads the index
                g.close()
                g = open_pg(place, key)
            t = time.perf_counter()
            g.nearest(backend, q[0])
            load_ms = (time.perf_counter() - t) * 1000
            times = []
            for v in q:
                t = time.perf_counter()
                g.nearest(backend, v, k=1)
                times.append((time.perf_counter() - t) * 1000)
            t_arr = np.asarray(times)
            print(f"search  {kind:8} {n:>7} embeddings ({n // 5} subjects, dim {dim}"
                  f"{', encrypted' if key else ''}): p50 {np.percentile(t_arr, 50):.2f} ms  "
                  f"p95 {np.percentile(t_arr, 95):.2f} ms | first call (load index) {load_ms:.0f} ms "
                  f"| bulk insert {fill_s:.1f} s", flush=True)
            g.close()
        finally:
            if place:
                place.drop()


# -- 2. visibility -------------------------------------------------------------------------------
def _observer(url: str, keys_url: str, key: bytes, pending_q, seen_q, ready) -> None:
    _quiet()
    from facewarden.storage.gallery.postgres import PostgresGallery

    g = PostgresGallery(url, key, keys_url=keys_url)
    g.nearest(BACKEND_128, np.zeros(128, np.float32))  # loads the index, starts listening
    ready.set()
    pending: dict[str, np.ndarray] = {}
    while True:
        while not pending_q.empty() or not pending:
            item = pending_q.get()
            if item is None:
                g.close()
                return
            pending[item[0]] = item[1]
        ids = list(pending)
        found = g.nearest(BACKEND_128, np.stack([pending[i] for i in ids]))
        now = time.time()
        for sid, m in zip(ids, found, strict=True):
            if m and m[0].subject == sid and m[0].distance < 1e-2:
                seen_q.put((sid, now))
                del pending[sid]
        time.sleep(0.002)


def bench_visibility(count: int, background: int, rng: np.random.Generator) -> None:
    place = PgPlace()
    key = secrets.token_bytes(32)
    ctx = mp.get_context("spawn")
    try:
        g = open_pg(place, key)
        fill_pg(g, _unit(rng, background, 128), BACKEND_128)
        pending_q, seen_q, ready = ctx.Queue(), ctx.Queue(), ctx.Event()
        obs = ctx.Process(target=_observer, args=(place.url, place.keys_url, key, pending_q, seen_q, ready))
        obs.start()
        ready.wait(300)
        vecs = _unit(rng, count, 128)
        committed = {}
        for i, v in enumerate(vecs):
            sid = f"vis-{i:05d}"
            pending_q.put((sid, v))  # B starts looking before A writes
            time.sleep(0.02)
            g.add_embedding(sid, BACKEND_128, v, photo_sha256=f"{i:064x}")
            committed[sid] = time.time()
        lat = []
        deadline = time.monotonic() + 30
        while len(lat) < count and time.monotonic() < deadline:
            sid, seen = seen_q.get(timeout=30)
            lat.append(max(0.0, seen - committed.get(sid, seen)) * 1000)
        pending_q.put(None)
        obs.join(30)
        g.close()
        arr = np.asarray(lat)
        print(f"visible postgres {len(lat)}/{count} enrolments seen on host B (gallery of {background} rows): "
              f"p50 {np.percentile(arr, 50):.1f} ms  p95 {np.percentile(arr, 95):.1f} ms  max {arr.max():.1f} ms",
              flush=True)
    finally:
        place.drop()


# -- 3. concurrent enrolment ---------------------------------------------------------------------
def _enrol_host(url: str, keys_url: str, key: bytes, host: int, count: int, threads: int, subjects: int,
                seed: int, out_q) -> None:
    _quiet()
    from facewarden.storage.gallery.postgres import PostgresGallery

    g = PostgresGallery(url, key, keys_url=keys_url)
    vecs = _unit(np.random.default_rng(seed), 2 * count, 128)
    errors: list[str] = []
    added = [0]
    lock = threading.Lock()

    def work(t: int) -> None:
        for i in range(host * count + t, (host + 1) * count, threads):
            try:
                for _ in range(2):  # the second is a retried job: must add nothing
                    if g.add_embedding(f"p{i % subjects:04d}", BACKEND_128, vecs[i], photo_sha256=f"{i:064x}"):
                        with lock:
                            added[0] += 1
            except Exception as exc:  # noqa: BLE001 - reported
                errors.append(type(exc).__name__)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out_q.put((host, added[0], errors, time.perf_counter() - t0))
    g.close()


def _check_index(url: str, keys_url: str, key: bytes, count: int, subjects: int, seed: int, out_q) -> None:
    _quiet()
    from facewarden.storage.gallery.postgres import PostgresGallery

    g = PostgresGallery(url, key, keys_url=keys_url)
    vecs = _unit(np.random.default_rng(seed), 2 * count, 128)
    found = g.nearest(BACKEND_128, vecs)
    wrong = sum(1 for i, m in enumerate(found) if not m or m[0].subject != f"p{i % subjects:04d}"
                or m[0].distance > 1e-2)
    out_q.put(wrong)
    g.close()


def bench_concurrent(count: int, threads: int = 4, subjects: int = 300, seed: int = 42) -> None:
    place = PgPlace()
    key = secrets.token_bytes(32)
    ctx = mp.get_context("spawn")
    try:
        open_pg(place, key).close()  # schema
        out_q = ctx.Queue()
        procs = [ctx.Process(target=_enrol_host, args=(place.url, place.keys_url, key, h, count, threads, subjects,
                                                       seed, out_q)) for h in (0, 1)]
        for p in procs:
            p.start()
        results = []
        while len(results) < len(procs):
            try:
                results.append(out_q.get(timeout=5))
            except Exception:  # noqa: BLE001 - queue.Empty: is a host dead?
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError("an enrolling host died") from None
        for p in procs:
            p.join(60)
        g = open_pg(place, key)
        vecs = _unit(np.random.default_rng(seed), 2 * count, 128)
        lost = dup = wrong = 0
        total = g.count()
        for s in range(subjects):
            want = {f"{i:064x}": vecs[i] for i in range(s, 2 * count, subjects)}
            got = g.export(f"p{s:04d}")["embeddings"] if want else []
            shas = [e["photo_sha256"] for e in got]
            dup += len(shas) - len(set(shas))
            lost += len(set(want) - set(shas))
            wrong += sum(1 for e in got if e["photo_sha256"] not in want
                         or not np.array_equal(np.float32(e["vector"]), want[e["photo_sha256"]]))
        g.close()
        idx_q = ctx.Queue()
        checkers = [ctx.Process(target=_check_index, args=(place.url, place.keys_url, key, count, subjects, seed,
                                                           idx_q)) for _ in (0, 1)]
        for p in checkers:
            p.start()
        idx_wrong = [idx_q.get(timeout=600) for _ in checkers]
        for p in checkers:
            p.join(60)
        errors = [e for r in results for e in r[2]]
        print(f"enrol   postgres 2 hosts x {count} enrolments ({threads} threads each, {subjects} shared subject ids, "
              f"each photo sent twice): rows {total} (expected {2 * count}), added {sum(r[1] for r in results)}, "
              f"lost {lost}, duplicated {dup}, mis-attributed {wrong}, errors {len(errors)}; "
              f"index misses per host {idx_wrong}; {2 * count / max(r[3] for r in results):.0f} enrolments/s "
              f"while both hosts ran", flush=True)
    finally:
        place.drop()


def _quiet() -> None:
    """Gallery info lines (one per enrolment) would drown the figures."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def main() -> None:
    _quiet()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="sqlite,postgres")
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--encrypted", action="store_true", help="SQLite with a key (PostgreSQL always has one)")
    ap.add_argument("--visibility", type=int, default=200, help="enrolments timed for cross-host visibility (0: skip)")
    ap.add_argument("--visibility-size", type=int, default=100_000)
    ap.add_argument("--enrol", type=int, default=1000, help="enrolments per host in the concurrency run (0: skip)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    kinds = args.backend.split(",")
    for kind in kinds:
        for n in (int(s) for s in args.sizes.split(",")):
            bench_search(kind, n, args.dim, args.queries, args.encrypted, rng)
    if "postgres" in kinds and args.visibility:
        bench_visibility(args.visibility, args.visibility_size, rng)
    if "postgres" in kinds and args.enrol:
        bench_concurrent(args.enrol)


if __name__ == "__main__":
    main()
