"""The web console in a real browser: Playwright driving Debian's chromium against a real
daemon on a loopback port. Screenshots of each page go to docs/screenshots/."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from facewarden.config import load_settings
from facewarden.daemon.app import Daemon
from facewarden.web.auth import KeyStore

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
KNN = DATA / "identities-knn"
GROUP = KNN / "test" / "obama_and_biden.jpg"
SHOTS = REPO / "docs" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = tmp_path_factory.mktemp("console-state")
    settings = load_settings(None, environ={}, overrides={"state_dir": state, "http": {"enabled": True, "port": 0}})
    keys = KeyStore(state)
    tokens = {"admin": keys.create("reviewer", ["admin"])[0],
              "anonymize": keys.create("press-office", ["anonymize"])[0]}
    daemon = Daemon(settings, workers=0)
    daemon.start()
    try:
        yield {"root": daemon.http.url, "tokens": tokens, "state": state}
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def playwright():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:  # one per thread: every browser of this module comes from it
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    yield b
    b.close()


def login(browser, server, scope="admin", **context):
    # bypass_csp: Playwright's wait_for_function evaluates strings, which the console's CSP forbids.
    ctx = browser.new_context(**{"viewport": {"width": 1100, "height": 800}, "bypass_csp": True, **context})
    page = ctx.new_page()
    page.goto(server["root"] + "/")
    assert page.url.endswith("/login")
    page.fill("input[name=key]", server["tokens"][scope])
    page.click("form.card button")
    page.wait_for_url(server["root"] + "/")
    return page


def shot(page, name):
    """Kept small for the repo: a 128-colour palette PNG."""
    import io

    from PIL import Image

    SHOTS.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(page.screenshot())) as img:
        img.convert("RGB").quantize(128).save(SHOTS / f"{name}.png", optimize=True)


def test_login_refuses_a_wrong_key(browser, server):
    page = browser.new_page()
    page.goto(server["root"] + "/login")
    page.fill("input[name=key]", "fwk_bad_key")
    page.click("form.card button")
    assert "unknown or revoked" in page.inner_text(".error")
    page.goto(server["root"] + "/try")
    assert page.url.endswith("/login")  # no session, no page
    page.close()


def test_try_it_anonymizes_and_draws_boxes(browser, server):
    page = login(browser, server, "anonymize")
    nav = page.inner_text("header nav")
    assert "Try it" in nav and "Quarantine" not in nav  # pages follow the key's scopes
    page.goto(server["root"] + "/try")
    page.set_input_files("input[name=image]", str(GROUP))
    page.click("#try-form button")
    page.wait_for_function("document.querySelector('#status').textContent.includes('obscured')", timeout=120_000)
    assert re.search(r"[1-9]\d* face\(s\) obscured · audit record #\d+", page.inner_text("#status"))
    page.check("#boxes")
    page.wait_for_function("document.querySelector('#overlay').dataset.faces >= 2", timeout=120_000)
    assert page.get_attribute("#download", "href").startswith("blob:")
    shot(page, "try-it")
    page.goto(server["root"] + "/quarantine")
    assert "Not allowed" in page.inner_text("main")
    page.context.close()


def test_dashboard_shows_recent_jobs_on_a_phone(browser, server):
    httpx.post(server["root"] + "/api/v1/anonymize", content=GROUP.read_bytes(), timeout=120,
               headers={"Content-Type": "image/jpeg", "Authorization": f"Bearer {server['tokens']['admin']}"})
    page = login(browser, server, "admin", viewport={"width": 390, "height": 844}, is_mobile=True)
    page.wait_for_selector("#recent tbody tr")
    assert "anonymize" in page.inner_text("#recent") and "ok" in page.inner_text("#recent")
    assert page.inner_text("#depth") == "0"
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390 + 1  # no sideways scrolling on a phone
    shot(page, "dashboard-phone")
    page.context.close()


def test_studio_makes_an_id_photo_and_sheet(browser, server):
    page = login(browser, server)
    page.goto(server["root"] + "/studio")
    page.set_input_files("input[name=image]", str(DATA / "idphoto-specs" / "demo" / "images" / "test0.jpg"))
    page.select_option("select[name=background]", "blue")
    page.check("input[name=sheet]")
    page.fill("input[name=max_kb]", "60")
    page.click("#studio-form button")
    page.wait_for_function("document.querySelector('#status').textContent.includes('audit record')", timeout=180_000)
    assert page.is_visible("#sheet-fig") and page.is_visible("#download")
    assert int(page.inner_text("#kb").split()[0]) <= 60
    shot(page, "idphoto-studio")
    page.context.close()


def test_subjects_enroll_then_kiosk_checks_in_then_erase(browser, server):
    page = login(browser, server)
    page.goto(server["root"] + "/subjects")
    for photo in sorted((KNN / "train" / "obama").glob("*.jpg")):
        page.fill("input[name=subject]", "obama")
        page.fill("input[name=name]", "Barack Obama")
        page.set_input_files("input[name=image]", str(photo))
        page.check("input[name=consent]")
        page.click("#enroll-form > button:last-of-type")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('enrolled')",
                               timeout=120_000)
    page.wait_for_selector("#subjects tbody tr")
    assert "Barack Obama" in page.inner_text("#subjects")
    shot(page, "subjects")
    page.goto(server["root"] + "/kiosk")
    page.set_input_files("#kiosk-file", str(KNN / "test" / "obama1.jpg"))
    page.wait_for_function("document.querySelector('#who').textContent === 'obama'", timeout=120_000)
    shot(page, "kiosk")
    page.set_input_files("#kiosk-file", str(KNN / "test" / "alex_lacamoire1.jpg"))
    page.wait_for_function("document.querySelector('#who').textContent === 'unknown'", timeout=120_000)
    page.goto(server["root"] + "/subjects")
    page.wait_for_selector("button[data-subject=obama]")
    page.once("dialog", lambda d: d.accept("obama"))
    page.click("button[data-subject=obama]")
    page.wait_for_function("document.querySelector('#status').textContent === 'erased obama'")
    page.wait_for_function("!document.querySelector('#subjects tbody').textContent.includes('obama')")
    assert httpx.get(server["root"] + "/api/v1/subjects",
                     headers={"Authorization": f"Bearer {server['tokens']['admin']}"}).json() == []
    page.context.close()


def test_quarantine_review_with_blurred_preview_and_delete(browser, server):
    admin = {"Authorization": f"Bearer {server['tokens']['admin']}"}
    # an ID photo of a group is refused: the real photo goes to quarantine
    r = httpx.post(server["root"] + "/api/v1/idphoto", content=GROUP.read_bytes(), timeout=180,
                   headers={"Content-Type": "image/jpeg", **admin})
    assert r.status_code == 422, r.text
    seq = r.json()["audit"]["seq"]
    page = login(browser, server)
    page.goto(server["root"] + "/quarantine")
    row = page.locator("#quarantine tbody tr", has_text=str(seq)).first
    row.locator("button").click()
    page.wait_for_function("document.querySelector('#preview').complete && "
                           "document.querySelector('#preview').naturalWidth > 0", timeout=120_000)
    assert r.json()["error"] in page.inner_text("#entry-reason")
    shot(page, "quarantine")
    page.once("dialog", lambda d: d.accept())
    page.click("#q-delete")
    page.wait_for_function(f"!document.querySelector('#quarantine').textContent.includes('{GROUP.name}')")
    entry = httpx.get(server["root"] + f"/api/v1/quarantine/{seq}", headers=admin).json()
    assert not entry["open"] and not entry["present"]
    page.context.close()


def test_audit_verifies_the_chain_and_looks_a_file_up(browser, server):
    page = login(browser, server)
    page.goto(server["root"] + "/audit")
    page.click("#verify")
    page.wait_for_function("document.querySelector('#verify-result').textContent.includes('intact')")
    page.set_input_files("#lookup-file", str(GROUP))
    page.wait_for_selector("#lookup tbody tr td")
    import hashlib

    assert hashlib.sha256(GROUP.read_bytes()).hexdigest() in page.inner_text("#digest")
    assert "input" in page.inner_text("#lookup")
    shot(page, "audit")
    page.context.close()


def test_kiosk_camera_path_with_chromiums_fake_camera(playwright, server):
    """getUserMedia with Chromium's built-in fake camera (a test pattern, no face): the
    camera path runs end to end and the kiosk says so rather than naming anyone."""
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, "--use-fake-device-for-media-stream",
                                                                   "--use-fake-ui-for-media-stream"])
    try:
        page = login(b, server)
        page.goto(server["root"] + "/kiosk")
        page.click("#start-camera")
        page.wait_for_selector("#snap", state="visible", timeout=20_000)
        page.wait_for_function("document.querySelector('#camera').videoWidth > 0")
        page.click("#snap")
        page.wait_for_function("!['–', '…'].includes(document.querySelector('#who').textContent)",
                               timeout=120_000)
        assert page.inner_text("#who") in ("unknown", "no face found")
    finally:
        b.close()
