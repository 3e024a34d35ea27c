"""The model layer: calling LLM providers well, with nothing of Postgres or dbt in it.

``config`` / ``settings`` (what a profile's ``llm:`` block says), ``registry``, ``model`` (one
endpoint: ``Model.call`` / ``acall``), ``model_io`` (inputs and outputs), ``batch`` / ``packed_calls``
(many rows per request), ``strategy`` / ``strategy_model`` (cascades, votes, routes), ``pool``
(concurrency, rate limits), ``retry`` (the one retry layer, on tenacity), ``failover``, ``status``
(circuit breaker), ``cache`` (the journal of paid answers) and ``call_spool``, ``spend`` (the spend
cap), ``lease`` (send leases of claimed keys), ``keys`` / ``tokens`` / ``pricing``, ``metrics`` /
``logs`` / ``alerts`` / ``webhook``, ``engine`` (all of it behind one object), ``providers/`` (one
module per wire protocol) and ``batch_api/`` (the providers' batch APIs).

Layers, each importing only those before it: ``errors`` -> ``models`` -> ``pg`` -> ``operators`` -> ``ops``.
The public names are re-exported by ``dbt_pg_llm`` itself.
"""
