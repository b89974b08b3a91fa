"""NVIDIA perf_analyzer against our Triton: real tokenized item titles, gRPC, loopback only.

perf_analyzer is the C++ load generator from the tritonclient 2.41.0 wheel (the last one that
ships it), installed apart from the main virtualenv by build/install-perf-analyzer.sh into
.bench-tools/. It sends batch-1 requests, one real title each (its own sequence length, as the
gateway does), at fixed concurrencies, and reports client latency percentiles plus Triton's own
queue/compute split (statistics extension).

    python -m bench.perf_analyzer [--out results/perf_analyzer.json]

starts a Triton on free loopback ports from the installed model repository (run `make engine`
first), measures concurrency 1, 2, 4, 8 on 256 real titles, prints a table, stops Triton.
`bench.run` calls run_perf_analyzer() against its own Triton.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from devtools.triton_launcher import TritonServer, TritonStartError, start_triton
from interest_core.config import ROOT, load_settings
from interest_core.tokenizer import BehaviourTokenizer
from interest_model.corpus import behaviour_texts

INSTALLER = "build/install-perf-analyzer.sh"
TOOLS_DIR = ".bench-tools"  # overridable with BENCH_TOOLS, as in the installer
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
PROXY_VARS = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy",
              "HTTP_PROXY", "HTTPS_PROXY", "GRPC_PROXY", "ALL_PROXY")
DEFAULT_STABILITY_PCT = 10  # perf_analyzer's default: last 3 windows within 10% (throughput and avg latency)
FALLBACK_STABILITY_PCT = 25  # one retry per level on a busy 2-core box, recorded in the result
DEFAULT_MAX_TRIALS = 6  # windows per try: bounds a level to 6 x measurement_ms


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer is missing, cannot load, or could not measure."""


def find_perf_analyzer(root: Path) -> tuple[Path, dict[str, str]]:
    """The perf_analyzer binary under root/.bench-tools and the environment it needs to run
    (libcudart on LD_LIBRARY_PATH, no proxies); raises PerfAnalyzerError naming the installer."""
    tools = Path(os.environ.get("BENCH_TOOLS") or root / TOOLS_DIR)
    binary = tools / "bin" / "perf_analyzer"
    cudart = tools / "nvidia" / "cuda_runtime" / "lib"
    hint = f"run `bash {INSTALLER}` (installs tritonclient 2.41.0 + CUDA runtime into {tools}, libb64-0d)"
    if not os.access(binary, os.X_OK):
        raise PerfAnalyzerError(f"perf_analyzer not found at {binary}: {hint}")
    if not (cudart / "libcudart.so.12").exists():
        raise PerfAnalyzerError(f"libcudart.so.12 not found under {cudart}: {hint}")
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(cudart), env.get("LD_LIBRARY_PATH", "")) if p)
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost,::1"
    with contextlib.suppress(FileNotFoundError, subprocess.TimeoutExpired):
        ldd = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True, timeout=20)
        missing = [line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line]
        if missing:
            raise PerfAnalyzerError(f"{binary} cannot load {', '.join(missing)}: {hint}")
    return binary, env


def perf_analyzer_version(binary: Path, env: dict[str, str]) -> str:
    """'2.41.0' from `perf_analyzer --version` (printed on stderr)."""
    proc = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True, timeout=20)
    match = re.search(r"Version\s+(\S+)", proc.stdout + proc.stderr)
    return match.group(1) if match else "unknown"


def triton_version(grpc_url: str) -> str:
    """The server's version from its gRPC metadata ('2.51.0' for nvidia-pytriton 0.7.0)."""
    try:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(grpc_url)
        try:
            return str(client.get_server_metadata(client_timeout=10).version)
        finally:
            client.close()
    except Exception as exc:  # reported in the result, never fatal
        return f"unknown ({type(exc).__name__})"


def write_input_data(texts: list[str], path: Path, max_len: int = 64) -> None:
    """perf_analyzer --input-data JSON: one batch-1 entry per text, tokenized on its own, so every
    request has its real sequence length T ("shape": [T], batch dimension excluded)."""
    if not texts:
        raise ValueError("write_input_data needs at least one text")
    tokenizer = BehaviourTokenizer(max_len=max_len)
    entries = []
    for text in texts:
        ids, mask = tokenizer([text])
        shape = [int(ids.shape[1])]
        entries.append({
            "input_ids": {"content": ids[0].tolist(), "shape": shape},
            "attention_mask": {"content": mask[0].tolist(), "shape": shape},
        })
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": entries}))


