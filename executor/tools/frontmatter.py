"""A tool file's frontmatter, read as text (the service never imports a tool file).

The rules are Open WebUI 0.12.4's ``extract_frontmatter`` (``open_webui/utils/plugin.py``): the first line must be
exactly ``\"\"\"`` (surrounding whitespace ignored); every following line up to the first one containing ``\"\"\"``
that looks like ``key: value`` (key ``[a-zA-Z_]+``) is an entry, key and value stripped, the last duplicate
winning. Anything else gives ``{}``. ``requirements`` is a comma list, split as its
``install_frontmatter_requirements`` splits it.
"""

from __future__ import annotations

import re

# Open WebUI's pattern, with IGNORECASE: ``[a-z_]+`` is every ASCII letter and '_'.
_ENTRY = re.compile(r"^\s*([a-z_]+):\s*(.*)\s*$", re.IGNORECASE)


def extract_frontmatter(content: str) -> dict[str, str]:
    """The ``key: value`` lines of the opening docstring, as Open WebUI reads them."""
    lines = content.splitlines()
    if not lines or lines[0].strip() != '"""':
        return {}
    found: dict[str, str] = {}
    for line in lines[1:]:
        if '"""' in line:
            # The closing line ends it, even when it also holds "key: value" before the quotes.
            break
        match = _ENTRY.match(line)
        if match:
            key, value = match.groups()
            found[key.strip()] = value.strip()
    return found


def requirements(frontmatter: dict[str, str]) -> list[str]:
    """The ``requirements`` entry as a list: comma-separated, each stripped, empty items dropped, order kept."""
    raw = frontmatter.get("requirements", "")
    return [item.strip() for item in raw.split(",") if item.strip()]
