"""Credentials and connection manager of the `pg_llm` adapter: dbt-postgres plus an `llm:` block.

The `llm:` block (models, default model, audit schema, cache TTL, ...) is validated when the profile
is loaded, so every problem is reported at once, each by key path (``llm.models.gpt.temperature``).
It never reaches `dbt debug`, the `target` Jinja variable or any artifact: only a redacted summary
(the model names) is shown.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import psycopg2
from dbt.adapters.postgres.connections import PostgresConnectionManager, PostgresCredentials
from dbt_common.exceptions import DbtRuntimeError


@dataclass
class PgLlmCredentials(PostgresCredentials):
    llm: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Validate now: a broken llm block is named by key path before anything runs.
        self.llm_settings()

    @property
    def type(self) -> str:
        return "pg_llm"

    def _connection_keys(self) -> Tuple[str, ...]:
        # The llm block (API keys, URLs) is deliberately absent; see connection_info.
        return tuple(PostgresCredentials._connection_keys(self))

    def connection_info(self, *, with_aliases: bool = False):
        yield from super().connection_info(with_aliases=with_aliases)
        yield "llm_models", self.llm_summary()

    # -- the llm block ---------------------------------------------------------------------------
    def llm_settings(self):
        """The validated LlmSettings (cached per credentials object); raises DbtRuntimeError naming
        every problem by key path."""
        cached = self.__dict__.get("_llm_settings")
        if cached is not None:
            return cached
        from dbt_pg_llm.errors import ConfigError, redact
        from dbt_pg_llm.models.settings import LlmSettings

        try:
            settings = LlmSettings.from_dict(dict(self.llm or {}))
        except ConfigError as exc:
            raise DbtRuntimeError(redact(str(exc))) from None
        self.__dict__["_llm_settings"] = settings
        return settings

    def llm_summary(self) -> str:
        """What `dbt debug` shows of the llm block: model names only, never URLs or keys."""
        models = (self.llm or {}).get("models") or {}
        default = (self.llm or {}).get("default_model")
        names = ", ".join(sorted(str(n) for n in models)) if isinstance(models, dict) else "?"
        return f"{names} (default: {default})" if default else names

    def psycopg2_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for psycopg2.connect with the same settings dbt-postgres uses."""
        kwargs: Dict[str, Any] = dict(
            dbname=self.database,
            user=self.user,
            host=self.host,
            password=self.password,
            port=self.port,
            connect_timeout=self.connect_timeout,
        )
        if self.keepalives_idle:
            kwargs["keepalives_idle"] = self.keepalives_idle
        if self.search_path:
            kwargs["options"] = "-c search_path={}".format(self.search_path.replace(" ", "\\ "))
        for name in ("sslmode", "sslcert", "sslkey", "sslrootcert"):
            value: Optional[str] = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        kwargs["application_name"] = (self.application_name or "dbt") + "-pg_llm"
        return kwargs

    def connect_autocommit(self):
        """A new autocommit psycopg2 connection, outside dbt's transactions (paid results land at once)."""
        conn = psycopg2.connect(**self.psycopg2_kwargs())
        conn.autocommit = True
        if self.role:
            with conn.cursor() as cur:
                cur.execute("set role {}".format(self.role))
        return conn


class PgLlmConnectionManager(PostgresConnectionManager):
    TYPE = "pg_llm"
