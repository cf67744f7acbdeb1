"""Every permission rule over plain HTTP: 401 without credentials, 404 for what a caller may
not read, 403 for what it may read but not change, CSRF on cookie-authenticated changes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from archive.catalog import models
from archive.config import Settings
from archive.credentials import create_token, revoke_token
from archive.datasets import parse_ref
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from tests.support.accounts import PASSWORD, Person, add_people, sign_in
from tests.web.conftest import content
from web.app import create_app

API = "/api/v1"
LAB_FILE = b"lab data\n" * 100
SECRET_FILE = b"the other collection's secret\n"


@dataclass(frozen=True)
class World:
    client: TestClient
    node: ArchiveNode
    people: dict[str, Person]


def _ingest(node: ArchiveNode, root: Path, ref: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    ingest_tree(node, root, parse_ref(ref))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Read-mostly: tests that change things use names of their own."""
    root = tmp_path_factory.mktemp("world")
    with TestClient(create_app(Settings(data_dir=root / "data"))) as client:
        node: ArchiveNode = client.app.state.node  # type: ignore[attr-defined]
        people = add_people(node)
        _ingest(node, root / "lab", "lab/d", {"f.txt": LAB_FILE})
        _ingest(node, root / "other", "other/secret", {"s.txt": SECRET_FILE})
        yield World(client, node, people)


LAB_READS = [
    f"{API}/collections/lab",
    f"{API}/collections/lab/policy",
    f"{API}/datasets/lab/d",
    f"{API}/datasets?collection=lab",
    f"{API}/datasets/lab/d/versions/1",
    f"{API}/datasets/lab/d/versions/latest/entries",
    f"{API}/datasets/lab/d/versions/1/files/f.txt",
    f"{API}/datasets/lab/d/versions/1/status",
    "/c/lab",
    "/c/lab/d",
    "/c/lab/d/v/1/zip",
]


@pytest.mark.parametrize(
    ("method", "url"),
    [("GET", url) for url in LAB_READS if url.startswith(API)]
    + [
        ("GET", f"{API}/collections"),
        ("GET", f"{API}/status"),
        ("GET", f"{API}/restores"),
        ("POST", f"{API}/blobs/missing"),
        ("PUT", f"{API}/blobs/{'a' * 64}"),
        ("POST", f"{API}/datasets/lab/d/versions"),
        ("POST", f"{API}/uploads"),
        ("POST", f"{API}/bags?collection=lab&dataset=x"),
    ],
)
def test_the_api_needs_credentials(world: World, method: str, url: str) -> None:
    answer = world.client.request(method, url)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")


PLACEHOLDERS = {
    "collection": "lab",
    "dataset": "d",
    "version": "1",
    "path": "f.txt",
    "b3": "a" * 64,
    "upload_id": "x" * 32,
}


#: tus protocol discovery (tus.io core, OPTIONS): says only which protocol versions are spoken.
OPEN = {("options", f"{API}/uploads")}


def test_every_api_route_needs_credentials(world: World) -> None:
    """Walks the OpenAPI document, so a route added later without a check fails here."""
    checked = 0
    for path, operations in world.client.get("/openapi.json").json()["paths"].items():
        if not path.startswith(API):
            continue
        url = re.sub(r"{(\w+)}", lambda m: PLACEHOLDERS[m[1]], path)
        for method in operations:
            if (method, path) in OPEN:
                continue
            answer = world.client.request(method.upper(), url)
            assert answer.status_code == 401, (method, path, answer.status_code)
            checked += 1
    assert checked >= 20


def test_health_needs_none(world: World) -> None:
    assert world.client.get("/healthz").status_code == 200


@pytest.mark.parametrize("url", LAB_READS)
def test_a_non_member_gets_404_for_another_collections_data(world: World, url: str) -> None:
    answer = world.client.get(url, headers=world.people["outsider"].auth)
    assert answer.status_code == 404
    missing = world.client.get(url.replace("lab", "nosuch"), headers=world.people["admin"].auth)
    assert missing.status_code == 404  # the same answer as for what does not exist


@pytest.mark.parametrize("who", ["reader", "writer", "manager", "curator", "admin"])
@pytest.mark.parametrize("url", LAB_READS)
def test_members_curators_and_admins_read(world: World, who: str, url: str) -> None:
    answer = world.client.get(url, headers=world.people[who].auth)
    assert answer.status_code == 200, answer.text
    if url.endswith("files/f.txt"):
        assert answer.content == LAB_FILE


def test_lists_show_only_readable_collections(world: World) -> None:
    def names(who: str, url: str, key: str) -> set[str]:
        answer = world.client.get(url, headers=world.people[who].auth)
        assert answer.status_code == 200
        return {row[key] for row in answer.json()}

    assert names("reader", f"{API}/collections", "name") == {"lab"}
    assert names("outsider", f"{API}/collections", "name") == {"other"}
    assert names("nobody", f"{API}/collections", "name") == set()
    assert names("curator", f"{API}/collections", "name") == {"lab", "other"}
    assert names("reader", f"{API}/datasets", "collection") == {"lab"}


