"""Who must be told of a subject request, and what they are told (GDPR Art. 19 and Art. 12).

Recipients (processors and other recipients of a system's data) are declared in the data map
(``recipients:`` and ``notify:``). After a request changed a system, each concerned recipient gets one
notice per request: request id, action, systems and categories, and the person's identity only as its
declaration allows (``identity: plain`` by e-mail only, ``identity: digest`` as keyed digests under a key the
recipient shares; docs/adr/0010-notifying-recipients.md). The requester gets a completion notice and, when the
due date is extended, the notice Art. 12(3) requires; both from templates in ``templates/``.

This module imports nothing from Airflow: planning and sending are ``requests/notices.py``' (behind a ``Sender``).
"""

from __future__ import annotations

import hashlib
import hmac
import string
from pathlib import Path
from typing import Any

from include.retention.policy import Policy, Recipient

TEMPLATES = Path(__file__).resolve().parent / "templates"
# Modes Art. 19 is about: erasure, restriction (and the kept exceptions: restricted too) and rectification.
NOTIFIED_MODES = ("erase", "restrict", "rectify")
ACTIONS = {"erase": "erasure (Art. 17 GDPR)", "restrict": "restriction of processing (Art. 18 GDPR)",
           "rectify": "rectification (Art. 16 GDPR)", "access": "access (Art. 15 GDPR)",
           "withdraw": "withdrawal of consent (Art. 7(3) GDPR)"}


def _changed(per_collection: dict[str, Any]) -> bool:
    return any(isinstance(n, int) and n > 0 for n in per_collection.values())


