-- One row per sold order line of the day: the winning version, unless cancelled or refunded.
-- The exporter re-emits updated lines, so the latest updated_at wins; on a tie the later file
-- name, then the later line in that file. Read straight from the source (no staging model in
-- between), so dagster-dbt can trace each column back to raw/orders.
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

),

latest_versions as (

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
        cast(updated_at as {{ type_timestamp_utc() }}) as updated_at
    from ranked
    where version_rank = 1

)

select
    dt,
    order_id,
    line_number,
    customer_id,
    product_id,
    quantity,
    unit_price,
    discount,
    cast(quantity * unit_price as decimal(18,2))            as gross_revenue,
    cast(quantity * unit_price - discount as decimal(18,2)) as net_revenue,
    status,
    ordered_at,
    updated_at
from latest_versions
where status not in ('cancelled', 'refunded')
