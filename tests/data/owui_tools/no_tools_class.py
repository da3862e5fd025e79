"""
title: No Tools Class
"""


class Toolz:
    def x(self) -> str:
        return "typo"
