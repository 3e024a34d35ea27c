"""AlertWebhook: settings validation by key path, the Slack-compatible message, failures returned not raised."""
import httpx
import pytest

from dbt_pg_llm import ConfigError, LlmSettings, ModelAlert
from dbt_pg_llm.models.webhook import AlertWebhook

MODELS = {"models": {"a": {"api_url": "http://x/v1", "model_version": "m"}}}


def test_webhook_settings_are_validated_by_key_path():
    s = LlmSettings.from_dict({**MODELS, "alerts": {"max_error_rate": 0.1, "webhook_url": "https://hooks.example/T/B/x1y2"}})
    assert s.alerts.max_error_rate == 0.1 and s.alert_webhook.url == "https://hooks.example/T/B/x1y2"
    assert "x1y2" not in repr(s.alert_webhook)
    assert LlmSettings.from_dict({**MODELS, "alerts": {"webhook_url": ""}}).alert_webhook is None
    with pytest.raises(ConfigError) as err:
        LlmSettings.from_dict({**MODELS, "alerts": {"webhook_url": "ftp://x", "webhook_timeout_ms": 0,
                                                     "webhook_ur": "x"}})
    text = str(err.value)
    assert "llm.alerts.webhook_url: not an http(s) URL (its scheme is 'ftp'); give the full URL of the webhook" in text
    assert "llm.alerts.webhook_timeout_ms: 0 must be a positive number of milliseconds" in text
    assert "llm.alerts.webhook_ur: unknown key; did you mean 'webhook_url'?" in text


def test_one_message_per_alert_and_failures_are_returned():
    bodies = []

    def handler(request):
        bodies.append(request.read())
        return httpx.Response(500 if len(bodies) == 2 else 200, text="nope")

    hook = AlertWebhook("https://hooks.example/T/B/secret123")
    alerts = [ModelAlert("gpt", "error_rate", "error rate 40.0% (8/20) is above 20.0%", "critical"),
              ModelAlert("gpt", "latency", "average latency 12,000 ms is above 10,000 ms")]
    failures = hook.send(alerts, run_id="r1", target="prod", transport=httpx.MockTransport(handler))
    assert len(bodies) == 2
    assert failures == ["could not deliver the latency alert of gpt: the webhook answered HTTP 500: nope"]
    message = AlertWebhook.message(alerts[0], run_id="r1", target="prod")
    assert message["text"] == "pg_llm alert [CRITICAL] gpt: error rate 40.0% (8/20) is above 20.0%"
    assert message["attachments"][0]["color"] == "danger"
    assert message["alert"]["type"] == "error_rate" and message["alert"]["run_id"] == "r1"
