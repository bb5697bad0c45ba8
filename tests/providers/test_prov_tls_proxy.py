"""TLS to upstreams and HTTP proxies, for real on loopback.

A throwaway CA and server certificates are made per run with the ``openssl`` CLI; the fake
upstream serves HTTPS with them; a small CONNECT proxy (asyncio, in a thread) counts tunnels and
can refuse. Requests go through the whole gateway (spend control on SQLite), and each one is
checked against the ledger: served or failed, nothing is lost.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from thrifty.config import build_config, load_config
from thrifty.errors import UsageError
from thrifty.providers.http import (
    HTTPError,
    HTTPPool,
    HTTPTimeout,
    bypass_proxy,
    line_batches,
    parse_proxy,
    proxy_from_env,
)
from thrifty.testing.fake_upstream import REPLY, FakeUpstream
from thrifty.testing.server import running, served_app

ADMIN = "sk-thr-admin-tls"
BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
MSG = [{"role": "user", "content": "Say hello."}]
PRICE = {
    "input_cost_per_token": 1e-6,
    "output_cost_per_token": 2e-6,
    "context_window": 2000,
    "max_output_tokens": 1000,
    "route": False,
}
PROXY_AUTH = ("proxy user", "p@ss:word")  # percent-encoded in the URL
PROXY_AUTH_HEADER = "Basic " + base64.b64encode(":".join(PROXY_AUTH).encode()).decode()
PROXY_USERINFO = "proxy%20user:p%40ss%3Aword"
LEDGER_COLUMNS = (
    "status", "served_model", "requested_model", "stream", "prompt_tokens",
    "completion_tokens", "cost_nanos", "error_type",
)  # fmt: skip


# -- certificates ------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=thrifty test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def _make_leaf(d: Path, name: str, ca: str, san: str) -> None:
    (d / f"{name}.ext").write_text(
        f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
        "-extfile", f"{name}.ext", "-out", f"{name}.pem",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca (trusted in the tests), other-ca (never trusted), server (localhost + 127.0.0.1, by
    ca), wronghost (only wrong.example, by ca); private keys live only in this run's tmp dir."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make test certificates")
    d = tmp_path_factory.mktemp("certs")
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    _make_leaf(d, "server", "ca", "DNS:localhost,IP:127.0.0.1")
    _make_leaf(d, "wronghost", "ca", "DNS:wrong.example")
    return d


def server_ctx(certs: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs / f"{name}.pem", certs / f"{name}.key")
    return ctx


# -- a CONNECT proxy ---------------------------------------------------------------------------


class ConnectProxy:
    """An HTTP proxy on loopback: CONNECT tunnels and absolute-form requests, piped as is.
    ``mode``: ok | 407 | 403 | hang (never answers) | close (hangs up without answering).
    ``auth``: the Proxy-Authorization it requires (407 otherwise)."""

    def __init__(self, mode: str = "ok", auth: str | None = None) -> None:
        self.mode, self.auth = mode, auth
        self.heads: list[bytes] = []  # the first request head of each client connection
        self.tunnels = 0  # CONNECTs answered 200
        self.forwarded = 0  # connections carrying absolute-form requests
        self.plain = bytearray()  # every byte of those
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: set[asyncio.Task] = set()

    def url(self, userinfo: str | None = None) -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"

    def start(self) -> ConnectProxy:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True, name="test-proxy")
        self.thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            for t in list(self.tasks):
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @staticmethod
    async def _pipe(
        r: asyncio.StreamReader, w: asyncio.StreamWriter, tee: bytearray | None
    ) -> None:
        try:
            while data := await r.read(65536):
                if tee is not None:
                    tee.extend(data)
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        up_w = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            if self.mode == "hang":
                await asyncio.sleep(3600)
            if self.mode == "close":
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            fields = {
                k.strip().lower(): v.strip()
                for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
            }
            if self.mode == "407" or (self.auth and fields.get("proxy-authorization") != self.auth):
                writer.write(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 5\r\n\r\ndenied'
                )
                return
            if self.mode == "403":
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_r, up_w = await asyncio.open_connection(host.strip("[]"), int(port))
                self.tunnels += 1
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                tee = None
            else:  # absolute-form: the fake upstream's parser takes it as is
                u = urlsplit(target)
                up_r, up_w = await asyncio.open_connection(u.hostname, u.port or 80)
                self.forwarded += 1
                self.plain.extend(head)
                up_w.write(head)
                tee = self.plain
            await asyncio.gather(self._pipe(reader, up_w, tee), self._pipe(up_r, writer, None))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            if up_w is not None:
                up_w.close()
            self.tasks.discard(task)


@contextlib.contextmanager
def proxy(mode: str = "ok", auth: str | None = None) -> Iterator[ConnectProxy]:
    p = ConnectProxy(mode, auth).start()
    try:
        yield p
    finally:
        p.stop()


# -- the gateway over all of it ----------------------------------------------------------------


class Gateway:
    def __init__(self, url: str, spend: Any, key: str) -> None:
        self.url, self.spend, self.key = url, spend, key
        self.http = httpx.Client(
            base_url=url,
            headers={"authorization": f"Bearer {key}"},
            timeout=20,
            trust_env=False,  # the tests set HTTP(S)_PROXY for the gateway, not for themselves
        )

    def chat(self, model: str, *, stream: bool = False) -> httpx.Response:
        body = {"model": model, "messages": MSG, "max_tokens": 50, "stream": stream}
        return self.http.post("/v1/chat/completions", json=body)

    def ledger(self, request_id: str) -> dict[str, Any]:
        self.spend.flush()
        row = self.spend.db.one(
            f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger WHERE request_id = ?",
            (request_id,),
        )
        assert row is not None, f"request {request_id} is not in the ledger"
        return dict(zip(LEDGER_COLUMNS, row))


@contextlib.contextmanager
def serve(doc: dict[str, Any], tmp: Path) -> Iterator[Gateway]:
    """``doc``'s providers and models behind the gateway as ``thrifty serve`` builds it."""
    doc = {
        "data_dir": str(tmp),
        "retry": {"attempts": 2, "backoff_base": 0.01, "backoff_max": 0.02},
        "timeouts": {"connect": 2, "first_token": 5, "total": 10},
        "circuit_breaker": {"failures": 1000, "cooldown": 30},
        "spend": {"admin_key": ADMIN},
        **doc,
    }
    app, spend, key = served_app(build_config(doc, env={}), "tls")
    with running(app) as url:
        gw = Gateway(url, spend, key)
        try:
            yield gw
        finally:
            gw.http.close()


