"""
title: Hangs at import
"""

import time

time.sleep(3600)


class Tools:
    def never(self) -> str:
        return "never"
