import os
import stat

import pandas as pd
import pytest

from shared.catalog import ItemCatalog
from shared.errors import KeyFileError
from shared.keys import generate_keys, key_path, load_key, load_keys
from shared.pseudonyms import PSEUDONYM_HEX, pseudonym, pseudonymize_column
from shared.reidentify import ReidentificationMap


def test_same_key_same_pseudonym_different_key_different():
    a, b = b"a" * 32, b"b" * 32
    assert pseudonym(a, "42") == pseudonym(a, "42")
    assert pseudonym(a, "42") != pseudonym(b, "42")
    assert pseudonym(a, "42") != pseudonym(a, "43")
    assert len(pseudonym(a, "42")) == PSEUDONYM_HEX
    # Known-answer: HMAC-SHA256(key=b"a"*32, "42"), first 16 bytes (RFC 2104 construction via cryptography).
    import hashlib
    import hmac as std_hmac

    assert pseudonym(a, "42") == std_hmac.new(a, b"42", hashlib.sha256).digest()[:16].hex()


def test_pseudonymize_column_maps_each_id_once():
    col = pd.Series(["1", "2", "1", "3"], dtype=object)
    out, mapping = pseudonymize_column(b"k" * 32, col)
    assert out.iloc[0] == out.iloc[2] != out.iloc[1]
    assert set(mapping) == {"1", "2", "3"}


def test_keygen_creates_0600_files_and_refuses_overwrite(tmp_path):
    keys = generate_keys(tmp_path / "k")
    for kind in ("user", "item", "owner"):
        mode = stat.S_IMODE(os.stat(key_path(tmp_path / "k", kind)).st_mode)
        assert mode == 0o600
    assert load_keys(tmp_path / "k") == keys
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_keys(tmp_path / "k")
    assert load_keys(tmp_path / "k") == keys


def test_shared_item_key_is_reused(tmp_path):
    first = generate_keys(tmp_path / "a")
    second = generate_keys(tmp_path / "b", item_key_from=key_path(tmp_path / "a", "item"))
    assert first.item == second.item and first.user != second.user


def test_key_errors_are_clear(tmp_path):
    generate_keys(tmp_path / "k")
    user = key_path(tmp_path / "k", "user")
    with pytest.raises(KeyFileError, match="expected a 'item' key"):
        load_key(user, "item")
    with pytest.raises(KeyFileError, match="not found"):
        load_key(tmp_path / "nope.key", "user")
    os.chmod(user, 0o644)
    with pytest.raises(KeyFileError, match="too open"):
        load_key(user, "user")
    os.chmod(user, 0o600)
    user.write_text("garbage")
    os.chmod(user, 0o600)
    with pytest.raises(KeyFileError, match="not a fedrec key"):
        load_key(user, "user")


def test_catalog_hash_is_content_addressed():
    a = ItemCatalog.from_pseudonyms(["b" * 32, "a" * 32])
    b = ItemCatalog.from_pseudonyms(["a" * 32, "b" * 32, "a" * 32])
    assert a == b and a.content_hash == b.content_hash
    assert list(a.index_of(["b" * 32, "c" * 32])) == [1, -1]
    assert ItemCatalog.from_pseudonyms(["c" * 32]).content_hash != a.content_hash


def test_catalog_round_trip_and_hash_check(tmp_path):
    cat = ItemCatalog.from_pseudonyms(["a" * 32, "b" * 32])
    cat.save(tmp_path / "c.parquet")
    assert ItemCatalog.load(tmp_path / "c.parquet", expected_hash=cat.content_hash) == cat
    with pytest.raises(Exception, match="differs"):
        ItemCatalog.load(tmp_path / "c.parquet", expected_hash="0" * 64)


def test_reid_map_round_trip_and_wrong_key(tmp_path):
    rm = ReidentificationMap(users={"p": "alice"}, items={"q": "film"})
    rm.save(tmp_path / "m.enc", b"o" * 32, bound_to="ds1")
    assert stat.S_IMODE(os.stat(tmp_path / "m.enc").st_mode) == 0o600
    assert b"alice" not in (tmp_path / "m.enc").read_bytes()
    assert ReidentificationMap.load(tmp_path / "m.enc", b"o" * 32, bound_to="ds1") == rm
    with pytest.raises(Exception, match="wrong owner key"):
        ReidentificationMap.load(tmp_path / "m.enc", b"x" * 32, bound_to="ds1")
    with pytest.raises(Exception, match="wrong owner key"):
        ReidentificationMap.load(tmp_path / "m.enc", b"o" * 32, bound_to="ds2")
