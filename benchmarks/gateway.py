"""Gateway overhead, side by side in one run: the fake upstream directly, thrifty with a fixed
model, thrifty with ``auto``, thrifty streaming, and LiteLLM's proxy (1.106.2, in a throwaway venv).

    python -m benchmarks gateway [--duration 8] [--connections 64] [--no-litellm] [--profile]
                                 [--workers N [--workers-only]]
    python -m benchmarks gateway --against <commit>   # CPU per request, side by side: see side_by_side.py

Everything runs on loopback: a fast fake OpenAI-compatible upstream (raw asyncio + httptools,
far faster than any gateway), the gateway under test as its own process pinned to one core,
and wrk (Debian's, installed here if missing) pinned to the other core. thrifty runs with
spend control on (an API key, a team budget, the SQLite ledger). For each target: requests/s,
p50/p99 latency at 1 connection and at N connections, added p50 over direct, and the gateway's
CPU time per request (from /proc, user+system, divided by the requests served).

``--workers N`` adds ``thrifty serve --workers N`` against ``--workers 1`` side by side, both
free to use every core (wrk and the upstream share them: on a 2-core machine that is the
ceiling), CPU summed over the gateway's process tree; ``--workers-only`` runs just that.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ADMIN_KEY = "sk-thr-admin-bench-key"
LITELLM_VERSION = "1.106.2"
LITELLM_VENV = Path(tempfile.gettempdir()) / f"thrifty-bench-litellm-{LITELLM_VERSION}"
PROMPT = (
    "Which skin surface will produce the most heat when rubbed quickly? A) dry palms B) wet palms "
    "C) palms covered with oil D) palms covered with lotion. Answer with one letter."
)
ROUTER_MODELS = (
    "gpt-4-1106-preview",
    "gpt-3.5-turbo-1106",
    "claude-v1",
    "claude-v2",
    "claude-instant-v1",
    "meta/llama-2-70b-chat",
    "meta/code-llama-instruct-34b-chat",
    "mistralai/mixtral-8x7b-chat",
    "mistralai/mistral-7b-chat",
    "zero-one-ai/Yi-34B-Chat",
    "WizardLM/WizardLM-13B-V1.2",
)
CORES = os.cpu_count() or 1
LOADGEN_CPU, TARGET_CPU = "0", ("1" if CORES > 1 else "0")


# -- processes -----------------------------------------------------------------------------


def pinned(cmd: list[str], cpu: str) -> list[str]:
    return (["taskset", "-c", cpu] + cmd) if shutil.which("taskset") else cmd


def cpu_seconds(pid: int) -> float:
    """user+system CPU of a process and its reaped children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` of ``pid`` and every live descendant (the workers of ``--workers N``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
        except OSError:
            continue
        todo.extend(children.get(p, ()))
    return total


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(
        self,
        cmd: list[str],
        cpu: str,
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.log = open(log, "wb")  # noqa: SIM115 (lives as long as the process; closed in stop())
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            pinned(cmd, cpu),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.logpath = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(
        self,
        url: str,
        *,
        post: dict | None = None,
        headers: dict | None = None,
        timeout: float = 120,
    ) -> float:
        """Seconds from spawn until ``url`` answers 200 (a POST if ``post``: the first served request)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.logpath.name} exited: {self.logpath.read_text()[-2000:]}"
                )
            try:
                r = (
                    httpx.post(url, json=post, headers=headers, timeout=5)
                    if post is not None
                    else httpx.get(url, timeout=2)
                )
                if r.status_code == 200:
                    return time.perf_counter() - self.t0
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{url} not ready after {timeout}s: {self.logpath.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


# -- wrk -----------------------------------------------------------------------------------


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    print("installing wrk from Debian ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("wrk is not available and could not be installed")
    return path


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_ms_per_req: float | None = None


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


_RUNS = itertools.count(1)
_STOPPED = "thrifty-bench: stopped"


def _wrk_script(body: dict, headers: dict[str, str], vary: bool, stop_after: int | None) -> str:
    lua_headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    lua = (
        f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
        f'wrk.headers["Content-Type"] = "application/json"\n{lua_headers}'
    )
    if vary:
        head, tail = json.dumps(body).split(PROMPT)
        tag = f"{os.getpid()}.{next(_RUNS)}"
        lua += (
            f"local n = 0\nlocal head = {json.dumps(head + PROMPT)}\nlocal tail = {json.dumps(tail)}\n"
            "request = function()\n  n = n + 1\n"
            f"  return wrk.format(nil, nil, nil, head .. ' (variant {tag}.' .. n .. ')' .. tail)\nend\n"
        )
    if stop_after:
        lua += (
            f"local done = 0\nresponse = function(status, headers, body)\n  done = done + 1\n"
            f"  if done == {stop_after} then\n    wrk.thread:stop()\n"
            f'    io.write("{_STOPPED}\\n")\n    io.stdout:flush()\n  end\nend\n'
        )
    return lua


def _run_wrk(cmd: list[str], stop_after: int | None) -> str:
    """wrk's report. With ``stop_after``, the script's thread stops itself after that many
    responses and says so; wrk's main thread sleeps out its duration unless interrupted, so
    SIGINT (which makes it report at once) ends the run there."""
    if not stop_after:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            if line.strip() == _STOPPED:
                proc.send_signal(signal.SIGINT)
            else:
                lines.append(line)
        if proc.wait() != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
    return "".join(lines)


def wrk(
    url: str,
    body: dict,
    *,
    connections: int,
    duration: float,
    headers: dict[str, str],
    target_pid: int | None,
    tmp: Path,
    vary: bool = False,
    tree: bool = False,
    stop_after: int | None = None,
) -> Load:
    """``vary``: every request gets a distinct prompt (so no cache of the router can help), and
    distinct from every earlier run's (each run tags its variants). ``tree``: the target's CPU
    includes its child processes'. ``stop_after``: wrk stops after that many responses
    (``duration`` is then only a cap)."""
    cpu_of = tree_cpu_seconds if tree else cpu_seconds
    script = tmp / "post.lua"
    script.write_text(_wrk_script(body, headers, vary, stop_after))
    before = cpu_of(target_pid) if target_pid else 0.0
    out = _run_wrk(
        pinned(
            [
                ensure_wrk(),
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "30s",
                "--latency",
                "-s",
                str(script),
                url,
            ],
            LOADGEN_CPU,
        ),
        stop_after,
    )
    cpu = cpu_of(target_pid) - before if target_pid else None
    runs = sorted(tmp.glob("wrk-*.txt"))
    (tmp / f"wrk-{len(runs):03d}.txt").write_text(
        f"{url} c={connections}\n{out}"
    )  # raw output, for the record
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    nan = float("nan")
    return Load(
        rps,
        _ms(lat["50"]) if "50" in lat else nan,
        _ms(lat["99"]) if "99" in lat else nan,
        requests,
        errors,
        cpu / requests * 1000 if cpu is not None and requests else None,
    )


# -- targets -------------------------------------------------------------------------------


def thrifty_config(tmp: Path, upstream: str, spend: bool = True, extra: str = "") -> Path:
    """The benchmark's config; ``extra``: more TOML sections (e.g. ``[cache]``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    price = "input_cost_per_token = 1e-6\noutput_cost_per_token = 2e-6\ncontext_window = 16000\n"
    lines = [
        f'data_dir = "{tmp / "data"}"',
        'frontier_model = "gpt-4-1106-preview"',
        f"spend_enabled = {'true' if spend else 'false'}",
        "",
        "[providers.fake]",
        'type = "openai"',
        f'base_url = "{upstream}"',
        "",
        '[models."bench-model"]',
        'provider = "fake"',
        "route = false",
        price,
    ]
    for m in ROUTER_MODELS:
        lines += [f'[models."{m}"]', 'provider = "fake"', price]
    lines.append(extra)
    path = tmp / ("thrifty.toml" if spend else "thrifty-nospend.toml")
    path.write_text("\n".join(lines))
    return path


def thrifty_key(base: str) -> str:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    httpx.post(
        base + "/admin/teams", json={"id": "bench"}, headers=admin, timeout=10
    ).raise_for_status()
    httpx.post(
        base + "/admin/budgets",
        json={"scope": "team", "scope_id": "bench", "amount_usd": 1e9},
        headers=admin,
        timeout=10,
    ).raise_for_status()
    r = httpx.post(
        base + "/admin/keys", json={"name": "bench", "team_id": "bench"}, headers=admin, timeout=10
    )
    r.raise_for_status()
    return r.json()["key"]


def ensure_litellm(log: Path) -> Path | None:
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    print(
        f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} (one-off, a few minutes) ...",
        flush=True,
    )
    with open(log, "wb") as f:
        ok = (
            subprocess.run([PY, "-m", "venv", str(LITELLM_VENV)], stdout=f, stderr=f, check=False).returncode
            == 0
            and subprocess.run(
                [
                    str(LITELLM_VENV / "bin" / "pip"),
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    f"litellm[proxy]=={LITELLM_VERSION}",
                ],
                stdout=f,
                stderr=f,
                timeout=900,
                check=False,
            ).returncode
            == 0
        )
    return exe if ok and exe.exists() else None


def router_scoring_time() -> str:
    """CPU time of the router's scoring alone, in-process: what ``auto`` may add at most."""
    from thrifty.router import Router, default_router_path

    router = Router.load(default_router_path())
    prompts = [f"{PROMPT} (variant {i})" for i in range(300)]
    for p in prompts[:20]:
        router.score(p)
    t0 = time.process_time()
    for p in prompts:
        router.score(p)
    per = (time.process_time() - t0) / len(prompts) * 1000
    return f"router.score alone: {per:.3f} ms CPU per prompt (in-process, {len(prompts)} distinct prompts)"


def import_seconds(cmd: list[str]) -> float:
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="thrifty-bench-"))
    print(
        f"machine: {CORES} cores; wrk on cpu {LOADGEN_CPU}, target on cpu {TARGET_CPU}; "
        f"{args.duration:g}s per run; logs in {tmp}",
        flush=True,
    )
    up_port = free_port()
    fake = Proc(
        [PY, "-m", "thrifty.testing.fake_upstream", "--port", str(up_port)],
        TARGET_CPU,
        tmp / "fake.log",
    )
    upstream = f"http://127.0.0.1:{up_port}/v1"
    fake.wait_ready(upstream + "/models")
    body = {
        "model": "bench-model",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 64,
    }
    rows: list[tuple[str, int, Load]] = []
    notes: list[str] = []
    conns = (1, args.connections)

    def measure(
        name: str,
        url: str,
        payload: dict,
        headers: dict[str, str],
        pid: int | None,
        vary: bool = False,
    ) -> None:
        for c in conns:
            wrk(
                url,
                payload,
                connections=c,
                duration=min(2.0, args.duration),
                headers=headers,
                target_pid=None,
                tmp=tmp,
                vary=vary,
            )  # warm-up
            load = wrk(
                url,
                payload,
                connections=c,
                duration=args.duration,
                headers=headers,
                target_pid=pid,
                tmp=tmp,
                vary=vary,
            )
            rows.append((name, c, load))
            print(
                f"  {name:<22} c={c:<3} {load.rps:>9.0f} req/s  p50 {load.p50_ms:7.3f} ms  "
                f"p99 {load.p99_ms:7.3f} ms  errors {load.errors}",
                flush=True,
            )

    procs: list[Proc] = [fake]
    try:
        measure("direct (fake upstream)", upstream + "/chat/completions", body, {}, fake.pid)
        # the upstream now shares the load generator's core; the gateway gets its own
        subprocess.run(["taskset", "-pc", LOADGEN_CPU, str(fake.pid)], capture_output=True, check=False)
        if args.workers > 1:
            compare_workers(tmp, upstream, body, args, procs, rows, notes)
            if args.workers_only:
                report(rows, notes, args)
                return 0

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        gw = Proc(
            [
                PY,
                "-m",
                "thrifty.cli",
                "serve",
                "--config",
                str(thrifty_config(tmp, upstream)),
                "--port",
                str(port),
            ],
            TARGET_CPU,
            tmp / "thrifty.log",
            env={"THRIFTY_ADMIN_KEY": ADMIN_KEY},
        )
        procs.append(gw)
        gw.wait_ready(base + "/healthz")
        key = thrifty_key(base)
        auth = {"Authorization": f"Bearer {key}"}
        check = httpx.post(base + "/v1/chat/completions", json=body, headers=auth, timeout=10)
        check.raise_for_status()
        up = time.perf_counter() - gw.t0
        notes.append(
            f"thrifty start-up: {up:.2f} s from spawn to the first served chat completion "
            "(includes creating its API key through /admin)"
        )
        notes.append(
            "thrifty route headers: "
            + ", ".join(f"{k}={v}" for k, v in check.headers.items() if k.startswith("x-thrifty"))
        )
        gw_url = base + "/v1/chat/completions"
        measure("thrifty fixed model", gw_url, body, auth, gw.pid)
        measure("thrifty auto", gw_url, {**body, "model": "auto"}, auth, gw.pid, vary=True)
        measure("thrifty streaming", gw_url, {**body, "stream": True}, auth, gw.pid)
        ready = httpx.get(base + "/readyz").json()
        if not ready.get("router"):
            notes.append(f"WARNING: router off in the gateway: {ready.get('router_error')}")
        gw.stop()
        procs.remove(gw)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        bare = Proc(
            [
                PY,
                "-m",
                "thrifty.cli",
                "serve",
                "--config",
                str(thrifty_config(tmp, upstream, spend=False)),
                "--port",
                str(port),
            ],
            TARGET_CPU,
            tmp / "thrifty-nospend.log",
        )
        procs.append(bare)
        bare.wait_ready(base + "/v1/chat/completions", post=body)
        measure("thrifty fixed, no spend", base + "/v1/chat/completions", body, {}, bare.pid)
        bare.stop()
        procs.remove(bare)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        try:
            import granian  # noqa: F401
        except ImportError:
            notes.append(
                "granian not installed: the 'thrifty fixed, granian' comparison was skipped"
            )
        else:
            gr = Proc(
                [
                    PY,
                    "-m",
                    "thrifty.cli",
                    "serve",
                    "--server",
                    "granian",
                    "--config",
                    str(thrifty_config(tmp / "granian", upstream)),
                    "--port",
                    str(port),
                ],
                TARGET_CPU,
                tmp / "thrifty-granian.log",
                env={"THRIFTY_ADMIN_KEY": ADMIN_KEY},
            )
            procs.append(gr)
            gr.wait_ready(base + "/healthz")
            measure(
                "thrifty fixed, granian",
                base + "/v1/chat/completions",
                body,
                {"Authorization": f"Bearer {thrifty_key(base)}"},
                gr.pid,
            )
            gr.stop()
            procs.remove(gr)
        notes.append(router_scoring_time())

        if args.profile:
            profile_thrifty(tmp, upstream, body, args)

        if not args.no_litellm:
            try:
                run_litellm(tmp, upstream, body, procs, notes, measure)
            except Exception as exc:  # noqa: BLE001 (report what was measured, and why LiteLLM is missing)
                notes.append(f"LiteLLM: not measured ({str(exc).strip().splitlines()[-1][:300]})")
        notes.append(
            "thrifty import (gateway app + spend + router): {:.2f} s".format(
                import_seconds(
                    [PY, "-c", "import thrifty.gateway.app, thrifty.spend.control, thrifty.router"]
                )
            )
        )
    finally:
        for p in procs:
            p.stop()

    report(rows, notes, args)
    return 0


def compare_workers(
    tmp: Path,
    upstream: str,
    body: dict,
    args: argparse.Namespace,
    procs: list[Proc],
    rows: list[tuple[str, int, Load]],
    notes: list[str],
) -> None:
    """``thrifty serve --workers 1`` and ``--workers N`` on the same config, cores and load."""
    every = f"0-{CORES - 1}"
    rps: dict[int, float] = {}
    for workers in (1, args.workers):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        where = tmp / f"workers-{workers}"
        metrics_dir = where / "metrics"
        gw = Proc(
            [PY, "-m", "thrifty.cli", "serve", "--config", str(thrifty_config(where, upstream)),
             "--port", str(port), "--workers", str(workers)],
            every,
            tmp / f"thrifty-workers-{workers}.log",
            env={"THRIFTY_ADMIN_KEY": ADMIN_KEY, "THRIFTY_METRICS_DIR": str(metrics_dir)},
        )
        procs.append(gw)
        try:
            gw.wait_ready(base + "/healthz")
            deadline = time.monotonic() + 120
            while workers > 1 and len(list(metrics_dir.glob("*.json"))) < workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {workers} workers did not all start")
                time.sleep(0.1)
            auth = {"Authorization": f"Bearer {thrifty_key(base)}"}
            time.sleep(1.5)  # every worker has loaded the key (spend.poll_interval_s)
            url = base + "/v1/chat/completions"
            name = f"thrifty {workers} worker{'s' if workers > 1 else ''}"
            wrk(url, body, connections=args.connections, duration=min(2.0, args.duration),
                headers=auth, target_pid=None, tmp=tmp)  # warm-up
            load = wrk(url, body, connections=args.connections, duration=args.duration,
                       headers=auth, target_pid=gw.pid, tmp=tmp, tree=True)
            rows.append((name, args.connections, load))
            rps[workers] = load.rps
            print(f"  {name:<22} c={args.connections:<3} {load.rps:>9.0f} req/s  "
                  f"p50 {load.p50_ms:7.3f} ms  p99 {load.p99_ms:7.3f} ms  errors {load.errors}", flush=True)
        finally:
            gw.stop()
            procs.remove(gw)
    notes.append(
        f"--workers {args.workers} / --workers 1 throughput: {rps[args.workers] / rps[1]:.2f}x "
        f"(fixed model, spend on, {args.connections} connections; gateway free on cpus {every}, "
        f"wrk on cpu {LOADGEN_CPU} with the fake upstream)"
    )


def run_litellm(
    tmp: Path, upstream: str, body: dict, procs: list[Proc], notes: list[str], measure
) -> None:  # type: ignore[no-untyped-def]
    exe = ensure_litellm(tmp / "litellm-install.log")
    if exe is None:
        raise RuntimeError(f"install failed, see {tmp / 'litellm-install.log'}")
    lport = free_port()
    cfg = tmp / "litellm.yaml"
    cfg.write_text(
        "model_list:\n  - model_name: bench-model\n    litellm_params:\n"
        f"      model: openai/bench-model\n      api_base: {upstream}\n      api_key: sk-fake\n"
    )
    master = "sk-" + os.urandom(32).hex()  # it refuses to start without one; requests then carry it
    lproc = Proc(
        [str(exe), "--config", str(cfg), "--port", str(lport), "--num_workers", "1"],
        TARGET_CPU,
        tmp / "litellm.log",
        env={"LITELLM_MASTER_KEY": master},
    )
    procs.append(lproc)
    lurl = f"http://127.0.0.1:{lport}"
    auth = {"Authorization": f"Bearer {master}"}
    up = lproc.wait_ready(lurl + "/v1/chat/completions", post=body, headers=auth, timeout=180)
    notes.append(
        f"LiteLLM start-up: {up:.2f} s from spawn to the first served request "
        "(master-key auth only: its budgets and ledger need Postgres)"
    )
    measure("litellm proxy", lurl + "/v1/chat/completions", body, auth, lproc.pid)
    notes.append(
        "LiteLLM import: {:.2f} s".format(
            import_seconds(
                [str(LITELLM_VENV / "bin" / "python"), "-c", "import litellm.proxy.proxy_server"]
            )
        )
    )


def report(rows: list[tuple[str, int, Load]], notes: list[str], args: argparse.Namespace) -> None:
    direct = {c: load for name, c, load in rows if name.startswith("direct")}
    litellm = {c: load for name, c, load in rows if name.startswith("litellm")}
    print()
    head = (
        f"{'target':<24}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'added p50':>11}"
        f"{'CPU/req':>10}{'vs LiteLLM':>12}{'errors':>8}"
    )
    print(head)
    print("-" * len(head))
    for name, c, load in rows:
        added = (
            f"{load.p50_ms - direct[c].p50_ms:+.3f}"
            if c in direct and not name.startswith("direct")
            else "-"
        )
        cpu = f"{load.cpu_ms_per_req:.3f}ms" if load.cpu_ms_per_req is not None else "-"
        ratio = (
            f"{load.rps / litellm[c].rps:.0f}x"
            if c in litellm and not name.startswith(("litellm", "direct"))
            else "-"
        )
        print(
            f"{name:<24}{c:>6}{load.rps:>10.0f}{load.p50_ms:>9.3f}{load.p99_ms:>9.3f}{added:>11}{cpu:>10}"
            f"{ratio:>12}{load.errors:>8}"
        )
    print()
    for n in notes:
        print(n)
    print(
        "CPU/req: the target process's user+system CPU time (all its threads) during the run / requests "
        "served; the gateway is one process (one event loop) pinned to one core. "
        "thrifty rows use uvicorn (httptools, uvloop) unless marked granian."
    )


def profile_thrifty(
    tmp: Path, upstream: str, body: dict, args: argparse.Namespace, spend: bool = True
) -> None:
    """Run the gateway (uvicorn) under cProfile while wrk drives it; print where the time goes."""
    port = free_port()
    out = tmp / "thrifty.prof"
    tmp = tmp / "profile"  # its own data dir (team, key, ledger)
    tmp.mkdir(exist_ok=True)
    code = (
        "import cProfile, os, sys\n"
        "from thrifty.gateway.assemble import make_app\n"
        "from thrifty.gateway.server import serve\n"
        f"app = make_app({str(thrifty_config(tmp, upstream, spend=spend))!r})\n"
        "pr = cProfile.Profile()\n"
        "import signal\n"
        f"def stop(*a):\n    pr.disable(); pr.dump_stats({str(out)!r}); os._exit(0)\n"
        "signal.signal(signal.SIGUSR1, stop)\n"
        "pr.enable()\n"
        f"serve(app, '127.0.0.1', {port}, server='uvicorn')\n"
    )
    proc = Proc(
        [PY, "-c", code], TARGET_CPU, tmp / "profile.log", env={"THRIFTY_ADMIN_KEY": ADMIN_KEY}
    )
    try:
        base = f"http://127.0.0.1:{port}"
        proc.wait_ready(base + "/healthz")
        auth = {"Authorization": f"Bearer {thrifty_key(base)}"} if spend else {}
        wrk(
            base + "/v1/chat/completions",
            body,
            connections=args.connections,
            duration=args.duration,
            headers=auth,
            target_pid=None,
            tmp=tmp,
        )
        proc.proc.send_signal(signal.SIGUSR1)
        proc.proc.wait(30)
    finally:
        proc.stop()
    import pstats

    print(
        "\nprofile of thrifty (fixed model, cProfile adds overhead; shares matter, not absolute times):"
    )
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(25)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks gateway", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--duration", type=float, default=8.0, help="seconds per measured run (default 8)"
    )
    p.add_argument(
        "--connections", type=int, default=64, help="connections for the throughput runs"
    )
    p.add_argument(
        "--no-litellm", action="store_true", help="skip LiteLLM (its install takes minutes)"
    )
    p.add_argument(
        "--profile", action="store_true", help="also profile thrifty under load with cProfile"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also compare thrifty serve --workers N against --workers 1 (default: no comparison)",
    )
    p.add_argument(
        "--workers-only", action="store_true", help="with --workers: run only that comparison"
    )
    from benchmarks import side_by_side  # it builds on this module

    side_by_side.add_arguments(p)
    args = p.parse_args(argv)
    return side_by_side.run(args) if args.against else run(args)


if __name__ == "__main__":
    sys.exit(main())
