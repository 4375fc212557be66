"""Daily ingest assets: raw → validated (+ quarantine) → features."""

from collections.abc import Iterator

import dagster as dg
import pandas as pd

from ml_platform.assets.results import markdown_table, partition_dates, partitioned_output
from ml_platform.core.contracts import (
    REASONS_COLUMN,
    ContractViolation,
    read_landing_bytes,
    read_landing_csv,
    validate_batch,
)
from ml_platform.core.features import build_features, encode_by_day
from ml_platform.core.storage import encode_frame, md5_bytes
from ml_platform.resources.io_manager import ParquetIOManager, stored_output
from ml_platform.resources.keys import asset_key
from ml_platform.resources.online_store import OnlineStore
from ml_platform.resources.platform import PlatformPaths
from ml_platform.settings import max_partitions_per_run
from ml_platform.specs import PipelineSpec

CONTRACT_CHECK = "contract"


def backfill_policy() -> dg.BackfillPolicy:
    """One run per backfill (embedded default), or runs of `ML_PLATFORM_MAX_PARTITIONS_PER_RUN`
    days that several workers share. A new day is one small run under both."""
    size = max_partitions_per_run()
    return dg.BackfillPolicy.multi_run(size) if size else dg.BackfillPolicy.single_run()


def build_ingest_assets(
    spec: PipelineSpec, partitions: dg.PartitionsDefinition
) -> list[dg.AssetsDefinition]:
    common = {
        "partitions_def": partitions,
        "backfill_policy": backfill_policy(),
        "group_name": spec.name,
    }
    raw_key, validated_key = asset_key(spec, "raw"), asset_key(spec, "validated")
    quarantine_key, features_key = asset_key(spec, "quarantine"), asset_key(spec, "features")

    @dg.asset(
        key=raw_key,
        io_manager_key="parquet_io",
        kinds={"csv", "pandas"},
        **common,
        description="The day's landing file, read as is (all values as text). Never modified.",
    )
    def raw(context: dg.AssetExecutionContext, paths: PlatformPaths) -> dg.Output:
        frames, hashes, errors = {}, {}, []
        for key in context.partition_keys:
            path = paths.landing_file(spec, key)
            try:  # read once: the md5 is of exactly the bytes parsed, even if the file changes
                data = read_landing_bytes(path, paths.landing_dir(spec))
                frames[key] = encode_frame(read_landing_csv(data, path.name))
                hashes[key] = md5_bytes(data)
            except Exception as exc:  # the CLI shows only the Failure text: it names the cause
                errors.append((key, exc))
        if errors:
            raise _failure("cannot read landing files", errors) from errors[0][1]
        source = {k: {"landing_file": str(paths.landing_file(spec, k))} for k in frames}
        return partitioned_output(context, frames, source, version_by_partition=hashes)

    @dg.multi_asset(
        name=f"{spec.name}__validated",  # op names are global: one per pipeline
        outs={
            "validated": dg.AssetOut(
                key=validated_key,
                io_manager_key="parquet_io",
                kinds={"pandera", "pandas"},
                description="Rows that pass the pandera data contract.",
            ),
            "quarantine": dg.AssetOut(
                key=quarantine_key,
                io_manager_key="parquet_io",
                description="Rows that failed the contract, with reasons.",
            ),
        },
        ins={"raw": dg.AssetIn(raw_key, metadata={"by_partition": True})},
        check_specs=[
            dg.AssetCheckSpec(
                CONTRACT_CHECK,
                asset=validated_key,
                blocking=True,
                description="The batch meets the data contract.",
            )
        ],
        **common,
    )
    def validated(context: dg.AssetExecutionContext, raw: dict[str, pd.DataFrame]) -> Iterator:
        days = {d.isoformat(): d for d in partition_dates(context)}
        results, errors, crashed = {}, [], []
        for key in list(raw):
            try:
                # Encode as we go and drop the frames: a backfill holds only bytes in memory.
                results[key] = _encoded_result(
                    validate_batch(raw.pop(key), spec.contract, days[key])
                )
            except ContractViolation as exc:
                errors.append((key, exc))
            except Exception as exc:  # a bug, not a broken contract: still name the cause
                crashed.append((key, exc))
        if crashed:
            raise _failure("validation failed unexpectedly", crashed) from crashed[0][1]
        if errors:
            yield _failed_contract_check(validated_key, errors)
            raise dg.Failure(
                "data contract broken; downstream assets will not run:\n"
                + "\n".join(f"{key}: {exc}" for key, exc in errors),
                metadata={
                    "failure_cases": markdown_table(errors[0][1].failure_cases),
                    "broken_partitions": ", ".join(key for key, _ in errors),
                },
            )
        yield from _validated_outputs(context, results, validated_key, quarantine_key)

    @dg.asset(
        key=features_key,
        io_manager_key="parquet_io",
        kinds={"pandas", "parquet"},
        ins={
            "validated": dg.AssetIn(
                validated_key,
                partition_mapping=dg.TimeWindowPartitionMapping(
                    start_offset=-spec.lookback_days, allow_nonexistent_upstream_partitions=True
                ),
            )
        },
        description="Feature rows (offline store) and latest row per entity (online store).",
        **common,
    )
    def features(
        context: dg.AssetExecutionContext,
        validated: pd.DataFrame,
        online_store: OnlineStore,
        parquet_io: dg.ResourceParam[ParquetIOManager],
    ) -> dg.Output:
        """Offline parquet first, online store second: a failed upsert (store down, disk full)
        fails the run with no online row the offline store lacks, and a re-run repeats both."""
        days = partition_dates(context)
        frame = build_features(validated, spec, days)
        encoded = encode_by_day(frame, spec.timestamp, [d.isoformat() for d in days])
        parquet_io.store(context.asset_key, encoded)
        written = online_store.write_latest(spec, frame)
        context.log.info(f"online store: {written} entity rows upserted")
        return stored_output(partitioned_output(context, encoded))

    return [raw, validated, features]


