"""Alerts that reach someone: POST one JSON message per new alert to a webhook (``llm.alerts.webhook_url``).

The message is a Slack incoming-webhook message (``text``, plus ``attachments`` with fields, which
Slack renders) that also carries the alert as plain data under ``alert`` for any other receiver::

    {"text": "[CRITICAL] gpt: error rate 31.9% (22/69) is above 5.0%",
     "attachments": [{"color": "danger", "fields": [{"title": "model", "value": "gpt", "short": true}, ...]}],
     "alert": {"model": "gpt", "type": "error_rate", "severity": "critical", "message": "...",
               "ts": "2026-11-28T20:16:44+00:00", "run_id": "...", "target": "prod"}}

A webhook that fails (timeout, refused, HTTP error) never fails the run: ``send`` returns one
sentence per failed message for the caller to log, and keeps going. No retries: an alert is also in
``llm_alerts``, and a slow receiver must not hold up a dbt run. The URL is registered as a secret
(a Slack webhook URL is a credential), so it never appears in logs or errors.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping
from urllib.parse import urlparse

import httpx

from ..errors import ConfigError, redact, register_secret

__all__ = ["AlertWebhook"]

log = logging.getLogger(__name__)
_COLORS = {"critical": "danger", "warning": "warning"}


@dataclass(frozen=True)
class AlertWebhook:
    url: str
    timeout_ms: int = 5000

    KEYS = ("webhook_url", "webhook_timeout_ms")  # their names in the profile's llm.alerts block

    def __post_init__(self):
        register_secret(self.url)

    def __repr__(self) -> str:
        return f"AlertWebhook(url='***', timeout_ms={self.timeout_ms})"

    @classmethod
    def from_alerts_block(cls, data: Mapping[str, Any], path: str = "llm.alerts") -> "AlertWebhook | None":
        """The webhook of an ``alerts:`` block (None without a URL; an empty URL, the usual
        ``env_var('X', '')`` default, means none). ConfigError names every problem by key path."""
        url = data.get("webhook_url")
        timeout = data.get("webhook_timeout_ms", 5000)
        problems = []
        if url in (None, ""):
            url = None
        elif not isinstance(url, str):
            problems.append(f"{path}.webhook_url: must be a URL string, e.g. https://hooks.slack.com/services/...")
        else:
            register_secret(url)
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                # the URL itself is a secret: name only what is wrong with it
                what = f"its scheme is {parsed.scheme!r}" if parsed.scheme else "it has no scheme"
                problems.append(f"{path}.webhook_url: not an http(s) URL ({what}); give the full URL of the "
                                "webhook, e.g. https://hooks.slack.com/services/T000/B000/XXXX")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            problems.append(f"{path}.webhook_timeout_ms: {timeout!r} must be a positive number of milliseconds, "
                            "e.g. 5000")
        if problems:
            raise ConfigError(problems)
        return cls(url, int(timeout)) if url else None

    # -- sending ---------------------------------------------------------------------------------
    @staticmethod
    def message(alert: Any, *, run_id: str | None = None, target: str | None = None) -> dict:
        """The JSON body for one alert (a ``ModelAlert``)."""
        ts = getattr(alert, "ts", None)
        data = {"model": alert.model, "type": alert.type, "severity": alert.severity,
                "message": redact(alert.message), "ts": ts.isoformat() if ts else None,
                "run_id": run_id, "target": target}
        fields = [{"title": name, "value": str(data[name]), "short": True}
                  for name in ("model", "type", "severity", "target", "run_id") if data[name]]
        return {"text": f"pg_llm alert {redact(str(alert))}",
                "attachments": [{"color": _COLORS.get(alert.severity, "warning"), "fields": fields,
                                 "text": data["message"]}],
                "alert": data}

    def send(self, alerts: Iterable[Any], *, run_id: str | None = None, target: str | None = None,
             transport: httpx.BaseTransport | None = None) -> list[str]:
        """POST one message per alert; return a sentence per failure (nothing raised)."""
        failures: list[str] = []
        alerts = list(alerts)
        if not alerts:
            return failures
        with httpx.Client(timeout=self.timeout_ms / 1000.0, transport=transport) as client:
            for alert in alerts:
                problem = self._post(client, self.message(alert, run_id=run_id, target=target))
                if problem:
                    failure = f"could not deliver the {alert.type} alert of {alert.model}: {problem}"
                    log.warning(failure)
                    failures.append(failure)
        return failures

    def _post(self, client: httpx.Client, body: dict) -> str | None:
        try:
            response = client.post(self.url, json=body)
        except httpx.TimeoutException:
            return f"no answer within webhook_timeout_ms={self.timeout_ms}"
        except httpx.HTTPError as exc:
            return redact(f"{type(exc).__name__}: {exc}", [self.url])
        if response.status_code >= 300:
            return f"the webhook answered HTTP {response.status_code}: {redact(response.text[:200], [self.url])}"
        return None
