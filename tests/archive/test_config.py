"""Settings: embedded defaults, TOML file discovery, environment overrides, loud refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from archive.config import LocalColdTierConfig, LocalTierConfig, S3TierConfig, load_settings
from archive.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("PERMAFROST_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_no_configuration_is_the_embedded_default() -> None:
    s = load_settings()
    assert s.catalog_url == "sqlite:///permafrost-data/catalog.db"
    assert s.tiers["hot"] == LocalTierConfig(path=Path("permafrost-data/tiers/hot"), role="hot")
    assert s.tiers["cold"] == LocalColdTierConfig(path=Path("permafrost-data/tiers/cold"))
    assert s.policy.copies == {"hot": 1, "cold": 1}
    assert s.zstd_level == 3


def test_file_in_current_folder_then_env_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "permafrost.toml").write_text(
        'zstd_level = 7\nhot_tier = "s3hot"\n'
        '[tiers.s3hot]\nkind = "s3"\nbucket = "archive-hot"\nendpoint_url = "http://127.0.0.1:9"\n'
        'secret_access_key = "hunter2"\nstorage_class = "STANDARD_IA"\n'
    )
    s = load_settings()
    assert s.zstd_level == 7
    hot = s.tiers["s3hot"]
    assert isinstance(hot, S3TierConfig)
    assert hot.backend_settings()["secret_access_key"] == "hunter2"
    assert "hunter2" not in str(hot.public_settings())  # never stored in the catalog
    monkeypatch.setenv("PERMAFROST_ZSTD_LEVEL", "12")
    assert load_settings().zstd_level == 12


def test_explicit_and_env_named_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text("zstd_level = 5\n")
    assert load_settings(cfg).zstd_level == 5
    monkeypatch.setenv("PERMAFROST_CONFIG", str(cfg))
    assert load_settings().zstd_level == 5
    monkeypatch.setenv("PERMAFROST_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_settings()
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("zstd_levle = 3\n", "zstd_levle"),
        ("zstd_level = 99\n", "zstd_level"),
        ('[tiers.hot]\nkind = "ftp"\npath = "x"\n', "kind"),
        ('[tiers.hot]\nkind = "local"\npath = "x"\ncolour = "blue"\n', "colour"),
        ('[tiers.hot]\nkind = "s3"\nbucket = "ab"\n', "bucket"),
        ('hot_tier = "fast"\n', "fast"),
        ("this is not toml", "cannot read"),
    ],
)
def test_bad_configuration_is_refused_loudly(tmp_path: Path, text: str, complaint: str) -> None:
    (tmp_path / "permafrost.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert complaint in str(info.value)
    assert info.value.exit_code == 2
