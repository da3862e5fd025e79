"""
title: Injected Parameters
author: executor tests
version: 0.1.0
"""

from typing import Any, Awaitable, Callable, Optional


class Tools:
    async def everything(
        self,
        query: str,
        __user__: dict = {},
        __id__: str = "",
        __metadata__: dict = {},
        __messages__: list = [],
        __files__: list = [],
        __model__: dict = {},
        __chat_id__: str = "",
        __message_id__: str = "",
        __event_emitter__: Callable[[dict], Awaitable[None]] = None,
        __event_call__: Callable[[dict], Awaitable[Any]] = None,
        __oauth_token__: Optional[dict] = None,
        __request__: Any = None,
    ) -> str:
        """
        Every injected parameter, and one real one.
        :param query: the real parameter
        :param __user__: the user
        """
        return query

    async def untyped_dunders(self, text: str, __user__=None, __event_emitter__=None, __event_call__=None) -> str:
        """
        Untyped injected parameters, as most published tools write them.
        :param text: what to echo
        """
        return text

    def required_dunder(self, __user__: dict, n: int = 1) -> str:
        """A required __user__ first."""
        return str(n)

    def single_underscore(self, _hidden: str = "x", visible: str = "y") -> str:
        """One leading underscore."""
        return visible
