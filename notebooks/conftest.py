"""pytest over the notebooks: nbval runs each numbered notebook once, then ``test_artefacts.py`` checks what they wrote.

``pytest --nbval-lax notebooks/`` (what ``make test`` runs beside the unit tests, in a process of its own) uses the smoke profile unless
``TINYFUSION_PROFILE`` says otherwise. pytest collects a folder's files in name order, so the numbered notebooks
run before ``test_artefacts.py``, which reads the same results folder; the summary notebook runs after the others. The hooks below record, for
that check, which numbered notebooks this session collected, which had a failing cell, and when the session began.
"""
import os
import time
from pathlib import Path

os.environ.setdefault("TINYFUSION_PROFILE", "smoke")

import pytest  # noqa: E402

HERE = Path(__file__).resolve().parent
_FAILED = pytest.StashKey[set]()
_STARTED = pytest.StashKey[float]()
OUTPUT_TIMEOUT_S = 60   # nbval's wait for each output message of a cell (its own default: 5 s)


def _notebook_of(item):
    """The file name of a numbered notebook of this folder when ``item`` is one of its cells (nbval), else None."""
    path = Path(str(item.path)).resolve()
    return path.name if path.suffix == ".ipynb" and path.parent == HERE and path.name[:2].isdigit() else None


def pytest_collection_modifyitems(session, config, items):
    """Put the numbered notebooks' cells in ``cli.reproduce``'s run order: by number, the summary (which reads every
    verdict) last. Cells keep their order within a notebook, and other tests keep their places."""
    from tinyfusion.cli.reproduce import run_order
    places = [k for k, item in enumerate(items) if _notebook_of(item)]
    ordered = sorted((items[k] for k in places), key=lambda item: run_order(Path(str(item.path))))  # stable
    for k, item in zip(places, ordered):
        items[k] = item
        # nbval waits 5 s for each output message after a cell's reply; a loaded machine (tests beside a study) can
        # be slower than that and fail a cell that ran fine ("Timeout of 5 seconds exceeded waiting for output")
        if hasattr(item, "output_timeout"):
            item.output_timeout = OUTPUT_TIMEOUT_S


def pytest_sessionstart(session):
    session.config.stash[_STARTED] = time.time()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    name = _notebook_of(item)
    if name and report.failed:
        item.config.stash.setdefault(_FAILED, set()).add(name)
    return report


@pytest.fixture
def notebook_session(request):
    """What this pytest session did with the numbered notebooks, for the artefact check:
    ``expected`` (every numbered notebook here), ``ran`` (those whose cells run before the requesting test),
    ``failed`` (those with a failing cell) and ``started`` (the session's start, seconds since the epoch)."""
    items = request.session.items
    me = items.index(request.node) if request.node in items else len(items)
    return {"expected": sorted(p.name for p in HERE.glob("[0-9][0-9]_*.ipynb")),
            "ran": {n for n in map(_notebook_of, items[:me]) if n},
            "failed": set(request.config.stash.get(_FAILED, set())),
            "started": request.config.stash.get(_STARTED, 0.0)}