def _failure(summary: str, errors: list[tuple[str, Exception]]) -> dg.Failure:
    """A step failure whose message carries each partition's cause (the CLI prints only this)."""

    def cause(exc: Exception) -> str:
        return str(exc) if isinstance(exc, ContractViolation) else f"{type(exc).__name__}: {exc}"

    return dg.Failure(
        summary + ":\n" + "\n".join(f"{key}: {cause(exc)}" for key, exc in errors),
        # Which days broke, so a range run can be split around them (`runs.materialize`).
        metadata={"broken_partitions": ", ".join(key for key, _ in errors)},
    )


def _failed_contract_check(key: dg.AssetKey, errors: list) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=CONTRACT_CHECK,
        asset_key=key,
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(f"{k}: {e}" for k, e in errors)[:2000],
        metadata={
            "broken_partitions": ", ".join(k for k, _ in errors),
            "failure_cases": markdown_table(errors[0][1].failure_cases),
        },
    )


def _encoded_result(result) -> dict:
    """What the outputs need from one partition's validation, without keeping its frames."""
    return {
        "valid": encode_frame(result.valid),
        "quarantine": encode_frame(result.quarantine),
        "n_rows": result.n_rows,
        "details": {
            "rows_in": result.n_rows,
            "rows_quarantined": len(result.quarantine),
            "quarantine_fraction": float(result.quarantine_fraction),
            "failure_cases": markdown_table(result.failure_summary),
        },
        "reasons": {"reasons": markdown_table(result.quarantine[[REASONS_COLUMN]].head(20))},
    }


def _validated_outputs(context, results, validated_key, quarantine_key) -> Iterator:
    valid = {k: r["valid"] for k, r in results.items()}
    details = {k: r["details"] for k, r in results.items()}
    yield partitioned_output(
        context, valid, details, output_name="validated", asset_key=validated_key
    )
    quarantined = {k: r["quarantine"] for k, r in results.items()}
    reasons = {k: r["reasons"] for k, r in results.items()}
    yield partitioned_output(
        context, quarantined, reasons, output_name="quarantine", asset_key=quarantine_key
    )
    total_in = sum(r["n_rows"] for r in results.values())
    total_q = sum(r["quarantine"].rows for r in results.values())
    yield dg.AssetCheckResult(
        check_name=CONTRACT_CHECK,
        asset_key=validated_key,
        passed=True,
        metadata={
            "rows_in": total_in,
            "rows_quarantined": total_q,
            "quarantine_fraction": total_q / total_in if total_in else 0.0,
        },
    )
