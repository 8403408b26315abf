"""`facewarden process`: a batch over files and folders, through the daemon's pipeline."""

from __future__ import annotations

import collections
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from facewarden.cli.common import CONFIG_FILE, CONFIG_HELP, DIR, MODELS_HELP, STATE_HELP, fail, parse_options
from facewarden.errors import FacewardenError
from facewarden.exitcodes import EX_FAILED, EX_OK


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--handler", default="anonymize", show_default=True,
              help="Handler to run on every input (`facewarden handlers` lists them and their params).")
@click.option("--out", type=DIR,
              help="Folder for results and their audit records; each input's path below the common parent "
                   "of the arguments is kept. Default: beside each input, as NAME_anonymized.EXT "
                   "(the handler's name for other handlers).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing output whose content differs (refused by default).")
@click.option("--force", is_flag=True, help="Process again even when the output already holds this result.")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: one per core for batches of 8 or more, else 1).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per input on stdout (the summary goes to stderr).")
@click.option("--quiet", "-q", is_flag=True, help="Only the summary and failed inputs.")
@click.option("--state", type=DIR, help=STATE_HELP)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Handler parameter, e.g. --param mode=pixelate; repeatable; values are JSON when they parse.")
@click.option("--config", type=CONFIG_FILE, help=CONFIG_HELP)
@click.option("--models-dir", type=DIR, help=MODELS_HELP)
def process(inputs: tuple[Path, ...], handler: str, out: Path | None, overwrite: bool, force: bool,
            workers: int | None, as_json: bool, quiet: bool, state: Path | None, params: tuple[str, ...],
            config: Path | None, models_dir: Path | None) -> None:
    """Process FILES and FOLDERS (recursively) once, through the same pipeline, audit log
    and quarantine as the daemon. Originals are never modified.

    Prints one line per input (or JSON with --json), a progress bar on a terminal, and a
    summary. Exit codes: 0 every input succeeded (or was already done); 1 at least one was
    rejected or quarantined; 2 usage error (bad flag or param, output would replace an
    input); 78 configuration error or missing models (run `facewarden models install`)."""
    from facewarden.config import settings_from_flags
    from facewarden.daemon.logs import configure_logging
    from facewarden.daemon.oneshot import describe, plan_jobs, run_batch

    try:
        settings = settings_from_flags(config, state=state, models_dir=models_dir)
        configure_logging(settings.log.format, "warning")
        plan, jobs, refused = plan_jobs(settings, list(inputs), out, handler, parse_options(params),
                                        replace="always" if overwrite else "never", force=force)
        if not jobs and not refused:
            click.echo(f"no input files under {', '.join(map(str, inputs))}", err=True)
        # Default: one worker per core, but a worker process costs a model load (~1 s), so
        # small batches stay in this process.
        count = workers or max(1, min(len(os.sched_getaffinity(0)), len(jobs) // 4))
        started = time.perf_counter()
        summary = _Summary(len(jobs) + len(refused))
        show_bar = sys.stderr.isatty() and not as_json and len(jobs) > 1
        items = run_batch(plan, jobs, workers=count)
        bar = click.progressbar(length=len(jobs), label=f"{handler} ×{min(count, max(1, len(jobs)))}",
                                file=sys.stderr, show_pos=True, show_eta=True) if show_bar else None
        for item in refused:
            summary.add(item)
            _emit(item, as_json, quiet, describe, bar)
        try:
            for item in items:
                summary.add(item)
                _emit(item, as_json, quiet, describe, bar)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.render_finish()
    except FacewardenError as err:
        fail(err)
    except KeyboardInterrupt:
        click.echo("interrupted: inputs not reported above were not processed; run the same command again "
                   "to finish (done ones are recognised)", err=True)
        sys.exit(130)
    text = summary.render(time.perf_counter() - started)
    click.echo(text, err=as_json)
    sys.exit(EX_FAILED if summary.failed else EX_OK)


def _emit(item: Any, as_json: bool, quiet: bool, describe: Any, bar: Any) -> None:
    if as_json:
        click.echo(json.dumps({"input": str(item.path), "outcome": item.outcome, "outputs": item.outputs,
                               "reason": item.reason, "faces": item.faces, "copy_of": item.copy_of,
                               "record": item.record, "seconds": round(item.seconds, 3)}))
        return
    if quiet and item.succeeded:
        return
    line = describe(item)
    if bar is not None:
        click.echo("\r\033[K" + line, err=False)
    else:
        click.echo(line)


class _Summary:
    def __init__(self, total: int) -> None:
        self.total = total
        self.counts: collections.Counter[str] = collections.Counter()
        self.reasons: collections.Counter[str] = collections.Counter()
        self.faces = 0
        self.failed = 0

    def add(self, item: Any) -> None:
        self.counts[item.outcome] += 1
        self.faces += item.faces or 0
        if not item.succeeded:
            self.failed += 1
            self.reasons[(item.reason or {}).get("code") or "unknown"] += 1

    def render(self, seconds: float) -> str:
        done = sum(self.counts.values())
        rate = done / seconds if seconds > 0 else 0.0
        parts = [f"{self.counts['ok']} ok", f"{self.counts['duplicate']} already done",
                 f"{self.counts['rejected']} rejected", f"{self.counts['quarantined']} quarantined"]
        text = (f"{done}/{self.total} inputs: {', '.join(parts)}; {self.faces} faces; "
                f"{seconds:.1f} s, {rate:.2f} images/s")
        if self.reasons:
            text += "\nfailed: " + ", ".join(f"{code} ×{n}" for code, n in self.reasons.most_common())
        return text
