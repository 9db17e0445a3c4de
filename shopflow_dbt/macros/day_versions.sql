{#- Spark's materialization of the marts: each day of the window that the model returns rows for is
    written to a new version folder, <table>/dt=D/v=<version>/, then its partition's location is
    swapped to it in one ALTER TABLE statement; a day of the window that has no rows any more has
    its partition dropped. A reader through the catalog sees each day's old rows, then its new ones:
    never no day, never a mix (an insert_overwrite would delete the old files first). The table is
    external, so a dropped or swapped-out version stays readable until Dagster removes it a grace
    period later (shopflow_assets/contract/spark_layout.py; SHOPFLOW_SPARK_VERSION_GRACE_MINUTES).
    DuckDB builds the marts as incremental models instead (dbt_project.yml). -#}
{% materialization day_versions, adapter='spark' -%}
  {%- set existing = load_relation(this) -%}
  {%- set build = this.incorporate(path={"identifier": this.identifier ~ '__dbt_build'}).include(database=false, schema=false) -%}
  {{ run_hooks(pre_hooks) }}

  {%- call statement('main') -%}
    {{ create_table_as(True, build, sql) }}
  {%- endcall -%}
  {#- computed once, then read for the days and for each day's version -#}
  {%- do run_query('cache table ' ~ build) -%}
  {%- set columns = adapter.get_columns_in_relation(build) -%}
  {%- set data_columns = columns | rejectattr('name', 'equalto', 'dt') | list -%}

  {%- set root = shopflow_table_root(this) -%}
  {%- if existing is none -%}
    {%- set ddl = [] -%}
    {%- for column in data_columns -%}{%- do ddl.append(column.quoted ~ ' ' ~ column.data_type) -%}{%- endfor -%}
    {%- do run_query(
        'create table ' ~ this ~ ' (' ~ ddl | join(', ') ~ ', dt date) using parquet partitioned by (dt) location '
        ~ shopflow_string(root)
    ) -%}
  {%- else -%}
    {%- do shopflow_check_table(this, data_columns) -%}
  {%- endif -%}

  {#- the days the model returns rows for, and the days of the window the table has -#}
  {%- set lo, hi = partition_window_bounds() -%}
  {%- set built = run_query('select distinct cast(dt as string) from ' ~ build).columns[0].values() | map('string') | list -%}
  {%- set version = modules.datetime.datetime.now(modules.pytz.utc).strftime('%Y%m%dT%H%M%S%fZ') ~ '-' ~ invocation_id[:8] -%}
  {%- set locations = {} -%}
  {%- for day in built | sort -%}
    {%- set location = root ~ '/dt=' ~ day ~ '/v=' ~ version -%}
    {%- do run_query(
        'insert overwrite directory ' ~ shopflow_string(location) ~ ' using parquet select '
        ~ (data_columns | map(attribute='quoted') | join(', ')) ~ ' from ' ~ build
        ~ " where dt = cast('" ~ day ~ "' as date)"
    ) -%}
    {%- do locations.update({day: location}) -%}
  {%- endfor -%}
  {#- every version is written before the first swap: a failed write leaves every day as it was -#}
  {%- for day, location in locations.items() -%}
    {%- do run_query('alter table ' ~ this ~ " add if not exists partition (dt = '" ~ day ~ "') location " ~ shopflow_string(location)) -%}
    {%- do run_query('alter table ' ~ this ~ " partition (dt = '" ~ day ~ "') set location " ~ shopflow_string(location)) -%}
  {%- endfor -%}
  {%- for row in run_query('show partitions ' ~ this) -%}
    {%- set day = row[0].split('=', 1)[1] -%}
    {%- if lo <= day < hi and day not in locations -%}
      {%- do run_query('alter table ' ~ this ~ " drop if exists partition (dt = '" ~ day ~ "')") -%}
    {%- endif -%}
  {%- endfor -%}
  {%- do run_query('uncache table if exists ' ~ build) -%}
  {%- do run_query('drop view if exists ' ~ build) -%}

  {{ run_hooks(post_hooks) }}
  {{ return({'relations': [this]}) }}
{%- endmaterialization %}

{#- Where a mart's versions live: <its database's location>/<model>. -#}
{% macro shopflow_table_root(relation) -%}
  {%- set described = run_query('describe database ' ~ relation.schema) -%}
  {%- for row in described if row[0] | trim == 'Location' -%}
    {{ return((row[1] | trim).rstrip('/') ~ '/' ~ relation.identifier) }}
  {%- endfor -%}
  {%- do exceptions.raise_compiler_error('The catalog names no location for database ' ~ relation.schema) -%}
{%- endmacro %}

{#- A Spark SQL string literal. -#}
{% macro shopflow_string(text) -%}
  {{ return("'" ~ (text | replace('\\', '\\\\') | replace("'", "\\'")) ~ "'") }}
{%- endmacro %}

{#- An existing mart must be external (a managed table's dropped partition loses its files at once)
    and have the model's columns (on_schema_change: fail). -#}
{% macro shopflow_check_table(relation, data_columns) -%}
  {%- set described = run_query('describe table extended ' ~ relation) -%}
  {%- set kind = [] -%}
  {%- for row in described if row[0] | trim == 'Type' -%}{%- do kind.append(row[1] | trim) -%}{%- endfor -%}
  {%- set kind = (kind or ['unknown'])[0] -%}
  {%- if kind | upper != 'EXTERNAL' -%}
    {%- do exceptions.raise_compiler_error(
        relation ~ ' is a ' ~ kind ~ ' table, not the external table this project builds: drop it '
        ~ '(DROP TABLE ' ~ relation ~ ') and build its days again') -%}
  {%- endif -%}
  {%- set have, want = [], [] -%}
  {%- for column in adapter.get_columns_in_relation(relation) if column.name != 'dt' -%}
    {%- do have.append((column.name ~ ' ' ~ column.data_type) | lower) -%}
  {%- endfor -%}
  {%- for column in data_columns -%}{%- do want.append((column.name ~ ' ' ~ column.data_type) | lower) -%}{%- endfor -%}
  {%- if have | sort != want | sort -%}
    {%- do exceptions.raise_compiler_error(
        'The columns of ' ~ relation ~ ' (' ~ have | join(', ') ~ ') are not the model\'s ('
        ~ want | join(', ') ~ '): drop the table and build its days again') -%}
  {%- endif -%}
{%- endmacro %}
