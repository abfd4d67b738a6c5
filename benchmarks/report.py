"""latest.md: the figures of latest.json as a Markdown table."""
from __future__ import annotations

import json


def markdown(results: dict) -> str:
    return "```\n" + json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2) + "\n```\n"
