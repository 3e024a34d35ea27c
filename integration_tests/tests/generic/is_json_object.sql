{% test is_json_object(model, column_name) %}
-- Rows whose (non-null) value is not a JSON object.
select *
from {{ model }}
where {{ column_name }} is not null
  and jsonb_typeof({{ column_name }}::jsonb) <> 'object'
{% endtest %}
