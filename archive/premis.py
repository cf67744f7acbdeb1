"""A dataset's preservation metadata as a PREMIS 3.0 XML document.

PREMIS (Preservation Metadata: Implementation Strategies, Data Dictionary 3.0,
schema ``http://www.loc.gov/premis/v3``) is how archives exchange what they know
about the objects they keep. The document holds, in the schema's order:

* objects: the dataset as an ``intellectualEntity`` (its persistent id), each
  version as a ``representation`` that ``includes`` its files, and each distinct
  content (blob) as a ``file`` with its fixity (SHA-256 and BLAKE3 of the content),
  size, original names, and one ``storage`` per copy (tier and key);
* events: every event about those objects (ingestion, message digest calculation,
  replication, fixity check, repair, restore, deletion), with outcome, agent and the
  objects they link to;
* agents: the software agents that acted (``permafrost/ingest``, ``permafrost/fixity``...).

Event types are written with the PREMIS eventType vocabulary as their authority
(``http://id.loc.gov/vocabulary/preservation/eventType``).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session, col, select

from archive.catalog import models
from archive.datasets import DatasetRef, get_dataset
from archive.events import dataset_events

PREMIS_NS = "http://www.loc.gov/premis/v3"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA_LOCATION = "http://www.loc.gov/premis/v3 http://www.loc.gov/standards/premis/premis.xsd"
EVENT_TYPE_AUTHORITY = "http://id.loc.gov/vocabulary/preservation/eventType"
HASH_AUTHORITY = "http://id.loc.gov/vocabulary/preservation/cryptographicHashFunctions"
AGENT_PREFIX = "permafrost"

ET.register_namespace("premis", PREMIS_NS)
ET.register_namespace("xsi", XSI_NS)


def _q(name: str) -> str:
    return f"{{{PREMIS_NS}}}{name}"


def _sub(parent: ET.Element, name: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, _q(name), {k: v for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


def _identifier(parent: ET.Element, prefix: str, kind: str, value: str) -> None:
    holder = _sub(parent, prefix)
    base = prefix[0].lower() + prefix[1:]
    _sub(holder, f"{base}Type", kind)
    _sub(holder, f"{base}Value", value)


def _object(root: ET.Element, xsi_type: str) -> ET.Element:
    return _sub(root, "object", **{f"{{{XSI_NS}}}type": f"premis:{xsi_type}"})


def premis_document(ref: DatasetRef, *, session: Session) -> ET.ElementTree[ET.Element]:
    """The PREMIS 3.0 document of every version of ``ref``'s dataset."""
    dataset = get_dataset(ref.collection, ref.dataset, session=session)
    root = ET.Element(
        _q("premis"), {"version": "3.0", f"{{{XSI_NS}}}schemaLocation": SCHEMA_LOCATION}
    )
    events = dataset_events(dataset, session=session)
    event_ids: dict[tuple[str, str], list[str]] = defaultdict(list)
    for e in events:
        event_ids[(e.object_type, e.object_id)].append(str(e.id))

    entity = _object(root, "intellectualEntity")
    _identifier(entity, "objectIdentifier", "urn", dataset.pid)
    _sub(entity, "originalName", f"{ref.collection}/{ref.dataset}")

    versions = session.exec(
        select(models.Version)
        .where(models.Version.dataset_id == dataset.id)
        .order_by(col(models.Version.number))
    ).all()
    names: dict[str, list[str]] = defaultdict(list)
    for version in versions:
        rep = _object(root, "representation")
        vid = f"{dataset.pid}@v{version.number}"
        _identifier(rep, "objectIdentifier", "urn", vid)
        _identifier(rep, "objectIdentifier", "manifest BLAKE3", version.manifest_b3)
        _sub(rep, "originalName", f"{ref.collection}/{ref.dataset}@v{version.number}")
        entries = session.exec(
            select(models.Entry.path, models.Entry.blob_b3)
            .where(models.Entry.version_id == version.id)
            .order_by(col(models.Entry.path))
        ).all()
        if entries:
            relation = _sub(rep, "relationship")
            _sub(relation, "relationshipType", "structural")
            _sub(relation, "relationshipSubType", "includes")
            for path, b3 in entries:
                names[b3].append(path)
                related = _sub(relation, "relatedObjectIdentifier")
                _sub(related, "relatedObjectIdentifierType", "BLAKE3")
                _sub(related, "relatedObjectIdentifierValue", b3)
        for kind in ("version", "manifest"):
            for event_id in event_ids.get((kind, vid), []):
                _identifier(rep, "linkingEventIdentifier", "local", event_id)

    copies = _copies(list(names), session=session)
    for b3 in sorted(names):
        blob = session.get(models.Blob, b3)
        assert blob is not None
        file = _object(root, "file")
        _identifier(file, "objectIdentifier", "BLAKE3", b3)
        characteristics = _sub(file, "objectCharacteristics")
        _sub(characteristics, "compositionLevel", "0")
        for algorithm, digest in (("SHA-256", blob.sha256), ("BLAKE3", blob.b3)):
            fixity = _sub(characteristics, "fixity")
            _sub(
                fixity,
                "messageDigestAlgorithm",
                algorithm,
                authority="cryptographicHashFunctions",
                authorityURI=HASH_AUTHORITY,
            )
            _sub(fixity, "messageDigest", digest)
            _sub(fixity, "messageDigestOriginator", f"{AGENT_PREFIX}/ingest")
        _sub(characteristics, "size", str(blob.size))
        fmt = _sub(characteristics, "format")
        designation = _sub(fmt, "formatDesignation")
        _sub(designation, "formatName", "application/octet-stream")
        _sub(fmt, "formatNote", f"stored with codec {blob.codec}, {blob.stored_size} bytes")
        _sub(file, "originalName", names[b3][0])
        for tier, key, state in copies.get(b3, []):
            storage = _sub(file, "storage")
            location = _sub(storage, "contentLocation")
            _sub(location, "contentLocationType", "tier key")
            _sub(location, "contentLocationValue", key)
            _sub(storage, "storageMedium", f"{tier} ({state})")
        for event_id in event_ids.get(("blob", b3), []):
            _identifier(file, "linkingEventIdentifier", "local", event_id)

    agents: set[str] = set()
    for e in events:
        event = _sub(root, "event")
        _identifier(event, "eventIdentifier", "local", str(e.id))
        _sub(event, "eventType", e.type, authority="eventType", authorityURI=EVENT_TYPE_AUTHORITY)
        _sub(event, "eventDateTime", e.created_at.isoformat())
        detail = _sub(event, "eventDetailInformation")
        where = f" on tier {e.tier}" if e.tier else ""
        _sub(detail, "eventDetail", f"{e.type} of {e.object_type} {e.object_id}{where}")
        outcome = _sub(event, "eventOutcomeInformation")
        _sub(outcome, "eventOutcome", e.outcome)
        if e.detail:
            note = _sub(outcome, "eventOutcomeDetail")
            _sub(note, "eventOutcomeDetailNote", json.dumps(e.detail, sort_keys=True, default=str))
        link = _sub(event, "linkingAgentIdentifier")
        _sub(link, "linkingAgentIdentifierType", "local")
        _sub(link, "linkingAgentIdentifierValue", e.agent)
        _sub(link, "linkingAgentRole", "executing program")
        agents.add(e.agent)
        target = _sub(event, "linkingObjectIdentifier")
        kind = {"blob": "BLAKE3", "pack": "pack BLAKE3"}.get(e.object_type, "urn")
        _sub(target, "linkingObjectIdentifierType", kind)
        _sub(target, "linkingObjectIdentifierValue", e.object_id)
        _sub(target, "linkingObjectRole", "outcome" if e.type == "repair" else "source")

    for name in sorted(agents):
        agent = _sub(root, "agent")
        _identifier(agent, "agentIdentifier", "local", name)
        _sub(agent, "agentName", name)
        _sub(agent, "agentType", "software")
    return ET.ElementTree(root)


