"""Outages delay work, they never lose it: measured on real daemon processes.

Runs the scenarios of tests/faults (same code, tests/faults/scenarios.py) and prints, per
scenario: inputs, results, lost, doubled, partial objects, whether `audit verify` passed,
how long the fault lasted, the time from the end of the fault to the last result
(done_s), and when /readyz turned 503 after the fault began (503_s) and 200 after it
ended (200_s), with the checks it named. Prints, never asserts.

Targets: 0 lost, 0 doubled everywhere; done_s <= 10 s (plus processing time); 503_s and
200_s <= 5 s. The machine is shared: timings taken while other work runs are noisy.

    uv run python bench/faults.py [--only broker,s3,disk,kill,term,legacy] [--seconds 20]
                                  [--inputs 24] [--json]

Needs RabbitMQ on 127.0.0.1:5672 and root (a 3 MB tmpfs for disk full); starts moto's
S3 server in this process and a TCP fault proxy in front of RabbitMQ and S3.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from faults import scenarios  # noqa: E402
from faults.conftest import mount_tmpfs, umount  # noqa: E402
from faults.proxy import FaultProxy  # noqa: E402

GROUPS = ("broker", "s3", "disk", "kill", "term", "legacy")


def _moto() -> tuple[object, str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(GROUPS))
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each outage")
    ap.add_argument("--inputs", type=int, default=24)
    ap.add_argument("--json", action="store_true", help="also print one JSON line per scenario")
    args = ap.parse_args()
    import logging

    import structlog

    # The legacy scenario seeds quarantine records in this process: keep its logs off the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    only = set(args.only.split(","))
    base = Path(tempfile.mkdtemp(prefix="fw-faults-"))
    runs: list[tuple[str, Callable[[Path], scenarios.Report]]] = []
    cleanup: list[Callable[[], None]] = []
    n, secs = args.inputs, args.seconds

    if "broker" in only:
        for mode in ("refuse", "stall"):
            def broker(root: Path, mode: str = mode) -> scenarios.Report:
                proxy = FaultProxy(*scenarios.RABBIT)
                world = scenarios.World(root, queue="rabbitmq", broker_proxy=proxy, workers=1)
                try:
                    return scenarios.service_outage(world, proxy, mode, name=f"broker {mode} {secs:.0f}s",
                                                    inputs=n, seconds=secs)
                finally:
                    world.close()
                    proxy.close()
            runs.append((f"broker-{mode}", broker))

    if "s3" in only:
        server, endpoint = _moto()
        cleanup.append(server.stop)  # type: ignore[attr-defined]
        host, port = endpoint.removeprefix("http://").split(":")
        for mode, budget, length in (("refuse", 3600.0, secs), ("stall", 3600.0, secs),
                                     ("stall", 5.0, max(secs, 15.0))):
            def s3(root: Path, mode: str = mode, budget: float = budget, length: float = length) -> scenarios.Report:
                urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).read()
                proxy = FaultProxy(host, int(port))
                world = scenarios.S3World(root, moto=endpoint, s3_proxy=proxy, workers=1, retry_budget=budget)
                name = f"S3 {mode} {length:.0f}s" + (f" (budget {budget:.0f}s)" if budget < 3600 else "")
                try:
                    return scenarios.service_outage(world, proxy, mode, name=name, inputs=n, seconds=length)
                finally:
                    world.close()
                    proxy.close()
            runs.append((f"s3-{mode}-{budget:.0f}", s3))

    if "disk" in only:
        def disk(root: Path) -> scenarios.Report:
            out = root / "small"
            mount_tmpfs(out)
            world = scenarios.World(root, out_dir=out)
            try:
                return scenarios.disk_full(world, seconds=secs)
            finally:
                world.close()
                umount(out)
        runs.append(("disk", disk))

    if "kill" in only:
        def kill(root: Path) -> scenarios.Report:
            world = scenarios.World(root)
            try:
                return scenarios.worker_sigkill(world, inputs=n)
            finally:
                world.close()
        runs.append(("kill", kill))

    if "term" in only:
        def term(root: Path) -> scenarios.Report:
            world = scenarios.World(root)
            try:
                return scenarios.sigterm_mid_burst(world, inputs=n)
            finally:
                world.close()
        runs.append(("term", term))

    if "legacy" in only:
        def legacy(root: Path) -> scenarios.Report:
            world = scenarios.World(root, originals="delete")
            try:
                return scenarios.legacy_quarantine(world)
            finally:
                world.close()
        runs.append(("legacy", legacy))

    reports = []
    print(scenarios.HEADER, flush=True)
    try:
        for name, run in runs:
            root = base / name
            root.mkdir()
            try:
                rep = run(root)
            except Exception as exc:  # noqa: BLE001 - a broken scenario is a row, not a crash
                rep = scenarios.Report(name, notes=[f"FAILED: {type(exc).__name__}: {str(exc)[:200]}"])
            reports.append(rep)
            print(scenarios.format_report(rep), flush=True)
            if args.json:
                print(scenarios.as_json(rep), flush=True)
    finally:
        for fn in cleanup:
            fn()
    lost = sum(r.lost for r in reports)
    doubled = sum(r.doubled for r in reports)
    print(f"\ntotal: {sum(r.inputs for r in reports)} inputs, {lost} lost, {doubled} doubled; "
          "done_s = end of fault -> last result (kill/term/legacy: from the kill/restart); "
          "503_s/200_s = /readyz flip after the fault began/ended")
    print(f"logs and state under {base}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
