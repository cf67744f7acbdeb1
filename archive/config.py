"""Configuration: one ``Settings`` object, built once and passed down.

Sources, strongest first: ``PERMAFROST_*`` environment variables (nested with
``__``, e.g. ``PERMAFROST_TIERS__HOT__BUCKET``), then a TOML file found via
``--config``, ``PERMAFROST_CONFIG`` or ``./permafrost.toml``. With no file at all
the archive is embedded: SQLite and two local folder tiers under ``./permafrost-data``.
Unknown keys are rejected loudly, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from archive.errors import ConfigError
from archive.policy import ReplicationPolicy

CONFIG_FILE_NAME = "permafrost.toml"
MiB = 1024 * 1024

Role = Literal["hot", "cold", "partner"]
RetrievalSpeed = Literal["expedited", "standard", "bulk"]


class _TierBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role = "hot"
    region: str | None = None

    def backend_settings(self) -> dict[str, Any]:
        """Keyword arguments for :func:`tiers.open_tier` (secrets revealed)."""
        out: dict[str, Any] = {}
        for field in type(self).model_fields:
            if field in ("kind", "role", "region"):
                continue
            value = getattr(self, field)
            out[field] = value.get_secret_value() if isinstance(value, SecretStr) else value
        return out

    def public_settings(self) -> dict[str, Any]:
        """Settings safe to store in the catalog or print: no secrets."""
        data = self.model_dump(mode="json", exclude={"kind", "role", "region"})
        return {k: v for k, v in data.items() if v is not None and "secret" not in k}


class LocalTierConfig(_TierBase):
    kind: Literal["local"] = "local"
    path: Path
    fsync: bool = True
    """Flush file and folder to disk before a promote returns (only turn off for tests)."""


class LocalColdTierConfig(_TierBase):
    """A local folder with Glacier's read contract (``tiers.local_cold.LocalColdTier``)."""

    kind: Literal["local-cold"] = "local-cold"
    role: Role = "cold"
    path: Path
    restore_delay_seconds: float = Field(default=0.0, ge=0)
    """How long a restore takes before reads are allowed (0: ready at once)."""
    restore_days: int = Field(default=7, ge=1)
    """How long a restore lasts unless the request says otherwise."""
    fsync: bool = True
    price_per_gib: float = Field(default=0.0, ge=0)
    """What a restore is shown to cost per GiB (a local folder costs nothing by default)."""


class S3TierConfig(_TierBase):
    kind: Literal["s3"] = "s3"
    bucket: str = Field(min_length=3)
    endpoint_url: str | None = None
    region_name: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    profile: str | None = None
    storage_class: str | None = None
    prefix: str = ""
    checksum_calculation: Literal["when_supported", "when_required"] = "when_required"
    """boto3's ``request_checksum_calculation``: some S3-compatible stores reject its defaults."""
    multipart_threshold: int = Field(default=64 * MiB, ge=5 * MiB)
    multipart_chunksize: int = Field(default=16 * MiB, ge=5 * MiB)
    create_bucket: bool = False
    addressing_style: Literal["auto", "path", "virtual"] = "path"
    restore_days: int = Field(default=7, ge=1)
    """How long a Glacier restore (``RestoreObject`` ``Days``) lasts unless asked otherwise."""
    retrieval_hours: dict[RetrievalSpeed, float] | None = None
    """Typical hours a restore takes per speed; unset speeds keep the defaults from AWS
    documentation (GLACIER: expedited 0.08, standard 4, bulk 12; DEEP_ARCHIVE: standard
    12, bulk 48; see ``tiers.s3_restore``)."""
    retrieval_prices: dict[RetrievalSpeed, float] | None = None
    """Retrieval price per GiB and speed; unset speeds keep AWS us-east-1 list prices."""


