{#- A small catalogue of topics a review can be about, each embedded like the reviews (same model and
    dimensions, so the vectors are comparable): one request for the lot. -#}
{%- set topics = [
    'battery life and charging', 'sound quality and noise', 'screen and display brightness',
    'build quality and durability', 'comfort and fit', 'price and value for money', 'shipping and delivery',
    'packaging and missing parts', 'customer service and returns', 'setup and instructions',
    'software, app and connectivity', 'size and weight', 'speed and performance', 'cleaning and maintenance',
    'smell, taste or texture', 'colour and looks', 'heat and overheating', 'broke or stopped working',
    'gift for someone', 'better than expected', 'worse than expected', 'kitchen and cooking',
    'outdoor use and weather', 'kids and family use'] -%}
{%- set rows = [] -%}
{%- for topic in topics -%}{%- do rows.append("(" ~ loop.index ~ ", '" ~ topic | replace("'", "''") ~ "')") -%}{%- endfor -%}
{{ pg_llm.llm_enrich(
    "select * from (values " ~ rows | join(', ') ~ ") as t(topic_id, topic)",
    {'embedding': pg_llm.embed('topic', dimensions=64)}
) }}
