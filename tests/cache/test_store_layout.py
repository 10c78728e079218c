import json

import pytest

from wdr_pipe.cache import Store, config_key, commit_path
from wdr_pipe.cache.atomic import atomic_path
from wdr_pipe.errors import UserError


def test_store_create_and_reopen(tmp_path):
    Store(tmp_path / "s", create=True)
    assert json.loads((tmp_path / "s" / "_store.json").read_text())["schema_version"] == 1
    Store(tmp_path / "s")  # reopens


def test_not_a_store_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="not a wdr-pipe store.*wdr-pipe fetch"):
        Store(tmp_path)


def test_incompatible_store_is_refused(tmp_path):
    Store(tmp_path, create=True)
    (tmp_path / "_store.json").write_text('{"schema_version": 99}')
    with pytest.raises(UserError, match="schema version 99"):
        Store(tmp_path)


def test_config_key_changes_with_any_field():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Cfg:
        a: int = 1
        b: str = "x"

    assert config_key(Cfg()) == config_key(Cfg())
    assert config_key(Cfg()) != config_key(Cfg(a=2))
    assert config_key(Cfg()) != config_key(Cfg(), "input-digest")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_image_store_fixture_is_committed(image_store):
    s = Store(image_store)
    assert s.splits() == ["test", "train", "validation"]
    shards = s.image_shards("train")
    assert len(shards) == 3 and all(commit_path(p).exists() for p in shards)
