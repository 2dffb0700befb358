"""The storage layer on SQLite and on the machine's PostgreSQL."""

import numpy as np
import pytest
from sqlalchemy.exc import IntegrityError

from common.store import db as db


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
    dist = rng.random((50, 7)).astype(np.float32)
    assert db.table_chunks(t) == [(0, 20), (20, 40), (40, 50)]
    for start, stop in db.table_chunks(t):  # one transaction per chunk: its rows and its done-mark
        with db.transaction(f) as s:
            assert db.save_chunk(session=s, table_id=t.id, start=start, ids=ids[start:stop],
                                 labels=labels[ids[start:stop]], distances=dist[start:stop])
    with db.transaction(f) as s:  # a repeated chunk is skipped
        assert not db.save_chunk(session=s, table_id=t.id, start=20, ids=ids[20:40],
                                 labels=labels[ids[20:40]], distances=dist[20:40])
        assert db.done_chunks(session=s, table_id=t.id) == {0, 20, 40}
    with f() as s:
        got = db.sample_neighbors(session=s, table_id=t.id, sample_id=33)
        np.testing.assert_array_equal(got[0], ids[33])
        np.testing.assert_array_equal(got[1], labels[ids[33]])
        np.testing.assert_array_equal(got[2], dist[33])
        np.testing.assert_array_equal(db.load_table_ids(session=s, table_id=t.id, n=50, k=7), ids)
        np.testing.assert_array_equal(db.load_table_ids(session=s, table_id=t.id, n=50, k=7, cols=3), ids[:, :3])
        with pytest.raises(ValueError, match="cols must be in 1..7"):
            db.load_table_ids(session=s, table_id=t.id, n=50, k=7, cols=8)
        assert db.sample_neighbors(session=s, table_id=t.id, sample_id=50) is None
        np.testing.assert_array_equal(db.dataset_labels(session=s, dataset_id=ds), labels)
    # the same rows twice are refused by the primary key, and the failed transaction leaves nothing half-done
    with pytest.raises(IntegrityError), db.transaction(f) as s:
        db.save_neighbors(session=s, table_id=t.id, start=0, ids=ids[:1], labels=labels[ids[:1]],
                          distances=dist[:1])
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
