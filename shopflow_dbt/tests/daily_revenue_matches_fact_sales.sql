-- daily_revenue must equal the sums of fact_sales for every day in the window being built.
{{ config(meta={'dagster': {'ref': {'name': 'daily_revenue'}}}) }}
with facts as (
    select
        dt,
        count(distinct order_id) as orders,
        count(*)                 as order_lines,
        sum(quantity)            as units,
        sum(gross_revenue)       as gross_revenue,
        sum(net_revenue)         as net_revenue
    from {{ ref('fact_sales') }}
    where {{ partition_window('dt') }}
    group by dt
),
rollup as (
    select * from {{ ref('daily_revenue') }} where {{ partition_window('dt') }}
)
select coalesce(f.dt, r.dt) as dt
from facts f
full outer join rollup r on f.dt = r.dt
where f.dt is null or r.dt is null
   or f.orders <> r.orders or f.order_lines <> r.order_lines or f.units <> r.units
   or f.gross_revenue <> r.gross_revenue or f.net_revenue <> r.net_revenue
