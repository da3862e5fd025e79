"""
title: Docstrings
author: executor tests
version: 0.1.0
description: Reads values from config files and from utils (replace_imports rewrites both).
"""


class Tools:
    def multi_line(self, query: str, limit: int = 10, verbose: bool = False) -> str:
        """
        Search the index for documents.

        The description keeps its blank line and
        its second paragraph.
        :param query: the text to search for, which can be
            continued on the next line
            and on a third one
        :param limit: how many results
        :param verbose: whether to be chatty
        :return: the results as text
        """
        return query

    def no_docstring(self, x: int, y: str = "b"):
        return x

    def only_description(self, value: str) -> str:
        """Just a line, no params."""
        return value

    def documented_unknown(self, a: str, __user__: dict = {}) -> str:
        """
        Params that are not in the signature, and a dunder param.
        :param a: the real one
        :param ghost: not a parameter
        :param __user__: injected, never described
        """
        return a

    def empty_param_doc(self, a: str, b: int) -> str:
        """
        An empty description.
        :param a:
        :param b:   spaced out
        """
        return a

    def returns_first(self, a: str) -> str:
        """
        :return: the description is empty because :return: comes first
        :param a: still parsed
        """
        return a

    def interrupted(self, a: str, b: str) -> str:
        """
        Other fields end a continuation.
        :param a: begins here
        :type a: str
        this line belongs to nothing
        :param b: second
        :raises ValueError: never
        not part of b
        """
        return a

    def google_style(self, city: str, days: int = 3) -> str:
        """
        Get the forecast.

        Args:
            city: The city.
            days: How many days.

        Returns:
            The forecast.
        """
        return city

    def tabbed(self, a: str) -> str:
        """
	Tab indented description.
	:param a:	tab after the colon
        """
        return a

    def param_regex_edge(self, a1: str, b_2: int) -> str:
        """
        :param a1: digits in the name
        :param b_2: underscore and digit
        :param  c: two spaces do not match
        """
        return a1

    def rewritten(self, key: str) -> str:
        """
        Look a key up from config, or from utils when missing.
        :param key: a key from main settings
        """
        return key
