"""The Dagster UI as users see it: lineage, Materialize and metadata, in a real browser.

`dagster dev` (webserver and daemon, with the workspace `make dev` uses) serves a temporary project
that was seeded and trained in process first, so the UI has history to show. Playwright drives
Debian's headless Chromium (`/usr/bin/chromium`): Playwright's own browser download is not
available on our machines, so `.ci/install_ui_deps.sh` installs both, and a missing browser fails
these tests with a message instead of skipping them. The tests run in file order against one
server; every wait polls against a deadline.

Screenshots go to a temp folder, so `make test` leaves the checkout clean; `make test-ui` sets
ML_PLATFORM_SCREENSHOT_DIR=docs/images to refresh the README's pictures when the UI changes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from ml_platform.instance import dagster_yaml
from ml_platform.specs import PipelineSpec
from ml_platform_tests.conftest import REPO_ROOT, generate, make_platform_root, wait_for
from ml_platform_tests.integration.test_definitions import EXPECTED_EDGES, PIPELINES

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

pytestmark = [pytest.mark.ui, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = "run `.ci/install_ui_deps.sh` (Debian chromium + the playwright package)"
PIPELINE = "sales_forecast"
STAGES = (
    "raw",
    "validated",
    "quarantine",
    "features",
    "training_set",
    "challenger",
    "promotion",
    "predictions",
    "drift_report",
)
LOCATION = PIPELINE  # workspace.yaml: one code location per pipeline; lineage URLs use it
STORES, DAYS, SEED = 4, 90, 3  # > 28 labelled days to train; seed 3 promotes a first champion
UI_TIMEOUT_MS = 120_000  # 2 cores shared with other jobs: generous, but every wait polls
RUN_TIMEOUT_S = 300.0  # a run is a fresh process importing pandas, sklearn and mlflow
STARTUP_TIMEOUT_S = 240.0
PAGE = {"width": 1600, "height": 1000}
# Wide enough for the graph to draw full nodes (status, checks, partitions), not bare labels.
LINEAGE = {"width": 2240, "height": 720}
SCREENSHOTS = Path(
    os.environ.get("ML_PLATFORM_SCREENSHOT_DIR")
    or Path(tempfile.gettempdir()) / "ml_platform_screenshots"
)
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}

ASSET_NODES = "{ assetNodes { groupName assetKey { path } dependencyKeys { path } } }"
READINESS = """{
  workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } }
  instance { daemonHealth { allDaemonStatuses { daemonType healthy } } }
}"""
LAUNCH_RUN = """mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
  }
}"""
RUN = """query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status jobName tags { key value } assetSelection { path } }
  }
}"""
AUTOMATIONS = """{
  repositoriesOrError { ... on RepositoryConnection { nodes {
    location { name } sensors { name } schedules { name } } } }
}"""
MATERIALIZATIONS = """query Materializations($path: [String!]!, $partitions: [String!]) {
  assetOrError(assetKey: { path: $path }) {
    ... on Asset { assetMaterializations(partitions: $partitions, limit: 1) { runId partition } }
  }
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def day(spec: PipelineSpec, offset: int) -> str:
    return (spec.landing.start_date + timedelta(days=offset)).isoformat()


class DagsterDev:
    """`dagster dev` in its own session, so its webserver, daemon, code servers and run workers
    can all be ended together."""

    def __init__(self, root: Path, env: dict[str, str], log: Path) -> None:
        self.root, self.env, self.log = root, env, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.client = httpx.Client(base_url=self.url, timeout=60.0)

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-w",
            str(REPO_ROOT / "workspace.yaml"),
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.root,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        """SIGTERM the whole session (dagster dev shuts its children down), then SIGKILL it."""
        self.client.close()
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # stragglers: code servers, run workers
        self.process.wait(timeout=30)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.client.post("/graphql", json={"query": query, "variables": variables or {}})
        response.raise_for_status()
        payload = response.json()
        assert not payload.get("errors"), payload["errors"]
        return payload["data"]

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"dagster dev exited with {self.process.returncode}")
        try:
            data = self.graphql(READINESS)
        except httpx.HTTPError:
            return False
        entries = {e["name"]: e for e in data["workspaceOrError"]["locationEntries"]}
        entry = entries.get(LOCATION)
        if entry is None or entry["loadStatus"] != "LOADED":
            return False
        location = entry["locationOrLoadError"]
        assert location["__typename"] == "RepositoryLocation", location.get("message", location)
        daemons = data["instance"]["daemonHealth"]["allDaemonStatuses"]
        return any(d["daemonType"] == "QUEUED_RUN_COORDINATOR" and d["healthy"] for d in daemons)

    def wait_ready(self) -> None:
        """Until the code location is loaded and the daemon that dequeues runs is healthy."""
        try:
            wait_for(self._ready, STARTUP_TIMEOUT_S, "dagster dev to load the code location")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- dagster dev log ---\n{self.logs()}") from exc
        self.graphql("mutation { setNuxSeen }")  # the first-visit community dialog covers pages

    def run(self, run_id: str) -> dict[str, Any]:
        run = self.graphql(RUN, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        return run

    def wait_run(self, run_id: str) -> dict[str, Any]:
        try:
            return wait_for(
                lambda: (run := self.run(run_id))["status"] in TERMINAL and run,
                RUN_TIMEOUT_S,
                f"run {run_id} to finish",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- dagster dev log ---\n{self.logs()}") from exc

    def latest_materialization(self, key: str, partition: str | None) -> dict[str, Any] | None:
        variables = {"path": key.split("/"), "partitions": [partition] if partition else None}
        records = self.graphql(MATERIALIZATIONS, variables)["assetOrError"]
        return (records.get("assetMaterializations") or [None])[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, spec: PipelineSpec) -> Iterator[DagsterDev]:
    """A seeded, trained project behind `dagster dev`; seeding runs in process, as `make demo`."""
    from ml_platform.demo import run_demo

    base = tmp_path_factory.mktemp("ui")
    root = make_platform_root(base / "project")
    home = base / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(dagster_yaml(home))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(home))
        patch.setenv("ML_PLATFORM_ROOT", str(root))
        for name in ("MLFLOW_TRACKING_URI", "ML_PLATFORM_SPEC_DIR", "ML_PLATFORM_ALERT_WEBHOOK"):
            patch.delenv(name, raising=False)
        patch.chdir(root)
        generate(root, spec, stores=STORES, days=DAYS, seed=SEED)
        assert run_demo(root, spec.name) == 0, "seeding the UI project with `run_demo` failed"
        env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH")] if p)
    dev = DagsterDev(root, env, base / "dagster_dev.log")
    dev.start()
    try:
        dev.wait_ready()
        yield dev
    finally:
        dev.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium under Playwright; a missing piece fails loudly rather than skipping."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the playwright package is not installed: {INSTALL_HINT}", pytrace=False)
    if not CHROMIUM.exists():
        pytest.fail(f"no browser at {CHROMIUM}: {INSTALL_HINT}", pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=UI_TIMEOUT_MS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def ui(browser: Browser, server: DagsterDev) -> Iterator[Page]:
    from playwright.sync_api import expect

    # Every pipeline is its own code location (its own process): on a busy machine one can be
    # reloading when a page opens, and then shows its assets as external. Wait until all load.
    server.wait_ready()
    expect.set_options(timeout=30_000)
    context = browser.new_context(viewport=PAGE)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def screenshot(page: Page, name: str, height: int | None = None) -> None:
    """Save a README picture once icons and fonts have loaded (cut to `height` if given)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):  # live updates may keep the network busy
        page.wait_for_load_state("networkidle", timeout=15_000)
    size = page.viewport_size
    clip = {"x": 0, "y": 0, "width": size["width"], "height": height} if height and size else None
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / name, animations="disabled", clip=clip)  # dialogs fade in


def metadata_row(page: Page, key: str) -> Locator:
    """The row of an asset page's metadata table whose key cell is exactly `key`."""
    return page.get_by_role("row").filter(has=page.get_by_role("cell", name=key, exact=True))


def settled(locator: Locator, timeout: float = 30.0) -> None:
    """Until the graph stops moving (it lays out and zooms to fit after data arrives)."""

    def unchanged() -> bool:
        before = locator.bounding_box()
        time.sleep(0.5)
        return before is not None and before == locator.bounding_box()

    wait_for(unchanged, timeout, "the lineage graph to settle", poll=0.2)


def test_graphql_serves_the_whole_graph_with_its_edges(server: DagsterDev):
    nodes = server.graphql(ASSET_NODES)["assetNodes"]
    edges = {
        "/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]}
        for n in nodes
    }
    assert edges == EXPECTED_EDGES  # every shipped pipeline, each from its own code location
    assert {n["groupName"] for n in nodes} == set(PIPELINES)
    assert {e for e in edges if e.startswith(f"{PIPELINE}/")} == {
        f"{PIPELINE}/{stage}" for stage in STAGES
    }


def test_lineage_view_shows_every_stage(server: DagsterDev, browser: Browser):
    from playwright.sync_api import expect

    context = browser.new_context(viewport=LINEAGE, device_scale_factor=1.5)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(f"{server.url}/locations/{LOCATION}/asset-groups/{PIPELINE}")
        page.get_by_text("Hide navigation").click()  # room for full nodes in the screenshot
        graph = page.locator("svg").filter(has=page.get_by_text("drift_report", exact=True))
        viewport = page.viewport_size
        assert viewport is not None
        for stage in STAGES:
            node = graph.get_by_text(stage, exact=True)
            expect(node).to_be_visible()
        # Full nodes (not bare labels) with their status loaded: the view users read.
        expect(graph.get_by_text("Latest event").first).to_be_visible()
        expect(graph.get_by_text(re.compile(r"^[\d,]+ partitions$")).first).to_be_visible()
        expect(graph.get_by_text(re.compile(r"^Loading"))).to_have_count(0)
        settled(graph.get_by_text("drift_report", exact=True))
        for stage in STAGES:
            box = graph.get_by_text(stage, exact=True).bounding_box()
            assert box is not None, stage
            inside = box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"]
            assert inside and 0 <= box["y"] <= viewport["height"] - box["height"], (stage, box)
        screenshot(page, "lineage.png")
    finally:
        context.close()


def test_materialize_one_partition_of_validated_from_the_ui(
    server: DagsterDev, ui: Page, spec: PipelineSpec
):
    from playwright.sync_api import expect

    partition = day(spec, 60)
    assert (server.root / spec.landing.directory / f"{partition}.csv").exists()
    ui.goto(f"{server.url}/assets/{PIPELINE}/validated")
    ui.get_by_role("button", name="Materialize…").click()
    launch = ui.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    # validated and quarantine are one multi-asset: the UI first asks to confirm both
    confirm = ui.get_by_role("button", name="Confirm", exact=True)
    expect(confirm.or_(launch).first).to_be_visible()
    if confirm.is_visible():
        confirm.click()
    # The dialog opens on the last 90 days; the seeded history is older than that.
    launch.get_by_text("Show all partitions").click()
    keys = launch.get_by_placeholder(re.compile(r"^ex: "))
    keys.fill(partition)
    keys.press("Enter")
    expect(launch.get_by_text("1 partition", exact=True)).to_be_visible()
    screenshot(ui, "materialize_partition.png")
    launch.get_by_role("button", name="Launch 1 run").click()

    ui.get_by_role("link", name="View", exact=True).click()  # the "Launched run …" toast
    ui.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    run_id = ui.url.split("/runs/")[1].split("?")[0]
    status = ui.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    expect(status).to_be_visible(timeout=RUN_TIMEOUT_S * 1000)
    run = server.run(run_id)
    assert status.inner_text() == "Success", (run, server.logs())
    ui.reload()  # drop the toast and draw the finished run from scratch for the screenshot
    expect(ui.get_by_text("Success", exact=True).first).to_be_visible()
    expect(ui.get_by_text(f"partition: {partition}")).to_be_visible()
    expect(ui.get_by_text("RUN_SUCCESS", exact=True)).to_be_visible()
    # The op is named after its pipeline (op names are global in a code location).
    op = f"{PIPELINE}__validated"
    step = ui.locator(".chart-element.box").filter(has_text=re.compile(rf"^{op}$"))
    expect(step).to_have_attribute("style", re.compile(r"accent-green"))  # the Gantt bar
    screenshot(ui, "run_validated.png")

    assert run["status"] == "SUCCESS"
    assert {"key": "dagster/partition", "value": partition} in run["tags"]
    assert [PIPELINE, "validated"] in [a["path"] for a in run["assetSelection"]]
    latest = server.latest_materialization(f"{PIPELINE}/validated", partition)
    assert latest == {"runId": run_id, "partition": partition}


def test_promotion_page_shows_the_decision_and_its_evidence(server: DagsterDev, ui: Page):
    from playwright.sync_api import expect

    ui.goto(f"{server.url}/assets/{PIPELINE}/promotion")
    expect(metadata_row(ui, "decision")).to_contain_text("promoted")
    expect(metadata_row(ui, "reason")).to_contain_text("significantly better than the baseline")
    for key in ("mae_challenger", "mae_baseline", "p_value_vs_baseline"):
        expect(metadata_row(ui, key)).to_be_visible()
    screenshot(ui, "asset_promotion.png")


def test_drift_report_page_shows_the_report(server: DagsterDev, ui: Page):
    from playwright.sync_api import expect

    ui.goto(f"{server.url}/assets/{PIPELINE}/drift_report")
    metadata_row(ui, "report").get_by_text("[Show Markdown]").click()
    report = ui.get_by_role("dialog")
    expect(report).to_contain_text("Dataset drift")
    expect(report.get_by_role("cell", name="units_sold_lag_7", exact=True)).to_be_visible()
    screenshot(ui, "drift_report.png")
    ui.keyboard.press("Escape")
    metadata_row(ui, "plot").get_by_text("[Show Markdown]").click()
    plot = ui.get_by_role("dialog").get_by_role("img", name="top drifted features")
    expect(plot).to_be_visible()  # the SVG data URI passes Dagster's Markdown sanitiser
    width = plot.evaluate("img => img.complete ? img.naturalWidth : 0")
    assert width >= 300, f"the drift plot did not render (natural width {width})"


def test_automation_page_lists_every_sensor_and_schedule(server: DagsterDev, ui: Page):
    """Where a user sees what the sensors did; names come from the code, so new ones count."""
    from playwright.sync_api import expect

    repositories = server.graphql(AUTOMATIONS)["repositoriesOrError"]["nodes"]
    (repository,) = [r for r in repositories if r["location"]["name"] == LOCATION]
    names = [i["name"] for i in repository["sensors"] + repository["schedules"]]
    assert names, "the code location defines no sensor or schedule"
    ui.goto(f"{server.url}/automation")
    for name in names:
        expect(ui.get_by_text(name, exact=True)).to_be_visible()
    screenshot(ui, "automation.png", height=max(360, 200 + 62 * len(names)))


@pytest.mark.parametrize(("stage", "offset"), [("raw", 30), ("training_set", None)])
def test_graphql_launch_of_one_asset_through_the_asset_job_succeeds(
    server: DagsterDev, spec: PipelineSpec, stage: str, offset: int | None
):
    """What the independent check does: `launchRun` of `__ASSET_JOB` with one asset selected."""
    partition = day(spec, offset) if offset is not None else None
    tags = [{"key": "dagster/partition", "value": partition}] if partition else []
    params = {
        "selector": {
            "repositoryLocationName": LOCATION,
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": [PIPELINE, stage]}],
        },
        "executionMetadata": {"tags": tags},
    }
    launched = server.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    run = server.wait_run(run_id)
    assert run["status"] == "SUCCESS", (run, server.logs())
    assert run["jobName"] == "__ASSET_JOB"
    latest = server.latest_materialization(f"{PIPELINE}/{stage}", partition)
    assert latest == {"runId": run_id, "partition": partition}
