"""The simulator's answer to an aggregate step (``operators/aggregate.py``): a digest of its inputs.

``Digest <8 hex> of N items: <first words>``: the hex is the prompt's sha256 (so it changes with any
input), N the rows under the node (a leaf counts its item lines, a reduce sums its partials' N), and
the first words are those of the first item, so tests can assert a group's answer covers every row.
"""
from __future__ import annotations

import hashlib
import re

from ..operators.aggregate import LEAF_HEADER, REDUCE_HEADER, SYSTEM_PHRASE

__all__ = ["aggregate_answer"]

_HEADER = re.compile(r"^(" + re.escape(LEAF_HEADER) + "|" + re.escape(REDUCE_HEADER) + r") \((\d+)\):$", re.M)
_COUNT = re.compile(r"^- Digest [0-9a-f]{8} of (\d+) items:", re.M)


def aggregate_answer(system: str, user: str) -> str | None:
    """The digest answer when ``system`` is the aggregate phrase, else None (not an aggregate step)."""
    if not system or SYSTEM_PHRASE not in system:
        return None
    header = _HEADER.search(user)
    if header is None:
        return None
    body = user[header.end():]
    lines = [line[2:] for line in body.splitlines() if line.startswith("- ")]
    if header.group(1) == REDUCE_HEADER:
        n = sum(int(m) for m in _COUNT.findall(body)) or len(lines)
        first = re.sub(r"^Digest [0-9a-f]{8} of \d+ items: ", "", lines[0]) if lines else ""
    else:
        n = len(lines)
        first = lines[0] if lines else ""
    words = " ".join(first.split()[:5])
    return f"Digest {hashlib.sha256(user.encode('utf-8', 'surrogatepass')).hexdigest()[:8]} of {n} items: {words}"
