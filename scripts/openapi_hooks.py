"""Schemathesis hooks for scripts/openapi_check.py: bodies of the API's text media types
(a job file's TOML, SQL, JSON lines, an OTLP export's protobuf) are sent as the generated text, as clients send them."""
import schemathesis


@schemathesis.serializer("application/toml", "application/sql", "application/x-ndjson", "application/x-protobuf")
def as_text(ctx, value):
    if value is None:
        return {"data": b""}
    if isinstance(value, bytes):
        return {"data": value}
    return {"data": str(value).encode("utf-8")}
