{#- Where the SQL dialects of the engines (DuckDB, Spark) differ, beyond dbt's cross-database
    macros (dbt.type_string(), ...). -#}

{#- A timestamp that is an instant, in UTC: DuckDB's TIMESTAMPTZ; Spark's TIMESTAMP (with
    spark.sql.parquet.outputTimestampType TIMESTAMP_MICROS its Parquet files say isAdjustedToUTC,
    and DuckDB reads them back as TIMESTAMPTZ). -#}
{% macro type_timestamp_utc() -%}
    {{ return(adapter.dispatch('type_timestamp_utc', 'shopflow')()) }}
{%- endmacro %}

{% macro default__type_timestamp_utc() -%}
    timestamptz
{%- endmacro %}

{% macro spark__type_timestamp_utc() -%}
    timestamp
{%- endmacro %}

{#- The UTC calendar date of an instant, whatever the session's time zone. -#}
{% macro utc_date(expression) -%}
    {{ return(adapter.dispatch('utc_date', 'shopflow')(expression)) }}
{%- endmacro %}

{% macro default__utc_date(expression) -%}
    cast(timezone('UTC', {{ expression }}) as date)
{%- endmacro %}

{#- Spark's cast to date uses the session time zone: count whole UTC days since the epoch instead. -#}
{% macro spark__utc_date(expression) -%}
    date_from_unix_date(cast(floor(unix_seconds({{ expression }}) / 86400) as int))
{%- endmacro %}
