"""Airflow UI plugin: the data-retention page (``/retention/``) and its JSON (``/retention/api/summary``).

A FastAPI app mounted by the API server plus an external view in the navigation, which shows the
page inside the Airflow UI. Airflow does not protect plugin apps: every route here depends on
Airflow's ``get_user`` (the UI's ``_token`` cookie or an ``Authorization: Bearer`` JWT). Data comes
from the ``retention_ledger`` connection (``include.retention.dashboard``), never from Airflow's
metadata DB, and holds no personal data: request ids, statuses, dates and counts.

Writes are for the privacy role (``Privacy`` with the FAB auth manager, or ``Admin``/``admin``):
"Verify now" (a ledger verification is recorded) and the request intake (``POST /retention/requests``,
form or JSON). The intake stores the identity encrypted in the request registry and triggers
``erasure_request`` with ``{"request_id": ...}`` only, so no identity reaches Airflow's metadata DB
(no trigger conf, no audit-log row with it); the auth manager must also allow the user to trigger
``erasure_request`` (so it takes exactly that DAG's modes, ``erase`` and ``restrict``; any other is refused
with a 400 naming it). Every post must come from this page's own origin (``_same_origin``).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
import sqlalchemy as sa
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.core_api.security import get_user
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from include.retention import dashboard
from include.retention.airflow.roles import ROLES_WITH_PAGE_ACTIONS
from include.retention.errors import RetentionError
from include.retention.identity import IDENTITY_KINDS
from include.retention.runtime import LEDGER_CONN_ID, env_resolver, hmac_key, sqlalchemy_url
from include.retention.stores.sql import make_engine
from include.retention.values import RequestStatus

log = logging.getLogger(__name__)

URL_PREFIX = "/retention"
PAGE_NAME = "Data retention"
COLORS = {"lock": "#8e6ccf", "anonymize": "#2f8fce", "delete": "#d9534f", "erase": "#e8912d", "restrict": "#5cb85c"}


@functools.lru_cache(maxsize=4)
def _engine_for(url: str) -> sa.Engine:
    return make_engine(url)


def ledger_engine() -> sa.Engine:
    """The ledger / registry database of connection ``retention_ledger`` (``AIRFLOW_CONN_RETENTION_LEDGER``)."""
    try:
        return _engine_for(sqlalchemy_url(env_resolver(LEDGER_CONN_ID)))
    except RetentionError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None


def ledger_key() -> bytes | None:
    """The key the chain is verified with; None (status "cannot verify", not an error page) when unset."""
    try:
        return hmac_key(env_resolver)
    except RetentionError:
        return None


def _with_ledger(call: Callable[..., dict[str, Any]]) -> Callable[[sa.Engine], dict[str, Any]]:
    """A dashboard call given the key and the anchors, so the ledger status is verified afresh."""
    return functools.partial(call, key=ledger_key(), anchors=dashboard.anchors_location())


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an absolute http(s) URL, ports defaulted; None if it is not one."""
    try:
        parts = urlsplit(url.strip())
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:  # a malformed port, brackets ...
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def _same_origin(request: Request) -> None:
    """Refuse a state-changing post that does not come from this page's own origin (the ``_token`` cookie is
    SameSite=Lax; this is a second check).

    The ``Origin`` header must name this origin: scheme, host and port all equal to the request's own (as the
    server sees it: behind a proxy that ends TLS, run the API server with the proxy's forwarded headers trusted,
    or an https page is a different scheme). Without ``Origin``, the ``Referer`` must be of this origin; without
    either, the post is refused (a browser sends ``Origin`` on every form post and fetch). ``Origin: null``,
    another scheme, host or port, and a ``Sec-Fetch-Site`` other than ``same-origin`` (``same-site`` is a
    sibling subdomain, not this page) are refused.

    A request that carries ``Authorization: Bearer`` (a script with a token from ``/auth/token``) is not checked:
    Airflow's ``get_user`` then takes the user from that header alone, never from the cookie, and no other site
    can make a browser send it."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return
    own = _origin_of(f"{request.url.scheme}://{request.headers.get('host', '')}/")
    origin = request.headers.get("origin")
    claimed = origin if origin is not None else request.headers.get("referer")
    if own is None or claimed is None or _origin_of(claimed) != own:
        raise HTTPException(status_code=403, detail="cross-origin request refused")
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() != "same-origin":
        raise HTTPException(status_code=403, detail="cross-origin request refused")


def role_names(user: Any) -> set[str]:
    """The user's role names exactly as the auth manager spells them: FAB users carry ``roles`` (names are
    case-sensitive: ``PRIVACY`` or ``admin`` is not ``Privacy`` or ``Admin``); the simple auth manager's one
    ``role`` is named by that manager's own role list (it reads ``admin`` and ``ADMIN`` alike as its ``ADMIN``)."""
    names = {str(getattr(r, "name", r)) for r in (getattr(user, "roles", None) or ()) if getattr(r, "name", r)}
    role = getattr(user, "role", None)
    if role and not getattr(user, "roles", None):
        names.add(_simple_role(str(role)))
    return names


def _simple_role(role: str) -> str:
    """The simple auth manager's role (``viewer`` ... ``admin``, read upper-cased by Airflow) as the FAB name of
    the same rights (only its ``ADMIN`` matters here); any other text stays as it is (and matches nothing)."""
    return "Admin" if role.upper() == "ADMIN" else role


def may_act(user: Any) -> bool:
    return bool(role_names(user) & set(ROLES_WITH_PAGE_ACTIONS))


