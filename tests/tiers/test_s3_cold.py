"""S3Tier in GLACIER and DEEP_ARCHIVE against moto: RestoreObject and ``x-amz-restore``.

moto stands in for AWS for the restore semantics only (see tests/support/moto_server.py
for how it completes restores); everything about bytes and checksums is proven
against SeaweedFS in test_s3.py.
"""

from __future__ import annotations

import datetime as dt
import io
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse

from archive.config import S3TierConfig
from tests.support.moto_server import MotoS3
from tiers import open_tier
from tiers.base import ColdTier, RestoreState, RetrievalOption, restore_status_of
from tiers.errors import NeedsRestore, TierConfigError
from tiers.s3 import S3Tier
from tiers.s3_restore import state_from_head
from tiers.testing import read
from tiers.testing_cold import ColdTierConformance

MiB = 1024 * 1024
HOUR = dt.timedelta(hours=1)
COLD_CLASSES = ["GLACIER", "DEEP_ARCHIVE"]


@pytest.fixture
def moto_settings(moto_s3: MotoS3) -> dict[str, Any]:
    return moto_s3.tier_settings(moto_s3.make_bucket())


@pytest.fixture(params=COLD_CLASSES)
def cold(request: pytest.FixtureRequest, moto_settings: dict[str, Any]) -> Iterator[S3Tier]:
    tier = S3Tier("s3-cold", **moto_settings, storage_class=request.param)
    yield tier
    tier.close()


class TestS3ColdContract(ColdTierConformance):
    @pytest.fixture
    def cold_tier(self, cold: S3Tier) -> S3Tier:
        return cold


def sent_restore_requests(tier: S3Tier) -> list[bytes]:
    """The bodies of the RestoreObject requests the tier sends from now on."""
    bodies: list[bytes] = []

    def record(request: AWSPreparedRequest, **_: Any) -> None:
        bodies.append(bytes(request.body or b""))

    tier.client.meta.events.register("before-send.s3.RestoreObject", record)
    return bodies


def test_put_stat_and_list_show_the_cold_class(cold: S3Tier) -> None:
    small, large = random.randbytes(1000), random.randbytes(6 * MiB)  # PutObject, then a copy
    assert cold.put("small", io.BytesIO(small)).storage_class == cold.storage_class
    assert cold.put("large", io.BytesIO(large)).storage_class == cold.storage_class
    assert cold.stat("small").storage_class == cold.storage_class
    assert [(i.key, i.size, i.storage_class) for i in cold.list()] == [
        ("large", 6 * MiB, cold.storage_class),
        ("small", 1000, cold.storage_class),
    ]
    staged = cold.client.list_objects_v2(Bucket=cold.bucket, Prefix=cold.staging_prefix)
    assert staged.get("KeyCount") == 0
    for key, data in (("small", small), ("large", large)):
        with pytest.raises(NeedsRestore):
            read(cold, key)
        state = cold.restore(key, days=1, speed="bulk")
        assert state.status == "ready"  # moto completes restores at once by default
        assert read(cold, key) == data
        assert read(cold, key, 5 * MiB - 2, 4) == data[5 * MiB - 2 : 5 * MiB + 2]


def test_restore_sends_days_and_the_speed(cold: S3Tier) -> None:
    cold.put("k", io.BytesIO(b"x"))
    bodies = sent_restore_requests(cold)
    cold.restore("k", days=3, speed="bulk")
    cold.restore("k", days=5)
    assert len(bodies) == 2
    assert b"<Days>3</Days>" in bodies[0] and b"<Tier>Bulk</Tier>" in bodies[0]
    assert b"<Days>5</Days>" in bodies[1] and b"<Tier>Standard</Tier>" in bodies[1]


def test_a_restore_in_progress_then_ready(moto_s3: MotoS3, cold: S3Tier) -> None:
    """moto's time progression: in progress for 1 s from the first look, then ready."""
    data = random.randbytes(2048)
    with moto_s3.restore_progression({"progression": "time", "seconds": 1}):
        cold.put("k", io.BytesIO(data))
        time.sleep(1.1)  # moto counts from the object's creation: see moto_server.py
        asked = dt.datetime.now(dt.UTC)
        state = cold.restore("k", days=2, speed="standard")
        assert state.status == "in-progress"
        typical = dt.timedelta(hours=cold.retrieval.hours["standard"])
        assert state.ready_at is not None
        assert abs(state.ready_at - (asked + typical)) < dt.timedelta(seconds=5)
        assert cold.restore_status("k") == RestoreState("in-progress")
        with pytest.raises(NeedsRestore, match="in progress") as caught:
            read(cold, "k")
        assert caught.value.status == "in-progress"
        assert cold.restore("k", days=2).status == "in-progress"  # asked again: no error
        deadline = time.monotonic() + 10
        while (now := cold.restore_status("k")).status != "ready":
            assert now.status == "in-progress" and time.monotonic() < deadline
            time.sleep(0.1)
    assert now.expires_at is not None and now.expires_at > asked + 2 * dt.timedelta(days=1) - HOUR
    assert read(cold, "k") == data


