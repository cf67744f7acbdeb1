"""The curator dashboard: storage per tier, copies by state, audit coverage, damage over time.

Charts are SVG drawn by the template from numbers computed here: no script, and
they print and read on a narrow screen.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from archive.catalog.models import Role
from archive.status import archive_status
from archive.storage_stats import daily_events, tier_usage
from fixity.status import audit_status
from web.deps import NodeDep
from web.portal.guard import PageUser
from web.portal.rendering import render

router = APIRouter()


@router.get("/dashboard")
def dashboard(request: Request, node: NodeDep, principal: PageUser) -> Response:
    principal.require_role(Role.CURATOR, what="page /dashboard")
    with node.session() as session:
        status = archive_status(node, session=session)
        audits = audit_status(node, session=session)
        usage = tier_usage(session=session)
        days = daily_events(session=session)
    widest = max((u.stored_bytes for u in usage), default=0) or 1
    peak = max((max(d, r) for _, d, r in days), default=0) or 1
    return render(
        request,
        "dashboard.html",
        principal,
        status=status,
        audits=audits,
        usage=usage,
        widest=widest,
        days=days,
        peak=peak,
    )
