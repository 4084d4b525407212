"""The paper's numbers (TinyFusion, arXiv 2412.01199), transcribed from ../shared/PAPER.md.

These are the reference values every notebook prints beside its own; nothing here is a result of ours. This is the
only place they are written: the summary (``tinyfusion.summary``) and the verdicts read them from here, and a value
the paper prints in two tables (Table 1 repeats rows of Tables 3 and 5) is written once and referred to.
"""
import math

NAN = math.nan

# Table 3: 28->14, fine-tuned 100K steps without KD: (calibration loss, IS, FID); NaN = diverged.
TABLE3 = {
    "max-loss random": (37.69, NAN, NAN),
    "median-loss random": (0.99, 149.51, 6.45),
    "min-loss random": (0.20, 73.10, 20.69),
    "sensitivity": (0.21, 70.36, 21.15),
    "shortgpt": (0.20, 66.10, 22.28),
    "flux-lite": (0.85, 54.54, 25.92),
    "oracle": (1.28, 141.18, 7.43),
    "learnable": (0.98, 151.88, 5.73),
}
TABLE3_SPAN = (0.195, 37.694)  # the calibration losses of Table 3's 100,000 random candidates: lowest, highest
TABLE3_NOTE = f"100,000 random candidates; calibration losses spanned {TABLE3_SPAN[0]} to {TABLE3_SPAN[1]}"

# Table 4: 28->14 with 10K fine-tuning steps, FID on 10K samples with 64 steps: (IS, FID).
TABLE4 = {
    ("1:2", "lora"): (54.75, 33.39), ("2:4", "lora"): (53.07, 34.21), ("7:14", "lora"): (34.97, 49.41),
    ("1:2", "full"): (53.11, 35.77), ("2:4", "full"): (53.63, 34.41), ("7:14", "full"): (45.03, 38.76),
    ("1:2", "frozen"): (45.08, 39.56), ("2:4", "frozen"): (48.09, 37.82), ("7:14", "frozen"): (34.09, 49.75),
}

# Section 3 / Table 4: "LoRA trains about 0.9% of the parameters" (rank 8 on every linear of DiT-XL/2).
LORA_SHARE = 0.009

# Table 5: FID at 100K fine-tuning steps and the initial distillation loss (NaN = diverged / not given).
TABLE5 = {
    "finetune": dict(initial_loss=NAN, FID=5.79),
    "kd": dict(initial_loss=NAN, FID=4.66),
    "repkd": dict(initial_loss=2840.1, FID=NAN),
    "masked_kd_0.1": dict(initial_loss=15.4, FID=NAN),
    "masked_kd_2": dict(initial_loss=387.1, FID=3.73),
    "masked_kd_4": dict(initial_loss=391.4, FID=3.75),
}


def _t3(method):
    """IS and FID of a Table 3 row, which Table 1 repeats."""
    return dict(IS=TABLE3[method][1], FID=TABLE3[method][2])


_D14_ITS = 13.54  # sampling iterations/s of the 14-layer models in Table 1

# DiT-XL/2, the teacher of Tables 1 and 3: parameters (675M, as the DiT paper gives) and tokens (256x256 images ->
# 32x32 latents, patch 2 -> 16x16 tokens).
DIT_XL_PARAMS, DIT_XL_TOKENS = 675e6, 256

# Table 1: DiT-XL/2 on ImageNet 256 (IS, FID, sFID, Prec, Rec, it/s); a key is absent where the paper gives no value.
TABLE1 = [
    dict(method="DiT-XL/2 (teacher)", depth=28, steps="7M", IS=278.24, FID=2.27, sFID=4.60, Prec=0.83, Rec=0.57, its=6.91),
    dict(method="ShortGPT 28->14", depth=14, steps="100K", **_t3("shortgpt"), sFID=6.20, Prec=0.63, Rec=0.56,
         its=_D14_ITS),
    dict(method="Flux-Lite 28->14", depth=14, steps="100K", **_t3("flux-lite")),
    dict(method="Sensitivity 28->14", depth=14, steps="100K", **_t3("sensitivity")),
    dict(method="Oracle (BK-SDM) 28->14", depth=14, steps="100K", **_t3("oracle")),
    dict(method="TinyDiT-D14 (learnable)", depth=14, steps="100K", **_t3("learnable"), sFID=4.91, Prec=0.80, Rec=0.55,
         its=_D14_ITS),
    dict(method="TinyDiT-D14 (learnable)", depth=14, steps="500K", FID=3.92),
    dict(method="TinyDiT-D14 + Masked KD", depth=14, steps="100K", FID=TABLE5["masked_kd_2"]["FID"]),
    dict(method="TinyDiT-D14 + Masked KD", depth=14, steps="500K", IS=234.50, FID=2.86, sFID=4.75, Prec=0.82, Rec=0.55),
    dict(method="TinyDiT-D19 + KD", depth=19, steps="100K", FID=2.90),
    dict(method="DiT-L/2 (from scratch)", depth=24, steps="1M", FID=3.73, its=9.73),
    dict(method="Diff-Pruning 50% (width)", depth=28, steps="", FID=3.85, its=10.43),
    dict(method="Diff-Pruning 75% (width)", depth=28, steps="", FID=14.58, its=13.59),
]

