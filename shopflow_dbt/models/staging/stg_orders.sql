-- One row per order line and day: the exporter re-emits updated lines, so the latest
-- updated_at wins; on a tie the later file name, then the later line in that file.
with source as (

    select * from {{ source('raw', 'orders') }}
    where {{ partition_window('dt') }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by dt, order_id, line_number
            order by updated_at desc, _source_file desc, _source_line desc
        ) as version_rank
    from source

)

select
    cast(dt as date)                              as dt,
    cast(order_id as {{ dbt.type_string() }})     as order_id,
    cast(line_number as integer)                  as line_number,
    cast(customer_id as {{ dbt.type_string() }})  as customer_id,
    cast(product_id as {{ dbt.type_string() }})   as product_id,
    cast(quantity as integer)                     as quantity,
    cast(unit_price as decimal(18,2))             as unit_price,
    cast(discount as decimal(18,2))               as discount,
    cast(status as {{ dbt.type_string() }})       as status,
    cast(ordered_at as {{ type_timestamp_utc() }}) as ordered_at,
    cast(updated_at as {{ type_timestamp_utc() }}) as updated_at,
    _source_file,
    _source_line
from ranked
where version_rank = 1