def _sse(r: httpx.Response) -> tuple[str, list[str]]:
    """(the streamed text, the data lines)"""
    data = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
    text = ""
    for d in data:
        if d != "[DONE]":
            for c in orjson.loads(d).get("choices") or []:
                text += c["delta"].get("content") or ""
    return text, data


def _served(gw: Gateway, r: httpx.Response, model: str, *, stream: bool) -> None:
    """A 200 with the fake's answer, and its ledger record says the same."""
    assert r.status_code == 200, r.text
    if stream:
        text, data = _sse(r)
        assert data[-1] == "[DONE]" and text.strip() == REPLY
    else:
        assert r.json()["choices"][0]["message"]["content"] == REPLY
    rec = gw.ledger(r.headers["x-request-id"])
    assert (rec["status"], rec["served_model"], bool(rec["stream"])) == (200, model, stream)
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (12, 9)
    assert rec["cost_nanos"] == round((12 * 1e-6 + 9 * 2e-6) * 1e9)


def _failed(gw: Gateway, r: httpx.Response, model: str, *needles: str) -> str:
    """A clear OpenAI-format 502 naming the cause, and a ledger record of the failure."""
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["type"] == "api_error" and err["code"] == "connection_error"
    assert "Upstream failed after retries and fallbacks" in err["message"]
    for n in needles:
        assert n in err["message"], err["message"]
    # (error responses carry x-request-id twice, a gateway quirk: the first is the id)
    rec = gw.ledger(r.headers.get_list("x-request-id")[0])
    assert rec["status"] == 502 and rec["requested_model"] == model and rec["cost_nanos"] == 0
    return err["message"]


