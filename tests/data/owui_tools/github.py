"""
title: GitHub
author: community
author_url: https://github.com/example
version: 0.6.0
description: Repositories, issues and pull requests through the GitHub REST API.
"""

from typing import Any, Literal, Optional

import httpx
from pydantic import BaseModel, Field


class Tools:
    class Valves(BaseModel):
        GITHUB_TOKEN: str = Field("", description="A personal access token (classic or fine-grained)")
        API_URL: str = Field("https://api.github.com", description="GitHub or GitHub Enterprise API URL")
        DEFAULT_OWNER: str = Field("", description="Owner used when a repo is given without one")

    def __init__(self):
        self.valves = self.Valves()

    def _client(self) -> httpx.AsyncClient:
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        if self.valves.GITHUB_TOKEN:
            headers["Authorization"] = f"Bearer {self.valves.GITHUB_TOKEN}"
        return httpx.AsyncClient(base_url=self.valves.API_URL, headers=headers, timeout=30)

    def _repo(self, repo: str) -> str:
        return repo if "/" in repo else f"{self.valves.DEFAULT_OWNER}/{repo}"

    async def list_issues(
        self,
        repo: str,
        state: Literal["open", "closed", "all"] = "open",
        labels: Optional[list[str]] = None,
        per_page: int = 30,
        __event_emitter__=None,
    ) -> list[dict[str, Any]]:
        """
        List the issues of a repository.
        :param repo: "owner/name", or "name" for the default owner.
        :param state: Which issues.
        :param labels: Only issues with all these labels.
        :param per_page: Page size (max 100).
        """
        params: dict[str, Any] = {"state": state, "per_page": per_page}
        if labels:
            params["labels"] = ",".join(labels)
        async with self._client() as c:
            r = await c.get(f"/repos/{self._repo(repo)}/issues", params=params)
        r.raise_for_status()
        return [{"number": i["number"], "title": i["title"], "state": i["state"], "url": i["html_url"]} for i in r.json()]

    async def create_issue(self, repo: str, title: str, body: str = "", labels: list[str] = [], assignees: list[str] = []) -> dict:
        """
        Open a new issue.
        :param repo: "owner/name".
        :param title: The issue title.
        :param body: Markdown body.
        :param labels: Labels to apply.
        :param assignees: Logins to assign.
        """
        async with self._client() as c:
            r = await c.post(f"/repos/{self._repo(repo)}/issues",
                             json={"title": title, "body": body, "labels": labels, "assignees": assignees})
        r.raise_for_status()
        return {"number": r.json()["number"], "url": r.json()["html_url"]}

    async def get_file(self, repo: str, path: str, ref: Optional[str] = None) -> str:
        """
        Read a file from a repository.
        :param repo: "owner/name".
        :param path: Path inside the repository.
        :param ref: Branch, tag or commit (default branch when omitted).
        """
        async with self._client() as c:
            r = await c.get(f"/repos/{self._repo(repo)}/contents/{path}", params={"ref": ref} if ref else None,
                            headers={"Accept": "application/vnd.github.raw+json"})
        r.raise_for_status()
        return r.text

    async def search_repositories(self, query: str, sort: Optional[Literal["stars", "forks", "updated"]] = None, limit: int = 10) -> list:
        """
        Search repositories.
        :param query: GitHub search syntax, e.g. "language:python stars:>1000".
        :param sort: Sort order.
        :param limit: How many.
        """
        async with self._client() as c:
            r = await c.get("/search/repositories", params={"q": query, "sort": sort or "", "per_page": limit})
        return [{"name": i["full_name"], "stars": i["stargazers_count"]} for i in r.json().get("items", [])]
