"""`facewarden handlers` comes from the schemas that validate params, and the README's
tables are its --markdown output, so neither can drift from the behaviour."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from facewarden.cli import cli
from facewarden.errors import InputRejected
from facewarden.handlers import base as handlers


def test_readme_tables_are_the_generated_ones(repo):
    readme = (repo / "README.md").read_text()
    m = re.search(r"<!-- handlers:begin[^>]*-->\n(.*?)\n<!-- handlers:end -->", readme, re.S)
    assert m, "README lost its generated handler tables"
    # A fresh process: other test modules register stub handlers in this one.
    generated = subprocess.run([sys.executable, "-m", "facewarden", "handlers", "--markdown"], check=True,
                               capture_output=True, text=True).stdout.strip()
    assert m.group(1).strip() == generated, "README handler tables are stale: paste `facewarden handlers --markdown`"


def test_json_lists_every_handler_with_defaults_that_validation_uses():
    out = CliRunner().invoke(cli, ["handlers", "--json"])
    assert out.exit_code == 0, out.output
    described = json.loads(out.output)
    assert {"anonymize", "idphoto", "enroll", "verify"} <= {d["handler"] for d in described}
    for d in described:
        handler = handlers.get(d["handler"])
        normalised = handler.validate_params({})
        for p in d["params"]:
            if p["name"] in normalised and not isinstance(p["default"], str | type(None)):
                assert normalised[p["name"]] == p["default"], (d["handler"], p["name"])
        assert set(normalised) <= {p["name"] for p in d["params"]}


@pytest.mark.parametrize("name", ["anonymize", "idphoto", "enroll", "verify"])
def test_unknown_param_names_the_nearest_known_one(name):
    handler = handlers.get(name)
    first = handler.schema.names[0]
    with pytest.raises(InputRejected) as err:
        handler.validate_params({first + "x": 1})
    assert err.value.code == "params.invalid"
    assert f"did you mean {first}?" in err.value.message


def test_equal_meaning_gives_equal_params():
    anonymize = handlers.get("anonymize")
    assert anonymize.validate_params({"mode": "Blur", "margin": "0.2"}) == anonymize.validate_params({})
    idphoto = handlers.get("idphoto")
    assert idphoto.validate_params({"format": "JPG", "sheet": "no"}) == idphoto.validate_params({})


def test_one_handler_and_unknown_handler():
    runner = CliRunner()
    out = runner.invoke(cli, ["handlers", "idphoto"])
    assert out.exit_code == 0 and "max_upscale" in out.output and "anonymize" not in out.output
    bad = runner.invoke(cli, ["handlers", "blurr"])
    assert bad.exit_code != 0 and "anonymize" in bad.output