def changed_collections(policy: Policy, systems_state: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    """system -> collection names (``system.collection``) the request changed, including objects removed along."""
    out: dict[str, set[str]] = {}
    for system, state in systems_state.items():
        counts = state.get("counts") or {}
        for ref, per in (counts.get("collections") or {}).items():
            if isinstance(per, dict) and _changed(per):
                out.setdefault(ref.partition(".")[0] if "." in ref else system, set()).add(ref)
        for ref, n in (counts.get("removed_along") or {}).items():
            s_name, _, c_name = ref.partition(".")
            known = s_name in policy.systems and c_name in policy.systems[s_name].collections
            if isinstance(n, int) and n > 0 and known:
                out.setdefault(s_name, set()).add(ref)
    return out


def plan(policy: Policy, request: dict[str, Any], systems_state: dict[str, dict[str, Any]]
         ) -> dict[str, dict[str, Any]]:
    """The recipients a request concerns: name -> channel, action, systems, categories. A dry run, a mode Art. 19
    does not cover, or a request that changed nothing concerns no one."""
    if request.get("dry_run") or request.get("mode") not in NOTIFIED_MODES:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for system, refs in changed_collections(policy, systems_state).items():
        sys_ = policy.systems.get(system)
        if sys_ is None:
            continue
        for ref in sorted(refs):
            coll = sys_.collections.get(ref.partition(".")[2])
            if coll is None:
                continue
            for name in [*sys_.notify, *coll.notify]:
                rcp = policy.recipients[name]
                entry = out.setdefault(name, {"channel": rcp.channel, "action": request["mode"],
                                              "systems": set(), "categories": set()})
                entry["systems"].add(system)
                entry["categories"].update(coll.categories)
    return {name: {**e, "systems": sorted(e["systems"]), "categories": sorted(e["categories"])}
            for name, e in out.items()}


def subject_digests(key: bytes, identities: dict[str, str]) -> dict[str, str]:
    """Keyed digests (HMAC-SHA256, hex) of the normalised identities under a key shared with the recipient: it
    computes the same over its own records and finds the person without being sent the identity."""
    return {kind: hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
            for kind, value in sorted(identities.items())}


def address_for(rcp: Recipient, request_id: str, action: str, name: str) -> str:
    return (rcp.address or "").format_map({"request_id": request_id, "action": action, "recipient": name})


def category_lines(policy: Policy, categories: list[str]) -> str:
    return "\n".join(f"- {c}: {policy.category_info(c).description}" for c in categories) or "- (none)"


def render(template: str, **values: Any) -> tuple[str, str]:
    """(subject, body) of ``templates/<template>.txt``: its first line is ``Subject: ...``; ``$name`` fields."""
    text = string.Template((TEMPLATES / f"{template}.txt").read_text(encoding="utf-8")).substitute(
        {k: "" if v is None else str(v) for k, v in values.items()})
    head, _, body = text.partition("\n")
    return head.removeprefix("Subject:").strip(), body.lstrip("\n")


def recipient_notice(policy: Policy, name: str, request_id: str, planned: dict[str, Any],
                     identities: dict[str, str] | None = None, digests: dict[str, str] | None = None
                     ) -> tuple[str, str]:
    """The e-mail to a recipient: (subject, body). ``identities`` only for ``identity: plain``."""
    rcp = policy.recipients[name]
    if identities:
        who = "The person (sent to you by e-mail only, as agreed):\n" + "\n".join(
            f"- {kind}: {value}" for kind, value in sorted(identities.items()))
    elif digests:
        who = "The person, as keyed digests under the key we share (HMAC-SHA256 of the normalised value):\n" + \
              "\n".join(f"- {kind}: {value}" for kind, value in digests.items())
    else:
        who = ("The person is not named in this message. Reply quoting the request id if you need to identify "
               "them; we answer over the agreed channel.")
    return render("recipient_notice", recipient=rcp.description, request_id=request_id,
                  action=ACTIONS.get(planned["action"], planned["action"]), systems=", ".join(planned["systems"]),
                  categories=category_lines(policy, planned["categories"]), who=who,
                  policy_name=policy.name)


def recipient_payload(name: str, request_id: str, planned: dict[str, Any], digests: dict[str, str] | None = None
                      ) -> dict[str, Any]:
    """A webhook's JSON body: never a plaintext identity (the policy refuses ``identity: plain`` here)."""
    body: dict[str, Any] = {"type": "gdpr.recipient_notice", "article": "19", "recipient": name,
                            "request_id": request_id, "action": planned["action"], "systems": planned["systems"],
                            "categories": planned["categories"]}
    if digests:
        body["subject_digests"] = {"algorithm": "hmac-sha256", **digests}
    return body


def completion_notice(request: dict[str, Any], receipt: dict[str, Any] | None, link: str | None = None,
                      link_expires_at: str | None = None) -> tuple[str, str]:
    """The requester's notice that the request was carried out (with the access package's link, if any)."""
    package = ""
    if link:
        package = (f"\nYour copy of the data is ready for download until {link_expires_at or 'the link expires'}:"
                   f"\n{link}\n")
    exceptions = (receipt or {}).get("exceptions") or []
    kept = ("\nSome data must be kept by law; it is restricted (used for nothing else) until it may be deleted:\n"
            + "\n".join(f"- {e['collection']}: {e['items']} item(s), {e['reason']}" for e in exceptions) + "\n"
            if exceptions else "")
    return render("completion", request_id=request["request_id"],
                  action=ACTIONS.get(request["mode"], request["mode"]),
                  received=_day(request.get("received_at")), completed=_day(request.get("completed_at")),
                  package=package, exceptions=kept)


def extension_notice(request: dict[str, Any], months: int, reason: str, new_due: Any) -> tuple[str, str]:
    """The notice GDPR Art. 12(3) requires when the answer takes longer: the extension and its reasons."""
    return render("extension", request_id=request["request_id"], action=ACTIONS.get(request["mode"], request["mode"]),
                  received=_day(request.get("received_at")), months=months,
                  month_word="month" if months == 1 else "months", reason=reason, due=_day(new_due))


def _day(value: Any) -> str:
    return value.strftime("%Y-%m-%d") if hasattr(value, "strftime") else str(value or "-")[:10]
