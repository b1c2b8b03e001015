"""The Outlink portal: a Flask application built by :func:`create_app`.

``gunicorn 'web:create_app()'`` (see ``web/gunicorn_conf.py``) or
``python -m web serve --config portal.toml`` serve it over TLS; ``python -m web
init`` prepares the database, the staff CA and the first administrator.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flask import Flask

from web.config import CONFIG_ENV, load_config, secret_key

__all__ = ["create_app"]

#: Forms and API bodies are small; anything bigger is refused before it is parsed.
MAX_CONTENT_LENGTH = 256 * 1024


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the portal app.

    Settings come from the TOML file named by ``$OUTLINK_PORTAL_CONFIG`` (if set),
    then ``OUTLINK_PORTAL_*`` variables; ``test_config`` overrides both: lowercase
    keys are portal settings, UPPERCASE keys go to ``app.config`` as they are.
    """
    import web.alarms
    import web.desktop
    import web.telemetry
    from web import (
        admin,
        api,
        audit,
        auth,
        authz,
        cli,
        errors,
        fleet,
        inputs,
        relay,
        security,
        templating,
    )
    from web.certauth import PeerCertMiddleware
    from web.db import db
    from web.sessions import ServerSessionInterface

    test_config = dict(test_config or {})
    flask_overrides = {k: v for k, v in test_config.items() if k.isupper()}
    portal_overrides = {k: v for k, v in test_config.items() if not k.isupper()}
    config_file = os.environ.get(CONFIG_ENV)
    config = load_config(Path(config_file) if config_file else None, portal_overrides)

    app = Flask(__name__)
    app.config.update(
        OUTLINK=config,
        SECRET_KEY=secret_key(config.data_dir),
        MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH,
        PREFERRED_URL_SCHEME="https",
        TEMPLATES_AUTO_RELOAD=False,
    )
    security.init_app(app)
    app.config.update(flask_overrides)
    logging.getLogger("web").setLevel(config.log_level)

    db.init_app(app, config.database_url)
    app.session_interface = ServerSessionInterface()
    # The guard must run before any other before_request (CSRF included): registered first.
    app.before_request_funcs.setdefault(None, []).insert(0, authz.guard)
    # Then malformed text is refused (400) before CSRF or any view reads it.
    app.before_request_funcs[None].insert(1, inputs.refuse_control_characters)
    # Every <int:...> in a route is a bounded database id (before any rule is added).
    app.url_map.converters["int"] = inputs.IdConverter
    errors.init_app(app)
    templating.init_app(app)
    relay.init_app(app, app.config.get("OUTLINK_RELAY_RPC"))
    cli.init_app(app)
    for blueprint in (auth.bp, fleet.bp, admin.bp, audit.bp, api.bp):
        app.register_blueprint(blueprint)
    for area in (web.desktop, web.telemetry, web.alarms):
        area.init_app(app)
    app.view_functions["static"] = authz.public(_static_view(app))
    app.jinja_env.globals.update(Perm=authz.Perm)
    app.wsgi_app = PeerCertMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, from_proxy=config.front != "gunicorn"
    )
    return app


def _static_view(app: Flask) -> Any:
    send = app.send_static_file

    def static(filename: str) -> Any:
        return send(filename)

    return static
