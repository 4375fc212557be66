"""Record every successful run's data in DVC, so `dvc status` stays clean without a manual step."""

from __future__ import annotations

import dagster as dg

from ml_platform.resources.dvc import DvcError, DvcLedger
from ml_platform.resources.platform import default_root
from ml_platform.settings import data_root


def build_dvc_recorder(
    pipeline_of_job: dict[str, str], name: str = "dvc_recorder"
) -> dg.SensorDefinition:
    """After a successful run of one of these jobs, record that job's pipeline in DVC."""

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        name=name,
        monitor_all_code_locations=False,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After a successful ingest or training run: dvc commit + push.",
    )
    def dvc_recorder(context: dg.RunStatusSensorContext) -> dg.SkipReason | None:
        pipeline = pipeline_of_job.get(context.dagster_run.job_name)
        if pipeline is None:
            return dg.SkipReason(f"{context.dagster_run.job_name} writes no DVC-tracked data")
        root = default_root()
        if "://" in data_root(root):  # DVC versions a local workspace, not a bucket's objects
            return dg.SkipReason(f"data products live at {data_root(root)}, outside DVC's data/")
        ledger = DvcLedger(root)
        if not ledger.enabled:
            return dg.SkipReason("no .dvc/ and dvc.yaml in the project root")
        try:
            ledger.record([pipeline])
        except DvcError as exc:
            context.log.warning(f"could not record run {context.dagster_run.run_id} in DVC: {exc}")
            return dg.SkipReason(str(exc)[:500])
        context.log.info(f"recorded run {context.dagster_run.run_id} in DVC")
        return None

    return dvc_recorder
