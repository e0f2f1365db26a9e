"""schemathesis hooks for cognihook's API check (scripts/api-check).

Webhook routes authenticate the raw body: a generated signature would always be refused,
so no request would reach the payload checks. When a request carries the route's signature
header (schemathesis fills security parameters), this hook serialises the body itself,
sends exactly those bytes and replaces the header with their HMAC-SHA256 under the test
secret. A request without the header (schemathesis's own "no auth" cases) stays unsigned
and must be refused with 401.
"""

import hashlib
import hmac
import json
import os

import schemathesis

SECRET = os.environ["COGNIGY_WEBHOOK_SECRET"].encode()
SIGNATURE_HEADERS = ("x-cognigy-signature", "x-webhook-signature")


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
    names = [n for n in headers if n.lower() in SIGNATURE_HEADERS]
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