@pytest.fixture(scope="module")
def upstreams(certs: Path) -> Iterator[dict[str, Any]]:
    fakes = {
        "tls": FakeUpstream(ssl=server_ctx(certs, "server")),
        "wronghost": FakeUpstream(ssl=server_ctx(certs, "wronghost")),
        "plain": FakeUpstream(),
    }
    proxies = {
        "ok": ConnectProxy(auth=PROXY_AUTH_HEADER),
        "407": ConnectProxy("407"),
        "403": ConnectProxy("403"),
    }
    for f in fakes.values():
        f.start()
    for p in proxies.values():
        p.start()
    yield {**fakes, "proxy": proxies}
    for f in fakes.values():
        f.stop()
    for p in proxies.values():
        p.stop()


@pytest.fixture(scope="module")
def gw(certs: Path, upstreams: dict[str, Any], tmp_path_factory: pytest.TempPathFactory):
    ca, other = str(certs / "ca.pem"), str(certs / "other-ca.pem")
    tls, px = upstreams["tls"], upstreams["proxy"]
    authed = px["ok"].url(PROXY_USERINFO)
    providers = {
        "tls": {"base_url": tls.base_url, "ca_file": ca},
        "tls_name": {"base_url": f"https://localhost:{tls.port}/v1", "ca_file": ca},
        "tls_anth": {"type": "anthropic", "base_url": tls.origin, "ca_file": ca, "api_key": "k"},
        "bad_ca": {"base_url": tls.base_url, "ca_file": other},
        "bad_host": {"base_url": upstreams["wronghost"].base_url, "ca_file": ca},
        "proxied": {"base_url": tls.base_url, "ca_file": ca, "proxy": authed},
        "proxied_anth": {
            "type": "anthropic", "base_url": tls.origin, "ca_file": ca, "proxy": authed,
            "api_key": "k",
        },
        "proxy_noauth": {"base_url": tls.base_url, "ca_file": ca, "proxy": px["ok"].url()},
        "proxy_407": {"base_url": tls.base_url, "ca_file": ca, "proxy": px["407"].url()},
        "proxy_403": {"base_url": tls.base_url, "ca_file": ca, "proxy": px["403"].url()},
        "plain_proxied": {"base_url": upstreams["plain"].base_url, "proxy": authed},
    }  # fmt: skip
    models = {
        "m-tls": {"provider": "tls"},
        "m-tls-name": {"provider": "tls_name"},
        "m-tls-anth": {"provider": "tls_anth"},
        "m-bad-ca": {"provider": "bad_ca", "fallbacks": ["m-tls"]},
        "m-bad-ca-alone": {"provider": "bad_ca"},
        "m-bad-host-alone": {"provider": "bad_host"},
        "m-proxied": {"provider": "proxied"},
        "m-proxied-anth": {"provider": "proxied_anth"},
        "m-proxy-noauth-alone": {"provider": "proxy_noauth"},
        "m-proxy-407": {"provider": "proxy_407", "fallbacks": ["m-tls"]},
        "m-proxy-403-alone": {"provider": "proxy_403"},
        "m-plain-proxied": {"provider": "plain_proxied"},
    }
    doc = {
        "providers": {n: {"type": "openai", **p} for n, p in providers.items()},
        "models": {n: {**m, **PRICE} for n, m in models.items()},
    }
    with serve(doc, tmp_path_factory.mktemp("gw-tls")) as g:
        yield g


# -- TLS through the gateway -------------------------------------------------------------------


@pytest.mark.parametrize("model", ["m-tls", "m-tls-name", "m-tls-anth"])
@pytest.mark.parametrize("stream", [False, True], ids=["full", "stream"])
def test_tls_upstream_serves_and_ledgers(gw, model, stream):
    """OpenAI and Anthropic protocol upstreams over HTTPS, verified against the configured CA,
    by IP (SAN IP:127.0.0.1) and by name (SAN DNS:localhost)."""
    r = gw.chat(model, stream=stream)
    _served(gw, r, model, stream=stream)
    assert r.headers["x-thrifty-fallbacks"] == "0" and r.headers["x-thrifty-retries"] == "0"


