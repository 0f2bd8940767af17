"""Fixtures for the end-to-end tests (helpers in e2e_helpers.py): a control plane per test,
on SQLite and on Postgres, and the AWS CLI pointed at it. Every process a test starts is
killed when it ends, pass or fail."""

import uuid

import pytest

from e2e_helpers import PG_ADMIN, Aws, ControlPlane, kill_everything_under, psql, skip_or_fail


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request):
    """None (the embedded SQLite default) or a fresh Postgres database, dropped afterwards."""
    if request.param == "sqlite":
        yield None
        return
    name = f"mooring_e2e_{uuid.uuid4().hex[:12]}"
    try:
        created = psql(f"CREATE DATABASE {name}")
    except FileNotFoundError:
        skip_or_fail("psql not installed: cannot create a Postgres database")
    if created.returncode != 0:
        skip_or_fail(f"Postgres at 127.0.0.1:5432 unavailable: {created.stderr.strip()}")
    yield f"postgres://{PG_ADMIN['user']}@{PG_ADMIN['host']}:{PG_ADMIN['port']}/{name}"
    psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def control_plane(tmp_path, database_url):
    cp = ControlPlane(tmp_path / "cp", database_url)
    try:
        yield cp.start()
    finally:
        cp.stop()
        kill_everything_under(cp.data_dir)


@pytest.fixture
def aws(control_plane, tmp_path):
    home = tmp_path / "aws-home"
    home.mkdir()
    return Aws(control_plane, home)


