"""Standard-library-light helpers every floor may use: JSON and flag records (`records`), image grids (`images`),
output folders that never cost a user a file (`run_folders`) and Hub-or-path names without network waits (`hub`)."""