def privacy_user(user: BaseUser = Depends(get_user)) -> BaseUser:
    """Only the privacy role (or admin) verifies the ledger or submits requests here."""
    if not may_act(user):
        raise HTTPException(status_code=403, detail=f"only the {' or '.join(ROLES_WITH_PAGE_ACTIONS)} role may do this")
    return user


app = FastAPI(title=PAGE_NAME, docs_url=None, redoc_url=None, openapi_url=None,
              dependencies=[Depends(get_user)])


@app.exception_handler(StarletteHTTPException)
async def _unauthenticated(request: Request, exc: StarletteHTTPException) -> Response:
    """A browser without a session goes to Airflow's login page; API clients get the 401."""
    if exc.status_code == 401 and request.method == "GET" and "text/html" in request.headers.get("accept", ""):
        try:
            from airflow.api_fastapi.app import get_auth_manager

            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
        except Exception:  # noqa: BLE001 - no auth manager (not served by Airflow): plain 401
            log.debug("no auth manager to redirect to", exc_info=True)
    return await http_exception_handler(request, exc)


def _read(call: Callable[[sa.Engine], dict[str, Any]], engine: sa.Engine) -> dict[str, Any]:
    """Run one dashboard call; an unreachable database is a 503 that names the connection, not a trace."""
    try:
        return call(engine)
    except sa.exc.SQLAlchemyError:
        log.exception("cannot read the retention ledger / registry database")
        raise HTTPException(status_code=503, detail=f"ledger database of connection {LEDGER_CONN_ID!r} "
                                                    "is not reachable (see the API server log)") from None


@app.get("/", response_class=HTMLResponse)
def page(request: Request, user: BaseUser = Depends(get_user), engine: sa.Engine = Depends(ledger_engine)):
    """The data-retention page."""
    data = _read(_with_ledger(dashboard.summary), engine)
    ui = request.scope.get("root_path", "").removesuffix(URL_PREFIX)  # the UI's base path ("" at /)
    return HTMLResponse(_TEMPLATE.render(
        style=_STYLE, theme_script=_THEME_SCRIPT,
        data=data, chart=dashboard.chart_bars(data["chart"]), colors=COLORS, user=user.get_name(),
        may_act=may_act(user), submitted=request.query_params.get("submitted", "")[:36],
        run_url=lambda dag_id, run_id: f"{ui}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"))


@app.get("/api/summary")
def api_summary(engine: sa.Engine = Depends(ledger_engine)) -> JSONResponse:
    """The page's data as JSON."""
    return JSONResponse(_read(_with_ledger(dashboard.summary), engine))


@app.get("/api/progress")
def api_progress(engine: sa.Engine = Depends(ledger_engine)) -> JSONResponse:
    """Work running now (the page's running-work section polls it): per rule of a running sweep, planned rows,
    done so far and the time left, from the run's ledger intents. Rule ids, counts and times only."""
    return JSONResponse(_read(dashboard.running_work, engine))


FORECAST_FETCH_WAIT = 20.0  # seconds GET /api/forecast waits for a forecast being computed


@app.get("/api/forecast")
def api_forecast() -> JSONResponse:
    """The forecast (computed in the background; waits up to ``FORECAST_FETCH_WAIT`` s): the page fetches it
    when it was served before the forecast was ready, so it appears without a reload. Counts and rule ids only."""
    return JSONResponse(dashboard.forecast_for_page(wait=FORECAST_FETCH_WAIT))


@app.post("/verify", dependencies=[Depends(_same_origin), Depends(privacy_user)])
def verify(engine: sa.Engine = Depends(ledger_engine)) -> RedirectResponse:
    """The page's "verify now" button: walk the chain, add the result to the history, show the page again."""
    _read(_with_ledger(dashboard.verify_now), engine)
    return RedirectResponse("./#verification", status_code=303)


@app.post("/api/verify", dependencies=[Depends(_same_origin), Depends(privacy_user)])
def api_verify(engine: sa.Engine = Depends(ledger_engine)) -> JSONResponse:
    """Verify the ledger now (recorded in the history); returns the result."""
    return JSONResponse(_read(_with_ledger(dashboard.verify_now), engine))


REQUEST_DAG_ID = "erasure_request"
_FORM_FIELDS = (*IDENTITY_KINDS, "mode", "dry_run", "request_ref", "note")


def may_trigger(user: BaseUser, dag_id: str) -> bool:
    """What the auth manager says about triggering ``dag_id`` (FAB: the DAG's access_control)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return get_auth_manager().is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN,
                                                details=DagDetails(id=dag_id), user=user)


def trigger_run(dag_id: str, run_id: str, conf: dict[str, Any], user: BaseUser) -> None:
    """Create the DAG run in the API server's own process (it has the metadata DB), as the REST API does."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.utils.types import DagRunTriggeredByType

    trigger_dag(dag_id, triggered_by=DagRunTriggeredByType.UI, run_id=run_id, conf=conf,
                triggering_user_name=user.get_name(), run_after=dt.datetime.now(dt.UTC))


