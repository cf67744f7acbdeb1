"""BagIt (RFC 8493): checking a bag strictly, and the rules import and export share.

A bag is checked with the Library of Congress ``bagit`` library (structure,
completeness, every payload and tag manifest with every algorithm, Payload-Oxum)
and then for what that library lets through but an archive must not take in:

- ``bagit.txt`` exactly as RFC 8493 §2.1.1 writes it: two lines,
  ``BagIt-Version: M.N`` and ``Tag-File-Character-Encoding: ENCODING``
  (``BagIt-Version : 1.0`` is refused; bagit-python 1.9.0 accepts it);
- every payload file listed in every payload manifest (§3: "MUST"), every tag file
  in every tag manifest; manifests of an algorithm that cannot be computed
  (bagit skips them silently); malformed manifest lines (bagit logs and skips them);
- tag manifests of bags older than 0.97, which bagit does not read;
- paths percent-encoded as §2.1.3 requires (CR, LF and ``%``): bagit-python 1.9.0
  decodes only ``%0A`` and ``%0D`` (its issue #157), so paths are decoded here; a
  path that exists only as written (as bagit-python writes ``%``) is read literally
  with a warning;
- ``fetch.txt`` (§2.2.3): nothing is ever fetched, so every file it lists must be
  present;
- payload files must be what ingest accepts (:func:`archive.scan.scan_tree`).

Warnings of the bagit library (its log) are kept and shown to the user, with our own
(md5sum-style ``*`` markers, ``./`` prefixes, weak algorithms, tag files that are
not archived). Every problem is reported at once, as bagit-python collects its errors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bagit

from archive.errors import InvalidInput, InvalidTree
from archive.scan import ScanResult, scan_tree

DECLARATION = re.compile(
    r"^BagIt-Version: (?P<version>[0-9]+\.[0-9]+)[ \t]*\r?\n"
    r"Tag-File-Character-Encoding: (?P<encoding>[^\s:]+)[ \t]*(?:\r?\n)?$"
)
MANIFEST_NAME = re.compile(r"^(?P<tag>tag)?manifest-(?P<alg>[A-Za-z0-9_-]+)\.txt$")
STANDARD_TAG_FILES = {"bagit.txt", "bag-info.txt", "package-info.txt", "fetch.txt"}
WEAK_ALGORITHMS = {"md5", "sha1"}
_ENCODED = re.compile(r"%(25|0[AaDd])")
_DECODED = {"25": "%", "0a": "\n", "0d": "\r"}


def encode_path(path: str) -> str:
    """A path as a manifest or fetch.txt writes it (RFC 8493 §2.1.3): CR, LF, % encoded."""
    return path.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def decode_path(text: str) -> str:
    """The inverse of :func:`encode_path`, in one pass (``%250A`` is ``%0A``, not LF)."""
    return _ENCODED.sub(lambda m: _DECODED[m[1].lower()], text)


def unfold(value: str) -> str:
    """A bag-info value with its continuation lines joined (RFC 8493 §2.2.2)."""
    return re.sub(r"[ \t]*(?:\r\n|\r|\n)[ \t]+", " ", value).strip()


class InvalidBag(InvalidTree):
    """A bag refused by validation; ``reasons`` are the validator's, nothing was stored."""

    def __init__(self, bag: str, reasons: list[str]) -> None:
        super().__init__([InvalidInput(r) for r in reasons])
        self.args = (f"invalid bag {bag}: {self.args[0]}",)
        self.reasons = reasons


@dataclass
class CheckedBag:
    """A bag that passed every check: what import needs to know about it."""

    path: Path
    version: str
    algorithms: list[str]
    """Algorithms of the payload manifests."""
    info: dict[str, str | list[str]]
    """bag-info.txt (package-info.txt before 0.96), values unfolded; repeated labels as lists."""
    sha256: dict[str, str]
    """Entry path (relative to data/, NFC) -> SHA-256 from the manifest, when there is one."""
    files: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def title(self) -> str | None:
        for label in ("Title", "External-Description"):
            value = self.info.get(label)
            if isinstance(value, list):
                value = value[0] if value else None
            if value:
                return value
        return None


