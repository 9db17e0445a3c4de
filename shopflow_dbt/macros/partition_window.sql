{#- The rows of the partition window being built: [min_date, max_date). -#}
{% macro partition_window(column='dt') -%}
    {%- set min_date, max_date = partition_window_bounds() -%}
    {{ column }} >= cast('{{ min_date }}' as date) and {{ column }} < cast('{{ max_date }}' as date)
{%- endmacro %}

{#- The window's bounds as YYYY-MM-DD strings. Dagster passes them in the environment,
    SHOPFLOW_DBT_MIN_DATE / SHOPFLOW_DBT_MAX_DATE, read only when dbt executes (`execute`), never
    while it parses: dbt re-parses the whole project when --vars change, and re-parses a file whose
    env_var() value changed, so a window read at parse time would cost a parse on every run. The
    SQL a node is parsed with does not matter (parsing only collects refs and configs). Without
    them (a plain `dbt build`, or `--vars '{min_date: ..., max_date: ...}'` by hand) the vars of
    dbt_project.yml apply: every day.
    The bounds are checked here: Spark (dbt-spark turns ANSI mode off) would cast a malformed date
    to NULL and silently build an empty window. -#}
{% macro partition_window_bounds() -%}
    {%- set bounds = [] -%}
    {%- for name in ['min_date', 'max_date'] -%}
        {%- set setting = 'SHOPFLOW_DBT_' ~ (name | upper) -%}
        {%- set value = (env_var(setting, '') if execute else '') or (var(name) | string) -%}
        {%- set ymd = modules.re.fullmatch('([0-9]{4})-([0-9]{2})-([0-9]{2})', value) -%}
        {%- set y, m, d = (ymd.groups() | map('int') | list) if ymd else (0, 0, 0) -%}
        {%- set valid = y >= 1 and 1 <= m <= 12 and 1 <= d <= 28 -%}
        {%- if y >= 1 and 1 <= m <= 11 and d > 28 -%}
            {%- set valid = d <= (modules.datetime.date(y, m + 1, 1) - modules.datetime.date(y, m, 1)).days -%}
        {%- elif y >= 1 and m == 12 -%}
            {%- set valid = 1 <= d <= 31 -%}
        {%- endif -%}
        {%- if not valid -%}
            {%- do exceptions.raise_compiler_error(setting ~ ' (or var ' ~ name ~ ') must be a date YYYY-MM-DD, got ' ~ value) -%}
        {%- endif -%}
        {%- do bounds.append(value) -%}
    {%- endfor -%}
    {{ return(bounds) }}
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
        {%- set lo, hi = partition_window_bounds() -%}
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
