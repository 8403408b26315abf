"""The `facewarden` command: help for everything, `process` exit status and output lines,
`models verify` on a damaged models directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from facewarden.cli import cli

REPO = Path(__file__).resolve().parents[1]


Found = list[tuple[tuple[str, ...], click.Command]]


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Found:
    found = [(path, group)]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            found += _commands(cmd, (*path, name))
        else:
            found.append(((*path, name), cmd))
    return found


ALL = _commands(cli)


def test_the_expected_commands_exist():
    names = {" ".join(p) for p, _ in ALL}
    assert {"run", "process", "models", "models install", "models verify", "models list", "audit",
            "audit verify", "audit show", "config"} <= names


def _id(value: object) -> str:
    return " ".join(value) or "facewarden" if isinstance(value, tuple) else ""


@pytest.mark.parametrize(("path", "command"), ALL, ids=_id)
def test_help_mentions_every_option(path: tuple[str, ...], command: click.Command):
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    for param in command.params:
        if isinstance(param, click.Option):
            if param.hidden:
                continue
            for opt in param.opts:
                assert opt in result.output, f"{' '.join(path)} --help does not mention {opt}"
            assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"
        else:
            assert param.human_readable_name.upper() in result.output
    if command.help:
        assert command.help.split("\n")[0][:30] in result.output


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "facewarden" in result.output


# -- process -----------------------------------------------------------------------------
def _facewarden(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEWARDEN_")}
    cmd = [sys.executable, "-c", "from facewarden.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=cwd)


@pytest.mark.slow
def test_process_exit_status_and_one_line_per_input(data_dir: Path, models_dir: Path, tmp: Path):
    photos = sorted((data_dir / "faces-pascal").glob("*.jpg"))[:2]
    good = tmp / "good"
    good.mkdir()
    for p in photos:
        shutil.copy(p, good / p.name)
    state = tmp / "state"
    ok = _facewarden("process", str(good), "--out", str(tmp / "out"), "--state", str(state),
                     "--models-dir", str(models_dir))
    assert ok.returncode == 0, ok.stdout + ok.stderr[-2000:]
    lines = ok.stdout.strip().splitlines()
    assert len(lines) == 3 and all(": ok -> " in line for line in lines[:2]), lines
    assert lines[2].startswith("2/2 inputs: 2 ok"), lines  # the summary
    for p in photos:
        assert (tmp / "out" / p.name).exists() and (tmp / "out" / (p.name + ".audit.json")).exists()

    bad = tmp / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_text("not a photo\n")
    (bad / "cut.jpg").write_bytes(photos[0].read_bytes()[:4000])
    fresh = tmp / "fresh.jpg"
    shutil.copy(sorted((data_dir / "faces-pascal").glob("*.jpg"))[2], fresh)
    inputs = [str(bad / n) for n in ("empty.jpg", "notes.jpg", "cut.jpg")] + [str(fresh)]
    mixed = _facewarden("process", *inputs, "--out", str(tmp / "out2"), "--state", str(state),
                        "--models-dir", str(models_dir))
    assert mixed.returncode != 0
    lines = mixed.stdout.strip().splitlines()
    assert len(lines) == 6, lines  # 4 inputs, the summary, the failure reasons
    assert lines[-1] == "failed: input.empty ×1, input.not_an_image ×1, input.truncated ×1", lines
    expected = {"empty.jpg": "input.empty", "notes.jpg": "input.not_an_image",
                "cut.jpg": "input.truncated"}
    for name, code in expected.items():
        (line,) = [x for x in lines if x.startswith(str(bad / name) + ":")]
        assert f"rejected [{code}]" in line, line
    assert any(x.startswith(f"{fresh}: ok -> ") for x in lines), lines
    assert not (tmp / "out2" / "empty.jpg").exists()  # fail closed: nothing for rejected inputs
    assert (state / "quarantine").exists()


def test_process_needs_inputs(tmp: Path):
    result = CliRunner().invoke(cli, ["process", "--out", str(tmp)])
    assert result.exit_code == 2 and "INPUTS" in result.output


def test_process_with_invalid_params_fails_once_and_touches_nothing(data_dir: Path, tmp: Path):
    photo = sorted((data_dir / "faces-pascal").glob("*.jpg"))[0]
    result = CliRunner().invoke(cli, ["process", str(photo), "--out", str(tmp / "out"), "--state", str(tmp / "state"),
                                      "--param", "mode=bogus"])
    assert result.exit_code == 2
    assert "params.invalid" in result.output and "mode" in result.output
    assert not (tmp / "out").exists() and not (tmp / "state" / "quarantine").exists()


# -- models verify -----------------------------------------------------------------------
def test_models_verify_on_a_corrupted_copy(models_dir: Path, tmp: Path):
    copy = tmp / "models"
    shutil.copytree(models_dir, copy)
    intact = CliRunner().invoke(cli, ["models", "verify", "--models-dir", str(copy)])
    assert intact.exit_code == 0, intact.output

    victim = max((p for p in copy.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    broken = CliRunner().invoke(cli, ["models", "verify", "--models-dir", str(copy)])
    assert broken.exit_code != 0
    (line,) = [x for x in broken.output.splitlines() if x.startswith("FAILED")]
    assert victim.parent.name in line and "model.corrupt" in line
    assert "facewarden models install" in line

    shutil.rmtree(victim.parent)
    missing = CliRunner().invoke(cli, ["models", "verify", "--models-dir", str(copy)])
    assert missing.exit_code != 0
    assert "model.missing" in missing.output and "facewarden models install" in missing.output


def test_models_list(models_dir: Path):
    result = CliRunner().invoke(cli, ["models", "list", "--models-dir", str(models_dir)])
    assert result.exit_code == 0
    assert "missing" not in result.output and "installed" in result.output


def test_config_command_reports_errors(tmp: Path):
    bad = tmp / "bad.toml"
    bad.write_text("[workers]\ncuont = 1\n")
    result = CliRunner().invoke(cli, ["config", "--config", str(bad)])
    assert result.exit_code == 78 and "workers.cuont" in result.output


def test_a_broken_subcommand_module_fails_loudly(monkeypatch: pytest.MonkeyPatch):
    """cli used to swallow ImportErrors of `subjects` and `worker`: the commands vanished
    from --help without a word. Now the import error reaches the user."""
    import importlib

    import facewarden.cli as cli_pkg

    monkeypatch.setitem(sys.modules, "facewarden.cli.worker", None)  # makes `import` raise ImportError
    with pytest.raises(ImportError):
        importlib.reload(cli_pkg)
    monkeypatch.undo()
    importlib.reload(cli_pkg)
    assert "worker" in cli_pkg.cli.commands


def test_parse_options_reads_json_values_and_refuses_junk():
    from facewarden.cli.common import parse_options

    assert parse_options(("blur=25", "mode=pixelate", "boxes=[1,2]")) == {"blur": 25, "mode": "pixelate",
                                                                           "boxes": [1, 2]}
    with pytest.raises(click.BadParameter):
        parse_options(("novalue",))
