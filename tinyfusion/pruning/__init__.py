"""Depth pruning: TinyFusion's learnable N:M masks, metric-based baselines, random prunes, model surgery."""
from tinyfusion.pruning.indices import check_kept, oracle_indices, prune  # noqa: F401
