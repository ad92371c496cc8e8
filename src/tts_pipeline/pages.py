"""Jinja2 rendering for the HTML pages (speaker review, try-it, listening page).

Why one place: every page is a single self-contained file (no external resources), so the one
shared stylesheet `templates/pages.css` is inlined by the templates; autoescape is always on so
transcripts and speaker names can never inject markup.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("tts_pipeline", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a missing value is a bug, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context: Any) -> str:
    """Render `templates/<template>` with `context` (autoescaped)."""
    return _environment().get_template(template).render(**context)
