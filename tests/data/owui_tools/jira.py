"""
title: Jira
author: community
author_url: https://github.com/example/jira-owui
git_url: https://github.com/example/jira-owui.git
version: 2.1.0
license: Apache-2.0
description: Search, read, create and comment on Jira issues through the REST API v2.
requirements: requests
"""

import base64
from typing import Any, Literal, Optional

import requests
from pydantic import BaseModel, Field


class Jira:
    def __init__(self, username: str, api_key: str, base_url: str):
        self.base_url = base_url.rstrip("/")
        token = base64.b64encode(f"{username}:{api_key}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def get(self, endpoint: str, params: Optional[dict] = None) -> dict:
        r = requests.get(f"{self.base_url}/rest/api/2/{endpoint}", headers=self.headers, params=params, timeout=30)
        r.raise_for_status()
        return r.json()

    def post(self, endpoint: str, data: dict) -> dict:
        r = requests.post(f"{self.base_url}/rest/api/2/{endpoint}", headers=self.headers, json=data, timeout=30)
        r.raise_for_status()
        return r.json()


class Tools:
    class Valves(BaseModel):
        username: str = Field("", description="Your Jira username or email")
        password: str = Field("", description="Your Jira API token")
        base_url: str = Field("", description="e.g. https://your-company.atlassian.net")
        default_project: str = Field("", description="Project key used when none is given")

    class UserValves(BaseModel):
        api_token: str = Field("", description="Your own Jira API token (overrides the admin's)")

    def __init__(self):
        self.valves = self.Valves()

    def _jira(self, __user__: dict) -> Jira:
        user_valves = __user__.get("valves")
        token = (user_valves.api_token if user_valves else "") or self.valves.password
        return Jira(self.valves.username, token, self.valves.base_url)

    async def get_issue(self, issue_id: str, __user__: dict = {}, __event_emitter__=None) -> str:
        """
        Get a Jira issue by its ID. The response includes the title, description, status and assignee.
        :param issue_id: The ID of the issue, e.g. PROJ-123.
        :return: A summary of the issue.
        """
        if __event_emitter__:
            await __event_emitter__({"type": "status", "data": {"description": f"Fetching {issue_id}", "done": False}})
        issue = self._jira(__user__).get(f"issue/{issue_id}")
        fields = issue["fields"]
        return (
            f"{issue['key']}: {fields['summary']}\nStatus: {fields['status']['name']}\n"
            f"Assignee: {(fields.get('assignee') or {}).get('displayName', 'Unassigned')}\n\n{fields.get('description') or ''}"
        )

    async def search_issues(
        self, jql: str, max_results: int = 20, fields: Optional[list[str]] = None, __user__: dict = {}
    ) -> list[dict]:
        """
        Search issues with JQL.
        :param jql: The JQL query, e.g. 'project = PROJ AND status = "In Progress"'.
        :param max_results: The maximum number of issues to return.
        :param fields: Which fields to return (default: key, summary, status).
        """
        data = self._jira(__user__).get(
            "search", {"jql": jql, "maxResults": max_results, "fields": ",".join(fields or ["summary", "status"])}
        )
        return [{"key": i["key"], **i["fields"]} for i in data.get("issues", [])]

    async def create_issue(
        self,
        summary: str,
        description: str,
        issue_type: Literal["Task", "Bug", "Story", "Epic"] = "Task",
        project_key: Optional[str] = None,
        priority: Optional[Literal["Highest", "High", "Medium", "Low", "Lowest"]] = None,
        labels: list[str] = [],
        __user__: dict = {},
    ) -> dict[str, Any]:
        """
        Create a new Jira issue.
        :param summary: A one-line title.
        :param description: The full description, in Jira markup.
        :param issue_type: The type of issue.
        :param project_key: The project (defaults to the configured project).
        :param priority: The priority, when the project uses priorities.
        :param labels: Labels to add.
        :return: The new issue's key and URL.
        """
        fields: dict[str, Any] = {
            "project": {"key": project_key or self.valves.default_project},
            "summary": summary,
            "description": description,
            "issuetype": {"name": issue_type},
            "labels": labels,
        }
        if priority:
            fields["priority"] = {"name": priority}
        created = self._jira(__user__).post("issue", {"fields": fields})
        return {"key": created["key"], "url": f"{self.valves.base_url}/browse/{created['key']}"}

    async def add_comment(self, issue_id: str, comment: str, __user__: dict = {}) -> str:
        """
        Add a comment to an issue.
        :param issue_id: The ID of the issue.
        :param comment: The comment text.
        """
        self._jira(__user__).post(f"issue/{issue_id}/comment", {"body": comment})
        return f"Comment added to {issue_id}"
