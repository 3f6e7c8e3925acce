"""Schemathesis hooks for tests/test_serve_hostile.py: every error answer of edgekit serve has the
``{"error": ...}`` shape (SCHEMATHESIS_HOOKS=serve_fuzz_hooks)."""

import schemathesis


@schemathesis.check
def error_has_error_key(ctx, response, case):
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return None
    body = response.json()
    if not isinstance(body, dict) or "error" not in body:
        raise AssertionError(f"{response.status_code} without an error key: {response.text[:200]}")
    return None
