"""The storage layer on SQLite and on the machine's PostgreSQL."""

import numpy as np
import pytest
from sqlalchemy.exc import IntegrityError

from common.store import db as db
from common.study import reads


def test_neighbor_rows_round_trip_and_one_row_per_sample(engine):
    f = db.session_factory(engine)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 50).astype(np.uint8)
    images = rng.integers(0, 256, (50, 784)).astype(np.uint8)
    with db.transaction(f) as s:
        ds = db.get_or_create_dataset(session=s, name="mnist", labels=labels, images=images)
        assert db.get_or_create_dataset(session=s, name="mnist", labels=labels, images=images) == ds
        t = db.get_or_create_table(session=s, dataset_id=ds, space=db.ORIGINAL, model_id=None,
                                   distance="l2", k=7, n=50, chunk_size=20)
    ids = rng.integers(0, 50, (50, 7)).astype(np.int32)
    assert db.table_chunks(t) == [(0, 20), (20, 40), (40, 50)]
    for start, stop in db.table_chunks(t):  # one transaction per chunk: its rows and its done-mark
        with db.transaction(f) as s:
            assert db.save_chunk(session=s, table_id=t.id, start=start, ids=ids[start:stop])
    with db.transaction(f) as s:  # a repeated chunk is skipped
        assert not db.save_chunk(session=s, table_id=t.id, start=20, ids=ids[20:40])
        assert db.done_chunks(session=s, table_id=t.id) == {0, 20, 40}
    with f() as s:
        got = db.sample_neighbors(session=s, table_id=t.id, sample_id=33, k=7)
        np.testing.assert_array_equal(got[0], ids[33])
        assert got[1] is None and got[2] is None  # kept: the ids alone, 3 bytes each
        assert len(s.scalar(db.select(db.NeighborRow.ids).where(db.NeighborRow.sample_id == 33))) == 21
        # the reads layer gives the labels and the distances: bytes' exact L2 in [-1, 1] units
        rid, rlab, rdist = reads.stored_neighbors(s, t, ds, 33)
        np.testing.assert_array_equal(rlab, labels[ids[33]])
        d = images[ids[33]].astype(np.int64) - images[33]
        np.testing.assert_array_equal(rdist, (np.sqrt((d * d).sum(1)) * 2 / 255).astype(np.float32))
        np.testing.assert_array_equal(db.load_table_ids(session=s, table_id=t.id, n=50, k=7), ids)
        np.testing.assert_array_equal(db.load_table_ids(session=s, table_id=t.id, n=50, k=7, cols=3), ids[:, :3])
        with pytest.raises(ValueError, match="cols must be in 1..7"):
            db.load_table_ids(session=s, table_id=t.id, n=50, k=7, cols=8)
        assert db.sample_neighbors(session=s, table_id=t.id, sample_id=50, k=7) is None
        np.testing.assert_array_equal(db.dataset_labels(session=s, dataset_id=ds), labels)
    # the same rows twice are refused by the primary key, and the failed transaction leaves nothing half-done
    with pytest.raises(IntegrityError), db.transaction(f) as s:
        db.save_neighbors(session=s, table_id=t.id, start=0, ids=ids[:1])
    with f() as s:
        np.testing.assert_array_equal(db.load_table_ids(session=s, table_id=t.id, n=50, k=7), ids)
    with f() as s, pytest.raises(RuntimeError, match="holds 50 rows, expected 60"):
        db.load_table_ids(session=s, table_id=t.id, n=60, k=7)


def test_experiment_model_and_metric_records(engine):
    f = db.session_factory(engine)
    with db.transaction(f) as s:
        e = db.create_experiment(session=s, config={"k": 7, "models": ["relu_mse"]})
    with db.transaction(f) as s:
        db.record_timing(session=s, experiment_id=e, stage="data", seconds=1.23456)
        db.record_timing(session=s, experiment_id=e, stage="metrics", seconds=2)
        m = db.get_or_create_model(session=s, experiment_id=e, name="relu_mse")
        db.save_checkpoint(session=s, model_id=m.id, epoch=2, losses=[0.5, 0.25], checkpoint=b"ck")
    with db.transaction(f) as s:
        assert db.get_or_create_model(session=s, experiment_id=e, name="relu_mse").id == m.id
        db.save_trained(session=s, model_id=m.id, weights=b"w", recon_ids=[1, 2], recon_epoch=2,
                        reconstructions=np.zeros((2, 784), np.float32),
                        codes=np.arange(10, dtype=np.float32).reshape(5, 2), seconds=1.0)
        db.save_metrics(session=s, experiment_id=e, values=[
            {"metric": "score_at_k", "space": "relu_mse", "distance": "l2", "k": 5, "value": 0.25},
            {"metric": "score_at_k_by_label", "space": "relu_mse", "distance": "l2", "k": 20, "label": 3,
             "value": 0.5}])
    with db.transaction(f) as s:  # saving again replaces, never duplicates
        db.save_metrics(session=s, experiment_id=e, values=[
            {"metric": "score_at_k", "space": "relu_mse", "distance": "l2", "k": 5, "value": 0.3}])
    with f() as s:
        exp = db.get_experiment(session=s, experiment_id=e)
        assert exp.status == db.QUEUED and exp.timings == {"data": 1.235, "metrics": 2.0}
        (row,) = db.list_models(session=s, experiment_id=e)
        assert row.epochs_done == 2 and row.losses == [0.5, 0.25] and row.checkpoint == b"ck"
        np.testing.assert_array_equal(db.model_codes(row), np.arange(10).reshape(5, 2))
        vals = db.load_metrics(session=s, experiment_id=e)
        assert [(v.metric, v.value) for v in vals] == [("score_at_k", 0.3)]
        assert db.latest_experiment_id(session=s) is None  # nothing succeeded yet
        assert db.latest_experiment_id(session=s, status=None) == e


