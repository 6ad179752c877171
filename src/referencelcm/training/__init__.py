"""CoSeC-LCD training library: consistency math, regularisers, EMA, the distillation step and datasets."""