def _check_loopback(grpc_url: str) -> None:
    host = grpc_url.rsplit(":", 1)[0]
    if host not in LOOPBACK:
        raise ValueError(f"perf_analyzer runs against loopback only, got {grpc_url!r}")


def _parse_csv(path: Path) -> dict[str, Any]:
    """The one data row of a `-f --verbose-csv` report (times in microseconds) as our fields."""
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if (r.get("Concurrency") or "").strip().isdigit()]
    if not rows:
        raise PerfAnalyzerError(f"no measurement row in {path}")
    r = rows[-1]

    def us(col: str) -> float:
        return float(r[col])

    return {
        "concurrency": int(r["Concurrency"]),
        "throughput_infer_per_s": round(float(r["Inferences/Second"]), 1),
        "p50_ms": round(us("p50 latency") / 1000, 2),
        "p90_ms": round(us("p90 latency") / 1000, 2),
        "p95_ms": round(us("p95 latency") / 1000, 2),
        "p99_ms": round(us("p99 latency") / 1000, 2),
        "avg_ms": round(us("Avg latency") / 1000, 2) if r.get("Avg latency") else None,
        "avg_queue_us": round(us("Server Queue")),
        "avg_compute_input_us": round(us("Server Compute Input")),
        "avg_compute_infer_us": round(us("Server Compute Infer")),
        "avg_compute_output_us": round(us("Server Compute Output")),
    }


def _run_level(
    cmd: list[str], env: dict[str, str], log_path: Path, timeout_s: float
) -> tuple[int, str]:
    """One perf_analyzer invocation; (exit status, output). Killed after timeout_s."""
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        log_path.write_text(out)
        raise PerfAnalyzerError(f"perf_analyzer killed after {timeout_s:.0f}s; log {log_path}") from exc
    log_path.write_text(proc.stdout)
    return proc.returncode, proc.stdout


def run_perf_analyzer(
    grpc_url: str,
    model: str,
    texts: list[str],
    concurrencies: list[int],
    out_dir: Path,
    measurement_ms: int = 4000,
    *,
    max_len: int = 64,
    stability_pct: int = DEFAULT_STABILITY_PCT,
    max_trials: int = DEFAULT_MAX_TRIALS,
) -> dict[str, Any]:
    """Measure `model` at each concurrency with perf_analyzer (one invocation per level, batch 1,
    sync gRPC, real tokenized `texts` round-robin); returns throughput, latency percentiles and
    Triton's queue/compute times per level. Stability is judged on AVERAGE latency (perf_analyzer's
    default), not p99: p99 of a few hundred requests per window on 2 shared cores jumps by more
    than 10% between windows and would rarely stabilise; p50..p99 are reported all the same.
    A level that does not stabilise is retried once at FALLBACK_STABILITY_PCT (recorded)."""
    _check_loopback(grpc_url)
    binary, env = find_perf_analyzer(ROOT)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir / "input_data.json"
    write_input_data(texts, data_path, max_len=max_len)
    lengths = [len(json_entry["input_ids"]["content"])
               for json_entry in json.loads(data_path.read_text())["data"]]
    timeout_s = max_trials * measurement_ms / 1000 * 2 + 30
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    commands: list[str] = []
    started = time.monotonic()
    for c in concurrencies:
        csv_path = out_dir / f"c{c}.csv"
        for pct in dict.fromkeys((stability_pct, max(stability_pct, FALLBACK_STABILITY_PCT))):
            csv_path.unlink(missing_ok=True)
            cmd = [
                str(binary), "-i", "grpc", "-u", grpc_url, "-m", model, "-b", "1",
                "--concurrency-range", str(c), "--input-data", str(data_path),
                "--measurement-interval", str(measurement_ms), "--stability-percentage", str(pct),
                "--max-trials", str(max_trials), "-f", str(csv_path), "--verbose-csv", "-v",
            ]
            rc, output = _run_level(cmd, env, out_dir / f"c{c}-s{pct}.log", timeout_s)
            if rc == 0 and csv_path.exists():
                rows.append({**_parse_csv(csv_path), "stability_pct": pct})
                commands.append(" ".join(repo_relative(arg) for arg in cmd))
                break
            last = (output.strip().splitlines() or ["(no output)"])[-1]
            unstable = "stable measurement" in output
            notes.append(f"concurrency {c} at {pct}%: exit {rc}: {last}")
            if not unstable:
                break  # a real failure (server down, bad input), retrying will not help
    if not rows:
        raise PerfAnalyzerError("perf_analyzer measured nothing: " + "; ".join(notes))
    return {
        "tool": "perf_analyzer",
        "version": perf_analyzer_version(binary, env),
        "triton": triton_version(grpc_url),
        "model": model,
        "protocol": "grpc (sync), batch 1 per request",
        "measurement_ms": measurement_ms,
        "stabilised_on": "average latency and throughput over the last 3 windows",
        "input": {"texts": len(texts), "max_len": max_len, "tokens_min": min(lengths),
                  "tokens_p50": statistics.median(lengths), "tokens_max": max(lengths)},
        "commands": commands,
        "notes": notes,
        "wall_s": round(time.monotonic() - started, 1),
        "by_concurrency": rows,
    }


