"""Decoding: the predictors, the cascade (tower top-K -> LVM re-rank -> lane bonus), the dual-path policy
(SNAP / BLEND / NOVEL), its profiles and calibration, the prompt, and the generator that runs them."""
