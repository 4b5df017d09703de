"""Throughput of ``rsft serve``: Best-of-N requests per second with 1 client and with 16 at once.

Starts ``python -m rsft.serve`` as a subprocess on 127.0.0.1 (a free port), waits for ``/health``,
sends a few warm-up requests, then for a fixed time per client count keeps that many clients
(threads, one ``httpx.Client`` each) sending few-shot reasoning-gym ``count_bits`` prompts
(the demo task) as ``{"prompt": ..., "n": 4, "max_tokens": 8, "stop": ["\\n"]}``, each client
waiting for its answer before sending the next. It prints requests/s, completions/s (n per
request), median and p90 latency, the server's batching (``/health`` counts the ``generate`` calls,
so requests per batch is their ratio), each count's ratio to the first, the machine and versions.

    .venv/bin/python bench/serve_throughput.py                      # Gemma-3-270M, 60 s per count, ~3 min
    .venv/bin/python bench/serve_throughput.py --model tiny --seconds 20   # random 2-layer test model

``--model tiny`` builds the tests' tiny random Llama (tests/tiny_models.py) in a temporary folder;
any other value is passed to ``rsft serve --model``. The server runs with ``OMP_NUM_THREADS`` (and
``MKL_NUM_THREADS``) set to ``--threads`` (default 1), so runs on a shared machine are comparable.
Needs the ``server`` extra (fastapi, uvicorn) and httpx.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from common import cores, cpu_model

from rsft.prompts import TaskSpec, task_prompts

ROOT = Path(__file__).resolve().parent.parent
MAX_REQUESTS_PER_CLIENT = 100_000
"""Every client loop stops after this many requests even if the clock says otherwise."""


# --- machine and versions --------------------------------------------------------------------------


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def versions() -> str:
    out = [f"python {platform.python_version()}"]
    for dist in ("torch", "transformers", "rsft", "fastapi", "uvicorn", "httpx"):
        try:
            out.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist} ?")
    return ", ".join(out)


# --- the server ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_tiny_model(folder: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_models

    return str(tiny_models.build_causal_lm(folder / "tiny-lm"))


class Server:
    """``python -m rsft.serve`` in a subprocess; its stderr goes to a log file."""

    def __init__(self, model: str, port: int, threads: int, log: Path, extra: list[str]) -> None:
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "rsft.serve", "--model", model, "--host", "127.0.0.1", "--port", str(port),
               "--max-queue", "256", *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_healthy(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                r = httpx.get(self.url + "/health", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"server not healthy after {timeout:g} s:\n{self.tail()}")

    def health(self) -> dict[str, Any]:
        return httpx.get(self.url + "/health", timeout=30).json()

    def tail(self, lines: int = 30) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --- the clients -----------------------------------------------------------------------------------


@dataclass
class Phase:
    clients: int
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    completions: int = 0
    completion_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    load: str = ""

    @property
    def requests(self) -> int:
        return len(self.latencies)

    def row(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "clients": self.clients,
            "elapsed_s": round(self.elapsed, 2),
            "requests": self.requests,
            "errors": dict(self.errors),
            "requests_per_s": self.requests / self.elapsed if self.elapsed else 0.0,
            "completions_per_s": self.completions / self.elapsed if self.elapsed else 0.0,
            "completion_tokens_per_s": self.completion_tokens / self.elapsed if self.elapsed else 0.0,
            "latency_p50_s": statistics.median(lat) if lat else None,
            "latency_p90_s": lat[min(len(lat) - 1, int(0.9 * len(lat)))] if lat else None,
            "batches": self.batches,
            "requests_per_batch": self.requests / self.batches if self.batches else None,
            "load_average_after": self.load,
        }


def body(prompt: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt": prompt, "n": args.n, "max_tokens": args.max_tokens, "stop": ["\n"]}
    if args.temperature is not None:
        out["temperature"] = args.temperature
    return out


def run_phase(url: str, clients: int, seconds: float, prompts: list[str], args: argparse.Namespace) -> Phase:
    """``clients`` threads each send one request at a time until ``seconds`` have passed.

    A request started before the deadline is waited for; elapsed runs to the last answer.
    """
    phase = Phase(clients)
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=args.request_timeout) as http:
            for i in range(MAX_REQUESTS_PER_CLIENT):
                if time.monotonic() >= deadline:
                    return
                prompt = prompts[(k * 7 + i) % len(prompts)]
                t0 = time.monotonic()
                try:
                    r = http.post("/v1/completions", json=body(prompt, args))
                    status = str(r.status_code)
                    data = r.json() if r.status_code == 200 else None
                except httpx.HTTPError as e:
                    status, data = type(e).__name__, None
                dt = time.monotonic() - t0
                with lock:
                    if data is None:
                        phase.errors[status] = phase.errors.get(status, 0) + 1
                        continue
                    phase.latencies.append(dt)
                    phase.completions += data["rsft"]["n"]
                    phase.completion_tokens += data["usage"]["completion_tokens"]

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 2 * args.request_timeout)
    phase.elapsed = time.monotonic() - start
    phase.load = load_average()
    return phase


# --- report ----------------------------------------------------------------------------------------


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]
    head = (f"{'clients':>7} {'req':>6} {'err':>4} {'req/s':>7} {'compl/s':>8} {'tok/s':>7} {'p50 s':>7} "
            f"{'p90 s':>7} {'batches':>7} {'req/batch':>9} {'x req/s':>8} {'x p50':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r["requests_per_s"] / base["requests_per_s"] if base["requests_per_s"] else None
        lat_ratio = (r["latency_p50_s"] / base["latency_p50_s"]
                     if r["latency_p50_s"] is not None and base["latency_p50_s"] else None)
        lines.append(
            f"{r['clients']:>7} {r['requests']:>6} {sum(r['errors'].values()):>4} {r['requests_per_s']:>7.3f} "
            f"{r['completions_per_s']:>8.2f} {r['completion_tokens_per_s']:>7.1f} "
            f"{fmt(r['latency_p50_s'], '7.3f')} {fmt(r['latency_p90_s'], '7.3f')} {r['batches']:>7} "
            f"{fmt(r['requests_per_batch'], '9.2f')} {fmt(ratio, '8.2f')} {fmt(lat_ratio, '6.2f')}")
    lines.append(f"(x req/s, x p50: ratio to the {base['clients']}-client row, measured in the same run)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m",
                        help="rsft serve --model value, or 'tiny' for the tests' tiny random model "
                             "(default: gemma3-270m)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring time per client count (default 60)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16], help="client counts (default: 1 16)")
    parser.add_argument("-n", type=int, default=4, help="n (candidates) per request (default 4)")
    parser.add_argument("--max-tokens", type=int, default=8, help="max_tokens per request (default 8)")
    parser.add_argument("--temperature", type=float, help="temperature per request (default: the server's, 1.0)")
    parser.add_argument("--prompts", type=int, default=32, help="distinct count_bits prompts to cycle (default 32)")
    parser.add_argument("--warmup", type=int, default=2, help="requests sent before measuring (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server (default 1)")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="client timeout per request (s)")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for /health")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for rsft serve (repeatable), e.g. --server-arg=--batch-window-ms=20")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    if any(c < 1 for c in args.clients) or args.seconds <= 0:
        parser.error("--clients must be >= 1 and --seconds > 0")

    started = time.monotonic()
    spec = TaskSpec("count_bits", size=args.prompts, shots=5, options={"max_n": 63})
    prompts = [p.prompt for p in task_prompts(spec)]
    with tempfile.TemporaryDirectory(prefix="rsft-serve-bench-") as tmp:
        model = build_tiny_model(Path(tmp)) if args.model == "tiny" else args.model
        port = free_port()
        print(f"starting rsft serve --model {args.model} on 127.0.0.1:{port} (OMP_NUM_THREADS={args.threads})",
              flush=True)
        server = Server(model, port, args.threads, Path(tmp) / "server.log", args.server_arg)
        try:
            t0 = time.monotonic()
            health = server.wait_healthy(args.startup_timeout)
            startup_s = time.monotonic() - t0
            t0 = time.monotonic()
            with httpx.Client(base_url=server.url, timeout=args.request_timeout) as http:
                for i in range(args.warmup):
                    r = http.post("/v1/completions", json=body(prompts[i % len(prompts)], args))
                    if r.status_code != 200:
                        raise SystemExit(f"warm-up request failed: {r.status_code} {r.text[:500]}")
            warmup_s = time.monotonic() - t0
            print(f"server up in {startup_s:.1f} s, {args.warmup} warm-up requests in {warmup_s:.1f} s; "
                  f"health: {json.dumps(health)}", flush=True)
            phases = []
            for clients in args.clients:
                before = server.health().get("batches")
                phase = run_phase(server.url, clients, args.seconds, prompts, args)
                after = server.health().get("batches")
                phase.batches = after - before if isinstance(before, int) and isinstance(after, int) else 0
                phases.append(phase)
                print(f"  {clients:>3} clients: {phase.requests} requests in {phase.elapsed:.1f} s "
                      f"({phase.requests / phase.elapsed:.3f}/s), errors {phase.errors or 0}", flush=True)
        finally:
            server.stop()

    rows = [p.row() for p in phases]
    n_prompt_chars = statistics.mean(len(p) for p in prompts)
    shots = prompts[0].count("Q:") - 1  # task_prompts drops shots that repeat an evaluated question
    print()
    print(f"rsft serve throughput: model {args.model}, n={args.n}, max_tokens={args.max_tokens}, stop ['\\n'], "
          f"temperature {args.temperature if args.temperature is not None else 'server default (1.0)'}, "
          f"selector majority (no scorer); {len(prompts)} count_bits prompts with {shots} shots "
          f"(~{n_prompt_chars:.0f} chars); {args.seconds:g} s per client count")
    print(table(rows))
    print(f"machine:  {platform.platform()}; {cpu_model()}; nproc {cores()}; "
          f"load average {load_average()} (1, 5, 15 min, at the end)")
    print(f"versions: {versions()}")
    print(f"server:   OMP_NUM_THREADS={args.threads}; startup {startup_s:.1f} s; total run {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "model": args.model, "n": args.n, "max_tokens": args.max_tokens, "temperature": args.temperature,
            "seconds": args.seconds, "threads": args.threads, "prompts": len(prompts), "rows": rows,
            "machine": {"platform": platform.platform(), "cpu": cpu_model(), "nproc": cores(),
                        "load_average": load_average()},
            "versions": versions(), "startup_s": round(startup_s, 1),
        }, indent=2))


if __name__ == "__main__":
    main()
