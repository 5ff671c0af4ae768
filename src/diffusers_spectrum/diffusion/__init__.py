"""Diffusion objectives: one `DiffusionObjective` whose kinds are DDPM epsilon / v / x0 and flow matching
(`objectives`), EDM (`edm`) and the audio v-cosine (`v_diffusion`), and the one loss step every diffusion trainer
takes (`loss.diffusion_loss_terms`, the spectral regularisers plugged in once)."""
