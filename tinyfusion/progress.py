"""The progress bar of every long loop: tqdm's notebook widget in an interactive kernel, its plain text bar when
papermill runs the notebook for a saved copy (``cli.reproduce`` sets ``TINYFUSION_TEXT_BARS=1`` for its kernels). A
saved notebook keeps a widget's first state as its text ("0/6", as if nothing ran), but a text bar's last line
(``cli.reproduce.compact_streams`` keeps the final state of each)."""
import os

if os.environ.get("TINYFUSION_TEXT_BARS"):
    from tqdm.std import tqdm
else:
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
