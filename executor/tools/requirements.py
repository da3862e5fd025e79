"""A tool's ``requirements:`` frontmatter line: parsed, refused or normalized, and hashed into a layer id.

Open WebUI 0.12.4 splits the value on commas and hands every item to ``pip install`` as an argument, so an item may
be anything pip accepts: ``--index-url``, ``-e``, ``-r file``, a URL, a path, a VCS ref. Here only what PEP 508 calls
a name with extras, version specifiers and an environment marker is accepted; everything else is refused with
:class:`~executor.errors.Invalid` naming the item. One extension: a comma inside a specifier set (``b>=2,<3``), which
Open WebUI would split into a broken ``<3``, is joined back to the item before it, and commas inside extras
(``c[a,b]``) or quoted marker values do not split.

The accepted set is normalized (canonical names, sorted extras and specifiers, deduplicated, sorted), so the same set
written in any order, case or spelling gives the same :func:`layer_id`. pip is given the normalized strings, never the
raw text: a canonical name cannot look like a file to pip (``x.whl`` becomes ``x-whl``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from executor.errors import Invalid

FIELD = "content"  # the requirements live in the tool's source (its frontmatter), which is the form's content field

# Bounds on what one tool may ask for: a longer list is a mistake or an attack on the build host.
MAX_REQUIREMENTS = 64
MAX_ITEM_CHARS = 200

# Bump when the way a layer is built changes (pip options, layout): old layers are then not reused.
RECIPE = "1"

_SPECIFIER_START = re.compile(r"^\s*(===|==|!=|~=|<=|>=|<|>)")
# What pip reads as a local archive when it is given as a requirement (pip's is_archive_file).
_ARCHIVE = re.compile(r"\.(whl|zip|tar|tgz|tbz|txz|tlz|tar\.gz|tar\.bz2|tar\.xz|tar\.lz|tar\.lzma)$", re.IGNORECASE)


def _refuse(item: str, why: str) -> Invalid:
    shown = item if len(item) <= 80 else item[:77] + "..."
    return Invalid(
        "invalid_requirements",
        f"frontmatter requirements: {shown!r} is refused: {why}. Only package names with optional extras, version "
        "specifiers and environment markers are accepted (for example: requests, pydantic>=2, httpx[http2]==0.28.1)",
        field=FIELD,
    )


@dataclass(frozen=True, slots=True)
class Requirements:
    """A normalized, sorted, deduplicated set of requirement strings (what pip is given)."""

    items: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _top_level_parts(value: str) -> list[str]:
    """Split on commas outside brackets and quotes (extras ``c[a,b]``, marker strings)."""
    parts: list[str] = []
    start = depth = 0
    quote = ""
    for i, ch in enumerate(value):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def _split(value: str) -> list[str]:
    """Open WebUI's split on commas, except inside extras or quotes, and with specifier continuations (``<3``
    after ``b>=2``) joined back: what Open WebUI would hand pip as broken pieces is read as one item."""
    items: list[str] = []
    for part in _top_level_parts(value):
        part = part.strip()
        if not part:
            continue
        if items and _SPECIFIER_START.match(part):
            items[-1] = f"{items[-1]},{part}"
        else:
            items.append(part)
    return items


def _normalize(item: str) -> str:
    """The canonical string of one accepted requirement, or Invalid naming it."""
    if len(item) > MAX_ITEM_CHARS:
        raise _refuse(item, f"it is longer than {MAX_ITEM_CHARS} characters")
    if item.startswith("-"):
        raise _refuse(item, "pip options are not accepted")
    if "://" in item or item.startswith(("git+", "hg+", "svn+", "bzr+")):
        raise _refuse(item, "URLs and VCS references are not accepted")
    if item.startswith((".", "/", "~", "\\")) or "/" in item.split(";", 1)[0] or "\\" in item:
        raise _refuse(item, "paths are not accepted")
    try:
        req = Requirement(item)
    except InvalidRequirement as exc:
        raise _refuse(item, f"it is not a valid requirement ({str(exc).splitlines()[0]})") from None
    if req.url is not None:
        raise _refuse(item, "direct references (name @ url) are not accepted")
    if _ARCHIVE.search(req.name):
        raise _refuse(item, "it names a file, not a package")
    text: str = canonicalize_name(req.name)
    if req.extras:
        text += "[" + ",".join(sorted(canonicalize_name(e) for e in req.extras)) + "]"
    text += str(req.specifier)  # SpecifierSet's str is sorted
    if req.marker is not None:
        text += f"; {req.marker}"
    return text


def parse_requirements(value: str | Iterable[str] | None) -> Requirements:
    """Parse a frontmatter ``requirements`` value (the comma list, or items already split).

    Raises :class:`~executor.errors.Invalid` (field ``content``) naming the first refused item: a pip option, a
    URL or direct reference, a VCS reference, a path or archive file name, or anything PEP 508 does not parse."""
    if value is None:
        return Requirements()
    raw = _split(value) if isinstance(value, str) else [i.strip() for i in value if i.strip()]
    if len(raw) > MAX_REQUIREMENTS:
        raise Invalid(
            "invalid_requirements",
            f"frontmatter requirements: {len(raw)} items, more than the {MAX_REQUIREMENTS} allowed",
            field=FIELD,
        )
    return Requirements(tuple(sorted({_normalize(item) for item in raw})))


def layer_id(requirements: Requirements, target: str = "") -> str:
    """The cache key of the layer for ``requirements`` built for ``target`` (a python/platform tag string): stable
    across runs and independent of the order and spelling the tool used."""
    doc = json.dumps({"recipe": RECIPE, "requirements": list(requirements.items), "target": target}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:32]
