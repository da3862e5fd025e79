"""
title: Notes
author: community
version: 0.2.0
description: A small per-user notebook kept in SQLite next to the tool.
"""

import os
import sqlite3
import time
from typing import Literal, Optional

from pydantic import BaseModel, Field


class Tools:
    class Valves(BaseModel):
        db_path: str = Field("", description="SQLite file (default: next to the tool)")
        max_notes_per_user: int = Field(500, ge=1)

    class UserValves(BaseModel):
        default_tag: str = Field("general", description="Tag for notes saved without one")
        sort: Literal["newest", "oldest"] = "newest"

    def __init__(self):
        self.valves = self.Valves()

    def _db(self) -> sqlite3.Connection:
        path = self.valves.db_path or os.path.join(os.path.dirname(__file__), "notes.sqlite3")
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE IF NOT EXISTS notes (user TEXT, tag TEXT, text TEXT, at REAL)")
        return db

    def save_note(self, text: str, tag: Optional[str] = None, __user__: dict = {}) -> str:
        """
        Save a note for the current user.
        :param text: The note.
        :param tag: A tag to file it under.
        """
        uv = __user__.get("valves")
        with self._db() as db:
            db.execute("INSERT INTO notes VALUES (?, ?, ?, ?)",
                       (__user__.get("id"), tag or (uv.default_tag if uv else "general"), text, time.time()))
        return "Saved."

    def list_notes(self, tag: Optional[str] = None, limit: int = 20, __user__: dict = {}) -> list[dict]:
        """
        List the current user's notes.
        :param tag: Only this tag.
        :param limit: How many.
        """
        uv = __user__.get("valves")
        order = "ASC" if uv and uv.sort == "oldest" else "DESC"
        q = "SELECT tag, text, at FROM notes WHERE user = ?" + (" AND tag = ?" if tag else "") + f" ORDER BY at {order} LIMIT ?"
        args = [__user__.get("id")] + ([tag] if tag else []) + [limit]
        with self._db() as db:
            return [{"tag": t, "text": x, "at": a} for t, x, a in db.execute(q, args)]