async def _submitted(request: Request) -> tuple[dict[str, Any], bool]:
    """The request's fields from a JSON body or a form post; True when it came as JSON."""
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(status_code=400, detail="the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(status_code=400, detail="the body must be a JSON object")
        return body, True
    form = await request.form()
    return {k: form.get(k) for k in _FORM_FIELDS if k in form}, False


def _check_mode(mode: str) -> None:
    """Only the modes the triggered DAG (``erasure_request``) runs; the message names a known mode, never echoes
    other text."""
    from include.retention.registry import ERASURE_MODES, MODES

    if mode in ERASURE_MODES:
        return
    if mode in MODES:
        raise RetentionError(f"mode {mode!r} is not run by {REQUEST_DAG_ID} (it runs {', '.join(ERASURE_MODES)}); "
                             f"{mode} requests go to access_request")
    raise RetentionError(f"mode must be one of {', '.join(ERASURE_MODES)}")


def _new_request(fields: dict[str, Any]):
    from include.retention.registry import Identities, NewRequest

    unknown = sorted(set(fields) - set(_FORM_FIELDS))
    if unknown:
        raise RetentionError(f"unknown field(s): {', '.join(u[:40] for u in unknown[:5])}")
    for name in _FORM_FIELDS:
        value = fields.get(name)
        if name != "dry_run" and value is not None and not isinstance(value, str):
            raise RetentionError(f"{name} must be a string")
    _check_mode(fields.get("mode") or "erase")
    dry_run = fields.get("dry_run")
    if isinstance(dry_run, str):
        dry_run = dry_run.lower() in ("1", "true", "on", "yes")
    return NewRequest(Identities({k: (fields.get(k) or "").strip() or None for k in IDENTITY_KINDS}),
                      mode=fields.get("mode") or "erase", dry_run=bool(dry_run), source="page",
                      external_ref=fields.get("request_ref") or None, note=fields.get("note") or None)


@app.post("/requests", dependencies=[Depends(_same_origin)])
async def submit_request(request: Request, user: BaseUser = Depends(privacy_user),
                         engine: sa.Engine = Depends(ledger_engine)) -> Response:
    """Register a subject request (identity encrypted in the registry) and trigger erasure_request with its id.

    Form posts are answered with a redirect to the page, JSON with ``{"request_id", "dag_id", "run_id"}`` (201).
    Refusals (400) name the field, never its value."""
    from starlette.concurrency import run_in_threadpool

    from include.retention.connections import policy_path
    from include.retention.policy import load_policy
    from include.retention.registry import Registry
    from include.retention.requests.scanner import check_request_kinds

    fields, as_json = await _submitted(request)
    if not await run_in_threadpool(may_trigger, user, REQUEST_DAG_ID):
        raise HTTPException(status_code=403, detail=f"not allowed to trigger {REQUEST_DAG_ID}")
    key = ledger_key()
    if key is None:
        raise HTTPException(status_code=503, detail="no HMAC key configured: identities cannot be stored")
    try:
        req = _new_request(fields)
        policy = load_policy(policy_path())
        check_request_kinds(policy, req.identities.given())
    except RetentionError as exc:
        raise HTTPException(status_code=400, detail=f"request refused: {exc}") from None
    request_id = str(uuid.uuid4())
    run_id = f"retention_page__{dt.datetime.now(dt.UTC).isoformat()}_{request_id[:8]}"

    def register_and_trigger() -> None:
        registry = Registry(engine, key)
        registry.register(req, request_id=request_id, dag_id=REQUEST_DAG_ID, run_id=run_id,
                          policy_digest=policy.digest)
        try:
            trigger_run(REQUEST_DAG_ID, run_id, {"request_id": request_id}, user)
        except Exception:
            registry.finish(request_id, RequestStatus.INCOMPLETE, error="the erasure_request run could not be created")
            raise

    try:
        await run_in_threadpool(register_and_trigger)
    except RetentionError as exc:
        raise HTTPException(status_code=400, detail=f"request refused: {exc}") from None
    except sa.exc.SQLAlchemyError:
        log.exception("cannot register the request")
        raise HTTPException(status_code=503, detail=f"ledger database of connection {LEDGER_CONN_ID!r} "
                                                    "is not reachable (see the API server log)") from None
    log.info("request %s registered by %s, %s run %s triggered", request_id, user.get_name(), REQUEST_DAG_ID,
             run_id)
    if as_json:
        return JSONResponse({"request_id": request_id, "dag_id": REQUEST_DAG_ID, "run_id": run_id}, status_code=201)
    return RedirectResponse(f"./?submitted={request_id}#requests", status_code=303)


def may_read_runs(user: BaseUser, dag_id: str) -> bool:
    """What the auth manager says about reading ``dag_id``'s runs (FAB: the DAG's access_control): the run page's
    receipts are shown to exactly those who may see the run."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return get_auth_manager().is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN,
                                                details=DagDetails(id=dag_id), user=user)


def _run_receipts(dag_id: str, run_id: str, user: BaseUser, engine: sa.Engine) -> dict[str, Any]:
    if len(dag_id) > 250 or len(run_id) > 250:
        raise HTTPException(status_code=404, detail="no such run")
    if not may_read_runs(user, dag_id):
        raise HTTPException(status_code=403, detail="not allowed to read this DAG's runs")
    return _read(functools.partial(dashboard.run_receipts, dag_id=dag_id, run_id=run_id), engine)


@app.get("/runs/{dag_id}/{run_id:path}", response_class=HTMLResponse)
def run_page(dag_id: str, run_id: str, user: BaseUser = Depends(get_user),
             engine: sa.Engine = Depends(ledger_engine)) -> HTMLResponse:
    """The receipts of one DAG run, shown on its page in the Airflow UI (external view, destination ``dag_run``)."""
    return HTMLResponse(_RUN_TEMPLATE.render(data=_run_receipts(dag_id, run_id, user, engine),
                                             dag_ids=dashboard.RECEIPT_DAG_IDS, style=_STYLE,
                                             theme_script=_THEME_SCRIPT))


@app.get("/api/runs/{dag_id}/{run_id:path}")
def api_run(dag_id: str, run_id: str, user: BaseUser = Depends(get_user),
            engine: sa.Engine = Depends(ledger_engine)) -> JSONResponse:
    """The same as JSON."""
    return JSONResponse(_run_receipts(dag_id, run_id, user, engine))


class RetentionPagePlugin(AirflowPlugin):
    """Registers the page's FastAPI app and its entry in the UI navigation."""

    name = "retention_page"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": PAGE_NAME}]
    # url_route: the UI shows the page in its own frame at /plugin/data-retention
    # a tab on every DAG run's page: the UI fills in {DAG_ID} and {RUN_ID}; runs of DAGs that carry no request say so
    external_views = [{"name": PAGE_NAME, "href": f"{URL_PREFIX}/", "destination": "nav",
                       "url_route": "data-retention"},
                      {"name": "Receipts", "href": f"{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}", "destination": "dag_run",
                       "url_route": "receipts"}]


_TEMPLATE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""\
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Data retention</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
{{ style | safe }}
 .badge { display: inline-block; padding: 0 .4rem; border-radius: .6rem; font-size: .8rem; border: 1px solid; }
 tr.overdue td { background: var(--badbg); color: var(--bad); }
 .legend span { margin-right: 1rem; } .legend i { display: inline-block; width: .8rem; height: .8rem;
 margin-right: .3rem; vertical-align: -1px; }
 svg text { font-size: 11px; fill: currentColor; } svg line { stroke: var(--axis); }
 form label { display: inline-block; margin: 0 .8rem .5rem 0; }
 input, select { font: inherit; color: var(--fg); background: var(--bg); border: 1px solid var(--line);
 border-radius: .25rem; padding: .2rem .4rem; }
</style>
<script>{{ theme_script | safe }}</script></head>
<body>
<a class="skip" href="#requests">Skip to the open requests</a>
<h1>Data retention</h1>
<p class="muted">Request ids, statuses and counts only: this page shows no personal data.
 Signed in as {{ user }} &middot; generated {{ data.generated_at }}</p>

<h2 id="requests">Open requests ({{ data.requests.open }}, overdue {{ data.requests.overdue }},
 due within 7 days {{ data.requests.due_within_7_days }})</h2>
{% if data.requests["items"] %}
<table><thead><tr><th>request id</th><th>mode</th><th>status</th><th>due</th><th class="n">days left</th>
 <th>systems</th><th>run</th><th>recipients not yet confirmed</th></tr></thead><tbody>
{% for r in data.requests["items"] %}
<tr class="{{ 'overdue' if r.overdue else '' }}" data-request-id="{{ r.request_id }}">
 <td><code>{{ r.request_id }}</code></td>
 <td>{{ r.mode }}{% if r.dry_run %} (dry run){% endif %}</td>
 <td>{{ r.status }}</td><td>{{ r.due_at[:10] }}</td>
 <td class="n days-left">{{ r.days_left }}{% if r.overdue %} <span class="badge">overdue</span>{% endif %}</td>
 <td>{% for system, status in r.systems.items() %}{{ system }}: {{ status }}{% if not loop.last %}, {% endif %}
 {% else %}<span class="muted">not started</span>{% endfor %}</td>
 <td>{% if r.dag_id and r.run_id %}<a data-ui-link href="{{ run_url(r.dag_id, r.run_id) }}">{{ r.dag_id }}</a>
 {% endif %}</td>
 <td class="recipients">{{ r.get("unconfirmed_recipients", []) | join(", ") }}</td>
</tr>
{% endfor %}
</tbody></table>
{% else %}<p class="muted">No open requests.</p>{% endif %}

<h2 id="recent-requests">Recently closed requests</h2>
{% if data.recent_requests %}
<table><thead><tr><th>request id</th><th>mode</th><th>status</th><th>received</th><th>closed</th>
 <th>systems</th><th>run</th></tr></thead><tbody>
{% for r in data.recent_requests %}
<tr data-request-id="{{ r.request_id }}">
 <td><code>{{ r.request_id }}</code></td>
 <td>{{ r.mode }}{% if r.dry_run %} (dry run){% endif %}</td>
 <td>{{ r.status }}</td><td>{{ (r.received_at or '')[:10] }}</td><td>{{ (r.completed_at or '-')[:10] }}</td>
 <td>{% for system, status in r.systems.items() %}{{ system }}: {{ status }}{% if not loop.last %}, {% endif %}
 {% endfor %}</td>
 <td>{% if r.dag_id and r.run_id %}<a data-ui-link href="{{ run_url(r.dag_id, r.run_id) }}">{{ r.dag_id }}</a>
 {% endif %}</td>
</tr>
{% endfor %}
</tbody></table>
{% else %}<p class="muted">No closed requests yet.</p>{% endif %}

<h2 id="sweeps">Last sweep per rule</h2>
{% if data.sweeps %}
<table><thead><tr><th>rule</th><th>mode</th><th>outcome</th>
{% for c in ["locked", "anonymized", "deleted", "held", "kept"] %}<th class="n">{{ c }}</th>{% endfor %}
<th>time (UTC)</th><th>run</th></tr></thead><tbody>
{% for s in data.sweeps %}
<tr data-rule-id="{{ s.rule_id }}">
 <td><code>{{ s.rule_id }}</code></td>
 <td>{{ 'dry run' if s.dry_run else ('applied' if s.applied else 'not applied') }}</td>
 <td class="{{ 'bad' if s.outcome == 'brake_tripped' else '' }}">{{ s.outcome }}</td>
 {% for c in ["locked", "anonymized", "deleted", "held", "kept"] %}
 <td class="n">{{ '' if s.counts[c] is none else s.counts[c] }}</td>{% endfor %}
 <td>{{ s.recorded_at[:19] | replace('T', ' ') }}</td>
 <td>{% if s.dag_id and s.run_id and s.dag_id != 'manual' %}
 <a data-ui-link href="{{ run_url(s.dag_id, s.run_id) }}">{{ s.run_id }}</a>{% else %}{{ s.dag_id }}{% endif %}</td>
</tr>
{% endfor %}
</tbody></table>
<p class="muted">Dry runs and tripped safety brakes show what the rule would have done.</p>
{% else %}<p class="muted">No sweep recorded yet.</p>{% endif %}

<h2 id="running">Running now</h2>
<div id="running-body" aria-live="polite">
{% if data.running.sweeps %}
<table><thead><tr><th>rule</th><th>run</th><th class="n">done</th><th class="n">planned</th><th class="n">%</th>
 <th>time left</th></tr></thead><tbody>
{% for p in data.running.sweeps %}
<tr data-running-rule="{{ p.rule_id }}"><td><code>{{ p.rule_id }}</code></td><td>{{ p.run_id }}</td>
 <td class="n done">{{ "{:,}".format(p.done) }}</td><td class="n planned">{{ "{:,}".format(p.planned) }}</td>
 <td class="n">{{ p.percent }}</td><td class="left">{{ p.left }}</td></tr>
{% endfor %}
</tbody></table>
{% else %}<p class="muted" id="nothing-running">No sweep is running.</p>{% endif %}
</div>

<h2 id="findings">Personal data outside the data map (open findings of data_map_drift)</h2>
{% if data.findings %}
<table><thead><tr><th>where</th><th>kind</th><th>classifier</th><th class="n">hit rate</th>
<th class="n">sampled</th><th>first seen (UTC)</th></tr></thead><tbody>
{% for f in data.findings %}
<tr data-finding-id="{{ f.finding_id }}">
 <td><code>{{ f.place }}</code></td><td>{{ f.kind | replace('_', ' ') }}</td><td>{{ f.classifier or '-' }}</td>
 <td class="n">{{ '%.2f' | format(f.hit_rate) }}</td><td class="n">{{ f.sample_size }}</td>
 <td>{{ f.first_seen[:19] | replace('T', ' ') }}</td>
</tr>
{% endfor %}
</tbody></table>
<p class="muted">Each waits for a decision in Required actions (review_finding: map, ignore, not personal). Receipts
written meanwhile name them.</p>
{% else %}<p class="muted">No open finding.</p>{% endif %}

<h2 id="chart">Actions per day, last {{ data.chart.days }} days ({{ data.chart["from"] }} to {{ data.chart.to }})</h2>
<svg id="actions-chart" role="img" focusable="false" aria-label="actions per day, last {{ data.chart.days }} days:
 {% for a in data.chart.actions %}{{ a }} {{ data.chart.totals[a] }}{% if not loop.last %}, {% endif %}{% endfor %}"
 viewBox="-40 -10 {{ chart.width + 50 }}
 {{ chart.height + 40 }}" width="100%" style="max-width: {{ chart.width + 50 }}px">
 <line x1="0" y1="{{ chart.height }}" x2="{{ chart.width }}" y2="{{ chart.height }}" stroke="#9ca3af"/>
 <line x1="0" y1="0" x2="0" y2="{{ chart.height }}" stroke="#9ca3af"/>
 <text x="-6" y="4" text-anchor="end">{{ chart.max }}</text>
 <text x="-6" y="{{ chart.height }}" text-anchor="end">0</text>
 {% for b in chart.bars %}<g><title>{{ b.day }}: {{ b.total }}{% for a, n in b.counts.items() if n %}
 {{ a }} {{ n }}{% endfor %}</title>
 <rect x="{{ b.x }}" y="0" width="{{ b.w }}" height="{{ chart.height }}" fill="transparent"/>
 {% for s in b.segments %}<rect class="bar bar-{{ s.action }}" x="{{ s.x }}" y="{{ s.y }}" width="{{ s.w }}"
 height="{{ s.h }}" fill="{{ colors[s.action] }}"/>{% endfor %}
 {% if b.label %}<text x="{{ b.label_x }}" y="{{ chart.height + 16 }}"
 text-anchor="{{ b.anchor }}">{{ b.day[5:] }}</text>{% endif %}</g>
 {% endfor %}
</svg>
<p class="legend">{% for a in data.chart.actions %}<span><i style="background: {{ colors[a] }}"></i>{{ a }}
 {{ data.chart.totals[a] }}</span>{% endfor %}</p>
<details id="chart-table"><summary>The days with actions, as a table</summary>
<table><thead><tr><th>day</th>{% for a in data.chart.actions %}<th class="n">{{ a }}</th>{% endfor %}</tr></thead>
<tbody>{% for p in data.chart.series if p.total %}<tr><td>{{ p.day }}</td>{% for a in data.chart.actions %}
<td class="n">{{ p.counts[a] }}</td>{% endfor %}</tr>{% endfor %}</tbody></table></details>

<h2 id="forecast">Forecast: what the rules will do in the next 7, 30 and 90 days</h2>
{% set fc = data.forecast %}
<div id="forecast-body" data-pending="{{ 'true' if fc.get('pending') else 'false' }}" aria-live="polite">
{% if fc.rules %}
<table><thead><tr><th>rule</th><th>category</th><th class="n">due now</th>
 {% for h in fc.rules[0].get("horizons", []) %}<th class="n">within {{ h.days }} days</th>{% endfor %}</tr>
</thead><tbody>
{% for r in fc.rules %}
<tr data-forecast-rule="{{ r.rule_id }}"><td><code>{{ r.rule_id }}</code></td><td>{{ r.category or '' }}</td>
 {% if r.error %}<td colspan="4" class="muted">{{ r.error }}</td>{% else %}
 <td class="n">{% for a in fc.actions if (r.now or {}).get(a) %}{{ a }} {{ r.now[a] }} {% endfor %}</td>
 {% for h in r.horizons %}<td class="n">{% for a in fc.actions if h.counts.get(a) %}{{ a }} {{ h.counts[a] }}
 {% endfor %}</td>
 {% endfor %}{% endif %}</tr>
{% endfor %}
</tbody></table>
{% endif %}
{% if fc.get("problem") %}<p class="muted" id="forecast-problem">{{ fc.problem }}</p>{% endif %}
</div>

<h2 id="verification">Ledger verification</h2>
{% set v = data.verification %}
<p id="verification-status" class="{{ 'muted' if v.ok is none else ('ok' if v.ok else 'bad') }}">
 {% if v.ok is none %}Not verified: {{ v.problem }}.
 {% elif v.ok %}Chain intact: {{ v.entries }} entries checked{% if v.anchors_checked %},
 {{ v.anchors_checked }} anchor(s) match{% endif %}, verified at {{ v.verified_at[:19] | replace('T', ' ') }} UTC
 (on this page load).
 {% elif v.first_broken_seq is not none %}Chain BROKEN at entry {{ v.first_broken_seq }}: {{ v.problem }}
 ({{ v.entries }} entries checked, verified at {{ v.verified_at[:19] | replace('T', ' ') }} UTC).
 {% else %}Chain not verified: {{ v.problem }}.{% endif %}
 {% for w in v.warnings or [] %}Warning: {{ w }}.{% endfor %}</p>
{% if v.unreconciled_count %}<p id="unreconciled" class="bad">{{ v.unreconciled_count }} intent(s) without
 outcome (a change that may have happened; the next run reconciles it): entries
 {{ v.unreconciled[:20] | join(', ') }}{% if v.unreconciled_count > 20 %}, ...{% endif %}.{% if data.running.sweeps %}
 The sweeps running now (above) have a batch in flight: its intent is among them until the batch is done.
 {% endif %}</p>{% endif %}
{% if not v.anchors %}<p class="muted">No anchor location configured (RETENTION_LEDGER_ANCHORS): a truncated
 ledger with a moved head cannot be told apart from a shorter one.</p>{% endif %}
{% if may_act %}<form method="post" action="verify"><button type="submit">Verify now</button></form>
{% else %}<p class="muted">Verifying now and submitting requests are for the privacy role.</p>{% endif %}

{% if may_act %}
<h2 id="new-request">New request</h2>
{% if submitted %}<p id="submitted" class="ok">Request <code>{{ submitted }}</code> registered;
 erasure_request runs with its id only.</p>{% endif %}
<form id="request-form" method="post" action="requests" autocomplete="off">
 <p class="muted">The identity goes encrypted into the request registry; the DAG run gets the request id only.</p>
 <label>E-mail <input name="email" type="email" maxlength="254"></label>
 <label>Phone <input name="phone" maxlength="32"></label>
 <label>Customer reference <input name="customer_ref" maxlength="64"></label>
 <label>Mode <select name="mode"><option>erase</option><option>restrict</option></select></label>
 <label><input name="dry_run" type="checkbox" value="true"> Dry run</label>
 <button type="submit">Submit request</button>
</form>
{% endif %}

<script>
// The forecast, when the page was served before it was computed: fetched, no reload (text only, never HTML).
(function () {
  var box = document.getElementById("forecast-body");
  if (!box || box.getAttribute("data-pending") !== "true") return;
  function cell(tag, text, cls) {
    var el = document.createElement(tag);
    if (text !== undefined) el.textContent = text;
    if (cls) el.className = cls;
    return el;
  }
  function counts(actions, c) {
    return actions.filter(function (a) { return c && c[a]; }).map(function (a) { return a + " " + c[a]; }).join(" ");
  }
  function render(fc) {
    box.textContent = "";
    if (fc.rules && fc.rules.length) {
      var table = cell("table"), head = cell("tr"), body = cell("tbody");
      head.append(cell("th", "rule"), cell("th", "category"), cell("th", "due now", "n"));
      (fc.rules[0].horizons || []).forEach(function (h) {
        head.append(cell("th", "within " + h.days + " days", "n"));
      });
      var thead = cell("thead"); thead.append(head); table.append(thead, body);
      fc.rules.forEach(function (r) {
        var tr = cell("tr"), code = cell("code", r.rule_id), first = cell("td");
        tr.setAttribute("data-forecast-rule", r.rule_id); first.append(code);
        tr.append(first, cell("td", r.category || ""));
        if (r.error) { var e = cell("td", r.error, "muted"); e.colSpan = 4; tr.append(e); }
        else {
          tr.append(cell("td", counts(fc.actions, r.now), "n"));
          (r.horizons || []).forEach(function (h) { tr.append(cell("td", counts(fc.actions, h.counts), "n")); });
        }
        body.append(tr);
      });
      box.append(table);
    }
    if (fc.problem) { var p = cell("p", fc.problem, "muted"); p.id = "forecast-problem"; box.append(p); }
    box.setAttribute("data-pending", fc.pending ? "true" : "false");
  }
  var tries = 0;
  function load() {
    fetch("api/forecast", {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (fc) { render(fc); if (fc.pending && ++tries < 20) setTimeout(load, 3000); })
      .catch(function () { if (++tries < 20) setTimeout(load, 5000); });
  }
  load();
})();
// Running work: polled while the page is open (text only, never HTML).
(function () {
  var box = document.getElementById("running-body");
  if (!box) return;
  function cell(tag, text, cls) {
    var el = document.createElement(tag);
    if (text !== undefined) el.textContent = text;
    if (cls) el.className = cls;
    return el;
  }
  function render(work) {
    box.textContent = "";
    if (!work.sweeps || !work.sweeps.length) {
      var p = cell("p", "No sweep is running.", "muted"); p.id = "nothing-running"; box.append(p); return;
    }
    var table = cell("table"), head = cell("tr"), body = cell("tbody"), thead = cell("thead");
    head.append(cell("th", "rule"), cell("th", "run"), cell("th", "done", "n"), cell("th", "planned", "n"),
                cell("th", "%", "n"), cell("th", "time left"));
    thead.append(head); table.append(thead, body);
    work.sweeps.forEach(function (p) {
      var tr = cell("tr"), first = cell("td");
      tr.setAttribute("data-running-rule", p.rule_id); first.append(cell("code", p.rule_id));
      tr.append(first, cell("td", p.run_id), cell("td", p.done.toLocaleString("en-US"), "n done"),
                cell("td", p.planned.toLocaleString("en-US"), "n planned"), cell("td", String(p.percent), "n"),
                cell("td", p.left, "left"));
      body.append(tr);
    });
    box.append(table);
  }
  function load() {
    fetch("api/progress", {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (work) { render(work); setTimeout(load, 3000); })
      .catch(function () { setTimeout(load, 10000); });
  }
  setTimeout(load, 3000);
})();
// Links to DAG runs: when shown inside the Airflow UI's frame, open them in the UI itself.
document.addEventListener("click", function (ev) {
  var a = ev.target.closest && ev.target.closest("a[data-ui-link]");
  if (!a || window.top === window) return;
  try {
    window.top.history.pushState(null, "", a.getAttribute("href"));
    window.top.dispatchEvent(new PopStateEvent("popstate", {state: null}));
    ev.preventDefault();
  } catch (e) { /* not the same origin: follow the link in the frame */ }
});
</script>
</body></html>
""")


# The Airflow UI's look (Airflow 3.3's Chakra theme, airflow/ui/dist: its gray, brand, red and green scales, the
# semantic tokens bg / fg / fg.muted / border / focusRing in light and dark, the Inter font). The theme follows the
# UI: its <html> class ("light" / "dark", next-themes with attribute "class") when the page is in the UI's frame,
# else its localStorage key "theme" (same origin), else the system's prefers-color-scheme.
_STYLE = """\
 :root { color-scheme: light dark;
  --bg: #ffffff; --fg: oklch(0.23185 0.0323 266.44); --muted: oklch(0.45 0.055 251); --line: oklch(0.915 0.01 253);
  --subtle: oklch(0.955 0.006 253); --link: oklch(0.399 0.084 257.85); --brand: oklch(0.469 0.084 257.657);
  --focus: oklch(0.324 0.072 260.329); --bad: #991919; --badbg: #fee2e2; --ok: #116932;
  --axis: oklch(0.75 0.025 252); }
 :root.light { color-scheme: light; }
 :root.dark { color-scheme: dark; --bg: oklch(0.23185 0.0323 266.44); --fg: oklch(0.985 0.004 253);
  --muted: oklch(0.75 0.025 252); --line: oklch(0.28 0.035 251); --subtle: oklch(0.18 0.03 251);
  --link: oklch(0.865 0.039 252.42);
  --brand: oklch(0.469 0.084 257.657); --focus: oklch(0.923 0.023 255.082); --bad: #fecaca; --badbg: #300c0c;
  --ok: #bbf7d0; --axis: oklch(0.45 0.055 251); }
 @media (prefers-color-scheme: dark) { :root:not(.light) { --bg: oklch(0.23185 0.0323 266.44);
  --fg: oklch(0.985 0.004 253); --muted: oklch(0.75 0.025 252); --line: oklch(0.28 0.035 251);
  --subtle: oklch(0.18 0.03 251); --link: oklch(0.865 0.039 252.42); --focus: oklch(0.923 0.023 255.082);
  --bad: #fecaca; --badbg: #300c0c; --ok: #bbf7d0; --axis: oklch(0.45 0.055 251); } }
 html { background: var(--bg); color: var(--fg); }
 body { font: 14px/1.45 Inter, ui-sans-serif, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  margin: 1.2rem; background: var(--bg); color: var(--fg); }
 h1 { font-size: 1.5rem; font-weight: 600; margin: 0 0 .2rem; }
 h2 { font-size: 1.125rem; font-weight: 600; margin: 1.6rem 0 .5rem; }
 a { color: var(--link); } code { font-size: .9em; }
 table { border-collapse: collapse; width: 100%; }
 th { background: var(--subtle); font-weight: 600; }
 th, td { border-bottom: 1px solid var(--line); padding: .35rem .6rem; text-align: left; vertical-align: top; }
 td.n, th.n { text-align: right; }
 .muted { color: var(--muted); } .bad { color: var(--bad); } .ok { color: var(--ok); }
 button { font: inherit; font-weight: 600; padding: .3rem .9rem; border: 0; border-radius: .25rem;
  background: var(--brand); color: #fff; cursor: pointer; }
 a:focus-visible, button:focus-visible, input:focus-visible, select:focus-visible, summary:focus-visible,
 [tabindex]:focus-visible { outline: 2px solid var(--focus); outline-offset: 2px; }
 .skip { position: absolute; left: -9999px; }
 .skip:focus { left: 1rem; top: .5rem; padding: .3rem .6rem; background: var(--bg); z-index: 1; }
 summary { cursor: pointer; color: var(--muted); margin: .4rem 0; }
"""

_THEME_SCRIPT = """\
(function () {
  var root = document.documentElement;
  function uiTheme() {
    try {
      var ui = window.parent !== window && window.parent.document.documentElement;
      if (ui && ui.classList.contains("dark")) return "dark";
      if (ui && ui.classList.contains("light")) return "light";
    } catch (e) { /* not in the UI's frame, or another origin */ }
    try {
      var stored = window.localStorage.getItem("theme");
      if (stored === "dark" || stored === "light") return stored;
    } catch (e) { /* storage blocked */ }
    return null;  /* "system": prefers-color-scheme (the style sheet) decides */
  }
  function apply() {
    var theme = uiTheme();
    root.classList.remove("dark", "light");
    if (theme) root.classList.add(theme);
    root.setAttribute("data-theme", theme || "system");
  }
  apply();
  window.addEventListener("storage", function (e) { if (e.key === "theme") apply(); });
  try {
    if (window.parent !== window) {
      new MutationObserver(apply).observe(window.parent.document.documentElement,
                                          {attributes: true, attributeFilter: ["class"]});
    }
  } catch (e) { /* another origin */ }
})();
"""

_RUN_TEMPLATE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""\
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Receipts of {{ data.dag_id }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
{{ style | safe }}
</style>
<script>{{ theme_script | safe }}</script></head>
<body>
<h1>Receipts of this run</h1>
<p class="muted">{{ data.dag_id }} &middot; <code>{{ data.run_id }}</code> &middot; request ids, statuses and counts
 only: no personal data.</p>
{% if not data.requests %}
<p id="no-requests" class="muted">{% if data.carries_requests %}No request in this run (yet): the registry names none.
{% else %}Receipts are kept for runs of {{ dag_ids | join(", ") }}; this run carries no request.{% endif %}</p>
{% endif %}
{% for r in data.requests %}
<section class="request" data-request-id="{{ r.request_id }}" aria-labelledby="req-{{ loop.index }}">
<h2 id="req-{{ loop.index }}">Request <code>{{ r.request_id }}</code>: {{ r.mode }}{% if r.dry_run %} (dry run)
{% endif %}, {{ r.status }}</h2>
<p>Received {{ (r.received_at or '')[:10] }}, due {{ (r.due_at or '')[:10] }},
 completed {{ (r.completed_at or '-')[:10] }}.
{% if r.has_receipt %} {{ (r.verification or '')[:1] | upper }}{{ (r.verification or '')[1:] }}.
{% else %} <span class="muted">No receipt yet: the run writes it when it finishes.</span>{% endif %}</p>
<table><thead><tr><th>system</th><th>status</th><th>collection</th><th>records</th><th class="n">ledger entry</th></tr>
</thead><tbody>
{% for s in r.systems %}{% for c in (s.collections or [{"collection": "-", "text": ""}]) %}
<tr data-system="{{ s.system }}" data-collection="{{ c.collection }}"><td>{{ s.system }}</td>
 <td class="{{ 'ok' if s.verified else '' }}">{{ s.status }}</td>
 <td><code>{{ c.collection }}</code></td><td class="records">{{ c.text }}</td>
 <td class="n">{{ '' if s.ledger_seq is none else s.ledger_seq }}</td></tr>
{% endfor %}{% endfor %}
</tbody></table>
{% if r.exceptions %}<p class="exceptions">Exceptions (kept): {% for e in r.exceptions %}{{ e.system }} /
 {{ e.collection }}: {{ e["items"] }} ({{ e.reason }}){% if not loop.last %}; {% endif %}{% endfor %}</p>{% endif %}
{% if r.ledger_seqs %}<p class="muted">Ledger entries proving it: {{ r.ledger_seqs | join(", ") }}
 (<code>python -m include.retention.cli verify-receipt</code>).</p>{% endif %}
</section>
{% endfor %}
{% if data.entries %}
<h2 id="entries">Ledger entries of this run</h2>
<table><thead><tr><th class="n">seq</th><th>time (UTC)</th><th>request</th><th>action</th><th>outcome</th>
 <th>where</th><th class="n">count</th></tr></thead><tbody>
{% for e in data.entries %}<tr data-seq="{{ e.seq }}"><td class="n">{{ e.seq }}</td>
 <td>{{ (e.recorded_at or '')[:19] | replace('T', ' ') }}</td><td><code>{{ e.request_id or '' }}</code></td>
 <td>{{ e.action }}</td><td>{{ e.outcome }}</td>
 <td>{{ e.rule_id or ((e.system or '') ~ ('.' ~ e.collection if e.collection else '')) }}</td>
 <td class="n">{{ '' if e.count is none else e.count }}</td></tr>
{% endfor %}</tbody></table>
{% if data.more_entries %}<p class="muted">and {{ data.more_entries }} more.</p>{% endif %}
{% endif %}
</body></html>
""")
