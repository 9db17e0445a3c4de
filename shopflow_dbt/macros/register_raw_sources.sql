{#- on-run-start: make the source tables readable before any model runs.
    DuckDB: nothing to do (the ingest creates raw.orders and raw.orders_rejected in the warehouse). -#}
{% macro register_raw_sources() -%}
    {{ return(adapter.dispatch('register_raw_sources', 'shopflow')()) }}
{%- endmacro %}

{% macro default__register_raw_sources() -%}
{%- endmacro %}

{#- The Parquet files of each raw table, as the ingest writes them, Spark type per column; the
    partition column dt (date) comes from the directory names (`dt=YYYY-MM-DD`). -#}
{% macro raw_table_columns() -%}
    {{ return({
        'orders': [
            ('order_id', 'string'), ('line_number', 'int'), ('customer_id', 'string'),
            ('product_id', 'string'), ('quantity', 'int'), ('unit_price', 'decimal(18,2)'),
            ('discount', 'decimal(18,2)'), ('status', 'string'), ('ordered_at', 'timestamp'),
            ('updated_at', 'timestamp'), ('_source_file', 'string'), ('_source_line', 'bigint'),
            ('_loaded_at', 'timestamp'), ('_run_id', 'string'),
        ],
        'orders_rejected': [
            ('_source_file', 'string'), ('_source_line', 'bigint'), ('reason', 'string'),
            ('order_id', 'string'), ('line_number', 'string'), ('customer_id', 'string'),
            ('product_id', 'string'), ('quantity', 'string'), ('unit_price', 'string'),
            ('discount', 'string'), ('status', 'string'), ('ordered_at', 'string'),
            ('updated_at', 'string'), ('_raw_line', 'string'), ('_loaded_at', 'timestamp'),
            ('_run_id', 'string'),
        ],
    }) }}
{%- endmacro %}

{#- Spark: the ingest writes path-based Parquet under <warehouse>/raw.db/<table>/dt=YYYY-MM-DD/ and
    leaves the metastore alone. Register each table over its folder (external: dropping it never
    deletes the ingest's files) and sync its partitions with the folders: a new day appears, a day
    whose folder vanished disappears. -#}
{% macro spark__register_raw_sources() -%}
    {%- if execute -%}
        {%- set warehouse = run_query('set spark.sql.warehouse.dir').columns[1].values()[0] | string -%}
        {%- do run_query('create database if not exists raw') -%}
        {%- for table, columns in raw_table_columns().items() -%}
            {%- set location = warehouse.rstrip('/') ~ '/raw.db/' ~ table -%}
            {%- do run_query(
                'create table if not exists raw.' ~ table ~ ' ('
                ~ (columns | map('join', ' ') | join(', ')) ~ ', dt date)'
                ~ " using parquet partitioned by (dt) location '" ~ location ~ "'"
            ) -%}
            {%- do run_query('msck repair table raw.' ~ table ~ ' sync partitions') -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}
