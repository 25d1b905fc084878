"""What a search returns: the ranked hits of one query, as the CLI, the demo and a server show them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class QueryHit:
    rank: int
    score: float
    row: int
    path: str
    pid: int | None

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": round(self.score, 6), "path": self.path, "pid": self.pid}


@dataclass
class QueryResult:
    """The ranked gallery images for one query; ``truncated`` when the text was cut to the
    model's context length; ``known_words`` False when no word of it occurs in the captions the
    model was trained on (None: the model recorded none)."""

    query: str
    results: list[QueryHit] = field(default_factory=list)
    truncated: bool = False
    known_words: bool | None = None

    def to_json(self) -> dict[str, Any]:
        found = {"query": self.query, "results": [hit.to_json() for hit in self.results]}
        if self.known_words is False:
            found["note"] = UNKNOWN_WORDS_NOTE
        return found


#: Said beside the results of a query none of whose words the model saw in training.
UNKNOWN_WORDS_NOTE = "no word of this query occurs in the captions the model was trained on: the ranking means little"
