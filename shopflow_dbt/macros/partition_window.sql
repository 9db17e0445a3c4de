{#- The rows of the partition window being built: [var('min_date'), var('max_date')). -#}
{% macro partition_window(column='dt') -%}
    {{ column }} >= cast('{{ var("min_date") }}' as date) and {{ column }} < cast('{{ var("max_date") }}' as date)
{%- endmacro %}

{#- Pre-hook of the incremental marts: empty the window first, so that a day whose rebuild is
    empty ends empty (delete+insert on unique_key, or a dynamic partition overwrite, would leave
    its old rows in place). -#}
{% macro clear_partition_window(column='dt') -%}
    {{ return(adapter.dispatch('clear_partition_window', 'shopflow')(column)) }}
{%- endmacro %}

{#- DuckDB (the default): the model is appended to, so delete the window first; dbt runs the
    pre-hook in the model's transaction, so readers never see the window half-built. -#}
{% macro default__clear_partition_window(column) -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ partition_window(column) }}
    {%- endif -%}
{%- endmacro %}

{#- Spark: Parquet tables take no DELETE. The model is an `insert_overwrite` of its `dt` partitions
    (dynamic mode: only the days in the result are replaced), so drop the window's partitions
    first, which deletes their files (managed tables): a day whose rebuild is empty then has no
    partition. The partitions to drop are read from the table (`show partitions`), not generated
    from the window, so that a plain `dbt build` (window 1900-01-01..9999-12-31) works too;
    Spark's DROP PARTITION takes equality only, one spec per day, all in one statement. -#}
{% macro spark__clear_partition_window(column) -%}
    {%- if execute and is_incremental() -%}
        {%- set lo, hi = var('min_date') | string, var('max_date') | string -%}
        {%- set days = [] -%}
        {%- for row in run_query('show partitions ' ~ this) -%}
            {#- one partition column: `dt=YYYY-MM-DD` -#}
            {%- set day = row[0].split('=', 1)[1] -%}
            {%- if lo <= day < hi -%}{%- do days.append(day) -%}{%- endif -%}
        {%- endfor -%}
        {%- if days -%}
            alter table {{ this }} drop if exists
            {%- for day in days %} partition ({{ column }} = '{{ day }}'){{ ',' if not loop.last }}{% endfor %}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}
