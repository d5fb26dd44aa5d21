"""What a client has received of a task, so that it can take the task to another node when its origin is lost
and see every token exactly once, in order. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Received:
    """The token events of one task received so far (`count` of them, their text and ids)."""

    count: int = 0
    texts: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)

    def accept(self, seq: int, text: str, ids: list[int]) -> bool:
        """Take a TOKEN event; False for one already received (a new origin replaying what was resumed)."""
        if seq != self.count:
            return False
        self.count += 1
        self.texts.append(text)
        self.ids.extend(ids)
        return True

    def resume_fields(self) -> dict[str, Any]:
        """A SUBMIT's fields that let a new origin continue after what was received (none before a token)."""
        if not self.count:
            return {}
        return {"resume_ids": list(self.ids), "resume_text": "".join(self.texts), "start_seq": self.count}
