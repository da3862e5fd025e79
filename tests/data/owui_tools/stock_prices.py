"""
title: Stock Prices
author: community
version: 0.2.1
description: Quotes, history and company info from a market data API.
requirements: yfinance
"""

from datetime import date
from enum import Enum
from typing import Literal, Optional

import httpx
from pydantic import BaseModel, Field, SecretStr


class Interval(str, Enum):
    DAILY = "1d"
    WEEKLY = "1wk"
    MONTHLY = "1mo"


class Tools:
    class Valves(BaseModel):
        API_KEY: SecretStr = Field(SecretStr(""), description="Market data API key")
        BASE_URL: str = Field("https://api.marketdata.invalid/v1", description="API base URL")
        DEFAULT_CURRENCY: Literal["USD", "EUR", "GBP", "JPY"] = "USD"

    def __init__(self):
        self.valves = self.Valves()

    def _get(self, path: str, **params) -> dict:
        headers = {"Authorization": f"Bearer {self.valves.API_KEY.get_secret_value()}"}
        r = httpx.get(f"{self.valves.BASE_URL}/{path}", params=params, headers=headers, timeout=20)
        r.raise_for_status()
        return r.json()

    def get_stock_price(self, ticker: str) -> str:
        """
        Get the current price of a stock.
        :param ticker: The ticker symbol, e.g. AAPL, MSFT, ASML.AS.
        :return: The price and daily change.
        """
        q = self._get(f"quote/{ticker}")
        return f"{ticker.upper()}: {q['price']} {q.get('currency', self.valves.DEFAULT_CURRENCY)} ({q['change_pct']:+.2f}%)"

    def get_price_history(
        self,
        ticker: str,
        start: date,
        end: Optional[date] = None,
        interval: Interval = Interval.DAILY,
        adjusted: bool = True,
    ) -> list[dict]:
        """
        Historical prices for a ticker.
        :param ticker: The ticker symbol.
        :param start: First day (YYYY-MM-DD).
        :param end: Last day (default today).
        :param interval: Bar size.
        :param adjusted: Adjust for splits and dividends.
        """
        return self._get(
            f"history/{ticker}", start=start.isoformat(), end=(end or date.today()).isoformat(),
            interval=interval.value, adjusted=adjusted,
        )["bars"]

    def compare_stocks(self, tickers: list[str], metric: Literal["price", "pe_ratio", "market_cap"] = "price") -> dict:
        """
        Compare several stocks on one metric.
        :param tickers: Two or more ticker symbols.
        :param metric: What to compare.
        """
        return {t: self._get(f"quote/{t}").get(metric) for t in tickers}
