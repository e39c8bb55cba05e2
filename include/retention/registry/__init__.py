"""The request registry: subject requests, their status per system, receipts and the suppression list.

It lives beside the ledger (its own connection). A subject's identities are stored only
encrypted (Fernet, key derived from the product's secret) plus keyed HMAC digests for
matching; nothing else in the registry names a person. Due dates follow GDPR Art. 12(3):
one month from receipt.

``Registry`` (``book``) is the request book; it holds, sharing its engine and keys, ``registry.systems``
(``system_states``: status per system), ``registry.suppression`` (``suppression_list``), ``registry.recipients``
(``recipient_book``: Art. 19) and ``registry.keys`` (``key_records``: key rotation). ``schema`` holds the tables,
``identities`` a request's identities and the registry's keys.
"""

from __future__ import annotations

from include.retention.registry.book import Registry
from include.retention.registry.identities import (
    ERASURE_MODES,
    INTAKE_VERIFIED,
    MODES,
    Identities,
    NewRequest,
    Vault,
    encryption_key,
    validate_request,
)
from include.retention.registry.key_records import KeyRecords
from include.retention.registry.recipient_book import RecipientBook
from include.retention.registry.schema import (
    DIGEST_COLUMNS,
    NAMESPACE,
    OPEN_STATUSES,
    RECIPIENT_SETTLED,
    TEXT_LIMITS,
    metadata,
    receipts,
    request_details,
    request_recipients,
    request_systems,
    requests,
    suppression,
)
from include.retention.registry.suppression_list import SuppressionList
from include.retention.registry.system_states import SystemStates

__all__ = [
    "DIGEST_COLUMNS",
    "ERASURE_MODES",
    "INTAKE_VERIFIED",
    "MODES",
    "NAMESPACE",
    "OPEN_STATUSES",
    "RECIPIENT_SETTLED",
    "TEXT_LIMITS",
    "Identities",
    "KeyRecords",
    "NewRequest",
    "RecipientBook",
    "Registry",
    "SuppressionList",
    "SystemStates",
    "Vault",
    "encryption_key",
    "metadata",
    "receipts",
    "request_details",
    "request_recipients",
    "request_systems",
    "requests",
    "suppression",
    "validate_request",
]