def test_a_new_sqlite_file_uses_32k_pages(tmp_path):
    from sqlalchemy import text

    engine = db.make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    db.init_db(engine)
    with engine.connect() as c:
        assert c.execute(text("PRAGMA page_size")).scalar() == 32768
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()


def test_a_row_another_process_inserted_first_is_found_not_fatal(engine):
    """Two workers preparing two experiments on one data set both try to create the same table row: the
    one that loses the race takes the winner's row, and its own transaction carries on."""
    f = db.session_factory(engine)
    labels = np.zeros(5, np.uint8)
    images = np.zeros((5, 784), np.uint8)
    with db.transaction(f) as s:
        ds = db.get_or_create_dataset(session=s, name="mnist", labels=labels, images=images)
    key = db.table_key(dataset_id=ds, space=db.ORIGINAL, model_id=None, distance="l1", k=3)

    def row():
        return db.TableRow(key=key, dataset_id=ds, model_id=None, space=db.ORIGINAL, distance="l1", k=3, n=5,
                           chunk_size=5, complete=False)

    with db.transaction(f) as loser:
        with db.transaction(f) as winner:  # commits between the loser's look-up and its insert
            winner.add(row())
        got = db._insert_or_find(loser, row(), lambda: loser.scalar(
            db.select(db.TableRow).where(db.TableRow.key == key)))
        assert got.key == key and got.id is not None
        e = db.create_experiment(session=loser, config={"k": 3})  # the transaction is still usable
    with f() as s:
        assert s.query(db.TableRow).count() == 1
        assert db.get_experiment(session=s, experiment_id=e) is not None
    # and with nothing to find, the IntegrityError is not swallowed
    with pytest.raises(IntegrityError), db.transaction(f) as s:
        db._insert_or_find(s, row(), lambda: None)


def test_ids_pack_in_three_bytes_below_2_24_and_rows_stored_whole_before_still_read(engine):
    """Ids below 2^24 take 3 bytes, larger ones 4 (int32), read back by length; a row an older aeknn stored
    with its labels and distances is served as it was stored."""
    small = np.array([[0, 1, 255, 256, 65535, 65536, 2**24 - 1]], np.int32)
    big = np.array([[0, 2**24, 2**31 - 1, 5, 6, 7, 8]], np.int32)
    for ids, width in ((small, 21), (big, 28)):
        [blob] = db.pack_ids(ids)
        assert len(blob) == width
        np.testing.assert_array_equal(db.unpack_ids(blob, 7), ids[0])
        np.testing.assert_array_equal(db.unpack_ids(blob, 7, 3), ids[0, :3])
    with pytest.raises(ValueError, match="holds no 7 ids"):
        db.unpack_ids(b"12345", 7)
    # many rows at once (a table read): packed alike, or both ways in one read, as one row at a time reads them
    rows = np.concatenate([small, small[:, ::-1], big])
    for blobs in (db.pack_ids(rows[:2]), db.pack_ids(rows[:2]) + db.pack_ids(rows[2:]), db.pack_ids(rows[2:])):
        for cols in (7, 3):
            np.testing.assert_array_equal(db.unpack_rows(blobs, 7, cols), [db.unpack_ids(b, 7, cols) for b in blobs])
    assert db.unpack_rows([], 7, 3).shape == (0, 3)
    with pytest.raises(ValueError, match="holds no 7 ids"):
        db.unpack_rows(db.pack_ids(small) + [b"12345"], 7, 7)
    f = db.session_factory(engine)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 20).astype(np.uint8)
    with db.transaction(f) as s:
        ds = db.get_or_create_dataset(session=s, name="old", labels=labels,
                                      images=rng.integers(0, 256, (20, 784)).astype(np.uint8))
        t = db.get_or_create_table(session=s, dataset_id=ds, space=db.ORIGINAL, model_id=None, distance="l1",
                                   k=3, n=20, chunk_size=20)
        ids, dist = np.array([4, 9, 2], "<i4"), np.array([0.5, 0.25, 0.125], "<f4")
        s.execute(db.insert(db.NeighborRow).values(table_id=t.id, sample_id=0, ids=ids.tobytes(),
                                                   labels=labels[ids].tobytes(), distances=dist.tobytes()))
    with f() as s:
        got = reads.stored_neighbors(s, s.get(db.TableRow, t.id), ds, 0)
        np.testing.assert_array_equal(got[0], ids)
        np.testing.assert_array_equal(got[1], labels[ids])
        np.testing.assert_array_equal(got[2], dist)  # as stored, not computed again
        np.testing.assert_array_equal(db.load_table_ids(session=s, table_id=t.id, n=1, k=3), ids[None])

