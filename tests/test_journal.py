"""Journals: durable appends, torn lines ignored, every attempt read back."""
import json

import pytest

from launcher.journal import Journal, attempts, journal_path, next_attempt, read_journals


def test_rows_from_every_rank_and_attempt_are_read_back(tmp_path):
    with Journal(journal_path(tmp_path, 0, 0)) as journal:
        journal.append([{"id": "a", "prediction": "1"}, {"id": "b", "prediction": "2"}])
    with Journal(journal_path(tmp_path, 3, 1)) as journal:
        journal.append([{"id": "c", "prediction": "3"}])
    finished = read_journals(tmp_path)
    assert {key: row["prediction"] for key, row in finished.items()} == {"a": "1", "b": "2", "c": "3"}
    assert attempts(tmp_path) == [0, 1]
    assert next_attempt(tmp_path) == 2


def test_a_torn_last_line_is_ignored_so_its_item_is_redone(tmp_path):
    path = journal_path(tmp_path, 0, 0)
    with Journal(path) as journal:
        journal.append([{"id": "a", "prediction": "1"}, {"id": "b", "prediction": "2"}])
    text = path.read_text()
    path.write_text(text[: len(text) - 7])     # killed mid-write: the second line lost its end
    assert list(read_journals(tmp_path)) == ["a"]


def test_an_id_journaled_twice_keeps_the_earliest_attempt(tmp_path):
    with Journal(journal_path(tmp_path, 0, 0)) as journal:
        journal.append([{"id": "a", "prediction": "first"}])
    with Journal(journal_path(tmp_path, 1, 1)) as journal:
        journal.append([{"id": "a", "prediction": "second"}])
    assert read_journals(tmp_path)["a"]["prediction"] == "first"
    assert read_journals(tmp_path, before_attempt=1)["a"]["prediction"] == "first"
    assert read_journals(tmp_path, before_attempt=0) == {}


def test_a_journal_is_never_reopened_by_a_second_writer(tmp_path):
    Journal(journal_path(tmp_path, 0, 0)).close()
    with pytest.raises(FileExistsError):
        Journal(journal_path(tmp_path, 0, 0))


def test_appended_rows_are_on_disk_before_append_returns(tmp_path):
    journal = Journal(journal_path(tmp_path, 0, 0))
    journal.append([{"id": "x", "prediction": "y"}])
    # Read through a separate handle while the writer is still open.
    assert json.loads(journal.path.read_text().splitlines()[0])["id"] == "x"
    journal.close()


def test_atomically_written_files_get_the_mode_of_any_new_file(tmp_path):
    import os
    import stat

    from launcher.outputs import atomic_write_text

    target = tmp_path / "run.json"
    atomic_write_text(target, "{}")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(os.stat(target).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