def repo_relative(arg: str, root: Path = ROOT) -> str:
    """A command-line argument with a path inside the repository made relative to its root, so
    that recorded commands do not carry the checkout's location."""
    path = Path(arg)
    return str(path.relative_to(root)) if path.is_absolute() and path.is_relative_to(root) else arg


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table of by_concurrency."""
    head = (f"{'conc':>4} {'infer/s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
            f"{'queue us':>9} {'infer us':>9} {'stab%':>5}")
    lines = [head]
    for r in result["by_concurrency"]:
        lines.append(
            f"{r['concurrency']:>4} {r['throughput_infer_per_s']:>8.1f} {r['p50_ms']:>7.2f} "
            f"{r['p90_ms']:>7.2f} {r['p95_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['avg_queue_us']:>9} "
            f"{r['avg_compute_infer_us']:>9} {r['stability_pct']:>5}"
        )
    return "\n".join(lines)


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (bound together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.perf_analyzer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    parser.add_argument("--texts", type=int, default=256, help="real item titles to send (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the title sample")
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma-separated levels (default 1,2,4,8)")
    parser.add_argument("--measurement-ms", type=int, default=4000, help="measurement window (default 4000)")
    parser.add_argument("--max-trials", type=int, default=DEFAULT_MAX_TRIALS,
                        help=f"windows per try before giving up (default {DEFAULT_MAX_TRIALS})")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "var" / "bench" / "perf_analyzer",
                        help="input JSON, CSVs, logs (default var/bench/perf_analyzer)")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]

    settings = load_settings()
    try:
        find_perf_analyzer(ROOT)
    except PerfAnalyzerError as exc:
        print(f"[perf_analyzer] {exc}", file=sys.stderr)
        return 2
    texts = behaviour_texts(settings, args.texts, args.seed)
    http_port, grpc_port, metrics_port = _free_ports(3)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    triton: TritonServer | None = None
    try:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        print(f"[perf_analyzer] starting Triton on 127.0.0.1:{grpc_port} (gRPC)", flush=True)
        triton = start_triton(settings, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                              log_path=args.work_dir / "tritonserver.log")
        print(f"[perf_analyzer] {len(texts)} titles, concurrency {concurrencies}", flush=True)
        result = run_perf_analyzer(triton.grpc_url, settings.model_name, texts, concurrencies, args.work_dir,
                                   args.measurement_ms, max_len=settings.max_seq_len,
                                   max_trials=args.max_trials)
    except (TritonStartError, PerfAnalyzerError) as exc:
        print(f"[perf_analyzer] {exc}", file=sys.stderr)
        return 1
    finally:
        if triton is not None:
            triton.stop()
    print(f"perf_analyzer {result['version']} -> Triton {result['triton']}, model {result['model']}")
    print(format_table(result))
    for note in result["notes"]:
        print(f"note: {note}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
