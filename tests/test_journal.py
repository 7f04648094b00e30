"""A journal cut in the middle of a record (a crash or a full disk mid-write) loses nothing but
that record: the probe, through the command line on real files, and journals that plain Optuna
had already let another record land after the torn one."""

import warnings

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from benchmark.app.cli import main
from studies.journal import TornRecordWarning
from studies.locks import open_locks
from studies.storage import StorageError, open_studies
from studies.trials import Workers

GRID = ('[[cell]]\nmodel = "cnn"\nvariant = "long-tail"\nremedy = "none"\nepochs = 2\n'
        'batch_size = 8\nlr = 0.05\nimbalance_ratio = 2\n')


def cut_last_record(journal, keep: float = 0.5) -> bytes:
    """Truncate the journal in the middle of its last record; the bytes cut off."""
    data = journal.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    cut = start + int((len(data) - start) * keep)
    journal.write_bytes(data[:cut])
    return data[start:cut]


@pytest.mark.filterwarnings("ignore:.*differ from the official")
def test_a_journal_cut_mid_record_is_set_aside_and_the_study_goes_on(tmp_path, cifar_dir,
                                                                    capsys):
    grid, journal = tmp_path / "grid.toml", tmp_path / "optuna.journal"
    grid.write_text(GRID)
    run = ["run", "--grid", str(grid), "--profile", "paper", "--dataset", "cifar10",
           "--data-dir", str(cifar_dir), "--no-report", "--seeds", "1", "--storage",
           str(journal), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert main([*run, "--trials", "2"]) == 0
    torn = cut_last_record(journal)
    capsys.readouterr()
    assert main([*run, "--trials", "2"]) == 0  # all finished: skips, as before the cut
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "record cut short" in line]
    assert len(warned) == 1 and warned[0].startswith("tailbench: warning: Optuna journal "
                                                     f"{journal}: its last line"), err
    assert "Traceback" not in err and (tmp_path / "optuna.journal.torn").read_bytes() == \
        torn + b"\n"
    # the study goes on: the trial whose record was cut is a dead worker's, failed and run
    # again, and trials are added (Optuna alone failed here, and from then on for good)
    name = optuna.get_all_study_names(open_studies(journal))[0]
    study = optuna.load_study(study_name=name, storage=open_studies(journal))
    Workers(study, open_locks(journal), True, 3).run(lambda: lambda t: t.suggest_float(
        "lr", 1e-3, 3.0, log=True))  # the space of studies/space.py
    states = [t.state for t in optuna.load_study(study_name=name,
                                                  storage=open_studies(journal)).trials]
    finished = [s for s in states if s in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3 and TrialState.RUNNING not in states, states
    assert journal.read_bytes().endswith(b"\n")


def study_with_trials(journal, n: int) -> list:
    study = optuna.create_study(study_name="s", storage=open_studies(journal))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
    return [t.value for t in study.trials]


def test_a_journal_optuna_had_already_damaged_is_mended_when_opened(tmp_path):
    journal = tmp_path / "optuna.journal"
    values = study_with_trials(journal, 3)
    cut_last_record(journal)
    # plain Optuna (no tailbench lock) appends right after the torn bytes: one line, no JSON
    def plain_trial():
        plain = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
        optuna.load_study(study_name="s", storage=plain).optimize(
            lambda t: t.suggest_float("x", 0, 1), n_trials=1)

    with pytest.raises(AttributeError):  # Optuna's own failure, on the torn record
        plain_trial()
    with pytest.raises(ValueError, match="Expecting ':' delimiter"):  # from now on, for good
        plain_trial()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        study = optuna.load_study(study_name="s", storage=open_studies(journal))
    assert any(issubclass(w.category, TornRecordWarning) and "line" in str(w.message)
               for w in seen)
    # the trials before the cut record are whole; the study takes trials again
    assert [t.value for t in study.trials[:2]] == values[:2]
    assert [t.state for t in study.trials[:2]] == [TrialState.COMPLETE] * 2
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    again = optuna.load_study(study_name="s", storage=open_studies(journal))
    assert again.trials[-1].state == TrialState.COMPLETE


def test_a_journal_line_that_holds_no_record_is_one_line_naming_it(tmp_path):
    journal = tmp_path / "optuna.journal"
    study_with_trials(journal, 1)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join([lines[0], b"garbage\n", *lines[1:]]))
    with pytest.raises(StorageError, match=f"journal {journal} is damaged: line 2 "):
        open_studies(journal)
