"""The public API is importable from the package root, and the root import stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import workflow_cache


@pytest.mark.parametrize("name", workflow_cache.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(workflow_cache, name) is not None


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        workflow_cache.no_such_thing  # noqa: B018


def test_importing_the_package_does_not_import_celery_or_archives() -> None:
    code = (
        "import sys, workflow_cache; "
        "print(sorted(m for m in ('celery', 'zstandard', 'fsspec') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