def test_only_curators_and_admins_see_the_archive_status(world: World) -> None:
    for who, code in [("curator", 200), ("admin", 200), ("manager", 404), ("nobody", 404)]:
        assert world.client.get(f"{API}/status", headers=world.people[who].auth).status_code == code
        assert world.client.get("/dashboard", headers=world.people[who].auth).status_code == code
    assert world.client.get("/admin", headers=world.people["curator"].auth).status_code == 404
    assert world.client.get("/admin", headers=world.people["admin"].auth).status_code == 200


def test_readers_cannot_commit_and_others_cannot_see(world: World) -> None:
    entries = {"entries": [{"path": "x.txt", "blake3": content(LAB_FILE).b3}]}
    url = f"{API}/datasets/lab/d/versions"
    assert (
        world.client.post(url, json=entries, headers=world.people["reader"].auth).status_code == 403
    )
    answer = world.client.post(url, json=entries, headers=world.people["outsider"].auth)
    assert answer.status_code == 404
    assert (
        world.client.post(url, json=entries, headers=world.people["nobody"].auth).status_code == 404
    )
    assert _versions(world.node, "d") == 1


def test_only_managers_change_the_policy(world: World) -> None:
    url = f"{API}/collections/lab/policy"
    policy = world.client.get(url, headers=world.people["reader"].auth).json()["policy"]
    for who, code in [("reader", 403), ("writer", 403), ("outsider", 404), ("manager", 200)]:
        answer = world.client.put(url, json=policy, headers=world.people[who].auth)
        assert answer.status_code == code, (who, answer.text)


def test_only_admins_create_collections(world: World) -> None:
    body = {"name": "newcoll"}
    for who in ("curator", "manager", "nobody"):
        answer = world.client.post(f"{API}/collections", json=body, headers=world.people[who].auth)
        assert answer.status_code == 403
    # An existing collection one may not see gets the same answer as a new one.
    hidden = world.client.post(
        f"{API}/collections", json={"name": "other"}, headers=world.people["reader"].auth
    )
    assert hidden.status_code == 403
    made = world.client.post(f"{API}/collections", json=body, headers=world.people["admin"].auth)
    assert made.status_code == 201


def test_content_of_another_collection_cannot_be_claimed_by_digest(world: World) -> None:
    """Knowing a digest is not holding the bytes: they must be uploaded first."""
    secret = content(SECRET_FILE)
    writer = world.people["writer"].auth
    missing = world.client.post(f"{API}/blobs/missing", json={"blobs": [secret.b3]}, headers=writer)
    assert missing.json() == {"missing": [secret.b3]}  # held, but not for this caller
    assert world.client.head(f"{API}/blobs/{secret.b3}", headers=writer).status_code == 404
    commit_url = f"{API}/datasets/lab/claim/versions"
    entries = {"entries": [{"path": "stolen.txt", "blake3": secret.b3}]}
    refused = world.client.post(commit_url, json=entries, headers=writer)
    assert refused.status_code == 409
    assert refused.json()["missing"] == [secret.b3]
    assert _versions(world.node, "claim") == 0
    # Sending the bytes proves them; then the commit is accepted.
    sent = world.client.put(f"{API}/blobs/{secret.b3}", content=SECRET_FILE, headers=writer)
    assert sent.status_code == 200  # held already: deduplicated
    accepted = world.client.post(commit_url, json=entries, headers=writer)
    assert accepted.status_code == 201, accepted.text


def test_uploading_needs_write_somewhere(world: World) -> None:
    blob = content(b"anything")
    for who in ("reader", "nobody", "curator"):
        auth = world.people[who].auth
        assert (
            world.client.put(f"{API}/blobs/{blob.b3}", content=blob.data, headers=auth).status_code
            == 403
        )
        assert (
            world.client.post(f"{API}/uploads", headers={**auth, "Upload-Length": "1"}).status_code
            == 403
        )


def test_restores_need_read(world: World) -> None:
    body = {"dataset": "lab/d"}
    assert (
        world.client.post(
            f"{API}/restores", json=body, headers=world.people["reader"].auth
        ).status_code
        == 200
    )
    assert (
        world.client.post(
            f"{API}/restores", json=body, headers=world.people["outsider"].auth
        ).status_code
        == 404
    )


def test_a_revoked_or_unknown_token_is_refused(world: World) -> None:
    assert (
        world.client.get(
            f"{API}/collections", headers={"Authorization": "Bearer pf_nope"}
        ).status_code
        == 401
    )
    with world.node.session() as session:
        user = session.exec(select(models.User).where(models.User.username == "reader")).one()
        made = create_token(user, session=session)
    auth = {"Authorization": f"Bearer {made.secret}"}
    assert world.client.get(f"{API}/collections", headers=auth).status_code == 200
    with world.node.session() as session:
        assert made.row.id is not None
        revoke_token(made.row.id, session=session)
    assert world.client.get(f"{API}/collections", headers=auth).status_code == 401


