"""Screenshots of the executed notebooks as JupyterLab renders them, taken with headless chromium (``make screenshots``).

    .venv/bin/python tools/lab_screenshots.py                    # the default pages, PNGs in /tmp/lab_shots
    .venv/bin/python tools/lab_screenshots.py --out shots results/cpu/notebooks/06_knowledge_distillation.ipynb
    .venv/bin/python tools/lab_screenshots.py --all --height 16000 --split 2400   # every notebook, whole, in slices
    make screenshots [SHOTS_ARGS="--all"]                        # the same; installs Debian's chromium when missing

Starts ``jupyter lab`` from this venv on a free local port with a random token (``--allow-root`` when root) and
fresh, temporary settings: notebooks render every cell (windowing mode "none", so a tall window shows the whole
notebook), Markdown files open in the Markdown preview, each page gets a workspace of its own with the file
browser collapsed, nothing is saved (autosave off) and no news is fetched.
Each page (a path relative to the repository) is loaded by ``chromium --headless --screenshot`` with a
virtual-time budget so the cells and their outputs are rendered, then the server stops. A PNG that looks like
JupyterLab's splash screen (nearly one colour) is reported and makes the exit status non-zero. Look at the PNGs:
that is the point. The server opens a kernel for each notebook (ipykernel only; no cell runs).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAGES = [
    "results/cpu/notebooks/01_calibration_loss_study.ipynb",
    "results/cpu/notebooks/02_learnable_decisions.ipynb",
    "results/cpu/notebooks/07_speedup.ipynb",
    "results/cpu/notebooks/09_summary.ipynb",
    "results/cpu/summary.md",
]
SETTINGS = {  # JupyterLab user settings for the temporary server: {plugin folder/file: values}
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"defaultViewers": {"markdown": "Markdown Preview"}, "autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
# Each page opens in a workspace of its own (no tabs carried over) that already holds it as its one tab (else a
# Launcher tab may open beside it), with the left sidebar collapsed.
LEFT = {"collapsed": True, "visible": True, "widgets": ["filebrowser"]}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workspace(i, page):
    widget = ("notebook:" if page.endswith(".ipynb") else "markdownviewer-widget:" if page.endswith(".md") else
              "editor:") + page
    main = {"dock": {"type": "tab-area", "currentIndex": 0, "widgets": [widget]}, "current": widget}
    return {"data": {"layout-restorer:data": {"main": main, "left": LEFT}, widget: {"data": {"path": page}}},
            "metadata": {"id": f"/shot-{i}"}}


def write_config(tmp, pages):
    """Settings and one workspace per page for the server, under ``tmp``; returns the server options naming them."""
    from jupyterlab_server.workspaces_handler import WORKSPACE_EXTENSION, slugify

    settings, workspaces = tmp / "settings", tmp / "workspaces"
    for name, values in SETTINGS.items():
        path = settings / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    workspaces.mkdir()
    for i, page in enumerate(pages):
        (workspaces / (slugify(f"shot-{i}") + WORKSPACE_EXTENSION)).write_text(json.dumps(workspace(i, page)))
    return [f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={workspaces}"]


def start_lab(port, token, tmp, pages, log):
    jupyter = Path(sys.executable).parent / "jupyter"
    if not jupyter.exists():
        raise SystemExit(f"error: {jupyter} not found; run this script with the venv's python (make setup)")
    cmd = [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT}", *write_config(tmp, pages)]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp / "config"))  # no user jupyter_server_config.py applies
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_for(server, base, token, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def stop(server):
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own process group: it and the kernels it started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def looks_blank(png):
    """True when the image is (nearly) one colour, as JupyterLab's splash screen or an empty page is."""
    try:
        from PIL import Image
    except ImportError:
        return False
    with Image.open(png) as im:  # the middle 80% of the width: not the side bars and the main panel's frame
        middle = im.convert("L").crop((im.width // 10, 0, im.width - im.width // 10, im.height))
        hist = middle.resize((112, max(1, im.height // 10))).histogram()
    return max(hist) > 0.97 * sum(hist)


def split(png, height):
    """Cut ``png`` into slices ``height`` pixels high that overlap by an eighth (a figure cut by one is whole in the
    next), NAME-p1.png, ...; skips blank ones; returns their paths."""
    if height <= 0:
        return []
    import numpy as np
    from PIL import Image

    for old in png.parent.glob(f"{png.stem}-p*.png"):  # slices of an earlier run
        old.unlink()
    pieces, step = [], height - height // 8
    with Image.open(png) as im:
        im = im.convert("RGB")
        gray = np.asarray(im.convert("L"))[:-40, im.width // 10: -(im.width // 10)]  # less the status bar
        busy = np.flatnonzero(gray.std(axis=1) > 2)  # rows with content
        end = min(im.height, int(busy[-1]) + 40) if busy.size else im.height
        for n, top in enumerate(range(0, max(1, end - height // 8), step), 1):
            path = png.with_name(f"{png.stem}-p{n}.png")
            im.crop((0, top, im.width, min(top + height, end))).save(path)
            if looks_blank(path):
                path.unlink()
            else:
                pieces.append(path)
    return pieces


def screenshot(chromium, url, png, width, height, budget, profile_dir):
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={profile_dir}", f"--window-size={width},{height}",
           f"--virtual-time-budget={budget}", f"--screenshot={png}", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=budget / 1000 + 120)
    except subprocess.TimeoutExpired:  # chromium and its helpers are in their own process group
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\ntimed out after {budget / 1000 + 120:.0f} s"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python tools/lab_screenshots.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("pages", nargs="*", default=DEFAULT_PAGES, help="files to open, relative to the repository")
    parser.add_argument("--all", action="store_true", help="every executed notebook of --profile, and its summary.md")
    parser.add_argument("--profile", default="cpu", help="results/<profile> that --all reads")
    parser.add_argument("--out", type=Path, default=Path("/tmp/lab_shots"), help="folder for the PNGs")
    parser.add_argument("--width", type=int, default=1400, help="window width")
    parser.add_argument("--height", type=int, default=2400, help="window height; a taller one shows more cells")
    parser.add_argument("--split", type=int, default=0, metavar="PX", help="also cut each PNG into overlapping "
                        "NAME-pN.png slices PX high (blank ones skipped), readable in an image viewer; 0: no slices")
    parser.add_argument("--budget", type=int, default=15000, help="chromium's virtual-time budget per page, ms")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium", help="the browser to run")
    args = parser.parse_args(argv)

    pages = args.pages
    if args.all:
        res = ROOT / "results" / args.profile
        pages = [str(p.relative_to(ROOT)) for p in sorted((res / "notebooks").glob("*.ipynb"))]
        pages += [str((res / "summary.md").relative_to(ROOT))] if (res / "summary.md").exists() else []
    missing = [p for p in pages if not (ROOT / p).is_file()]
    if missing:
        raise SystemExit(f"error: not found under {ROOT}: {', '.join(missing)}")
    if not shutil.which(args.chromium):
        raise SystemExit(f"error: {args.chromium} not found; install Debian's chromium (make screenshots does)")
    args.out.mkdir(parents=True, exist_ok=True)

    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    failed = []
    with tempfile.TemporaryDirectory(prefix="lab_shots_") as tmp:
        tmp = Path(tmp)
        log = open(tmp / "lab.log", "w")
        server = start_lab(port, token, tmp, pages, log)
        try:
            if not wait_for(server, base, token):
                log.flush()
                raise SystemExit("error: jupyter lab did not start:\n" + (tmp / "lab.log").read_text()[-3000:])
            for i, page in enumerate(pages):
                png = args.out / (Path(page).name.rsplit(".", 1)[0] + ".png")
                url = f"{base}/lab/workspaces/shot-{i}/tree/{urllib.parse.quote(page)}?token={token}"
                png.unlink(missing_ok=True)
                t0 = time.time()
                run = screenshot(args.chromium, url, png, args.width, args.height, args.budget, tmp / "chromium")
                if run.returncode != 0 or not png.exists():
                    failed.append(page)
                    said = [line for line in run.stderr.splitlines() if "dbus" not in line.lower()][-8:]
                    print(f"FAILED {page}: chromium exit {run.returncode} (a budget too small to load the page "
                          f"can hang it: try a larger --budget)\n" + "\n".join(said), file=sys.stderr)
                elif looks_blank(png):
                    failed.append(page)
                    print(f"BLANK  {png} ({page}): a splash screen or empty page; try a larger --budget")
                else:
                    print(f"ok     {png}  ({time.time() - t0:.0f} s)")
                    for piece in split(png, args.split):
                        print(f"         {piece}")
        finally:
            stop(server)
            log.close()
    if failed:
        raise SystemExit(f"{len(failed)} of {len(pages)} pages failed")


if __name__ == "__main__":
    main()
