"""The acceptor's durable store: what is saved is there after reopening; WAL with full sync."""

from messages.quorum import Ballot
from node.quorum.rules import EMPTY, Slot
from node.quorum.store import SlotStore


def test_saved_slots_survive_reopening(tmp_path):
    store = SlotStore(tmp_path / "q.sqlite3")
    assert store.load(["a"]) == {"a": EMPTY}
    store.save(
        {"a": Slot(promised=Ballot(2, "m1")), "b": Slot(accepted=Ballot(1, "m2"), value=b"v")}
    )
    store.set_meta("config", b"{}")
    store.close()
    again = SlotStore(tmp_path / "q.sqlite3")
    assert again.load(["a", "b", "c"]) == {
        "a": Slot(promised=Ballot(2, "m1")),
        "b": Slot(accepted=Ballot(1, "m2"), value=b"v"),
        "c": EMPTY,
    }
    assert again.get_meta("config") == b"{}"
    assert again.get_meta("missing") is None


def test_pages_list_accepted_records_in_key_order(tmp_path):
    store = SlotStore(tmp_path / "q.sqlite3")
    store.save({f"k{i:03}": Slot(accepted=Ballot(i, "m1"), value=b"%d" % i) for i in range(1, 8)})
    store.save({"k000": Slot(promised=Ballot(5, "m2"))})
    first = store.page("", 3)
    assert [k for k, _ in first] == ["k001", "k002", "k003"]
    rest = store.page("k003", 10)
    assert [k for k, _ in rest] == ["k004", "k005", "k006", "k007"]
    assert rest[-1][1].value == b"7"


def test_the_database_is_in_wal_mode_with_full_sync(tmp_path):
    store = SlotStore(tmp_path / "q.sqlite3")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_many_keys_load_in_chunks(tmp_path):
    store = SlotStore(tmp_path / "q.sqlite3")
    store.save({f"k{i}": Slot(accepted=Ballot(1, "m1"), value=b"x") for i in range(1200)})
    store.close()
    again = SlotStore(tmp_path / "q.sqlite3")
    loaded = again.load([f"k{i}" for i in range(1300)])
    assert sum(1 for s in loaded.values() if s.value == b"x") == 1200


def test_the_cache_is_dropped_past_its_limit_and_reads_come_from_disk(tmp_path):
    store = SlotStore(tmp_path / "q.sqlite3", cache_limit=10)
    store.save({f"k{i}": Slot(accepted=Ballot(1, "m1"), value=b"%d" % i) for i in range(30)})
    assert store.load(["k3"])["k3"].value == b"3"
    assert len(store._cache) <= 11


def test_checkpoints_run_apart_from_commits(tmp_path):
    import threading

    store = SlotStore(tmp_path / "q.sqlite3")
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    store.save({f"k{i}": Slot(accepted=Ballot(1, "m1"), value=b"x") for i in range(50)})
    worker = threading.Thread(target=store.checkpoint)
    worker.start()
    store.save({"late": Slot(accepted=Ballot(2, "m1"), value=b"y")})
    worker.join()
    store.checkpoint()
    busy, logged, copied = store._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and logged == copied, "every frame of the log is in the database"
    assert store.commits == 2
    store.close()
    again = SlotStore(tmp_path / "q.sqlite3")
    assert again.load(["k7", "late"])["late"].value == b"y"
