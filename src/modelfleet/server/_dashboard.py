"""Read-only dashboard pages: fleet, rollouts, experiments, drift, activity; plain HTML, no script, no network.

Every page is rendered on the server from the same store reads the admin API
makes, behind the same admin tokens (any role: ``viewer`` suffices). A browser
signs in once through a form (``POST /dashboard/login``): the token travels in
the request body, never in a URL, and comes back as an ``HttpOnly``,
``SameSite=Strict`` cookie scoped to ``/dashboard`` (ADR 0003, addendum). The
API routes never read that cookie, so no page can be made to change anything.
Every value shown is HTML-escaped (:func:`_e`); only markup built here from
numbers (SVG bars) is not.
"""

from __future__ import annotations

import html
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelfleet.server._experiment_api import ExperimentOut
from modelfleet.server._retrain import EVALUATED
from modelfleet.server._rollout_api import RolloutOut
from modelfleet.server._state import ServerState, State
from modelfleet.store import (
    AdminPrincipal,
    Device,
    admin_by_secret,
    list_audit,
    list_events,
    list_experiments,
    list_rollouts,
)

__all__ = ["COOKIE", "dashboard_router", "dashboard_viewer", "install_dashboard"]

COOKIE = "modelfleet_dashboard"
"""The cookie a signed-in browser holds: the admin token, ``HttpOnly``, ``SameSite=Strict``, path ``/dashboard``."""

