"""Issue 9 (items 4 and 5, config parts of 1 and 2): strict per-type source options,
secrets that never show, stable state/models dirs, exit code 78, and outputs that can
never be fed back in as inputs. Every reproduction from the issue is a test here."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from facewarden import exitcodes
from facewarden.cli import cli
from facewarden.config import dump_for_child, load_settings, parse_source, settings_from_flags
from facewarden.config.load import _deep_merge
from facewarden.config.schema import Settings
from facewarden.errors import ConfigError, ModelError

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-hmac-key-0123456789abcdef"
TOKEN = "tok-abcdefghijklmnopqrstuvwxyz012"
MINIO_KEY = "minio-secret-key-ABCDEFGH"


def _load(tmp: Path, text: str, environ: dict[str, str] | None = None) -> Settings:
    path = tmp / "fw.toml"
    path.write_text(text)
    return load_settings(path, environ=environ or {})


def _error(tmp: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as exc:
        _load(tmp, text, environ)
    return exc.value.message


S3_STORES = """
[stores.raw]
type = "s3"
bucket = "raw-images"
endpoint_url = "http://127.0.0.1:9000"

[stores.anonymized]
type = "s3"
bucket = "anonymized-images"
endpoint_url = "http://127.0.0.1:9000"
"""


# -- strict options, typos named with the nearest key ----------------------------------------
@pytest.mark.parametrize(("source", "typo", "meant"), [
    ('type = "s3-sqs"\nname = "s3"\nstores = ["raw"]\nqueue_url = "http://q"', "queue_urll", "queue_url"),
    ('type = "folder"\nname = "inbox"\nstore = "inbox"', "poll_intervall", "poll_interval"),
    (f'type = "dms-webhook"\nname = "dms"\nstore = "raw"\nsecret = "{SECRET}"', "replay_windw", "replay_window"),
    ('type = "s3-amqp"\nname = "amqp"\nstores = ["raw"]', "exchnage", "exchange"),
    (f'type = "s3-webhook"\nname = "hook"\nstores = ["raw"]\ntoken = "{TOKEN}"', "max_body_byte", "max_body_bytes"),
    ('type = "minio-listen"\nname = "listen"\nstores = ["raw"]', "read_timout", "read_timeout"),
    ('type = "reconcile"\nname = "rec"\nstore = "raw"', "intervall", "interval"),
    ('type = "amqp-jobs"\nname = "jobs"', "prefech", "prefetch"),
])
def test_unknown_key_in_any_source_type_names_path_and_nearest_key(tmp: Path, source: str, typo: str,
                                                                   meant: str):
    stores = S3_STORES + f'\n[stores.inbox]\nroot = "{tmp}/in"\n'
    name = source.split('name = "')[1].split('"')[0]
    msg = _error(tmp, f"{stores}\n[[sources]]\n{source}\n{typo} = 1\n")
    assert f"sources[{name}].{typo}: unknown key; did you mean {meant}?" in msg


def test_unknown_source_type_suggests_the_known_one(tmp: Path):
    msg = _error(tmp, S3_STORES + '\n[[sources]]\ntype = "s3-sqss"\nname = "s3"\n')
    assert "sources[s3].type: unknown type 's3-sqss'; did you mean s3-sqs?" in msg


def test_folder_source_typo_is_a_clean_config_error_exit_78(tmp: Path):
    """Was: AttributeError: 'GenericSourceConfig' object has no attribute 'mode', then a hang."""
    cfg = tmp / "fw.toml"
    cfg.write_text(f'state_dir = "{tmp}/state"\n[stores.in]\nroot = "{tmp}/in"\n[stores.out]\nroot = "{tmp}/out"\n'
                   '[[sources]]\ntype = "folder"\nname = "in"\nstore = "in"\nmoed = "poll"\n'
                   '[[routes]]\nsource = "in"\ntarget = "out"\n')
    result = CliRunner().invoke(cli, ["run", "--config", str(cfg)])
    assert result.exit_code == exitcodes.CONFIG == 78
    assert "sources[in].moed: unknown key; did you mean mode?" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, AttributeError)


def test_config_command_exits_78_with_one_clear_line(tmp: Path):
    bad = tmp / "bad.toml"
    bad.write_text("[workers]\ncuont = 1\n")
    result = CliRunner().invoke(cli, ["config", "--config", str(bad)])
    assert result.exit_code == 78
    assert result.output.splitlines()[0].startswith("error [config.invalid]")
    assert "workers.cuont: unknown key; did you mean count?" in result.output


def test_exit_codes_in_one_place():
    assert exitcodes.for_error(ConfigError("config.invalid", "x")) == 78
    assert exitcodes.for_error(ModelError("model.missing", "x")) == 78
    from facewarden.errors import FacewardenError, InputRejected

    assert exitcodes.for_error(FacewardenError("config.no_sources", "x")) == 78
    assert exitcodes.for_error(InputRejected("params.invalid", "x")) == exitcodes.USAGE
    assert exitcodes.for_error(RuntimeError("bug")) == exitcodes.SOFTWARE
    unit = (REPO / "systemd" / "facewarden.service").read_text()
    assert f"RestartPreventExitStatus={exitcodes.CONFIG}" in unit


# -- environment variables -------------------------------------------------------------------
def test_env_errors_name_the_variable(tmp: Path):
    msg = _error(tmp, "", {"FACEWARDEN_WORKERS__COUNT": "many", "FACEWARDEN_LIMITS__MAX_PIXEL": "5"})
    assert "workers.count:" in msg and "(from FACEWARDEN_WORKERS__COUNT)" in msg
    assert "limits.max_pixel: unknown key; did you mean max_pixels? (from FACEWARDEN_LIMITS__MAX_PIXEL)" in msg


def test_env_addresses_a_source_by_name(tmp: Path):
    text = S3_STORES + f'\n[[sources]]\ntype = "dms-webhook"\nname = "dms"\nstore = "raw"\nsecret = "{SECRET}"\n'
    s = _load(tmp, text, {"FACEWARDEN_SOURCES__DMS__REPLAY_WINDOW": "60"})
    assert s.sources[0].replay_window == 60
    msg = _error(tmp, text, {"FACEWARDEN_SOURCES__DMS__REPLAY_WINDW": "60"})
    assert "sources[dms].replay_windw: unknown key; did you mean replay_window?" in msg
    assert "FACEWARDEN_SOURCES__DMS__REPLAY_WINDW" in msg
    msg = _error(tmp, text, {"FACEWARDEN_SOURCES__NOPE__REPLAY_WINDOW": "60"})
    assert "nope" in msg and "FACEWARDEN_SOURCES__NOPE" in msg


# -- secrets -------------------------------------------------------------------------------
SECRETS_CONFIG = S3_STORES + f"""
[queue.rabbitmq]
url = "amqp://admin:hunter2@127.0.0.1:5672/%2F"

