"""ml_platform: production-grade ML pipelines as Dagster software-defined assets."""