def _copies(b3s: list[str], *, session: Session) -> dict[str, list[tuple[str, str, str]]]:
    """Blob -> (tier, key, state) of every copy, loose or inside a pack."""
    R, T, PM = models.Replica, models.Tier, models.PackMember
    found: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for i in range(0, len(b3s), 900):
        batch = b3s[i : i + 900]
        loose = session.execute(
            sa.select(col(R.blob_b3), col(T.name), col(R.key), col(R.state))
            .join(T, col(T.id) == col(R.tier_id))
            .where(col(R.blob_b3).in_(batch))
        )
        packed = session.execute(
            sa.select(col(PM.blob_b3), col(T.name), col(R.key), col(R.state), col(PM.offset))
            .join(R, col(R.pack_id) == col(PM.pack_id))
            .join(T, col(T.id) == col(R.tier_id))
            .where(col(PM.blob_b3).in_(batch))
        )
        for b3, tier, key, state in loose:
            found[b3].append((tier, key, state))
        for b3, tier, key, state, offset in packed:
            found[b3].append((tier, f"{key}@{offset}", state))
    return found


def write_premis(ref: DatasetRef, path: Path, *, session: Session) -> int:
    """Write the document to ``path``; returns how many events it holds."""
    tree = premis_document(ref, session=session)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
    return len(tree.getroot().findall(_q("event")))
