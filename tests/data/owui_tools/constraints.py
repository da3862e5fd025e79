"""
title: Constraints and Formats
author: executor tests
version: 0.1.0
"""

import datetime
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Optional

from pydantic import AnyUrl, Field, HttpUrl, conint, constr


class Tools:
    def bounded(
        self,
        percent: Annotated[int, Field(ge=0, le=100)],
        code: Annotated[str, Field(min_length=2, max_length=5, pattern=r"^[A-Z]+$")],
        step: Annotated[float, Field(gt=0, multiple_of=0.5)] = 1.0,
        count: conint(ge=1) = 1,
        slug: constr(to_lower=True, max_length=20) = "x",
        described: Annotated[str, Field(description="from the annotation")] = "",
        both: Annotated[str, Field(description="annotation description")] = "",
        items: Annotated[list[int], Field(min_length=1, max_length=3)] = [1],
    ) -> str:
        """
        Constrained parameters.
        :param percent: a percentage
        :param both: the docstring description
        """
        return "ok"

    def formats(
        self,
        when: datetime.datetime,
        day: datetime.date,
        at: datetime.time = datetime.time(9, 30),
        span: datetime.timedelta = datetime.timedelta(hours=1),
        ident: Optional[uuid.UUID] = None,
        amount: Decimal = Decimal("1.50"),
        url: HttpUrl = "https://example.com",
        any_url: Optional[AnyUrl] = None,
        where: Path = Path("/tmp"),
        since: datetime.date = datetime.date(2024, 1, 31),
    ) -> str:
        """
        Formats pydantic knows.
        :param when: a moment
        :param day: a day
        :param amount: money
        """
        return "ok"