class FederationTierConfig(_TierBase):
    """A partner institution's Permafrost node (issue 5; ``federation.tier.FederationTier``).

    Requests are signed with this node's key (``node_key_file``, filled in from the
    settings). With ``encrypt``, every object is sealed with AES-256-GCM before it
    leaves, under a per-object key derived from ``collection_key_file``, which never
    leaves this node: back it up with the catalog, or the partner's copies are noise.
    """

    kind: Literal["federation"] = "federation"
    role: Role = "partner"
    url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    encrypt: bool = False
    collection_key_file: Path | None = None
    """32 random bytes (``permafrost partner key``); needed when ``encrypt`` is on."""
    node_key_file: Path | None = None
    timeout_seconds: float = Field(default=60.0, gt=0)
    prove_after_put: bool = True
    """Have the partner prove it holds each copy right after accepting it (it re-reads
    the bytes); off, a copy rests on the partner's own check of its address until the
    first scheduled audit."""

    @model_validator(mode="after")
    def _key_for_encryption(self) -> FederationTierConfig:
        if self.encrypt and self.collection_key_file is None:
            raise ValueError("a federation tier with encrypt = true needs collection_key_file")
        return self


AuditLevel = Literal["light", "stored", "deep"]
DAY = 86_400.0


class AuditPolicy(BaseModel):
    """How often a tier's copies are re-verified and how deeply (fixity audits, issue 4).

    Levels: ``light`` checks existence, size and the provider's own checksum without
    reading bytes; ``stored`` reads the stored bytes (BLAKE3 against ``stored_b3``);
    ``deep`` also decodes them (BLAKE3 against the address, SHA-256). On tiers that need
    a restore to read (cold), scheduled audits are light and a random sample of copies
    is read within ``restore_budget_bytes`` per ``interval_days``.
    """

    model_config = ConfigDict(extra="forbid")

    interval_days: float = Field(default=90.0, gt=0)
    """Every copy is audited at least once in this many days."""
    level: AuditLevel = "stored"
    deep_every: int = Field(default=4, ge=0)
    """Every Nth audit of a copy is deep instead of ``level`` (0: never)."""
    bytes_per_second: float = Field(default=0.0, ge=0)
    """Read rate limit of audits on this tier, shared by every worker auditing it at
    the time (0: unlimited)."""
    restore_budget_bytes: int = Field(default=0, ge=0)
    """Cold tiers: bytes that sampled stored/deep audits may restore per interval."""

    @property
    def interval_seconds(self) -> float:
        return self.interval_days * DAY


DEFAULT_AUDIT: dict[str, AuditPolicy] = {
    "hot": AuditPolicy(interval_days=90, level="stored", deep_every=4),
    "cold": AuditPolicy(interval_days=180, level="light", deep_every=0),
    "partner": AuditPolicy(interval_days=180, level="stored", deep_every=0),
}


