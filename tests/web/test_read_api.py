"""Reading the archive over HTTP: health, collections, datasets, versions, entry pages."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from archive.datasets import parse_ref
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from tests.web.conftest import content

API = "/api/v1"


def test_healthz_answers_ok_when_the_catalog_answers(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_openapi_schema_lists_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/healthz",
        "/metrics",
        f"{API}/collections",
        f"{API}/collections/{{collection}}",
        f"{API}/datasets",
        f"{API}/datasets/{{collection}}/{{dataset}}",
        f"{API}/datasets/{{collection}}/{{dataset}}/versions",
        f"{API}/datasets/{{collection}}/{{dataset}}/versions/stream",
        f"{API}/datasets/{{collection}}/{{dataset}}/versions/{{version}}",
        f"{API}/datasets/{{collection}}/{{dataset}}/versions/{{version}}/entries",
        f"{API}/datasets/{{collection}}/{{dataset}}/versions/{{version}}/files/{{path}}",
        f"{API}/blobs/missing",
        f"{API}/blobs/batch",
        f"{API}/blobs/{{b3}}",
        f"{API}/uploads",
        f"{API}/uploads/{{upload_id}}",
        f"{API}/bags",
        f"{API}/status",
        f"{API}/restores",
        f"{API}/collections/{{collection}}/policy",
        f"{API}/datasets/{{collection}}/{{dataset}}/versions/{{version}}/status",
        f"{API}/datasets/{{collection}}/{{dataset}}/events",
        # Partners only, every request signed (issue 5: federation/api.py).
        "/federation/v1/blobs/{address}",
        "/federation/v1/manifests/{name}",
        "/federation/v1/inventory",
        "/federation/v1/usage",
        "/federation/v1/proofs",
    }
    assert client.get("/docs").status_code == 200


def test_create_and_list_collections(client: TestClient) -> None:
    created = client.post(f"{API}/collections", json={"name": "climate", "title": "Climate"})
    assert created.status_code == 201
    assert created.json()["name"] == "climate"
    assert created.json()["title"] == "Climate"
    again = client.post(f"{API}/collections", json={"name": "climate", "title": "Other"})
    assert again.status_code == 200
    assert again.json()["title"] == "Climate"
    client.post(f"{API}/collections", json={"name": "astro"})
    names = [c["name"] for c in client.get(f"{API}/collections").json()]
    assert names == ["astro", "climate"]


def test_create_collection_refuses_bad_names(client: TestClient) -> None:
    for name in ["", "-lead", "a/b", "x" * 101, "sp ace"]:
        response = client.post(f"{API}/collections", json={"name": name})
        assert response.status_code == 422, name
        assert response.json()["error"] == "RequestValidationError"
    assert client.get(f"{API}/collections").json() == []


def test_collection_with_its_datasets(client: TestClient, sample: dict[str, bytes]) -> None:
    body = client.get(f"{API}/collections/c").json()
    assert body["name"] == "c"
    assert [(d["collection"], d["name"]) for d in body["datasets"]] == [("c", "d")]
    assert body["datasets"][0]["pid"].startswith("urn:uuid:")


def test_unknown_things_are_404(client: TestClient, sample: dict[str, bytes]) -> None:
    for url in [
        f"{API}/collections/nope",
        f"{API}/datasets?collection=nope",
        f"{API}/datasets/c/nope",
        f"{API}/datasets/nope/d",
        f"{API}/datasets/c/d/versions/2",
        f"{API}/datasets/c/nope/versions/latest",
        f"{API}/datasets/c/d/versions/2/entries",
        f"{API}/datasets/c/d/versions/1/files/nope.txt",
        f"{API}/datasets/c/d/versions/1/files/data",
    ]:
        response = client.get(url)
        assert response.status_code == 404, url
        assert response.json()["error"] == "NotFound", url


def test_bad_path_parameters_are_422(client: TestClient, sample: dict[str, bytes]) -> None:
    for url in [
        f"{API}/datasets/c/d/versions/0",
        f"{API}/datasets/c/d/versions/v1",
        f"{API}/datasets/c/d/versions/99999999999999999999",
        f"{API}/datasets/c/d/versions/1/entries?limit=0",
        f"{API}/datasets/c/d/versions/1/entries?limit=1001",
        f"{API}/datasets/c/d/versions/1/entries?after=%00",
    ]:
        assert client.get(url).status_code == 422, url


def test_paths_no_entry_could_have_are_404(client: TestClient, sample: dict[str, bytes]) -> None:
    for path in ["a%00b", "a//b", "..%2Fx", "%C2%86", "data/"]:
        response = client.get(f"{API}/datasets/c/d/versions/1/files/{path}")
        assert response.status_code == 404, path
        assert response.json()["error"] == "NotFound"
        assert client.head(f"{API}/datasets/c/d/versions/1/files/{path}").status_code == 404


def test_405_lists_every_method_of_the_resource(client: TestClient) -> None:
    response = client.request("OPTIONS", f"{API}/collections")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert response.json()["error"] == "MethodNotAllowed"


def test_unparseable_body_is_400_with_the_error_shape(client: TestClient) -> None:
    response = client.post(
        f"{API}/collections", content=b"\xff\xfe{", headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (400, 422)
    assert set(response.json()) >= {"error", "detail"}


def test_datasets_list_and_detail(
    client: TestClient, node: ArchiveNode, sample: dict[str, bytes], tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_bytes(b"x")
    ingest_tree(node, other, parse_ref("e/f"))
    every = client.get(f"{API}/datasets").json()
    assert [(d["collection"], d["name"]) for d in every] == [("c", "d"), ("e", "f")]
    only = client.get(f"{API}/datasets", params={"collection": "e"}).json()
    assert [(d["collection"], d["name"]) for d in only] == [("e", "f")]
    detail = client.get(f"{API}/datasets/c/d").json()
    assert detail["pid"] == every[0]["pid"]
    assert detail["title"] == "d"
    assert detail["metadata"] == {}
    assert [v["number"] for v in detail["versions"]] == [1]
    assert detail["versions"][0]["files"] == len(sample)


def test_version_by_number_and_latest(
    client: TestClient, node: ArchiveNode, sample: dict[str, bytes], tmp_path: Path
) -> None:
    v1 = client.get(f"{API}/datasets/c/d/versions/1").json()
    assert v1["files"] == len(sample)
    assert v1["bytes"] == sum(len(b) for b in sample.values())
    assert v1["previous_b3"] is None
    assert v1["message"] == "first"
    assert len(v1["manifest_b3"]) == 64
    changed = tmp_path / "v2"
    changed.mkdir()
    (changed / "only.txt").write_bytes(b"second version")
    ingest_tree(node, changed, parse_ref("c/d"), message="second")
    latest = client.get(f"{API}/datasets/c/d/versions/latest").json()
    assert latest["number"] == 2
    assert latest["files"] == 1
    assert latest["previous_b3"] == v1["manifest_b3"]
    assert latest["message"] == "second"


def test_entries_carry_digests_and_replicas(client: TestClient, sample: dict[str, bytes]) -> None:
    page = client.get(f"{API}/datasets/c/d/versions/1/entries", params={"limit": 1000}).json()
    assert page["next"] is None
    assert [e["path"] for e in page["items"]] == sorted(sample)
    for entry in page["items"]:
        expected = content(sample[entry["path"]])
        assert entry["blake3"] == expected.b3
        assert entry["sha256"] == expected.sha256
        assert entry["size"] == len(expected.data)
        # The default policy also wants a cold copy: planned at ingest, made by a worker.
        assert sorted((r["tier"], r["state"]) for r in entry["replicas"]) == [
            ("cold", "pending"),
            ("hot", "present"),
        ]


def test_entries_page_by_cursor(client: TestClient, sample: dict[str, bytes]) -> None:
    url = f"{API}/datasets/c/d/versions/latest/entries"
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if after is not None:
            params["after"] = after
        page = client.get(url, params=params).json()
        pages += 1
        assert len(page["items"]) <= 2
        seen += [e["path"] for e in page["items"]]
        after = page["next"]
        if after is None:
            break
        assert after == page["items"][-1]["path"]
    assert seen == sorted(sample)
    assert pages == 3


def test_entries_prefix_is_exact_and_case_sensitive(
    client: TestClient, sample: dict[str, bytes]
) -> None:
    url = f"{API}/datasets/c/d/versions/1/entries"
    data = client.get(url, params={"prefix": "data/"}).json()["items"]
    assert [e["path"] for e in data] == sorted(p for p in sample if p.startswith("data/"))
    assert client.get(url, params={"prefix": "DATA/"}).json()["items"] == []
    percent = client.get(url, params={"prefix": 'odd/say "hi"; 100%'}).json()["items"]
    assert [e["path"] for e in percent] == ['odd/say "hi"; 100% done.txt']
    after = client.get(url, params={"prefix": "data/", "after": "data/noise.bin"}).json()
    assert [e["path"] for e in after["items"]] == ["data/table.csv", "data/tiny-noise.bin"]
