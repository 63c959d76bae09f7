"""Schemathesis hooks for ozbus (loaded through SCHEMATHESIS_HOOKS by tests/http_schemathesis.rs).

A bulk ingest body is JSON Lines: the document describes it as an array of reports, sent one
report per line.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, list):
        return "".join(json.dumps(item) + "\n" for item in value).encode()
    return (json.dumps(value) + "\n").encode()



@schemathesis.deserializer("application/x-ndjson")
def ndjson_answer(ctx, response):
    # The answer of a bulk request, one result per line: checked as the array the document names.
    return [json.loads(line) for line in response.content.splitlines() if line.strip()]