[[sources]]
type = "dms-webhook"
name = "dms"
store = "raw"
secret = "{SECRET}"

[[sources]]
type = "s3-webhook"
name = "hook"
stores = ["raw"]
token = "{TOKEN}"

[[sources]]
type = "minio-listen"
name = "listen"
stores = ["raw"]
access_key = "fw"
secret_key = "{MINIO_KEY}"

[[sources]]
type = "s3-amqp"
name = "amqp"
stores = ["raw"]
url = "amqp://minio:hunter3@127.0.0.1:5672/%2F"
"""
CLEAR = ("hunter2", "hunter3", SECRET, TOKEN, MINIO_KEY)


def test_facewarden_config_never_prints_secrets(tmp: Path):
    cfg = tmp / "fw.toml"
    cfg.write_text(SECRETS_CONFIG)
    result = CliRunner().invoke(cli, ["config", "--config", str(cfg)], env={"CREDENTIALS_DIRECTORY": None})
    assert result.exit_code == 0, result.output
    for clear in CLEAR:
        assert clear not in result.output
    shown = json.loads(result.output)
    assert shown["queue"]["rabbitmq"]["url"] == "amqp://admin:***@127.0.0.1:5672/%2F"
    assert shown["sources"][0]["secret"] == "**********"
    settings = load_settings(cfg, environ={})
    assert not any(c in repr(settings) for c in CLEAR)


def test_worker_processes_still_get_the_secrets(tmp: Path):
    settings = _load(tmp, SECRETS_CONFIG)
    child = Settings.model_validate_json(dump_for_child(settings))
    assert child.queue.rabbitmq.url == "amqp://admin:hunter2@127.0.0.1:5672/%2F"
    assert child.sources[0].secret.get_secret_value() == SECRET
    assert child.sources[2].secret_key.get_secret_value() == MINIO_KEY


def test_errors_never_show_a_secret(tmp: Path):
    short = "short-hmac"
    msg = _error(tmp, S3_STORES + '[[sources]]\ntype = "dms-webhook"\nname = "dms"\nstore = "raw"\n'
                 f'secret = "{short}"\n')
    assert "sources[dms].secret: use at least 16 random bytes" in msg and short not in msg
    msg = _error(tmp, '[queue.rabbitmq]\nurl = "amqp://admin:hunter2@h/"\nheartbeat = "x"\n')
    assert "hunter2" not in msg
    msg = _error(tmp, S3_STORES + '[[sources]]\ntype = "minio-listen"\nname = "l"\nstores = ["raw"]\n'
                 'secret_key = ["hunter4"]\n')
    assert "sources[l].secret_key" in msg and "hunter4" not in msg


def test_logs_never_show_a_secret(capsys: pytest.CaptureFixture[str]):
    import structlog

    from facewarden.daemon.logs import configure_logging

    before = structlog.get_config()
    configure_logging("json", "info")
    try:
        structlog.get_logger("t").warning("broker.unreachable", url="amqp://admin:hunter2@10.0.0.1/",
                                          token=TOKEN, detail=f"connect amqp://u:{SECRET}@h failed")
    finally:
        structlog.configure(**before)  # the logger factory holds capsys's stream
    err = capsys.readouterr().err
    assert "broker.unreachable" in err and "admin:***@" in err
    assert "hunter2" not in err and TOKEN not in err and SECRET not in err


def test_secrets_from_files_and_systemd_credentials(tmp: Path):
    (tmp / "secrets").mkdir()
    (tmp / "secrets" / "dms.secret").write_text(SECRET + "\n")
    creds = tmp / "creds"
    creds.mkdir()
    (creds / "rabbitmq-url").write_text("amqp://admin:hunter2@127.0.0.1:5672/%2F\n")
    (creds / "hook-token").write_text(TOKEN)
    text = S3_STORES + """
