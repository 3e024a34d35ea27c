import threading
from dataclasses import dataclass

import pytest

from dbt_pg_llm.errors import PgLlmError, RegistryError
from dbt_pg_llm.models.registry import ModelRegistry


@dataclass
class M:
    name: str


def test_register_get_contains_iter_len():
    r = ModelRegistry()
    a, b = M("a"), M("b")
    assert r.register(a) is a
    r.register(b)
    assert r.get("a") is a
    assert "a" in r and "zzz" not in r and ["unhashable"] not in r
    assert r.names() == ["a", "b"]
    assert list(r) == [a, b]
    assert len(r) == 2


def test_duplicate_message():
    r = ModelRegistry([M("x")])
    with pytest.raises(RegistryError) as exc:
        r.register(M("x"))
    assert str(exc.value) == "model 'x' is already registered; unregister it first or use another name"
    assert isinstance(exc.value, PgLlmError) and isinstance(exc.value, KeyError)


def test_unknown_lists_known_names_sorted():
    r = ModelRegistry([M("b"), M("a")])
    with pytest.raises(RegistryError) as exc:
        r.get("gtp")
    assert str(exc.value) == "unknown model 'gtp'; known models: a, b"


def test_unknown_when_empty():
    with pytest.raises(RegistryError) as exc:
        ModelRegistry().get("x")
    assert str(exc.value) == "unknown model 'x'; no models are registered"


def test_unregister_then_register_again():
    r = ModelRegistry()
    old = r.register(M("x"))
    assert r.unregister("x") is old
    assert "x" not in r
    new = r.register(M("x"))
    assert r.get("x") is new
    with pytest.raises(RegistryError, match="unknown model 'y'"):
        r.unregister("y")


@pytest.mark.parametrize("bad", [None, "", "   ", 3])
def test_model_needs_a_name(bad):
    with pytest.raises(RegistryError, match="non-empty string 'name'"):
        ModelRegistry().register(M(bad))


def test_iteration_is_a_snapshot():
    r = ModelRegistry([M("a"), M("b")])
    seen = []
    for m in r:
        seen.append(m.name)
        r.register(M(m.name + "2"))  # must not raise "dict changed size"
    assert seen == ["a", "b"]
    assert len(r) == 4


def test_threads_register_and_get():
    r = ModelRegistry()
    errors, duplicates = [], []
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        for j in range(200):
            r.register(M(f"m{i}-{j}"))
            assert r.get(f"m{i}-{j}").name == f"m{i}-{j}"
            try:  # every thread also races for the same shared names: exactly one must win each
                r.register(M(f"shared-{j}"))
            except RegistryError:
                duplicates.append(j)
            list(r)
            r.names()

    def run(i):
        try:
            work(i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(r) == 8 * 200 + 200
    assert len(duplicates) == 7 * 200
