"""Portal pages over HTTP: administration, tokens, the dashboard, restore requests."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from archive.accounts import get_user
from archive.catalog import models
from archive.config import Settings
from archive.credentials import create_token
from archive.datasets import parse_ref
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from archive.worker import Worker
from fixity.audit import AuditOptions, Auditor
from tests.support.accounts import PASSWORD, add_people, sign_in
from tests.support.cold import cold_settings, lose_hot_copies
from web.app import create_app

API = "/api/v1"


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[tuple[TestClient, ArchiveNode]]:
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"))) as client:
        node: ArchiveNode = client.app.state.node  # type: ignore[attr-defined]
        add_people(node)
        yield client, node


def test_admin_adds_a_user_and_a_membership(portal: tuple[TestClient, ArchiveNode]) -> None:
    client, _ = portal
    csrf = sign_in(client, "admin")
    page = client.get("/admin")
    assert page.status_code == 200
    assert 'for="new-username"' in page.text  # every field has a label
    added = client.post(
        "/admin/users",
        data={
            "username": "newbie",
            "password": "newbie password",
            "role": "researcher",
            "csrf_token": csrf,
        },
        follow_redirects=False,
    )
    assert added.status_code == 303
    bad = client.post(
        "/admin/memberships",
        data={"username": "newbie", "collection": "lab", "permission": "owner", "csrf_token": csrf},
    )
    assert bad.status_code == 422
    granted = client.post(
        "/admin/memberships",
        data={"username": "newbie", "collection": "lab", "permission": "read", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert granted.status_code == 303
    assert "newbie: read" in client.get("/admin").text

    with TestClient(client.app) as newbie:
        sign_in(newbie, "newbie", "newbie password")
        assert newbie.get("/c/lab").status_code == 200
        assert newbie.get("/c/other").status_code == 404


def test_non_admins_cannot_post_admin_forms(portal: tuple[TestClient, ArchiveNode]) -> None:
    client, node = portal
    csrf = sign_in(client, "manager")
    answer = client.post(
        "/admin/users",
        data={"username": "sneaky", "password": "sneaky password", "csrf_token": csrf},
    )
    assert answer.status_code == 404
    with node.session() as session:
        assert (
            session.exec(select(models.User).where(models.User.username == "sneaky")).first()
            is None
        )


def test_a_token_is_shown_once_and_works(portal: tuple[TestClient, ArchiveNode]) -> None:
    client, _ = portal
    csrf = sign_in(client, "reader")
    made = client.post("/tokens", data={"name": "laptop", "csrf_token": csrf})
    assert made.status_code == 200
    found = re.search(r'<code id="new-token">([^<]+)</code>', made.text)
    assert found is not None
    secret = found[1]
    assert secret not in client.get("/tokens").text  # never shown again
    with TestClient(client.app) as script:
        auth = {"Authorization": f"Bearer {secret}"}
        assert [c["name"] for c in script.get(f"{API}/collections", headers=auth).json()] == ["lab"]
        token_id = re.search(
            r'<td>laptop</td>.*?action="/tokens/(\d+)/revoke"', client.get("/tokens").text, re.S
        )
        assert token_id is not None
        revoked = client.post(
            f"/tokens/{token_id[1]}/revoke", data={"csrf_token": csrf}, follow_redirects=False
        )
        assert revoked.status_code == 303
        assert script.get(f"{API}/collections", headers=auth).status_code == 401


def test_the_dashboard_draws_storage_per_tier(
    portal: tuple[TestClient, ArchiveNode], tmp_path: Path
) -> None:
    client, node = portal
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    ingest_tree(node, src, parse_ref("lab/d"))
    sign_in(client, "curator")
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert "<svg" in page.text and "Stored bytes per tier" in page.text
    assert re.search(r"hot \(hot\)</text>\s*<rect[^>]*width=\"300", page.text)
    assert "lab/d" in page.text
    # Audits: the one hot copy was proven at ingest, so it counts as verified in time.
    assert re.search(r"<td>hot</td><td>1</td>\s*<td>1 \(100.0 %\)</td>", page.text)
    assert "Every copy was verified within its tier's interval." in page.text
    assert "lost" not in page.text

    # Every copy of the blob rots: the next forced audit finds it lost, the page says so.
    for tier in node.tiers.values():
        for info in tier.list("blobs/"):
            tier.delete(info.key)
    Auditor(node, owner="test").audit_pass(AuditOptions(due_only=False, level="stored"))
    page = client.get("/dashboard")
    assert re.search(r"1 blob\(s\) lost</strong>\s*\(no good copy left\): lab/d@v1", page.text)
    assert "Some copies are overdue or damaged" in page.text


def test_a_cold_only_file_can_be_asked_back(tmp_path: Path) -> None:
    settings = cold_settings(tmp_path / "data")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    with TestClient(create_app(settings)) as client:
        node: ArchiveNode = client.app.state.node  # type: ignore[attr-defined]
        add_people(node)
        ingest_tree(node, src, parse_ref("lab/frozen"))
        Worker(node).run_once()
        lose_hot_copies(node)
        csrf = sign_in(client, "reader")
        page = client.get("/c/lab/frozen")
        assert "Request restore" in page.text
        answer = client.post(
            "/c/lab/frozen/restore",
            data={"version": "1", "path": "f.bin", "csrf_token": csrf},
            headers={"HX-Request": "true"},
        )
        assert answer.status_code == 200
        assert "Restore requested; ready at" in answer.text
        with node.session() as session:
            requests = session.exec(select(models.RestoreRequest)).all()
        assert [(r.dataset, r.path, r.requested_by) for r in requests] == [
            ("lab/frozen@v1", "f.bin", "reader")
        ]
        with TestClient(client.app) as stranger:
            sign_in(stranger, "outsider")
            refused = stranger.post(
                "/c/lab/frozen/restore",
                data={"version": "1", "path": "f.bin", "csrf_token": csrf},
            )
            assert refused.status_code in (403, 404)  # another's CSRF token, and no access


def test_readers_do_not_get_the_upload_page(
    portal: tuple[TestClient, ArchiveNode], tmp_path: Path
) -> None:
    client, node = portal
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    ingest_tree(node, src, parse_ref("lab/d"))
    sign_in(client, "reader")
    assert client.get("/c/lab/d/upload").status_code == 403
    assert "Upload a new version" not in client.get("/c/lab/d").text
    assert 'id="new-dataset"' not in client.get("/c/lab").text
    assert PASSWORD  # the shared test password signs everyone in


def test_editing_metadata_makes_a_version_with_the_same_files(
    portal: tuple[TestClient, ArchiveNode], tmp_path: Path
) -> None:
    client, node = portal
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    ingest_tree(node, src, parse_ref("lab/d"), title="Old title")
    form = {"title": "New title", "creators": "Ada; Grace", "license": "CC0-1.0", "keywords": ""}
    csrf = sign_in(client, "reader")
    refused = client.post("/c/lab/d/edit", data={**form, "csrf_token": csrf})
    assert refused.status_code == 403
    with TestClient(client.app) as writer:
        csrf = sign_in(writer, "writer")
        edited = writer.post(
            "/c/lab/d/edit", data={**form, "csrf_token": csrf}, follow_redirects=False
        )
        assert edited.status_code == 303
        assert edited.headers["location"] == "/c/lab/d?v=2"
        page = writer.get("/c/lab/d")
        assert "New title" in page.text and "Ada; Grace" in page.text
    with node.session() as session:
        dataset = session.exec(select(models.Dataset).where(models.Dataset.name == "d")).one()
        versions = session.exec(
            select(models.Version).where(models.Version.dataset_id == dataset.id)
        ).all()
        entries = {
            v.number: session.exec(
                select(models.Entry.path, models.Entry.blob_b3).where(
                    models.Entry.version_id == v.id
                )
            ).all()
            for v in versions
        }
    assert dataset.title == "New title"
    assert dataset.metadata_["creators"] == ["Ada", "Grace"]
    assert [v.message for v in versions] == ["", "metadata edited"]
    assert entries[1] == entries[2]


def test_a_deactivated_user_is_locked_out_at_once(portal: tuple[TestClient, ArchiveNode]) -> None:
    client, node = portal
    with TestClient(client.app) as reader:
        sign_in(reader, "reader")
        assert reader.get("/c/lab").status_code == 200
        with node.session() as session:
            token = create_token(get_user("reader", session=session), session=session).secret
        auth = {"Authorization": f"Bearer {token}"}
        assert reader.get(f"{API}/collections", headers=auth).status_code == 200
        csrf = sign_in(client, "admin")
        off = client.post(
            "/admin/users/reader/active",
            data={"active": "false", "csrf_token": csrf},
            follow_redirects=False,
        )
        assert off.status_code == 303
        assert reader.get("/c/lab", follow_redirects=False).status_code == 303  # to sign-in
        assert reader.get(f"{API}/collections", headers=auth).status_code == 401
        client.post("/admin/users/reader/active", data={"active": "true", "csrf_token": csrf})
        assert reader.get(f"{API}/collections", headers=auth).status_code == 200
        assert reader.get("/c/lab", follow_redirects=False).status_code == 303  # session ended


def test_changing_ones_password_needs_the_current_one(
    portal: tuple[TestClient, ArchiveNode],
) -> None:
    client, _ = portal
    csrf = sign_in(client, "reader")
    wrong = client.post(
        "/account/password",
        data={"current": "not it", "new": "brand new password", "csrf_token": csrf},
    )
    assert wrong.status_code == 403
    short = client.post(
        "/account/password", data={"current": PASSWORD, "new": "short", "csrf_token": csrf}
    )
    assert short.status_code == 422
    changed = client.post(
        "/account/password",
        data={"current": PASSWORD, "new": "brand new password", "csrf_token": csrf},
    )
    assert changed.status_code == 200
    assert "Password changed." in changed.text
    with TestClient(client.app) as again:
        sign_in(again, "reader", "brand new password")
