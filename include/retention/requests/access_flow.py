"""The access, rectify and withdraw flow (Art. 15/20, 16, 7(3)): register, act, finalize; one request at a time.

Only the request id and counts leave it; identities, new values, the package's content and the download link
stay in the registry (encrypted where they name the person) and the exports bucket. ``Refused``: retrying does
not help.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import sqlalchemy as sa

from include.retention.errors import RetentionError
from include.retention.findings import FindingStore
from include.retention.identity import IDENTITY_KINDS, normalise
from include.retention.identity import validate as validate_identity
from include.retention.ledger import RunRef
from include.retention.requests import correction_flow, identity_decisions, person
from include.retention.requests.context import Refused, RequestContext
from include.retention.requests.erasure_flow import register_form_request
from include.retention.requests.receipts import (
    add_unmapped,
    build_receipt,
    recipients_part,
    render_markdown,
    with_identity_check,
    with_request_type,
)
from include.retention.settings import settings
from include.retention.values import CollectionRef, RequestStatus, SystemStatus

log = logging.getLogger(__name__)

OTHER_MODES = ("access", "rectify", "withdraw")
RECTIFIABLE = ("email", "phone")
LINK_ENV = "RETENTION_EXPORT_LINK_SECONDS"
MASKED = (*IDENTITY_KINDS, "new_email", "new_phone")  # conf fields a runner hides from its logs


# ---- register ------------------------------------------------------------------------------------
def register(ctx: RequestContext, params: dict[str, Any], dag_id: str, run_id: str) -> str:
    """Identities (and new values) from the run's conf into the registry, encrypted; returns the request id.

    ``identity_verified`` is honoured only for a request the intake path queued before the run (conf
    ``{"request_id": ..., "identity_verified": true}``): a form or REST trigger with identities cannot set it.
    """
    mode = params.get("mode") or "access"
    if mode not in OTHER_MODES:
        raise Refused(f"request refused: mode must be one of {', '.join(OTHER_MODES)}")
    if not any(params.get(kind) for kind in IDENTITY_KINDS):
        return _queued(ctx, params, dag_id, run_id)
    identity_decisions.refuse_self_verified(params)
    details = request_details(params, mode)
    request_id, dry_run, due_at = register_form_request(ctx, params, mode, dag_id, run_id, details)
    log.info("request %s registered (mode %s, dry run %s), due %s", request_id, mode, dry_run, due_at)
    return request_id


def _new_values(params: dict[str, Any]) -> dict[str, str]:
    """rectify: the new values, each checked against its old one; refused naming the field, never its value."""
    new = {kind: params.get(f"new_{kind}") for kind in RECTIFIABLE if params.get(f"new_{kind}")}
    if not new:
        raise Refused("request refused: rectify needs new_email or new_phone")
    for kind, value in new.items():
        if not params.get(kind):
            raise Refused(f"request refused: new_{kind} needs the old {kind} (the value to replace)")
        try:
            validate_identity(kind, value)
        except RetentionError as exc:
            raise Refused(f"request refused: new_{kind}: {exc}") from None
        if normalise(kind, value) == normalise(kind, params[kind]):
            raise Refused(f"request refused: new_{kind} equals the old value")
    return new


def request_details(params: dict[str, Any], mode: str) -> dict[str, Any]:
    """What the request type needs besides identities; refused (naming the field, never its value) if wrong."""
    details: dict[str, Any] = {"format": params.get("format") or "human"}
    if details["format"] not in ("human", "portable"):
        raise Refused("request refused: format must be human or portable")
    if mode == "rectify":
        details["new_values"] = _new_values(params)
    if mode == "withdraw":
        consents = params.get("consents") or None
        if consents is not None and (not isinstance(consents, list) or not all(isinstance(c, str) for c in consents)):
            raise Refused("request refused: consents must be a list of consent names")
        details["consents"] = consents
    return details


def _queued(ctx: RequestContext, params: dict[str, Any], dag_id: str, run_id: str) -> str:
    """A request queued by the intake path (CLI submit, retention page) and handed to this run by id."""
    rid = str(params.get("request_id") or ctx.registry.request_id_for(dag_id, run_id))
    try:
        req = ctx.registry.get(rid)
    except sa.exc.NoResultFound:
        raise Refused(f"request refused: unknown request {rid}" if params.get("request_id") else
                      "request refused: a request needs at least one identity") from None
    if req["mode"] not in OTHER_MODES:
        raise Refused(f"request refused: request {rid} is a {req['mode']} request (erasure_request handles it)")
    if req["dag_id"] not in (None, dag_id) or (req["dag_id"] == dag_id and req["run_id"] not in (None, run_id)
                                                and req["source"] not in identity_decisions.INTAKE_SOURCES):
        raise Refused(f"request refused: request {rid} was registered for another run")
    verified = identity_decisions.arrived_verified(params, req)
    details = ctx.registry.details(rid)
    ctx.registry.update_details(rid, format=details.get("format") or params.get("format") or "human",
                                identity_verified=verified or bool(details.get("identity_verified")))
    ctx.registry.start(rid, dag_id, run_id)
    log.info("request %s (queued before the run, mode %s), due %s", rid, req["mode"], req["due_at"])
    return rid


# ---- act -----------------------------------------------------------------------------------------
def act(ctx: RequestContext, request_id: str, dag_id: str, run_id: str) -> dict[str, Any]:
    """Do what the request asks, in every system; returns counts only."""
    check = ctx.registry.details(request_id).get("identity_check") or {}
    if check.get("decision") not in identity_decisions.PROCEED:
        raise Refused(f"request {request_id}: the requester's identity was not confirmed; nothing was done")
    # one person per request, before anything is read or changed (resolved here if no task did)
    person.resolve_requests(ctx.policy, ctx.runtime.store, ctx.registry, [request_id])
    if person.undecided_conflict(ctx.registry.details(request_id)):
        if check.get("decision") != "approved":  # nobody decided (a dry run): the conflict stops it
            identity_decisions.stop_conflict(ctx, request_id, dag_id, run_id)
            return {"stopped": "conflict"}
        person.choose_linked_only(ctx.registry, request_id)  # Approve: the linked identities only
    req = ctx.registry.get(request_id)
    if req["mode"] == "access":
        return _access(ctx, request_id, req, dag_id, run_id)
    return _change(ctx, request_id, req, dag_id, run_id)


def _exports(ctx: RequestContext):
    if not ctx.policy.exports:
        raise Refused("the data map names no exports collection (top-level 'exports: system.collection')")
    system, name = CollectionRef.parse(ctx.policy.exports)
    return ctx.runtime.store(system), name


def _access(ctx: RequestContext, request_id: str, req: dict[str, Any], dag_id: str, run_id: str) -> dict[str, Any]:
    from include.retention.requests.access import PackageBuilder

    details = ctx.registry.details(request_id)
    builder = PackageBuilder(ctx.policy, ctx.runtime.store, ctx.subjects([request_id]), request_id=request_id,
                             fmt=details.get("format") or "human")
    try:
        result = builder.build()
        package: dict[str, Any] = {"sha256": result.sha256, "size": result.size, "files": result.files,
                                   "format": builder.fmt}
        if not req["dry_run"]:
            package.update(_upload(ctx, request_id, result.path, builder.now))
    finally:
        builder.close()
    for system in builder.systems():
        per = {ref: {"rows": n} for ref, n in result.rows.items() if ref.startswith(f"{system}.")}
        for ref, n in result.objects.items():
            if ref.startswith(f"{system}."):
                per.setdefault(ref, {})["objects"] = n
        ctx.registry.systems.set([request_id], system, SystemStatus.RECORDED, counts={
            "collections": per, "searched": result.searched.get(system, {})})
        _ledger(ctx, request_id, system, "access", sum(v.get("rows", 0) for v in per.values()), req, dag_id, run_id,
                {"collections": {ref: v for ref, v in per.items()}})
    link = package.pop("link", None)
    ctx.registry.update_details(request_id, package=package, link=link)
    log.info("request %s: package %s, %d bytes, sha256 %s", request_id, package.get("key", "(dry run)"),
             result.size, result.sha256)
    return {"rows": sum(result.rows.values()), "objects": sum(result.objects.values()), "bytes": result.size}


def _upload(ctx: RequestContext, request_id: str, path: str, now: dt.datetime) -> dict[str, Any]:
    """The zip into the exports collection, in parts; an expiring presigned link to it."""
    from include.retention.requests.access import iter_file
    from include.retention.stores.s3_writes import Upload

    store, name = _exports(ctx)
    coll = ctx.policy.collection(ctx.policy.exports)
    key = f"{store.prefix(coll)}{now:%Y/%m/%d}/{request_id}.zip"
    upload = Upload(store, coll.bucket, key, {"ContentType": "application/zip"}, store.part_size)
    try:
        for block in iter_file(path):
            upload.write(block)
        version = upload.complete()
    except BaseException:
        upload.abort()
        raise
    seconds = settings().export_link_seconds
    params = {"Bucket": coll.bucket, "Key": key, **({"VersionId": version} if version else {})}
    link = store.client.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds)
    expires = (now + dt.timedelta(seconds=seconds)).isoformat()
    return {"bucket": coll.bucket, "key": key, "version_id": version, "link": link, "link_expires_at": expires,
            "collection": ctx.policy.exports}


def _withdrawn(ctx: RequestContext, store: Any, subjects: list, request_id: str, consents: list[str] | None,
               dry_run: bool) -> dict[str, dict[str, int]]:
    """withdraw in one system: every consent-bearing collection holding the subject."""
    per: dict[str, dict[str, int]] = {}
    for name in store.subject_collections():
        coll = ctx.policy.collection(store.ref(name))
        if not coll.consent:
            continue
        claims = store.find(name, subjects)
        if not claims:
            continue
        out = store.withdraw(name, claims, subjects, consents, dry_run=dry_run)
        for ref, counts in out.per_request.get(request_id, {}).items():
            per[ref] = counts
    return per


def _change(ctx: RequestContext, request_id: str, req: dict[str, Any], dag_id: str, run_id: str) -> dict[str, Any]:
    """rectify (``correction_flow``: every SQL system together, then S3) / withdraw in every system."""
    mode, dry_run = req["mode"], bool(req["dry_run"])
    if mode == "rectify":
        return correction_flow.rectify(ctx, request_id, req, dag_id, run_id)
    details = ctx.registry.details(request_id)
    subjects = ctx.subjects([request_id])
    totals: dict[str, int] = {}
    for system in ctx.systems():
        store = ctx.runtime.store(system)
        per = _withdrawn(ctx, store, subjects, request_id, details.get("consents"), dry_run)
        ctx.registry.systems.set([request_id], system, "recorded", counts={
            "collections": per, "searched": store.searched_kinds()})
        n = sum(c for counts in per.values() for k, c in counts.items() if not k.startswith("already"))
        _ledger(ctx, request_id, system, mode, n, req, dag_id, run_id, {"collections": per})
        totals[system] = n
    log.info("request %s: %s%s, changed per system: %s", request_id, mode, " (dry run)" if dry_run else "", totals)
    return {"changed": totals}


def _ledger(ctx: RequestContext, request_id: str, system: str, action: str, count: int, req: dict[str, Any],
            dag_id: str, run_id: str, details: dict[str, Any]) -> None:
    outcome = "dry_run" if req["dry_run"] else "done"
    if ctx.ledger.has_entry(request_id=request_id, system=system, action=action, outcome=outcome):
        return
    ctx.ledger.append(run=RunRef(dag_id, run_id), action=action, outcome=outcome, count=count,
                      request_id=request_id, policy_digest=ctx.policy.digest, system=system,
                      subject_digest=ctx.registry.subject_digest(request_id), details=details)


# ---- finalize ------------------------------------------------------------------------------------
def access_receipt(ctx: RequestContext, request_id: str, expected: list[str]) -> dict[str, Any]:
    """The erasure receipt's shape plus what these request types add: identity check, package, no identity."""
    req = ctx.registry.get(request_id)
    details = ctx.registry.details(request_id)
    receipt = build_receipt(req, ctx.registry.systems.of(request_id), expected, ctx.policy.digest,
                            policy=ctx.policy)
    with_identity_check(receipt, req, details)
    receipt["recipients"] = recipients_part(ctx.registry.recipients.of(request_id))
    if req["status"] in (RequestStatus.REJECTED, RequestStatus.CONFLICT):
        return receipt  # with_identity_check says why: nothing was read, changed or handed out
    with_request_type(receipt, req, details)
    return add_unmapped(receipt, FindingStore(ctx.ledger.engine).open_findings(expected))  # open findings


