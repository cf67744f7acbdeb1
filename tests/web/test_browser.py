"""The portal in a real browser: Debian's Chromium driven by Playwright, against uvicorn.

Each test saves a screenshot of the page it checked under its temporary folder
(``pytest --basetemp`` to keep them somewhere known), so a failure can be looked at.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, Route, sync_playwright
from sqlmodel import select

from archive.catalog import models
from archive.config import Settings
from archive.datasets import parse_ref
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from archive.worker import Worker
from tests.support.accounts import PASSWORD, add_people
from tests.support.cold import cold_settings, lose_hot_copies
from web.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
MiB = 1024 * 1024

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/test installs it)"
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


@dataclass(frozen=True)
class Portal:
    base: str
    node: ArchiveNode


@pytest.fixture
def portal(tmp_path: Path, live_server: Callable[[FastAPI], str]) -> Portal:
    app = create_app(Settings(data_dir=tmp_path / "data"))
    base = live_server(app)
    node: ArchiveNode = app.state.node
    add_people(node)
    return Portal(base, node)


@pytest.fixture
def page(browser: Browser, tmp_path: Path) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    yield opened
    context.close()


def sign_in(page: Page, portal: Portal, username: str) -> None:
    page.goto(f"{portal.base}/login")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{portal.base}/")
    assert page.get_by_role("heading", name="Collections").is_visible()


def snap(page: Page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=tmp_path / f"{name}.png", full_page=True)


def test_create_a_dataset_upload_a_folder_and_download(
    page: Page, portal: Portal, tmp_path: Path
) -> None:
    folder = tmp_path / "survey"
    (folder / "raw").mkdir(parents=True)
    files = {
        "notes.txt": b"observations, day 1\n" * 50,
        "raw/big.bin": os.urandom(50 * MiB),
    }
    for rel, data in files.items():
        (folder / rel).write_bytes(data)

    # Drop the connection once in the middle of the big file: the page must resume.
    patches: list[str] = []

    def flaky(route: Route) -> None:
        if route.request.method == "PATCH":
            patches.append(route.request.url)
            if len(patches) == 4:
                route.abort("connectionreset")
                return
        route.continue_()

    page.route("**/api/v1/uploads/**", flaky)
    sign_in(page, portal, "writer")
    page.get_by_role("link", name="lab").click()
    page.get_by_label("Short name").fill("survey")
    page.get_by_label("Title").fill("Coastal survey 2026")
    page.get_by_label("Creators").fill("Ada Lovelace\nMary Somerville")
    page.get_by_label("Description").fill("Field notes and raw sensor data.")
    page.get_by_label("Licence").fill("CC-BY-4.0")
    page.get_by_label("Keywords").fill("coast, sensors")
    page.get_by_role("button", name="Create dataset").click()
    page.wait_for_url(f"{portal.base}/c/lab/survey/upload")

    page.locator("#folder-input").set_input_files(folder)
    assert page.locator("#queue tbody tr").count() == 2
    page.get_by_label("What changed").fill("first upload")
    page.get_by_role("button", name="Upload and commit").click()
    page.wait_for_url(f"{portal.base}/c/lab/survey?v=1", timeout=180_000)
    snap(page, tmp_path, "dataset")
    assert len(patches) > 4  # the aborted piece was sent again

    for rel, data in files.items():
        row = page.locator(f'tr.file[data-path="{rel}"]')
        assert row.locator("code.sha256").inner_text() == hashlib.sha256(data).hexdigest()
        assert row.locator("code.b3").inner_text() == blake3.blake3(data).hexdigest()
        assert row.locator("td.size").get_attribute("data-bytes") == str(len(data))
    assert "Coastal survey 2026" in page.get_by_role("heading", level=1).inner_text()
    assert page.locator("dl.meta").get_by_text("Mary Somerville").is_visible()

    with portal.node.session() as session:
        rows = session.exec(
            select(models.Entry.path, models.Blob.sha256, models.Blob.size, models.Blob.b3)
            .join(models.Blob, models.Blob.b3 == models.Entry.blob_b3)  # type: ignore[arg-type]
            .join(models.Version, models.Version.id == models.Entry.version_id)  # type: ignore[arg-type]
            .join(models.Dataset, models.Dataset.id == models.Version.dataset_id)  # type: ignore[arg-type]
            .where(models.Dataset.name == "survey")
        ).all()
        dataset = session.exec(select(models.Dataset).where(models.Dataset.name == "survey")).one()
    assert {p: (sha, size, b3) for p, sha, size, b3 in rows} == {
        rel: (hashlib.sha256(d).hexdigest(), len(d), blake3.blake3(d).hexdigest())
        for rel, d in files.items()
    }
    assert dataset.metadata_["creators"] == ["Ada Lovelace", "Mary Somerville"]
    assert dataset.metadata_["license"] == "CC-BY-4.0"
    assert dataset.metadata_["keywords"] == ["coast", "sensors"]

    for rel in files:
        with page.expect_download() as caught:
            page.locator(f'tr.file[data-path="{rel}"]').get_by_role("link", name="Download").click()
        saved = caught.value.path()
        assert saved.read_bytes() == files[rel]
        assert caught.value.suggested_filename == rel.rsplit("/", 1)[-1]


def test_a_non_member_gets_404(page: Page, portal: Portal, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "f.txt").write_bytes(b"lab only\n")
    ingest_tree(portal.node, source, parse_ref("lab/private"))
    sign_in(page, portal, "outsider")
    assert page.get_by_role("link", name="lab").count() == 0
    for url in ("/c/lab/private", "/c/lab", "/api/v1/datasets/lab/private/versions/1/files/f.txt"):
        answer = page.goto(f"{portal.base}{url}")
        assert answer is not None and answer.status == 404, url
    page.goto(f"{portal.base}/c/lab/private")
    snap(page, tmp_path, "not-found")
    assert page.get_by_role("heading", name="Not found").is_visible()
    assert "lab only" not in page.content()


def test_a_form_posted_without_its_csrf_token_is_refused(
    page: Page, portal: Portal, tmp_path: Path
) -> None:
    sign_in(page, portal, "writer")
    page.goto(f"{portal.base}/c/lab")
    page.evaluate("document.querySelector('#new-dataset input[name=csrf_token]').remove()")
    page.get_by_label("Short name").fill("forged")
    page.get_by_label("Title").fill("Forged")
    with page.expect_response(f"{portal.base}/c/lab/datasets") as caught:
        page.get_by_role("button", name="Create dataset").click()
    assert caught.value.status == 403
    page.wait_for_load_state()
    snap(page, tmp_path, "csrf-refused")
    assert page.get_by_role("heading", name="Not allowed").is_visible()
    with portal.node.session() as session:
        assert (
            session.exec(select(models.Dataset).where(models.Dataset.name == "forged")).first()
            is None
        )


def test_a_script_in_a_file_name_is_shown_not_run(
    page: Page, portal: Portal, tmp_path: Path
) -> None:
    name = "<script>alert(1)</script>.txt"  # the "/" makes it a folder and a file
    source = tmp_path / "src"
    (source / name).parent.mkdir(parents=True)
    (source / name).write_bytes(b"harmless\n")
    ingest_tree(portal.node, source, parse_ref("lab/xss"))
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(page, portal, "reader")
    page.goto(f"{portal.base}/c/lab/xss")
    snap(page, tmp_path, "escaped")
    assert page.locator(f'tr.file[data-path="{name}"] td.name').inner_text() == "script>.txt"
    assert page.locator("tr.folder").inner_text().strip().endswith("<script>alert(1)</")
    assert dialogs == []


def test_the_dataset_page_fits_a_narrow_screen_and_works_by_keyboard(
    browser: Browser, portal: Portal, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    (source / "deep" / "er").mkdir(parents=True)
    (source / "deep" / "er" / "a-rather-long-file-name-for-a-phone.csv").write_bytes(b"1,2\n")
    ingest_tree(portal.node, source, parse_ref("lab/phone"))
    context = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(f"{portal.base}/login")
        # Keyboard only: the name field has focus, Tab moves on, Enter submits.
        page.keyboard.type("reader")
        page.keyboard.press("Tab")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_url(f"{portal.base}/")
        page.goto(f"{portal.base}/c/lab/phone")
        snap(page, tmp_path, "narrow")
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        assert page.get_by_role("link", name="Download", exact=True).is_visible()
    finally:
        context.close()


def test_request_restore_of_a_cold_only_file_with_htmx(
    browser: Browser, tmp_path: Path, live_server: Callable[[FastAPI], str]
) -> None:
    settings = cold_settings(tmp_path / "data")
    app = create_app(settings)
    base = live_server(app)
    node: ArchiveNode = app.state.node
    add_people(node)
    source = tmp_path / "src"
    source.mkdir()
    (source / "frozen.bin").write_bytes(os.urandom(2 * MiB))
    ingest_tree(node, source, parse_ref("lab/frozen"))
    Worker(node).run_once()
    lose_hot_copies(node)
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, Portal(base, node), "reader")
        page.goto(f"{base}/c/lab/frozen")
        with page.expect_response(f"{base}/c/lab/frozen/restore") as caught:
            page.get_by_role("button", name="Request restore").click()
        assert caught.value.request.headers.get("hx-request") == "true"  # sent by htmx
        status = page.get_by_role("status")
        status.wait_for()
        assert "Restore requested; ready at" in status.inner_text()
        assert page.url == f"{base}/c/lab/frozen"  # swapped in place, no navigation
        snap(page, tmp_path, "restore-requested")
        with node.session() as session:
            requests = session.exec(select(models.RestoreRequest)).all()
        assert [(r.path, r.requested_by) for r in requests] == [("frozen.bin", "reader")]

        sign_in_page = context.new_page()
        context.clear_cookies()
        sign_in(sign_in_page, Portal(base, node), "curator")
        sign_in_page.goto(f"{base}/dashboard")
        snap(sign_in_page, tmp_path, "dashboard")
        assert sign_in_page.get_by_role("img", name="Stored bytes per tier").is_visible()
        assert sign_in_page.get_by_role("link", name="lab/frozen").is_visible()
    finally:
        context.close()