def test_restore_already_in_progress_is_not_an_error(moto_s3: MotoS3, cold: S3Tier) -> None:
    """AWS answers a repeated request with 409 RestoreAlreadyInProgress; moto never does,
    so that answer is given here in the client's place; HeadObject still goes to moto."""
    with moto_s3.restore_progression({"progression": "time", "seconds": 1}):
        cold.put("k", io.BytesIO(b"x"))
        cold.put("unseen", io.BytesIO(b"y"))
        time.sleep(1.1)  # moto counts from the object's creation: see moto_server.py
        assert cold.restore("k", days=1).status == "in-progress"
        answered: list[str] = []
        cold.client.meta.events.register(
            "before-call.s3.RestoreObject", lambda **_: already_in_progress(answered)
        )
        again = cold.restore("k", days=1)
        assert answered == ["409"]
        assert again.status == "in-progress" and again.ready_at is not None
        # the store's word wins over a HeadObject that does not show the restore yet
        assert cold.restore_status("unseen").status == "not-started"
        assert cold.restore("unseen", days=1).status == "in-progress"
        assert answered == ["409", "409"]


def already_in_progress(answered: list[str]) -> tuple[AWSResponse, dict[str, Any]]:
    answered.append("409")
    error = {"Code": "RestoreAlreadyInProgress", "Message": "Object restore is in progress"}
    response = AWSResponse("http://moto/k?restore", 409, {}, None)
    return response, {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 409}}


def test_retrieval_options_for_glacier(moto_settings: dict[str, Any]) -> None:
    tier = S3Tier("g", **moto_settings, storage_class="GLACIER")
    assert tier.retrieval_options() == [
        RetrievalOption("expedited", dt.timedelta(hours=0.08), 0.03),
        RetrievalOption("standard", 4 * HOUR, 0.01),
        RetrievalOption("bulk", 12 * HOUR, 0.0),
    ]
    assert isinstance(tier, ColdTier) and tier.capabilities.needs_restore


def test_retrieval_options_for_deep_archive_from_the_config(moto_settings: dict[str, Any]) -> None:
    config = S3TierConfig.model_validate(
        {
            **moto_settings,
            "storage_class": "DEEP_ARCHIVE",
            "restore_days": 2,
            "retrieval_prices": {"bulk": 0.003},
            "retrieval_hours": {"standard": 10},
        }
    )
    tier = open_tier("deep", "s3", **config.backend_settings())
    assert isinstance(tier, S3Tier) and tier.restore_days == 2
    assert tier.retrieval_options() == [
        RetrievalOption("standard", 10 * HOUR, 0.02),
        RetrievalOption("bulk", 48 * HOUR, 0.003),
    ]
    assert tier.retrieval_options()[1].cost(100 * 2**30) == pytest.approx(0.3)
    tier.put("k", io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="expedited"):
        tier.restore("k", days=1, speed="expedited")  # Deep Archive has no Expedited
    with pytest.raises(TierConfigError, match="expedited"):
        S3Tier(
            "deep", **moto_settings, storage_class="DEEP_ARCHIVE", retrieval_hours={"expedited": 1}
        )
    with pytest.raises(ValueError, match="retrieval_prices"):
        S3TierConfig.model_validate({**moto_settings, "retrieval_prices": {"instant": 1.0}})


@pytest.mark.parametrize("storage_class", [None, "STANDARD_IA", "GLACIER_IR"])
def test_instant_classes_need_no_restore(
    moto_settings: dict[str, Any], storage_class: str | None
) -> None:
    tier = S3Tier("hot", **moto_settings, storage_class=storage_class)
    assert not tier.capabilities.needs_restore
    tier.put("k", io.BytesIO(b"instant"))
    assert read(tier, "k") == b"instant"
    assert restore_status_of(tier, "k") == RestoreState("not-needed")
    assert tier.restore("k", days=1) == RestoreState("not-needed")  # InvalidObjectState


def test_an_object_moved_to_glacier_behind_the_tier(moto_settings: dict[str, Any]) -> None:
    """A lifecycle rule can move objects of a STANDARD tier to GLACIER: per object state."""
    tier = S3Tier("hot", **moto_settings)
    tier.client.put_object(Bucket=tier.bucket, Key="moved", Body=b"m", StorageClass="GLACIER")
    assert restore_status_of(tier, "moved") == RestoreState("not-started")
    with pytest.raises(NeedsRestore):
        read(tier, "moved")
    assert tier.restore("moved", days=1).status == "ready"
    assert read(tier, "moved") == b"m"


NOW = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        ({}, RestoreState("not-needed")),
        ({"StorageClass": "GLACIER_IR"}, RestoreState("not-needed")),
        ({"StorageClass": "GLACIER"}, RestoreState("not-started")),
        ({"StorageClass": "DEEP_ARCHIVE", "Restore": 'ongoing-request="true"'},
         RestoreState("in-progress")),
        ({"StorageClass": "GLACIER",
          "Restore": 'ongoing-request="false", expiry-date="Fri, 07 Jun 2030 00:00:00 GMT"'},
         RestoreState("ready", expires_at=dt.datetime(2030, 6, 7, tzinfo=dt.UTC))),
        ({"StorageClass": "GLACIER",
          "Restore": 'ongoing-request="false", expiry-date="Fri, 31 May 2030 00:00:00 GMT"'},
         RestoreState("not-started")),
        ({"StorageClass": "GLACIER", "Restore": 'ongoing-request="false"'},
         RestoreState("ready")),
        ({"StorageClass": "GLACIER", "Restore": "garbage"}, RestoreState("not-started")),
    ],
)  # fmt: skip
def test_the_restore_header_is_read(head: dict[str, Any], expected: RestoreState) -> None:
    assert state_from_head(head, NOW) == expected