_PATH = "/dashboard"
_MAX_FORM_BYTES = 4096
_COOKIE_MAX_AGE_S = 8 * 3600
_DEVICES_READ = 100_000
_ROLLOUTS = 20
_RECENT = 50
_DRIFT_CHECKS = 2000
_SPARK_POINTS = 48
_LAST_SEEN_BUCKETS = (
    ("within 15 min", timedelta(minutes=15)),
    ("within 1 h", timedelta(hours=1)),
    ("within 1 day", timedelta(days=1)),
)
_PAGES = (
    ("", "Fleet"),
    ("/rollouts", "Rollouts"),
    ("/experiments", "Experiments"),
    ("/drift", "Drift"),
    ("/activity", "Activity"),
)
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#1d232a;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header a.on{color:#fff;font-weight:600}
header form{margin-left:auto}main{padding:1em 1.2em;max-width:1200px}
table{border-collapse:collapse;margin:.4em 0 1.2em;background:#fff}
th,td{border:1px solid #d8dde3;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef1f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
h2{margin:1.2em 0 .3em;font-size:1.1em}.muted{color:#67717c}
.rollback,.rolled_back,.aborted,.failed{color:#b3261e;font-weight:600}.complete,.promote{color:#1b7f3b;font-weight:600}
"""


class _Html(str):
    """Markup built here (never from stored values): rendered as is."""

    __slots__ = ()


def _e(value: object) -> str:
    """One value as HTML text: escaped, ``None`` as a dash, floats to 4 significant digits."""
    if isinstance(value, _Html):
        return str(value)
    if value is None:
        return "-"
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    if isinstance(value, datetime):
        return html.escape(value.strftime("%Y-%m-%d %H:%M:%S"))
    return html.escape(str(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, empty: str = "none yet") -> str:
    """A table of escaped cells; numbers align right."""
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: object) -> str:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return f'<td class="n">{_e(value)}</td>' if number else f"<td>{_e(value)}</td>"


def _cls(text: str) -> _Html:
    """A state or decision word, coloured by a class named after it (the class is escaped too)."""
    return _Html(f'<span class="{_e(text)}">{_e(text)}</span>')


def _bar(share: float, width: int = 120) -> _Html:
    """An inline SVG bar of a share in [0, 1]."""
    filled = max(0.0, min(1.0, share)) * width
    return _Html(
        f'<svg width="{width}" height="10" role="img" aria-label="{share:.0%}">'
        f'<rect width="{width}" height="10" fill="#e3e7eb"/>'
        f'<rect width="{filled:.1f}" height="10" fill="#3b6fd4"/></svg>'
    )


def _spark(values: Sequence[float], width: int = 160, height: int = 24) -> _Html:
    """An inline SVG sparkline of shares in [0, 1], oldest first."""
    if len(values) < 2:  # noqa: PLR2004 - a line needs two points
        return _Html("")
    step = width / (len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - max(0.0, min(1.0, v)) * height:.1f}" for i, v in enumerate(values))
    return _Html(
        f'<svg width="{width}" height="{height}" role="img" aria-label="share over time">'
        f'<polyline fill="none" stroke="#3b6fd4" stroke-width="1.5" points="{points}"/></svg>'
    )


def _page(title: str, active: str, body: str, *, status: int = 200) -> HTMLResponse:
    """The page around a body: navigation, sign-out."""
    nav = "".join(
        f'<a href="{_PATH}{path}"{" class=on" if path == active else ""}>{_e(name)}</a>' for path, name in _PAGES
    )
    signout = f'<form method="post" action="{_PATH}/logout"><button>Sign out</button></form>'
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)} · modelfleet</title>'
        f'<meta name="viewport" content="width=device-width"><style>{_STYLE}</style></head>'
        f"<body><header><strong>modelfleet</strong>{nav}{signout}</header><main><h1>{_e(title)}</h1>{body}</main>"
        "</body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=_HEADERS)


_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _login_page(message: str, *, status: int) -> HTMLResponse:
    form = (
        f"<p>{_e(message)}</p>"
        f'<form method="post" action="{_PATH}/login"><label>Admin token (any role; viewer suffices) '
        '<input type="password" name="token" autocomplete="off" size="48" required></label> '
        "<button>Sign in</button></form>"
        '<p class="muted">Make a read-only token with '
        "<code>modelfleet token create --role viewer --name NAME</code>.</p>"
    )
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in · modelfleet</title>'
        f"<style>{_STYLE}</style></head><body><header><strong>modelfleet</strong></header>"
        f"<main><h1>Sign in</h1>{form}</main></body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=_HEADERS)


class _SignIn(Exception):  # noqa: N818 - a control-flow signal, answered with the sign-in page
    """No valid admin token with the request: answer with the sign-in form (401)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _principal(state: ServerState, token: str | None) -> AdminPrincipal | None:
    if not token:
        return None
    with state.engine.connect() as connection:
        return admin_by_secret(connection, token)


def dashboard_viewer(request: Request, state: State) -> AdminPrincipal:
    """The admin token of the cookie (or of an ``Authorization: Bearer`` header); any role may read."""
    scheme, _, bearer = (request.headers.get("Authorization") or "").partition(" ")
    token = bearer.strip() if scheme.lower() == "bearer" else request.cookies.get(COOKIE)
    if not token:
        raise _SignIn("Sign in with an admin token to see the fleet.")
    principal = _principal(state, token)
    if principal is None:
        raise _SignIn("That token is not an admin token, or it was revoked.")
    return principal


Viewer = Annotated[AdminPrincipal, Depends(dashboard_viewer)]

dashboard_router = APIRouter(prefix=_PATH, include_in_schema=False)


def install_dashboard(app: Any) -> None:  # noqa: ANN401 - a FastAPI app
    """Register the pages and the sign-in answer for requests without a valid token."""

    async def sign_in(request: Request, exc: Exception) -> Response:
        message = exc.message if isinstance(exc, _SignIn) else "Sign in."
        response = _login_page(message, status=401)
        if request.cookies.get(COOKIE):
            response.delete_cookie(COOKIE, path=_PATH)
        return response

    app.add_exception_handler(_SignIn, sign_in)
    app.include_router(dashboard_router)


@dashboard_router.get("/login", response_class=HTMLResponse)
def login_form() -> HTMLResponse:
    """The sign-in form."""
    return _login_page("Sign in with an admin token to see the fleet.", status=200)


@dashboard_router.post("/login")
async def login(request: Request, state: State) -> Response:
    """Check the token from the form body; set the cookie and go to the fleet page, or show the form again (401)."""
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        return _login_page("The form is too large.", status=413)
    token = (urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
    if _principal(state, token) is None:
        return _login_page("That token is not an admin token, or it was revoked.", status=401)
    response = RedirectResponse(_PATH, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=_COOKIE_MAX_AGE_S,
        path=_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@dashboard_router.post("/logout")
def logout() -> Response:
    """Forget the cookie."""
    response = _login_page("Signed out.", status=200)
    response.delete_cookie(COOKIE, path=_PATH)
    return response


# ---------------------------------------------------------------- fleet


def _fleet_counts(session: Session, now: datetime) -> dict[str, Any]:
    """Devices by status, by (model, version, install state), by how recently seen."""
    by_status = dict(session.execute(select(Device.status, func.count()).group_by(Device.status)).all())
    rows = session.execute(
        select(Device.installed, Device.last_seen_at, Device.tags)
        .where(Device.status == "accepted")
        .limit(_DEVICES_READ)
    ).all()
    running: Counter[tuple[str, str, str]] = Counter()
    seen: Counter[str] = Counter()
    tagged: Counter[tuple[str, str]] = Counter()
    last: datetime | None = None
    for installed, last_seen, tags in rows:
        for key, value in (tags or {}).items():
            tagged[str(key), str(value)] += 1
        for entry in installed or []:
            if isinstance(entry, dict):
                running[str(entry.get("model")), str(entry.get("version")), str(entry.get("state", "idle"))] += 1
        seen[_seen_bucket(now, last_seen)] += 1
        if last_seen is not None and (last is None or last_seen > last):
            last = last_seen
    return {
        "status": by_status,
        "running": running,
        "seen": seen,
        "tags": tagged,
        "accepted": len(rows),
        "last": last,
    }


def _seen_bucket(now: datetime, last_seen: datetime | None) -> str:
    if last_seen is None:
        return "never"
    if last_seen.tzinfo is None:
        last_seen = last_seen.replace(tzinfo=now.tzinfo)
    for name, span in _LAST_SEEN_BUCKETS:
        if now - last_seen <= span:
            return name
    return "longer ago"


@dashboard_router.get("", response_class=HTMLResponse)
def fleet(_: Viewer, state: State) -> HTMLResponse:
    """Fleet overview: devices by status, by model and version, by when last seen."""
    now = state.clock.now()
    with state.sessions() as session:
        counts = _fleet_counts(session, now)
    total = sum(counts["status"].values())
    status_rows = [(s, n, _bar(n / total if total else 0.0)) for s, n in sorted(counts["status"].items())]
    accepted = counts["accepted"] or 1
    running_rows = [
        (model, version, install, n, _bar(n / accepted))
        for (model, version, install), n in sorted(counts["running"].items())
    ]
    order = [name for name, _ in _LAST_SEEN_BUCKETS] + ["longer ago", "never"]
    tag_rows = [(key, value, n, _bar(n / accepted)) for (key, value), n in sorted(counts["tags"].items())]
    seen_rows = [(name, counts["seen"][name], _bar(counts["seen"][name] / accepted)) for name in order]
    body = (
        f'<p class="muted">Server time {_e(now)} UTC · {total} devices · last check-in {_e(counts["last"])}</p>'
        f"<h2>Devices by status</h2>{_table(('status', 'devices', 'share'), status_rows)}"
        "<h2>Accepted devices by model and version</h2>"
        f"{_table(('model', 'version', 'install state', 'devices', 'share'), running_rows)}"
        f"<h2>Last seen</h2>{_table(('last check-in', 'devices', 'share'), seen_rows)}"
        f"<h2>Accepted devices by tag</h2>{_table(('tag', 'value', 'devices', 'share'), tag_rows)}"
    )
    return _page("Fleet", "", body)


# ---------------------------------------------------------------- rollouts


def _gate_rows(detail: dict[str, Any]) -> list[tuple[object, ...]]:
    evaluation = detail.get("evaluation")
    gates = evaluation.get("gates") if isinstance(evaluation, dict) else None
    rows: list[tuple[object, ...]] = []
    for gate in gates if isinstance(gates, list) else []:
        if not isinstance(gate, dict):
            continue
        rows.append(
            (
                gate.get("metric"),
                _cls(str(gate.get("decision"))),
                gate.get("estimate"),
                f"[{_e(gate.get('lower'))}, {_e(gate.get('upper'))}]",
                gate.get("margin"),
                gate.get("treated_mean"),
                gate.get("holdout_mean"),
                f"{_e(gate.get('treated_devices'))} / {_e(gate.get('holdout_devices'))}",
            )
        )
    return rows


_GATE_HEADERS = ("gate", "decision", "estimate", "interval", "margin", "treated", "holdout", "devices")


def _rollout_section(rollout: RolloutOut) -> str:
    done = (rollout.stage + (1 if rollout.state == "complete" else 0)) / max(1, rollout.stages)
    summary = _table(
        ("rollout", "model", "version", "baseline", "state", "stage", "percent", "planned devices"),
        [
            (
                rollout.id,
                rollout.model,
                rollout.version,
                rollout.baseline_version,
                _cls(rollout.state),
                _Html(f"{_e(min(rollout.stage + 1, rollout.stages))} of {_e(rollout.stages)} {_bar(done, 80)}"),
                rollout.percent,
                rollout.planned_devices,
            )
        ],
    )
    decisions = []
    for d in rollout.decisions:
        gates = _gate_rows(d.detail)
        numbers = _Html(_table(_GATE_HEADERS, gates)) if gates else ""
        decisions.append((d.at, d.actor, _cls(d.event), f"{d.from_state} → {d.to_state}", d.stage, d.reason, numbers))
    table = _table(("at", "by", "event", "state", "stage", "reason", "gates (treated minus holdout)"), decisions)
    return f"<h2>{_e(rollout.model)} {_e(rollout.version)}</h2>{summary}{table}"


@dashboard_router.get("/rollouts", response_class=HTMLResponse)
def rollouts(_: Viewer, state: State) -> HTMLResponse:
    """The newest rollouts: state, stage, and every decision with the gate numbers behind it."""
    with state.sessions() as session:
        shown = [RolloutOut.of(session, row) for row in list_rollouts(session, limit=_ROLLOUTS)]
    body = "".join(_rollout_section(r) for r in shown) or '<p class="muted">no rollouts yet</p>'
    return _page("Rollouts", "/rollouts", body)


# ---------------------------------------------------------------- experiments


@dashboard_router.get("/experiments", response_class=HTMLResponse)
def experiments(_: Viewer, state: State) -> HTMLResponse:
    """Experiments, newest first: status, devices, winner."""
    with state.sessions() as session:
        shown = [ExperimentOut.of(row, row.last_analysis or {}) for row in list_experiments(session, limit=_ROLLOUTS)]
    rows = [
        (x.id, x.model, x.kind, _cls(x.state), x.planned_devices, x.started_at, x.stopped_at, x.winner, x.reason)
        for x in shown
    ]
    headers = ("experiment", "model", "kind", "status", "planned devices", "started", "stopped", "winner", "reason")
    return _page("Experiments", "/experiments", _table(headers, rows, empty="no experiments yet"))


# ---------------------------------------------------------------- drift


@dashboard_router.get("/drift", response_class=HTMLResponse)
def drift(_: Viewer, state: State) -> HTMLResponse:
    """Per monitor (model and version): the share of drifting devices at the last check, and over time."""
    with state.sessions() as session:
        checks = list_audit(session, action=EVALUATED, limit=_DRIFT_CHECKS)
    history: dict[str, list[Any]] = {}
    for entry in reversed(checks):  # oldest first
        history.setdefault(entry.target or "?", []).append(entry)
    rows = []
    for target, entries in sorted(history.items()):
        last = entries[-1].detail
        share = float(last.get("share") or 0.0)
        shares = [float(e.detail.get("share") or 0.0) for e in entries[-_SPARK_POINTS:]]
        groups = ", ".join(
            f"{g.get('group')} {float(g.get('share') or 0.0):.0%}"
            for g in last.get("groups") or []
            if isinstance(g, dict)
        )
        rows.append(
            (
                target,
                entries[-1].at,
                f"{_e(last.get('drifting_devices'))} of {_e(last.get('devices'))}",
                _Html(f"{_e(f'{share:.1%}')} {_bar(share)}"),
                _spark(shares),
                groups,
                "yes" if last.get("retrain_requested") else "no",
            )
        )
    headers = ("monitor", "last check", "drifting", "share", "history", "by group", "retrain requested")
    return _page("Drift", "/drift", _table(headers, rows, empty="the drift monitor has not run yet"))


# ---------------------------------------------------------------- activity


@dashboard_router.get("/activity", response_class=HTMLResponse)
def activity(_: Viewer, state: State) -> HTMLResponse:
    """The newest device events and audit entries."""
    with state.sessions() as session:
        events = [
            (e.at, e.device_id, e.kind, e.model, e.version, e.reason) for e in list_events(session, limit=_RECENT)
        ]
        audit = [(a.at, a.actor, a.action, a.target) for a in list_audit(session, limit=_RECENT)]
    body = (
        f"<h2>Device events</h2>{_table(('at', 'device', 'kind', 'model', 'version', 'reason'), events)}"
        f"<h2>Audit log</h2>{_table(('at', 'actor', 'action', 'target'), audit)}"
    )
    return _page("Activity", "/activity", body)