def test_tls_connections_are_kept_alive(gw, upstreams):
    tls = upstreams["tls"]
    gw.chat("m-tls")  # warm: the pool holds one connection now
    before = tls.connections
    for i in range(6):
        _served(gw, gw.chat("m-tls", stream=bool(i % 2)), "m-tls", stream=bool(i % 2))
    assert tls.connections == before, "a sequential request opened a new TLS connection"


def test_wrong_ca_falls_back_to_the_next_model(gw):
    r = gw.chat("m-bad-ca")
    _served(gw, r, "m-tls", stream=False)
    assert r.headers["x-thrifty-fallbacks"] == "1"
    assert "bad_ca/m-bad-ca: 502" in r.headers["x-thrifty-attempt-errors"]


@pytest.mark.parametrize("stream", [False, True], ids=["full", "stream"])
def test_wrong_ca_without_fallback_is_a_clear_502(gw, upstreams, stream):
    hits = upstreams["tls"].hits
    r = gw.chat("m-bad-ca-alone", stream=stream)
    _failed(gw, r, "m-bad-ca-alone", "TLS certificate of 127.0.0.1:", "rejected", "certificate")
    assert upstreams["tls"].hits == hits, "a request went to an unverified upstream"


def test_wrong_hostname_is_a_clear_502(gw, upstreams):
    hits = upstreams["wronghost"].hits
    msg = _failed(gw, gw.chat("m-bad-host-alone"), "m-bad-host-alone", "rejected")
    assert "mismatch" in msg and "127.0.0.1" in msg
    assert upstreams["wronghost"].hits == hits


# -- proxies through the gateway ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["m-proxied", "m-proxied-anth"])
def test_connect_tunnel_with_credentials_and_reuse(gw, upstreams, model):
    """TLS to the upstream inside a CONNECT tunnel; the tunnel is pooled like a connection."""
    px = upstreams["proxy"]["ok"]
    tunnels, heads = px.tunnels, len(px.heads)
    for i in range(4):
        stream = bool(i % 2)
        _served(gw, gw.chat(model, stream=stream), model, stream=stream)
    assert px.tunnels - tunnels == 1, "each connection is one tunnel, kept alive"
    head = px.heads[heads].decode("latin-1")
    port = upstreams["tls"].port
    assert head.startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n" in head
    assert f"Proxy-Authorization: {PROXY_AUTH_HEADER}\r\n" in head


def test_plain_http_through_the_proxy_is_absolute_form(gw, upstreams):
    px, plain = upstreams["proxy"]["ok"], upstreams["plain"]
    forwarded, start, hits = px.forwarded, len(px.plain), plain.hits
    for i in range(3):
        _served(
            gw,
            gw.chat("m-plain-proxied", stream=bool(i % 2)),
            "m-plain-proxied",
            stream=bool(i % 2),
        )
    assert px.forwarded - forwarded == 1 and plain.hits - hits == 3
    sent = bytes(px.plain[start:])
    url = f"POST http://127.0.0.1:{plain.port}/v1/chat/completions HTTP/1.1\r\n".encode()
    assert sent.count(url) == 3
    assert sent.count(f"Proxy-Authorization: {PROXY_AUTH_HEADER}\r\n".encode()) == 3


def test_proxy_that_wants_credentials_is_a_clear_502(gw):
    _failed(
        gw, gw.chat("m-proxy-noauth-alone"), "m-proxy-noauth-alone",
        "refused CONNECT", "407 Proxy Authentication Required", "no credentials in the proxy URL",
    )  # fmt: skip


def test_proxy_refusal_falls_back(gw, upstreams):
    r = gw.chat("m-proxy-407", stream=True)
    _served(gw, r, "m-tls", stream=True)
    assert "proxy_407/m-proxy-407: 502" in r.headers["x-thrifty-attempt-errors"]


@pytest.mark.parametrize("stream", [False, True], ids=["full", "stream"])
def test_proxy_403_is_a_clear_502(gw, upstreams, stream):
    port = upstreams["proxy"]["403"].port
    msg = _failed(
        gw, gw.chat("m-proxy-403-alone", stream=stream), "m-proxy-403-alone", "403 Forbidden"
    )
    assert f"proxy 127.0.0.1:{port} refused CONNECT to 127.0.0.1:" in msg


