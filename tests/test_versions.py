"""Versioned index directories: publish, switch (rollback), prune."""

from __future__ import annotations

import pytest

from indexer.versions import IndexDir, NoIndexError


def _publish(root: IndexDir, key: str) -> str:
    staging = root.staging(key)
    (staging / "index_infos.json").write_text("{}")
    return root.publish(staging)


def test_publish_switch_and_prune(tmp_path):
    root = IndexDir(tmp_path / "idx")
    with pytest.raises(NoIndexError, match="fashionbert index"):
        root.current_path()
    assert [_publish(root, k) for k in "abcd"] == ["v0001", "v0002", "v0003", "v0004"]
    assert root.current() == "v0004" and not list((tmp_path / "idx" / ".staging").iterdir())
    root.switch("v0002")  # rollback
    assert root.current_path().name == "v0002"
    with pytest.raises(NoIndexError):
        root.switch("v0042")
    assert root.prune(keep=2) == ["v0001", "v0003"]  # the live one is never deleted
    assert root.versions() == ["v0002", "v0004"] and root.current() == "v0002"
    assert _publish(root, "e") == "v0005"  # numbers keep growing after a prune
