"""``make test``: the unit tests and the notebooks (nbval, smoke profile) as two pytest processes side by side.

The notebooks run in order in one process (they share one results folder and ``notebooks/test_artefacts.py`` checks
what they all wrote), which takes about as long as every unit and torchrun test together; run one after the other they
leave a core idle, run beside each other the suite takes the longer of the two. Each process gets its own temporary
results folder (no cached step is computed by two processes at once), removed at the end. The unit tests report
as they run; the notebooks' report follows. Exit status: non-zero when either failed.

    python tools/run_tests.py [--serial] [PYTEST_ARGS...]   # e.g. --durations=25; --serial: one after the other
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pytest(args, results, **kw):
    env = {**os.environ, "TINYFUSION_PROFILE": "smoke", "TINYFUSION_RESULTS": str(results), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                            env=env, **kw)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    serial = "--serial" in argv
    extra = [a for a in argv if a != "--serial"]
    tmp = Path(tempfile.mkdtemp(prefix="tinyfusion-test-"))
    t0 = time.time()
    nb = None
    try:
        with open(tmp / "notebooks.log", "w+") as log:
            if not serial:
                print("[test] the notebooks (nbval, smoke profile) run beside the unit tests; their report follows "
                      "the unit tests'", flush=True)
                nb = _pytest(["notebooks", "--nbval-lax", *extra], tmp / "notebooks", stdout=log,
                             stderr=subprocess.STDOUT)
            unit_rc = _pytest(["tests", *extra], tmp / "unit").wait()
            t_unit = time.time() - t0
            if serial:
                nb = _pytest(["notebooks", "--nbval-lax", *extra], tmp / "notebooks")
            nb_rc = nb.wait()
            log.seek(0)
            if not serial:
                print(f"[test] notebooks (nbval, smoke profile):\n{log.read()}", end="", flush=True)
    except KeyboardInterrupt:
        if nb is not None and nb.poll() is None:
            nb.terminate()
            nb.wait()
        print("[test] interrupted", flush=True)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[test] unit tests {'passed' if unit_rc == 0 else 'FAILED'} ({t_unit:.0f} s), notebooks "
          f"{'passed' if nb_rc == 0 else 'FAILED'}; {time.time() - t0:.0f} s in all", flush=True)
    return 1 if unit_rc or nb_rc else 0


if __name__ == "__main__":
    sys.exit(main())
