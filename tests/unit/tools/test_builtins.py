"""The builtin tools: get_time, the calculator (and its safety) and
http_request (and its egress allow-list)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest

from aster.server.tools.builtins import (
    BUILTIN_IDS,
    HttpRequestTool,
    calculate,
    current_time,
    host_allowed,
    parse_allow_hosts,
)
from aster.server.tools.models import ToolError
from tests.unit.tools.conftest import SLOW_S, Endpoint


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2*(3+4)", 14),
        ("1 + 2 * 3 - 4 / 8", 6.5),
        ("7 // 2 + 7 % 2", 4),
        ("2 ** 10", 1024),
        ("-3 ** 2", -9),
        ("sqrt(16) + abs(-2)", 6.0),
        ("round(pi, 2)", 3.14),
        ("max(1, 5, 3) - min(4, 2)", 3),
        ("log(e) + log10(1000) + log2(8)", 7.0),
        ("floor(2.7) + ceil(2.1)", 5),
        ("1e3 + 0.5", 1000.5),
        ("2 ** -1", 0.5),
        ("2 ** 60", float(2**60)),  # beyond 2**53: a double, as on the wire
    ],
)
def test_calculator_computes(expression: str, value: float) -> None:
    result = calculate(expression)
    assert result == pytest.approx(value)
    assert type(result) is type(value)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('true')", "not an available function"),
        ("__import__", "unknown name"),
        ("(1).real", "Attribute"),
        ("(2).__class__", "Attribute"),
        ("open('/etc/passwd')", "not an available function"),
        ("sqrt.__globals__", "Attribute"),
        ("x + 1", "unknown name 'x'"),
        ("'a' * 3", "only numbers"),
        ("[1, 2][0]", "Subscript"),
        ("True + 1", "only numbers"),
        ("1 < 2", "Compare"),
        ("1 if 1 else 0", "IfExp"),
        ("lambda: 1", "Lambda"),
        ("max(1, 2, key=abs)", "keyword"),
        ("f'{1}'", "JoinedStr"),
        ("1; 2", "not an arithmetic expression"),
        ("a = 1", "not an arithmetic expression"),
        ("9**9**9", "too large"),
        ("10 ** 5000", "too large"),
        ("2 ** 4000 * 2 ** 4000", "exceeds"),
        ("1e308 * 10", "not a finite number"),
        ("exp(1000)", "range"),
        ("(-8) ** (1/3)", "not a real number"),
        ("1 / 0", "division by zero"),
        ("sqrt(-1)", "domain"),
        ("", "empty"),
        ("1 + " * 200 + "1", "longer than 500"),
    ],
)
def test_calculator_refuses(expression: str, reason: str) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError) as caught:
        calculate(expression)
    assert reason in str(caught.value)
    assert time.monotonic() - started < 1


def test_get_time() -> None:
    utc = datetime.fromisoformat(current_time())
    assert utc.utcoffset() == timedelta(0)
    paris = datetime.fromisoformat(current_time("Europe/Paris"))
    assert paris.utcoffset() in {timedelta(hours=1), timedelta(hours=2)}
    assert abs(paris - utc) < timedelta(seconds=5)
    for bad in ["Mars/Olympus", "../../etc/passwd", "/etc/localtime", "x" * 100]:
        with pytest.raises(ToolError):
            current_time(bad)


def test_allow_list_matching() -> None:
    hosts = parse_allow_hosts(" API.example.com, *.internal.test ,127.0.0.1:8080,")
    assert hosts == ("api.example.com", "*.internal.test", "127.0.0.1:8080")
    assert host_allowed("https://api.example.com/x", hosts)
    assert host_allowed("http://API.EXAMPLE.COM:81/x", hosts)
    assert not host_allowed("https://evil.example.com/", hosts)
    assert not host_allowed("https://api.example.com.evil.test/", hosts)
    assert host_allowed("https://a.b.internal.test/", hosts)
    assert not host_allowed("https://internal.test/", hosts)
    assert host_allowed("http://127.0.0.1:8080/", hosts)
    assert not host_allowed("http://127.0.0.1:8081/", hosts)
    assert not host_allowed("https://user@/x", hosts)
    assert {"get_time", "calculator", "http_request"} == BUILTIN_IDS


async def test_http_request_is_off_without_an_allow_list(endpoint: Endpoint) -> None:
    tool = HttpRequestTool(())
    with pytest.raises(ToolError) as caught:
        await tool({"url": endpoint.url("/echo")}, "")
    assert "disabled" in str(caught.value)
    assert endpoint.received == []


async def test_http_request_refuses_hosts_off_the_list(endpoint: Endpoint) -> None:
    tool = HttpRequestTool(("example.com",))
    with pytest.raises(ToolError) as caught:
        await tool({"url": endpoint.url("/echo")}, "")
    assert "'127.0.0.1' is not on this server's egress allow-list" in str(caught.value)
    assert endpoint.received == []


async def test_http_request_calls_allowed_hosts(endpoint: Endpoint) -> None:
    tool = HttpRequestTool(("127.0.0.1",))
    result = await tool(
        {
            "url": endpoint.url("/echo?q=1"),
            "method": "post",
            "body": {"a": [1, 2]},
            "headers": {"X-Test": "yes", "Host": "ignored.example"},
        },
        "key-1",
    )
    assert result["status"] == 200
    assert result["body"] == {"method": "POST", "query": {"q": "1"}, "json": {"a": [1, 2]}}
    received = endpoint.last()
    assert received.headers["x-test"] == "yes"
    assert received.headers["idempotency-key"] == "key-1"
    assert received.headers["host"].startswith("127.0.0.1")
    # a non-2xx status is the tool's output, not an error
    failed = await tool({"url": endpoint.url("/status/503")}, "")
    assert failed["status"] == 503
    assert failed["body"] == {"problem": "bad things"}
    # redirects are not followed (they could leave the allow-list)
    redirected = await tool({"url": endpoint.url("/redirect")}, "")
    assert redirected["status"] == 302


async def test_http_request_timeout_and_size_cap(endpoint: Endpoint) -> None:
    tool = HttpRequestTool(("127.0.0.1",), timeout_s=0.3, max_response_bytes=1000)
    started = time.monotonic()
    with pytest.raises(ToolError) as caught:
        await tool({"url": endpoint.url("/slow")}, "")
    assert "timed out after 0.3s" in str(caught.value)
    assert time.monotonic() - started < SLOW_S - 1
    assert (await tool({"url": endpoint.url("/big?bytes=1000")}, ""))["body"] == "x" * 1000
    for query in ["bytes=1001", "bytes=100000&chunked=1"]:
        with pytest.raises(ToolError) as caught:
            await tool({"url": endpoint.url(f"/big?{query}")}, "")
        assert "larger than the limit of 1000 bytes" in str(caught.value)