# Table 2: the same learnable pruning on other generators (FID-50K, ImageNet 256): {model: FID}. TinySiT-D14 is
# SiT-XL/2 pruned 28 -> 14 (1:2) and recovered with Masked KD (beta 2e-4, Table 6); TinyMAR-D16 is MAR-Large pruned
# 32 -> 16 and fine-tuned 40 epochs (MAR-L was trained 400, so 10% of its pre-training; notebook 13).
TABLE2 = {"SiT-XL/2": 2.06, "TinySiT-D14": 3.02, "MAR-Large": 1.78, "MAR-Base": 2.31, "TinyMAR-D16": 2.28}
# Table 2's MAR rows in full: {model: (layers, training, FID, IS)}.
TABLE2_MAR = {"MAR-Large": (32, "400 epochs", TABLE2["MAR-Large"], 296.0),
              "TinyMAR-D16": (16, "40 epochs (fine-tune)", TABLE2["TinyMAR-D16"], 283.4),
              "MAR-Base": (24, "400 epochs", TABLE2["MAR-Base"], 281.7)}
MAR_FINETUNE_SHARE = 40 / 400   # TinyMAR-D16's fine-tune as a share of MAR-L's pre-training epochs
SIT_GAP = TABLE2["TinySiT-D14"] / TABLE2["SiT-XL/2"]   # the pruned SiT's FID over its teacher's

# Table 7: D7, (teacher, pruned-from) -> FID.
TABLE7 = {("XL", "XL"): 56.18, ("XL", "D14"): 36.69, ("D14", "XL"): 58.73, ("D14", "D14"): 32.47}

# Figure 8: hidden-state extremes of DiT-XL/2 and of the pruned student, and the largest |h| over the std.
FIGURE8 = {"teacher": dict(min=-429, max=191, std=12.5), "student": dict(min=-527, max=54, std=14.2)}
FIGURE8_MAX_OVER_STD = {k: max(abs(v["min"]), v["max"]) / v["std"] for k, v in FIGURE8.items()}

# Figure 4 / Table 1: D14 from D28 sampling speed-up on GPU.
SPEEDUP_D14 = _D14_ITS / TABLE1[0]["its"]
# Table 1: width pruning at the same 50% ratio (Diff-Pruning 50%), the paper's comparator for claim 7: 1.51x.
SPEEDUP_WIDTH50 = next(r["its"] for r in TABLE1 if r["method"] == "Diff-Pruning 50% (width)") / TABLE1[0]["its"]

CLAIMS = {
    1: "The lowest calibration loss does not give the best model after fine-tuning.",
    2: "Learnable pruning beats every metric-based and hand-made baseline after the same fine-tuning.",
    3: "Small blocks (1:2, 2:4) learn better decisions than 7:14.",
    4: "Recoverability estimation helps: LoRA and full updates beat frozen weights; LoRA is at least as good as full.",
    5: "Diffusion transformers carry massive activations in their hidden states.",
    6: "Masked KD beats logits KD, which beats plain fine-tuning; unmasked RepKD diverges.",
    7: "Depth pruning gives close to linear speed-up; width pruning does not.",
    8: "Pruning the crafted shallow model again beats pruning the original directly.",
    9: "Learnable pruning carries over to SiT (flow objective): TinySiT-D14 recovers close to SiT-XL/2.",
    10: "Learnable pruning carries over to MAR (masked autoregressive): TinyMAR-D16 recovers close to MAR-Large.",
}

# Figure 6 (2:4 on DiT-XL/2, the official repository's assets/decisions.png), read off the figure: the official learnable
# run is one ImageNet epoch at global batch 128 (10,010 steps, gate EMA 0.999); layer 0 replaces layer 1 in block 0 at
# about 8K of them and is kept at the end, with the final 2:4 kept set about as below.
FIGURE6 = {"scheme": "2:4", "steps": 10010, "ema_decay": 0.999, "layer0_from_step": 8000,
           "kept": [0, 2, 6, 7, 8, 9, 12, 13, 18, 19, 20, 23, 24, 25]}
