"""`diffscat explore`: an interactive explorer of the forward model in the browser.

`Explorer` (in `_state.py`) turns the page's parameters into a `diffscat simulate` config and a pattern
(compiled once per shape class, detector and photon energy); `create_app` / `serve` (in `_app.py`) put it
behind a small Starlette app served by uvicorn on 127.0.0.1. The page is `index.html` (no build step).
Docs: docs/explore.md.
"""

from ._app import (
    bind_socket as bind_socket,
    create_app as create_app,
    make_server as make_server,
    serve as serve,
)
from ._state import (
    DEFAULTS as DEFAULTS,
    SHAPES as SHAPES,
    ExploreError as ExploreError,
    Explorer as Explorer,
    params_from_config as params_from_config,
    to_toml as to_toml,
)
