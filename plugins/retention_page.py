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
from pathlib import Path
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


# The page's HTML (Jinja2), its style (the Airflow UI's look: Airflow 3.3's Chakra theme, its gray, brand, red and
# green scales, the semantic tokens in light and dark, the Inter font) and the script that follows the UI's theme
# (its <html> class when the page is in the UI's frame, else its localStorage key "theme", else the system's
# prefers-color-scheme): files beside this one.
_ASSETS = Path(__file__).with_name("retention_page_assets")
_JINJA = jinja2.Environment(loader=jinja2.FileSystemLoader(_ASSETS), autoescape=True, undefined=jinja2.StrictUndefined)
_TEMPLATE = _JINJA.get_template("page.html")
_RUN_TEMPLATE = _JINJA.get_template("run.html")
_STYLE = (_ASSETS / "style.css").read_text()
_THEME_SCRIPT = (_ASSETS / "theme.js").read_text()
