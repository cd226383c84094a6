"""Free text from users never causes a server error: hypothesis drives `q`, and the change
feed's parameters (cursor, limit, wait, customer, Last-Event-ID), over real HTTP."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entitled.settings import Settings
from tests.api.api_support import entitle, load_catalog, running_api
from tests.support.examples import examples, pool_jitter_is_not_the_strategy

TSQUERY_BITS = [
    "&",
    "|",
    "!",
    "<->",
    "<1>",
    "(",
    ")",
    ":",
    "*",
    "'",
    '"',
    "-",
    "or",
    "OR",
    "\\",
    "\x00",
    ":*",
    "!!",
    "''",
    "harrison",
    "ford",
    " ",
    "\u200b",
    "\ud7ff",
]

queries = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(TSQUERY_BITS), max_size=60).map("".join).map(lambda s: s[:200]),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=150, max_size=200),
    st.text(min_size=201, max_size=400),  # too long: 400, still never 5xx
)


# psycopg_pool's jitter in the in-process API (see tests.support.examples); what the pool
# does is checked below: a client hanging up costs the pool no connection.
pytestmark = pool_jitter_is_not_the_strategy


@pytest.fixture
def database_url(migrated_url: str) -> str:
    """Every test here reads a migrated database: a copy of the session's template."""
    return migrated_url


@pytest.fixture
def client(database_url: str) -> Iterator[httpx.Client]:
    load_catalog(database_url)
    entitle(database_url, "cus_f", groups=["action"], movie_ids=["40"])
    app_settings = Settings(database_url=database_url, kafka_bootstrap_servers="unused:0")
    with running_api(app_settings) as url, httpx.Client(base_url=url, timeout=10) as c:
        yield c


@settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(q=queries, customer=st.one_of(st.just("cus_f"), st.text(min_size=1, max_size=300)))
def test_any_query_never_5xx(client: httpx.Client, q: str, customer: str) -> None:
    response = client.get("/v1/search", params={"customer": customer, "q": q})
    assert response.status_code in (200, 400), (q, response.text)
    body = response.json()
    if response.status_code == 200:
        assert isinstance(body["results"], list)
        assert all(set(hit) >= {"movie_id", "available", "reason"} for hit in body["results"])
    else:
        assert body["error"]


cursor_texts = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.text(max_size=30),
    st.sampled_from(["", " ", "0", "1e3", "0x10", "١٢", "+5", "5 ", "nan", "-0", "9" * 30]),
)
ascii_header = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    after=st.one_of(st.none(), cursor_texts),
    limit=st.one_of(st.none(), cursor_texts),
    # A valid wait would make each case wait: only 0 or a refused one.
    wait=st.one_of(st.none(), st.just("0"), st.sampled_from(["-1", "61", "nan", "inf", "x"])),
    customer=st.one_of(st.none(), st.text(max_size=300)),
)
def test_any_change_feed_params_never_5xx(
    client: httpx.Client, after: str | None, limit: str | None, wait: str | None,
    customer: str | None,
) -> None:  # fmt: skip
    given_params = {"after": after, "limit": limit, "customer": customer}
    params = {k: v for k, v in given_params.items() if v is not None}
    params["wait"] = wait if wait is not None else "0"
    response = client.get("/v1/changes", params=params)
    assert response.status_code in (200, 400), (params, response.text)
    body = response.json()
    if response.status_code == 200:
        assert body["changes"] == [] and isinstance(body["next"], int)
    else:
        assert body["error"]


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    # only what HTTP allows in a header value: a control character is refused by uvicorn's
    # parser (400 without a body) before the app sees the request
    last_event_id=st.one_of(
        st.none(), ascii_header, cursor_texts.filter(lambda t: t.isascii() and t.isprintable())
    ),
    after=st.one_of(st.none(), cursor_texts),
    customer=st.one_of(st.none(), st.text(max_size=300)),
)
def test_any_stream_params_never_5xx(
    client: httpx.Client, last_event_id: str | None, after: str | None, customer: str | None
) -> None:
    params = {k: v for k, v in {"after": after, "customer": customer}.items() if v is not None}
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id.strip()}
    with client.stream("GET", "/v1/changes/stream", params=params, headers=headers) as response:
        assert response.status_code in (200, 400), (params, headers)
        if response.status_code == 200:  # the ready event, then hang up
            lines = response.iter_lines()
            assert next(lines) == "retry: 2000" and next(lines).startswith("id: ")
        else:
            response.read()
            assert response.json()["error"]
    # The client hung up after the ready event, maybe while its stream read the database:
    # the read ends and its connection goes back to the pool, never closed as broken.
    assert _pool_stat(client, "returns_bad") == 0


def _pool_stat(client: httpx.Client, stat: str) -> float:
    found = re.search(
        rf'^entitled_api_pool{{stat="{stat}"}} (\S+)$', client.get("/metrics").text, re.M
    )
    return float(found.group(1)) if found else 0.0
