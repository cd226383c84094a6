"""Hypothesis strategies for malformed and hostile webhook requests.

Every request in `hostile` must be refused with a 4xx: broken or stale signatures, odd
headers, truncated and oversized bodies, JSON nested past the parser's limit, wrong types,
numbers beyond a double, invalid UTF-8, wrong methods and paths. None may reach the log.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field

import orjson
from hypothesis import strategies as st

from launcher.stripe import events as se

SECRET = "whsec_test_secret"
MAX_BODY = 64 * 1024  # the ingest under test runs with this limit


@dataclass(frozen=True)
class Hostile:
    kind: str
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    method: str = "POST"
    path: str = "/webhooks/stripe"
    expect: frozenset[int] = frozenset({400})
    chunked: bool = False  # send the body without Content-Length


def _event_body(customer: str = "cus_hostile") -> bytes:
    sub = se.subscription("sub_hostile", customer=customer, items=[("price_a", "prod_a")])
    return se.encode(se.event("customer.subscription.updated", sub))


def sign(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _signed(kind: str, body: bytes, expect: frozenset[int] = frozenset({400})) -> Hostile:
    return Hostile(kind, body, [("stripe-signature", sign(body))], expect=expect)


_header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=300,
)
_int = st.integers(-(2**63), 2**63 - 1)  # what JSON encoders write; bigger ones: choice 4
_hex = st.text(alphabet="0123456789abcdef", min_size=0, max_size=80)


@st.composite
def bad_signature(draw: st.DrawFn) -> Hostile:
    body = _event_body(draw(st.from_regex(r"cus_[A-Za-z0-9]{1,20}", fullmatch=True)))
    now = int(time.time())
    header = draw(
        st.one_of(
            st.none(),
            st.just(""),
            _header_text,
            st.builds(lambda t, h: f"t={t},v1={h}", st.integers(-(2**70), 2**70), _hex),
            # the right scheme, a wrong secret
            st.builds(lambda s: sign(body, "whsec_" + s), st.text(min_size=1, max_size=40)),
            # the right secret, too old
            st.builds(lambda age: sign(body, SECRET, now - age), st.integers(301, 10**10)),
            # the right secret over another body
            st.builds(lambda b: sign(b, SECRET), st.binary(max_size=200)),
            # only a scheme we do not accept
            st.builds(lambda: sign(body).replace("v1=", "v0=")),
            # a huge header made of many wrong signatures
            st.builds(
                lambda n: ",".join([f"t={now}"] + [f"v1={'0' * 64}"] * n), st.integers(1, 400)
            ),
        )
    )
    headers = [("content-type", "application/json")]
    if header is not None:
        headers.append(("stripe-signature", header))
    return Hostile("bad_signature", body, headers)


def _nest(depth: int, open_: str, close: str, inner: str = "1") -> str:
    return open_ * depth + inner + close * depth


@st.composite
def malformed_signed(draw: st.DrawFn) -> Hostile:
    """Signed with the right secret, but not a Stripe event."""
    valid = _event_body()
    event = orjson.loads(valid)
    choice = draw(st.integers(0, 9))
    if choice == 0:  # truncated: a prefix of an object is never a JSON object
        body = valid[: draw(st.integers(0, len(valid) - 1))]
    elif choice == 1:  # nested beyond the parser's limit (1024)
        depth = draw(st.integers(1025, 5_000))
        inner = _nest(depth, *draw(st.sampled_from([("[", "]"), ('{"a":', "}")])))
        body = b'{"id":"evt_deep","type":"x.y","data":{"object":' + inner.encode() + b"}}"
    elif choice == 2:  # wrong types for the fields every consumer relies on
        name = draw(st.sampled_from(["id", "type", "data"]))
        bad = draw(
            st.one_of(
                st.none(),
                _int,
                st.booleans(),
                st.lists(_int, max_size=3),
                st.just(""),
                st.just({}) if name != "data" else st.just("x"),
            )
        )
        event[name] = bad
        body = orjson.dumps(event)
    elif choice == 3:  # data.object not an object
        event["data"]["object"] = draw(st.one_of(st.none(), st.text(max_size=20), _int))
        body = orjson.dumps(event)
    elif choice == 4:  # numbers beyond a double
        digits = draw(st.integers(310, 5000))
        where = draw(st.sampled_from(["created", "amount", "id"]))
        number = ("9" * digits).encode() if draw(st.booleans()) else b"1e" + str(digits).encode()
        body = valid.replace(
            b'"object":{', b'"object":{"' + where.encode() + b'":' + number + b",", 1
        )
        if where == "id":
            body = body.replace(b'"id":"evt_', b'"id":' + number + b',"x":"', 1)
    elif choice == 5:  # invalid UTF-8 somewhere in an otherwise valid body
        bad = draw(
            st.sampled_from(
                [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]
            )
        )
        at = draw(st.integers(1, len(valid) - 2))
        body = valid[:at] + bad + valid[at:]
    elif choice == 6:  # not an object at the top
        body = orjson.dumps(
            draw(
                st.one_of(
                    st.none(),
                    _int,
                    st.text(max_size=50),
                    st.lists(_int, max_size=5),
                )
            )
        )
    elif choice == 7:  # not JSON at all
        body = draw(st.sampled_from([b"", b" ", b"NaN", b"{'id': 'evt'}", b'{"a":NaN}', b"\x00"]))
        body += draw(st.binary(max_size=50)).replace(b"{", b"")
        if body.startswith(b"{") or body.strip().startswith(b"{"):  # never a real object
            body = b"x" + body
    elif choice == 8:  # an event without data, or without an id
        event.pop(draw(st.sampled_from(["id", "type", "data"])))
        body = orjson.dumps(event)
    else:  # JSON with a trailing second document
        body = valid + draw(st.sampled_from([b"{}", b"x", b",", b"]"]))
    return _signed(f"malformed/{choice}", body)


@st.composite
def oversized(draw: st.DrawFn) -> Hostile:
    size = draw(st.integers(MAX_BODY + 1, 3 * MAX_BODY))
    pad = b" " * (size - 2)
    body = b"{" + pad + b"}"
    chunked = draw(st.booleans())
    return Hostile(
        "oversized",
        body,
        [("stripe-signature", sign(body))],
        expect=frozenset({413}),
        chunked=chunked,
    )


@st.composite
def odd_headers(draw: st.DrawFn) -> Hostile:
    body = _event_body()
    good = sign(body)
    choice = draw(st.integers(0, 4))
    if choice == 0:  # Content-Length that is not a number
        value = draw(st.sampled_from(["abc", "-1", "1e3", " 12", "0x10", "+5", ""]))
        return Hostile(
            "content_length", body, [("stripe-signature", good), ("content-length", value)]
        )
    if choice == 1:  # the signature header twice, the first one wrong
        return Hostile(
            "duplicate_signature",
            body,
            [("stripe-signature", "t=1,v1=00"), ("stripe-signature", "t=1,v1=00")],
        )
    if choice == 2:  # odd content types do not matter; the signature is still missing
        ctype = draw(_header_text)
        return Hostile("content_type", body, [("content-type", ctype)])
    if choice == 3:  # latin-1 and control characters in the signature
        return Hostile(
            "latin1_signature", body, [("stripe-signature", draw(_header_text) + "\xe9")]
        )
    # a valid signature made for the body before one byte changed
    at = draw(st.integers(0, len(body) - 1))
    flipped = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]
    return Hostile("tampered", flipped, [("stripe-signature", good)])


@st.composite
def wrong_route(draw: st.DrawFn) -> Hostile:
    if draw(st.booleans()):
        method = draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH"]))
        return Hostile("wrong_method", _event_body(), method=method, expect=frozenset({405}))
    path = "/" + draw(st.from_regex(r"[a-z0-9_/-]{0,40}", fullmatch=True))
    if path in ("/webhooks/stripe", "/healthz", "/readyz", "/metrics"):
        path = "/x" + path
    if path.rstrip("/") in ("/webhooks/stripe", "/healthz", "/readyz", "/metrics"):
        path = "/x" + path  # Starlette redirects a trailing slash: keep away from real routes
    body = _event_body()
    return Hostile(
        "wrong_path",
        body,
        [("stripe-signature", sign(body))],
        path=path,
        expect=frozenset({404, 405}),
    )


# Refused requests only. A body signed with the right secret is logged as received whatever
# its content (the fold parks what it cannot read), so `malformed_signed` is not in this set:
# tests/ingest/test_app_webhook.py checks those are answered 200 and logged byte for byte.
hostile = st.one_of(bad_signature(), oversized(), odd_headers(), wrong_route())
