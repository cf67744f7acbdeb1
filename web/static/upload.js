// Folder upload for the Permafrost portal: resumable (tus 1.0 core), no build step.
// Each file goes to /api/v1/uploads in pieces; the server hashes and stores it and
// answers its BLAKE3 and SHA-256, which the commit then names. An upload's address
// is kept in localStorage, so after a dropped connection or a closed tab the same
// file (same path, size and modification time) resumes where the server says it stands.
"use strict";
(function () {
  const form = document.getElementById("upload");
  if (!form) return;
  const collection = form.dataset.collection;
  const dataset = form.dataset.dataset;
  const csrf = form.dataset.csrf;
  const PIECE = 8 * 1024 * 1024;
  const RETRIES = 8;
  const PARALLEL = 3;
  const queueBody = document.querySelector("#queue tbody");
  const total = document.getElementById("total-progress");
  const summary = document.getElementById("summary");
  const start = document.getElementById("start");
  let items = [];

  function stripTop(paths) {
    // A dropped or chosen folder arrives as "folder/..."; the version holds its contents.
    const tops = new Set(paths.map((p) => p.split("/")[0]));
    const allNested = paths.every((p) => p.includes("/"));
    return tops.size === 1 && allNested ? paths.map((p) => p.slice(p.indexOf("/") + 1)) : paths;
  }

  function setFiles(list) {
    const paths = stripTop(list.map((f) => f.path));
    items = list.map((f, i) => ({ file: f.file, path: paths[i], sent: 0, result: null }));
    queueBody.textContent = "";
    for (const item of items) {
      const row = document.createElement("tr");
      const name = document.createElement("td");
      name.textContent = item.path;
      const size = document.createElement("td");
      size.textContent = item.file.size + " B";
      const cell = document.createElement("td");
      const bar = document.createElement("progress");
      bar.max = Math.max(item.file.size, 1);
      bar.value = 0;
      bar.setAttribute("aria-label", "Progress of " + item.path);
      cell.appendChild(bar);
      row.append(name, size, cell);
      row.dataset.path = item.path;
      queueBody.appendChild(row);
      item.bar = bar;
    }
    summary.textContent = items.length + " file(s) ready to upload.";
    start.disabled = items.length === 0;
    updateTotal();
  }

  function updateTotal() {
    const want = items.reduce((n, it) => n + it.file.size, 0);
    const sent = items.reduce((n, it) => n + it.sent, 0);
    total.max = Math.max(want, 1);
    total.value = sent;
  }

  function fromInput(input) {
    setFiles(Array.from(input.files).map((f) => ({ file: f, path: f.webkitRelativePath || f.name })));
  }
  document.getElementById("folder-input").addEventListener("change", (e) => fromInput(e.target));
  document.getElementById("files-input").addEventListener("change", (e) => fromInput(e.target));

  function readEntries(reader) {
    return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
  }
  async function walk(entry, prefix, out) {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file: file, path: prefix + entry.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await readEntries(reader);  // at most 100 at a time in Chromium
        if (!batch.length) break;
        for (const child of batch) await walk(child, prefix + entry.name + "/", out);
      }
    }
  }
  const zone = document.getElementById("dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const entries = Array.from(e.dataTransfer.items).map((i) => i.webkitGetAsEntry()).filter(Boolean);
    const out = [];
    for (const entry of entries) await walk(entry, "", out);
    setFiles(out);
  });

  function key(item) {
    return ["permafrost-upload", collection, dataset, item.path, item.file.size, item.file.lastModified].join("|");
  }

  function request(method, url, headers, body, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open(method, url);
      xhr.setRequestHeader("Tus-Resumable", "1.0.0");
      xhr.setRequestHeader("X-CSRF-Token", csrf);
      for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
      if (onProgress) xhr.upload.onprogress = (e) => onProgress(e.loaded);
      xhr.onload = () => resolve(xhr);
      xhr.onerror = () => reject(new Error("network error"));
      xhr.send(body);
    });
  }

  function digests(xhr) {
    const b3 = xhr.getResponseHeader("Upload-Blake3");
    return b3 ? { blake3: b3, sha256: xhr.getResponseHeader("Upload-Sha256") } : null;
  }

  async function locate(item) {
    // Where this file's upload stands on the server: [url, offset, digests or null].
    const known = localStorage.getItem(key(item));
    if (known) {
      const head = await request("HEAD", known, {});
      if (head.status === 200) {
        return [known, Number(head.getResponseHeader("Upload-Offset")), digests(head)];
      }
      localStorage.removeItem(key(item));
    }
    const made = await request("POST", "/api/v1/uploads", { "Upload-Length": String(item.file.size) });
    if (made.status !== 201) throw new Error("cannot start upload: HTTP " + made.status + " " + made.responseText);
    const url = made.getResponseHeader("Location");
    localStorage.setItem(key(item), url);
    return [url, Number(made.getResponseHeader("Upload-Offset")), digests(made)];
  }

  async function send(item) {
    for (let attempt = 0; ; attempt++) {
      try {
        let [url, offset, done] = await locate(item);
        while (!done) {
          const end = Math.min(offset + PIECE, item.file.size);
          const at = offset;
          const piece = await request(
            "PATCH", url,
            { "Upload-Offset": String(offset), "Content-Type": "application/offset+octet-stream" },
            item.file.slice(offset, end),
            (loaded) => { item.sent = at + loaded; item.bar.value = item.sent; updateTotal(); },
          );
          if (piece.status !== 204) throw new Error("HTTP " + piece.status + " " + piece.responseText);
          offset = Number(piece.getResponseHeader("Upload-Offset"));
          done = digests(piece);
        }
        item.sent = item.file.size;
        item.bar.value = item.bar.max;
        updateTotal();
        item.result = done;
        return;
      } catch (err) {
        if (attempt >= RETRIES) throw err;
        summary.textContent = "Connection trouble (" + err.message + "); resuming " + item.path + "…";
        await new Promise((r) => setTimeout(r, Math.min(30000, 500 * 2 ** attempt)));
      }
    }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    start.disabled = true;
    try {
      // A few files at a time: small files are mostly round trips, large ones share the link.
      let next = 0;
      let done = 0;
      async function worker() {
        while (next < items.length) {
          const item = items[next++];
          await send(item);
          summary.textContent = "Uploaded " + (++done) + " of " + items.length + " file(s)…";
        }
      }
      summary.textContent = "Uploading " + items.length + " file(s)…";
      await Promise.all(Array.from({ length: Math.min(PARALLEL, items.length) }, worker));
      summary.textContent = "Committing the version…";
      const entries = items.map((it) => ({
        path: it.path, blake3: it.result.blake3, sha256: it.result.sha256, size: it.file.size,
      }));
      const answer = await fetch(
        "/api/v1/datasets/" + encodeURIComponent(collection) + "/" + encodeURIComponent(dataset) + "/versions",
        {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
          body: JSON.stringify({ entries: entries, message: document.getElementById("message").value }),
        },
      );
      const body = await answer.json();
      if (!answer.ok) throw new Error(body.detail || ("HTTP " + answer.status));
      for (const item of items) localStorage.removeItem(key(item));
      summary.textContent = "Committed version " + body.number + ".";
      window.location.assign("/c/" + collection + "/" + dataset + "?v=" + body.number);
    } catch (err) {
      summary.textContent = "Upload stopped: " + err.message + ". Press the button again to resume.";
      start.disabled = false;
    }
  });
})();