def _versions(node: ArchiveNode, dataset: str) -> int:
    with node.session() as session:
        rows = session.exec(
            select(models.Version)
            .join(models.Dataset, models.Dataset.id == models.Version.dataset_id)  # type: ignore[arg-type]
            .where(models.Dataset.name == dataset)
        ).all()
    return len(rows)


# -- the portal: sessions, CSRF, cookies, sign-in limits ----------------------------


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[World]:
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"))) as client:
        node: ArchiveNode = client.app.state.node  # type: ignore[attr-defined]
        yield World(client, node, add_people(node))


def test_signed_out_visitors_are_sent_to_sign_in(portal: World) -> None:
    answer = portal.client.get("/c/lab", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=/c/lab"


def test_session_cookie_flags(portal: World) -> None:
    sign_in(portal.client, "writer")
    form = portal.client.get("/logout")  # only POST signs out
    assert form.status_code == 405
    login = portal.client.get("/login")
    assert login.status_code == 200  # signed in: no new cookie set here
    fresh = TestClient(portal.client.app)
    page = fresh.get("/login")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    answer = fresh.post(
        "/login",
        data={"username": "writer", "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )
    cookie = next(
        c for c in answer.headers.get_list("set-cookie") if c.startswith("permafrost_session=")
    )
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain HTTP here; set when the request came over HTTPS


def test_sign_in_form_without_its_csrf_token_is_refused(portal: World) -> None:
    answer = portal.client.post(
        "/login", data={"username": "writer", "password": PASSWORD}, follow_redirects=False
    )
    assert answer.status_code == 403
    assert "permafrost_session" not in portal.client.cookies


def test_cookie_changes_without_csrf_token_are_refused(portal: World) -> None:
    csrf = sign_in(portal.client, "writer")
    form = {"name": "new1", "title": "New"}
    refused = portal.client.post("/c/lab/datasets", data=form, follow_redirects=False)
    assert refused.status_code == 403
    wrong = portal.client.post(
        "/c/lab/datasets", data={**form, "csrf_token": "forged"}, follow_redirects=False
    )
    assert wrong.status_code == 403
    api = portal.client.post(f"{API}/uploads", headers={"Upload-Length": "3"})
    assert api.status_code == 403
    assert api.json()["error"] == "CsrfRefused"
    with portal.node.session() as session:
        assert (
            session.exec(select(models.Dataset).where(models.Dataset.name == "new1")).first()
            is None
        )
    made = portal.client.post(
        "/c/lab/datasets", data={**form, "csrf_token": csrf}, follow_redirects=False
    )
    assert made.status_code == 303
    assert (
        portal.client.post(
            f"{API}/uploads", headers={"Upload-Length": "3", "X-CSRF-Token": csrf}
        ).status_code
        == 201
    )


def test_signing_out_ends_the_session(portal: World) -> None:
    csrf = sign_in(portal.client, "reader")
    assert portal.client.get(f"{API}/collections").status_code == 200
    assert (
        portal.client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code
        == 303
    )
    assert portal.client.get(f"{API}/collections").status_code == 401


def test_failed_sign_ins_are_limited(portal: World) -> None:
    for _ in range(5):
        page = portal.client.get("/login")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        answer = portal.client.post(
            "/login", data={"username": "reader", "password": "wrong!", "csrf_token": token}
        )
        assert answer.status_code == 401
    page = portal.client.get("/login")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    blocked = portal.client.post(
        "/login", data={"username": "reader", "password": PASSWORD, "csrf_token": token}
    )
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    assert "permafrost_session" not in portal.client.cookies


def test_trying_many_names_from_one_address_is_limited_too(portal: World) -> None:
    for i in range(20):
        page = portal.client.get("/login")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        answer = portal.client.post(
            "/login", data={"username": f"guess{i}", "password": "wrong!", "csrf_token": token}
        )
        assert answer.status_code == 401
    page = portal.client.get("/login")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    blocked = portal.client.post(
        "/login", data={"username": "writer", "password": PASSWORD, "csrf_token": token}
    )
    assert blocked.status_code == 429


def test_next_never_leaves_the_site(portal: World) -> None:
    page = portal.client.get("/login?next=//evil.example/x")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    answer = portal.client.post(
        "/login",
        data={
            "username": "reader",
            "password": PASSWORD,
            "csrf_token": token,
            "next": "//evil.example/x",
        },
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/"


def test_file_names_are_escaped_on_the_page(portal: World, tmp_path: Path) -> None:
    name = "<script>alert(1)</script>.txt"
    _ingest(portal.node, tmp_path / "xss", "lab/xss", {name: b"x"})
    sign_in(portal.client, "reader")
    page = portal.client.get("/c/lab/xss")
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.txt" in page.text
