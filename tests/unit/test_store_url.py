"""The `profile_store` setting: which engine and which file or database it names."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from interest_core.config import load_settings
from interest_core.store_sqlite import SqliteProfileStore
from interest_core.stores import open_store, sqlite_path


def test_the_default_is_the_sqlite_file_under_var_dir(tmp_path: Path) -> None:
    settings = load_settings(var_dir=tmp_path)
    assert settings.store_url == f"sqlite:///{tmp_path / 'profiles.sqlite3'}"
    assert settings.store_path == tmp_path / "profiles.sqlite3"
    store = open_store(settings.store_url)
    assert isinstance(store, SqliteProfileStore) and store.path == tmp_path / "profiles.sqlite3"
    store.close()


def test_sqlite_urls_are_relative_with_three_slashes_and_absolute_with_four() -> None:
    assert sqlite_path("sqlite:///var/p.sqlite3") == Path("var/p.sqlite3")
    assert sqlite_path("sqlite:////srv/p.sqlite3") == Path("/srv/p.sqlite3")
    with pytest.raises(ValueError, match="sqlite:///relative"):
        sqlite_path("sqlite://p.sqlite3")


def test_the_setting_is_read_from_the_environment_and_checked(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.setenv("INTEREST_PROFILE_STORE", "postgresql://interest@db.internal:5432/interest")
    settings = load_settings(var_dir=tmp_path)
    assert settings.store_url == "postgresql://interest@db.internal:5432/interest"
    with pytest.raises(ValueError, match="PostgreSQL"):
        _ = settings.store_path
    monkeypatch.setenv("INTEREST_PROFILE_STORE", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    assert load_settings().store_path == tmp_path / "x.sqlite3"
    monkeypatch.setenv("INTEREST_PROFILE_STORE", "mysql://db/interest")
    with pytest.raises(ValidationError, match="sqlite:/// or postgresql://"):
        load_settings()
