"""Trigger-form fields shared by the subject-request DAGs (erasure_request, access_request).

One definition of the identity fields: the same limits, patterns and titles in every form, checked
again by the first task (``include.retention.registry.validate_request``).
"""

from __future__ import annotations

from airflow.sdk import Param

from include.retention.identity import EMAIL_PATTERN, IDENTITY_KINDS, PHONE_PATTERN

NO_CONTROL = r"^[^\u0000-\u001f\u007f]*$"  # no NUL, tab or line break: refused by the form, again by register


def limit(kind: str) -> int:
    return IDENTITY_KINDS[kind][1]


def identity_params() -> dict[str, Param]:
    """E-mail, phone, customer reference, social-media handle: at least one is needed."""
    return {
        "email": Param(None, type=["null", "string"], pattern=EMAIL_PATTERN, maxLength=limit("email"),
                       title="E-mail address",
                       description="The person's e-mail. Give at least one identity: e-mail, phone, customer "
                                   "reference or social-media handle."),
        "phone": Param(None, type=["null", "string"], pattern=PHONE_PATTERN, maxLength=limit("phone"),
                       title="Phone (optional)"),
        "customer_ref": Param(None, type=["null", "string"], pattern=NO_CONTROL, maxLength=limit("customer_ref"),
                              title="Customer reference (optional)"),
        "social_handle": Param(None, type=["null", "string"], pattern=NO_CONTROL,
                               maxLength=limit("social_handle"), title="Social-media handle (optional)",
                               description="e.g. @zoe_m (direct messages received on social media)"),
    }


def trail_params() -> dict[str, Param]:
    """Dry run, external reference and note: the request's trail, common to every request type."""
    return {
        "dry_run": Param(False, type="boolean", title="Dry run", description="Find and count only; change nothing."),
        "request_ref": Param(None, type=["null", "string"], maxLength=100, pattern=NO_CONTROL,
                             title="External request reference"),
        "note": Param(None, type=["null", "string"], maxLength=2000, pattern=r"^[^\u0000]*$", title="Note",
                      description="Free text for the receipt trail; stored encrypted."),
    }