class _StrictBag(bagit.Bag):  # type: ignore[misc]  # bagit ships no type hints
    """bagit's Bag, with manifest paths decoded as RFC 8493 §2.1.3 says."""

    entries: dict[str, dict[str, str]]
    literal_paths: list[str]

    def _load_manifests(self) -> None:
        self.literal_paths = []
        super()._load_manifests()
        if self.version_info < (1, 0):
            return  # percent-encoding of '%' came with RFC 8493 (BagIt 1.0)
        entries: dict[str, dict[str, str]] = {}
        for raw, hashes in self.entries.items():
            path = decode_path(raw)
            if (
                path != raw
                and not os.path.isfile(os.path.join(self.path, path))
                and os.path.isfile(os.path.join(self.path, raw))
            ):
                path = raw
                self.literal_paths.append(raw)
            if path in entries:
                raise bagit.BagError(f"{path} is listed twice (once percent-encoded)")
            entries[path] = hashes
        self.entries = entries
        self.normalized_manifest_names = {
            bagit.normalize_unicode(path): path for path in self.entries
        }


class _LogCollector(logging.Handler):
    """Records bagit logs on this thread (imports run in parallel in the server)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.warnings: list[str] = []
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        target = self.errors if record.levelno >= logging.ERROR else self.warnings
        target.append(record.getMessage())


#: Lines one manifest may have unless the caller says otherwise (``bag_max_manifest_lines``).
MAX_MANIFEST_LINES = 1_000_000


def check_bag(path: Path, *, max_manifest_lines: int = MAX_MANIFEST_LINES) -> CheckedBag:
    """Validate the bag in folder ``path`` completely (every digest of every file).

    Files are looked at before any is read: a symbolic link out of the bag, a FIFO
    or a device would otherwise be followed, blocked on or read forever by the
    validator. Manifests are counted before bagit parses them (it holds every line
    in memory): one of more than ``max_manifest_lines`` lines is refused unread.

    Raises:
        InvalidBag: every reason the bag is refused.
    """
    reasons = _check_declaration(path)
    scan_reasons, scan = _check_files(path)
    scan_reasons += _check_manifest_lengths(path, max_manifest_lines)
    if scan_reasons:
        raise InvalidBag(path.name, [_relative(r, path) for r in reasons + scan_reasons])
    warnings: list[str] = []
    collector = _LogCollector()
    logger = logging.getLogger("bagit")
    logger.addHandler(collector)
    try:
        bag = _StrictBag(str(path))
        reasons += _check_manifests(bag) + _check_fetch(bag, warnings)
        bag.validate(processes=1)
    except bagit.BagValidationError as exc:
        reasons += [str(d) for d in exc.details] or [exc.message]
    except bagit.BagError as exc:
        reasons.append(str(exc))
    except (UnicodeError, ValueError, OSError) as exc:
        reasons.append(f"unreadable tag file: {exc}")
    else:
        reasons += [f"bagit: {message}" for message in collector.errors]
    finally:
        logger.removeHandler(collector)
    if not reasons:
        info = {label: _info_value(value) for label, value in bag.info.items()}
        reasons += _check_info(info)
    if reasons:
        raise InvalidBag(path.name, [_relative(r, path) for r in reasons])
    assert scan is not None
    checked = CheckedBag(
        path=path,
        version=bag.tags["BagIt-Version"],
        algorithms=_algorithms(bag.manifest_files()),
        info=info,
        sha256={
            unicodedata.normalize("NFC", p[len("data/") :]): h["sha256"].lower()
            for p, h in bag.payload_entries().items()
            if "sha256" in h
        },
        files=len(scan.files),
        bytes=scan.total_bytes,
    )
    warnings = collector.warnings + warnings + scan.warnings
    warnings += [f"{p}: not percent-encoded" for p in bag.literal_paths] + _advice(bag, checked)
    checked.warnings = [_relative(w, path) for w in warnings]
    return checked


def _check_manifest_lengths(path: Path, limit: int) -> list[str]:
    """Manifests of more than ``limit`` lines, counted in bounded reads."""
    reasons = []
    for manifest in sorted(path.iterdir()):
        if not MANIFEST_NAME.match(manifest.name) or not manifest.is_file():
            continue
        lines = 0
        with open(manifest, "rb") as fh:
            while (piece := fh.read(1024 * 1024)) and lines <= limit:
                lines += piece.count(b"\n")
        if lines > limit:
            reasons.append(
                f"{manifest.name} has more than {limit:,} lines, the most a manifest may "
                "have here (bag_max_manifest_lines); it was not read"
            )
    return reasons


def _relative(message: str, bag: Path) -> str:
    """A message with the bag's own location left out (it may be a temporary folder)."""
    where = os.path.abspath(bag)
    return message.replace(where + ": ", "").replace(where + os.sep, "").replace(where, "the bag")


