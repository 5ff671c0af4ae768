"""Package marker so the module ships with diffusers_spectrum; `evaluate.load` reads the script beside it."""
