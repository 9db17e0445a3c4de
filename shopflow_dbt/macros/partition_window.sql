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

{#- Pre-hook of DuckDB's incremental marts: empty the window first, so that a day whose rebuild is
    empty ends empty (an append, or delete+insert on unique_key, would leave its old rows in place);
    dbt runs the pre-hook in the model's transaction, so readers never see the window half-built.
    Spark's marts are built by macros/day_versions.sql, which needs no pre-hook. -#}
{% macro clear_partition_window(column='dt') -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ partition_window(column) }}
    {%- endif -%}
{%- endmacro %}
