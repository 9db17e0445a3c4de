"""The contract, written once: the export's columns and rules, the landing zone's rules, the raw
tables' schema and the asset keys (docs/contract.md). Pure standard library, but asset_keys: the
Spark job imports it outside the code location."""
