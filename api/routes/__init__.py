"""One router per resource: chat, models, episodes, stats, training runs, adapters, verifiers, health."""