def _check_declaration(path: Path) -> list[str]:
    """bagit.txt exactly as RFC 8493 §2.1.1 writes it."""
    try:
        raw = (path / "bagit.txt").read_bytes()
    except OSError:
        return []  # bagit reports the missing file
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ["bagit.txt is not UTF-8 (RFC 8493 §2.1.1)"]
    if text.startswith("\ufeff"):
        return []  # bagit refuses the byte-order mark itself
    if DECLARATION.match(text):
        return []
    return [
        "bagit.txt must hold exactly the two lines 'BagIt-Version: M.N' and "
        f"'Tag-File-Character-Encoding: ENCODING' (RFC 8493 §2.1.1); found {text[:120]!r}"
    ]


def _algorithms(manifests: Any) -> list[str]:
    names = (MANIFEST_NAME.match(os.path.basename(m)) for m in manifests)
    return sorted(m["alg"] for m in names if m)


def _check_manifests(bag: _StrictBag) -> list[str]:
    """Manifests bagit would skip, and files missing from some manifest."""
    reasons: list[str] = []
    for name in sorted(os.listdir(bag.path)):
        found = MANIFEST_NAME.match(name)
        if found and found["alg"] not in bagit.CHECKSUM_ALGOS:
            reasons.append(f"{name}: algorithm {found['alg']!r} cannot be checked here")
    payload_algs = set(_algorithms(bag.manifest_files()))
    tag_algs = set(_algorithms(bag.tagmanifest_files()))
    for entry_path, hashes in sorted(bag.entries.items()):
        wanted = payload_algs if entry_path.startswith("data" + os.sep) else tag_algs
        for alg in sorted(wanted - set(hashes)):
            kind = "" if wanted is payload_algs else "tag"
            reasons.append(
                f"{entry_path} is not listed in {kind}manifest-{alg}.txt "
                "(every file must be in every manifest, RFC 8493 §3)"
            )
    if bag.version_info < (0, 97):
        reasons += _check_old_tagmanifests(bag)
    return reasons


def _check_old_tagmanifests(bag: _StrictBag) -> list[str]:
    """Tag manifests of bags before 0.97, which bagit does not verify."""
    reasons: list[str] = []
    root = os.path.realpath(bag.path)
    for manifest in bag.tagmanifest_files():
        alg = MANIFEST_NAME.match(os.path.basename(manifest))["alg"]  # type: ignore[index]
        if alg not in bagit.CHECKSUM_ALGOS:
            continue
        with open(manifest, encoding=bag.encoding) as fh:
            lines = [line.strip().lstrip("\ufeff") for line in fh]
        for line in lines:
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            if len(parts) != 2:
                reasons.append(f"{os.path.basename(manifest)}: malformed line {line!r}")
                continue
            expected, name = parts[0].lower(), os.path.normpath(parts[1].lstrip("*"))
            target = os.path.realpath(os.path.join(root, name))
            if os.path.isabs(name) or not target.startswith(root + os.sep):
                reasons.append(f"{os.path.basename(manifest)}: unsafe path {name!r}")
                continue
            try:
                with open(target, "rb") as fh:
                    found = hashlib.file_digest(fh, alg).hexdigest()
            except OSError as exc:
                reasons.append(f"{name}: listed in a tag manifest but unreadable ({exc.strerror})")
                continue
            if found != expected:
                reasons.append(
                    f'{name} {alg} validation failed: expected="{expected}" found="{found}"'
                )
    return reasons