[queue.rabbitmq]
url_credential = "rabbitmq-url"
[[sources]]
type = "dms-webhook"
name = "dms"
store = "raw"
secret_file = "secrets/dms.secret"      # relative to this file's folder
[[sources]]
type = "s3-webhook"
name = "hook"
stores = ["raw"]
token_credential = "hook-token"
"""
    s = _load(tmp, text, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert s.queue.rabbitmq.url == "amqp://admin:hunter2@127.0.0.1:5672/%2F"
    assert s.sources[0].secret.get_secret_value() == SECRET
    assert s.sources[1].token.get_secret_value() == TOKEN
    # the environment names a file too
    s = _load(tmp, "", {"FACEWARDEN_QUEUE__RABBITMQ__URL_FILE": str(creds / "rabbitmq-url")})
    assert s.queue.rabbitmq.url.startswith("amqp://admin:hunter2@")

    msg = _error(tmp, text, {})
    assert "queue.rabbitmq.url_credential: $CREDENTIALS_DIRECTORY is not set" in msg
    msg = _error(tmp, text.replace("secrets/dms.secret", "secrets/nope"), {"CREDENTIALS_DIRECTORY": str(creds)})
    assert f"sources[dms].secret_file: cannot read {tmp}/secrets/nope" in msg
    msg = _error(tmp, '[queue.rabbitmq]\nurl = "amqp://a:b@h/"\nurl_file = "/x"\n')
    assert "queue.rabbitmq.url: give only one of url, url_file" in msg


# -- stable state and models directories ---------------------------------------------------
def test_state_and_models_default_to_xdg_dirs_never_the_current_folder(tmp: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp)
    home = tmp / "home"
    s = load_settings(None, environ={"HOME": str(home)})
    assert s.state_dir == home / ".local/state/facewarden"
    assert s.models_dir == home / ".local/share/facewarden/models"
    s = load_settings(None, environ={"HOME": str(home), "XDG_STATE_HOME": str(tmp / "st"),
                                     "XDG_DATA_HOME": str(tmp / "data")})
    assert s.state_dir == tmp / "st/facewarden" and s.models_dir == tmp / "data/facewarden/models"
    s = load_settings(None, environ={"HOME": str(home), "XDG_STATE_HOME": "relative"})
    assert s.state_dir == home / ".local/state/facewarden"  # the XDG spec: relative values are ignored
    assert not str(s.state_dir).startswith(str(tmp / "var"))


def test_relative_paths_in_a_file_resolve_against_its_folder(tmp: Path, monkeypatch: pytest.MonkeyPatch):
    conf = tmp / "etc"
    conf.mkdir()
    (conf / "fw.toml").write_text('state_dir = "var/state"\nmodels_dir = "../models"\n'
                                  '[stores.out]\nroot = "out"\n[gallery]\nkey_file = "gallery.key"\n'
                                  '[stores.s3]\ntype = "s3"\nbucket = "b"\nverify = "ca.pem"\n')
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load_settings(conf / "fw.toml", environ={})
    assert s.state_dir == conf / "var/state" and s.models_dir == tmp / "models"
    assert s.stores["out"].root == conf / "out" and s.gallery.key_file == conf / "gallery.key"
    assert s.stores["s3"].verify == str(conf / "ca.pem")
    # flags (and env) are relative to the current folder, and come out absolute
    s = settings_from_flags(conf / "fw.toml", state=Path("st"), environ={"FACEWARDEN_MODELS_DIR": "m"})
    assert s.state_dir == elsewhere / "st" and s.models_dir == elsewhere / "m"


def test_models_install_and_the_tests_agree_on_the_models_dir(models_dir: Path):
    from facewarden.config import default_models_dir

    assert models_dir == default_models_dir() == load_settings(None, environ=dict(os.environ)).models_dir


# -- outputs never overlap inputs ---------------------------------------------------------
def test_run_with_out_equal_to_watch_is_refused(tmp: Path):
    """Was: accepted; each result replaced its input and was re-anonymized 20 times in 25 s."""
    d = tmp / "same"
    with pytest.raises(ConfigError) as exc:
        settings_from_flags(None, watch=d, out=d, state=tmp / "st", environ={})
    assert "routes[0].target" in exc.value.message and f"{d}" in exc.value.message
    assert "source 'incoming' watches" in exc.value.message
    result = CliRunner().invoke(cli, ["run", "--watch", str(d), "--out", str(d), "--state", str(tmp / "st")])
    assert result.exit_code == 78 and "watches" in result.output


@pytest.mark.parametrize(("watch", "out", "how"), [("d", "d/sub", "is inside"), ("d/in", "d", "contains")])
def test_out_inside_or_containing_watch_is_refused(tmp: Path, watch: str, out: str, how: str):
    with pytest.raises(ConfigError) as exc:
        settings_from_flags(None, watch=tmp / watch, out=tmp / out, state=tmp / "st", environ={})
    assert how in exc.value.message and str(tmp / watch) in exc.value.message


def test_out_under_a_folder_the_source_ignores_is_allowed(tmp: Path):
    settings_from_flags(None, watch=tmp / "d", out=tmp / "d" / ".results", state=tmp / "st", environ={})
    base = f'state_dir = "{tmp}/st"\n[stores.in]\nroot = "{tmp}/d"\n'
    route = '[[routes]]\nsource = "in"\ntarget = "in"\nprefix = "anonymized/"\n'
    msg = _error(tmp, base + '[[sources]]\nname = "in"\nstore = "in"\n' + route)
    assert "prefix 'anonymized'" in msg or "prefix 'anonymized/'" in msg
    _load(tmp, base + '[[sources]]\nname = "in"\nstore = "in"\nignore = ["*.audit.json", "anonymized"]\n' + route)


def test_state_inside_the_watched_folder_is_refused(tmp: Path):
    with pytest.raises(ConfigError, match=r"quarantine_store.*watches"):
        settings_from_flags(None, watch=tmp / "d", out=tmp / "out", state=tmp / "d" / "state", environ={})


def test_moved_originals_into_the_watched_store_are_refused(tmp: Path):
    text = (f'state_dir = "{tmp}/st"\n[stores.in]\nroot = "{tmp}/in"\n[stores.out]\nroot = "{tmp}/out"\n'
            '[[sources]]\nname = "in"\nstore = "in"\n'
            '[[routes]]\nsource = "in"\ntarget = "out"\noriginals = "move"\nprocessed_store = "in"\n')
    assert "routes[0].processed_store" in _error(tmp, text)


S3_WATCH = S3_STORES + """
[[sources]]
type = "s3-sqs"
name = "sqs"
stores = ["raw"]
queue_url = "http://127.0.0.1:9324/q"
{extra}
[[routes]]
source = "sqs"
target = "{target}"
prefix = "{prefix}"
"""


def test_s3_results_beside_the_originals_need_a_filter(tmp: Path):
    msg = _error(tmp, S3_WATCH.format(extra="", target="raw", prefix="anonymized/"))
    assert "routes[0].target (store 'raw' prefix 'anonymized/'" in msg and "source 'sqs' watches" in msg
    assert "127.0.0.1:9000/raw-images/anonymized" in msg
    _load(tmp, S3_WATCH.format(extra='ignore = ["anonymized/*"]', target="raw", prefix="anonymized/"))
    _load(tmp, S3_WATCH.format(extra='prefixes = ["incoming/"]', target="raw", prefix="anonymized/"))
    _load(tmp, S3_WATCH.format(extra="", target="anonymized", prefix=""))
    # an extension-only glob does not ignore *everything* there (a .png result would come back)
    msg = _error(tmp, S3_WATCH.format(extra='ignore = ["anonymized/*.jpg"]', target="raw", prefix="anonymized/"))
    assert "watches" in msg
    # a store on the same bucket under a prefix is the same place
    same = S3_WATCH.format(extra="", target="out", prefix="") + \
        '\n[stores.out]\ntype = "s3"\nbucket = "raw-images"\nprefix = "results"\nendpoint_url = "http://127.0.0.1:9000"\n'
    assert "is inside" in _error(tmp, same)


def test_every_s3_source_type_has_the_filter_and_uses_it():
    from facewarden.config.sources import SOURCE_TYPES
    from facewarden.daemon.jobs import Event
    from facewarden.daemon.sources.s3_events import RecentEvents, emit_all

    for type_name in ("s3-sqs", "s3-amqp", "s3-webhook", "minio-listen", "reconcile"):
        assert "ignore" in SOURCE_TYPES[type_name].model_fields, type_name
    cfg = parse_source({"type": "s3-sqs", "name": "q", "stores": ["raw"], "queue_url": "http://q",
                        "ignore": ["*.audit.json", "anonymized/*"], "prefixes": ["in/", "anonymized/"]})
    got: list[str] = []
    events = [Event(store="raw", key=k, source="q", version="1")
              for k in ("in/a.jpg", "anonymized/in/a.jpg", "other/b.jpg", "in/a.jpg.audit.json")]
    emit_all(events, lambda ev: got.append(ev.key), RecentEvents(), accepts=cfg.accepts)
    assert got == ["in/a.jpg"]


def test_push_source_results_never_replace_its_inputs(tmp: Path):
    text = S3_STORES + f"""