def test_environment_proxy_and_no_proxy(certs, upstreams, monkeypatch, tmp_path):
    """HTTPS_PROXY for https upstreams, HTTP_PROXY for http ones, NO_PROXY (host:port here)
    exempting one, and ``proxy = false`` ignoring the environment."""
    tls, plain, wrong = upstreams["tls"], upstreams["plain"], upstreams["wronghost"]
    ca = str(certs / "ca.pem")
    with proxy(auth=PROXY_AUTH_HEADER) as px:
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("https_proxy", px.url(PROXY_USERINFO))
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # lowercase wins
        monkeypatch.setenv("HTTP_PROXY", px.url(PROXY_USERINFO))
        monkeypatch.setenv("no_proxy", f"example.com, 127.0.0.1:{wrong.port}")
        doc = {
            "providers": {
                "env": {"base_url": tls.base_url, "ca_file": ca},
                "env_plain": {"base_url": plain.base_url},
                "direct": {"base_url": tls.base_url, "ca_file": ca, "proxy": False},
                "exempt": {"base_url": f"https://127.0.0.1:{wrong.port}/v1", "ca_file": ca},
            },
            "models": {
                "m-env": {"provider": "env", **PRICE},
                "m-env-plain": {"provider": "env_plain", **PRICE},
                "m-direct": {"provider": "direct", **PRICE},
                "m-exempt": {"provider": "exempt", **PRICE},
            },
        }
        with serve(doc, tmp_path) as g:
            _served(g, g.chat("m-env", stream=True), "m-env", stream=True)
            assert px.tunnels == 1 and px.heads[0].startswith(b"CONNECT 127.0.0.1:")
            _served(g, g.chat("m-env-plain"), "m-env-plain", stream=False)
            assert px.forwarded == 1
            _served(g, g.chat("m-direct"), "m-direct", stream=False)
            # NO_PROXY names 127.0.0.1 with wronghost's port: straight there (and its certificate
            # is for another name: a clear error), not through the proxy
            _failed(g, g.chat("m-exempt"), "m-exempt", "mismatch")
            assert len(px.heads) == 2  # the CONNECT and the plain request, nothing else


