"""schemathesis hooks for cognihook's API check (scripts/api-check).

Webhook routes authenticate the raw body: a generated signature would always be refused,
so no request would reach the payload checks. When a request carries the route's signature
header with the placeholder the schemathesis configuration puts there, this hook serialises
the body itself, sends exactly those bytes and replaces the header with their HMAC-SHA256
under the test secret. Any other request stays as schemathesis made it and must be refused
with 401: one without the header, and one whose header holds a value schemathesis made up to
check that made-up credentials are refused (its `ignored_auth` check).
"""

import hashlib
import hmac
import json
import os

import schemathesis

SECRET = os.environ["COGNIGY_WEBHOOK_SECRET"].encode()
SIGNATURE_HEADERS = ("x-cognigy-signature", "x-webhook-signature")
# What scripts/api/schemathesis*.toml set as these headers' credential.
PLACEHOLDER = "signed-by-the-hook"


def _raw_body(case, kwargs):
    """The bytes the transport would send for this case, or None when it cannot say."""
    data = case.operation.schema.transport.serialize_case(case, **kwargs)
    if "json" in data:
        # What requests does with `json=`: json.dumps, then UTF-8.
        return json.dumps(data["json"], allow_nan=False).encode()
    body = data.get("data")
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, bytes):
        return body
    return None


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers or {}
    names = [
        n for n in headers if n.lower() in SIGNATURE_HEADERS and headers[n] == PLACEHOLDER
    ]
    if not names:
        return
    try:
        raw = _raw_body(case, kwargs)
    except (TypeError, ValueError):
        raw = None
    if raw is None:
        return
    kwargs["data"] = raw
    signature = hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
    for name in names:
        headers[name] = signature
    case.headers = headers
