"""``permafrost user ...`` and ``permafrost token ...``: accounts from the command line (issue 6).

Run on the server's own configuration (local mode): whoever can read the catalog
already holds every key, so these commands need no sign-in.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from archive.cli_app import JsonOpt, _emit, _node, app, console, out
from archive.roles import Role

# The account services are imported by the commands that call them (archive.cli_app).

user_app = typer.Typer(help="Portal and API users.", no_args_is_help=True)
token_app = typer.Typer(help="Personal API tokens (Authorization: Bearer).", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="Sign-in name.")],
    role: Annotated[Role, typer.Option(help="admin, curator or researcher.")] = Role.RESEARCHER,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="API tokens only: no portal sign-in.")
    ] = False,
    name: Annotated[str, typer.Option(help="Display name.")] = "",
) -> None:
    """Add a user (asks for a password unless --no-password or --password-stdin)."""
    from archive.accounts import create_user

    password = None if no_password else _read_password(password_stdin)
    with _node() as node, node.session() as session:
        create_user(username, session=session, role=role, password=password, display_name=name)
    out.print(f"user {username} added ({role.value})")


@user_app.command("passwd")
def user_passwd(
    username: Annotated[str, typer.Argument()],
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
) -> None:
    """Set a user's password."""
    from archive.accounts import get_user, set_password

    password = _read_password(password_stdin)
    with _node() as node, node.session() as session:
        set_password(get_user(username, session=session), password, session=session)
    out.print(f"password of {username} changed")


@user_app.command("grant")
def user_grant(
    username: Annotated[str, typer.Argument()],
    collection: Annotated[str, typer.Argument()],
    permission: Annotated[
        str, typer.Argument(help="read, write, manage, or none to remove the membership.")
    ],
) -> None:
    """Make a user a member of a collection (or remove them with 'none')."""
    from archive.accounts import get_user, parse_permission, set_membership

    chosen = parse_permission(permission)
    with _node() as node, node.session() as session:
        set_membership(get_user(username, session=session), collection, chosen, session=session)
    out.print(f"{username} on {collection}: {permission}")


@user_app.command("list")
def user_list(as_json: JsonOpt = False) -> None:
    """List users and their roles."""
    from archive.accounts import list_users

    with _node() as node, node.session() as session:
        rows: list[dict[str, Any]] = [
            {"username": u.username, "role": u.role, "active": u.active, "name": u.display_name}
            for u in list_users(session=session)
        ]
    if as_json:
        _emit(rows)
        return
    table = Table("user", "role", "active", "name")
    for r in rows:
        table.add_row(r["username"], r["role"], str(r["active"]), r["name"])
    out.print(table)


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", "-u", help="Whose token.")],
    name: Annotated[str, typer.Option(help="What it is for (e.g. laptop).")] = "",
    days: Annotated[
        int | None, typer.Option(min=1, help="Expires after this many days (default: never).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a personal API token; it is printed once and only its hash is kept."""
    from archive.accounts import get_user
    from archive.catalog.models import utcnow
    from archive.credentials import create_token

    expires = utcnow() + dt.timedelta(days=days) if days else None
    with _node() as node, node.session() as session:
        owner = get_user(user, session=session)
        made = create_token(owner, session=session, name=name, expires_at=expires)
        token_id = made.row.id
    if as_json:
        _emit({"id": token_id, "user": user, "name": name, "token": made.secret})
        return
    console.print("Token (shown once; send it as `Authorization: Bearer <token>`):")
    out.print(made.secret, markup=False)


@token_app.command("list")
def token_list(
    user: Annotated[str | None, typer.Option("--user", "-u")] = None, as_json: JsonOpt = False
) -> None:
    """List tokens (never their secrets)."""
    from archive.accounts import get_user
    from archive.credentials import list_tokens

    with _node() as node, node.session() as session:
        user_id = get_user(user, session=session).id if user else None
        rows: list[dict[str, Any]] = [
            {
                "id": t.id,
                "user_id": t.user_id,
                "name": t.name,
                "prefix": t.prefix,
                "created": t.created_at.isoformat(),
                "last_used": t.last_used_at.isoformat() if t.last_used_at else None,
                "revoked": t.revoked_at is not None,
            }
            for t in list_tokens(user_id, session=session)
        ]
    if as_json:
        _emit(rows)
        return
    table = Table("id", "user", "name", "prefix", "created", "last used", "revoked")
    for r in rows:
        table.add_row(
            str(r["id"]),
            str(r["user_id"]),
            r["name"],
            r["prefix"],
            r["created"][:19],
            (r["last_used"] or "")[:19],
            str(r["revoked"]),
        )
    out.print(table)


@token_app.command("revoke")
def token_revoke(token_id: Annotated[int, typer.Argument()]) -> None:
    """Revoke a token: requests with it are refused from now on."""
    from archive.credentials import revoke_token

    with _node() as node, node.session() as session:
        revoke_token(token_id, session=session)
    out.print(f"token {token_id} revoked")
