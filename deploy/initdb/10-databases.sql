-- One database for Dagster's instance, one for MLflow's tracking and registry.
CREATE DATABASE ml_platform_dagster;
CREATE DATABASE ml_platform_mlflow;
