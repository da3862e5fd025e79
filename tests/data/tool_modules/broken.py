"""
title: Broken
"""

import module_that_does_not_exist  # noqa: F401


class Tools:
    def f(self) -> str:
        return "x"
