"""Serving throughput and latency: `ml-platform serve` against `mlflow models serve`, same model.

    .venv/bin/python bench/serving.py [--quick] [--rounds N] [--root DIR] [--save] [--strict]

A trained platform is built in a temporary root (`ml-platform generate --stores 40 --products 3
--days 300 --seed 5`, then `ml-platform demo`: champion v1, 120 entities online), or `--root DIR`
is reused when it already has a champion. The champion version is downloaded from the registry
and served by MLflow's own scoring server, which is fed the very feature row our app looks up for
the same entity. Three servers run one at a time, each alone under load:

- ours: `ml-platform serve --workers 2`, `POST /v1/sales_forecast/predict` with entity keys;
- mlflow-best: `mlflow models serve --workers 2` with `OMP_NUM_THREADS=1`;
- mlflow-default: `mlflow models serve` with its defaults (one worker, no thread limit).

Each gets a 3 s warm-up, then wrk (`apt-get install wrk`) at 1 and 8 connections, one entity per
request, cycling over all entities (`bench/wrk_predict.lua`): three 15 s runs per load with fresh
connections (`--rounds`; one 5 s run with `--quick`), of which the median is reported. Rounds are
needed because uvicorn workers share one listening socket and the first worker awake may accept
all 8 connections: the table shows each round's busiest worker share (50 % is an even split).
It also shows the share of the CPU that other processes took during the run.
Afterwards our answers for 5 entities must equal MLflow's (clipped at 0, as ours are). Targets:
ours/mlflow-best req/s at 8 connections >= 3.0, our p99 at 8 connections <= 25 ms, no errors.
Exit status: 2 without wrk, 1 on a failed run (or a missed target with `--strict`), else 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
BIN = Path(sys.prefix) / "bin"
LUA = Path(__file__).with_name("wrk_predict.lua")
PIPELINE = "sales_forecast"
LOADS = ((1, 1), (8, 2))  # (connections, wrk threads)
MIN_RATIO, MAX_P99_MS, PARITY_N = 3.0, 25.0, 5
SMALL_STORE, MAX_P99_GROWTH, MIN_WRITE_SHARE = 1000, 1.5, 0.5  # --entities targets
BUSY_PCT = 10  # other processes' share of the CPU above which the figures are flagged
# Settings that would point a child at another root or pin its thread pools.
SCRUBBED = (
    "ML_PLATFORM_ROOT", "ML_PLATFORM_SPEC_DIR", "ML_PLATFORM_ONLINE_STORE_URL", "DAGSTER_HOME",
    "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
)  # fmt: skip


class Server(NamedTuple):
    name: str
    command: list[str]  # without --port
    env: dict[str, str]
    workers: int
    ready_path: str
    predict_path: str
    bodies: Path  # one request body per line, one entity each
    parity_body: str  # the first PARITY_N entities in one request


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra}


def tail(log: Path, lines: int = 25) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def build_platform(root: Path, log: Path) -> None:
    """A trained platform under `root`: landing files, features, champion v1, online store."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "params.yaml").exists():
        shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    generate = ["generate", "--stores", "40", "--products", "3", "--days", "300", "--seed", "5"]
    for args in (generate, ["demo", "--pipeline", PIPELINE]):  # the one pipeline served
        with log.open("ab") as out:
            done = subprocess.run(
                [str(BIN / "ml-platform"), *args], cwd=root, env=child_env(), stdout=out, stderr=out
            )
        if done.returncode:
            raise RuntimeError(f"ml-platform {args[0]} failed:\n{tail(log)}")


