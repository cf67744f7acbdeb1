"""Reading a copy back whole and comparing its BLAKE3: the audit of copies that are
small (manifests) or that no cheaper proof covers.

Unlike :func:`fixity.checks.check`, the tier's ``open`` is the only request (no
``stat`` first), and a :class:`~tiers.DigestMismatch` raised while reading (a sealed
copy whose GCM tag fails, see ``federation.tier``) is damage to the copy, not a tier
that failed to answer.
"""

from __future__ import annotations

from fixity.checks import CheckResult, Finding, Level, Target, hash_stream
from fixity.ratelimit import UNLIMITED, ByteRate
from tiers import DigestMismatch, NeedsRestore, ObjectNotFound, Tier, TierError

READ_BACK = "read back"


def read_back(tier: Tier, target: Target, rate: ByteRate = UNLIMITED) -> CheckResult:
    """Read the copy whole and compare its BLAKE3; never raises for a tier failure."""
    level = Level.STORED
    try:
        with tier.open(target.key) as raw:
            found, size = hash_stream(raw, rate)
    except ObjectNotFound:
        return CheckResult(Finding.MISSING, level, detail=f"{target.key}: no such object")
    except NeedsRestore as exc:
        return CheckResult(Finding.NEEDS_RESTORE, level, detail=str(exc))
    except DigestMismatch as exc:  # a sealed copy whose tag fails: its bytes were changed
        return CheckResult(Finding.DAMAGED, level, detail=str(exc))
    except TierError as exc:
        return CheckResult(Finding.UNREACHABLE, level, detail=str(exc))
    if found != target.stored_b3:
        detail = f"blake3: expected {target.stored_b3}, found {found}"
        return CheckResult(Finding.DAMAGED, level, size, detail)
    return CheckResult(Finding.OK, level, size, READ_BACK)


def read_back_twice(tier: Tier, target: Target, rate: ByteRate = UNLIMITED) -> CheckResult:
    """A failed read is repeated once, fresh, before it counts (as every audit does)."""
    first = read_back(tier, target, rate)
    if not first.is_damage:
        return first
    second = read_back(tier, target, rate)
    if second.ok:
        note = f"first read failed ({first.detail}); a fresh read was good"
        return CheckResult(Finding.OK, second.level, first.bytes_read + second.bytes_read, note)
    return second
