{#- dbt's own macro, overridden as dbt's docs suggest: a test's `where` may say __partition_window__
    (dbt_project.yml cannot call macros), which becomes the window being built, so every data test
    reads the days of this run, not every day ever built. -#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') -%}
    {%- if where -%}
        {%- set where = where | replace('__partition_window__', partition_window('dt')) -%}
        {%- do return('(select * from ' ~ relation ~ ' where ' ~ where ~ ') dbt_subquery') -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}
