#!/usr/bin/env python3
"""Writes a wrk Lua script that POSTs signed Cognigy payloads.

usage: gen_requests.py KIND PATH SECRET COUNT OUT.lua
KIND is flow-event or nlu. COUNT distinct bodies (one session each) are precomputed with their
HMAC-SHA256 signatures; every request also carries a unique Idempotency-Key, so each one is a
new event rather than a duplicate.

env KEYS: random (default) or ordered. A Cognigy HTTP Request node sends no Idempotency-Key,
so the gateway keys an event by the SHA-256 of route and body: keys arrive in random order.
`random` puts a random prefix before the unique part to match; `ordered` sends
run-thread-counter keys, which sort almost in insertion order and make the store's key index
far cheaper than in production (the runs before 2026-12-01's tenth session used them).

env CORRELATION: body (default: each body names one of COUNT correlation ids, so the store's
correlation index stays small) or unique (no id in the body; each request sends its
Idempotency-Key as X-Correlation-Id, so every event adds an entry to the index).
"""
import hashlib
import hmac
import json
import os
import sys
import uuid

kind, path, secret, count, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
keys = os.environ.get("KEYS", "random")
if keys not in ("random", "ordered"):
    sys.exit(f"KEYS must be random or ordered, not {keys!r}")
correlation = os.environ.get("CORRELATION", "body")
if correlation not in ("body", "unique"):
    sys.exit(f"CORRELATION must be body or unique, not {correlation!r}")


def body(i):
    if kind == "nlu":
        return {
            "sessionId": str(uuid.UUID(int=i + 1)),
            "userId": f"user-{i}",
            "input": f"Where is my order A-{i}?",
            "context": {"locale": "en-US", "channel": "webchat", "correlationId": f"bench-{i}"},
            "intent": {"name": "order_status", "confidence": 0.94},
            "entities": [{"name": "orderId", "value": f"A-{i}"}],
        }
    return {
        "sessionId": f"sess-{i:08d}",
        "userId": f"usr-{i}",
        "message": "Check order status",
        "eventType": "flow.execution",
        "context": {"intent": "order_tracking", "confidence": 0.94},
        "timestamp": "2024-01-15T14:32:10Z",
        "flowName": "OrderSupportFlow",
        "correlationId": f"bench-{i}",
    }


def without_correlation(b):
    b.pop("correlationId", None)
    b.get("context", {}).pop("correlationId", None)
    return b


shape = body if correlation == "body" else (lambda i: without_correlation(body(i)))
bodies = [json.dumps(shape(i), separators=(",", ":")) for i in range(count)]
sigs = [hmac.new(secret.encode(), b.encode(), hashlib.sha256).hexdigest() for b in bodies]

with open(out, "w") as f:
    f.write("local bodies = {\n")
    for b in bodies:
        f.write(f"[==[{b}]==],\n")
    f.write("}\nlocal sigs = {\n")
    for s in sigs:
        f.write(f'"{s}",\n')
    f.write("}\n")
    f.write(f'local path = "{path}"\n')
    f.write(f'local random_keys = {"true" if keys == "random" else "false"}\n')
    f.write(f'local unique_correlation = {"true" if correlation == "unique" else "false"}\n')
    f.write(
        """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local counter = 0
local run = "r"
function init(args)
  run = args[1] or "r"
end
function request()
  counter = counter + 1
  local i = (counter % #bodies) + 1
  local key = run .. "-" .. tid .. "-" .. counter
  if random_keys then
    key = string.format("%08x", math.random(0, 2147483646)) .. "-" .. key
  end
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Cognigy-Signature"] = sigs[i],
    ["Idempotency-Key"] = key,
  }
  if unique_correlation then
    headers["X-Correlation-Id"] = key
  end
  return wrk.format("POST", path, headers, bodies[i])
end
"""
    )
