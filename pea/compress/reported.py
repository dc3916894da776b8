"""The UNet sizes the compression papers report, to set pea's own counts beside (benchmarks/compress_arch.py,
tests/test_compress_recipes.py). Keys are family names (the teachers) and recipe names.

- params_b: UNet parameters in billions. SD1.5 (same UNet as SD-v1.4) and BK-SDM: Nota-NetsPresso/BK-SDM
  MODEL_CARD.md table "# Params, U-Net" (0.86 / 0.58 / 0.49 / 0.33 B, two decimals). SSD-1B: arXiv 2401.02677
  abstract ("1.3B ... parameter UNets"). SDXL: 2,567 M (etri-vilab/koala-700m model card's U-Net table; the
  same count /work/shared/ENVIRONMENT.md gives from diffusers).
- macs_g: U-Net GMACs per step at 512 px, batch 1, counted with thop (BK-SDM src/count_macs_params.py): the
  BK-SDM paper's (arXiv 2305.15798) table, 339 / 224 / 218 / 206 G. thop counts modules (Conv2d, Linear), not
  the attention's QK^T/AV products, so they compare with measure.macs_per_step's `without_attention_scores`.
"""

REPORTED = {
    "sd15": {"params_b": 0.86, "macs_g": 339},
    "bk-sdm-base": {"params_b": 0.58, "macs_g": 224},
    "bk-sdm-small": {"params_b": 0.49, "macs_g": 218},
    "bk-sdm-tiny": {"params_b": 0.33, "macs_g": 206},
    "sdxl": {"params_b": 2.567},
    "ssd-1b": {"params_b": 1.3},
}
# the papers round: two decimals for BK-SDM (and BK-SDM-Small's 482.3 M appears as 0.49 B), one for SSD-1B
PARAMS_TOLERANCE_B = {"sd15": 0.01, "bk-sdm-base": 0.01, "bk-sdm-small": 0.01, "bk-sdm-tiny": 0.01,
                      "sdxl": 0.001, "ssd-1b": 0.05}
MACS_TOLERANCE = 0.01  # relative: thop and torch's flop counter agree on convolutions and linear layers
