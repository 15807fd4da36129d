"""``workflow-cache ui``: a small web dashboard of runs, step outcomes and archives.

Needs the ``ui`` extra (Starlette, uvicorn). The app is ``workflow_cache.ui.app.create_app``;
importing this package (the CLI does) loads neither.
"""
