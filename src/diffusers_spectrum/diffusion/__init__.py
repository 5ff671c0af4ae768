"""Diffusion objectives: DDPM epsilon / v / x0 and flow matching (`objectives`), EDM (`edm`) and the audio v-cosine
(`v_diffusion`)."""