def download_champion(root: Path, into: Path) -> tuple[str, Path] | None:
    """The champion's version and MLflow model folder, through the root's own registry."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root}/.ml_platform/mlflow.db"
    if not (root / ".ml_platform" / "mlflow.db").exists():
        return None
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        version = client.get_model_version_by_alias(PIPELINE, "champion").version
    except MlflowException:
        return None
    source = client.get_model_version_download_uri(PIPELINE, version)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=source, tracking_uri=uri, dst_path=into
    )
    return version, Path(local)


def online_rows(root: Path) -> list[dict]:
    """The feature row of every entity in the online store, sorted by entity id."""
    path = root / ".ml_platform" / "online_store.sqlite"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        found = conn.execute(
            "SELECT row FROM features WHERE pipeline = ? ORDER BY entity", [PIPELINE]
        ).fetchall()
    return [json.loads(row) for (row,) in found]


def ours_body(spec, rows: list[dict]) -> str:
    return json.dumps({"entities": [{k: row[k] for k in spec.entity_keys} for row in rows]})


def mlflow_body(spec, rows: list[dict]) -> str:
    """The same feature row our app looks up, as MLflow's `dataframe_split` input."""
    columns = list(spec.feature_columns)
    data = [[row[c] for c in columns] for row in rows]
    return json.dumps({"dataframe_split": {"columns": columns, "data": data}})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: str) -> dict:
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def wait_ready(proc: subprocess.Popen, url: str, log: Path, workers: int) -> None:
    """Ready when `url` answers 200 and every worker has logged that its startup completed, so
    that keep-alive connections are not all accepted by the first worker up."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail(log)}")
        started = log.read_text(errors="replace").count("Application startup complete")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200 and started >= workers:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after 180 s:\n{tail(log)}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn master and workers), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def cpu_sample(pgid: int) -> tuple[float, int, dict[str, int], float]:
    """(time, busy ticks of the machine, ticks of each server process, wrk's CPU seconds)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    group = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == pgid:
            group[stat.parent.name] = int(fields[11]) + int(fields[12])
    children = os.times()  # wrk is the only child waited for between two samples
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    return time.monotonic(), busy, group, children.children_user + children.children_system


def group_rss_mb(pgid: int) -> float:
    """Resident memory of the server's processes (uvicorn master and workers) together."""
    pages = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pages += int(fields[21])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_shares(before: tuple, after: tuple) -> dict[str, float]:
    """The busiest server process's share of the server's CPU (50 % is an even split between
    two workers: uvicorn workers share one listening socket and a worker that wakes first can
    accept every connection), and the share of the machine that others took meanwhile."""
    hz = os.sysconf("SC_CLK_TCK")
    per_process = [ticks - before[2].get(pid, 0) for pid, ticks in after[2].items()]
    server = sum(per_process)
    elapsed, busy, wrk_seconds = after[0] - before[0], after[1] - before[1], after[3] - before[3]
    other = max(busy - server - wrk_seconds * hz, 0) / (elapsed * hz * os.cpu_count()) * 100
    return {"top_worker_pct": max(per_process) / max(server, 1) * 100, "other_cpu_pct": other}


def wrk(url: str, bodies: Path, connections: int, threads: int, seconds: int) -> dict:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    command += ["-s", str(LUA), url, "--", str(bodies)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    lines = [x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")]
    if out.returncode or not lines:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    result = json.loads(lines[-1].removeprefix("WRK_JSON "))
    latency, errors = result["latency_us"], result["errors"]
    return {
        "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p50_ms": latency["p50"] / 1000,
        "p99_ms": latency["p99"] / 1000,
        "errors": sum(errors.values()),
        "error_kinds": {k: v for k, v in errors.items() if v},
        "requests": result["requests"],
    }


def measure(server: Server, cwd: Path, seconds: int, rounds: int, logs: Path) -> dict:
    """Start one server, load it at each concurrency, ask it the parity question, stop it.

    Each load runs `rounds` times with fresh connections; the round with the median req/s is
    reported, with the errors of all rounds."""
    log, port = logs / f"{server.name}.log", free_port()
    url = f"http://127.0.0.1:{port}{server.predict_path}"
    with log.open("wb") as out:
        command = [*server.command, "--port", str(port)]
        proc = subprocess.Popen(
            command, cwd=cwd, env=server.env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}{server.ready_path}", log, server.workers)
        wrk(url, server.bodies, 8, 2, 3)  # warm-up: first predictions, allocator, caches
        runs = {}
        for connections, threads in LOADS:
            done = []
            for _ in range(rounds):
                before = cpu_sample(proc.pid)
                run = wrk(url, server.bodies, connections, threads, seconds)
                done.append({**run, **cpu_shares(before, cpu_sample(proc.pid))})
                print(f"  {server.name:<15} c{connections}: {run['rps']:8.1f} req/s", flush=True)
            done.sort(key=lambda r: r["rps"])
            runs[connections] = {
                **done[len(done) // 2],
                "errors": sum(r["errors"] for r in done),
                "error_kinds": dict(sum((Counter(r["error_kinds"]) for r in done), Counter())),
                "rounds": [{k: r[k] for k in ("rps", "p99_ms", "top_worker_pct")} for r in done],
            }
        parity = post(url, server.parity_body)["predictions"]
        return {"runs": runs, "parity": parity, "rss_mb": group_rss_mb(proc.pid)}
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one 5 s run per load")
    parser.add_argument("--rounds", type=int, help="runs per load (default 3, 1 with --quick)")
    parser.add_argument("--root", type=Path, help="reuse (or build) a platform in this folder")
    parser.add_argument("--save", action="store_true", help="write bench/results/serving.json")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and logs")
    parser.add_argument(
        "--entities", type=int, default=0, help="fill the online store with this many entities"
    )
    parser.add_argument(
        "--redis-url",
        help="with --entities: also fill this Redis (keys under a unique prefix, deleted after);"
        " default: a private redis-server on a free port when one is installed",
    )
    parser.add_argument("--no-redis", action="store_true", help="with --entities: SQLite only")
    args = parser.parse_args(argv)
    if args.entities and args.entities < 2 * SMALL_STORE:
        parser.error(f"--entities must be at least {2 * SMALL_STORE}")
    args.seconds = 5 if args.quick else 15
    args.rounds = args.rounds or (1 if args.quick else 3)
    if shutil.which("wrk") is None:
        print("wrk is not installed: run `apt-get install wrk` (Debian/Ubuntu)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        return run(args, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    from ml_platform.specs import load_specs

    root = (args.root or work / "root").resolve()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    print(f"root {root}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    champion = download_champion(root, work / "model")
    if champion is None:
        print("building the platform (generate + demo, about a minute) ...", flush=True)
        build_platform(root, work / "setup.log")
        champion = download_champion(root, work / "model")
    version, model_dir = champion
    spec = next(s for s in load_specs(root=root) if s.name == PIPELINE)
    rows = online_rows(root)
    ours_bodies, mlflow_bodies = work / "ours.jsonl", work / "mlflow.jsonl"
    ours_bodies.write_text("".join(ours_body(spec, [r]) + "\n" for r in rows))
    mlflow_bodies.write_text("".join(mlflow_body(spec, [r]) + "\n" for r in rows))
    print(
        f"champion v{version}, {len(rows)} entities, {args.rounds} x {args.seconds} s per load",
        flush=True,
    )

    ours = [str(BIN / "ml-platform"), "serve", "--host", "127.0.0.1", "--workers", "2"]
    mlflow = [str(BIN / "mlflow"), "models", "serve", "-m", str(model_dir)]
    mlflow += ["--env-manager", "local", "--host", "127.0.0.1"]
    # MLflow 3 gates every sklearn format, skops included, behind this flag (default: true).
    trust = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}
    ours_parity, mlflow_parity = (
        ours_body(spec, rows[:PARITY_N]),
        mlflow_body(spec, rows[:PARITY_N]),
    )
    predict = f"/v1/{PIPELINE}/predict"
    servers = [
        Server("ours", ours, child_env(), 2, "/readyz", predict, ours_bodies, ours_parity),
        Server("mlflow-best", [*mlflow, "--workers", "2"], child_env(OMP_NUM_THREADS="1", **trust),
               2, "/ping", "/invocations", mlflow_bodies, mlflow_parity),
        Server("mlflow-default", mlflow, child_env(**trust), 1, "/ping", "/invocations",
               mlflow_bodies, mlflow_parity),
    ]  # fmt: skip
    scale = None
    if args.entities:
        from scale_serving import prepare_scale

        def make_server(name: str, store_url: str, extra_rows: list[dict]) -> Server:
            bodies = work / f"{name}.jsonl"
            bodies.write_text("".join(ours_body(spec, [r]) + "\n" for r in [*rows, *extra_rows]))
            env = child_env(ML_PLATFORM_ONLINE_STORE_URL=store_url)
            return Server(name, ours, env, 2, "/readyz", predict, bodies, ours_parity)

        scale, extra = prepare_scale(args, spec, rows, work, make_server)
        servers = [*extra, *servers[1:]]  # the large store's server is "ours"
    try:
        results = {s.name: measure(s, root, args.seconds, args.rounds, work) for s in servers}
    finally:
        if scale and scale.get("cleanup"):
            scale.pop("cleanup")()
    return report(results, args, version, args.entities or len(rows), scale)


def report(
    results: dict, args: argparse.Namespace, version: str, entities: int, scale: dict | None
) -> int:
    row = "{:<15} {:>5} {:>7} {:>7} {:>7} {:>6} {:>11}  {}".format
    print()
    print(row("server", "conns", "req/s", "p50 ms", "p99 ms", "errors", "other CPU %",
              "each round: req/s (busiest worker's share of the server's CPU)"))  # fmt: skip
    for name, result in results.items():
        for connections, r in result["runs"].items():
            each = ", ".join(f"{x['rps']:.0f} ({x['top_worker_pct']:.0f} %)" for x in r["rounds"])
            kinds = f"  {r['error_kinds']}" if r["errors"] else ""
            cells = [f"{r['rps']:.1f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", r["errors"]]
            cells += [f"{r['other_cpu_pct']:.0f}", each + kinds]
            print(row(name, connections, *cells))
    print("server RSS after the load: " + ", ".join(
        f"{name} {r['rss_mb']:,.0f} MB" for name, r in results.items()))  # fmt: skip
    busiest = max(r["other_cpu_pct"] for x in results.values() for r in x["runs"].values())
    if busiest > BUSY_PCT:
        print(f"warning: other processes took up to {busiest:.0f} % of the CPU during a run,")
        print("so these figures are not clean: rerun when the machine is quiet")
    ours, best = results["ours"]["runs"], results["mlflow-best"]["runs"]
    ratio = ours[8]["rps"] / best[8]["rps"]
    errors = sum(r["errors"] for r in ours.values())
    targets = [
        (f"ours / mlflow-best req/s at 8 connections: {ratio:.2f} (>= {MIN_RATIO})",
         ratio >= MIN_RATIO),
        (f"our p99 at 8 connections: {ours[8]['p99_ms']:.2f} ms (<= {MAX_P99_MS} ms)",
         ours[8]["p99_ms"] <= MAX_P99_MS),
        (f"our errors: {errors} (0)", errors == 0),
    ]  # fmt: skip
    if scale:
        from scale_serving import print_scale, scale_targets

        print_scale(scale)
        targets += scale_targets(scale, results, MAX_P99_GROWTH, MIN_WRITE_SHARE)
    ours_values = [p["prediction"] for p in results["ours"]["parity"]]
    for name in ("mlflow-best", "mlflow-default"):
        theirs = [max(float(p), 0.0) for p in results[name]["parity"]]
        pairs = zip(ours_values, theirs, strict=True)
        same = sum(math.isclose(a, b, rel_tol=1e-9) for a, b in pairs)
        targets.append((f"parity with {name}: {same}/{PARITY_N} identical", same == PARITY_N))
    print()
    for text, met in targets:
        print(f"{text:<60} {'met' if met else 'NOT met'}")
    if args.save:
        path = REPO_ROOT / "bench" / "results" / "serving.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        summary = {"champion_version": version, "entities": entities, "seconds": args.seconds}
        summary["scale"] = scale
        path.write_text(json.dumps({**summary, "servers": results, "ratio_c8": ratio}, indent=2))
        print(f"wrote {path}")
    return 1 if args.strict and not all(met for _, met in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
