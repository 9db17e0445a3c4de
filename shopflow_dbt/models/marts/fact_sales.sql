-- One row per sold order line of the day: the winning version, unless cancelled or refunded.
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
from {{ ref('stg_orders') }}
where status not in ('cancelled', 'refunded')
