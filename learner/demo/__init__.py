"""The laptop demo's base policy: a tool catalog corpus, supervised training from scratch, evaluation."""
