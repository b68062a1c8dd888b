"""One router per resource: chat, responses, models, episodes, stats, training runs, adapters, verifiers, health."""
