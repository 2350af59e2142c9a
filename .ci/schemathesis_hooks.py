"""Schemathesis hooks for Corral's API run (.ci/schemathesis).

Clients are told to send a fresh Idempotency-Key for each new request, and Corral refuses a key
reused for a different request (422 `idempotency_key_reused`, as the IETF idempotency-key draft
says). Hypothesis draws the same short strings again and again, so generated keys would collide
across unrelated requests. Every well-formed key is therefore replaced by a fresh UUID; malformed
keys (empty, too long, spaces, non-ASCII) are kept, so the server's refusal of those is still tested.
"""

import re
import uuid

import schemathesis

WELL_FORMED_KEY = re.compile(r"[!-~]{1,255}")


@schemathesis.hook
def before_call(context, case, kwargs):
    # Runs before every request of every phase (map_headers does not reach the coverage phase).
    # Negative cases are left alone: they are refused anyway, and editing one makes
    # schemathesis re-send headers (such as Authorization) that the case means to leave out.
    meta = getattr(case, "meta", None)
    if meta is not None and meta.generation.mode.is_negative:
        return
    headers = case.headers or {}
    for name in list(headers):
        value = headers[name]
        if name.lower() == "idempotency-key" and isinstance(value, str) and WELL_FORMED_KEY.fullmatch(value):
            headers[name] = str(uuid.uuid4())
