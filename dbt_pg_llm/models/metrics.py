"""Per-model counters: requests, errors, cache hits, latency, tokens and money.

``record(output)`` is the only writer. Semantics, so numbers add up:

* a cache hit (``output.cached``) counts in ``cache_hits`` only: no request was made, no token or
  dollar was spent; what it cost when it was paid for (``output.saved_cost_usd``) is added to
  ``saved_cost_usd``;
* every other output is one request (``request_count``); a failed one is also an error
  (``error_count``, ``errors_by_kind``). Latency, tokens and cost are summed for all requests,
  failed or not, because a timeout is slow and a failed call may still have been billed.

``p95_latency_ms`` comes from the last ``reservoir_size`` latencies (bounded memory on long runs);
``avg_latency_ms`` is exact over all requests. Writers are the event loop, readers may be any
thread: a lock keeps ``report()`` consistent.
"""
from __future__ import annotations

import collections
import math
import threading
from typing import Iterable

from .model_io import ModelOutput, TokenUsage

__all__ = ["ModelMetrics", "MetricsRegistry", "percentile"]


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; 0.0 when empty."""
    data = sorted(values)
    if not data:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(data)))
    return float(data[rank - 1])


class ModelMetrics:
    def __init__(self, model: str = "", reservoir_size: int = 10_000):
        self.model = model
        self.request_count = 0
        self.error_count = 0
        self.cache_hits = 0
        self.total_latency_ms = 0.0
        self.token_usage = TokenUsage()
        self.cost_usd = 0.0
        self.saved_cost_usd = 0.0
        self.errors_by_kind: dict[str, int] = {}
        self._latencies: collections.deque[float] = collections.deque(maxlen=reservoir_size)
        self._lock = threading.Lock()

    def record(self, output: ModelOutput, saved_cost_usd: float | None = None) -> None:
        """Count one output. For a cache hit, ``saved_cost_usd`` (default: the output's own
        ``saved_cost_usd``) is what the answer cost when it was paid for."""
        with self._lock:
            if output.cached:
                self.cache_hits += 1
                saved = output.saved_cost_usd if saved_cost_usd is None else saved_cost_usd
                self.saved_cost_usd += float(saved or 0.0)
                return
            self.request_count += 1
            latency = float(output.latency_ms or 0.0)
            self.total_latency_ms += latency
            self._latencies.append(latency)
            self.token_usage = self.token_usage + output.tokens
            self.cost_usd += float(output.cost_usd or 0.0)
            if not output.ok:
                self.error_count += 1
                kind = str(output.error_kind)
                self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    # -- derived ---------------------------------------------------------------------------------
    @property
    def avg_latency_ms(self) -> float:
        return self.total_latency_ms / self.request_count if self.request_count else 0.0

    @property
    def p95_latency_ms(self) -> float:
        with self._lock:
            latencies = list(self._latencies)
        return percentile(latencies, 95)

    @property
    def error_rate(self) -> float:
        return self.error_count / self.request_count if self.request_count else 0.0

    @property
    def cache_hit_rate(self) -> float:
        total = self.request_count + self.cache_hits
        return self.cache_hits / total if total else 0.0

    def merge(self, other: "ModelMetrics") -> "ModelMetrics":
        """Add ``other`` into self (used for the total row); returns self."""
        with other._lock:
            state = (other.request_count, other.error_count, other.cache_hits, other.total_latency_ms,
                     other.token_usage, other.cost_usd, other.saved_cost_usd, dict(other.errors_by_kind),
                     list(other._latencies))
        with self._lock:
            (req, err, hits, lat, tokens, cost, saved, kinds, latencies) = state
            self.request_count += req
            self.error_count += err
            self.cache_hits += hits
            self.total_latency_ms += lat
            self.token_usage = self.token_usage + tokens
            self.cost_usd += cost
            self.saved_cost_usd += saved
            for kind, n in kinds.items():
                self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + n
            self._latencies.extend(latencies)
        return self

    def to_dict(self) -> dict:
        with self._lock:
            out = {
                "model": self.model,
                "request_count": self.request_count,
                "error_count": self.error_count,
                "error_rate": self.error_rate,
                "cache_hits": self.cache_hits,
                "cache_hit_rate": self.cache_hit_rate,
                "avg_latency_ms": self.avg_latency_ms,
                "p95_latency_ms": percentile(self._latencies, 95),
                "prompt_tokens": self.token_usage.prompt,
                "completion_tokens": self.token_usage.completion,
                "total_tokens": self.token_usage.total,
                "cost_usd": self.cost_usd,
                "saved_cost_usd": self.saved_cost_usd,
                "errors_by_kind": dict(sorted(self.errors_by_kind.items())),
            }
        return out

    def report(self) -> str:
        """Multi-line, aligned ``label: value`` text for one model."""
        d = self.to_dict()
        kinds = ", ".join(f"{k}={n}" for k, n in d["errors_by_kind"].items()) or "-"
        rows = [
            ("model", d["model"] or "-"),
            ("requests", f"{d['request_count']:,}"),
            ("errors", f"{d['error_count']:,} ({d['error_rate']:.1%}) [{kinds}]"),
            ("cache hits", f"{d['cache_hits']:,} ({d['cache_hit_rate']:.1%} of calls)"),
            ("latency", f"avg {d['avg_latency_ms']:,.1f} ms, p95 {d['p95_latency_ms']:,.1f} ms"),
            ("tokens", f"{d['prompt_tokens']:,} prompt + {d['completion_tokens']:,} completion "
                       f"= {d['total_tokens']:,}"),
            ("cost", f"${d['cost_usd']:,.4f} (saved by cache: ${d['saved_cost_usd']:,.4f})"),
        ]
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label.ljust(width)} : {value}" for label, value in rows)

    def __repr__(self) -> str:
        return (f"ModelMetrics(model={self.model!r}, requests={self.request_count}, errors={self.error_count}, "
                f"cache_hits={self.cache_hits}, cost_usd={self.cost_usd:.4f})")


_COLUMNS = [  # header, to_dict key, format
    ("model", "model", "{}"),
    ("requests", "request_count", "{:,}"),
    ("errors", "error_count", "{:,}"),
    ("err%", "error_rate", "{:.1%}"),
    ("cache_hits", "cache_hits", "{:,}"),
    ("avg_ms", "avg_latency_ms", "{:,.1f}"),
    ("p95_ms", "p95_latency_ms", "{:,.1f}"),
    ("tokens_in", "prompt_tokens", "{:,}"),
    ("tokens_out", "completion_tokens", "{:,}"),
    ("cost_usd", "cost_usd", "{:,.4f}"),
    ("saved_usd", "saved_cost_usd", "{:,.4f}"),
]


class MetricsRegistry:
    """ModelMetrics per model name, created on first use; safe to use from any thread."""

    def __init__(self, reservoir_size: int = 10_000):
        self._reservoir_size = reservoir_size
        self._lock = threading.Lock()
        self._metrics: dict[str, ModelMetrics] = {}

    def for_model(self, name: str) -> ModelMetrics:
        metrics = self._metrics.get(name)
        if metrics is None:
            with self._lock:
                metrics = self._metrics.get(name)
                if metrics is None:
                    metrics = self._metrics[name] = ModelMetrics(name, self._reservoir_size)
        return metrics

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._metrics)

    def total(self) -> ModelMetrics:
        total = ModelMetrics("TOTAL", reservoir_size=max(1, self._reservoir_size * max(1, len(self._metrics))))
        for name in self.names():
            total.merge(self._metrics[name])
        return total

    def to_dict(self) -> dict:
        return {"models": {name: self._metrics[name].to_dict() for name in self.names()},
                "total": self.total().to_dict()}

    def report(self) -> str:
        """An aligned table: one row per model and a TOTAL row."""
        rows = [self._metrics[name].to_dict() for name in self.names()]
        rows.append(self.total().to_dict())
        cells = [[header for header, _, _ in _COLUMNS]]
        cells += [[fmt.format(row[key]) for _, key, fmt in _COLUMNS] for row in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(_COLUMNS))]

        def line(r: list[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

        out = [line(cells[0]), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in cells[1:-1]]
        if len(cells) > 2:
            out.append("  ".join("-" * w for w in widths))
        out.append(line(cells[-1]))
        return "\n".join(out)
