-- One row per day with sales, summed from fact_sales.
select
    dt,
    count(distinct order_id)                   as orders,
    count(*)                                   as order_lines,
    cast(sum(quantity) as bigint)              as units,
    cast(sum(gross_revenue) as decimal(18,2))  as gross_revenue,
    cast(sum(net_revenue) as decimal(18,2))    as net_revenue
from {{ ref('fact_sales') }}
where {{ partition_window('dt') }}
group by dt
