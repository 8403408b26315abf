"""Routes: one daemon serving several handlers by sub-folder, through the real pipeline.

A clerk drops portraits into `idphoto/blue/2-inch/` and group photos into `anonymize/`; each
route picks its handler and params, strips its prefix, and writes under its own prefix.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from facewarden.config.schema import Settings
from facewarden.daemon.jobs import Event
from facewarden.daemon.pipeline import Pipeline
from facewarden.daemon.routing import Router
from facewarden.storage.stores import open_stores


def _settings(tmp: Path, models_dir: Path) -> Settings:
    return Settings.model_validate({
        "state_dir": str(tmp / "state"), "models_dir": str(models_dir),
        "stores": {"incoming": {"root": str(tmp / "in")}, "outgoing": {"root": str(tmp / "out")}},
        "sources": [{"name": "incoming", "store": "incoming"}],
        "routes": [
            {"source": "incoming", "match": "idphoto/blue/2-inch/*", "handler": "idphoto",
             "params": {"size": "2-inch", "background": "blue"}, "strip_prefix": "idphoto/blue/2-inch/",
             "prefix": "idphoto/"},
            {"source": "incoming", "match": "anonymize/*", "handler": "anonymize", "params": {"mode": "pixelate"},
             "strip_prefix": "anonymize/", "prefix": "public/"},
        ],
    })


def test_routes_pick_handler_params_and_prefixes(tmp_path: Path, data_dir: Path, models_dir: Path):
    settings = _settings(tmp_path, models_dir)
    portrait = tmp_path / "in" / "idphoto" / "blue" / "2-inch" / "clerk 1.jpg"
    group = tmp_path / "in" / "anonymize" / "party.jpg"
    stray = tmp_path / "in" / "elsewhere" / "x.jpg"
    for dest, src in ((portrait, data_dir / "idphoto-specs/demo/images/test0.jpg"),
                      (group, data_dir / "faces-pascal/2008_002470.jpg"),
                      (stray, data_dir / "faces-pascal/2008_001322.jpg")):
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    router = Router(settings)
    pipeline = Pipeline(settings, open_stores(settings.all_stores()))
    assert router.route(Event("incoming", "elsewhere/x.jpg", "incoming")) is None  # no route: dropped
    outcomes = {}
    for key in ("idphoto/blue/2-inch/clerk 1.jpg", "anonymize/party.jpg"):
        job = router.route(Event("incoming", key, "incoming"))
        outcomes[key] = pipeline.process(job)

    idp = outcomes["idphoto/blue/2-inch/clerk 1.jpg"]
    assert idp.outcome == "ok", idp.record.get("reason")
    assert idp.outputs == ["idphoto/clerk 1.jpg"]
    out = Image.open(tmp_path / "out" / "idphoto" / "clerk 1.jpg")
    assert out.size == (413, 579) and round(out.info["dpi"][0]) == 300
    corner = np.asarray(out.convert("RGB"))[2, 2].astype(int)
    assert np.abs(corner - [67, 142, 219]).max() <= 4
    assert idp.record["params"]["background"] == "#438edb"  # "blue", normalised: equal meaning, equal key
    record = json.loads((tmp_path / "out" / "idphoto" / "clerk 1.jpg.audit.json").read_text())
    written = (tmp_path / "out" / "idphoto" / "clerk 1.jpg").read_bytes()
    assert record["outputs"][0]["sha256"] == hashlib.sha256(written).hexdigest()

    anon = outcomes["anonymize/party.jpg"]
    assert anon.outcome == "ok" and anon.outputs == ["public/party.jpg"]
    assert anon.record["params"]["mode"] == "pixelate" and anon.record["facts"]["faces"] >= 5


def test_idphoto_rejection_is_quarantined_with_its_reason_and_nothing_written(tmp_path: Path, data_dir: Path,
                                                                                models_dir: Path):
    settings = _settings(tmp_path, models_dir)
    group = tmp_path / "in" / "idphoto" / "blue" / "2-inch" / "group.jpg"
    group.parent.mkdir(parents=True)
    shutil.copy(data_dir / "faces-pascal/2008_002470.jpg", group)
    job = Router(settings).route(Event("incoming", "idphoto/blue/2-inch/group.jpg", "incoming"))
    outcome = Pipeline(settings, open_stores(settings.all_stores())).process(job)
    assert outcome.outcome == "rejected"
    assert "multiple" in outcome.record["reason"]["code"]
    assert outcome.record["reason"]["message"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.jpg"))
    quarantined = tmp_path / "state" / "quarantine" / "incoming" / "idphoto/blue/2-inch/group.jpg"
    assert quarantined.read_bytes() == group.read_bytes()
