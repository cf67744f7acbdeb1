"""The baseline of ``bench/federation.py``: a bare FastAPI endpoint that writes a PUT body
to a file, with no signature, digest or catalog (``uvicorn bench.federation_bare:app``)."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Request

app = FastAPI()
FOLDER = Path(os.environ.get("BARE_UPLOAD_DIR", "/tmp/bare-uploads"))


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.put("/upload/{name}")
async def upload(name: str, request: Request) -> dict[str, int]:
    FOLDER.mkdir(parents=True, exist_ok=True)
    size = 0
    with (FOLDER / Path(name).name).open("wb") as out:
        async for chunk in request.stream():
            out.write(chunk)
            size += len(chunk)
    return {"size": size}
