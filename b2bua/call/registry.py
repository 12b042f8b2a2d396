"""All live sessions of the node, by id and by user (a user may have several sessions)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from b2bua.call.session import Session

__all__ = ["SessionRegistry"]


class SessionRegistry:
    """Index of live sessions with a hard cap (``max_sessions``)."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._by_id: dict[str, Session] = {}
        self._by_user: dict[str, dict[str, Session]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_id.values()))

    def __contains__(self, session: object) -> bool:
        return isinstance(session, Session) and self._by_id.get(session.id) is session

    @property
    def count(self) -> int:
        return len(self._by_id)

    def is_full(self) -> bool:
        return len(self._by_id) >= self.max_sessions

    def add(self, session: Session) -> None:
        """Index ``session``; raises ``OverflowError`` when full, ``KeyError`` on a duplicate id."""
        if self.is_full():
            raise OverflowError("too many sessions")
        if session.id in self._by_id:
            raise KeyError("duplicate session id")
        self._by_id[session.id] = session
        self._by_user.setdefault(session.user, {})[session.id] = session

    def remove(self, session: Session) -> bool:
        """Forget ``session``; False when it was not indexed (already removed)."""
        if self._by_id.get(session.id) is not session:
            return False
        del self._by_id[session.id]
        user_sessions = self._by_user.get(session.user)
        if user_sessions is not None:
            user_sessions.pop(session.id, None)
            if not user_sessions:
                del self._by_user[session.user]
        return True

    def get(self, session_id: str) -> Session | None:
        return self._by_id.get(session_id)

    def by_user(self, user: str) -> list[Session]:
        return list(self._by_user.get(user, {}).values())

    def count_by_state(self) -> dict[str, int]:
        return dict(Counter(s.state for s in self._by_id.values()))