def test_provider_batch_api_calls_use_the_providers_ca_file_and_proxy(certs, tmp_path):
    """Lines sent to a provider's batch API (upload, create, poll, results) go through the same
    transport as its live calls: its ca_file is trusted (the fake's CA is in no system store)
    and its proxy carries them (CONNECT tunnels to the upstream), credentials and all."""
    import time

    with (
        FakeUpstream(ssl=server_ctx(certs, "server")) as fake,
        proxy(auth=PROXY_AUTH_HEADER) as px,
    ):
        doc = {
            "providers": {
                "bp": {
                    "base_url": fake.base_url,
                    "ca_file": str(certs / "ca.pem"),
                    "proxy": px.url(PROXY_USERINFO),
                    "batch_api": True,
                }
            },
            "models": {
                "m-batch": {
                    "provider": "bp", **PRICE,
                    "input_cost_per_token_batches": 0.5e-6, "output_cost_per_token_batches": 1e-6,
                }
            },
            "batches": {"poll": 0.05},
        }  # fmt: skip
        with serve(doc, tmp_path) as g:
            lines = b"".join(
                orjson.dumps(
                    {
                        "custom_id": f"req-{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {"model": "m-batch", "messages": MSG, "max_tokens": 5},
                    }
                )
                + b"\n"
                for i in range(2)
            )
            up = g.http.post(
                "/v1/files", files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"}
            )
            assert up.status_code == 200, up.text
            batch = g.http.post(
                "/v1/batches",
                json={
                    "input_file_id": up.json()["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                },
            ).json()
            deadline = time.monotonic() + 20
            while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                assert time.monotonic() < deadline, f"batch still {batch['status']}"
                time.sleep(0.05)
                batch = g.http.get(f"/v1/batches/{batch['id']}").json()
            assert batch["status"] == "completed", batch
            out = g.http.get(f"/v1/files/{batch['output_file_id']}/content").text
            results = [orjson.loads(x) for x in out.splitlines() if x.strip()]
            assert sorted(r["custom_id"] for r in results) == ["req-0", "req-1"]
            assert all(r["response"]["status_code"] == 200 for r in results)
        # the provider ran them in its batch, reached over TLS through the proxy only
        assert len(fake.state.batch_runs) == 2 and fake.state.batches
        assert px.tunnels >= 1
        assert all(h.startswith(f"CONNECT 127.0.0.1:{fake.port} ".encode()) for h in px.heads)
        assert fake.connections == px.tunnels  # every connection the fake saw came through it


# -- the client alone --------------------------------------------------------------------------


def _pool_roundtrip(pool: HTTPPool, n: int = 3) -> list[int]:
    async def run() -> list[int]:
        out = []
        try:
            for _ in range(n):
                r = await pool.request("POST", "/chat/completions", BODY, connect=2, timeout=5)
                out.append(r.status)
            s = await pool.stream(
                "POST",
                "/chat/completions",
                b'{"model":"m","stream":true}',
                connect=2,
                idle=5,
                total=5,
            )
            lines = [ln async for batch in line_batches(s.chunks) for ln in batch if ln]
            assert lines[-1] == b"data: [DONE]"
            out.append(s.status)
        finally:
            pool.close()
        return out

    return asyncio.run(run())


def test_tls_pool_reuses_and_recovers_from_a_restart(certs, monkeypatch):
    monkeypatch.setattr("thrifty.providers.http.STALE_AFTER", 0.0)  # check idle connections
    first = FakeUpstream(ssl=server_ctx(certs, "server")).start()
    port = first.port

    async def run() -> None:
        pool = HTTPPool(first.base_url, {}, ca_file=str(certs / "ca.pem"))
        try:
            for _ in range(3):
                r = await pool.request("POST", "/chat/completions", BODY, connect=2, timeout=5)
                assert r.status == 200 and b"chat.completion" in r.body
            assert first.connections == 1 and len(pool.idle) == 1
            first.stop()  # the pooled TLS connection dies with the server
            second = FakeUpstream(port=port, ssl=server_ctx(certs, "server")).start()
            try:
                r = await pool.request("POST", "/chat/completions", BODY, connect=2, timeout=5)
                assert r.status == 200 and second.hits == 1 and second.connections == 1
            finally:
                second.stop()
        finally:
            pool.close()

    asyncio.run(run())


def test_tunnel_sends_the_upstream_name_as_sni_and_verifies_it(certs):
    """Through a CONNECT tunnel, TLS is with the upstream: SNI and the certificate check are
    for the upstream's name (localhost here), not the proxy's."""
    names: list[str | None] = []
    ctx = server_ctx(certs, "server")
    ctx.sni_callback = lambda _sock, name, _ctx: names.append(name)
    with FakeUpstream(ssl=ctx, host_name="localhost") as fake, proxy() as px:
        pool = HTTPPool(fake.base_url, {}, ca_file=str(certs / "ca.pem"), proxy=px.url())
        assert _pool_roundtrip(pool) == [200] * 4
        assert names == ["localhost"] and px.tunnels == 1
        assert px.heads[0].startswith(f"CONNECT localhost:{fake.port} HTTP/1.1\r\n".encode())
        wrong = HTTPPool(fake.base_url, {}, ca_file=str(certs / "other-ca.pem"), proxy=px.url())
        with pytest.raises(HTTPError, match=f"TLS certificate of localhost:{fake.port} via proxy"):
            _pool_roundtrip(wrong)


def test_ssl_cert_file_and_dir_are_honoured(certs, monkeypatch, tmp_path):
    """Without ca_file, the default store, which SSL_CERT_FILE / SSL_CERT_DIR replace."""
    with FakeUpstream(ssl=server_ctx(certs, "server")) as fake:
        monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))  # empty: nothing from here
        monkeypatch.setenv("SSL_CERT_FILE", str(certs / "ca.pem"))
        assert _pool_roundtrip(HTTPPool(fake.base_url, {})) == [200] * 4
        monkeypatch.setenv("SSL_CERT_FILE", str(certs / "other-ca.pem"))
        with pytest.raises(HTTPError, match="certificate verify failed|unable to get local issuer"):
            _pool_roundtrip(HTTPPool(fake.base_url, {}))
        hashed = tmp_path / "hashed"
        hashed.mkdir()
        shutil.copy(certs / "ca.pem", hashed / "ca.pem")
        subprocess.run(["openssl", "rehash", str(hashed)], check=True, capture_output=True)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
        monkeypatch.setenv("SSL_CERT_DIR", str(hashed))
        assert _pool_roundtrip(HTTPPool(fake.base_url, {})) == [200] * 4
        # ca_file wins over the environment, and may be a hashed directory too
        monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
        assert _pool_roundtrip(HTTPPool(fake.base_url, {}, ca_file=str(hashed))) == [200] * 4


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server that accepts and never says a word (a stuck TLS peer or proxy)."""
    srv = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conns.append(srv.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        for c in conns:
            c.close()
        srv.close()


@pytest.mark.parametrize("via_proxy", [False, True], ids=["tls-handshake", "connect-reply"])
def test_a_silent_peer_times_out_in_the_connect_timeout(via_proxy):
    with silent_server() as port:
        if via_proxy:
            pool = HTTPPool("https://api.example.com/v1", {}, proxy=f"http://127.0.0.1:{port}")
        else:
            pool = HTTPPool(f"https://127.0.0.1:{port}/v1", {})

        async def run() -> None:
            try:
                await pool.request("POST", "/chat/completions", BODY, connect=0.3, timeout=5)
            finally:
                pool.close()

        with pytest.raises(HTTPTimeout, match="timed out"):
            asyncio.run(asyncio.wait_for(run(), 3))


def test_proxy_failures_are_clear():
    """A proxy that never answers CONNECT (connect timeout), one that hangs up, none listening,
    and an environment proxy of a scheme the client cannot use."""

    async def call(pool: HTTPPool) -> None:
        try:
            await pool.request("POST", "/x", BODY, connect=1, timeout=1)
        finally:
            pool.close()

    with proxy() as px:
        px.mode = "hang"
        with pytest.raises(HTTPTimeout):
            asyncio.run(call(HTTPPool("https://a.example/v1", {}, proxy=px.url())))
        px.mode = "close"
        with pytest.raises(HTTPError, match="closed the connection before answering CONNECT"):
            asyncio.run(call(HTTPPool("https://a.example/v1", {}, proxy=px.url())))
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.close()  # nothing listens: refused
    with pytest.raises(HTTPError, match=f"cannot connect to proxy 127.0.0.1:{port}"):
        asyncio.run(call(HTTPPool("https://a.example/v1", {}, proxy=f"127.0.0.1:{port}")))
    env = {"HTTPS_PROXY": "socks5://127.0.0.1:1080"}
    pool = HTTPPool("https://a.example/v1", {}, env=env)
    with pytest.raises(HTTPError, match="HTTPS_PROXY for a.example:443 cannot be used"):
        asyncio.run(call(pool))


# -- proxy settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, port, no_proxy, bypass",
    [
        ("api.openai.com", 443, "", False),
        ("api.openai.com", 443, "*", True),
        ("api.openai.com", 443, "openai.com", True),
        ("api.openai.com", 443, ".openai.com", True),
        ("api.openai.com", 443, "*.openai.com", True),
        ("openai.com", 443, ".openai.com", True),
        ("notopenai.com", 443, "openai.com", False),
        ("API.OpenAI.com", 443, "foo, OPENAI.COM ", True),
        ("api.openai.com", 443, "foo bar openai.com", True),
        ("api.openai.com", 443, "api.openai.com:443", True),
        ("api.openai.com", 443, "api.openai.com:8443", False),
        ("10.1.2.3", 80, "10.1.2.3", True),
        ("10.1.2.3", 80, "10.1.2.4", False),
        ("10.1.2.3", 80, "10.0.0.0/8", True),
        ("11.1.2.3", 80, "10.0.0.0/8", False),
        ("10.1.2.3", 8080, "10.1.2.3:8080", True),
        ("10.1.2.3", 80, "10.1.2.3:8080", False),
        ("::1", 80, "::1", True),
        ("fd00::5", 80, "fd00::/8", True),
        ("::1", 8080, "[::1]:8080", True),
        ("::1", 80, "[::1]:8080", False),
        ("localhost", 80, "127.0.0.1", False),  # no name resolution, as with curl
        ("host.internal", 80, "internal", True),
    ],
)
def test_no_proxy_forms(host, port, no_proxy, bypass):
    assert bypass_proxy(host, port, no_proxy) is bypass


def test_proxy_urls_and_environment():
    p = parse_proxy("http://proxy%20user:p%40ss%3Aword@corp-proxy:3128")
    assert (p.host, p.port, p.authorization) == ("corp-proxy", 3128, PROXY_AUTH_HEADER)
    assert parse_proxy("corp-proxy").port == 80 and parse_proxy("corp-proxy").authorization is None
    assert parse_proxy("http://u@p:1").authorization == "Basic " + base64.b64encode(b"u:").decode()
    assert parse_proxy("http://[fd00::1]:3128").where == "[fd00::1]:3128"
    for bad in ("socks5://p:1080", "https://p:443", "http://", "http://p:99999"):
        with pytest.raises(ValueError):
            parse_proxy(bad)
    env = {"HTTPS_PROXY": "http://up:1", "https_proxy": "http://low:1", "HTTP_PROXY": "http://h:1"}
    assert proxy_from_env("https", "api.x.com", 443, env) == "http://low:1"
    assert proxy_from_env("http", "api.x.com", 80, env) == "http://h:1"
    assert proxy_from_env("https", "api.x.com", 443, {**env, "NO_PROXY": "x.com"}) is None
    assert proxy_from_env("http", "api.x.com", 80, {"HTTPS_PROXY": "http://p:1"}) is None
    # the Host header and the request target through a plain-http proxy
    pool = HTTPPool("http://up.example:8000/v1", {"A": "b"}, proxy="http://u:p@px:3128")
    raw = pool._request_bytes("POST", "/chat/completions", b"{}")
    assert raw.startswith(b"POST http://up.example:8000/v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nHost: up.example:8000\r\n" in raw and b"Proxy-Authorization: Basic " in raw
    direct = HTTPPool(
        "http://up.example:8000/v1", {}, proxy=False, env={"HTTP_PROXY": "http://p:1"}
    )
    assert direct.proxy is None and direct._request_bytes("GET", "/m", b"").startswith(
        b"GET /v1/m "
    )


def test_config_validates_ca_file_and_proxy(certs, tmp_path):
    def build(**opts: Any) -> Any:
        doc = {"data_dir": str(tmp_path), "providers": {"p": {"base_url": "https://x/v1", **opts}}}
        return build_config(doc, env={})

    cfg = build(ca_file=str(certs / "ca.pem"), proxy="http://u:p@proxy:3128")
    assert cfg.providers["p"].options == {
        "ca_file": str(certs / "ca.pem"),
        "proxy": "http://u:p@proxy:3128",
    }
    assert build(proxy=False).providers["p"].options["proxy"] is False
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for opts, needle in [
        ({"ca_file": str(tmp_path / "missing.pem")}, "cannot be loaded"),
        ({"ca_file": str(tmp_path / "junk.pem")}, "cannot be loaded"),
        ({"ca_file": 3}, "must be a path"),
        ({"proxy": "socks5://p:1080"}, "unsupported proxy scheme"),
        ({"proxy": True}, "must be a proxy URL"),
    ]:
        with pytest.raises(UsageError, match=needle):
            build(**opts)
    # a relative ca_file is relative to the config file, like data_dir
    shutil.copy(certs / "ca.pem", tmp_path / "corp-ca.pem")
    (tmp_path / "thrifty.toml").write_text(
        'data_dir = "d"\n[providers.p]\nbase_url = "https://x/v1"\nca_file = "corp-ca.pem"\n'
    )
    cfg = load_config(tmp_path / "thrifty.toml", env={})
    assert cfg.providers["p"].options["ca_file"] == str(tmp_path / "corp-ca.pem")