def _info_value(value: str | list[str]) -> str | list[str]:
    if isinstance(value, list):
        return [unfold(v) for v in value]
    return unfold(value)


def _check_files(path: Path) -> tuple[list[str], ScanResult | None]:
    """Tag files must be regular files; the payload what ingest accepts (archive.scan)."""
    reasons: list[str] = []
    for folder, dirs, files in os.walk(path):
        if folder == str(path):
            dirs[:] = [d for d in dirs if d != "data"]
        for name in dirs + files:
            full = os.path.join(folder, name)
            mode = os.lstat(full).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                reasons.append(f"{os.path.relpath(full, path)}: not a regular file or folder")
    data = path / "data"
    if data.is_symlink() or not data.is_dir():
        if data.is_symlink():
            reasons.append("data is a symbolic link")
        return reasons, None  # bagit says that data/ is missing
    try:
        scan = scan_tree(data)
    except InvalidTree as exc:
        return reasons + [str(p) for p in exc.problems], None
    return reasons, scan


def _check_fetch(bag: _StrictBag, warnings: list[str]) -> list[str]:
    """fetch.txt (RFC 8493 §2.2.3): nothing is fetched, so what it lists must be here."""
    try:
        fetched = [decode_path(name) for _, _, name in bag.fetch_entries()]
    except ValueError:
        return ["fetch.txt: a line is not 'URL LENGTH FILEPATH' (RFC 8493 §2.2.3)"]
    absent = [n for n in fetched if not os.path.isfile(os.path.join(bag.path, n))]
    if absent:
        return [
            f"fetch.txt lists {len(absent)} file(s) not in the bag ({', '.join(absent[:5])}); "
            "Permafrost does not fetch remote content: complete the bag first"
        ]
    if fetched:
        warnings.append(f"fetch.txt ignored: all {len(fetched)} file(s) it lists are here")
    return []


def _check_info(info: dict[str, str | list[str]]) -> list[str]:
    """Text the catalog cannot store (PostgreSQL refuses NUL in text and JSON)."""
    return [
        f"bag-info.txt: label {label!r} holds a NUL character"
        for label, value in info.items()
        if any("\x00" in t for t in [label, *(value if isinstance(value, list) else [value])])
    ]


def _advice(bag: _StrictBag, checked: CheckedBag) -> list[str]:
    """Warnings about a valid bag: things a careful sender would have done otherwise."""
    advice: list[str] = []
    if bag.version_info < (1, 0):
        advice.append(f"BagIt {checked.version} predates RFC 8493 (BagIt 1.0)")
    if not bag.has_oxum():
        advice.append("bag-info.txt has no Payload-Oxum (RFC 8493 §2.2.2 recommends one)")
    if set(checked.algorithms) <= WEAK_ALGORITHMS:
        advice.append(
            f"only {'/'.join(checked.algorithms)} manifests: these digests are not "
            "collision-resistant (SHA-256 and BLAKE3 are recorded on ingest)"
        )
    for manifest in [*bag.manifest_files(), *bag.tagmanifest_files()]:
        name = os.path.basename(manifest)
        with open(manifest, encoding=bag.encoding, errors="replace") as fh:
            lines = [line.lstrip("\ufeff") for line in fh]
        if any(re.match(r"^\S+\s+\*", line) for line in lines):
            advice.append(f"{name}: md5sum-style '*' before paths (not in RFC 8493 §2.1.3)")
        if any(re.match(r"^\S+\s+\*?\./", line) for line in lines):
            advice.append(f"{name}: paths start with './' (RFC 8493 §2.1.3 paths do not)")
    others = sorted(
        name
        for name in os.listdir(bag.path)
        if name != "data" and name not in STANDARD_TAG_FILES and not MANIFEST_NAME.match(name)
    )
    if others:
        advice.append(
            "tag files not archived (only the payload in data/ is): " + ", ".join(others[:10])
        )
    return advice
