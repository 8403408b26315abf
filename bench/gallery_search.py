"""Gallery search latency at 10k and 100k embeddings (random unit vectors).

Goes through the real ``Gallery``: rows are inserted into a fresh SQLite gallery in a temp
dir (one transaction, through the gallery's own connection: the per-row commit path of
``add_embedding`` fsyncs each row, which is right for enrolment and pointless here), then
``Gallery.nearest`` is timed for one query at a time, as a check-in photo's face would be.
The first call loads (and, with ``--encrypted``, decrypts) the matrix; it is reported apart
from the steady-state figure. 5 embeddings per subject. Noisy when other work runs.

    uv run python bench/gallery_search.py [--sizes 10000,100000] [--dim 128] [--queries 200] [--encrypted]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from facewarden.storage.gallery import Gallery, generate_key_file, read_key_file


def fill(g: Gallery, n: int, dim: int, backend: str, rng: np.random.Generator) -> None:
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    now = time.time()
    conn = g._db()
    conn.execute("BEGIN IMMEDIATE")
    subjects = [f"subject-{i // 5:06d}" for i in range(n)]
    conn.executemany("INSERT OR IGNORE INTO subjects(id, name, consent, created, retain_until) VALUES (?,?,?,?,?)",
                     [(s, None, None, now, None) for s in dict.fromkeys(subjects)])
    rows = []
    for i, (s, v) in enumerate(zip(subjects, vecs, strict=True)):
        sha = f"{i:064x}"
        rows.append((s, backend, dim, g._sealer.seal(v.tobytes(), g._vec_aad(s, backend, sha)), sha, None, now))
    conn.executemany("INSERT INTO embeddings(subject, backend, dim, vector, photo_sha256, source_key, created)"
                     " VALUES (?,?,?,?,?,?,?)", rows)
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    conn.execute("COMMIT")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--encrypted", action="store_true", help="AES-GCM gallery (costs only at matrix load)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    backend = "dlib-resnet-v1" if args.dim == 128 else "facenet-20180408"
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            key = None
            if args.encrypted:
                generate_key_file(Path(tmp) / "key")
                key = read_key_file(Path(tmp) / "key")
            g = Gallery(Path(tmp) / "state", key)
            t = time.perf_counter()
            fill(g, n, args.dim, backend, rng)
            fill_s = time.perf_counter() - t
            q = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            t = time.perf_counter()
            g.nearest(backend, q[0])
            load_ms = (time.perf_counter() - t) * 1000
            times = []
            for v in q:
                t = time.perf_counter()
                g.nearest(backend, v, k=1)
                times.append((time.perf_counter() - t) * 1000)
            t_arr = np.asarray(times)
            print(f"{n:>7} embeddings ({n // 5} subjects, dim {args.dim}{', encrypted' if key else ''}): "
                  f"search p50 {np.percentile(t_arr, 50):.2f} ms  p95 {np.percentile(t_arr, 95):.2f} ms  "
                  f"| first call (load matrix) {load_ms:.0f} ms | insert {fill_s:.1f} s")
            g.close()


if __name__ == "__main__":
    main()