[[sources]]
type = "dms-webhook"
name = "dms"
store = "raw"
secret = "{SECRET}"
[[routes]]
source = "dms"
target = "raw"
prefix = "{{prefix}}"
"""
    msg = _error(tmp, text.format(prefix=""))
    assert "input location of source 'dms'" in msg and "replace an original" in msg
    _load(tmp, text.format(prefix="anonymized/"))


# -- the shipped examples ------------------------------------------------------------------
EXAMPLES = {"main": REPO / "config" / "facewarden.example.toml",
            "s3": REPO / "docs" / "config-s3.toml",
            "amqp": REPO / "docs" / "config-amqp.toml"}


def _merge(*names: str) -> dict[str, Any]:
    """The files merged as written: tables merge, arrays of tables ([[sources]],
    [[routes]]) are concatenated."""
    out: dict[str, Any] = {}
    for name in names:
        data = tomllib.loads(EXAMPLES[name].read_text())
        for key in ("sources", "routes"):
            data[key] = out.get(key, []) + data.get(key, [])
        out = _deep_merge(out, data)
    return out


def _credentials(tmp: Path) -> dict[str, str]:
    creds = tmp / "credentials"
    creds.mkdir(exist_ok=True)
    for name in ("facewarden_minio-webhook-token", "facewarden_dms-webhook-secret"):
        (creds / name).write_text("x" * 32)
    return {"CREDENTIALS_DIRECTORY": str(creds)}


def _watcher_takes(src: Any, key: str) -> bool:
    """Independently of overlap.py: would this watching source emit ``key``?"""
    import fnmatch

    if src.type == "folder":
        parts = key.split("/")
        if not src.recursive and len(parts) > 1:
            return False
        return not any(fnmatch.fnmatchcase(p, pat) for p in parts for pat in src.ignore)
    if src.type == "reconcile":
        return key.startswith(src.prefix) and not any(fnmatch.fnmatchcase(key, p) for p in src.ignore)
    return src.accepts(key)


def _place(store: Any) -> tuple[str, str]:
    if store.type == "local":
        return "file", str(store.root)
    return f"{store.endpoint_url}/{store.bucket}", store.prefix.strip("/")


@pytest.mark.parametrize("names", [("main",), ("s3",), ("amqp",), ("s3", "amqp"), ("main", "s3", "amqp")])
def test_examples_validate_and_never_feed_results_back(tmp: Path, names: tuple[str, ...]):
    data = _merge(*names)
    data["state_dir"] = str(tmp / "state")
    s = Settings.model_validate(data, context={"environ": _credentials(tmp)})
    stores = s.all_stores()
    watchers = [(src, name) for src in s.sources for name in src.watched_stores()]
    assert watchers or names == ("amqp",), "the examples watch something"
    for route in s.routes:
        out_space, out_root = _place(stores[route.target])
        for result in ("x.jpg", "sub/x.png", "x.jpg.audit.json"):
            key = "/".join(p for p in (out_root, route.prefix.strip("/"), result) if p)
            for src, name in watchers:
                in_space, in_root = _place(stores[name])
                if in_space != out_space:
                    continue
                if in_space == "file":
                    if not (key.startswith(in_root + "/") or key == in_root):
                        continue
                    rel = os.path.relpath(key, in_root)
                else:
                    if in_root and not key.startswith(in_root + "/"):
                        continue
                    rel = key[len(in_root) + 1:] if in_root else key
                assert not _watcher_takes(src, rel), f"{src.name} would take the result {key} of {route}"


@pytest.mark.parametrize("args", [["models", "list"], ["audit", "verify"], ["config"]])
def test_every_command_exits_78_on_a_bad_config(tmp: Path, args: list[str]):
    bad = tmp / "bad.toml"
    bad.write_text('state_dir = "st"\n[log]\nlevle = "debug"\n')
    result = CliRunner().invoke(cli, [*args, "--config", str(bad)])
    assert result.exit_code == 78, result.output
    assert "log.levle: unknown key; did you mean level?" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
