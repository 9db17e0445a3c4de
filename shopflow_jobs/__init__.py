"""Programs that run on an engine's side (the Spark ingest), importing only dagster_pipes and the contract."""