TierConfig = Annotated[
    LocalTierConfig | LocalColdTierConfig | S3TierConfig | FederationTierConfig,
    Field(discriminator="kind"),
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PERMAFROST_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: Path = Path("permafrost-data")
    database_url: str | None = None
    """SQLAlchemy URL; default ``sqlite:///<data_dir>/catalog.db``."""
    tiers: dict[str, TierConfig] = Field(default_factory=dict)
    hot_tier: str = "hot"
    """The tier that ingest writes to."""
    zstd_level: int = Field(default=3, ge=1, le=22)
    pack_below: int = Field(default=1 * MiB, ge=0)
    """Blobs smaller than this are written into pack objects on the hot tier (0: never)."""
    pack_size: int = Field(default=64 * MiB, ge=1 * MiB)
    ingest_threads: int = Field(default=0, ge=0)
    """Threads that read and hash small files (0: one per core, at least 2)."""
    host: str = "127.0.0.1"
    port: int = 8000
    api_token: SecretStr | None = None
    """A bearer token that acts as an administrator (``Authorization: Bearer <token>``),
    for deployments scripted before accounts; personal tokens (``permafrost token
    create``) are the usual way in. Every API route needs one or the other."""
    max_upload_bytes: int = Field(default=5 * 1024**4, ge=1)
    """Largest blob one upload may carry (default 5 TiB, S3's own object limit); a larger
    declared or streamed body is refused with 413 and nothing is kept."""
    max_json_body_bytes: int = Field(default=1 * MiB, ge=1024)
    """Largest body of a request the API reads whole (JSON documents, forms); larger is
    refused with 413 before it is read. Streamed uploads have their own limits."""
    max_commit_body_bytes: int = Field(default=64 * MiB, ge=1024)
    """Largest JSON version commit (``POST .../versions``, at most 100,000 entries);
    larger versions go through the NDJSON route, which streams."""
    max_batch_bytes: int = Field(default=64 * MiB, ge=1024)
    """Largest body of a batch upload (``POST /blobs/batch``: many blobs under
    ``pack_below`` in one tar stream, stored as one pack); larger is refused with 413."""
    batch_max_members: int = Field(default=1000, ge=1, le=10_000)
    """Blobs one batch upload may carry; a longer index is refused with 422."""
    body_idle_seconds: float = Field(default=60.0, gt=0)
    """A request body that stalls this long (a client that sends less than its
    ``Content-Length`` and waits) is cut off with 408."""
    rate_per_second: float = Field(default=100.0, ge=0)
    """Requests per second each API token or portal sign-in may make on average, per
    server process (0: unlimited); beyond it 429 with ``Retry-After``."""
    rate_burst: int = Field(default=1000, ge=1)
    """Requests one token may make at once before ``rate_per_second`` applies."""
    anonymous_rate_per_second: float = Field(default=20.0, ge=0)
    """The same, per client address, for requests without valid credentials (0: unlimited)."""
    anonymous_rate_burst: int = Field(default=200, ge=1)
    max_concurrent_uploads: int = Field(default=64, ge=1)
    """Uploads (blob PUTs, batches, resumable appends, bags) one server process takes at once,
    waiting ones included; more are refused with 503 and ``Retry-After``."""
    upload_threads: int = Field(default=16, ge=1, le=256)
    """Of those, how many are hashed and written at once (the others wait their turn)."""
    bag_max_manifest_lines: int = Field(default=1_000_000, ge=1)
    """Lines one BagIt manifest may have; a longer one is refused before it is parsed."""
    organization: str = "Permafrost"
    default_policy: ReplicationPolicy | None = None
    """Copies wanted for a collection that has no policy of its own (default: one copy
    on a tier of each role the configuration declares)."""
    cold_pack_below: int = Field(default=1 * MiB, ge=0)
    """Blobs smaller than this travel to cold tiers in tar packs (0: never)."""
    cold_pack_size: int = Field(default=64 * MiB, ge=1 * MiB)
    lease_seconds: float = Field(default=300.0, gt=0)
    """How long a worker owns a claimed row; a crashed worker's rows return after this."""
    worker_batch: int = Field(default=64, ge=1)
    replicate_threads: int = Field(default=2, ge=1, le=64)
    """Loose copies one worker makes at once (each streams one blob; memory is per copy)."""
    worker_poll_seconds: float = Field(default=2.0, gt=0)
    plan_full_every_seconds: float = Field(default=3600.0, gt=0)
    """The worker's plan loop looks at versions created since its last pass (with a
    margin of ``lease_seconds``); every this many seconds, and when it starts, it
    looks at every entry, which also covers a version whose commit took longer."""
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_max_seconds: float = Field(default=600.0, gt=0)
    audit: dict[str, AuditPolicy] = Field(default_factory=dict)
    """Audit policy per tier name or per role (a tier's name wins over its role);
    unset tiers follow :data:`DEFAULT_AUDIT` for their role."""
    audit_batch: int = Field(default=256, ge=1)
    """Copies one audit pass claims at most."""
    audit_threads: int = Field(default=1, ge=1, le=64)
    """Copies a worker audits at once. More use more cores (as ``b3sum`` and
    ``zstd -d | b3sum`` do) at the expense of ingest; the per-tier byte rate still applies."""

    node_key_file: Path | None = None
    """This node's Ed25519 private key (PKCS#8 PEM, mode 0600), made by ``permafrost
    init``; default ``<data_dir>/node.key``. Partners know us by its public key."""
    public_url: str | None = None
    """The URL partners reach this node at (default ``http://<host>:<port>``)."""
    federation_skew_seconds: float = Field(default=300.0, gt=0)
    """Signed federation requests older or newer than this are refused (RFC 9421 ``created``)."""
    federation_tier: str | None = None
    """The tier that holds what partners send us (default: ``hot_tier``)."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Addresses (or CIDR networks) of reverse proxies in front of ``permafrost serve``
    whose ``X-Forwarded-Proto``, ``-Host`` and ``-For`` headers are believed, so the URI a
    partner signed (RFC 9421 ``@target-uri``) and the client address rate limits count are
    the public ones. Empty (default): no forwarding header is believed, from anyone."""

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir / 'catalog.db'}"
        if self.node_key_file is None:
            self.node_key_file = self.data_dir / "node.key"
        if self.public_url is None:
            self.public_url = f"http://{self.host}:{self.port}"
        for tier in self.tiers.values():
            if isinstance(tier, FederationTierConfig) and tier.node_key_file is None:
                tier.node_key_file = self.node_key_file
        if not self.tiers:
            self.tiers = {
                "hot": LocalTierConfig(path=self.data_dir / "tiers" / "hot", role="hot"),
                "cold": LocalColdTierConfig(path=self.data_dir / "tiers" / "cold"),
            }
        if self.default_policy is None:
            roles = {tier.role: 1 for tier in self.tiers.values()}
            self.default_policy = ReplicationPolicy(copies=roles)
        unknown = set(self.audit) - set(self.tiers) - set(DEFAULT_AUDIT)
        if unknown:
            raise ValueError(f"audit policy for unknown tier or role: {', '.join(sorted(unknown))}")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError as exc:
                raise ValueError(f"trusted_proxies: {proxy!r} is no address or network") from exc
        if self.federation_tier is not None and self.federation_tier not in self.tiers:
            raise ValueError(f"federation_tier {self.federation_tier!r} is not a declared tier")
        if self.hot_tier not in self.tiers:
            raise ValueError(
                f"hot_tier {self.hot_tier!r} is not a declared tier ({', '.join(self.tiers)})"
            )
        return self

    @property
    def policy(self) -> ReplicationPolicy:
        """The default replication policy (filled in from the tiers when not configured)."""
        assert self.default_policy is not None
        return self.default_policy

    def audit_policy(self, tier: str) -> AuditPolicy:
        """The audit policy of one tier: its own, else its role's, else the default."""
        role = self.tiers[tier].role
        return self.audit.get(tier) or self.audit.get(role) or DEFAULT_AUDIT[role]

    @property
    def node_key_path(self) -> Path:
        assert self.node_key_file is not None
        return self.node_key_file

    @property
    def catalog_url(self) -> str:
        assert self.database_url is not None
        return self.database_url


def find_config_file(explicit: Path | None = None) -> Path | None:
    """The config file: ``--config``, else ``$PERMAFROST_CONFIG``, else ``./permafrost.toml``."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file not found: {explicit}")
        return explicit
    from_env = os.environ.get("PERMAFROST_CONFIG")
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise ConfigError(f"PERMAFROST_CONFIG names a missing file: {path}")
        return path
    here = Path(CONFIG_FILE_NAME)
    return here if here.is_file() else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once, from the file, the environment and explicit overrides.

    Raises:
        ConfigError: the file is missing or malformed, or a value is invalid.
    """
    path = find_config_file(config_file)

    class _Settings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            return tuple(sources)

    try:
        built = _Settings(**overrides)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}:\n{exc}") from exc
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return Settings.model_validate(built.model_dump())
