{#- The rows of the partition window being built: [var('min_date'), var('max_date')). -#}
{% macro partition_window(column='dt') -%}
    {{ column }} >= cast('{{ var("min_date") }}' as date) and {{ column }} < cast('{{ var("max_date") }}' as date)
{%- endmacro %}

{#- Pre-hook of the incremental marts: delete the window first, so that a day whose rebuild is
    empty ends empty (delete+insert on unique_key would leave its old rows in place). -#}
{% macro delete_partition_window(column='dt') -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ partition_window(column) }}
    {%- endif -%}
{%- endmacro %}
