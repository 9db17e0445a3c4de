"""Console commands: sample data, revenue, push, the dbt executable, friendly CLI errors."""