def finalize_access(ctx: RequestContext, request_id: str, acted: bool, dag_id: str, run_id: str) -> dict[str, Any]:
    """Close the request: complete, rejected (identity not verified) or incomplete; save the receipt. Refused
    (after the receipt is saved) when it stays open."""
    expected = ctx.systems()
    check = ctx.registry.details(request_id).get("identity_check") or {}
    if check.get("decision") == "rejected":
        identity_decisions.close_rejected(ctx, request_id, dag_id, run_id)
    elif ctx.registry.get(request_id)["status"] != RequestStatus.CONFLICT:  # a conflict: closed by act, nothing done
        states = ctx.registry.systems.of(request_id)
        done = acted and all(states.get(s, {}).get("status") == "recorded" for s in expected)
        told = ctx.registry.recipients.settled(request_id)  # Art. 19: every recipient confirmed or waived
        ctx.registry.finish(request_id, RequestStatus.COMPLETE if done and told else RequestStatus.INCOMPLETE,
                            error=None if done and told else "not every system was handled" if not done else
                            "not every recipient confirmed or waived")
    receipt = access_receipt(ctx, request_id, expected)
    ctx.registry.save_receipt(request_id, receipt)
    log.info("receipt:\n%s", render_markdown(receipt))
    if receipt["status"] == RequestStatus.INCOMPLETE:
        raise Refused(f"request {request_id} stays open: {ctx.registry.get(request_id)['last_error']}")
    return {"request_id": request_id, "status": receipt["status"]}
